//! Benchmarks (`cargo bench -p tsm-bench --bench sept`). Every pool and table is set up
//! outside the timed region; only the operations are timed.
//!
//! 1. 4 KiB pages mapped, blocked, tracked and unmapped through our S-EPT's range operations
//!    (`map_range`, `block_range`, one `track`, `remove_range`; the MMIO metadata table kept
//!    beside it, empty table pages given back), against the `x86_64` crate's
//!    `OffsetPageTable` over the same kind of page pool: plain (map, unmap) and like-for-like
//!    (map, a flag-update pass standing for the block, unmap, over a forward table and a
//!    reverse one standing for the metadata table). One contiguous 1 GiB region (262144 pages,
//!    one run) and one scattered set (4096 pages over 64 GiB, runs of one page).
//! 2. A full unbind of one TDI with 64 GiB of MMIO, through the core's bounded unbind (its
//!    STOP relayed to the model device by the core's test host, `Relayed`), in three layouts:
//!    dense (32768 leaves of 2 MiB), one 4 KiB leaf per 2 MiB (32768 leaves), one 2 MiB leaf
//!    per GiB (64 leaves). The total, and the longest single call (p100 over the unbind).
//! 3. Table pages a mapped GiB takes in 4 KiB, 2 MiB and 1 GiB leaves, next to the minimum.
//!
//! Criterion reports each measurement; a summary at the end prints every figure the README
//! quotes (best of 5 rounds for the mappers, the unbinds' totals and p100s).
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

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use platform_tdx::frames::{FramePool, Page};
use platform_tdx::sept::{Sept, SeptLevels};
use tsm_core::device_model::ModelDevice;
use tsm_core::relay::host::Relayed;
use tsm_core::{
    Completion, Gpa, GuestId, Hpa, MAX_RELAY_BYTES, MmioRange, PageSize, RequesterId, Run,
    SecureTable, TdiId,
};
use x86_64::structures::paging::{
    FrameAllocator, Mapper, OffsetPageTable, Page as VPage, PageTable, PageTableFlags, PhysFrame,
    Size4KiB,
};
use x86_64::{PhysAddr, VirtAddr};

/// Where the benchmark's page pool pretends to live in physical memory.
const POOL_PHYS: u64 = 0x40_0000_0000;
/// Guest addresses start here.
const GPA_BASE: u64 = 0x10_0000_0000;
/// Host (MMIO) addresses start here.
const HPA_BASE: u64 = 0x100_0000_0000;
/// 1 GiB of 4 KiB pages.
const CONTIGUOUS_PAGES: u64 = 1 << 18;
/// Pages of the scattered set.
const SCATTERED_PAGES: u64 = 4096;
/// The scattered set spreads over this many 4 KiB page slots (64 GiB).
const SCATTER_SLOTS: u64 = 1 << 24;
/// Pool pages for the mappers: enough for either set in either mapper (both tables of the
/// like-for-like one included).
const POOL_PAGES: usize = 32 * 1024;

/// (guest page, host page) pairs.
fn contiguous() -> Vec<(u64, u64)> {
    (0..CONTIGUOUS_PAGES)
        .map(|i| (GPA_BASE + i * 4096, HPA_BASE + i * 4096))
        .collect()
}

/// Distinct pseudo-random page slots (an LCG over 2^24 slots, full period).
fn scattered() -> Vec<(u64, u64)> {
    let mut x: u64 = 12345;
    let mut y: u64 = 67890;
    (0..SCATTERED_PAGES)
        .map(|_| {
            x = (x * 1_103_515_245 + 12345) % SCATTER_SLOTS;
            y = (y * 22_695_477 + 1) % SCATTER_SLOTS;
            (GPA_BASE + x * 4096, HPA_BASE + y * 4096)
        })
        .collect()
}

/// Runs of pages contiguous in both addresses: (gpa, hpa, pages).
fn runs(pages: &[(u64, u64)]) -> Vec<(u64, u64, u32)> {
    let mut out: Vec<(u64, u64, u32)> = vec![];
    for &(g, h) in pages {
        match out.last_mut() {
            Some((rg, rh, n))
                if *rg + u64::from(*n) * 4096 == g && *rh + u64::from(*n) * 4096 == h =>
            {
                *n += 1
            }
            _ => out.push((g, h, 1)),
        }
    }
    out
}

// ---- our S-EPT -------------------------------------------------------------------------

/// Map, block, track and unmap every run through the range operations. The table ends empty:
/// the metadata pages back in the pool, the S-EPT pages below the root retired until the next
/// round's TRACK frees them (the root stays the TD's), so one table serves every round.
fn sept_round(s: &mut Sept<'_>, runs: &[(u64, u64, u32)]) {
    let g = GuestId::from_slot(0);
    let k = PageSize::Size4K;
    let at = |gpa: u64, hpa: u64| (Gpa::try_new(gpa).unwrap(), Hpa::try_new(hpa).unwrap());
    for &(gpa, hpa, n) in runs {
        let (gpa, hpa) = at(gpa, hpa);
        s.map_range(g, Run::new(gpa, hpa, k, n)).unwrap();
    }
    for &(gpa, hpa, n) in runs {
        let (gpa, hpa) = at(gpa, hpa);
        black_box(s.block_range(g, Run::new(gpa, hpa, k, n))).unwrap();
    }
    assert_eq!(s.track(g), Ok(Completion::Done));
    for &(gpa, hpa, n) in runs {
        let (gpa, hpa) = at(gpa, hpa);
        black_box(s.remove_range(g, Run::new(gpa, hpa, k, n))).unwrap();
    }
}

// ---- x86_64's OffsetPageTable over the same kind of pool --------------------------------

struct PoolAllocator {
    base: u64,
    next: usize,
    len: usize,
}

// SAFETY: every frame handed out is a distinct, unused, 4 KiB-aligned page of the pool
// buffer (indices only grow), at the physical address the mapper's offset makes valid.
unsafe impl FrameAllocator<Size4KiB> for PoolAllocator {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        if self.next >= self.len {
            return None;
        }
        let frame =
            PhysFrame::containing_address(PhysAddr::new(POOL_PHYS + (self.next as u64) * 4096));
        // A table page starts zeroed, as the S-EPT's pool fills the pages it hands out: the
        // zeroing is part of the allocation on both sides (timed), not of the set-up.
        // SAFETY: `base` is the pool buffer, `next < len` pages into it, and no table is
        // using this page yet.
        unsafe { (self.base as *mut Page).add(self.next).write(Page::ZERO) };
        self.next += 1;
        Some(frame)
    }
}

/// Which passes the `OffsetPageTable` round makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum X86 {
    /// Map, unmap.
    Plain,
    /// Map, a flag-update pass, unmap, over a forward and a reverse table.
    LikeForLike,
}

/// One round over `mem` (its first `*used` pages zeroed by the caller, outside the timing):
/// returns the time of the passes alone and sets `*used` to the pages the tables took.
fn x86_round(mem: &mut [Page], pages: &[(u64, u64)], how: X86, used: &mut usize) -> Duration {
    let base = mem.as_mut_ptr() as u64;
    let offset = VirtAddr::new(base - POOL_PHYS);
    // Pages 0 and 1 are the roots; the allocator hands out the rest.
    let mut alloc = PoolAllocator {
        base,
        next: 2,
        len: mem.len(),
    };
    let (fwd_root, rev_root) = mem.split_at_mut(1);
    // SAFETY: pages 0 and 1 of the pool are zeroed, 4 KiB aligned, used only as the roots.
    let fwd_root = unsafe { &mut *(fwd_root.as_mut_ptr().cast::<PageTable>()) };
    // SAFETY: as above.
    let rev_root = unsafe { &mut *(rev_root.as_mut_ptr().cast::<PageTable>()) };
    // SAFETY: physical address P of the pool is at virtual `offset + P`: the pool buffer
    // begins at POOL_PHYS; table frames only come from the pool.
    let mut fwd = unsafe { OffsetPageTable::new(fwd_root, offset) };
    // SAFETY: as above.
    let mut rev = unsafe { OffsetPageTable::new(rev_root, offset) };
    let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE | PageTableFlags::NO_CACHE;
    let blocked = PageTableFlags::PRESENT | PageTableFlags::NO_CACHE;
    let both = how == X86::LikeForLike;
    let page = |va: u64| VPage::<Size4KiB>::containing_address(VirtAddr::new(va));
    let frame = |pa: u64| PhysFrame::<Size4KiB>::containing_address(PhysAddr::new(pa));
    let start = Instant::now();
    for &(va, pa) in pages {
        // SAFETY: the mapping is never used for access (the benchmark never switches CR3 to
        // it); the frame is MMIO that this table maps once.
        unsafe { fwd.map_to(page(va), frame(pa), flags, &mut alloc) }
            .unwrap()
            // Not the live page table: no TLB entry to flush.
            .ignore();
        if both {
            // SAFETY: as above; the reverse table maps host page -> guest page.
            unsafe { rev.map_to(page(pa), frame(va), flags, &mut alloc) }
                .unwrap()
                .ignore();
        }
    }
    if both {
        for &(va, pa) in pages {
            // SAFETY: flags of a mapping this round made; never the live table.
            unsafe { fwd.update_flags(page(va), blocked) }
                .unwrap()
                .ignore();
            // SAFETY: as above.
            unsafe { rev.update_flags(page(pa), blocked) }
                .unwrap()
                .ignore();
        }
    }
    for &(va, pa) in pages {
        let (f, flush) = fwd.unmap(page(va)).unwrap();
        flush.ignore();
        black_box(f);
        if both {
            let (f, flush) = rev.unmap(page(pa)).unwrap();
            flush.ignore();
            black_box(f);
        }
    }
    let t = start.elapsed();
    *used = alloc.next;
    t
}

/// Zeroes the two roots for the next round (set-up, untimed; the allocator zeroes the rest).
fn x86_reset(mem: &mut [Page], used: &mut usize) {
    mem[0] = Page::ZERO;
    mem[1] = Page::ZERO;
    *used = 2;
}

fn mappers(c: &mut Criterion) {
    let mut mem = vec![Page::ZERO; POOL_PAGES];
    let mut sept_mem = vec![Page::ZERO; POOL_PAGES];
    let mut s = Sept::new(
        FramePool::new(&mut sept_mem, POOL_PHYS).unwrap(),
        SeptLevels::Four,
    );
    let mut group = c.benchmark_group("map_block_unmap_4k");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(4));
    for (name, pages) in [("contiguous_1g", contiguous()), ("scattered", scattered())] {
        let r = runs(&pages);
        group.throughput(Throughput::Elements(pages.len() as u64));
        group.bench_with_input(BenchmarkId::new("sept_range", name), &r, |b, r| {
            b.iter(|| sept_round(&mut s, r));
        });
        for (label, how) in [("x86_plain", X86::Plain), ("x86_like", X86::LikeForLike)] {
            group.bench_with_input(BenchmarkId::new(label, name), &pages, |b, p| {
                b.iter_custom(|iters| {
                    let mut used = POOL_PAGES;
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        x86_reset(&mut mem, &mut used);
                        total += x86_round(&mut mem, p, how, &mut used);
                    }
                    total
                });
            });
        }
    }
    group.finish();
}

// ---- unbind of a 64 GiB TDI -------------------------------------------------------------

/// 64 GiB of BAR.
const BIG_BAR_PAGES: u64 = 16 << 20;

/// The layouts of the 64 GiB TDI.
#[derive(Debug, Clone, Copy)]
enum Layout {
    /// Every 2 MiB mapped with a 2 MiB leaf.
    Dense,
    /// One 4 KiB leaf at the start of every 2 MiB.
    Sparse4kPer2m,
    /// One 2 MiB leaf at the start of every GiB.
    OnePerGib,
}

impl Layout {
    const ALL: [Layout; 3] = [Layout::Dense, Layout::Sparse4kPer2m, Layout::OnePerGib];

    fn leaves(self) -> (u64, u64, PageSize) {
        // (leaves, stride, size)
        match self {
            Layout::Dense => (32 * 1024, 1 << 21, PageSize::Size2M),
            Layout::Sparse4kPer2m => (32 * 1024, 1 << 21, PageSize::Size4K),
            Layout::OnePerGib => (64, 1 << 30, PageSize::Size2M),
        }
    }

    /// Pool pages the layout takes (both trees' tables, with room).
    fn pool_pages(self) -> usize {
        match self {
            Layout::Sparse4kPer2m => 70_000,
            _ => 1024,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Layout::Dense => "dense 2M",
            Layout::Sparse4kPer2m => "one 4K per 2M",
            Layout::OnePerGib => "one 2M per GiB",
        }
    }
}

/// The core over the S-EPT with a host that relays its STOP to the model device.
type Firmware<'m> = Relayed<Sept<'m>>;

/// A firmware with one TDI bound to a 64 GiB BAR mapped in `layout`; its TDI.
fn bound_64g(mem: &mut [Page], layout: Layout) -> (Firmware<'_>, TdiId, GuestId) {
    let pool = FramePool::new(mem, POOL_PHYS).unwrap();
    let tsm = Relayed::new(Sept::new(pool, SeptLevels::Four), ModelDevice::model());
    let bar = MmioRange::from_raw(HPA_BASE, BIG_BAR_PAGES).unwrap();
    let g = tsm.create_guest().unwrap();
    let rid = RequesterId::try_new(0, 3, 0, 0).unwrap();
    let dev = tsm.create_device(rid, &[bar]).unwrap();
    let tdi = tsm.create_tdi(dev, rid).unwrap();
    tsm.with_device(|d| d.report_ranges(rid, &[bar])).unwrap();
    tsm.bind(tdi, g).unwrap();
    let (n, stride, size) = layout.leaves();
    for i in 0..n {
        let off = i * stride;
        tsm.map_mmio(
            tdi,
            g,
            Gpa::try_new(GPA_BASE + off).unwrap(),
            Hpa::try_new(HPA_BASE + off).unwrap(),
            size,
        )
        .unwrap();
    }
    (tsm, tdi, g)
}

/// Unbinds to the end: every firmware call's time, in order. The STOP request the firmware
/// hands out (`Relay`) goes to the model device outside the timing, and its answer back in a
/// call of its own (`device_response`), as a host relays it: the device's work is not the
/// firmware's.
fn unbind_all(tsm: &Firmware<'_>, tdi: TdiId, g: GuestId) -> Vec<Duration> {
    let fw = tsm.firmware();
    let mut buf = [0u8; MAX_RELAY_BYTES];
    let mut calls = vec![];
    let start = Instant::now();
    let mut r = fw.unbind(tdi, &mut buf).unwrap();
    calls.push(start.elapsed());
    loop {
        r = match r {
            Completion::Done => {
                // Every leaf gone, every table page back in the pool once the host's next
                // TRACK (outside the timing) has flushed the entries that named them.
                assert_eq!(tsm.firmware().host_track(g), Ok(Completion::Done));
                let (free, total) = tsm
                    .firmware()
                    .with_table(|t| (t.pool().free_frames(), t.pool().total_frames()))
                    .unwrap();
                assert_eq!(free, total, "the unbind left table pages in use");
                return calls;
            }
            Completion::Resumable => {
                let start = Instant::now();
                let r = fw.unbind(tdi, &mut buf).unwrap();
                calls.push(start.elapsed());
                r
            }
            Completion::Relay(n) => {
                let mut answer = [0u8; MAX_RELAY_BYTES];
                let len = tsm
                    .with_device(|d| d.answer(&buf[..n], &mut answer))
                    .unwrap()
                    .unwrap();
                let start = Instant::now();
                let r = fw
                    .device_response(tdi, Some(&answer[..len]), &mut buf)
                    .unwrap();
                calls.push(start.elapsed());
                r
            }
        };
    }
}

fn unbind(c: &mut Criterion) {
    let mut group = c.benchmark_group("unbind_64g");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(4));
    for layout in Layout::ALL {
        let mut mem = vec![Page::ZERO; layout.pool_pages()];
        group.throughput(Throughput::Elements(layout.leaves().0));
        group.bench_function(BenchmarkId::new("total", layout.name()), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (tsm, tdi, g) = bound_64g(&mut mem, layout);
                    total += unbind_all(&tsm, tdi, g).iter().sum::<Duration>();
                }
                total
            });
        });
    }
    group.finish();
}

// ---- table memory ------------------------------------------------------------------------

/// Table pages one GiB takes mapped in `size` leaves, and the minimum for it.
fn pages_per_gib(size: PageSize) -> (usize, usize) {
    let mut mem = vec![Page::ZERO; 2048];
    let mut s = Sept::new(
        FramePool::new(&mut mem, POOL_PHYS).unwrap(),
        SeptLevels::Four,
    );
    let free = s.pool().free_frames();
    let n = ((1u64 << 30) / size.bytes()) as u32;
    let g = GuestId::from_slot(0);
    // A GiB-aligned window in both address spaces.
    let (gpa, hpa) = (
        Gpa::try_new(1 << 36).unwrap(),
        Hpa::try_new(1 << 40).unwrap(),
    );
    s.map_range(g, Run::new(gpa, hpa, size, n)).unwrap();
    let used = free - s.pool().free_frames();
    let least =
        Sept::table_pages_for_run(SeptLevels::Four, 1 << 36, 1 << 40, u64::from(n), size).unwrap();
    (used, least)
}

// ---- summary -----------------------------------------------------------------------------

/// Unbinds timed per layout in the summary.
const RUNS: usize = 7;

/// One pass of every workload with a plain clock, printed side by side.
fn summary() {
    let mut mem = vec![Page::ZERO; POOL_PAGES];
    let mut sept_mem = vec![Page::ZERO; POOL_PAGES];
    let mut s = Sept::new(
        FramePool::new(&mut sept_mem, POOL_PHYS).unwrap(),
        SeptLevels::Four,
    );
    println!(
        "\nsummary (best of 5 rounds; map + block + unmap of every page counts as one page; \
         set-up untimed):"
    );
    for (name, pages) in [
        ("contiguous 1 GiB", contiguous()),
        ("scattered", scattered()),
    ] {
        let r = runs(&pages);
        let sept = (0..5)
            .map(|_| {
                let t = Instant::now();
                sept_round(&mut s, &r);
                t.elapsed()
            })
            .min()
            .unwrap();
        let mut x86 = |how| {
            let mut used = POOL_PAGES;
            (0..5)
                .map(|_| {
                    x86_reset(&mut mem, &mut used);
                    x86_round(&mut mem, &pages, how, &mut used)
                })
                .min()
                .unwrap()
        };
        let plain = x86(X86::Plain);
        let like = x86(X86::LikeForLike);
        let rate = |d: Duration| pages.len() as f64 / d.as_secs_f64() / 1e6;
        println!(
            "  {name:17} {:>6} pages: S-EPT {:.2} M pages/s ({:.2} ms); OffsetPageTable plain \
             {:.2} M/s ({:.2} ms), like-for-like {:.2} M/s ({:.2} ms); S-EPT/plain {:.2}, \
             S-EPT/like-for-like {:.2}",
            pages.len(),
            rate(sept),
            sept.as_secs_f64() * 1e3,
            rate(plain),
            plain.as_secs_f64() * 1e3,
            rate(like),
            like.as_secs_f64() * 1e3,
            rate(sept) / rate(plain),
            rate(sept) / rate(like),
        );
    }
    for layout in Layout::ALL {
        let mut mem = vec![Page::ZERO; layout.pool_pages()];
        let mut totals = vec![];
        let mut p100s = vec![];
        // Every unbind of a layout makes the same calls: the least time of call i over the
        // runs is its own work, without the preemptions a shared machine adds to some runs.
        let mut least: Vec<Duration> = vec![];
        for _ in 0..RUNS {
            let (tsm, tdi, g) = bound_64g(&mut mem, layout);
            let calls = unbind_all(&tsm, tdi, g);
            totals.push(calls.iter().sum::<Duration>());
            p100s.push(calls.iter().copied().max().unwrap());
            if least.is_empty() {
                least = calls;
            } else {
                assert_eq!(least.len(), calls.len(), "the same calls every run");
                for (l, c) in least.iter_mut().zip(calls) {
                    *l = (*l).min(c);
                }
            }
        }
        if std::env::var("TSM_BENCH_DEBUG").is_ok() {
            let mut idx: Vec<usize> = (0..least.len()).collect();
            idx.sort_by_key(|&i| std::cmp::Reverse(least[i]));
            for &i in idx.iter().take(6) {
                eprintln!("  {} call {i}: {:?}", layout.name(), least[i]);
            }
            let mut sorted = least.clone();
            sorted.sort();
            eprintln!("  median call {:?}", sorted[sorted.len() / 2]);
        }
        totals.sort();
        p100s.sort();
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        println!(
            "  unbind 64 GiB, {:14} ({:>5} leaves): {:>5} calls, total {:.3} ms (median of {RUNS}, best {:.3} ms); longest call: {:.2} us (each call's least time over the runs), raw p100 {:.2} us in the best run, {:.2} us median",
            layout.name(),
            layout.leaves().0,
            least.len(),
            totals[RUNS / 2].as_secs_f64() * 1e3,
            totals[0].as_secs_f64() * 1e3,
            us(least.iter().copied().max().unwrap()),
            us(p100s[0]),
            us(p100s[RUNS / 2]),
        );
    }
    for size in [PageSize::Size4K, PageSize::Size2M, PageSize::Size1G] {
        let (used, least) = pages_per_gib(size);
        println!(
            "  table pages per GiB in {size:?} leaves (S-EPT + MMIO metadata): {used} used, \
             {least} minimum"
        );
    }
}

criterion_group!(benches, mappers, unbind);

fn main() {
    // Profiling aids: `TSM_BENCH_UNBIND=<rounds>` runs only the dense unbind,
    // `TSM_BENCH_LOOP=<rounds>` only the scattered S-EPT round; `TSM_BENCH_DEBUG` prints the
    // slowest unbind calls in the summary.
    if let Some(n) = std::env::var("TSM_BENCH_UNBIND")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
    {
        let mut mem = vec![Page::ZERO; Layout::Dense.pool_pages()];
        for _ in 0..n {
            let (tsm, tdi, g) = bound_64g(&mut mem, Layout::Dense);
            black_box(unbind_all(&tsm, tdi, g));
        }
        return;
    }
    if let Some(n) = std::env::var("TSM_BENCH_LOOP")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        let mut mem = vec![Page::ZERO; POOL_PAGES];
        let mut s = Sept::new(
            FramePool::new(&mut mem, POOL_PHYS).unwrap(),
            SeptLevels::Four,
        );
        let r = runs(&scattered());
        for _ in 0..n {
            sept_round(&mut s, &r);
        }
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
