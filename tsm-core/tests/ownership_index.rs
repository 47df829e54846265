//! Property test: the indexed ownership table against a linear model (a list in claim order,
//! scanned whole for every question) over random claims, releases and queries: the same
//! answers, and a refused claim changes nothing.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use proptest::prelude::*;
use tsm_core::capacity::{MAX_OWNED_RANGES, MAX_RANGES_PER_TDI};
use tsm_core::mmio::any_overlap;
use tsm_core::ownership::{OwnedRange, Ownership};
use tsm_core::transport::ReportedRange;
use tsm_core::{Error, GuestId, Hpa, MmioRange, PageSize, TdiId};

/// The table as it was before it was indexed: every range in claim order, every question a
/// scan. Where several ranges answer, the indexed table documents the lowest address.
#[derive(Debug, Clone, Default)]
struct Linear(Vec<OwnedRange>);

impl Linear {
    fn lowest<'a>(it: impl Iterator<Item = &'a OwnedRange>) -> Option<&'a OwnedRange> {
        it.min_by_key(|o| o.range.base())
    }
    fn overlapping(&self, r: &MmioRange) -> Option<&OwnedRange> {
        Self::lowest(self.0.iter().filter(|o| o.range.overlaps(r)))
    }
    fn overlapping_private(&self, r: &MmioRange) -> Option<&OwnedRange> {
        Self::lowest(self.0.iter().filter(|o| o.private && o.range.overlaps(r)))
    }
    fn overlapping_other(&self, t: TdiId, r: &MmioRange) -> Option<&OwnedRange> {
        Self::lowest(self.0.iter().filter(|o| o.tdi != t && o.range.overlaps(r)))
    }
    fn check_claim(&self, ranges: &[ReportedRange]) -> Result<(), Error> {
        if ranges.len() > MAX_RANGES_PER_TDI {
            return Err(Error::TooManyRanges);
        }
        let plain: Vec<MmioRange> = ranges.iter().map(|r| r.range).collect();
        if any_overlap(&plain) {
            return Err(Error::RangesOverlap);
        }
        if plain.iter().any(|r| self.overlapping(r).is_some()) {
            return Err(Error::TdiBound);
        }
        if ranges.len() > MAX_OWNED_RANGES - self.0.len() {
            return Err(Error::OwnershipTableFull);
        }
        Ok(())
    }
    fn claim(&mut self, tdi: TdiId, guest: GuestId, ranges: &[ReportedRange]) -> Result<(), Error> {
        self.check_claim(ranges)?;
        self.0.extend(ranges.iter().map(|r| OwnedRange {
            range: r.range,
            tdi,
            guest,
            private: r.private,
        }));
        Ok(())
    }
    fn private_of(&self, t: TdiId) -> Vec<MmioRange> {
        self.0
            .iter()
            .filter(|o| o.tdi == t && o.private)
            .map(|o| o.range)
            .collect()
    }
    fn holding(&self, hpa: Hpa, size: PageSize) -> Option<&OwnedRange> {
        self.0
            .iter()
            .find(|o| o.private && o.range.contains_page(hpa, size))
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// Ranges as (first page, pages, private).
    Claim {
        tdi: u16,
        ranges: Vec<(u64, u64, bool)>,
    },
    Release {
        tdi: u16,
    },
    /// A query at (page, pages) of the small address space.
    Query {
        tdi: u16,
        page: u64,
        pages: u64,
    },
}

const TDIS: u16 = 8;
/// Pages in the address space the ranges fall in: crowded enough for overlaps, roomy enough
/// for the table to fill.
const SPACE: u64 = 2048;
const BASE: u64 = 0x1_0000_0000;

fn op() -> impl Strategy<Value = Op> {
    let range = (0..SPACE, 1..6u64, any::<bool>());
    prop_oneof![
        5 => (0..TDIS, prop::collection::vec(range, 0..=MAX_RANGES_PER_TDI + 1))
            .prop_map(|(tdi, ranges)| Op::Claim { tdi, ranges }),
        1 => (0..TDIS).prop_map(|tdi| Op::Release { tdi }),
        4 => (0..TDIS, 0..SPACE + 8, prop_oneof![3 => 1..8u64, 1 => 1..600u64])
            .prop_map(|(tdi, page, pages)| Op::Query { tdi, page, pages }),
    ]
}

fn mmio(page: u64, pages: u64) -> MmioRange {
    MmioRange::from_raw(BASE + page * 0x1000, pages).unwrap()
}

fn check_same(o: &Ownership, m: &Linear) -> Result<(), TestCaseError> {
    let mut sorted = m.0.clone();
    sorted.sort_by_key(|o| o.range.base());
    prop_assert_eq!(o.iter().copied().collect::<Vec<_>>(), sorted);
    for t in 0..TDIS {
        let t = TdiId::from_slot(t);
        let private = m.private_of(t);
        prop_assert_eq!(o.private_of(t).collect::<Vec<_>>(), private.clone());
        for i in 0..=private.len() + 1 {
            prop_assert_eq!(o.range_of(t, i as u8), private.get(i).copied());
        }
        prop_assert_eq!(o.owns_any(t), m.0.iter().any(|x| x.tdi == t));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn indexed_ownership_answers_like_a_linear_scan(ops in prop::collection::vec(op(), 1..160)) {
        let mut o = Ownership::new();
        let mut m = Linear::default();
        let g = GuestId::from_slot(0);
        for op in ops {
            match op {
                Op::Claim { tdi, ranges } => {
                    let t = TdiId::from_slot(tdi);
                    let ranges: Vec<ReportedRange> = ranges
                        .into_iter()
                        .map(|(p, n, private)| ReportedRange { range: mmio(p, n), private })
                        .collect();
                    prop_assert_eq!(o.check_claim(&ranges), m.check_claim(&ranges));
                    let before = o.clone();
                    let got = o.claim(t, g, &ranges);
                    prop_assert_eq!(got, m.claim(t, g, &ranges));
                    if got.is_err() {
                        prop_assert_eq!(&o, &before);
                    }
                }
                Op::Release { tdi } => {
                    let t = TdiId::from_slot(tdi);
                    assert_eq!(o.release(t), Ok(()));
                    m.0.retain(|x| x.tdi != t);
                }
                Op::Query { tdi, page, pages } => {
                    let t = TdiId::from_slot(tdi);
                    let r = mmio(page, pages);
                    prop_assert_eq!(o.overlapping(&r), m.overlapping(&r));
                    prop_assert_eq!(o.overlapping_private(&r), m.overlapping_private(&r));
                    prop_assert_eq!(o.overlapping_other(t, &r), m.overlapping_other(t, &r));
                    let hpa = r.base();
                    for size in [PageSize::Size4K, PageSize::Size2M] {
                        let at = Hpa::try_new(hpa.as_u64() & !size.offset_mask()).unwrap();
                        prop_assert_eq!(o.holding(at, size), m.holding(at, size));
                    }
                    let next = Hpa::try_new(hpa.as_u64() + 0x1000).unwrap();
                    prop_assert_eq!(o.holding(next, PageSize::Size4K), m.holding(next, PageSize::Size4K));
                }
            }
            check_same(&o, &m)?;
        }
    }
}

/// Fills the table to the brim with one-page ranges of many TDIs, then checks every TDI's
/// order and that the full table refuses with nothing changed.
#[test]
fn full_table_keeps_each_tdis_claim_order() {
    let mut o = Ownership::new();
    let mut m = Linear::default();
    let g = GuestId::from_slot(0);
    // Claims interleave TDIs and go down in address, so claim order and address order differ.
    let mut page = 4 * MAX_OWNED_RANGES as u64;
    let mut round = 0u16;
    while m.0.len() < MAX_OWNED_RANGES {
        let t = TdiId::from_slot(round % 7);
        let n = (MAX_OWNED_RANGES - m.0.len()).min(1 + usize::from(round % 5));
        let ranges: Vec<ReportedRange> = (0..n)
            .map(|i| {
                page -= 2;
                ReportedRange {
                    range: mmio(page, 1),
                    private: i % 3 != 1,
                }
            })
            .collect();
        assert_eq!(o.claim(t, g, &ranges), Ok(()));
        m.claim(t, g, &ranges).unwrap();
        round += 1;
    }
    check_same(&o, &m).unwrap();
    let before = o.clone();
    let one = [ReportedRange {
        range: mmio(4 * MAX_OWNED_RANGES as u64 + 8, 1),
        private: true,
    }];
    assert_eq!(
        o.claim(TdiId::from_slot(9), g, &one),
        Err(Error::OwnershipTableFull)
    );
    assert_eq!(o, before);
    // Releasing a TDI in the middle keeps every other TDI's order.
    assert_eq!(o.release(TdiId::from_slot(3)), Ok(()));
    m.0.retain(|x| x.tdi != TdiId::from_slot(3));
    check_same(&o, &m).unwrap();
    assert_eq!(o.claim(TdiId::from_slot(9), g, &one), Ok(()));
}
