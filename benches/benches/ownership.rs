//! Benchmarks (`cargo bench -p tsm-bench --bench ownership`): the lookups that used to scan.
//!
//! 1. Ownership: which private range holds a page (`holding`, the check every `map_mmio`
//!    makes), with 0 and with 240 other ranges owned (15 other TDIs of 16 ranges each, all
//!    claimed before the TDI asked about), through the indexed table and through a linear copy
//!    of the table as it was (a list in claim order, scanned), kept here as the baseline.
//! 2. `map_mmio` of a 4 KiB page through the core over the TDX S-EPT, with 0 and 240 other
//!    ranges owned.
//! 3. The SEV RMP: the leaf at a guest address (`SecureTable::leaf`) and a 4 KiB leaf's whole
//!    life (map, block, fence, remove), in an RMP window of 8 MiB and of 1 GiB with 64 leaves
//!    mapped at its top; the lookup also through a scan of the entries as it was.
//!
//! A summary at the end prints each pair and its ratio.
//!
//! Measured on the 2-vCPU development VM (release, ns per call, best of 5), against the same
//! benchmark run on the commit before the indexes (`Ownership` and the RMP as they were):
//!
//! | | before | after |
//! |---|---|---|
//! | `holding`, 0 / 240 other ranges | 2.0 / 155 | 3.8 / 9.4 |
//! | `map_mmio` 4K, 0 / 240 other ranges | 92 / 316 | 94 / 96 |
//! | SEV `leaf`, 8 MiB / 1 GiB RMP | 812 / 107 000 | 34 / 34 |
//! | SEV map+block+fence+remove, 8 MiB / 1 GiB RMP | 2 600 / 322 000 | 161 / 166 |
//!
//! The linear copy kept here as the baseline scans slower than the table did (345 to 390 ns
//! at 240 ranges against 155), so its ratio overstates the gain; the table above does not.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group};
use platform_sev::pfn::Pfn;
use platform_sev::{Rmp, RmpEntry, RmpStore, rmp_index_words};
use platform_tdx::frames::{FramePool, Page};
use platform_tdx::sept::{Sept, SeptLevels};
use tsm_core::device_model::ModelDevice;
use tsm_core::ownership::{OwnedRange, Ownership};
use tsm_core::relay::host::Relayed;
use tsm_core::secure_table::SecureTable;
use tsm_core::transport::ReportedRange;
use tsm_core::{Gpa, GuestId, Hpa, MmioRange, PageSize, RequesterId, TdiId};

/// Other TDIs, each with the most ranges a report may list: 240 ranges.
const OTHER_TDIS: u16 = 15;
const RANGES: u64 = tsm_core::capacity::MAX_RANGES_PER_TDI as u64;
/// Host (MMIO) addresses start here; each range is 16 pages, 64 KiB apart.
const HPA_BASE: u64 = 0x100_0000_0000;
const RANGE_PAGES: u64 = 16;
const RANGE_STRIDE: u64 = 0x1_0000;
/// The measured TDI's one range: after every other one in address and in claim order.
const MINE: u64 = HPA_BASE + 0x1000_0000;
/// Pages of the measured TDI's range (what `map_mmio` walks through).
const MINE_PAGES: u64 = 1 << 16;
const GPA_BASE: u64 = 0x10_0000_0000;
/// Where the benchmark's page pool pretends to live in physical memory.
const POOL_PHYS: u64 = 0x40_0000_0000;
const POOL_PAGES: usize = 4 * 1024;

fn other_ranges(t: u16) -> Vec<MmioRange> {
    (0..RANGES)
        .map(|i| {
            let at = HPA_BASE + (u64::from(t) * RANGES + i) * RANGE_STRIDE;
            MmioRange::from_raw(at, RANGE_PAGES).unwrap()
        })
        .collect()
}

// ---- 1. the ownership table -------------------------------------------------------------

/// The table as it was: every range in claim order, every question a scan.
#[derive(Default)]
struct LinearOwnership(Vec<OwnedRange>);

impl LinearOwnership {
    fn holding(&self, hpa: Hpa, size: PageSize) -> Option<&OwnedRange> {
        self.0
            .iter()
            .find(|o| o.private && o.range.contains_page(hpa, size))
    }
}
/// Both tables with `others` other TDIs' ranges claimed, then the measured TDI's.
fn tables(others: u16) -> (Ownership, LinearOwnership) {
    let g = GuestId::from_slot(0);
    let mut ix = Ownership::new();
    let mut lin = LinearOwnership::default();
    let mut claim = |t: TdiId, ranges: &[MmioRange]| {
        let reported: Vec<ReportedRange> = ranges
            .iter()
            .map(|&range| ReportedRange {
                range,
                private: true,
            })
            .collect();
        ix.claim(t, g, &reported).unwrap();
        lin.0.extend(ranges.iter().map(|&range| OwnedRange {
            range,
            tdi: t,
            guest: g,
            private: true,
        }));
    };
    for t in 0..others {
        claim(TdiId::from_slot(t + 1), &other_ranges(t));
    }
    claim(
        TdiId::from_slot(0),
        &[MmioRange::from_raw(MINE, MINE_PAGES).unwrap()],
    );
    (ix, lin)
}

fn page_of_mine(i: u64) -> Hpa {
    Hpa::try_new(MINE + (i % MINE_PAGES) * 0x1000).unwrap()
}

fn ownership(c: &mut Criterion) {
    let mut group = c.benchmark_group("ownership_holding");
    for others in [0, OTHER_TDIS] {
        let (ix, lin) = tables(others);
        let n = u64::from(others) * RANGES;
        let mine = TdiId::from_slot(0);
        group.bench_with_input(BenchmarkId::new("indexed", n), &ix, |b, ix| {
            let mut i = 0;
            b.iter(|| {
                i += 1;
                let hpa = page_of_mine(i);
                black_box(ix.holding(black_box(hpa), PageSize::Size4K).map(|o| o.tdi) == Some(mine))
            });
        });
        group.bench_with_input(BenchmarkId::new("linear", n), &lin, |b, lin| {
            let mut i = 0;
            b.iter(|| {
                i += 1;
                let hpa = page_of_mine(i);
                black_box(
                    lin.holding(black_box(hpa), PageSize::Size4K).map(|o| o.tdi) == Some(mine),
                )
            });
        });
    }
    group.finish();
}

// ---- 2. map_mmio through the core --------------------------------------------------------

type Firmware<'m> = Relayed<Sept<'m>>;

/// A firmware with `others` other TDIs bound (16 ranges each) and the measured one bound to
/// its one range; the measured TDI and its guest.
fn bound(mem: &mut [Page], others: u16) -> (Firmware<'_>, TdiId, GuestId) {
    let pool = FramePool::new(mem, POOL_PHYS).unwrap();
    let tsm = Relayed::new(Sept::new(pool, SeptLevels::Four), ModelDevice::model());
    let g = tsm.create_guest().unwrap();
    let mut bars: Vec<MmioRange> = (0..others)
        .map(|t| {
            let at = HPA_BASE + u64::from(t) * RANGES * RANGE_STRIDE;
            MmioRange::from_raw(at, RANGES * RANGE_STRIDE / 0x1000).unwrap()
        })
        .collect();
    bars.push(MmioRange::from_raw(MINE, MINE_PAGES).unwrap());
    let bind = |bus: u8, bar: MmioRange, ranges: &[MmioRange]| {
        let rid = RequesterId::try_new(0, bus, 0, 0).unwrap();
        let dev = tsm.create_device(rid, &[bar]).unwrap();
        let tdi = tsm.create_tdi(dev, rid).unwrap();
        tsm.with_device(|d| d.report_ranges(rid, ranges)).unwrap();
        tsm.bind(tdi, g).unwrap();
        tdi
    };
    for t in 0..others {
        bind(2 + t as u8, bars[usize::from(t)], &other_ranges(t));
    }
    let mine = *bars.last().unwrap();
    let tdi = bind(1, mine, &[mine]);
    (tsm, tdi, g)
}

fn map_mmio(c: &mut Criterion) {
    let mut mem = vec![Page::ZERO; POOL_PAGES];
    let mut group = c.benchmark_group("map_mmio_4k");
    for others in [0, OTHER_TDIS] {
        let n = u64::from(others) * RANGES;
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter_custom(|iters| map_pages(&mut mem, others, iters));
        });
    }
    group.finish();
}

/// Time `iters` maps of distinct pages of the measured TDI's range, rebuilding the firmware
/// (untimed) whenever the range is used up.
fn map_pages(mem: &mut [Page], others: u16, iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let (tsm, tdi, g) = bound(mem, others);
        for i in 0..MINE_PAGES.min(iters - done) {
            let gpa = Gpa::try_new(GPA_BASE + i * 0x1000).unwrap();
            let hpa = Hpa::try_new(MINE + i * 0x1000).unwrap();
            let start = Instant::now();
            let r = tsm.map_mmio(tdi, g, gpa, hpa, PageSize::Size4K);
            total += start.elapsed();
            r.unwrap();
            done += 1;
        }
    }
    total
}

// ---- 3. the SEV RMP -----------------------------------------------------------------------

/// The RMP windows: 8 MiB, 1 GiB.
const WINDOWS: [usize; 2] = [2048, 1 << 18];
/// Leaves mapped at the top of the window.
const SEV_LEAVES: u64 = 64;
const RMP_BASE: u64 = 0x200_0000_0000;

type VecRmp = Rmp<RmpStore<Vec<RmpEntry>, Vec<u32>>>;

fn rmp(pages: usize) -> VecRmp {
    let mut t = Rmp::new(
        Hpa::try_new(RMP_BASE).unwrap(),
        RmpStore::new(
            vec![RmpEntry::new(); pages],
            vec![0; rmp_index_words(pages)],
        ),
    )
    .unwrap();
    let g = GuestId::from_slot(0);
    t.set_asid(g, 1).unwrap();
    for i in 0..SEV_LEAVES {
        let (gpa, hpa) = sev_leaf(pages, i);
        t.map(g, gpa, hpa, PageSize::Size4K).unwrap();
    }
    t
}

/// Leaf `i` of the window's top ones (the last page is kept free for the life-cycle run).
fn sev_leaf(pages: usize, i: u64) -> (Gpa, Hpa) {
    let page = pages as u64 - 1 - SEV_LEAVES + i;
    (
        Gpa::try_new(GPA_BASE + i * 0x1000).unwrap(),
        Hpa::try_new(RMP_BASE + page * 0x1000).unwrap(),
    )
}

/// The lookup as it was: the first entry, by host address, of the ASID naming the frame.
fn leaf_scan(t: &VecRmp, asid: u32, gpa: Gpa) -> Option<usize> {
    let pfn = Pfn::of(gpa);
    t.entries()
        .iter()
        .position(|e| e.assigned() && e.mmio() && e.asid() == asid && e.gpa_pfn() == pfn)
}

/// One 4 KiB leaf's life in the RMP's free top page: map, block, fence, remove.
fn sev_cycle(t: &mut VecRmp, pages: usize) {
    let g = GuestId::from_slot(0);
    let gpa = Gpa::try_new(GPA_BASE + 0x1000_0000).unwrap();
    let hpa = Hpa::try_new(RMP_BASE + (pages as u64 - 1) * 0x1000).unwrap();
    t.map(g, gpa, hpa, PageSize::Size4K).unwrap();
    t.block(g, gpa, PageSize::Size4K).unwrap();
    assert_eq!(t.track(g).unwrap(), tsm_core::Completion::Done);
    t.remove(g, gpa, PageSize::Size4K).unwrap();
}

fn sev(c: &mut Criterion) {
    let mut group = c.benchmark_group("sev_rmp");
    for pages in WINDOWS {
        let mut t = rmp(pages);
        let g = GuestId::from_slot(0);
        group.bench_function(BenchmarkId::new("leaf_indexed", pages), |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % SEV_LEAVES;
                black_box(t.leaf(g, black_box(sev_leaf(pages, i).0)))
            });
        });
        group.bench_function(BenchmarkId::new("leaf_scan", pages), |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % SEV_LEAVES;
                black_box(leaf_scan(&t, 1, black_box(sev_leaf(pages, i).0)))
            });
        });
        group.bench_function(BenchmarkId::new("map_block_fence_remove", pages), |b| {
            b.iter(|| sev_cycle(black_box(&mut t), pages));
        });
    }
    group.finish();
}

// ---- summary ------------------------------------------------------------------------------

/// Nanoseconds per call of `f`, best of 5 runs of `n` calls.
fn ns(n: u64, f: &mut dyn FnMut(u64)) -> f64 {
    (0..5)
        .map(|_| {
            let t = Instant::now();
            for i in 0..n {
                f(i);
            }
            t.elapsed().as_secs_f64() * 1e9 / n as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn summary() {
    println!("\nsummary (ns per call, best of 5 runs):");
    let mine = TdiId::from_slot(0);
    for others in [0, OTHER_TDIS] {
        let (ix, lin) = tables(others);
        let n = u64::from(others) * RANGES;
        let a = ns(1 << 20, &mut |i| {
            let owner = ix.holding(black_box(page_of_mine(i)), PageSize::Size4K);
            black_box(owner.map(|o| o.tdi) == Some(mine));
        });
        let b = ns(1 << 20, &mut |i| {
            let owner = lin.holding(black_box(page_of_mine(i)), PageSize::Size4K);
            black_box(owner.map(|o| o.tdi) == Some(mine));
        });
        println!(
            "  ownership holding, {n:3} other ranges: indexed {a:7.1}, linear {b:7.1}, linear/indexed {:.1}x",
            b / a
        );
    }
    let mut mem = vec![Page::ZERO; POOL_PAGES];
    for others in [0, OTHER_TDIS] {
        let n = u64::from(others) * RANGES;
        let best = (0..5)
            .map(|_| map_pages(&mut mem, others, MINE_PAGES))
            .min()
            .unwrap();
        println!(
            "  map_mmio 4K, {n:3} other ranges: {:7.1}",
            best.as_secs_f64() * 1e9 / MINE_PAGES as f64
        );
    }
    for pages in WINDOWS {
        let mut t = rmp(pages);
        let g = GuestId::from_slot(0);
        let a = ns(1 << 16, &mut |i| {
            black_box(t.leaf(g, sev_leaf(pages, i % SEV_LEAVES).0));
        });
        let b = ns(1 << 10, &mut |i| {
            black_box(leaf_scan(&t, 1, sev_leaf(pages, i % SEV_LEAVES).0));
        });
        let c = ns(1 << 14, &mut |_| sev_cycle(&mut t, pages));
        println!(
            "  SEV RMP of {:5} MiB: leaf lookup indexed {a:7.1}, scan {b:9.1}, scan/indexed {:.0}x; map+block+fence+remove {c:7.1}",
            (pages * 4096) >> 20,
            b / a
        );
    }
}

criterion_group!(benches, ownership, map_mmio, sev);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
