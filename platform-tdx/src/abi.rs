//! The SEAMCALL-style ABI: a register block in, a 64-bit status and output registers out, and
//! the dispatcher from leaf number to handler. Every handler checks its operands (reserved
//! bits, widths, alignment) before anything changes, in the core's order (handles, then
//! addresses, then state; see [`Dispatcher`]), so a refused call has no effect and reports
//! what the core would.
//!
//! RAX on entry is `{leaf[15:0], version[23:16], reserved[63:24]}` (TDX Module ABI spec,
//! SEAMCALL instruction leaf; only version 0 exists here). Leaf numbers are the TDX module's
//! where public (Linux `arch/x86/virt/vmx/tdx/tdx.h` for the memory leaves, intel/tdx-module
//! TDX-IO branch `tdx_api_defs.h` for the device leaves); the rest are ours, in 0xF000-0xF0FF,
//! far above every TDX leaf. See README.md for the operand table.
//!
//! Leaves that need the device (bind, unbind without FORCE, check, and TDH.DEVIF.REQUEST /
//! RESPONSE, which also carry the guest's start) may answer `TDX_SPDM_REQUEST`: the request, a
//! whole DOE object, is in the shared page the call named in R8 and RCX is `devif_req_out_t`
//! (code and length); the host relays it and hands the device's answer back with
//! TDH.DEVIF.RESPONSE ([`crate::devif`]).

use core::cell::Cell;

use tsm_core::capacity::{MAX_BARS, MAX_RANGES_PER_TDI};
use tsm_core::{
    Completion, Error, Gpa, GuestField, GuestId, Hpa, LeafState, MAX_RELAY_BYTES, MmioRange,
    PageSize, RequesterId, SecureSession, TdiId, TdiState, Tsm, TsmResult,
};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::devif::devif_at;
pub use crate::devif::{
    DEVIF_ID_FUNCTION_SHIFT, DEVIF_ID_IOMMU_MASK, DEVIF_ID_STREAM_SHIFT, DEVIF_ID_TYPE_SHIFT,
    DEVIF_TYPE_PFVF, FUNCTION_ID_REG_RESERVED, OUT_LENGTH_SHIFT, REQ_IN_CODE_MASK,
    REQ_IN_NO_FW_UPDATE, REQ_IN_TD_FLAG, RSP_IN_PA_MASK, RSP_OUT_STATE_SHIFT, TDG_DEVIF_REQUEST,
    TDG_DEVIF_RESPONSE, TDH_DEVIF_CREATE, TDH_DEVIF_REMOVE, TDH_DEVIF_REQUEST, TDH_DEVIF_RESPONSE,
    TDISP_GET_STATE, TDISP_LOCK_INTERFACE, TDISP_START_INTERFACE, TDISP_STOP_INTERFACE,
    TSM_DEVIF_SET_TD, devif_id, devif_req_in, devif_req_out, devif_rsp_in, devif_rsp_out,
};
pub use crate::dmar::{
    TDG_DMAR_ACCEPT, TDG_IQ_INV_REQUEST, TDH_DMAR_ADD, TDH_DMAR_BLOCK, TDH_DMAR_READ,
    TDH_DMAR_REMOVE, TDH_IQ_INV_PROCESS, TDH_IQ_INV_REQUEST,
};
use crate::ept::SeptState;
use crate::link::{Link, Session};
pub use crate::link::{
    TDH_IDE_STREAM_BLOCK, TDH_IDE_STREAM_CREATE, TDH_IDE_STREAM_DELETE, TDH_IDE_STREAM_KM,
    TDH_SPDM_CONNECT, TDH_SPDM_DISCONNECT, TDH_SPDM_MNG,
};
use crate::module::{
    MESSAGE_PAGE_BYTES, SPDM_MT_MAX_PAGES, SpdmEntry, SpdmPages, TdEntry, TdxModule, page_held,
    td_in,
};
use crate::sept::{Sept, SeptError, ept_level};
use crate::status::{
    self, OPERAND_ID_R8, OPERAND_ID_R9, OPERAND_ID_R10, OPERAND_ID_RAX, OPERAND_ID_RCX,
    OPERAND_ID_RDX, Operands, TDX_OPERAND_ADDR_RANGE_ERROR, TDX_OPERAND_INVALID, TDX_SUCCESS,
    TdxStatus,
};
pub use crate::td::{
    TDH_MNG_KEY_FREEID, TDH_MNG_VPFLUSHDONE, TDH_PHYMEM_CACHE_WB, TDH_PHYMEM_PAGE_RECLAIM,
    TDH_PHYMEM_PAGE_WBINVD,
};

/// The registers a SEAMCALL passes (TDX Module ABI spec: RAX leaf, operands in RCX, RDX, R8-R14).
#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct SeamRegs {
    /// In: leaf and version. Out: completion status.
    pub rax: u64,
    /// Operand / output.
    pub rcx: u64,
    /// Operand / output.
    pub rdx: u64,
    /// Operand / output.
    pub r8: u64,
    /// Operand / output.
    pub r9: u64,
    /// Operand / output.
    pub r10: u64,
    /// Operand / output.
    pub r11: u64,
    /// Operand / output.
    pub r12: u64,
    /// Operand / output.
    pub r13: u64,
    /// Operand / output (TDH.IDE.STREAM.CREATE's third address association register).
    pub r14: u64,
}

const _: () = assert!(core::mem::size_of::<SeamRegs>() == 10 * 8);

// ---- host leaves (SEAMCALL) ---------------------------------------------------------------

/// TDH.MNG.CREATE (Linux `arch/x86/virt/vmx/tdx/tdx.h` @a4a508df: leaf 9; wrapper
/// `tdh_mng_create(td, hkid)` in `tdx.c` @a4a508df): RCX the TDR page's physical address, RDX
/// the HKID. No outputs. Registers a TD under its TDR page: every later operand that names a TD
/// is that address. Checked in the TDX module's order (intel/tdx-module `tdh_mng_create.c`:
/// HKID first, then the TDR page, then the HKID's key): RDX bits 63:16 reserved (RDX is
/// `hkid_api_input_t`, `hkid : 16, reserved : 48`, intel/tdx-module `tdx_api_defs.h`
/// @a56a9173), HKID 0 or above [`crate::td::PRIVATE_HKID_MAX`] (not private):
/// OPERAND_INVALID + RDX; RCX not 4 KiB aligned: OPERAND_INVALID + RCX; at or above 2^52 or
/// not a whole page of host memory: OPERAND_ADDR_RANGE_ERROR + RCX; KeyID bits set
/// ([`crate::td::KEYID_MASK`]): OPERAND_INVALID + RCX; a page already a TD's TDR (until TDH.PHYMEM.PAGE.RECLAIM) or a
/// TDI's private page (the firmware's already): PAGE_METADATA_INCORRECT + RCX (the module's
/// PAMT "not PT_NDA"); an HKID a TD holds until TDH.MNG.KEY.FREEID: `TDX_HKID_NOT_FREE`; no
/// guest slot left: the core's `GuestTableFull`.
pub const TDH_MNG_CREATE: u16 = 9;
/// The TDR is one 4 KiB page (intel/tdx-module `tdx_api_defs.h` @a56a9173, `TDR_PAGE`; Linux
/// allocates it with `alloc_page`).
const TDR_ALIGN: PageSize = PageSize::Size4K;
/// Bytes of the TDR page.
const TDR_BYTES: usize = 4096;

/// TDH.MEM.SEPT.RD (Linux tdx.h / tdx-module: leaf 25): RCX page info, RDX TDR PA. Out: RCX the
/// entry the walk stopped at, RDX `{level[2:0], state[15:8]}`, R8 (ours) the blocking epoch.
pub const TDH_MEM_SEPT_RD: u16 = 25;
/// TDH.MEM.TRACK (Linux tdx.h: leaf 38): RCX TDR PA.
pub const TDH_MEM_TRACK: u16 = 38;
/// TDH.SPDM.CREATE (leaf 130, Linux devsec tsm tree `arch/x86/virt/vmx/tdx/tdx.h` @29838fc9 and
/// intel/tdx-module `tdx_api_defs.h` @a56a9173), Linux's layout (`tdh_spdm_create(func_id,
/// spdm_mt, *spdm_id)`, `arch/x86/virt/vmx/tdx/tdx.c` @2c2d99f4): RCX the TDISP function ID of
/// the device's DSM ([`FUNC_ID_RID_MASK`], [`FUNC_ID_SEGMENT_MASK`], [`FUNC_ID_SEG_VALID`];
/// other bits reserved), RDX an HPA_ARRAY_T of the SPDM metadata pages
/// ([`HPA_ARRAY_PFN_MASK`], [`HPA_ARRAY_SIZE_SHIFT`]). Out: RCX the SPDM id, the device's
/// handle in every later operand. The pages are only recorded (in use until
/// TDH.SPDM.DELETE). The device's BARs come with [`TSM_SPDM_BARS`].
pub const TDH_SPDM_CREATE: u16 = 130;
/// TDH.SPDM.DELETE (leaf 131, same sources), Linux's layout (`tdh_spdm_delete(spdm_id,
/// spdm_mt, *nr_released, *released_hpa)`, `tdx.c` @2c2d99f4): RCX the SPDM id, RDX the
/// release form of the metadata array (`hpa_array_t_release_raw`: 0 for one page, else the
/// root page). Out: RCX an HPA_ARRAY_T of the released pages (Linux checks `SIZE + 1` pages
/// and the PFN: the page itself, or the root). Refused while the device has TDIs.
pub const TDH_SPDM_DELETE: u16 = 131;
/// TDISP function ID, bits 15:0: the requester ID `bus << 8 | devfn` (Linux devsec tsm tree
/// `drivers/virt/coco/tdx-host/tdx-host.c` @191928fb, `TDISP_FUNC_ID GENMASK(15, 0)`).
pub const FUNC_ID_RID_MASK: u64 = 0xffff;
/// TDISP function ID, bits 23:16: the PCI segment (same source, `TDISP_FUNC_ID_SEGMENT
/// GENMASK(23, 16)`).
pub const FUNC_ID_SEGMENT_MASK: u64 = 0xff << FUNC_ID_SEGMENT_SHIFT;
/// Shift of [`FUNC_ID_SEGMENT_MASK`].
pub const FUNC_ID_SEGMENT_SHIFT: u32 = 16;
/// TDISP function ID, bit 24: the segment is valid (same source, `TDISP_FUNC_ID_SEG_VALID
/// BIT(24)`; Linux sets it only for a non-zero segment). A segment without it is refused.
pub const FUNC_ID_SEG_VALID: u64 = 1 << 24;
/// TDISP function ID bits 63:25: reserved (Linux leaves them 0).
const FUNC_ID_RESERVED: u64 = !(FUNC_ID_SEG_VALID | FUNC_ID_SEGMENT_MASK | FUNC_ID_RID_MASK);
/// HPA_ARRAY_T, bits 51:12: the PFN of the page (one page) or of the root page holding the
/// pages' addresses (Linux devsec tsm tree `arch/x86/virt/vmx/tdx/tdx.c` @2c2d99f4,
/// `hpa_array_t_assign_raw`).
pub const HPA_ARRAY_PFN_MASK: u64 = 0x000f_ffff_ffff_f000;
/// HPA_ARRAY_T, bits 63:55: the number of pages - 1 (same source).
pub const HPA_ARRAY_SIZE_SHIFT: u32 = 55;
/// HPA_ARRAY_T bits 54:52 and 11:0: reserved (zero in Linux's encoding).
pub(crate) const HPA_ARRAY_RESERVED: u64 = 0x0070_0000_0000_0fff;
/// Bytes of one HPA_ARRAY_T root entry (a page's physical address, u64).
const HPA_ARRAY_ENTRY_BYTES: usize = 8;
/// Bytes of an SPDM metadata page (and of the array's root page): 4 KiB pages.
const SPDM_MT_PAGE_BYTES: usize = 4096;
/// TDH.MMIO.MAP (TDX-IO: 158), Linux's layout: RCX page info (`gpa | level`), RDX TDR PA, R8
/// the MMIO page's host address; no TDI operand: the firmware finds the bound TDI whose report
/// holds the page (`Tsm::owner_of`), as the TDX module does in its MMIO metadata. R9 is
/// reserved ([`MMIO_MAP_RESERVED_R9`]). Outputs: none on success (Linux reads RCX/RDX only to
/// print an error). Source: `tdh_mmio_map(tdr, gpa, level, hpa, *rcx, *rdx)`, "[RFC PATCH
/// 12/12] KVM: TDX: Implement TDX specific private MMIO map/unmap for SEPT",
/// <20250107142719.179636-13-yilun.xu@linux.intel.com> (kvm-coco-queue v6.13-rc2 base); number
/// from intel/tdx-module `include/tdx_api_defs.h` @a56a9173cda32a711510ac2fb87ce049c22f1450.
pub const TDH_MMIO_MAP: u16 = 158;
/// R9 of TDH.MMIO.MAP: Linux's `tdh_mmio_map` leaves it 0 (its `struct tdx_module_args` is
/// zero-initialised and only RCX, RDX, R8 are set; same source as [`TDH_MMIO_MAP`]). Anything
/// else (e.g. a TDI handle, as this firmware's earlier layout took there) is refused,
/// `TDX_OPERAND_INVALID` + R9, never read as something else.
pub const MMIO_MAP_RESERVED_R9: u64 = 0;
/// TDH.MMIO.BLOCK (TDX-IO: 159), Linux's layout: RCX page info, RDX TDR PA. Source:
/// `tdh_mmio_block(tdr, gpa, level, *rcx, *rdx)`, same RFC as [`TDH_MMIO_MAP`].
pub const TDH_MMIO_BLOCK: u16 = 159;
/// TDH.MMIO.UNMAP (TDX-IO: 160), Linux's layout: RCX page info, RDX TDR PA. Out: R8 the host
/// address (ours; Linux's `tdh_mmio_unmap(tdr, gpa, level, *rcx, *rdx)` reads back only RCX
/// and RDX, to print an error, and this firmware leaves both as the caller sent them on
/// success). Same source as [`TDH_MMIO_MAP`].
pub const TDH_MMIO_UNMAP: u16 = 160;

/// First leaf number of ours; every TDX leaf is below it.
pub const TSM_LEAF_BASE: u16 = 0xF000;
// 0xF001, ours, TSM.TD.DESTROY, is retired: the host tears a TD down as Linux does
// ([`TDH_MNG_VPFLUSHDONE`], [`TDH_PHYMEM_CACHE_WB`], [`TDH_MNG_KEY_FREEID`],
// [`TDH_PHYMEM_PAGE_RECLAIM`] of the TDR, [`TDH_PHYMEM_PAGE_WBINVD`]; `crate::td`). (0xF000,
// the old "create TD", is retired too: TDH.MNG.CREATE replaces it.)
/// Ours, bind: RCX the TDI's `function_id_reg_t`, RDX the TDR PA, which must be the one
/// TDH.DEVIF.CREATE named (ours, kept so a host names the TD it means: another TD's
/// `TDX_MMIO_DEVIF_OWNER_MISMATCH` + RDX), R8 the shared request page. The firmware locks the
/// interface and takes the MMIO ranges from the device's own interface report, never from the
/// host: every step is a relayed exchange (`TDX_SPDM_REQUEST`, RCX [`devif_req_out`]), the last
/// answer binds (`TDX_SUCCESS` from TDH.DEVIF.RESPONSE). TDH.DEVIF.REQUEST LOCK_INTERFACE
/// starts the same bind; unlike it, calling this again while another operation waits is the
/// core's `ExchangePending`, and the core's semantics hold throughout.
pub const TSM_DEVIF_BIND: u16 = 0xF002;
/// Ours, bounded unbind: RCX `function_id_reg_t`, RDX flags ([`UNBIND_FLAG_FORCE`]; other
/// bits reserved, OPERAND_INVALID + RDX), R8 the shared request page (0 with FORCE, which asks
/// nothing of the device). TDX_INTERRUPTED_RESUMABLE until done; without FORCE, once every
/// leaf is blocked, `TDX_SPDM_REQUEST` with STOP_INTERFACE to relay. Unlike
/// TDH.DEVIF.REQUEST STOP_INTERFACE it abandons a bind, start or check still waiting (the
/// core's unbind).
pub const TSM_DEVIF_UNBIND: u16 = 0xF003;
/// TSM.DEVIF.UNBIND RDX bit 0 (ours): force. The firmware cuts the device's IDE stream at the
/// root port and unbinds without the device's STOP_INTERFACE (`Tsm::unbind_forced`).
pub const UNBIND_FLAG_FORCE: u64 = 1 << 0;
/// Ours, the device reported ERROR for a TDI: RCX `function_id_reg_t`. Resumable like unbind.
pub const TSM_DEVIF_ERROR: u16 = 0xF004;
/// Ours, TDI state: RCX `function_id_reg_t`. Out: RCX TDISP state, RDX [`TdiStateCode`], R8 owner TD or
/// `u64::MAX`, R9 1 while a device-error block walk is unfinished.
pub const TSM_DEVIF_STATE: u16 = 0xF005;
/// Ours, may the host zap `[RCX, RCX + RDX pages)`: refused while any page is bound or mapped.
pub const TSM_MMIO_ZAP_CHECK: u16 = 0xF006;
/// Ours, ask the device for the TDI's TDISP state (GET_DEVICE_INTERFACE_STATE): RCX
/// `function_id_reg_t`, R8 the shared request page (as TDH.DEVIF.REQUEST 0x85). A
/// locked or running TDI: `TDX_SPDM_REQUEST`, and the answer (TDH.DEVIF.RESPONSE) puts the
/// TDI in ERROR if the device reports ERROR, or unlocked. A TDI in ERROR or being unbound is
/// not asked about: resumable like unbind while its leaves are blocked.
pub const TSM_DEVIF_CHECK: u16 = 0xF007;
// 0xF008, ours, TSM.IDE.STREAM_SETUP, is retired: the host re-establishes a device's IDE
// stream with the TDX Connect leaves ([`TDH_IDE_STREAM_KM`] SETUP, after
// [`TDH_IDE_STREAM_DELETE`] and [`TDH_IDE_STREAM_CREATE`] of a blocked one).
/// Ours, TSM.SPDM.BARS: RCX SPDM id, RDX host address of a [`RangeList`] of the device's BARs.
/// The public TDH.SPDM.CREATE has no BAR operand (the TDX module learns MMIO from its MMIO
/// metadata, not modelled here); this firmware needs the BARs to check every reported range,
/// so the host registers them once per SPDM id, after TDH.SPDM.CREATE and before the first
/// TDH.DEVIF.CREATE (which refuses an SPDM id without them, `TSM_BARS_NOT_REGISTERED` +
/// RCX). A second call: `TSM_BARS_REGISTERED` + RCX. The core's device is made here.
pub const TSM_SPDM_BARS: u16 = 0xF009;

// ---- guest leaves (TDCALL, entered for the calling TD) ------------------------------------

/// TDG.MMIO.ACCEPT (TDX-IO: 71; intel/tdx-module @1666adc4
/// `src/td_dispatcher/vm_exits/tdxio/tdg_mmio_accept.c`): RCX page info, RDX the page's
/// reported address: what the guest read in its TDI's interface report, FIRST_PAGE plus the
/// page's offset in its range, the bind's MMIO_REPORTING_OFFSET included (the module's
/// `mmio_pa_offset`; our encoding, since the module turns it into a host address in its own
/// way). MMIO_PENDING -> MMIO_MAPPED once the S-EPT entry passes its state checks and RDX is
/// the entry's host page plus the owning TDI's offset ([`tsm_core::Tsm::guest_accept`]);
/// otherwise TDX_MMIO_INVALID_HPA_OFFSET + RCX, as the module, and nothing changes.
pub const TDG_MMIO_ACCEPT: u16 = 71;
/// TDG.DEVIF.RD (TDX-IO: 67; intel/tdx-module @6e66b9d2
/// `src/td_dispatcher/vm_exits/tdxio/tdg_devif_rd.c`): RCX the TDI's `function_id_reg_t`
/// (unknown: `TDX_DEVIFMT_NOT_PRESENT` + RCX), RDX `devif_rd_input_t` (field
/// code in 7:0, 63:8 reserved), R9 zero. Out: RCX the field ([`DEVIF_FIELD_TDISP_VERSION`]
/// and ours). Only the calling TD's own TDI: another TD's is `TDX_MMIO_DEVIF_OWNER_MISMATCH`.
pub const TDG_DEVIF_RD: u16 = 67;
/// TDG.DEVIF.RD field TDISP_VER_FIELD_CODE (intel/tdx-module @6e66b9d2 `devif_defs.h`
/// `devif_field_code_e`): the TDISP version, 0x10.
pub const DEVIF_FIELD_TDISP_VERSION: u8 = 1;
/// Ours, TDG.DEVIF.RD field: the TDI's TDISP state as the firmware holds it (PCIe code).
pub const DEVIF_FIELD_TDISP_STATE: u8 = 0x80;
/// Ours, TDG.DEVIF.RD fields `0x81 + n`, n < 6: word n (little-endian) of the 48-byte digest
/// of the interface report the bind took ([`tsm_core::GuestField::ReportDigest`]).
pub const DEVIF_FIELD_REPORT_DIGEST: u8 = 0x81;
/// Ours, TDG.DEVIF.RD fields `0x90 + n`, n < `MAX_RANGES_PER_TDI`: FIRST_PAGE of the TDI's
/// n-th private range as reported (MMIO_REPORTING_OFFSET included): where the guest's
/// TDG.MMIO.ACCEPT RDX values come from.
pub const DEVIF_FIELD_REPORTED_RANGE: u8 = 0x90;
/// `devif_rd_input_t` reserved bits 63:8 (intel/tdx-module `devif_defs.h`).
const DEVIF_RD_RESERVED: u64 = !0xff;

/// Leaf version bits 23:16 and reserved bits 63:24 of RAX (TDX Module ABI, SEAMCALL RAX).
const RAX_NON_LEAF_BITS: u64 = !0xffff;
/// Page info operand: level bits 2:0, reserved 11:3 and 63:52 (TDX Module ABI, "Page Info").
const PAGE_INFO_LEVEL_MASK: u64 = 0x7;
const PAGE_INFO_RESERVED: u64 = 0xfff0_0000_0000_0ff8;

/// The host page a range list lives in must be 4 KiB aligned (TDX: every page operand is).
const LIST_ALIGN: PageSize = PageSize::Size4K;
/// Message pages too.
pub(crate) const MESSAGE_PAGE_ALIGN: PageSize = PageSize::Size4K;

/// Bytes of one host-memory word: requests are written and answers read in whole 8-byte
/// words (the C entry point moves host memory in aligned words), padded with zeros.
const WORD: usize = 8;
/// The firmware's buffer for a request: `MAX_RELAY_BYTES` rounded up to whole words.
pub(crate) const REQUEST_BUFFER: usize = MAX_RELAY_BYTES.next_multiple_of(WORD);

/// `len` bytes rounded up to whole host-memory words (`None` past `usize`).
pub(crate) const fn whole_words(len: usize) -> Option<usize> {
    len.checked_next_multiple_of(WORD)
}
const _: () = assert!(REQUEST_BUFFER <= MESSAGE_PAGE_BYTES);
// A whole page is longer than any answer the core takes: it stands for every longer one.
const _: () = assert!(MAX_RELAY_BYTES < MESSAGE_PAGE_BYTES);
const _: () = assert!(MESSAGE_PAGE_BYTES.is_multiple_of(WORD));

/// TDI state codes in RDX of [`TSM_DEVIF_STATE`] (ours).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum TdiStateCode {
    /// Unbound.
    Unbound = 0,
    /// Bound, CONFIG_LOCKED.
    Locked = 1,
    /// Bound, RUN.
    Run = 2,
    /// Bound, ERROR.
    Error = 3,
    /// Unbind in progress.
    Unbinding = 4,
}

/// One MMIO range in a [`RangeList`]: the TDISP report's range layout (PCIe 6.x 11.3.11,
/// MMIO_RANGE: first page address, number of pages, attributes, range ID).
#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct RangeEntry {
    /// Host physical address of the first page.
    pub first_page: u64,
    /// Number of 4 KiB pages.
    pub pages: u32,
    /// TDISP range attributes (a model report's); reserved, zero, in a BAR list.
    pub attributes: u16,
    /// TDISP range ID (a model report's); reserved, zero, in a BAR list.
    pub range_id: u16,
}

/// Ranges in one [`RangeList`]: the most any single request needs (a report's ranges).
pub const RANGE_LIST_CAPACITY: usize = if MAX_RANGES_PER_TDI > MAX_BARS {
    MAX_RANGES_PER_TDI
} else {
    MAX_BARS
};

/// A list of host MMIO ranges in host memory (ours): count, reserved (zero), entries.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct RangeList {
    /// Entries in use.
    pub count: u32,
    /// Must be zero.
    pub reserved: u32,
    /// The ranges.
    pub ranges: [RangeEntry; RANGE_LIST_CAPACITY],
}

const _: () = assert!(core::mem::size_of::<RangeList>() == 8 + 16 * RANGE_LIST_CAPACITY);

impl RangeList {
    /// The list of `ranges`; `None` when they do not fit, or a range has more than 2^32 - 1
    /// pages (the TDISP range format's page count is 32 bits).
    pub fn from_ranges(ranges: &[MmioRange]) -> Option<Self> {
        let mut list = RangeList {
            count: u32::try_from(ranges.len()).ok()?,
            ..RangeList::default()
        };
        if ranges.len() > RANGE_LIST_CAPACITY {
            return None;
        }
        for (slot, r) in list.ranges.iter_mut().zip(ranges) {
            *slot = RangeEntry {
                first_page: r.base().as_u64(),
                pages: u32::try_from(r.pages()).ok()?,
                attributes: 0,
                range_id: 0,
            };
        }
        Some(list)
    }

    /// The list's bytes, as they sit in host memory.
    pub fn bytes(&self) -> &[u8] {
        self.as_bytes()
    }

    /// The entries in use, from the firmware's private copy of the list: `Reserved` unless
    /// the reserved field is zero, `TooMany` when `count` exceeds `N` (or the capacity).
    pub fn entries<const N: usize>(&self) -> Result<&[RangeEntry], ListError> {
        if self.reserved != 0 {
            return Err(ListError::Reserved);
        }
        let count = usize::try_from(self.count).unwrap_or(usize::MAX);
        if count > N {
            return Err(ListError::TooMany);
        }
        self.ranges.get(..count).ok_or(ListError::TooMany)
    }
}

/// Why a [`RangeList`] is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListError {
    /// The reserved field is not zero.
    Reserved,
    /// More entries than the request may have.
    TooMany,
}

/// Why host memory could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostFault {
    /// Some byte lies outside the host memory the firmware was given
    /// (TDX_OPERAND_ADDR_RANGE_ERROR on the operand).
    OutsideHostMemory,
    /// The address is not aligned as the access needs (TDX_OPERAND_INVALID on the operand).
    Misaligned,
}

/// Host memory the firmware reads parameter pages and answers from, and writes requests to.
pub trait HostMemory {
    /// Copies `out.len()` bytes at host physical address `hpa` into `out`, reading each byte
    /// of host memory once; the firmware decodes only the copy.
    fn read(&self, hpa: u64, out: &mut [u8]) -> Result<(), HostFault>;
    /// Whether `len` bytes at `hpa` can be read, reading nothing.
    fn probe_read(&self, hpa: u64, len: usize) -> Result<(), HostFault>;
    /// Whether `len` bytes at `hpa` can be written, writing nothing. `Ok` is a promise: a
    /// [`HostMemory::write`] of at most `len` bytes at `hpa` then succeeds (host memory does
    /// not move), so a leaf probes before the core commits and delivers after.
    fn probe_write(&self, hpa: u64, len: usize) -> Result<(), HostFault>;
    /// Copies `src` to host memory at `hpa`.
    fn write(&self, hpa: u64, src: &[u8]) -> Result<(), HostFault>;
    /// Whether [`HostMemory::write_u32`] at `hpa` would succeed, writing nothing (the same
    /// promise as [`HostMemory::probe_write`]): `hpa` 4-byte aligned (else `Misaligned`) and
    /// its 4 bytes writable.
    fn probe_write_u32(&self, hpa: u64) -> Result<(), HostFault> {
        if !hpa.is_multiple_of(4) {
            return Err(HostFault::Misaligned);
        }
        self.probe_write(hpa, 4)
    }
    /// Stores `value` little-endian at the 4-byte aligned `hpa`, leaving the bytes around it
    /// alone (a TD's wait status word, which may share its 8-byte word with anything of the
    /// TD's). Byte-granular memories copy the bytes; a memory reached in words overrides it
    /// with atomic read-modify-writes that touch only those 4 bytes (never a plain load and
    /// store of the word, which would lose a concurrent store to its other half).
    fn write_u32(&self, hpa: u64, value: u32) -> Result<(), HostFault> {
        self.probe_write_u32(hpa)?;
        self.write(hpa, &value.to_le_bytes())
    }
}

/// The operand roles of `leaf` (what decoders need to read its status).
pub const fn operands(leaf: u16) -> Operands {
    let none = Operands {
        tdi: None,
        device: None,
        td: None,
        page: None,
        hpa: None,
        list: None,
        rid: None,
        msg: None,
    };
    let rcx = Some(OPERAND_ID_RCX);
    let rdx = Some(OPERAND_ID_RDX);
    match leaf {
        TDH_MEM_TRACK | TDH_MNG_VPFLUSHDONE | TDH_MNG_KEY_FREEID => Operands { td: rcx, ..none },
        // RECLAIM and WBINVD name a page (the module's PAMT statuses).
        TDH_MNG_CREATE | TDH_PHYMEM_PAGE_RECLAIM | TDH_PHYMEM_PAGE_WBINVD => {
            Operands { hpa: rcx, ..none }
        }
        TDH_SPDM_CREATE => Operands {
            rid: rcx,
            hpa: rdx,
            ..none
        },
        TSM_SPDM_BARS => Operands {
            device: rcx,
            list: rdx,
            ..none
        },
        TDH_SPDM_DELETE
        | TDH_SPDM_CONNECT
        | TDH_SPDM_DISCONNECT
        | TDH_SPDM_MNG
        | TDH_IDE_STREAM_BLOCK
        | TDH_IDE_STREAM_DELETE
        | TDH_IDE_STREAM_KM => Operands {
            device: rcx,
            ..none
        },
        TDH_IDE_STREAM_CREATE => Operands {
            device: rdx,
            hpa: Some(OPERAND_ID_R8),
            ..none
        },
        TDH_DEVIF_CREATE => Operands {
            rid: rcx,
            td: rdx,
            hpa: Some(OPERAND_ID_R8),
            ..none
        },
        TDH_DEVIF_REMOVE | TDH_DEVIF_REQUEST | TSM_DEVIF_UNBIND | TSM_DEVIF_ERROR
        | TSM_DEVIF_STATE | TSM_DEVIF_CHECK | TDG_DEVIF_REQUEST | TDG_DEVIF_RESPONSE => {
            Operands { tdi: rcx, ..none }
        }
        TSM_DEVIF_BIND | TSM_DEVIF_SET_TD => Operands {
            tdi: rcx,
            td: rdx,
            ..none
        },
        TDH_DEVIF_RESPONSE => Operands {
            tdi: rcx,
            msg: rdx,
            ..none
        },
        TDH_MMIO_MAP => Operands {
            page: rcx,
            td: rdx,
            hpa: Some(OPERAND_ID_R8),
            ..none
        },
        TDH_MMIO_BLOCK | TDH_MMIO_UNMAP | TDH_MEM_SEPT_RD => Operands {
            page: rcx,
            td: rdx,
            ..none
        },
        TDG_MMIO_ACCEPT => Operands { page: rcx, ..none },
        TDG_DEVIF_RD => Operands { tdi: rcx, ..none },
        TSM_MMIO_ZAP_CHECK => Operands { hpa: rcx, ..none },
        _ => none,
    }
}

/// Builds a page-info operand: `gpa | level` (the TDX page-info format).
pub const fn page_info(gpa: Gpa, size: PageSize) -> u64 {
    gpa.as_u64() | size.tdx_level() as u64
}

/// A core refusal of a guest leaf, naming the register the guest passed: `handle` (the TDI
/// or page) for the owner and state refusals, `field` for a field past the record; anything
/// else as every leaf reports it. Guest leaves have no TD or list operand for the generic
/// mapping to name (the calling TD is implicit).
fn guest_refusal(leaf: u16, e: Error, handle: u32, field: u32) -> Outcome {
    let operand = match e {
        Error::NotOwner | Error::TdiNotBound | Error::TdiInError | Error::UnbindInProgress => {
            handle
        }
        Error::InvalidRange => field,
        _ => return Outcome::Core(Err(e)),
    };
    // Another TD's TDI: the module's TDG leaves answer DEVIF_INVALID_METADATA (its
    // `tdg_devifmt_get_devifcs` ownership check), not the host's owner mismatch.
    let code = match e {
        Error::NotOwner => status::TDX_DEVIF_INVALID_METADATA,
        _ => status::encode(Err(e), &operands(leaf)) & !0xFFFF_FFFF,
    };
    Outcome::Status(code | u64::from(operand))
}

/// `code` naming `operand`, as a leaf's outcome.
pub(crate) fn named(code: TdxStatus, operand: u32) -> Outcome {
    Outcome::Status(code | u64::from(operand))
}

/// A core refusal as a leaf's outcome.
pub(crate) fn core_err(e: Error) -> Outcome {
    Outcome::Core(Err(e))
}

pub(crate) fn invalid(operand: u32) -> TdxStatus {
    TDX_OPERAND_INVALID | u64::from(operand)
}

/// A page-info operand without the alignment check: no reserved bits, level 0-2, below 2^52.
fn decode_page_info_unaligned(raw: u64, operand: u32) -> Result<(Gpa, PageSize), TdxStatus> {
    if raw & PAGE_INFO_RESERVED != 0 {
        return Err(invalid(operand));
    }
    let size = PageSize::from_tdx_level(raw & PAGE_INFO_LEVEL_MASK).ok_or(invalid(operand))?;
    let gpa = Gpa::try_new(raw & !PAGE_INFO_LEVEL_MASK)
        .map_err(|_| TDX_OPERAND_ADDR_RANGE_ERROR | u64::from(operand))?;
    Ok((gpa, size))
}

/// A page-info operand: level 0-2, no reserved bits, address aligned to the level.
fn decode_page_info(raw: u64, operand: u32) -> Result<(Gpa, PageSize), TdxStatus> {
    let (gpa, size) = decode_page_info_unaligned(raw, operand)?;
    if !gpa.is_aligned(size) {
        return Err(invalid(operand));
    }
    Ok((gpa, size))
}

/// A host physical address operand: below 2^52 and aligned to `size`.
pub(crate) fn decode_hpa(raw: u64, size: PageSize, operand: u32) -> Result<Hpa, TdxStatus> {
    let hpa = Hpa::try_new(raw).map_err(|_| TDX_OPERAND_ADDR_RANGE_ERROR | u64::from(operand))?;
    if !hpa.is_aligned(size) {
        return Err(invalid(operand));
    }
    Ok(hpa)
}

/// TDH.SPDM.CREATE RCX: a TDISP function ID. Reserved bits 63:25, or a segment without
/// SEG_VALID: OPERAND_INVALID + RCX.
pub(crate) fn decode_function_id(raw: u64) -> Result<RequesterId, TdxStatus> {
    if raw & FUNC_ID_RESERVED != 0
        || (raw & FUNC_ID_SEGMENT_MASK != 0 && raw & FUNC_ID_SEG_VALID == 0)
    {
        return Err(invalid(OPERAND_ID_RCX));
    }
    let segment = u16::try_from((raw & FUNC_ID_SEGMENT_MASK) >> FUNC_ID_SEGMENT_SHIFT)
        .map_err(|_| invalid(OPERAND_ID_RCX))?;
    let routing = u16::try_from(raw & FUNC_ID_RID_MASK).map_err(|_| invalid(OPERAND_ID_RCX))?;
    Ok(RequesterId::from_routing(segment, routing))
}

/// Builds a TDISP function ID as Linux's `tdisp_func_id` does (SEG_VALID only for a non-zero
/// segment).
pub const fn function_id(rid: RequesterId) -> u64 {
    let packed = rid.packed() as u64;
    let segment = (packed >> 16) & 0xffff;
    if segment > 0xff {
        // Not expressible: 8 segment bits. Reserved bits set, so the firmware refuses it.
        return packed | FUNC_ID_SEG_VALID;
    }
    if segment == 0 {
        packed
    } else {
        packed | FUNC_ID_SEG_VALID
    }
}

/// An HPA_ARRAY_T as Linux's `hpa_array_t_assign_raw` builds it: `pages` pages (1-512) whose
/// first page (one page) or root page is at `base`.
pub const fn hpa_array(base: u64, pages: u64) -> u64 {
    (base & HPA_ARRAY_PFN_MASK) | (pages.saturating_sub(1) << HPA_ARRAY_SIZE_SHIFT)
}

/// The status for a host-memory fault on the operand `operand`.
pub(crate) fn host_fault(fault: HostFault, operand: u32) -> TdxStatus {
    match fault {
        HostFault::OutsideHostMemory => TDX_OPERAND_ADDR_RANGE_ERROR | u64::from(operand),
        HostFault::Misaligned => invalid(operand),
    }
}

/// The register holding operand `id` in `regs`.
fn reg(regs: &SeamRegs, id: u32) -> Option<u64> {
    Some(match id {
        OPERAND_ID_RCX => regs.rcx,
        OPERAND_ID_RDX => regs.rdx,
        OPERAND_ID_R8 => regs.r8,
        OPERAND_ID_R9 => regs.r9,
        OPERAND_ID_R10 => regs.r10,
        _ => return None,
    })
}

/// A leaf's outcome before encoding: a core outcome, or a status from the operand checks.
pub(crate) enum Outcome {
    Core(Result<Completion, Error>),
    Status(TdxStatus),
}

impl From<Result<(), Error>> for Outcome {
    fn from(r: Result<(), Error>) -> Self {
        Outcome::Core(r.map(|()| Completion::Done))
    }
}

/// The SEAMCALL / TDCALL dispatcher over a firmware instance with the TDX secure table.
///
/// Every input register is read once, from the snapshot taken on entry; outputs go to a
/// separate block that replaces the caller's only at the end, so nothing after the operation
/// reads a register the operation (or anyone else) may have written.
///
/// Order of checks, the core's: (1) RAX; (2) every handle operand (a value no handle can have,
/// or one the firmware does not know: OPERAND_INVALID naming its register); (3) the operands
/// the dispatcher decodes because the core cannot be handed them (reserved bits, a level no
/// leaf has, an address at or above 2^52 or beyond the TD's S-EPT width, the alignment of a
/// page-info GPA for leaves the core does not align-check, range lists); (4) the core, which
/// checks alignment of MAP's addresses and every state. A refusal of step (3) is reported only
/// after step (2) found every handle known, so a call with a bad handle and a bad address gets
/// the handle's status, as it would from the core. The DEVIF leaves ([`crate::devif`]) check
/// their operands in the TDX module's order instead, each leaf's doc says it.
///
/// A leaf that may leave a request for the host (`Dispatcher::relayed`) checks the request
/// page it names before the core runs, so a refusal writes nothing anywhere and a request the
/// core commits to is always delivered.
pub struct Dispatcher<'t, 'm, S, M, const SHARDS: usize = 1> {
    pub(crate) fw: &'t TdxModule<'m, S, SHARDS>,
    pub(crate) tsm: &'t Tsm<Sept<'m>, S, SHARDS>,
    pub(crate) host: M,
}

/// The firmware's summary; the host memory is not printed (it need not be `Debug`).
impl<S, M, const SHARDS: usize> core::fmt::Debug for Dispatcher<'_, '_, S, M, SHARDS> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("fw", self.fw)
            .finish_non_exhaustive()
    }
}

impl<'t, 'm, S: SecureSession, M: HostMemory, const SHARDS: usize>
    Dispatcher<'t, 'm, S, M, SHARDS>
{
    /// A dispatcher for `fw` reading and writing host memory through `host` (one per CPU, or
    /// one per call: it holds nothing between calls).
    pub fn new(fw: &'t TdxModule<'m, S, SHARDS>, host: M) -> Self {
        Self {
            fw,
            tsm: fw.tsm(),
            host,
        }
    }

    /// Handles one SEAMCALL from the host: `regs.rax` is the leaf on entry and the status on
    /// return; outputs are written only on success (or the walk details of an S-EPT error).
    pub fn seamcall(&self, regs: &mut SeamRegs) {
        let input = *regs;
        let mut out = input;
        let status = match leaf_of(input.rax) {
            None => invalid(OPERAND_ID_RAX),
            Some(leaf) => {
                let outcome = match self.host_leaf(leaf, &input, &mut out) {
                    Ok(o) | Err(o) => o,
                };
                self.finish(leaf, outcome, &input, &mut out)
            }
        };
        log_refusal("SEAMCALL", input.rax, status);
        out.rax = status;
        *regs = out;
    }

    /// Handles one TDCALL from the TD whose TDR page is at `tdr` (the guest side: accept and
    /// start). A TDR naming no TD: OPERAND_INVALID + TDR (`OPERAND_ID_TDR`).
    pub fn tdcall(&self, tdr: u64, regs: &mut SeamRegs) {
        let input = *regs;
        let mut out = input;
        let status = match leaf_of(input.rax) {
            None => invalid(OPERAND_ID_RAX),
            Some(leaf) => {
                let outcome = match self.guest_leaf(tdr, leaf, &input, &mut out) {
                    Ok(o) | Err(o) => o,
                };
                self.finish(leaf, outcome, &input, &mut out)
            }
        };
        log_refusal("TDCALL", input.rax, status);
        out.rax = status;
        *regs = out;
    }

    fn finish(
        &self,
        leaf: u16,
        outcome: Outcome,
        input: &SeamRegs,
        out: &mut SeamRegs,
    ) -> TdxStatus {
        let ops = operands(leaf);
        match outcome {
            Outcome::Status(s) => s,
            Outcome::Core(r) => {
                let status = status::encode(r, &ops);
                let status = match r {
                    Err(Error::InvalidHandle) => self.which_handle(&ops, input).unwrap_or(status),
                    Err(Error::Misaligned) => which_misaligned(leaf, input).unwrap_or(status),
                    _ => status,
                };
                if matches!(r, Err(Error::NotMapped | Error::SizeMismatch)) {
                    self.walk_details(input, out);
                }
                status
            }
        }
    }

    /// TDH.MMIO.MAP once its operands are decoded. The host names no TDI: the page's owner
    /// is looked up, and the core maps for it, so the core still decides every refusal
    /// (`TdiBound` for a page another TDI shares, `NotOwner`, the TDI's state, the S-EPT's).
    /// The core's operand order is kept whatever the owner: alignment first (`Misaligned`,
    /// RCX or R8 named in `finish`), then the page's range, reserved memory, and with no
    /// owner the core's own answer for a page no bound TDI holds, `HpaNotOwned`
    /// (`TDX_PAGE_METADATA_INCORRECT` + R8). Nothing changes on any refusal.
    fn map_mmio(&self, td: GuestId, gpa: Gpa, hpa: Hpa, size: PageSize) -> Outcome {
        let tsm = self.tsm;
        if !gpa.is_aligned(size) || !hpa.is_aligned(size) {
            return Outcome::Core(Err(Error::Misaligned));
        }
        let page = match MmioRange::try_new(hpa, size.base_pages()) {
            Ok(p) => p,
            Err(e) => return Outcome::Core(Err(e)),
        };
        if tsm.reserved().touches(&page) {
            return Outcome::Core(Err(Error::ReservedMemory));
        }
        // The TD's shard's copy of the ownership table: maps of TDs in other shards read theirs.
        match tsm.owner_for(td, hpa, size) {
            Err(e) => Outcome::Core(Err(e)),
            Ok(None) => Outcome::Core(Err(Error::HpaNotOwned)),
            Ok(Some(tdi)) => {
                // The module's check (`tdh_mmio_map.c` @1666adc4), after the owner's (which
                // the core makes): the page's TEE traffic must use its device's IDE stream, so
                // the page lies in the stream's address association.
                let covered = tsm.tdi(tdi).and_then(|record| {
                    // The core's own refusals (state, owner) come first: only a TDI the core
                    // would map for this TD is held to its stream.
                    let mappable = matches!(
                        record.state,
                        tsm_core::TdiState::Locked { owner } | tsm_core::TdiState::Run { owner }
                            if owner == td
                    );
                    if !mappable {
                        return Ok(true);
                    }
                    let spdm = self.fw.read_spdm_for(td)?;
                    Ok(crate::link::stream_of_device(&spdm, record.device)
                        .is_some_and(|s| s.covers(hpa.as_u64(), size.bytes())))
                });
                match covered {
                    // Removed since the look-up: the page is no bound TDI's any more.
                    Err(Error::InvalidHandle) => return Outcome::Core(Err(Error::HpaNotOwned)),
                    Err(e) => return Outcome::Core(Err(e)),
                    // A page the TDI does not wholly own: the core refuses it in its own words
                    // (the module checks its MMIO metadata before the stream, too).
                    Ok(false) if !self.wholly_owned(tdi, hpa, size) => {}
                    Ok(false) => {
                        return Outcome::Status(
                            status::TDX_MMIO_PAGE_NOT_IN_ASSOC_RANGE | u64::from(OPERAND_ID_R8),
                        );
                    }
                    Ok(true) => {}
                }
                self.map_owned(tdi, td, gpa, hpa, size)
            }
        }
    }

    /// Whether one of `tdi`'s private ranges holds the whole page of `size` at `hpa`.
    fn wholly_owned(&self, tdi: TdiId, hpa: Hpa, size: PageSize) -> bool {
        self.tsm.owned_ranges(tdi).is_ok_and(|ranges| {
            ranges
                .iter()
                .any(|r| r.contains_span(hpa.as_u64(), size.bytes()))
        })
    }

    /// The core's map of a page `tdi` owns (see [`Dispatcher::map_mmio`]).
    fn map_owned(&self, tdi: TdiId, td: GuestId, gpa: Gpa, hpa: Hpa, size: PageSize) -> Outcome {
        match self.tsm.map_mmio(tdi, td, gpa, hpa, size) {
            // The owner was unbound (or unbound and removed) between the look-up and the
            // map: the page is no bound TDI's any more.
            Err(Error::TdiNotBound | Error::InvalidHandle) => {
                Outcome::Core(Err(Error::HpaNotOwned))
            }
            r => r.into(),
        }
    }

    /// TDX names the operand that failed: the first handle operand of `ops` that no handle
    /// can have or that the firmware does not know (a handle whose lock is busy counts as
    /// known: the core reports the contention itself).
    fn which_handle(&self, ops: &Operands, input: &SeamRegs) -> Option<TdxStatus> {
        if let Some(id) = ops.tdi {
            // A function ID; busy (this leaf holds the table) counts as known, as above.
            let raw = reg(input, id)?;
            if let Ok(table) = self.fw.lock_pages()
                && let Err(s) = devif_at(&table, raw)
            {
                return Some(s);
            }
        }
        if let Some(id) = ops.device {
            // An SPDM id; busy (this leaf holds the table) counts as known, as above.
            if self.fw.spdm(reg(input, id)?) == Ok(None) {
                return Some(invalid(id));
            }
        }
        if let Some(id) = ops.td {
            // A TD is named by its TDR page; busy counts as known, as above.
            if self.fw.td_of(reg(input, id)?) == Ok(None) {
                return Some(invalid(id));
            }
        }
        None
    }

    /// A refusal from the dispatcher's own operand checks, in the core's order: a handle
    /// operand the firmware does not know is reported first, then `status`.
    fn refuse(&self, leaf: u16, input: &SeamRegs, status: TdxStatus) -> Outcome {
        Outcome::Status(self.which_handle(&operands(leaf), input).unwrap_or(status))
    }

    /// On an S-EPT walk or state error TDX returns the entry in RCX and `{level, state}` in RDX.
    fn walk_details(&self, input: &SeamRegs, out: &mut SeamRegs) {
        let (Ok((gpa, _)), Ok(Some(td))) = (
            decode_page_info(input.rcx, OPERAND_ID_RCX),
            self.fw.td_of(input.rdx),
        ) else {
            return;
        };
        if let Ok(Ok(probe)) = self.tsm.with_guest_table(td, |t| t.probe(td, gpa)) {
            out.rcx = probe.entry.into_bits();
            out.rdx = u64::from(probe.level) | (u64::from(probe.state as u8) << 8);
        }
    }

    /// The S-EPT's own width check for `gpa` (the walker's), asked before the core so that a
    /// GPA the TD's S-EPT cannot hold is OPERAND_ADDR_RANGE_ERROR on RCX, not whatever the
    /// core makes of a leaf lookup that found nothing.
    fn gpa_in_table(&self, td: GuestId, gpa: Gpa) -> Result<(), Result<TdxStatus, Error>> {
        match self.tsm.with_guest_table(td, |t| t.gpa_in_table(td, gpa)) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Ok(status::sept_status(e, OPERAND_ID_RCX))),
            Err(e) => Err(Err(e)),
        }
    }

    /// Page info for a leaf the core does not align-check (block, unmap, the S-EPT read and
    /// accept): format, width, the TD's S-EPT width, then alignment. Refusals come after the
    /// leaf's handle checks.
    fn page_operand(
        &self,
        leaf: u16,
        input: &SeamRegs,
        td: GuestId,
        aligned: bool,
    ) -> Result<(Gpa, PageSize), Outcome> {
        let refuse = |s| self.refuse(leaf, input, s);
        let (gpa, size) = decode_page_info_unaligned(input.rcx, OPERAND_ID_RCX).map_err(refuse)?;
        match self.gpa_in_table(td, gpa) {
            Ok(()) => {}
            Err(Ok(s)) => return Err(refuse(s)),
            Err(Err(e)) => return Err(Outcome::Core(Err(e))),
        }
        if aligned && !gpa.is_aligned(size) {
            return Err(refuse(invalid(OPERAND_ID_RCX)));
        }
        Ok((gpa, size))
    }

    /// Reads a BAR list from host memory into a private copy (each byte once) and decodes it:
    /// reserved fields zero (the list's, and each entry's attributes and range ID), at most `N`
    /// entries, each a valid range.
    fn read_ranges<const N: usize>(
        &self,
        raw: u64,
        operand: u32,
    ) -> Result<heapless::Vec<MmioRange, N>, Outcome> {
        let at = decode_hpa(raw, LIST_ALIGN, operand).map_err(Outcome::Status)?;
        let mut list = RangeList::default();
        self.host
            .read(at.as_u64(), list.as_mut_bytes())
            .map_err(|f| Outcome::Status(host_fault(f, operand)))?;
        let entries = list.entries::<N>().map_err(|e| match e {
            ListError::Reserved => Outcome::Status(invalid(operand)),
            ListError::TooMany => Outcome::Core(Err(Error::TooManyRanges)),
        })?;
        // A BAR has no attributes and no range ID: those fields are reserved here.
        if entries.iter().any(|e| e.attributes != 0 || e.range_id != 0) {
            return Err(Outcome::Status(invalid(operand)));
        }
        let mut out = heapless::Vec::new();
        for entry in entries {
            let range = MmioRange::from_raw(entry.first_page, u64::from(entry.pages))
                .map_err(|e| Outcome::Core(Err(e)))?;
            out.push(range)
                .map_err(|_| Outcome::Core(Err(Error::TooManyRanges)))?;
        }
        Ok(out)
    }

    fn host_leaf(&self, leaf: u16, r: &SeamRegs, out: &mut SeamRegs) -> Result<Outcome, Outcome> {
        let st = Outcome::Status;
        let core = |e| Outcome::Core(Err(e));
        let refuse = |s| self.refuse(leaf, r, s);
        let tsm = self.tsm;
        // A leaf naming a TD holds the TD table (shared: the TD's shard's copy) until it
        // returns, so the TD its TDR PA names cannot be destroyed and another created in its
        // slot meanwhile (the teardown leaves take every copy themselves).
        let teardown = matches!(leaf, TDH_MNG_VPFLUSHDONE | TDH_MNG_KEY_FREEID);
        let tds = match operands(leaf).td.and_then(|id| reg(r, id)) {
            Some(tdr) if !teardown => Some(self.fw.read_tds_for(tdr).map_err(core)?),
            _ => None,
        };
        // The TD a TDR PA operand names; none: OPERAND_INVALID on that register, after the
        // leaf's other handles (the core's order: `refuse`); past VPFLUSHDONE, the module's
        // TD_KEYS_NOT_CONFIGURED.
        let td_at = |raw: u64, operand: u32| -> Result<GuestId, Outcome> {
            let t = tds.as_deref();
            let td = t
                .and_then(|t| td_in(t, raw))
                .ok_or_else(|| self.refuse(leaf, r, invalid(operand)))?;
            t.map_or(Ok(()), |t| crate::td::usable(t, td))
                .map_err(|s| self.refuse(leaf, r, s))?;
            Ok(td)
        };
        Ok(match leaf {
            TDH_MNG_CREATE => self.mng_create(r)?,
            TDH_MNG_VPFLUSHDONE
            | TDH_MNG_KEY_FREEID
            | TDH_PHYMEM_PAGE_RECLAIM
            | TDH_PHYMEM_CACHE_WB
            | TDH_PHYMEM_PAGE_WBINVD => self.td_leaf(leaf, r, out)?,
            TDH_SPDM_CREATE => self.spdm_create(r, out)?,
            TDH_SPDM_DELETE => {
                let mut spdm = self.fw.lock_spdm().map_err(core)?;
                let slot = usize::try_from(r.rcx)
                    .ok()
                    .and_then(|i| spdm.get_mut(i))
                    .ok_or(st(invalid(OPERAND_ID_RCX)))?;
                let entry = slot.as_ref().ok_or(st(invalid(OPERAND_ID_RCX)))?;
                // Linux's `hpa_array_t_release_raw`: 0 for one page, else the root page.
                let release = entry.metadata.root.map_or(0, |h| h.as_u64());
                if r.rdx != release {
                    return Err(st(invalid(OPERAND_ID_RDX)));
                }
                // Linux's teardown deletes the stream and disconnects first (§6(d)).
                if entry.link.stream.is_some() {
                    return Err(st(
                        status::TDX_SPDM_HAS_ACTIVE_IDE_STREAMS | u64::from(OPERAND_ID_RCX)
                    ));
                }
                if matches!(entry.link.session, Session::Connected(_)) {
                    return Err(st(
                        status::TDX_SPDM_INVALID_STATE | u64::from(OPERAND_ID_RCX)
                    ));
                }
                let first = match (entry.metadata.root, entry.metadata.pages.first()) {
                    (Some(root), _) => root,
                    (None, Some(page)) => *page,
                    (None, None) => return Err(core(Error::Inconsistent)),
                };
                let count = u64::try_from(entry.metadata.pages.len())
                    .map_err(|_| core(Error::Inconsistent))?;
                if let Some(dev) = entry.device {
                    tsm.remove_device(dev).map_err(core)?;
                }
                *slot = None;
                out.rcx = hpa_array(first.as_u64(), count);
                Outcome::Core(Ok(Completion::Done))
            }
            TSM_SPDM_BARS => {
                let mut spdm = self.fw.lock_spdm().map_err(core)?;
                let entry = usize::try_from(r.rcx)
                    .ok()
                    .and_then(|i| spdm.get_mut(i))
                    .and_then(Option::as_mut)
                    .ok_or(st(invalid(OPERAND_ID_RCX)))?;
                if entry.device.is_some() {
                    return Err(st(status::TSM_BARS_REGISTERED | u64::from(OPERAND_ID_RCX)));
                }
                let bars = self.read_ranges::<MAX_BARS>(r.rdx, OPERAND_ID_RDX)?;
                let dev = tsm.create_device(entry.function, &bars).map_err(core)?;
                // No IDE stream yet: the core's stream is live only once TDH.IDE.STREAM.KM
                // SETUP makes it so (the core creates devices live, as SEV connects them).
                if let Err(e) = tsm.cut_stream(dev) {
                    let _ = tsm.remove_device(dev);
                    return Err(core(e));
                }
                entry.device = Some(dev);
                Outcome::Core(Ok(Completion::Done))
            }
            TDH_DEVIF_CREATE => self.devif_create(r)?,
            TDH_DEVIF_REMOVE => self.devif_remove(r, out)?,
            // Either may run an unbind to its Dma step (STOP, or the device's answer to it):
            // a TD request it leaves with no IOMMU ends here, as after TSM.DEVIF.UNBIND.
            TDH_DEVIF_REQUEST => self.ending_td_requests(self.devif_request(r, out)?),
            TDH_DEVIF_RESPONSE => self.ending_td_requests(self.devif_response(leaf, r, out)?),
            TSM_DEVIF_BIND => {
                let table = self.fw.lock_pages().map_err(core)?;
                let (tdi, entry) = devif_at(&table, r.rcx).map_err(st)?;
                let o = self.devif_bind(&table, tdi, &entry, r, out)?;
                drop(table);
                match o {
                    Outcome::Core(Err(Error::StreamCut)) => st(self.stream_not_live(tdi)),
                    o => o,
                }
            }
            TSM_DEVIF_SET_TD => self.devif_set_td(r)?,
            TDH_MMIO_MAP => {
                let td = td_at(r.rdx, OPERAND_ID_RDX)?;
                if r.r9 != MMIO_MAP_RESERVED_R9 {
                    return Err(refuse(invalid(OPERAND_ID_R9)));
                }
                let (gpa, size) = self.page_operand(leaf, r, td, false)?;
                let hpa = Hpa::try_new(r.r8)
                    .map_err(|_| refuse(TDX_OPERAND_ADDR_RANGE_ERROR | u64::from(OPERAND_ID_R8)))?;
                self.map_mmio(td, gpa, hpa, size)
            }
            TDH_MMIO_BLOCK => {
                let td = td_at(r.rdx, OPERAND_ID_RDX)?;
                let (gpa, size) = self.page_operand(leaf, r, td, true)?;
                tsm.host_block(td, gpa, size).into()
            }
            TDH_MMIO_UNMAP => {
                let td = td_at(r.rdx, OPERAND_ID_RDX)?;
                let (gpa, size) = self.page_operand(leaf, r, td, true)?;
                // The host page of the leaf this call removed, from the removal itself. A leaf
                // blocked before the TD's last TRACK waits for that TRACK's IOTLB
                // invalidations too (`tdh_mmio_unmap.c` @e69a4391: + RCX).
                out.r8 = tsm
                    .host_unmap(td, gpa, size)
                    .map_err(|e| match e {
                        Error::IotlbNotTracked => st(status::sept_status(
                            SeptError::IotlbTrackingNotDone,
                            OPERAND_ID_RCX,
                        )),
                        e => core(e),
                    })?
                    .as_u64();
                Outcome::Core(Ok(Completion::Done))
            }
            TDH_MEM_TRACK => {
                let td = td_at(r.rcx, OPERAND_ID_RCX)?;
                match tsm.host_track(td) {
                    // TRACK's own words: the previous epoch is not flushed yet. (Re-stamping
                    // old blocked leaves is `Resumable`, INTERRUPTED_RESUMABLE, from the
                    // call's own result.)
                    Err(Error::TlbFlushPending) => st(status::sept_status(
                        SeptError::PreviousEpochBusy,
                        OPERAND_ID_RCX,
                    )),
                    // An IOMMU owes the TD the previous TRACK's IOTLB invalidation
                    // (`IotlbNotTracked`): the core's encoding, no operand
                    // (`tdh_mem_track.c` @1666adc4).
                    r => Outcome::Core(r),
                }
            }
            TDH_MEM_SEPT_RD => {
                // The S-EPT read bypasses the core: the TD must exist (its TDR names it).
                let td = td_at(r.rdx, OPERAND_ID_RDX)?;
                let (gpa, size) = self.page_operand(leaf, r, td, true)?;
                self.sept_rd(td, gpa, size, out)?
            }
            TSM_DEVIF_UNBIND => self.ending_td_requests(self.devif_unbind(r, out)?),
            TDH_SPDM_CONNECT
            | TDH_SPDM_DISCONNECT
            | TDH_SPDM_MNG
            | TDH_IDE_STREAM_CREATE
            | TDH_IDE_STREAM_BLOCK
            | TDH_IDE_STREAM_DELETE
            | TDH_IDE_STREAM_KM => self.link_leaf(leaf, r, out)?,
            TSM_DEVIF_ERROR => {
                let table = self.fw.lock_pages().map_err(core)?;
                let (tdi, _) = devif_at(&table, r.rcx).map_err(st)?;
                // ERROR blocks and asks the entry's invalidation: never the domain's wait.
                Outcome::Core(tsm.device_error(tdi))
            }
            TSM_DEVIF_STATE => {
                let table = self.fw.lock_pages().map_err(core)?;
                let (tdi, _) = devif_at(&table, r.rcx).map_err(st)?;
                let state = tsm.tdi(tdi).map_err(core)?.state;
                // The owner as the host names it: its TDR PA (~0: none, or a TD the core
                // knows that TDH.MNG.CREATE did not make).
                let owner = match state.owner() {
                    None => None,
                    Some(g) => self.fw.tdr_of(g).map_err(core)?,
                };
                encode_tdi_state(state, owner, out);
                Outcome::Core(Ok(Completion::Done))
            }
            TSM_DEVIF_CHECK => {
                let table = self.fw.lock_pages().map_err(core)?;
                let (tdi, _) = devif_at(&table, r.rcx).map_err(st)?;
                let page = self.request_page(&table, r.r8, OPERAND_ID_R8)?;
                // A check blocks as ERROR does: never the domain's wait.
                self.relayed(
                    out,
                    tdi,
                    Some(page),
                    |buf| Ok(tsm.check_interface(tdi, buf)),
                )?
            }
            TDH_DMAR_ADD | TDH_DMAR_BLOCK | TDH_DMAR_READ | TDH_DMAR_REMOVE
            | TDH_IQ_INV_REQUEST | TDH_IQ_INV_PROCESS => self.dmar_leaf(leaf, r, out)?,
            TSM_MMIO_ZAP_CHECK => {
                let base = decode_hpa(r.rcx, PageSize::Size4K, OPERAND_ID_RCX).map_err(st)?;
                // An empty range, or one past the address space: the core's InvalidRange.
                let range = MmioRange::try_new(base, r.rdx)
                    .map_err(|_| st(status::TSM_INVALID_RANGE | u64::from(OPERAND_ID_RDX)))?;
                tsm.host_zap(range).into()
            }
            _ => st(invalid(OPERAND_ID_RAX)),
        })
    }

    /// An HPA_ARRAY_T operand (`operand`): its format (reserved bits, at most
    /// [`SPDM_MT_MAX_PAGES`] pages: `TDX_OPERAND_INVALID`), then each page and the root: 4 KiB
    /// aligned, below 2^52, a whole page of host memory (readable; writable too when the
    /// firmware will `write` the pages), none twice (`TDX_PAGE_METADATA_INCORRECT`). The
    /// root's entries are read once into firmware memory; only the copy is decoded. Nothing
    /// is written.
    pub(crate) fn page_array(
        &self,
        raw: u64,
        operand: u32,
        write: bool,
    ) -> Result<SpdmPages, Outcome> {
        let st = Outcome::Status;
        let core = |e| Outcome::Core(Err(e));
        let named = |code: TdxStatus| st(code | u64::from(operand));
        if raw & HPA_ARRAY_RESERVED != 0 {
            return Err(named(TDX_OPERAND_INVALID));
        }
        let base = decode_hpa(raw & HPA_ARRAY_PFN_MASK, PageSize::Size4K, operand).map_err(st)?;
        let count = usize::try_from(raw >> HPA_ARRAY_SIZE_SHIFT)
            .ok()
            .and_then(|n| n.checked_add(1))
            .filter(|n| *n <= SPDM_MT_MAX_PAGES)
            .ok_or(named(TDX_OPERAND_INVALID))?;
        let whole_page = |at: Hpa, page: bool| {
            let probe = if write && page {
                self.host.probe_write(at.as_u64(), SPDM_MT_PAGE_BYTES)
            } else {
                self.host.probe_read(at.as_u64(), SPDM_MT_PAGE_BYTES)
            };
            probe.map_err(|f| st(host_fault(f, operand)))
        };
        let mut metadata = SpdmPages {
            root: None,
            pages: heapless::Vec::new(),
        };
        if count == 1 {
            whole_page(base, true)?;
            metadata
                .pages
                .push(base)
                .map_err(|_| core(Error::Inconsistent))?;
            return Ok(metadata);
        }
        whole_page(base, false)?;
        let mut raw_entries = [0u8; SPDM_MT_MAX_PAGES * HPA_ARRAY_ENTRY_BYTES];
        let bytes = count
            .checked_mul(HPA_ARRAY_ENTRY_BYTES)
            .and_then(|n| raw_entries.get_mut(..n))
            .ok_or(core(Error::Inconsistent))?;
        self.host
            .read(base.as_u64(), bytes)
            .map_err(|f| st(host_fault(f, operand)))?;
        metadata.root = Some(base);
        for word in bytes.chunks_exact(HPA_ARRAY_ENTRY_BYTES) {
            let word: [u8; HPA_ARRAY_ENTRY_BYTES] =
                word.try_into().map_err(|_| core(Error::Inconsistent))?;
            let page =
                decode_hpa(u64::from_le_bytes(word), PageSize::Size4K, operand).map_err(st)?;
            whole_page(page, true)?;
            if metadata.holds(page) {
                return Err(named(status::TDX_PAGE_METADATA_INCORRECT));
            }
            metadata
                .pages
                .push(page)
                .map_err(|_| named(TDX_OPERAND_INVALID))?;
        }
        Ok(metadata)
    }

    /// TDH.SPDM.CREATE ([`TDH_SPDM_CREATE`]): RCX the function ID, then RDX the array's
    /// format and pages (each a whole 4 KiB page of host memory below 2^52, none twice, not the
    /// root), then pages in use (a TD's
    /// TDR, a TDI's private page, another SPDM id's metadata: `TDX_PAGE_METADATA_INCORRECT` +
    /// RDX), then a function another SPDM id has (`TSM_DUPLICATE_DEVICE` + RCX), then a free
    /// SPDM id (`TSM_DEVICE_TABLE_FULL`). The TD, message-page and SPDM tables are held from
    /// the check to the insertion.
    fn spdm_create(&self, r: &SeamRegs, out: &mut SeamRegs) -> Result<Outcome, Outcome> {
        let st = Outcome::Status;
        let core = |e| Outcome::Core(Err(e));
        let rdx = |code: TdxStatus| st(code | u64::from(OPERAND_ID_RDX));
        let function = decode_function_id(r.rcx).map_err(st)?;
        let metadata = self.page_array(r.rdx, OPERAND_ID_RDX, false)?;
        // Host memory never holds the firmware's own memory (pool, state), so a page of it is
        // the host's; the firmware's reserved memory (which includes host memory: it is never
        // MMIO) is not asked. In use is what remains.
        let all = || metadata.root.iter().chain(metadata.pages.iter()).copied();
        let tds = self.fw.read_tds().map_err(core)?;
        let pages = self.fw.lock_pages().map_err(core)?;
        let mut spdm = self.fw.lock_spdm().map_err(core)?;
        if all().any(|page| page_held(&tds, &pages, &spdm, page)) {
            return Err(rdx(status::TDX_PAGE_METADATA_INCORRECT));
        }
        if spdm.iter().flatten().any(|e| e.function == function) {
            return Err(st(status::TSM_DUPLICATE_DEVICE | u64::from(OPERAND_ID_RCX)));
        }
        let (id, slot) = spdm
            .iter_mut()
            .enumerate()
            .find(|(_, e)| e.is_none())
            .ok_or(core(Error::DeviceTableFull))?;
        out.rcx = u64::try_from(id).map_err(|_| core(Error::Inconsistent))?;
        *slot = Some(SpdmEntry {
            function,
            metadata,
            device: None,
            link: Link::default(),
        });
        Ok(Outcome::Core(Ok(Completion::Done)))
    }

    /// TDH.MNG.CREATE ([`TDH_MNG_CREATE`]): RDX the HKID, then RCX the TDR page, then the page
    /// is no TD's TDR and no TDI's private page, then the core makes the guest; the TD table
    /// and the message-page table are held from the check to the insertion.
    fn mng_create(&self, r: &SeamRegs) -> Result<Outcome, Outcome> {
        let st = Outcome::Status;
        let core = |e| Outcome::Core(Err(e));
        let hkid = crate::td::private_hkid(r.rdx).map_err(st)?;
        let tdr = decode_hpa(r.rcx, TDR_ALIGN, OPERAND_ID_RCX).map_err(st)?;
        // KeyID bits in a TDR address: the module's `hpa_check_with_pwr_2_alignment`.
        if r.rcx & crate::td::KEYID_MASK != 0 {
            return Err(st(invalid(OPERAND_ID_RCX)));
        }
        self.host
            .probe_read(tdr.as_u64(), TDR_BYTES)
            .map_err(|f| st(host_fault(f, OPERAND_ID_RCX)))?;
        let mut tds = self.fw.write_tds().map_err(core)?;
        let pages = self.fw.lock_pages().map_err(core)?;
        let spdm = self.fw.read_spdm().map_err(core)?;
        if page_held(&tds, &pages, &spdm, tdr) {
            return Err(st(
                status::TDX_PAGE_METADATA_INCORRECT | u64::from(OPERAND_ID_RCX)
            ));
        }
        // Held until TDH.MNG.KEY.FREEID (the module's KOT entry not HKID_FREE).
        if crate::td::hkid_held(&tds, hkid) {
            return Err(st(status::TDX_HKID_NOT_FREE));
        }
        let td = self.tsm.create_guest().map_err(core)?;
        let life = crate::td::TdLife::HkidAssigned;
        match tds.get_mut(usize::from(td.slot())) {
            Some(entry @ None) => *entry = Some(TdEntry { tdr, hkid, life }),
            // Cannot happen: the core's guest slots are the table's, and a destroyed TD's
            // entry is cleared with it. Undone all the same, so the refusal changes nothing.
            _ => {
                let _ = self.tsm.destroy_guest(td);
                return Err(core(Error::Inconsistent));
            }
        }
        Ok(Outcome::Core(Ok(Completion::Done)))
    }

    fn sept_rd(
        &self,
        td: GuestId,
        gpa: Gpa,
        size: PageSize,
        out: &mut SeamRegs,
    ) -> Result<Outcome, Outcome> {
        let found = self
            .tsm
            .with_guest_table(td, |t| {
                t.probe(td, gpa).map(|p| {
                    let epoch = match tsm_core::SecureTable::leaf(t, td, gpa).map(|l| l.state) {
                        Some(LeafState::Blocked { epoch }) => epoch,
                        _ => 0,
                    };
                    (p, epoch)
                })
            })
            .map_err(|e| Outcome::Core(Err(e)))?;
        let (probe, epoch) =
            found.map_err(|e| Outcome::Status(status::sept_status(e, OPERAND_ID_RCX)))?;
        out.rcx = probe.entry.into_bits();
        out.rdx = u64::from(probe.level) | (u64::from(probe.state as u8) << 8);
        out.r8 = epoch;
        // The walk stopped above the level asked for on a free entry: EPT_WALK_FAILED.
        if probe.level > ept_level(size) && !probe.state.is_mmio_leaf() {
            return Ok(Outcome::Status(
                status::TDX_EPT_WALK_FAILED | u64::from(OPERAND_ID_RCX),
            ));
        }
        Ok(Outcome::Status(TDX_SUCCESS))
    }

    fn guest_leaf(
        &self,
        tdr: u64,
        leaf: u16,
        r: &SeamRegs,
        out: &mut SeamRegs,
    ) -> Result<Outcome, Outcome> {
        let st = Outcome::Status;
        // Held for the whole leaf (the TD's shard's copy), as for host leaves naming a TD.
        let tds = self
            .fw
            .read_tds_for(tdr)
            .map_err(|e| Outcome::Core(Err(e)))?;
        let td = td_in(&tds, tdr).ok_or(st(invalid(status::OPERAND_ID_TDR)))?;
        crate::td::usable(&tds, td).map_err(st)?;
        Ok(match leaf {
            TDG_MMIO_ACCEPT => {
                // The accept bypasses the core: the calling TD must exist.
                if self.tsm.guest(td) == Err(Error::InvalidHandle) {
                    return Err(st(invalid(status::OPERAND_ID_TDR)));
                }
                let (gpa, size) = self.page_operand(leaf, r, td, true)?;
                let reported = r.rdx;
                let r = self
                    .tsm
                    .guest_accept(td, gpa, |t, check| {
                        // The module's order: the entry's own state first, then its host
                        // page against RDX, and only then the update.
                        if let Ok(p) = t.probe(td, gpa)
                            && p.state == SeptState::MmioPending
                            && p.level == ept_level(size)
                        {
                            let hpa = Hpa::try_new(p.entry.phys()).map_err(Err)?;
                            check.check(hpa, size, reported).map_err(Err)?;
                        }
                        t.mmio_accept(td, gpa, size).map_err(Ok)
                    })
                    .map_err(|e| guest_refusal(leaf, e, OPERAND_ID_RCX, OPERAND_ID_RCX))?;
                match r {
                    Ok(()) => st(TDX_SUCCESS),
                    Err(Ok(e)) => st(status::sept_status(e, OPERAND_ID_RCX)),
                    Err(Err(e)) => Outcome::Core(Err(e)),
                }
            }
            TDG_DEVIF_RD => {
                // The module's operand order: R9, RDX, then the TDI.
                if r.r9 != 0 {
                    return Err(st(invalid(OPERAND_ID_R9)));
                }
                let field = devif_field(r.rdx).ok_or(st(invalid(OPERAND_ID_RDX)))?;
                if self.tsm.guest(td) == Err(Error::InvalidHandle) {
                    return Err(st(invalid(status::OPERAND_ID_TDR)));
                }
                let table = self.fw.lock_pages().map_err(|e| Outcome::Core(Err(e)))?;
                let (tdi, _) = devif_at(&table, r.rcx).map_err(st)?;
                let value = self
                    .tsm
                    .guest_read(td, tdi, field)
                    .map_err(|e| guest_refusal(leaf, e, OPERAND_ID_RCX, OPERAND_ID_RDX))?;
                out.rcx = value;
                st(TDX_SUCCESS)
            }
            TDG_DEVIF_REQUEST | TDG_DEVIF_RESPONSE => self.devif_guest(leaf, td, tdr, r, out)?,
            TDG_DMAR_ACCEPT => self.dmar_accept(td, r)?,
            TDG_IQ_INV_REQUEST => self.td_inv_request(&tds, td, r, out)?,
            _ => st(invalid(OPERAND_ID_RAX)),
        })
    }
}

/// TDG.DEVIF.RD's RDX as a field; `None` for reserved bits set or a code we do not define.
fn devif_field(rdx: u64) -> Option<GuestField> {
    if rdx & DEVIF_RD_RESERVED != 0 {
        return None;
    }
    let code = u8::try_from(rdx).ok()?;
    let digest_end = DEVIF_FIELD_REPORT_DIGEST.checked_add(tsm_core::guest::REPORT_DIGEST_WORDS)?;
    let ranges_end =
        DEVIF_FIELD_REPORTED_RANGE.checked_add(u8::try_from(MAX_RANGES_PER_TDI).ok()?)?;
    Some(match code {
        DEVIF_FIELD_TDISP_VERSION => GuestField::TdispVersion,
        DEVIF_FIELD_TDISP_STATE => GuestField::TdispState,
        c if (DEVIF_FIELD_REPORT_DIGEST..digest_end).contains(&c) => {
            GuestField::ReportDigest(c.checked_sub(DEVIF_FIELD_REPORT_DIGEST)?)
        }
        c if (DEVIF_FIELD_REPORTED_RANGE..ranges_end).contains(&c) => {
            GuestField::ReportedRange(c.checked_sub(DEVIF_FIELD_REPORTED_RANGE)?)
        }
        _ => return None,
    })
}

/// The leaf number in RAX; `None` when version or reserved bits are set.
/// The one log point of the TDX ABI: a refusal, at `debug` (a host can cause any number of
/// them, so never above), with the leaf (RAX as the caller gave it), the status by name and
/// the operand it names. Successes, INTERRUPTED_RESUMABLE and SPDM_REQUEST (work under way,
/// not refusals) are not logged. Registers are not printed: a leaf's inputs are host
/// addresses and IDs, but no key or secret ever passes through RAX's status.
fn log_refusal(call: &str, rax: u64, status: TdxStatus) {
    let code = status & status::CODE_MASK;
    if status::is_success(status)
        || code == status::TDX_INTERRUPTED_RESUMABLE
        || code == status::TDX_SPDM_REQUEST
    {
        return;
    }
    log::debug!(
        "tdx: {call} leaf {rax:#x} refused: {status:#018x} {} operand {}",
        status::name(status).unwrap_or("(unnamed)"),
        status & status::OPERAND_ID_MASK
    );
}

fn leaf_of(rax: u64) -> Option<u16> {
    if rax & RAX_NON_LEAF_BITS != 0 {
        return None;
    }
    u16::try_from(rax).ok()
}

/// Which address of `leaf` the core found misaligned (it does not say): MAP's GPA (RCX) or
/// host address (R8).
fn which_misaligned(leaf: u16, input: &SeamRegs) -> Option<TdxStatus> {
    if leaf != TDH_MMIO_MAP {
        return None;
    }
    let (gpa, size) = decode_page_info_unaligned(input.rcx, OPERAND_ID_RCX).ok()?;
    let operand = if gpa.is_aligned(size) {
        OPERAND_ID_R8
    } else {
        OPERAND_ID_RCX
    };
    Some(invalid(operand))
}

fn encode_tdi_state(state: TdiState, owner: Option<TdEntry>, regs: &mut SeamRegs) {
    let (code, detail) = match state {
        TdiState::Unbound => (TdiStateCode::Unbound, 0),
        TdiState::Locked { .. } => (TdiStateCode::Locked, 0),
        TdiState::Run { .. } => (TdiStateCode::Run, 0),
        TdiState::Error { blocking, .. } => (TdiStateCode::Error, u64::from(blocking.is_some())),
        TdiState::Unbinding { .. } => (TdiStateCode::Unbinding, 0),
    };
    regs.rcx = state.tdisp() as u64;
    regs.rdx = code as u64;
    regs.r8 = owner.map_or(u64::MAX, |e| e.tdr.as_u64());
    regs.r9 = detail;
}

/// Whether `leaf` answers a relay with `devif_req_out_t` in RCX ([`crate::devif`]).
const fn devif_relay(leaf: u16) -> bool {
    matches!(
        leaf,
        TDH_DEVIF_REQUEST
            | TDH_DEVIF_RESPONSE
            | TSM_DEVIF_BIND
            | TSM_DEVIF_UNBIND
            | TSM_DEVIF_CHECK
    )
}

/// A leaf's outcome as the host reads it from the registers it got back: the status decoded
/// ([`status::decode`]) with `Relay`'s length from RCX (bits 23:8, `devif_req_out_t`, for the
/// DEVIF leaves; all of RCX for the link leaves). `None` for a status the leaf's operand roles
/// do not explain.
pub fn outcome(leaf: u16, regs: &SeamRegs) -> Option<TsmResult<Completion>> {
    match status::decode(regs.rax, &operands(leaf))? {
        // The DEVIF leaves say `devif_req_out_t` (length in 23:8), the link leaves the length.
        Ok(Completion::Relay(_)) if devif_relay(leaf) => Some(Ok(Completion::Relay(usize::from(
            u16::try_from((regs.rcx >> OUT_LENGTH_SHIFT) & 0xffff).ok()?,
        )))),
        Ok(Completion::Relay(_)) => Some(Ok(Completion::Relay(usize::try_from(regs.rcx).ok()?))),
        other => Some(other),
    }
}

/// The bytes `[hpa, hpa + len)` of a buffer of `size` bytes at host physical `base`: their
/// offset, or `None` when any byte lies outside.
fn span(base: u64, size: usize, hpa: u64, len: usize) -> Option<core::ops::Range<usize>> {
    let start = usize::try_from(hpa.checked_sub(base)?).ok()?;
    let end = start.checked_add(len)?;
    (end <= size).then_some(start..end)
}

/// Read-only host memory for tests: one byte buffer at a host physical base address. Every
/// write (and so every TDI's request page) is refused as outside host memory: a firmware over
/// it cannot create TDIs; [`HostBuffer`] can.
pub struct BufferMemory<'b> {
    /// Host physical address of `bytes[0]`.
    pub base: u64,
    /// The bytes.
    pub bytes: &'b [u8],
}

/// Where the buffer is and how long, not its bytes.
impl core::fmt::Debug for BufferMemory<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BufferMemory")
            .field("base", &format_args!("{:#x}", self.base))
            .field("len", &self.bytes.len())
            .finish()
    }
}

impl HostMemory for BufferMemory<'_> {
    fn read(&self, hpa: u64, out: &mut [u8]) -> Result<(), HostFault> {
        let src = span(self.base, self.bytes.len(), hpa, out.len())
            .and_then(|r| self.bytes.get(r))
            .ok_or(HostFault::OutsideHostMemory)?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn probe_read(&self, hpa: u64, len: usize) -> Result<(), HostFault> {
        span(self.base, self.bytes.len(), hpa, len)
            .map(drop)
            .ok_or(HostFault::OutsideHostMemory)
    }

    fn probe_write(&self, _: u64, _: usize) -> Result<(), HostFault> {
        Err(HostFault::OutsideHostMemory)
    }

    fn write(&self, _: u64, _: &[u8]) -> Result<(), HostFault> {
        Err(HostFault::OutsideHostMemory)
    }
}

/// Host memory for tests and the scenario shim: one byte buffer at a host physical base
/// address that the firmware reads and writes (parameter pages, request and response pages) and the host
/// owns between calls. Build one per call over the host's bytes ([`HostBuffer::new`]).
pub struct HostBuffer<'b> {
    base: u64,
    bytes: &'b [Cell<u8>],
}

/// Where the buffer is and how long, not its bytes.
impl core::fmt::Debug for HostBuffer<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HostBuffer")
            .field("base", &format_args!("{:#x}", self.base))
            .field("len", &self.bytes.len())
            .finish()
    }
}

impl<'b> HostBuffer<'b> {
    /// `bytes` as host memory at host physical address `base`.
    pub fn new(base: u64, bytes: &'b mut [u8]) -> Self {
        Self {
            base,
            bytes: Cell::from_mut(bytes).as_slice_of_cells(),
        }
    }

    fn cells(&self, hpa: u64, len: usize) -> Result<&'b [Cell<u8>], HostFault> {
        span(self.base, self.bytes.len(), hpa, len)
            .and_then(|r| self.bytes.get(r))
            .ok_or(HostFault::OutsideHostMemory)
    }
}

impl HostMemory for HostBuffer<'_> {
    fn read(&self, hpa: u64, out: &mut [u8]) -> Result<(), HostFault> {
        let cells = self.cells(hpa, out.len())?;
        for (o, c) in out.iter_mut().zip(cells) {
            *o = c.get();
        }
        Ok(())
    }

    fn probe_read(&self, hpa: u64, len: usize) -> Result<(), HostFault> {
        self.cells(hpa, len).map(drop)
    }

    fn probe_write(&self, hpa: u64, len: usize) -> Result<(), HostFault> {
        self.cells(hpa, len).map(drop)
    }

    fn write(&self, hpa: u64, src: &[u8]) -> Result<(), HostFault> {
        for (c, &b) in self.cells(hpa, src.len())?.iter().zip(src) {
            c.set(b);
        }
        Ok(())
    }
}

impl<M: HostMemory + ?Sized> HostMemory for &M {
    fn read(&self, hpa: u64, out: &mut [u8]) -> Result<(), HostFault> {
        (**self).read(hpa, out)
    }

    fn probe_read(&self, hpa: u64, len: usize) -> Result<(), HostFault> {
        (**self).probe_read(hpa, len)
    }

    fn probe_write(&self, hpa: u64, len: usize) -> Result<(), HostFault> {
        (**self).probe_write(hpa, len)
    }

    fn write(&self, hpa: u64, src: &[u8]) -> Result<(), HostFault> {
        (**self).write(hpa, src)
    }

    fn probe_write_u32(&self, hpa: u64) -> Result<(), HostFault> {
        (**self).probe_write_u32(hpa)
    }

    fn write_u32(&self, hpa: u64, value: u32) -> Result<(), HostFault> {
        (**self).write_u32(hpa, value)
    }
}
