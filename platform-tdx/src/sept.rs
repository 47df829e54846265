//! The secure EPT for private MMIO: one S-EPT tree per TD plus the MMIO metadata table
//! (MMIOMT, keyed by host physical address), all in pages of one [`FramePool`].
//!
//! Every operation checks the entry's secure state first and changes nothing when it refuses
//! ([`SeptError`], the TDX-style cause). [`SecureTable`] is implemented on top of it.

use bitfield_struct::bitfield;
use tsm_core::capacity::{MAX_GUESTS, UNBIND_WORK_PER_CALL, UNBIND_WORK_PER_PAGE_FREED};
use tsm_core::dma::DmaState;
use tsm_core::secure_table::{Epoch, Found, PageRest, Run, run_page};
use tsm_core::{
    Completion, Gpa, GuestId, Hpa, InterfaceId, Leaf, LeafState, MmioRange, PageSize, SecureTable,
    TableError,
};

use crate::bits::{BEPOCH_WINDOW, Bepoch, MtGuest, Pfn};
use crate::dmar::DmarTable;
use crate::ept::{SeptEntry, SeptState};
use crate::frames::{ENTRIES_PER_PAGE, FrameIndex, FramePool, PoolError, Retired};
use crate::radix::{
    EntryFormat, InstallError, Lookup, MAX_LEVELS, Radix, Scan, level_shift, level_span, slot_of,
};

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
pub use crate::bits::BEPOCH_BITS;

/// One MMIO metadata entry (ours; the TDX module's MMIOMT layout is not public). Leaves name
/// the TD and guest page a host MMIO page is mapped at, so unbind finds a TDI's leaves by host
/// address without scanning any S-EPT. Multi-bit fields take [`crate::bits`] types, which never
/// exceed their field, so the generated setters never reach their out-of-range panic.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct MmioMtEntry {
    /// Bit 0: a leaf (the host page is mapped).
    pub leaf: bool,
    /// Bit 1: points to the next table page.
    pub table: bool,
    /// Bits 7:2: the TD's slot.
    #[bits(6)]
    pub guest: MtGuest,
    /// Bit 8: the S-EPT leaf is blocked.
    pub blocked: bool,
    #[bits(3)]
    __: u8,
    /// Bits 51:12: guest frame (leaf) or next table page.
    #[bits(40)]
    pub pfn: Pfn,
    /// Bits 63:52: low bits of the TD epoch the leaf was blocked in (the TDX module keeps the
    /// blocking epoch in the page's metadata too: PAMT BEPOCH).
    #[bits(12)]
    pub bepoch: Bepoch,
}

/// How S-EPT entries encode tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeptFormat {}

impl EntryFormat for SeptFormat {
    const FREE: u64 = SeptEntry::FREE.into_bits();
    fn table(frame: Pfn) -> u64 {
        SeptEntry::table(frame).into_bits()
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
    fn table(frame: Pfn) -> u64 {
        MmioMtEntry::new()
            .with_table(true)
            .with_pfn(frame)
            .into_bits()
    }
    fn is_table(raw: u64, _level: u8) -> bool {
        MmioMtEntry::from_bits(raw).table()
    }
    fn child(raw: u64) -> u64 {
        MmioMtEntry::from_bits(raw).pfn().phys()
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
    /// TRACK while an IOMMU still owes the TD's domain the IOTLB invalidation the previous
    /// TRACK asked for, or removal of a leaf blocked before that TRACK
    /// (TDX_IOMMU_IOTLB_TRACKING_NOT_DONE), or its request while it is queued already.
    IotlbTrackingNotDone,
    /// TDH.IQ.INV.REQUEST of the TD's domain on an IOMMU that owes it nothing
    /// (TDX_IOMMU_IOTLB_TRACKING_NOT_REQUIRED).
    IotlbTrackingNotRequired,
    /// TRACK re-stamped as many old blocked leaves as one call may (their 12-bit epochs would
    /// become ambiguous in the bucket it enters) and did not advance the epoch yet; the work
    /// is kept, call it again (ours, TDX_INTERRUPTED_RESUMABLE on TDH.MEM.TRACK).
    TrackResumable,
    /// The host page is already mapped (its MMIOMT entry is in use).
    HpaInUse,
    /// Accept of an already accepted page (PAGE_ALREADY_ACCEPTED, a warning).
    AlreadyAccepted,
    /// The frame pool cannot supply the table pages the mapping needs.
    PoolEmpty,
    /// The frame pool cannot supply them now, but could with the table pages earlier unmaps
    /// emptied, which wait for their TD's next TRACK to be flushed ([`Sept::awaiting_flush`]).
    PoolAwaitsFlush,
    /// An address not aligned to the leaf size.
    Misaligned,
    /// A guest address the S-EPT cannot hold (at or above 2^48 with 4 levels): refused by the
    /// walker, never aliased to the entry of its low bits.
    GpaTooWide,
    /// A host address the MMIOMT cannot hold (at or above 2^52; no `Hpa` is).
    HpaTooWide,
    /// A guest slot the table does not have.
    UnknownGuest,
    /// The frame pool's own bookkeeping disagrees with itself (ours, `TSM_INCONSISTENT`; the
    /// core's `Inconsistent`): a table page's entry count that would go below zero, past the
    /// page's 512 entries, or to zero while the page still holds entries; a free list that
    /// disagrees with the free count; a page index outside the pool. Counts are checked, never
    /// saturated, and every check of an operation comes before its first write: the operation
    /// changed nothing.
    Inconsistent,
}

impl From<PoolError> for SeptError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::Empty => SeptError::PoolEmpty,
            PoolError::Inconsistent => SeptError::Inconsistent,
        }
    }
}

impl From<InstallError> for SeptError {
    /// For installs whose walk the S-EPT checked itself: a refusal other than the pool's
    /// supply means the walker and the checks disagree.
    fn from(e: InstallError) -> Self {
        match e {
            InstallError::PoolEmpty => SeptError::PoolEmpty,
            InstallError::OutsideTree | InstallError::Occupied | InstallError::Inconsistent => {
                SeptError::Inconsistent
            }
        }
    }
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
            SeptError::TlbTrackingNotDone
            | SeptError::PreviousEpochBusy
            | SeptError::TrackResumable => TableError::TlbNotFlushed,
            SeptError::IotlbTrackingNotDone => TableError::IotlbNotTracked,
            // Only the IQ leaf meets it, never a core path: one there is a bug.
            SeptError::IotlbTrackingNotRequired => TableError::Inconsistent,
            SeptError::HpaInUse => TableError::HpaMapped,
            SeptError::AlreadyAccepted => TableError::GpaMapped,
            SeptError::PoolEmpty => TableError::OutOfFrames,
            SeptError::PoolAwaitsFlush => TableError::FramesAwaitFlush,
            // A 4-level S-EPT cannot hold the address at all: the core's status for an address
            // it cannot place is Misaligned (no TableError says "too wide").
            SeptError::Misaligned | SeptError::GpaTooWide | SeptError::HpaTooWide => {
                TableError::Misaligned
            }
            SeptError::UnknownGuest => TableError::UnknownGuest,
            SeptError::Inconsistent => TableError::Inconsistent,
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

/// log2 of the epochs in one bucket of blocked-leaf counts: half the 2^12 epochs the blocking
/// epoch field tells apart ([`BEPOCH_WINDOW`]), so a leaf blocked in the previous or the
/// current bucket is less than 2^12 epochs old and its epoch is recovered exactly.
const EPOCH_BUCKET_SHIFT: u32 = BEPOCH_WINDOW.trailing_zeros() - 1;
/// Bucket slots kept: the previous bucket, the current one, and the one TRACK enters next.
const EPOCH_BUCKETS: u64 = 3;
/// Work one host TRACK may spend re-stamping old blocked leaves before it returns with the
/// work kept, in the units of [`UNBIND_WORK_PER_CALL`] (what the MMIOMT search reads, one per
/// leaf rewritten): the bound of one unbind call. An unbind's own TRACK spends what its call
/// has left.
const RESTAMP_WORK: u32 = UNBIND_WORK_PER_CALL;

/// Slot of bucket number `bucket` in [`TdEpoch::blocked`].
fn slot_of_bucket(bucket: u64) -> usize {
    // < 3: a remainder by a non-zero constant.
    bucket
        .checked_rem(EPOCH_BUCKETS)
        .and_then(|s| usize::try_from(s).ok())
        .unwrap_or(0)
}

/// Slot of the bucket holding `epoch` in [`TdEpoch::blocked`].
fn bucket_slot(epoch: Epoch) -> usize {
    slot_of_bucket(epoch >> EPOCH_BUCKET_SHIFT)
}

/// A TD's TLB epoch (TDX: TD_EPOCH, advanced by TDH.MEM.TRACK).
///
/// Blocked leaves record their epoch modulo 2^12 ([`Bepoch`]). The epoch is exact only while
/// the leaf is less than 2^12 epochs old, so a TRACK that enters a new bucket of 2^11 epochs
/// first re-stamps every outstanding blocked leaf of the bucket before the previous one into
/// the current bucket's first epoch. Such a leaf is at least 2^11 epochs old, so it was flushed
/// long ago and the new stamp (also flushed) keeps it removable; unflushed leaves (blocked in
/// `flushed` or later, at most two epochs) are never re-stamped. `blocked` counts the
/// outstanding blocked leaves per bucket, so the common case costs nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct TdEpoch {
    current: Epoch,
    /// Every vCPU has flushed up to here; `current - flushed` is 0 or 1.
    flushed: Epoch,
    /// Every IOMMU with an accepted PASID entry of the TD has invalidated the TD's domain up
    /// to here; below `current` exactly while an IOMMU owes the invalidation the last TRACK
    /// asked for ([`crate::dmar::IotlbOwed`]). A TD with no accepted entry keeps it at `current`: its
    /// leaves wait for the TLB only, as before.
    iotlb_flushed: Epoch,
    /// Tests: flushes complete only when released.
    hold: bool,
    /// Outstanding blocked leaves per bucket of blocking epochs (slot: [`bucket_slot`]).
    blocked: [u64; EPOCH_BUCKETS as usize],
    /// Where an unfinished re-stamp scan of the MMIOMT resumes (host address).
    restamp_from: Option<u64>,
    /// Table pages the TD's S-EPT gave up before the last TRACK: free once every vCPU and
    /// every IOMMU of the TD has flushed that epoch (`flushed` and `iotlb_flushed` at
    /// `current`), when no paging-structure cache can still hold an entry naming them. Those
    /// given up since wait in the tree ([`Radix::retired`]) for the next TRACK.
    waiting: Retired,
}

impl TdEpoch {
    /// Whether every walker of the TD has flushed the current epoch.
    const fn settled(&self) -> bool {
        self.flushed == self.current && self.iotlb_flushed == self.current
    }
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

/// Everything a [`Sept`] keeps beside the bytes of its pool's pages: every TD's epoch record
/// (current and flushed epoch, blocked-leaf counts, an unfinished re-stamp), every tree's root
/// and the pool's free-list head and count. With [`FramePool::pages`] it is the whole state of
/// the table, for tests and fuzz targets that prove a refusal changed nothing. Opaque: only
/// compared and printed.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeptBookkeeping {
    epochs: [TdEpoch; MAX_GUESTS],
    roots: [Option<FrameIndex>; MAX_GUESTS],
    /// Each tree's pages given up since its last TRACK.
    retired: [Retired; MAX_GUESTS],
    mmiomt: Option<FrameIndex>,
    free_head: u32,
    free: usize,
    dmar: DmarTable,
}

impl SeptBookkeeping {
    /// `guest`'s current and flushed TLB epochs (test support: a refused unbind may advance
    /// its owner's epoch by one and nothing else's).
    #[doc(hidden)]
    pub fn epoch(&self, guest: GuestId) -> Option<(Epoch, Epoch)> {
        self.epochs
            .get(usize::from(guest.slot()))
            .map(|e| (e.current, e.flushed))
    }
}

/// What [`Sept::mmio_map`] found and will write.
struct MapPlan {
    found: Lookup,
    mt_found: Lookup,
    entry: SeptEntry,
    meta: MmioMtEntry,
    level: u8,
}

/// What [`Sept::mmio_block`] found and will write.
struct BlockPlan {
    found: Lookup,
    mt_found: Lookup,
    entry: SeptEntry,
    meta: MmioMtEntry,
    /// The epoch the leaf is blocked in, and its bucket's count after.
    epoch: Epoch,
    count: u64,
}

/// What [`Sept::mmio_unmap`] found and will clear.
struct UnmapPlan {
    found: Lookup,
    mt_found: Lookup,
    host: Hpa,
    /// The epoch the leaf was blocked in, and its bucket's count after.
    blocked_at: Epoch,
    count: u64,
}

/// The state a block moves an MMIO leaf to (`None`: already blocked, nothing to do).
fn blocked_state(state: SeptState) -> Option<SeptState> {
    match state {
        SeptState::MmioMapped => Some(SeptState::MmioBlocked),
        SeptState::MmioPending => Some(SeptState::MmioPendingBlocked),
        _ => None,
    }
}

/// Every TD's S-EPT and the MMIO metadata, in one frame pool.
pub struct Sept<'m> {
    pool: FramePool<'m>,
    trees: [Radix<SeptFormat>; MAX_GUESTS],
    epochs: [TdEpoch; MAX_GUESTS],
    mmiomt: Radix<MtFormat>,
    /// The trusted IOMMU's PASID entries of this table's TDs' TDIs ([`crate::dmar`]).
    dmar: DmarTable,
}

/// The pool's summary, never the tables.
impl core::fmt::Debug for Sept<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Sept")
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

impl<'m> Sept<'m> {
    /// An empty S-EPT of `levels` for every TD, with table pages from `pool`.
    pub fn new(pool: FramePool<'m>, levels: SeptLevels) -> Self {
        Self {
            pool,
            trees: [Radix::deferred(levels as u8); MAX_GUESTS],
            epochs: [TdEpoch::default(); MAX_GUESTS],
            mmiomt: Radix::new(MMIOMT_LEVELS),
            dmar: DmarTable::new(),
        }
    }

    /// The trusted IOMMU's PASID entries this table keeps.
    pub fn dmar(&self) -> &DmarTable {
        &self.dmar
    }

    /// TDH.IQ.INV.PROCESS on the IOMMU of `segment` ([`DmarTable::process`]): a TD whose
    /// IOMMUs no longer owe it anything has its IOTLB epoch passed (`prev_iotlb_cnt` back to
    /// 0, `tdh_iq_inv_process.c` @6e66b9d2). The invalidations of a guest whose flushes tests
    /// hold ([`Sept::hold_flush`]) stay queued, as SEV's held ASID fence holds its IOTLB
    /// invalidation.
    pub fn iq_process(&mut self, segment: u16) -> usize {
        let epochs = &self.epochs;
        let held = |g: GuestId| epochs.get(usize::from(g.slot())).is_some_and(|e| e.hold);
        let done = self.dmar.process(segment, held);
        for (slot, e) in self.epochs.iter_mut().enumerate() {
            let Ok(slot) = u16::try_from(slot) else {
                break;
            };
            if e.iotlb_flushed != e.current && !self.dmar.iotlb_owed(GuestId::from_slot(slot)) {
                e.iotlb_flushed = e.current;
            }
            Self::settle(&mut self.pool, e);
        }
        done
    }

    /// Frees the TD's waiting table pages once every walker has flushed
    /// ([`TdEpoch::settled`]). A chain the pool refuses (its bookkeeping drifted) stays
    /// waiting, logged as an error: pages lost to the pool (which `Sept::audit_pages` also
    /// reports), never a page freed early.
    fn settle(pool: &mut FramePool<'_>, e: &mut TdEpoch) {
        if e.settled()
            && !e.waiting.is_empty()
            && let Err(err) = pool.reclaim(&mut e.waiting)
        {
            // No caller to answer (PROCESS completes other TDs' work): said, not dropped.
            log::error!(
                "S-EPT: {} retired table pages kept out of the pool: {err:?}",
                e.waiting.len()
            );
        }
    }

    /// Audit (tests and fuzz oracles): every pool page is in exactly one place (a tree, a
    /// retired chain, the free list), every retired page reads as a free S-EPT page to a walker
    /// (no entry with EPT bits 2:0 or bit 10 set, suppress-#VE set in each), and each table
    /// page's count matches its entries.
    #[doc(hidden)]
    #[cfg(any(test, feature = "std"))]
    pub fn audit_pages(&self) -> Result<(), String> {
        fn tree<F: EntryFormat>(
            pool: &FramePool<'_>,
            page: FrameIndex,
            level: u8,
            seen: &mut [u8],
        ) -> Result<(), String> {
            let p = pool
                .page(page)
                .ok_or(format!("table page {page} outside"))?;
            let slot = seen
                .get_mut(page as usize)
                .ok_or(format!("table page {page} outside"))?;
            *slot = slot.saturating_add(1);
            let in_use = p.0.iter().filter(|&&e| e != F::FREE).count() as u64;
            if pool.used(page) != in_use {
                return Err(format!(
                    "page {page}: count {} for {in_use}",
                    pool.used(page)
                ));
            }
            if level > 1 {
                for &e in &p.0 {
                    if F::is_table(e, level) {
                        let child = pool
                            .index_of(F::child(e))
                            .ok_or(format!("page {page}: table entry {e:#x} outside"))?;
                        tree::<F>(pool, child, level.saturating_sub(1), seen)?;
                    }
                }
            }
            Ok(())
        }
        const PRESENT: u64 = 0b111 | 1 << 10;
        let mut seen = std::vec![0u8; self.pool.total_frames()];
        for t in &self.trees {
            if let Some(root) = t.root() {
                tree::<SeptFormat>(&self.pool, root, t.levels(), &mut seen)?;
            }
        }
        if let Some(root) = self.mmiomt.root() {
            tree::<MtFormat>(&self.pool, root, self.mmiomt.levels(), &mut seen)?;
        }
        let chains = self
            .trees
            .iter()
            .map(|t| t.retired())
            .chain(self.epochs.iter().map(|e| e.waiting));
        for chain in chains {
            for page in self.pool.chain_pages(&chain)? {
                let p = self.pool.page(page).ok_or("retired page outside")?;
                if p.0
                    .iter()
                    .any(|&e| e & PRESENT != 0 || e & SeptFormat::FREE == 0)
                {
                    return Err(format!(
                        "retired page {page} is not all free to a walker: {p:?}"
                    ));
                }
                if let Some(n) = seen.get_mut(page as usize) {
                    *n = n.saturating_add(1);
                }
            }
        }
        for page in self.pool.free_list()? {
            if let Some(n) = seen.get_mut(page as usize) {
                *n = n.saturating_add(1);
            }
        }
        match seen.iter().position(|&n| n != 1) {
            Some(page) => Err(format!("page {page} is in {:?} places", seen.get(page))),
            None => Ok(()),
        }
    }

    /// Table pages `guest`'s S-EPT gave up that its next TRACK, once flushed, gives back: the
    /// retired ones, and those waiting for a flush still to come (a chain the pool refused at
    /// a flush already done waits for drift to be put right, not for a TRACK).
    pub fn awaiting_flush(&self, guest: GuestId) -> usize {
        let slot = usize::from(guest.slot());
        let waiting = self
            .epochs
            .get(slot)
            .filter(|e| !e.settled())
            .map_or(0, |e| e.waiting.len());
        let fresh = self.trees.get(slot).map_or(0, |t| t.retired().len());
        waiting.saturating_add(fresh)
    }

    /// The refusal of `guest`'s allocation of `need` pages: `PoolAwaitsFlush` when the pages
    /// `guest`'s own S-EPT gave up would cover it (the host TRACKs that TD, the one it maps
    /// for, and the map succeeds once the TRACK is flushed and, where a PASID entry names the
    /// S-EPT, its IOTLB invalidation processed), else the pool's. Other TDs' waiting pages are
    /// no promise: such a TD may be past the point where it can be tracked.
    fn pool_short(&self, guest: GuestId, e: PoolError, need: usize) -> SeptError {
        let room = self
            .pool
            .free_frames()
            .saturating_add(self.awaiting_flush(guest));
        match e {
            PoolError::Empty if room >= need => SeptError::PoolAwaitsFlush,
            e => e.into(),
        }
    }

    /// Table pages `guest`'s S-EPT gave up that are not free yet (waiting for a TRACK and its
    /// flushes).
    pub fn retired_pages(&self, guest: GuestId) -> usize {
        let slot = usize::from(guest.slot());
        let waiting: usize = self.epochs.get(slot).map_or(0, |e| e.waiting.len());
        let fresh = self.trees.get(slot).map_or(0, |t| t.retired().len());
        waiting.saturating_add(fresh)
    }

    /// TDH.IQ.INV.REQUEST of type [`crate::dmar::INV_REQ_IOTLB`]: queues the invalidation of
    /// `guest`'s domain its last TRACK owes on the IOMMU of `segment`
    /// ([`DmarTable::request_iotlb`]).
    pub fn request_iotlb(&mut self, guest: GuestId, segment: u16) -> Result<(), SeptError> {
        self.tree(guest)?;
        self.dmar.request_iotlb(guest, segment)
    }

    /// TDG.IQ.INV.REQUEST's state step for `guest` ([`DmarTable::td_request_start`]).
    pub fn td_request_start(
        &mut self,
        guest: GuestId,
        req_num: u8,
        status: Option<(u64, u32)>,
    ) -> Result<(), crate::dmar::TdInvRefusal> {
        self.dmar.td_request_start(guest, req_num, status)
    }

    /// TDH.IQ.INV.REQUEST INV_REQ_TD's queueing step ([`DmarTable::td_commit`]).
    pub fn td_commit(&mut self, guest: GuestId, segment: u16, count: u8) -> u8 {
        self.dmar.td_commit(guest, segment, count)
    }

    /// Ends the TD requests every required IOMMU has completed, `complete` writing each
    /// one's status before it is reset ([`DmarTable::finish_td_requests`]).
    pub fn finish_td_requests(
        &mut self,
        complete: impl FnMut(GuestId, Option<(u64, u32)>) -> bool,
    ) -> (usize, usize) {
        self.dmar.finish_td_requests(complete)
    }

    /// `guest` stops running: its request ends unwritten ([`DmarTable::td_request_cancel`]).
    pub fn td_request_cancel(&mut self, guest: GuestId) {
        self.dmar.td_request_cancel(guest)
    }

    /// The frame pool (tests compare its bytes before and after a refusal).
    pub fn pool(&self) -> &FramePool<'m> {
        &self.pool
    }

    /// What the table holds beside its pool's page bytes (test support: with the bytes of
    /// [`Sept::pool`] it is everything a refusal must leave as it was).
    #[doc(hidden)]
    pub fn bookkeeping(&self) -> SeptBookkeeping {
        SeptBookkeeping {
            epochs: self.epochs,
            roots: self.trees.map(|t| t.root()),
            retired: self.trees.map(|t| t.retired()),
            mmiomt: self.mmiomt.root(),
            free_head: self.pool.free_head(),
            free: self.pool.free_frames(),
            dmar: self.dmar,
        }
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

    /// Whether `guest`'s S-EPT can hold `gpa` (below 2^48 with 4 levels, 2^52 with 5):
    /// [`SeptError::GpaTooWide`] otherwise. The check is the walker's own ([`Radix::holds`],
    /// which every walk applies); callers that must report it before other refusals ask here.
    pub fn gpa_in_table(&self, guest: GuestId, gpa: Gpa) -> Result<(), SeptError> {
        if self.tree(guest)?.holds(gpa.as_u64()) {
            Ok(())
        } else {
            Err(SeptError::GpaTooWide)
        }
    }

    /// The walk of `guest`'s S-EPT for `gpa` down to `level`: the one way every S-EPT
    /// operation reaches an entry, refusing a GPA the table cannot hold.
    fn walk(&self, guest: GuestId, gpa: Gpa, level: u8) -> Result<Lookup, SeptError> {
        self.tree(guest)?
            .lookup(&self.pool, gpa.as_u64(), level)
            .map_err(|_| SeptError::GpaTooWide)
    }

    /// Walks `guest`'s S-EPT to the entry covering `gpa` that is not a table pointer.
    pub fn probe(&self, guest: GuestId, gpa: Gpa) -> Result<Probe, SeptError> {
        Ok(Self::probe_of(&self.walk(guest, gpa, 1)?))
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
        let found = self.walk(guest, gpa, 1)?;
        if !gpa.is_aligned(size) {
            return Err(SeptError::Misaligned);
        }
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

    /// The MMIOMT walk for `hpa` (below 2^52, which the 5-level MMIOMT always holds).
    fn mt_lookup(&self, hpa: u64, level: u8) -> Result<(Lookup, MmioMtEntry), SeptError> {
        let found = self
            .mmiomt
            .lookup(&self.pool, hpa, level)
            .map_err(|_| SeptError::HpaTooWide)?;
        Ok((found, MmioMtEntry::from_bits(found.raw)))
    }

    fn blocked_epoch(epoch: TdEpoch, bepoch: Bepoch) -> Epoch {
        bepoch.epoch_at(epoch.current)
    }

    fn leaf_of(&self, hpa: u64, level: u8, mt: MmioMtEntry) -> Option<Leaf> {
        let guest = mt.guest().guest();
        // A guest slot past the table's TDs is no leaf, blocked or not.
        let epoch = self.epoch(guest).ok()?;
        let state = if mt.blocked() {
            LeafState::Blocked {
                epoch: Self::blocked_epoch(epoch, mt.bepoch()),
            }
        } else {
            LeafState::Mapped
        };
        Some(Leaf {
            guest,
            gpa: Gpa::try_new(mt.pfn().phys()).ok()?,
            hpa: Hpa::try_new(hpa).ok()?,
            size: leaf_size(level)?,
            state,
        })
    }

    /// Every check of [`Sept::mmio_map`], reading only: the two walks, the entries and the
    /// pages the installs would take.
    fn map_plan(
        &self,
        guest: GuestId,
        gpa: Gpa,
        hpa: Hpa,
        size: PageSize,
    ) -> Result<MapPlan, SeptError> {
        let tree = *self.tree(guest)?;
        let level = ept_level(size);
        let found = self.walk(guest, gpa, level)?;
        if !gpa.is_aligned(size) || !hpa.is_aligned(size) {
            return Err(SeptError::Misaligned);
        }
        if found.rooted && found.raw != SeptFormat::FREE {
            return Err(SeptError::EntryNotFree { level: found.level });
        }
        let (mt_found, _) = self.mt_lookup(hpa.as_u64(), level)?;
        if mt_found.rooted && mt_found.raw != MtFormat::FREE {
            return Err(SeptError::HpaInUse);
        }
        let entry = SeptEntry::mmio_leaf(Pfn::of(hpa), level, SeptState::MmioPending);
        let meta = MmioMtEntry::new()
            .with_leaf(true)
            .with_guest(MtGuest::of(guest).ok_or(SeptError::UnknownGuest)?)
            .with_pfn(Pfn::of(gpa));
        // Both installs checked before either writes: the entry counts of the pages they
        // write, then the pages they take, together. The two trees never share a page, so
        // each check holds after the other tree's install, and the MMIOMT's install leaves
        // the S-EPT walk `found` valid.
        let need = tree
            .check_install(&self.pool, &found, level, entry.into_bits())?
            .checked_add(self.mmiomt.check_install(
                &self.pool,
                &mt_found,
                level,
                meta.into_bits(),
            )?)
            .ok_or(SeptError::Inconsistent)?;
        self.pool
            .check_alloc(need)
            .map_err(|e| self.pool_short(guest, e, need))?;
        Ok(MapPlan {
            found,
            mt_found,
            entry,
            meta,
            level,
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
        let MapPlan {
            found,
            mt_found,
            entry,
            meta,
            level,
        } = self.map_plan(guest, gpa, hpa, size)?;
        // Every check passed; both installs are proven to succeed.
        self.mmiomt
            .install_at(&mut self.pool, &mt_found, level, meta.into_bits())?;
        let slot = usize::from(guest.slot());
        let tree = self.trees.get_mut(slot).ok_or(SeptError::UnknownGuest)?;
        if let Err(e) = tree.install_at(&mut self.pool, &found, level, entry.into_bits()) {
            // Unreachable by the checks above; undo rather than leave half a mapping.
            if let Ok((mt_found, _)) = self.mt_lookup(hpa.as_u64(), level) {
                // The undo's own refusal changes nothing more: the error below stands.
                self.mmiomt.clear(&mut self.pool, &mt_found).ok();
            }
            return Err(e.into());
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
        let entry = SeptEntry::mmio_leaf(probe.entry.pfn(), probe.level, SeptState::MmioMapped);
        let tree = *self.tree(guest)?;
        tree.rewrite(&mut self.pool, &found, entry.into_bits())?;
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
        let Some(plan) = self.block_plan(guest, gpa, size)? else {
            return Ok(());
        };
        // Every check passed: both rewrites and the count are the ones just proven.
        let tree = *self.tree(guest)?;
        tree.rewrite(&mut self.pool, &plan.found, plan.entry.into_bits())?;
        self.mmiomt
            .rewrite(&mut self.pool, &plan.mt_found, plan.meta.into_bits())?;
        if let Some(n) = self.blocked_count(guest, plan.epoch) {
            *n = plan.count;
        }
        Ok(())
    }

    /// Every check of [`Sept::mmio_block`], reading only.
    fn block_plan(
        &self,
        guest: GuestId,
        gpa: Gpa,
        size: PageSize,
    ) -> Result<Option<BlockPlan>, SeptError> {
        let epoch = self.epoch(guest)?;
        let (found, probe) = self.exact(guest, gpa, size)?;
        let Some(next) = blocked_state(probe.state) else {
            // Already blocked: nothing to do (resumable walks rely on it).
            return Ok(None);
        };
        let (mt_found, meta) = self.mt_lookup(probe.entry.phys(), probe.level)?;
        let entry = SeptEntry::mmio_leaf(probe.entry.pfn(), probe.level, next);
        let meta = meta
            .with_blocked(true)
            .with_bepoch(Bepoch::of(epoch.current));
        // Both rewrites and the count checked before anything writes.
        let count = self.blocked_after(guest, epoch.current, true)?;
        self.tree(guest)?
            .check_rewrite(&self.pool, &found, entry.into_bits())?;
        self.mmiomt
            .check_rewrite(&self.pool, &mt_found, meta.into_bits())?;
        Ok(Some(BlockPlan {
            found,
            mt_found,
            entry,
            meta,
            epoch: epoch.current,
            count,
        }))
    }

    /// Every check of [`Sept::mmio_unmap`], reading only.
    fn unmap_plan(&self, guest: GuestId, gpa: Gpa, size: PageSize) -> Result<UnmapPlan, SeptError> {
        let epoch = self.epoch(guest)?;
        let (found, probe) = self.exact(guest, gpa, size)?;
        if !probe.state.is_blocked() {
            return Err(SeptError::NotBlocked);
        }
        let hpa = probe.entry.phys();
        let (mt_found, meta) = self.mt_lookup(hpa, probe.level)?;
        // Blocked at b, removable once b < flushed (the TDX rule: tracking passed the epoch).
        // b is exact: TRACK keeps every blocked leaf less than 2^12 epochs old (TdEpoch).
        let blocked_at = Self::blocked_epoch(epoch, meta.bepoch());
        if blocked_at >= epoch.flushed {
            return Err(SeptError::TlbTrackingNotDone);
        }
        // And once every IOMMU that may cache the leaf (or the table pages its removal gives
        // back) through the TD's S-EPT has invalidated the TD's domain since the block
        // (TDH.MMIO.UNMAP's `is_tlb_and_iotlb_tracked`, `tdh_mmio_unmap.c`
        // @e69a4391305e993a7c646eb5eee15f2c47a649c4; its rule, not in the public source,
        // is ours: the TRACK after the block and its IOTLB invalidations complete).
        if blocked_at >= epoch.iotlb_flushed {
            return Err(SeptError::IotlbTrackingNotDone);
        }
        let host = Hpa::try_new(hpa).map_err(|_| SeptError::Misaligned)?;
        // Both clears checked before either writes: the entry counts they update, then the
        // pages they give back, together (the two trees never share a page).
        let released = self
            .tree(guest)?
            .check_clear(&self.pool, &found)?
            .checked_add(self.mmiomt.check_clear(&self.pool, &mt_found)?)
            .ok_or(SeptError::Inconsistent)?;
        self.pool.check_release(released)?;
        let count = self.blocked_after(guest, blocked_at, false)?;
        Ok(UnmapPlan {
            found,
            mt_found,
            host,
            blocked_at,
            count,
        })
    }

    /// TDH.MEM.TRACK: advances the TD epoch; refused while the previous one is not flushed.
    /// Entering a new bucket of epochs first re-stamps the TD's blocked leaves of the bucket
    /// before the previous one (see `TdEpoch`), at most `RESTAMP_WORK` units of work per
    /// call: `TrackResumable`, with the work kept, until that is done.
    pub fn mem_track(&mut self, guest: GuestId) -> Result<(), SeptError> {
        let mut work = RESTAMP_WORK;
        self.mem_track_within(guest, &mut work)
    }

    /// [`Sept::mem_track`] spending at most `work` on a re-stamp (the search's reads, one per
    /// leaf rewritten), and one unit for the advance itself. With `work` spent before the
    /// re-stamp is done: `TrackResumable`, the work kept, the epoch not advanced.
    pub fn mem_track_within(&mut self, guest: GuestId, work: &mut u32) -> Result<(), SeptError> {
        let e = self.epoch(guest)?;
        if e.flushed < e.current {
            return Err(SeptError::PreviousEpochBusy);
        }
        // No IOMMU may still owe the previous TRACK's invalidation (`prev_iotlb_cnt != 0`:
        // TDX_IOMMU_IOTLB_TRACKING_NOT_DONE, `tdh_mem_track.c` @1666adc4).
        if self.dmar.iotlb_owed(guest) {
            return Err(SeptError::IotlbTrackingNotDone);
        }
        let next = e
            .current
            .checked_add(1)
            .ok_or(SeptError::PreviousEpochBusy)?;
        if bucket_slot(next) != bucket_slot(e.current) {
            self.restamp(guest, e, work)?;
        }
        // The pages the tree gave up in this epoch wait for the flushes this TRACK starts,
        // with any still waiting for an earlier one (checked before anything changes).
        let slot = usize::from(guest.slot());
        let tree = self.trees.get_mut(slot).ok_or(SeptError::UnknownGuest)?;
        let e = self.epochs.get_mut(slot).ok_or(SeptError::UnknownGuest)?;
        self.pool.check_join(&e.waiting, &tree.retired())?;
        *work = work.saturating_sub(1);
        Self::settle(&mut self.pool, e);
        self.pool.join(&mut e.waiting, tree.take_retired())?;
        e.current = next;
        if !e.hold {
            e.flushed = e.current;
        }
        // Every IOMMU with an accepted entry of the TD owes the new epoch an invalidation of
        // the TD's domain; with none, the IOTLB has nothing of the TD to forget.
        if !self.dmar.track(guest) {
            e.iotlb_flushed = next;
        }
        Self::settle(&mut self.pool, e);
        Ok(())
    }

    /// The count of `guest`'s outstanding leaves blocked in `epoch`'s bucket.
    fn blocked_count(&mut self, guest: GuestId, epoch: Epoch) -> Option<&mut u64> {
        self.epochs
            .get_mut(usize::from(guest.slot()))?
            .blocked
            .get_mut(bucket_slot(epoch))
    }

    /// The blocked-leaf count of `epoch`'s bucket after one more (`grow`) or one fewer leaf,
    /// computed before anything changes: a count that would drift is `Inconsistent`.
    fn blocked_after(&self, guest: GuestId, epoch: Epoch, grow: bool) -> Result<u64, SeptError> {
        let now = self
            .epochs
            .get(usize::from(guest.slot()))
            .ok_or(SeptError::UnknownGuest)?
            .blocked
            .get(bucket_slot(epoch))
            .copied()
            .ok_or(SeptError::Inconsistent)?;
        if grow {
            now.checked_add(1)
        } else {
            now.checked_sub(1)
        }
        .ok_or(SeptError::Inconsistent)
    }

    /// Moves `guest`'s blocked leaves out of the bucket a TRACK from `e.current` would make
    /// ambiguous (the one before the current bucket k: once TRACK enters k + 1 they could be
    /// 2^12 or more epochs old), stamping them with the current bucket's first epoch. Both epochs are below `flushed`
    /// (the caller checked `flushed == current`, the last epoch of the current bucket, and the
    /// bucket has more than one epoch), so every re-stamped leaf stays removable.
    fn restamp(&mut self, guest: GuestId, e: TdEpoch, work: &mut u32) -> Result<(), SeptError> {
        if *work == 0 {
            // Nothing to spend: nothing read, nothing kept.
            return Err(SeptError::TrackResumable);
        }
        let bucket = e.current >> EPOCH_BUCKET_SHIFT;
        // Bucket k - 1 has the slot of k + 2 (three slots).
        let stale = slot_of_bucket(bucket.saturating_add(2));
        let here = slot_of_bucket(bucket);
        let stamp = Bepoch::of(bucket << EPOCH_BUCKET_SHIFT);
        let mut left = e.blocked.get(stale).copied().unwrap_or(0);
        let mut moved = 0u64;
        let mut from = e.restamp_from.unwrap_or(0);
        let limit = self.mmiomt.limit();
        let mut paused = None;
        let mut failed = None;
        while left > 0 {
            if *work == 0 {
                paused = Some(from);
                break;
            }
            // The search's reads are charged as an unbind's searches are.
            let (hpa, level, raw) = match self
                .mmiomt
                .next_entry_bounded(&self.pool, from, limit, None, work)
            {
                Scan::Entry {
                    base, level, raw, ..
                } => (base, level, raw),
                Scan::Paused { resume } => {
                    paused = Some(resume);
                    break;
                }
                // Fewer leaves than counted: the count drifted. What was re-stamped stays
                // correct (the stamp is flushed); the drift is reported.
                _ => {
                    failed = Some(SeptError::Inconsistent);
                    break;
                }
            };
            from = hpa.saturating_add(level_span(level));
            let meta = MmioMtEntry::from_bits(raw);
            if !meta.leaf() || !meta.blocked() || meta.guest().guest() != guest {
                continue;
            }
            if bucket_slot(meta.bepoch().epoch_at(e.current)) != stale {
                continue;
            }
            // One unit to rewrite it; none left: resume at this leaf.
            if *work == 0 {
                paused = Some(hpa);
                break;
            }
            *work = work.saturating_sub(1);
            let meta = meta.with_bepoch(stamp);
            let rewritten = self.mt_lookup(hpa, level).and_then(|(found, _)| {
                Ok(self
                    .mmiomt
                    .rewrite(&mut self.pool, &found, meta.into_bits())?)
            });
            if let Err(e) = rewritten {
                // The leaves re-stamped so far stay counted as moved; a later call resumes
                // at this one.
                paused = Some(hpa);
                failed = Some(e);
                break;
            }
            // Bounds, not counters that could drift: left > 0 here, and moved <= the count
            // left started from.
            left = left.saturating_sub(1);
            moved = moved.saturating_add(1);
        }
        let td = self
            .epochs
            .get_mut(usize::from(guest.slot()))
            .ok_or(SeptError::UnknownGuest)?;
        // Both counts computed before either is written: a drift refuses with neither moved.
        let grown = td
            .blocked
            .get(here)
            .and_then(|n| n.checked_add(moved))
            .ok_or(SeptError::Inconsistent)?;
        if let Some(n) = td.blocked.get_mut(stale) {
            *n = left;
        }
        if let Some(n) = td.blocked.get_mut(here) {
            *n = grown;
        }
        td.restamp_from = paused;
        if let Some(e) = failed {
            return Err(e);
        }
        if paused.is_some() {
            return Err(SeptError::TrackResumable);
        }
        Ok(())
    }

    /// TDH.MMIO.UNMAP: removes a blocked leaf whose blocking epoch is flushed; returns the
    /// host address. Emptied MMIOMT pages go back to the pool; emptied S-EPT pages wait for the
    /// TD's next TRACK to be flushed (`TdEpoch::waiting`).
    pub fn mmio_unmap(
        &mut self,
        guest: GuestId,
        gpa: Gpa,
        size: PageSize,
    ) -> Result<Hpa, SeptError> {
        let plan = self.unmap_plan(guest, gpa, size)?;
        // Every check passed: the clears and the count are the ones just proven.
        let tree = self
            .trees
            .get_mut(usize::from(guest.slot()))
            .ok_or(SeptError::UnknownGuest)?;
        tree.clear(&mut self.pool, &plan.found)?;
        self.mmiomt.clear(&mut self.pool, &plan.mt_found)?;
        if let Some(n) = self.blocked_count(guest, plan.blocked_at) {
            *n = plan.count;
        }
        Ok(plan.host)
    }

    /// Tests: hold `guest`'s TLB flushes and IOTLB invalidations (`true`), or complete the
    /// flushes and stop holding (the invalidations complete at the next TDH.IQ.INV.PROCESS).
    pub fn hold_flush(&mut self, guest: GuestId, hold: bool) {
        if let Some(e) = self.epochs.get_mut(usize::from(guest.slot())) {
            e.hold = hold;
            if !hold {
                e.flushed = e.current;
                Self::settle(&mut self.pool, e);
            }
        }
    }
}

impl SecureTable for Sept<'_> {
    /// TDX: TDG.DMAR.ACCEPT takes a CONFIG_LOCKED TDI; the TD accepts before START.
    const DMA_ACCEPT_BEFORE_START: bool = true;

    /// TDH.DMAR.ADD's PASID entry, PENDING ([`DmarTable::create`]).
    /// TDH.DMAR.ADD: the PENDING entry, and the TD's S-EPT root if it has none yet (it adds
    /// a context before it maps anything), so the pool's refusal is the host's here and never
    /// a guest's at TDG.DMAR.ACCEPT (the module's root is a TDCS page, there from the TD's
    /// creation). The entry's refusals come first: a refused add made nothing.
    fn dma_create(&mut self, guest: GuestId, iface: InterfaceId) -> Result<(), TableError> {
        self.dmar.check_create(iface)?;
        let tree = self
            .trees
            .get_mut(usize::from(guest.slot()))
            .ok_or(SeptError::UnknownGuest)?;
        if let Err(e) = tree.ensure_root(&mut self.pool) {
            return Err(self.pool_short(guest, e, 1).into());
        }
        self.dmar.create(guest, iface)
    }

    /// TDG.DMAR.ACCEPT: SLPTPTR the TD's S-EPT root (as the module writes it), AW from its
    /// levels, the domain ID the TD's (ours: guest slot + 1 stands for the HKID the module ORs
    /// in; the S-EPT does not know HKIDs). The root stays the TD's for the TD's life, even with
    /// no leaf under it ([`Radix::keeps_root`]), so the pointer never names a page the pool
    /// gave to another table. The root was made at the entry's ADD at the latest, so the
    /// accept takes no page: a TD is never told the pool is short.
    fn dma_accept(&mut self, guest: GuestId, iface: InterfaceId) -> Result<(), TableError> {
        let levels = self.levels();
        let entry = self.dmar.entry(iface.requester_id());
        if entry.is_some_and(|e| e.guest == guest && e.te.present()) {
            return Ok(());
        }
        // Checked before a root is made: a refusal changes nothing.
        if entry.is_none_or(|e| e.guest != guest) {
            return Err(TableError::NoDmaContext);
        }
        // An IOMMU counted in now owes nothing for TRACKs already done (`tdg_dmar_accept.c`
        // @6e66b9d2): it never saw a leaf blocked before them, and a table page it may cache
        // an entry above is freed only after a later TRACK it does owe (`TdEpoch::waiting`).
        // Made at the entry's ADD and kept for the TD's life: none is drift.
        let root = self.tree(guest)?.root().ok_or(TableError::Inconsistent)?;
        let root_phys = self.pool.phys(root);
        let domain = u64::from(guest.slot()).saturating_add(1);
        self.dmar
            .accept(guest, iface, root_phys, crate::dmar::vtd_aw(levels), domain)
    }

    fn dma_block(&mut self, guest: GuestId, iface: InterfaceId) -> Result<(), TableError> {
        self.dmar.block(guest, iface)
    }

    /// The TD is gone (TDH.PHYMEM.PAGE.RECLAIM of its TDR; its vCPUs flushed everything at
    /// TDH.MNG.VPFLUSHDONE): with no PASID entry of its left no walker of its S-EPT remains, so
    /// its root and every page it retired are free at once, and its epoch record starts again
    /// for the next TD in the slot. Refused, nothing changed: an entry left
    /// (`DmaContextExists`), a root still holding entries or chains the pool disagrees with
    /// (`Inconsistent`).
    fn guest_destroyed(&mut self, guest: GuestId) -> Result<(), TableError> {
        if self.dmar.entries().any(|e| e.guest == guest) {
            return Err(TableError::DmaContextExists);
        }
        let slot = usize::from(guest.slot());
        let tree = self.trees.get_mut(slot).ok_or(SeptError::UnknownGuest)?;
        let e = self.epochs.get_mut(slot).ok_or(SeptError::UnknownGuest)?;
        let root = match tree.root() {
            Some(r) => {
                self.pool.check_retire(r).map_err(SeptError::from)?;
                1
            }
            None => 0,
        };
        self.pool
            .check_join(&e.waiting, &tree.retired())
            .map_err(SeptError::from)?;
        let all = e
            .waiting
            .len()
            .saturating_add(tree.retired().len())
            .saturating_add(root);
        self.pool.check_release(all).map_err(SeptError::from)?;
        // Every check passed: the root retires, the chains join and go back in one step.
        tree.retire_root(&mut self.pool).map_err(SeptError::from)?;
        self.pool
            .join(&mut e.waiting, tree.take_retired())
            .map_err(SeptError::from)?;
        self.pool.reclaim(&mut e.waiting).map_err(SeptError::from)?;
        // The test hook holding flushes belongs to the slot, as the core's model keeps it.
        *e = TdEpoch {
            hold: e.hold,
            ..TdEpoch::default()
        };
        self.dmar.forget_guest(guest);
        Ok(())
    }

    /// IQ.INV.REQUEST: complete only at TDH.IQ.INV.PROCESS ([`Sept::iq_process`]).
    fn dma_invalidate(&mut self, guest: GuestId, iface: InterfaceId) -> Result<bool, TableError> {
        self.dmar.invalidate(guest, iface)
    }

    /// REMOVE. The TD's S-EPT root stays, named by its EPTP, until the TD is destroyed
    /// (`guest_destroyed`).
    fn dma_remove(&mut self, guest: GuestId, iface: InterfaceId) -> Result<(), TableError> {
        let rid = iface.requester_id();
        // A removable entry, not while an IOMMU owes the TD's domain its last TRACK's
        // invalidation and the TD has an accepted entry on this one (`prev_iotlb_cnt != 0` and
        // its `pasidte_ref_cnt != 0`: TDX_IOMMU_IOTLB_TRACKING_NOT_DONE, `dmar_pasidte_remove`,
        // `src/common/tdxio/dmar.c` @92f6945d3621731b0db62424afaeef78458226e7): its removal
        // would drop an IOMMU the epoch still counts.
        let removable = self
            .dmar
            .entry(rid)
            .is_some_and(|e| e.guest == guest && e.te.state() == DmaState::Invalidated);
        let counted = self
            .dmar
            .entries()
            .any(|e| e.guest == guest && e.rid.segment() == rid.segment() && e.te.slptptr() != 0);
        if removable && counted && self.dmar.iotlb_owed(guest) {
            return Err(SeptError::IotlbTrackingNotDone.into());
        }
        // Ours: nor while descriptors of the TD's own request the host queued on this IOMMU
        // wait for PROCESS and the entry is the TD's last there (`DmarTable::td_inv_holds`):
        // the host's PROCESS ends the wait. The TD alone never holds it.
        if removable && self.dmar.td_inv_holds(rid) {
            return Err(SeptError::IotlbTrackingNotDone.into());
        }
        self.tree(guest)?;
        self.dmar.remove(guest, iface)
    }

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

    fn track(&mut self, guest: GuestId) -> Result<Completion, TableError> {
        let mut work = RESTAMP_WORK;
        self.track_within(guest, &mut work)
    }

    fn track_within(&mut self, guest: GuestId, work: &mut u32) -> Result<Completion, TableError> {
        match self.mem_track_within(guest, work) {
            Ok(()) => Ok(Completion::Done),
            // Old blocked leaves re-stamped, the epoch not advanced yet: call again.
            Err(SeptError::TrackResumable) => Ok(Completion::Resumable),
            Err(e) => Err(e.into()),
        }
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
        let (_, meta) = self.mt_lookup(hpa, probe.level).ok()?;
        self.leaf_of(hpa, probe.level, meta)
    }

    fn next_leaf(&self, within: MmioRange, from: Hpa) -> Option<Leaf> {
        let start = from.max(within.base()).as_u64();
        let (hpa, level, raw) = self.mmiomt.next_entry(&self.pool, start, within.end())?;
        let leaf = self.leaf_of(hpa, level, MmioMtEntry::from_bits(raw))?;
        within.contains_page(leaf.hpa, leaf.size).then_some(leaf)
    }

    fn check_map(
        &self,
        guest: GuestId,
        gpa: Gpa,
        hpa: Hpa,
        size: PageSize,
    ) -> Result<(), TableError> {
        Ok(self.map_plan(guest, gpa, hpa, size).map(drop)?)
    }

    fn check_block(&self, guest: GuestId, gpa: Gpa, size: PageSize) -> Result<(), TableError> {
        Ok(self.block_plan(guest, gpa, size).map(drop)?)
    }

    fn check_remove(&self, guest: GuestId, gpa: Gpa, size: PageSize) -> Result<(), TableError> {
        Ok(self.unmap_plan(guest, gpa, size).map(drop)?)
    }

    /// One MMIOMT search (every entry read is a unit of `work`), then the run is extended
    /// along the same table page while the entries are leaves of the same guest at the next
    /// guest frames (one unit each). When the page's count says nothing follows the run in
    /// it, the next search starts after the page.
    fn find_leaves(
        &self,
        within: MmioRange,
        from: Hpa,
        rest: Option<PageRest>,
        max: u32,
        work: &mut u32,
    ) -> Found {
        if *work == 0 || max == 0 {
            return Found::Paused { resume: from };
        }
        let start = from.max(within.base()).as_u64();
        // The hint is for the page holding `from`; a search that starts further on cannot use it,
        // nor one after anything was added anywhere in the pool since the hint was made.
        let generation = self.pool.generation();
        let hint = rest
            .filter(|r| start == from.as_u64() && u64::from(r.generation) == generation)
            .map(|r| (r.level, u64::from(r.left)));
        let (base, level, raw, page, slot, rest) =
            match self
                .mmiomt
                .next_entry_bounded(&self.pool, start, within.end(), hint, work)
            {
                Scan::End => return Found::End,
                Scan::Broken { .. } => return Found::Broken,
                Scan::Paused { resume } => {
                    return Found::Paused {
                        resume: Hpa::try_new(resume).unwrap_or(from),
                    };
                }
                Scan::Entry {
                    base,
                    level,
                    raw,
                    page,
                    slot,
                    rest,
                } => (base, level, raw, page, slot, rest),
            };
        let meta = MmioMtEntry::from_bits(raw);
        // The scan found it at or above the start and below the range's end: an entry there
        // that is no leaf of a known guest and size, or a leaf past the end, is not an end.
        let Some(first) = self.leaf_of(base, level, meta) else {
            return Found::Broken;
        };
        if !within.contains_page(first.hpa, first.size) {
            return Found::Broken;
        }
        let span = level_span(level);
        let frames = first.size.base_pages();
        let mut count = 1u32;
        let mut rest = rest;
        while count < max && *work > 0 {
            let Some(at) = slot
                .checked_add(count as usize)
                .filter(|&s| s < ENTRIES_PER_PAGE)
            else {
                break;
            };
            *work = work.saturating_sub(1);
            let m = MmioMtEntry::from_bits(self.pool.entry(page, at));
            let gfn = u64::from(count)
                .checked_mul(frames)
                .and_then(|d| meta.pfn().into_bits().checked_add(d));
            let end = run_page(base, first.size, count).and_then(|h| h.checked_add(span));
            if !m.leaf()
                || m.guest() != meta.guest()
                || Some(m.pfn().into_bits()) != gfn
                || end.is_none_or(|e| e > within.end())
            {
                break;
            }
            count = count.saturating_add(1);
            rest = rest.map(|r| r.saturating_sub(1));
        }
        let after = run_page(base, first.size, count);
        // What the page says of itself only holds inside it: a run to its last slot ends in
        // the next page.
        let inside = slot.saturating_add(count as usize) < ENTRIES_PER_PAGE;
        // A hint carries the generation in 32 bits: past 2^32 additions no hint is made (the
        // searches read their pages to the end), so a stale hint never compares equal.
        let stamp = u32::try_from(generation).ok();
        let rest = rest.filter(|_| inside && stamp.is_some());
        let next = if rest == Some(0) {
            // Nothing more in this table page: skip the rest of its window.
            let window = level_span(level.saturating_add(1));
            (base & !window.wrapping_sub(1)).checked_add(window)
        } else {
            after
        };
        Found::Run {
            first,
            count,
            next: next.and_then(|n| Hpa::try_new(n).ok()),
            rest: rest.map(|left| PageRest {
                level,
                left: u16::try_from(left).unwrap_or(u16::MAX),
                generation: stamp.unwrap_or(u32::MAX),
            }),
        }
    }

    fn map_range(&mut self, guest: GuestId, run: Run) -> Result<(), TableError> {
        self.mmio_map_range(guest, run.gpa, run.hpa, run.size, run.count)
    }

    fn block_range(&mut self, guest: GuestId, run: Run) -> Result<u32, TableError> {
        self.mmio_block_range(guest, run.gpa, run.hpa, run.size, run.count)
    }

    fn remove_range(&mut self, guest: GuestId, run: Run) -> Result<u32, TableError> {
        self.mmio_unmap_range(guest, run.gpa, run.hpa, run.size, run.count)
    }

    fn remove_range_within(
        &mut self,
        guest: GuestId,
        run: Run,
        limit: u32,
    ) -> Result<Option<u32>, TableError> {
        self.mmio_unmap_range_within(guest, run.gpa, run.hpa, run.size, run.count, limit)
    }
}

/// Work a range operation charges for each walk it makes (one per table page of the run, in
/// each tree): a walk reads up to five table pages, one line each (ours, as a search charges).
const WALK_WORK: u32 = MMIOMT_LEVELS as u32;

/// Work with which a search from any point always gets past it: a descent through the five
/// MMIO-metadata levels and one more entry, for the pages after a run and a hint as well.
const SEARCH_PROGRESS_WORK: u32 = MMIOMT_LEVELS as u32 + 2;
// Every unbind call can find and change at least one leaf (it offers half its work to a run).
const _: () = assert!(UNBIND_WORK_PER_CALL / 2 > SEARCH_PROGRESS_WORK);
// The core's bound on one leaf's change covers this table: a leaf's removal empties at most
// every level of a 5-level S-EPT and of the MMIOMT, and a run the search found is walked in at
// most three table pages (one MMIOMT page, two S-EPT pages).
const _: () = assert!(
    SeptLevels::Five as u32 + MMIOMT_LEVELS as u32 <= tsm_core::capacity::MAX_PAGES_FREED_PER_LEAF
);
const _: () = assert!(3 * WALK_WORK <= tsm_core::capacity::MAX_RUN_WALK_WORK);

/// Count changes a range operation makes to table pages that exist, checked before anything
/// is written. A run is walked in address order, so every change to one page arrives in one
/// stretch: one pending page per level, settled when the walk moves to another page there.
/// Growing (map): a count must stay within the page's entries. Shrinking (unmap): a count must
/// not go below zero, and a page it empties must hold no other entry; the page then goes
/// back to the pool and its entry in the page above is freed in turn.
struct Counts {
    grow: bool,
    top: u8,
    /// The tree keeps its root when it empties ([`Radix::keeps_root`]): not counted as freed.
    keep_root: bool,
    free: u64,
    pending: [Option<Pending>; MAX_LEVELS as usize + 1],
    released: usize,
}

#[derive(Clone, Copy)]
struct Pending {
    page: FrameIndex,
    n: u64,
    pages: [Option<FrameIndex>; MAX_LEVELS as usize + 1],
}

impl Counts {
    fn new(grow: bool, top: u8, free: u64, keep_root: bool) -> Self {
        Self {
            grow,
            top,
            keep_root,
            free,
            pending: [None; MAX_LEVELS as usize + 1],
            released: 0,
        }
    }

    /// `n` more (or fewer) entries in use in `page` at `level`, on the walk `pages`.
    fn add(
        &mut self,
        pool: &FramePool<'_>,
        level: u8,
        page: FrameIndex,
        pages: [Option<FrameIndex>; MAX_LEVELS as usize + 1],
        n: u64,
    ) -> Result<(), SeptError> {
        let slot = self
            .pending
            .get_mut(usize::from(level))
            .ok_or(SeptError::Inconsistent)?;
        if let Some(p) = slot.as_mut().filter(|p| p.page == page) {
            p.n = p.n.checked_add(n).ok_or(SeptError::Inconsistent)?;
            return Ok(());
        }
        if let Some(prev) = slot.replace(Pending { page, n, pages }) {
            self.settle(pool, level, prev)?;
        }
        Ok(())
    }

    fn settle(&mut self, pool: &FramePool<'_>, level: u8, p: Pending) -> Result<(), SeptError> {
        const MAX_USED: u64 = ENTRIES_PER_PAGE as u64;
        let used = pool.used(p.page);
        if used > MAX_USED {
            return Err(SeptError::Inconsistent);
        }
        if self.grow {
            return match used.checked_add(p.n) {
                Some(n) if n <= MAX_USED => Ok(()),
                _ => Err(SeptError::Inconsistent),
            };
        }
        let left = used.checked_sub(p.n).ok_or(SeptError::Inconsistent)?;
        if left != 0 {
            return Ok(());
        }
        if pool.in_use(p.page, self.free) != p.n {
            return Err(SeptError::Inconsistent);
        }
        if level >= self.top && self.keep_root {
            return Ok(());
        }
        self.released = self
            .released
            .checked_add(1)
            .ok_or(SeptError::Inconsistent)?;
        if level >= self.top {
            return Ok(());
        }
        let up = level.saturating_add(1);
        let parent = p
            .pages
            .get(usize::from(up))
            .copied()
            .flatten()
            .ok_or(SeptError::Inconsistent)?;
        self.add(pool, up, parent, p.pages, 1)
    }

    /// Settles every pending page, bottom up; the table pages the operation gives back.
    fn finish(mut self, pool: &FramePool<'_>) -> Result<usize, SeptError> {
        for level in 0..=MAX_LEVELS {
            let pending = self
                .pending
                .get_mut(usize::from(level))
                .and_then(Option::take);
            if let Some(p) = pending {
                self.settle(pool, level, p)?;
            }
        }
        Ok(self.released)
    }
}

/// Pages of a run from page `i` (of `count`, at `addr`) that lie in the same level-`level`
/// table page: up to its end.
fn chunk_len(addr: u64, level: u8, i: u32, count: u32) -> u32 {
    let room = ENTRIES_PER_PAGE.saturating_sub(slot_of(addr, level));
    u32::try_from(room)
        .unwrap_or(u32::MAX)
        .min(count.saturating_sub(i))
}

/// The run's pages cut where a table page of either tree ends: `(first page, pages, a new
/// S-EPT table page, a new metadata table page)`, in order.
fn segments(
    gpa: u64,
    hpa: u64,
    size: PageSize,
    level: u8,
    count: u32,
) -> impl Iterator<Item = (u32, u32, bool, bool)> {
    let (mut i, mut s_end, mut m_end) = (0u32, 0u32, 0u32);
    core::iter::from_fn(move || {
        if i >= count {
            return None;
        }
        let s_new = i == s_end;
        if s_new {
            s_end = i.saturating_add(chunk_len(run_page(gpa, size, i)?, level, i, count));
        }
        let m_new = i == m_end;
        if m_new {
            m_end = i.saturating_add(chunk_len(run_page(hpa, size, i)?, level, i, count));
        }
        let end = s_end.min(m_end);
        let seg = (i, end.saturating_sub(i), s_new, m_new);
        i = end;
        (seg.1 > 0).then_some(seg)
    })
}

/// The `len` entries from `addr`'s slot in the table page the walk `found` stopped in, when it
/// stopped at `level` (the run's leaf level).
fn run_entries<'p>(
    pool: &'p FramePool<'_>,
    found: &Lookup,
    level: u8,
    addr: u64,
    len: u32,
) -> Option<&'p [u64]> {
    if found.level != level {
        return None;
    }
    let slot = slot_of(addr, level);
    pool.page(found.page()?)?
        .0
        .get(slot..slot.checked_add(len as usize)?)
}

/// Range operations: one walk per table page of each tree, every page of the run checked
/// before anything is written, one count update per table page written.
impl Sept<'_> {
    /// Counts the tables an install for the new window `found` creates that no earlier page
    /// of the run creates (`last[l]`: the window of the last table counted at level `l`), and
    /// records the one existing page that gains an entry for them.
    fn new_tables<F: EntryFormat>(
        pool: &FramePool<'_>,
        tree: &Radix<F>,
        found: &Lookup,
        level: u8,
        last: &mut [Option<u64>; MAX_LEVELS as usize + 1],
        counts: &mut Counts,
    ) -> Result<usize, SeptError> {
        let (lo, hi) = tree.missing_levels(found, level);
        let mut made = 0usize;
        let mut top_new = None;
        let mut l = lo;
        while l <= hi {
            let window = if l >= tree.levels() {
                0
            } else {
                found
                    .addr()
                    .checked_shr(level_shift(l.saturating_add(1)))
                    .unwrap_or(0)
            };
            let seen = last
                .get_mut(usize::from(l))
                .ok_or(SeptError::Inconsistent)?;
            if *seen != Some(window) {
                *seen = Some(window);
                made = made.saturating_add(1);
                top_new = Some(l);
            }
            l = l.saturating_add(1);
        }
        // The highest new table hangs from an existing page (the walk's stop) when the tree
        // has a root; only the highest of the missing levels can be the new child of it.
        if let (Some(t), true, Some(page)) = (top_new, found.rooted, found.page())
            && t == hi
        {
            counts.add(pool, found.level, page, found.pages, 1)?;
        }
        Ok(made)
    }

    /// Maps the run (see [`SecureTable`]): TDH.MMIO.MAP of every page, all or none.
    pub fn mmio_map_range(
        &mut self,
        guest: GuestId,
        gpa: Gpa,
        hpa: Hpa,
        size: PageSize,
        count: u32,
    ) -> Result<(), TableError> {
        if count == 0 {
            return Ok(());
        }
        let tree = *self.tree(guest)?;
        let level = ept_level(size);
        let per_page = |s: &Self, g: u64, h: u64| -> TableError {
            match (Gpa::try_new(g), Hpa::try_new(h)) {
                (Ok(g), Ok(h)) => match s.map_plan(guest, g, h, size) {
                    Err(e) => e.into(),
                    Ok(_) => TableError::Inconsistent,
                },
                _ => TableError::Misaligned,
            }
        };
        if !gpa.is_aligned(size) || !hpa.is_aligned(size) {
            return Err(per_page(self, gpa.as_u64(), hpa.as_u64()));
        }
        let mut need = 0usize;
        let (mut sf, mut mf): (Option<Lookup>, Option<Lookup>) = (None, None);
        let mut s_last = [None; MAX_LEVELS as usize + 1];
        let mut m_last = [None; MAX_LEVELS as usize + 1];
        let mut s_counts = Counts::new(true, tree.levels(), SeptFormat::FREE, tree.keeps_root());
        let mut m_counts = Counts::new(true, MMIOMT_LEVELS, MtFormat::FREE, false);
        // Once the pool is short the run is refused for it (the per-page order), but the
        // segments after are still counted, so the answer says whether the pages waiting for
        // a flush would cover the whole run; the first other refusal ends the count.
        let mut short = false;
        macro_rules! refuse {
            ($e:expr) => {{
                if short {
                    break;
                }
                return Err($e);
            }};
        }
        // A bookkeeping refusal of a later segment, too (the per-page maps never reach it).
        macro_rules! check {
            ($e:expr) => {
                match $e {
                    Ok(v) => v,
                    Err(e) => refuse!(TableError::from(e)),
                }
            };
        }
        for (i, len, s_new, m_new) in segments(gpa.as_u64(), hpa.as_u64(), size, level, count) {
            let (Some(g), Some(h)) = (
                run_page(gpa.as_u64(), size, i),
                run_page(hpa.as_u64(), size, i),
            ) else {
                refuse!(TableError::Misaligned);
            };
            // One walk per table page of each tree.
            if s_new {
                sf = tree.lookup(&self.pool, g, level).ok();
            }
            if m_new {
                mf = self.mmiomt.lookup(&self.pool, h, level).ok();
            }
            let (Some(sfl), Some(mfl), true) = (sf, mf, Hpa::try_new(h).is_ok()) else {
                refuse!(per_page(self, g, h));
            };
            // The segment's first page, in the per-page order: its two entries, then the
            // tables the maps so far take.
            let se = run_entries(&self.pool, &sfl, level, g, len);
            let me = run_entries(&self.pool, &mfl, level, h, len);
            let free_at = |f: &Lookup, e: Option<&[u64]>, addr: u64, free: u64| match e {
                Some(e) => e.first() == Some(&free),
                None => !f.rooted || f.sibling(&self.pool, addr).raw == free,
            };
            if !free_at(&sfl, se, g, SeptFormat::FREE) || !free_at(&mfl, me, h, MtFormat::FREE) {
                refuse!(per_page(self, g, h));
            }
            if s_new {
                let made = check!(Self::new_tables(
                    &self.pool,
                    &tree,
                    &sfl,
                    level,
                    &mut s_last,
                    &mut s_counts
                ));
                need = check!(need.checked_add(made).ok_or(SeptError::Inconsistent));
            }
            if m_new {
                let made = check!(Self::new_tables(
                    &self.pool,
                    &self.mmiomt,
                    &mfl,
                    level,
                    &mut m_last,
                    &mut m_counts,
                ));
                need = check!(need.checked_add(made).ok_or(SeptError::Inconsistent));
            }
            short |= need > self.pool.free_frames();
            // The rest of the segment: every entry free (where the walk stopped above the
            // leaf level, the pages share the free entry just checked).
            let taken = |e: Option<&[u64]>, free: u64| {
                e.and_then(|e| e.iter().skip(1).position(|&x| x != free))
            };
            let first_taken = match (taken(se, SeptFormat::FREE), taken(me, MtFormat::FREE)) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if let Some(j) = first_taken {
                let k = i.saturating_add(1).saturating_add(j as u32);
                let (Some(g), Some(h)) = (
                    run_page(gpa.as_u64(), size, k),
                    run_page(hpa.as_u64(), size, k),
                ) else {
                    refuse!(TableError::Misaligned);
                };
                refuse!(per_page(self, g, h));
            }
            if let (Some(page), true) = (sfl.page(), se.is_some()) {
                check!(s_counts.add(&self.pool, level, page, sfl.pages, u64::from(len)));
            }
            if let (Some(page), true) = (mfl.page(), me.is_some()) {
                check!(m_counts.add(&self.pool, level, page, mfl.pages, u64::from(len)));
            }
        }
        if short {
            return Err(self.pool_short(guest, PoolError::Empty, need).into());
        }
        s_counts.finish(&self.pool)?;
        m_counts.finish(&self.pool)?;
        self.pool.check_alloc(need).map_err(SeptError::from)?;
        let slot = MtGuest::of(guest).ok_or(SeptError::UnknownGuest)?;
        // Every check passed: the installs below are the ones just proven. In page order, as
        // the per-page maps would make them (each page's metadata first, then its S-EPT
        // entry), so the pool hands out its pages in the same order and the bytes agree.
        let (mut s_next, mut m_next) = (0u32, 0u32);
        for i in 0..count {
            let g = run_page(gpa.as_u64(), size, i).ok_or(SeptError::Inconsistent)?;
            let h = run_page(hpa.as_u64(), size, i).ok_or(SeptError::Inconsistent)?;
            if i == m_next {
                let k = chunk_len(h, level, i, count);
                let found = self
                    .mmiomt
                    .lookup(&self.pool, h, level)
                    .map_err(|_| SeptError::Inconsistent)?;
                self.mmiomt
                    .install_run(&mut self.pool, &found, level, k as usize, |j| {
                        let frame = Pfn::from_bits(
                            (g >> 12).saturating_add((j as u64).saturating_mul(size.base_pages())),
                        );
                        MmioMtEntry::new()
                            .with_leaf(true)
                            .with_guest(slot)
                            .with_pfn(frame)
                            .into_bits()
                    })
                    .map_err(SeptError::from)?;
                m_next = i.saturating_add(k);
            }
            if i == s_next {
                let k = chunk_len(g, level, i, count);
                let t = self
                    .trees
                    .get_mut(usize::from(guest.slot()))
                    .ok_or(SeptError::UnknownGuest)?;
                let found = t
                    .lookup(&self.pool, g, level)
                    .map_err(|_| SeptError::Inconsistent)?;
                t.install_run(&mut self.pool, &found, level, k as usize, |j| {
                    let frame = Pfn::from_bits(
                        (h >> 12).saturating_add((j as u64).saturating_mul(size.base_pages())),
                    );
                    SeptEntry::mmio_leaf(frame, level, SeptState::MmioPending).into_bits()
                })
                .map_err(SeptError::from)?;
                s_next = i.saturating_add(k);
            }
        }
        Ok(())
    }

    /// The error the per-page operation (`plan`, then the host address check) gives page
    /// `g -> h`; `Inconsistent` if it finds none (the fast path and the per-page checks
    /// disagree).
    fn page_error(
        &self,
        guest: GuestId,
        g: u64,
        h: u64,
        plan: impl Fn(&Self, Gpa) -> Result<(), SeptError>,
    ) -> TableError {
        let Ok(gpa) = Gpa::try_new(g) else {
            return TableError::Misaligned;
        };
        if let Err(e) = plan(self, gpa) {
            return e.into();
        }
        match self.leaf(guest, gpa) {
            Some(l) if l.hpa.as_u64() == h => TableError::Inconsistent,
            _ => TableError::NotMapped,
        }
    }

    /// Blocks the run (see [`SecureTable`]): TDH.MMIO.BLOCK of every page, all or none.
    /// Returns its work: one unit per leaf and `WALK_WORK` (5) per walk.
    pub fn mmio_block_range(
        &mut self,
        guest: GuestId,
        gpa: Gpa,
        hpa: Hpa,
        size: PageSize,
        count: u32,
    ) -> Result<u32, TableError> {
        if count == 0 {
            return Ok(0);
        }
        let epoch = self.epoch(guest)?;
        let tree = *self.tree(guest)?;
        let level = ept_level(size);
        let plan = |s: &Self, g: Gpa| s.block_plan(guest, g, size).map(drop);
        if !gpa.is_aligned(size) {
            return Err(self.page_error(guest, gpa.as_u64(), hpa.as_u64(), plan));
        }
        let (mut sf, mut mf) = (None, None);
        let mut blocking = 0u64;
        let frames = size.base_pages();
        for (i, len, s_new, m_new) in segments(gpa.as_u64(), hpa.as_u64(), size, level, count) {
            let (Some(g), Some(h)) = (
                run_page(gpa.as_u64(), size, i),
                run_page(hpa.as_u64(), size, i),
            ) else {
                return Err(TableError::Misaligned);
            };
            // One walk per table page of each tree; the pages of the segment are read from
            // the table page's entries.
            if s_new {
                sf = tree.lookup(&self.pool, g, level).ok();
            }
            if m_new {
                mf = self.mmiomt.lookup(&self.pool, h, level).ok();
            }
            let Some(se) = sf
                .as_ref()
                .and_then(|f| run_entries(&self.pool, f, level, g, len))
            else {
                return Err(self.page_error(guest, g, h, plan));
            };
            let me = mf
                .as_ref()
                .and_then(|f| run_entries(&self.pool, f, level, h, len));
            let mut frame = h >> 12;
            for (j, &raw) in se.iter().enumerate() {
                let e = SeptEntry::from_bits(raw);
                let state = e.state(level);
                if !state.is_mmio_leaf() || e.pfn().into_bits() != frame {
                    let at = |b: u64| b.saturating_add((j as u64).saturating_mul(size.bytes()));
                    return Err(self.page_error(guest, at(g), at(h), plan));
                }
                let newly = blocked_state(state).is_some();
                match me
                    .and_then(|m| m.get(j))
                    .map(|&m| MmioMtEntry::from_bits(m))
                {
                    Some(m) if m.leaf() && m.blocked() != newly && m.guest().guest() == guest => {}
                    _ => return Err(TableError::Inconsistent),
                }
                blocking = blocking.saturating_add(u64::from(newly));
                frame = frame.saturating_add(frames);
            }
        }
        let now = self
            .epochs
            .get(usize::from(guest.slot()))
            .and_then(|e| e.blocked.get(bucket_slot(epoch.current)))
            .copied()
            .ok_or(SeptError::Inconsistent)?;
        let after = now.checked_add(blocking).ok_or(SeptError::Inconsistent)?;
        // Every check passed: rewrites only, no count of any table page changes.
        let bepoch = Bepoch::of(epoch.current);
        let mut walked = 0u32;
        let mut i = 0u32;
        while i < count {
            let g = run_page(gpa.as_u64(), size, i).ok_or(SeptError::Inconsistent)?;
            let k = chunk_len(g, level, i, count);
            let found = tree
                .lookup(&self.pool, g, level)
                .map_err(|_| SeptError::Inconsistent)?;
            tree.rewrite_run(&mut self.pool, &found, k as usize, |_, old| {
                let e = SeptEntry::from_bits(old);
                match blocked_state(e.state(level)) {
                    Some(next) => SeptEntry::mmio_leaf(e.pfn(), level, next).into_bits(),
                    None => old,
                }
            })
            .map_err(SeptError::from)?;
            i = i.saturating_add(k);
            walked = walked.saturating_add(1);
        }
        let mut i = 0u32;
        while i < count {
            let h = run_page(hpa.as_u64(), size, i).ok_or(SeptError::Inconsistent)?;
            let k = chunk_len(h, level, i, count);
            let found = self
                .mmiomt
                .lookup(&self.pool, h, level)
                .map_err(|_| SeptError::Inconsistent)?;
            self.mmiomt
                .rewrite_run(&mut self.pool, &found, k as usize, |_, old| {
                    let m = MmioMtEntry::from_bits(old);
                    if m.blocked() {
                        old
                    } else {
                        m.with_blocked(true).with_bepoch(bepoch).into_bits()
                    }
                })
                .map_err(SeptError::from)?;
            i = i.saturating_add(k);
            walked = walked.saturating_add(1);
        }
        if let Some(n) = self.blocked_count(guest, epoch.current) {
            *n = after;
        }
        Ok(count.saturating_add(walked.saturating_mul(WALK_WORK)))
    }

    /// Removes the run (see [`SecureTable`]): TDH.MMIO.UNMAP of every page, all or none.
    /// Returns its work: one unit per leaf, `WALK_WORK` (5) per walk and
    /// [`UNBIND_WORK_PER_PAGE_FREED`] per table page given back.
    pub fn mmio_unmap_range(
        &mut self,
        guest: GuestId,
        gpa: Gpa,
        hpa: Hpa,
        size: PageSize,
        count: u32,
    ) -> Result<u32, TableError> {
        // No limit: the run is always removed when it may be.
        self.mmio_unmap_range_within(guest, gpa, hpa, size, count, u32::MAX)
            .map(|w| w.unwrap_or(0))
    }

    /// [`Sept::mmio_unmap_range`] when the work it returns is at most `limit`, known before
    /// anything is written (the check phase counts the walks and the table pages the run
    /// empties); `Ok(None)`, nothing changed, when it is more.
    pub fn mmio_unmap_range_within(
        &mut self,
        guest: GuestId,
        gpa: Gpa,
        hpa: Hpa,
        size: PageSize,
        count: u32,
        limit: u32,
    ) -> Result<Option<u32>, TableError> {
        if count == 0 {
            return Ok(Some(0));
        }
        let epoch = self.epoch(guest)?;
        let tree = *self.tree(guest)?;
        let level = ept_level(size);
        let plan = |s: &Self, g: Gpa| s.unmap_plan(guest, g, size).map(drop);
        if !gpa.is_aligned(size) {
            return Err(self.page_error(guest, gpa.as_u64(), hpa.as_u64(), plan));
        }
        let (mut sf, mut mf) = (None, None);
        let mut s_counts = Counts::new(false, tree.levels(), SeptFormat::FREE, tree.keeps_root());
        let mut m_counts = Counts::new(false, MMIOMT_LEVELS, MtFormat::FREE, false);
        let mut unblocked = [0u64; EPOCH_BUCKETS as usize];
        // The clears below: one walk per table page of the run, in each tree.
        let mut walks = 0u32;
        let frames = size.base_pages();
        for (i, len, s_new, m_new) in segments(gpa.as_u64(), hpa.as_u64(), size, level, count) {
            let (Some(g), Some(h)) = (
                run_page(gpa.as_u64(), size, i),
                run_page(hpa.as_u64(), size, i),
            ) else {
                return Err(TableError::Misaligned);
            };
            if s_new {
                sf = tree.lookup(&self.pool, g, level).ok();
                walks = walks.saturating_add(1);
            }
            if m_new {
                mf = self.mmiomt.lookup(&self.pool, h, level).ok();
                walks = walks.saturating_add(1);
            }
            let se = sf
                .as_ref()
                .and_then(|f| run_entries(&self.pool, f, level, g, len));
            let me = mf
                .as_ref()
                .and_then(|f| run_entries(&self.pool, f, level, h, len));
            let (Some(se), Some(me), Some(sf), Some(mf)) = (se, me, sf.as_ref(), mf.as_ref())
            else {
                return Err(self.page_error(guest, g, h, plan));
            };
            let mut frame = h >> 12;
            for (j, (&raw, &meta)) in se.iter().zip(me).enumerate() {
                let e = SeptEntry::from_bits(raw);
                let state = e.state(level);
                let m = MmioMtEntry::from_bits(meta);
                let blocked_at = Self::blocked_epoch(epoch, m.bepoch());
                if !state.is_mmio_leaf()
                    || !state.is_blocked()
                    || e.pfn().into_bits() != frame
                    || !m.leaf()
                    || !m.blocked()
                    || m.guest().guest() != guest
                    || blocked_at >= epoch.flushed
                    || blocked_at >= epoch.iotlb_flushed
                {
                    let at = |b: u64| b.saturating_add((j as u64).saturating_mul(size.bytes()));
                    return Err(self.page_error(guest, at(g), at(h), plan));
                }
                let n = unblocked
                    .get_mut(bucket_slot(blocked_at))
                    .ok_or(SeptError::Inconsistent)?;
                *n = n.saturating_add(1);
                frame = frame.saturating_add(frames);
            }
            let (Some(sp), Some(mp)) = (sf.page(), mf.page()) else {
                return Err(TableError::Inconsistent);
            };
            s_counts.add(&self.pool, level, sp, sf.pages, u64::from(len))?;
            m_counts.add(&self.pool, level, mp, mf.pages, u64::from(len))?;
        }
        let released = s_counts
            .finish(&self.pool)?
            .checked_add(m_counts.finish(&self.pool)?)
            .ok_or(SeptError::Inconsistent)?;
        self.pool.check_release(released).map_err(SeptError::from)?;
        let td = self
            .epochs
            .get(usize::from(guest.slot()))
            .ok_or(SeptError::UnknownGuest)?;
        let mut blocked = td.blocked;
        for (b, n) in blocked.iter_mut().zip(unblocked) {
            *b = b.checked_sub(n).ok_or(SeptError::Inconsistent)?;
        }
        let cost = removal_work(count, walks, released);
        if cost > limit {
            return Ok(None);
        }
        // Every check passed: the clears below are the ones just proven. Each table page's
        // run is cleared at its last page, in page order (S-EPT first, then the metadata, as
        // the per-page unmaps do), so emptied pages leave the trees in the same order (retired
        // or back to the pool).
        let (mut s_start, mut m_start) = (0u32, 0u32);
        let mut walked = 0u32;
        for i in 0..count {
            let g = run_page(gpa.as_u64(), size, s_start).ok_or(SeptError::Inconsistent)?;
            let k = chunk_len(g, level, s_start, count);
            if i.saturating_add(1) == s_start.saturating_add(k) {
                let t = self
                    .trees
                    .get_mut(usize::from(guest.slot()))
                    .ok_or(SeptError::UnknownGuest)?;
                let found = t
                    .lookup(&self.pool, g, level)
                    .map_err(|_| SeptError::Inconsistent)?;
                t.clear_run(&mut self.pool, &found, k as usize)
                    .map_err(SeptError::from)?;
                walked = walked.saturating_add(1);
                s_start = s_start.saturating_add(k);
            }
            let h = run_page(hpa.as_u64(), size, m_start).ok_or(SeptError::Inconsistent)?;
            let k = chunk_len(h, level, m_start, count);
            if i.saturating_add(1) == m_start.saturating_add(k) {
                let found = self
                    .mmiomt
                    .lookup(&self.pool, h, level)
                    .map_err(|_| SeptError::Inconsistent)?;
                self.mmiomt
                    .clear_run(&mut self.pool, &found, k as usize)
                    .map_err(SeptError::from)?;
                walked = walked.saturating_add(1);
                m_start = m_start.saturating_add(k);
            }
        }
        if let Some(td) = self.epochs.get_mut(usize::from(guest.slot())) {
            td.blocked = blocked;
        }
        // What was done, as predicted (the walks and pages just proven).
        Ok(Some(removal_work(count, walked, released)))
    }
}

/// The work of removing `count` leaves in `walks` table walks that give `released` table
/// pages back (see [`SecureTable::remove_range`]).
fn removal_work(count: u32, walks: u32, released: usize) -> u32 {
    let freed = u32::try_from(released)
        .unwrap_or(u32::MAX)
        .saturating_mul(UNBIND_WORK_PER_PAGE_FREED);
    count
        .saturating_add(freed)
        .saturating_add(walks.saturating_mul(WALK_WORK))
}

/// Sizing the pool: how many table pages a [`Sept`] takes for the leaves a platform means to
/// map, so a firmware image can reserve its pool ([`FramePool::pages_for`] adds the pool's
/// count pages). Table pages are taken only by maps (each TD's S-EPT root at its first map)
/// and given back when a table empties (an S-EPT page below the root after the TD's next
/// TRACK is flushed, the root when the TD is gone: a host that re-maps after an unbind with no
/// TRACK of the TD in between needs the removed leaves' S-EPT tables on top, per TD, or is
/// told `PoolAwaitsFlush` when they are all it lacks); nothing else uses the pool. `const`, so a static pool
/// can be sized at build time (`examples/static_firmware.rs`).
impl Sept<'_> {
    /// Table pages an empty table of `levels` takes to map, in one TD, `count` leaves of
    /// `size` at guest addresses `gpa`, `gpa + size`, ... and host addresses `hpa`,
    /// `hpa + size`, ...: in the TD's S-EPT and in the MMIO metadata table, the root and, at
    /// every level down to the leaves', one table per table-sized window the run touches.
    /// Exact: a pool of that many table pages maps the run, one fewer refuses a map of it
    /// (`SeptError::PoolEmpty`, the core's `SecureTableFull`). `None` for a misaligned run or
    /// one the tables cannot hold (a GPA at or past 2^48 with four levels, 2^52 with five; an
    /// HPA at or past 2^52).
    pub const fn table_pages_for_run(
        levels: SeptLevels,
        gpa: u64,
        hpa: u64,
        count: u64,
        size: PageSize,
    ) -> Option<usize> {
        let Some(last) = count.checked_sub(1) else {
            return Some(0);
        };
        let Some(span) = last.checked_mul(size.bytes()) else {
            return None;
        };
        let (Some(gpa_last), Some(hpa_last)) = (gpa.checked_add(span), hpa.checked_add(span))
        else {
            return None;
        };
        let leaf = ept_level(size);
        let sept = run_tables(levels as u8, gpa, gpa_last, size, leaf);
        let mt = run_tables(MMIOMT_LEVELS, hpa, hpa_last, size, leaf);
        match (sept, mt) {
            (Some(a), Some(b)) => match a.checked_add(b) {
                Some(n) if n <= usize::MAX as u64 => Some(n as usize),
                _ => None,
            },
            _ => None,
        }
    }

    /// Table pages `leaves` leaves of `size` take at most in a table of `levels`, spread over
    /// at most `tds` TDs and mapped anywhere: the S-EPT roots of the TDs that map (at most
    /// `tds`, at most one per leaf) and the MMIOMT root, and below them, at every level, one
    /// table per leaf, up to the number of table-sized windows the address space has at that
    /// level (per TD in the S-EPTs). Leaves that share tables take fewer. `None` on overflow.
    pub const fn table_pages_worst_case(
        levels: SeptLevels,
        tds: usize,
        leaves: usize,
        size: PageSize,
    ) -> Option<usize> {
        if leaves == 0 || tds == 0 {
            return Some(0);
        }
        let trees = if tds < leaves { tds } else { leaves };
        let leaf = ept_level(size);
        match (
            worst_tables(levels as u8, trees, leaves, leaf),
            worst_tables(MMIOMT_LEVELS, 1, leaves, leaf),
        ) {
            (Some(a), Some(b)) => a.checked_add(b),
            _ => None,
        }
    }

    /// Pool pages (what [`FramePool::new`] is handed) for `leaves` leaves of `size` in at most
    /// `tds` TDs, mapped anywhere: [`Sept::table_pages_worst_case`] table pages and their count
    /// pages. One mapped 4 KiB page with four levels: 10 (4 S-EPT pages, 5 MMIOMT pages, one
    /// count page); with 9 the map is refused with `SecureTableFull`.
    pub const fn pool_pages_needed(
        levels: SeptLevels,
        tds: usize,
        leaves: usize,
        size: PageSize,
    ) -> Option<usize> {
        match Self::table_pages_worst_case(levels, tds, leaves, size) {
            Some(tables) => FramePool::pages_for(tables),
            None => None,
        }
    }
}

/// Tables of a `top`-level tree that leaves of `size` at level `leaf`, from `first` to `last`
/// (both leaf addresses), take when the tree is empty. `None`: misaligned or out of reach.
const fn run_tables(top: u8, first: u64, last: u64, size: PageSize, leaf: u8) -> Option<u64> {
    let reach = Radix::<SeptFormat>::new(top).limit();
    if first & size.bytes().wrapping_sub(1) != 0 || last >= reach || last < first {
        return None;
    }
    // The root, then the tables at each level below it: a level-k table covers one entry of
    // level k + 1, so the run touches (last >> shift) - (first >> shift) + 1 of them. Below
    // `reach` < 2^52 every count is far from overflowing.
    let mut tables = 1u64;
    let mut k = leaf;
    while k < top {
        let shift = crate::radix::level_shift(k.saturating_add(1));
        let windows = (last >> shift)
            .saturating_sub(first >> shift)
            .saturating_add(1);
        tables = tables.saturating_add(windows);
        k = k.saturating_add(1);
    }
    Some(tables)
}

/// Most tables `leaves` leaves at level `leaf` take in `trees` trees of `top` levels: the
/// roots, then per level one table per leaf, capped by the windows the trees' reach has.
const fn worst_tables(top: u8, trees: usize, leaves: usize, leaf: u8) -> Option<usize> {
    let reach = Radix::<SeptFormat>::new(top).limit();
    let mut tables = trees;
    let mut k = leaf;
    while k < top {
        let shift = crate::radix::level_shift(k.saturating_add(1));
        let windows = reach >> shift;
        let windows = if windows > usize::MAX as u64 {
            usize::MAX
        } else {
            windows as usize
        };
        let cap = windows.saturating_mul(trees);
        let Some(sum) = tables.checked_add(if leaves < cap { leaves } else { cap }) else {
            return None;
        };
        tables = sum;
        k = k.saturating_add(1);
    }
    Some(tables)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::{FrameIndex, Page};

    const G: GuestId = GuestId::from_slot(0);
    const H: GuestId = GuestId::from_slot(1);
    const PHYS: u64 = 0x1_0000_0000;

    fn gpa(v: u64) -> Gpa {
        Gpa::try_new(v).unwrap()
    }
    fn hpa(v: u64) -> Hpa {
        Hpa::try_new(v).unwrap()
    }

    /// Every byte of the table memory plus the pool's free count.
    fn image(s: &Sept<'_>) -> (Vec<Page>, usize) {
        (s.pool().pages().copied().collect(), s.pool().free_frames())
    }

    fn sept(mem: &mut [Page], levels: SeptLevels) -> Sept<'_> {
        Sept::new(FramePool::new(mem, PHYS).unwrap(), levels)
    }

    /// A 4-level walk over tables laid out by hand, entry by entry, as the CPU would read them.
    #[test]
    fn walker_reads_hand_built_tables() {
        let mut mem = vec![Page::ZERO; 9];
        let mut pool = FramePool::new(&mut mem, PHYS).unwrap();
        let [pml4, pdpt, pd, pt] = [0; 4].map(|_| pool.alloc(SeptFormat::FREE).unwrap());
        // GPA 0x4020_3000: PML4 slot 0, PDPT slot 1, PD slot 1, PT slot 3.
        let g = 0x4020_3000u64;
        pool.set_entry(pml4, 0, SeptEntry::table(pool.pfn(pdpt)).into_bits());
        pool.set_entry(pdpt, 1, SeptEntry::table(pool.pfn(pd)).into_bits());
        pool.set_entry(pd, 1, SeptEntry::table(pool.pfn(pt)).into_bits());
        let leaf = SeptEntry::mmio_leaf(
            Pfn::from_phys(0xfe00_3000).unwrap(),
            1,
            SeptState::MmioMapped,
        );
        pool.set_entry(pt, 3, leaf.into_bits());
        // A 2 MiB leaf at PD slot 2 (GPA 0x4040_0000).
        let big = SeptEntry::mmio_leaf(
            Pfn::from_phys(0xfe40_0000).unwrap(),
            2,
            SeptState::MmioBlocked,
        );
        pool.set_entry(pd, 2, big.into_bits());
        assert_eq!(pool.entry(pml4, 0), PHYS + 0x1000 + 0x7);

        let tree: Radix<SeptFormat> = Radix::with_root(pml4, 4);
        let l = tree.lookup(&pool, g, 1).unwrap();
        assert_eq!((l.level, l.raw), (1, leaf.into_bits()));
        assert_eq!(SeptEntry::from_bits(l.raw).state(1), SeptState::MmioMapped);
        assert_eq!(
            (l.pages[4], l.pages[3], l.pages[2], l.pages[1]),
            (Some(pml4), Some(pdpt), Some(pd), Some(pt))
        );
        // Through the 2 MiB leaf: the walk stops at level 2.
        let l = tree.lookup(&pool, 0x4045_6000, 1).unwrap();
        assert_eq!((l.level, l.raw), (2, big.into_bits()));
        // A free PT entry: stops at level 1 on FREE; a free PDPT entry: stops at level 3.
        let l = tree.lookup(&pool, 0x4020_4000, 1).unwrap();
        assert_eq!((l.level, l.raw), (1, SeptFormat::FREE));
        let l = tree.lookup(&pool, 0x8000_0000, 1).unwrap();
        assert_eq!((l.level, l.raw), (3, SeptFormat::FREE));
        // Next leaf by address skips free slots and descends.
        assert_eq!(
            tree.next_entry(&pool, 0, u64::MAX),
            Some((g, 1, leaf.into_bits()))
        );
        assert_eq!(
            tree.next_entry(&pool, g + 1, u64::MAX),
            Some((0x4040_0000, 2, big.into_bits()))
        );
    }

    fn iface(bus: u8) -> InterfaceId {
        iface_on(0, bus)
    }

    /// The interface of requester `bus`:0.0 on the IOMMU of `segment`.
    fn iface_on(segment: u16, bus: u8) -> InterfaceId {
        let rid = tsm_core::RequesterId::try_new(segment, bus, 0, 0).unwrap();
        tsm_core::DeviceFunctions::physical(rid)
            .interface(rid)
            .unwrap()
    }

    /// Review-dma finding 1 at the table: a TD whose PASID entry names its S-EPT (X's,
    /// accepted) has every TRACK owe an IOTLB invalidation of its domain; until it is requested
    /// and processed, a leaf blocked before that TRACK (Y's) is not removed and the table page
    /// above it not freed, and the next TRACK is refused, each refusal changing nothing. Another
    /// TD without trusted DMA tracks and removes as before.
    #[test]
    fn a_td_with_trusted_dma_frees_nothing_before_its_domains_iotlb_invalidation() {
        let mut mem = vec![Page::ZERO; 24];
        let mut s = sept(&mut mem, SeptLevels::Four);
        let size = PageSize::Size2M;
        // Y in another GiB than X: its PD page empties when Y goes.
        let (x, y, y_host) = (gpa(0x10_0000_0000), gpa(0x10_4000_0000), hpa(0x9000_0000));
        s.map(G, x, hpa(0x8000_0000), size).unwrap();
        s.map(G, y, y_host, size).unwrap();
        // X's entry, and W's on the same IOMMU, accepted: both name G's S-EPT.
        for w in [iface(3), iface(4)] {
            s.dma_create(G, w).unwrap();
            s.dma_accept(G, w).unwrap();
        }
        s.block(G, y, size).unwrap();
        let free = s.pool().free_frames();
        let mut work = UNBIND_WORK_PER_CALL;
        assert_eq!(s.track_within(G, &mut work), Ok(Completion::Done));
        assert!(s.dmar().iotlb_owed(G), "X's IOMMU owes G's domain");
        // W torn down to its own invalidation's end; Z, never accepted, on another IOMMU.
        let z = iface_on(1, 5);
        s.dma_create(G, z).unwrap();
        for e in [iface(4), z] {
            s.dma_block(G, e).unwrap();
            assert_eq!(s.dma_invalidate(G, e), Ok(false));
        }
        assert_eq!((s.iq_process(0), s.iq_process(1)), (1, 1));
        assert!(
            s.dmar().iotlb_owed(G),
            "the entries' own invalidations do not count"
        );
        // Z's IOMMU holds no accepted entry of G: the epoch does not count it.
        assert_eq!(s.dma_remove(G, z), Ok(()));
        let run = Run::new(y, y_host, size, 1);
        let owed = (image(&s), s.bookkeeping());
        assert_eq!(
            s.dma_remove(G, iface(4)),
            Err(TableError::IotlbNotTracked),
            "W's IOMMU is counted"
        );
        assert_eq!(
            s.remove_range_within(G, run, UNBIND_WORK_PER_CALL),
            Err(TableError::IotlbNotTracked)
        );
        assert_eq!(s.remove(G, y, size), Err(TableError::IotlbNotTracked));
        assert_eq!(s.check_remove(G, y, size), Err(TableError::IotlbNotTracked));
        assert_eq!(s.track(G), Err(TableError::IotlbNotTracked));
        assert_eq!(
            s.request_iotlb(G, 1),
            Err(SeptError::IotlbTrackingNotRequired),
            "another IOMMU owes nothing"
        );
        assert_eq!(
            s.request_iotlb(H, 0),
            Err(SeptError::IotlbTrackingNotRequired),
            "another TD owes nothing"
        );
        assert_eq!(s.iq_process(0), 0, "nothing requested yet");
        assert!(
            (image(&s), s.bookkeeping()) == owed,
            "a refusal changed something"
        );
        s.request_iotlb(G, 0).unwrap();
        let queued = (image(&s), s.bookkeeping());
        assert_eq!(s.request_iotlb(G, 0), Err(SeptError::IotlbTrackingNotDone));
        assert_eq!(s.remove(G, y, size), Err(TableError::IotlbNotTracked));
        assert_eq!(s.track(G), Err(TableError::IotlbNotTracked));
        assert_eq!(s.iq_process(1), 0, "another IOMMU's queue");
        assert!(
            (image(&s), s.bookkeeping()) == queued,
            "a refusal changed something"
        );
        assert_eq!(s.pool().free_frames(), free);
        assert_eq!(s.iq_process(0), 2, "X's and W's marks");
        assert!(!s.dmar().iotlb_owed(G));
        assert_eq!(s.dma_remove(G, iface(4)), Ok(()));
        assert!(matches!(
            s.remove_range_within(G, run, UNBIND_WORK_PER_CALL),
            Ok(Some(_))
        ));
        // Y's PD page waits: X's IOMMU may cache the PDPT entry that named it.
        assert_eq!(s.retired_pages(G), 1);
        // X's entry still names the S-EPT: the next TRACK owes again, and the page is free
        // only once that invalidation is done.
        assert_eq!(s.track(G), Ok(Completion::Done));
        assert!(s.dmar().iotlb_owed(G));
        assert_eq!(s.retired_pages(G), 1);
        let waiting = s.pool().free_frames();
        s.request_iotlb(G, 0).unwrap();
        assert_eq!(s.iq_process(0), 1);
        assert_eq!(s.retired_pages(G), 0);
        assert_eq!(s.pool().free_frames(), waiting + 1, "Y's PD page went back");
        assert!(s.pool().free_frames() > free);
        assert_eq!(s.track(G), Ok(Completion::Done));
        assert!(s.dmar().iotlb_owed(G));
        // H has no PASID entry: block, track, remove, as without trusted DMA.
        let h = gpa(0x20_0000_0000);
        s.map(H, h, hpa(0xa000_0000), size).unwrap();
        s.block(H, h, size).unwrap();
        assert_eq!(s.track(H), Ok(Completion::Done));
        assert_eq!(s.remove(H, h, size), Ok(hpa(0xa000_0000)));
        assert_eq!(s.track(H), Ok(Completion::Done));
    }

    /// Review s21 H1 and s21b M1b: an IOMMU counted in after a TRACK owes nothing for it (as
    /// in the module), and never saw the leaf blocked before it, but may have cached the table
    /// entries above it. The leaf goes by the module's rule; the table page its removal empties
    /// waits, out of the tree, until a TRACK after the removal and that TRACK's domain
    /// invalidation are done, so no IOMMU or vCPU can still walk into it when another table
    /// gets it. Meanwhile G's map that needs that page is refused `FramesAwaitFlush` (the
    /// pool is short for it only by its own pages that wait), even after G's TRACK until the
    /// invalidation is processed, and succeeds once the page is back; H's is `OutOfFrames`.
    #[test]
    fn a_page_emptied_under_an_iommu_waits_for_the_next_track_and_its_invalidation() {
        let mut mem = vec![Page::ZERO; 24];
        let mut s = sept(&mut mem, SeptLevels::Four);
        let size = PageSize::Size2M;
        let (x, y, y_host) = (gpa(0x10_0000_0000), gpa(0x10_4000_0000), hpa(0x9000_0000));
        s.map(G, x, hpa(0x8000_0000), size).unwrap();
        s.map(G, y, y_host, size).unwrap();
        s.block(G, y, size).unwrap();
        assert_eq!(s.track(G), Ok(Completion::Done), "no entry: nothing owed");
        s.dma_create(G, iface(3)).unwrap();
        assert_eq!(s.dma_accept(G, iface(3)), Ok(()));
        assert!(!s.dmar().iotlb_owed(G), "the accept owes nothing");
        assert_eq!(s.remove(G, y, size), Ok(y_host));
        assert_eq!(s.retired_pages(G), 1, "Y's PD page");
        // Take every free page: H's map needs pages the pool does not have, Y's PD page
        // included, and the refusal changes nothing.
        let mut taken = 0u64;
        while s.pool().free_frames() > 0 {
            let at = 0x30_0000_0000 + taken * 0x40_0000_0000;
            if s.map(H, gpa(at), hpa(0xa000_0000 + taken * 0x20_0000), size)
                .is_err()
            {
                break;
            }
            taken += 1;
        }
        let full = (image(&s), s.bookkeeping());
        let next = gpa(0x30_0000_0000 + taken * 0x40_0000_0000);
        let host = hpa(0xa000_0000 + taken * 0x20_0000);
        // G's next 1 GiB window needs one PD page: Y's would do.
        let g_next = gpa(0x10_8000_0000);
        let awaits = Err(TableError::FramesAwaitFlush);
        assert_eq!(s.map(H, next, host, size), Err(TableError::OutOfFrames));
        assert_eq!(s.map(G, g_next, host, size), awaits);
        assert!(
            (image(&s), s.bookkeeping()) == full,
            "a refusal changed something"
        );
        // G's TRACK: X's IOMMU owes it; until its invalidation is done the page waits.
        assert_eq!(s.track(G), Ok(Completion::Done));
        assert!(s.dmar().iotlb_owed(G));
        assert_eq!(s.retired_pages(G), 1);
        assert_eq!(
            s.map(G, g_next, host, size),
            awaits,
            "tracked, not invalidated"
        );
        let free = s.pool().free_frames();
        s.request_iotlb(G, 0).unwrap();
        assert_eq!(s.retired_pages(G), 1, "requested, not done");
        assert_eq!(s.iq_process(0), 1);
        assert_eq!(s.retired_pages(G), 0);
        assert_eq!(s.pool().free_frames(), free + 1, "Y's PD page is free");
        assert_eq!(s.awaiting_flush(G), 0);
        assert_eq!(
            s.map(G, g_next, host, size),
            Ok(()),
            "the page it waited for"
        );
        // Without a blocked leaf an accept owes nothing either.
        s.dma_create(G, iface(4)).unwrap();
        assert_eq!(s.dma_accept(G, iface(4)), Ok(()));
        assert!(!s.dmar().iotlb_owed(G));
        s.audit_pages().unwrap();
    }

    /// G maps X and Y (2 MiB, in two GiB windows), then blocks, tracks and removes Y: Y's PD
    /// page is retired, waiting for G's next TRACK.
    fn retire_ys_pd_page(s: &mut Sept<'_>) {
        let size = PageSize::Size2M;
        let (y, y_host) = (gpa(0x10_4000_0000), hpa(0x9000_0000));
        s.map(G, gpa(0x10_0000_0000), hpa(0x8000_0000), size)
            .unwrap();
        s.map(G, y, y_host, size).unwrap();
        s.block(G, y, size).unwrap();
        assert_eq!(s.track(G), Ok(Completion::Done));
        assert_eq!(s.remove(G, y, size), Ok(y_host));
        assert_eq!(s.retired_pages(G), 1);
    }

    /// Review s22 F1 (and s23 F1, F2): a pool short for a TD only by the pages that TD's own
    /// unbind emptied answers `FramesAwaitFlush` (the host TRACKs that TD), one short beyond
    /// them `OutOfFrames` (a sizing matter), for a map, a run and the check, each refusal
    /// changing nothing; another TD's waiting pages are no promise to it (that TD may be past
    /// tracking). The root a context needs is made at TDH.DMAR.ADD, so the host meets the
    /// pool there and a TD's accept never does. After G's TRACK is flushed its map succeeds.
    #[test]
    fn a_pool_short_only_by_waiting_pages_says_so() {
        let mut mem = vec![Page::ZERO; 24];
        let mut s = sept(&mut mem, SeptLevels::Four);
        retire_ys_pd_page(&mut s);
        s.hold_flush(G, true);
        assert_eq!(s.track(G), Ok(Completion::Done));
        assert_eq!((s.awaiting_flush(G), s.awaiting_flush(H)), (1, 0));
        // G maps one 2 MiB leaf per 1 GiB window until the pool is dry: each takes one PD
        // page (its PDPT and the MMIOMT's tables for the contiguous hosts exist by then).
        let size = PageSize::Size2M;
        let window = |i: u64| gpa(0x20_0000_0000 + (i << 30));
        let host = |i: u64| hpa(0xa000_0000 + i * size.bytes());
        let mut i = 0;
        while s.pool().free_frames() > 0 {
            s.map(G, window(i), host(i), size).unwrap();
            i += 1;
        }
        // The next window needs one page, which the waiting page covers; a run across two
        // windows needs two, and 513 4 KiB pages a PD and two PTs: the pool is short then.
        let before = (image(&s), s.bookkeeping());
        let unchanged = |s: &Sept<'_>| (image(s), s.bookkeeping()) == before;
        let awaits = Err(TableError::FramesAwaitFlush);
        let short = Err(TableError::OutOfFrames);
        assert_eq!(s.check_map(G, window(i), host(i), size), awaits);
        assert_eq!(s.map(G, window(i), host(i), size), awaits);
        assert!(unchanged(&s));
        let run = |g: Gpa, size: PageSize, count: u32| Run {
            gpa: g,
            hpa: host(i),
            size,
            count,
        };
        assert_eq!(s.map_range(G, run(window(i), size, 2)), awaits);
        let across = gpa(window(i + 1).as_u64() - size.bytes());
        assert_eq!(s.map_range(G, run(across, size, 2)), short);
        assert_eq!(s.map_range(G, run(window(i), PageSize::Size4K, 513)), short);
        // H's map, and a rootless TD's first DMAR.ADD, get nothing from G's page.
        assert_eq!(s.map(H, gpa(0x20_0000_0000), host(i), size), short);
        let k = GuestId::from_slot(2);
        assert_eq!(s.dma_create(k, iface(5)), short);
        assert!(unchanged(&s));
        assert_eq!(
            tsm_core::Error::from(TableError::FramesAwaitFlush),
            tsm_core::Error::SecureTableFlushPending
        );
        // G has its root: its ADD and accept take no page from the dry pool.
        assert_eq!(s.dma_create(G, iface(5)), Ok(()));
        assert_eq!(s.dma_accept(G, iface(5)), Ok(()));
        assert_eq!(s.pool().free_frames(), 0);
        // G's vCPUs flush: the page is back and the map it waited for succeeds.
        s.hold_flush(G, false);
        assert_eq!(s.awaiting_flush(G), 0);
        assert_eq!(s.map(G, window(i), host(i), size), Ok(()));
        assert_eq!(s.pool().free_frames(), 0);
        s.audit_pages().unwrap();
    }

    /// A TD's first TDH.DMAR.ADD makes its S-EPT root, one page; an ADD the entry table
    /// refuses makes none, and one the pool has no page for is the host's `OutOfFrames`:
    /// nothing changed either way.
    #[test]
    fn the_first_add_makes_the_root_and_a_refused_one_gives_it_back() {
        let mut mem = vec![Page::ZERO; 4];
        let mut s = sept(&mut mem, SeptLevels::Four);
        let free = s.pool().free_frames();
        assert_eq!(s.dma_create(G, iface(1)), Ok(()));
        assert_eq!(s.pool().free_frames(), free - 1);
        assert!(s.root_phys(G).is_some());
        let before = (image(&s), s.bookkeeping());
        assert_eq!(s.dma_create(H, iface(1)), Err(TableError::DmaContextExists));
        assert!((image(&s), s.bookkeeping()) == before);
        assert_eq!(s.root_phys(H), None);
        while s.pool().free_frames() > 0 {
            s.pool.alloc(SeptFormat::FREE).unwrap();
        }
        let before = (image(&s), s.bookkeeping());
        assert_eq!(s.dma_create(H, iface(2)), Err(TableError::OutOfFrames));
        assert!((image(&s), s.bookkeeping()) == before);
        // G has its root: a second ADD needs no page.
        assert_eq!(s.dma_create(G, iface(2)), Ok(()));
    }

    /// Review s22 F7: a waiting chain the pool refuses (its free count drifted) is kept whole
    /// and out of the pool (logged), never half-freed; put right, the next settle frees it.
    #[test]
    fn a_waiting_chain_the_pool_refuses_stays_out_whole() {
        let mut mem = vec![Page::ZERO; 24];
        let mut s = sept(&mut mem, SeptLevels::Four);
        retire_ys_pd_page(&mut s);
        s.hold_flush(G, true);
        assert_eq!(s.track(G), Ok(Completion::Done));
        assert_eq!(s.retired_pages(G), 1);
        // The free count drifts to "every page free": the chain cannot go back.
        let free = s.pool().free_frames();
        let total = s.pool().total_frames();
        s.pool.force_free_count(total);
        s.hold_flush(G, false);
        assert_eq!(s.retired_pages(G), 1, "kept out of the pool");
        assert_eq!(
            s.pool().free_frames(),
            total,
            "nothing added to the drifted count"
        );
        s.pool.force_free_count(free);
        s.audit_pages().unwrap();
        // Put right, the next settle frees it.
        assert_eq!(s.track(G), Ok(Completion::Done));
        assert_eq!(s.retired_pages(G), 0);
        assert_eq!(s.pool().free_frames(), free + 1);
        s.audit_pages().unwrap();
    }

    /// Without trusted DMA a page emptied by a removal waits for the TD's next TRACK and its
    /// vCPUs' flush: held flushes keep it out of the pool, released ones free it, and a TD's
    /// pages never wait on another TD's TRACK.
    #[test]
    fn a_page_emptied_by_a_removal_waits_for_the_vcpus_flush_of_the_next_track() {
        let mut mem = vec![Page::ZERO; 24];
        let mut s = sept(&mut mem, SeptLevels::Four);
        s.map(H, gpa(0x20_0000_0000), hpa(0xa000_0000), PageSize::Size2M)
            .unwrap();
        retire_ys_pd_page(&mut s);
        let free = s.pool().free_frames();
        assert_eq!(s.track(H), Ok(Completion::Done));
        assert_eq!(s.retired_pages(G), 1, "H's TRACK is not G's");
        s.hold_flush(G, true);
        assert_eq!(s.track(G), Ok(Completion::Done));
        assert_eq!(s.retired_pages(G), 1, "the vCPUs have not flushed");
        assert_eq!(s.pool().free_frames(), free);
        assert_eq!(s.track(G), Err(TableError::TlbNotFlushed));
        s.hold_flush(G, false);
        assert_eq!(s.retired_pages(G), 0);
        assert_eq!(s.pool().free_frames(), free + 1);
        s.audit_pages().unwrap();
    }

    /// Review s22 F2: a live TD's root is named by its EPTP, which no TRACK rewrites, so it
    /// is never retired while the TD lives: emptied and tracked, it stays the TD's and no other
    /// TD's map gets it. The TD gone (`guest_destroyed`), it is free; refused while a PASID
    /// entry of the TD remains, or while the root holds entries, changing nothing.
    #[test]
    fn a_live_tds_root_stays_its_own_until_the_td_is_gone() {
        let mut mem = vec![Page::ZERO; 24];
        let mut s = sept(&mut mem, SeptLevels::Four);
        let size = PageSize::Size2M;
        let (x, x_host) = (gpa(0x10_0000_0000), hpa(0x8000_0000));
        s.map(G, x, x_host, size).unwrap();
        let root = s.root_phys(G).unwrap();
        let refused = |s: &mut Sept<'_>, want: TableError| {
            let before = (image(s), s.bookkeeping());
            assert_eq!(s.guest_destroyed(G), Err(want));
            assert!(
                (image(s), s.bookkeeping()) == before,
                "a refusal changed something"
            );
        };
        refused(&mut s, TableError::Inconsistent);
        s.block(G, x, size).unwrap();
        assert_eq!(s.track(G), Ok(Completion::Done));
        assert_eq!(s.remove(G, x, size), Ok(x_host));
        assert_eq!(s.track(G), Ok(Completion::Done));
        assert_eq!(s.retired_pages(G), 0);
        // Every page H can get is mapped: G's root is not among them.
        let mut i = 0u64;
        while s
            .map(
                H,
                gpa(0x20_0000_0000 + i * 0x40_0000_0000),
                hpa(0xa000_0000 + i * 0x20_0000),
                size,
            )
            .is_ok()
        {
            i += 1;
        }
        assert!(i > 0);
        assert_eq!(s.root_phys(G), Some(root));
        let root_page = s.pool().index_of(root).unwrap();
        assert!(
            s.pool()
                .page(root_page)
                .unwrap()
                .0
                .iter()
                .all(|&e| e == SeptFormat::FREE)
        );
        s.audit_pages().unwrap();
        // A PASID entry of G left: the TD cannot be forgotten yet.
        s.dma_create(G, iface(3)).unwrap();
        refused(&mut s, TableError::DmaContextExists);
        s.dma_block(G, iface(3)).unwrap();
        assert_eq!(s.dma_invalidate(G, iface(3)), Ok(false));
        assert_eq!(s.iq_process(0), 1);
        s.dma_remove(G, iface(3)).unwrap();
        let free = s.pool().free_frames();
        assert_eq!(s.guest_destroyed(G), Ok(()));
        assert_eq!(s.root_phys(G), None);
        assert_eq!(s.pool().free_frames(), free + 1);
        s.audit_pages().unwrap();
    }

    #[test]
    fn lifecycle_of_a_leaf_and_every_page_returns() {
        let mut mem = vec![Page::ZERO; 17];
        let mut s = sept(&mut mem, SeptLevels::Four);
        let empty = image(&s);
        s.mmio_map(G, gpa(0x10_0000_0000), hpa(0x8020_0000), PageSize::Size2M)
            .unwrap();
        // S-EPT: root + 2 tables down to the PD; MMIOMT: root + 3 tables down to level 2.
        assert_eq!(s.pool().free_frames(), 16 - 3 - 4);
        let p = s.probe(G, gpa(0x10_0000_0000)).unwrap();
        assert_eq!((p.level, p.state), (2, SeptState::MmioPending));
        assert_eq!(p.entry.phys(), 0x8020_0000);
        s.mmio_accept(G, gpa(0x10_0000_0000), PageSize::Size2M)
            .unwrap();
        assert_eq!(
            s.mmio_accept(G, gpa(0x10_0000_0000), PageSize::Size2M),
            Err(SeptError::AlreadyAccepted)
        );
        let leaf = s.leaf(G, gpa(0x10_0012_3000)).unwrap();
        assert_eq!(leaf.gpa, gpa(0x10_0000_0000));
        assert_eq!(leaf.state, LeafState::Mapped);

        s.mmio_block(G, gpa(0x10_0000_0000), PageSize::Size2M)
            .unwrap();
        let blocked = image(&s);
        // Blocking again is a no-op that succeeds.
        s.mmio_block(G, gpa(0x10_0000_0000), PageSize::Size2M)
            .unwrap();
        assert_eq!(image(&s), blocked);
        assert_eq!(
            s.leaf(G, gpa(0x10_0000_0000)).unwrap().state,
            LeafState::Blocked { epoch: 0 }
        );
        // Not removable before TRACK passed the blocking epoch.
        assert_eq!(
            s.mmio_unmap(G, gpa(0x10_0000_0000), PageSize::Size2M),
            Err(SeptError::TlbTrackingNotDone)
        );
        assert_eq!(image(&s), blocked);
        s.mem_track(G).unwrap();
        assert_eq!(
            s.mmio_unmap(G, gpa(0x10_0000_0000), PageSize::Size2M),
            Ok(hpa(0x8020_0000))
        );
        // The MMIOMT's pages are free at once (no walker); the S-EPT's two below the root
        // wait for the TD's next TRACK, their entries not present to a walker that still
        // names them; the root stays the TD's (its EPTP names it) until the TD is gone.
        assert_eq!(s.pool().free_frames(), 16 - 3);
        assert_eq!(s.retired_pages(G), 2);
        let root = s.root_phys(G);
        assert!(root.is_some());
        s.mem_track(G).unwrap();
        assert_eq!(s.retired_pages(G), 0);
        assert_eq!(s.pool().free_frames(), 16 - 1);
        // Mapped again, the TD keeps its root.
        s.mmio_map(G, gpa(0x20_0000_0000), hpa(0x8020_0000), PageSize::Size2M)
            .unwrap();
        assert_eq!(s.root_phys(G), root);
        s.mmio_block(G, gpa(0x20_0000_0000), PageSize::Size2M)
            .unwrap();
        s.mem_track(G).unwrap();
        s.mmio_unmap(G, gpa(0x20_0000_0000), PageSize::Size2M)
            .unwrap();
        // The TD gone, its root and its retired pages are free at once.
        assert_eq!(s.guest_destroyed(G), Ok(()));
        assert_eq!((s.root_phys(G), s.retired_pages(G)), (None, 0));
        assert_eq!(s.pool().free_frames(), 16);
        assert_eq!(image(&s).1, empty.1);
        s.audit_pages().unwrap();
    }

    /// Every refusal leaves every byte of the table memory as it was.
    #[test]
    fn refusals_change_no_byte() {
        let mut mem = vec![Page::ZERO; 33];
        let mut s = sept(&mut mem, SeptLevels::Four);
        s.mmio_map(G, gpa(0x20_0000), hpa(0x8000_0000), PageSize::Size2M)
            .unwrap();
        s.mmio_map(G, gpa(0x60_1000), hpa(0x9000_1000), PageSize::Size4K)
            .unwrap();
        let before = image(&s);
        let g4k = PageSize::Size4K;
        let g2m = PageSize::Size2M;
        let cases: [(&str, Result<(), SeptError>); 12] = [
            (
                "gpa taken",
                s.mmio_map(G, gpa(0x20_0000), hpa(0xa000_0000), g2m),
            ),
            (
                "4K under a 2M leaf",
                s.mmio_map(G, gpa(0x20_1000), hpa(0xa000_0000), g4k),
            ),
            (
                "2M over a table with a 4K leaf",
                s.mmio_map(G, gpa(0x60_0000), hpa(0xa000_0000), g2m),
            ),
            (
                "hpa taken",
                s.mmio_map(H, gpa(0x20_0000), hpa(0x8000_0000), g2m),
            ),
            (
                "hpa inside a 2M leaf",
                s.mmio_map(H, gpa(0x1000), hpa(0x8000_3000), g4k),
            ),
            (
                "misaligned",
                s.mmio_map(H, gpa(0x1000), hpa(0xa000_0000), g2m),
            ),
            (
                "too wide for 4 levels",
                s.mmio_map(H, gpa(1 << 48), hpa(0xa000_0000), g4k),
            ),
            (
                "unknown guest",
                s.mmio_map(GuestId::from_slot(99), gpa(0), hpa(0xa000_0000), g4k),
            ),
            (
                "remove while mapped",
                s.mmio_unmap(G, gpa(0x20_0000), g2m).map(drop),
            ),
            ("block at wrong size", s.mmio_block(G, gpa(0x20_0000), g4k)),
            ("block nothing", s.mmio_block(G, gpa(0x4000_0000), g4k)),
            ("accept nothing", s.mmio_accept(H, gpa(0x20_0000), g2m)),
        ];
        for (what, r) in cases {
            assert!(r.is_err(), "{what}");
        }
        assert_eq!(image(&s), before);
        assert_eq!(
            s.mmio_map(G, gpa(0x20_1000), hpa(0xa000_0000), g4k),
            Err(SeptError::EntryNotFree { level: 2 })
        );
        assert_eq!(
            s.mmio_map(H, gpa(0x1000), hpa(0x8000_3000), g4k),
            Err(SeptError::HpaInUse)
        );
        assert_eq!(
            s.mmio_block(G, gpa(0x20_0000), g4k),
            Err(SeptError::SizeMismatch { level: 2 })
        );
        assert_eq!(
            s.mmio_block(G, gpa(0x4000_0000), g4k),
            Err(SeptError::WalkFailed { level: 3 })
        );
        assert_eq!(
            s.mmio_unmap(G, gpa(0x20_0000), g2m),
            Err(SeptError::NotBlocked)
        );
        assert_eq!(image(&s), before);
    }

    /// A 4-level S-EPT resolves 48 bits. `(1 << 48) | gpa` (or any higher bit) must never
    /// reach `gpa`'s leaf: every operation that takes a GPA refuses it with `GpaTooWide` and
    /// changes no byte, whatever state the real leaf is in.
    #[test]
    fn aliasing_gpas_are_refused_by_every_operation_on_a_4_level_table() {
        let mut mem = vec![Page::ZERO; 33];
        let mut s = sept(&mut mem, SeptLevels::Four);
        let real = 0x20_0000u64;
        let g2m = PageSize::Size2M;
        s.mmio_map(G, gpa(real), hpa(0x8000_0000), g2m).unwrap();
        for high in [48u32, 49, 51] {
            let alias = gpa(1 << high | real);
            for step in ["pending", "mapped", "blocked", "flushed"] {
                let before = image(&s);
                assert_eq!(s.gpa_in_table(G, alias), Err(SeptError::GpaTooWide));
                assert_eq!(s.probe(G, alias), Err(SeptError::GpaTooWide), "{step}");
                assert_eq!(SecureTable::leaf(&s, G, alias), None, "{step}");
                assert_eq!(
                    s.mmio_accept(G, alias, g2m),
                    Err(SeptError::GpaTooWide),
                    "{step}"
                );
                assert_eq!(s.mmio_block(G, alias, g2m), Err(SeptError::GpaTooWide));
                assert_eq!(s.mmio_unmap(G, alias, g2m), Err(SeptError::GpaTooWide));
                assert_eq!(
                    s.mmio_map(G, alias, hpa(0x9000_0000), g2m),
                    Err(SeptError::GpaTooWide)
                );
                assert_eq!(
                    SecureTable::remove(&mut s, G, alias, g2m),
                    Err(TableError::Misaligned)
                );
                assert_eq!(
                    image(&s),
                    before,
                    "{step}: an aliasing GPA changed the table"
                );
                // Move the real leaf on, so every state is tried.
                match step {
                    "pending" => s.mmio_accept(G, gpa(real), g2m).unwrap(),
                    "mapped" => s.mmio_block(G, gpa(real), g2m).unwrap(),
                    "blocked" => s.mem_track(G).unwrap(),
                    _ => {}
                }
            }
            assert_eq!(s.mmio_unmap(G, gpa(real), g2m), Ok(hpa(0x8000_0000)));
            s.mmio_map(G, gpa(real), hpa(0x8000_0000), g2m).unwrap();
        }
        // 5 levels hold every GPA below 2^52.
        let mut mem = vec![Page::ZERO; 33];
        let s = sept(&mut mem, SeptLevels::Five);
        assert_eq!(s.gpa_in_table(G, gpa(1 << 51 | real)), Ok(()));
    }

    #[test]
    fn a_dry_pool_is_a_status_and_changes_nothing() {
        // 4 KiB leaf needs 4 S-EPT + 5 MMIOMT pages in an empty tree.
        let mut mem = vec![Page::ZERO; 9];
        let mut s = sept(&mut mem, SeptLevels::Four);
        let before = image(&s);
        assert_eq!(
            s.mmio_map(G, gpa(0x1000), hpa(0x9000), PageSize::Size4K),
            Err(SeptError::PoolEmpty)
        );
        assert_eq!(image(&s), before);
        assert_eq!(
            SecureTable::map(&mut s, G, gpa(0x1000), hpa(0x9000), PageSize::Size4K),
            Err(TableError::OutOfFrames)
        );
        let mut mem = vec![Page::ZERO; 10];
        let mut s = sept(&mut mem, SeptLevels::Four);
        assert_eq!(
            s.mmio_map(G, gpa(0x1000), hpa(0x9000), PageSize::Size4K),
            Ok(())
        );
        assert_eq!(s.pool().free_frames(), 0);
    }

    /// The table page `guest`'s S-EPT walk for `at` stops in at `level`.
    fn sept_page(s: &Sept<'_>, guest: GuestId, at: u64, level: u8) -> FrameIndex {
        s.walk(guest, gpa(at), level).unwrap().page().unwrap()
    }

    /// The MMIOMT page the walk for `at` stops in at `level`.
    fn mt_page(s: &Sept<'_>, at: u64, level: u8) -> FrameIndex {
        s.mt_lookup(at, level).unwrap().0.page().unwrap()
    }

    /// A table page's entry count that drifted (below zero, to zero with a leaf left, past its
    /// 512 entries) is `Inconsistent` (the core's `Inconsistent` through `SecureTable`, the
    /// TDX status `TSM_INCONSISTENT`) for a map, block or unmap that would update it, and the
    /// refusal changes no byte: not the other tree either, though its update comes first or
    /// needs no count. With the count put right the same operations succeed.
    /// The per-TD blocked-leaf counts are checked too: a block that would push its bucket's
    /// count past u64, or an unmap that would take it below zero, is `Inconsistent` and
    /// changes nothing.
    #[test]
    fn a_drifted_blocked_count_is_inconsistent_and_changes_nothing() {
        let k4 = PageSize::Size4K;
        let mut mem = vec![Page::ZERO; 33];
        let mut s = sept(&mut mem, SeptLevels::Four);
        s.mmio_map(G, gpa(0x1000), hpa(0x8000_1000), k4).unwrap();
        s.mmio_map(G, gpa(0x2000), hpa(0x8000_2000), k4).unwrap();
        let slot = bucket_slot(s.epochs[usize::from(G.slot())].current);
        s.epochs[usize::from(G.slot())].blocked[slot] = u64::MAX;
        let before = (image(&s), s.epochs);
        assert_eq!(
            s.mmio_block(G, gpa(0x1000), k4),
            Err(SeptError::Inconsistent)
        );
        assert_eq!((image(&s), s.epochs), before);
        s.epochs[usize::from(G.slot())].blocked[slot] = 0;
        s.mmio_block(G, gpa(0x1000), k4).unwrap();
        s.mem_track(G).unwrap();
        // The count says no leaf is blocked in that bucket: the unmap would take it below 0.
        s.epochs[usize::from(G.slot())].blocked[slot] = 0;
        let before = (image(&s), s.epochs);
        assert_eq!(
            s.mmio_unmap(G, gpa(0x1000), k4),
            Err(SeptError::Inconsistent)
        );
        assert_eq!((image(&s), s.epochs), before);
        s.epochs[usize::from(G.slot())].blocked[slot] = 1;
        assert_eq!(s.mmio_unmap(G, gpa(0x1000), k4), Ok(hpa(0x8000_1000)));
        assert_eq!(s.epochs[usize::from(G.slot())].blocked[slot], 0);
    }

    #[test]
    fn a_drifted_entry_count_is_inconsistent_and_map_block_unmap_change_nothing() {
        let k4 = PageSize::Size4K;
        let mut mem = vec![Page::ZERO; 33];
        let mut s = sept(&mut mem, SeptLevels::Four);
        s.mmio_map(G, gpa(0x1000), hpa(0x8000_1000), k4).unwrap();
        s.mmio_map(G, gpa(0x2000), hpa(0x8000_2000), k4).unwrap();
        // The S-EPT's PT and the MMIOMT's level-1 page each hold both leaves.
        let pt = sept_page(&s, G, 0x1000, 1);
        let mt = mt_page(&s, 0x8000_1000, 1);
        assert_eq!((s.pool.used(pt), s.pool.used(mt)), (2, 2));

        // Map a third leaf into the same two pages: their counts would go past 512. In the
        // last case the MMIOMT's count (0 with two entries) would take an increment, but not
        // the decrement an undo of a half-made mapping would need: only checking both trees
        // before the first write leaves no trace.
        for (what, drift) in [
            ("S-EPT PT", &[(pt, 512)][..]),
            ("MMIOMT page", &[(mt, 512)]),
            ("S-EPT PT, MMIOMT page low", &[(pt, 512), (mt, 0)]),
        ] {
            for &(page, n) in drift {
                s.pool.force_used(page, n);
            }
            let before = image(&s);
            assert_eq!(
                s.mmio_map(G, gpa(0x3000), hpa(0x8000_3000), k4),
                Err(SeptError::Inconsistent),
                "map, {what} count at 512"
            );
            assert_eq!(
                SecureTable::map(&mut s, G, gpa(0x3000), hpa(0x8000_3000), k4),
                Err(TableError::Inconsistent),
                "{what}"
            );
            assert_eq!(
                image(&s),
                before,
                "map, {what}: the refusal changed the table"
            );
            s.pool.force_used(pt, 2);
            s.pool.force_used(mt, 2);
        }
        s.mmio_map(G, gpa(0x3000), hpa(0x8000_3000), k4).unwrap();
        s.mmio_block(G, gpa(0x3000), k4).unwrap();

        // Block rewrites an entry of each tree: a count past the page's entries refuses both.
        for (what, page) in [("S-EPT PT", pt), ("MMIOMT page", mt)] {
            s.pool.force_used(page, 513);
            let before = image(&s);
            assert_eq!(
                s.mmio_block(G, gpa(0x1000), k4),
                Err(SeptError::Inconsistent),
                "block, {what}"
            );
            assert_eq!(
                image(&s),
                before,
                "block, {what}: the refusal changed the table"
            );
            s.pool.force_used(page, 3);
        }
        s.mmio_block(G, gpa(0x1000), k4).unwrap();
        s.mem_track(G).unwrap();

        // Unmap: a count that would go below zero, or to zero while the page holds the other
        // leaves (saturating, the page would have gone back to the pool with them in it).
        for (what, page, drift) in [
            ("S-EPT PT below zero", pt, 0),
            ("S-EPT PT to zero with leaves left", pt, 1),
            ("MMIOMT page below zero", mt, 0),
            ("MMIOMT page to zero with leaves left", mt, 1),
        ] {
            s.pool.force_used(page, drift);
            let before = image(&s);
            assert_eq!(
                s.mmio_unmap(G, gpa(0x1000), k4),
                Err(SeptError::Inconsistent),
                "unmap, {what}"
            );
            assert_eq!(
                SecureTable::remove(&mut s, G, gpa(0x1000), k4),
                Err(TableError::Inconsistent),
                "{what}"
            );
            assert_eq!(
                image(&s),
                before,
                "unmap, {what}: the refusal changed the table"
            );
            s.pool.force_used(page, 3);
        }
        assert_eq!(s.mmio_unmap(G, gpa(0x1000), k4), Ok(hpa(0x8000_1000)));
        assert_eq!(s.mmio_unmap(G, gpa(0x3000), k4), Ok(hpa(0x8000_3000)));
        s.mmio_block(G, gpa(0x2000), k4).unwrap();
        s.mem_track(G).unwrap();
        assert_eq!(s.mmio_unmap(G, gpa(0x2000), k4), Ok(hpa(0x8000_2000)));
        s.mem_track(G).unwrap();
        assert_eq!(s.guest_destroyed(G), Ok(()));
        assert_eq!(s.pool().free_frames(), s.pool().total_frames());

        // The statuses: the core's Inconsistent, and TDX's TSM_INCONSISTENT.
        assert_eq!(
            tsm_core::Error::from(TableError::from(SeptError::Inconsistent)),
            tsm_core::Error::Inconsistent
        );
        assert_eq!(
            crate::status::sept_status(SeptError::Inconsistent, 0),
            crate::status::TSM_INCONSISTENT
        );
    }

    /// Recounts every table page of every tree ([`Sept::audit_pages`]: its entry count equals
    /// its entries that are not FREE; the pages reached, the retired ones and the free list are
    /// the whole pool, each page once), and the free list holds exactly the counted free pages.
    fn recount(s: &Sept<'_>) {
        s.audit_pages().unwrap();
        let free = s.pool.free_frames();
        assert_eq!(s.pool.check_alloc(free), Ok(()));
        assert_eq!(s.pool.check_alloc(free + 1), Err(PoolError::Empty));
    }

    /// Thousands of maps, accepts, blocks, tracks, unmaps and refusals over two TDs, 4 KiB and
    /// 2 MiB leaves, tables made and given back (roots included): after every step each
    /// page's entry count equals a recount of its entries, and no page leaks.
    #[test]
    // Thousands of steps each recounting the pool: minutes under Miri.
    #[cfg_attr(miri, ignore)]
    fn entry_counts_stay_exact_through_many_map_unmap_cycles() {
        #[derive(Clone, Copy, PartialEq)]
        enum St {
            Free,
            Pending,
            Mapped,
            Blocked,
        }
        let slots: Vec<(GuestId, u64, u64, PageSize)> = (0..18u64)
            .map(|i| {
                let guest = if i % 2 == 0 { G } else { H };
                if i % 3 == 2 {
                    let (g, h) = (0x4000_0000 + i * 0x20_0000, 0x9000_0000 + i * 0x20_0000);
                    (guest, g, h, PageSize::Size2M)
                } else {
                    let g = 0x10_0000_0000 * (i % 4) + i * 0x1000;
                    (guest, g, 0x8000_0000 + i * 0x1000, PageSize::Size4K)
                }
            })
            .collect();
        let mut state = vec![St::Free; slots.len()];
        let mut mem = vec![Page::ZERO; 65];
        let mut s = sept(&mut mem, SeptLevels::Four);
        let mut x: u64 = 0x2545_f491;
        let mut maps = 0;
        for _ in 0..3000 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let r = x >> 33;
            let i = (r % slots.len() as u64) as usize;
            let (guest, g, h, size) = slots[i];
            state[i] = match state[i] {
                St::Free => {
                    s.mmio_map(guest, gpa(g), hpa(h), size).unwrap();
                    maps += 1;
                    St::Pending
                }
                St::Pending if r & 0x100 != 0 => {
                    s.mmio_accept(guest, gpa(g), size).unwrap();
                    St::Mapped
                }
                St::Pending | St::Mapped => {
                    s.mmio_block(guest, gpa(g), size).unwrap();
                    St::Blocked
                }
                St::Blocked => {
                    // A refusal first (not tracked yet, or the gpa is taken): counts unchanged.
                    let refused = s.mmio_map(guest, gpa(g), hpa(h), size);
                    assert!(matches!(refused, Err(SeptError::EntryNotFree { .. })));
                    track(&mut s, guest);
                    assert_eq!(s.mmio_unmap(guest, gpa(g), size), Ok(hpa(h)));
                    St::Free
                }
            };
            recount(&s);
        }
        assert!(maps > 300, "{maps} maps");
        for (i, &(guest, g, h, size)) in slots.iter().enumerate() {
            if state[i] != St::Free {
                s.mmio_block(guest, gpa(g), size).unwrap();
                track(&mut s, guest);
                assert_eq!(s.mmio_unmap(guest, gpa(g), size), Ok(hpa(h)));
                recount(&s);
            }
        }
        track(&mut s, G);
        track(&mut s, H);
        recount(&s);
        assert_eq!(s.guest_destroyed(G), Ok(()));
        assert_eq!(s.guest_destroyed(H), Ok(()));
        recount(&s);
        assert_eq!(s.pool().free_frames(), s.pool().total_frames());
        assert_eq!(
            (s.root_phys(G), s.root_phys(H), s.mmiomt.root()),
            (None, None, None)
        );
    }

    #[test]
    fn track_refuses_while_the_previous_epoch_is_unflushed() {
        let mut mem = vec![Page::ZERO; 17];
        let mut s = sept(&mut mem, SeptLevels::Four);
        s.mmio_map(G, gpa(0), hpa(0x1000), PageSize::Size4K)
            .unwrap();
        s.mmio_block(G, gpa(0), PageSize::Size4K).unwrap();
        s.hold_flush(G, true);
        s.mem_track(G).unwrap();
        assert_eq!(s.mem_track(G), Err(SeptError::PreviousEpochBusy));
        assert_eq!(
            s.mmio_unmap(G, gpa(0), PageSize::Size4K),
            Err(SeptError::TlbTrackingNotDone)
        );
        // Another TD's epoch is its own.
        assert_eq!(s.mem_track(H), Ok(()));
        s.hold_flush(G, false);
        assert_eq!(s.mmio_unmap(G, gpa(0), PageSize::Size4K), Ok(hpa(0x1000)));
    }

    /// The bookkeeping beside the pool's bytes (the epoch records, roots, free list) is what
    /// a refused TRACK leaves alone and what a TRACK or a first mapping changes, so a refusal
    /// test comparing it with the pages sees every change.
    #[test]
    fn bookkeeping_sees_what_the_pool_bytes_do_not() {
        let mut mem = vec![Page::ZERO; 17];
        let mut s = sept(&mut mem, SeptLevels::Four);
        let empty = s.bookkeeping();
        s.mmio_map(G, gpa(0), hpa(0x1000), PageSize::Size4K)
            .unwrap();
        assert_ne!(s.bookkeeping(), empty, "roots and the free list moved");
        s.hold_flush(G, true);
        let pages: Vec<Page> = s.pool().pages().copied().collect();
        let before = s.bookkeeping();
        s.mem_track(G).unwrap();
        let tracked = s.bookkeeping();
        assert_ne!(tracked, before, "the epoch advanced");
        assert!(
            s.pool().pages().copied().eq(pages.iter().copied()),
            "not in the pages"
        );
        assert_eq!(s.mem_track(G), Err(SeptError::PreviousEpochBusy));
        assert_eq!(s.bookkeeping(), tracked, "a refused TRACK changes nothing");
    }

    #[test]
    // Thousands of TRACKs of plain arithmetic, no unsafe code: minutes under Miri.
    #[cfg_attr(miri, ignore)]
    fn blocking_epochs_survive_many_tracks() {
        let mut mem = vec![Page::ZERO; 17];
        let mut s = sept(&mut mem, SeptLevels::Four);
        for _ in 0..5000 {
            s.mem_track(G).unwrap();
        }
        s.mmio_map(G, gpa(0), hpa(0x1000), PageSize::Size4K)
            .unwrap();
        s.mmio_block(G, gpa(0), PageSize::Size4K).unwrap();
        assert_eq!(
            s.leaf(G, gpa(0)).unwrap().state,
            LeafState::Blocked { epoch: 5000 }
        );
        s.mem_track(G).unwrap();
        assert_eq!(
            s.leaf(G, gpa(0)).unwrap().state,
            LeafState::Blocked { epoch: 5000 }
        );
    }

    fn track(s: &mut Sept<'_>, guest: GuestId) {
        loop {
            match s.mem_track(guest) {
                Ok(()) => return,
                Err(SeptError::TrackResumable) => {}
                Err(e) => panic!("track: {e:?}"),
            }
        }
    }

    fn blocked_epoch_of(s: &Sept<'_>, at: u64) -> Epoch {
        match SecureTable::leaf(s, G, gpa(at)).map(|l| l.state) {
            Some(LeafState::Blocked { epoch }) => epoch,
            other => panic!("leaf at {at:#x}: {other:?}"),
        }
    }

    /// The blocking epoch is 12 bits. Around the wrap (4095 -> 4096, which is 0 mod 2^12) a
    /// blocked leaf is not removable before TRACK, nor after a TRACK whose flush is pending
    /// (refusals change no byte), and is removable once the flush is done.
    #[test]
    // Thousands of TRACKs of plain arithmetic, no unsafe code: minutes under Miri.
    #[cfg_attr(miri, ignore)]
    fn at_the_epoch_wrap_an_unflushed_leaf_is_never_removable_and_a_flushed_one_is() {
        let k4 = PageSize::Size4K;
        for start in [4094u64, 4095, 4096, 8191, 8192] {
            let mut mem = vec![Page::ZERO; 17];
            let mut s = sept(&mut mem, SeptLevels::Four);
            for _ in 0..start {
                track(&mut s, G);
            }
            s.mmio_map(G, gpa(0), hpa(0x1000), k4).unwrap();
            s.mmio_block(G, gpa(0), k4).unwrap();
            assert_eq!(blocked_epoch_of(&s, 0), start);
            let before = image(&s);
            assert_eq!(
                s.mmio_unmap(G, gpa(0), k4),
                Err(SeptError::TlbTrackingNotDone),
                "blocked at {start}, not tracked"
            );
            s.hold_flush(G, true);
            s.mem_track(G).unwrap();
            assert_eq!(
                s.mmio_unmap(G, gpa(0), k4),
                Err(SeptError::TlbTrackingNotDone),
                "blocked at {start}, tracked, flush pending"
            );
            assert_eq!(image(&s), before);
            assert_eq!(blocked_epoch_of(&s, 0), start);
            s.hold_flush(G, false);
            assert_eq!(s.mmio_unmap(G, gpa(0), k4), Ok(hpa(0x1000)), "{start}");
        }
    }

    /// A leaf blocked in epoch 4095 and left blocked while 2^12 and more epochs pass (a TDI in
    /// ERROR waiting for its unbind). At age 2^12 its 12 bits equal the current epoch's, the
    /// very epoch a fresh block records: the fresh leaf is not removable before its flush, the
    /// old one is (TRACK re-stamps old blocked leaves into a later, flushed epoch).
    #[test]
    // Thousands of TRACKs of plain arithmetic, no unsafe code: minutes under Miri.
    #[cfg_attr(miri, ignore)]
    fn a_leaf_blocked_a_whole_window_ago_is_removable_and_a_fresh_one_is_not() {
        let k4 = PageSize::Size4K;
        for age in [4096u64, 4097, 8192, 3 * 4096 + 1] {
            let mut mem = vec![Page::ZERO; 33];
            let mut s = sept(&mut mem, SeptLevels::Four);
            for _ in 0..4095 {
                track(&mut s, G);
            }
            s.mmio_map(G, gpa(0), hpa(0x1000), k4).unwrap();
            s.mmio_map(G, gpa(0x1000), hpa(0x2000), k4).unwrap();
            s.mmio_block(G, gpa(0), k4).unwrap();
            for _ in 0..age {
                track(&mut s, G);
                let e = blocked_epoch_of(&s, 0);
                let current = s.epoch(G).unwrap().current;
                assert!(e >= 4095 && e < current, "age {age}: reported epoch {e}");
            }
            s.mmio_block(G, gpa(0x1000), k4).unwrap();
            assert_eq!(blocked_epoch_of(&s, 0x1000), 4095 + age);
            assert_eq!(
                s.mmio_unmap(G, gpa(0x1000), k4),
                Err(SeptError::TlbTrackingNotDone),
                "age {age}: the fresh leaf"
            );
            assert_eq!(
                s.mmio_unmap(G, gpa(0), k4),
                Ok(hpa(0x1000)),
                "age {age}: the old leaf"
            );
            s.mem_track(G).unwrap();
            assert_eq!(s.mmio_unmap(G, gpa(0x1000), k4), Ok(hpa(0x2000)));
        }
    }

    /// Re-stamping is bounded per TRACK: with more old blocked leaves than one call's work
    /// (`RESTAMP_WORK`: a unit to find each of these dense leaves, one to rewrite it) covers,
    /// TRACK answers `TrackResumable` without advancing the epoch, and finishes on a later call.
    #[test]
    // Thousands of TRACKs of plain arithmetic, no unsafe code: minutes under Miri.
    #[cfg_attr(miri, ignore)]
    fn restamping_many_old_leaves_is_resumable() {
        let k4 = PageSize::Size4K;
        let n = u64::from(RESTAMP_WORK) + 3;
        let mut mem = vec![Page::ZERO; 33];
        let mut s = sept(&mut mem, SeptLevels::Four);
        for i in 0..n {
            s.mmio_map(G, gpa(i << 12), hpa(0x10_0000 + (i << 12)), k4)
                .unwrap();
            s.mmio_block(G, gpa(i << 12), k4).unwrap();
        }
        // Blocked in bucket 0; entering bucket 2 (epoch 4096) re-stamps them.
        for _ in 0..4095 {
            s.mem_track(G).unwrap();
        }
        let mut resumed = 0;
        while s.mem_track(G) == Err(SeptError::TrackResumable) {
            resumed += 1;
            assert!(resumed < 100);
            assert_eq!(s.epoch(G).unwrap().current, 4095);
            assert!(
                s.epoch(G).unwrap().restamp_from.is_some(),
                "re-stamp unfinished"
            );
        }
        // More than one call's work: each leaf costs its search from the root and a rewrite.
        assert!(resumed >= 2, "{resumed}");
        assert_eq!(s.epoch(G).unwrap().current, 4096);
        for i in 0..n {
            assert_eq!(blocked_epoch_of(&s, i << 12), 2048);
            assert_eq!(
                s.mmio_unmap(G, gpa(i << 12), k4),
                Ok(hpa(0x10_0000 + (i << 12)))
            );
        }
        assert_eq!(s.epoch(G).unwrap().blocked, [0; 3]);
    }

    /// A TRACK's re-stamp of a sparse layout (one old blocked leaf per 1 GiB window, at the
    /// last slot of its last 2 MiB window: thousands of free entries between leaves) reads no
    /// more than its work allows, per call, and the unbind's TRACK spends only what its call
    /// has left: none left, nothing read, `TrackResumable`, the epoch not advanced.
    #[test]
    #[cfg_attr(miri, ignore)]
    fn a_sparse_restamp_is_bounded_by_the_work_per_call() {
        use crate::frames::ENTRY_READS;
        let k4 = PageSize::Size4K;
        let mut mem = vec![Page::ZERO; 400];
        let mut s = sept(&mut mem, SeptLevels::Four);
        for i in 0..64u64 {
            let h = 0x1_0000_0000 + i * 0x4000_0000 + 0x3FE0_0000 + 0x1F_F000;
            s.mmio_map(G, gpa(i << 12), hpa(h), k4).unwrap();
            s.mmio_block(G, gpa(i << 12), k4).unwrap();
        }
        for _ in 0..4095 {
            s.mem_track(G).unwrap();
        }
        // No work left: refused as resumable, nothing read, nothing changed.
        let before = (
            s.bookkeeping(),
            s.pool().pages().cloned().collect::<Vec<_>>(),
        );
        ENTRY_READS.with(|n| n.set(0));
        let mut work = 0;
        assert_eq!(
            s.mem_track_within(G, &mut work),
            Err(SeptError::TrackResumable)
        );
        assert_eq!(ENTRY_READS.with(|n| n.get()), 0);
        assert!(
            before
                == (
                    s.bookkeeping(),
                    s.pool().pages().cloned().collect::<Vec<_>>()
                )
        );
        let mut calls = 0;
        loop {
            calls += 1;
            assert!(calls < 10_000);
            ENTRY_READS.with(|n| n.set(0));
            let mut work = UNBIND_WORK_PER_CALL;
            let r = s.mem_track_within(G, &mut work);
            // A unit pays for an entry in use or a cache line of free ones (8 entries).
            let reads = ENTRY_READS.with(|n| n.get());
            assert!(
                reads <= u64::from(UNBIND_WORK_PER_CALL) * 8,
                "call {calls}: {reads} entries read"
            );
            match r {
                Ok(()) => break,
                Err(SeptError::TrackResumable) => {
                    assert_eq!(s.epoch(G).unwrap().current, 4095);
                }
                Err(e) => panic!("{e:?}"),
            }
        }
        assert!(calls > 1, "the sparse re-stamp fit one call");
        assert_eq!(s.epoch(G).unwrap().current, 4096);
        for i in 0..64u64 {
            assert_eq!(blocked_epoch_of(&s, i << 12), 2048);
        }
    }

    #[test]
    fn next_leaf_walks_host_addresses_across_guests_and_sizes() {
        let mut mem = vec![Page::ZERO; 65];
        let mut s = sept(&mut mem, SeptLevels::Four);
        let r = MmioRange::from_raw(0x8000_0000, 0x1000).unwrap(); // 16 MiB
        s.mmio_map(H, gpa(0x40_0000), hpa(0x8040_0000), PageSize::Size2M)
            .unwrap();
        s.mmio_map(G, gpa(0x7000), hpa(0x8000_7000), PageSize::Size4K)
            .unwrap();
        s.mmio_map(G, gpa(0x3000), hpa(0x8000_3000), PageSize::Size4K)
            .unwrap();
        s.mmio_map(G, gpa(0x9000), hpa(0x9000_0000), PageSize::Size4K)
            .unwrap();
        let mut from = hpa(0);
        let mut seen = vec![];
        while let Some(l) = s.next_leaf(r, from) {
            seen.push((l.guest, l.gpa.as_u64(), l.hpa.as_u64(), l.size));
            from = l.hpa.checked_add(l.size.bytes()).unwrap();
        }
        assert_eq!(
            seen,
            [
                (G, 0x3000, 0x8000_3000, PageSize::Size4K),
                (G, 0x7000, 0x8000_7000, PageSize::Size4K),
                (H, 0x40_0000, 0x8040_0000, PageSize::Size2M),
            ]
        );
        // A leaf that runs past the range is not in it.
        let small = MmioRange::from_raw(0x8040_0000, 16).unwrap();
        assert_eq!(s.next_leaf(small, hpa(0)), None);
    }

    #[test]
    fn five_levels_reach_52_bit_guest_addresses() {
        let mut mem = vec![Page::ZERO; 17];
        let mut s = sept(&mut mem, SeptLevels::Five);
        let high = gpa(0x000f_ffff_fff0_0000 & !0x1f_ffff);
        s.mmio_map(G, high, hpa(0x20_0000), PageSize::Size2M)
            .unwrap();
        assert_eq!(s.levels(), 5);
        let p = s.probe(G, high).unwrap();
        assert_eq!((p.level, p.state), (2, SeptState::MmioPending));
        // The same address does not fit a 4-level table.
        let mut mem = vec![Page::ZERO; 17];
        let mut s = sept(&mut mem, SeptLevels::Four);
        assert_eq!(
            s.mmio_map(G, high, hpa(0x20_0000), PageSize::Size2M),
            Err(SeptError::GpaTooWide)
        );
    }
}

/// The sizing helpers against the pool itself: the pages they name suffice, one fewer does not.
#[cfg(test)]
mod sizing_tests {
    use super::*;
    use crate::frames::Page;

    const PHYS: u64 = 0x1_0000_0000;
    const G: GuestId = GuestId::from_slot(0);

    fn gpa(v: u64) -> Gpa {
        Gpa::try_new(v).unwrap()
    }
    fn hpa(v: u64) -> Hpa {
        Hpa::try_new(v).unwrap()
    }

    /// Maps `leaves` (TD, GPA, HPA) of `size` through the core's trait into a pool of `pages`
    /// pages: `Ok` with the free pages left, or the first refusal, which must change nothing.
    fn map_all(
        pages: usize,
        levels: SeptLevels,
        leaves: &[(GuestId, u64, u64)],
        size: PageSize,
    ) -> Result<usize, TableError> {
        let mut mem = vec![Page::ZERO; pages];
        let mut s = Sept::new(FramePool::new(&mut mem, PHYS).unwrap(), levels);
        for &(td, g, h) in leaves {
            let before = (
                s.pool().pages().copied().collect::<Vec<_>>(),
                s.bookkeeping(),
            );
            if let Err(e) = SecureTable::map(&mut s, td, gpa(g), hpa(h), size) {
                let after = (
                    s.pool().pages().copied().collect::<Vec<_>>(),
                    s.bookkeeping(),
                );
                assert!(after == before, "a refused map changed the table");
                return Err(e);
            }
        }
        Ok(s.pool().free_frames())
    }

    /// A pool of exactly `tables` table pages maps `leaves` and is used up; one page fewer
    /// is refused with the core's `SecureTableFull`, nothing changed.
    #[track_caller]
    fn exactly(tables: usize, levels: SeptLevels, leaves: &[(GuestId, u64, u64)], size: PageSize) {
        let pages = FramePool::pages_for(tables).unwrap();
        assert_eq!(map_all(pages, levels, leaves, size), Ok(0));
        let short = map_all(pages - 1, levels, leaves, size);
        assert_eq!(short, Err(TableError::OutOfFrames));
        assert_eq!(
            tsm_core::Error::from(TableError::OutOfFrames),
            tsm_core::Error::SecureTableFull
        );
    }

    fn run(g: u64, h: u64, count: u64, size: PageSize) -> Vec<(GuestId, u64, u64)> {
        (0..count)
            .map(|i| (G, g + i * size.bytes(), h + i * size.bytes()))
            .collect()
    }

    #[test]
    fn one_4k_page_takes_ten_pool_pages() {
        assert_eq!(
            Sept::pool_pages_needed(SeptLevels::Four, 1, 1, PageSize::Size4K),
            Some(10)
        );
        assert_eq!(
            Sept::pool_pages_needed(SeptLevels::Five, 1, 1, PageSize::Size4K),
            Some(11)
        );
        let one = [(G, 0x1000, 0x9000)];
        assert_eq!(map_all(10, SeptLevels::Four, &one, PageSize::Size4K), Ok(0));
        assert_eq!(
            map_all(9, SeptLevels::Four, &one, PageSize::Size4K),
            Err(TableError::OutOfFrames)
        );
        exactly(9, SeptLevels::Four, &one, PageSize::Size4K);
        exactly(10, SeptLevels::Five, &one, PageSize::Size4K);
    }

    #[test]
    // Thousands of maps, each copying the pool to prove a refusal changed nothing: minutes
    // under Miri, safe code only.
    #[cfg_attr(miri, ignore)]
    fn a_run_takes_exactly_what_table_pages_for_run_says() {
        let cases = [
            // 1100 4 KiB pages: across three 2 MiB boundaries of the GPA, two of the HPA.
            (0x10_001f_f000, 0x8_0000_1000, 1100, PageSize::Size4K),
            // 2 MiB leaves across a 1 GiB boundary.
            (0x3fe0_0000, 0x2_3fc0_0000, 6, PageSize::Size2M),
            // 1 GiB leaves across a 512 GiB boundary of the GPA.
            (0x7f_c000_0000, 0x40_0000_0000, 3, PageSize::Size1G),
            (0x1000, 0x9000, 0, PageSize::Size4K),
        ];
        for levels in [SeptLevels::Four, SeptLevels::Five] {
            for (g, h, count, size) in cases {
                let tables = Sept::table_pages_for_run(levels, g, h, count, size).unwrap();
                let leaves = run(g, h, count, size);
                if count == 0 {
                    assert_eq!(tables, 0);
                    continue;
                }
                exactly(tables, levels, &leaves, size);
                // The worst case over these leaves is never below what they take.
                let worst = Sept::table_pages_worst_case(levels, 1, leaves.len(), size).unwrap();
                assert!(worst >= tables, "{worst} < {tables}");
            }
        }
        // By hand: 1100 4 KiB pages from GPA 0x10_001f_f000 (to 0x10_0064_a000) touch four
        // 2 MiB windows, so four PTs under one PD, one PDPT and the root; from HPA
        // 0x8_0000_1000 (to 0x8_0044_c000) three PTs and one MMIOMT table at each of the four
        // levels above.
        assert_eq!(
            Sept::table_pages_for_run(
                SeptLevels::Four,
                0x10_001f_f000,
                0x8_0000_1000,
                1100,
                PageSize::Size4K
            ),
            Some((1 + 1 + 1 + 4) + (1 + 1 + 1 + 1 + 3))
        );
    }

    #[test]
    fn the_worst_case_is_reached_by_scattered_leaves() {
        // 16 leaves, each in its own top-level slot of the S-EPT (512 GiB apart) and of the
        // MMIOMT (2^48 apart, the 16 such slots below 2^52): every leaf its own chain.
        let leaves: Vec<_> = (0..16u64)
            .map(|i| (G, i << 39, (i << 48) + 0x1000))
            .collect();
        let tables =
            Sept::table_pages_worst_case(SeptLevels::Four, 1, leaves.len(), PageSize::Size4K);
        assert_eq!(tables, Some(1 + 16 * 3 + 1 + 16 * 4));
        exactly(tables.unwrap(), SeptLevels::Four, &leaves, PageSize::Size4K);
        // Two TDs, eight leaves each, scattered alike: one more root.
        let h = GuestId::from_slot(1);
        let two: Vec<_> = leaves
            .iter()
            .enumerate()
            .map(|(i, &(_, g, hp))| (if i % 2 == 0 { G } else { h }, g, hp))
            .collect();
        let tables = Sept::table_pages_worst_case(SeptLevels::Four, 2, two.len(), PageSize::Size4K);
        assert_eq!(tables, Some(2 + 16 * 3 + 1 + 16 * 4));
        exactly(tables.unwrap(), SeptLevels::Four, &two, PageSize::Size4K);
        // Past 16 leaves the MMIOMT's top level is shared: the cap holds the bound down.
        assert_eq!(
            Sept::table_pages_worst_case(SeptLevels::Four, 1, 17, PageSize::Size4K),
            Some(1 + 17 * 3 + 1 + 16 + 17 * 3)
        );
        assert_eq!(
            Sept::table_pages_worst_case(SeptLevels::Four, 4, 0, PageSize::Size4K),
            Some(0)
        );
    }

    #[test]
    // Pools of a thousand pages built over and over: minutes under Miri, safe code only.
    #[cfg_attr(miri, ignore)]
    fn sizing_refuses_what_the_tables_cannot_hold() {
        let four = SeptLevels::Four;
        // Misaligned, past 2^48 with four levels, an HPA past 2^52, an overflowing run.
        assert_eq!(
            Sept::table_pages_for_run(four, 0x1000, 0x9000, 1, PageSize::Size2M),
            None
        );
        assert_eq!(
            Sept::table_pages_for_run(four, 1 << 48, 0x9000, 1, PageSize::Size4K),
            None
        );
        assert!(
            Sept::table_pages_for_run(SeptLevels::Five, 1 << 48, 0x9000, 1, PageSize::Size4K)
                .is_some()
        );
        assert_eq!(
            Sept::table_pages_for_run(four, 0x1000, 1 << 52, 1, PageSize::Size4K),
            None
        );
        assert_eq!(
            Sept::table_pages_for_run(four, 0x1000, 0x9000, u64::MAX, PageSize::Size4K),
            None
        );
        assert_eq!(FramePool::pages_for(usize::MAX), None);
        assert_eq!(FramePool::pages_for(512), Some(513));
        assert_eq!(FramePool::pages_for(513), Some(515));
        // The pool those pages make has exactly the table pages asked for.
        for tables in [1, 9, 511, 512, 513, 1024, 1025] {
            let pages = FramePool::pages_for(tables).unwrap();
            let mut mem = vec![Page::ZERO; pages];
            assert_eq!(
                FramePool::new(&mut mem, PHYS).unwrap().total_frames(),
                tables
            );
            let mut mem = vec![Page::ZERO; pages - 1];
            assert!(FramePool::new(&mut mem, PHYS).unwrap().total_frames() < tables);
        }
    }
}

/// The range operations against the per-page ones they stand for, on random runs over random
/// layouts: the same result, and when it is `Ok` the same bytes in every page of the pool (the
/// same table pages taken and given back in the same order) and the same bookkeeping; a
/// refused run changes nothing at all.
#[cfg(test)]
mod range_tests {
    use super::*;
    use crate::frames::Page;
    use proptest::prelude::*;

    const PHYS: u64 = 0x1_0000_0000;
    const GUESTS: [GuestId; 2] = [GuestId::from_slot(0), GuestId::from_slot(1)];
    /// Guest and host windows: 4 MiB each, so 4 KiB runs cross table pages and 2 MiB runs
    /// cross a 1 GiB boundary.
    const GPA_BASE: u64 = 0x4000_0000 - 0x20_0000;
    const HPA_BASE: u64 = 0x8000_0000 - 0x20_0000;

    #[derive(Debug, Clone, Copy)]
    enum Kind {
        Map,
        Block,
        Remove,
    }

    /// Runs mapped first: (guest, 2M?, gpa slot, hpa slot, pages, blocked).
    type Runs = Vec<(usize, bool, u64, u64, u64, bool)>;

    #[derive(Debug, Clone)]
    struct Setup {
        runs: Runs,
        /// Track after the blocks (the blocked leaves become removable).
        track: bool,
        /// After the track, remove the blocked leaves: the table pages they empty wait for
        /// the next TRACK, so a map may find the pool short only by them.
        remove: bool,
        /// Pool pages.
        pool: usize,
    }

    fn setup() -> impl Strategy<Value = Setup> {
        (
            prop::collection::vec(
                (
                    0usize..2,
                    prop::bool::weighted(0.2),
                    0u64..1024,
                    0u64..1024,
                    1u64..80,
                    any::<bool>(),
                ),
                0..8,
            ),
            prop::bool::weighted(0.7),
            any::<bool>(),
            prop_oneof![1 => 12usize..40, 3 => Just(200usize)],
        )
            .prop_map(|(runs, track, remove, pool)| Setup {
                runs,
                track,
                remove,
                pool,
            })
    }

    fn addr(base: u64, slot: u64, big: bool) -> u64 {
        if big {
            base + (slot % 2) * 0x20_0000
        } else {
            base + (slot % 1024) * 0x1000
        }
    }

    fn build<'m>(mem: &'m mut [Page], s: &Setup) -> Sept<'m> {
        let mut t = Sept::new(FramePool::new(mem, PHYS).unwrap(), SeptLevels::Four);
        let mut blocked_leaves = Vec::new();
        for &(g, big, gs, hs, pages, blocked) in &s.runs {
            let size = if big {
                PageSize::Size2M
            } else {
                PageSize::Size4K
            };
            for i in 0..if big { pages % 2 + 1 } else { pages } {
                let gpa = Gpa::try_new(addr(GPA_BASE, gs + i, big)).unwrap();
                let hpa = Hpa::try_new(addr(HPA_BASE, hs + i, big)).unwrap();
                if t.map(GUESTS[g], gpa, hpa, size).is_ok() && blocked {
                    t.block(GUESTS[g], gpa, size).unwrap();
                    blocked_leaves.push((GUESTS[g], gpa, size));
                }
            }
        }
        if s.track {
            for g in GUESTS {
                assert_eq!(t.track(g), Ok(Completion::Done));
            }
            if s.remove {
                for &(g, gpa, size) in &blocked_leaves {
                    t.remove(g, gpa, size).unwrap();
                }
            }
        }
        t
    }

    /// The pool's two refusals: short now, or short even with the pages waiting for a flush.
    fn pool_short(r: Result<(), TableError>) -> bool {
        matches!(
            r,
            Err(TableError::OutOfFrames | TableError::FramesAwaitFlush)
        )
    }

    fn state(t: &Sept<'_>) -> (Vec<Page>, SeptBookkeeping) {
        (t.pool().pages().copied().collect(), t.bookkeeping())
    }

    /// What the range operation stands for: the per-page operation on each page in order
    /// (block and remove check the host address first), stopping at the first refusal.
    fn per_page(
        t: &mut Sept<'_>,
        kind: Kind,
        g: GuestId,
        gpa: Gpa,
        hpa: Hpa,
        size: PageSize,
        count: u32,
    ) -> Result<(), TableError> {
        Run::new(gpa, hpa, size, count).for_each_page(|ga, ha| match kind {
            Kind::Map => t.map(g, ga, ha, size),
            Kind::Block => {
                t.check_block(g, ga, size)?;
                t.check_host(g, ga, ha)?;
                t.block(g, ga, size)
            }
            Kind::Remove => {
                t.check_remove(g, ga, size)?;
                t.check_host(g, ga, ha)?;
                t.remove(g, ga, size).map(drop)
            }
        })
    }

    fn run() -> impl Strategy<Value = (Kind, usize, bool, u64, u64, u32)> {
        (
            prop_oneof![Just(Kind::Map), Just(Kind::Block), Just(Kind::Remove)],
            0usize..2,
            prop::bool::weighted(0.2),
            0u64..1024,
            0u64..1024,
            1u32..600,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

        // Safe code over a heap pool, thousands of cases: hours under Miri, nothing unsafe.
        #[cfg_attr(miri, ignore)]
        #[test]
        fn a_range_operation_is_its_pages_in_order_or_nothing(
            s in setup(),
            (kind, g, big, gs, hs, count) in run(),
            // Runs that follow the layout (over leaves the setup mapped) as well as random ones.
            follow in any::<prop::sample::Index>(),
            follow_on in any::<bool>(),
        ) {
            let mut mem_a = vec![Page::ZERO; s.pool];
            let mut mem_b = vec![Page::ZERO; s.pool];
            let mut a = build(&mut mem_a, &s);
            let mut b = build(&mut mem_b, &s);
            let (mut g, mut kind) = (g, kind);
            let (size, gpa, hpa, count) = match (follow_on, s.runs.is_empty()) {
                (true, false) => {
                    // Part of a run the setup mapped, by its guest, sometimes a page or two
                    // past it; the next step in its life more often than not.
                    let &(rg, big, gs, hs, pages, blocked) = follow.get(&s.runs);
                    g = rg;
                    if count % 4 != 0 {
                        kind = if blocked { Kind::Remove } else { Kind::Block };
                    }
                    let pages = if big { pages % 2 + 1 } else { pages };
                    let skip = u64::from(count) % pages;
                    let size = if big { PageSize::Size2M } else { PageSize::Size4K };
                    let n = (pages - skip + u64::from(count % 3) / 2) as u32;
                    (size, addr(GPA_BASE, gs + skip, big), addr(HPA_BASE, hs + skip, big), n)
                }
                _ => {
                    let size = if big { PageSize::Size2M } else { PageSize::Size4K };
                    let count = if big { count % 3 + 1 } else { count };
                    (size, addr(GPA_BASE, gs, big), addr(HPA_BASE, hs, big), count)
                }
            };
            let (gpa, hpa) = (Gpa::try_new(gpa).unwrap(), Hpa::try_new(hpa).unwrap());
            let guest = GUESTS[g];
            let before = state(&a);
            let got = match kind {
                Kind::Map => a.map_range(guest, Run::new(gpa, hpa, size, count)),
                Kind::Block => a.block_range(guest, Run::new(gpa, hpa, size, count)).map(drop),
                Kind::Remove => a.remove_range(guest, Run::new(gpa, hpa, size, count)).map(drop),
            };
            let want = per_page(&mut b, kind, guest, gpa, hpa, size, count);
            // Which of the pool's refusals is the whole run's (all or none): the pages may
            // wait for the flush of pages it needs in all, the page that is refused one by one
            // need fewer. Either way the pool is short in both.
            if pool_short(got) {
                prop_assert!(pool_short(want), "run {:?}, pages {:?}", got, want);
                // The run counts at least the pages the per-page maps took up to the refused
                // one, and the waiting pages are the same: the run's promise is the pages'
                // too, and the pages' "no promise" the run's.
                if got == Err(TableError::FramesAwaitFlush) {
                    prop_assert_eq!(want, got);
                }
                if want == Err(TableError::OutOfFrames) {
                    prop_assert_eq!(got, want);
                }
            } else {
                prop_assert_eq!(got, want);
            }
            if got.is_ok() {
                prop_assert!(state(&a) == state(&b), "the range and the pages disagree");
            } else {
                prop_assert!(state(&a) == before, "a refused run changed the table");
            }
            prop_assert_eq!(a.audit_pages(), Ok(()));
            // A TRACK of every TD frees what the setup and the run retired, each TD's own
            // pages at its own TRACK and no other's (review s22 F10); every page stays in one
            // place.
            let others_waiting: usize = GUESTS
                .iter()
                .filter(|&&o| o != guest)
                .map(|&o| a.awaiting_flush(o))
                .sum();
            for (i, guest) in GUESTS.into_iter().enumerate() {
                let others: Vec<usize> = GUESTS.iter().skip(i + 1).map(|&o| a.retired_pages(o)).collect();
                let (free, mine) = (a.pool().free_frames(), a.retired_pages(guest));
                prop_assert_eq!(a.track(guest), Ok(Completion::Done));
                prop_assert_eq!(a.retired_pages(guest), 0);
                prop_assert_eq!(a.pool().free_frames(), free + mine);
                let after: Vec<usize> = GUESTS.iter().skip(i + 1).map(|&o| a.retired_pages(o)).collect();
                prop_assert_eq!(after, others, "another TD's TRACK freed a page");
            }
            prop_assert_eq!(GUESTS.map(|g| a.awaiting_flush(g)), [0, 0]);
            prop_assert_eq!(a.audit_pages(), Ok(()));
            // The promise of `FramesAwaitFlush`: after those flushes the pool covers the run
            // (which may still be refused for something else). `OutOfFrames` was no promise:
            // still short after them, unless another TD's pages came back too.
            if let (Kind::Map, Err(e)) = (kind, got) {
                let again = a.map_range(guest, Run::new(gpa, hpa, size, count));
                match e {
                    TableError::FramesAwaitFlush => prop_assert!(!pool_short(again), "{:?}", again),
                    TableError::OutOfFrames if others_waiting == 0 => {
                        prop_assert_eq!(again, Err(TableError::OutOfFrames))
                    }
                    _ => {}
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        /// Bounded searches, resumed as the unbind walk resumes them (from the run's end or the
        /// resume point, with the page hint, and inside a run when the work runs out), with
        /// little work per call, find every leaf in the range exactly once and in order: what
        /// the unbounded `next_leaf` finds.
        // Safe code over a heap pool, hundreds of cases: hours under Miri, nothing unsafe.
        #[cfg_attr(miri, ignore)]
        #[test]
        fn bounded_searches_find_every_leaf_once(
            s in setup(),
            lo in 0u64..1024,
            pages in 1u64..1200,
            // A search with fewer units than a descent reads makes no progress (the bound
            // below SEARCH_PROGRESS_WORK); the unbind's is well above it.
            work_per_call in SEARCH_PROGRESS_WORK..40,
        ) {
            let mut mem = vec![Page::ZERO; s.pool];
            let t = build(&mut mem, &s);
            let within = MmioRange::from_raw(HPA_BASE + lo * 0x1000, pages).unwrap();
            let mut want = vec![];
            let mut from = within.base();
            while let Some(l) = t.next_leaf(within, from) {
                want.push(l);
                from = l.hpa.checked_add(l.size.bytes()).unwrap();
            }
            let mut got = vec![];
            let (mut from, mut rest) = (within.base(), None);
            for _ in 0..100_000 {
                let mut work = work_per_call;
                let max = (work / 2).max(1);
                match t.find_leaves(within, from, rest, max, &mut work) {
                    Found::End => break,
                    // Only a leaf straddling the range's end (the test's ranges are not owned
                    // ranges, which no leaf straddles): the reference stops there too.
                    Found::Broken => {
                        let start = from.max(within.base()).as_u64();
                        let (b, l, raw) = t.mmiomt.next_entry(&t.pool, start, within.end()).unwrap();
                        let leaf = t.leaf_of(b, l, MmioMtEntry::from_bits(raw)).unwrap();
                        prop_assert!(!within.contains_page(leaf.hpa, leaf.size));
                        break;
                    }
                    Found::Paused { resume } => {
                        prop_assert!(resume >= from);
                        (from, rest) = (resume, None);
                    }
                    Found::Run { first, count, next, rest: r } => {
                        prop_assert!(count >= 1 && count <= max);
                        // The walk does as many as the work left allows.
                        let done = count.min(work.max(1));
                        for i in 0..done {
                            let a = run_page(first.hpa.as_u64(), first.size, i).unwrap();
                            let l = t.next_leaf(within, Hpa::try_new(a).unwrap()).unwrap();
                            prop_assert_eq!(l.hpa.as_u64(), a);
                            got.push(l);
                        }
                        let end = Hpa::try_new(run_page(first.hpa.as_u64(), first.size, done).unwrap()).ok();
                        let (n, r) = if done == count {
                            (next, r.filter(|_| next == end))
                        } else {
                            (end, r.map(|r| PageRest { left: r.left + (count - done) as u16, ..r }))
                        };
                        match n {
                            Some(n) => (from, rest) = (n, r),
                            None => break,
                        }
                    }
                }
            }
            prop_assert_eq!(got, want);
        }
    }

    /// A run that fills its table page to the last slot ends in the next page: what the
    /// search knew of the first page is not carried into the next (whose leaves a bound of
    /// zero would skip).
    #[test]
    fn a_run_to_the_end_of_its_page_does_not_hide_the_next_page() {
        let mut mem = vec![Page::ZERO; 64];
        let mut t = Sept::new(FramePool::new(&mut mem, PHYS).unwrap(), SeptLevels::Four);
        let g = GUESTS[0];
        let (gpa, hpa) = (
            Gpa::try_new(GPA_BASE).unwrap(),
            Hpa::try_new(HPA_BASE).unwrap(),
        );
        // 2 MiB of 4 KiB leaves: slots 0..511 of one metadata page, then one in the next.
        t.map_range(g, Run::new(gpa, hpa, PageSize::Size4K, 513))
            .unwrap();
        let within = MmioRange::from_raw(HPA_BASE, 1024).unwrap();
        let mut work = 10_000;
        let Found::Run {
            count, next, rest, ..
        } = t.find_leaves(within, within.base(), None, 600, &mut work)
        else {
            panic!("a run");
        };
        assert_eq!((count, rest), (512, None));
        let next = next.unwrap();
        assert_eq!(next.as_u64(), HPA_BASE + 0x20_0000);
        let Found::Run { first, count, .. } = t.find_leaves(within, next, rest, 600, &mut work)
        else {
            panic!("the leaf in the next page");
        };
        assert_eq!((first.hpa, count), (next, 1));
    }

    /// A hint made before a leaf was added ahead of it in its page is stale: the next search
    /// ignores it (the pool's generation moved) and finds the new leaf, whoever mapped it.
    /// With the hint trusted the search would leave the page after the leaves it counted.
    #[test]
    fn a_hint_is_ignored_once_anything_was_added() {
        let mut mem = vec![Page::ZERO; 64];
        let mut t = Sept::new(FramePool::new(&mut mem, PHYS).unwrap(), SeptLevels::Four);
        let g = GUESTS[0];
        let at = |i: u64| {
            (
                Gpa::try_new(GPA_BASE + i * 0x2000).unwrap(),
                Hpa::try_new(HPA_BASE + i * 0x1000).unwrap(),
            )
        };
        // Leaves at the even slots 0..18: runs of one (GPAs not contiguous).
        for i in 0..10 {
            let (gpa, hpa) = at(2 * i);
            t.map(g, gpa, hpa, PageSize::Size4K).unwrap();
        }
        let within = MmioRange::from_raw(HPA_BASE, 512).unwrap();
        let mut work = 1000;
        let Found::Run { next, rest, .. } =
            t.find_leaves(within, within.base(), None, 1, &mut work)
        else {
            panic!("a run");
        };
        assert_eq!(rest.map(|r| r.left), Some(9));
        // The walk is paused here; a leaf is mapped past every leaf the hint counted.
        let (gpa, hpa) = at(19);
        t.map(g, gpa, hpa, PageSize::Size4K).unwrap();
        let (mut from, mut rest, mut seen) = (next.unwrap(), rest, 1);
        loop {
            let mut work = 1000;
            match t.find_leaves(within, from, rest, 1, &mut work) {
                Found::Run { next, rest: r, .. } => {
                    seen += 1;
                    (from, rest) = (next.unwrap(), r);
                }
                Found::End => break,
                Found::Broken | Found::Paused { .. } => panic!("a leaf, or the end"),
            }
        }
        assert_eq!(
            seen, 11,
            "the leaf added ahead of a paused search was skipped"
        );
    }

    /// A run's removal is weighed before it is made: the review's worst case (two leaves
    /// either side of 2^48 in a 5-level S-EPT, each alone in its table pages) costs far more
    /// than a call's budget, so with the budget as the limit it is refused as `None` and
    /// nothing changes; one leaf is the least a call can do, and costs at most
    /// `UNBIND_MAX_LEAF_WORK`; with no limit the run goes and returns what was predicted.
    #[test]
    fn a_removal_over_its_limit_changes_nothing() {
        use tsm_core::capacity::UNBIND_MAX_LEAF_WORK;
        let mut mem = vec![Page::ZERO; 64];
        let mut t = Sept::new(FramePool::new(&mut mem, PHYS).unwrap(), SeptLevels::Five);
        let g = GUESTS[0];
        let k = PageSize::Size4K;
        let (gpa, hpa) = (
            Gpa::try_new((1 << 48) - 0x1000).unwrap(),
            Hpa::try_new(0x8000_0000).unwrap(),
        );
        t.map_range(g, Run::new(gpa, hpa, k, 2)).unwrap();
        t.block_range(g, Run::new(gpa, hpa, k, 2)).unwrap();
        assert_eq!(t.track(g), Ok(Completion::Done));
        let before = (
            t.bookkeeping(),
            t.pool().pages().cloned().collect::<Vec<_>>(),
        );
        assert_eq!(
            t.remove_range_within(g, Run::new(gpa, hpa, k, 2), UNBIND_WORK_PER_CALL),
            Ok(None)
        );
        assert!(
            before
                == (
                    t.bookkeeping(),
                    t.pool().pages().cloned().collect::<Vec<_>>()
                )
        );
        // The first leaf alone: past the budget, within the one-leaf bound.
        let one = t
            .remove_range_within(g, Run::new(gpa, hpa, k, 1), u32::MAX)
            .unwrap()
            .unwrap();
        assert!(
            one > UNBIND_WORK_PER_CALL && one <= UNBIND_MAX_LEAF_WORK,
            "{one}"
        );
        // The second, and the same leaf alone in a table of its own (the same pages to walk
        // and give back): the exact prediction is the limit it needs.
        let (gpa, hpa) = (
            Gpa::try_new(1 << 48).unwrap(),
            Hpa::try_new(0x8000_1000).unwrap(),
        );
        let mut mem2 = vec![Page::ZERO; 64];
        let mut u = Sept::new(FramePool::new(&mut mem2, PHYS).unwrap(), SeptLevels::Five);
        u.map(g, gpa, hpa, k).unwrap();
        u.block(g, gpa, k).unwrap();
        assert_eq!(u.track(g), Ok(Completion::Done));
        let cost = t
            .remove_range_within(g, Run::new(gpa, hpa, k, 1), u32::MAX)
            .unwrap()
            .unwrap();
        assert!(cost <= UNBIND_MAX_LEAF_WORK, "{cost}");
        assert_eq!(
            u.remove_range_within(g, Run::new(gpa, hpa, k, 1), cost - 1),
            Ok(None)
        );
        assert_eq!(
            u.remove_range_within(g, Run::new(gpa, hpa, k, 1), cost),
            Ok(Some(cost))
        );
        assert_eq!(t.leaf(g, gpa), None);
        assert_eq!(t.track(g), Ok(Completion::Done));
        assert_eq!(t.guest_destroyed(g), Ok(()));
        assert_eq!(t.pool().free_frames(), t.pool().total_frames());
    }

    /// A metadata entry in the range that is no leaf of a known guest is `Broken`, never the
    /// end of the leaves: the search does not go past it, and resumed from before it says the
    /// same; past it the search goes on.
    #[test]
    fn an_entry_the_search_cannot_read_is_broken_not_the_end() {
        let mut mem = vec![Page::ZERO; 64];
        let mut t = Sept::new(FramePool::new(&mut mem, PHYS).unwrap(), SeptLevels::Four);
        let g = GUESTS[0];
        let at = |i: u64| {
            (
                Gpa::try_new(GPA_BASE + i * 0x2000).unwrap(),
                Hpa::try_new(HPA_BASE + i * 0x1000).unwrap(),
            )
        };
        for i in 0..3 {
            let (gpa, hpa) = at(i);
            t.map(g, gpa, hpa, PageSize::Size4K).unwrap();
        }
        // The middle leaf's metadata names guest slot 63 (there are 32).
        let page = t.mt_lookup(HPA_BASE, 1).unwrap().0.page().unwrap();
        let raw = t.pool().entry(page, 1);
        t.pool.set_entry(page, 1, raw | (63 << 2));
        let within = MmioRange::from_raw(HPA_BASE, 512).unwrap();
        let mut work = 1000;
        let Found::Run { next, rest, .. } =
            t.find_leaves(within, within.base(), None, 1, &mut work)
        else {
            panic!("the first leaf");
        };
        let mut work = 1000;
        assert_eq!(
            t.find_leaves(within, next.unwrap(), rest, 1, &mut work),
            Found::Broken
        );
        let mut work = 1000;
        assert_eq!(
            t.find_leaves(within, next.unwrap(), None, 1, &mut work),
            Found::Broken
        );
        let mut work = 1000;
        let Found::Run { first, .. } = t.find_leaves(within, at(2).1, None, 1, &mut work) else {
            panic!("the third leaf");
        };
        assert_eq!(first.hpa, at(2).1);
    }

    /// Drifted entry counts are found before anything is written, as the per-page operations
    /// find them: a run's unmap that would take a table page's count below zero, or to zero
    /// while the page still holds another entry, and a run's map onto a page whose count says
    /// it is full, are `Inconsistent` and change nothing; with the counts put right, the same
    /// runs succeed.
    #[test]
    fn drifted_counts_refuse_a_run_and_change_nothing() {
        let mut mem = vec![Page::ZERO; 64];
        let mut t = Sept::new(FramePool::new(&mut mem, PHYS).unwrap(), SeptLevels::Four);
        let g = GUESTS[0];
        let k = PageSize::Size4K;
        let at = |i: u64| {
            (
                Gpa::try_new(GPA_BASE + i * 0x1000).unwrap(),
                Hpa::try_new(HPA_BASE + i * 0x1000).unwrap(),
            )
        };
        let (gpa, hpa) = at(0);
        t.map_range(g, Run::new(gpa, hpa, k, 8)).unwrap();
        // One more leaf in the same table pages, not part of the run.
        let (g20, h20) = at(20);
        t.map(g, g20, h20, k).unwrap();
        t.block_range(g, Run::new(gpa, hpa, k, 8)).unwrap();
        assert_eq!(t.track(g), Ok(Completion::Done));
        let page = t.trees[0]
            .lookup(&t.pool, GPA_BASE, 1)
            .unwrap()
            .page()
            .unwrap();
        assert_eq!(t.pool.used(page), 9);
        let refused =
            |t: &mut Sept<'_>, what: &str, op: &dyn Fn(&mut Sept<'_>) -> Result<(), TableError>| {
                let before = state(t);
                assert_eq!(op(t), Err(TableError::Inconsistent), "{what}");
                assert!(state(t) == before, "{what}: the refusal changed the table");
            };
        // The count says fewer entries than the run removes.
        t.pool.force_used(page, 4);
        refused(&mut t, "unmap below zero", &|t| {
            t.remove_range(g, Run::new(gpa, hpa, k, 8)).map(drop)
        });
        // The count says the run is all the page holds: it would empty with leaf 20 in it.
        t.pool.force_used(page, 8);
        refused(&mut t, "unmap to zero with an entry left", &|t| {
            t.remove_range(g, Run::new(gpa, hpa, k, 8)).map(drop)
        });
        // The count says the page is full: a run into its free slots would go past 512.
        t.pool.force_used(page, 512);
        let (g30, h30) = at(30);
        refused(&mut t, "map past a full count", &|t| {
            t.map_range(g, Run::new(g30, h30, k, 4))
        });
        t.pool.force_used(page, 9);
        assert_eq!(t.map_range(g, Run::new(g30, h30, k, 4)), Ok(()));
        assert_eq!(
            t.remove_range(g, Run::new(gpa, hpa, k, 8)),
            Ok(8 + 2 * WALK_WORK)
        );
    }

    /// A whole run mapped, blocked, tracked and removed by range operations leaves every
    /// page back in the pool, and each step's bytes are the per-page steps' bytes.
    #[test]
    #[cfg_attr(miri, ignore)] // 1100 pages mapped twice, safe code only: minutes under Miri
    fn a_run_across_table_pages_round_trips() {
        for (size, count) in [(PageSize::Size4K, 1100u32), (PageSize::Size2M, 3)] {
            let mut mem_a = vec![Page::ZERO; 64];
            let mut mem_b = vec![Page::ZERO; 64];
            let mut a = Sept::new(FramePool::new(&mut mem_a, PHYS).unwrap(), SeptLevels::Four);
            let mut b = Sept::new(FramePool::new(&mut mem_b, PHYS).unwrap(), SeptLevels::Four);
            let g = GUESTS[1];
            let gpa = Gpa::try_new(GPA_BASE).unwrap();
            let hpa = Hpa::try_new(HPA_BASE + 0x20_0000).unwrap();
            for kind in [Kind::Map, Kind::Block, Kind::Remove] {
                if let Kind::Remove = kind {
                    assert_eq!(a.track(g), Ok(Completion::Done));
                    assert_eq!(b.track(g), Ok(Completion::Done));
                }
                let got = match kind {
                    Kind::Map => a.map_range(g, Run::new(gpa, hpa, size, count)),
                    Kind::Block => a.block_range(g, Run::new(gpa, hpa, size, count)).map(drop),
                    Kind::Remove => a.remove_range(g, Run::new(gpa, hpa, size, count)).map(drop),
                };
                assert_eq!(got, Ok(()), "{kind:?} {size:?}");
                per_page(&mut b, kind, g, gpa, hpa, size, count).unwrap();
                assert!(state(&a) == state(&b), "{kind:?} {size:?}");
            }
            assert_eq!(a.track(g), Ok(Completion::Done));
            assert_eq!(a.guest_destroyed(g), Ok(()));
            assert_eq!(a.pool().free_frames(), a.pool().total_frames());
        }
    }
}
