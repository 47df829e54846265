//! A safe in-memory [`SecureTable`]: a fixed array of leaves, used by the core's tests and the
//! host shim. It enforces the same entry rules a real S-EPT or RMP does.

use crate::addr::{Gpa, Hpa};
use crate::capacity::{MAX_GUESTS, MAX_TDIS};
use crate::dma::DmaState;
use crate::ids::GuestId;
use crate::mmio::MmioRange;
use crate::page::PageSize;
use crate::secure_table::{Epoch, Leaf, LeafState, Run, SecureTable, TableError};
use crate::status::Completion;
use crate::transport::InterfaceId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct GuestEpoch {
    current: Epoch,
    flushed: Epoch,
    /// The guest's flushes wait for [`MemTable::complete_flush`].
    deferred: bool,
    /// The guest's IOTLB invalidations wait for [`MemTable::complete_invalidations`].
    invalidations_deferred: bool,
}

/// One trusted DMA context: an interface's, in a guest's domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaEntry {
    /// The guest whose private memory the context translates to once accepted.
    pub guest: GuestId,
    /// The interface (requester ID) the IOMMU matches.
    pub iface: InterfaceId,
    /// Where the context is.
    pub state: DmaState,
}

/// An in-memory secure table with room for `N` leaves; with `AT_BIND` a TDI's trusted DMA
/// context is made when it is bound ([`SecureTable::DMA_CONTEXT_AT_BIND`], as SEV-TIO's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemTable<const N: usize, const AT_BIND: bool = false> {
    leaves: heapless::Vec<Leaf, N>,
    epochs: [GuestEpoch; MAX_GUESTS],
    /// Trusted DMA contexts: at most one per TDI.
    dmas: heapless::Vec<DmaEntry, MAX_TDIS>,
    /// Tests: the searches read the leaf at this host address as an entry they cannot read.
    #[cfg(test)]
    broken_at: Option<Hpa>,
    /// Tests: every IOTLB invalidation request is refused with this, nothing changed (SEV's
    /// `TlbNotFlushed` while another fence is out, or any other refusal).
    #[cfg(test)]
    refuse_invalidation: Option<TableError>,
    /// Tests: every context block is refused with this, nothing changed (a table that
    /// disagrees with the core's record).
    #[cfg(test)]
    refuse_block: Option<TableError>,
    /// Tests: every epoch advance is refused with this, nothing changed (TDX's
    /// `IotlbNotTracked` while an IOMMU owes the guest's domain the last track's invalidation).
    #[cfg(test)]
    refuse_track: Option<TableError>,
    /// Tests: every context create is refused with this, nothing changed.
    #[cfg(test)]
    refuse_create: Option<TableError>,
}

impl<const N: usize, const AT_BIND: bool> Default for MemTable<N, AT_BIND> {
    fn default() -> Self {
        Self::new()
    }
}

fn spans_overlap(a: u64, a_len: u64, b: u64, b_len: u64) -> bool {
    a < b.saturating_add(b_len) && b < a.saturating_add(a_len)
}

impl<const N: usize, const AT_BIND: bool> MemTable<N, AT_BIND> {
    /// An empty table.
    pub const fn new() -> Self {
        Self {
            leaves: heapless::Vec::new(),
            epochs: [GuestEpoch {
                current: 0,
                flushed: 0,
                deferred: false,
                invalidations_deferred: false,
            }; MAX_GUESTS],
            dmas: heapless::Vec::new(),
            #[cfg(test)]
            broken_at: None,
            #[cfg(test)]
            refuse_invalidation: None,
            #[cfg(test)]
            refuse_block: None,
            #[cfg(test)]
            refuse_track: None,
            #[cfg(test)]
            refuse_create: None,
        }
    }

    /// Tests: the searches find the leaf at `hpa` unreadable ([`crate::secure_table::Found::Broken`]).
    #[cfg(test)]
    pub(crate) fn break_at(&mut self, hpa: Option<Hpa>) {
        self.broken_at = hpa;
    }

    /// Tests: refuse every IOTLB invalidation request with `refusal` (`None`: take them).
    #[cfg(test)]
    pub(crate) fn refuse_invalidation(&mut self, refusal: Option<TableError>) {
        self.refuse_invalidation = refusal;
    }

    /// Tests: refuse every context block with `refusal` (`None`: take them).
    #[cfg(test)]
    pub(crate) fn refuse_block(&mut self, refusal: Option<TableError>) {
        self.refuse_block = refusal;
    }

    /// Tests: refuse every context create with `refusal` (`None`: take them).
    #[cfg(test)]
    pub(crate) fn refuse_create(&mut self, refusal: Option<TableError>) {
        self.refuse_create = refusal;
    }

    /// Tests: refuse every epoch advance with `refusal` (`None`: take them).
    #[cfg(test)]
    pub(crate) fn refuse_track(&mut self, refusal: Option<TableError>) {
        self.refuse_track = refusal;
    }

    /// When set for `guest`, its `track` advances the epoch but the flush completes only at
    /// [`MemTable::complete_flush`]: models a host that has not yet kicked that guest's vCPUs.
    /// Other guests' flushes are not affected, as on TDX and SEV.
    pub fn set_defer_flush(&mut self, guest: GuestId, defer: bool) {
        if let Some(e) = self.epochs.get_mut(usize::from(guest.slot())) {
            e.deferred = defer;
        }
    }

    /// Completes the outstanding flush of `guest`.
    pub fn complete_flush(&mut self, guest: GuestId) {
        if let Some(e) = self.epochs.get_mut(usize::from(guest.slot())) {
            e.flushed = e.current;
        }
    }

    /// Tests: `guest`'s IOTLB invalidations complete only at
    /// [`MemTable::complete_invalidations`] (as TDX's wait for TDH.IQ.INV.PROCESS).
    pub fn set_defer_invalidations(&mut self, guest: GuestId, defer: bool) {
        if let Some(e) = self.epochs.get_mut(usize::from(guest.slot())) {
            e.invalidations_deferred = defer;
        }
    }

    /// Completes every requested IOTLB invalidation of `guest`'s contexts.
    pub fn complete_invalidations(&mut self, guest: GuestId) {
        self.complete_where(|d| d.guest == guest);
    }

    /// Completes the requested IOTLB invalidation of `guest`'s context of `iface` only.
    pub fn complete_invalidation(&mut self, guest: GuestId, iface: InterfaceId) {
        self.complete_where(|d| d.guest == guest && d.iface == iface);
    }

    /// Every context `pick` takes whose invalidation was requested: complete.
    fn complete_where(&mut self, pick: impl Fn(&DmaEntry) -> bool) {
        for d in self.dmas.iter_mut().filter(|d| pick(d)) {
            if d.state == DmaState::Invalidating {
                d.state = DmaState::Invalidated;
            }
        }
    }

    /// Every trusted DMA context (in no particular order).
    pub fn dma_contexts(&self) -> &[DmaEntry] {
        &self.dmas
    }

    /// `guest`'s context of `iface` (`NoDmaContext`: none, or another guest's).
    fn dma_entry(
        &mut self,
        guest: GuestId,
        iface: InterfaceId,
    ) -> Result<&mut DmaEntry, TableError> {
        self.dmas
            .iter_mut()
            .find(|d| d.iface == iface && d.guest == guest)
            .ok_or(TableError::NoDmaContext)
    }

    /// Every leaf, in insertion order.
    pub fn leaves(&self) -> &[Leaf] {
        &self.leaves
    }

    /// The index of the blocked, flushed leaf of `guest` at exactly `gpa` of `size`: what a
    /// removal checks and then removes.
    fn removable(&self, guest: GuestId, gpa: Gpa, size: PageSize) -> Result<usize, TableError> {
        let flushed = self.epoch(guest)?.flushed;
        let i = self.position(guest, gpa, size)?;
        match self.leaves.get(i).map(|l| l.state) {
            Some(LeafState::Blocked { epoch }) if flushed > epoch => Ok(i),
            Some(LeafState::Blocked { .. }) => Err(TableError::TlbNotFlushed),
            Some(LeafState::Mapped) => Err(TableError::NotBlocked),
            None => Err(TableError::NotMapped),
        }
    }

    fn position(&self, guest: GuestId, gpa: Gpa, size: PageSize) -> Result<usize, TableError> {
        let i = self
            .leaves
            .iter()
            .position(|l| {
                l.guest == guest && spans_overlap(l.gpa.as_u64(), l.size.bytes(), gpa.as_u64(), 1)
            })
            .ok_or(TableError::NotMapped)?;
        match self.leaves.get(i) {
            Some(l) if l.gpa == gpa && l.size == size => Ok(i),
            Some(_) => Err(TableError::SizeMismatch),
            None => Err(TableError::NotMapped),
        }
    }

    fn epoch(&self, guest: GuestId) -> Result<GuestEpoch, TableError> {
        self.epochs
            .get(usize::from(guest.slot()))
            .copied()
            .ok_or(TableError::UnknownGuest)
    }
}

impl<const N: usize, const AT_BIND: bool> SecureTable for MemTable<N, AT_BIND> {
    /// The core's own rule: the owner accepts before START.
    const DMA_ACCEPT_BEFORE_START: bool = true;

    const DMA_CONTEXT_AT_BIND: bool = AT_BIND;

    fn dma_create(&mut self, guest: GuestId, iface: InterfaceId) -> Result<(), TableError> {
        #[cfg(test)]
        if let Some(refusal) = self.refuse_create {
            return Err(refusal);
        }
        if self.dmas.iter().any(|d| d.iface == iface) {
            return Err(TableError::DmaContextExists);
        }
        let entry = DmaEntry {
            guest,
            iface,
            state: DmaState::Pending,
        };
        self.dmas.push(entry).map_err(|_| TableError::OutOfFrames)
    }

    fn dma_accept(&mut self, guest: GuestId, iface: InterfaceId) -> Result<(), TableError> {
        let d = self.dma_entry(guest, iface)?;
        match d.state {
            DmaState::Pending | DmaState::Active => {
                d.state = DmaState::Active;
                Ok(())
            }
            _ => Err(TableError::Inconsistent),
        }
    }

    fn dma_block(&mut self, guest: GuestId, iface: InterfaceId) -> Result<(), TableError> {
        #[cfg(test)]
        if let Some(refusal) = self.refuse_block {
            return Err(refusal);
        }
        let d = self.dma_entry(guest, iface)?;
        if matches!(d.state, DmaState::Pending | DmaState::Active) {
            d.state = DmaState::Blocked;
        }
        Ok(())
    }

    fn dma_invalidate(&mut self, guest: GuestId, iface: InterfaceId) -> Result<bool, TableError> {
        #[cfg(test)]
        if let Some(refusal) = self.refuse_invalidation {
            return Err(refusal);
        }
        let deferred = self
            .epochs
            .get(usize::from(guest.slot()))
            .is_some_and(|e| e.invalidations_deferred);
        let d = self.dma_entry(guest, iface)?;
        match d.state {
            DmaState::Pending | DmaState::Active => Err(TableError::DmaNotBlocked),
            DmaState::Blocked if deferred => {
                d.state = DmaState::Invalidating;
                Ok(false)
            }
            DmaState::Blocked => {
                d.state = DmaState::Invalidated;
                Ok(true)
            }
            DmaState::Invalidating => Ok(false),
            DmaState::Invalidated => Ok(true),
        }
    }

    fn dma_remove(&mut self, guest: GuestId, iface: InterfaceId) -> Result<(), TableError> {
        let at = self
            .dmas
            .iter()
            .position(|d| d.iface == iface && d.guest == guest)
            .ok_or(TableError::NoDmaContext)?;
        match self.dmas.get(at).map(|d| d.state) {
            Some(DmaState::Invalidated) => {
                self.dmas.swap_remove(at);
                Ok(())
            }
            Some(DmaState::Pending | DmaState::Active) => Err(TableError::DmaNotBlocked),
            Some(DmaState::Blocked | DmaState::Invalidating) => {
                Err(TableError::InvalidationPending)
            }
            None => Err(TableError::NoDmaContext),
        }
    }

    /// Tests: the provided search, `Broken` at the leaf [`MemTable::break_at`] names.
    #[cfg(test)]
    fn find_leaves(
        &self,
        within: MmioRange,
        from: Hpa,
        _rest: Option<crate::secure_table::PageRest>,
        max: u32,
        work: &mut u32,
    ) -> crate::secure_table::Found {
        use crate::secure_table::Found;
        if *work == 0 || max == 0 {
            return Found::Paused { resume: from };
        }
        *work = work.saturating_sub(1);
        match self.next_leaf(within, from) {
            Some(first) if Some(first.hpa) == self.broken_at => Found::Broken,
            Some(first) => Found::Run {
                first,
                count: 1,
                next: first.hpa.checked_add(first.size.bytes()),
                rest: None,
            },
            None => Found::End,
        }
    }

    fn map(
        &mut self,
        guest: GuestId,
        gpa: Gpa,
        hpa: Hpa,
        size: PageSize,
    ) -> Result<(), TableError> {
        self.check_map(guest, gpa, hpa, size)?;
        self.leaves
            .push(Leaf {
                guest,
                gpa,
                hpa,
                size,
                state: LeafState::Mapped,
            })
            .map_err(|_| TableError::OutOfFrames)
    }

    fn check_map(
        &self,
        guest: GuestId,
        gpa: Gpa,
        hpa: Hpa,
        size: PageSize,
    ) -> Result<(), TableError> {
        self.epoch(guest)?;
        if !gpa.is_aligned(size) || !hpa.is_aligned(size) {
            return Err(TableError::Misaligned);
        }
        let bytes = size.bytes();
        if self.leaves.iter().any(|l| {
            l.guest == guest && spans_overlap(l.gpa.as_u64(), l.size.bytes(), gpa.as_u64(), bytes)
        }) {
            return Err(TableError::GpaMapped);
        }
        if self
            .leaves
            .iter()
            .any(|l| spans_overlap(l.hpa.as_u64(), l.size.bytes(), hpa.as_u64(), bytes))
        {
            return Err(TableError::HpaMapped);
        }
        if self.leaves.is_full() {
            return Err(TableError::OutOfFrames);
        }
        Ok(())
    }

    fn check_block(&self, guest: GuestId, gpa: Gpa, size: PageSize) -> Result<(), TableError> {
        self.epoch(guest)?;
        self.position(guest, gpa, size).map(drop)
    }

    fn check_remove(&self, guest: GuestId, gpa: Gpa, size: PageSize) -> Result<(), TableError> {
        self.removable(guest, gpa, size).map(drop)
    }

    /// The provided check of every page, and of the room left: page `i` takes the array's
    /// `i`-th free entry, so the first page past it is `OutOfFrames`, as mapping page by page
    /// would find it.
    fn map_range(&mut self, guest: GuestId, run: Run) -> Result<(), TableError> {
        let size = run.size;
        let room = N.saturating_sub(self.leaves.len());
        let mut i = 0usize;
        run.for_each_page(|g, h| {
            self.check_map(guest, g, h, size)?;
            if i >= room {
                return Err(TableError::OutOfFrames);
            }
            i = i.saturating_add(1);
            Ok(())
        })?;
        run.for_each_page(|g, h| self.map(guest, g, h, size))
    }

    fn block(&mut self, guest: GuestId, gpa: Gpa, size: PageSize) -> Result<(), TableError> {
        let epoch = self.epoch(guest)?.current;
        let i = self.position(guest, gpa, size)?;
        let leaf = self.leaves.get_mut(i).ok_or(TableError::NotMapped)?;
        if leaf.state == LeafState::Mapped {
            leaf.state = LeafState::Blocked { epoch };
        }
        Ok(())
    }

    fn track(&mut self, guest: GuestId) -> Result<Completion, TableError> {
        #[cfg(test)]
        if let Some(refusal) = self.refuse_track {
            return Err(refusal);
        }
        let e = self
            .epochs
            .get_mut(usize::from(guest.slot()))
            .ok_or(TableError::UnknownGuest)?;
        if e.flushed < e.current {
            return Err(TableError::TlbNotFlushed);
        }
        e.current = e.current.checked_add(1).ok_or(TableError::OutOfFrames)?;
        if !e.deferred {
            e.flushed = e.current;
        }
        Ok(Completion::Done)
    }

    fn remove(&mut self, guest: GuestId, gpa: Gpa, size: PageSize) -> Result<Hpa, TableError> {
        let i = self.removable(guest, gpa, size)?;
        let leaf = self.leaves.swap_remove(i);
        Ok(leaf.hpa)
    }

    fn leaf(&self, guest: GuestId, gpa: Gpa) -> Option<Leaf> {
        self.leaves
            .iter()
            .find(|l| {
                l.guest == guest && spans_overlap(l.gpa.as_u64(), l.size.bytes(), gpa.as_u64(), 1)
            })
            .copied()
    }

    fn next_leaf(&self, within: MmioRange, from: Hpa) -> Option<Leaf> {
        self.leaves
            .iter()
            .filter(|l| l.hpa >= from && within.contains_page(l.hpa, l.size))
            .min_by_key(|l| l.hpa)
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: GuestId = GuestId::from_slot(0);

    fn gpa(v: u64) -> Gpa {
        Gpa::try_new(v).unwrap_or_else(|e| panic!("{e:?}"))
    }
    fn hpa(v: u64) -> Hpa {
        Hpa::try_new(v).unwrap_or_else(|e| panic!("{e:?}"))
    }

    #[test]
    fn entry_rules() {
        let mut t = MemTable::<8>::new();
        assert_eq!(
            t.map(G, gpa(0x20_0000), hpa(0x4000_0000), PageSize::Size2M),
            Ok(())
        );
        // A 4K leaf inside the 2M one, on either side, is refused.
        assert_eq!(
            t.map(G, gpa(0x20_1000), hpa(0x9000), PageSize::Size4K),
            Err(TableError::GpaMapped)
        );
        assert_eq!(
            t.map(G, gpa(0x1000), hpa(0x4000_1000), PageSize::Size4K),
            Err(TableError::HpaMapped)
        );
        assert_eq!(
            t.map(G, gpa(0x1000), hpa(0x4000_1000), PageSize::Size2M),
            Err(TableError::Misaligned)
        );
        assert_eq!(
            t.remove(G, gpa(0x20_0000), PageSize::Size2M),
            Err(TableError::NotBlocked)
        );
        assert_eq!(
            t.block(G, gpa(0x20_0000), PageSize::Size4K),
            Err(TableError::SizeMismatch)
        );
        assert_eq!(t.block(G, gpa(0x20_0000), PageSize::Size2M), Ok(()));
        assert_eq!(
            t.remove(G, gpa(0x20_0000), PageSize::Size2M),
            Err(TableError::TlbNotFlushed)
        );
        t.set_defer_flush(G, true);
        // Another guest's flushes are not held.
        let other = GuestId::from_slot(7);
        assert_eq!(t.track(other), Ok(Completion::Done));
        assert_eq!(t.epochs[7].flushed, t.epochs[7].current);
        assert_eq!(t.track(G), Ok(Completion::Done));
        assert_eq!(
            t.remove(G, gpa(0x20_0000), PageSize::Size2M),
            Err(TableError::TlbNotFlushed)
        );
        t.complete_flush(G);
        assert_eq!(
            t.remove(G, gpa(0x20_0000), PageSize::Size2M),
            Ok(hpa(0x4000_0000))
        );
        assert_eq!(t.leaf(G, gpa(0x20_0000)), None);
        assert_eq!(
            t.track(GuestId::from_slot(999)),
            Err(TableError::UnknownGuest)
        );
    }

    #[test]
    fn full_table_is_a_status() {
        let mut t = MemTable::<1>::new();
        assert_eq!(t.map(G, gpa(0), hpa(0x1000), PageSize::Size4K), Ok(()));
        let before = t.clone();
        assert_eq!(
            t.map(G, gpa(0x1000), hpa(0x2000), PageSize::Size4K),
            Err(TableError::OutOfFrames)
        );
        assert_eq!(t, before);
    }

    /// The provided range operations: a run is its pages in order or nothing; the table's
    /// room is checked with the pages (the first page past it is `OutOfFrames`).
    #[test]
    fn range_operations_are_their_pages_or_nothing() {
        let k = PageSize::Size4K;
        let mut t = MemTable::<8>::new();
        assert_eq!(t.map(G, gpa(0x5000), hpa(0x10_5000), k), Ok(()));
        let before = t.clone();
        // Page 3 of the run is taken: nothing of pages 0..3 is mapped.
        assert_eq!(
            t.map_range(G, Run::new(gpa(0x2000), hpa(0x10_2000), k, 5)),
            Err(TableError::GpaMapped)
        );
        assert_eq!(t, before);
        // Eight entries, one used: the eighth page of a run is past the room.
        assert_eq!(
            t.map_range(G, Run::new(gpa(0x10_0000), hpa(0x20_0000), k, 8)),
            Err(TableError::OutOfFrames)
        );
        assert_eq!(t, before);
        assert_eq!(
            t.map_range(G, Run::new(gpa(0x10_0000), hpa(0x20_0000), k, 7)),
            Ok(())
        );
        // Block: pages 3..=6 are mapped, page 7 is not: nothing of the run is blocked.
        let mapped = t.clone();
        assert_eq!(
            t.block_range(G, Run::new(gpa(0x10_3000), hpa(0x20_3000), k, 5)),
            Err(TableError::NotMapped)
        );
        assert_eq!(t, mapped);
        // A run that translates elsewhere than the table says: refused, nothing blocked.
        assert_eq!(
            t.block_range(G, Run::new(gpa(0x10_0000), hpa(0x30_0000), k, 3)),
            Err(TableError::NotMapped)
        );
        assert_eq!(t, mapped);
        assert_eq!(
            t.block_range(G, Run::new(gpa(0x10_0000), hpa(0x20_0000), k, 3)),
            Ok(3)
        );
        assert_ne!(t, mapped);
        // Remove: pages 3.. are not blocked, nothing goes.
        assert_eq!(t.track(G), Ok(Completion::Done));
        let tracked = t.clone();
        assert_eq!(
            t.remove_range(G, Run::new(gpa(0x10_0000), hpa(0x20_0000), k, 4)),
            Err(TableError::NotBlocked)
        );
        assert_eq!(t, tracked);
        assert_eq!(
            t.remove_range(G, Run::new(gpa(0x10_0000), hpa(0x20_0000), k, 3)),
            Ok(3)
        );
        assert_eq!(t.leaves().len(), mapped.leaves().len() - 3);
    }

    #[test]
    fn next_leaf_walks_by_host_address() {
        let mut t = MemTable::<8>::new();
        let r = MmioRange::from_raw(0x10_0000, 16).unwrap_or_else(|e| panic!("{e:?}"));
        for (g, h) in [
            (0x3000, 0x10_3000),
            (0x1000, 0x10_1000),
            (0x9000, 0x20_0000),
        ] {
            assert_eq!(t.map(G, gpa(g), hpa(h), PageSize::Size4K), Ok(()));
        }
        assert_eq!(t.next_leaf(r, hpa(0)).map(|l| l.hpa), Some(hpa(0x10_1000)));
        assert_eq!(
            t.next_leaf(r, hpa(0x10_2000)).map(|l| l.hpa),
            Some(hpa(0x10_3000))
        );
        assert_eq!(t.next_leaf(r, hpa(0x10_4000)), None);
    }
}
