//! Trusted DMA on TDX Connect: the trusted IOMMU's scalable-mode PASID-table entries the
//! firmware keeps for the TDIs, one per TDI's requester ID (PASID 0, RID_PASID), and the
//! TDX-IO leaves that reach them (TDH.DMAR.ADD/BLOCK/READ/REMOVE, TDH.IQ.INV.REQUEST/PROCESS,
//! TDG.DMAR.ACCEPT).
//!
//! Numbers are the TDX module's TDX-IO sources (intel/tdx-module, the TDX-IO files in the
//! index at the commits named per item: `include/tdx_api_defs.h` @a56a9173cda3 for the leaf
//! numbers, `src/common/data_structures/tdxio/dmar_defs.h` @92f6945d3621 for the entry
//! layouts and states, `src/common/tdxio/dmar.h` @1666adc494db for what the VMM may add, the
//! leaf handlers for the operands) and the VT-d specification (rev. 4.1, 9.6 "Scalable-Mode
//! PASID Table Entry", 6.5.2.8 "Invalidation Wait Descriptor") for the hardware fields.
//!
//! Life of an entry (the module's `dmar_map_sts_e` and `dmar_inv_sts_e`): FREE; ADD by the
//! host: PENDING (bit 63), not present, no translation, SLPTPTR and DID 0; ACCEPT by the
//! owning TD: PRESENT, SLPTPTR the TD's S-EPT root, DID the TD's domain; BLOCK: not present,
//! BLOCKED, invalidation PENDING; IQ.INV.REQUEST: invalidation QUEUED; IQ.INV.PROCESS:
//! invalidation DONE; REMOVE: FREE. Every refusal changes no byte.

use tsm_core::capacity::MAX_TDIS;
use tsm_core::dma::DmaState;
use tsm_core::{GuestId, InterfaceId, RequesterId, TableError};

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
    if raw & DMAR_IDX_LEVEL_MASK != DMAR_LVL_PASIDTE || raw & DMAR_IDX_RESERVED != 0 || pasid != 0
    {
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

/// Qword 0 of the entry as the VMM must add it: not present, SLEE, second-level only, no
/// SLPTPTR (`is_valid_dmar_pasidte`, `dmar.h` @1666adc4). Every other bit 0 (ours where the
/// source names no rule: FPD, AW, SLADE).
pub const ADD_QWORD0: u64 = PTE_SLEE | PTE_PGTT_SL;
/// Qword 1 as the VMM must add it: DID 0, PWSNP, PGSNP, EMTE, EMT WB, CD/PWT/PCD/PAT 0.
pub const ADD_QWORD1: u64 = PTE_PWSNP | PTE_PGSNP | PTE_EMTE | PTE_EMT_WB;

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

/// A 64-byte scalable-mode PASID-table entry with the module's state bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PasidTe(pub [u64; PTE_QWORDS]);

impl PasidTe {
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
            match inv {
                INV_PENDING => DmaState::Blocked,
                INV_QUEUED => DmaState::Invalidating,
                _ => DmaState::Invalidated,
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
        let mut out = self.0;
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

/// Which VMM-supplied qword of an ADD is not what the module allows (its index 0-6), if any:
/// a chosen SLPTPTR or DID is refused as every other wrong bit.
pub fn invalid_add_qword(qwords: &[u64]) -> Option<usize> {
    qwords.iter().enumerate().find_map(|(i, &q)| {
        let want = match i {
            0 => ADD_QWORD0,
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
}

/// The PASID entries of the TDIs of the TDs in one shard: at most one per TDI, no heap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmarTable {
    entries: [Option<DmarEntry>; MAX_TDIS],
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
        }
    }

    /// The entry of requester `rid`.
    pub fn entry(&self, rid: RequesterId) -> Option<DmarEntry> {
        self.entries.iter().flatten().find(|e| e.rid == rid).copied()
    }

    /// Every entry (in no particular order).
    pub fn entries(&self) -> impl Iterator<Item = &DmarEntry> {
        self.entries.iter().flatten()
    }

    fn slot_of(&mut self, guest: GuestId, iface: InterfaceId) -> Result<&mut DmarEntry, TableError> {
        let rid = iface.requester_id();
        self.entries
            .iter_mut()
            .flatten()
            .find(|e| e.rid == rid && e.guest == guest)
            .ok_or(TableError::NoDmaContext)
    }

    /// ADD: a PENDING entry, not present, SLPTPTR 0, DID the module's top bit only.
    pub fn create(&mut self, guest: GuestId, iface: InterfaceId) -> Result<(), TableError> {
        let rid = iface.requester_id();
        if self.entries.iter().flatten().any(|e| e.rid == rid) {
            return Err(TableError::DmaContextExists);
        }
        let free = self
            .entries
            .iter_mut()
            .find(|e| e.is_none())
            .ok_or(TableError::OutOfFrames)?;
        let mut te = PasidTe::default();
        te.set(0, ADD_QWORD0 | PTE_SW_PENDING);
        te.set(1, ADD_QWORD1 | DID_TD_BIT);
        *free = Some(DmarEntry { rid, guest, te });
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
                let q0 = ADD_QWORD0 | PTE_P | (aw & 0x7) << PTE_AW_SHIFT | root & PTE_SLPTPTR_MASK;
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
    /// descriptor seen complete). Bounded by the table's size. How many completed.
    pub fn process(&mut self, segment: u16) -> usize {
        let mut done = 0usize;
        for e in self.entries.iter_mut().flatten() {
            if e.rid.segment() == segment && e.te.state() == DmaState::Invalidating {
                let q1 = e.te.q(1) | INV_DONE << PTE_INV_SHIFT;
                e.te.set(1, q1);
                done = done.saturating_add(1);
            }
        }
        done
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
        let mut q = [ADD_QWORD0, ADD_QWORD1, 0, 0, 0, 0, 0];
        assert_eq!(invalid_add_qword(&q), None);
        q[0] |= 0x1234_5000;
        assert_eq!(invalid_add_qword(&q), Some(0));
        q[0] = ADD_QWORD0 | PTE_P;
        assert_eq!(invalid_add_qword(&q), Some(0));
        q[0] = ADD_QWORD0;
        q[1] |= 7;
        assert_eq!(invalid_add_qword(&q), Some(1));
    }
}
