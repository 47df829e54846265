/*
 * The Linux TDX Connect host's whole flow, through the C entry point only (tsm_tdx_init,
 * tsm_tdx_seamcall, tsm_tdx_tdcall and the test-only model device): TD create, device set-up,
 * the link as Linux's tdx_link_connect() sets it up (TDH_SPDM_CONNECT with its DOE round trip:
 * GET_VERSION relayed to the model device and the same registers re-issued; then
 * TDH_IDE_STREAM_CREATE and TDH_IDE_STREAM_KM SETUP), TDI create with the TDX-IO operands
 * (devif_id_t naming the stream and the function, the TD, three private pages), bind
 * (TDH_DEVIF_REQUEST LOCK_INTERFACE, every request relayed through the model device's DOE
 * mailbox and TDH_DEVIF_RESPONSE), map, the guest's accept and start (TDG_DEVIF_REQUEST, the
 * host's TDH_DEVIF_REQUEST/RESPONSE with td_flag, TDG_DEVIF_RESPONSE). Then, once per vfio
 * host path (the names only label the iterations: the firmware sees the same calls), the old
 * order is refused with nothing changed and the patched order succeeds: unbind
 * (TDH_DEVIF_REQUEST STOP_INTERFACE, relayed), zap check, TDI remove (its pages handed back),
 * and a new TDI bound for the next path. Every other path the
 * host removes the leaves itself (BLOCK, TRACK, UNMAP) once STOP is acknowledged. One line per
 * step. At the end Linux's teardown (tdx_link_disconnect): KM STOP, BLOCK, DELETE, DISCONNECT,
 * SPDM DELETE. The first mismatch ends the program with exit status 1.
 */
#include <stdlib.h>

#include "host.h"

static struct tsm_tdx_regs *const r = &host.regs;

enum { IFACE = 0x0300 }; /* 0000:03:00.0 */
static const uint64_t bar = 0x80000000ull, bar_pages = 1024; /* 4 MiB BAR */
static const uint64_t gpa = 0x1000000000ull;      /* the TD sees the BAR here */

/*
 * The TDI's leaves: leaf 0 a 2 MiB page at the BAR's start, leaf i > 0 the 4 KiB page
 * (i - 1) after it. A path with the host's own teardown maps 70 4 KiB leaves: unbind blocks or
 * removes at most 64 leaves a call, so after STOP it still has blocked leaves left for the host.
 */
#define MAX_4K 70u
static size_t nleaves;

static uint64_t leaf_gpa(size_t i)
{
	return i ? gpa + 0x200000ull + (i - 1) * 0x1000ull : gpa;
}

static uint64_t leaf_hpa(size_t i)
{
	return i ? bar + 0x200000ull + (i - 1) * 0x1000ull : bar;
}

static uint64_t leaf_level(size_t i)
{
	return i ? 0 : 1;
}

static uint64_t leaf_info(size_t i)
{
	return TSM_TDX_PAGE_INFO(leaf_gpa(i), leaf_level(i));
}

static void check(const char *path, const char *what, uint64_t status, uint64_t expect)
{
	printf("%-11s %-34s 0x%016llx %s\n", path, what, (unsigned long long)status,
	       status == expect ? "ok" : "MISMATCH");
	if (status != expect) {
		printf("expected 0x%016llx\n", (unsigned long long)expect);
		exit(1);
	}
}

static void set(uint64_t leaf, uint64_t rcx, uint64_t rdx, uint64_t r8)
{
	memset(r, 0, sizeof(*r));
	r->rax = leaf;
	r->rcx = rcx;
	r->rdx = rdx;
	r->r8 = r8;
}

static uint64_t seam(uint64_t leaf, uint64_t rcx, uint64_t rdx, uint64_t r8)
{
	set(leaf, rcx, rdx, r8);
	return tsm_tdx_seamcall(r);
}

/* The event loop: while TDX_SPDM_REQUEST, the DOE object (length from its own header, dword 1
 * bits 17:0 in dwords; RCX devif_req_out_t says the same in 23:8) to the device, its answer
 * back with TDH_DEVIF_RESPONSE: RDX devif_rsp_in_t (the response page, or 0 when the device
 * did not answer; `td_flag` for the TD's request), R8 the page for the next request. */
static uint64_t relay_flag(const char *path, uint64_t status, uint64_t tdi, uint64_t td_flag)
{
	int rounds = 0;

	while (status == TDX_SPDM_REQUEST && rounds++ < 100) {
		uint64_t len = request_length();

		check(path, "relay: request length = RCX 23:8", len, TSM_TDX_OUT_LENGTH(r->rcx));
		check(path, "relay: DOE exchange", model_doe(len), TDX_SUCCESS);
		status = respond(tdi, td_flag);
	}
	return status;
}

static uint64_t relay(const char *path, uint64_t status, uint64_t tdi)
{
	return relay_flag(path, status, tdi, 0);
}

/* TDH_DEVIF_REQUEST with TDISP request `code`, the request into the request page. */
static uint64_t devif_request(uint64_t tdi, uint64_t code)
{
	return seam(TDH_DEVIF_REQUEST, tdi, code, page_of(host.request));
}

/* TDH_DEVIF_CREATE of IFACE on SPDM id `dev`'s stream (its stream ID is the SPDM id) for TD
 * `td`, with the private pages. The TDI is named by its function ID from here on. */
static uint64_t devif_create(uint64_t dev, uint64_t td)
{
	set(TDH_DEVIF_CREATE, TSM_TDX_DEVIF_ID(dev, TSM_TDX_FUNC_ID(0, IFACE)), td,
	    page_of(host.devifcs));
	r->r9 = page_of(host.td_buffer);
	r->r10 = page_of(host.vmm_buffer);
	return tsm_tdx_seamcall(r);
}

/* The link's relay (tdx_link_event_handler / tdx_spdm_msg_exchange): while
 * TDX_SPDM_REQUEST, the DOE object in the request page (its length from its own header) to
 * the device, its answer into the response page, and the SAME registers again. */
static uint64_t link_loop(const char *what, const struct tsm_tdx_regs *in)
{
	uint64_t status;
	int rounds = 0;

	*r = *in;
	status = tsm_tdx_seamcall(r);
	while (status == TDX_SPDM_REQUEST && rounds++ < 8) {
		uint32_t dw1;
		uint64_t len;

		memcpy(&dw1, host.request + 4, sizeof(dw1));
		len = (uint64_t)(dw1 & 0x3ffffu) * 4;
		check("link", "relay: request length = RCX", len, r->rcx);
		check("link", "relay: DOE type 1 (CMA/SPDM)", host.request[2], 1);
		check("link", "relay: DOE exchange",
		      tsm_tdx_model_doe(host.request, len, host.response, &host.response_len),
		      TDX_SUCCESS);
		*r = *in;
		status = tsm_tdx_seamcall(r);
	}
	printf("%-11s %-34s %d round trip(s)\n", "link", what, rounds);
	return status;
}

static uint64_t stream_id;

/* tdx_link_connect(): SPDM CONNECT (relayed), IDE stream create, KM SETUP. */
static void connect(uint64_t dev)
{
	struct tsm_tdx_spdm_config conf = { .vmm_spdm_cap = TSM_TDX_SPDM_CAP_KEY_UPD,
					    .certificate_slot_mask = 0xff };
	struct tsm_tdx_regs in, out;
	struct tsm_tdx_dev_info info;

	memset(host.spdm_conf, 0, sizeof(host.spdm_conf));
	memcpy(host.spdm_conf, &conf, sizeof(conf));
	memset(&in, 0, sizeof(in));
	in.rax = TDH_SPDM_CONNECT;
	in.rcx = dev;
	in.rdx = (uint64_t)(uintptr_t)host.spdm_conf;
	in.r8 = (uint64_t)(uintptr_t)host.response;
	in.r9 = (uint64_t)(uintptr_t)host.request;
	in.r10 = TSM_TDX_HPA_ARRAY((uintptr_t)host.dev_info, 1);
	check("link", "TDH.SPDM.CONNECT", link_loop("TDH.SPDM.CONNECT", &in), TDX_SUCCESS);
	check("link", "  RCX dev_info size", r->rcx, TSM_TDX_DEV_INFO_BYTES);
	memcpy(&info, host.dev_info, sizeof(info));
	check("link", "  dev_info SPDM version", info.spdm_version, 0x12);
	check("link", "  dev_info function ID", info.function_id, TSM_TDX_FUNC_ID(0, IFACE));

	/* As tdx_ide_stream_create(): selective stream, RID association of the endpoint alone,
	 * one address window (here 4 GiB at 0). */
	memset(&out, 0, sizeof(out));
	out.rax = TDH_IDE_STREAM_CREATE;
	out.rcx = TSM_TDX_STREAM_INFO_TYPE_SEL;
	out.rdx = dev;
	out.r8 = TSM_TDX_HPA_ARRAY((uintptr_t)host.ide_mt, 1);
	out.r10 = TSM_TDX_RID_ASSOC1(IFACE);
	out.r11 = TSM_TDX_RID_ASSOC2(IFACE, 0);
	out.r12 = TSM_TDX_ADDR_ASSOC1(0, 0xffffffffull);
	*r = out;
	check("link", "TDH.IDE.STREAM.CREATE", tsm_tdx_seamcall(r), TDX_SUCCESS);
	stream_id = r->rcx;

	memset(&in, 0, sizeof(in));
	in.rax = TDH_IDE_STREAM_KM;
	in.rcx = dev;
	in.rdx = stream_id;
	in.r8 = TSM_TDX_IDE_KM_SETUP;
	in.r9 = (uint64_t)(uintptr_t)host.response;
	in.r10 = (uint64_t)(uintptr_t)host.request;
	check("link", "TDH.IDE.STREAM.KM SETUP", link_loop("TDH.IDE.STREAM.KM", &in), TDX_SUCCESS);
}

/* tdx_link_disconnect(): KM STOP, BLOCK, DELETE, DISCONNECT, SPDM DELETE. */
static void disconnect(uint64_t dev)
{
	struct tsm_tdx_regs in;

	memset(&in, 0, sizeof(in));
	in.rax = TDH_IDE_STREAM_KM;
	in.rcx = dev;
	in.rdx = stream_id;
	in.r8 = TSM_TDX_IDE_KM_STOP;
	in.r9 = (uint64_t)(uintptr_t)host.response;
	in.r10 = (uint64_t)(uintptr_t)host.request;
	check("teardown", "TDH.IDE.STREAM.KM STOP", link_loop("TDH.IDE.STREAM.KM", &in),
	      TDX_SUCCESS);
	check("teardown", "TDH.IDE.STREAM.BLOCK", seam(TDH_IDE_STREAM_BLOCK, dev, stream_id, 0),
	      TDX_SUCCESS);
	check("teardown", "TDH.IDE.STREAM.DELETE", seam(TDH_IDE_STREAM_DELETE, dev, stream_id, 0),
	      TDX_SUCCESS);
	check("teardown", "  RCX released pages", r->rcx,
	      TSM_TDX_HPA_ARRAY((uintptr_t)host.ide_mt, 1));
	memset(&in, 0, sizeof(in));
	in.rax = TDH_SPDM_DISCONNECT;
	in.rcx = dev;
	in.rdx = (uint64_t)(uintptr_t)host.response;
	in.r8 = (uint64_t)(uintptr_t)host.request;
	check("teardown", "TDH.SPDM.DISCONNECT", link_loop("TDH.SPDM.DISCONNECT", &in),
	      TDX_SUCCESS);
	check("teardown", "TDH.SPDM.DELETE", seam(TDH_SPDM_DELETE, dev, 0, 0), TDX_SUCCESS);
	check("teardown", "  RCX released pages", r->rcx,
	      TSM_TDX_HPA_ARRAY((uintptr_t)host.spdm_mt, 1));
}

/* TSM_DEVIF_STATE: RDX state code, R8 owner TDR (or ~0). */
static void expect_state(const char *path, uint64_t tdi, uint64_t code, uint64_t owner)
{
	check(path, "TSM.DEVIF.STATE", seam(TSM_DEVIF_STATE, tdi, 0, 0), TDX_SUCCESS);
	check(path, "  state code", r->rdx, code);
	check(path, "  owner", r->r8, owner);
}

/* TDH_MEM_SEPT_RD of leaf i: the S-EPT state code (RDX 15:8) and, when `entry` is not 0, the
 * whole entry (RCX) as read before. Returns the entry. */
static uint64_t expect_leaf(const char *path, uint64_t td, size_t i, uint64_t state,
			    uint64_t entry)
{
	uint64_t status = seam(TDH_MEM_SEPT_RD, leaf_info(i),
			       td, 0);

	if (state == 0) {
		/* Removed: no table down to the leaf's level, or a FREE entry in it. */
		if (status == TDX_SUCCESS && ((r->rdx >> 8) & 0xff) == 0 &&
		    (r->rdx & 0xff) == leaf_level(i) + 1)
			check(path, "TDH.MEM.SEPT.RD (removed: FREE)", status, TDX_SUCCESS);
		else
			check(path, "TDH.MEM.SEPT.RD (removed: no walk)", status,
			      TDX_EPT_WALK_FAILED | TDX_OPERAND_ID_RCX);
		return 0;
	}
	check(path, "TDH.MEM.SEPT.RD", status, TDX_SUCCESS);
	check(path, "  state", (r->rdx >> 8) & 0xff, state);
	check(path, "  EPT level (4 KiB = 1)", r->rdx & 0xff, leaf_level(i) + 1);
	if (entry)
		check(path, "  entry unchanged", r->rcx, entry);
	return r->rcx;
}

/* TDI create, bind (relayed), map, guest accept, guest start (relayed). */
static uint64_t bring_up(const char *path, uint64_t dev, uint64_t td)
{
	uint64_t tdi, first_page;
	size_t i;

	check(path, "TDH.DEVIF.CREATE", devif_create(dev, td), TDX_SUCCESS);
	tdi = TSM_TDX_FUNC_ID(0, IFACE);
	check(path, "TDH.DEVIF.REQUEST LOCK", devif_request(tdi, TSM_TDX_TDISP_LOCK_INTERFACE),
	      TDX_SPDM_REQUEST);
	check(path, "bind relayed", relay(path, TDX_SPDM_REQUEST, tdi), TDX_SUCCESS);
	check(path, "  RCX LOCK_INTERFACE_RESPONSE", r->rcx & 0xff, 0x03);
	expect_state(path, tdi, 1, td);
	/* The guest reads where its report puts the BAR (the bind's reporting offset included)
	 * and accepts each page at that address plus the page's offset in the BAR. */
	set(TDG_DEVIF_RD, tdi, TSM_DEVIF_FIELD_REPORTED_RANGE, 0);
	check(path, "TDG.DEVIF.RD (TDCALL)", tsm_tdx_tdcall(td, r), TDX_SUCCESS);
	first_page = r->rcx;
	for (i = 0; i < nleaves; i++) {
		check(path, "TDH.MMIO.MAP",
		      seam(TDH_MMIO_MAP, leaf_info(i), td,
			   leaf_hpa(i)),
		      TDX_SUCCESS);
		expect_leaf(path, td, i, 2, 0);
		set(TDG_MMIO_ACCEPT, leaf_info(i), first_page + (leaf_hpa(i) - bar), 0);
		check(path, "TDG.MMIO.ACCEPT (TDCALL)", tsm_tdx_tdcall(td, r), TDX_SUCCESS);
		expect_leaf(path, td, i, 3, 0);
	}
	/* START waits for the TD's accept of the TDI's trusted DMA context. */
	set(TDG_DEVIF_REQUEST, tdi, TSM_TDX_TDISP_START_INTERFACE, 0);
	check(path, "TDG.DEVIF.REQUEST START, no DMA ctx", tsm_tdx_tdcall(td, r),
	      TSM_DMA_NOT_ACCEPTED | TDX_OPERAND_ID_RCX);
	set(TDH_DMAR_ADD, TSM_TDX_DMAR_IDX(0, IFACE), td, TSM_TDX_PASIDTE_ADD_Q0_4LEVEL);
	r->r9 = TSM_TDX_PASIDTE_ADD_Q1;
	check(path, "TDH.DMAR.ADD", tsm_tdx_seamcall(r), TDX_SUCCESS);
	set(TDG_DEVIF_REQUEST, tdi, TSM_TDX_TDISP_START_INTERFACE, 0);
	check(path, "TDG.DEVIF.REQUEST START, not accepted", tsm_tdx_tdcall(td, r),
	      TSM_DMA_NOT_ACCEPTED | TDX_OPERAND_ID_RCX);
	set(TDG_DMAR_ACCEPT, tdi, 0, 0);
	check(path, "TDG.DMAR.ACCEPT (TDCALL)", tsm_tdx_tdcall(td, r), TDX_SUCCESS);
	set(TDG_DEVIF_REQUEST, tdi, TSM_TDX_TDISP_START_INTERFACE, 0);
	check(path, "TDG.DEVIF.REQUEST START (TDCALL)", tsm_tdx_tdcall(td, r), TDX_SUCCESS);
	check(path, "TDH.DEVIF.REQUEST td_flag", devif_request(tdi, TSM_TDX_REQ_IN_TD_FLAG),
	      TDX_SPDM_REQUEST);
	check(path, "start relayed",
	      relay_flag(path, TDX_SPDM_REQUEST, tdi, TSM_TDX_REQ_IN_TD_FLAG), TDX_SUCCESS);
	set(TDG_DEVIF_RESPONSE, tdi, 0, 0);
	check(path, "TDG.DEVIF.RESPONSE (TDCALL)", tsm_tdx_tdcall(td, r), TDX_SUCCESS);
	check(path, "  RCX START_INTERFACE_RESPONSE", r->rcx & 0xff, 0x06);
	expect_state(path, tdi, 2, td);
	return tdi;
}

/* The old order: zap check, then BLOCK and UNMAP of every leaf, while bound. Each is refused
 * and the TDI and every leaf are as they were. */
static void old_order(const char *path, uint64_t tdi, uint64_t td)
{
	uint64_t entry[1 + MAX_4K];
	size_t i;

	for (i = 0; i < nleaves; i++)
		entry[i] = expect_leaf(path, td, i, 3, 0);
	check(path, "old: TSM.MMIO.ZAP_CHECK", seam(TSM_MMIO_ZAP_CHECK, bar, bar_pages, 0),
	      TDX_DEVIF_TDISP_INVALID_STATE | TDX_OPERAND_ID_RCX);
	for (i = 0; i < nleaves; i++) {
		uint64_t info = leaf_info(i);

		check(path, "old: TDH.MMIO.BLOCK", seam(TDH_MMIO_BLOCK, info, td, 0),
		      TDX_DEVIF_TDISP_INVALID_STATE | TDX_OPERAND_ID_RCX);
		check(path, "old: TDH.MMIO.UNMAP", seam(TDH_MMIO_UNMAP, info, td, 0),
		      TDX_DEVIF_TDISP_INVALID_STATE | TDX_OPERAND_ID_RCX);
	}
	expect_state(path, tdi, 2, td);
	for (i = 0; i < nleaves; i++)
		expect_leaf(path, td, i, 3, entry[i]);
}

/* The host's answer to TDX_IOMMU_IOTLB_TRACKING_NOT_DONE (a TRACK, or an unbind waiting for
 * the TD's domain): the TD's domain invalidation its last TDH.MEM.TRACK owes on each IOMMU with
 * an entry of the TD, here IOMMU 0 (NOT_REQUIRED when none is owed), then TDH.IQ.INV.PROCESS of
 * everything queued. */
static void iotlb_drain(const char *path, uint64_t td)
{
	uint64_t status;

	set(TDH_IQ_INV_REQUEST, 0, TSM_TDX_INV_REQ_IOTLB, td);
	r->r9 = TSM_TDX_WAIT_DESC | (1ull << 32);
	r->r10 = page_of(&host.iq_status);
	status = tsm_tdx_seamcall(r);
	if (status != TDX_IOMMU_IOTLB_TRACKING_NOT_REQUIRED)
		check(path, "TDH.IQ.INV.REQUEST IOTLB (the TD's domain)", status, TDX_SUCCESS);
	check(path, "TDH.IQ.INV.PROCESS", seam(TDH_IQ_INV_PROCESS, 0, 0, 0), TDX_SUCCESS);
}

/* The host's answer to TDX_DMAR_INVALID_INV_STATE | DMAR (an unbind waiting for its PASID
 * entry's own invalidation): the firmware queued it when it blocked the entry, so
 * TDH.IQ.INV.PROCESS of the entry's IOMMU completes it. */
static void entry_drain(const char *path)
{
	check(path, "TDH.IQ.INV.PROCESS (the entry's)", seam(TDH_IQ_INV_PROCESS, 0, 0, 0),
	      TDX_SUCCESS);
}

/* The Linux host's own DMA context teardown after STOP, on an entry the unbind blocked and
 * queued already: BLOCK changes nothing; IQ.INV.REQUEST finds the invalidation queued or done
 * and is refused TDX_DMAR_INVALID_INV_STATE | R8, queueing nothing to wait on: done. */
static void linux_dma_teardown(const char *path)
{
	check(path, "host: TDH.DMAR.BLOCK (blocked by the unbind)",
	      seam(TDH_DMAR_BLOCK, TSM_TDX_DMAR_IDX(0, IFACE), 0, 0), TDX_SUCCESS);
	set(TDH_IQ_INV_REQUEST, 0, TSM_TDX_INV_REQ_PASIDTE, IFACE);
	r->r9 = TSM_TDX_WAIT_DESC | (2ull << 32);
	r->r10 = page_of(&host.iq_status);
	check(path, "host: TDH.IQ.INV.REQUEST (queued by the unbind)", tsm_tdx_seamcall(r),
	      TDX_DMAR_INVALID_INV_STATE | TDX_OPERAND_ID_R8);
}

/* The patched order: unbind first (STOP relayed), then the zap check, then TDI remove. With
 * `host_teardown`, the host first sees BLOCK and UNMAP refused until STOP is acknowledged,
 * then, while the unbind still has leaves, removes them itself (BLOCK, TRACK, UNMAP) before
 * finishing the unbind. */
static void patched_order(const char *path, uint64_t tdi, uint64_t td, int host_teardown)
{
	uint64_t status;
	size_t i;
	int calls = 1, stop_seen = 0, host_did = 0, dma_seen = 0;

	status = devif_request(tdi, TSM_TDX_TDISP_STOP_INTERFACE);
	for (;;) {
		if (status == TDX_SPDM_REQUEST) {
			check(path, "TSM.DEVIF.UNBIND: relay STOP", status, TDX_SPDM_REQUEST);
			if (host_teardown && !stop_seen) {
				/* Before STOP is acknowledged the device may still reach the guest. */
				check(path, "host: BLOCK before STOP acked",
				      seam(TDH_MMIO_BLOCK, leaf_info(0), td, 0),
				      TDX_DEVIF_TDISP_INVALID_STATE | TDX_OPERAND_ID_RCX);
				check(path, "host: UNMAP before STOP acked",
				      seam(TDH_MMIO_UNMAP, leaf_info(0), td, 0),
				      TDX_DEVIF_TDISP_INVALID_STATE | TDX_OPERAND_ID_RCX);
				check(path, "TDH.DEVIF.REQUEST LOCK while STOP waits",
				      devif_request(tdi, TSM_TDX_TDISP_LOCK_INTERFACE),
				      TDX_DEVIF_TDISP_OUT_REQ | TDX_OPERAND_ID_RCX);
				check(path, "TDH.DEVIF.REQUEST (STOP again)",
				      devif_request(tdi, TSM_TDX_TDISP_STOP_INTERFACE),
				      TDX_SPDM_REQUEST);
			}
			stop_seen = 1;
			status = relay(path, status, tdi);
		}
		if (status == (TDX_DMAR_INVALID_INV_STATE | TDX_OPERAND_ID_DMAR) && calls < 1000) {
			/* The entry's own invalidation, before STOP. */
			entry_drain(path);
			status = devif_request(tdi, TSM_TDX_TDISP_STOP_INTERFACE);
			calls++;
			continue;
		}
		if (status == TDX_IOMMU_IOTLB_TRACKING_NOT_DONE && calls < 1000) {
			/* The TD's domain, after the unbind's TRACK. */
			check(path, "  the domain's wait comes after STOP", stop_seen, 1);
			if (host_teardown && !dma_seen)
				linux_dma_teardown(path);
			dma_seen = 1;
			iotlb_drain(path, td);
			status = devif_request(tdi, TSM_TDX_TDISP_STOP_INTERFACE);
			calls++;
			continue;
		}
		if (status != TDX_INTERRUPTED_RESUMABLE || calls > 1000)
			break;
		check(path, "TSM.DEVIF.UNBIND: resumable", status, TDX_INTERRUPTED_RESUMABLE);
		if (host_teardown && stop_seen && !host_did) {
			expect_state(path, tdi, 4, td);
			for (i = 0; i < nleaves; i++) {
				if (seam(TDH_MEM_SEPT_RD, leaf_info(i), td, 0) != TDX_SUCCESS ||
				    ((r->rdx >> 8) & 0xff) == 0)
					continue; /* removed by the unbind already */
				check(path, "host: leaf left blocked", (r->rdx >> 8) & 0xff, 4);
				check(path, "host: TDH.MMIO.BLOCK",
				      seam(TDH_MMIO_BLOCK, leaf_info(i), td, 0), TDX_SUCCESS);
				do {
					status = seam(TDH_MEM_TRACK, td, 0, 0);
					if (status == TDX_IOMMU_IOTLB_TRACKING_NOT_DONE) {
						/* The last track still owes the domain's IOTLB. */
						iotlb_drain(path, td);
						status = TDX_INTERRUPTED_RESUMABLE;
					}
				} while (status == TDX_INTERRUPTED_RESUMABLE);
				check(path, "host: TDH.MEM.TRACK", status, TDX_SUCCESS);
				/* This track owes the domain's IOTLB too (the TD's DMA context names
				 * its S-EPT): the leaf goes once that is done. */
				iotlb_drain(path, td);
				check(path, "host: TDH.MMIO.UNMAP",
				      seam(TDH_MMIO_UNMAP, leaf_info(i), td, 0), TDX_SUCCESS);
				check(path, "  R8 the leaf's HPA", r->r8, leaf_hpa(i));
				expect_leaf(path, td, i, 0, 0);
				host_did++;
			}
		}
		status = devif_request(tdi, TSM_TDX_TDISP_STOP_INTERFACE);
		calls++;
	}
	printf("%-11s %-34s %d call(s), host removed %d leaves\n", path, "unbind", calls,
	       host_did);
	check(path, "unbind done", status, TDX_SUCCESS);
	if (host_teardown && !host_did)
		check(path, "host removed leaves", 0, 1);
	expect_state(path, tdi, 0, ~0ull);
	for (i = 0; i < nleaves; i++)
		expect_leaf(path, td, i, 0, 0);
	check(path, "new: TSM.MMIO.ZAP_CHECK", seam(TSM_MMIO_ZAP_CHECK, bar, bar_pages, 0),
	      TDX_SUCCESS);
	check(path, "TDH.DEVIF.REMOVE", seam(TDH_DEVIF_REMOVE, tdi, 0, 0), TDX_SUCCESS);
	check(path, "  RCX the TD buffer", r->rcx, page_of(host.td_buffer));
	check(path, "  RDX the VMM buffer", r->rdx, page_of(host.vmm_buffer));
	check(path, "  R8 the TDR", r->r8, td);
}

int main(void)
{
	enum { POOL_PAGES = 64 };
	static const char *const paths[] = { "mem-disable", "d3hot",	"runtime-pm", "flr-pcie",
					     "flr-af",	    "reset-ioctl", "hot-reset",	 "close" };
	uint64_t td, dev;
	void *pool = aligned_alloc(4096, POOL_PAGES * 4096);
	size_t p;

	if (!pool)
		return 2;
	check("setup", "tsm_tdx_init", tsm_tdx_init(pool, POOL_PAGES * 4096, &host, sizeof(host)),
	      TDX_SUCCESS);

	/* TD create as Linux's tdh_mng_create(): RCX the TDR page, RDX the HKID. */
	td = (uint64_t)(uintptr_t)host.tdr;
	check("setup", "TDH.MNG.CREATE", seam(TDH_MNG_CREATE, td, 1, 0), TDX_SUCCESS);

	/* Device set-up: the SPDM id (function ID + HPA_ARRAY_T), then the device's BARs. */
	check("setup", "TDH.SPDM.CREATE",
	      seam(TDH_SPDM_CREATE, TSM_TDX_FUNC_ID(0, IFACE),
		   TSM_TDX_HPA_ARRAY((uintptr_t)host.spdm_mt, 1), 0),
	      TDX_SUCCESS);
	dev = r->rcx;
	memset(&host.list, 0, sizeof(host.list));
	host.list.count = 1;
	host.list.ranges[0].first_page = bar;
	host.list.ranges[0].pages = (uint32_t)bar_pages;
	check("setup", "TSM.SPDM.BARS",
	      seam(TSM_SPDM_BARS, dev, (uint64_t)(uintptr_t)&host.list, 0), TDX_SUCCESS);
	/* A TDI before the link is up: its devif_id_t names no IDE stream. */
	check("setup", "TDH.DEVIF.CREATE (no stream yet)", devif_create(dev, td),
	      TDX_IDE_STREAM_INVALID_STATE | TDX_OPERAND_ID_RCX);
	connect(dev);
	/* What the device reports for the interface: its whole BAR. */
	check("setup", "model device report", tsm_tdx_model_report(IFACE, &host.list),
	      TDX_SUCCESS);

	for (p = 0; p < sizeof(paths) / sizeof(paths[0]); p++) {
		uint64_t tdi;

		nleaves = 1 + ((p & 1) ? MAX_4K : 1);
		tdi = bring_up(paths[p], dev, td);

		old_order(paths[p], tdi, td);
		patched_order(paths[p], tdi, td, (int)(p & 1));
	}

	disconnect(dev);
	/* KVM's tdx_mmu_release_hkid and tdx_reclaim_td_control_pages: the HKID released, the
	 * TDR reclaimed and its cache lines written back under the global KeyID. */
	check("teardown", "TDH.MNG.VPFLUSHDONE", seam(TDH_MNG_VPFLUSHDONE, td, 0, 0), TDX_SUCCESS);
	check("teardown", "TDH.PHYMEM.CACHE.WB start",
	      seam(TDH_PHYMEM_CACHE_WB, TSM_TDX_CACHE_WB_START, 0, 0), TDX_INTERRUPTED_RESUMABLE);
	check("teardown", "TDH.PHYMEM.CACHE.WB resume",
	      seam(TDH_PHYMEM_CACHE_WB, TSM_TDX_CACHE_WB_RESUME, 0, 0), TDX_SUCCESS);
	check("teardown", "TDH.MNG.KEY.FREEID", seam(TDH_MNG_KEY_FREEID, td, 0, 0), TDX_SUCCESS);
	check("teardown", "TDH.PHYMEM.PAGE.RECLAIM", seam(TDH_PHYMEM_PAGE_RECLAIM, td, 0, 0),
	      TDX_SUCCESS);
	if (r->rcx != TSM_TDX_PT_TDR || r->rdx != 0 || r->r8 != 0) {
		printf("FAIL teardown: RECLAIM out %llx %llx %llx\n", (unsigned long long)r->rcx,
		       (unsigned long long)r->rdx, (unsigned long long)r->r8);
		return 1;
	}
	check("teardown", "TDH.PHYMEM.PAGE.WBINVD",
	      seam(TDH_PHYMEM_PAGE_WBINVD, td | (1ull << TSM_TDX_KEYID_SHIFT), 0, 0), TDX_SUCCESS);
	puts("PASS");
	return 0;
}
