//! The secure EPT entry: the architectural EPT bit layout plus the TDX module's per-entry
//! secure state, and the states an MMIO entry moves through.
//!
//! Layout (Intel SDM Vol. 3C 29.3.2, tables "Format of an EPT PML4E / PDPTE / PDE / PTE";
//! TDX bits 52-56, 59 and the MMIO states from the TDX module's S-EPT entry definitions and
//! `sept_state_lookup`, intel/tdx-module TDX-IO branch):
//!
//! | bits  | field | meaning |
//! |-------|-------|---------|
//! | 0     | R     | read access |
//! | 1     | W     | write access |
//! | 2     | X     | execute access (supervisor) |
//! | 5:3   | MT    | memory type of a leaf (0 = UC, 6 = WB) |
//! | 6     | IPAT  | ignore the guest PAT |
//! | 7     | PS    | leaf at level 2 or 3 (2 MiB / 1 GiB page) |
//! | 8     | A     | accessed |
//! | 9     | D     | dirty (leaves) |
//! | 10    | XU    | execute access for user mode |
//! | 11    | MMIO  | ignored by the CPU; ours: the leaf maps private MMIO, not memory |
//! | 51:12 | PFN   | host physical frame (leaf) or next table page |
//! | 52    | HP    | TDX: host priority |
//! | 53    | TDEX  | TDX: exported (live migration) |
//! | 54    | TDBW  | TDX: blocked for writing |
//! | 55    | TDB   | TDX: blocked |
//! | 56    | TDP   | TDX: pending (guest has not accepted) |
//! | 59    | LOCK  | TDX: entry lock |
//! | 63    | SVE   | suppress #VE |

use bitfield_struct::bitfield;

use crate::bits::{MemType, Pfn};

/// EPT memory type UC (Intel SDM Vol. 3C 29.3.7: EPT memory type 0 = uncacheable).
pub const MEMTYPE_UC: MemType = MemType::UC;
/// EPT memory type WB (Intel SDM Vol. 3C 29.3.7: 6 = write-back). Memory leaves; never MMIO.
pub const MEMTYPE_WB: MemType = MemType::WB;

/// One S-EPT entry. Multi-bit fields take [`crate::bits`] types, which never exceed their
/// field, so the generated setters never reach their out-of-range panic.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct SeptEntry {
    /// Bit 0: read.
    pub read: bool,
    /// Bit 1: write.
    pub write: bool,
    /// Bit 2: execute (supervisor).
    pub execute: bool,
    /// Bits 5:3: memory type of a leaf.
    #[bits(3)]
    pub mem_type: MemType,
    /// Bit 6: ignore PAT.
    pub ignore_pat: bool,
    /// Bit 7: page size (leaf at level 2 or 3).
    pub page_size: bool,
    /// Bit 8: accessed.
    pub accessed: bool,
    /// Bit 9: dirty.
    pub dirty: bool,
    /// Bit 10: execute for user mode.
    pub execute_user: bool,
    /// Bit 11: ours, ignored by the CPU: the leaf maps private MMIO.
    pub mmio: bool,
    /// Bits 51:12: physical frame number.
    #[bits(40)]
    pub pfn: Pfn,
    /// Bit 52: TDX host priority.
    pub host_priority: bool,
    /// Bit 53: TDX exported.
    pub tdex: bool,
    /// Bit 54: TDX blocked for writing.
    pub tdbw: bool,
    /// Bit 55: TDX blocked.
    pub tdb: bool,
    /// Bit 56: TDX pending.
    pub tdp: bool,
    #[bits(2)]
    __: u8,
    /// Bit 59: TDX entry lock.
    pub entry_lock: bool,
    #[bits(3)]
    __: u8,
    /// Bit 63: suppress #VE.
    pub suppress_ve: bool,
}

/// The secure state of an entry, as the TDX module names them. The numeric codes are the
/// ones this firmware reports in TDH.MEM.SEPT.RD-style outputs (RDX bits 15:8); the TDX ABI's
/// own codes for the MMIO states are not public, so these are ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SeptState {
    /// SEPT_FREE: nothing mapped (and, after a removal, what the entry returns to).
    Free = 0,
    /// SEPT_NL_MAPPED: points to the next table page.
    NlMapped = 1,
    /// MMIO_PENDING: mapped by the host, not yet accepted by the guest (RWX = 0).
    MmioPending = 2,
    /// MMIO_MAPPED: accepted; the guest may access it.
    MmioMapped = 3,
    /// MMIO_BLOCKED: blocked from MMIO_MAPPED; only removal leaves it.
    MmioBlocked = 4,
    /// MMIO_PENDING_BLOCKED: blocked from MMIO_PENDING.
    MmioPendingBlocked = 5,
    /// Any bit pattern this firmware never writes.
    Corrupt = 0xff,
}

impl SeptState {
    /// Whether the entry is blocked (in either blocked state).
    pub const fn is_blocked(self) -> bool {
        matches!(self, SeptState::MmioBlocked | SeptState::MmioPendingBlocked)
    }

    /// Whether the entry is an MMIO leaf in any state.
    pub const fn is_mmio_leaf(self) -> bool {
        matches!(
            self,
            SeptState::MmioPending
                | SeptState::MmioMapped
                | SeptState::MmioBlocked
                | SeptState::MmioPendingBlocked
        )
    }
}

impl SeptEntry {
    /// A free entry: every bit clear but suppress-#VE, so a guest access exits to the host
    /// instead of raising #VE (TDX module: free S-EPT entries keep SVE set).
    pub const FREE: SeptEntry = SeptEntry::new().with_suppress_ve(true);

    /// A non-leaf entry pointing to the table page `table`: R/W/X all set, as the CPU needs
    /// for the walk to continue (Intel SDM Vol. 3C 29.3.2).
    pub const fn table(table: Pfn) -> SeptEntry {
        SeptEntry::new()
            .with_read(true)
            .with_write(true)
            .with_execute(true)
            .with_pfn(table)
    }

    /// An MMIO leaf at `level` (1 = 4 KiB, 2 = 2 MiB, 3 = 1 GiB) for the host frame `frame`,
    /// in `state` (one of the four MMIO states). UC, IPAT set, never executable; readable and
    /// writable only once accepted and not blocked.
    pub const fn mmio_leaf(frame: Pfn, level: u8, state: SeptState) -> SeptEntry {
        let present = matches!(state, SeptState::MmioMapped);
        SeptEntry::new()
            .with_read(present)
            .with_write(present)
            .with_mem_type(MEMTYPE_UC)
            .with_ignore_pat(true)
            .with_page_size(level > 1)
            .with_mmio(true)
            .with_pfn(frame)
            .with_tdb(state.is_blocked())
            .with_tdp(matches!(
                state,
                SeptState::MmioPending | SeptState::MmioPendingBlocked
            ))
            // A blocked entry exits to the host (it knows it blocked it); a pending one raises
            // #VE so the guest can accept it.
            .with_suppress_ve(state.is_blocked())
    }

    /// Physical address in bits 51:12.
    pub const fn phys(self) -> u64 {
        self.pfn().phys()
    }

    /// The entry's secure state at `level` (1 = PTE ... 5 = PML5E).
    pub fn state(self, level: u8) -> SeptState {
        if self == SeptEntry::FREE {
            return SeptState::Free;
        }
        let leaf = level == 1 || self.page_size();
        if !leaf {
            let table = SeptEntry::table(self.pfn());
            return if self == table {
                SeptState::NlMapped
            } else {
                SeptState::Corrupt
            };
        }
        if !self.mmio() || self.execute() || self.execute_user() || self.mem_type() != MEMTYPE_UC {
            return SeptState::Corrupt;
        }
        match (self.tdp(), self.tdb(), self.read(), self.write()) {
            (true, false, false, false) => SeptState::MmioPending,
            (false, false, true, true) => SeptState::MmioMapped,
            (false, true, false, false) => SeptState::MmioBlocked,
            (true, true, false, false) => SeptState::MmioPendingBlocked,
            _ => SeptState::Corrupt,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pfn(phys: u64) -> Pfn {
        Pfn::from_phys(phys).unwrap()
    }

    /// Each field's bit position, checked against the layout table above by setting one field
    /// at a time.
    #[test]
    fn golden_field_positions() {
        let one = |e: SeptEntry| e.into_bits();
        let e = SeptEntry::new();
        assert_eq!(one(e.with_read(true)), 1 << 0);
        assert_eq!(one(e.with_write(true)), 1 << 1);
        assert_eq!(one(e.with_execute(true)), 1 << 2);
        assert_eq!(one(e.with_mem_type(MEMTYPE_WB)), 6 << 3);
        assert_eq!(one(e.with_mem_type(MemType::from_bits(7))), 0b111 << 3);
        assert_eq!(one(e.with_ignore_pat(true)), 1 << 6);
        assert_eq!(one(e.with_page_size(true)), 1 << 7);
        assert_eq!(one(e.with_accessed(true)), 1 << 8);
        assert_eq!(one(e.with_dirty(true)), 1 << 9);
        assert_eq!(one(e.with_execute_user(true)), 1 << 10);
        assert_eq!(one(e.with_mmio(true)), 1 << 11);
        assert_eq!(
            one(e.with_pfn(Pfn::from_bits((1 << 40) - 1))),
            0x000f_ffff_ffff_f000
        );
        assert_eq!(one(e.with_host_priority(true)), 1 << 52);
        assert_eq!(one(e.with_tdex(true)), 1 << 53);
        assert_eq!(one(e.with_tdbw(true)), 1 << 54);
        assert_eq!(one(e.with_tdb(true)), 1 << 55);
        assert_eq!(one(e.with_tdp(true)), 1 << 56);
        assert_eq!(one(e.with_entry_lock(true)), 1 << 59);
        assert_eq!(one(e.with_suppress_ve(true)), 1 << 63);
        assert_eq!(core::mem::size_of::<SeptEntry>(), 8);
    }

    /// Every multi-bit field takes a type whose widest value fits: the setters never panic,
    /// whatever value the firmware computed (a raw `u64` wider than 40 bits used to).
    #[test]
    fn setters_take_the_widest_value_of_each_field_type() {
        let e = SeptEntry::new()
            .with_pfn(Pfn::from_bits(u64::MAX))
            .with_mem_type(MemType::from_bits(u8::MAX));
        assert_eq!(e.into_bits(), 0x000f_ffff_ffff_f000 | 0b111 << 3);
        let top = tsm_core::Hpa::try_new(tsm_core::addr::PHYS_ADDR_LIMIT - 1).unwrap();
        assert_eq!(
            SeptEntry::mmio_leaf(Pfn::of(top), 1, SeptState::MmioMapped).phys(),
            0x000f_ffff_ffff_f000
        );
    }

    /// Whole entries, as hand-assembled from the layout table.
    #[test]
    fn golden_entries() {
        assert_eq!(SeptEntry::FREE.into_bits(), 0x8000_0000_0000_0000);
        assert_eq!(SeptEntry::table(pfn(0x1234_5000)).into_bits(), 0x1234_5007);
        // 2 MiB MMIO leaf at 0x8020_0000, accepted: R|W, UC, IPAT, PS, MMIO.
        let mapped = SeptEntry::mmio_leaf(pfn(0x8020_0000), 2, SeptState::MmioMapped);
        assert_eq!(mapped.into_bits(), 0x8020_0000 | 0x800 | 0x80 | 0x40 | 0x3);
        // 4 KiB leaf, pending: RWX = 0, TDP.
        let pending = SeptEntry::mmio_leaf(pfn(0xfe00_1000), 1, SeptState::MmioPending);
        assert_eq!(pending.into_bits(), (1 << 56) | 0xfe00_1000 | 0x800 | 0x40);
        // 1 GiB leaf, blocked: TDB and SVE, no access.
        let blocked = SeptEntry::mmio_leaf(pfn(0x40_0000_0000), 3, SeptState::MmioBlocked);
        assert_eq!(
            blocked.into_bits(),
            (1 << 63) | (1 << 55) | 0x40_0000_0000 | 0x800 | 0x80 | 0x40
        );
    }

    #[test]
    fn mmio_leaves_are_uc_and_never_executable_in_every_state() {
        for state in [
            SeptState::MmioPending,
            SeptState::MmioMapped,
            SeptState::MmioBlocked,
            SeptState::MmioPendingBlocked,
        ] {
            for level in 1..=3 {
                let e = SeptEntry::mmio_leaf(pfn(0x4000_0000), level, state);
                assert_eq!(e.mem_type(), MEMTYPE_UC);
                assert!(!e.execute() && !e.execute_user());
                assert_eq!(e.page_size(), level > 1);
                assert_eq!(e.state(level), state, "{state:?} at level {level}");
                assert_eq!(e.phys(), 0x4000_0000);
            }
        }
    }

    #[test]
    fn state_decoding() {
        assert_eq!(SeptEntry::FREE.state(1), SeptState::Free);
        assert_eq!(SeptEntry::table(pfn(0x5000)).state(2), SeptState::NlMapped);
        // A table pointer at level 1 is not a valid leaf.
        assert_eq!(SeptEntry::table(pfn(0x5000)).state(1), SeptState::Corrupt);
        let wb =
            SeptEntry::mmio_leaf(pfn(0x5000), 1, SeptState::MmioMapped).with_mem_type(MEMTYPE_WB);
        assert_eq!(wb.state(1), SeptState::Corrupt);
        let x = SeptEntry::mmio_leaf(pfn(0x5000), 1, SeptState::MmioMapped).with_execute(true);
        assert_eq!(x.state(1), SeptState::Corrupt);
        assert_eq!(SeptEntry::new().state(1), SeptState::Corrupt);
    }
}
