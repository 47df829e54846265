//! The secure EPT for private MMIO: one S-EPT tree per TD plus the MMIO metadata table
//! (MMIOMT, keyed by host physical address), all in pages of one [`FramePool`].
//!
//! Every operation checks the entry's secure state first and changes nothing when it refuses
//! ([`SeptError`], the TDX-style cause). [`SecureTable`] is implemented on top of it.

use bitfield_struct::bitfield;
use tsm_core::capacity::MAX_GUESTS;
use tsm_core::secure_table::Epoch;
use tsm_core::{Gpa, GuestId, Hpa, Leaf, LeafState, MmioRange, PageSize, SecureTable, TableError};

use crate::ept::{SeptEntry, SeptState};
use crate::frames::FramePool;
use crate::radix::{EntryFormat, Lookup, Radix, level_shift};

/// S-EPT depth: 4-level (48-bit guest physical addresses) or 5-level (52-bit; Intel SDM
/// Vol. 3C 29.3.2, EPTP bits 5:3 = page-walk length minus one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SeptLevels {
    /// PML4 root.
    Four = 4,
    /// PML5 root.
    Five = 5,
}

/// Levels of the MMIO metadata table: 5 levels of 9 bits cover 57 bits, enough for any host
/// physical address below 2^52 (`tsm_core::addr::MAX_PHYS_ADDR_BITS`).
pub const MMIOMT_LEVELS: u8 = 5;

/// Bits of a blocking epoch an MMIOMT entry keeps (see [`MmioMtEntry::bepoch`]).
pub const BEPOCH_BITS: u32 = 12;
const BEPOCH_MASK: u64 = (1 << BEPOCH_BITS) - 1;

/// One MMIO metadata entry (ours; the TDX module's MMIOMT layout is not public). Leaves name
/// the TD and guest page a host MMIO page is mapped at, so unbind finds a TDI's leaves by host
/// address without scanning any S-EPT.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct MmioMtEntry {
    /// Bit 0: a leaf (the host page is mapped).
    pub leaf: bool,
    /// Bit 1: points to the next table page.
    pub table: bool,
    /// Bits 7:2: the TD's slot.
    #[bits(6)]
    pub guest: u8,
    /// Bit 8: the S-EPT leaf is blocked.
    pub blocked: bool,
    #[bits(3)]
    __: u8,
    /// Bits 51:12: guest frame (leaf) or next table page.
    #[bits(40)]
    pub pfn: u64,
    /// Bits 63:52: low bits of the TD epoch the leaf was blocked in (the TDX module keeps the
    /// blocking epoch in the page's metadata too: PAMT BEPOCH).
    #[bits(12)]
    pub bepoch: u16,
}

const _: () = assert!(MAX_GUESTS <= 1 << 6, "MMIOMT guest field is 6 bits");

/// How S-EPT entries encode tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeptFormat {}

impl EntryFormat for SeptFormat {
    const FREE: u64 = SeptEntry::FREE.into_bits();
    fn table(phys: u64) -> u64 {
        SeptEntry::table(phys).into_bits()
    }
    fn is_table(raw: u64, level: u8) -> bool {
        SeptEntry::from_bits(raw).state(level) == SeptState::NlMapped
    }
    fn child(raw: u64) -> u64 {
        SeptEntry::from_bits(raw).phys()
    }
}

/// How MMIOMT entries encode tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MtFormat {}

impl EntryFormat for MtFormat {
    const FREE: u64 = 0;
    fn table(phys: u64) -> u64 {
        MmioMtEntry::new()
            .with_table(true)
            .with_pfn(phys >> 12)
            .into_bits()
    }
    fn is_table(raw: u64, _level: u8) -> bool {
        MmioMtEntry::from_bits(raw).table()
    }
    fn child(raw: u64) -> u64 {
        MmioMtEntry::from_bits(raw).pfn() << 12
    }
}

/// Why the S-EPT refused, in the TDX module's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SeptError {
    /// The walk stopped at `level` on a free entry before reaching a leaf (EPT_WALK_FAILED).
    WalkFailed {
        /// Level of the entry the walk stopped at.
        level: u8,
    },
    /// The leaf covering the address is at another level or base (PAGE_SIZE_MISMATCH).
    SizeMismatch {
        /// Level of the leaf found.
        level: u8,
    },
    /// The guest entry is not FREE: a leaf, or a table with leaves below (EPT_ENTRY_NOT_FREE).
    EntryNotFree {
        /// Level of the entry in the way.
        level: u8,
    },
    /// The entry's state does not allow the transition (EPT_ENTRY_STATE_INCORRECT).
    EntryStateIncorrect {
        /// Level of the entry.
        level: u8,
        /// Its state.
        state: SeptState,
    },
    /// Removal of an entry that is not blocked (GPA_RANGE_NOT_BLOCKED).
    NotBlocked,
    /// Removal before the TLB tracking of the blocking epoch is done (TLB_TRACKING_NOT_DONE).
    TlbTrackingNotDone,
    /// TRACK while the previous epoch is not flushed yet (PREVIOUS_TLB_EPOCH_BUSY).
    PreviousEpochBusy,
    /// The host page is already mapped (its MMIOMT entry is in use).
    HpaInUse,
    /// Accept of an already accepted page (PAGE_ALREADY_ACCEPTED, a warning).
    AlreadyAccepted,
    /// The frame pool cannot supply the table pages the mapping needs.
    PoolEmpty,
    /// An address not aligned to the leaf size.
    Misaligned,
    /// A guest address beyond the S-EPT's width (48 bits with 4 levels).
    GpaTooWide,
    /// A guest slot the table does not have.
    UnknownGuest,
}

impl From<SeptError> for TableError {
    fn from(e: SeptError) -> Self {
        match e {
            SeptError::WalkFailed { .. } => TableError::NotMapped,
            SeptError::SizeMismatch { .. } => TableError::SizeMismatch,
            SeptError::EntryNotFree { .. } => TableError::GpaMapped,
            // Blocked or pending leaves asked to do what only a mapped one may: the core's
            // nearest status is the one for "not in the state removal needs".
            SeptError::EntryStateIncorrect { .. } | SeptError::NotBlocked => TableError::NotBlocked,
            SeptError::TlbTrackingNotDone | SeptError::PreviousEpochBusy => {
                TableError::TlbNotFlushed
            }
            SeptError::HpaInUse => TableError::HpaMapped,
            SeptError::AlreadyAccepted => TableError::GpaMapped,
            SeptError::PoolEmpty => TableError::OutOfFrames,
            // A 4-level S-EPT cannot hold the address at all: the core's status for an address
            // it cannot place is Misaligned (no TableError says "too wide").
            SeptError::Misaligned | SeptError::GpaTooWide => TableError::Misaligned,
            SeptError::UnknownGuest => TableError::UnknownGuest,
        }
    }
}

/// EPT level of a leaf of `size` (1 = 4 KiB PTE, 2 = 2 MiB PDE, 3 = 1 GiB PDPTE).
pub const fn ept_level(size: PageSize) -> u8 {
    size.tdx_level().saturating_add(1)
}

/// Leaf size at EPT `level`, if a leaf can be there.
pub const fn leaf_size(level: u8) -> Option<PageSize> {
    match level {
        1 => Some(PageSize::Size4K),
        2 => Some(PageSize::Size2M),
        3 => Some(PageSize::Size1G),
        _ => None,
    }
}

/// A TD's TLB epoch (TDX: TD_EPOCH, advanced by TDH.MEM.TRACK).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct TdEpoch {
    current: Epoch,
    /// Every vCPU has flushed up to here; `current - flushed` is 0 or 1.
    flushed: Epoch,
    /// Tests: flushes complete only when released.
    hold: bool,
}

/// The S-EPT of an MMIO leaf as a walk found it: where, and in which state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Level the walk stopped at.
    pub level: u8,
    /// The entry there.
    pub entry: SeptEntry,
    /// Its secure state.
    pub state: SeptState,
}

/// Every TD's S-EPT and the MMIO metadata, in one frame pool.
pub struct Sept<'m> {
    pool: FramePool<'m>,
    trees: [Radix<SeptFormat>; MAX_GUESTS],
    epochs: [TdEpoch; MAX_GUESTS],
    mmiomt: Radix<MtFormat>,
}

impl<'m> Sept<'m> {
    /// An empty S-EPT of `levels` for every TD, with table pages from `pool`.
    pub fn new(pool: FramePool<'m>, levels: SeptLevels) -> Self {
        Self {
            pool,
            trees: [Radix::new(levels as u8); MAX_GUESTS],
            epochs: [TdEpoch::default(); MAX_GUESTS],
            mmiomt: Radix::new(MMIOMT_LEVELS),
        }
    }

    /// The frame pool (tests compare its bytes before and after a refusal).
    pub fn pool(&self) -> &FramePool<'m> {
        &self.pool
    }

    /// S-EPT levels.
    pub fn levels(&self) -> u8 {
        self.trees.first().map_or(4, Radix::levels)
    }

    /// The root table page of `guest`'s S-EPT, as a physical address (what EPTP would hold).
    pub fn root_phys(&self, guest: GuestId) -> Option<u64> {
        let root = self.tree(guest).ok()?.root()?;
        Some(self.pool.phys(root))
    }

    fn tree(&self, guest: GuestId) -> Result<&Radix<SeptFormat>, SeptError> {
        self.trees
            .get(usize::from(guest.slot()))
            .ok_or(SeptError::UnknownGuest)
    }

    fn epoch(&self, guest: GuestId) -> Result<TdEpoch, SeptError> {
        self.epochs
            .get(usize::from(guest.slot()))
            .copied()
            .ok_or(SeptError::UnknownGuest)
    }

    fn gpa_fits(&self, gpa: Gpa) -> bool {
        // One past the highest level's coverage: 2^48 with 4 levels, 2^57 (> 2^52) with 5.
        let bits = level_shift(self.levels()).saturating_add(9);
        gpa.as_u64().checked_shr(bits).unwrap_or(0) == 0
    }

    /// Walks `guest`'s S-EPT to the entry covering `gpa` that is not a table pointer.
    pub fn probe(&self, guest: GuestId, gpa: Gpa) -> Result<Probe, SeptError> {
        let found = self.tree(guest)?.lookup(&self.pool, gpa.as_u64(), 1);
        Ok(Self::probe_of(&found))
    }

    fn probe_of(found: &Lookup) -> Probe {
        let entry = SeptEntry::from_bits(found.raw);
        Probe {
            level: found.level,
            entry,
            state: entry.state(found.level),
        }
    }

    /// The MMIO leaf at exactly `gpa` of `size`, with its walk.
    fn exact(
        &self,
        guest: GuestId,
        gpa: Gpa,
        size: PageSize,
    ) -> Result<(Lookup, Probe), SeptError> {
        if !gpa.is_aligned(size) {
            return Err(SeptError::Misaligned);
        }
        let found = self.tree(guest)?.lookup(&self.pool, gpa.as_u64(), 1);
        let probe = Self::probe_of(&found);
        if probe.state == SeptState::Free {
            return Err(SeptError::WalkFailed { level: probe.level });
        }
        if !probe.state.is_mmio_leaf() {
            return Err(SeptError::EntryStateIncorrect {
                level: probe.level,
                state: probe.state,
            });
        }
        if probe.level != ept_level(size) {
            return Err(SeptError::SizeMismatch { level: probe.level });
        }
        Ok((found, probe))
    }

    fn mt_lookup(&self, hpa: u64, level: u8) -> (Lookup, MmioMtEntry) {
        let found = self.mmiomt.lookup(&self.pool, hpa, level);
        (found, MmioMtEntry::from_bits(found.raw))
    }

    fn blocked_epoch(epoch: TdEpoch, bepoch: u16) -> Epoch {
        let age = (epoch.current & BEPOCH_MASK).wrapping_sub(u64::from(bepoch)) & BEPOCH_MASK;
        epoch.current.saturating_sub(age)
    }

    fn leaf_of(&self, hpa: u64, level: u8, mt: MmioMtEntry) -> Option<Leaf> {
        let guest = GuestId::from_slot(u16::from(mt.guest()));
        let state = if mt.blocked() {
            LeafState::Blocked {
                epoch: Self::blocked_epoch(self.epoch(guest).ok()?, mt.bepoch()),
            }
        } else {
            LeafState::Mapped
        };
        Some(Leaf {
            guest,
            gpa: Gpa::try_new(mt.pfn() << 12).ok()?,
            hpa: Hpa::try_new(hpa).ok()?,
            size: leaf_size(level)?,
            state,
        })
    }

    /// TDH.MMIO.MAP: a FREE guest entry becomes MMIO_PENDING for `hpa`.
    pub fn mmio_map(
        &mut self,
        guest: GuestId,
        gpa: Gpa,
        hpa: Hpa,
        size: PageSize,
    ) -> Result<(), SeptError> {
        let tree = *self.tree(guest)?;
        if !gpa.is_aligned(size) || !hpa.is_aligned(size) {
            return Err(SeptError::Misaligned);
        }
        if !self.gpa_fits(gpa) {
            return Err(SeptError::GpaTooWide);
        }
        let level = ept_level(size);
        let found = tree.lookup(&self.pool, gpa.as_u64(), level);
        if found.rooted && found.raw != SeptFormat::FREE {
            return Err(SeptError::EntryNotFree { level: found.level });
        }
        let (mt_found, _) = self.mt_lookup(hpa.as_u64(), level);
        if mt_found.rooted && mt_found.raw != MtFormat::FREE {
            return Err(SeptError::HpaInUse);
        }
        let need =
            usize::from(tree.missing_tables(&self.pool, gpa.as_u64(), level)).saturating_add(
                usize::from(self.mmiomt.missing_tables(&self.pool, hpa.as_u64(), level)),
            );
        if self.pool.free_frames() < need {
            return Err(SeptError::PoolEmpty);
        }
        // Every check passed; both installs are proven to succeed.
        let entry = SeptEntry::mmio_leaf(hpa.as_u64(), level, SeptState::MmioPending);
        let meta = MmioMtEntry::new()
            .with_leaf(true)
            .with_guest(u8::try_from(guest.slot()).map_err(|_| SeptError::UnknownGuest)?)
            .with_pfn(gpa.as_u64() >> 12);
        let slot = usize::from(guest.slot());
        let tree = self.trees.get_mut(slot).ok_or(SeptError::UnknownGuest)?;
        tree.install(&mut self.pool, gpa.as_u64(), level, entry.into_bits())
            .ok_or(SeptError::PoolEmpty)?;
        if self
            .mmiomt
            .install(&mut self.pool, hpa.as_u64(), level, meta.into_bits())
            .is_none()
        {
            // Unreachable by the frame count above; undo rather than leave half a mapping.
            let found = tree.lookup(&self.pool, gpa.as_u64(), level);
            tree.clear(&mut self.pool, &found, gpa.as_u64());
            return Err(SeptError::PoolEmpty);
        }
        Ok(())
    }

    /// TDG.MMIO.ACCEPT: the guest accepts a pending page (MMIO_PENDING -> MMIO_MAPPED).
    pub fn mmio_accept(
        &mut self,
        guest: GuestId,
        gpa: Gpa,
        size: PageSize,
    ) -> Result<(), SeptError> {
        let (found, probe) = self.exact(guest, gpa, size)?;
        match probe.state {
            SeptState::MmioPending => {}
            SeptState::MmioMapped => return Err(SeptError::AlreadyAccepted),
            state => {
                return Err(SeptError::EntryStateIncorrect {
                    level: probe.level,
                    state,
                });
            }
        }
        let entry = SeptEntry::mmio_leaf(probe.entry.phys(), probe.level, SeptState::MmioMapped);
        let tree = *self.tree(guest)?;
        tree.rewrite(&mut self.pool, &found, gpa.as_u64(), entry.into_bits());
        Ok(())
    }

    /// TDH.MMIO.BLOCK: MMIO_MAPPED / MMIO_PENDING -> (PENDING_)BLOCKED at the current epoch.
    /// Blocking a blocked leaf succeeds and changes nothing (resumable walks rely on it).
    pub fn mmio_block(
        &mut self,
        guest: GuestId,
        gpa: Gpa,
        size: PageSize,
    ) -> Result<(), SeptError> {
        let epoch = self.epoch(guest)?;
        let (found, probe) = self.exact(guest, gpa, size)?;
        let next = match probe.state {
            SeptState::MmioMapped => SeptState::MmioBlocked,
            SeptState::MmioPending => SeptState::MmioPendingBlocked,
            _ => return Ok(()),
        };
        let hpa = probe.entry.phys();
        let (mt_found, meta) = self.mt_lookup(hpa, probe.level);
        let bepoch = u16::try_from(epoch.current & BEPOCH_MASK).unwrap_or(0);
        let entry = SeptEntry::mmio_leaf(hpa, probe.level, next);
        let tree = *self.tree(guest)?;
        tree.rewrite(&mut self.pool, &found, gpa.as_u64(), entry.into_bits());
        let meta = meta.with_blocked(true).with_bepoch(bepoch);
        self.mmiomt
            .rewrite(&mut self.pool, &mt_found, hpa, meta.into_bits());
        Ok(())
    }

    /// TDH.MEM.TRACK: advances the TD epoch; refused while the previous one is not flushed.
    pub fn mem_track(&mut self, guest: GuestId) -> Result<(), SeptError> {
        let e = self
            .epochs
            .get_mut(usize::from(guest.slot()))
            .ok_or(SeptError::UnknownGuest)?;
        if e.flushed < e.current {
            return Err(SeptError::PreviousEpochBusy);
        }
        e.current = e
            .current
            .checked_add(1)
            .ok_or(SeptError::PreviousEpochBusy)?;
        if !e.hold {
            e.flushed = e.current;
        }
        Ok(())
    }

    /// TDH.MMIO.UNMAP: removes a blocked leaf whose blocking epoch is flushed; returns the
    /// host address. Empty table pages go back to the pool.
    pub fn mmio_unmap(
        &mut self,
        guest: GuestId,
        gpa: Gpa,
        size: PageSize,
    ) -> Result<Hpa, SeptError> {
        let epoch = self.epoch(guest)?;
        let (found, probe) = self.exact(guest, gpa, size)?;
        if !probe.state.is_blocked() {
            return Err(SeptError::NotBlocked);
        }
        let hpa = probe.entry.phys();
        let (mt_found, meta) = self.mt_lookup(hpa, probe.level);
        // Blocked at b, removable once b < flushed (the TDX rule: tracking passed the epoch).
        if Self::blocked_epoch(epoch, meta.bepoch()) >= epoch.flushed {
            return Err(SeptError::TlbTrackingNotDone);
        }
        let host = Hpa::try_new(hpa).map_err(|_| SeptError::Misaligned)?;
        let tree = self
            .trees
            .get_mut(usize::from(guest.slot()))
            .ok_or(SeptError::UnknownGuest)?;
        tree.clear(&mut self.pool, &found, gpa.as_u64());
        self.mmiomt.clear(&mut self.pool, &mt_found, hpa);
        Ok(host)
    }

    /// Tests: hold `guest`'s TLB flushes (`true`), or complete them and stop holding.
    pub fn hold_flush(&mut self, guest: GuestId, hold: bool) {
        if let Some(e) = self.epochs.get_mut(usize::from(guest.slot())) {
            e.hold = hold;
            if !hold {
                e.flushed = e.current;
            }
        }
    }
}

impl SecureTable for Sept<'_> {
    fn map(
        &mut self,
        guest: GuestId,
        gpa: Gpa,
        hpa: Hpa,
        size: PageSize,
    ) -> Result<(), TableError> {
        Ok(self.mmio_map(guest, gpa, hpa, size)?)
    }

    fn block(&mut self, guest: GuestId, gpa: Gpa, size: PageSize) -> Result<(), TableError> {
        Ok(self.mmio_block(guest, gpa, size)?)
    }

    fn track(&mut self, guest: GuestId) -> Result<(), TableError> {
        Ok(self.mem_track(guest)?)
    }

    fn remove(&mut self, guest: GuestId, gpa: Gpa, size: PageSize) -> Result<Hpa, TableError> {
        Ok(self.mmio_unmap(guest, gpa, size)?)
    }

    fn leaf(&self, guest: GuestId, gpa: Gpa) -> Option<Leaf> {
        let probe = self.probe(guest, gpa).ok()?;
        if !probe.state.is_mmio_leaf() {
            return None;
        }
        let hpa = probe.entry.phys();
        let (_, meta) = self.mt_lookup(hpa, probe.level);
        self.leaf_of(hpa, probe.level, meta)
    }

    fn next_leaf(&self, within: MmioRange, from: Hpa) -> Option<Leaf> {
        let start = from.max(within.base()).as_u64();
        let (hpa, level, raw) = self.mmiomt.next_entry(&self.pool, start, within.end())?;
        let leaf = self.leaf_of(hpa, level, MmioMtEntry::from_bits(raw))?;
        within.contains_page(leaf.hpa, leaf.size).then_some(leaf)
    }
}
