//! Benchmarks (`cargo bench -p tsm-bench --bench sept`):
//!
//! 1. Map then unmap the same set of 4 KiB pages through our S-EPT and through the `x86_64`
//!    crate's `OffsetPageTable`, both over the same kind of frame pool (a heap buffer of
//!    4 KiB pages standing in for physical memory): one contiguous 1 GiB region (262144
//!    pages) and one scattered set (4096 pages spread over 64 GiB). The S-EPT's unmap is the
//!    TDX protocol: block every page, one TLB track, then remove; it also keeps the MMIO
//!    metadata table and frees empty table pages, which `OffsetPageTable` does not.
//! 2. A full unbind of one TDI with 64 GiB of MMIO mapped in 2 MiB leaves (32768 leaves),
//!    through the core's bounded unbind (its STOP relayed to the model device by the core's
//!    test host, `Relayed`): total time, and per call.
//!
//! Criterion reports each measurement; a summary at the end prints pages per second for both
//! mappers and their ratio, and the unbind's calls, total and per-call time.
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
use tsm_core::{Completion, Gpa, GuestId, Hpa, MmioRange, PageSize, RequesterId};
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
/// Pool pages: enough for either set in either mapper.
const POOL_PAGES: usize = 16 * 1024;

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

// ---- our S-EPT ---------------------------------------------------------------------------

fn sept_round(mem: &mut [Page], pages: &[(u64, u64)]) {
    let pool = FramePool::new(mem, POOL_PHYS).unwrap();
    let mut s = Sept::new(pool, SeptLevels::Four);
    let g = GuestId::from_slot(0);
    let k = PageSize::Size4K;
    for &(gpa, hpa) in pages {
        s.mmio_map(g, Gpa::try_new(gpa).unwrap(), Hpa::try_new(hpa).unwrap(), k)
            .unwrap();
    }
    for &(gpa, _) in pages {
        s.mmio_block(g, Gpa::try_new(gpa).unwrap(), k).unwrap();
    }
    s.mem_track(g).unwrap();
    for &(gpa, _) in pages {
        black_box(s.mmio_unmap(g, Gpa::try_new(gpa).unwrap(), k).unwrap());
    }
    assert_eq!(s.pool().free_frames(), s.pool().total_frames());
}

// ---- x86_64's OffsetPageTable over the same kind of pool --------------------------------

struct PoolAllocator {
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
        self.next += 1;
        Some(frame)
    }
}

fn x86_round(mem: &mut [Page], pages: &[(u64, u64)]) {
    for p in mem.iter_mut() {
        *p = Page::ZERO;
    }
    let base = mem.as_mut_ptr() as u64;
    let offset = VirtAddr::new(base - POOL_PHYS);
    // Page 0 is the root; the allocator hands out the rest.
    let mut alloc = PoolAllocator {
        next: 1,
        len: mem.len(),
    };
    // SAFETY: page 0 of the pool is zeroed, 4 KiB aligned, and used only as the root table.
    let root = unsafe { &mut *(mem.as_mut_ptr().cast::<PageTable>()) };
    // SAFETY: physical address P of the pool is at virtual `offset + P`: the pool buffer
    // begins at POOL_PHYS; table frames only come from the pool.
    let mut mapper = unsafe { OffsetPageTable::new(root, offset) };
    let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE | PageTableFlags::NO_CACHE;
    for &(va, pa) in pages {
        let page = VPage::<Size4KiB>::containing_address(VirtAddr::new(va));
        let frame = PhysFrame::containing_address(PhysAddr::new(pa));
        // SAFETY: the mapping is never used for access (the benchmark never switches CR3 to
        // it); the frame is MMIO that this table maps once.
        unsafe { mapper.map_to(page, frame, flags, &mut alloc) }
            .unwrap()
            // Not the live page table: no TLB entry to flush.
            .ignore();
    }
    for &(va, _) in pages {
        let page = VPage::<Size4KiB>::containing_address(VirtAddr::new(va));
        let (frame, flush) = mapper.unmap(page).unwrap();
        flush.ignore();
        black_box(frame);
    }
}

fn mappers(c: &mut Criterion) {
    let mut mem = vec![Page::ZERO; POOL_PAGES];
    let mut group = c.benchmark_group("map_unmap_4k");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(4));
    for (name, pages) in [("contiguous_1g", contiguous()), ("scattered", scattered())] {
        group.throughput(Throughput::Elements(pages.len() as u64));
        group.bench_with_input(BenchmarkId::new("sept", name), &pages, |b, p| {
            b.iter(|| sept_round(&mut mem, p));
        });
        group.bench_with_input(BenchmarkId::new("x86_64", name), &pages, |b, p| {
            b.iter(|| x86_round(&mut mem, p));
        });
    }
    group.finish();
}

// ---- unbind of a 64 GiB TDI -------------------------------------------------------------

/// 64 GiB of BAR in 2 MiB leaves.
const BIG_BAR_PAGES: u64 = 16 << 20;
const BIG_LEAVES: u64 = 32 * 1024;

/// The core over the S-EPT with a host that relays its STOP to the model device.
type Firmware<'m> = Relayed<Sept<'m>>;

/// A firmware with one TDI bound and 64 GiB mapped in 2 MiB leaves; its TDI.
fn bound_64g(mem: &mut [Page]) -> (Firmware<'_>, tsm_core::TdiId) {
    let pool = FramePool::new(mem, POOL_PHYS).unwrap();
    let tsm = Relayed::new(Sept::new(pool, SeptLevels::Four), ModelDevice::model());
    let bar = MmioRange::from_raw(HPA_BASE, BIG_BAR_PAGES).unwrap();
    let g = tsm.create_guest().unwrap();
    let rid = RequesterId::try_new(0, 3, 0, 0).unwrap();
    let dev = tsm.create_device(rid, &[bar]).unwrap();
    let tdi = tsm.create_tdi(dev, rid).unwrap();
    tsm.with_device(|d| d.report_ranges(rid, &[bar])).unwrap();
    tsm.bind(tdi, g).unwrap();
    let size = PageSize::Size2M;
    for i in 0..BIG_LEAVES {
        let off = i * size.bytes();
        tsm.map_mmio(
            tdi,
            g,
            Gpa::try_new(GPA_BASE + off).unwrap(),
            Hpa::try_new(HPA_BASE + off).unwrap(),
            size,
        )
        .unwrap();
    }
    (tsm, tdi)
}

/// Unbinds to the end; (calls, time).
fn unbind_all(tsm: &Firmware<'_>, tdi: tsm_core::TdiId) -> (u32, Duration) {
    let start = Instant::now();
    let mut calls = 0;
    loop {
        calls += 1;
        match tsm.unbind(tdi).unwrap() {
            Completion::Resumable => continue,
            Completion::Done => break,
            Completion::Relay(_) => panic!("Relayed hands every request to the device"),
        }
    }
    (calls, start.elapsed())
}

fn unbind(c: &mut Criterion) {
    let mut mem = vec![Page::ZERO; POOL_PAGES];
    let mut group = c.benchmark_group("unbind_64g_2m");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(4));
    group.throughput(Throughput::Elements(BIG_LEAVES));
    group.bench_function("total", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let (tsm, tdi) = bound_64g(&mut mem);
                total += unbind_all(&tsm, tdi).1;
            }
            total
        });
    });
    group.throughput(Throughput::Elements(1));
    group.bench_function("per_call", |b| {
        b.iter_custom(|iters| {
            // Time `iters` single calls, rebuilding the world whenever an unbind finishes.
            let mut total = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let (tsm, tdi) = bound_64g(&mut mem);
                loop {
                    let start = Instant::now();
                    let r = black_box(tsm.unbind(tdi).unwrap());
                    total += start.elapsed();
                    done += 1;
                    if r == Completion::Done || done >= iters {
                        break;
                    }
                }
            }
            total
        });
    });
    group.finish();
}

/// One pass of every workload with a plain clock, printed side by side.
fn summary() {
    let mut mem = vec![Page::ZERO; POOL_PAGES];
    let best = |f: &mut dyn FnMut() -> Duration| (0..5).map(|_| f()).min().unwrap();
    println!("\nsummary (best of 5 runs; map + unmap of every page counts as one page):");
    for (name, pages) in [
        ("contiguous 1 GiB", contiguous()),
        ("scattered", scattered()),
    ] {
        let s = best(&mut || {
            let t = Instant::now();
            sept_round(&mut mem, &pages);
            t.elapsed()
        });
        let x = best(&mut || {
            let t = Instant::now();
            x86_round(&mut mem, &pages);
            t.elapsed()
        });
        let rate = |d: Duration| pages.len() as f64 / d.as_secs_f64();
        println!(
            "  {name:17} {:>6} pages: S-EPT {:>12.0} pages/s, x86_64 OffsetPageTable {:>12.0} pages/s, ratio S-EPT/x86_64 {:.2}",
            pages.len(),
            rate(s),
            rate(x),
            rate(s) / rate(x)
        );
    }
    let (tsm, tdi) = bound_64g(&mut mem);
    let (calls, total) = unbind_all(&tsm, tdi);
    println!(
        "  unbind 64 GiB in 2 MiB leaves ({BIG_LEAVES} leaves): {calls} calls, total {:.2} ms, {:.1} us per call",
        total.as_secs_f64() * 1e3,
        total.as_secs_f64() * 1e6 / f64::from(calls)
    );
}

criterion_group!(benches, mappers, unbind);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
