/*
 * The static library in a freestanding image: no libc, no loader, its own entry point, built
 * for x86_64-unknown-none and linked with `ld -static -nostdlib` (tests/c_abi.rs). It is only
 * linked, never run: the link proves every symbol the library needs is inside it, that a C
 * firmware image can name the entry points, the session struct included, with nothing but
 * the compiler's freestanding headers, and (nm) that no test support is in it.
 */
#include <stddef.h>
#include <stdint.h>

#include "tsm_tdx.h"

/* The frame pool and the host memory, as a firmware image would reserve them. */
static _Alignas(4096) uint8_t pool[16 * 4096];
static _Alignas(4096) struct {
	struct tsm_tdx_regs regs;
	uint8_t pages[2 * 4096];
} host;

/* A session that refuses everything: enough to link; a real one wraps the platform's SPDM. */
static int refuse(void *ctx, const struct tsm_tdx_record_ctx *rc, const uint8_t *in,
		  size_t in_len, uint8_t *out, size_t out_cap, size_t *out_len)
{
	(void)ctx, (void)rc, (void)in, (void)in_len, (void)out, (void)out_cap, (void)out_len;
	return -1;
}

static int no_record(void *ctx, const uint8_t *bytes, size_t len, size_t *record_len)
{
	(void)ctx, (void)bytes, (void)len, (void)record_len;
	return -1;
}

static uint64_t no_secret(void *ctx, const struct tsm_tdx_record_ctx *rc)
{
	(void)ctx, (void)rc;
	return 0;
}

static void no_digest(void *ctx, const uint8_t *report, size_t len, uint8_t *digest)
{
	(void)ctx, (void)report, (void)len, (void)digest;
}

static const struct tsm_tdx_session session = {
	.ctx = NULL,
	.seal = refuse,
	.open = refuse,
	.record_len = no_record,
	.lock_secret = no_secret,
	.report_digest = no_digest,
};

/* Where the statuses go, so nothing is optimized away. */
volatile uint64_t last_status;

void _start(void)
{
	/* The firmware's only init: tsm_tdx_init (the model session) is test support, absent
	 * from a library built without `model-device`. */
	last_status = tsm_tdx_init_session(pool, sizeof(pool), &host, sizeof(host), &session);
	host.regs.rax = TDH_MEM_TRACK;
	last_status = tsm_tdx_seamcall(&host.regs);
	host.regs.rax = TDG_MMIO_ACCEPT;
	last_status = tsm_tdx_tdcall(0, &host.regs);
	for (;;)
		__asm__ volatile("hlt");
}
