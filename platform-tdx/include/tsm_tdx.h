/*
 * tsm_tdx.h - C entry points of the TSM's TDX back end (platform-tdx, built as a static
 * library with `cargo rustc -p platform-tdx --lib --features capi --crate-type staticlib`).
 *
 * Building and linking. For a firmware image add `--release --target x86_64-unknown-none`:
 * the library lands in target/x86_64-unknown-none/release/libplatform_tdx.a (without them,
 * target/debug/libplatform_tdx.a: a debug build for trying it on a host, about 20 MB). Link
 * that archive alone: it needs no libc and no other library (a freestanding image links it
 * with `ld -nostdlib` and its own _start; platform-tdx/tests/c_abi.rs does). The test-support
 * build (feature model-device, which adds tsm_tdx_init and the model device) writes the same
 * file name when built by hand; `nm libplatform_tdx.a | grep -w tsm_tdx_init` finds a symbol
 * only in that one, which must never go into a firmware image.
 *
 * Panics. The library never panics on host input (every refusal is a status). Should a bug
 * panic anyway, the library's own panic handler executes `ud2`: an invalid-opcode trap, which
 * a firmware's #UD handler sees and a hosted process receives as SIGILL. It never returns to
 * the caller and never unwinds through C frames.
 *
 * Statuses to names. There is no C function for it: the TDX_* and TSM_* defines below are the
 * table (TDX_STATUS_CODE(s) for the status without its operand, TDX_STATUS_OPERAND(s) for the
 * operand ID, TDX_OPERAND_ID_* for what that names), and platform-tdx/README.md "Statuses"
 * maps each to the TSM's status. E.g. 0xC000010100000F07: TDX_OPERAND_ADDR_RANGE_ERROR on
 * TDX_OPERAND_ID_REG_BLOCK.
 *
 * The calling convention is SEAMCALL's: RAX carries the leaf on entry ({leaf[15:0],
 * version[23:16], reserved[63:24] = 0}) and the 64-bit completion status on return; operands
 * and outputs are in RCX, RDX, R8-R13. Leaf numbers and statuses are the TDX module's where
 * public (see platform-tdx/README.md); TSM_* values are this firmware's own.
 *
 * Host memory. The firmware touches host memory only inside the one range registered with
 * tsm_tdx_init_session: every register block and every parameter page (range list) must lie in it.
 * An address outside it is refused with TDX_OPERAND_ADDR_RANGE_ERROR naming the operand
 * (TDX_OPERAND_ID_REG_BLOCK for the register block itself), never dereferenced; a block or
 * list not 8-byte aligned is TDX_OPERAND_INVALID on the same operand. The firmware reads each
 * 8-byte word of a block or list once (an aligned 8-byte atomic load), into a private copy it
 * then checks and uses, and writes the register block back once on return. A host that writes
 * this memory while a call runs must do so with aligned 8-byte stores (never narrower or
 * unaligned ones: those race with the firmware's loads); it then gets the outcome of the
 * words as each was read once, which may mix old and new words of a block it rewrites, but is
 * checked as a whole like any other input. The one narrower access: a TD's wait status word
 * (TDG_IQ_INV_REQUEST), which the firmware writes with one aligned 4-byte atomic store when
 * the request ends, leaving the other half of its 8-byte word alone; the host leaves that
 * word to the TD while the request is active. Reserved fields must be zero, in a BAR list also
 * each range's attributes and range_id. Memory given at init (the pool, the host range) and
 * the firmware's own state are never accepted as MMIO (TSM_RESERVED_MEMORY).
 *
 * Addresses are physical, identity-mapped. Every address the firmware is given (the pool and
 * host range at init, register blocks, parameter and message pages, TDRs, BARs, range lists)
 * is a host physical address, and for memory the firmware reads or writes it is also the
 * address it dereferences: the prototype runs with virtual == physical (a firmware image
 * without paging tricks). An embedder that maps the pool or the host range elsewhere cannot
 * use this library unchanged.
 *
 * Range lists (struct tsm_tdx_range_list: TSM_SPDM_BARS, tsm_tdx_model_report). On TDX
 * `first_page` is a byte address, the host physical address of the range's first byte, 4 KiB
 * aligned, and `pages` counts 4 KiB pages: a first_page not 4 KiB aligned is
 * TDX_OPERAND_INVALID on the list's operand, one at or past 2^52
 * TDX_OPERAND_ADDR_RANGE_ERROR on it; pages 0, or a range running past 2^52, is
 * TSM_INVALID_RANGE on it. SEV-TIO differs (platform-sev/src/abi.rs): its interface report's
 * MMIO ranges (ReportRange.first_page) carry a 4 KiB page number, PFN = address >> 12;
 * its DEV_CREATE BAR list (BarEntry.base) is a byte address, 4 KiB aligned. Convert when moving a list between the two.
 *
 * The pool (tsm_tdx_init_session's `mem`) holds only the S-EPT (4 levels) and MMIO metadata (5
 * levels) table pages and their reference counts; see TSM_TDX_POOL_PAGES for its size.
 *
 * The relay. The firmware never talks to a device. A TDI is named by its TDISP function ID
 * (function_id_reg_t: bits 31:0, 63:32 zero) in RCX of every leaf on it; TDH_DEVIF_CREATE's
 * three pages are the firmware's (never read or written by the host). A leaf that needs the
 * device (TDH_DEVIF_REQUEST, TSM_DEVIF_BIND, TSM_DEVIF_UNBIND without FORCE, TSM_DEVIF_CHECK)
 * takes in R8 a shared page and returns TDX_SPDM_REQUEST: the request, a whole DOE data object
 * (vendor 0x0001, type 2: a secured SPDM record holding a vendor-defined TDISP message), is in
 * that page and RCX is devif_req_out_t (message code 7:0, length in bytes 23:8; the object's
 * own header says the same). The host sends it to the device's DOE mailbox, writes the
 * device's answer (a whole DOE object, header included) to a shared page, and calls
 * TDH_DEVIF_RESPONSE with RDX = devif_rsp_in_t (that page in 51:12; page 0: the device did not
 * answer) and R8 the page for the next request. That call returns TDX_SPDM_REQUEST again, or
 * the operation's own status: TDX_SUCCESS (RCX devif_rsp_out_t), TDX_INTERRUPTED_RESUMABLE
 * (unbind: call again), or its failure. A request the host lost is written again by
 * TDH_DEVIF_REQUEST with the same code. The firmware writes the request page in whole 8-byte
 * words (zeros after the object) and reads the answer once, in whole words (at most 7 bytes
 * past the answer), into its own memory before looking at it.
 */
#ifndef TSM_TDX_H
#define TSM_TDX_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The register block (matches platform_tdx::abi::SeamRegs, #[repr(C)]). */
struct tsm_tdx_regs {
	uint64_t rax, rcx, rdx, r8, r9, r10, r11, r12, r13, r14;
};

/* A host MMIO range in a range list (TDISP MMIO_RANGE layout). */
struct tsm_tdx_range {
	uint64_t first_page;
	uint32_t pages;
	uint16_t attributes;
	uint16_t range_id;
};

#define TSM_TDX_RANGE_LIST_CAPACITY 16u

/* A range list in host memory: BARs (device create) or a report's ranges (the model's
 * report). `count` entries are used (at most TSM_TDX_RANGE_LIST_CAPACITY, and at most 6 BARs
 * for a device); `reserved` must be 0 (else TDX_OPERAND_INVALID on the list's operand). */
struct tsm_tdx_range_list {
	uint32_t count;
	uint32_t reserved; /* must be 0 */
	struct tsm_tdx_range ranges[TSM_TDX_RANGE_LIST_CAPACITY];
};

/* Host leaves (SEAMCALL). A TD is named by its TDR page's physical address ("TDR"). */
#define TDH_MNG_CREATE         9u      /* RCX TDR (4 KiB aligned, in host memory, no KeyID bits),
                                          RDX HKID (15:0, 1..TSM_TDX_PRIVATE_HKID_MAX; 63:16
                                          reserved; TDX_HKID_NOT_FREE until that HKID's TD is
                                          KEY.FREEID'd); no outputs */
/* TD teardown, Linux's order (KVM tdx_mmu_release_hkid, tdx_reclaim_td_control_pages):
 * VPFLUSHDONE, CACHE.WB (START, then RESUME while TDX_INTERRUPTED_RESUMABLE), KEY.FREEID,
 * PAGE.RECLAIM of the TDR, PAGE.WBINVD of it. No vCPUs, no TDCS pages are modelled. */
#define TDH_MNG_VPFLUSHDONE    19u     /* RCX TDR; TDX_TD_HAS_ATTACHED_DEVICES while a TDI is bound;
                                          afterwards every other leaf naming the TD is
                                          TDX_TD_KEYS_NOT_CONFIGURED */
#define TDH_MNG_KEY_FREEID     20u     /* RCX TDR; TDX_WBCACHE_NOT_COMPLETE before a CACHE.WB */
#define TDH_PHYMEM_PAGE_RECLAIM 28u    /* RCX page (no KeyID bits) -> RCX page type
                                          (TSM_TDX_PT_TDR), RDX owner (0), R8 size (0 = 4K); only
                                          a TDR after KEY.FREEID: the TDR then names no TD */
#define TDH_PHYMEM_CACHE_WB    40u     /* RCX TSM_TDX_CACHE_WB_START or _RESUME */
#define TDH_PHYMEM_PAGE_WBINVD 41u     /* RCX page | KeyID << TSM_TDX_KEYID_SHIFT; a no-op for a page
                                          the firmware does not hold */
#define TSM_TDX_CACHE_WB_START   0u
#define TSM_TDX_CACHE_WB_RESUME  1u
#define TSM_TDX_KEYID_SHIFT      48u   /* ours: KeyID bits 51:48 of a physical address */
#define TSM_TDX_PRIVATE_HKID_MAX 63u   /* ours: private HKIDs are 1..63 */
#define TSM_TDX_PT_TDR           4u    /* PAMT page type of a TDR (RECLAIM RCX out) */
#define TDH_MEM_SEPT_RD        25u     /* RCX page info, RDX TDR -> RCX entry, RDX level|state<<8 */
#define TDH_MEM_TRACK          38u     /* RCX TDR; TDX_INTERRUPTED_RESUMABLE: call again */
#define TDH_SPDM_CREATE        130u    /* RCX TDISP function ID (TSM_TDX_FUNC_ID), RDX HPA_ARRAY_T of
                                          the SPDM metadata pages (TSM_TDX_HPA_ARRAY) -> RCX SPDM id
                                          (Linux's tdh_spdm_create() layout) */
#define TDH_SPDM_DELETE        131u    /* RCX SPDM id, RDX 0 (one page) or the array's root page ->
                                          RCX HPA_ARRAY_T of the released pages; refused while the
                                          device has TDIs (Linux's tdh_spdm_delete() layout) */
/* The link (Linux devsec tsm tree tdx.c @2c2d99f4 wrappers; TDX_SPDM_REQUEST: relay the DOE
 * object in the request page and re-issue the same registers). */
#define TDH_IDE_STREAM_CREATE  132u    /* RCX stream info, RDX SPDM id (connected), R8 HPA_ARRAY_T
                                          of stream metadata pages, R9 stream ctrl (0), R10 RID
                                          assoc 1, R11 RID assoc 2, R12-R14 address assoc 1-3
                                          -> RCX stream ID, RDX root-port IDE ID */
#define TDH_IDE_STREAM_BLOCK   133u    /* RCX SPDM id, RDX stream ID: the stream is cut */
#define TDH_IDE_STREAM_DELETE  134u    /* RCX SPDM id, RDX stream ID (blocked, no TDIs), R8 0 or the
                                          array's root -> RCX HPA_ARRAY_T of the released pages */
#define TDH_IDE_STREAM_KM      135u    /* RCX SPDM id, RDX stream ID, R8 op (TSM_TDX_IDE_KM_*), R9
                                          response page, R10 request page -> RCX 0 */
#define TDH_SPDM_CONNECT       142u    /* RCX SPDM id, RDX config page, R8 response page, R9 request
                                          page, R10 HPA_ARRAY_T of dev_info pages -> RCX request
                                          length (TDX_SPDM_REQUEST) or dev_info size (success) */
#define TDH_SPDM_DISCONNECT    143u    /* RCX SPDM id, RDX response page, R8 request page -> RCX 0 */
#define TDH_SPDM_MNG           144u    /* RCX SPDM id, RDX op (TSM_TDX_SPDM_MNG_*), R8 param page or
                                          ~0, R9 response page, R10 request page, R11 HPA_ARRAY_T
                                          or ~0 -> RCX 0 (RECOLLECT: dev_info size) */
#define TDH_DEVIF_CREATE       137u    /* RCX devif_id_t, RDX TDR, R8 DEVIFCS page, R9 TD buffer,
                                          R10 VMM buffer (firmware-private until REMOVE) */
#define TDH_DEVIF_REMOVE       138u    /* RCX function ID -> RCX R9 page, RDX R10 page, R8 TDR */
#define TDH_DEVIF_REQUEST      139u    /* RCX function ID, RDX devif_req_in_t, R8 shared page,
                                          R9 0 -> TDX_SPDM_REQUEST, RCX devif_req_out_t */
#define TDH_DEVIF_RESPONSE     140u    /* RCX function ID, RDX devif_rsp_in_t, R8 0 or next
                                          request page, R9 0 -> RCX devif_req_out_t or
                                          devif_rsp_out_t */
#define TDH_MMIO_MAP           158u    /* RCX page info, RDX TDR, R8 HPA; R9 reserved (0):
                                        * Linux's tdh_mmio_map() layout, the firmware finds
                                        * the TDI that owns the page */
#define TDH_MMIO_BLOCK         159u    /* RCX page info, RDX TDR */
#define TDH_MMIO_UNMAP         160u    /* RCX page info, RDX TDR -> R8 HPA */
/* Trusted DMA (intel/tdx-module TDX-IO tdx_api_defs.h @a56a9173): the PASID entry (PASID 0) of
 * a TDI's requester ID. RCX of the DMAR leaves is dmar_idx_t: level 2:0 (0, PASID entry),
 * 11:3 reserved, PASID 31:12 (0), RID 47:32, IOMMU id 63:48 (ours: the PCI segment). */
#define TDH_DMAR_ADD           150u    /* RCX dmar_idx_t, RDX TDR of the TDI's owner, R8-R14 the
                                          entry's qwords 0-6 (qword 7 in R15 is 0 and not
                                          read): R8 = TSM_TDX_PASIDTE_ADD_Q0 | AW << 2 (AW 2:
                                          4-level S-EPT, 3: 5-level), R9 =
                                          TSM_TDX_PASIDTE_ADD_Q1, R10-R14 0; a chosen SLPTPTR or
                                          DID is TDX_OPERAND_INVALID on its register. No room
                                          to reserve in the IOMMU's trusted queue (3 slots per
                                          entry, 2 per TD on the IOMMU; ours):
                                          TDX_IOMMU_IQ_QUEUE_FULL | RCX, nothing changed */
#define TDH_DMAR_BLOCK         151u    /* RCX dmar_idx_t (after STOP or a cut stream) */
#define TDH_DMAR_READ          152u    /* RCX dmar_idx_t -> RDX dmar_state_info_t, R8-R14 the
                                          entry's qwords 0-6 without the module's state bits */
#define TDH_DMAR_REMOVE        153u    /* RCX dmar_idx_t (blocked, its invalidation done) */
#define TDH_IQ_INV_REQUEST     161u    /* RCX IOMMU id, RDX TSM_TDX_INV_REQ_PASIDTE, R8 rid_pasid
                                          (RID 15:0, PASID 51:32 = 0), or RDX
                                          TSM_TDX_INV_REQ_IOTLB, R8 the TD's TDR (the domain
                                          invalidation its last TDH.MEM.TRACK owes on that
                                          IOMMU), R9-R12 the wait descriptor
                                          (R9: type 5, FN, PD 0, data 63:32; R10 the status
                                          address, 4-byte aligned, shared; R11, R12 0) -> RCX 0.
                                          No room in the IOMMU's trusted queue (checked first;
                                          ADD reserved the entry's and the TD's, so a PASIDTE or
                                          IOTLB request the state checks let through always
                                          fits; INV_REQ_TD uses the unreserved room only):
                                          TDX_IOMMU_IQ_QUEUE_FULL | RDX until PROCESS.
                                          PASIDTE of an entry not BLOCKED:
                                          TDX_DMAR_INVALID_MAPPING_STATE | R8; whose invalidation
                                          is QUEUED or DONE already (the unbind and ERROR queue it
                                          themselves): TDX_DMAR_INVALID_INV_STATE | R8, nothing
                                          queued (do not wait on the status word): PROCESS, then
                                          REMOVE.
                                          RDX TSM_TDX_INV_REQ_TD | pool << 32 (pool 1..0xFFFF;
                                          0 for every other type), R8 the TD's TDR: after the
                                          TD's TDG_IQ_INV_REQUEST, queue up to `pool` of its
                                          descriptors on this IOMMU (as many as the queue's
                                          unreserved room allows, one slot kept for the wait)
                                          -> RCX the descriptors still to queue here (call
                                          again until 0, PROCESS between when the queue is
                                          full). No request active, the IOMMU not needed by
                                          it, or nothing left to queue there:
                                          TDX_GUEST_INV_NOT_REQUIRED | R8. When PROCESS has
                                          completed them (or the TD's INV_REQ_IOTLB flush) on
                                          every IOMMU the request needs, the TD's wait status
                                          is written once, one 4-byte store (not for a TD past
                                          TDH_MNG_VPFLUSHDONE, nor into a page the firmware
                                          holds by then; TDH_DMAR_REMOVE and TSM_DEVIF_UNBIND
                                          end a request whose last IOMMU they removed) */
#define TDH_IQ_INV_PROCESS     162u    /* RCX IOMMU id: completes the queued invalidations */
#define TSM_TDX_PASIDTE_ADD_Q0 0x00000000000000a0ull /* SLEE | PGTT second-level only */
#define TSM_TDX_PASIDTE_ADD_Q1 0x0000000035800000ull /* PWSNP | PGSNP | EMTE | EMT WB */
#define TSM_TDX_INV_REQ_PASIDTE 4u
#define TSM_TDX_INV_REQ_IOTLB   0u
#define TSM_TDX_INV_REQ_TD      5u
#define TSM_TDX_INV_REQ_POOL_SHIFT 32u /* RDX 47:32: INV_REQ_TD's pool_size */
#define TSM_TDX_WAIT_DESC       0x0000000000000065ull /* R9: type 5 | SW | FN; data in 63:32 */
#define TSM_TDX_PASIDTE_ADD_Q0_4LEVEL 0x00000000000000a8ull /* ADD_Q0 with AW 2 (4-level S-EPT) */
/* dmar_idx_t of the PASID entry (level 0, PASID 0) of requester `rid` on the IOMMU of
 * `segment` (ours: one trusted IOMMU per segment). */
#define TSM_TDX_DMAR_IDX(segment, rid) (((uint64_t)(segment) << 48) | ((uint64_t)(rid) << 32))
/* 0xF001 (TSM_TD_DESTROY) is retired: the TD teardown leaves above replace it. */
#define TSM_DEVIF_BIND         0xF002u /* RCX function ID, RDX TDR (CREATE's), R8 request page;
                                          TDX_SPDM_REQUEST until the last answer binds */
#define TSM_DEVIF_UNBIND       0xF003u /* RCX function ID, RDX flags, R8 request page (0 with
                                          FORCE); TDX_INTERRUPTED_RESUMABLE until done;
                                          TDX_SPDM_REQUEST with STOP_INTERFACE (not with FORCE).
                                          Waiting for an IOTLB invalidation, progress kept (also
                                          from TDH_DEVIF_REQUEST STOP and TDH_DEVIF_RESPONSE):
                                          TDX_DMAR_INVALID_INV_STATE | TDX_OPERAND_ID_DMAR, the
                                          TDI's PASID entry's own, which the firmware queued:
                                          TDH_IQ_INV_PROCESS of its IOMMU, then call again;
                                          TDX_IOMMU_IOTLB_TRACKING_NOT_DONE (no operand, as
                                          TDH_MEM_TRACK), the TD's domain: TDH_IQ_INV_REQUEST
                                          TSM_TDX_INV_REQ_IOTLB (R8 the TDR) on each IOMMU with
                                          an entry of the TD, TDH_IQ_INV_PROCESS, call again */
#define TSM_UNBIND_FLAG_FORCE  (1ull << 0) /* RDX bit 0: cut the IDE stream, unbind without STOP */
#define TSM_DEVIF_ERROR        0xF004u /* RCX function ID */
#define TSM_DEVIF_STATE        0xF005u /* RCX function ID -> RCX TDISP state, RDX code, R8 owner
                                          TDR or ~0 */
#define TSM_MMIO_ZAP_CHECK     0xF006u /* RCX HPA, RDX pages */
#define TSM_DEVIF_CHECK        0xF007u /* RCX function ID, R8 request page; asks the device its
                                          TDISP state (TDX_SPDM_REQUEST) */
/* 0xF008 (TSM_IDE_STREAM_SETUP) is retired: TDH_IDE_STREAM_KM SETUP re-establishes a stream. */
#define TSM_SPDM_BARS          0xF009u /* RCX SPDM id, RDX range list (BARs): once, after
                                          TDH_SPDM_CREATE, before the first TDH_DEVIF_CREATE */
#define TSM_DEVIF_SET_TD       0xF00Au /* RCX function ID, RDX TDR: an unbound, idle TDI is for that
                                          TD from now (as REMOVE + CREATE would make it); RDX 0:
                                          for no TD (its old TDR can then be reclaimed) */
/* Guest leaves (TDCALL). */
#define TDG_MMIO_ACCEPT        71u     /* RCX page info, RDX the page's reported address (report
                                          FIRST_PAGE + page offset, MMIO_REPORTING_OFFSET included) */
#define TDG_DMAR_ACCEPT        70u     /* RCX function ID, RDX 0 (vm_idx 0, PASID 0), R8-R14 0: the
                                          owner's TDI, CONFIG_LOCKED or RUN; SLPTPTR becomes the
                                          TD's S-EPT root */
#define TDG_IQ_INV_REQUEST     72u     /* RCX descriptor count 1..128, RDX the TD's 4 KiB
                                          aligned private page of 32-byte VT-d descriptors
                                          (not a page the firmware holds: TDR, TDI private,
                                          SPDM/IDE metadata: TDX_OPERAND_INVALID | RDX):
                                          domain- or page-selective IOTLB (DW, DR, DID 0, IH
                                          only page-selective), a wait (SW, status GPA 4-byte
                                          aligned, private, writable host memory, not in a
                                          held page) only last -> RCX the descriptors
                                          each IOMMU holding an accepted PASID entry of the TD
                                          must queue (the module's TD exit to the VMM; ours:
                                          this firmware's TDCALL returns to its caller; the
                                          page and status word are read and written at the GPA
                                          in the caller's memory). One request at a time:
                                          TDX_GUEST_INV_IN_PROGRESS; a bad descriptor:
                                          TDX_GUEST_INV_INVALID_DESC | its index; no such
                                          IOMMU: TDX_GUEST_INV_NOT_REQUIRED | RDX; then a lone
                                          wait: TDX_GUEST_INV_INVALID_DESC | 0 (ours). A
                                          refusal writes no register but RAX */
#define TDG_DEVIF_RD           67u     /* RCX function ID, RDX field code (7:0, rest 0), R9 0 ->
                                          RCX value */
#define TDG_DEVIF_REQUEST      68u     /* RCX function ID, RDX 0x86 (START_INTERFACE), R9 0:
                                          queued for TDH_DEVIF_REQUEST td_flag */
#define TDG_DEVIF_RESPONSE     69u     /* RCX function ID, RDX 0, R9 0 -> the start's status,
                                          RCX devif_rsp_out_t */
#define TSM_DEVIF_FIELD_TDISP_VERSION 0x01u /* TDX-IO TDISP_VER_FIELD_CODE */
#define TSM_DEVIF_FIELD_TDISP_STATE   0x80u /* ours */
#define TSM_DEVIF_FIELD_REPORT_DIGEST 0x81u /* ours: + word 0..5 of the 48-byte report digest */
#define TSM_DEVIF_FIELD_REPORTED_RANGE 0x90u /* ours: + private range index: its FIRST_PAGE */
/* 0xF080 (TSM_GUEST_DEVIF_START) is retired: TDG_DEVIF_REQUEST START replaces it. */

/* TDX-IO DEVIF operands (intel/tdx-module devif_defs.h): devif_id_t = iommu id 15:0 (0 here),
 * stream id 23:16, devif type 31:24 (0: PF/VF), function ID 63:32; devif_req_in_t = TDISP
 * request code 7:0, no_fw_update 8 (LOCK only), td_flag 63; devif_rsp_in_t = answer page
 * 51:12, td_flag 63; devif_req_out_t / devif_rsp_out_t = code 7:0, length 23:8 (STATE
 * response: TDISP state 31:24). */
#define TSM_TDX_DEVIF_ID(stream, func_id) (((uint64_t)(stream) << 16) | ((uint64_t)(func_id) << 32))
#define TSM_TDX_REQ_IN_NO_FW_UPDATE (1ull << 8)
#define TSM_TDX_REQ_IN_TD_FLAG   (1ull << 63)
#define TSM_TDX_RSP_IN_PA_MASK   0x000FFFFFFFFFF000ull
#define TSM_TDX_OUT_LENGTH(rcx)  (((rcx) >> 8) & 0xFFFFu)
#define TSM_TDX_TDISP_LOCK_INTERFACE 0x83u
#define TSM_TDX_TDISP_GET_STATE      0x85u
#define TSM_TDX_TDISP_START_INTERFACE 0x86u
#define TSM_TDX_TDISP_STOP_INTERFACE 0x87u

/* TDH_SPDM_CREATE RCX, as Linux's tdisp_func_id(): requester ID (bus << 8 | devfn) in 15:0,
 * segment in 23:16, SEG_VALID (bit 24) set only for a non-zero segment; 63:25 reserved. */
#define TSM_TDX_FUNC_ID_SEG_VALID (1ull << 24)
#define TSM_TDX_FUNC_ID(segment, rid)                                                        \
	(((uint64_t)(segment) << 16) | (uint64_t)(rid) |                                   \
	 ((segment) ? TSM_TDX_FUNC_ID_SEG_VALID : 0))
/* TDH_SPDM_CREATE RDX, as Linux's hpa_array_t_assign_raw(): PFN in 51:12 (the page itself for
 * one page, else a root page of u64 page addresses), pages - 1 in 63:55. At most
 * TSM_TDX_SPDM_MT_MAX_PAGES pages, each a whole 4 KiB page of host memory in use by nothing. */
#define TSM_TDX_HPA_ARRAY(base, pages)                                                       \
	(((uint64_t)(base) & 0x000FFFFFFFFFF000ull) | (((uint64_t)(pages) - 1) << 55))
#define TSM_TDX_SPDM_MT_MAX_PAGES 4u

/* Link operands (Linux devsec tsm tree tdx-host.c @191928fb, drivers/pci/ide.c). */
#define TSM_TDX_NULL_PAGE            0xFFFFFFFFFFFFFFFFull /* SPDM.MNG R8/R11: no page */
#define TSM_TDX_SPDM_CAP_HBEAT       (1u << 13)   /* spdm_config_info_t vmm_spdm_cap */
#define TSM_TDX_SPDM_CAP_KEY_UPD     (1u << 14)   /* Linux sets it */
#define TSM_TDX_STREAM_INFO_TYPE_SEL (1ull << 8)  /* stream info: selective; 7:0 RP devfn */
#define TSM_TDX_ASSOC_VALID          (1ull << 0)  /* RID assoc 2, address assoc 1 */
/* RID assoc 1: limit in 23:8. RID assoc 2: VALID, base in 23:8, segment base in 31:24. */
#define TSM_TDX_RID_ASSOC1(limit) ((uint64_t)(limit) << 8)
#define TSM_TDX_RID_ASSOC2(base, segment)                                                    \
	(TSM_TDX_ASSOC_VALID | ((uint64_t)(base) << 8) | ((uint64_t)(segment) << 24))
/* Address assoc 1: VALID, base[31:20] in 19:8, limit[31:20] in 31:20; 2: limit[63:32];
 * 3: base[63:32]. */
#define TSM_TDX_ADDR_ASSOC1(base, limit)                                                     \
	(TSM_TDX_ASSOC_VALID | ((((uint64_t)(base) >> 20) & 0xFFF) << 8) |                 \
	 ((((uint64_t)(limit) >> 20) & 0xFFF) << 20))
#define TSM_TDX_IDE_KM_SETUP   0ull
#define TSM_TDX_IDE_KM_REFRESH 1ull
#define TSM_TDX_IDE_KM_STOP    2ull
#define TSM_TDX_SPDM_MNG_HEARTBEAT  0ull
#define TSM_TDX_SPDM_MNG_KEY_UPDATE 1ull
#define TSM_TDX_SPDM_MNG_RECOLLECT  2ull
/* spdm_config_info_t, packed at the head of the 4 KiB config page (the rest 0). */
struct tsm_tdx_spdm_config {
	uint32_t vmm_spdm_cap;          /* TSM_TDX_SPDM_CAP_* only */
	uint8_t spdm_session_policy;    /* 0 */
	uint8_t certificate_slot_mask;  /* not 0; Linux 0xFF */
	uint8_t raw_bitstream_requested; /* 0 or 1 */
} __attribute__((packed));
/* The dev_info record TDH_SPDM_CONNECT writes (ours). */
struct tsm_tdx_dev_info {
	uint32_t format;                /* 1 */
	uint8_t spdm_version;           /* 0x12 */
	uint8_t certificate_slot_mask;
	uint16_t reserved;
	uint64_t function_id;
	uint32_t vmm_spdm_cap;
	uint32_t reserved2;
};
#define TSM_TDX_DEV_INFO_BYTES 24u

/* Bytes of a message page; every request and answer fits in one. */
#define TSM_TDX_MESSAGE_PAGE_BYTES 4096u

/* Page info operand: guest physical address | level (0 = 4 KiB, 1 = 2 MiB, 2 = 1 GiB). The
 * GPA must be below the TD's S-EPT width (2^48 with the 4-level S-EPT init builds):
 * a wider one is TDX_OPERAND_ADDR_RANGE_ERROR on RCX, never an alias of its low 48 bits. */
#define TSM_TDX_PAGE_INFO(gpa, level) ((uint64_t)(gpa) | (uint64_t)(level))

/* Statuses: {error[63], non-recoverable[62], class[47:40], code[39:32], operand id[31:0]}. */
#define TDX_SUCCESS                    0x0000000000000000ull
#define TDX_INTERRUPTED_RESUMABLE      0x8000000300000000ull
#define TDX_OPERAND_INVALID            0xC000010000000000ull
#define TDX_OPERAND_ADDR_RANGE_ERROR   0xC000010100000000ull
#define TDX_OPERAND_BUSY               0x8000020000000000ull
#define TDX_PREVIOUS_TLB_EPOCH_BUSY    0x8000020100000000ull
#define TDX_SYSINIT_NOT_PENDING        0xC000050000000000ull
#define TDX_SYS_NOT_READY              0xC000050500000000ull
#define TDX_EPT_WALK_FAILED            0xC0000B0000000000ull
#define TDX_EPT_ENTRY_NOT_FREE         0xC0000B0200000000ull
#define TDX_GPA_RANGE_NOT_BLOCKED      0xC0000B0600000000ull
#define TDX_TLB_TRACKING_NOT_DONE      0xC0000B0800000000ull
#define TDX_DEVIF_TDISP_INVALID_STATE  0xC0000F1000000000ull
#define TDX_DEVIF_INVALID_STATE        0xC0000F1100000000ull
/* Trusted DMA (TDX-IO DMAR): a context (PASID entry) not in the state the request needs (one
 * exists already, or it is not blocked); its IOTLB invalidation not complete; none there; a
 * TDI whose DMA context remains. */
#define TDX_DMAR_INVALID_MAPPING_STATE 0xC0000F0700000000ull
#define TDX_DMAR_INVALID_INV_STATE     0xC0000F0800000000ull
#define TDX_DMAR_ENTRY_NOT_PRESENT     0xC0000F3900000000ull
#define TDX_DEVIF_HAS_MAPPED_DMA       0xC0000F3F00000000ull
/* A TD with an accepted PASID entry: TDH.MEM.TRACK, TDH.MMIO.UNMAP of a leaf blocked before
 * the last TRACK, TDH.DMAR.REMOVE, or the domain's TDH.IQ.INV.REQUEST again, while an IOMMU
 * owes the TD's domain the IOTLB invalidation that TRACK asked for; the domain's request on
 * an IOMMU that owes nothing. */
#define TDX_IOMMU_IOTLB_TRACKING_NOT_DONE     0xC0000F0300000000ull
#define TDX_IOMMU_IOTLB_TRACKING_NOT_REQUIRED 0xC0000F3B00000000ull
/* TDH_IQ_INV_REQUEST | RDX: the IOMMU's trusted invalidation queue lacks room for the request's
 * descriptors (3 for a PASID entry, 2 for a TD's domain) until TDH_IQ_INV_PROCESS;
 * TDH_DMAR_ADD | RCX (ours): no room to reserve for the new entry's. */
#define TDX_IOMMU_IQ_QUEUE_FULL               0xC0000F0100000000ull
/* The TD's own invalidations (TDG_IQ_INV_REQUEST, TDH_IQ_INV_REQUEST TSM_TDX_INV_REQ_TD).
 * NOT_REQUIRED and IOTLB_INV_REQUEST have bit 63 clear: not failures, nothing done. The
 * last is the module's TD-exit reason, named for hosts; this firmware does not return it. */
#define TDX_GUEST_INV_NOT_REQUIRED            0x00000F5300000000ull
#define TDX_GUEST_INV_IN_PROGRESS             0xC0000F5400000000ull
#define TDX_GUEST_INV_INVALID_DESC            0xC0000F5500000000ull
#define TDX_IOTLB_INV_REQUEST                 0x00000F5600000000ull
/* The relay: "relay the request in the request page, RCX bytes" (not a failure); a response
 * or a request re-read with nothing outstanding; bytes that are not the answer to the
 * outstanding request (garbled, another TDI's, stale, too long; nothing changed, the request
 * still waits); another operation of the TDI waits on the device. */
#define TDX_SPDM_REQUEST               0xC0000F5700000000ull
#define TDX_DEVIF_TDISP_INVALID_REQ_STS 0xC0000F0E00000000ull
#define TDX_DEVIF_TDISP_INVALID_MESSAGE 0xC0000F0F00000000ull
#define TDX_DEVIF_TDISP_OUT_REQ        0xC0000F1400000000ull
/* TDX-IO: no TDI has the function ID; the calling TD is not the TDI's; CREATE of a function
 * that has a TDI. */
#define TDX_DEVIFMT_NOT_PRESENT        0xC0000F4000000000ull
#define TDX_DEVIF_INVALID_METADATA     0xC0000F4100000000ull
#define TDX_DEVIFMT_ALREADY_PRESENT    0xC0000F4200000000ull
/* The SPDM session used every sequence number: rekey it (TDH.SPDM.MNG KEY_UPDATE) first. */
#define TDX_SPDM_SESSION_KEY_REQUIRE_REFRESH 0xC0000F4500000000ull
/* Ours (class 0xF0): memory given at init (pool, host range) or the firmware's state as a BAR
 * or mapping; a BAR over another device's; an interface that is not a function of its device;
 * the firmware's own records disagreeing (refused, nothing changed). */
#define TSM_RESERVED_MEMORY            0xC000F00500000000ull
#define TSM_FOREIGN_INTERFACE          0xC000F02700000000ull
#define TSM_BAR_IN_USE                 0xC000F02800000000ull
#define TSM_STREAM_CUT                 0xC000F02900000000ull
/* Ours: TDH_DEVIF_CREATE / TDH_IDE_STREAM_CREATE before TSM_SPDM_BARS; TSM_SPDM_BARS again. */
#define TSM_BARS_NOT_REGISTERED        0xC000F02A00000000ull
#define TSM_BARS_REGISTERED            0xC000F02B00000000ull
/* The link (intel/tdx-module tdx_error_codes_defs.h @1666adc4). A bind of a TDI whose device's
 * stream does not exist, is blocked, or has no keys (KM SETUP not done, or STOPped) gets
 * TDX_IDE_STREAM_NOT_CONFIGURED / _BLOCKED / _IDEKM_KEYS_NOT_READY + RCX; one a forced unbind
 * cut, TSM_STREAM_CUT + RCX. */
#define TDX_SPDM_HAS_ACTIVE_IDE_STREAMS 0xC0000F0500000000ull
#define TDX_SPDM_INVALID_STATE         0xC0000F0600000000ull
#define TDX_IDE_STREAM_NOT_FREE        0xC0000F1600000000ull
#define TDX_IDE_STREAM_NOT_CONFIGURED  0xC0000F1800000000ull
#define TDX_IDE_STREAM_BLOCKED         0xC0000F1900000000ull
#define TDX_IDE_STREAM_NOT_BLOCKED     0xC0000F1A00000000ull
#define TDX_IDE_STREAM_HAS_DEVICE_INTERFACES 0xC0000F1F00000000ull
#define TDX_IDE_STREAM_IDEKM_KEYS_NOT_READY 0xC0000F2100000000ull
#define TDX_IDE_STREAM_INVALID_STATE   0xC0000F2400000000ull
#define TDX_IDE_STREAM_ADDR_OVERLAP    0xC0000F1B00000000ull
#define TDX_IDE_STREAM_RID_OVERLAP     0xC0000F1C00000000ull
/* TDH_MMIO_MAP of a page outside its device's IDE stream address association (+ R8). */
#define TDX_MMIO_PAGE_NOT_IN_ASSOC_RANGE 0xC0000F4C00000000ull
#define TDX_SPDM_INVALID_MESSAGE       0xC0000F4E00000000ull /* the module's TDX_SDPM_... */
#define TSM_DEVICE_IN_USE              0xC000F02400000000ull
/* A page already in use (a TD's TDR, a TDI's private page, SPDM metadata). */
#define TDX_PAGE_METADATA_INCORRECT    0xC000030000000000ull
/* TDG_MMIO_ACCEPT: RDX is not the S-EPT's host page plus the TDI's MMIO reporting offset. */
#define TDX_MMIO_INVALID_HPA_OFFSET    0xC0000F4D00000000ull
#define TSM_INCONSISTENT               0xC000F0FF00000000ull
/* Ours: the device did not answer (after three empty responses), answered TDISP_ERROR, or
 * answered something that is not the response asked for. */
#define TSM_DEVICE_UNRESPONSIVE        0x8000F03000000000ull
#define TSM_DEVICE_REFUSED             0xC000F03100000000ull
#define TSM_DEVICE_MALFORMED           0xC000F03200000000ull
/* The S-EPT and TD (intel/tdx-module tdx_error_codes_defs.h @a56a9173): a leaf not free for
 * MAP; a TDR with child pages; a page the guest accepted already (not an error); a
 * level other than the entry's; an entry in another state; MAP of a page another TD's TDI owns. */
#define TDX_PAGE_NOT_FREE              0xC000030300000000ull
#define TDX_TD_ASSOCIATED_PAGES_EXIST  0xC000040000000000ull
#define TDX_PAGE_ALREADY_ACCEPTED      0x00000B0A00000000ull
#define TDX_PAGE_SIZE_MISMATCH         0xC0000B0B00000000ull
#define TDX_EPT_ENTRY_STATE_INCORRECT  0xC0000B0D00000000ull
#define TDX_MMIO_DEVIF_OWNER_MISMATCH  0xC0000F2700000000ull
/* TD teardown (intel/tdx-module tdx_error_codes_defs.h @72d8cffb; TD_HAS_ATTACHED_DEVICES
 * @1666adc4): a teardown leaf out of order; a leaf naming a TD past VPFLUSHDONE; KEY.FREEID
 * before CACHE.WB; an HKID a live TD holds; CACHE.WB START with nothing to do (a warning);
 * CACHE.WB RESUME with nothing interrupted; VPFLUSHDONE with a TDI bound. No operand. */
#define TDX_LIFECYCLE_STATE_INCORRECT  0xC000060700000000ull
#define TDX_TD_KEYS_NOT_CONFIGURED     0x8000081000000000ull
#define TDX_WBCACHE_NOT_COMPLETE       0x8000081700000000ull
#define TDX_HKID_NOT_FREE              0xC000082000000000ull
#define TDX_NO_HKID_READY_TO_WBCACHE   0x0000082100000000ull
#define TDX_WBCACHE_RESUME_ERROR       0xC000082300000000ull
#define TDX_TD_HAS_ATTACHED_DEVICES    0xC0000F3A00000000ull
/* Ours (class 0xF0): the core's refusals. Ranges: too many, outside the device's BARs,
 * overlapping, empty or past the address space. Capacities (recoverable: free something):
 * device, TDI, TD, ownership tables, S-EPT page pool. States: a TDI bound already, not
 * locked, in ERROR, being unbound; a function another SPDM id has; an interface with a TDI;
 * a relay buffer smaller than a request. */
#define TSM_TOO_MANY_RANGES            0xC000F00100000000ull
#define TSM_RANGE_OUTSIDE_DEVICE       0xC000F00200000000ull
#define TSM_RANGES_OVERLAP             0xC000F00300000000ull
#define TSM_INVALID_RANGE              0xC000F00400000000ull
#define TSM_EMPTY_REPORT               0xC000F00600000000ull
#define TSM_DEVICE_TABLE_FULL          0x8000F01000000000ull
#define TSM_TDI_TABLE_FULL             0x8000F01100000000ull
#define TSM_TD_TABLE_FULL              0x8000F01200000000ull
#define TSM_OWNERSHIP_TABLE_FULL       0x8000F01300000000ull
#define TSM_SEPT_POOL_EMPTY            0x8000F01400000000ull
#define TSM_SEPT_POOL_AWAITS_FLUSH     0x8000F01500000000ull
#define TSM_TDI_ALREADY_BOUND          0xC000F02000000000ull
#define TSM_TDI_NOT_LOCKED             0xC000F02100000000ull
#define TSM_TDI_IN_ERROR               0xC000F02200000000ull
#define TSM_UNBIND_IN_PROGRESS         0xC000F02300000000ull
#define TSM_DMA_NOT_ACCEPTED           0xC000F02C00000000ull /* ours: START before TDG.DMAR.ACCEPT */
#define TSM_DUPLICATE_DEVICE           0xC000F02500000000ull
#define TSM_DUPLICATE_TDI              0xC000F02600000000ull
#define TSM_RELAY_BUFFER_TOO_SMALL     0xC000F03300000000ull
#define TDX_STATUS_CODE(s)             ((s) & 0xFFFFFFFF00000000ull)
#define TDX_STATUS_OPERAND(s)          ((uint32_t)((s) & 0xFFFFFFFFull))
#define TDX_OPERAND_ID_RAX 0u
#define TDX_OPERAND_ID_RCX 1u
#define TDX_OPERAND_ID_RDX 2u
#define TDX_OPERAND_ID_R8  8u
#define TDX_OPERAND_ID_R9  9u
#define TDX_OPERAND_ID_R10 10u
#define TDX_OPERAND_ID_R11 11u
#define TDX_OPERAND_ID_R12 12u
#define TDX_OPERAND_ID_R13 13u
#define TDX_OPERAND_ID_R14 14u
#define TDX_OPERAND_ID_TDR 128u          /* the calling TD of a TDCALL */
#define TDX_OPERAND_ID_SEPT_TREE 146u    /* the S-EPT (busy, walk) */
#define TDX_OPERAND_ID_TD_EPOCH 169u     /* the TD's TLB epoch (TDH.MEM.TRACK) */
#define TDX_OPERAND_ID_WBCACHE 188u      /* the platform's CACHE.WB state (busy) */
#define TDX_OPERAND_ID_MMIOMT 257u       /* MMIO ownership (the module's MMIO metadata) */
#define TDX_OPERAND_ID_DMAR 320u         /* a trusted DMA context (DMAR entry) */
#define TDX_OPERAND_ID_DEVICE_TABLE 0xF00u /* ours: the device table (busy) */
#define TDX_OPERAND_ID_DEVICE 0xF01u     /* ours: a device (busy) */
#define TDX_OPERAND_ID_DEVIF 0xF02u      /* ours: a TDI (OPERAND_BUSY: retry) */
#define TDX_OPERAND_ID_TRANSPORT 0xF06u  /* ours: the device channel (device statuses) */
#define TDX_OPERAND_ID_REG_BLOCK 0xF07u  /* ours: the register block's address */
#define TDX_OPERAND_ID_REQUEST_PAGE 0xF08u  /* ours: the TDI's request page */
#define TDX_OPERAND_ID_RESPONSE_PAGE 0xF09u /* ours: the TDI's response page */
/* Ours: a NULL function in tsm_tdx_init_session's struct tsm_tdx_session. */
#define TDX_OPERAND_ID_SESSION_SEAL          0xF0Au
#define TDX_OPERAND_ID_SESSION_OPEN          0xF0Bu
#define TDX_OPERAND_ID_SESSION_RECORD_LEN    0xF0Cu
#define TDX_OPERAND_ID_SESSION_LOCK_SECRET   0xF0Du
#define TDX_OPERAND_ID_SESSION_REPORT_DIGEST 0xF0Eu

/* Pool pages (tsm_tdx_init_session's len / 4096) for `leaves` private MMIO leaves of page level
 * `level` (0 = 4 KiB, 1 = 2 MiB, 2 = 1 GiB) mapped at once, anywhere, over at most `tds` TDs:
 * the worst case, exactly as platform_tdx::sept::Sept::pool_pages_needed(SeptLevels::Four,
 * tds, leaves, size) computes it (leaves that share tables take fewer). Per leaf, one table
 * at each S-EPT level above it (3 - level) and at each MMIO metadata level above it
 * (4 - level); one S-EPT root per TD that maps, one metadata root; one count page per 512
 * table pages. So, as an upper bound:
 *   tables <= min(tds, leaves) + (7 - 2 * level) * leaves + 1,
 *   pages   = tables + ceil(tables / 512);
 * and exactly, a level's tables are also capped by the windows the address space has there
 * (S-EPT, 48 bits per TD: 2^27, 2^18, 512 per TD at the levels holding 4 KiB, 2 MiB, 1 GiB
 * leaves' tables; MMIO metadata, 52 bits: 2^31, 2^22, 8192, 16), which the macros apply.
 * One mapped 4 KiB page: 10 pages (with 9 TDH_MMIO_MAP is TSM_SEPT_POOL_EMPTY); no leaves: 0.
 * S-EPT table pages an unmap empties come back after the TD's next TDH_MEM_TRACK has been
 * flushed (and its INV_REQ_IOTLB processed where a PASID entry names the S-EPT); a TD's S-EPT
 * root stays until TDH_PHYMEM_PAGE_RECLAIM of its TDR. A map the pool is short for only by
 * the mapping TD's own waiting pages is TSM_SEPT_POOL_AWAITS_FLUSH, nothing changed:
 * TDH_MEM_TRACK that TD (and process its INV_REQ_IOTLB where a PASID entry names the S-EPT),
 * then map again (a re-map after unbind and rebind with no TRACK between).
 * "Exactly" holds where the Rust function returns a value (it refuses a count past usize);
 * the macros compute in uint64_t and wrap silently for absurd inputs (tds or leaves at or
 * past 2^37), where no pool could be that large anyway.
 */
#define TSM_TDX_MIN_(a, b) ((a) < (b) ? (a) : (b))
#define TSM_TDX_POOL_TABLES_(t, n, level)                                                    \
	((t) + 1ull + TSM_TDX_MIN_(n, (t) * 512ull) + TSM_TDX_MIN_(n, 8192ull) +            \
	 TSM_TDX_MIN_(n, 16ull) +                                                          \
	 ((level) <= 1 ? TSM_TDX_MIN_(n, (t) << 18) + TSM_TDX_MIN_(n, 1ull << 22) : 0ull) + \
	 ((level) == 0 ? TSM_TDX_MIN_(n, (t) << 27) + TSM_TDX_MIN_(n, 1ull << 31) : 0ull))
#define TSM_TDX_POOL_TABLES(tds, leaves, level)                                              \
	((uint64_t)(tds) == 0 || (uint64_t)(leaves) == 0                                     \
		 ? 0ull                                                                    \
		 : TSM_TDX_POOL_TABLES_(TSM_TDX_MIN_((uint64_t)(tds), (uint64_t)(leaves)),  \
					(uint64_t)(leaves), (uint64_t)(level)))
#define TSM_TDX_POOL_PAGES(tds, leaves, level)                                               \
	(TSM_TDX_POOL_TABLES(tds, leaves, level) +                                         \
	 (TSM_TDX_POOL_TABLES(tds, leaves, level) + 511ull) / 512ull)


/*
 * The device link a C integrator supplies: its SPDM secured session with the device (DSP0277
 * secured messages), which seals every TDISP request the firmware writes for the host to relay
 * and opens every answer the host hands back (Rust: tsm_core::SecureSession). One session for
 * the whole firmware: route by rc->function_id when devices have their own.
 *
 * What a record is bound to: the interface (TDISP FUNCTION_ID), the exchange's sequence
 * number (one counter for the session, never repeated, never reset: bind it into the AEAD
 * nonce; a re-sent request is sealed again with the same one, see seal below) and the
 * direction. A record of another exchange, TDI or direction must not open.
 */
struct tsm_tdx_record_ctx {
	uint32_t function_id;
	uint32_t direction; /* TSM_TDX_DIRECTION_* */
	uint64_t seq;
};
#define TSM_TDX_DIRECTION_REQUEST  0u /* firmware (SPDM requester) to device */
#define TSM_TDX_DIRECTION_RESPONSE 1u /* device to firmware */
/* Bytes of an interface report digest (SHA-384, as SEV-TIO's interface_report_digest). */
#define TSM_TDX_REPORT_DIGEST_BYTES 48u
/* Most bytes a record adds around its message (DSP0277 6.2: SessionID 4, SequenceNumber up to
 * 8, Length 2, ApplicationDataLength 2, a 16-byte MAC; no random padding). */
#define TSM_TDX_SESSION_MAX_OVERHEAD 32u

/*
 * The callbacks. `ctx` is the struct's own, passed back as is (never dereferenced by the
 * firmware). Every pointer the firmware passes is valid for the length given, for that call
 * only: keep none. Lengths given are exact: a callback writing past `out_cap` (or past the
 * 48 digest bytes) corrupts the firmware's stack. Return 0 on success; anything else is a
 * failure.
 * - seal: wrap the `app_len` bytes at `app` (an SPDM message) in one secured record for `rc`,
 *   written to `out`; its length to *out_len. `out_cap` is app_len +
 *   TSM_TDX_SESSION_MAX_OVERHEAD, the most a record may take: a longer *out_len is a failure.
 *   Seal is called again with the same `rc` and the same message whenever the request is
 *   written again: when the host asks for it again (TDH_DEVIF_REQUEST with the code waiting)
 *   and when it reports no answer (TDH_DEVIF_RESPONSE with page 0; up to 3 attempts). The
 *   firmware relays whatever seal returns. A real DSP0277 session must not encrypt twice
 *   under one nonce: it keeps the record it sealed for rc->seq and returns it again byte for
 *   byte (in practice: the record of the last seq per function_id, since each TDI has at most
 *   one exchange outstanding), never sealing afresh under its own advancing sequence number.
 *   A device that refuses a replayed record does not answer a re-send; the host then runs out
 *   of attempts (TSM_DEVICE_UNRESPONSIVE), and the operation starts over with a new seq.
 * - open: verify and decrypt the one record at `record` (`record_len` bytes) for `rc` into
 *   `out` (at most `out_cap` bytes); the application data's length to *out_len. Fail when it
 *   does not verify for `rc`: all of function_id, seq and direction, not only the session's
 *   own counter (the firmware relies on a stale or another TDI's answer not opening).
 * - record_len: the length of the record that starts the `len` bytes at `bytes`, from its
 *   header (fail: too short to tell). Only DOE padding may follow it.
 * - lock_secret: 64 bits the host can neither predict nor choose for the LOCK_INTERFACE
 *   request bound to `rc` (the firmware makes that LOCK's MMIO_REPORTING_OFFSET of them).
 *   Asked exactly once per LOCK exchange, when the LOCK is first written; re-sends and the
 *   device's answer use the offset made then. TRUSTED: the firmware cannot check it (it
 *   shapes any value into a valid offset); a predictable answer gives a predictable offset,
 *   one answer for several LOCKs gives them the same offset.
 * - report_digest: the digest of the `len`-byte interface report at `report`, the hash the
 *   session negotiated, TSM_TDX_REPORT_DIGEST_BYTES bytes to `digest`. TRUSTED and it cannot
 *   fail: the firmware pre-fills zeros and keeps whatever is there on return as the report's
 *   digest, which the TD reads (TSM_DEVIF_FIELD_REPORT_DIGEST). Write all 48 bytes.
 *
 * Failures. The lengths the callbacks return are checked, never trusted: a failure, or a
 * length past the buffer given (*out_len > out_cap, a record_len past `len`), is the
 * exchange's failure, never a fault.
 * - open or record_len: the host's TDH_DEVIF_RESPONSE is refused with
 *   TDX_DEVIF_TDISP_INVALID_MESSAGE + RDX, as any answer that is not the device's: nothing
 *   changes and the request still waits.
 * - seal: the call that would have written the request answers TSM_RELAY_BUFFER_TOO_SMALL +
 *   TDX_OPERAND_ID_TRANSPORT and writes no request; one sequence number of the session is
 *   used up (never reused, so harmless). What else it changes depends on the call:
 *   . a re-send (TDH_DEVIF_REQUEST of the waiting code; TDH_DEVIF_RESPONSE with no answer):
 *     nothing; the request still waits.
 *   . the first request of an operation (TSM_DEVIF_BIND, TSM_DEVIF_CHECK, the TD's
 *     TDG_DEVIF_REQUEST START, which gets the status): nothing; call again once the session
 *     recovers. TSM_DEVIF_UNBIND: the unbind steps
 *     before STOP that the call ran stay done; TSM_DEVIF_UNBIND again asks for STOP again.
 *   . TDH_DEVIF_RESPONSE of an unbind whose STOP the device refused as already unlocked
 *     (the state query that follows): the unbind waits at STOP with nothing outstanding;
 *     TSM_DEVIF_UNBIND again asks for STOP again.
 *   . TDH_DEVIF_RESPONSE of a bind (the bind's next request): the device's answer was taken
 *     and the bind has ended: the TDI is unbound with no request outstanding (a further
 *     TDH_DEVIF_RESPONSE is TDX_DEVIF_TDISP_OUT_REQ + RCX). When the failed request was the
 *     LOCK or a later one, the device may hold the interface CONFIG_LOCKED until the next
 *     TSM_DEVIF_BIND, which sends STOP_INTERFACE first. A bind that fails after LOCK and
 *     cannot seal its undoing STOP ends with its own failure status, likewise.
 *
 * Calls. The firmware calls the callbacks with its device-channel lock held: never two at
 * once, but from whichever thread entered the firmware. Every callback must return
 * normally: no C++ exception (mark C++ callbacks noexcept), no longjmp out of it, no thread
 * exit; the firmware's locks would stay held (every later call on those objects
 * TDX_OPERAND_BUSY) and it is undefined behaviour. A callback that calls into the firmware
 * gets TDX_OPERAND_BUSY on the object the outer call holds (tsm_tdx_init* answers
 * TDX_SYSINIT_NOT_PENDING): nothing deadlocks, but a callback must not wait for another
 * thread's call into the firmware to succeed.
 */
struct tsm_tdx_session {
	void *ctx;
	int (*seal)(void *ctx, const struct tsm_tdx_record_ctx *rc, const uint8_t *app,
		    size_t app_len, uint8_t *out, size_t out_cap, size_t *out_len);
	int (*open)(void *ctx, const struct tsm_tdx_record_ctx *rc, const uint8_t *record,
		    size_t record_len, uint8_t *out, size_t out_cap, size_t *out_len);
	int (*record_len)(void *ctx, const uint8_t *bytes, size_t len, size_t *record_len);
	uint64_t (*lock_secret)(void *ctx, const struct tsm_tdx_record_ctx *rc);
	void (*report_digest)(void *ctx, const uint8_t *report, size_t len, uint8_t *digest);
};

/* Gives the firmware `len` bytes at `mem` (4 KiB aligned, never used by the caller again)
 * for its S-EPT table pages, registers `[host, host + host_len)` (8-byte aligned, a whole
 * number of 8-byte words, not overlapping `mem`, valid for the rest of the program) as the
 * host memory every later call's register block and parameter pages lie in, and takes the
 * SPDM session `*ops` that seals every request and opens every answer, copied once by this
 * call (later changes to the struct are not seen; `ctx` and the functions must stay valid for
 * the rest of the program). Arguments are named as operands RCX, RDX, R8, R9, R10 in this
 * order. Statuses: TDX_SUCCESS; TDX_OPERAND_INVALID + RCX (mem null or not 4 KiB aligned),
 * + RDX (less than one page), + R8 (host null, not 8-byte aligned, or overlapping mem), + R9
 * (host_len zero or not a multiple of 8); TDX_OPERAND_ADDR_RANGE_ERROR + RDX / R9 (a range
 * past 2^52); then TDX_OPERAND_INVALID + R10 (ops NULL or not aligned for the struct),
 * + TDX_OPERAND_ID_SESSION_* (the first NULL function, in the struct's order), then the
 * same statuses for a function, and TDX_OPERAND_INVALID + R10 for a non-NULL ctx, lying in
 * the host range, in `mem` or in the firmware's own state (memory the host writes, or the
 * firmware's: the session's code and context must be the integrator's own);
 * TDX_SYSINIT_NOT_PENDING when initialized already (also for the loser of two racing calls).
 * Arguments are checked before any memory is touched, only the successful call ever touches
 * `mem`, and the firmware stays uninitialized after a refusal. */
uint64_t tsm_tdx_init_session(void *mem, size_t len, void *host, size_t host_len,
			      const struct tsm_tdx_session *ops);

/* One SEAMCALL on the register block at `regs` (in host memory); returns the status, also
 * left in regs->rax. TDX_SYS_NOT_READY before init (nothing written). */
uint64_t tsm_tdx_seamcall(struct tsm_tdx_regs *regs);

/* One TDCALL from the TD whose TDR page is at `td`; as tsm_tdx_seamcall. A TDR naming no TD is
 * TDX_OPERAND_INVALID + TDX_OPERAND_ID_TDR. */
uint64_t tsm_tdx_tdcall(uint64_t td, struct tsm_tdx_regs *regs);

/*
 * TEST SUPPORT, only in a library built with feature `model-device`, NEVER in a firmware
 * build (a library built with `capi` alone does not define these symbols).
 *
 * tsm_tdx_init: as tsm_tdx_init_session (same arguments but `ops`, same statuses), sealing
 * with the model session, whose key is in the public source: the host can open every
 * request and forge every device answer (the MMIO_REPORTING_OFFSET, the interface report,
 * the TDISP state). For tests against the model device only.
 *
 * The model device a C host relays to, standing in for the device behind its DOE mailbox:
 * both take addresses in host memory and need init first (else TDX_SYS_NOT_READY).
 *
 * tsm_tdx_model_report: what interface `iface` (packed requester ID) reports, from the list at
 * `list`. TDX_OPERAND_INVALID + RCX (bad interface ID), + RDX (reserved field not 0, list not
 * 8-byte aligned); TDX_OPERAND_ADDR_RANGE_ERROR + RDX (list outside host memory); TSM
 * too-many-ranges (0xC000F00100000000) + RDX.
 *
 * tsm_tdx_model_doe: one DOE exchange: the `len` bytes at `request` (a request page) to the
 * device, its answer to `response` (a whole page, written in words) and the answer's length
 * in bytes (0: the device did not answer) to `*response_len`. TDX_OPERAND_INVALID + RDX (len
 * 0 or past a page); TDX_OPERAND_ADDR_RANGE_ERROR (or TDX_OPERAND_INVALID when not 8-byte
 * aligned) + RCX / R8 / R9 for request / response / response_len; every address is checked
 * before the device sees the request.
 *
 * tsm_tdx_model_session: writes the model session's callbacks (ctx NULL) to `*ops`, for a C
 * session that delegates to them (the model device opens only what they seal).
 * TDX_OPERAND_INVALID + RCX for a NULL or misaligned `ops` (nothing written). */
uint64_t tsm_tdx_init(void *mem, size_t len, void *host, size_t host_len);
uint64_t tsm_tdx_model_report(uint64_t iface, const struct tsm_tdx_range_list *list);
uint64_t tsm_tdx_model_doe(const void *request, uint64_t len, void *response,
			   uint64_t *response_len);
uint64_t tsm_tdx_model_session(struct tsm_tdx_session *ops);

#ifdef __cplusplus
}
#endif

#endif /* TSM_TDX_H */
