//! `tdx_dispatcher`: sequences of SEAMCALL and TDCALL leaves through
//! `platform_tdx::abi::Dispatcher`, on a `TdxModule` with a 4- or 5-level S-EPT over a small
//! frame pool, host memory the dispatcher reads and writes (a parameter page, two pairs of
//! shared request/response pages, a spare page; any page can be made read-only; and unbacked
//! pages for TDRs, metadata and TDIs' private page triples), the model device behind the
//! host's relay, and reserved memory (the pool, host memory, system memory). TDIs are named
//! by their TDISP function ID (the TDX-IO encodings, `platform_tdx::devif`); the operations
//! pick them by core slot and the harness names each by its function ID.
//!
//! Each operation is one of a small set of leaves with mostly-valid operands (handles are slot
//! numbers near the ones in use, addresses are picked in the BARs, in owned ranges, at existing
//! leaves, private page triples among free and bad ones), raw register sets for any leaf,
//! and the host's actions beside the firmware: on the device model (misbehaviour, FLR-style
//! disturbance, reset), on TLB flushes and on its own pages. A leaf that answers
//! `TDX_SPDM_REQUEST` is relayed as its operation says: the device's own answers to the end,
//! a few rounds and then nothing (the host abandons it), or one round with another answer
//! ([`Answer`]: nothing, bits flipped, cut short, padded, a wrong DOE length, a replay of an
//! earlier answer, the request reflected, made-up bytes, too long); `Respond` hands any answer
//! to any TDI's exchange later, its DOE length exact, none (RDX page 0), off or past the page.
//! The trusted-DMA leaves are operations of their own: TDH.DMAR.ADD of a TDI's PASID entry
//! (the qwords the module allows, or a chosen SLPTPTR or DID, the present bit, the other AW, a
//! non-zero qword 2..6; a `dmar_idx_t` of another level, with reserved bits, a PASID or another
//! IOMMU; another TD), TDG.DMAR.ACCEPT from the owner or another TD (non-zero R8..R14, a bad
//! RDX target), TDH.DMAR.BLOCK, READ and REMOVE, TDH.IQ.INV.REQUEST (a PASID entry's by RID or
//! a TD's domain by TDR, any type; the wait descriptor good, without FN, with qword 2 or 3 set;
//! its status address in any host page, misaligned, outside host memory, with KeyID bits) and
//! TDH.IQ.INV.PROCESS of any IOMMU; the TD's own IOTLB request (TDG.IQ.INV.REQUEST 72: good or
//! bad descriptors in the spare page, any count, a status word in host memory, 4 mod 8 or not,
//! or in a held TDR page) and the host's INV_REQ_TD with any pool size.
//!
//! After every call: `tsm_tests::invariants::check`, the record tables' consistency
//! ([`registry_consistent`]), host memory (written only by a relay, only in the TDI's request
//! page; and by PROCESS, REMOVE or an unbind only at a status word a TD's accepted request
//! named), and, when the call was refused (any status but success, `TDX_INTERRUPTED_RESUMABLE`
//! and `TDX_SPDM_REQUEST`), relayed or read-only, a comparison of the whole state before and
//! after under the exemptions of [`crate::exempt`]: every core record table, the S-EPT pool's
//! bytes and bookkeeping (`Sept::bookkeeping`), the TDI records (their TD's request state
//! aside for the leaves that end or read it) and host memory. A refused call must also leave
//! every register but RAX as it was (or write only the walk details TDX documents); a relayed
//! one writes RCX only (`devif_req_out_t`: the code of the outstanding request, its length),
//! and the request page R8 named holds a DOE object of that length that the device opens as
//! the TDI's outstanding exchange. An answer handed back opens exactly when it is the device's own
//! answer to that exchange ([`Answers::opens_for`]). Beside those: host block and unmap never
//! succeed (every leaf is a bound TDI's), a permitted zap covers no private owned range and no
//! leaf, a finished unbind leaves the TDI unbound, with nothing outstanding, owning nothing
//! with no leaf left in its ranges, a bind or start the device's answer completes leaves the
//! TDI (and, answered just now, the device) in the matching state, bind and start never
//! complete without the device, and only unbind, device error, check, TRACK and a device
//! answer ever answer `TDX_INTERRUPTED_RESUMABLE`. Trusted DMA (`World::dma_oracle`): a
//! TDI's DMA reaches a TD's private memory only while the TDI is RUN bound to it, its core
//! record says the context is active and its PASID entry is the TD's, present, with SLPTPTR
//! the TD's S-EPT root (and a RUN TDI with an active context on a live stream does reach it);
//! every PASID entry belongs to a TDI bound to the entry's TD, so a finished unbind leaves
//! none; TDH.DEVIF.REMOVE never succeeds while the TDI has a context or an entry; TDH.DMAR.READ
//! and a host BLOCK or IQ.INV.REQUEST of an entry the firmware took that far already change
//! nothing. At the end every TDI is unbound (flushes released, the device behaving, pages
//! writable; an unbind the device's answer failed is called once more) within a bounded number
//! of calls.

use std::cell::Cell;

use arbitrary::{Arbitrary, Unstructured};
use platform_tdx::TdxModule;
use platform_tdx::abi::{self, Dispatcher, HostFault, HostMemory, RangeEntry, RangeList, SeamRegs};
use platform_tdx::dmar::{self, DmarEntry};
use platform_tdx::frames::{FramePool, Page};
use platform_tdx::module::{DevifEntry, TdRequest};
use platform_tdx::module::{MESSAGE_PAGE_BYTES, SpdmEntry};
use platform_tdx::sept::{Sept, SeptBookkeeping, SeptLevels};
use platform_tdx::status::{
    self as st, TDX_DMAR_INVALID_INV_STATE, TDX_INTERRUPTED_RESUMABLE, TDX_SPDM_REQUEST,
    TDX_SUCCESS,
};
use tsm_core::capacity::{MAX_DEVICES, MAX_GUESTS, MAX_TDIS};
use tsm_core::device_model::{DeviceEvent, ModelDevice};
use tsm_core::dma::DmaState;
use tsm_core::tdisp::report::{RANGE_ATTR_NON_TEE, WireMmioRange, wire_range};
use tsm_core::tsm::Snapshot;
use tsm_core::{
    Completion, DeviceOp, Error, GuestId, MmioRange, ModelSession, PageSize, RequesterId,
    ReservedMemory, TdiId, TdiState, TdispState,
};
use zerocopy::IntoBytes;

use crate::answer::{Answer, Answers, check_request};
use crate::common::{self, core_diff, fail, fid_of, registry_consistent};
use crate::enc::ops;
use crate::exempt::{Call, Exempt, exemption};

/// Physical address of the S-EPT frame pool (reserved memory).
pub const POOL_BASE: u64 = 0x20_0000_0000;
/// Pages in the pool: few, so that `SecureTableFull` is reachable.
pub const POOL_PAGES: usize = 40;
/// Host memory (reserved): the parameter page (range lists), request and response pages of
/// pair A, then of pair B, a spare page.
pub const HOST: u64 = 0x7_0000_0000;
/// The host page range lists are read from.
pub const PARAMS: u64 = HOST;
/// Pages of host memory.
pub const HOST_PAGES: usize = 6;
const PAGE: u64 = MESSAGE_PAGE_BYTES as u64;
/// Request and response pages of pair A and pair B.
pub const REQ_A: u64 = HOST + PAGE;
const RESP_A: u64 = HOST + 2 * PAGE;
const REQ_B: u64 = HOST + 3 * PAGE;
const RESP_B: u64 = HOST + 4 * PAGE;
const SPARE: u64 = HOST + 5 * PAGE;
/// The TDR pages TDs are created with (TDH.MNG.CREATE RCX): right after the bytes of host
/// memory, one more than the core has guest slots (so a full table is the core's
/// `GuestTableFull`). Host memory the firmware never reads or writes (it only checks that a
/// TDR is a whole page of host memory): [`Host`] answers for them without bytes.
pub const TDR_BASE: u64 = HOST + HOST_PAGES as u64 * PAGE;
/// TDR pages.
const TDR_PAGES: u64 = MAX_GUESTS as u64 + 1;
/// The first HKID TDs are created with (each takes the first one no live TD holds).
const HKID: u64 = 1;

/// TDR page `i` (past the TDR pages for `i >= TDR_PAGES`: not host memory).
fn tdr_page(i: u64) -> u64 {
    TDR_BASE + i * PAGE
}
/// SPDM metadata pages (TDH.SPDM.CREATE RDX), after the TDR pages: page `k` for device `k`.
/// Like the TDR pages, host memory the firmware only records ([`Host`] answers for them).
const SPDM_PAGES: u64 = 8;
/// SPDM metadata page `k`.
fn spdm_page(k: u64) -> u64 {
    tdr_page(TDR_PAGES) + k * PAGE
}
/// Private page triples of TDH.DEVIF.CREATE (R8, R9, R10), after the SPDM and IDE metadata
/// pages: one more than the firmware has TDIs. Unbacked like the metadata pages.
const DEVIF_TRIPLES: u64 = MAX_TDIS as u64 + 1;
/// Page `i` of private triple `k`.
fn devif_page(k: u64, i: u64) -> u64 {
    spdm_page(2 * SPDM_PAGES) + (3 * k + i) * PAGE
}
/// System memory the firmware reserves at init: never a BAR, a reported range or a mapping.
pub const SYSTEM: u64 = 0x1_0000_0000;
const SYSTEM_PAGES: u64 = 0x1_0000;
/// Device `k`'s first BAR.
pub const BAR_BASE: u64 = 0x8000_0000;
/// Distance between two devices' BARs.
pub const BAR_STRIDE: u64 = 0x100_0000;
/// Device `k`'s 1 GiB BAR (`Bars::Huge`).
pub const HUGE_BAR: u64 = 0x40_0000_0000;
/// First guest address the slot picks use.
pub const GPA_BASE: u64 = 0x10_0000_0000;
/// Operations per input.
pub const MAX_OPS: usize = 96;
/// Unbind calls an `UnbindAll` (and the final sweep) makes at most.
const UNBIND_CALLS: usize = 40;
/// Rounds a relay drives at most (a bind of the largest report with every request retried
/// takes fewer).
const MAX_ROUNDS: usize = 40;

/// Every leaf number the dispatcher knows, and one of ours it does not.
pub const LEAVES: [u16; 38] = [
    abi::TDH_MEM_SEPT_RD,
    abi::TDH_MEM_TRACK,
    abi::TDH_SPDM_CREATE,
    abi::TDH_SPDM_DELETE,
    abi::TDH_DEVIF_CREATE,
    abi::TDH_DEVIF_REMOVE,
    abi::TDH_DEVIF_REQUEST,
    abi::TDH_DEVIF_RESPONSE,
    abi::TDH_MMIO_MAP,
    abi::TDH_MMIO_BLOCK,
    abi::TDH_MMIO_UNMAP,
    abi::TDH_MNG_CREATE,
    abi::TDH_MNG_VPFLUSHDONE,
    abi::TDH_PHYMEM_CACHE_WB,
    abi::TDH_MNG_KEY_FREEID,
    abi::TDH_PHYMEM_PAGE_RECLAIM,
    abi::TDH_PHYMEM_PAGE_WBINVD,
    abi::TSM_DEVIF_BIND,
    abi::TSM_DEVIF_UNBIND,
    abi::TSM_DEVIF_ERROR,
    abi::TSM_DEVIF_STATE,
    abi::TSM_MMIO_ZAP_CHECK,
    abi::TSM_DEVIF_CHECK,
    abi::TDH_IDE_STREAM_KM,
    abi::TDG_MMIO_ACCEPT,
    abi::TDG_DEVIF_REQUEST,
    0xF0FF,
    abi::TSM_SPDM_BARS,
    abi::TDG_DEVIF_RESPONSE,
    abi::TSM_DEVIF_SET_TD,
    abi::TDH_DMAR_ADD,
    abi::TDH_DMAR_BLOCK,
    abi::TDH_DMAR_READ,
    abi::TDH_DMAR_REMOVE,
    abi::TDH_IQ_INV_REQUEST,
    abi::TDH_IQ_INV_PROCESS,
    abi::TDG_DMAR_ACCEPT,
    abi::TDG_IQ_INV_REQUEST,
];

ops! {
    /// A TD operand.
    pub enum Td {
        /// Slot `slot % 34` (two past the table: unknown handles).
        Slot { slot: u8 },
        /// The owner of TDI slot `tdi % 20` (slot 33 when it has none).
        OwnerOf { tdi: u8 },
        /// Any value.
        Raw { v: u64 },
    }
}

ops! {
    /// The BAR list of a device create.
    pub enum Bars {
        /// One 4 MiB BAR.
        One,
        /// 4 MiB and 64 KiB.
        Two,
        /// One 1 GiB BAR, 1 GiB aligned.
        Huge,
        /// A BAR over system memory (reserved).
        Reserved,
        /// A BAR over the parameter page (reserved).
        Params,
        /// A BAR over device `other % 4`'s first BAR.
        Overlap { other: u8 },
        /// A BAR whose base is not page aligned.
        Misaligned,
        /// A BAR of no pages.
        Empty,
        /// Seven BARs (one more than a device may have).
        TooMany,
        /// Any entry.
        Raw { base: u64, pages: u32, attr: u16 },
    }
}

ops! {
    /// What is wrong with the BAR list page.
    pub enum ListMut {
        /// Nothing.
        Fine,
        /// Its reserved field is set.
        Reserved,
        /// Its count is this.
        Count { count: u32 },
        /// RDX points past host memory.
        Outside,
        /// RDX is not page aligned.
        Misaligned,
    }
}

ops! {
    /// The interface report the device will send at the next bind (B0: the device's first
    /// BAR, P0 its pages).
    pub enum Report {
        /// Whatever it reports already.
        Keep,
        /// Every BAR, private.
        Bars,
        /// 2 MiB and 64 KiB private, one page shared (IS_NON_TEE_MEM).
        Split,
        /// A private subrange of the first BAR.
        Sub { start: u16, pages: u16 },
        /// The first BAR, shared.
        Shared,
        /// Past the end of the first BAR.
        Outside,
        /// Two overlapping ranges.
        Overlapping,
        /// 17 ranges (one more than a TDI may own).
        TooMany,
        /// No range.
        Empty,
        /// Device `other % 4`'s first BAR.
        OtherDevice { other: u8 },
        /// A first page that is not page aligned.
        Misaligned,
        /// Any range.
        Raw { first: u64, pages: u32, attr: u16 },
    }
}

ops! {
    /// A page-info operand for a map.
    pub enum GpaPick {
        /// Slot `i` of the leaf size ([`slot_gpa`]), with the level.
        Slot { i: u8 },
        /// Any page info.
        Raw { page_info: u64 },
    }
}

ops! {
    /// A host address for a map.
    pub enum HpaPick {
        /// Page `page` of owned range `range` of the TDI, aligned down to the leaf size.
        Owned { range: u8, page: u16 },
        /// Page `page` of device `dev % 4`'s first BAR, aligned down.
        Bar { dev: u8, page: u16 },
        /// Any value.
        Raw { v: u64 },
    }
}

ops! {
    /// The leaf a block, unmap, S-EPT read or accept names.
    pub enum At {
        /// Existing leaf `i` (modulo their number), with its own TD.
        Leaf { i: u8 },
        /// Slot `i` ([`slot_gpa`]) at level `level % 4`, with the op's TD.
        Slot { i: u8, level: u8 },
        /// Any page info, with the op's TD.
        Raw { page_info: u64 },
    }
}

ops! {
    /// The range a zap check names.
    pub enum Zap {
        /// Device `dev % 4`'s first BAR, 4 MiB.
        Bar { dev: u8 },
        /// Owned range `range` of TDI `tdi`.
        Owned { tdi: u8, range: u8 },
        /// Existing leaf `i`'s pages.
        Leaf { i: u8 },
        /// Any base and page count.
        Raw { hpa: u64, pages: u64 },
    }
}

ops! {
    /// What the host or the device does to an interface outside the firmware.
    pub enum DevAction {
        /// Misbehaviour `how % 7` (6: behave).
        Misbehave { how: u8 },
        /// Behave again.
        Behave,
        /// FLR, decode off, D3hot: a locked or running interface goes to ERROR.
        Disturb,
        /// Conventional reset: every interface unlocked.
        Reset,
    }
}

ops! {
    /// The leaf number of a raw call.
    pub enum LeafNum {
        /// `LEAVES[i % 38]`.
        Known { i: u8 },
        /// Any RAX.
        Any { v: u64 },
    }
}

ops! {
    /// What the host does with a request a leaf left in the request page.
    pub enum Relay {
        /// The device's own answers, round after round, until the operation ends.
        Drive,
        /// Nothing: the host abandons the request.
        Leave,
        /// `n % 4 + 1` rounds of the device's answers, then nothing.
        Rounds { n: u8 },
        /// One round with `answer`, then the device's answers to the end.
        Once { answer: Answer },
    }
}

ops! {
    /// How a TDH.DEVIF.RESPONSE hands its answer: RDX names the response page, whose DOE
    /// header gives the length.
    pub enum Rdx {
        /// The answer as it is (RDX page 0 when there is none).
        Exact,
        /// RDX page 0: no answer, whatever the page holds.
        Zero,
        /// The DOE header's length off by `d` dwords (wrapping in its 18 bits).
        Delta { d: i8 },
        /// The DOE header's length past the page.
        Past,
    }
}

ops! {
    /// RCX of a TDH.DMAR leaf: the `dmar_idx_t` of a TDI's PASID entry, or a bad one.
    pub enum Idx {
        /// The TDI's entry (PASID 0 on the IOMMU of its segment).
        Good,
        /// Another `dmar_lvl_e` level, or an undefined one (`1 + level % 7`).
        Level { level: u8 },
        /// Reserved bit `3 + bit % 9` set.
        Reserved { bit: u8 },
        /// PASID `pasid` (bits 31:12; 0 counts as 1).
        Pasid { pasid: u32 },
        /// The same requester on another IOMMU.
        OtherIommu,
        /// Any value.
        Raw { v: u64 },
    }
}

ops! {
    /// The entry qwords (R8..R14) of a TDH.DMAR.ADD.
    pub enum AddQwords {
        /// As the host must add it: qword 0 for the TD's S-EPT depth, qword 1, the rest 0.
        Good,
        /// SLPTPTR chosen: page `page` in qword 0 (a translation the host picked).
        Slptptr { page: u32 },
        /// DID chosen: domain `did` in qword 1 (0 counts as 1).
        Did { did: u16 },
        /// The present bit set.
        Present,
        /// AW of the other S-EPT depth.
        OtherAw,
        /// Qword `2 + q % 5` (R10..R14; qword 6 is R14) set to `v` (0 counts as 1).
        High { q: u8, v: u64 },
        /// Qwords 0 and 1 any values.
        Raw { q0: u64, q1: u64 },
    }
}

ops! {
    /// What is wrong with a TDG.DMAR.ACCEPT.
    pub enum AcceptMut {
        /// Nothing: RDX 0 (the L1 S-EPT, PASID 0), R8..R14 zero.
        Fine,
        /// R8 + `r % 7` (R8..R14) set to `v` (0 counts as 1).
        Reg { r: u8, v: u64 },
        /// RDX, the DMA target (vm_idx, PASID, reserved bits), set to `v` (0 counts as 1).
        Target { v: u64 },
    }
}

ops! {
    /// RCX `iommu_id` of a TDH.IQ leaf.
    pub enum Iommu {
        /// The IOMMU of the TDI's segment.
        Own,
        /// The next one (no TDI there).
        Other,
        /// Any value (bits 63:16 reserved).
        Raw { v: u64 },
    }
}

ops! {
    /// The invalidation a TDH.IQ.INV.REQUEST asks for (RDX, R8).
    pub enum InvKind {
        /// INV_REQ_PASIDTE of the TDI's PASID entry: R8 its RID, PASID 0.
        Pasid,
        /// INV_REQ_PASIDTE with R8 `r8` (reserved bits, a PASID, another RID).
        PasidRaw { r8: u64 },
        /// INV_REQ_IOTLB of `td`'s domain: R8 its TDR.
        Iotlb { td: Td },
        /// RDX `rdx` (another type, reserved bits).
        Type { rdx: u64 },
        /// INV_REQ_TD for `td`'s own request: R8 its TDR, RDX 47:32 `pool` (0 refused).
        Td { td: Td, pool: u16 },
    }
}

ops! {
    /// The page of descriptors of a TD's TDG.IQ.INV.REQUEST (written to the spare host page).
    pub enum TdDescs {
        /// `1 + n % 127` domain- or page-selective IOTLB descriptors (`page` picks each),
        /// then a wait when `wait` (its data `data`, its status word `status`).
        Good { n: u8, page: u8, wait: bool, data: u32, status: TdStatus },
        /// As `Good`, then qword `q % 4` of descriptor `at % n` set to `v`.
        Bad { n: u8, at: u8, q: u8, v: u64, status: TdStatus },
    }
}

ops! {
    /// The status address of a TD's wait descriptor.
    pub enum TdStatus {
        /// The 4-byte word `word % 1024` of host page `page % 6` (4 mod 8 for odd words).
        Word { page: u8, word: u16 },
        /// A page the firmware holds: TDR page `k % 4`.
        Tdr { k: u8 },
        /// Any value.
        Raw { v: u64 },
    }
}

ops! {
    /// The wait descriptor's qword 0 and qwords 2, 3 (R9, R11, R12) of a TDH.IQ.INV.REQUEST.
    pub enum WaitDesc {
        /// Type 5, SW, FN, status data `data`.
        Good { data: u32 },
        /// Type 5 and SW without FN.
        NoFence,
        /// Qword 0 any value.
        Raw { r9: u64 },
        /// A good qword 0, qword 2 (R11) or 3 (R12) set to `v` (0 counts as 1).
        High { r12: bool, v: u64 },
    }
}

ops! {
    /// The wait descriptor's status address (R10).
    pub enum StatusAddr {
        /// Word `word % 512` of host page `page % 6` (a read-only page is outside what the
        /// IOMMU may write).
        Page { page: u8, word: u16 },
        /// Host page `page % 6` plus `1 + off % 3` bytes.
        Misaligned { page: u8, off: u8 },
        /// Past host memory.
        Outside,
        /// A KeyID bit set (a private address).
        KeyId,
        /// Any value.
        Raw { v: u64 },
    }
}

ops! {
    /// One operation.
    pub enum Op {
        /// TDH.MNG.CREATE with a TDR page and an HKID no live TD holds.
        TdCreate,
        /// Linux's TD teardown: VPFLUSHDONE, CACHE.WB (START, RESUME while interrupted),
        /// KEY.FREEID, RECLAIM of the TDR, WBINVD of it (each a SEAMCALL the checks see).
        TdDestroy { td: Td },
        /// TDH.SPDM.CREATE for device `dev % 5` (4: a function of device 0) with a BAR list.
        DeviceCreate { dev: u8, bars: Bars, list: ListMut },
        /// TDH.SPDM.DELETE of device slot `dev % 6`.
        DeviceDelete { dev: u8 },
        /// TDH.DEVIF.CREATE on SPDM id `dev % 6`'s stream for interface
        /// `(3 + bus % 5):(func % 9)`, for the lowest TD (0 before the first), private pages
        /// pick `pages` ([`private_pages`]).
        DevifCreate { dev: u8, bus: u8, func: u8, pages: u8 },
        /// TDH.DEVIF.REMOVE of TDI slot `tdi % 20`.
        DevifRemove { tdi: u8 },
        /// The device is told its report, then TSM.DEVIF.BIND for `td` (after TSM.DEVIF.SET_TD
        /// to it when the TDI is for another TD), or with `r8` TDH.DEVIF.REQUEST
        /// LOCK_INTERFACE (the TDI's own TD), relayed.
        Bind { tdi: u8, td: Td, report: Report, r8: bool, relay: Relay },
        /// TDH.MMIO.MAP at level `level % 4`.
        Map { tdi: u8, td: Td, gpa: GpaPick, hpa: HpaPick, level: u8 },
        /// `count % 100` TDH.MMIO.MAPs of consecutive 4 KiB pages of the TDI's first range.
        MapRun { tdi: u8, count: u8, region: u8 },
        /// TDH.MMIO.BLOCK.
        Block { td: Td, at: At },
        /// TDH.MMIO.UNMAP.
        Unmap { td: Td, at: At },
        /// TDH.MEM.SEPT.RD.
        SeptRd { td: Td, at: At },
        /// TDH.MEM.TRACK.
        Track { td: Td },
        /// Hold the TD's TLB flushes, or complete them.
        HoldFlush { td: Td, hold: bool },
        /// One TSM.DEVIF.UNBIND, relayed.
        Unbind { tdi: u8, relay: Relay },
        /// TSM.DEVIF.UNBIND, its STOP relayed to the end, until it is done (at most 40 calls).
        UnbindAll { tdi: u8 },
        /// TSM.DEVIF.UNBIND with FORCE (RDX bit 0), or with reserved RDX bits `bits`.
        UnbindForce { tdi: u8, bits: u8 },
        /// TDH.IDE.STREAM.KM SETUP of device slot `dev % 6`'s stream (its ID is its SPDM id):
        /// the host's re-establishment of a cut stream.
        StreamSetup { dev: u8 },
        /// TSM.DEVIF.ERROR.
        DevError { tdi: u8 },
        /// TSM.DEVIF.CHECK, relayed.
        Check { tdi: u8, relay: Relay },
        /// TSM.DEVIF.STATE.
        State { tdi: u8 },
        /// TSM.MMIO.ZAP_CHECK.
        ZapCheck { zap: Zap },
        /// TDG.MMIO.ACCEPT from the TD.
        Accept { td: Td, at: At },
        /// The TD's start: TDG.DEVIF.REQUEST START (after TDG.DEVIF.RESPONSE, which reads an
        /// earlier outcome), the host's TDH.DEVIF.REQUEST `td_flag`, relayed, then
        /// TDG.DEVIF.RESPONSE.
        Start { td: Td, tdi: u8, relay: Relay },
        /// TDH.DEVIF.RESPONSE for TDI slot `tdi % 20` with `answer` to its last request (or,
        /// `from_page`, to whatever its request page holds now) in its response page.
        Respond { tdi: u8, answer: Answer, rdx: Rdx, from_page: bool },
        /// TDH.DEVIF.REQUEST with the code of the operation that waits (`td_flag` for the
        /// TD's start, and when nothing waits).
        Reread { tdi: u8 },
        /// Host page `page % 6` becomes read-only, or writable again.
        HostPage { page: u8, read_only: bool },
        /// The device or host acts on the TDI's interface.
        Device { tdi: u8, action: DevAction },
        /// Any SEAMCALL.
        Raw { leaf: LeafNum, rcx: u64, rdx: u64, r8: u64, r9: u64, r10: u64 },
        /// Any TDCALL from the TD.
        RawGuest { td: Td, leaf: LeafNum, rcx: u64 },
        /// TDH.DMAR.ADD of TDI slot `tdi % 20`'s PASID entry (RCX `idx`) for `td` (RDX), the
        /// entry qwords as `qw` says.
        DmarAdd { tdi: u8, td: Td, idx: Idx, qw: AddQwords },
        /// TDG.DMAR.ACCEPT of TDI slot `tdi % 20` (RCX its function ID) from `td`.
        DmarAccept { tdi: u8, td: Td, m: AcceptMut },
        /// TDH.DMAR.BLOCK of TDI slot `tdi % 20`'s entry.
        DmarBlock { tdi: u8, idx: Idx },
        /// TDH.DMAR.READ of TDI slot `tdi % 20`'s entry (read only).
        DmarRead { tdi: u8, idx: Idx },
        /// TDH.DMAR.REMOVE of TDI slot `tdi % 20`'s entry.
        DmarRemove { tdi: u8, idx: Idx },
        /// TDH.IQ.INV.REQUEST on the IOMMU of TDI slot `tdi % 20`.
        IqRequest { tdi: u8, iommu: Iommu, kind: InvKind, wait: WaitDesc, status: StatusAddr },
        /// TDH.IQ.INV.PROCESS of an IOMMU (that of TDI slot `tdi % 20` for `Own`).
        IqProcess { tdi: u8, iommu: Iommu },
        /// TDG.IQ.INV.REQUEST from `td`: `descs` written to the spare host page, RCX their
        /// count (`count` 0), else `count - 1`; RDX the page (`at` added).
        TdInvRequest { td: Td, descs: TdDescs, count: u16, at: u16 },
    }
}

/// How deep a run got (the seed test checks its seeds reach what they are for).
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    /// Calls made.
    pub calls: usize,
    /// Calls refused.
    pub refused: usize,
    /// Refusals that changed something under an exemption.
    pub exempt: usize,
    /// Calls answered TDX_INTERRUPTED_RESUMABLE.
    pub resumable: usize,
    /// Calls answered TDX_SPDM_REQUEST.
    pub relays: usize,
    /// Answers refused as not the device's answer to the outstanding request.
    pub malformed: usize,
    /// Most leaves in the S-EPT at once.
    pub max_leaves: usize,
    /// Whether some TDI was bound, running, in ERROR, mid-unbind; an unbind finished.
    pub locked: bool,
    /// See `locked`.
    pub run: bool,
    /// See `locked`.
    pub error: bool,
    /// See `locked`.
    pub unbinding: bool,
    /// A bound TDI's unbind finished.
    pub unbound: bool,
    /// Some TDI's DMA reached a TD's private memory.
    pub dma_private: bool,
    /// A TDI whose DMA had reached private memory was unbound.
    pub dma_unbound: bool,
}

/// Everything a refusal must leave as it was: the core's record tables with the S-EPT's
/// bookkeeping, the pool's page bytes (kept apart so that their buffer is reused: a fresh
/// 160 KiB copy per call costs more in page faults than the call itself), the message-page
/// table and host memory; and the device model's TDISP states.
#[derive(Debug, Clone, PartialEq)]
struct Image {
    core: Snapshot<SeptBookkeeping>,
    pages: Vec<Page>,
    /// Every leaf, by host address (what an exempt refusal is checked on).
    leaves: Vec<tsm_core::Leaf>,
    /// Every PASID entry of the trusted IOMMU (also in `core`'s bookkeeping, which keeps it
    /// private; the DMA oracle reads it here).
    dmar: Vec<DmarEntry>,
    tdisp: Vec<(u32, TdispState)>,
    messages: Vec<Option<DevifEntry>>,
    host: Vec<u8>,
    /// Every SPDM id's record.
    spdm: Vec<Option<SpdmEntry>>,
}

/// The PASID entries of `Image` as the DMA oracle reads them, with the firmware whose S-EPT
/// roots they must name.
struct PasidEntries<'a, 'm> {
    after: &'a Image,
    fw: &'a TdxModule<'m, ModelSession>,
}

impl PasidEntries<'_, '_> {
    /// TD `g`'s S-EPT root, if it has one.
    fn root(&self, g: GuestId) -> Option<u64> {
        self.fw.with_table(|tb| tb.root_phys(g)).ok().flatten()
    }
}

impl common::DmaTable for PasidEntries<'_, '_> {
    type Entry = DmarEntry;
    const ENTRY: &'static str = "PASID entry";
    const GUEST: &'static str = "TD";

    fn entries(&self) -> &[DmarEntry] {
        &self.after.dmar
    }

    fn is_for(e: &DmarEntry, rec: &tsm_core::registry::Tdi) -> bool {
        e.rid == rec.iface.requester_id()
    }

    fn guest(e: &DmarEntry) -> GuestId {
        e.guest
    }

    /// The TD's, present, with SLPTPTR the TD's S-EPT root.
    fn translates(&self, e: &DmarEntry, g: GuestId) -> bool {
        e.guest == g
            && e.te.present()
            && self.root(g).is_some_and(|r| r != 0 && e.te.slptptr() == r)
    }

    fn read_of(&self, g: GuestId) -> String {
        format!("S-EPT root {:x?}", self.root(g))
    }
}

/// The host's memory as the dispatcher reaches it: `HOST_PAGES` pages at [`HOST`], each of
/// which may be read-only (a write or a write probe touching it is outside host memory).
struct Host<'b> {
    bytes: &'b [Cell<u8>],
    read_only: u8,
}

impl Host<'_> {
    /// Whether `[hpa, hpa + len)` lies in the TDR or SPDM metadata pages.
    fn in_tdrs(hpa: u64, len: usize) -> bool {
        // The SPDM metadata pages, the IDE stream metadata pages and the TDIs' private pages.
        let end = devif_page(DEVIF_TRIPLES, 0);
        hpa >= TDR_BASE
            && u64::try_from(len).is_ok_and(|l| hpa.checked_add(l).is_some_and(|e| e <= end))
    }

    fn cells(&self, hpa: u64, len: usize, write: bool) -> Result<&[Cell<u8>], HostFault> {
        let start = hpa
            .checked_sub(HOST)
            .and_then(|o| usize::try_from(o).ok())
            .ok_or(HostFault::OutsideHostMemory)?;
        let end = start.checked_add(len).ok_or(HostFault::OutsideHostMemory)?;
        let cells = self
            .bytes
            .get(start..end)
            .ok_or(HostFault::OutsideHostMemory)?;
        if write && len > 0 {
            let first = start / MESSAGE_PAGE_BYTES;
            let last = (end - 1) / MESSAGE_PAGE_BYTES;
            if (first..=last).any(|p| self.read_only & (1 << p) != 0) {
                return Err(HostFault::OutsideHostMemory);
            }
        }
        Ok(cells)
    }
}

impl HostMemory for Host<'_> {
    fn read(&self, hpa: u64, out: &mut [u8]) -> Result<(), HostFault> {
        let n = out.len();
        if Self::in_tdrs(hpa, n) {
            out.fill(0);
            return Ok(());
        }
        for (o, c) in out.iter_mut().zip(self.cells(hpa, n, false)?) {
            *o = c.get();
        }
        Ok(())
    }

    fn probe_read(&self, hpa: u64, len: usize) -> Result<(), HostFault> {
        if Self::in_tdrs(hpa, len) {
            return Ok(());
        }
        self.cells(hpa, len, false).map(drop)
    }

    fn probe_write(&self, hpa: u64, len: usize) -> Result<(), HostFault> {
        self.cells(hpa, len, true).map(drop)
    }

    fn write(&self, hpa: u64, src: &[u8]) -> Result<(), HostFault> {
        for (c, &b) in self.cells(hpa, src.len(), true)?.iter().zip(src) {
            c.set(b);
        }
        Ok(())
    }
}

/// What the host handed TDH.DEVIF.RESPONSE, for the answer oracle.
#[derive(Debug, Clone)]
struct Handed {
    bytes: Option<Vec<u8>>,
    /// The device's answer, produced just before the call.
    fresh: bool,
}

struct World<'m> {
    fw: TdxModule<'m, ModelSession>,
    host: Vec<u8>,
    read_only: u8,
    device: ModelDevice,
    answers: Answers,
    /// Each TDI slot's last request, as the host copied it from the request page.
    requests: Vec<Option<Vec<u8>>>,
    /// The answer of the TDH.DEVIF.RESPONSE being made.
    handed: Option<Handed>,
    stats: Stats,
    /// The images taken around each call, reused.
    images: Option<Box<(Image, Image)>>,
    /// Which TDI slots' DMA reached private memory since their last bind.
    reached: Vec<bool>,
    /// The status words (address, data) of the TDs' accepted IOTLB requests
    /// (TDG.IQ.INV.REQUEST): the firmware may write each once, with exactly its data, when
    /// the request ends.
    td_status: Vec<(u64, u32)>,
}

fn tdi_slot(t: u8) -> u64 {
    u64::from(t % 20)
}

fn level_size(level: u64) -> PageSize {
    PageSize::from_tdx_level(level).unwrap_or(PageSize::Size4K)
}

fn bar_of(k: u64) -> u64 {
    BAR_BASE + (k % 4) * BAR_STRIDE
}

fn page_info(gpa: u64, level: u64) -> u64 {
    gpa | level
}

/// Guest address slot `i` at `level`: 1 GiB leaves from `GPA_BASE`, 2 MiB leaves in its first
/// GiB, 4 KiB leaves from 2 GiB above it (so small slots of different sizes do not collide).
fn slot_gpa(i: u8, level: u64) -> u64 {
    let i = u64::from(i);
    match level {
        0 => GPA_BASE + 0x8000_0000 + i * 0x1000,
        1 => GPA_BASE + i * 0x20_0000,
        _ => GPA_BASE + i * 0x4000_0000,
    }
}

/// R8, R9 and R10 of a TDH.DEVIF.CREATE by `k`: a free triple (mostly), one page twice, a
/// TDR page, another TDI's page, an SPDM metadata page, a misaligned page, a page past host
/// memory, a page past 2^52. `free` is the first triple no TDI holds, `held` a page one
/// holds (a free one when none does).
pub fn private_pages(k: u8, free: (u64, u64, u64), held: u64) -> (u64, u64, u64) {
    let (a, b, c) = free;
    match k % 12 {
        0..=3 => free,
        4 => (a, a, c),
        5 => (a, b, b),
        6 => (tdr_page(0), b, c),
        7 => (a, held, c),
        8 => (a, b, spdm_page(0)),
        9 => (a + 8, b, c),
        10 => (a, b, HOST + HOST_PAGES as u64 * PAGE),
        _ => (1 << 52, b, c),
    }
}

fn is_relay(rax: u64) -> bool {
    rax == TDX_SPDM_REQUEST
}

/// Runs one input; panics when a check fails.
pub fn run(data: &[u8]) -> Stats {
    let mut u = Unstructured::new(data);
    let five = bool::arbitrary(&mut u).unwrap_or(false);
    let mut mem = vec![Page::ZERO; POOL_PAGES];
    let pool = FramePool::new(&mut mem, POOL_BASE).unwrap_or_else(|| fail("pool"));
    let levels = if five {
        SeptLevels::Five
    } else {
        SeptLevels::Four
    };
    let reserved = ReservedMemory::from_ranges(&[
        MmioRange::from_raw(POOL_BASE, POOL_PAGES as u64).unwrap_or_else(|e| fail(e)),
        MmioRange::from_raw(HOST, HOST_PAGES as u64).unwrap_or_else(|e| fail(e)),
        MmioRange::from_raw(SYSTEM, SYSTEM_PAGES).unwrap_or_else(|e| fail(e)),
    ])
    .unwrap_or_else(|e| fail(e));
    let mut w = World {
        fw: TdxModule::with_reserved(Sept::new(pool, levels), ModelSession::model(), reserved),
        host: vec![0; HOST_PAGES * MESSAGE_PAGE_BYTES],
        read_only: 0,
        device: ModelDevice::model(),
        answers: Answers::default(),
        requests: vec![None; MAX_TDIS],
        handed: None,
        stats: Stats::default(),
        images: None,
        td_status: Vec::new(),
        reached: vec![false; MAX_TDIS],
    };
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        let Ok(op) = Op::arbitrary(&mut u) else { break };
        w.apply(op);
    }
    w.finish();
    w.stats
}

impl World<'_> {
    /// Takes an image into `out`, reusing its buffers.
    fn image(&self, out: &mut Option<Image>) {
        let (mut pages, mut leaves, mut host, mut dmar) = out
            .take()
            .map(|i| (i.pages, i.leaves, i.host, i.dmar))
            .unwrap_or_default();
        pages.clear();
        dmar.clear();
        let core = self
            .fw
            .snapshot_with(|t| {
                pages.extend(t.pool().pages().copied());
                leaves = common::leaves(t);
                dmar.extend(t.dmar().entries().copied());
                t.bookkeeping()
            })
            .unwrap_or_else(|e| fail(format!("snapshot: {e:?}")));
        let messages = (0..MAX_TDIS)
            .map(|t| {
                self.fw
                    .devif(TdiId::from_slot(t as u16))
                    .unwrap_or_else(|e| fail(format!("TDI records: {e:?}")))
            })
            .collect();
        host.clear();
        host.extend_from_slice(&self.host);
        let spdm = (0..MAX_DEVICES as u64)
            .map(|id| {
                self.fw
                    .spdm(id)
                    .unwrap_or_else(|e| fail(format!("SPDM ids: {e:?}")))
            })
            .collect();
        *out = Some(Image {
            spdm,
            core,
            pages,
            leaves,
            dmar,
            tdisp: self.device.dsm().tdisp_states().to_vec(),
            messages,
            host,
        });
    }

    fn td(&self, td: Td) -> u64 {
        match td {
            // TDR pages 0-32 and one past them (never a TD).
            Td::Slot { slot } => tdr_page(u64::from(slot % 34)),
            Td::OwnerOf { tdi } => self
                .fw
                .tdi(TdiId::from_slot(tdi_slot(tdi) as u16))
                .ok()
                .and_then(|t| t.state.owner())
                .map_or(tdr_page(33), |g| self.tdr(g)),
            Td::Raw { v } => v,
        }
    }

    /// How the host names `g`: its TDR page (one past the TDR pages for a TD the firmware
    /// does not know by one).
    fn tdr(&self, g: GuestId) -> u64 {
        match self.fw.tdr_of(g) {
            Ok(Some(e)) => e.tdr.as_u64(),
            _ => tdr_page(33),
        }
    }

    /// How the host names TDI slot `slot`: its function ID. A slot without a TDI gets a
    /// function no TDI has (bus 2; `TDX_DEVIFMT_NOT_PRESENT`) or, for odd slots, the slot
    /// with bit 32 set (a malformed `function_id_reg_t`).
    fn fid(&self, slot: u64) -> u64 {
        match self.fw.devif(TdiId::from_slot(slot as u16)) {
            Ok(Some(e)) => u64::from(e.function),
            _ if slot.is_multiple_of(2) => 0x0200 | slot,
            _ => slot | 1 << 32,
        }
    }

    /// The requester ID of TDI slot `slot` (3:0.0 for a slot without a TDI).
    fn rid_of(&self, slot: u64) -> RequesterId {
        self.fw
            .tdi(TdiId::from_slot(slot as u16))
            .map(|t| t.iface.requester_id())
            .unwrap_or_else(|_| RequesterId::try_new(0, 3, 0, 0).unwrap_or_else(|e| fail(e)))
    }

    /// The TDR of the TD TDI slot `slot` is for.
    fn td_of_slot(&self, slot: u64) -> Option<u64> {
        self.fw
            .devif(TdiId::from_slot(slot as u16))
            .ok()
            .flatten()
            .and_then(|e| e.tdr)
            .map(|t| t.as_u64())
    }

    fn leaves(&self) -> Vec<tsm_core::Leaf> {
        self.fw
            .with_table(|t| common::leaves(t))
            .unwrap_or_default()
    }

    /// The guest and page info `at` names (`td` unless it is an existing leaf).
    fn at(&self, td: u64, at: At) -> (u64, u64) {
        match at {
            At::Leaf { i } => {
                let leaves = self.leaves();
                match leaves.get(usize::from(i) % leaves.len().max(1)) {
                    Some(l) => (
                        self.tdr(l.guest),
                        page_info(l.gpa.as_u64(), u64::from(l.size.tdx_level())),
                    ),
                    None => (td, GPA_BASE),
                }
            }
            At::Slot { i, level } => {
                let level = u64::from(level % 4);
                (td, page_info(slot_gpa(i, level), level))
            }
            At::Raw { page_info } => (td, page_info),
        }
    }

    fn seamcall(&mut self, rax: u64, regs: SeamRegs) -> SeamRegs {
        self.dispatch(None, SeamRegs { rax, ..regs })
    }

    fn tdcall(&mut self, td: u64, rax: u64, regs: SeamRegs) -> SeamRegs {
        self.dispatch(Some(td), SeamRegs { rax, ..regs })
    }

    /// One SEAMCALL (`tdr` none) or one TDCALL from the TD whose TDR page is `tdr`.
    fn dispatch(&mut self, tdr: Option<u64>, regs: SeamRegs) -> SeamRegs {
        // The calling TD for the checks (a TDR naming none: a slot no TD has).
        let guest = tdr.map(|t| {
            self.fw
                .td_of(t)
                .ok()
                .flatten()
                .unwrap_or(GuestId::from_slot(u16::MAX))
        });
        let mut images = self.images.take().map(|b| {
            let (a, b) = *b;
            (Some(a), Some(b))
        });
        let (before, after) = images.get_or_insert((None, None));
        self.image(before);
        let mut out = regs;
        {
            let host = Host {
                bytes: Cell::from_mut(&mut self.host[..]).as_slice_of_cells(),
                read_only: self.read_only,
            };
            let d = Dispatcher::new(&self.fw, host);
            match tdr {
                None => d.seamcall(&mut out),
                Some(t) => d.tdcall(t, &mut out),
            }
        }
        self.image(after);
        let (Some(before), Some(after)) = (before.take(), after.take()) else {
            fail("images");
        };
        self.check(guest, &regs, &out, &before, &after);
        self.images = Some(Box::new((before, after)));
        self.handed = None;
        out
    }

    /// Every check after one call.
    fn check(
        &mut self,
        guest: Option<GuestId>,
        regs: &SeamRegs,
        out: &SeamRegs,
        before: &Image,
        after: &Image,
    ) {
        let status = out.rax;
        let what = match guest {
            None => format!("SEAMCALL {regs:x?} -> {status:#x}"),
            Some(g) => format!("TDCALL from {g:?} {regs:x?} -> {status:#x}"),
        };
        let leaf = u16::try_from(regs.rax).ok();
        self.stats.calls += 1;
        common::trace(&what);
        common::invariants(&self.fw, &what);
        if let Err(e) = registry_consistent(&after.core) {
            fail(format!("records disagree after {what}: {e}"));
        }
        if before.tdisp != after.tdisp {
            fail(format!("the firmware changed the device: {what}"));
        }
        let is = |l: u16| leaf == Some(l);
        let host = guest.is_none();
        let resumable_leaf = host
            && (is(abi::TSM_DEVIF_UNBIND)
                || is(abi::TSM_DEVIF_ERROR)
                || is(abi::TSM_DEVIF_CHECK)
                || is(abi::TDH_MEM_TRACK)
                || is(abi::TDH_PHYMEM_CACHE_WB)
                || is(abi::TDH_DEVIF_RESPONSE)
                || is(abi::TDH_DEVIF_REQUEST));
        let progress = status == TDX_INTERRUPTED_RESUMABLE;
        if progress && !resumable_leaf {
            fail(format!(
                "only unbind, error, check, TRACK, CACHE.WB and a device answer resume: {what}"
            ));
        }
        if progress {
            self.stats.resumable += 1;
        }
        let relay = is_relay(status);
        let tdi = tdi_named(regs.rcx, before, after);
        let call = match (host, leaf, tdi) {
            (true, Some(abi::TSM_DEVIF_BIND), Some(t)) => Call::Bind(t),
            (true, Some(abi::TSM_DEVIF_UNBIND), Some(t)) if regs.rdx == 0 => Call::Unbind(t),
            (true, Some(abi::TSM_DEVIF_UNBIND), Some(t)) if regs.rdx == abi::UNBIND_FLAG_FORCE => {
                Call::Force(t)
            }
            (true, Some(abi::TSM_DEVIF_CHECK), Some(t)) => Call::Check(t),
            (true, Some(abi::TDH_DEVIF_RESPONSE), Some(t)) => Call::Respond(t),
            // TDH.DEVIF.REQUEST starts (or writes again) the operation its code names.
            (true, Some(abi::TDH_DEVIF_REQUEST), Some(t)) => match regs.rdx {
                0x83 | 0x183 => Call::Bind(t),
                0x87 => Call::Unbind(t),
                0x85 => Call::Check(t),
                _ => Call::Request(t),
            },
            (false, Some(abi::TDG_DEVIF_REQUEST), Some(t)) => Call::Start(t),
            _ => Call::Other,
        };
        if relay {
            self.stats.relays += 1;
            if call.tdi().is_none() || matches!(call, Call::Force(_)) {
                fail(format!(
                    "only bind, unbind, check, start, a device answer and TDH.DEVIF.REQUEST relay: {what}"
                ));
            }
        }
        let record = |img: &Image| {
            tdi.and_then(|t| img.core.tdis.get(usize::from(t.slot())).cloned().flatten())
        };
        let waiting = record(before).and_then(|r| r.exchange).map(|e| e.op);
        let refused = status != TDX_SUCCESS && !progress && !relay;
        let read_only = host
            && (is(abi::TDH_MEM_SEPT_RD)
                || is(abi::TSM_DEVIF_STATE)
                || is(abi::TSM_MMIO_ZAP_CHECK)
                || is(dmar::TDH_DMAR_READ)
                || (status == TDX_SUCCESS && dmar_noop(leaf, regs, before)));
        let decoded = leaf.and_then(|l| st::decode(status, &abi::operands(l)));
        let err = decoded.and_then(Result::err);
        if refused {
            self.stats.refused += 1;
            check_registers(regs, out, &what);
        }
        // Host memory: written only by a relay, and only in the request page R8 named.
        let window = match relay {
            true if (HOST..HOST + HOST_PAGES as u64 * PAGE).contains(&regs.r8) => {
                let start = (regs.r8 - HOST) as usize;
                Some(start..start + MESSAGE_PAGE_BYTES)
            }
            _ => None,
        };
        // And the status word of a TD's own IOTLB request, which PROCESS, REMOVE and the
        // leaves that drive an unbind may end, when not refused: written once, 4 bytes at the
        // address an accepted request named, exactly its data.
        let ends_td_requests = host
            && !refused
            && (is(dmar::TDH_IQ_INV_PROCESS)
                || is(dmar::TDH_DMAR_REMOVE)
                || is(abi::TSM_DEVIF_UNBIND)
                || is(abi::TDH_DEVIF_REQUEST)
                || is(abi::TDH_DEVIF_RESPONSE));
        let word_at = |a: u64| {
            a.checked_sub(HOST)
                .and_then(|o| usize::try_from(o).ok())
                .filter(|&o| o + 4 <= after.host.len())
        };
        let written: Vec<usize> = if ends_td_requests {
            self.td_status
                .iter()
                .enumerate()
                .filter(|&(_, &(a, data))| {
                    word_at(a).is_some_and(|o| {
                        before.host[o..o + 4] != after.host[o..o + 4]
                            && after.host[o..o + 4] == data.to_le_bytes()
                    })
                })
                .map(|(k, _)| k)
                .collect()
        } else {
            Vec::new()
        };
        let td_word = |i: usize| {
            written.iter().any(|&k| {
                self.td_status
                    .get(k)
                    .and_then(|&(a, _)| word_at(a))
                    .is_some_and(|o| (o..o + 4).contains(&i))
            })
        };
        let outside = |i: &usize| !window.as_ref().is_some_and(|w| w.contains(i)) && !td_word(*i);
        if let Some(i) = (0..before.host.len().min(after.host.len()))
            .filter(outside)
            .find(|&i| before.host[i] != after.host[i])
        {
            fail(format!(
                "{what} wrote host memory at {:#x}",
                HOST + i as u64
            ));
        }
        // A TD's accepted request: its wait's status word may be written later (the last
        // descriptor, read from the page as the call found it).
        if !host && is(dmar::TDG_IQ_INV_REQUEST) && status == TDX_SUCCESS {
            let last = regs
                .rdx
                .checked_sub(HOST)
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| o.checked_add(usize::try_from(regs.rcx).ok()?.checked_sub(1)? * 32));
            let q = |k: usize| {
                last.and_then(|o| before.host.get(o + 8 * k..o + 8 * k + 8))
                    .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
            };
            if let (Some(q0), Some(q1)) = (q(0), q(1))
                && q0 & 0xf == dmar::WAIT_DESC_TYPE
            {
                self.td_status.push((q1, (q0 >> 32) as u32));
            }
        }
        // A word written is that request's one write: a later change there needs a new request.
        for k in written.into_iter().rev() {
            self.td_status.remove(k);
        }
        if refused || relay || read_only {
            let exempt = if refused {
                exemption(call, Err(err), waiting)
            } else if relay && !read_only {
                exemption(call, Ok(Completion::Relay(0)), waiting)
            } else {
                Exempt::Nothing
            };
            if let Err(e) = core_diff(&before.core, &after.core, exempt) {
                fail(format!("{what} ({err:?}) changed state: {e}"));
            }
            if !exempt.touches_table() {
                if before.pages != after.pages || before.core.table() != after.core.table() {
                    fail(format!("{what} ({err:?}) changed the S-EPT"));
                }
            } else if let Err(e) = exempt_table(before, after, exempt) {
                fail(format!("{what} ({err:?}) changed the S-EPT: {e}"));
            }
            // The TD's request state is the one thing a refused answer or the TD's read of
            // its outcome may change (the TD's start ended, or its outcome was read).
            let ends_td_request = is(abi::TDH_DEVIF_RESPONSE) || is(abi::TDG_DEVIF_RESPONSE);
            let records = |img: &Image| -> Vec<Option<DevifEntry>> {
                img.messages
                    .iter()
                    .map(|e| {
                        e.map(|mut e| {
                            if ends_td_request {
                                e.td_request = TdRequest::Available;
                            }
                            e
                        })
                    })
                    .collect()
            };
            if records(before) != records(after) {
                fail(format!("{what} changed the TDI records"));
            }
            if before.spdm != after.spdm {
                fail(format!("{what} ({err:?}) changed the SPDM ids"));
            }
            if exempt != Exempt::Nothing && refused && before.core != after.core {
                self.stats.exempt += 1;
            }
        }
        if relay {
            self.take_request(tdi, regs, out, after, &what);
        }
        if !host && is(abi::TDG_DEVIF_REQUEST) && status == TDX_SUCCESS {
            let start = tdi
                .and_then(|t| {
                    after
                        .core
                        .tdis
                        .get(usize::from(t.slot()))
                        .cloned()
                        .flatten()
                })
                .and_then(|r| r.exchange)
                .map(|e| e.op);
            if !matches!(start, Some(DeviceOp::Start { .. })) {
                fail(format!("the TD's start queued nothing: {what}"));
            }
        }
        if let Call::Respond(_) = call {
            self.answer_oracle(record(before), decoded, &what);
            if let Err(e) = crate::exempt::ended(waiting, err, record(after).as_ref()) {
                fail(format!("{e}: {what}"));
            }
        }
        self.oracles(guest, leaf, regs, out, before, after, waiting, &what);
        self.dma_oracle(after, &what);
        // Every pool page in exactly one place (a tree, a chain of retired S-EPT pages waiting
        // for a flush, the free list), and every retired page free to a walker.
        if let Ok(Err(e)) = self.fw.with_table(|t| t.audit_pages()) {
            fail(format!("table pool: {e} after {what}"));
        }
        self.record(after);
    }

    /// Trusted DMA after every call ([`common::dma_oracle`]): a TDI's DMA reaches a TD's
    /// private memory only through the PASID entry of its requester ID, the TD's, present, with
    /// SLPTPTR the TD's S-EPT root.
    fn dma_oracle(&mut self, after: &Image, what: &str) {
        let fw = &self.fw;
        let entries = PasidEntries { after, fw };
        let reach = |t| fw.tsm().dma_reach(t);
        if common::dma_oracle(&after.core, &entries, reach, &mut self.reached, what) {
            self.stats.dma_private = true;
        }
    }

    /// A relay wrote RCX only: `devif_req_out_t`, the outstanding request's code and length;
    /// the request page R8 named holds a DOE object of that length, zeros to the next word,
    /// that the device opens as a request of the TDI's outstanding exchange. The host copies
    /// it out.
    fn take_request(
        &mut self,
        tdi: Option<TdiId>,
        regs: &SeamRegs,
        out: &SeamRegs,
        after: &Image,
        what: &str,
    ) {
        let kept = |a: &SeamRegs| (a.rdx, a.r8, a.r9, a.r10, a.r11, a.r12, a.r13);
        if kept(regs) != kept(out) {
            fail(format!("a relay wrote registers but RCX: {what}: {out:x?}"));
        }
        let Some(t) = tdi else {
            fail("relay without a TDI")
        };
        let rec = after
            .core
            .tdis
            .get(usize::from(t.slot()))
            .cloned()
            .flatten()
            .unwrap_or_else(|| fail(format!("relay for no TDI: {what}")));
        let ex = rec
            .exchange
            .unwrap_or_else(|| fail(format!("relay with nothing outstanding: {what}")));
        if after.messages[usize::from(t.slot())].is_none() {
            fail(format!("relay for a TDI without a record: {what}"));
        }
        if !(HOST..HOST + HOST_PAGES as u64 * PAGE).contains(&regs.r8) {
            fail(format!("relay into a page outside host memory: {what}"));
        }
        let at = (regs.r8 - HOST) as usize;
        if out.rcx & 0xff != u64::from(ex.op.request_code()) || out.rcx >> 24 != 0 {
            fail(format!(
                "RCX {:#x} is not the outstanding request: {what}",
                out.rcx
            ));
        }
        let n = usize::try_from((out.rcx >> 8) & 0xffff).unwrap_or(usize::MAX);
        let bytes = &self.host[at..at + MESSAGE_PAGE_BYTES];
        let dwords = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) & ((1 << 18) - 1);
        if n > tsm_core::MAX_RELAY_BYTES || dwords as usize * 4 != n {
            fail(format!("RCX {n} is not the request's DOE length: {what}"));
        }
        if bytes[n..n.next_multiple_of(8)].iter().any(|b| *b != 0) {
            fail(format!("the request is not zero padded to a word: {what}"));
        }
        let request = bytes[..n].to_vec();
        if let Err(e) = check_request(&request, fid_of(rec.iface), ex.seq) {
            fail(format!("{e}: {what}"));
        }
        self.requests[usize::from(t.slot())] = Some(request);
    }

    /// The answer handed to TDH.DEVIF.RESPONSE opens exactly when the device produced it as
    /// the answer to the TDI's outstanding exchange: refused as `RelayMalformed` otherwise,
    /// never refused so when it is.
    fn answer_oracle(
        &mut self,
        before: Option<tsm_core::registry::Tdi>,
        decoded: Option<Result<Completion, Error>>,
        what: &str,
    ) {
        let Some(Handed {
            bytes: Some(bytes), ..
        }) = self.handed.clone()
        else {
            return;
        };
        let Some(rec) = before else { return };
        let Some(ex) = rec.exchange else { return };
        let genuine = self.answers.opens_for(&bytes, fid_of(rec.iface), ex.seq);
        match decoded {
            Some(Err(Error::RelayMalformed)) => {
                self.stats.malformed += 1;
                if genuine {
                    fail(format!(
                        "the device's own answer refused as malformed: {what}"
                    ));
                }
            }
            Some(Err(
                Error::NoExchange
                | Error::InvalidHandle
                | Error::Busy(_)
                | Error::InvalidAddress
                | Error::Misaligned,
            ))
            | None => {}
            Some(other) => {
                if !genuine {
                    fail(format!(
                        "bytes the device never sent for this exchange went on ({other:?}): {what}"
                    ));
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn oracles(
        &mut self,
        guest: Option<GuestId>,
        leaf: Option<u16>,
        regs: &SeamRegs,
        out: &SeamRegs,
        before: &Image,
        after: &Image,
        waiting: Option<DeviceOp>,
        what: &str,
    ) {
        let ok = out.rax == TDX_SUCCESS;
        let named = tdi_named(regs.rcx, before, after);
        let tdi_rec = |img: &Image| {
            named.and_then(|t| img.core.tdis.get(usize::from(t.slot())).cloned().flatten())
        };
        let fresh = self.handed.as_ref().is_some_and(|h| h.fresh);
        match (guest, leaf) {
            (None, Some(abi::TDH_MMIO_BLOCK | abi::TDH_MMIO_UNMAP))
                if ok
                    && !crate::common::host_teardown_only(
                        &before.core,
                        &before.leaves,
                        &after.leaves,
                    ) =>
            {
                fail(format!(
                    "the host blocked or removed a bound TDI's leaf before its device was cut off: {what}"
                ));
            }
            (None, Some(abi::TSM_DEVIF_BIND)) if ok => {
                fail(format!("completed without the device: {what}"));
            }
            (None, Some(abi::TDH_DEVIF_REMOVE)) if ok => {
                if let Some(r) = tdi_rec(before) {
                    let rid = r.iface.requester_id();
                    if r.dma.is_some() || before.dmar.iter().any(|e| e.rid == rid) {
                        fail(format!(
                            "TDH.DEVIF.REMOVE succeeded while a DMA context remained: {what}"
                        ));
                    }
                }
            }
            (None, Some(abi::TSM_MMIO_ZAP_CHECK)) if ok => {
                let range = MmioRange::from_raw(regs.rcx, regs.rdx).unwrap_or_else(|e| {
                    fail(format!("zap allowed on a bad range ({e:?}): {what}"))
                });
                if let Some(o) = after.core.owners.overlapping_private(&range) {
                    fail(format!("zap allowed over {o:?}: {what}"));
                }
                if let Some(l) = after
                    .leaves
                    .iter()
                    .find(|l| l.host_range().is_ok_and(|r| r.overlaps(&range)))
                {
                    fail(format!("zap allowed over leaf {l:?}: {what}"));
                }
            }
            (None, Some(abi::TSM_DEVIF_UNBIND)) if ok => {
                self.unbind_done(regs, before, after, what)
            }
            (None, Some(abi::TDH_DEVIF_REQUEST)) if ok && regs.rdx == 0x87 => {
                self.unbind_done(regs, before, after, what)
            }
            (None, Some(abi::TDH_DEVIF_RESPONSE)) if ok || out.rax == TDX_INTERRUPTED_RESUMABLE => {
                let rec =
                    tdi_rec(after).unwrap_or_else(|| fail(format!("answered no TDI: {what}")));
                let device = self.device.dsm().state(rec.iface);
                match waiting {
                    None => fail(format!("an answer to nothing went on: {what}")),
                    Some(DeviceOp::Bind { guest, .. }) if ok => {
                        if rec.state != (TdiState::Locked { owner: guest }) {
                            fail(format!("bind done, TDI {:?}: {what}", rec.state));
                        }
                        if fresh && device != TdispState::ConfigLocked {
                            fail(format!("bind done, the device is {device:?}: {what}"));
                        }
                    }
                    Some(DeviceOp::Start { guest }) if ok => {
                        if rec.state != (TdiState::Run { owner: guest }) {
                            fail(format!("start done, TDI {:?}: {what}", rec.state));
                        }
                        if fresh && device != TdispState::Run {
                            fail(format!("start done, the device is {device:?}: {what}"));
                        }
                    }
                    Some(DeviceOp::Stop { .. }) if ok => {
                        self.unbind_done(regs, before, after, what);
                    }
                    Some(DeviceOp::Bind { .. } | DeviceOp::Start { .. }) => {
                        fail(format!("a bind or start resumed: {what}"));
                    }
                    Some(_) => {}
                }
            }
            (None, Some(abi::TDH_SPDM_CREATE)) if ok => {
                let id = usize::try_from(out.rcx).unwrap_or(usize::MAX);
                let (was, is) = (before.spdm.get(id), after.spdm.get(id));
                if !matches!((was, is), (Some(None), Some(Some(e))) if e.device.is_none()) {
                    fail(format!(
                        "create returned SPDM id {id}, not a new one: {what}"
                    ));
                }
                if before.core.devices != after.core.devices {
                    fail(format!("TDH.SPDM.CREATE made a core device: {what}"));
                }
            }
            (None, Some(abi::TSM_SPDM_BARS)) if ok => {
                let id = usize::try_from(regs.rcx).unwrap_or(usize::MAX);
                let dev = match after.spdm.get(id) {
                    Some(Some(e)) => e.device,
                    _ => None,
                };
                let Some(dev) = dev else {
                    fail(format!(
                        "TSM.SPDM.BARS left SPDM id {id} without a device: {what}"
                    ));
                };
                let slot = usize::from(dev.slot());
                let made = (
                    before.core.devices.get(slot).map(Option::is_some),
                    after.core.devices.get(slot).map(Option::is_some),
                );
                if made != (Some(false), Some(true)) {
                    fail(format!(
                        "TSM.SPDM.BARS named device {slot}, not a new one: {what}"
                    ));
                }
            }
            (None, Some(abi::TDH_MNG_CREATE | abi::TDH_DEVIF_CREATE)) if ok => {
                // Neither returns anything: TDH.MNG.CREATE's TD is the one its TDR now names,
                // TDH.DEVIF.CREATE's TDI the one its function ID now names.
                let slot = if leaf == Some(abi::TDH_MNG_CREATE) {
                    match self.fw.td_of(regs.rcx) {
                        Ok(Some(g)) => usize::from(g.slot()),
                        _ => fail(format!("TDH.MNG.CREATE named no TD: {what}")),
                    }
                } else {
                    tdi_named(regs.rcx >> 32, after, after)
                        .map_or(usize::MAX, |t| usize::from(t.slot()))
                };
                let (was, is) = match leaf {
                    Some(abi::TDH_MNG_CREATE) => (
                        before.core.guests.get(slot).map(Option::is_some),
                        after.core.guests.get(slot).map(Option::is_some),
                    ),
                    _ => (
                        before.core.tdis.get(slot).map(Option::is_some),
                        after.core.tdis.get(slot).map(Option::is_some),
                    ),
                };
                if (was, is) != (Some(false), Some(true)) {
                    fail(format!(
                        "create returned slot {slot}, not a new one: {what}"
                    ));
                }
                if leaf == Some(abi::TDH_DEVIF_CREATE) {
                    let pages = after
                        .messages
                        .get(slot)
                        .copied()
                        .flatten()
                        .map(|e| (e.pages.devifcs, e.pages.td_buffer, e.pages.vmm_buffer))
                        .map(|(a, b, c)| (a.as_u64(), b.as_u64(), c.as_u64()));
                    if pages != Some((regs.r8, regs.r9, regs.r10)) {
                        fail(format!("a TDI created without its private pages: {what}"));
                    }
                    if out.rcx != regs.rcx || out.rdx != regs.rdx || out.r8 != regs.r8 {
                        fail(format!("TDH.DEVIF.CREATE wrote registers: {what}"));
                    }
                }
            }
            _ => {}
        }
    }

    /// A finished unbind: the TDI unbound with nothing outstanding, owning nothing, with no
    /// leaf left in the ranges it owned.
    fn unbind_done(&mut self, regs: &SeamRegs, before: &Image, after: &Image, what: &str) {
        let Some(t) = tdi_named(regs.rcx, before, after) else {
            return;
        };
        let rec = |img: &Image| img.core.tdis.get(usize::from(t.slot())).cloned().flatten();
        if let Some(r) = rec(after)
            && (r.state != TdiState::Unbound || r.exchange.is_some())
        {
            fail(format!("unbind done, TDI {r:?}: {what}"));
        }
        if after.core.owners.iter().any(|o| o.tdi == t) {
            fail(format!("unbind done, the TDI still owns ranges: {what}"));
        }
        let was: Vec<MmioRange> = before
            .core
            .owners
            .iter()
            .filter(|o| o.tdi == t)
            .map(|o| o.range)
            .collect();
        if let Some(l) = after
            .leaves
            .iter()
            .find(|l| was.iter().any(|r| r.contains_page(l.hpa, l.size)))
        {
            fail(format!("unbind done, leaf {l:?} left: {what}"));
        }
        if let Some(r) = rec(before).or_else(|| rec(after)) {
            let rid = r.iface.requester_id();
            if rec(after).is_some_and(|a| a.dma.is_some())
                || after.dmar.iter().any(|e| e.rid == rid)
            {
                fail(format!("unbind done, a DMA context left: {what}"));
            }
        }
        if rec(before).is_some_and(|r| r.state.is_bound()) {
            self.stats.unbound = true;
        }
        if std::mem::take(&mut self.reached[usize::from(t.slot())]) {
            self.stats.dma_unbound = true;
        }
    }

    fn record(&mut self, after: &Image) {
        for t in after.core.tdis.iter().flatten() {
            match t.state {
                TdiState::Unbound => {}
                TdiState::Locked { .. } => self.stats.locked = true,
                TdiState::Run { .. } => self.stats.run = true,
                TdiState::Error { .. } => self.stats.error = true,
                TdiState::Unbinding { .. } => self.stats.unbinding = true,
            }
        }
        self.stats.max_leaves = self.stats.max_leaves.max(after.leaves.len());
    }

    fn set_report(&mut self, tdi: u8, report: Report) {
        let Ok(rec) = self.fw.tdi(TdiId::from_slot(tdi_slot(tdi) as u16)) else {
            return;
        };
        let bars = self
            .fw
            .device(rec.device)
            .map(|d| d.bars)
            .unwrap_or_default();
        let (b0, p0) = bars
            .first()
            .map_or((BAR_BASE, 1024), |b| (b.base().as_u64(), b.pages()));
        let p32 = |p: u64| u32::try_from(p).unwrap_or(u32::MAX);
        let private = |base: u64, pages: u64, id: u16| wire_range(base, p32(pages), 0, id);
        let wire: Vec<WireMmioRange> = match report {
            Report::Keep => return,
            Report::Bars => bars
                .iter()
                .zip(0u16..)
                .map(|(b, id)| private(b.base().as_u64(), b.pages(), id))
                .collect(),
            Report::Split => vec![
                private(b0, p0.min(512), 0),
                private(b0 + 0x20_0000, 16, 1),
                wire_range(b0 + 0x21_0000, 1, RANGE_ATTR_NON_TEE, 2),
            ],
            Report::Sub { start, pages } => {
                let s = u64::from(start) % p0.max(1);
                let n = 1 + u64::from(pages) % (p0 - s).max(1);
                vec![private(b0 + s * 0x1000, n, 0)]
            }
            Report::Shared => vec![wire_range(b0, p32(p0), RANGE_ATTR_NON_TEE, 0)],
            Report::Outside => vec![private(b0 + p0 * 0x1000, 16, 0)],
            Report::Overlapping => vec![private(b0, 16, 0), private(b0 + 0x8000, 16, 1)],
            Report::TooMany => (0..17u16)
                .map(|i| private(b0 + u64::from(i) * 0x1000, 1, i))
                .collect(),
            Report::Empty => Vec::new(),
            Report::OtherDevice { other } => vec![private(bar_of(u64::from(other)), 16, 0)],
            Report::Misaligned => vec![private(b0 + 0x800, 4, 0)],
            Report::Raw { first, pages, attr } => vec![wire_range(first, pages, attr, 0)],
        };
        self.device.link_mut().set_report(rec.iface, &wire);
    }

    /// Where the report of the TDI owning the page TD `tdr` maps at page info `info` puts
    /// that page: its host page plus the TDI's MMIO_REPORTING_OFFSET.
    fn reported(&self, tdr: u64, info: u64) -> Option<u64> {
        let tsm = self.fw.tsm();
        let g = self.fw.td_of(tdr).ok()??;
        let gpa = tsm_core::Gpa::try_new(info & 0x000f_ffff_ffff_f000).ok()?;
        let leaf = tsm.leaf(g, gpa).ok()??;
        let tdi = tsm.owner_of(leaf.hpa, leaf.size).ok()??;
        let offset = tsm.tdi(tdi).ok()?.mmio_offset?;
        let within = gpa.as_u64().checked_sub(leaf.gpa.as_u64())?;
        leaf.hpa.as_u64().checked_add(within)?.checked_add(offset)
    }

    fn owned(&self, tdi: u8) -> Vec<MmioRange> {
        self.fw
            .owned_ranges(TdiId::from_slot(tdi_slot(tdi) as u16))
            .map(|r| r.to_vec())
            .unwrap_or_default()
    }

    // ---- the relay ----------------------------------------------------------------------

    /// TDH.DEVIF.RESPONSE for TDI slot `t` with `answer` to its last request (`from_page`:
    /// to what the request page holds now) in the response page (RDX names it, `td_flag` when
    /// the TD's start waits; its DOE length as `rdx` says), R8 the request page.
    fn respond(&mut self, t: u64, answer: Answer, rdx: Rdx, from_page: bool) -> SeamRegs {
        let slot = t as usize % MAX_TDIS;
        let (req_at, resp_at) = (REQ_A, RESP_A);
        let request = if from_page || self.requests[slot].is_none() {
            let at = (req_at - HOST) as usize;
            let page = &self.host[at..at + MESSAGE_PAGE_BYTES];
            let dwords = u32::from_le_bytes([page[4], page[5], page[6], page[7]]) & ((1 << 18) - 1);
            let n = (dwords as usize * 4).min(tsm_core::MAX_RELAY_BYTES);
            page[..n].to_vec()
        } else {
            self.requests[slot].clone().unwrap_or_default()
        };
        let (bytes, fresh) = self.answers.make(answer, &mut self.device, &request);
        let len = bytes.as_ref().map_or(0, Vec::len);
        let at = (resp_at - HOST) as usize;
        if let Some(b) = &bytes {
            let n = b.len().min(MESSAGE_PAGE_BYTES);
            self.host[at..at + n].copy_from_slice(&b[..n]);
        }
        // The DOE length the firmware will read: the answer's own header, or as `rdx` sets it.
        let header = |host: &[u8]| {
            u32::from_le_bytes([host[at + 4], host[at + 5], host[at + 6], host[at + 7]])
        };
        let set_dwords = |host: &mut [u8], dwords: u32| {
            let dw1 = (header(host) & !((1 << 18) - 1)) | (dwords & ((1 << 18) - 1));
            host[at + 4..at + 8].copy_from_slice(&dw1.to_le_bytes());
        };
        let page = match (rdx, &bytes) {
            (Rdx::Zero, _) | (_, None) => 0,
            (_, Some(b)) if b.is_empty() => 0,
            (Rdx::Exact, _) => resp_at,
            (Rdx::Delta { d }, _) => {
                let dwords =
                    (header(&self.host) & ((1 << 18) - 1)).wrapping_add_signed(i32::from(d));
                set_dwords(&mut self.host, dwords);
                resp_at
            }
            (Rdx::Past, _) => {
                set_dwords(&mut self.host, (MESSAGE_PAGE_BYTES / 4 + 1) as u32);
                resp_at
            }
        };
        // The oracle knows what the firmware reads only when the header says the answer's
        // own length.
        let exact = page != 0
            && (8..=MESSAGE_PAGE_BYTES).contains(&len)
            && (header(&self.host) & ((1 << 18) - 1)) as usize * 4 == len;
        self.handed = Some(Handed {
            bytes: if exact { bytes } else { None },
            fresh: fresh && exact,
        });
        let start = self
            .fw
            .tdi(TdiId::from_slot(slot as u16))
            .ok()
            .and_then(|r| r.exchange)
            .is_some_and(|e| matches!(e.op, DeviceOp::Start { .. }));
        let regs = SeamRegs {
            rcx: self.fid(t),
            rdx: abi::devif_rsp_in(page, start),
            r8: req_at,
            ..SeamRegs::default()
        };
        self.seamcall(u64::from(abi::TDH_DEVIF_RESPONSE), regs)
    }

    /// Relays from `out` (a leaf's registers) for TDI slot `t` as `policy` says; the last
    /// registers.
    fn relay(&mut self, t: u64, mut out: SeamRegs, policy: Relay) -> SeamRegs {
        // An answer refused as not the device's leaves the request outstanding: relay on.
        let refused_answer = |o: &SeamRegs| {
            st::decode(o.rax, &abi::operands(abi::TDH_DEVIF_RESPONSE))
                == Some(Err(Error::RelayMalformed))
        };
        let mut waiting = is_relay(out.rax);
        for round in 0..MAX_ROUNDS {
            if !waiting {
                break;
            }
            let answer = match policy {
                Relay::Drive => Answer::Genuine,
                Relay::Leave => break,
                Relay::Rounds { n } if round > usize::from(n % 4) => break,
                Relay::Rounds { .. } => Answer::Genuine,
                Relay::Once { answer } if round == 0 => answer,
                Relay::Once { .. } => Answer::Genuine,
            };
            out = self.respond(t, answer, Rdx::Exact, false);
            waiting = is_relay(out.rax) || refused_answer(&out);
        }
        out
    }

    /// The link of SPDM id `id` (device `k`, function `rid`) as Linux's `tdx_link_connect`
    /// sets it up: TDH.SPDM.CONNECT (its GET_VERSION answered by the model device, the same
    /// registers re-issued), TDH.IDE.STREAM.CREATE, TDH.IDE.STREAM.KM SETUP. Issued outside
    /// the per-leaf checks (they judge the device leaves; the link has its own tests in
    /// platform-tdx), on writable pages: the spare page the config, the parameter page the
    /// dev_info, pair B the messages, and device `k`'s IDE metadata page after the SPDM ones.
    fn link(&mut self, id: u64, k: u64, rid: RequesterId) {
        let spare = (SPARE - HOST) as usize;
        self.host[spare..spare + MESSAGE_PAGE_BYTES].fill(0);
        self.host[spare..spare + 4]
            .copy_from_slice(&platform_tdx::link::SPDM_CAP_KEY_UPD.to_le_bytes());
        self.host[spare + 5] = 0xFF;
        let connect = SeamRegs {
            rax: u64::from(abi::TDH_SPDM_CONNECT),
            rcx: id,
            rdx: SPARE,
            r8: RESP_B,
            r9: REQ_B,
            r10: abi::hpa_array(PARAMS, 1),
            ..SeamRegs::default()
        };
        let routing = u64::from(rid.routing_id());
        // The window is the span of the device's BARs (two devices' streams never overlap).
        let bars = self
            .fw
            .spdm(id)
            .ok()
            .flatten()
            .and_then(|e| e.device)
            .and_then(|d| self.fw.tsm().device(d).ok())
            .map(|d| d.bars)
            .unwrap_or_default();
        let window = platform_tdx::link::bars_window(&bars).unwrap_or_else(|| {
            let at = (1 << 50) + (id << 20);
            platform_tdx::link::addr_assoc(at, at + 0xf_ffff)
        });
        let create = SeamRegs {
            rax: u64::from(abi::TDH_IDE_STREAM_CREATE),
            rcx: platform_tdx::link::STREAM_INFO_TYPE_SEL,
            rdx: id,
            r8: abi::hpa_array(spdm_page(SPDM_PAGES + k % SPDM_PAGES), 1),
            // The device's functions: the eight of its device number.
            r10: (routing | 7) << 8,
            r11: 1 | (routing & !7) << 8 | u64::from(rid.segment() & 0xff) << 24,
            r12: window[0],
            r13: window[1],
            r14: window[2],
            ..SeamRegs::default()
        };
        let km = SeamRegs {
            rax: u64::from(abi::TDH_IDE_STREAM_KM),
            rcx: id,
            rdx: id,
            r8: platform_tdx::link::IDE_KM_SETUP,
            r9: RESP_B,
            r10: REQ_B,
            ..SeamRegs::default()
        };
        let call = |w: &mut World, mut regs: SeamRegs| {
            let host = Host {
                bytes: Cell::from_mut(&mut w.host[..]).as_slice_of_cells(),
                read_only: 0,
            };
            Dispatcher::new(&w.fw, host).seamcall(&mut regs);
            regs
        };
        let mut out = call(self, connect);
        if out.rax == TDX_SPDM_REQUEST {
            let at = (REQ_B - HOST) as usize;
            let len = usize::try_from(out.rcx)
                .unwrap_or(0)
                .min(MESSAGE_PAGE_BYTES);
            let request = self.host[at..at + len].to_vec();
            let mut answer = [0u8; MESSAGE_PAGE_BYTES];
            if let Some(n) = self.device.answer(&request, &mut answer) {
                let at = (RESP_B - HOST) as usize;
                self.host[at..at + n].copy_from_slice(&answer[..n]);
            }
            out = call(self, connect);
        }
        if out.rax == TDX_SUCCESS && call(self, create).rax == TDX_SUCCESS {
            call(self, km);
        }
    }

    /// TSM.DEVIF.UNBIND of TDI slot `slot`, relayed to the end, until it is not resumable:
    /// the last registers.
    fn unbind_all(&mut self, slot: u64) -> SeamRegs {
        let mut out = SeamRegs::default();
        // The entry's own invalidation, or the owner's domain's (TRACKING_NOT_DONE).
        let waits = [
            TDX_DMAR_INVALID_INV_STATE | u64::from(platform_tdx::status::OPERAND_ID_DMAR),
            st::TDX_IOMMU_IOTLB_TRACKING_NOT_DONE,
        ];
        for _ in 0..UNBIND_CALLS {
            let first = self.seamcall(
                u64::from(abi::TSM_DEVIF_UNBIND),
                SeamRegs {
                    rcx: self.fid(slot),
                    r8: REQ_A,
                    ..SeamRegs::default()
                },
            );
            out = self.relay(slot, first, Relay::Drive);
            if waits.contains(&out.rax) {
                // Its IOTLB invalidation (the owner's domain, or its DMA context's own): the
                // host requests and processes, as the Linux host does, and calls again.
                self.iotlb_drain(slot);
                continue;
            }
            if out.rax != TDX_INTERRUPTED_RESUMABLE {
                break;
            }
        }
        out
    }

    /// The host's part of a TD start: TDI slot `slot`'s trusted DMA context added for the TD
    /// whose TDR is `td` (TDH.DMAR.ADD, when the TDI has none) and accepted by it
    /// (TDG.DMAR.ACCEPT), as a TDX Connect host and TD do before START. Each call checked as
    /// any other; a refusal leaves the start to be refused `TSM_DMA_NOT_ACCEPTED`.
    fn dma_ready(&mut self, td: u64, slot: u64) {
        let Ok(rec) = self.fw.tdi(TdiId::from_slot(slot as u16)) else {
            return;
        };
        if rec.dma == Some(tsm_core::dma::DmaState::Active) {
            return;
        }
        if rec.dma.is_none() {
            let levels = self.fw.with_table(|t| t.levels()).unwrap_or(4);
            let add = SeamRegs {
                rcx: platform_tdx::dmar::dmar_idx(rec.iface.requester_id()),
                rdx: td,
                r8: platform_tdx::dmar::add_qword0(levels),
                r9: platform_tdx::dmar::ADD_QWORD1,
                ..SeamRegs::default()
            };
            self.seamcall(u64::from(platform_tdx::dmar::TDH_DMAR_ADD), add);
        }
        let rcx = self.fid(slot);
        self.tdcall(
            td,
            u64::from(platform_tdx::dmar::TDG_DMAR_ACCEPT),
            SeamRegs {
                rcx,
                ..SeamRegs::default()
            },
        );
    }

    /// The host completes what TDI slot `slot`'s unbind waits for: the owner's domain IOTLB
    /// invalidation (TDH.IQ.INV.REQUEST INV_REQ_IOTLB; NOT_REQUIRED when none is owed), then
    /// TDH.IQ.INV.PROCESS of the TDI's IOMMU.
    fn iotlb_drain(&mut self, slot: u64) {
        let Ok(rec) = self.fw.tdi(TdiId::from_slot(slot as u16)) else {
            return;
        };
        let segment = rec.iface.requester_id().segment();
        if let Some(owner) = rec.state.owner() {
            let tdr = self.tdr(owner);
            let regs = platform_tdx::dmar::iotlb_request_regs(segment, tdr, REQ_A, 1);
            self.seamcall(u64::from(platform_tdx::dmar::TDH_IQ_INV_REQUEST), regs);
        }
        self.seamcall(
            u64::from(platform_tdx::dmar::TDH_IQ_INV_PROCESS),
            SeamRegs {
                rcx: u64::from(segment),
                ..SeamRegs::default()
            },
        );
    }

    /// Every TDI can be unbound once the host cooperates: TLB flushes completed, the device
    /// behaving, every page writable.
    fn finish(&mut self) {
        let _ = self.fw.with_table(|t| {
            for g in 0..MAX_GUESTS {
                t.hold_flush(GuestId::from_slot(g as u16), false);
            }
        });
        self.read_only = 0;
        for t in 0..MAX_TDIS {
            let Ok(rec) = self.fw.tdi(TdiId::from_slot(t as u16)) else {
                continue;
            };
            self.device.link_mut().set_misbehaviour(rec.iface, None);
            let mut out = self.unbind_all(t as u64);
            // A STOP the device answered while it misbehaved (an answer the host lost, which
            // the device gives again to the same request) ends that exchange as the device's
            // failure; the host calls again, and the next STOP is a new request.
            let device_failed = |rax: u64| {
                [
                    st::TSM_DEVICE_MALFORMED,
                    st::TSM_DEVICE_REFUSED,
                    st::TSM_DEVICE_UNRESPONSIVE,
                ]
                .contains(&(rax & st::CODE_MASK))
            };
            if device_failed(out.rax) {
                out = self.unbind_all(t as u64);
            }
            let after = self.fw.tdi(TdiId::from_slot(t as u16));
            if out.rax != TDX_SUCCESS
                || after.is_ok_and(|r| r.state != TdiState::Unbound || r.exchange.is_some())
            {
                fail(format!(
                    "TDI {t} ({:?}) did not unbind: {:#x}, now {after:?}",
                    rec.state, out.rax
                ));
            }
        }
    }

    fn apply(&mut self, op: Op) {
        let r = SeamRegs::default();
        let leaf = |l: u16| u64::from(l);
        match op {
            Op::TdCreate => {
                // As Linux's tdh_mng_create: RCX a TDR page no TD has, RDX the HKID.
                let rcx = (0..TDR_PAGES)
                    .map(tdr_page)
                    .find(|&t| matches!(self.fw.td_of(t), Ok(None)))
                    .unwrap_or(tdr_page(0));
                // The first HKID no live TD holds, as KVM's keyid allocator.
                let held = |h: u64| {
                    (0..MAX_GUESTS as u16).any(|g| {
                        matches!(self.fw.tdr_of(GuestId::from_slot(g)), Ok(Some(e))
                            if u64::from(e.hkid) == h && e.life.holds_hkid())
                    })
                };
                let rdx = (HKID..=u64::from(platform_tdx::td::PRIVATE_HKID_MAX))
                    .find(|&h| !held(h))
                    .unwrap_or(HKID);
                self.seamcall(leaf(abi::TDH_MNG_CREATE), SeamRegs { rcx, rdx, ..r });
            }
            Op::TdDestroy { td } => {
                let rcx = self.td(td);
                let out = self.seamcall(leaf(abi::TDH_MNG_VPFLUSHDONE), SeamRegs { rcx, ..r });
                if out.rax != TDX_SUCCESS {
                    return;
                }
                let mut cmd = platform_tdx::td::CACHE_WB_START;
                for _ in 0..=platform_tdx::td::CACHE_WB_SUB_BLOCKS {
                    let wb = SeamRegs { rcx: cmd, ..r };
                    if self.seamcall(leaf(abi::TDH_PHYMEM_CACHE_WB), wb).rax
                        != TDX_INTERRUPTED_RESUMABLE
                    {
                        break;
                    }
                    cmd = platform_tdx::td::CACHE_WB_RESUME;
                }
                self.seamcall(leaf(abi::TDH_MNG_KEY_FREEID), SeamRegs { rcx, ..r });
                self.seamcall(leaf(abi::TDH_PHYMEM_PAGE_RECLAIM), SeamRegs { rcx, ..r });
                let keyed = rcx | 1 << platform_tdx::td::KEYID_SHIFT;
                self.seamcall(
                    leaf(abi::TDH_PHYMEM_PAGE_WBINVD),
                    SeamRegs { rcx: keyed, ..r },
                );
            }
            Op::DeviceCreate { dev, bars, list } => {
                let k = u64::from(dev % 5);
                let rid = if k == 4 {
                    RequesterId::try_new(0, 3, 0, 1)
                } else {
                    RequesterId::try_new(0, 3 + k as u8, 0, 0)
                }
                .unwrap_or_else(|e| fail(e));
                let base = bar_of(k);
                let entries: Vec<(u64, u32, u16)> = match bars {
                    Bars::One => vec![(base, 1024, 0)],
                    Bars::Two => vec![(base, 1024, 0), (base + 0x80_0000, 16, 0)],
                    Bars::Huge => vec![(HUGE_BAR + (k % 4) * 0x4000_0000, 0x4_0000, 0)],
                    Bars::Reserved => vec![(SYSTEM + 0x10_0000, 16, 0)],
                    Bars::Params => vec![(PARAMS, 1, 0)],
                    Bars::Overlap { other } => vec![(bar_of(u64::from(other)), 16, 0)],
                    Bars::Misaligned => vec![(base + 0x800, 4, 0)],
                    Bars::Empty => vec![(base, 0, 0)],
                    Bars::TooMany => (0..7).map(|i| (base + i * 0x1000, 1, 0)).collect(),
                    Bars::Raw { base, pages, attr } => vec![(base, pages, attr)],
                };
                let mut l = RangeList {
                    count: entries.len() as u32,
                    ..RangeList::default()
                };
                for (slot, (first, pages, attr)) in l.ranges.iter_mut().zip(entries) {
                    *slot = RangeEntry {
                        first_page: first,
                        pages,
                        attributes: attr,
                        range_id: 0,
                    };
                }
                let mut rdx = PARAMS;
                match list {
                    ListMut::Fine => {}
                    ListMut::Reserved => l.reserved = 1,
                    ListMut::Count { count } => l.count = count,
                    ListMut::Outside => rdx = HOST + HOST_PAGES as u64 * PAGE,
                    ListMut::Misaligned => rdx = PARAMS + 8,
                }
                let bytes = l.as_bytes();
                self.host[..bytes.len()].copy_from_slice(bytes);
                // Linux's tdh_spdm_create: the function ID, one metadata page (device k's).
                let create = SeamRegs {
                    rcx: abi::function_id(rid),
                    rdx: abi::hpa_array(spdm_page(k), 1),
                    ..r
                };
                let out = self.seamcall(leaf(abi::TDH_SPDM_CREATE), create);
                // Then the BARs, for the SPDM id just made (a refusal leaves it without BARs:
                // its TDH.DEVIF.CREATE is then refused).
                if out.rax == TDX_SUCCESS {
                    let rcx = out.rcx;
                    let bars = self.seamcall(leaf(abi::TSM_SPDM_BARS), SeamRegs { rcx, rdx, ..r });
                    if bars.rax == TDX_SUCCESS {
                        self.link(rcx, k, rid);
                    }
                }
            }
            Op::DeviceDelete { dev } => {
                // Linux's tdh_spdm_delete: RDX 0 for a one-page array.
                let rcx = u64::from(dev % 6);
                self.seamcall(leaf(abi::TDH_SPDM_DELETE), SeamRegs { rcx, ..r });
            }
            Op::DevifCreate {
                dev,
                bus,
                func,
                pages,
            } => {
                let f = func % 9;
                let iface =
                    RequesterId::try_new(0, 3 + bus % 5, f / 8, f % 8).unwrap_or_else(|e| fail(e));
                let id = u64::from(dev % 6);
                // The SPDM id's stream (ours: its ID is the SPDM id); 0xff names none.
                let stream = match self.fw.spdm(id) {
                    Ok(Some(e)) => e.link.stream.map_or(0xff, |s| s.id as u8),
                    _ => 0xff,
                };
                let td = (0..TDR_PAGES)
                    .map(tdr_page)
                    .find(|&t| matches!(self.fw.td_of(t), Ok(Some(_))))
                    .unwrap_or(0);
                let held: Vec<u64> = (0..MAX_TDIS)
                    .filter_map(|t| self.fw.devif(TdiId::from_slot(t as u16)).ok().flatten())
                    .flat_map(|e| [e.pages.devifcs, e.pages.td_buffer, e.pages.vmm_buffer])
                    .map(|p| p.as_u64())
                    .collect();
                let free = (0..DEVIF_TRIPLES)
                    .map(|k| (devif_page(k, 0), devif_page(k, 1), devif_page(k, 2)))
                    .find(|(a, b, c)| !held.contains(a) && !held.contains(b) && !held.contains(c))
                    .unwrap_or((devif_page(0, 0), devif_page(0, 1), devif_page(0, 2)));
                let (r8, r9, r10) =
                    private_pages(pages, free, held.first().copied().unwrap_or(free.0));
                let function = u32::try_from(abi::function_id(iface)).unwrap_or(u32::MAX);
                let regs = SeamRegs {
                    rcx: abi::devif_id(0, stream, function),
                    rdx: td,
                    r8,
                    r9,
                    r10,
                    ..r
                };
                self.seamcall(leaf(abi::TDH_DEVIF_CREATE), regs);
            }
            Op::DevifRemove { tdi } => {
                let rcx = self.fid(tdi_slot(tdi));
                self.seamcall(leaf(abi::TDH_DEVIF_REMOVE), SeamRegs { rcx, ..r });
            }
            Op::Bind {
                tdi,
                td,
                report,
                r8,
                relay,
            } => {
                self.set_report(tdi, report);
                let slot = tdi_slot(tdi);
                let rcx = self.fid(slot);
                let out = if r8 {
                    // TDX-IO's bind: LOCK_INTERFACE, for the TDI's own TD.
                    let regs = SeamRegs {
                        rcx,
                        rdx: abi::devif_req_in(abi::TDISP_LOCK_INTERFACE, false, false),
                        r8: REQ_A,
                        ..r
                    };
                    self.seamcall(leaf(abi::TDH_DEVIF_REQUEST), regs)
                } else {
                    let rdx = self.td(td);
                    let known = matches!(self.fw.td_of(rdx), Ok(Some(_)));
                    if known && self.td_of_slot(slot) != Some(rdx) {
                        self.seamcall(leaf(abi::TSM_DEVIF_SET_TD), SeamRegs { rcx, rdx, ..r });
                    }
                    let regs = SeamRegs {
                        rcx,
                        rdx,
                        r8: REQ_A,
                        ..r
                    };
                    self.seamcall(leaf(abi::TSM_DEVIF_BIND), regs)
                };
                self.relay(slot, out, relay);
            }
            Op::Map {
                tdi,
                td,
                gpa,
                hpa,
                level,
            } => {
                let level = u64::from(level % 4);
                let size = level_size(level);
                let rcx = match gpa {
                    GpaPick::Slot { i } => page_info(slot_gpa(i, level), level),
                    GpaPick::Raw { page_info } => page_info,
                };
                let r8 = match hpa {
                    HpaPick::Owned { range, page } => {
                        let owned = self.owned(tdi);
                        match owned.get(usize::from(range) % owned.len().max(1)) {
                            Some(o) => {
                                (o.base().as_u64() + (u64::from(page) % o.pages()) * 0x1000)
                                    & !size.offset_mask()
                            }
                            None => BAR_BASE,
                        }
                    }
                    HpaPick::Bar { dev, page } => {
                        (bar_of(u64::from(dev)) + u64::from(page) * 0x1000) & !size.offset_mask()
                    }
                    HpaPick::Raw { v } => v,
                };
                let regs = SeamRegs {
                    rcx,
                    rdx: self.td(td),
                    r8,
                    ..r
                };
                self.seamcall(leaf(abi::TDH_MMIO_MAP), regs);
            }
            Op::MapRun { tdi, count, region } => {
                let Some(first) = self.owned(tdi).first().copied() else {
                    return;
                };
                let td = self.td(Td::OwnerOf { tdi });
                let gpa = GPA_BASE + 0x4000_0000 * (1 + u64::from(region % 4));
                for i in 0..u64::from(count % 100).min(first.pages()) {
                    let regs = SeamRegs {
                        rcx: page_info(gpa + i * 0x1000, 0),
                        rdx: td,
                        r8: first.base().as_u64() + i * 0x1000,
                        ..r
                    };
                    if self.seamcall(leaf(abi::TDH_MMIO_MAP), regs).rax != TDX_SUCCESS {
                        break;
                    }
                }
            }
            Op::Block { td, at } | Op::Unmap { td, at } | Op::SeptRd { td, at } => {
                let l = match op {
                    Op::Block { .. } => abi::TDH_MMIO_BLOCK,
                    Op::Unmap { .. } => abi::TDH_MMIO_UNMAP,
                    _ => abi::TDH_MEM_SEPT_RD,
                };
                let (rdx, rcx) = self.at(self.td(td), at);
                self.seamcall(leaf(l), SeamRegs { rcx, rdx, ..r });
            }
            Op::Track { td } => {
                let rcx = self.td(td);
                self.seamcall(leaf(abi::TDH_MEM_TRACK), SeamRegs { rcx, ..r });
            }
            Op::HoldFlush { td, hold } => {
                if let Ok(Some(g)) = self.fw.td_of(self.td(td)) {
                    let _ = self.fw.with_table(|t| t.hold_flush(g, hold));
                }
            }
            Op::Unbind { tdi, relay } => {
                let slot = tdi_slot(tdi);
                let rcx = self.fid(slot);
                let regs = SeamRegs {
                    rcx,
                    r8: REQ_A,
                    ..r
                };
                let out = self.seamcall(leaf(abi::TSM_DEVIF_UNBIND), regs);
                self.relay(slot, out, relay);
            }
            Op::UnbindAll { tdi } => {
                self.unbind_all(tdi_slot(tdi));
            }
            Op::UnbindForce { tdi, bits } => {
                let rdx = if bits == 0 {
                    abi::UNBIND_FLAG_FORCE
                } else {
                    u64::from(bits) << 1
                };
                let rcx = self.fid(tdi_slot(tdi));
                for _ in 0..UNBIND_CALLS {
                    let out =
                        self.seamcall(leaf(abi::TSM_DEVIF_UNBIND), SeamRegs { rcx, rdx, ..r });
                    if out.rax != TDX_INTERRUPTED_RESUMABLE {
                        break;
                    }
                }
            }
            Op::StreamSetup { dev } => {
                let rcx = u64::from(dev % 6);
                let km = SeamRegs {
                    rcx,
                    rdx: rcx,
                    r8: platform_tdx::link::IDE_KM_SETUP,
                    r9: RESP_A,
                    r10: REQ_A,
                    ..r
                };
                self.seamcall(leaf(abi::TDH_IDE_STREAM_KM), km);
            }
            Op::DevError { tdi } => {
                let rcx = self.fid(tdi_slot(tdi));
                self.seamcall(leaf(abi::TSM_DEVIF_ERROR), SeamRegs { rcx, ..r });
            }
            Op::Check { tdi, relay } => {
                let slot = tdi_slot(tdi);
                let rcx = self.fid(slot);
                let regs = SeamRegs {
                    rcx,
                    r8: REQ_A,
                    ..r
                };
                let out = self.seamcall(leaf(abi::TSM_DEVIF_CHECK), regs);
                self.relay(slot, out, relay);
            }
            Op::State { tdi } => {
                let rcx = self.fid(tdi_slot(tdi));
                self.seamcall(leaf(abi::TSM_DEVIF_STATE), SeamRegs { rcx, ..r });
            }
            Op::ZapCheck { zap } => {
                let (rcx, rdx) = match zap {
                    Zap::Bar { dev } => (bar_of(u64::from(dev)), 1024),
                    Zap::Owned { tdi, range } => {
                        let owned = self.owned(tdi);
                        owned
                            .get(usize::from(range) % owned.len().max(1))
                            .map_or((BAR_BASE, 1), |o| (o.base().as_u64(), o.pages()))
                    }
                    Zap::Leaf { i } => {
                        let leaves = self.leaves();
                        leaves
                            .get(usize::from(i) % leaves.len().max(1))
                            .map_or((BAR_BASE, 1), |l| (l.hpa.as_u64(), l.size.base_pages()))
                    }
                    Zap::Raw { hpa, pages } => (hpa, pages),
                };
                self.seamcall(leaf(abi::TSM_MMIO_ZAP_CHECK), SeamRegs { rcx, rdx, ..r });
            }
            Op::Accept { td, at } => {
                let (g, rcx) = self.at(self.td(td), at);
                // What the guest read in its report for the page (RDX, the bind's reporting
                // offset included), or 0 where there is none: then only a refusal is possible.
                let rdx = self.reported(g, rcx).unwrap_or(0);
                self.tdcall(g, leaf(abi::TDG_MMIO_ACCEPT), SeamRegs { rcx, rdx, ..r });
            }
            Op::Start { td, tdi, relay } => {
                let g = self.td(td);
                let slot = tdi_slot(tdi);
                let rcx = self.fid(slot);
                self.dma_ready(g, slot);
                // An earlier outcome unread first (refused, nothing changed, when none is).
                self.tdcall(g, leaf(abi::TDG_DEVIF_RESPONSE), SeamRegs { rcx, ..r });
                let rdx = u64::from(abi::TDISP_START_INTERFACE);
                let queued =
                    self.tdcall(g, leaf(abi::TDG_DEVIF_REQUEST), SeamRegs { rcx, rdx, ..r });
                if queued.rax == TDX_SUCCESS {
                    let fetch = SeamRegs {
                        rcx,
                        rdx: abi::devif_req_in(0, false, true),
                        r8: REQ_A,
                        ..r
                    };
                    let out = self.seamcall(leaf(abi::TDH_DEVIF_REQUEST), fetch);
                    self.relay(slot, out, relay);
                    self.tdcall(g, leaf(abi::TDG_DEVIF_RESPONSE), SeamRegs { rcx, ..r });
                }
            }
            Op::Respond {
                tdi,
                answer,
                rdx,
                from_page,
            } => {
                self.respond(tdi_slot(tdi), answer, rdx, from_page);
            }
            Op::Reread { tdi } => {
                let slot = tdi_slot(tdi);
                let rcx = self.fid(slot);
                let waiting = self
                    .fw
                    .tdi(TdiId::from_slot(slot as u16))
                    .ok()
                    .and_then(|t| t.exchange)
                    .map(|e| e.op);
                let rdx = match waiting {
                    Some(DeviceOp::Bind { .. }) => 0x83,
                    Some(DeviceOp::Stop { .. }) => 0x87,
                    Some(DeviceOp::Check) => 0x85,
                    _ => abi::devif_req_in(0, false, true),
                };
                let regs = SeamRegs {
                    rcx,
                    rdx,
                    r8: REQ_A,
                    ..r
                };
                self.seamcall(leaf(abi::TDH_DEVIF_REQUEST), regs);
            }
            Op::HostPage { page, read_only } => {
                let bit = 1u8 << (page % HOST_PAGES as u8);
                if read_only {
                    self.read_only |= bit;
                } else {
                    self.read_only &= !bit;
                }
            }
            Op::Device { tdi, action } => {
                let iface = self
                    .fw
                    .tdi(TdiId::from_slot(tdi_slot(tdi) as u16))
                    .map(|t| t.iface.requester_id())
                    .unwrap_or_else(|_| {
                        RequesterId::try_new(0, 3, 0, 0).unwrap_or_else(|e| fail(e))
                    });
                let d = &mut self.device;
                match action {
                    DevAction::Misbehave { how } => {
                        d.link_mut()
                            .set_misbehaviour(iface, common::misbehaviour(how));
                    }
                    DevAction::Behave => d.link_mut().set_misbehaviour(iface, None),
                    DevAction::Disturb => d.event(iface, DeviceEvent::Disturb),
                    DevAction::Reset => d.event(iface, DeviceEvent::ConventionalReset),
                }
            }
            Op::Raw {
                leaf: l,
                rcx,
                rdx,
                r8,
                r9,
                r10,
            } => {
                let regs = SeamRegs {
                    rcx,
                    rdx,
                    r8,
                    r9,
                    r10,
                    ..r
                };
                self.seamcall(leaf_num(l), regs);
            }
            Op::RawGuest { td, leaf: l, rcx } => {
                let g = self.td(td);
                self.tdcall(g, leaf_num(l), SeamRegs { rcx, ..r });
            }
            Op::DmarAdd { tdi, td, idx, qw } => {
                let levels = self.fw.with_table(|t| t.levels()).unwrap_or(4);
                let mut q = [dmar::add_qword0(levels), dmar::ADD_QWORD1, 0, 0, 0, 0, 0];
                match qw {
                    AddQwords::Good => {}
                    AddQwords::Slptptr { page } => {
                        q[0] |= (u64::from(page.max(1)) << 12) & dmar::PTE_SLPTPTR_MASK;
                    }
                    AddQwords::Did { did } => q[1] |= u64::from(did.max(1)),
                    AddQwords::Present => q[0] |= dmar::PTE_P,
                    AddQwords::OtherAw => q[0] = dmar::add_qword0(if levels >= 5 { 4 } else { 5 }),
                    AddQwords::High { q: i, v } => q[2 + usize::from(i % 5)] = v.max(1),
                    AddQwords::Raw { q0, q1 } => (q[0], q[1]) = (q0, q1),
                }
                let [r8, r9, r10, r11, r12, r13, r14] = q;
                let regs = SeamRegs {
                    rcx: dmar_idx_of(self.rid_of(tdi_slot(tdi)), idx),
                    rdx: self.td(td),
                    r8,
                    r9,
                    r10,
                    r11,
                    r12,
                    r13,
                    r14,
                    ..r
                };
                self.seamcall(leaf(dmar::TDH_DMAR_ADD), regs);
            }
            Op::DmarAccept { tdi, td, m } => {
                let g = self.td(td);
                let mut regs = SeamRegs {
                    rcx: self.fid(tdi_slot(tdi)),
                    ..r
                };
                match m {
                    AcceptMut::Fine => {}
                    AcceptMut::Reg { r: i, v } => {
                        let reg = match i % 7 {
                            0 => &mut regs.r8,
                            1 => &mut regs.r9,
                            2 => &mut regs.r10,
                            3 => &mut regs.r11,
                            4 => &mut regs.r12,
                            5 => &mut regs.r13,
                            _ => &mut regs.r14,
                        };
                        *reg = v.max(1);
                    }
                    AcceptMut::Target { v } => regs.rdx = v.max(1),
                }
                self.tdcall(g, leaf(dmar::TDG_DMAR_ACCEPT), regs);
            }
            Op::DmarBlock { tdi, idx }
            | Op::DmarRead { tdi, idx }
            | Op::DmarRemove { tdi, idx } => {
                let l = match op {
                    Op::DmarBlock { .. } => dmar::TDH_DMAR_BLOCK,
                    Op::DmarRead { .. } => dmar::TDH_DMAR_READ,
                    _ => dmar::TDH_DMAR_REMOVE,
                };
                let rcx = dmar_idx_of(self.rid_of(tdi_slot(tdi)), idx);
                self.seamcall(leaf(l), SeamRegs { rcx, ..r });
            }
            Op::IqRequest {
                tdi,
                iommu,
                kind,
                wait,
                status,
            } => {
                let rid = self.rid_of(tdi_slot(tdi));
                let own = u64::from(rid.routing_id());
                let (rdx, r8) = match kind {
                    InvKind::Pasid => (dmar::INV_REQ_PASIDTE, own),
                    InvKind::PasidRaw { r8 } => (dmar::INV_REQ_PASIDTE, r8),
                    InvKind::Iotlb { td } => (dmar::INV_REQ_IOTLB, self.td(td)),
                    InvKind::Type { rdx } => (rdx, own),
                    InvKind::Td { td, pool } => (
                        dmar::INV_REQ_TD | u64::from(pool) << dmar::INV_REQ_POOL_SHIFT,
                        self.td(td),
                    ),
                };
                let good = dmar::WAIT_DESC_HOST;
                let (r9, r11, r12) = match wait {
                    WaitDesc::Good { data } => (good | u64::from(data) << 32, 0, 0),
                    WaitDesc::NoFence => (dmar::WAIT_DESC_TYPE | dmar::WAIT_DESC_SW, 0, 0),
                    WaitDesc::Raw { r9 } => (r9, 0, 0),
                    WaitDesc::High { r12: false, v } => (good, v.max(1), 0),
                    WaitDesc::High { r12: true, v } => (good, 0, v.max(1)),
                };
                let page = |p: u8| HOST + u64::from(p % HOST_PAGES as u8) * PAGE;
                let r10 = match status {
                    StatusAddr::Page { page: p, word } => page(p) + u64::from(word % 512) * 8,
                    StatusAddr::Misaligned { page: p, off } => page(p) + 1 + u64::from(off % 3),
                    StatusAddr::Outside => HOST + HOST_PAGES as u64 * PAGE,
                    StatusAddr::KeyId => SPARE | 1 << platform_tdx::td::KEYID_SHIFT,
                    StatusAddr::Raw { v } => v,
                };
                let regs = SeamRegs {
                    rcx: iommu_id(rid, iommu),
                    rdx,
                    r8,
                    r9,
                    r10,
                    r11,
                    r12,
                    ..r
                };
                self.seamcall(leaf(dmar::TDH_IQ_INV_REQUEST), regs);
            }
            Op::IqProcess { tdi, iommu } => {
                let rcx = iommu_id(self.rid_of(tdi_slot(tdi)), iommu);
                self.seamcall(leaf(dmar::TDH_IQ_INV_PROCESS), SeamRegs { rcx, ..r });
            }
            Op::TdInvRequest {
                td,
                descs,
                count,
                at,
            } => {
                let g = self.td(td);
                let list = td_descs(descs);
                let base = usize::try_from(SPARE - HOST).unwrap_or(0);
                for (i, q) in list.iter().flatten().enumerate() {
                    let at = base + i * 8;
                    self.host[at..at + 8].copy_from_slice(&q.to_le_bytes());
                }
                let rcx = match count {
                    0 => list.len() as u64,
                    c => u64::from(c - 1),
                };
                let regs = SeamRegs {
                    rcx,
                    rdx: SPARE + u64::from(at),
                    ..r
                };
                self.tdcall(g, leaf(dmar::TDG_IQ_INV_REQUEST), regs);
            }
        }
    }
}

/// The descriptors [`TdDescs`] picks (at most a page's 128).
fn td_descs(d: TdDescs) -> Vec<[u64; 4]> {
    let domain = dmar::INV_DESC_IOTLB
        | dmar::IOTLB_G_DOMAIN << dmar::IOTLB_G_SHIFT
        | dmar::IOTLB_DW
        | dmar::IOTLB_DR;
    let page = dmar::INV_DESC_IOTLB
        | dmar::IOTLB_G_PAGE << dmar::IOTLB_G_SHIFT
        | dmar::IOTLB_DW
        | dmar::IOTLB_DR;
    let status = |s: TdStatus| match s {
        TdStatus::Word { page: p, word } => {
            HOST + u64::from(p % HOST_PAGES as u8) * PAGE + u64::from(word % 1024) * 4
        }
        TdStatus::Tdr { k } => tdr_page(u64::from(k % 4)) + 8,
        TdStatus::Raw { v } => v,
    };
    let iotlb = |n: u8, pick: u8| -> Vec<[u64; 4]> {
        (0..1 + n % 127)
            .map(|i| match (pick >> (i % 8)) & 1 {
                0 => [domain, 0, 0, 0],
                _ => [page, GPA_BASE | dmar::IOTLB_IH, 0, 0],
            })
            .collect()
    };
    let wait = |data: u32, s: TdStatus| {
        [
            dmar::WAIT_DESC_TYPE | dmar::WAIT_DESC_SW | u64::from(data) << 32,
            status(s),
            0,
            0,
        ]
    };
    match d {
        TdDescs::Good {
            n,
            page,
            wait: w,
            data,
            status: s,
        } => {
            let mut v = iotlb(n, page);
            if w {
                v.push(wait(data, s));
            }
            v
        }
        TdDescs::Bad {
            n,
            at,
            q,
            v,
            status: s,
        } => {
            let mut list = iotlb(n, 0);
            list.push(wait(1, s));
            let i = usize::from(at) % list.len();
            list[i][usize::from(q % 4)] = v;
            list
        }
    }
}

/// The TDI a `function_id_reg_t` names in the records of `before` (or, for one just made,
/// `after`): the slot whose record has that function ID, in the canonical spelling (bits
/// 63:32 zero).
fn tdi_named(rcx: u64, before: &Image, after: &Image) -> Option<TdiId> {
    let function = u32::try_from(rcx).ok()?;
    let find = |img: &Image| {
        img.messages
            .iter()
            .position(|e| e.is_some_and(|e| e.function == function))
            .and_then(|slot| u16::try_from(slot).ok())
            .map(TdiId::from_slot)
    };
    find(before).or_else(|| find(after))
}

/// Whether the host's TDH.DMAR.BLOCK named an entry the firmware already blocked: README, "a
/// later BLOCK of that entry by a host running Linux's own order succeeds and changes nothing".
/// (Its IQ.INV.REQUEST of such an entry is refused, so the refusal check covers it: a request
/// that succeeds always queues.)
fn dmar_noop(leaf: Option<u16>, regs: &SeamRegs, before: &Image) -> bool {
    if leaf != Some(dmar::TDH_DMAR_BLOCK) {
        return false;
    }
    let Some(rid) = dmar::decode_dmar_idx(regs.rcx) else {
        return false;
    };
    let dma = before
        .core
        .tdis
        .iter()
        .flatten()
        .find(|t| t.iface.requester_id() == rid)
        .and_then(|t| t.dma);
    matches!(
        dma,
        Some(DmaState::Blocked | DmaState::Invalidating | DmaState::Invalidated)
    )
}

/// RCX of a TDH.DMAR leaf for requester `rid`: its PASID entry's `dmar_idx_t`, or as `idx`
/// breaks it.
fn dmar_idx_of(rid: RequesterId, idx: Idx) -> u64 {
    let good = dmar::dmar_idx(rid);
    match idx {
        Idx::Good => good,
        Idx::Level { level } => good | (1 + u64::from(level % 7)),
        Idx::Reserved { bit } => good | 1 << (3 + u32::from(bit % 9)),
        Idx::Pasid { pasid } => {
            good | (u64::from(pasid) & 0xf_ffff).max(1) << dmar::DMAR_IDX_PASID_SHIFT
        }
        Idx::OtherIommu => good.wrapping_add(1 << dmar::DMAR_IDX_IOMMU_SHIFT),
        Idx::Raw { v } => v,
    }
}

/// RCX of a TDH.IQ leaf for requester `rid`'s IOMMU, or as `iommu` picks.
fn iommu_id(rid: RequesterId, iommu: Iommu) -> u64 {
    match iommu {
        Iommu::Own => u64::from(rid.segment()),
        Iommu::Other => u64::from(rid.segment()) + 1,
        Iommu::Raw { v } => v,
    }
}

fn leaf_num(l: LeafNum) -> u64 {
    match l {
        LeafNum::Known { i } => u64::from(LEAVES[usize::from(i) % LEAVES.len()]),
        LeafNum::Any { v } => v,
    }
}

/// A refused call writes RAX only, or the walk details TDX documents (RCX entry, RDX level
/// and state, R8 the blocking epoch of an S-EPT read) for a walk or size error.
fn check_registers(regs: &SeamRegs, out: &SeamRegs, what: &str) {
    let code = out.rax & st::CODE_MASK;
    let walk = code == st::TDX_EPT_WALK_FAILED || code == st::TDX_PAGE_SIZE_MISMATCH;
    let kept = |a: &SeamRegs| {
        if walk {
            (a.r9, a.r10, a.r11, a.r12, a.r13, 0, 0, 0)
        } else {
            (a.r9, a.r10, a.r11, a.r12, a.r13, a.rcx, a.rdx, a.r8)
        }
    };
    if kept(regs) != kept(out) {
        fail(format!("a refusal wrote registers: {what}: {out:x?}"));
    }
}

/// The S-EPT under an exempt refusal: the leaves as [`common::leaves_diff`] allows, the PASID
/// entries as [`dmar_diff`] does, every TD's epochs as before but the exempt TDI's owner's,
/// which may advance by one (and its flush follow) only under [`Exempt::removes`]. The pool's
/// bytes are not compared byte by byte here (which bytes hold which leaf, and the table pages
/// a removal gives back, would need a second S-EPT walker): the leaf-level comparison, through
/// `SecureTable::next_leaf` over the whole address space, stands for them.
fn exempt_table(before: &Image, after: &Image, exempt: Exempt) -> Result<(), String> {
    common::leaves_diff(&before.core.owners, &before.leaves, &after.leaves, exempt)?;
    dmar_diff(before, after, exempt)?;
    let owner = exempt
        .tdi()
        .and_then(|t| {
            before
                .core
                .tdis
                .get(usize::from(t.slot()))
                .cloned()
                .flatten()
        })
        .and_then(|r| r.state.owner());
    for g in 0..MAX_GUESTS {
        let g = GuestId::from_slot(g as u16);
        let (b, a) = (before.core.table().epoch(g), after.core.table().epoch(g));
        let ok = match (b, a) {
            _ if b == a => true,
            (Some((cur, flushed)), Some((cur2, flushed2))) if Some(g) == owner => {
                exempt.removes()
                    && (cur2 == cur || Some(cur2) == cur.checked_add(1))
                    && flushed <= flushed2
                    && flushed2 <= cur2
            }
            _ => false,
        };
        if !ok {
            return Err(format!("TD {g:?} epoch (current, flushed) {b:?} -> {a:?}"));
        }
    }
    Ok(())
}

/// The PASID entries under an exempt refusal: every entry as it was but the exempt TDI's,
/// which may be blocked (not present, BLOCKED, every other architectural bit kept) and go on
/// through its invalidation where the exemption blocks its leaves ([`Exempt::blocks`]), and be
/// removed where it removes them ([`Exempt::removes`]), never going back; under
/// [`Exempt::removes`] the owner's entries may also be marked as owing (or queue) the IOTLB
/// invalidation of the owner's TRACK, the unbind's Track step (`IotlbOwed`).
fn dmar_diff(before: &Image, after: &Image, exempt: Exempt) -> Result<(), String> {
    if before.dmar == after.dmar {
        return Ok(());
    }
    let rec = exempt.tdi().and_then(|t| {
        before
            .core
            .tdis
            .get(usize::from(t.slot()))
            .cloned()
            .flatten()
    });
    let rid = rec.as_ref().map(|r| r.iface.requester_id());
    let owner = rec.and_then(|r| r.state.owner());
    // An entry without what the exemption lets change: its tracking for the owner's TRACK,
    // and (the exempt TDI's) its presence and state bits.
    let kept = |e: &DmarEntry| {
        let tracked = exempt.removes() && Some(e.guest) == owner;
        let iotlb = if tracked {
            dmar::IotlbOwed::Nothing
        } else {
            e.iotlb
        };
        let mut q = e.te.architectural();
        if Some(e.rid) == rid {
            q[0] &= !dmar::PTE_P;
        }
        (e.rid, e.guest, q, iotlb)
    };
    let mine = |e: &&DmarEntry| Some(e.rid) == rid;
    let others =
        |img: &Image| -> Vec<_> { img.dmar.iter().filter(|e| !mine(e)).map(kept).collect() };
    let rank = |s: DmaState| match s {
        DmaState::Pending | DmaState::Active => 0,
        DmaState::Blocked => 1,
        DmaState::Invalidating => 2,
        DmaState::Invalidated => 3,
    };
    let (b, a) = (
        before.dmar.iter().find(mine).copied(),
        after.dmar.iter().find(mine).copied(),
    );
    let ok = others(before) == others(after)
        && match (b, a) {
            (Some(b), Some(a)) => {
                b == a
                    || (exempt.blocks()
                        && kept(&a) == kept(&b)
                        && !a.te.present()
                        && rank(a.te.state()) > 0
                        && rank(a.te.state()) >= rank(b.te.state()))
            }
            (Some(_), None) => exempt.removes(),
            (None, None) => true,
            (None, Some(_)) => false,
        };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "PASID entries {:?} -> {:?} under {exempt:?}",
            before.dmar, after.dmar
        ))
    }
}

/// A seed's operations (the seed generator's view of [`Op`]).
pub fn encode(five: bool, ops: &[Op]) -> Vec<u8> {
    let mut out = Vec::new();
    crate::enc::Encode::encode(&five, &mut out);
    out.extend(crate::enc::encode_all(ops));
    out
}

/// Decodes a seed back into operations (the seed generator checks the round trip).
pub fn decode(data: &[u8]) -> (bool, Vec<Op>) {
    let mut u = Unstructured::new(data);
    let five = bool::arbitrary(&mut u).unwrap_or(false);
    let mut ops = Vec::new();
    while !u.is_empty() && ops.len() < MAX_OPS {
        match Op::arbitrary(&mut u) {
            Ok(op) => ops.push(op),
            Err(_) => break,
        }
    }
    (five, ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TD's own IOTLB request through the target's checks: a held status page refused, the
    /// request accepted with its status word 4 mod 8, the host's INV_REQ_TD (pool 0 refused),
    /// then PROCESS while the status page is read-only: the call succeeds, nothing is written
    /// and the request stays active (review s23: a status write must not be dropped, nor a
    /// processed queue answered as a refusal); once the page is writable again PROCESS writes
    /// it (only there: the host-memory check) and the TD's next request is taken.
    #[test]
    fn a_tds_request_whose_status_page_turns_read_only_is_written_later() {
        let run_ops = || {
            let t0 = Td::Slot { slot: 0 };
            let descs = |status| TdDescs::Good {
                n: 1,
                page: 2,
                wait: true,
                data: 0xabcd,
                status,
            };
            let word = TdStatus::Word { page: 0, word: 7 };
            let request = |status| Op::TdInvRequest {
                td: t0,
                descs: descs(status),
                count: 0,
                at: 0,
            };
            let host = |pool| Op::IqRequest {
                tdi: 0,
                iommu: Iommu::Own,
                kind: InvKind::Td { td: t0, pool },
                wait: WaitDesc::Good { data: 1 },
                status: StatusAddr::Page { page: 2, word: 100 },
            };
            let process = Op::IqProcess {
                tdi: 0,
                iommu: Iommu::Own,
            };
            let ops = [
                Op::TdCreate,
                Op::DeviceCreate {
                    dev: 0,
                    bars: Bars::One,
                    list: ListMut::Fine,
                },
                Op::DevifCreate {
                    dev: 0,
                    bus: 0,
                    func: 0,
                    pages: 0,
                },
                Op::Bind {
                    tdi: 0,
                    td: t0,
                    report: Report::Split,
                    r8: false,
                    relay: Relay::Drive,
                },
                Op::DmarAdd {
                    tdi: 0,
                    td: t0,
                    idx: Idx::Good,
                    qw: AddQwords::Good,
                },
                Op::DmarAccept {
                    tdi: 0,
                    td: t0,
                    m: AcceptMut::Fine,
                },
                request(TdStatus::Tdr { k: 0 }),
                request(word),
                request(word),
                Op::HostPage {
                    page: 0,
                    read_only: true,
                },
                host(0),
                host(5),
                process,
                process,
                request(word),
                Op::HostPage {
                    page: 0,
                    read_only: false,
                },
                process,
                request(word),
                Op::UnbindAll { tdi: 0 },
            ];
            let stats = run(&encode(false, &ops));
            // Refused: the held TDR, IN_PROGRESS twice (the second while the word could not be
            // written), pool 0; then the unbind's three waits. The last request was taken.
            assert_eq!(stats.refused, 7, "{stats:?}");
        };
        std::thread::Builder::new()
            .stack_size(64 << 20)
            .spawn(run_ops)
            .expect("spawn")
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e));
    }
}
