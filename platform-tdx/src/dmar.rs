//! Trusted DMA on TDX Connect: the trusted IOMMU's scalable-mode PASID-table entries the
//! firmware keeps for the TDIs, one per TDI's requester ID (PASID 0, RID_PASID), and the
//! TDX-IO leaves that reach them (TDH.DMAR.ADD/BLOCK/READ/REMOVE, TDH.IQ.INV.REQUEST/PROCESS,
//! TDG.DMAR.ACCEPT), and the TD's own IOTLB invalidation requests (TDG.IQ.INV.REQUEST, queued
//! by the host's TDH.IQ.INV.REQUEST INV_REQ_TD on each IOMMU that needs them).
//!
//! Numbers are the TDX module's TDX-IO sources (intel/tdx-module, TDX-IO files at the commits
//! named per item: `include/tdx_api_defs.h` @a56a9173cda32a711510ac2fb87ce049c22f1450 for the
//! leaf numbers; `src/common/data_structures/tdxio/dmar_defs.h`
//! @92f6945d3621731b0db62424afaeef78458226e7 for the entry layout and states;
//! `src/vmm_dispatcher/api_calls/tdxio/tdh_dmar_add.c` and `src/common/tdxio/dmar.h`
//! (`is_valid_dmar_pasidte`) @be44324036407f857249fd47fdfaaa036135d459 for ADD's registers and
//! what the VMM may add; the other handlers as named) and the VT-d specification (rev. 4.1,
//! 9.6 "Scalable-Mode PASID Table Entry", 6.5.2.8 "Invalidation Wait Descriptor") for the
//! hardware fields. ADD's layout is the one with the TDR in RDX and the entry in R8..R15
//! (@be443240); a later module (@1666adc494dbea5db99895f37125a338c20bec5a) drops the TDR and
//! moves the entry to RDX..R14.
//!
//! Life of an entry (the module's `dmar_map_sts_e` and `dmar_inv_sts_e`): FREE; ADD by the
//! host: PENDING (bit 63), not present, no translation, SLPTPTR and DID 0 (the module then
//! sets the DID's top bit); ACCEPT by the owning TD: PRESENT, SLPTPTR the TD's S-EPT root, the
//! TD's domain in DID; BLOCK: not present, BLOCKED, invalidation PENDING; IQ.INV.REQUEST:
//! invalidation QUEUED; IQ.INV.PROCESS: invalidation DONE; REMOVE: FREE. Every refusal
//! changes no byte.
//!
//! The register block has no R15 ([`crate::abi::SeamRegs`] ends at R14, as the C ABI's
//! `struct tsm_tdx_regs`): the entry's qword 7, which the module takes in R15 and gives back
//! in R15, is 0 in every PASID entry it accepts (qwords 2..7 must be 0) and in every entry this
//! firmware keeps; ADD takes it as 0 and READ does not give it.

use tsm_core::capacity::{MAX_GUESTS, MAX_TDIS};
use tsm_core::dma::DmaState;
use tsm_core::{
    Completion, Error, GuestId, Hpa, InterfaceId, RequesterId, SecureSession, TableError, TdiId,
    TdiState, Tsm,
};

use crate::abi::{Dispatcher, HostMemory, Outcome, SeamRegs, core_err, invalid, named};
use crate::devif::devif_at;
use crate::module::{PageTable, SpdmTable, TdTable, devif_in, page_held, td_in};
use crate::sept::SeptError;
use crate::status::{
    self, OPERAND_ID_DMAR, OPERAND_ID_R8, OPERAND_ID_R9, OPERAND_ID_R10, OPERAND_ID_R11,
    OPERAND_ID_R12, OPERAND_ID_R13, OPERAND_ID_R14, OPERAND_ID_RCX, OPERAND_ID_RDX, TDX_SUCCESS,
};

/// TDH.DMAR.ADD (`tdx_api_defs.h` @a56a9173, `seamcall_leaf_opcode_e`).
pub const TDH_DMAR_ADD: u16 = 150;
/// TDH.DMAR.BLOCK (same enum).
pub const TDH_DMAR_BLOCK: u16 = 151;
/// TDH.DMAR.READ (same enum).
pub const TDH_DMAR_READ: u16 = 152;
/// TDH.DMAR.REMOVE (same enum).
pub const TDH_DMAR_REMOVE: u16 = 153;
/// TDH.IQ.INV.REQUEST (same enum).
pub const TDH_IQ_INV_REQUEST: u16 = 161;
/// TDH.IQ.INV.PROCESS (same enum).
pub const TDH_IQ_INV_PROCESS: u16 = 162;
/// TDG.DMAR.ACCEPT (same file, `tdcall_leaf_opcode_e`).
pub const TDG_DMAR_ACCEPT: u16 = 70;
/// TDG.IQ.INV.REQUEST (`tdx_api_defs.h` @6e66b9d2070aa49562518087160b2c6ae6418555,
/// `tdcall_leaf_opcode_e` `TDG_IQ_INV_REQUEST_LEAF`): the TD asks for IOTLB invalidations of
/// its own domain (RCX the descriptor count, RDX the page of descriptors). The module then
/// exits to the VMM (`TDX_IOTLB_INV_REQUEST`, the count in the exit details); this firmware has
/// no TD exit, so the TDCALL's return stands for it: RCX out the count each required IOMMU
/// must commit (ours).
pub const TDG_IQ_INV_REQUEST: u16 = 72;

// ---- dmar_idx_t (RCX of TDH.DMAR.*; `dmar_defs.h` @92f6945d) ----------------------------

/// `dmar_idx_t` bits 2:0: the table level (`dmar_lvl_e`).
pub const DMAR_IDX_LEVEL_MASK: u64 = 0x7;
/// `dmar_lvl_e` DMAR_PASIDTE: the only level this firmware keeps (ours: the root, context
/// and PASID-directory levels are the platform's, not modelled; other levels OPERAND_INVALID).
pub const DMAR_LVL_PASIDTE: u64 = 0;
/// `dmar_idx_t` bits 11:3: reserved, zero.
pub const DMAR_IDX_RESERVED: u64 = 0xff8;
/// `dmar_idx_t` bits 31:12: the PASID (must be 0 here, RID_PASID: `dmar.h` @1666adc4
/// requires RID_PASID 0 in the context entry).
pub const DMAR_IDX_PASID_SHIFT: u32 = 12;
/// `dmar_idx_t` bits 47:32: the requester ID (bus << 8 | devfn).
pub const DMAR_IDX_RID_SHIFT: u32 = 32;
/// `dmar_idx_t` bits 63:48: the IOMMU ID. Ours: the PCI segment the IOMMU serves (one trusted
/// IOMMU per segment; the TDX module numbers its IOMMUs at TDH.IOMMU.SETUP, not modelled).
pub const DMAR_IDX_IOMMU_SHIFT: u32 = 48;

/// A `dmar_idx_t` of the PASID entry of requester `rid` (PASID 0) on the IOMMU of its segment.
pub const fn dmar_idx(rid: RequesterId) -> u64 {
    ((rid.segment() as u64) << DMAR_IDX_IOMMU_SHIFT)
        | ((rid.routing_id() as u64) << DMAR_IDX_RID_SHIFT)
        | DMAR_LVL_PASIDTE
}

/// The requester a `dmar_idx_t` names, or `None` for a level other than the PASID entry,
/// reserved bits, or a PASID other than 0.
pub const fn decode_dmar_idx(raw: u64) -> Option<RequesterId> {
    let pasid = (raw >> DMAR_IDX_PASID_SHIFT) & 0xf_ffff;
    if raw & DMAR_IDX_LEVEL_MASK != DMAR_LVL_PASIDTE || raw & DMAR_IDX_RESERVED != 0 || pasid != 0 {
        return None;
    }
    let rid = ((raw >> DMAR_IDX_RID_SHIFT) & 0xffff) as u16;
    let segment = ((raw >> DMAR_IDX_IOMMU_SHIFT) & 0xffff) as u16;
    Some(RequesterId::from_routing(segment, rid))
}

// ---- the PASID-table entry (`dmar_pasidte_t`, 64 bytes) -----------------------------------

/// Qword 0 bit 0: P (present; VT-d 9.6).
pub const PTE_P: u64 = 1 << 0;
/// Qword 0 bits 4:2: AW, the second-level walk's address width (VT-d 9.6: 010b 4-level
/// 48-bit, 011b 5-level 57-bit). The module fills it at accept from the S-EPT's levels.
pub const PTE_AW_SHIFT: u32 = 2;
/// Qword 0 bit 5: SLEE (second-level execute enable), required 1 (`dmar.h` @1666adc4).
pub const PTE_SLEE: u64 = 1 << 5;
/// Qword 0 bits 8:6: PGTT, 010b second-level only, required (`dmar.h` @1666adc4).
pub const PTE_PGTT_SL: u64 = 0b010 << 6;
/// Qword 0 bit 10: the module's BLOCKED state bit (a reserved bit of VT-d; `dmar_defs.h`).
pub const PTE_SW_BLOCKED: u64 = 1 << 10;
/// Qword 0 bits 63:12: SLPTPTR, the second-level table's root (the TD's S-EPT). Bit 63 is the
/// module's PENDING bit (above any physical address), so the pointer is bits 51:12 here.
pub const PTE_SLPTPTR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Qword 0 bit 63: the module's PENDING state bit (`dmar_defs.h` @92f6945d).
pub const PTE_SW_PENDING: u64 = 1 << 63;
/// Qword 1 bits 15:0: DID, the domain ID (bits 79:64 of the entry).
pub const PTE_DID_MASK: u64 = 0xffff;
/// Qword 1 bits 17:16: the module's invalidation state (bits 81:80; `dmar_inv_sts_e`).
pub const PTE_INV_SHIFT: u32 = 16;
/// `dmar_inv_sts_e` INV_PENDING.
pub const INV_PENDING: u64 = 0;
/// `dmar_inv_sts_e` INV_QUEUED.
pub const INV_QUEUED: u64 = 1;
/// `dmar_inv_sts_e` INV_DONE.
pub const INV_DONE: u64 = 3;
/// Qword 1 bit 23: PWSNP (bit 87), required 1 (`dmar.h` @1666adc4).
pub const PTE_PWSNP: u64 = 1 << 23;
/// Qword 1 bit 24: PGSNP (bit 88), required 1.
pub const PTE_PGSNP: u64 = 1 << 24;
/// Qword 1 bit 26: EMTE (bit 90), required 1.
pub const PTE_EMTE: u64 = 1 << 26;
/// Qword 1 bits 29:27: EMT (bits 93:91), required 6 (write-back).
pub const PTE_EMT_WB: u64 = 6 << 27;
/// The domain ID's top bit the module sets at ADD (`dmar_pasidte_add`, `dmar.c` @92f6945d:
/// `BIT(did_msb)`, the IOMMU's domain-ID width). Ours: a 16-bit domain ID, bit 15.
pub const DID_TD_BIT: u64 = 1 << 15;

/// Qword 0 of the entry as the VMM must add it, but for AW: not present, SLEE, second-level
/// only, no SLPTPTR, SLADE 0 (`is_valid_dmar_pasidte`, `dmar.h` @be443240: SLADE must match
/// the S-EPT's A/D enable, which this S-EPT never sets), every reserved bit 0 (FPD too: ours,
/// the source names no rule for it). AW must name the TD's S-EPT depth ([`add_qword0`]).
pub const ADD_QWORD0: u64 = PTE_SLEE | PTE_PGTT_SL;
/// Qword 1 as the VMM must add it: DID 0, PWSNP, PGSNP, EMTE, EMT WB, CD/PWT/PCD/PAT 0
/// (`is_valid_dmar_pasidte`, `dmar.h` @be443240).
pub const ADD_QWORD1: u64 = PTE_PWSNP | PTE_PGSNP | PTE_EMTE | PTE_EMT_WB;

/// VT-d's AW of a second-level walk of `levels` (VT-d 4.1, 9.6: 010b 4-level 48-bit, 011b
/// 5-level 57-bit; the module's `AW_48_BIT` / `AW_57_BIT` against the EPTP's page-walk length).
pub const fn vtd_aw(levels: u8) -> u64 {
    if levels >= 5 { 0b011 } else { 0b010 }
}

/// Qword 0 as the VMM must add it for a TD whose S-EPT has `levels` levels.
pub const fn add_qword0(levels: u8) -> u64 {
    ADD_QWORD0 | vtd_aw(levels) << PTE_AW_SHIFT
}

/// Qword 0 of an ADD for a TD with a 4-level S-EPT (AW 2).
pub const ADD_QWORD0_4LEVEL: u64 = add_qword0(4);

/// The entry's qwords. Eight in the module; qword 7 is always 0 in an entry this firmware
/// keeps (first-level fields unused) and the register block has no R15: ADD takes and READ
/// gives qwords 0-6 (R8-R14).
pub const PTE_QWORDS: usize = 8;

/// `dmar_map_sts_e` (`dmar_defs.h` @92f6945d): FREE 0, PENDING 1, BLOCKED 2, PRESENT 3.
pub const MAP_PENDING: u64 = 1;
/// `dmar_map_sts_e` BLOCKED.
pub const MAP_BLOCKED: u64 = 2;
/// `dmar_map_sts_e` PRESENT.
pub const MAP_PRESENT: u64 = 3;

/// Qwords of a PASID entry that can be non-zero here: 0 and 1. Qwords 2..7 (first-level
/// fields and reserved bits) are 0 in every entry ADD accepts and nothing writes them, so they
/// are not stored (the table stays small: one per TDI in every shard).
const PTE_KEPT: usize = 2;

/// A 64-byte scalable-mode PASID-table entry with the module's state bits (qwords 0 and 1
/// kept; the rest is 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PasidTe([u64; PTE_KEPT]);

impl PasidTe {
    /// The entry's eight qwords.
    pub fn qwords(&self) -> [u64; PTE_QWORDS] {
        let mut out = [0; PTE_QWORDS];
        for (o, q) in out.iter_mut().zip(self.0) {
            *o = q;
        }
        out
    }

    fn q(&self, i: usize) -> u64 {
        self.0.get(i).copied().unwrap_or(0)
    }

    fn set(&mut self, i: usize, v: u64) {
        if let Some(q) = self.0.get_mut(i) {
            *q = v;
        }
    }

    /// The entry's state as the core sees it.
    pub fn state(&self) -> DmaState {
        let q0 = self.q(0);
        let inv = (self.q(1) >> PTE_INV_SHIFT) & 0x3;
        if q0 & PTE_SW_BLOCKED != 0 {
            // Only DONE completes: a value the module never writes (2) counts as queued.
            match inv {
                INV_PENDING => DmaState::Blocked,
                INV_DONE => DmaState::Invalidated,
                _ => DmaState::Invalidating,
            }
        } else if q0 & PTE_P != 0 {
            DmaState::Active
        } else {
            DmaState::Pending
        }
    }

    /// SLPTPTR: the second-level root the entry translates through (0 until accepted).
    pub fn slptptr(&self) -> u64 {
        self.q(0) & PTE_SLPTPTR_MASK
    }

    /// The domain ID.
    pub fn did(&self) -> u64 {
        self.q(1) & PTE_DID_MASK
    }

    /// Whether the IOMMU hardware would walk it (P set).
    pub fn present(&self) -> bool {
        self.q(0) & PTE_P != 0
    }

    /// The entry as TDH.DMAR.READ gives it: the module's state bits cleared (`dmar_arc_read`,
    /// `dmar.h` @1666adc4).
    pub fn architectural(&self) -> [u64; PTE_QWORDS] {
        let mut out = self.qwords();
        if let Some(q) = out.get_mut(0) {
            *q &= !(PTE_SW_BLOCKED | PTE_SW_PENDING);
        }
        if let Some(q) = out.get_mut(1) {
            *q &= !(0x3 << PTE_INV_SHIFT);
        }
        out
    }

    /// `dmar_state_info_t` (TDH.DMAR.READ RDX; `dmar.h` @1666adc4): level 2:0 (PASIDTE 0),
    /// map_sts 10:3, inv_sts 13:11, pd_cnt 18:14 (0 for a PASID entry).
    pub fn state_info(&self) -> u64 {
        let map = match self.state() {
            DmaState::Pending => MAP_PENDING,
            DmaState::Active => MAP_PRESENT,
            _ => MAP_BLOCKED,
        };
        let inv = (self.q(1) >> PTE_INV_SHIFT) & 0x3;
        DMAR_LVL_PASIDTE | map << 3 | inv << 11
    }
}

/// Which VMM-supplied qword of an ADD for a TD whose S-EPT has `levels` levels is not what
/// the module allows (its index), if any: a chosen SLPTPTR (qword 0) or DID (qword 1) is
/// refused as every other wrong bit (`is_valid_dmar_pasidte`, `dmar.h` @be443240: qword 0
/// names R8, qword 1 R9, qword q R8 + q).
pub fn invalid_add_qword(qwords: &[u64], levels: u8) -> Option<usize> {
    qwords.iter().enumerate().find_map(|(i, &q)| {
        let want = match i {
            0 => add_qword0(levels),
            1 => ADD_QWORD1,
            _ => 0,
        };
        (q != want).then_some(i)
    })
}

/// One PASID entry: the requester it translates for and the TD whose domain it is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmarEntry {
    /// The TDI's requester ID (the entry's place in the tables: context entry by RID, PASID 0).
    pub rid: RequesterId,
    /// The TD the entry was added for (the TDI's owner).
    pub guest: GuestId,
    /// The entry.
    pub te: PasidTe,
    /// What the entry's IOMMU owes the TD's domain since the TD's last TDH.MEM.TRACK.
    pub iotlb: IotlbOwed,
    /// The TD-requested invalidation's progress on the entry's IOMMU.
    pub td_inv: TdInvMark,
}

/// The progress of a TD-requested invalidation (TDG.IQ.INV.REQUEST) on one IOMMU: the
/// module's bit in `req_iommu_bm` and its `iotlb_committed` / `iotlb_complete` counts
/// (`tdcs_tdxio_fields_t`; `tdg_iq_inv_request.c` @1666adc494dbea5db99895f37125a338c20bec5a,
/// `tdh_iq_inv_request.c` and `tdh_iq_inv_process.c` @6e66b9d2070aa49562518087160b2c6ae6418555). Kept on each accepted
/// entry of the TD on the IOMMU, alike on all of them, as [`IotlbOwed`] is (ours: bounded by the
/// table's entries, no IOMMU count). The last such entry is not removed while descriptors the
/// host queued there wait for PROCESS (ours, [`DmarTable::td_inv_holds`]: the slots they hold
/// are counted on it); with nothing queued it goes, and the IOMMU's part of the request with
/// it: the entry's own invalidation, done before REMOVE, flushed the TD's DID there, which is
/// all the request asks of that IOMMU. So a TD's request never holds a teardown up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TdInvMark {
    /// The request needs this IOMMU and it has not completed every descriptor.
    pub required: bool,
    /// Descriptors the host's INV_REQ_TD requests queued here (`iotlb_committed`).
    pub committed: u8,
    /// Of those, queued and not yet processed (the trusted-queue slots they hold).
    pub queued: u8,
    /// Wait descriptors the host's INV_REQ_TD requests queued here, not yet processed.
    pub waits: u8,
    /// Descriptors TDH.IQ.INV.PROCESS completed here (`iotlb_complete`).
    pub complete: u8,
}

/// A TD's own invalidation request (TDG.IQ.INV.REQUEST): the module's `req_active`, `req_num`
/// and `status_complete_wr` / `_gpa` / `_data` (same sources).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TdInvRequest {
    /// A request is outstanding (`req_active`): a new one is `TDX_GUEST_INV_IN_PROGRESS`.
    pub active: bool,
    /// IOTLB descriptors each required IOMMU must complete (`req_num`: the count less the
    /// wait descriptor).
    pub req_num: u8,
    /// The wait descriptor's status GPA and data, written once when the last IOMMU completes.
    pub status: Option<(u64, u32)>,
}

/// Why a TD request step was refused (the dispatcher names the status and operand).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TdInvRefusal {
    /// `TDX_GUEST_INV_IN_PROGRESS`.
    InProgress,
    /// `TDX_GUEST_INV_NOT_REQUIRED`.
    NotRequired,
}

/// The TD-wide IOTLB tracking of one IOMMU, kept on each of the TD's PASID entries there (the
/// module's `iotlb_inv_tracker_t` per IOMMU in the TDCS, with `curr_iotlb_cnt` /
/// `prev_iotlb_cnt`: `tdh_mem_track.c` @1666adc494dbea5db99895f37125a338c20bec5a,
/// `tdh_iq_inv_request.c` and `tdh_iq_inv_process.c` @6e66b9d2070aa49562518087160b2c6ae6418555).
/// A TRACK marks every IOMMU with an accepted entry of the TD (SLPTPTR set, until REMOVE: the
/// module's `pasidte_ref_cnt`, counted up at ACCEPT, `tdg_dmar_accept.c` @6e66b9d2, where a
/// newly counted IOMMU owes nothing for the current epoch, and down at REMOVE,
/// `dmar_pasidte_remove`, `dmar.c` @92f6945d) as owing a domain-selective IOTLB invalidation
/// of the TD's DID;
/// TDH.IQ.INV.REQUEST of type [`INV_REQ_IOTLB`] queues it, TDH.IQ.INV.PROCESS completes it.
/// Kept per entry, not per IOMMU (ours): an IOMMU owes while any entry of the TD on it is
/// marked, so the record is bounded by the table's entries and needs no IOMMU count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IotlbOwed {
    /// Nothing owed (the IOMMU's `inv_epoch` is the TD epoch's parity).
    #[default]
    Nothing,
    /// The TD's last TRACK asked for the invalidation; not requested yet.
    Owed,
    /// Requested (`inv_req` 1), completed at TDH.IQ.INV.PROCESS.
    Queued,
}

/// The PASID entries of the TDIs of the TDs in one shard: at most one per TDI, no heap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmarTable {
    entries: [Option<DmarEntry>; MAX_TDIS],
    /// Each TD's own invalidation request, by guest slot.
    td_req: [TdInvRequest; MAX_GUESTS],
}

impl Default for DmarTable {
    fn default() -> Self {
        Self::new()
    }
}

impl DmarTable {
    /// No entry.
    pub const fn new() -> Self {
        Self {
            entries: [None; MAX_TDIS],
            td_req: [TdInvRequest {
                active: false,
                req_num: 0,
                status: None,
            }; MAX_GUESTS],
        }
    }

    /// The entry of requester `rid`.
    pub fn entry(&self, rid: RequesterId) -> Option<DmarEntry> {
        self.entries
            .iter()
            .flatten()
            .find(|e| e.rid == rid)
            .copied()
    }

    /// Every entry (in no particular order).
    pub fn entries(&self) -> impl Iterator<Item = &DmarEntry> {
        self.entries.iter().flatten()
    }

    fn slot_of(
        &mut self,
        guest: GuestId,
        iface: InterfaceId,
    ) -> Result<&mut DmarEntry, TableError> {
        let rid = iface.requester_id();
        self.entries
            .iter_mut()
            .flatten()
            .find(|e| e.rid == rid && e.guest == guest)
            .ok_or(TableError::NoDmaContext)
    }

    /// ADD: a PENDING entry, not present, SLPTPTR 0, DID the module's top bit only.
    pub fn create(&mut self, guest: GuestId, iface: InterfaceId) -> Result<(), TableError> {
        self.check_create(iface)?;
        let rid = iface.requester_id();
        let free = self
            .entries
            .iter_mut()
            .find(|e| e.is_none())
            .ok_or(TableError::OutOfFrames)?;
        let mut te = PasidTe::default();
        te.set(0, ADD_QWORD0 | PTE_SW_PENDING);
        te.set(1, ADD_QWORD1 | DID_TD_BIT);
        *free = Some(DmarEntry {
            rid,
            guest,
            te,
            iotlb: IotlbOwed::Nothing,
            td_inv: TdInvMark::default(),
        });
        Ok(())
    }

    /// [`DmarTable::create`]'s refusals, reading only: the interface has an entry
    /// (`DmaContextExists`), or the table has no free one (`OutOfFrames`).
    pub fn check_create(&self, iface: InterfaceId) -> Result<(), TableError> {
        let rid = iface.requester_id();
        if self.entries.iter().flatten().any(|e| e.rid == rid) {
            return Err(TableError::DmaContextExists);
        }
        if self.entries.iter().all(|e| e.is_some()) {
            return Err(TableError::OutOfFrames);
        }
        Ok(())
    }

    /// ACCEPT: present, SLPTPTR `root`, AW `aw`, DID the module's bit with `domain`,
    /// invalidation PENDING. A present entry stays as it is.
    pub fn accept(
        &mut self,
        guest: GuestId,
        iface: InterfaceId,
        root: u64,
        aw: u64,
        domain: u64,
    ) -> Result<(), TableError> {
        let e = self.slot_of(guest, iface)?;
        match e.te.state() {
            DmaState::Active => Ok(()),
            DmaState::Pending => {
                let q0 =
                    ADD_QWORD0 | PTE_P | (aw & 0x7) << PTE_AW_SHIFT | (root & PTE_SLPTPTR_MASK);
                let q1 = ADD_QWORD1 | DID_TD_BIT | (domain & PTE_DID_MASK);
                e.te.set(0, q0);
                e.te.set(1, q1);
                Ok(())
            }
            _ => Err(TableError::Inconsistent),
        }
    }

    /// BLOCK: not present, BLOCKED, invalidation PENDING (the module's state write, mask
    /// 0x8000000000000401 value 0x400: `tdh_dmar_block.c` @a56a9173). A blocked entry stays.
    pub fn block(&mut self, guest: GuestId, iface: InterfaceId) -> Result<(), TableError> {
        let e = self.slot_of(guest, iface)?;
        if matches!(e.te.state(), DmaState::Pending | DmaState::Active) {
            let q0 = e.te.q(0) & !(PTE_SW_PENDING | PTE_P) | PTE_SW_BLOCKED;
            let q1 = e.te.q(1) & !(0x3 << PTE_INV_SHIFT) | INV_PENDING << PTE_INV_SHIFT;
            e.te.set(0, q0);
            e.te.set(1, q1);
        }
        Ok(())
    }

    /// IQ.INV.REQUEST: a blocked entry's invalidation QUEUED; complete only once
    /// [`DmarTable::process`] ran (`true` when it is already).
    pub fn invalidate(&mut self, guest: GuestId, iface: InterfaceId) -> Result<bool, TableError> {
        let e = self.slot_of(guest, iface)?;
        match e.te.state() {
            DmaState::Pending | DmaState::Active => Err(TableError::DmaNotBlocked),
            DmaState::Blocked => {
                let q1 = e.te.q(1) & !(0x3 << PTE_INV_SHIFT) | INV_QUEUED << PTE_INV_SHIFT;
                e.te.set(1, q1);
                Ok(false)
            }
            DmaState::Invalidating => Ok(false),
            DmaState::Invalidated => Ok(true),
        }
    }

    /// IQ.INV.PROCESS on the IOMMU of `segment`: every QUEUED invalidation DONE (the wait
    /// descriptor seen complete), the PASID entries', the TD-wide IOTLB ones and the TDs' own
    /// requests' descriptors (`process_td_requests`), but the entry invalidations of the guests
    /// `held` names (tests: a host holding a guest's flushes,
    /// [`crate::sept::Sept::hold_flush`], as SEV's held fence holds a blocked sDTE's). Bounded
    /// by the table's size. How many completed.
    pub fn process(&mut self, segment: u16, held: impl Fn(GuestId) -> bool) -> usize {
        let mut done = 0usize;
        // The TDs whose domain flush (INV_REQ_IOTLB) completed here, by guest slot.
        let mut flushed = [false; MAX_GUESTS];
        for e in self.entries.iter_mut().flatten() {
            if e.rid.segment() != segment {
                continue;
            }
            if e.te.state() == DmaState::Invalidating && !held(e.guest) {
                let q1 = e.te.q(1) | INV_DONE << PTE_INV_SHIFT;
                e.te.set(1, q1);
                done = done.saturating_add(1);
            }
            if e.iotlb == IotlbOwed::Queued {
                e.iotlb = IotlbOwed::Nothing;
                if let Some(f) = flushed.get_mut(usize::from(e.guest.slot())) {
                    *f = true;
                }
                done = done.saturating_add(1);
            }
        }
        done.saturating_add(self.process_td_requests(segment, &flushed))
    }

    /// PROCESS's part for the TD requests on the IOMMU of `segment`: every queued descriptor
    /// complete (`iotlb_complete` counted up), and an IOMMU that completed the request's
    /// `req_num` descriptors no longer required (its `req_iommu_bm` bit cleared). Ours: only
    /// the TD's descriptors are counted; the module also counts each request's wait
    /// descriptor, which its `==` test then never matches once a request took two host calls.
    /// And a TD whose domain-selective flush (INV_REQ_IOTLB) completed here in the same
    /// PROCESS (`flushed`, by guest slot) has its request's mark cleared here whatever it
    /// counted: that flush covers every descriptor a TD may ask for (the module clears the
    /// IOMMU's `req_iommu_bm` bit in its INV_REQ_IOTLB case, `tdh_iq_inv_process.c`
    /// @6e66b9d2). How many IOMMU marks changed.
    fn process_td_requests(&mut self, segment: u16, flushed: &[bool; MAX_GUESTS]) -> usize {
        let mut done = 0usize;
        let reqs = self.td_req;
        for e in self.entries.iter_mut().flatten() {
            let m = &mut e.td_inv;
            let slot = usize::from(e.guest.slot());
            let covered = m.required && flushed.get(slot).copied().unwrap_or(false);
            if e.rid.segment() != segment || (m.queued == 0 && m.waits == 0 && !covered) {
                continue;
            }
            m.complete = m.complete.saturating_add(m.queued);
            m.queued = 0;
            m.waits = 0;
            let req_num = reqs.get(slot).map_or(0, |r| r.req_num);
            if covered || (m.required && m.complete >= req_num) {
                *m = TdInvMark::default();
            }
            done = done.saturating_add(1);
        }
        done
    }

    /// Whether a TD request is active with no IOMMU still required (what
    /// [`DmarTable::finish_td_requests`] would end).
    pub fn td_requests_finishing(&self) -> bool {
        self.td_req.iter().enumerate().any(|(slot, r)| {
            r.active
                && u16::try_from(slot).is_ok_and(|slot| !self.td_pending(GuestId::from_slot(slot)))
        })
    }

    /// Whether an IOMMU is still required by `guest`'s request.
    fn td_pending(&self, guest: GuestId) -> bool {
        self.entries()
            .any(|e| e.guest == guest && e.td_inv.required)
    }

    /// Ends the TD requests every required IOMMU has completed (`emulate_wait_complete` and
    /// `req_active` cleared together, `tdh_iq_inv_process.c` @6e66b9d2): `complete` is given
    /// the TD and its wait's status (GPA, data) and writes it, and only then is the request
    /// reset, in the same call, so under the caller's table lock: no new request of the TD can
    /// be taken before its old status word is written. A request whose `complete` answers
    /// `false` (its word could not be written) stays active, to be ended again; the others
    /// end all the same. Bounded by the guests times the entries. How many ended, and how many
    /// stay active for that reason.
    pub fn finish_td_requests(
        &mut self,
        mut complete: impl FnMut(GuestId, Option<(u64, u32)>) -> bool,
    ) -> (usize, usize) {
        let (mut ended, mut kept) = (0usize, 0usize);
        for slot in 0..self.td_req.len() {
            let Ok(id) = u16::try_from(slot) else {
                break;
            };
            let guest = GuestId::from_slot(id);
            let pending = self.td_pending(guest);
            let Some(r) = self.td_req.get_mut(slot) else {
                break;
            };
            if !r.active || pending {
                continue;
            }
            if complete(guest, r.status) {
                *r = TdInvRequest::default();
                ended = ended.saturating_add(1);
            } else {
                kept = kept.saturating_add(1);
            }
        }
        (ended, kept)
    }

    /// `guest` stops running (TDH.MNG.VPFLUSHDONE): its request ends unwritten, and its marks
    /// with nothing queued go; marks whose descriptors the host queued keep their slots until
    /// PROCESS completes them (the request no longer active, that PROCESS clears them).
    pub fn td_request_cancel(&mut self, guest: GuestId) {
        if let Some(r) = self.td_req.get_mut(usize::from(guest.slot())) {
            *r = TdInvRequest::default();
        }
        for e in self.entries.iter_mut().flatten() {
            let m = &mut e.td_inv;
            if e.guest == guest && m.queued == 0 && m.waits == 0 {
                *m = TdInvMark::default();
            }
        }
    }

    /// `guest`'s own invalidation request.
    pub fn td_request(&self, guest: GuestId) -> Option<TdInvRequest> {
        self.td_req.get(usize::from(guest.slot())).copied()
    }

    /// The mark of `guest`'s request on the IOMMU of `segment` (the first of its entries
    /// there that carries it: they agree), if the request needs that IOMMU.
    pub fn td_inv_mark(&self, guest: GuestId, segment: u16) -> Option<TdInvMark> {
        self.entries()
            .find(|e| e.guest == guest && e.rid.segment() == segment && e.td_inv.required)
            .map(|e| e.td_inv)
    }

    /// TDG.IQ.INV.REQUEST's state step for `guest`, its descriptors already checked:
    /// `InProgress` while a request is active; `NotRequired` when no IOMMU holds an accepted
    /// entry of the TD (`pasidte_ref_cnt` 0 everywhere); else the request active with `req_num`
    /// descriptors and the wait's status, and every accepted entry's IOMMU required with
    /// nothing committed. A refusal changes nothing.
    pub fn td_request_start(
        &mut self,
        guest: GuestId,
        req_num: u8,
        status: Option<(u64, u32)>,
    ) -> Result<(), TdInvRefusal> {
        self.td_request_check(guest)?;
        let r = self
            .td_req
            .get_mut(usize::from(guest.slot()))
            .ok_or(TdInvRefusal::NotRequired)?;
        *r = TdInvRequest {
            active: true,
            req_num,
            status,
        };
        for e in self.entries.iter_mut().flatten() {
            if e.guest == guest && e.te.slptptr() != 0 {
                e.td_inv = TdInvMark {
                    required: true,
                    ..TdInvMark::default()
                };
            }
        }
        Ok(())
    }

    /// Whether [`DmarTable::td_request_start`] would take a request of `guest` now.
    pub fn td_request_check(&self, guest: GuestId) -> Result<(), TdInvRefusal> {
        if self.td_request(guest).is_some_and(|r| r.active) {
            return Err(TdInvRefusal::InProgress);
        }
        if !self
            .entries()
            .any(|e| e.guest == guest && e.te.slptptr() != 0)
        {
            return Err(TdInvRefusal::NotRequired);
        }
        Ok(())
    }

    /// The descriptors the host's INV_REQ_TD for `guest` on the IOMMU of `segment` may
    /// commit now, at most `pool` and at most `room - 1` (one slot for its wait
    /// descriptor): `NotRequired` with no request active, the IOMMU not required, or every
    /// descriptor committed there (`tdh_iq_inv_request.c` @6e66b9d2).
    pub fn td_commit_count(
        &self,
        guest: GuestId,
        segment: u16,
        pool: u16,
        room: u16,
    ) -> Result<u8, TdInvRefusal> {
        let r = self
            .td_request(guest)
            .filter(|r| r.active)
            .ok_or(TdInvRefusal::NotRequired)?;
        let m = self
            .td_inv_mark(guest, segment)
            .ok_or(TdInvRefusal::NotRequired)?;
        let left = r.req_num.saturating_sub(m.committed);
        if left == 0 {
            return Err(TdInvRefusal::NotRequired);
        }
        let cap = u8::try_from(pool.min(room.saturating_sub(1))).unwrap_or(u8::MAX);
        Ok(left.min(cap))
    }

    /// Queues `count` of `guest`'s descriptors and one wait on the IOMMU of `segment`
    /// ([`DmarTable::td_commit_count`] said so): the descriptors still to commit there.
    pub fn td_commit(&mut self, guest: GuestId, segment: u16, count: u8) -> u8 {
        let req_num = self.td_request(guest).map_or(0, |r| r.req_num);
        let mut left = 0;
        for e in self.entries.iter_mut().flatten() {
            let m = &mut e.td_inv;
            if e.guest == guest && e.rid.segment() == segment && m.required {
                m.committed = m.committed.saturating_add(count);
                m.queued = m.queued.saturating_add(count);
                m.waits = m.waits.saturating_add(1);
                left = req_num.saturating_sub(m.committed);
            }
        }
        left
    }

    /// Whether removing the entry of `rid` would drop the last mark of its TD's request on
    /// its IOMMU while descriptors the host queued there wait for PROCESS (ours: REMOVE waits
    /// for the host's PROCESS, as for a TRACK's queued invalidation; only the host queues, so
    /// the TD cannot hold a teardown up: a request merely required there goes with the entry).
    pub fn td_inv_holds(&self, rid: RequesterId) -> bool {
        let Some(e) = self.entry(rid) else {
            return false;
        };
        e.td_inv.required
            && (e.td_inv.queued > 0 || e.td_inv.waits > 0)
            && !self.entries().any(|d| {
                d.rid != rid
                    && d.guest == e.guest
                    && d.rid.segment() == e.rid.segment()
                    && d.td_inv.required
            })
    }

    /// The trusted-queue slots the TD requests' descriptors and waits queued on the IOMMU of
    /// `segment` hold until PROCESS, counted once per TD (its entries there agree). They come
    /// out of the unreserved room only (ours: see the INV_REQ_TD handler).
    fn td_slots(&self, segment: u16) -> u16 {
        let mut slots = 0u16;
        for (i, e) in self.entries.iter().enumerate() {
            let Some(e) = e.as_ref().filter(|e| e.rid.segment() == segment) else {
                continue;
            };
            let counted_before = self
                .entries
                .iter()
                .take(i)
                .flatten()
                .any(|d| d.guest == e.guest && d.rid.segment() == segment && d.td_inv.required);
            if e.td_inv.required && !counted_before {
                slots = slots
                    .saturating_add(u16::from(e.td_inv.queued))
                    .saturating_add(u16::from(e.td_inv.waits));
            }
        }
        slots
    }

    /// The guest slot is free again (its TD destroyed): its request record starts over.
    pub fn forget_guest(&mut self, guest: GuestId) {
        if let Some(r) = self.td_req.get_mut(usize::from(guest.slot())) {
            *r = TdInvRequest::default();
        }
    }

    /// TDH.MEM.TRACK of `guest`: every IOMMU with an accepted entry of the TD (SLPTPTR set:
    /// present, or blocked and not yet removed) owes an invalidation of the TD's domain
    /// (`prev_iotlb_cnt = curr_iotlb_cnt`, `tdh_mem_track.c` @1666adc4). Whether any does.
    pub fn track(&mut self, guest: GuestId) -> bool {
        let mut any = false;
        for e in self.entries.iter_mut().flatten() {
            if e.guest == guest && e.te.slptptr() != 0 {
                e.iotlb = IotlbOwed::Owed;
                any = true;
            }
        }
        any
    }

    /// Whether an IOMMU still owes `guest`'s domain the invalidation its last TRACK asked
    /// for (`prev_iotlb_cnt != 0`).
    pub fn iotlb_owed(&self, guest: GuestId) -> bool {
        self.entries()
            .any(|e| e.guest == guest && e.iotlb != IotlbOwed::Nothing)
    }

    /// Whether TDH.IQ.INV.REQUEST of type [`INV_REQ_IOTLB`] for `guest` on the IOMMU of
    /// `segment` may queue now (`tdh_iq_inv_request.c` @6e66b9d2): the IOMMU owes nothing
    /// (`IotlbTrackingNotRequired`), or its request is queued already (`IotlbTrackingNotDone`).
    pub fn check_iotlb_request(&self, guest: GuestId, segment: u16) -> Result<(), SeptError> {
        let marks = || {
            self.entries()
                .filter(move |e| e.guest == guest && e.rid.segment() == segment)
                .map(|e| e.iotlb)
        };
        if marks().all(|o| o == IotlbOwed::Nothing) {
            Err(SeptError::IotlbTrackingNotRequired)
        } else if marks().any(|o| o == IotlbOwed::Queued) {
            Err(SeptError::IotlbTrackingNotDone)
        } else {
            Ok(())
        }
    }

    /// Queues the TD-wide invalidation [`DmarTable::check_iotlb_request`] allows; a refusal
    /// changes nothing.
    pub fn request_iotlb(&mut self, guest: GuestId, segment: u16) -> Result<(), SeptError> {
        self.check_iotlb_request(guest, segment)?;
        for e in self.entries.iter_mut().flatten() {
            if e.guest == guest && e.rid.segment() == segment && e.iotlb == IotlbOwed::Owed {
                e.iotlb = IotlbOwed::Queued;
            }
        }
        Ok(())
    }

    /// The queue slots the invalidations queued on the IOMMU of `segment` hold until
    /// [`DmarTable::process`] (the module's `iq_free_cnt` taken by TDH.IQ.INV.REQUEST and given
    /// back by TDH.IQ.INV.PROCESS): [`IQ_PASIDTE_DESCS`] per PASID entry whose invalidation is
    /// QUEUED (the host's request, or the firmware's own at the unbind's or ERROR's block,
    /// counted alike: ours), [`IQ_IOTLB_DESCS`] per TD whose domain invalidation is queued
    /// there. Each within its reservation ([`DmarTable::iq_committed`]). And the TD
    /// requests' descriptors and waits queued there (INV_REQ_TD), taken from the unreserved
    /// room. Bounded by the table's size.
    pub fn iq_used(&self, segment: u16) -> u16 {
        self.iq_count(
            segment,
            |e| e.te.state() == DmaState::Invalidating,
            |e| e.iotlb == IotlbOwed::Queued,
        )
        .saturating_add(self.td_slots(segment))
    }

    /// [`IQ_PASIDTE_DESCS`] per entry on the IOMMU of `segment` that `entry` counts, and
    /// [`IQ_IOTLB_DESCS`] per TD with an entry there that `domain` counts (counted once: a
    /// TD's domain request marks each of its entries on the IOMMU). Bounded by the table's
    /// size squared.
    fn iq_count(
        &self,
        segment: u16,
        entry: impl Fn(&DmarEntry) -> bool,
        domain: impl Fn(&DmarEntry) -> bool,
    ) -> u16 {
        let mut slots = 0u16;
        for (i, e) in self.entries.iter().enumerate() {
            let Some(e) = e.as_ref().filter(|e| e.rid.segment() == segment) else {
                continue;
            };
            if entry(e) {
                slots = slots.saturating_add(IQ_PASIDTE_DESCS);
            }
            let counted_before = self
                .entries
                .iter()
                .take(i)
                .flatten()
                .any(|d| d.guest == e.guest && d.rid.segment() == segment && domain(d));
            if domain(e) && !counted_before {
                slots = slots.saturating_add(IQ_IOTLB_DESCS);
            }
        }
        slots
    }

    /// The slots the trusted queue of the IOMMU of `segment` keeps for this table's entries,
    /// used or reserved (ours: the module reserves nothing, and queues only the host's
    /// requests): [`IQ_PASIDTE_DESCS`] per entry there whose invalidation is not DONE (reserved
    /// from ADD, so the firmware's own request at the unbind's or ERROR's block, or the host's,
    /// always has its room; used while QUEUED; given back by PROCESS, after which the entry
    /// never queues again), and [`IQ_IOTLB_DESCS`] per TD with an entry there (the domain
    /// request a TRACK may owe that IOMMU, reserved or queued; given back when the TD's last
    /// entry there is removed, which [`crate::sept::Sept`] refuses while it is owed). Counted
    /// from the entries' states, never kept: nothing can drift. The TD requests' queued
    /// descriptors and waits are counted as used (they reserve nothing ahead). At least
    /// [`DmarTable::iq_used`]. Bounded by the table's size.
    pub fn iq_committed(&self, segment: u16) -> u16 {
        self.iq_count(segment, |e| e.te.state() != DmaState::Invalidated, |_| true)
            .saturating_add(self.td_slots(segment))
    }

    /// The slots an ADD of `guest`'s entry on the IOMMU of `segment` reserves
    /// ([`DmarTable::iq_committed`]): the entry's, and its TD's domain's when it is the TD's
    /// first entry there.
    pub fn iq_add_reserves(&self, guest: GuestId, segment: u16) -> u16 {
        let known = self
            .entries()
            .any(|e| e.guest == guest && e.rid.segment() == segment);
        if known {
            IQ_PASIDTE_DESCS
        } else {
            IQ_PASIDTE_DESCS.saturating_add(IQ_IOTLB_DESCS)
        }
    }

    /// The reserved slots, not in use, that the invalidation of the entry of `rid` has
    /// ([`IQ_PASIDTE_DESCS`] until it is queued), else 0.
    pub fn iq_reserved_for_entry(&self, rid: RequesterId) -> u16 {
        match self.entry(rid).map(|e| e.te.state()) {
            Some(DmaState::Pending | DmaState::Active | DmaState::Blocked) => IQ_PASIDTE_DESCS,
            _ => 0,
        }
    }

    /// The reserved slots, not in use, that `guest`'s domain request on the IOMMU of
    /// `segment` has ([`IQ_IOTLB_DESCS`] while the TD has an entry there and its request is
    /// not queued), else 0.
    pub fn iq_reserved_for_domain(&self, guest: GuestId, segment: u16) -> u16 {
        let mut marks = self
            .entries()
            .filter(|e| e.guest == guest && e.rid.segment() == segment)
            .map(|e| e.iotlb)
            .peekable();
        if marks.peek().is_none() || marks.any(|o| o == IotlbOwed::Queued) {
            0
        } else {
            IQ_IOTLB_DESCS
        }
    }

    /// REMOVE: only BLOCKED with its invalidation DONE; the entry FREE.
    pub fn remove(&mut self, guest: GuestId, iface: InterfaceId) -> Result<(), TableError> {
        let state = self.slot_of(guest, iface)?.te.state();
        match state {
            DmaState::Invalidated => {}
            DmaState::Pending | DmaState::Active => return Err(TableError::DmaNotBlocked),
            DmaState::Blocked | DmaState::Invalidating => {
                return Err(TableError::InvalidationPending);
            }
        }
        let rid = iface.requester_id();
        for e in self.entries.iter_mut() {
            if e.is_some_and(|d| d.rid == rid && d.guest == guest) {
                *e = None;
            }
        }
        Ok(())
    }
}

// ---- the leaves -----------------------------------------------------------------------------

/// `inv_req_type` (TDH.IQ.INV.REQUEST RDX bits 31:0; `inv_req_type_e`,
/// `src/common/data_structures/tdxio/inv_queue_defs.h` @92f6945d3621731b0db62424afaeef78458226e7):
/// INV_REQ_PASIDTE, a blocked PASID entry's invalidation (R8 `rid_pasid`). This firmware takes
/// it, [`INV_REQ_IOTLB`] and [`INV_REQ_TD`] (ours: RTE 1, CTE 2, PDE 3 are for tables it does
/// not keep: OPERAND_INVALID + RDX).
pub const INV_REQ_PASIDTE: u64 = 4;
/// `inv_req_type_e` INV_REQ_IOTLB (same file): the domain-selective IOTLB invalidation of a
/// TD's DID on one IOMMU that the TD's last TDH.MEM.TRACK owes (R8 the TD's TDR;
/// `tdh_iq_inv_request.c` @6e66b9d2070aa49562518087160b2c6ae6418555).
pub const INV_REQ_IOTLB: u64 = 0;
/// `inv_req_type_e` INV_REQ_TD (same file @92f6945d; handled by `tdh_iq_inv_request.c`
/// @6e66b9d2070aa49562518087160b2c6ae6418555): queue the descriptors of the TD's own request
/// (TDG.IQ.INV.REQUEST) on one IOMMU, R8 the TD's TDR, RDX bits 47:32 how many at most
/// (`pool_size`, not 0).
pub const INV_REQ_TD: u64 = 5;
/// TDH.IQ.INV.REQUEST RDX `inv_req_type_t` (`inv_queue_defs.h` @92f6945d): bits 31:0 the type,
/// 47:32 `pool_size` (INV_REQ_TD only; 0 for every other type), 63:48 reserved.
pub const INV_REQ_POOL_SHIFT: u32 = 32;
/// `inv_req_type_t` bits 63:48, reserved (OPERAND_INVALID + RDX).
pub const INV_REQ_RESERVED: u64 = 0xffff << 48;
/// `MAX_TD_INV_DES_COUNT`: 32-byte descriptors in the TD's 4 KiB page (`inv_queue_defs.h`
/// @92f6945d), the most TDG.IQ.INV.REQUEST takes (RCX 1..=128).
pub const MAX_TD_INV_DESCS: u64 = 128;
/// Bytes of one invalidation descriptor (`inv_desc_t`, VT-d 4.1 6.5.2: 256-bit descriptors).
pub const INV_DESC_BYTES: usize = 32;
/// `INV_DESC_IOTLB` (`inv_desc_type_e`, `inv_queue_defs.h` @92f6945d): an IOTLB invalidate
/// descriptor (VT-d 4.1 6.5.2.4), qword 0 bits 3:0.
pub const INV_DESC_IOTLB: u64 = 2;
/// IOTLB descriptor qword 0 bits 5:4, the granularity.
pub const IOTLB_G_SHIFT: u32 = 4;
/// `IOTLB_G_DOMAIN_SELECTIVE` (same file): the whole domain.
pub const IOTLB_G_DOMAIN: u64 = 2;
/// `IOTLB_G_PAGE_SELECTIVE_WITHIN_DOMAIN` (same file): `2^AM` pages at ADDR.
pub const IOTLB_G_PAGE: u64 = 3;
/// IOTLB descriptor qword 0 bit 6, drain writes (required by the module).
pub const IOTLB_DW: u64 = 1 << 6;
/// IOTLB descriptor qword 0 bit 7, drain reads (required by the module).
pub const IOTLB_DR: u64 = 1 << 7;
/// IOTLB descriptor qword 0 bits 31:16, the DID: 0 from a TD (the module supplies the TD's).
pub const IOTLB_DID_SHIFT: u32 = 16;
/// IOTLB descriptor qword 1 bits 5:0, the address mask.
pub const IOTLB_AM_MASK: u64 = 0x3f;
/// IOTLB descriptor qword 1 bit 6, the invalidation hint: 1 for page-selective, 0 for
/// domain-selective, as the module requires (`tdg_iq_inv_request.c`).
pub const IOTLB_IH: u64 = 1 << 6;
/// IOTLB descriptor qword 1 bits 11:7, reserved.
pub const IOTLB_Q1_RESERVED: u64 = 0xf80;
/// Wait descriptor qword 0 IF (bit 4): no interrupt from a TD's wait.
pub const WAIT_DESC_IF: u64 = 1 << 4;
/// Wait descriptor qword 0 bits a TD's wait must match (`tdg_iq_inv_request.c`): the type (5,
/// high type 0), IF 0, SW 1, PD 0, the reserved bits 8 and 31:12 0; FN is the TD's choice.
pub const WAIT_DESC_TD_CHECKED: u64 = 0xffff_ffff & !WAIT_DESC_FN;
/// What [`WAIT_DESC_TD_CHECKED`] bits must be.
pub const WAIT_DESC_TD_REQUIRED: u64 = WAIT_DESC_TYPE | WAIT_DESC_SW;
/// TDH.IQ.INV.REQUEST R8 `rid_pasid`: bits 15:0 the RID, 31:16 reserved, 51:32 the PASID,
/// 63:52 reserved (same handler).
pub const RID_PASID_RESERVED: u64 = 0xffff_0000 | 0xfff << 52;
/// VT-d 4.1 6.5.2.8, the invalidation wait descriptor's qword 0: type bits 3:0 (5) and 11:9
/// (0), IF 4, SW 5, FN 6, PD 7, bits 8 and 31:12 reserved, status data 63:32.
pub const WAIT_DESC_TYPE: u64 = 0x5;
/// Wait descriptor SW: write the status data to the status address.
pub const WAIT_DESC_SW: u64 = 1 << 5;
/// Wait descriptor FN: fence, required (`tdh_iq_inv_request.c` @6e66b9d2).
pub const WAIT_DESC_FN: u64 = 1 << 6;
/// Wait descriptor qword 0 bits the module checks (`tdh_iq_inv_request.c` @6e66b9d2): the
/// type (5, high type 0), FN (1), PD (0: only with ECAP.PDS, which no IOMMU here reports, ours),
/// the reserved bits 8 and 31:12 (0). IF and SW are the host's choice.
pub const WAIT_DESC_CHECKED: u64 = 0xffff_ffff & !(1 << 4 | WAIT_DESC_SW);
/// What [`WAIT_DESC_CHECKED`] bits must be.
pub const WAIT_DESC_REQUIRED: u64 = WAIT_DESC_TYPE | WAIT_DESC_FN;
/// A host's wait descriptor qword 0 without its data: type 5, SW, FN (the C header's
/// `TSM_TDX_WAIT_DESC`; the status data goes in bits 63:32).
pub const WAIT_DESC_HOST: u64 = WAIT_DESC_TYPE | WAIT_DESC_SW | WAIT_DESC_FN;
/// Wait descriptor qword 1: the status address, 4-byte aligned (bits 1:0 reserved).
pub const WAIT_STATUS_ALIGN: u64 = 0x3;

/// `NUM_IQ_ENTRIES_IN_PAGE`: 32-byte descriptors in a 4 KiB page of the trusted invalidation
/// queue (`src/common/data_structures/tdxio/iommu_defs.h` @be44324036407f857249fd47fdfaaa036135d459).
pub const IQ_ENTRIES_PER_PAGE: u16 = 128;
/// The free slots of a trusted invalidation queue of one page: the module sets `iq_free_cnt`
/// to `pages * 128 - 1` when it configures the IOMMU (`configure_iommu`,
/// `src/common/tdxio/iommu.c` @1666adc494dbea5db99895f37125a338c20bec5a). The page count is
/// the host's at IOMMU set-up, which is not modelled: one page unless the firmware is built
/// with another ([`crate::TdxModule::with_iq_slots`]; ours).
pub const IQ_SLOTS_ONE_PAGE: u16 = IQ_ENTRIES_PER_PAGE - 1;
/// Descriptors a PASID entry's invalidation takes: PASID cache, IOTLB, wait
/// (`INV_REQ_WAIT_AND_IOTLB_DESC_SIZE`, `inv_queue_defs.h` @92f6945d).
pub const IQ_PASIDTE_DESCS: u16 = 3;
/// Descriptors a TD's domain invalidation takes: IOTLB, wait (`INV_REQ_AND_WAIT_DESC_SIZE`,
/// same file).
pub const IQ_IOTLB_DESCS: u16 = 2;

/// TDH.IQ.INV.REQUEST of TD `tdr`'s domain on IOMMU `iommu` ([`INV_REQ_IOTLB`]), as a host
/// issues it after a TDH.MEM.TRACK of a TD with trusted DMA (and before it unmaps, or retries
/// an unbind stopped for it): a fenced wait descriptor (type 5, SW, FN) writing `data` to the
/// 4-byte aligned shared `status`. TDH.IQ.INV.PROCESS of the IOMMU completes it.
pub const fn iotlb_request_regs(iommu: u16, tdr: u64, status: u64, data: u32) -> SeamRegs {
    SeamRegs {
        rax: TDH_IQ_INV_REQUEST as u64,
        rcx: iommu as u64,
        rdx: INV_REQ_IOTLB,
        r8: tdr,
        r9: WAIT_DESC_TYPE | WAIT_DESC_SW | WAIT_DESC_FN | (data as u64) << 32,
        r10: status,
        r11: 0,
        r12: 0,
        r13: 0,
        r14: 0,
    }
}

/// R8..R14: the entry qwords of ADD, and what ACCEPT requires zero.
fn entry_regs(r: &SeamRegs) -> [(u64, u32); 7] {
    [
        (r.r8, OPERAND_ID_R8),
        (r.r9, OPERAND_ID_R9),
        (r.r10, OPERAND_ID_R10),
        (r.r11, OPERAND_ID_R11),
        (r.r12, OPERAND_ID_R12),
        (r.r13, OPERAND_ID_R13),
        (r.r14, OPERAND_ID_R14),
    ]
}

/// The TDI of requester `rid` in the DEVIF pages `table` (none: its PASID entry is FREE,
/// `TDX_DMAR_INVALID_MAPPING_STATE` + `operand`).
fn dmar_tdi_in(table: &PageTable, rid: RequesterId, operand: u32) -> Result<TdiId, Outcome> {
    let function = u32::try_from(crate::abi::function_id(rid))
        .map_err(|_| Outcome::Status(invalid(OPERAND_ID_RCX)))?;
    devif_in(table, function)
        .map(|(tdi, _)| tdi)
        .ok_or(named(status::TDX_DMAR_INVALID_MAPPING_STATE, operand))
}

/// A core refusal of a DMAR leaf as the module reports its entry-state checks, naming
/// `operand`: the TDI still able to reach the guest (ours, the core's rule: the host tears a
/// context down only after STOP or a cut stream) `TDX_DEVIF_TDISP_INVALID_STATE`; an entry
/// FREE or not in the state `TDX_DMAR_INVALID_MAPPING_STATE`; its invalidation not done
/// `TDX_DMAR_INVALID_INV_STATE`; the TD's domain owed a TRACK's invalidation
/// `TDX_IOMMU_IOTLB_TRACKING_NOT_DONE` (`dmar_pasidte_remove`, `dmar.c` @92f6945d).
fn dmar_refusal(e: Error, operand: u32) -> Outcome {
    let code = match e {
        // The TDI's own state: as every other leaf names it (an unbound TDI is
        // TDX_DEVIF_INVALID_STATE, one in ERROR or unbinding the TSM statuses).
        Error::TdiBound => status::TDX_DEVIF_TDISP_INVALID_STATE,
        Error::TdiNotBound => status::TDX_DEVIF_INVALID_STATE,
        Error::TdiInError => status::TSM_TDI_IN_ERROR,
        Error::UnbindInProgress => status::TSM_UNBIND_IN_PROGRESS,
        Error::NoDmaContext | Error::DmaContextExists | Error::DmaNotBlocked => {
            status::TDX_DMAR_INVALID_MAPPING_STATE
        }
        Error::IotlbInvalidationPending => status::TDX_DMAR_INVALID_INV_STATE,
        Error::IotlbNotTracked => status::TDX_IOMMU_IOTLB_TRACKING_NOT_DONE,
        _ => return core_err(e),
    };
    named(code, operand)
}

impl<S: SecureSession, M: HostMemory, const SHARDS: usize> Dispatcher<'_, '_, S, M, SHARDS> {
    /// The TDI of requester `rid` (none: its PASID entry is FREE,
    /// `TDX_DMAR_INVALID_MAPPING_STATE` + `operand`).
    fn dmar_tdi(&self, rid: RequesterId, operand: u32) -> Result<TdiId, Outcome> {
        let table = self.fw.lock_pages().map_err(core_err)?;
        dmar_tdi_in(&table, rid, operand)
    }

    /// RCX `dmar_idx_t` of a PASID entry (else `TDX_OPERAND_INVALID` + RCX) and its TDI.
    fn dmar_target(&self, raw: u64) -> Result<(RequesterId, TdiId), Outcome> {
        let rid = decode_dmar_idx(raw).ok_or(Outcome::Status(invalid(OPERAND_ID_RCX)))?;
        Ok((rid, self.dmar_tdi(rid, OPERAND_ID_RCX)?))
    }

    /// The module's entry-state precondition of a host teardown leaf, checked only once the
    /// core lets the host tear down (so a TDI still reaching the guest gets the core's
    /// `TdiBound` first, after every operand check): `check` says the status code for the
    /// context's state (`None` for no context), or none when the leaf takes it. Read only: the
    /// core's call that follows decides again under its locks.
    fn dmar_precheck(
        &self,
        tdi: TdiId,
        check: impl Fn(Option<DmaState>) -> Option<u64>,
        operand: u32,
    ) -> Result<(), Outcome> {
        let record = self.tsm.tdi(tdi).map_err(core_err)?;
        let stream = self.tsm.device(record.device).map_err(core_err)?.stream;
        if !Tsm::<crate::sept::Sept<'_>, S, SHARDS>::host_may_tear_down(record.state, stream) {
            return Ok(());
        }
        match check(record.dma) {
            Some(code) => Err(named(code, operand)),
            None => Ok(()),
        }
    }

    /// The trusted-DMA host leaves ([`TDH_DMAR_ADD`], [`TDH_DMAR_BLOCK`], [`TDH_DMAR_READ`],
    /// [`TDH_DMAR_REMOVE`], [`TDH_IQ_INV_REQUEST`], [`TDH_IQ_INV_PROCESS`]).
    pub(crate) fn dmar_leaf(
        &self,
        leaf: u16,
        r: &SeamRegs,
        out: &mut SeamRegs,
    ) -> Result<Outcome, Outcome> {
        let st = Outcome::Status;
        let tsm = self.tsm;
        let done = Outcome::Core(Ok(Completion::Done));
        Ok(match leaf {
            // The module's order: RCX, RDX (the TD), the entry (R8..), then its state.
            TDH_DMAR_ADD => {
                let rid = decode_dmar_idx(r.rcx).ok_or(st(invalid(OPERAND_ID_RCX)))?;
                let tds = self.fw.read_tds_for(r.rdx).map_err(core_err)?;
                let td = td_in(&tds, r.rdx).ok_or(st(invalid(OPERAND_ID_RDX)))?;
                crate::td::usable(&tds, td).map_err(st)?;
                let regs = entry_regs(r);
                let qwords = regs.map(|(q, _)| q);
                let levels = tsm.with_guest_table(td, |t| t.levels()).map_err(core_err)?;
                if let Some(i) = invalid_add_qword(&qwords, levels) {
                    let id = regs.get(i).map_or(OPERAND_ID_R8, |(_, id)| *id);
                    return Err(st(invalid(id)));
                }
                // Held to the end: the room checked below is what the entry reserves (every
                // request that takes or gives back slots holds this lock too).
                let pages = self.fw.lock_pages().map_err(core_err)?;
                let tdi = dmar_tdi_in(&pages, rid, OPERAND_ID_RCX)?;
                let record = tsm.tdi(tdi).map_err(core_err)?;
                // Ours: the entry is for the TDI's owner only; another TD's is the
                // bind's owner mismatch, naming RDX.
                if let Some(owner) = record.state.owner()
                    && owner != td
                {
                    return Err(named(status::TDX_MMIO_DEVIF_OWNER_MISMATCH, OPERAND_ID_RDX));
                }
                // Ours (the module's ADD reserves nothing, `tdh_dmar_add.c` @1666adc4): an
                // entry the core would create reserves its slots in its IOMMU's trusted queue,
                // so no invalidation it may need is ever refused for room;
                // `TDX_IOMMU_IQ_QUEUE_FULL` + RCX when they are not free, nothing changed.
                // The core's own refusals come first.
                let creates = record.dma.is_none()
                    && matches!(record.state, TdiState::Locked { .. } | TdiState::Run { .. });
                if creates {
                    let segment = rid.segment();
                    let need = tsm
                        .with_guest_table(td, |t| t.dmar().iq_add_reserves(td, segment))
                        .map_err(core_err)?;
                    if self.iq_unreserved(segment)? < need {
                        return Err(named(status::TDX_IOMMU_IQ_QUEUE_FULL, OPERAND_ID_RCX));
                    }
                }
                tsm.host_dma_create(tdi)
                    .map_err(|e| dmar_refusal(e, OPERAND_ID_RCX))?;
                drop(pages);
                done
            }
            TDH_DMAR_BLOCK => {
                let (_, tdi) = self.dmar_target(r.rcx)?;
                // BLOCK takes PENDING or PRESENT (`tdh_dmar_block.c` @a56a9173); an entry the
                // firmware blocked itself (the unbind's first step, or the TDI's ERROR, which
                // also queue its invalidation) is blocked already: the host's BLOCK succeeds
                // and changes nothing (ours).
                let check = |s| match s {
                    Some(_) => None,
                    None => Some(status::TDX_DMAR_INVALID_MAPPING_STATE),
                };
                self.dmar_precheck(tdi, check, OPERAND_ID_RCX)?;
                tsm.host_dma_block(tdi)
                    .map_err(|e| dmar_refusal(e, OPERAND_ID_RCX))?;
                done
            }
            TDH_DMAR_REMOVE => {
                let (_, tdi) = self.dmar_target(r.rcx)?;
                // REMOVE takes BLOCKED (`tdh_dmar_remove.c` @6e66b9d2); its invalidation state
                // is the core's answer (the table's, which IQ.INV.PROCESS moves).
                let check = |s| match s {
                    Some(DmaState::Pending | DmaState::Active) | None => {
                        Some(status::TDX_DMAR_INVALID_MAPPING_STATE)
                    }
                    Some(_) => None,
                };
                self.dmar_precheck(tdi, check, OPERAND_ID_RCX)?;
                // The TD's domain owed (`IotlbNotTracked`): + RCX, as every other refusal.
                tsm.host_dma_remove(tdi)
                    .map_err(|e| dmar_refusal(e, OPERAND_ID_RCX))?;
                // The entry may have taken the last IOMMU a TD request still required: the
                // request ends now. The REMOVE is done either way: a lock busy elsewhere
                // leaves the request active, for the next PROCESS or REMOVE to end (ours).
                let _ = self.end_td_requests();
                done
            }
            TDH_DMAR_READ => {
                let (rid, tdi) = self.dmar_target(r.rcx)?;
                let not_present = named(status::TDX_DMAR_ENTRY_NOT_PRESENT, OPERAND_ID_RCX);
                let owner = tsm
                    .tdi(tdi)
                    .map_err(core_err)?
                    .state
                    .owner()
                    .ok_or(not_present)?;
                let entry = tsm
                    .with_guest_table(owner, |t| t.dmar().entry(rid))
                    .map_err(core_err)?
                    .filter(|e| e.guest == owner)
                    .ok_or(named(status::TDX_DMAR_ENTRY_NOT_PRESENT, OPERAND_ID_RCX))?;
                let q = entry.te.architectural();
                out.rdx = entry.te.state_info();
                let [q0, q1, q2, q3, q4, q5, q6, _] = q;
                (out.r8, out.r9, out.r10, out.r11, out.r12, out.r13, out.r14) =
                    (q0, q1, q2, q3, q4, q5, q6);
                done
            }
            // The module's order (`tdh_iq_inv_request.c` @6e66b9d2): RDX, RCX, R8, the entry's
            // state (+ R8), then the wait descriptor R9..R12.
            TDH_IQ_INV_REQUEST => {
                let inv_type = r.rdx & 0xffff_ffff;
                let pool = (r.rdx >> INV_REQ_POOL_SHIFT) & 0xffff;
                let pool_ok = (inv_type == INV_REQ_TD) == (pool != 0);
                if !matches!(inv_type, INV_REQ_PASIDTE | INV_REQ_IOTLB | INV_REQ_TD)
                    || r.rdx & INV_REQ_RESERVED != 0
                    || !pool_ok
                {
                    return Err(st(invalid(OPERAND_ID_RDX)));
                }
                let segment = iommu_of(r.rcx)?;
                // Held to the end: every leaf through which the firmware queues an entry's
                // invalidation itself (the unbind's and ERROR's, all DEVIF leaves) holds this
                // lock too, so the queue's room and the entry's state checked below are what
                // the request finds (as the module holds the IOMMU's lock).
                let pages = self.fw.lock_pages().map_err(core_err)?;
                // R8 `rid_pasid` of a PASIDTE request (`None`: malformed, refused below).
                let rid = (r.r8 & RID_PASID_RESERVED == 0 && (r.r8 >> 32) & 0xf_ffff == 0)
                    .then(|| u16::try_from(r.r8 & 0xffff).ok())
                    .flatten()
                    .map(|routing| RequesterId::from_routing(segment, routing));
                // INV_REQ_TD: room for one descriptor and its wait (`INV_REQ_AND_WAIT_DESC_SIZE`),
                // out of the unreserved room (ours: a TD's request may name up to 128 descriptors
                // per IOMMU, more than any reservation; the host commits them in as many calls
                // as the room allows, RCX out the rest, as the module's partial commit does).
                let (need, own) = match (inv_type == INV_REQ_IOTLB, rid) {
                    _ if inv_type == INV_REQ_TD => (IQ_IOTLB_DESCS, 0),
                    (true, _) => (IQ_IOTLB_DESCS, self.domain_reservation(segment, r.r8)?),
                    (false, Some(rid)) => (
                        IQ_PASIDTE_DESCS,
                        self.slots_over_shards(|d| d.iq_reserved_for_entry(rid))?,
                    ),
                    (false, None) => (IQ_PASIDTE_DESCS, 0),
                };
                // The unreserved room, and the slots reserved for what the request names
                // (ours: every request the state checks below let through has them).
                let room = self.iq_unreserved(segment)?;
                if room.saturating_add(own) < need {
                    return Err(named(status::TDX_IOMMU_IQ_QUEUE_FULL, OPERAND_ID_RDX));
                }
                if inv_type == INV_REQ_IOTLB {
                    return self.iotlb_request(segment, r);
                }
                if inv_type == INV_REQ_TD {
                    let pool = u16::try_from(pool).unwrap_or(u16::MAX);
                    return self.td_request_commit(segment, pool, room, r, out);
                }
                let rid = rid.ok_or(st(invalid(OPERAND_ID_R8)))?;
                let tdi = dmar_tdi_in(&pages, rid, OPERAND_ID_R8)?;
                // BLOCKED (else `TDX_DMAR_INVALID_MAPPING_STATE`) with its invalidation PENDING
                // (else `TDX_DMAR_INVALID_INV_STATE`), both + R8, before the wait descriptor
                // (`tdh_iq_inv_request.c` @6e66b9d2). The firmware queues the invalidation
                // itself when it blocks the entry (unbind, ERROR): a host request then finds it
                // QUEUED or DONE and is refused, queueing no descriptor, so no host waits on a
                // status word nothing will write; the host processes the queue (the Linux
                // order's REMOVE follows).
                let check = |s| match s {
                    Some(DmaState::Blocked) => None,
                    Some(DmaState::Invalidating | DmaState::Invalidated) => {
                        Some(status::TDX_DMAR_INVALID_INV_STATE)
                    }
                    _ => Some(status::TDX_DMAR_INVALID_MAPPING_STATE),
                };
                self.dmar_precheck(tdi, check, OPERAND_ID_R8)?;
                self.wait_descriptor(r)?;
                tsm.host_dma_invalidate(tdi)
                    .map_err(|e| dmar_refusal(e, OPERAND_ID_R8))?;
                drop(pages);
                // No TD-requested descriptors remain (INV_REQ_TD only).
                out.rcx = 0;
                done
            }
            // Every queued invalidation of the IOMMU, shard by shard (guest slot i is in shard
            // i); a shard busy elsewhere is `TDX_OPERAND_BUSY` with the shards before it done,
            // and the call is repeated (completing twice is completing once).
            // Then every TD request no IOMMU still requires ends ([`Self::end_td_requests`]):
            // its wait's status word written, and a new TDG.IQ.INV.REQUEST taken.
            TDH_IQ_INV_PROCESS => {
                let segment = iommu_of(r.rcx)?;
                for shard in 0..SHARDS {
                    let guest = u16::try_from(shard)
                        .map(GuestId::from_slot)
                        .map_err(|_| core_err(Error::Inconsistent))?;
                    tsm.with_guest_table(guest, |t| t.iq_process(segment))
                        .map_err(core_err)?;
                }
                // The queue is processed: BUSY keeps meaning "nothing changed", so a lock busy
                // here leaves the ending to the next PROCESS, REMOVE or unbind.
                let _ = self.end_td_requests();
                done
            }
            _ => st(invalid(status::OPERAND_ID_RAX)),
        })
    }

    /// Ends every TD request no IOMMU still requires, shard by shard
    /// ([`DmarTable::finish_td_requests`]): its wait's status word written
    /// ([`HostMemory::write_u32`]), under the same table lock as the request's reset, so no new request of the TD is
    /// taken before the old word is written (the module writes it and clears `req_active`
    /// under one lock, `emulate_wait_complete`, `tdh_iq_inv_process.c` @6e66b9d2). Not
    /// written, the request still ending (ours, [`deliver_td_status`]): a TD no longer usable
    /// (the module skips the write for a fatal TD; VPFLUSHDONE already ended its request), or
    /// a status page the firmware holds by now (the host handed it to TDH.MNG.CREATE, DEVIF
    /// or SPDM metadata since the request, which refused such a page). A word the memory no
    /// longer takes (checked writable at the request; host memory does not move, so only a
    /// host breaking that promise gets here) is not written and its request stays active (the
    /// TD keeps waiting; a new request is `TDX_GUEST_INV_IN_PROGRESS`): the next PROCESS,
    /// REMOVE or unbind writes it once it can (ours: never a word dropped while the TD may
    /// still poll it, and the caller's own work stands). Takes the TD table, the DEVIF pages
    /// and the SPDM table (in the lock order) only when a request ends; one busy elsewhere is
    /// the error.
    /// `outcome` of a leaf that may have run an unbind's Dma step (TSM.DEVIF.UNBIND,
    /// TDH.DEVIF.REQUEST STOP, TDH.DEVIF.RESPONSE to it): the step may have removed the last
    /// entry a TD's own IOTLB request still required, so the request ends now (its status
    /// written), not at some later PROCESS the host may never make. Not after a refusal, which
    /// changes nothing (a wait keeps its progress; its step removed nothing). The outcome
    /// stands either way: a lock busy elsewhere leaves the request for the next PROCESS,
    /// REMOVE or unbind (ours).
    pub(crate) fn ending_td_requests(&self, outcome: Outcome) -> Outcome {
        let refused = match outcome {
            Outcome::Core(r) => r.is_err(),
            Outcome::Status(s) => !status::is_success(s),
        };
        if !refused {
            let _ = self.end_td_requests();
        }
        outcome
    }

    pub(crate) fn end_td_requests(&self) -> Result<(), Outcome> {
        for shard in 0..SHARDS {
            let guest = u16::try_from(shard)
                .map(GuestId::from_slot)
                .map_err(|_| core_err(Error::Inconsistent))?;
            let ending = self
                .tsm
                .with_guest_table(guest, |t| t.dmar().td_requests_finishing())
                .map_err(core_err)?;
            if !ending {
                continue;
            }
            let tds = self.fw.read_tds().map_err(core_err)?;
            let pages = self.fw.lock_pages().map_err(core_err)?;
            let spdm = self.fw.read_spdm().map_err(core_err)?;
            let host = &self.host;
            self.tsm
                .with_guest_table(guest, |t| {
                    t.finish_td_requests(|td, status| {
                        deliver_td_status(host, &tds, &pages, &spdm, td, status).is_ok()
                    })
                })
                .map_err(core_err)?;
        }
        Ok(())
    }

    /// The unreserved slots of the trusted invalidation queue of the IOMMU of `segment`: the
    /// firmware's queue size less what every shard's entries there keep, used or reserved
    /// ([`DmarTable::iq_committed`]). Only TDH.DMAR.ADD and an INV_REQ_TD request take more,
    /// under the DEVIF lock, and only within this room, so the sum never passes the size and
    /// no invalidation the firmware queues itself (the unbind's and ERROR's block) can find
    /// the queue full.
    fn iq_unreserved(&self, segment: u16) -> Result<u16, Outcome> {
        let committed = self.slots_over_shards(|d| d.iq_committed(segment))?;
        Ok(self.fw.iq_slots().saturating_sub(committed))
    }

    /// `count` of every shard's PASID entries, summed (saturating: slots never pass a u16
    /// queue size).
    fn slots_over_shards(&self, count: impl Fn(&DmarTable) -> u16) -> Result<u16, Outcome> {
        let mut sum = 0u16;
        for shard in 0..SHARDS {
            let guest = u16::try_from(shard)
                .map(GuestId::from_slot)
                .map_err(|_| core_err(Error::Inconsistent))?;
            let here = self
                .tsm
                .with_guest_table(guest, |t| count(t.dmar()))
                .map_err(core_err)?;
            sum = sum.saturating_add(here);
        }
        Ok(sum)
    }

    /// The slots reserved, not in use, for the domain request of the TD whose TDR is R8 on
    /// the IOMMU of `segment` ([`DmarTable::iq_reserved_for_domain`]; no such TD: 0).
    fn domain_reservation(&self, segment: u16, r8: u64) -> Result<u16, Outcome> {
        let tds = self.fw.read_tds_for(r8).map_err(core_err)?;
        let Some(td) = td_in(&tds, r8) else {
            return Ok(0);
        };
        self.tsm
            .with_guest_table(td, |t| t.dmar().iq_reserved_for_domain(td, segment))
            .map_err(core_err)
    }

    /// The TD whose TDR R8 names (`TDX_OPERAND_INVALID` + R8 for none) and that may still be
    /// asked to run (`crate::td::usable`'s status), with the TD table held for the call.
    fn usable_td(
        &self,
        tdr: u64,
    ) -> Result<(spin::RwLockReadGuard<'_, TdTable>, GuestId), Outcome> {
        let tds = self.fw.read_tds_for(tdr).map_err(core_err)?;
        let td = td_in(&tds, tdr).ok_or(Outcome::Status(invalid(OPERAND_ID_R8)))?;
        crate::td::usable(&tds, td).map_err(Outcome::Status)?;
        Ok((tds, td))
    }

    /// TDH.IQ.INV.REQUEST of type [`INV_REQ_IOTLB`] on the IOMMU of `segment` (RCX and RDX
    /// checked): R8 the TD's TDR (else `TDX_OPERAND_INVALID` + R8), then the TD's tracking on
    /// that IOMMU: owing nothing `TDX_IOMMU_IOTLB_TRACKING_NOT_REQUIRED`, already queued
    /// `TDX_IOMMU_IOTLB_TRACKING_NOT_DONE` (both without an operand, as the module returns
    /// them), then the wait descriptor R9..R12 as for a PASID entry; queued until
    /// TDH.IQ.INV.PROCESS of the IOMMU (`tdh_iq_inv_request.c` @6e66b9d2 for the order).
    fn iotlb_request(&self, segment: u16, r: &SeamRegs) -> Result<Outcome, Outcome> {
        let st = Outcome::Status;
        let (_tds, td) = self.usable_td(r.r8)?;
        // Both without an operand, as the module returns them.
        let tracking = |e: SeptError| match e {
            SeptError::IotlbTrackingNotDone => st(status::TDX_IOMMU_IOTLB_TRACKING_NOT_DONE),
            e => st(status::sept_status(e, OPERAND_ID_R8)),
        };
        self.tsm
            .with_guest_table(td, |t| t.dmar().check_iotlb_request(td, segment))
            .map_err(core_err)?
            .map_err(tracking)?;
        self.wait_descriptor(r)?;
        self.tsm
            .with_guest_table(td, |t| t.request_iotlb(td, segment))
            .map_err(core_err)?
            .map_err(tracking)?;
        Ok(Outcome::Core(Ok(Completion::Done)))
    }

    /// TDH.IQ.INV.REQUEST of type [`INV_REQ_TD`] on the IOMMU of `segment` (RCX, RDX and the
    /// room for one descriptor and its wait checked; `room` the unreserved slots): R8 the TD's
    /// TDR (else `TDX_OPERAND_INVALID` + R8), then the TD's request: none active, the IOMMU not
    /// required by it, or every descriptor committed there: `TDX_GUEST_INV_NOT_REQUIRED` + R8;
    /// then the wait descriptor R9..R12 as for the other types. Queues
    /// min(descriptors left, `pool`, `room` - 1) of the TD's descriptors (with the TD's DID,
    /// which this model does not write out: its queue counts slots) and the host's wait; RCX
    /// out the descriptors still to commit there (`tdh_iq_inv_request.c` @6e66b9d2).
    /// TDH.IQ.INV.PROCESS completes them.
    fn td_request_commit(
        &self,
        segment: u16,
        pool: u16,
        room: u16,
        r: &SeamRegs,
        out: &mut SeamRegs,
    ) -> Result<Outcome, Outcome> {
        let (_tds, td) = self.usable_td(r.r8)?;
        let not_required = |_| named(status::TDX_GUEST_INV_NOT_REQUIRED, OPERAND_ID_R8);
        let count = self
            .tsm
            .with_guest_table(td, |t| t.dmar().td_commit_count(td, segment, pool, room))
            .map_err(core_err)?
            .map_err(not_required)?;
        self.wait_descriptor(r)?;
        let left = self
            .tsm
            .with_guest_table(td, |t| t.td_commit(td, segment, count))
            .map_err(core_err)?;
        out.rcx = u64::from(left);
        Ok(Outcome::Core(Ok(Completion::Done)))
    }

    /// TDG.IQ.INV.REQUEST ([`TDG_IQ_INV_REQUEST`]) from TD `td`, in the module's order
    /// (intel/tdx-module `tdg_iq_inv_request.c` @1666adc494dbea5db99895f37125a338c20bec5a):
    /// RCX the descriptor count, 1..=[`MAX_TD_INV_DESCS`] (else `TDX_OPERAND_INVALID` + RCX);
    /// RDX the descriptors' page, 4 KiB aligned (else + RDX), a private GPA of the TD that can
    /// be read (ours, below); no request of the TD outstanding (`TDX_GUEST_INV_IN_PROGRESS`);
    /// each descriptor (`td_descriptor`: `TDX_GUEST_INV_INVALID_DESC` + its index); an IOMMU
    /// holding an accepted entry of the TD (else `TDX_GUEST_INV_NOT_REQUIRED` + RDX); then
    /// ours, a request with something to invalidate (a lone wait: `INVALID_DESC` + 0). Then the
    /// request is active on every such IOMMU and RCX out is the count each must commit (the
    /// module's TD exit to the VMM, `TDX_IOTLB_INV_REQUEST`, whose details carry it: this
    /// firmware's TDCALL returns to its caller, which stands for both, ours). A refusal changes
    /// nothing and writes no register but RAX.
    ///
    /// Ours: this model keeps no TD private memory (its S-EPT maps MMIO only), so the TD's page
    /// and its status word are reached through the dispatcher's memory at the GPA itself. The
    /// GPA must be private (below the shared bit of the S-EPT's width: bit 47 with 4 levels, 51
    /// with 5; else `TDX_OPERAND_INVALID` + RDX where the module's walk refuses it) and the
    /// whole span of descriptors readable (else the memory's refusal + RDX,
    /// `TDX_OPERAND_ADDR_RANGE_ERROR`). Since the GPA is a host address here, a page the
    /// firmware holds ([`page_held`]: a TDR, a TDI's private page, SPDM or IDE metadata) is
    /// refused as the descriptors' page (`TDX_OPERAND_INVALID` + RDX) and as the wait's status
    /// word, which must also take a 4-byte store ([`HostMemory::probe_write_u32`]; else
    /// `INVALID_DESC` + the wait's index), so PROCESS can write it; the DEVIF lock is held from
    /// that check to the end (contended: `TDX_OPERAND_BUSY`, nothing changed). The descriptors
    /// are checked and counted, not kept: the model's trusted queue counts slots and holds no
    /// descriptors. A lone wait descriptor (nothing to invalidate) is refused
    /// `TDX_GUEST_INV_INVALID_DESC` + 0 after the module's checks: the module would take it
    /// with `req_num` 0, which no host request can then complete.
    pub(crate) fn td_inv_request(
        &self,
        tds: &TdTable,
        td: GuestId,
        r: &SeamRegs,
        out: &mut SeamRegs,
    ) -> Result<Outcome, Outcome> {
        let st = Outcome::Status;
        if r.rcx == 0 || r.rcx > MAX_TD_INV_DESCS {
            return Err(st(invalid(OPERAND_ID_RCX)));
        }
        // At most 128: the span fits a page.
        let count = usize::try_from(r.rcx).map_err(|_| st(invalid(OPERAND_ID_RCX)))?;
        if r.rdx & 0xfff != 0 {
            return Err(st(invalid(OPERAND_ID_RDX)));
        }
        let levels = self
            .tsm
            .with_guest_table(td, |t| t.levels())
            .map_err(core_err)?;
        if !private_gpa(r.rdx, levels) {
            return Err(st(invalid(OPERAND_ID_RDX)));
        }
        let span = count.saturating_mul(INV_DESC_BYTES);
        self.host
            .probe_read(r.rdx, span)
            .map_err(|f| st(crate::abi::host_fault(f, OPERAND_ID_RDX)))?;
        // Held to the end: the pages the firmware holds cannot change under the checks.
        let pages = self.fw.lock_pages().map_err(core_err)?;
        let spdm = self.fw.read_spdm().map_err(core_err)?;
        let held = |gpa: u64| {
            Hpa::try_new(gpa & !0xfff).map_or(true, |p| page_held(tds, &pages, &spdm, p))
        };
        if held(r.rdx) {
            return Err(st(invalid(OPERAND_ID_RDX)));
        }
        let active = self
            .tsm
            .with_guest_table(td, |t| t.dmar().td_request(td))
            .map_err(core_err)?
            .is_some_and(|q| q.active);
        if active {
            return Err(st(status::TDX_GUEST_INV_IN_PROGRESS));
        }
        let mut wait = None;
        let mut at = r.rdx;
        for i in 0..count {
            let mut bytes = [0u8; INV_DESC_BYTES];
            self.host
                .read(at, &mut bytes)
                .map_err(|f| st(crate::abi::host_fault(f, OPERAND_ID_RDX)))?;
            at = at.saturating_add(INV_DESC_BYTES as u64);
            let last = i.saturating_add(1) == count;
            let index = u32::try_from(i).map_err(|_| st(invalid(OPERAND_ID_RCX)))?;
            let bad = || named(status::TDX_GUEST_INV_INVALID_DESC, index);
            match td_descriptor(&bytes, last, levels).ok_or_else(bad)? {
                TdDescriptor::Iotlb => {}
                // Ours: the status word is one the firmware may write at PROCESS (the
                // memory takes a 4-byte store there, the page is not held): else the wait is
                // refused as a descriptor the TD may not ask for.
                TdDescriptor::Wait { gpa, data } => {
                    if held(gpa) || self.host.probe_write_u32(gpa).is_err() {
                        return Err(bad());
                    }
                    wait = Some((gpa, data));
                }
            }
        }
        let req_num = count.saturating_sub(usize::from(wait.is_some()));
        let req_num = u8::try_from(req_num).map_err(|_| st(invalid(OPERAND_ID_RCX)))?;
        // The module's state checks first (`NOT_REQUIRED` for a TD with no accepted entry),
        // then ours: a lone wait (nothing to invalidate) is `INVALID_DESC` + 0.
        self.tsm
            .with_guest_table(td, |t| {
                t.dmar().td_request_check(td)?;
                if req_num == 0 {
                    return Err(None);
                }
                t.td_request_start(td, req_num, wait).map_err(Some)
            })
            .map_err(core_err)?
            .map_err(|e| match e {
                Some(TdInvRefusal::InProgress) => st(status::TDX_GUEST_INV_IN_PROGRESS),
                Some(TdInvRefusal::NotRequired) => {
                    named(status::TDX_GUEST_INV_NOT_REQUIRED, OPERAND_ID_RDX)
                }
                None => named(status::TDX_GUEST_INV_INVALID_DESC, 0),
            })?;
        drop((pages, spdm));
        out.rcx = u64::from(req_num);
        Ok(st(TDX_SUCCESS))
    }

    /// The wait descriptor of TDH.IQ.INV.REQUEST, R9..R12 (VT-d 4.1 6.5.2.8): the type, FN
    /// and reserved bits (`TDX_OPERAND_INVALID` + R9), the status address (+ R10), qwords 2
    /// and 3 zero (+ R11, + R12).
    fn wait_descriptor(&self, r: &SeamRegs) -> Result<(), Outcome> {
        let st = Outcome::Status;
        if r.r9 & WAIT_DESC_CHECKED != WAIT_DESC_REQUIRED {
            return Err(st(invalid(OPERAND_ID_R9)));
        }
        self.wait_status(r.r10)?;
        if r.r11 != 0 {
            return Err(st(invalid(OPERAND_ID_R11)));
        }
        if r.r12 != 0 {
            return Err(st(invalid(OPERAND_ID_R12)));
        }
        Ok(())
    }

    /// The wait descriptor's status address (R10): 4-byte aligned, below 2^52 with no KeyID
    /// bits (a shared address: the module refuses a private KeyID), in host memory the IOMMU
    /// can write (`TDX_OPERAND_INVALID` + R10).
    fn wait_status(&self, raw: u64) -> Result<(), Outcome> {
        let bad = || Outcome::Status(invalid(OPERAND_ID_R10));
        if raw & WAIT_STATUS_ALIGN != 0 || raw & crate::td::KEYID_MASK != 0 {
            return Err(bad());
        }
        tsm_core::Hpa::try_new(raw).map_err(|_| bad())?;
        // The IOMMU's 4-byte status write lands in the aligned 8-byte word holding it: host
        // memory (the C window) is checked a word at a time.
        self.host.probe_write(raw & !0x7, 8).map_err(|_| bad())
    }

    /// TDG.DMAR.ACCEPT ([`TDG_DMAR_ACCEPT`]) from TD `td`: RDX `dmar_target` (vm_idx 7:0 0,
    /// the L1 S-EPT; PASID 27:8 0; 63:28 reserved: else `TDX_OPERAND_INVALID` + RDX), R8..R14
    /// zero (each `TDX_OPERAND_INVALID` naming it), then the TDI RCX names (as every TDG.DEVIF
    /// leaf), its owner (another TD's: `TDX_DEVIF_INVALID_METADATA` + RCX), its TDISP state
    /// CONFIG_LOCKED or RUN (else `TDX_DEVIF_TDISP_INVALID_STATE` + RCX), its entry PENDING or
    /// PRESENT (else `TDX_DMAR_INVALID_MAPPING_STATE` + DMAR).
    pub(crate) fn dmar_accept(&self, td: GuestId, r: &SeamRegs) -> Result<Outcome, Outcome> {
        let st = Outcome::Status;
        if r.rdx != 0 {
            return Err(st(invalid(OPERAND_ID_RDX)));
        }
        if let Some((_, id)) = entry_regs(r).into_iter().find(|(q, _)| *q != 0) {
            return Err(st(invalid(id)));
        }
        let table = self.fw.lock_pages().map_err(core_err)?;
        let (tdi, _) = devif_at(&table, r.rcx).map_err(st)?;
        self.tsm.guest_dma_accept(td, tdi).map_err(|e| {
            let code = match e {
                Error::NotOwner => status::TDX_DEVIF_INVALID_METADATA,
                Error::TdiNotBound | Error::TdiInError | Error::UnbindInProgress => {
                    status::TDX_DEVIF_TDISP_INVALID_STATE
                }
                Error::NoDmaContext | Error::NotMapped => {
                    return named(status::TDX_DMAR_INVALID_MAPPING_STATE, OPERAND_ID_DMAR);
                }
                _ => return core_err(e),
            };
            named(code, OPERAND_ID_RCX)
        })?;
        Ok(st(TDX_SUCCESS))
    }
}

/// The status word of TD `td`'s ending request (`status`: its wait's GPA and data, none
/// without a wait): its 4 bytes written at the GPA (the model's host address), skipped for a TD
/// no longer usable and for a page the firmware holds ([`page_held`]: never written, whoever
/// asks). Only the store can fail.
fn deliver_td_status<M: HostMemory>(
    host: &M,
    tds: &TdTable,
    pages: &PageTable,
    spdm: &SpdmTable,
    td: GuestId,
    status: Option<(u64, u32)>,
) -> Result<(), crate::abi::HostFault> {
    let Some((gpa, data)) = status else {
        return Ok(());
    };
    if crate::td::usable(tds, td).is_err() {
        return Ok(());
    }
    let held = Hpa::try_new(gpa & !0xfff).map_or(true, |p| page_held(tds, pages, spdm, p));
    if held {
        return Ok(());
    }
    host.write_u32(gpa, data)
}

/// A descriptor of a TD's request, as TDG.IQ.INV.REQUEST takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TdDescriptor {
    /// An IOTLB invalidation of the TD's domain (domain- or page-selective).
    Iotlb,
    /// The closing wait: the status word to write at completion.
    Wait { gpa: u64, data: u32 },
}

/// One descriptor of a TD's request (`tdg_iq_inv_request.c` @1666adc4), `last` whether it is
/// the request's last, `levels` the TD's S-EPT depth; `None` when the module refuses it. An
/// IOTLB descriptor (VT-d 4.1 6.5.2.4): domain- or page-selective granularity, drain reads and
/// writes set, DID 0, IH 1 exactly for page-selective, the reserved bits and qwords 2 and 3
/// 0, and AM and ADDR 0 for domain-selective. A wait descriptor (6.5.2.8): only last, SW set,
/// IF and PD clear, the reserved bits and qwords 2 and 3 0, its status address 4-byte aligned
/// and a private GPA of the TD. Any other type: refused.
fn td_descriptor(bytes: &[u8; INV_DESC_BYTES], last: bool, levels: u8) -> Option<TdDescriptor> {
    let mut qwords = [0u64; 4];
    for (q, c) in qwords.iter_mut().zip(bytes.chunks_exact(8)) {
        *q = u64::from_le_bytes(<[u8; 8]>::try_from(c).ok()?);
    }
    let [q0, q1, q2, q3] = qwords;
    if q2 != 0 || q3 != 0 {
        return None;
    }
    match q0 & 0xf {
        INV_DESC_IOTLB => {
            let page = match (q0 >> IOTLB_G_SHIFT) & 0x3 {
                IOTLB_G_DOMAIN => false,
                IOTLB_G_PAGE => true,
                _ => return None,
            };
            // Everything past type and granularity: DW and DR, nothing else (DID 0).
            let rest = q0 & !(0xf | 0x3 << IOTLB_G_SHIFT);
            let ih = q1 & IOTLB_IH != 0;
            let ok = rest == IOTLB_DW | IOTLB_DR
                && ih == page
                && q1 & IOTLB_Q1_RESERVED == 0
                && (page || q1 & !IOTLB_IH == 0);
            ok.then_some(TdDescriptor::Iotlb)
        }
        WAIT_DESC_TYPE => {
            let ok = last
                && q0 & WAIT_DESC_TD_CHECKED == WAIT_DESC_TD_REQUIRED
                && q1 & WAIT_STATUS_ALIGN == 0
                && private_gpa(q1, levels);
            let data = u32::try_from(q0 >> 32).ok()?;
            ok.then_some(TdDescriptor::Wait { gpa: q1, data })
        }
        _ => None,
    }
}

/// Whether `gpa` is a private GPA of a TD whose S-EPT has `levels` (ours: the GPA width the
/// S-EPT's depth gives, 48 or 52 bits, its top bit the shared bit, as TDX's GPAW does).
fn private_gpa(gpa: u64, levels: u8) -> bool {
    let shared_bit = if levels >= 5 { 51 } else { 47 };
    gpa >> shared_bit == 0
}

/// RCX `iommu_id` of the IQ leaves: the segment (ours, as [`DMAR_IDX_IOMMU_SHIFT`]); bits
/// 63:16 reserved (`TDX_OPERAND_INVALID` + RCX).
fn iommu_of(raw: u64) -> Result<u16, Outcome> {
    u16::try_from(raw).map_err(|_| Outcome::Status(invalid(OPERAND_ID_RCX)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_names_its_requester_and_refuses_other_levels() {
        let rid = RequesterId::try_new(1, 3, 2, 1).unwrap();
        assert_eq!(decode_dmar_idx(dmar_idx(rid)), Some(rid));
        assert_eq!(decode_dmar_idx(dmar_idx(rid) | 1), None);
        assert_eq!(decode_dmar_idx(dmar_idx(rid) | 1 << 3), None);
        assert_eq!(decode_dmar_idx(dmar_idx(rid) | 1 << 12), None);
    }

    #[test]
    fn an_add_may_choose_neither_translation_nor_domain() {
        let q0 = add_qword0(4);
        let mut q = [q0, ADD_QWORD1, 0, 0, 0, 0, 0];
        assert_eq!(invalid_add_qword(&q, 4), None);
        assert_eq!(
            invalid_add_qword(&q, 5),
            Some(0),
            "AW names the S-EPT's depth"
        );
        q[0] |= 0x1234_5000;
        assert_eq!(invalid_add_qword(&q, 4), Some(0));
        q[0] = q0 | PTE_P;
        assert_eq!(invalid_add_qword(&q, 4), Some(0));
        q[0] = q0;
        q[1] |= 7;
        assert_eq!(invalid_add_qword(&q, 4), Some(1));
        q[1] = ADD_QWORD1;
        q[6] = 1;
        assert_eq!(invalid_add_qword(&q, 4), Some(6));
    }

    fn iface(bus: u8) -> InterfaceId {
        let rid = RequesterId::try_new(0, bus, 0, 0).unwrap();
        tsm_core::DeviceFunctions::physical(rid)
            .interface(rid)
            .unwrap()
    }

    #[test]
    fn an_entry_goes_through_its_states_and_refusals_change_nothing() {
        let (g, h) = (GuestId::from_slot(0), GuestId::from_slot(1));
        let mut t = DmarTable::new();
        t.create(g, iface(3)).unwrap();
        let e = t.entry(iface(3).requester_id()).unwrap();
        assert_eq!(
            (e.te.state(), e.te.slptptr(), e.te.did()),
            (DmaState::Pending, 0, DID_TD_BIT)
        );
        let before = t;
        assert_eq!(t.create(h, iface(3)), Err(TableError::DmaContextExists));
        assert_eq!(
            t.accept(h, iface(3), 0x5000, 2, 2),
            Err(TableError::NoDmaContext)
        );
        assert_eq!(t.invalidate(g, iface(3)), Err(TableError::DmaNotBlocked));
        assert_eq!(t.remove(g, iface(3)), Err(TableError::DmaNotBlocked));
        assert_eq!(t, before);
        t.accept(g, iface(3), 0x5000, 2, 1).unwrap();
        let e = t.entry(iface(3).requester_id()).unwrap();
        assert!(e.te.present());
        assert_eq!((e.te.slptptr(), e.te.did()), (0x5000, DID_TD_BIT | 1));
        t.block(g, iface(3)).unwrap();
        assert!(!t.entry(iface(3).requester_id()).unwrap().te.present());
        assert_eq!(t.invalidate(g, iface(3)), Ok(false));
        let before = t;
        assert_eq!(t.remove(g, iface(3)), Err(TableError::InvalidationPending));
        assert_eq!(t.process(1, |_| false), 0, "another IOMMU's queue");
        assert_eq!(t, before);
        assert_eq!(t.process(0, |_| false), 1);
        assert_eq!(t.invalidate(g, iface(3)), Ok(true));
        t.remove(g, iface(3)).unwrap();
        assert_eq!(t, DmarTable::new());
    }

    #[test]
    fn queued_invalidations_hold_queue_slots_until_process() {
        let mut t = DmarTable::new();
        let g = GuestId::from_slot(0);
        let h = GuestId::from_slot(1);
        for (guest, bus) in [(g, 3), (g, 4), (h, 5)] {
            t.create(guest, iface(bus)).unwrap();
            t.accept(guest, iface(bus), 0x1000, 2, 1).unwrap();
        }
        assert_eq!(t.iq_used(0), 0);
        t.block(g, iface(3)).unwrap();
        assert_eq!(t.iq_used(0), 0, "blocked, not queued");
        assert!(!t.invalidate(g, iface(3)).unwrap());
        assert_eq!(t.iq_used(0), IQ_PASIDTE_DESCS);
        assert!(t.track(g) && t.track(h));
        assert_eq!(t.iq_used(0), IQ_PASIDTE_DESCS, "owed, not queued");
        t.request_iotlb(g, 0).unwrap();
        // G has two entries on the IOMMU: its domain request is counted once.
        assert_eq!(t.iq_used(0), IQ_PASIDTE_DESCS + IQ_IOTLB_DESCS);
        t.request_iotlb(h, 0).unwrap();
        assert_eq!(t.iq_used(0), IQ_PASIDTE_DESCS + 2 * IQ_IOTLB_DESCS);
        assert_eq!(t.iq_used(1), 0, "another IOMMU's queue");
        assert_eq!(t.process(0, |_| false), 4);
        assert_eq!(t.iq_used(0), 0);
    }

    /// A TD request ends with its status delivered before it is reset, in one call (review
    /// s23 M2: the reset used to come first and the write after the lock was given back, so a
    /// new request could be taken in between): the request is still active while `complete`
    /// runs, and a failed delivery leaves it active, to be ended again. VPFLUSHDONE's cancel
    /// (M3) ends it unwritten; marks whose descriptors the host queued keep their slots until
    /// PROCESS. An INV_REQ_IOTLB of the TD's domain completed on an IOMMU covers the request
    /// there (M4).
    #[test]
    fn a_td_request_is_written_before_it_is_reset_and_a_cancel_writes_nothing() {
        let mut t = DmarTable::new();
        let g = GuestId::from_slot(0);
        for bus in [3, 4] {
            t.create(g, iface(bus)).unwrap();
            t.accept(g, iface(bus), 0x1000, 2, 1).unwrap();
        }
        t.td_request_start(g, 1, Some((0x40, 7))).unwrap();
        assert!(!t.td_requests_finishing());
        assert_eq!(t.td_commit(g, 0, 1), 0);
        t.process(0, |_| false);
        assert!(t.td_requests_finishing());
        let before = t;
        assert_eq!(t.finish_td_requests(|_, _| false), (0, 1));
        assert_eq!(t, before, "a failed delivery leaves the request active");
        let mut seen = None;
        let ended = t.finish_td_requests(|td, status| {
            seen = Some((td, status));
            true
        });
        assert_eq!((ended, seen), ((1, 0), Some((g, Some((0x40, 7))))));
        assert_eq!(t.td_request(g).map(|r| r.active), Some(false));
        assert_eq!(t.finish_td_requests(|_, _| false), (0, 0), "written once");
        // Cancelled with descriptors queued: ended unwritten, the queued slots kept.
        t.td_request_start(g, 2, Some((0x40, 8))).unwrap();
        assert_eq!(t.td_commit(g, 0, 1), 1);
        let used = t.iq_used(0);
        t.td_request_cancel(g);
        assert_eq!(t.td_request(g).map(|r| r.active), Some(false));
        assert_eq!(t.iq_used(0), used, "queued descriptors keep their slots");
        assert_eq!(
            t.td_commit_count(g, 0, 8, 8),
            Err(TdInvRefusal::NotRequired)
        );
        t.process(0, |_| false);
        assert_eq!(t.iq_used(0), 0);
        assert_eq!(
            t.finish_td_requests(|_, _| false),
            (0, 0),
            "nothing to write"
        );
        // The TD's domain flush on each IOMMU completes its request there.
        t.td_request_start(g, 5, None).unwrap();
        assert!(t.track(g));
        t.request_iotlb(g, 0).unwrap();
        t.process(0, |_| false);
        assert!(
            t.td_inv_mark(g, 0).is_none(),
            "IOMMU 0 covered, none queued there"
        );
        assert!(t.td_requests_finishing(), "its only IOMMU");
        assert_eq!(t.finish_td_requests(|_, _| true), (1, 0));
    }

    /// What every entry may queue is reserved from ADD: the committed slots (used or reserved)
    /// cover the used ones in every state, a queued request uses its own reservation, PROCESS
    /// gives back only what was queued (twice is once), and the last entry's removal leaves
    /// nothing; each count is read from the entries, so none drifts or underflows.
    #[test]
    fn reservations_cover_every_queued_invalidation_and_go_with_the_entries() {
        let mut t = DmarTable::new();
        let (g, h) = (GuestId::from_slot(0), GuestId::from_slot(1));
        let (p, d) = (IQ_PASIDTE_DESCS, IQ_IOTLB_DESCS);
        let covered = |t: &DmarTable| assert!(t.iq_used(0) <= t.iq_committed(0));
        assert_eq!((t.iq_committed(0), t.iq_add_reserves(g, 0)), (0, p + d));
        t.create(g, iface(3)).unwrap();
        assert_eq!(t.iq_add_reserves(g, 0), p, "G's domain is reserved already");
        assert_eq!(t.iq_add_reserves(h, 0), p + d);
        t.create(g, iface(4)).unwrap();
        t.create(h, iface(5)).unwrap();
        assert_eq!(t.iq_committed(0), 3 * p + 2 * d);
        assert_eq!(t.iq_committed(1), 0, "another IOMMU's queue");
        for bus in [3, 4] {
            t.accept(g, iface(bus), 0x1000, 2, 1).unwrap();
        }
        assert_eq!(t.iq_reserved_for_entry(iface(3).requester_id()), p);
        assert_eq!(t.iq_reserved_for_domain(g, 0), d);
        t.block(g, iface(3)).unwrap();
        assert!(!t.invalidate(g, iface(3)).unwrap());
        covered(&t);
        assert_eq!(
            t.iq_reserved_for_entry(iface(3).requester_id()),
            0,
            "in use"
        );
        assert!(t.track(g));
        t.request_iotlb(g, 0).unwrap();
        assert_eq!(t.iq_reserved_for_domain(g, 0), 0, "in use");
        assert_eq!((t.iq_used(0), t.iq_committed(0)), (p + d, 3 * p + 2 * d));
        assert!(t.process(0, |_| false) > 0);
        assert_eq!((t.iq_used(0), t.iq_committed(0)), (0, 2 * p + 2 * d));
        assert_eq!(t.process(0, |_| false), 0);
        assert_eq!(
            t.iq_committed(0),
            2 * p + 2 * d,
            "a second PROCESS gives nothing back"
        );
        assert_eq!(
            t.iq_reserved_for_entry(iface(3).requester_id()),
            0,
            "DONE: never again"
        );
        assert_eq!(t.iq_reserved_for_domain(g, 0), d, "reserved again");
        t.remove(g, iface(3)).unwrap();
        assert_eq!(
            t.iq_committed(0),
            2 * p + 2 * d,
            "G keeps its domain for bus 4"
        );
        let before = t;
        assert_eq!(t.remove(g, iface(4)), Err(TableError::DmaNotBlocked));
        assert_eq!(t, before, "a refused removal keeps every reservation");
        t.block(g, iface(4)).unwrap();
        t.invalidate(g, iface(4)).unwrap();
        t.process(0, |_| false);
        t.remove(g, iface(4)).unwrap();
        assert_eq!(t.iq_committed(0), p + d, "only H's entry and domain");
        t.block(h, iface(5)).unwrap();
        t.invalidate(h, iface(5)).unwrap();
        covered(&t);
        t.process(0, |_| false);
        t.remove(h, iface(5)).unwrap();
        assert_eq!((t.iq_used(0), t.iq_committed(0)), (0, 0));
    }
}
