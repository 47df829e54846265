//! Which bound TDI owns which host MMIO: the one table that says a page is off limits to the
//! host. It holds every range of a bound TDI's report: the private ones, which the TDI owns and
//! the guest may map, and the shared ones (IS_NON_TEE_MEM), kept so that no other TDI can claim
//! a page under them. Ranges in it never overlap.
//!
//! The ranges are kept grouped by TDI, each TDI's in the order it claimed them (the order of
//! [`Ownership::range_of`], which an unbind's cursor walks), with an index of their positions
//! in host-address order beside them (ranges never overlap, so their ends are sorted too and
//! one binary search finds the range at an address). Fixed capacity, no heap: a lookup by
//! address costs a binary search, one by TDI a binary search and a step per range of that TDI;
//! a claim or release moves entries of the two arrays and renumbers the 2-byte positions.

use crate::addr::Hpa;
use crate::capacity::{MAX_OWNED_RANGES, MAX_RANGES_PER_TDI};
use crate::ids::{GuestId, TdiId};
use crate::mmio::{MmioRange, any_overlap};
use crate::page::PageSize;
use crate::status::Error;
use crate::transport::ReportedRange;

/// A position in [`Ownership`]'s TDI-ordered array.
type Pos = u16;
// Every position, and every position plus a claim's ranges, fits.
const _: () = assert!(MAX_OWNED_RANGES + MAX_RANGES_PER_TDI <= Pos::MAX as usize);

/// One owned range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OwnedRange {
    /// The host pages.
    pub range: MmioRange,
    /// The bound TDI that reported them.
    pub tdi: TdiId,
    /// The guest the TDI is bound to.
    pub guest: GuestId,
    /// Private (TEE) memory the guest may map; `false` for a shared range of the report.
    pub private: bool,
}

/// A claim built aside by [`Ownership::prepare_claim`], for [`Ownership::commit`].
#[derive(Debug)]
#[must_use = "a prepared claim changes nothing until it is committed"]
pub(crate) struct PreparedClaim {
    fresh: heapless::Vec<OwnedRange, MAX_RANGES_PER_TDI>,
    index: heapless::Vec<Pos, MAX_OWNED_RANGES>,
    /// Where the new ranges go in `by_tdi`.
    at: usize,
    /// The table's length when it was built.
    len: usize,
}

/// Ranges owned by bound TDIs, indexed by TDI and by host address. Both arrays follow from
/// the ranges and each TDI's claim order, so two tables holding the same are equal.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ownership {
    /// Every range, by TDI (ascending), each TDI's in claim order.
    by_tdi: heapless::Vec<OwnedRange, MAX_OWNED_RANGES>,
    /// The positions in `by_tdi` of every range, by base address.
    by_hpa: heapless::Vec<Pos, MAX_OWNED_RANGES>,
}

impl Ownership {
    /// An empty table.
    pub const fn new() -> Self {
        Self {
            by_tdi: heapless::Vec::new(),
            by_hpa: heapless::Vec::new(),
        }
    }

    fn at(&self, pos: Pos) -> Option<&OwnedRange> {
        self.by_tdi.get(usize::from(pos))
    }

    /// Every owned range, by host address.
    pub fn iter(&self) -> impl Iterator<Item = &OwnedRange> {
        self.by_hpa.iter().filter_map(|&p| self.at(p))
    }

    /// The ranges from the first one that ends above `hpa`, by host address: the one holding
    /// `hpa`, if any, comes first.
    fn ending_above(&self, hpa: u64) -> impl Iterator<Item = &OwnedRange> {
        let first = self
            .by_hpa
            .partition_point(|&p| self.at(p).is_some_and(|o| o.range.end() <= hpa));
        self.by_hpa
            .get(first..)
            .unwrap_or_default()
            .iter()
            .filter_map(|&p| self.at(p))
    }

    /// Where the ranges of `tdi` lie in `by_tdi`.
    fn group(&self, tdi: TdiId) -> core::ops::Range<usize> {
        let first = self.by_tdi.partition_point(|o| o.tdi < tdi);
        let end = self.by_tdi.partition_point(|o| o.tdi <= tdi);
        first..end.max(first)
    }

    /// The ranges of `tdi`, in the order it claimed them.
    fn of(&self, tdi: TdiId) -> &[OwnedRange] {
        self.by_tdi.get(self.group(tdi)).unwrap_or_default()
    }

    /// The ranges that share a byte with `range`, by host address.
    fn touching(&self, range: &MmioRange) -> impl Iterator<Item = &OwnedRange> + use<'_> {
        let end = range.end();
        self.ending_above(range.base().as_u64())
            .take_while(move |o| o.range.base().as_u64() < end)
    }

    /// The range of a bound TDI's report, private or shared, that shares a byte with `range`
    /// (the lowest, if several do).
    pub fn overlapping(&self, range: &MmioRange) -> Option<&OwnedRange> {
        self.touching(range).next()
    }

    /// The private range of a bound TDI that shares a byte with `range`: what the host may not
    /// zap (shared ranges, such as an MSI-X table, stay the host's to manage). The lowest, if
    /// several do.
    pub fn overlapping_private(&self, range: &MmioRange) -> Option<&OwnedRange> {
        self.touching(range).find(|o| o.private)
    }

    /// A range of a TDI other than `tdi`, private or shared, that shares a byte with `range`
    /// (the lowest, if several do): a page another bound TDI holds.
    pub fn overlapping_other(&self, tdi: TdiId, range: &MmioRange) -> Option<&OwnedRange> {
        self.touching(range).find(|o| o.tdi != tdi)
    }

    /// Whether a report's `ranges` could be claimed: each fits, none overlaps another or any
    /// range (private or shared) of a bound TDI.
    pub fn check_claim(&self, ranges: &[ReportedRange]) -> Result<(), Error> {
        if ranges.len() > MAX_RANGES_PER_TDI {
            return Err(Error::TooManyRanges);
        }
        let plain: heapless::Vec<MmioRange, MAX_RANGES_PER_TDI> =
            ranges.iter().map(|r| r.range).collect();
        if any_overlap(&plain) {
            return Err(Error::RangesOverlap);
        }
        if plain.iter().any(|r| self.overlapping(r).is_some()) {
            return Err(Error::TdiBound);
        }
        if ranges.len() > MAX_OWNED_RANGES.saturating_sub(self.by_tdi.len()) {
            return Err(Error::OwnershipTableFull);
        }
        Ok(())
    }

    /// Claims a report's `ranges` for `tdi` bound to `guest`: all of them or, on error, none.
    /// They follow whatever `tdi` already holds in its claim order.
    pub fn claim(
        &mut self,
        tdi: TdiId,
        guest: GuestId,
        ranges: &[ReportedRange],
    ) -> Result<(), Error> {
        let prepared = self.prepare_claim(tdi, guest, ranges)?;
        self.commit(prepared)
    }

    /// Every step of [`Ownership::claim`] that can fail, reading only: the new ranges and the
    /// whole new address index built aside, for [`Ownership::commit`] on this same, unchanged
    /// table (a caller may do other fallible work in between and drop the claim).
    pub(crate) fn prepare_claim(
        &self,
        tdi: TdiId,
        guest: GuestId,
        ranges: &[ReportedRange],
    ) -> Result<PreparedClaim, Error> {
        self.check_claim(ranges)?;
        let len = self.by_tdi.len();
        let at = self.group(tdi).end;
        if self.by_hpa.len() != len || at > len {
            return Err(Error::Inconsistent);
        }
        let (Ok(first), Ok(added)) = (Pos::try_from(at), Pos::try_from(ranges.len())) else {
            return Err(Error::OwnershipTableFull);
        };
        let mut fresh: heapless::Vec<OwnedRange, MAX_RANGES_PER_TDI> = heapless::Vec::new();
        for r in ranges {
            let entry = OwnedRange {
                range: r.range,
                tdi,
                guest,
                private: r.private,
            };
            fresh.push(entry).map_err(|_| Error::TooManyRanges)?;
        }
        // The new ranges' positions by base, merged with the others' (renumbered past the
        // insertion point): the address index as it will be.
        let mut new_pos: heapless::Vec<(Hpa, Pos), MAX_RANGES_PER_TDI> = heapless::Vec::new();
        for (pos, o) in (first..).zip(&fresh) {
            new_pos
                .push((o.range.base(), pos))
                .map_err(|_| Error::TooManyRanges)?;
        }
        new_pos.sort_unstable();
        let mut index: heapless::Vec<Pos, MAX_OWNED_RANGES> = heapless::Vec::new();
        let mut new_iter = new_pos.iter().peekable();
        for &p in &self.by_hpa {
            let base = self.at(p).ok_or(Error::Inconsistent)?.range.base();
            while let Some(&&(b, q)) = new_iter.peek() {
                if b >= base {
                    break;
                }
                index.push(q).map_err(|_| Error::Inconsistent)?;
                new_iter.next();
            }
            let p = if p >= first {
                p.checked_add(added).ok_or(Error::Inconsistent)?
            } else {
                p
            };
            index.push(p).map_err(|_| Error::Inconsistent)?;
        }
        for &(_, q) in new_iter {
            index.push(q).map_err(|_| Error::Inconsistent)?;
        }
        Ok(PreparedClaim {
            fresh,
            index,
            at,
            len,
        })
    }

    /// Applies a claim [`Ownership::prepare_claim`] built from this table as it still is: one
    /// all-or-nothing append (room was checked), the appended ranges rotated into place after
    /// `tdi`'s own, the index replaced. `Inconsistent`, nothing changed, for a claim built
    /// from another state of the table (never, used as documented).
    pub(crate) fn commit(&mut self, p: PreparedClaim) -> Result<(), Error> {
        if self.by_tdi.len() != p.len || self.by_hpa.len() != p.len || p.at > p.len {
            return Err(Error::Inconsistent);
        }
        self.by_tdi
            .extend_from_slice(&p.fresh)
            .map_err(|_| Error::Inconsistent)?;
        if let Some(tail) = self.by_tdi.get_mut(p.at..) {
            tail.rotate_right(p.fresh.len());
        }
        self.by_hpa = p.index;
        Ok(())
    }

    /// Drops the address index's last position: the drift a test must show is caught (the
    /// two arrays then disagree in length).
    #[cfg(test)]
    pub(crate) fn drift_index_for_test(&mut self) {
        self.by_hpa.pop();
    }

    /// The private ranges of `tdi`: the pages it owns, in claim order.
    pub fn private_of(&self, tdi: TdiId) -> impl Iterator<Item = MmioRange> + '_ {
        self.of(tdi).iter().filter(|o| o.private).map(|o| o.range)
    }

    /// Releases every range of `tdi` (none held is no change). `Inconsistent`, with nothing
    /// changed, if the two arrays disagree in length or a position does not fit (neither can
    /// happen: every change keeps them equal, and a const assert bounds the positions).
    pub fn release(&mut self, tdi: TdiId) -> Result<(), Error> {
        let group = self.group(tdi);
        let (Ok(first), Ok(end)) = (Pos::try_from(group.start), Pos::try_from(group.end)) else {
            return Err(Error::Inconsistent);
        };
        if self.by_hpa.len() != self.by_tdi.len() {
            return Err(Error::Inconsistent);
        }
        if first >= end {
            return Ok(());
        }
        let gone = end.saturating_sub(first);
        self.by_hpa.retain(|p| !(first..end).contains(p));
        for p in self.by_hpa.iter_mut().filter(|p| **p >= end) {
            *p = p.saturating_sub(gone);
        }
        self.by_tdi.drain(group);
        Ok(())
    }

    /// The `index`-th private range of `tdi`, in claim order: it stays where it is while other
    /// TDIs claim and release.
    pub fn range_of(&self, tdi: TdiId, index: u8) -> Option<MmioRange> {
        self.private_of(tdi).nth(usize::from(index))
    }

    /// The private entry whose range holds the whole page of `size` at `hpa`.
    pub fn holding(&self, hpa: Hpa, size: PageSize) -> Option<&OwnedRange> {
        self.ending_above(hpa.as_u64())
            .next()
            .filter(|o| o.private && o.range.contains_page(hpa, size))
    }

    /// Whether `tdi` owns anything.
    pub fn owns_any(&self, tdi: TdiId) -> bool {
        !self.group(tdi).is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(base: u64, pages: u64) -> ReportedRange {
        ReportedRange {
            range: MmioRange::from_raw(base, pages).unwrap_or_else(|e| panic!("{e:?}")),
            private: true,
        }
    }
    fn hpa(v: u64) -> Hpa {
        Hpa::try_new(v).unwrap_or_else(|e| panic!("{e:?}"))
    }
    const T1: TdiId = TdiId::from_slot(1);
    const T2: TdiId = TdiId::from_slot(2);
    const G: GuestId = GuestId::from_slot(0);

    #[test]
    fn claims_are_all_or_nothing() {
        let mut o = Ownership::new();
        assert_eq!(o.claim(T1, G, &[r(0x10_0000, 4), r(0x20_0000, 4)]), Ok(()));
        let before = o.clone();
        assert_eq!(
            o.claim(T2, G, &[r(0x30_0000, 1), r(0x10_3000, 1)]),
            Err(Error::TdiBound)
        );
        assert_eq!(
            o.claim(T2, G, &[r(0x30_0000, 2), r(0x30_1000, 1)]),
            Err(Error::RangesOverlap)
        );
        let many = [r(0x40_0000, 1); MAX_RANGES_PER_TDI + 1];
        assert_eq!(o.claim(T2, G, &many), Err(Error::TooManyRanges));
        assert_eq!(o, before);
        assert_eq!(o.range_of(T1, 1), Some(r(0x20_0000, 4).range));
        assert_eq!(o.range_of(T1, 2), None);
        assert_eq!(o.release(T1), Ok(()));
        assert!(!o.owns_any(T1));
        // Releasing what is not held changes nothing.
        let none = o.clone();
        assert_eq!(o.release(T1), Ok(()));
        assert_eq!(o, none);
        assert_eq!(o.claim(T2, G, &[r(0x10_3000, 1)]), Ok(()));
    }

    #[test]
    fn shared_ranges_are_held_but_never_owned() {
        let mut o = Ownership::new();
        let shared = ReportedRange {
            private: false,
            ..r(0x50_0000, 2)
        };
        assert_eq!(o.claim(T1, G, &[r(0x10_0000, 4), shared]), Ok(()));
        // No other TDI may claim a page under the shared range, in either role ...
        assert_eq!(o.claim(T2, G, &[r(0x50_1000, 1)]), Err(Error::TdiBound));
        // ... but it is not T1's to map, nor walked by its unbind.
        assert!(o.holding(hpa(0x50_0000), PageSize::Size4K).is_none());
        assert_eq!(o.private_of(T1).count(), 1);
        assert_eq!(o.range_of(T1, 1), None);
        assert_eq!(o.release(T1), Ok(()));
        assert_eq!(o.claim(T2, G, &[r(0x50_1000, 1)]), Ok(()));
    }

    /// Arrays out of step (no change makes them so: forced here) are `Inconsistent` for a
    /// claim and a release alike, before anything changes.
    #[test]
    fn out_of_step_arrays_change_nothing() {
        let mut o = Ownership::new();
        assert_eq!(o.claim(T1, G, &[r(0x10_0000, 4), r(0x20_0000, 4)]), Ok(()));
        assert_eq!(o.by_hpa.pop(), Some(1));
        let broken = o.clone();
        assert_eq!(o.claim(T2, G, &[r(0x30_0000, 1)]), Err(Error::Inconsistent));
        assert_eq!(o, broken);
        assert_eq!(o.release(T1), Err(Error::Inconsistent));
        assert_eq!(o, broken);
    }

    /// A claim between and around others' ranges, by a TDI before and after them in order:
    /// the address index is the one a sort of every range's base gives.
    #[test]
    fn claims_merge_into_the_address_index() {
        let mut o = Ownership::new();
        assert_eq!(o.claim(T2, G, &[r(0x40_0000, 1), r(0x10_0000, 1)]), Ok(()));
        assert_eq!(o.claim(T1, G, &[r(0x50_0000, 1), r(0x20_0000, 1)]), Ok(()));
        assert_eq!(o.claim(T1, G, &[r(0x05_0000, 1)]), Ok(()));
        let t3 = TdiId::from_slot(3);
        assert_eq!(o.claim(t3, G, &[r(0x30_0000, 1), r(0x60_0000, 1)]), Ok(()));
        let bases: Vec<u64> = o.iter().map(|x| x.range.base().as_u64()).collect();
        assert_eq!(
            bases,
            [
                0x05_0000, 0x10_0000, 0x20_0000, 0x30_0000, 0x40_0000, 0x50_0000, 0x60_0000
            ]
        );
        let order: Vec<u64> = o.private_of(T1).map(|x| x.base().as_u64()).collect();
        assert_eq!(order, [0x50_0000, 0x20_0000, 0x05_0000]);
        assert_eq!(o.by_hpa.len(), o.by_tdi.len());
    }

    #[test]
    fn full_table_is_a_status() {
        let mut o = Ownership::new();
        let mut base = 0x1000_0000;
        let mut tdi = 0;
        while o.iter().count() + MAX_RANGES_PER_TDI <= MAX_OWNED_RANGES {
            let ranges: [ReportedRange; MAX_RANGES_PER_TDI] =
                core::array::from_fn(|i| r(base + 0x1000 * i as u64, 1));
            assert_eq!(o.claim(TdiId::from_slot(tdi), G, &ranges), Ok(()));
            base += 0x10_0000;
            tdi += 1;
        }
        let before = o.clone();
        let more: [ReportedRange; MAX_RANGES_PER_TDI] =
            core::array::from_fn(|i| r(base + 0x1000 * i as u64, 1));
        let room = MAX_OWNED_RANGES - o.iter().count();
        assert!(room < MAX_RANGES_PER_TDI);
        assert_eq!(
            o.claim(TdiId::from_slot(tdi), G, &more),
            Err(Error::OwnershipTableFull)
        );
        assert_eq!(o, before);
    }
}
