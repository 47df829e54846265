/*
 * The pool-size macros of the header (TSM_TDX_POOL_PAGES, TSM_TDX_POOL_TABLES), evaluated by
 * the C compiler over a grid of TD counts, leaf counts and page levels: one line
 * "pool <tds> <leaves> <level> <pages>" each. tests/c_abi.rs compares every line with
 * platform_tdx::sept::Sept::pool_pages_needed, the Rust rule the macros restate.
 */
#include <stdio.h>

#include "tsm_tdx.h"

int main(void)
{
	static const unsigned long leaves[] = { 0,   1,   2,    5,    16,   17,    64,
						511, 512, 513, 1537, 8193, 100000 };
	unsigned long tds, i, level;

	for (tds = 0; tds <= 3; tds++)
		for (i = 0; i < sizeof(leaves) / sizeof(leaves[0]); i++)
			for (level = 0; level <= 2; level++)
				printf("pool %lu %lu %lu %llu\n", tds, leaves[i], level,
				       (unsigned long long)TSM_TDX_POOL_PAGES(tds, leaves[i], level));
	/* The header's own example: one mapped 4 KiB page takes 10 pages. */
	printf("one 4 KiB page: %llu\n", (unsigned long long)TSM_TDX_POOL_PAGES(1, 1, 0));
	return TSM_TDX_POOL_PAGES(1, 1, 0) == 10 ? 0 : 1;
}
