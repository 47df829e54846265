//! Which bound TDI owns which host MMIO: the one table that says a page is off limits to the
//! host. It holds every range of a bound TDI's report: the private ones, which the TDI owns and
//! the guest may map, and the shared ones (IS_NON_TEE_MEM), kept so that no other TDI can claim
//! a page under them. Ranges in it never overlap.

use crate::addr::Hpa;
use crate::capacity::{MAX_OWNED_RANGES, MAX_RANGES_PER_TDI};
use crate::ids::{GuestId, TdiId};
use crate::mmio::{MmioRange, any_overlap};
use crate::page::PageSize;
use crate::status::Error;
use crate::transport::ReportedRange;

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

/// Ranges owned by bound TDIs, in the order they were claimed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ownership {
    entries: heapless::Vec<OwnedRange, MAX_OWNED_RANGES>,
}

impl Ownership {
    /// An empty table.
    pub const fn new() -> Self {
        Self {
            entries: heapless::Vec::new(),
        }
    }

    /// Every owned range.
    pub fn iter(&self) -> impl Iterator<Item = &OwnedRange> {
        self.entries.iter()
    }

    /// The range of a bound TDI's report, private or shared, that shares a byte with `range`.
    pub fn overlapping(&self, range: &MmioRange) -> Option<&OwnedRange> {
        self.entries.iter().find(|o| o.range.overlaps(range))
    }

    /// The private range of a bound TDI that shares a byte with `range`: what the host may not
    /// zap (shared ranges, such as an MSI-X table, stay the host's to manage).
    pub fn overlapping_private(&self, range: &MmioRange) -> Option<&OwnedRange> {
        self.entries
            .iter()
            .find(|o| o.private && o.range.overlaps(range))
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
        if ranges.len() > self.entries.capacity().saturating_sub(self.entries.len()) {
            return Err(Error::OwnershipTableFull);
        }
        Ok(())
    }

    /// Claims a report's `ranges` for `tdi` bound to `guest`: all of them or, on error, none.
    pub fn claim(
        &mut self,
        tdi: TdiId,
        guest: GuestId,
        ranges: &[ReportedRange],
    ) -> Result<(), Error> {
        self.check_claim(ranges)?;
        for r in ranges {
            let entry = OwnedRange {
                range: r.range,
                tdi,
                guest,
                private: r.private,
            };
            self.entries
                .push(entry)
                .map_err(|_| Error::OwnershipTableFull)?;
        }
        Ok(())
    }

    /// The private ranges of `tdi`: the pages it owns.
    pub fn private_of(&self, tdi: TdiId) -> impl Iterator<Item = MmioRange> + '_ {
        self.entries
            .iter()
            .filter(move |o| o.tdi == tdi && o.private)
            .map(|o| o.range)
    }

    /// Releases every range of `tdi`.
    pub fn release(&mut self, tdi: TdiId) {
        self.entries.retain(|o| o.tdi != tdi);
    }

    /// The `index`-th private range of `tdi`.
    pub fn range_of(&self, tdi: TdiId, index: u8) -> Option<MmioRange> {
        self.private_of(tdi).nth(usize::from(index))
    }

    /// The private entry whose range holds the whole page of `size` at `hpa`.
    pub fn holding(&self, hpa: Hpa, size: PageSize) -> Option<&OwnedRange> {
        self.entries
            .iter()
            .find(|o| o.private && o.range.contains_page(hpa, size))
    }

    /// Whether `tdi` owns anything.
    pub fn owns_any(&self, tdi: TdiId) -> bool {
        self.entries.iter().any(|o| o.tdi == tdi)
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
        o.release(T1);
        assert!(!o.owns_any(T1));
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
        o.release(T1);
        assert_eq!(o.claim(T2, G, &[r(0x50_1000, 1)]), Ok(()));
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
