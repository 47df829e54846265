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

use tsm_core::capacity::{MAX_BARS, MAX_RANGES_PER_TDI};
use tsm_core::transport::TdispDevice;
use tsm_core::{
    Completion, DeviceId, Error, Gpa, GuestId, Hpa, LeafState, MmioRange, PageSize, RequesterId,
    TdiId, TdiState, Tsm,
};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::sept::{Sept, SeptError, ept_level};
use crate::status::{
    self, OPERAND_ID_R8, OPERAND_ID_R9, OPERAND_ID_RAX, OPERAND_ID_RCX, OPERAND_ID_RDX, Operands,
    TDX_OPERAND_ADDR_RANGE_ERROR, TDX_OPERAND_INVALID, TDX_SUCCESS, TdxStatus,
};

/// The registers a SEAMCALL passes (TDX Module ABI spec: RAX leaf, operands in RCX, RDX, R8-R13).
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
}

const _: () = assert!(core::mem::size_of::<SeamRegs>() == 9 * 8);

// ---- host leaves (SEAMCALL) ---------------------------------------------------------------

/// TDH.MEM.SEPT.RD (Linux tdx.h / tdx-module: leaf 25): RCX page info, RDX TD. Out: RCX the
/// entry the walk stopped at, RDX `{level[2:0], state[15:8]}`, R8 (ours) the blocking epoch.
pub const TDH_MEM_SEPT_RD: u16 = 25;
/// TDH.MEM.TRACK (Linux tdx.h: leaf 38): RCX TD.
pub const TDH_MEM_TRACK: u16 = 38;
/// TDH.SPDM.CREATE (tdx-module TDX-IO: leaf 130), here "create device": RCX requester ID
/// (`segment << 16 | bus << 8 | devfn`), RDX host address of a [`RangeList`] of BARs.
/// Out: RCX device handle. (Operands ours: the TDX leaf takes SPDM session pages.)
pub const TDH_SPDM_CREATE: u16 = 130;
/// TDH.SPDM.DELETE (TDX-IO: 131), "remove device": RCX device handle.
pub const TDH_SPDM_DELETE: u16 = 131;
/// TDH.DEVIF.CREATE (TDX-IO: 137), "create TDI": RCX device handle, RDX interface ID
/// (packed requester ID). Out: RCX TDI handle.
pub const TDH_DEVIF_CREATE: u16 = 137;
/// TDH.DEVIF.REMOVE (TDX-IO: 138): RCX TDI handle.
pub const TDH_DEVIF_REMOVE: u16 = 138;
/// TDH.MMIO.MAP (TDX-IO: 158): RCX page info, RDX TD, R8 host address, R9 TDI handle (ours:
/// the TDX module finds the TDI in its MMIO metadata).
pub const TDH_MMIO_MAP: u16 = 158;
/// TDH.MMIO.BLOCK (TDX-IO: 159): RCX page info, RDX TD.
pub const TDH_MMIO_BLOCK: u16 = 159;
/// TDH.MMIO.UNMAP (TDX-IO: 160): RCX page info, RDX TD. Out: R8 the host address.
pub const TDH_MMIO_UNMAP: u16 = 160;

/// First leaf number of ours; every TDX leaf is below it.
pub const TSM_LEAF_BASE: u16 = 0xF000;
/// Ours, "create TD" (stands in for TDH.MNG.CREATE/INIT). Out: RCX TD handle.
pub const TSM_TD_CREATE: u16 = 0xF000;
/// Ours, "destroy TD" (stands in for TD teardown): RCX TD.
pub const TSM_TD_DESTROY: u16 = 0xF001;
/// Ours, bind: RCX TDI, RDX TD; R8 reserved (zero). The firmware sends LOCK_INTERFACE and
/// takes the MMIO ranges from the device's own interface report, never from the host.
pub const TSM_DEVIF_BIND: u16 = 0xF002;
/// Ours, bounded unbind: RCX TDI, RDX flags ([`UNBIND_FLAG_FORCE`]; other bits reserved,
/// OPERAND_INVALID + RDX). TDX_INTERRUPTED_RESUMABLE until done.
pub const TSM_DEVIF_UNBIND: u16 = 0xF003;
/// TSM.DEVIF.UNBIND RDX bit 0 (ours): force. The firmware cuts the device's IDE stream at the
/// root port and unbinds without the device's STOP_INTERFACE (`Tsm::unbind_forced`).
pub const UNBIND_FLAG_FORCE: u64 = 1 << 0;
/// Ours, the device reported ERROR for a TDI: RCX TDI. Resumable like unbind.
pub const TSM_DEVIF_ERROR: u16 = 0xF004;
/// Ours, TDI state: RCX TDI. Out: RCX TDISP state, RDX [`TdiStateCode`], R8 owner TD or
/// `u64::MAX`, R9 1 while a device-error block walk is unfinished.
pub const TSM_DEVIF_STATE: u16 = 0xF005;
/// Ours, may the host zap `[RCX, RCX + RDX pages)`: refused while any page is bound or mapped.
pub const TSM_MMIO_ZAP_CHECK: u16 = 0xF006;
/// Ours, ask the device for the TDI's TDISP state (GET_DEVICE_INTERFACE_STATE): RCX TDI. A
/// bound TDI the device reports in ERROR, or unlocked, goes to ERROR. Resumable like unbind.
pub const TSM_DEVIF_CHECK: u16 = 0xF007;
/// Ours, TSM.IDE.STREAM_SETUP: RCX device. The host has re-established the device's IDE
/// stream after a forced unbind cut it (`Tsm::setup_stream`); refused while a TDI of the
/// device is bound. Its TDIs can be bound again.
pub const TSM_IDE_STREAM_SETUP: u16 = 0xF008;

// ---- guest leaves (TDCALL, entered for the calling TD) ------------------------------------

/// TDG.MMIO.ACCEPT (TDX-IO: 71): RCX page info. MMIO_PENDING -> MMIO_MAPPED.
pub const TDG_MMIO_ACCEPT: u16 = 71;
/// Ours, the guest accepts and starts a TDI (START_INTERFACE; the TDX guest sends it through
/// TDG.DEVIF.REQUEST): RCX TDI.
pub const TSM_GUEST_DEVIF_START: u16 = 0xF080;

/// Leaf version bits 23:16 and reserved bits 63:24 of RAX (TDX Module ABI, SEAMCALL RAX).
const RAX_NON_LEAF_BITS: u64 = !0xffff;
/// Page info operand: level bits 2:0, reserved 11:3 and 63:52 (TDX Module ABI, "Page Info").
const PAGE_INFO_LEVEL_MASK: u64 = 0x7;
const PAGE_INFO_RESERVED: u64 = 0xfff0_0000_0000_0ff8;

/// The host page a range list lives in must be 4 KiB aligned (TDX: every page operand is).
const LIST_ALIGN: PageSize = PageSize::Size4K;

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

/// Host memory the firmware reads parameter pages from.
pub trait HostMemory {
    /// Copies `out.len()` bytes at host physical address `hpa` into `out`, reading each byte
    /// of host memory once; the firmware decodes only the copy.
    fn read(&self, hpa: u64, out: &mut [u8]) -> Result<(), HostFault>;
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
    };
    let rcx = Some(OPERAND_ID_RCX);
    let rdx = Some(OPERAND_ID_RDX);
    match leaf {
        TSM_TD_DESTROY | TDH_MEM_TRACK => Operands { td: rcx, ..none },
        TDH_SPDM_CREATE => Operands {
            rid: rcx,
            list: rdx,
            ..none
        },
        TDH_SPDM_DELETE | TSM_IDE_STREAM_SETUP => Operands {
            device: rcx,
            ..none
        },
        TDH_DEVIF_CREATE => Operands {
            device: rcx,
            rid: rdx,
            ..none
        },
        TDH_DEVIF_REMOVE
        | TSM_DEVIF_UNBIND
        | TSM_DEVIF_ERROR
        | TSM_DEVIF_STATE
        | TSM_DEVIF_CHECK
        | TSM_GUEST_DEVIF_START => Operands { tdi: rcx, ..none },
        TSM_DEVIF_BIND => Operands {
            tdi: rcx,
            td: rdx,
            ..none
        },
        TDH_MMIO_MAP => Operands {
            page: rcx,
            td: rdx,
            hpa: Some(OPERAND_ID_R8),
            tdi: Some(OPERAND_ID_R9),
            ..none
        },
        TDH_MMIO_BLOCK | TDH_MMIO_UNMAP | TDH_MEM_SEPT_RD => Operands {
            page: rcx,
            td: rdx,
            ..none
        },
        TDG_MMIO_ACCEPT => Operands { page: rcx, ..none },
        TSM_MMIO_ZAP_CHECK => Operands { hpa: rcx, ..none },
        _ => none,
    }
}

/// Builds a page-info operand: `gpa | level` (the TDX page-info format).
pub const fn page_info(gpa: Gpa, size: PageSize) -> u64 {
    gpa.as_u64() | size.tdx_level() as u64
}

fn invalid(operand: u32) -> TdxStatus {
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
fn decode_hpa(raw: u64, size: PageSize, operand: u32) -> Result<Hpa, TdxStatus> {
    let hpa = Hpa::try_new(raw).map_err(|_| TDX_OPERAND_ADDR_RANGE_ERROR | u64::from(operand))?;
    if !hpa.is_aligned(size) {
        return Err(invalid(operand));
    }
    Ok(hpa)
}

fn decode_handle<K>(raw: u64, operand: u32) -> Result<tsm_core::Handle<K>, TdxStatus> {
    tsm_core::Handle::from_raw(raw).map_err(|_| invalid(operand))
}

fn decode_rid(raw: u64, operand: u32) -> Result<RequesterId, TdxStatus> {
    RequesterId::from_packed(raw).map_err(|_| invalid(operand))
}

/// The status for a host-memory fault on the operand `operand`.
fn host_fault(fault: HostFault, operand: u32) -> TdxStatus {
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
        _ => return None,
    })
}

/// A leaf's outcome before encoding: a core outcome, or a status from the operand checks.
enum Outcome {
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
/// the handle's status, as it would from the core.
pub struct Dispatcher<'t, 'm, D, M> {
    tsm: &'t Tsm<Sept<'m>, D>,
    host: M,
}

impl<'t, 'm, D: TdispDevice, M: HostMemory> Dispatcher<'t, 'm, D, M> {
    /// A dispatcher for `tsm` reading parameter pages through `host`.
    pub const fn new(tsm: &'t Tsm<Sept<'m>, D>, host: M) -> Self {
        Self { tsm, host }
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
        out.rax = status;
        *regs = out;
    }

    /// Handles one TDCALL from TD `td` (the guest side: accept and start).
    pub fn tdcall(&self, td: GuestId, regs: &mut SeamRegs) {
        let input = *regs;
        let mut out = input;
        let status = match leaf_of(input.rax) {
            None => invalid(OPERAND_ID_RAX),
            Some(leaf) => {
                let outcome = match self.guest_leaf(td, leaf, &input, &mut out) {
                    Ok(o) | Err(o) => o,
                };
                self.finish(leaf, outcome, &input, &mut out)
            }
        };
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

    /// TDX names the operand that failed: the first handle operand of `ops` that no handle
    /// can have or that the firmware does not know (a handle whose lock is busy counts as
    /// known: the core reports the contention itself).
    fn which_handle(&self, ops: &Operands, input: &SeamRegs) -> Option<TdxStatus> {
        let unknown = |r: Result<(), Error>| r == Err(Error::InvalidHandle);
        if let Some(id) = ops.tdi {
            let known = TdiId::from_raw(reg(input, id)?).map(|t| self.tsm.tdi(t).map(drop));
            if known.is_err() || known.is_ok_and(unknown) {
                return Some(invalid(id));
            }
        }
        if let Some(id) = ops.device {
            let known = DeviceId::from_raw(reg(input, id)?).map(|d| self.tsm.device(d).map(drop));
            if known.is_err() || known.is_ok_and(unknown) {
                return Some(invalid(id));
            }
        }
        if let Some(id) = ops.td {
            let known = GuestId::from_raw(reg(input, id)?).map(|g| self.tsm.guest(g).map(drop));
            if known.is_err() || known.is_ok_and(unknown) {
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
        let (Ok((gpa, _)), Ok(td)) = (
            decode_page_info(input.rcx, OPERAND_ID_RCX),
            GuestId::from_raw(input.rdx),
        ) else {
            return;
        };
        if let Ok(Ok(probe)) = self.tsm.with_table(|t| t.probe(td, gpa)) {
            out.rcx = probe.entry.into_bits();
            out.rdx = u64::from(probe.level) | (u64::from(probe.state as u8) << 8);
        }
    }

    /// The S-EPT's own width check for `gpa` (the walker's), asked before the core so that a
    /// GPA the TD's S-EPT cannot hold is OPERAND_ADDR_RANGE_ERROR on RCX, not whatever the
    /// core makes of a leaf lookup that found nothing.
    fn gpa_in_table(&self, td: GuestId, gpa: Gpa) -> Result<(), Result<TdxStatus, Error>> {
        match self.tsm.with_table(|t| t.gpa_in_table(td, gpa)) {
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
        Ok(match leaf {
            TSM_TD_CREATE => {
                let td = tsm.create_guest().map_err(core)?;
                out.rcx = u64::from(td.slot());
                Outcome::Core(Ok(Completion::Done))
            }
            TSM_TD_DESTROY => {
                let td: GuestId = decode_handle(r.rcx, OPERAND_ID_RCX).map_err(st)?;
                tsm.destroy_guest(td).into()
            }
            TDH_SPDM_CREATE => {
                let rid = decode_rid(r.rcx, OPERAND_ID_RCX).map_err(st)?;
                let bars = self.read_ranges::<MAX_BARS>(r.rdx, OPERAND_ID_RDX)?;
                let dev = tsm.create_device(rid, &bars).map_err(core)?;
                out.rcx = u64::from(dev.slot());
                Outcome::Core(Ok(Completion::Done))
            }
            TDH_SPDM_DELETE => {
                let dev: DeviceId = decode_handle(r.rcx, OPERAND_ID_RCX).map_err(st)?;
                tsm.remove_device(dev).into()
            }
            TDH_DEVIF_CREATE => {
                let dev: DeviceId = decode_handle(r.rcx, OPERAND_ID_RCX).map_err(st)?;
                let iface = decode_rid(r.rdx, OPERAND_ID_RDX).map_err(refuse)?;
                let tdi = tsm.create_tdi(dev, iface).map_err(core)?;
                out.rcx = u64::from(tdi.slot());
                Outcome::Core(Ok(Completion::Done))
            }
            TDH_DEVIF_REMOVE => {
                let tdi: TdiId = decode_handle(r.rcx, OPERAND_ID_RCX).map_err(st)?;
                tsm.remove_tdi(tdi).into()
            }
            TSM_DEVIF_BIND => {
                let tdi: TdiId = decode_handle(r.rcx, OPERAND_ID_RCX).map_err(st)?;
                let td: GuestId = decode_handle(r.rdx, OPERAND_ID_RDX).map_err(st)?;
                if r.r8 != 0 {
                    return Err(refuse(invalid(OPERAND_ID_R8)));
                }
                tsm.bind(tdi, td).into()
            }
            TDH_MMIO_MAP => {
                let tdi: TdiId = decode_handle(r.r9, OPERAND_ID_R9).map_err(st)?;
                let td: GuestId = decode_handle(r.rdx, OPERAND_ID_RDX).map_err(st)?;
                // Alignment of both addresses is the core's check (Misaligned, operand named
                // in `finish`); only what the core cannot be handed is refused here.
                let (gpa, size) = self.page_operand(leaf, r, td, false)?;
                let hpa = Hpa::try_new(r.r8)
                    .map_err(|_| refuse(TDX_OPERAND_ADDR_RANGE_ERROR | u64::from(OPERAND_ID_R8)))?;
                tsm.map_mmio(tdi, td, gpa, hpa, size).into()
            }
            TDH_MMIO_BLOCK => {
                let td: GuestId = decode_handle(r.rdx, OPERAND_ID_RDX).map_err(st)?;
                let (gpa, size) = self.page_operand(leaf, r, td, true)?;
                tsm.host_block(td, gpa, size).into()
            }
            TDH_MMIO_UNMAP => {
                let td: GuestId = decode_handle(r.rdx, OPERAND_ID_RDX).map_err(st)?;
                let (gpa, size) = self.page_operand(leaf, r, td, true)?;
                // The host page of the leaf this call removed, from the removal itself.
                out.r8 = tsm.host_unmap(td, gpa, size).map_err(core)?.as_u64();
                Outcome::Core(Ok(Completion::Done))
            }
            TDH_MEM_TRACK => {
                let td: GuestId = decode_handle(r.rcx, OPERAND_ID_RCX).map_err(st)?;
                match tsm.host_track(td) {
                    // TRACK's own words: the previous epoch is not flushed yet. (Re-stamping
                    // old blocked leaves is `Resumable`, INTERRUPTED_RESUMABLE, from the
                    // call's own result.)
                    Err(Error::TlbFlushPending) => st(status::sept_status(
                        SeptError::PreviousEpochBusy,
                        OPERAND_ID_RCX,
                    )),
                    r => Outcome::Core(r),
                }
            }
            TDH_MEM_SEPT_RD => {
                let td: GuestId = decode_handle(r.rdx, OPERAND_ID_RDX).map_err(st)?;
                // The S-EPT read bypasses the core: the TD must exist.
                if let Some(s) = self.which_handle(&operands(leaf), r) {
                    return Err(st(s));
                }
                let (gpa, size) = self.page_operand(leaf, r, td, true)?;
                self.sept_rd(td, gpa, size, out)?
            }
            TSM_DEVIF_UNBIND => {
                let tdi: TdiId = decode_handle(r.rcx, OPERAND_ID_RCX).map_err(st)?;
                if r.rdx & !UNBIND_FLAG_FORCE != 0 {
                    return Err(refuse(invalid(OPERAND_ID_RDX)));
                }
                if r.rdx & UNBIND_FLAG_FORCE != 0 {
                    Outcome::Core(tsm.unbind_forced(tdi))
                } else {
                    Outcome::Core(tsm.unbind(tdi))
                }
            }
            TSM_IDE_STREAM_SETUP => {
                let dev: DeviceId = decode_handle(r.rcx, OPERAND_ID_RCX).map_err(st)?;
                tsm.setup_stream(dev).into()
            }
            TSM_DEVIF_ERROR => {
                let tdi: TdiId = decode_handle(r.rcx, OPERAND_ID_RCX).map_err(st)?;
                Outcome::Core(tsm.device_error(tdi))
            }
            TSM_DEVIF_STATE => {
                let tdi: TdiId = decode_handle(r.rcx, OPERAND_ID_RCX).map_err(st)?;
                let state = tsm.tdi(tdi).map_err(core)?.state;
                encode_tdi_state(state, out);
                Outcome::Core(Ok(Completion::Done))
            }
            TSM_DEVIF_CHECK => {
                let tdi: TdiId = decode_handle(r.rcx, OPERAND_ID_RCX).map_err(st)?;
                Outcome::Core(tsm.check_interface(tdi))
            }
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

    fn sept_rd(
        &self,
        td: GuestId,
        gpa: Gpa,
        size: PageSize,
        out: &mut SeamRegs,
    ) -> Result<Outcome, Outcome> {
        let found = self
            .tsm
            .with_table(|t| {
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
        td: GuestId,
        leaf: u16,
        r: &SeamRegs,
        _out: &mut SeamRegs,
    ) -> Result<Outcome, Outcome> {
        let st = Outcome::Status;
        Ok(match leaf {
            TDG_MMIO_ACCEPT => {
                // The accept bypasses the core: the calling TD must exist.
                if self.tsm.guest(td) == Err(Error::InvalidHandle) {
                    return Err(st(invalid(status::OPERAND_ID_TDR)));
                }
                let (gpa, size) = self.page_operand(leaf, r, td, true)?;
                let r = self
                    .tsm
                    .with_table(|t| t.mmio_accept(td, gpa, size))
                    .map_err(|e| Outcome::Core(Err(e)))?;
                match r {
                    Ok(()) => st(TDX_SUCCESS),
                    Err(e) => st(status::sept_status(e, OPERAND_ID_RCX)),
                }
            }
            TSM_GUEST_DEVIF_START => {
                let tdi: TdiId = decode_handle(r.rcx, OPERAND_ID_RCX).map_err(st)?;
                self.tsm.guest_start(td, tdi).into()
            }
            _ => st(invalid(OPERAND_ID_RAX)),
        })
    }
}

/// The leaf number in RAX; `None` when version or reserved bits are set.
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

fn encode_tdi_state(state: TdiState, regs: &mut SeamRegs) {
    let (code, detail) = match state {
        TdiState::Unbound => (TdiStateCode::Unbound, 0),
        TdiState::Locked { .. } => (TdiStateCode::Locked, 0),
        TdiState::Run { .. } => (TdiStateCode::Run, 0),
        TdiState::Error { blocking, .. } => (TdiStateCode::Error, u64::from(blocking.is_some())),
        TdiState::Unbinding { .. } => (TdiStateCode::Unbinding, 0),
    };
    regs.rcx = state.tdisp() as u64;
    regs.rdx = code as u64;
    regs.r8 = state.owner().map_or(u64::MAX, |g| u64::from(g.slot()));
    regs.r9 = detail;
}

/// Host memory for tests and the identity-mapped C prototype: one byte buffer at a host
/// physical base address.
pub struct BufferMemory<'b> {
    /// Host physical address of `bytes[0]`.
    pub base: u64,
    /// The bytes.
    pub bytes: &'b [u8],
}

impl HostMemory for BufferMemory<'_> {
    fn read(&self, hpa: u64, out: &mut [u8]) -> Result<(), HostFault> {
        let src = hpa
            .checked_sub(self.base)
            .and_then(|o| usize::try_from(o).ok())
            .and_then(|start| self.bytes.get(start..start.checked_add(out.len())?))
            .ok_or(HostFault::OutsideHostMemory)?;
        out.copy_from_slice(src);
        Ok(())
    }
}

impl<M: HostMemory + ?Sized> HostMemory for &M {
    fn read(&self, hpa: u64, out: &mut [u8]) -> Result<(), HostFault> {
        (**self).read(hpa, out)
    }
}
