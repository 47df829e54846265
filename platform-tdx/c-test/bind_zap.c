/*
 * The proof that a C firmware prototype can link the TSM: the host flow the vfio fix
 * needed, driven through the C entry point. Bind a TDI, map its MMIO, see the zap of the
 * bound BAR refused (the firmware error the old host order hit), unbind, and see the zap
 * allowed. Every exchange with the device is relayed by this host, as Linux's TDX Connect
 * event loop does: on TDX_SPDM_REQUEST it takes the DOE object from the request page the call
 * named (R8) to the device (here the library's model device, feature `model-device`), puts the
 * answer in the response page and calls TDH_DEVIF_RESPONSE naming it (RDX devif_rsp_in_t), R8
 * the page for the next request. The TDI is named by its TDISP function ID. This program
 * drives bind and unbind with the firmware's own leaves (TSM_DEVIF_BIND / UNBIND); host_flow.c
 * drives them with TDH_DEVIF_REQUEST. Exits 0 when every status is the expected one.
 */
#include <stdlib.h>

#include "host.h"

/*
 * The host's event loop: while the firmware says TDX_SPDM_REQUEST, relay the DOE object in the
 * request page (its length from its own header, dword 1 bits 17:0 in dwords, as Linux takes
 * it) to the device and hand the answer back. Returns the operation's own status.
 */
static uint64_t relay(uint64_t status, uint64_t tdi)
{
	int rounds = 0;

	while (status == TDX_SPDM_REQUEST && rounds++ < 100) {
		uint64_t len = request_length();

		if (len != TSM_TDX_OUT_LENGTH(host.regs.rcx)) {
			printf("request length %llu, RCX %llx\n", (unsigned long long)len,
			       (unsigned long long)host.regs.rcx);
			failures++;
		}
		if (model_doe(len) != TDX_SUCCESS)
			failures++;
		status = respond(tdi, 0);
	}
	return status;
}

/* TDH.DEVIF.CREATE of 0000:03:00.0 on SPDM id `dev`'s stream (ours: stream ID == SPDM id)
 * for TD `td`: RCX devif_id_t, RDX the TDR, R8-R10 the private pages. */
static void create_regs(struct tsm_tdx_regs *r, uint64_t dev, uint64_t td)
{
	memset(r, 0, sizeof(*r));
	r->rcx = TSM_TDX_DEVIF_ID(dev, TSM_TDX_FUNC_ID(0, 0x0300));
	r->rdx = td;
	r->r8 = (uint64_t)(uintptr_t)host.devifcs;
	r->r9 = (uint64_t)(uintptr_t)host.td_buffer;
	r->r10 = (uint64_t)(uintptr_t)host.vmm_buffer;
}

int main(void)
{
	enum { POOL_PAGES = 64 };
	const uint64_t bar = 0x80000000ull, bar_pages = 1024; /* 4 MiB BAR */
	const uint64_t gpa = 0x1000000000ull;
	struct tsm_tdx_regs *r = &host.regs;
	struct tsm_tdx_range_list *list = &host.list;
	uint64_t td, dev, tdi, status;
	void *pool = aligned_alloc(4096, POOL_PAGES * 4096);
	int calls;

	if (!pool)
		return 2;
	memset(r, 0, sizeof(*r));
	r->rax = TDH_MEM_TRACK;
	if (tsm_tdx_seamcall(r) != TDX_SYS_NOT_READY) {
		puts("seamcall before init was not refused");
		return 1;
	}
	if (tsm_tdx_init(pool, POOL_PAGES * 4096, &host, sizeof(host)) != TDX_SUCCESS)
		return 1;
	if (tsm_tdx_init(pool, POOL_PAGES * 4096, &host, sizeof(host)) != TDX_SYSINIT_NOT_PENDING) {
		puts("second init was not refused");
		failures++;
	}

	/* The TD, as Linux's tdh_mng_create() makes it: RCX the TDR page, RDX the HKID. From now
	 * on every operand naming the TD is the TDR's physical address. */
	memset(r, 0, sizeof(*r));
	r->rcx = (uint64_t)(uintptr_t)host.tdr;
	r->rdx = 1;
	call("create TD", TDH_MNG_CREATE, r, TDX_SUCCESS);
	td = (uint64_t)(uintptr_t)host.tdr;

	/* The device's SPDM id, as Linux's tdh_spdm_create() asks for it: RCX the TDISP function
	 * ID of its DSM, RDX an HPA_ARRAY_T of the SPDM metadata pages (one page here). */
	memset(r, 0, sizeof(*r));
	r->rcx = TSM_TDX_FUNC_ID(0, 0x0300); /* 0000:03:00.0 */
	r->rdx = TSM_TDX_HPA_ARRAY((uintptr_t)host.spdm_mt, 1);
	call("create SPDM id", TDH_SPDM_CREATE, r, TDX_SUCCESS);
	dev = r->rcx;

	/* Metadata outside the registered host memory (here: the firmware's own pool). */
	memset(r, 0, sizeof(*r));
	r->rcx = TSM_TDX_FUNC_ID(0, 0x0400);
	r->rdx = TSM_TDX_HPA_ARRAY((uintptr_t)pool, 1);
	call("metadata outside host memory", TDH_SPDM_CREATE, r,
	     TDX_OPERAND_ADDR_RANGE_ERROR | TDX_OPERAND_ID_RDX);

	/* No TDI before the device has an IDE stream (which needs its BARs). */
	create_regs(r, dev, td);
	call("create TDI before the stream", TDH_DEVIF_CREATE, r,
	     TDX_IDE_STREAM_INVALID_STATE | TDX_OPERAND_ID_RCX);

	memset(list, 0, sizeof(*list));
	list->count = 1;
	list->ranges[0].first_page = bar;
	list->ranges[0].pages = (uint32_t)bar_pages;
	/* A list outside the registered host memory is refused. */
	memset(r, 0, sizeof(*r));
	r->rcx = dev;
	r->rdx = (uint64_t)(uintptr_t)pool;
	call("list outside host memory", TSM_SPDM_BARS, r,
	     TDX_OPERAND_ADDR_RANGE_ERROR | TDX_OPERAND_ID_RDX);
	memset(r, 0, sizeof(*r));
	r->rcx = dev;
	r->rdx = (uint64_t)(uintptr_t)list;
	call("register the BARs", TSM_SPDM_BARS, r, TDX_SUCCESS);
	call("register the BARs again", TSM_SPDM_BARS, r,
	     TSM_BARS_REGISTERED | TDX_OPERAND_ID_RCX);

	/* The link (Linux's tdx_link_connect): SPDM CONNECT, whose GET_VERSION goes to the
	 * device and whose answer comes back with the same registers; the IDE stream; its keys. */
	{
		struct tsm_tdx_spdm_config conf = { .vmm_spdm_cap = TSM_TDX_SPDM_CAP_KEY_UPD,
						    .certificate_slot_mask = 0xff };
		struct tsm_tdx_regs in;
		uint64_t stream;

		memcpy(host.spdm_conf, &conf, sizeof(conf));
		memset(&in, 0, sizeof(in));
		in.rcx = dev;
		in.rdx = (uint64_t)(uintptr_t)host.spdm_conf;
		in.r8 = (uint64_t)(uintptr_t)host.response;
		in.r9 = (uint64_t)(uintptr_t)host.request;
		in.r10 = TSM_TDX_HPA_ARRAY((uintptr_t)host.dev_info, 1);
		*r = in;
		call("SPDM connect: relay this", TDH_SPDM_CONNECT, r, TDX_SPDM_REQUEST);
		if (tsm_tdx_model_doe(host.request, r->rcx, host.response, &host.response_len) !=
		    TDX_SUCCESS)
			failures++;
		*r = in;
		r->r10 = TSM_TDX_HPA_ARRAY((uintptr_t)host.ide_mt, 1);
		call("SPDM connect, other registers", TDH_SPDM_CONNECT, r,
		     TDX_SPDM_INVALID_STATE | TDX_OPERAND_ID_R10);
		*r = in;
		call("SPDM connect: the VERSION", TDH_SPDM_CONNECT, r, TDX_SUCCESS);
		memset(r, 0, sizeof(*r));
		r->rcx = TSM_TDX_STREAM_INFO_TYPE_SEL;
		r->rdx = dev;
		r->r8 = TSM_TDX_HPA_ARRAY((uintptr_t)host.ide_mt, 1);
		r->r10 = TSM_TDX_RID_ASSOC1(0x0300);
		r->r11 = TSM_TDX_RID_ASSOC2(0x0300, 0) & ~TSM_TDX_ASSOC_VALID;
		r->r12 = TSM_TDX_ADDR_ASSOC1(0, 0xffffffffull);
		call("IDE stream, RID assoc not valid", TDH_IDE_STREAM_CREATE, r,
		     TDX_OPERAND_INVALID | TDX_OPERAND_ID_R11);
		r->r11 |= TSM_TDX_ASSOC_VALID;
		call("IDE stream create", TDH_IDE_STREAM_CREATE, r, TDX_SUCCESS);
		stream = r->rcx;
		memset(r, 0, sizeof(*r));
		r->rcx = dev;
		r->rdx = stream;
		r->r8 = TSM_TDX_IDE_KM_SETUP;
		r->r9 = (uint64_t)(uintptr_t)host.response;
		r->r10 = (uint64_t)(uintptr_t)host.response;
		call("IDE KM, one page both ways", TDH_IDE_STREAM_KM, r,
		     TDX_OPERAND_INVALID | TDX_OPERAND_ID_R10);
		r->r10 = (uint64_t)(uintptr_t)host.request;
		call("IDE KM SETUP", TDH_IDE_STREAM_KM, r, TDX_SUCCESS);
	}


	/* The TDI's private pages: the DEVIFCS page, the TD's and the VMM's buffers. */
	create_regs(r, dev, td);
	r->r9 += 8;
	call("create TDI, page misaligned", TDH_DEVIF_CREATE, r,
	     TDX_OPERAND_INVALID | TDX_OPERAND_ID_R9);
	create_regs(r, dev, td);
	r->r10 = (uint64_t)(uintptr_t)host.tdr;
	call("create TDI, R10 the TDR", TDH_DEVIF_CREATE, r,
	     TDX_PAGE_METADATA_INCORRECT | TDX_OPERAND_ID_R10);
	create_regs(r, dev, td);
	call("create TDI", TDH_DEVIF_CREATE, r, TDX_SUCCESS);
	call("create TDI again", TDH_DEVIF_CREATE, r,
	     TDX_PAGE_METADATA_INCORRECT | TDX_OPERAND_ID_R8);
	tdi = TSM_TDX_FUNC_ID(0, 0x0300);

	/* The device reports the BAR as the interface's MMIO; bind reads it from the device. */
	if (tsm_tdx_model_report(0x00000300, list) != TDX_SUCCESS)
		failures++;
	memset(r, 0, sizeof(*r));
	r->rcx = tdi;
	r->rdx = td;
	r->r8 = (uint64_t)(uintptr_t)host.devifcs;
	call("bind, request into DEVIFCS", TSM_DEVIF_BIND, r,
	     TDX_PAGE_METADATA_INCORRECT | TDX_OPERAND_ID_R8);
	r->r8 = (uint64_t)(uintptr_t)host.request;
	call("bind: relay this", TSM_DEVIF_BIND, r, TDX_SPDM_REQUEST);
	/* An answer that is not the device's (garbled) is refused; the request still waits. */
	memset(host.response, 0xa5, 64);
	memset(r, 0, sizeof(*r));
	r->rcx = tdi;
	r->rdx = (uint64_t)(uintptr_t)host.response;
	r->r8 = (uint64_t)(uintptr_t)host.request;
	call("garbled response", TDH_DEVIF_RESPONSE, r,
	     TDX_DEVIF_TDISP_INVALID_MESSAGE | TDX_OPERAND_ID_RDX);
	/* The host lost the request: the firmware writes it again (the bind's code, LOCK). */
	memset(host.request, 0, sizeof(host.request));
	memset(r, 0, sizeof(*r));
	r->rcx = tdi;
	r->rdx = TSM_TDX_TDISP_LOCK_INTERFACE;
	r->r8 = (uint64_t)(uintptr_t)host.request;
	call("the request again", TDH_DEVIF_REQUEST, r, TDX_SPDM_REQUEST);
	status = relay(TDX_SPDM_REQUEST, tdi);
	printf("%-34s status 0x%016llx %s\n", "bind relayed", (unsigned long long)status,
	       status == TDX_SUCCESS ? "ok" : "UNEXPECTED");
	if (status != TDX_SUCCESS)
		failures++;
	memset(r, 0, sizeof(*r));
	r->rcx = tdi;
	call("response, none outstanding", TDH_DEVIF_RESPONSE, r,
	     TDX_DEVIF_TDISP_OUT_REQ | TDX_OPERAND_ID_RCX);

	/*
	 * TDH.MMIO.MAP as Linux's tdh_mmio_map() issues it: RCX gpa | level, RDX TDR, R8 HPA,
	 * nothing else; the firmware finds the TDI that owns the page. R9 is reserved: a
	 * non-zero R9 is refused, naming R9, and maps nothing.
	 */
	memset(r, 0, sizeof(*r));
	r->rcx = TSM_TDX_PAGE_INFO(gpa, 1);
	r->rdx = td;
	r->r8 = bar;
	r->r9 = 1;
	call("map, R9 set", TDH_MMIO_MAP, r, TDX_OPERAND_INVALID | TDX_OPERAND_ID_R9);
	memset(r, 0, sizeof(*r));
	r->rcx = TSM_TDX_PAGE_INFO(gpa, 1);
	r->rdx = td;
	r->r8 = bar;
	call("map 2M", TDH_MMIO_MAP, r, TDX_SUCCESS);

	/* Reserved bits in RAX and an unaligned page are refused with OPERAND_INVALID. */
	memset(r, 0, sizeof(*r));
	r->rax = TDH_MMIO_MAP | (1ull << 40);
	if (tsm_tdx_seamcall(r) != (TDX_OPERAND_INVALID | TDX_OPERAND_ID_RAX))
		failures++;
	memset(r, 0, sizeof(*r));
	r->rcx = TSM_TDX_PAGE_INFO(gpa + 0x1000, 1);
	r->rdx = td;
	r->r8 = bar;
	call("map unaligned", TDH_MMIO_MAP, r, TDX_OPERAND_INVALID | TDX_OPERAND_ID_RCX);

	/* The old host order: zap (and block) while bound. */
	memset(r, 0, sizeof(*r));
	r->rcx = bar;
	r->rdx = bar_pages;
	call("zap while bound", TSM_MMIO_ZAP_CHECK, r,
	     TDX_DEVIF_TDISP_INVALID_STATE | TDX_OPERAND_ID_RCX);
	memset(r, 0, sizeof(*r));
	r->rcx = TSM_TDX_PAGE_INFO(gpa, 1);
	r->rdx = td;
	call("block while bound", TDH_MMIO_BLOCK, r,
	     TDX_DEVIF_TDISP_INVALID_STATE | TDX_OPERAND_ID_RCX);

	/* The fixed order: unbind first (resumable, STOP relayed), then zap. */
	calls = 0;
	do {
		memset(r, 0, sizeof(*r));
		r->rax = TSM_DEVIF_UNBIND;
		r->rcx = tdi;
		r->r8 = (uint64_t)(uintptr_t)host.request;
		status = relay(tsm_tdx_seamcall(r), tdi);
		calls++;
	} while (status == TDX_INTERRUPTED_RESUMABLE && calls < 1000);
	printf("%-34s status 0x%016llx after %d call(s) %s\n", "unbind", (unsigned long long)status,
	       calls, status == TDX_SUCCESS ? "ok" : "UNEXPECTED");
	if (status != TDX_SUCCESS)
		failures++;

	memset(r, 0, sizeof(*r));
	r->rcx = TSM_TDX_PAGE_INFO(gpa, 0);
	r->rdx = td;
	call("S-EPT read after unbind", TDH_MEM_SEPT_RD, r, TDX_EPT_WALK_FAILED | TDX_OPERAND_ID_RCX);

	memset(r, 0, sizeof(*r));
	r->rcx = bar;
	r->rdx = bar_pages;
	call("zap after unbind", TSM_MMIO_ZAP_CHECK, r, TDX_SUCCESS);

	memset(r, 0, sizeof(*r));
	r->rcx = tdi;
	call("remove TDI", TDH_DEVIF_REMOVE, r, TDX_SUCCESS);
	if (r->rcx != (uint64_t)(uintptr_t)host.td_buffer ||
	    r->rdx != (uint64_t)(uintptr_t)host.vmm_buffer || r->r8 != td) {
		puts("REMOVE did not hand back the TD buffer, the VMM buffer and the TDR");
		failures++;
	}
	/* As Linux's tdx_link_disconnect(): the stream's keys stopped, the stream blocked and
	 * deleted, the session disconnected; an SPDM delete before that is refused. */
	memset(r, 0, sizeof(*r));
	r->rcx = dev;
	call("remove device with a stream", TDH_SPDM_DELETE, r,
	     TDX_SPDM_HAS_ACTIVE_IDE_STREAMS | TDX_OPERAND_ID_RCX);
	memset(r, 0, sizeof(*r));
	r->rcx = dev;
	r->rdx = dev; /* the stream ID: ours, the SPDM id */
	r->r8 = TSM_TDX_IDE_KM_STOP;
	r->r9 = (uint64_t)(uintptr_t)host.response;
	r->r10 = (uint64_t)(uintptr_t)host.request;
	call("IDE KM STOP", TDH_IDE_STREAM_KM, r, TDX_SUCCESS);
	memset(r, 0, sizeof(*r));
	r->rcx = dev;
	r->rdx = dev;
	call("IDE delete before block", TDH_IDE_STREAM_DELETE, r,
	     TDX_IDE_STREAM_NOT_BLOCKED | TDX_OPERAND_ID_RDX);
	call("IDE block", TDH_IDE_STREAM_BLOCK, r, TDX_SUCCESS);
	call("IDE delete", TDH_IDE_STREAM_DELETE, r, TDX_SUCCESS);
	memset(r, 0, sizeof(*r));
	r->rcx = dev;
	r->rdx = (uint64_t)(uintptr_t)host.response;
	r->r8 = (uint64_t)(uintptr_t)host.request;
	call("SPDM disconnect", TDH_SPDM_DISCONNECT, r, TDX_SUCCESS);
	/* As Linux's tdh_spdm_delete(): RDX 0 for a one-page array; RCX the released array. */
	memset(r, 0, sizeof(*r));
	r->rcx = dev;
	call("remove device", TDH_SPDM_DELETE, r, TDX_SUCCESS);
	if (r->rcx != TSM_TDX_HPA_ARRAY((uintptr_t)host.spdm_mt, 1)) {
		puts("released array is not the metadata page");
		failures++;
	}

	printf("%s: %d failure(s)\n", failures ? "FAIL" : "PASS", failures);
	return failures ? 1 : 0;
}
