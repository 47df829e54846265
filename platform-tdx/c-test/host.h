/*
 * What the C host programs share: the host memory they register at init, the report of each
 * step, and the host's side of one relay round. Each program is one translation unit, so
 * everything here is static (inline: a program that does not use one is not warned).
 */
#ifndef TSM_C_TEST_HOST_H
#define TSM_C_TEST_HOST_H

#include <stdio.h>
#include <string.h>

#include "tsm_tdx.h"

/* Steps whose status was not the expected one. */
static int failures __attribute__((unused));

/*
 * The host memory the firmware may touch, registered at init: the parameter page (4 KiB
 * aligned, as every TDX page operand is), the shared request and response pages, the TD's TDR
 * page (TDH.MNG.CREATE RCX; the firmware never writes it), the device's SPDM metadata page
 * (TDH.SPDM.CREATE RDX; recorded, never written), the link's SPDM config, dev_info and IDE
 * metadata pages, TDH.DEVIF.CREATE's three private pages (the firmware's until
 * TDH.DEVIF.REMOVE), the register block and the length word of the model's DOE exchange.
 * Anything outside it is refused, never dereferenced.
 */
static struct {
	_Alignas(4096) struct tsm_tdx_range_list list;
	_Alignas(4096) uint8_t request[TSM_TDX_MESSAGE_PAGE_BYTES];
	_Alignas(4096) uint8_t response[TSM_TDX_MESSAGE_PAGE_BYTES];
	_Alignas(4096) uint8_t tdr[4096];
	_Alignas(4096) uint8_t spdm_mt[4096];
	_Alignas(4096) uint8_t spdm_conf[4096];
	_Alignas(4096) uint8_t dev_info[4096];
	_Alignas(4096) uint8_t ide_mt[4096];
	_Alignas(4096) uint8_t devifcs[4096];
	_Alignas(4096) uint8_t td_buffer[4096];
	_Alignas(4096) uint8_t vmm_buffer[4096];
	struct tsm_tdx_regs regs;
	uint64_t response_len;
	uint32_t iq_status; /* the IOMMU's wait-descriptor status word (TDH.IQ.INV.REQUEST R10) */
} host;

static inline uint64_t page_of(const void *p)
{
	return (uint64_t)(uintptr_t)p;
}

/* One line per step: what, the status, and whether it was the one wanted. */
static inline void expect(const char *what, uint64_t status, uint64_t want)
{
	printf("%-34s status 0x%016llx %s\n", what, (unsigned long long)status,
	       status == want ? "ok" : "UNEXPECTED");
	if (status != want)
		failures++;
}

/* SEAMCALL `leaf` with the block `r`; the status must be `want` and be left in RAX. */
static inline uint64_t call(const char *what, uint16_t leaf, struct tsm_tdx_regs *r, uint64_t want)
{
	uint64_t status;

	r->rax = leaf;
	status = tsm_tdx_seamcall(r);
	expect(what, status, want);
	if (r->rax != status)
		failures++;
	return status;
}

/* The length of the DOE object in the request page, from its own header (dword 1 bits 17:0,
 * in dwords), as Linux takes it; RCX devif_req_out_t says the same in bits 23:8. */
static inline uint64_t request_length(void)
{
	uint32_t dw1;

	memcpy(&dw1, host.request + 4, sizeof(dw1));
	return (uint64_t)(dw1 & 0x3ffffu) * 4;
}

/* The DOE exchange with the device (the library's model device, feature `model-device`):
 * `len` request bytes in, the answer and its length (0: none) into the response page. */
static inline uint64_t model_doe(uint64_t len)
{
	return tsm_tdx_model_doe(host.request, len, host.response, &host.response_len);
}

/* TDH_DEVIF_RESPONSE for TDI `tdi`: RDX devif_rsp_in_t (the response page, or 0 when the
 * device did not answer, | `td_flag` for the TD's request), R8 the next request's page. */
static inline uint64_t respond(uint64_t tdi, uint64_t td_flag)
{
	struct tsm_tdx_regs *r = &host.regs;

	memset(r, 0, sizeof(*r));
	r->rax = TDH_DEVIF_RESPONSE;
	r->rcx = tdi;
	r->rdx = (host.response_len ? page_of(host.response) : 0) | td_flag;
	r->r8 = page_of(host.request);
	return tsm_tdx_seamcall(r);
}

#endif
