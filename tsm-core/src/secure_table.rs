//! The secure mapping structure a platform owns (S-EPT on TDX, RMP on SEV), as one trait.
//! The core decides *whether* a leaf may change; the trait's implementation records it in the
//! real structure and enforces the architectural entry states on its own as well.

use crate::addr::{Gpa, Hpa};
use crate::ids::GuestId;
use crate::mmio::MmioRange;
use crate::page::PageSize;
use crate::status::{Completion, Error};
use crate::transport::InterfaceId;

/// A guest's TLB epoch: blocks record it, removals need a flush past it (TDX: TD epoch).
pub type Epoch = u64;

/// State of one private MMIO leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LeafState {
    /// Present: the guest may access the page.
    Mapped,
    /// Blocked at `epoch`: no new translations; cached ones live until that epoch is flushed.
    Blocked {
        /// The guest's TLB epoch when the leaf was blocked.
        epoch: Epoch,
    },
}

/// One private MMIO leaf: `gpa` of `guest` translates to `hpa`, `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Leaf {
    /// The guest whose secure table holds the leaf.
    pub guest: GuestId,
    /// Guest physical address, aligned to `size`.
    pub gpa: Gpa,
    /// Host physical address, aligned to `size`.
    pub hpa: Hpa,
    /// Leaf size.
    pub size: PageSize,
    /// Entry state.
    pub state: LeafState,
}

impl Leaf {
    /// The host pages the leaf covers.
    pub fn host_range(&self) -> Result<MmioRange, Error> {
        MmioRange::try_new(self.hpa, self.size.base_pages())
    }
}

/// Why the secure table refused a change. Each converts to one core [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TableError {
    /// A leaf (of any size) already covers part of the guest range.
    GpaMapped,
    /// A leaf already maps part of the host range.
    HpaMapped,
    /// No leaf at that guest address.
    NotMapped,
    /// The leaf there has another size or base.
    SizeMismatch,
    /// Removal of a leaf that is not blocked.
    NotBlocked,
    /// Removal before the TLB flush of the epoch the leaf was blocked in.
    TlbNotFlushed,
    /// No frame left for an intermediate table, or no entry left in a fixed table.
    OutOfFrames,
    /// Too few free frames now, but enough once table pages an earlier removal emptied come
    /// back: a walker may still cache an entry naming them until the track of the guest that
    /// emptied them is flushed (TDX: its next TDH.MEM.TRACK). Nothing changed; retry after it.
    FramesAwaitFlush,
    /// Address not aligned to the leaf size.
    Misaligned,
    /// The guest has no secure table here.
    UnknownGuest,
    /// The table's own bookkeeping disagrees with itself (a counter would drift).
    Inconsistent,
    /// The interface already has a trusted DMA context.
    DmaContextExists,
    /// The interface has no trusted DMA context.
    NoDmaContext,
    /// Invalidation or removal of a DMA context that is not blocked.
    DmaNotBlocked,
    /// Removal of a blocked DMA context whose IOTLB invalidation is not complete.
    InvalidationPending,
    /// A track, the removal of a leaf blocked before the last track, or the removal of a DMA
    /// context on an IOMMU that track counted, while a trusted IOMMU that translates through
    /// the guest's table still owes the IOTLB invalidation of the guest's domain that track
    /// asked for (TDX: TDX_IOMMU_IOTLB_TRACKING_NOT_DONE; core `Error::IotlbNotTracked`). The
    /// platform completes it later (TDX: TDH.IQ.INV.REQUEST of the domain, then
    /// TDH.IQ.INV.PROCESS); the caller keeps its progress and retries.
    IotlbNotTracked,
}

impl From<TableError> for Error {
    fn from(e: TableError) -> Self {
        match e {
            TableError::GpaMapped => Error::GpaAlreadyMapped,
            TableError::HpaMapped => Error::HpaAlreadyMapped,
            TableError::NotMapped => Error::NotMapped,
            TableError::SizeMismatch => Error::SizeMismatch,
            TableError::NotBlocked => Error::NotBlocked,
            TableError::TlbNotFlushed => Error::TlbFlushPending,
            TableError::OutOfFrames => Error::SecureTableFull,
            TableError::FramesAwaitFlush => Error::SecureTableFlushPending,
            TableError::Misaligned => Error::Misaligned,
            TableError::UnknownGuest => Error::InvalidHandle,
            TableError::Inconsistent => Error::Inconsistent,
            TableError::DmaContextExists => Error::DmaContextExists,
            TableError::NoDmaContext => Error::NoDmaContext,
            TableError::DmaNotBlocked => Error::DmaNotBlocked,
            TableError::InvalidationPending => Error::IotlbInvalidationPending,
            TableError::IotlbNotTracked => Error::IotlbNotTracked,
        }
    }
}

/// What a table knows of the rest of one of its table pages after a search: at most `left`
/// leaves lie at or after the search's resume point in the page at `level` holding it. Handed
/// back to the next search from there, which then leaves the page once it has seen that many
/// instead of reading it to its end. Self-validating: `generation` is the table's count of
/// entries added when the hint was made, and a table ignores a hint whose generation is not
/// its current one. Removals and rewrites in place only keep or lower the count, so a hint
/// that was right stays an upper bound until something is added, whoever adds it (a map of
/// any guest, platform glue holding the table, a future map path). It covers the page ahead of
/// the resume point only: a walk never looks again at what it passed, so an unbind relies on
/// the core's rule that nothing is mapped into a range while its TDI unbinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PageRest {
    /// The table's level of the page (its own numbering).
    pub level: u8,
    /// Leaves at most at or after the resume point in that page.
    pub left: u16,
    /// The table's generation (its count of entries added) when the hint was made; a table
    /// whose count no longer fits makes no hint.
    pub generation: u32,
}

/// What a bounded search of the leaves ([`SecureTable::find_leaves`]) found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Found {
    /// `count` (at least 1) leaves from `first`, one after another in host and in guest
    /// addresses, of one guest and one size: a run the range operations take whole.
    Run {
        /// The run's first leaf (the lowest host address at or above the search's start).
        first: Leaf,
        /// Leaves in the run.
        count: u32,
        /// Where the next search starts: the run's end, or further when the table knows no
        /// leaf lies in between; `None` when nothing can follow (the end of the address space).
        next: Option<Hpa>,
        /// What the table knows of the rest of the page holding the run's end, for a search
        /// from there (only when `next` is that end; a walk that stops inside the run adds the
        /// leaves it did not do).
        rest: Option<PageRest>,
    },
    /// No leaf at or above the start lies in the range searched.
    End,
    /// The table holds something at or above the start, in the range, that it cannot read as a
    /// leaf or a way to one (an entry of no known kind, a leaf straddling the range's end, a
    /// table pointer outside the table's memory): its bookkeeping is broken, and nothing past
    /// it can be said to be free ([`Error::Inconsistent`] for a walk, never an end).
    Broken,
    /// The work allowed ran out first: no leaf of the range starts at or above the search's
    /// start and below `resume`; search again from there.
    Paused {
        /// Where the next search starts.
        resume: Hpa,
    },
}

/// Address of page `i` of a run of `size` pages from `base`, if it exists (below 2^64).
pub fn run_page(base: u64, size: PageSize, i: u32) -> Option<u64> {
    base.checked_add(u64::from(i).checked_mul(size.bytes())?)
}

/// A run of `count` leaves of `size`, contiguous in guest and in host addresses: leaf `i` maps
/// `gpa + i * size` to `hpa + i * size`. What the range operations take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Run {
    /// The first leaf's guest address.
    pub gpa: Gpa,
    /// The first leaf's host address.
    pub hpa: Hpa,
    /// Every leaf's size.
    pub size: PageSize,
    /// How many leaves.
    pub count: u32,
}

impl Run {
    /// The run of `count` leaves of `size` from `gpa -> hpa`.
    pub const fn new(gpa: Gpa, hpa: Hpa, size: PageSize, count: u32) -> Self {
        Self {
            gpa,
            hpa,
            size,
            count,
        }
    }

    /// Calls `f` with page `i`'s guest and host addresses for every page, in order, stopping
    /// at the first error. A page past the address space is `Misaligned` (the status for an
    /// address the table cannot place), as the per-page operation on it would be.
    pub fn for_each_page(
        &self,
        mut f: impl FnMut(Gpa, Hpa) -> Result<(), TableError>,
    ) -> Result<(), TableError> {
        for i in 0..self.count {
            let g = run_page(self.gpa.as_u64(), self.size, i).and_then(|a| Gpa::try_new(a).ok());
            let h = run_page(self.hpa.as_u64(), self.size, i).and_then(|a| Hpa::try_new(a).ok());
            let (Some(g), Some(h)) = (g, h) else {
                return Err(TableError::Misaligned);
            };
            f(g, h)?;
        }
        Ok(())
    }
}

/// A platform's secure second-level structure for private MMIO. Every method either makes its
/// whole change or returns an error and changes nothing.
///
/// The range operations (`map_range`, `block_range`, `remove_range`) take a run of `count`
/// pages of one size, contiguous in guest and host addresses (page `i` maps
/// `gpa + i * size -> hpa + i * size`). Each is all-or-nothing per call: its result is the one
/// the per-page operations applied in address order would return (the first page's refusal
/// in that order), and on a refusal nothing changed. The provided implementations check every
/// page (`check_*`) before they apply any, page by page; a table overrides them to do one walk
/// per table page and one bookkeeping update per chunk.
pub trait SecureTable {
    /// Whether the guest accepts a TDI's trusted DMA context before its START: START of a TDI
    /// whose context is not accepted is then `DmaNotAccepted`. TDX: TDG.DMAR.ACCEPT takes a
    /// CONFIG_LOCKED TDI and the TD accepts before it starts. SEV-TIO's guest writes its sDTE
    /// after RUN (the Linux guest's order), so not there; its DMA reaches private memory only
    /// from the write on either way ([`crate::dma::reach`]). Provided: not required.
    const DMA_ACCEPT_BEFORE_START: bool = false;

    /// Whether the IOTLB invalidation of a blocked DMA context is the guest's TLB epoch advance
    /// itself ([`SecureTable::dma_invalidate`] advances it; SEV-TIO: the ASID fence flushes the
    /// TLBs and the IOMMU's IOTLB together). A teardown (unbind, ERROR) then still blocks the
    /// context in its first call, but requests its invalidation only once every MMIO leaf of
    /// the TDI is blocked, so the one advance covers the context and the leaves, and the
    /// unbind's Track step finds nothing left to advance ([`SecureTable::track_within`]).
    /// False (TDX): the request is queued with the block (TDH.IQ.INV.REQUEST), apart from the
    /// TLB epoch. Provided: false.
    const DMA_INVALIDATION_AFTER_LEAVES: bool = false;

    /// Whether a TDI's trusted DMA context is made when the TDI is bound (SEV-TIO: TDI_BIND
    /// sets up the sDTE): the answer that completes a bind then creates it, `Pending`, in the
    /// call and the locks that bind, through any device response, so no TDI is ever bound
    /// without it and the host's own create finds it there (`DmaContextExists`). False (TDX):
    /// the host creates it on a bound TDI ([`crate::Tsm::host_dma_create`], TDH.DMAR.ADD).
    /// Provided: false.
    const DMA_CONTEXT_AT_BIND: bool = false;

    /// Adds a leaf `gpa -> hpa` of `size` for `guest`, in state `Mapped`.
    fn map(&mut self, guest: GuestId, gpa: Gpa, hpa: Hpa, size: PageSize)
    -> Result<(), TableError>;

    /// Blocks the leaf at exactly `gpa` of `size`, recording the guest's current epoch.
    fn block(&mut self, guest: GuestId, gpa: Gpa, size: PageSize) -> Result<(), TableError>;

    /// Advances the guest's TLB epoch and flushes (TDX: TDH.MEM.TRACK plus the IPIs the host
    /// sends; SEV: the ASID fence). Blocked leaves of older epochs become removable once the
    /// flush is complete, which a platform may report later rather than at once.
    /// One epoch is outstanding at a time, on every platform: a track while the previous
    /// flush is not complete is `TlbNotFlushed` and changes nothing (TDX's TDH.MEM.TRACK rule,
    /// PREVIOUS_TLB_EPOCH_BUSY; on SEV, a fence while one is pending).
    /// `Resumable`: the platform did bounded bookkeeping the advance needs first (TDX
    /// re-stamps old blocked leaves at its 12-bit epoch wrap), kept it, and did not advance
    /// yet; call again. Nothing it did changes what any leaf means.
    fn track(&mut self, guest: GuestId) -> Result<Completion, TableError>;

    /// The unbind's advance: [`SecureTable::track`] within `work` units of
    /// [`crate::capacity::UNBIND_WORK_PER_CALL`]: the bookkeeping before the advance (TDX's
    /// re-stamp) spends at most what `work` holds and is `Resumable` when it runs out; the
    /// advance itself costs one. A table that knows an advance already raised after every
    /// block of the guest may raise none (`Done`; SEV: the last fence is the unbind's DMA
    /// invalidation, raised after its last leaf, with nothing blocked since): its leaves wait for that
    /// flush (`TlbNotFlushed` at their removal) as after an advance. Provided: `track`, one
    /// unit (a table whose track does bounded work of its own).
    fn track_within(&mut self, guest: GuestId, work: &mut u32) -> Result<Completion, TableError> {
        *work = work.saturating_sub(1);
        self.track(guest)
    }

    /// Removes the blocked, flushed leaf at exactly `gpa` of `size`; returns its host address.
    fn remove(&mut self, guest: GuestId, gpa: Gpa, size: PageSize) -> Result<Hpa, TableError>;

    /// The leaf of `guest` covering `gpa`, if any.
    fn leaf(&self, guest: GuestId, gpa: Gpa) -> Option<Leaf>;

    /// The leaf with the lowest host address at or above `from` that lies in `within`
    /// (TDX: found through MMIO metadata; SEV: the RMP index). Unbounded: the firmware's
    /// bounded walks use [`SecureTable::find_leaves`].
    fn next_leaf(&self, within: MmioRange, from: Hpa) -> Option<Leaf>;

    /// Whether [`SecureTable::map`] would succeed now, with the error it would return; reads
    /// only.
    fn check_map(
        &self,
        guest: GuestId,
        gpa: Gpa,
        hpa: Hpa,
        size: PageSize,
    ) -> Result<(), TableError>;

    /// Whether [`SecureTable::block`] would succeed now; reads only.
    fn check_block(&self, guest: GuestId, gpa: Gpa, size: PageSize) -> Result<(), TableError>;

    /// Whether [`SecureTable::remove`] would succeed now; reads only.
    fn check_remove(&self, guest: GuestId, gpa: Gpa, size: PageSize) -> Result<(), TableError>;

    /// Like [`SecureTable::next_leaf`], bounded: what the search reads costs `work` in the
    /// units of [`crate::capacity::UNBIND_WORK_PER_CALL`] (the S-EPT: one per entry in use, one
    /// per cache line of free entries; the provided implementation, over an unbounded
    /// `next_leaf`, one per search), and the search stops when `work` is spent, saying where to
    /// resume.
    /// A run found holds at most `max` leaves (at least one). `max` 0 or `work` 0 on entry:
    /// `Paused` at `from`, nothing read. `rest`: what an earlier search said of the page at
    /// `from` ([`Found::Run`]), or `None`.
    fn find_leaves(
        &self,
        within: MmioRange,
        from: Hpa,
        rest: Option<PageRest>,
        max: u32,
        work: &mut u32,
    ) -> Found {
        let _ = rest;
        if *work == 0 || max == 0 {
            return Found::Paused { resume: from };
        }
        *work = work.saturating_sub(1);
        match self.next_leaf(within, from) {
            Some(first) => Found::Run {
                first,
                count: 1,
                next: first.hpa.checked_add(first.size.bytes()),
                rest: None,
            },
            None => Found::End,
        }
    }

    /// Maps the run of `count` pages (see the trait). Provided: every page checked
    /// ([`SecureTable::check_map`]), then every page mapped. Pages of a run never overlap, so
    /// one page's map cannot change another's check; a table whose pages share a capacity
    /// (a fixed number of entries) overrides it to check that too.
    fn map_range(&mut self, guest: GuestId, run: Run) -> Result<(), TableError> {
        let size = run.size;
        run.for_each_page(|g, h| self.check_map(guest, g, h, size))?;
        run.for_each_page(|g, h| self.map(guest, g, h, size))
    }

    /// Blocks the run of `count` leaves (see the trait): leaf `i` at `gpa + i * size` must
    /// translate to `hpa + i * size` (`NotMapped` otherwise). Already blocked leaves stay as
    /// they are, as [`SecureTable::block`] leaves them. Returns the work it did, as
    /// [`SecureTable::remove_range`] does (the provided implementation: one per leaf).
    fn block_range(&mut self, guest: GuestId, run: Run) -> Result<u32, TableError> {
        let size = run.size;
        run.for_each_page(|g, h| {
            self.check_block(guest, g, size)?;
            self.check_host(guest, g, h)
        })?;
        run.for_each_page(|g, _| self.block(guest, g, size))?;
        Ok(run.count)
    }

    /// Removes the run of `count` blocked, flushed leaves (see the trait; leaf `i` must
    /// translate to `hpa + i * size`). Returns the work it did in the units of
    /// [`crate::capacity::UNBIND_WORK_PER_CALL`]: one per leaf, more for the table pages it
    /// walks, and [`crate::capacity::UNBIND_WORK_PER_PAGE_FREED`] per table page it gave back
    /// (the provided implementation: one per leaf).
    fn remove_range(&mut self, guest: GuestId, run: Run) -> Result<u32, TableError> {
        let size = run.size;
        run.for_each_page(|g, h| {
            self.check_remove(guest, g, size)?;
            self.check_host(guest, g, h)
        })?;
        run.for_each_page(|g, _| self.remove(guest, g, size).map(drop))?;
        Ok(run.count)
    }

    /// [`SecureTable::remove_range`] only when the work it returns is at most `limit`, which
    /// the table knows before it writes anything (the walks, the table pages the run would give
    /// back); `Ok(None)` and nothing changed when it is more. A refusal of the run itself is
    /// the same as `remove_range`'s. Provided: one unit per leaf.
    fn remove_range_within(
        &mut self,
        guest: GuestId,
        run: Run,
        limit: u32,
    ) -> Result<Option<u32>, TableError> {
        if run.count > limit {
            return Ok(None);
        }
        self.remove_range(guest, run).map(Some)
    }

    /// Creates `iface`'s trusted DMA context in `guest`'s domain, not translating
    /// ([`crate::dma::DmaState::Pending`]; TDX: the PASID entry TDH.DMAR.ADD adds). Refused:
    /// the interface has one (`DmaContextExists`), no room (`OutOfFrames`). Provided: nothing
    /// to record (a table whose platform keeps no DMA structure of its own).
    fn dma_create(&mut self, guest: GuestId, iface: InterfaceId) -> Result<(), TableError> {
        let _ = (guest, iface);
        Ok(())
    }

    /// Points the context at `guest`'s secure table: DMA from `iface` translates to its
    /// private memory (TDX: TDG.DMAR.ACCEPT writes SLPTPTR; SEV: the sDTE write). An active
    /// context stays as it is. Refused: none (`NoDmaContext`), blocked (`Inconsistent`: the
    /// core never asks). Provided: nothing to record.
    fn dma_accept(&mut self, guest: GuestId, iface: InterfaceId) -> Result<(), TableError> {
        let _ = (guest, iface);
        Ok(())
    }

    /// Blocks the context: no new translations; the IOMMU may still hold cached ones (TDX:
    /// TDH.DMAR.BLOCK). A blocked context stays as it is. Refused: none (`NoDmaContext`).
    /// Provided: nothing to record.
    fn dma_block(&mut self, guest: GuestId, iface: InterfaceId) -> Result<(), TableError> {
        let _ = (guest, iface);
        Ok(())
    }

    /// Requests the IOTLB invalidation of the blocked context (TDX: TDH.IQ.INV.REQUEST); `true`
    /// when it is complete at once, `false` when the platform completes it later (TDX:
    /// TDH.IQ.INV.PROCESS). Refused: none (`NoDmaContext`), not blocked (`DmaNotBlocked`).
    /// Provided: complete at once.
    fn dma_invalidate(&mut self, guest: GuestId, iface: InterfaceId) -> Result<bool, TableError> {
        let _ = (guest, iface);
        Ok(true)
    }

    /// Removes the blocked, invalidated context (TDX: TDH.DMAR.REMOVE). Refused: none
    /// (`NoDmaContext`), not blocked (`DmaNotBlocked`), its invalidation not requested or not
    /// complete (`InvalidationPending`). Provided: nothing to record.
    fn dma_remove(&mut self, guest: GuestId, iface: InterfaceId) -> Result<(), TableError> {
        let _ = (guest, iface);
        Ok(())
    }

    /// The guest is gone: the table may free what it kept for it (TDX: the S-EPT root, which
    /// the TD's EPTP names for the TD's life, and the table pages waiting for a flush).
    /// Refused, nothing changed: a DMA context of the guest remains (`DmaContextExists`), the
    /// table's bookkeeping disagrees (`Inconsistent`). Provided: nothing kept.
    fn guest_destroyed(&mut self, guest: GuestId) -> Result<(), TableError> {
        let _ = guest;
        Ok(())
    }

    /// `NotMapped` unless the leaf of `guest` at `gpa` translates to `hpa`.
    fn check_host(&self, guest: GuestId, gpa: Gpa, hpa: Hpa) -> Result<(), TableError> {
        match self.leaf(guest, gpa) {
            Some(l) if l.hpa == hpa => Ok(()),
            _ => Err(TableError::NotMapped),
        }
    }
}
