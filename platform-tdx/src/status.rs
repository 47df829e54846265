//! TDX completion statuses: the 64-bit values a SEAMCALL returns in RAX, and the one mapping
//! from the core's statuses to them (and back, for host-side decoders and tests).
//!
//! A status is `{error[63], non-recoverable[62], class[47:40], code[39:32], operand id[31:0]}`
//! (TDX Module ABI spec, "Completion Status Codes"; the values below are the TDX module's, from
//! intel/tdx-module `tdx_error_codes_defs.h` and Linux `arch/x86/include/asm/shared/tdx_errno.h`).
//! Class 0xF0 is ours: statuses of this firmware's own checks that the TDX ABI has no code
//! for; TDX uses classes up to 0x11, so the range is clearly apart.

use tsm_core::{Completion, Error, Operand};

use crate::sept::SeptError;

/// A 64-bit TDX completion status.
pub type TdxStatus = u64;

/// Bit 63: the leaf failed (TDX ABI completion status, ERROR).
pub const STATUS_ERROR: u64 = 1 << 63;
/// Bit 62: retrying the same request cannot succeed (TDX ABI, NON_RECOVERABLE).
pub const STATUS_NON_RECOVERABLE: u64 = 1 << 62;
/// Bits 31:0: the operand id the status is about (TDX ABI, "details L2").
pub const OPERAND_ID_MASK: u64 = 0xffff_ffff;
/// Bits 63:32: class and code.
pub const CODE_MASK: u64 = !OPERAND_ID_MASK;

// ---- public TDX statuses (intel/tdx-module tdx_error_codes_defs.h; Linux tdx_errno.h) ------

/// TDX_SUCCESS.
pub const TDX_SUCCESS: u64 = 0;
/// TDX_INTERRUPTED_RESUMABLE: progress kept, call the leaf again.
pub const TDX_INTERRUPTED_RESUMABLE: u64 = 0x8000_0003_0000_0000;
/// TDX_OPERAND_INVALID (+ operand id).
pub const TDX_OPERAND_INVALID: u64 = 0xC000_0100_0000_0000;
/// TDX_OPERAND_ADDR_RANGE_ERROR (+ operand id): an address outside the physical address width.
pub const TDX_OPERAND_ADDR_RANGE_ERROR: u64 = 0xC000_0101_0000_0000;
/// TDX_OPERAND_BUSY (+ operand id): another CPU holds the operand's lock.
pub const TDX_OPERAND_BUSY: u64 = 0x8000_0200_0000_0000;
/// TDX_PREVIOUS_TLB_EPOCH_BUSY: TRACK before the previous epoch was flushed.
pub const TDX_PREVIOUS_TLB_EPOCH_BUSY: u64 = 0x8000_0201_0000_0000;
/// TDX_PAGE_METADATA_INCORRECT (+ operand id).
pub const TDX_PAGE_METADATA_INCORRECT: u64 = 0xC000_0300_0000_0000;
/// TDX_PAGE_NOT_FREE (+ operand id).
pub const TDX_PAGE_NOT_FREE: u64 = 0xC000_0303_0000_0000;
/// TDX_SYSINIT_NOT_PENDING: initialization is no longer pending (here: a second
/// `tsm_tdx_init_session`; Linux `tdx_errno.h` of the TDX host series).
pub const TDX_SYSINIT_NOT_PENDING: u64 = 0xC000_0500_0000_0000;
/// TDX_SYS_NOT_READY: the module is not initialized (here: `tsm_tdx_init_session` not called
/// yet).
pub const TDX_SYS_NOT_READY: u64 = 0xC000_0505_0000_0000;
/// TDX_TD_ASSOCIATED_PAGES_EXIST: the TD still has objects attached.
pub const TDX_TD_ASSOCIATED_PAGES_EXIST: u64 = 0xC000_0400_0000_0000;
/// TDX_LIFECYCLE_STATE_INCORRECT: a teardown leaf out of the TD's lifecycle order (intel/tdx-module
/// `include/auto_gen/tdx_error_codes_defs.h` @72d8cffb214b74ae94d75afce36423020f74b47c; no
/// operand, as `tdh_mng_vpflushdone.c`, `tdh_mng_key_freeid.c`, `tdh_phymem_page_reclaim.c`).
pub const TDX_LIFECYCLE_STATE_INCORRECT: u64 = 0xC000_0607_0000_0000;
/// TDX_TD_KEYS_NOT_CONFIGURED: a leaf named a TD past TDH.MNG.VPFLUSHDONE (same header; no
/// operand, as `check_td_in_correct_build_state` in `helpers.c` @72d8cffb).
pub const TDX_TD_KEYS_NOT_CONFIGURED: u64 = 0x8000_0810_0000_0000;
/// TDX_WBCACHE_NOT_COMPLETE: KEY.FREEID before a TDH.PHYMEM.CACHE.WB completed (same header).
pub const TDX_WBCACHE_NOT_COMPLETE: u64 = 0x8000_0817_0000_0000;
/// TDX_HKID_NOT_FREE: TDH.MNG.CREATE with an HKID a TD holds until KEY.FREEID (same header;
/// no operand, as `tdh_mng_create.c`).
pub const TDX_HKID_NOT_FREE: u64 = 0xC000_0820_0000_0000;
/// TDX_NO_HKID_READY_TO_WBCACHE: a warning (no error bit): CACHE.WB start with no TD flushed
/// (same header; Linux's `smp_func_do_phymem_cache_wb` takes it as done).
pub const TDX_NO_HKID_READY_TO_WBCACHE: u64 = 0x0000_0821_0000_0000;
/// TDX_WBCACHE_RESUME_ERROR: CACHE.WB resume with none interrupted (same header).
pub const TDX_WBCACHE_RESUME_ERROR: u64 = 0xC000_0823_0000_0000;
/// TDX_TD_HAS_ATTACHED_DEVICES: VPFLUSHDONE while a TDI is bound to the TD (intel/tdx-module
/// `include/auto_gen_2_0/tdx_error_codes_defs.h` @1666adc494dbea5db99895f37125a338c20bec5a;
/// `tdh_mng_vpflushdone.c` there calls `check_no_tdx_io_device_attached`, whose body was not
/// found: the status is the header's name for it, without an operand).
pub const TDX_TD_HAS_ATTACHED_DEVICES: u64 = 0xC000_0F3A_0000_0000;
/// TDX_EPT_WALK_FAILED (+ operand id); RDX holds the level the walk stopped at.
pub const TDX_EPT_WALK_FAILED: u64 = 0xC000_0B00_0000_0000;
/// TDX_EPT_ENTRY_NOT_FREE (+ operand id).
pub const TDX_EPT_ENTRY_NOT_FREE: u64 = 0xC000_0B02_0000_0000;
/// TDX_GPA_RANGE_NOT_BLOCKED (+ operand id).
pub const TDX_GPA_RANGE_NOT_BLOCKED: u64 = 0xC000_0B06_0000_0000;
/// TDX_TLB_TRACKING_NOT_DONE (+ operand id).
pub const TDX_TLB_TRACKING_NOT_DONE: u64 = 0xC000_0B08_0000_0000;
/// TDX_PAGE_ALREADY_ACCEPTED: a warning (no error bit).
pub const TDX_PAGE_ALREADY_ACCEPTED: u64 = 0x0000_0B0A_0000_0000;
/// TDX_PAGE_SIZE_MISMATCH (+ operand id).
pub const TDX_PAGE_SIZE_MISMATCH: u64 = 0xC000_0B0B_0000_0000;
/// TDX_EPT_ENTRY_STATE_INCORRECT (+ operand id).
pub const TDX_EPT_ENTRY_STATE_INCORRECT: u64 = 0xC000_0B0D_0000_0000;
/// TDX_DEVIF_TDISP_INVALID_STATE (TDX-IO): the TDI's TDISP state forbids the request. What the
/// host gets when it blocks, unmaps or zaps MMIO of a bound TDI.
pub const TDX_DEVIF_TDISP_INVALID_STATE: u64 = 0xC000_0F10_0000_0000;
/// TDX_DEVIF_INVALID_STATE (TDX-IO): the TDI object is not in a state for the request.
pub const TDX_DEVIF_INVALID_STATE: u64 = 0xC000_0F11_0000_0000;
/// TDX_DMAR_INVALID_MAPPING_STATE (TDX-IO, intel/tdx-module @a56a9173
/// `include/auto_gen_2_0/tdx_error_codes_defs.h`): a DMAR entry not in the state the leaf needs
/// (TDH.DMAR.ADD on one not FREE, BLOCK on one not PRESENT/PENDING, REMOVE on one not BLOCKED).
pub const TDX_DMAR_INVALID_MAPPING_STATE: u64 = 0xC000_0F07_0000_0000;
/// TDX_DMAR_INVALID_INV_STATE (same header): TDH.DMAR.REMOVE before the entry's IOTLB
/// invalidation is done (`tdh_dmar_remove.c` @6e66b9d2).
pub const TDX_DMAR_INVALID_INV_STATE: u64 = 0xC000_0F08_0000_0000;
/// TDX_IOMMU_IOTLB_TRACKING_NOT_DONE (same header): TDH.MEM.TRACK while an IOMMU still owes
/// the TD's domain the IOTLB invalidation the previous TRACK asked for (no operand,
/// `tdh_mem_track.c` @1666adc494dbea5db99895f37125a338c20bec5a); TDH.MMIO.UNMAP of a leaf
/// blocked before that TRACK (+ RCX); TDH.DMAR.REMOVE while it is owed (+ RCX); the
/// invalidation's request while it is queued (no operand).
pub const TDX_IOMMU_IOTLB_TRACKING_NOT_DONE: u64 = 0xC000_0F03_0000_0000;
/// TDX_IOMMU_IQ_QUEUE_FULL (intel/tdx-module `include/auto_gen_2_0/tdx_error_codes_defs.h`
/// @1666adc494dbea5db99895f37125a338c20bec5a): TDH.IQ.INV.REQUEST while the IOMMU's trusted
/// invalidation queue has fewer free slots than the request's descriptors (+ RDX, checked
/// right after the IOMMU: `tdh_iq_inv_request.c` @6e66b9d2070aa49562518087160b2c6ae6418555).
pub const TDX_IOMMU_IQ_QUEUE_FULL: u64 = 0xC000_0F01_0000_0000;
/// TDX_IOMMU_IOTLB_TRACKING_NOT_REQUIRED (same header): TDH.IQ.INV.REQUEST of a TD's domain
/// on an IOMMU that owes it nothing (no operand, `tdh_iq_inv_request.c` @6e66b9d2).
pub const TDX_IOMMU_IOTLB_TRACKING_NOT_REQUIRED: u64 = 0xC000_0F3B_0000_0000;
/// TDX_GUEST_INV_NOT_REQUIRED (intel/tdx-module `include/auto_gen_2_0/tdx_error_codes_defs.h`
/// @6e66b9d2070aa49562518087160b2c6ae6418555; bit 63 clear: a warning, nothing done):
/// TDG.IQ.INV.REQUEST of a TD with no accepted PASID entry on any IOMMU (+ RDX,
/// `tdg_iq_inv_request.c` @1666adc494dbea5db99895f37125a338c20bec5a); TDH.IQ.INV.REQUEST INV_REQ_TD with no TD request active, on an
/// IOMMU the request does not need, or with every descriptor committed there (+ R8,
/// `tdh_iq_inv_request.c` @6e66b9d2).
pub const TDX_GUEST_INV_NOT_REQUIRED: u64 = 0x0000_0F53_0000_0000;
/// TDX_GUEST_INV_IN_PROGRESS (same header): TDG.IQ.INV.REQUEST while the TD's previous request
/// is not complete (no operand, `tdg_iq_inv_request.c`).
pub const TDX_GUEST_INV_IN_PROGRESS: u64 = 0xC000_0F54_0000_0000;
/// TDX_GUEST_INV_INVALID_DESC (same header): TDG.IQ.INV.REQUEST with a descriptor the TD may
/// not ask for; the operand bits are the descriptor's index (`tdg_iq_inv_request.c`).
pub const TDX_GUEST_INV_INVALID_DESC: u64 = 0xC000_0F55_0000_0000;
/// TDX_IOTLB_INV_REQUEST (same header): the TD-exit reason the module gives the VMM after a
/// TDG.IQ.INV.REQUEST it accepted, the exit details the request's descriptor count
/// (`async_tdexit_to_vmm`, `tdg_iq_inv_request.c`). Named for hosts and logs; this firmware
/// has no TD exit (its TDCALL returns to its caller, ours: see `dmar::TDG_IQ_INV_REQUEST`).
pub const TDX_IOTLB_INV_REQUEST: u64 = 0x0000_0F56_0000_0000;
/// TDX_DMAR_ENTRY_NOT_PRESENT (same header): no DMAR entry where the leaf looks.
pub const TDX_DMAR_ENTRY_NOT_PRESENT: u64 = 0xC000_0F39_0000_0000;
/// TDX_DEVIF_HAS_MAPPED_DMA (same header): TDH.DEVIF.REMOVE while the TDI's DMA is still
/// mapped (`tdh_devif_remove.c` @6e66b9d2 checks `dmar_mapped_flag`).
pub const TDX_DEVIF_HAS_MAPPED_DMA: u64 = 0xC000_0F3F_0000_0000;
/// TDX_MMIO_DEVIF_OWNER_MISMATCH (TDX-IO): the TD named does not own the TDI.
pub const TDX_MMIO_DEVIF_OWNER_MISMATCH: u64 = 0xC000_0F27_0000_0000;
/// TDX_MMIO_INVALID_HPA_OFFSET (TDX-IO, intel/tdx-module @a56a9173
/// `include/auto_gen_2_0/tdx_error_codes_defs.h`; + RCX as `tdg_mmio_accept.c` @1666adc4
/// names it): TDG.MMIO.ACCEPT's RDX does not name the page the S-EPT maps at the GPA.
pub const TDX_MMIO_INVALID_HPA_OFFSET: u64 = 0xC000_0F4D_0000_0000;
/// TDX_DEVIFMT_NOT_PRESENT (intel/tdx-module TDX-IO @6e66b9d2
/// `include/auto_gen_2_0/tdx_error_codes_defs.h`): no TDI has the function ID (every leaf
/// naming a TDI, + RCX).
pub const TDX_DEVIFMT_NOT_PRESENT: u64 = 0xC000_0F40_0000_0000;
/// TDX_DEVIF_INVALID_METADATA (same source): the calling TD is not the TDI's (TDG leaves,
/// + RCX).
pub const TDX_DEVIF_INVALID_METADATA: u64 = 0xC000_0F41_0000_0000;
/// TDX_DEVIFMT_ALREADY_PRESENT (same source): TDH.DEVIF.CREATE of a function that has a TDI
/// (+ RCX).
pub const TDX_DEVIFMT_ALREADY_PRESENT: u64 = 0xC000_0F42_0000_0000;
/// TDX_DEVIF_TDISP_INVALID_REQ_STS (TDX-IO, intel/tdx-module @a56a9173
/// `tdx_error_codes_defs.h`): the TDI's request status does not allow the call. Here: a call
/// for the other side's request (`td_flag` naming the TD's request while the host's is
/// outstanding, or the reverse), a guest's answer read before the device answered, and the
/// core's `NoExchange`. A TDH.DEVIF.RESPONSE with nothing outstanding at all is
/// TDX_DEVIF_TDISP_OUT_REQ, as in the module (`devif.rs` names the status of each leaf).
pub const TDX_DEVIF_TDISP_INVALID_REQ_STS: u64 = 0xC000_0F0E_0000_0000;
/// TDX_DEVIF_TDISP_INVALID_MESSAGE (TDX-IO, same file; `tdh_devif_response.c` answers it on
/// RDX for a response whose headers do not verify): the relayed bytes are not a DOE object
/// holding a secured record of the outstanding exchange (garbled, another TDI's, stale, too
/// long). Nothing changed; the exchange stays outstanding.
pub const TDX_DEVIF_TDISP_INVALID_MESSAGE: u64 = 0xC000_0F0F_0000_0000;
/// TDX_DEVIF_TDISP_OUT_REQ (TDX-IO, same file; `tdh_devif_request.c` answers it when a
/// request is already outstanding): another operation of the TDI waits on the device.
pub const TDX_DEVIF_TDISP_OUT_REQ: u64 = 0xC000_0F14_0000_0000;
/// TDX_SPDM_REQUEST (Linux `arch/x86/include/asm/shared/tdx_errno.h` of the TDX Connect host
/// series, devsec/tsm @2632a8c5; the event loop in `drivers/virt/coco/tdx-host/tdx-host.c`
/// relays on it): not a failure but "relay this". The leaf wrote a request (a whole DOE
/// object) to the TDI's request page, RCX holds its length in bytes; the host sends it to the
/// device's DOE mailbox and hands the answer back with TDH.DEVIF.RESPONSE.
pub const TDX_SPDM_REQUEST: u64 = 0xC000_0F57_0000_0000;
/// TDX_SPDM_SESSION_KEY_REQUIRE_REFRESH (Linux `tdx_errno.h` of the TDX Connect host series,
/// as TDX_SPDM_REQUEST; the host then runs TDH.SPDM.MNG KEY_UPDATE): the session has used every
/// sequence number and must be rekeyed before another exchange. Nothing changed.
pub const TDX_SPDM_SESSION_KEY_REQUIRE_REFRESH: u64 = 0xC000_0F45_0000_0000;

// ---- TDX Connect link statuses (intel/tdx-module `include/auto_gen_2_0/tdx_error_codes_defs.h`
// @1666adc494dbea5db99895f37125a338c20bec5a; where each is answered: `crate::link`) --------

/// TDX_SPDM_HAS_ACTIVE_IDE_STREAMS: TDH.SPDM.DISCONNECT or TDH.SPDM.DELETE of an SPDM id that
/// still has an IDE stream.
pub const TDX_SPDM_HAS_ACTIVE_IDE_STREAMS: u64 = 0xC000_0F05_0000_0000;
/// TDX_SPDM_INVALID_STATE: the SPDM session is not in a state for the leaf (not connected,
/// connected already, or a CONNECT re-issued with other registers than the one it continues).
pub const TDX_SPDM_INVALID_STATE: u64 = 0xC000_0F06_0000_0000;
/// TDX_IDE_STREAM_NOT_FREE: TDH.IDE.STREAM.CREATE for an SPDM id that has its stream.
pub const TDX_IDE_STREAM_NOT_FREE: u64 = 0xC000_0F16_0000_0000;
/// TDX_IDE_STREAM_NOT_CONFIGURED: no such stream (a stream ID not the SPDM id's; a bind of a
/// TDI whose device has no stream).
pub const TDX_IDE_STREAM_NOT_CONFIGURED: u64 = 0xC000_0F18_0000_0000;
/// TDX_IDE_STREAM_BLOCKED: the stream is blocked (TDH.IDE.STREAM.BLOCK); only DELETE is left.
pub const TDX_IDE_STREAM_BLOCKED: u64 = 0xC000_0F19_0000_0000;
/// TDX_IDE_STREAM_NOT_BLOCKED: TDH.IDE.STREAM.DELETE of a stream not blocked.
pub const TDX_IDE_STREAM_NOT_BLOCKED: u64 = 0xC000_0F1A_0000_0000;
/// TDX_IDE_STREAM_HAS_DEVICE_INTERFACES: key STOP or DELETE of the stream while its device
/// has TDIs (the module's `tdi_ref_cnt` check in `tdh_ide_stream_delete.c` @6e66b9d2).
pub const TDX_IDE_STREAM_HAS_DEVICE_INTERFACES: u64 = 0xC000_0F1F_0000_0000;
/// TDX_IDE_STREAM_IDEKM_KEYS_NOT_READY: a bind of a TDI whose device's stream has no keys
/// (TDH.IDE.STREAM.KM SETUP not done, or STOPped).
pub const TDX_IDE_STREAM_IDEKM_KEYS_NOT_READY: u64 = 0xC000_0F21_0000_0000;
/// TDX_IDE_STREAM_ADDR_OVERLAP (intel/tdx-module `tdx_error_codes_defs.h` @1666adc4): an IDE
/// stream whose address association overlaps another device's stream (+ R12).
pub const TDX_IDE_STREAM_ADDR_OVERLAP: u64 = 0xC000_0F1B_0000_0000;
/// TDX_IDE_STREAM_RID_OVERLAP (same source): an IDE stream whose RID association overlaps
/// another device's stream (+ R10).
pub const TDX_IDE_STREAM_RID_OVERLAP: u64 = 0xC000_0F1C_0000_0000;
/// TDX_MMIO_PAGE_NOT_IN_ASSOC_RANGE (same source): TDH.MMIO.MAP of a page outside the address
/// association of its device's IDE stream, so its TEE traffic would not use the stream (+ R8).
pub const TDX_MMIO_PAGE_NOT_IN_ASSOC_RANGE: u64 = 0xC000_0F4C_0000_0000;
/// TDX_IDE_STREAM_INVALID_STATE: a key operation the stream's key state does not allow
/// (REFRESH or STOP without keys).
pub const TDX_IDE_STREAM_INVALID_STATE: u64 = 0xC000_0F24_0000_0000;
/// TDX_SDPM_INVALID_MESSAGE (sic, the module's spelling): the DOE object the host handed in
/// is not the answer the exchange waits for (TDH.SPDM.CONNECT: not a VERSION offering SPDM
/// 1.2). Nothing changed; the exchange stays outstanding.
pub const TDX_SPDM_INVALID_MESSAGE: u64 = 0xC000_0F4E_0000_0000;

// ---- ours: class 0xF0 (no TDX code exists) -------------------------------------------------

/// Ours: a bind report or device creation lists more ranges than a TDI or device may have.
pub const TSM_TOO_MANY_RANGES: u64 = 0xC000_F001_0000_0000;
/// Ours: a reported range is not inside the device's BARs.
pub const TSM_RANGE_OUTSIDE_DEVICE: u64 = 0xC000_F002_0000_0000;
/// Ours: ranges given together overlap.
pub const TSM_RANGES_OVERLAP: u64 = 0xC000_F003_0000_0000;
/// Ours: an empty range, or one that runs past the address space.
pub const TSM_INVALID_RANGE: u64 = 0xC000_F004_0000_0000;
/// Ours: the device's interface report names no MMIO range: a bind would own nothing (+ the
/// transport operand: the device's answer, not a register, is at fault).
pub const TSM_EMPTY_REPORT: u64 = 0xC000_F006_0000_0000;
/// Ours: a BAR, reported range or mapped page touches memory the firmware reserved (its pool,
/// TDX-usable memory): never MMIO.
pub const TSM_RESERVED_MEMORY: u64 = 0xC000_F005_0000_0000;
/// Ours: no free device slot (recoverable: removing a device frees one).
pub const TSM_DEVICE_TABLE_FULL: u64 = 0x8000_F010_0000_0000;
/// Ours: no free TDI slot.
pub const TSM_TDI_TABLE_FULL: u64 = 0x8000_F011_0000_0000;
/// Ours: no free TD slot.
pub const TSM_TD_TABLE_FULL: u64 = 0x8000_F012_0000_0000;
/// Ours: no room to record another bound TDI's ranges.
pub const TSM_OWNERSHIP_TABLE_FULL: u64 = 0x8000_F013_0000_0000;
/// Ours: the S-EPT frame pool is dry (the TDX module would ask the host for TDH.MEM.SEPT.ADD;
/// this firmware owns its pool).
pub const TSM_SEPT_POOL_EMPTY: u64 = 0x8000_F014_0000_0000;
/// Ours: the S-EPT frame pool is short now but not once the table pages an unmap emptied come
/// back, after the next TDH.MEM.TRACK of the TD that emptied them is flushed by its vCPUs and
/// its INV_REQ_IOTLB processed (the module's host would TDH.MEM.SEPT.REMOVE after a TRACK).
pub const TSM_SEPT_POOL_AWAITS_FLUSH: u64 = 0x8000_F015_0000_0000;
/// Ours: bind of a TDI that is already bound.
pub const TSM_TDI_ALREADY_BOUND: u64 = 0xC000_F020_0000_0000;
/// Ours: start of a TDI that is not CONFIG_LOCKED.
pub const TSM_TDI_NOT_LOCKED: u64 = 0xC000_F021_0000_0000;
/// Ours: the TDI is in ERROR; only unbind leaves it.
pub const TSM_TDI_IN_ERROR: u64 = 0xC000_F022_0000_0000;
/// Ours: an unbind has started; finish it first.
pub const TSM_UNBIND_IN_PROGRESS: u64 = 0xC000_F023_0000_0000;
/// Ours: the device still has TDIs.
pub const TSM_DEVICE_IN_USE: u64 = 0xC000_F024_0000_0000;
/// Ours: START of a TDI whose TD has not accepted its DMA context (TDG.DMAR.ACCEPT) first.
pub const TSM_DMA_NOT_ACCEPTED: u64 = 0xC000_F02C_0000_0000;
/// Ours: a device with that requester ID exists.
pub const TSM_DUPLICATE_DEVICE: u64 = 0xC000_F025_0000_0000;
/// Ours: that interface already has a TDI.
pub const TSM_DUPLICATE_TDI: u64 = 0xC000_F026_0000_0000;
/// Ours: the interface ID is not a function (PF or VF) of the device.
pub const TSM_FOREIGN_INTERFACE: u64 = 0xC000_F027_0000_0000;
/// Ours: a BAR overlaps a BAR of another registered device.
pub const TSM_BAR_IN_USE: u64 = 0xC000_F028_0000_0000;
/// Ours: bind of a TDI whose device's IDE stream a forced unbind cut (keys set, not
/// blocked); TDH.IDE.STREAM.KM SETUP re-establishes it.
pub const TSM_STREAM_CUT: u64 = 0xC000_F029_0000_0000;
/// Ours: TDH.DEVIF.CREATE or TDH.IDE.STREAM.CREATE of an SPDM id whose BARs TSM.SPDM.BARS has
/// not registered yet.
pub const TSM_BARS_NOT_REGISTERED: u64 = 0xC000_F02A_0000_0000;
/// Ours: TSM.SPDM.BARS of an SPDM id whose BARs are registered already.
pub const TSM_BARS_REGISTERED: u64 = 0xC000_F02B_0000_0000;
/// Ours: the firmware's own records disagree; refused with nothing changed.
pub const TSM_INCONSISTENT: u64 = 0xC000_F0FF_0000_0000;
/// Ours: the device did not answer a TDISP request (recoverable: retry).
pub const TSM_DEVICE_UNRESPONSIVE: u64 = 0x8000_F030_0000_0000;
/// Ours: the device answered a TDISP request with an error.
pub const TSM_DEVICE_REFUSED: u64 = 0xC000_F031_0000_0000;
/// Ours: the device's answer was not a well-formed TDISP response (or its report was).
pub const TSM_DEVICE_MALFORMED: u64 = 0xC000_F032_0000_0000;
/// Ours: the firmware's buffer for a request to relay is smaller than any request it sends.
/// The dispatcher always hands the core a buffer of `MAX_RELAY_BYTES`, so no leaf answers it;
/// it exists so that the mapping from core statuses stays total.
pub const TSM_RELAY_BUFFER_TOO_SMALL: u64 = 0xC000_F033_0000_0000;

// ---- operand ids (TDX ABI "details L2"; intel/tdx-module OPERAND_ID_*) ---------------------

/// RAX: the leaf number and version.
pub const OPERAND_ID_RAX: u32 = 0;
/// RCX.
pub const OPERAND_ID_RCX: u32 = 1;
/// RDX.
pub const OPERAND_ID_RDX: u32 = 2;
/// R8.
pub const OPERAND_ID_R8: u32 = 8;
/// R9.
pub const OPERAND_ID_R9: u32 = 9;
/// R10.
pub const OPERAND_ID_R10: u32 = 10;
/// R11.
pub const OPERAND_ID_R11: u32 = 11;
/// R12.
pub const OPERAND_ID_R12: u32 = 12;
/// R13.
pub const OPERAND_ID_R13: u32 = 13;
/// R14.
pub const OPERAND_ID_R14: u32 = 14;
/// The TD (its TDR page).
pub const OPERAND_ID_TDR: u32 = 128;
/// The TD's secure EPT tree.
pub const OPERAND_ID_SEPT_TREE: u32 = 146;
/// The TD's TLB epoch.
pub const OPERAND_ID_TD_EPOCH: u32 = 169;
/// OPERAND_ID_WBCACHE: the platform's TDH.PHYMEM.CACHE.WB state, busy (intel/tdx-module
/// `tdx_error_codes_defs.h` @72d8cffb: 188).
pub const OPERAND_ID_WBCACHE: u32 = 188;
/// The MMIO metadata table (TDX-IO).
pub const OPERAND_ID_MMIOMT: u32 = 257;
/// OPERAND_ID_DMAR: a trusted IOMMU (DMAR) entry (intel/tdx-module TDX-IO @a56a9173
/// `include/tdx_basic_defs.h`, as `tdg_dmar_accept.c` names it).
pub const OPERAND_ID_DMAR: u32 = 320;
/// Ours: the device table as a whole.
pub const OPERAND_ID_DEVICE_TABLE: u32 = 0xF00;
/// Ours: a device record (an SPDM session object in TDX-IO).
pub const OPERAND_ID_DEVICE: u32 = 0xF01;
/// Ours: a TDI record (a DEVIF object in TDX-IO).
pub const OPERAND_ID_DEVIF: u32 = 0xF02;
/// Ours: the device transport (the SPDM/TDISP channel).
pub const OPERAND_ID_TRANSPORT: u32 = 0xF06;
/// Ours: the register block of the C entry point (its address, not a register's value).
pub const OPERAND_ID_REG_BLOCK: u32 = 0xF07;
/// Ours: the TDI's request page (module to host), given in R9 of TDH.DEVIF.CREATE.
pub const OPERAND_ID_REQUEST_PAGE: u32 = 0xF08;
/// Ours: the TDI's response page (host to module), given in R10 of TDH.DEVIF.CREATE.
pub const OPERAND_ID_RESPONSE_PAGE: u32 = 0xF09;
/// Ours: `seal` of the C entry point's `struct tsm_tdx_session` (NULL at init).
pub const OPERAND_ID_SESSION_SEAL: u32 = 0xF0A;
/// Ours: `open` of `struct tsm_tdx_session` (NULL at init).
pub const OPERAND_ID_SESSION_OPEN: u32 = 0xF0B;
/// Ours: `record_len` of `struct tsm_tdx_session` (NULL at init).
pub const OPERAND_ID_SESSION_RECORD_LEN: u32 = 0xF0C;
/// Ours: `lock_secret` of `struct tsm_tdx_session` (NULL at init).
pub const OPERAND_ID_SESSION_LOCK_SECRET: u32 = 0xF0D;
/// Ours: `report_digest` of `struct tsm_tdx_session` (NULL at init).
pub const OPERAND_ID_SESSION_REPORT_DIGEST: u32 = 0xF0E;

/// Which register of a leaf carries which kind of operand (`None`: the leaf has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Operands {
    /// A TDI handle.
    pub tdi: Option<u32>,
    /// A device handle.
    pub device: Option<u32>,
    /// A TD handle.
    pub td: Option<u32>,
    /// Page info: guest address and level.
    pub page: Option<u32>,
    /// A host physical address (or the base of a host range).
    pub hpa: Option<u32>,
    /// The host address of a range list (BARs, interface report ranges).
    pub list: Option<u32>,
    /// A packed requester / interface ID.
    pub rid: Option<u32>,
    /// The relayed message a device response leaf hands in (its length register).
    pub msg: Option<u32>,
}

impl Operands {
    fn first(ids: &[Option<u32>]) -> u64 {
        u64::from(
            ids.iter()
                .flatten()
                .next()
                .copied()
                .unwrap_or(OPERAND_ID_RAX),
        )
    }
    fn handle(&self) -> u64 {
        Self::first(&[self.tdi, self.device, self.td])
    }
    fn address(&self) -> u64 {
        Self::first(&[self.page, self.hpa, self.list])
    }
    fn host(&self) -> u64 {
        Self::first(&[self.hpa, self.list, self.page])
    }
    fn ranges(&self) -> u64 {
        Self::first(&[self.list, self.hpa])
    }
    fn target(&self) -> u64 {
        Self::first(&[self.page, self.hpa, self.list, self.tdi, self.device])
    }
}

const fn busy_operand(op: Operand) -> u32 {
    match op {
        Operand::DeviceTable => OPERAND_ID_DEVICE_TABLE,
        Operand::Device => OPERAND_ID_DEVICE,
        Operand::Tdi => OPERAND_ID_DEVIF,
        Operand::Guest => OPERAND_ID_TDR,
        Operand::Ownership => OPERAND_ID_MMIOMT,
        Operand::SecureTable => OPERAND_ID_SEPT_TREE,
        Operand::Transport => OPERAND_ID_TRANSPORT,
    }
}

/// The one mapping from a core outcome to a TDX status, naming the operand from the leaf's
/// register roles `ops`.
pub fn encode(outcome: Result<Completion, Error>, ops: &Operands) -> TdxStatus {
    let e = match outcome {
        Ok(Completion::Done) => return TDX_SUCCESS,
        Ok(Completion::Resumable) => return TDX_INTERRUPTED_RESUMABLE,
        // The length goes to RCX, the request to the TDI's request page (the dispatcher's).
        Ok(Completion::Relay(_)) => return TDX_SPDM_REQUEST,
        Err(e) => e,
    };
    let (code, operand) = match e {
        Error::InvalidAddress => (TDX_OPERAND_ADDR_RANGE_ERROR, ops.address()),
        // A leaf without an address operand (bind) met a misaligned range in the device's
        // report: the transport is the operand at fault.
        Error::Misaligned if ops.address() == 0 => {
            (TDX_OPERAND_INVALID, u64::from(OPERAND_ID_TRANSPORT))
        }
        Error::Misaligned => (TDX_OPERAND_INVALID, ops.address()),
        Error::InvalidRange => (TSM_INVALID_RANGE, ops.ranges()),
        Error::InvalidHandle => (TDX_OPERAND_INVALID, ops.handle()),
        Error::InvalidRequesterId => (TDX_OPERAND_INVALID, Operands::first(&[ops.rid])),
        Error::TooManyRanges => (TSM_TOO_MANY_RANGES, ops.ranges()),
        Error::RangeOutsideDevice => (TSM_RANGE_OUTSIDE_DEVICE, ops.ranges()),
        Error::RangesOverlap => (TSM_RANGES_OVERLAP, ops.ranges()),
        Error::InvalidPageSize => (TDX_OPERAND_INVALID, Operands::first(&[ops.page])),
        Error::ReservedMemory => (TSM_RESERVED_MEMORY, Operands::first(&[ops.hpa, ops.list])),
        Error::ForeignInterface => (TSM_FOREIGN_INTERFACE, Operands::first(&[ops.rid])),
        Error::EmptyReport => (TSM_EMPTY_REPORT, u64::from(OPERAND_ID_TRANSPORT)),
        Error::BarInUse => (TSM_BAR_IN_USE, ops.ranges()),
        Error::StreamCut => (TSM_STREAM_CUT, ops.handle()),
        Error::Inconsistent => (TSM_INCONSISTENT, 0),
        Error::DeviceTableFull => (TSM_DEVICE_TABLE_FULL, 0),
        Error::TdiTableFull => (TSM_TDI_TABLE_FULL, 0),
        Error::GuestTableFull => (TSM_TD_TABLE_FULL, 0),
        Error::OwnershipTableFull => (TSM_OWNERSHIP_TABLE_FULL, u64::from(OPERAND_ID_MMIOMT)),
        Error::SecureTableFull => (TSM_SEPT_POOL_EMPTY, u64::from(OPERAND_ID_SEPT_TREE)),
        Error::SecureTableFlushPending => {
            (TSM_SEPT_POOL_AWAITS_FLUSH, u64::from(OPERAND_ID_SEPT_TREE))
        }
        Error::TdiBound => (TDX_DEVIF_TDISP_INVALID_STATE, ops.target()),
        Error::TdiNotBound => (TDX_DEVIF_INVALID_STATE, ops.handle()),
        Error::TdiAlreadyBound => (TSM_TDI_ALREADY_BOUND, ops.handle()),
        Error::NotOwner => (TDX_MMIO_DEVIF_OWNER_MISMATCH, Operands::first(&[ops.td])),
        Error::TdiNotLocked => (TSM_TDI_NOT_LOCKED, ops.handle()),
        Error::TdiInError => (TSM_TDI_IN_ERROR, ops.handle()),
        Error::UnbindInProgress => (TSM_UNBIND_IN_PROGRESS, ops.handle()),
        Error::DeviceInUse => (TSM_DEVICE_IN_USE, ops.handle()),
        Error::GuestInUse => (TDX_TD_ASSOCIATED_PAGES_EXIST, Operands::first(&[ops.td])),
        Error::DuplicateDevice => (TSM_DUPLICATE_DEVICE, Operands::first(&[ops.rid])),
        Error::DuplicateTdi => (TSM_DUPLICATE_TDI, Operands::first(&[ops.rid])),
        Error::HpaNotOwned => (TDX_PAGE_METADATA_INCORRECT, ops.host()),
        Error::ReportedAddressMismatch => (TDX_MMIO_INVALID_HPA_OFFSET, ops.address()),
        Error::GpaAlreadyMapped => (TDX_EPT_ENTRY_NOT_FREE, ops.address()),
        Error::HpaAlreadyMapped => (TDX_PAGE_NOT_FREE, ops.host()),
        Error::NotMapped => (TDX_EPT_WALK_FAILED, ops.address()),
        Error::SizeMismatch => (TDX_PAGE_SIZE_MISMATCH, ops.address()),
        Error::NotBlocked => (TDX_GPA_RANGE_NOT_BLOCKED, ops.address()),
        Error::TlbFlushPending => (TDX_TLB_TRACKING_NOT_DONE, u64::from(OPERAND_ID_TD_EPOCH)),
        Error::DmaContextExists | Error::DmaNotBlocked => {
            (TDX_DMAR_INVALID_MAPPING_STATE, u64::from(OPERAND_ID_DMAR))
        }
        Error::NoDmaContext => (TDX_DMAR_ENTRY_NOT_PRESENT, u64::from(OPERAND_ID_DMAR)),
        Error::IotlbInvalidationPending => (TDX_DMAR_INVALID_INV_STATE, u64::from(OPERAND_ID_DMAR)),
        // No operand, as TDH.MEM.TRACK answers it; the leaves that name RCX (TDH.MMIO.UNMAP,
        // TDH.DMAR.REMOVE) add it themselves.
        Error::IotlbNotTracked => (TDX_IOMMU_IOTLB_TRACKING_NOT_DONE, 0),
        Error::DmaContextRemains => (TDX_DEVIF_HAS_MAPPED_DMA, ops.handle()),
        Error::DmaNotAccepted => (TSM_DMA_NOT_ACCEPTED, ops.handle()),
        Error::DeviceUnresponsive => (TSM_DEVICE_UNRESPONSIVE, u64::from(OPERAND_ID_TRANSPORT)),
        Error::DeviceRefused => (TSM_DEVICE_REFUSED, u64::from(OPERAND_ID_TRANSPORT)),
        Error::DeviceMalformed => (TSM_DEVICE_MALFORMED, u64::from(OPERAND_ID_TRANSPORT)),
        Error::ExchangePending => (TDX_DEVIF_TDISP_OUT_REQ, ops.handle()),
        Error::NoExchange => (TDX_DEVIF_TDISP_INVALID_REQ_STS, ops.handle()),
        Error::RelayMalformed => (TDX_DEVIF_TDISP_INVALID_MESSAGE, Operands::first(&[ops.msg])),
        Error::RelayBufferTooSmall => (TSM_RELAY_BUFFER_TOO_SMALL, u64::from(OPERAND_ID_TRANSPORT)),
        Error::SequenceExhausted => (
            TDX_SPDM_SESSION_KEY_REQUIRE_REFRESH,
            u64::from(OPERAND_ID_TRANSPORT),
        ),
        Error::Busy(op) => (TDX_OPERAND_BUSY, u64::from(busy_operand(op))),
    };
    code | (operand & OPERAND_ID_MASK)
}

/// The TDX status for an S-EPT refusal met outside the core (the guest's accept), naming the
/// page-info operand `page`.
pub fn sept_status(e: SeptError, page: u32) -> TdxStatus {
    let page = u64::from(page);
    match e {
        SeptError::WalkFailed { .. } => TDX_EPT_WALK_FAILED | page,
        SeptError::SizeMismatch { .. } => TDX_PAGE_SIZE_MISMATCH | page,
        SeptError::EntryNotFree { .. } => TDX_EPT_ENTRY_NOT_FREE | page,
        SeptError::EntryStateIncorrect { .. } => TDX_EPT_ENTRY_STATE_INCORRECT | page,
        SeptError::NotBlocked => TDX_GPA_RANGE_NOT_BLOCKED | page,
        SeptError::TlbTrackingNotDone => TDX_TLB_TRACKING_NOT_DONE | u64::from(OPERAND_ID_TD_EPOCH),
        SeptError::PreviousEpochBusy => {
            TDX_PREVIOUS_TLB_EPOCH_BUSY | u64::from(OPERAND_ID_TD_EPOCH)
        }
        SeptError::TrackResumable => TDX_INTERRUPTED_RESUMABLE,
        SeptError::IotlbTrackingNotDone => TDX_IOMMU_IOTLB_TRACKING_NOT_DONE | page,
        SeptError::IotlbTrackingNotRequired => TDX_IOMMU_IOTLB_TRACKING_NOT_REQUIRED,
        SeptError::HpaInUse => TDX_PAGE_NOT_FREE | u64::from(OPERAND_ID_R8),
        SeptError::AlreadyAccepted => TDX_PAGE_ALREADY_ACCEPTED | page,
        SeptError::PoolEmpty => TSM_SEPT_POOL_EMPTY | u64::from(OPERAND_ID_SEPT_TREE),
        SeptError::PoolAwaitsFlush => TSM_SEPT_POOL_AWAITS_FLUSH | u64::from(OPERAND_ID_SEPT_TREE),
        SeptError::Misaligned => TDX_OPERAND_INVALID | page,
        // Beyond the TD's S-EPT width, like an address beyond 2^52: outside the address space.
        // (The TDX module answers OPERAND_INVALID for a GPA beyond GPAW; ours names the cause.)
        SeptError::GpaTooWide => TDX_OPERAND_ADDR_RANGE_ERROR | page,
        SeptError::HpaTooWide => TDX_OPERAND_ADDR_RANGE_ERROR | u64::from(OPERAND_ID_R8),
        SeptError::UnknownGuest => TDX_OPERAND_INVALID | u64::from(OPERAND_ID_RDX),
        // The same status, operand 0, as the core's `Inconsistent` (what a map or remove with
        // the same drift answers through the core).
        SeptError::Inconsistent => TSM_INCONSISTENT,
    }
}

/// Whether the status reports success (warnings such as PAGE_ALREADY_ACCEPTED included).
pub const fn is_success(status: TdxStatus) -> bool {
    status & STATUS_ERROR == 0
}

/// The most specific core outcome a TDX status stands for, given the leaf's register roles.
///
/// Coarser than the core where TDX is: OPERAND_INVALID on an address operand is `Misaligned`
/// (the core's `InvalidPageSize` on page info decodes to it too); OPERAND_INVALID on RAX (an
/// unknown leaf or reserved RAX bits) has no core status and decodes to `InvalidHandle`.
/// PREVIOUS_TLB_EPOCH_BUSY decodes to `TlbFlushPending`. TDX_SPDM_REQUEST decodes to
/// `Relay(0)`: the length is in RCX, not in the status (`abi::outcome` reads both). Unknown
/// codes decode to `None`.
pub fn decode(status: TdxStatus, ops: &Operands) -> Option<Result<Completion, Error>> {
    let operand = u32::try_from(status & OPERAND_ID_MASK).ok()?;
    let is = |role: Option<u32>| role == Some(operand);
    let e = match status & CODE_MASK {
        TDX_SUCCESS | TDX_PAGE_ALREADY_ACCEPTED | TDX_NO_HKID_READY_TO_WBCACHE => {
            return Some(Ok(Completion::Done));
        }
        TDX_INTERRUPTED_RESUMABLE => return Some(Ok(Completion::Resumable)),
        TDX_SPDM_REQUEST => return Some(Ok(Completion::Relay(0))),
        TDX_OPERAND_ADDR_RANGE_ERROR => Error::InvalidAddress,
        TDX_OPERAND_INVALID if is(ops.tdi) || is(ops.device) || is(ops.td) => Error::InvalidHandle,
        TDX_OPERAND_INVALID if is(ops.rid) => Error::InvalidRequesterId,
        TDX_OPERAND_INVALID if is(ops.page) || is(ops.hpa) || is(ops.list) => Error::Misaligned,
        TDX_OPERAND_INVALID if operand == OPERAND_ID_TRANSPORT => Error::Misaligned,
        TDX_OPERAND_INVALID => Error::InvalidHandle,
        TSM_INVALID_RANGE => Error::InvalidRange,
        TSM_TOO_MANY_RANGES => Error::TooManyRanges,
        TSM_RANGE_OUTSIDE_DEVICE => Error::RangeOutsideDevice,
        TSM_RANGES_OVERLAP => Error::RangesOverlap,
        TSM_RESERVED_MEMORY => Error::ReservedMemory,
        TSM_FOREIGN_INTERFACE => Error::ForeignInterface,
        TSM_EMPTY_REPORT => Error::EmptyReport,
        TSM_BAR_IN_USE => Error::BarInUse,
        TSM_STREAM_CUT
        | TDX_IDE_STREAM_NOT_CONFIGURED
        | TDX_IDE_STREAM_BLOCKED
        | TDX_IDE_STREAM_IDEKM_KEYS_NOT_READY => Error::StreamCut,
        TDX_IDE_STREAM_HAS_DEVICE_INTERFACES | TDX_SPDM_HAS_ACTIVE_IDE_STREAMS => {
            Error::DeviceInUse
        }
        TSM_INCONSISTENT => Error::Inconsistent,
        TSM_DEVICE_TABLE_FULL => Error::DeviceTableFull,
        TSM_TDI_TABLE_FULL => Error::TdiTableFull,
        TSM_TD_TABLE_FULL => Error::GuestTableFull,
        TSM_OWNERSHIP_TABLE_FULL => Error::OwnershipTableFull,
        TSM_SEPT_POOL_EMPTY => Error::SecureTableFull,
        TSM_SEPT_POOL_AWAITS_FLUSH => Error::SecureTableFlushPending,
        TDX_DEVIF_TDISP_INVALID_STATE => Error::TdiBound,
        TDX_DEVIF_INVALID_STATE => Error::TdiNotBound,
        TSM_TDI_ALREADY_BOUND => Error::TdiAlreadyBound,
        TDX_MMIO_DEVIF_OWNER_MISMATCH => Error::NotOwner,
        TSM_TDI_NOT_LOCKED => Error::TdiNotLocked,
        TSM_TDI_IN_ERROR => Error::TdiInError,
        TSM_UNBIND_IN_PROGRESS => Error::UnbindInProgress,
        TSM_DEVICE_IN_USE => Error::DeviceInUse,
        TDX_TD_ASSOCIATED_PAGES_EXIST | TDX_TD_HAS_ATTACHED_DEVICES => Error::GuestInUse,
        TSM_DUPLICATE_DEVICE => Error::DuplicateDevice,
        TSM_DUPLICATE_TDI => Error::DuplicateTdi,
        TDX_PAGE_METADATA_INCORRECT => Error::HpaNotOwned,
        TDX_MMIO_INVALID_HPA_OFFSET => Error::ReportedAddressMismatch,
        TDX_EPT_ENTRY_NOT_FREE => Error::GpaAlreadyMapped,
        TDX_PAGE_NOT_FREE => Error::HpaAlreadyMapped,
        TDX_EPT_WALK_FAILED | TDX_EPT_ENTRY_STATE_INCORRECT => Error::NotMapped,
        TDX_PAGE_SIZE_MISMATCH => Error::SizeMismatch,
        TDX_GPA_RANGE_NOT_BLOCKED => Error::NotBlocked,
        TDX_TLB_TRACKING_NOT_DONE | TDX_PREVIOUS_TLB_EPOCH_BUSY => Error::TlbFlushPending,
        // TDX names one state for "exists" and "not blocked": decoded as the latter.
        TDX_DMAR_INVALID_MAPPING_STATE => Error::DmaNotBlocked,
        TDX_DMAR_ENTRY_NOT_PRESENT => Error::NoDmaContext,
        // An IOTLB invalidation the host must process: the entry's own, or the TD's domain's
        // (which it requests first).
        TDX_DMAR_INVALID_INV_STATE => Error::IotlbInvalidationPending,
        TDX_IOMMU_IOTLB_TRACKING_NOT_DONE => Error::IotlbNotTracked,
        TDX_DEVIF_HAS_MAPPED_DMA => Error::DmaContextRemains,
        TSM_DMA_NOT_ACCEPTED => Error::DmaNotAccepted,
        TSM_DEVICE_UNRESPONSIVE => Error::DeviceUnresponsive,
        TSM_DEVICE_REFUSED => Error::DeviceRefused,
        TSM_DEVICE_MALFORMED => Error::DeviceMalformed,
        TDX_DEVIF_TDISP_OUT_REQ => Error::ExchangePending,
        TDX_DEVIFMT_NOT_PRESENT => Error::InvalidHandle,
        TDX_DEVIF_INVALID_METADATA => Error::NotOwner,
        TDX_DEVIFMT_ALREADY_PRESENT => Error::DuplicateTdi,
        TDX_DEVIF_TDISP_INVALID_REQ_STS => Error::NoExchange,
        TDX_DEVIF_TDISP_INVALID_MESSAGE => Error::RelayMalformed,
        TDX_SPDM_SESSION_KEY_REQUIRE_REFRESH => Error::SequenceExhausted,
        TSM_RELAY_BUFFER_TOO_SMALL => Error::RelayBufferTooSmall,
        TDX_OPERAND_BUSY => Error::Busy(match operand {
            OPERAND_ID_DEVICE_TABLE => Operand::DeviceTable,
            OPERAND_ID_DEVICE => Operand::Device,
            OPERAND_ID_DEVIF => Operand::Tdi,
            OPERAND_ID_TDR => Operand::Guest,
            OPERAND_ID_MMIOMT => Operand::Ownership,
            OPERAND_ID_SEPT_TREE => Operand::SecureTable,
            OPERAND_ID_TRANSPORT => Operand::Transport,
            _ => return None,
        }),
        _ => return None,
    };
    Some(Err(e))
}

/// Every named status code above (success and class codes included), for [`name`] and tests.
pub const NAMED: [TdxStatus; 86] = [
    TDX_SUCCESS,
    TDX_INTERRUPTED_RESUMABLE,
    TDX_OPERAND_INVALID,
    TDX_OPERAND_ADDR_RANGE_ERROR,
    TDX_OPERAND_BUSY,
    TDX_PREVIOUS_TLB_EPOCH_BUSY,
    TDX_PAGE_METADATA_INCORRECT,
    TDX_PAGE_NOT_FREE,
    TDX_SYSINIT_NOT_PENDING,
    TDX_SYS_NOT_READY,
    TDX_TD_ASSOCIATED_PAGES_EXIST,
    TDX_LIFECYCLE_STATE_INCORRECT,
    TDX_TD_KEYS_NOT_CONFIGURED,
    TDX_WBCACHE_NOT_COMPLETE,
    TDX_HKID_NOT_FREE,
    TDX_NO_HKID_READY_TO_WBCACHE,
    TDX_WBCACHE_RESUME_ERROR,
    TDX_TD_HAS_ATTACHED_DEVICES,
    TDX_EPT_WALK_FAILED,
    TDX_EPT_ENTRY_NOT_FREE,
    TDX_GPA_RANGE_NOT_BLOCKED,
    TDX_TLB_TRACKING_NOT_DONE,
    TDX_IOMMU_IOTLB_TRACKING_NOT_DONE,
    TDX_IOMMU_IOTLB_TRACKING_NOT_REQUIRED,
    TDX_IOMMU_IQ_QUEUE_FULL,
    TDX_GUEST_INV_NOT_REQUIRED,
    TDX_GUEST_INV_IN_PROGRESS,
    TDX_GUEST_INV_INVALID_DESC,
    TDX_IOTLB_INV_REQUEST,
    TDX_PAGE_ALREADY_ACCEPTED,
    TDX_PAGE_SIZE_MISMATCH,
    TDX_EPT_ENTRY_STATE_INCORRECT,
    TDX_DEVIF_TDISP_INVALID_STATE,
    TDX_DEVIF_INVALID_STATE,
    TDX_MMIO_DEVIF_OWNER_MISMATCH,
    TDX_MMIO_INVALID_HPA_OFFSET,
    TDX_DEVIFMT_NOT_PRESENT,
    TDX_DEVIF_INVALID_METADATA,
    TDX_DEVIFMT_ALREADY_PRESENT,
    TDX_DEVIF_TDISP_INVALID_REQ_STS,
    TDX_DEVIF_TDISP_INVALID_MESSAGE,
    TDX_DEVIF_TDISP_OUT_REQ,
    TDX_SPDM_REQUEST,
    TDX_SPDM_SESSION_KEY_REQUIRE_REFRESH,
    TDX_SPDM_HAS_ACTIVE_IDE_STREAMS,
    TDX_SPDM_INVALID_STATE,
    TDX_IDE_STREAM_NOT_FREE,
    TDX_IDE_STREAM_NOT_CONFIGURED,
    TDX_IDE_STREAM_BLOCKED,
    TDX_IDE_STREAM_NOT_BLOCKED,
    TDX_IDE_STREAM_HAS_DEVICE_INTERFACES,
    TDX_IDE_STREAM_IDEKM_KEYS_NOT_READY,
    TDX_IDE_STREAM_ADDR_OVERLAP,
    TDX_IDE_STREAM_RID_OVERLAP,
    TDX_MMIO_PAGE_NOT_IN_ASSOC_RANGE,
    TDX_IDE_STREAM_INVALID_STATE,
    TDX_SPDM_INVALID_MESSAGE,
    TSM_TOO_MANY_RANGES,
    TSM_RANGE_OUTSIDE_DEVICE,
    TSM_RANGES_OVERLAP,
    TSM_INVALID_RANGE,
    TSM_RESERVED_MEMORY,
    TSM_EMPTY_REPORT,
    TSM_DEVICE_TABLE_FULL,
    TSM_TDI_TABLE_FULL,
    TSM_TD_TABLE_FULL,
    TSM_OWNERSHIP_TABLE_FULL,
    TSM_SEPT_POOL_EMPTY,
    TSM_SEPT_POOL_AWAITS_FLUSH,
    TSM_TDI_ALREADY_BOUND,
    TSM_TDI_NOT_LOCKED,
    TSM_TDI_IN_ERROR,
    TSM_UNBIND_IN_PROGRESS,
    TSM_DEVICE_IN_USE,
    TSM_DUPLICATE_DEVICE,
    TSM_DUPLICATE_TDI,
    TSM_FOREIGN_INTERFACE,
    TSM_BAR_IN_USE,
    TSM_STREAM_CUT,
    TSM_BARS_NOT_REGISTERED,
    TSM_BARS_REGISTERED,
    TSM_INCONSISTENT,
    TSM_DEVICE_UNRESPONSIVE,
    TSM_DEVICE_REFUSED,
    TSM_DEVICE_MALFORMED,
    TSM_RELAY_BUFFER_TOO_SMALL,
];

/// The name of a status's code (operand bits ignored), or `None` for a code with no constant
/// here: for logs and host tools, which otherwise print a bare 64-bit number.
pub const fn name(status: TdxStatus) -> Option<&'static str> {
    Some(match status & CODE_MASK {
        TDX_SUCCESS => "TDX_SUCCESS",
        TDX_INTERRUPTED_RESUMABLE => "TDX_INTERRUPTED_RESUMABLE",
        TDX_OPERAND_INVALID => "TDX_OPERAND_INVALID",
        TDX_OPERAND_ADDR_RANGE_ERROR => "TDX_OPERAND_ADDR_RANGE_ERROR",
        TDX_OPERAND_BUSY => "TDX_OPERAND_BUSY",
        TDX_PREVIOUS_TLB_EPOCH_BUSY => "TDX_PREVIOUS_TLB_EPOCH_BUSY",
        TDX_PAGE_METADATA_INCORRECT => "TDX_PAGE_METADATA_INCORRECT",
        TDX_PAGE_NOT_FREE => "TDX_PAGE_NOT_FREE",
        TDX_SYSINIT_NOT_PENDING => "TDX_SYSINIT_NOT_PENDING",
        TDX_SYS_NOT_READY => "TDX_SYS_NOT_READY",
        TDX_TD_ASSOCIATED_PAGES_EXIST => "TDX_TD_ASSOCIATED_PAGES_EXIST",
        TDX_LIFECYCLE_STATE_INCORRECT => "TDX_LIFECYCLE_STATE_INCORRECT",
        TDX_TD_KEYS_NOT_CONFIGURED => "TDX_TD_KEYS_NOT_CONFIGURED",
        TDX_WBCACHE_NOT_COMPLETE => "TDX_WBCACHE_NOT_COMPLETE",
        TDX_HKID_NOT_FREE => "TDX_HKID_NOT_FREE",
        TDX_NO_HKID_READY_TO_WBCACHE => "TDX_NO_HKID_READY_TO_WBCACHE",
        TDX_WBCACHE_RESUME_ERROR => "TDX_WBCACHE_RESUME_ERROR",
        TDX_TD_HAS_ATTACHED_DEVICES => "TDX_TD_HAS_ATTACHED_DEVICES",
        TDX_EPT_WALK_FAILED => "TDX_EPT_WALK_FAILED",
        TDX_EPT_ENTRY_NOT_FREE => "TDX_EPT_ENTRY_NOT_FREE",
        TDX_GPA_RANGE_NOT_BLOCKED => "TDX_GPA_RANGE_NOT_BLOCKED",
        TDX_TLB_TRACKING_NOT_DONE => "TDX_TLB_TRACKING_NOT_DONE",
        TDX_IOMMU_IOTLB_TRACKING_NOT_DONE => "TDX_IOMMU_IOTLB_TRACKING_NOT_DONE",
        TDX_IOMMU_IOTLB_TRACKING_NOT_REQUIRED => "TDX_IOMMU_IOTLB_TRACKING_NOT_REQUIRED",
        TDX_IOMMU_IQ_QUEUE_FULL => "TDX_IOMMU_IQ_QUEUE_FULL",
        TDX_GUEST_INV_NOT_REQUIRED => "TDX_GUEST_INV_NOT_REQUIRED",
        TDX_GUEST_INV_IN_PROGRESS => "TDX_GUEST_INV_IN_PROGRESS",
        TDX_GUEST_INV_INVALID_DESC => "TDX_GUEST_INV_INVALID_DESC",
        TDX_IOTLB_INV_REQUEST => "TDX_IOTLB_INV_REQUEST",
        TDX_PAGE_ALREADY_ACCEPTED => "TDX_PAGE_ALREADY_ACCEPTED",
        TDX_PAGE_SIZE_MISMATCH => "TDX_PAGE_SIZE_MISMATCH",
        TDX_EPT_ENTRY_STATE_INCORRECT => "TDX_EPT_ENTRY_STATE_INCORRECT",
        TDX_DEVIF_TDISP_INVALID_STATE => "TDX_DEVIF_TDISP_INVALID_STATE",
        TDX_DEVIF_INVALID_STATE => "TDX_DEVIF_INVALID_STATE",
        TDX_MMIO_DEVIF_OWNER_MISMATCH => "TDX_MMIO_DEVIF_OWNER_MISMATCH",
        TDX_MMIO_INVALID_HPA_OFFSET => "TDX_MMIO_INVALID_HPA_OFFSET",
        TDX_DEVIFMT_NOT_PRESENT => "TDX_DEVIFMT_NOT_PRESENT",
        TDX_DEVIF_INVALID_METADATA => "TDX_DEVIF_INVALID_METADATA",
        TDX_DEVIFMT_ALREADY_PRESENT => "TDX_DEVIFMT_ALREADY_PRESENT",
        TDX_DEVIF_TDISP_INVALID_REQ_STS => "TDX_DEVIF_TDISP_INVALID_REQ_STS",
        TDX_DEVIF_TDISP_INVALID_MESSAGE => "TDX_DEVIF_TDISP_INVALID_MESSAGE",
        TDX_DEVIF_TDISP_OUT_REQ => "TDX_DEVIF_TDISP_OUT_REQ",
        TDX_SPDM_REQUEST => "TDX_SPDM_REQUEST",
        TDX_SPDM_SESSION_KEY_REQUIRE_REFRESH => "TDX_SPDM_SESSION_KEY_REQUIRE_REFRESH",
        TDX_SPDM_HAS_ACTIVE_IDE_STREAMS => "TDX_SPDM_HAS_ACTIVE_IDE_STREAMS",
        TDX_SPDM_INVALID_STATE => "TDX_SPDM_INVALID_STATE",
        TDX_IDE_STREAM_NOT_FREE => "TDX_IDE_STREAM_NOT_FREE",
        TDX_IDE_STREAM_NOT_CONFIGURED => "TDX_IDE_STREAM_NOT_CONFIGURED",
        TDX_IDE_STREAM_BLOCKED => "TDX_IDE_STREAM_BLOCKED",
        TDX_IDE_STREAM_NOT_BLOCKED => "TDX_IDE_STREAM_NOT_BLOCKED",
        TDX_IDE_STREAM_HAS_DEVICE_INTERFACES => "TDX_IDE_STREAM_HAS_DEVICE_INTERFACES",
        TDX_IDE_STREAM_IDEKM_KEYS_NOT_READY => "TDX_IDE_STREAM_IDEKM_KEYS_NOT_READY",
        TDX_IDE_STREAM_ADDR_OVERLAP => "TDX_IDE_STREAM_ADDR_OVERLAP",
        TDX_IDE_STREAM_RID_OVERLAP => "TDX_IDE_STREAM_RID_OVERLAP",
        TDX_MMIO_PAGE_NOT_IN_ASSOC_RANGE => "TDX_MMIO_PAGE_NOT_IN_ASSOC_RANGE",
        TDX_IDE_STREAM_INVALID_STATE => "TDX_IDE_STREAM_INVALID_STATE",
        TDX_SPDM_INVALID_MESSAGE => "TDX_SPDM_INVALID_MESSAGE",
        TSM_TOO_MANY_RANGES => "TSM_TOO_MANY_RANGES",
        TSM_RANGE_OUTSIDE_DEVICE => "TSM_RANGE_OUTSIDE_DEVICE",
        TSM_RANGES_OVERLAP => "TSM_RANGES_OVERLAP",
        TSM_INVALID_RANGE => "TSM_INVALID_RANGE",
        TSM_RESERVED_MEMORY => "TSM_RESERVED_MEMORY",
        TSM_EMPTY_REPORT => "TSM_EMPTY_REPORT",
        TSM_DEVICE_TABLE_FULL => "TSM_DEVICE_TABLE_FULL",
        TSM_TDI_TABLE_FULL => "TSM_TDI_TABLE_FULL",
        TSM_TD_TABLE_FULL => "TSM_TD_TABLE_FULL",
        TSM_OWNERSHIP_TABLE_FULL => "TSM_OWNERSHIP_TABLE_FULL",
        TSM_SEPT_POOL_EMPTY => "TSM_SEPT_POOL_EMPTY",
        TSM_SEPT_POOL_AWAITS_FLUSH => "TSM_SEPT_POOL_AWAITS_FLUSH",
        TSM_TDI_ALREADY_BOUND => "TSM_TDI_ALREADY_BOUND",
        TSM_TDI_NOT_LOCKED => "TSM_TDI_NOT_LOCKED",
        TSM_TDI_IN_ERROR => "TSM_TDI_IN_ERROR",
        TSM_UNBIND_IN_PROGRESS => "TSM_UNBIND_IN_PROGRESS",
        TSM_DEVICE_IN_USE => "TSM_DEVICE_IN_USE",
        TSM_DMA_NOT_ACCEPTED => "TSM_DMA_NOT_ACCEPTED",
        TSM_DUPLICATE_DEVICE => "TSM_DUPLICATE_DEVICE",
        TSM_DUPLICATE_TDI => "TSM_DUPLICATE_TDI",
        TSM_FOREIGN_INTERFACE => "TSM_FOREIGN_INTERFACE",
        TSM_BAR_IN_USE => "TSM_BAR_IN_USE",
        TSM_STREAM_CUT => "TSM_STREAM_CUT",
        TSM_BARS_NOT_REGISTERED => "TSM_BARS_NOT_REGISTERED",
        TSM_BARS_REGISTERED => "TSM_BARS_REGISTERED",
        TSM_INCONSISTENT => "TSM_INCONSISTENT",
        TSM_DEVICE_UNRESPONSIVE => "TSM_DEVICE_UNRESPONSIVE",
        TSM_DEVICE_REFUSED => "TSM_DEVICE_REFUSED",
        TSM_DEVICE_MALFORMED => "TSM_DEVICE_MALFORMED",
        TSM_RELAY_BUFFER_TOO_SMALL => "TSM_RELAY_BUFFER_TOO_SMALL",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP_OPS: Operands = Operands {
        tdi: Some(OPERAND_ID_R9),
        device: None,
        td: Some(OPERAND_ID_RDX),
        page: Some(OPERAND_ID_RCX),
        hpa: Some(OPERAND_ID_R8),
        list: None,
        rid: None,
        msg: None,
    };

    /// TDH.DEVIF.RESPONSE's roles: the TDI in RCX, the response length in RDX.
    const RESPONSE_OPS: Operands = Operands {
        tdi: Some(OPERAND_ID_RCX),
        msg: Some(OPERAND_ID_RDX),
        ..NO_OPS
    };
    const NO_OPS: Operands = Operands {
        tdi: None,
        device: None,
        td: None,
        page: None,
        hpa: None,
        list: None,
        rid: None,
        msg: None,
    };

    #[test]
    fn public_values_and_class_bits() {
        assert_eq!(TDX_OPERAND_BUSY & STATUS_ERROR, STATUS_ERROR);
        assert_eq!(TDX_OPERAND_BUSY & STATUS_NON_RECOVERABLE, 0);
        assert_eq!(
            TDX_OPERAND_INVALID & STATUS_NON_RECOVERABLE,
            STATUS_NON_RECOVERABLE
        );
        assert!(is_success(TDX_PAGE_ALREADY_ACCEPTED));
        assert_eq!(
            encode(Err(Error::Busy(Operand::SecureTable)), &MAP_OPS),
            0x8000_0200_0000_0092
        );
        assert_eq!(
            encode(Err(Error::GpaAlreadyMapped), &MAP_OPS),
            0xC000_0B02_0000_0001
        );
        assert_eq!(
            encode(Err(Error::TdiBound), &MAP_OPS),
            0xC000_0F10_0000_0001
        );
        assert_eq!(
            encode(Err(Error::TlbFlushPending), &MAP_OPS),
            0xC000_0B08_0000_00A9
        );
        assert_eq!(
            encode(Ok(Completion::Resumable), &MAP_OPS),
            0x8000_0003_0000_0000
        );
    }

    #[test]
    fn every_core_status_round_trips_except_the_documented_coarse_ones() {
        for e in Error::ALL {
            let status = encode(Err(e), &MAP_OPS);
            assert_ne!(status, TDX_SUCCESS, "{e:?}");
            assert!(!is_success(status), "{e:?}");
            let expect = match e {
                Error::InvalidPageSize => Error::Misaligned,
                // The map leaf carries no requester ID: no operand to name.
                Error::InvalidRequesterId => Error::InvalidHandle,
                // TDX_DMAR_INVALID_MAPPING_STATE: an entry not FREE for ADD, not BLOCKED after.
                Error::DmaContextExists => Error::DmaNotBlocked,
                other => other,
            };
            assert_eq!(
                decode(status, &MAP_OPS),
                Some(Err(expect)),
                "{e:?} {status:#x}"
            );
        }
        for ok in [Completion::Done, Completion::Resumable] {
            assert_eq!(decode(encode(Ok(ok), &MAP_OPS), &MAP_OPS), Some(Ok(ok)));
        }
        // "Relay this": the status carries no length (RCX does).
        for n in [0, 1, 332, 4096] {
            assert_eq!(encode(Ok(Completion::Relay(n)), &MAP_OPS), TDX_SPDM_REQUEST);
        }
        assert_eq!(
            decode(TDX_SPDM_REQUEST, &MAP_OPS),
            Some(Ok(Completion::Relay(0)))
        );
        assert_eq!(decode(0xC000_7700_0000_0000, &MAP_OPS), None);
    }

    /// The relay's statuses are the TDX module's DEVIF ones where it has them, and name the
    /// operand a host must look at: the TDI for an exchange outstanding (or not), the
    /// response's length register for bytes that are not the answer.
    #[test]
    fn relay_statuses_name_the_tdi_or_the_response() {
        assert_eq!(TDX_SPDM_REQUEST, 0xC000_0F57_0000_0000);
        assert_eq!(
            encode(Err(Error::ExchangePending), &RESPONSE_OPS),
            0xC000_0F14_0000_0001
        );
        assert_eq!(
            encode(Err(Error::NoExchange), &RESPONSE_OPS),
            0xC000_0F0E_0000_0001
        );
        assert_eq!(
            encode(Err(Error::RelayMalformed), &RESPONSE_OPS),
            0xC000_0F0F_0000_0002
        );
        for e in [
            Error::ExchangePending,
            Error::NoExchange,
            Error::RelayMalformed,
            Error::RelayBufferTooSmall,
        ] {
            let status = encode(Err(e), &RESPONSE_OPS);
            assert_eq!(decode(status, &RESPONSE_OPS), Some(Err(e)), "{status:#x}");
        }
    }

    #[test]
    fn classes_ours_are_apart_from_tdx() {
        for e in Error::ALL {
            let status = encode(Err(e), &MAP_OPS);
            let class = (status >> 40) & 0xff;
            assert!(class <= 0x11 || class == 0xF0, "{e:?} {status:#x}");
        }
    }
    #[test]
    fn every_named_code_has_its_own_name() {
        for (i, &a) in NAMED.iter().enumerate() {
            let n = name(a | 0x1234).expect("named");
            assert!(n.starts_with("TDX_") || n.starts_with("TSM_"), "{n}");
            for &b in NAMED.iter().skip(i + 1) {
                assert_ne!(a, b, "{n} shares its code");
                assert_ne!(name(b), Some(n));
            }
        }
        assert_eq!(name(TDX_OPERAND_BUSY | 0xF01), Some("TDX_OPERAND_BUSY"));
        assert_eq!(name(0xC000_0FFF_0000_0000), None);
    }
}
