//! Benchmarks (`cargo bench -p tsm-bench --bench threads`): one firmware, two independent guests,
//! one thread against two (issue 13's target: two threads at least 1.8 times one thread's
//! throughput).
//!
//! One firmware (`Tsm`, over the core's in-memory table `MemTable` and over the TDX S-EPT
//! `Sept`) serves two lanes. A lane is a guest of its own and a device of its own with one TDI
//! owning its own 32 MiB BAR; each lane's host relays to its own model device (its own DOE
//! mailbox, as on real hardware), so the only things the lanes share are the firmware's.
//!
//! The fixed workload is both lanes' work, done by one thread (lane 0, then lane 1) or by two
//! (one lane each): the same calls either way, and the table holds as many leaves when the same
//! share of the work is done:
//!
//! - `map`: [`MEM_PAGES`] times ([`SEPT_PAGES`] on the S-EPT, whose map does not scan), map a
//!   4 KiB page of the lane's TDI, then ask, as the host, to unmap it (refused, `TdiBound`: the
//!   TDI is bound). The TDI is bound before the timing and unbound after it.
//! - `cycle`: [`CYCLES`] times, bind the TDI (its exchange with the device relayed), map
//!   [`CYCLE_PAGES`] pages, unbind to the end (its STOP relayed). All timed; the device's own
//!   work on the relayed requests is in the time too (on both sides alike).
//!
//! Every `Busy` result is retried at once and counted. The time of a round is the wall clock
//! from the first thread's start (after a spinning barrier; threads are spawned before it) to
//! the last thread's end. Criterion reports each configuration; a summary at the end prints
//! what the README quotes: each configuration's median round over [`ROUNDS`] rounds, the ratio,
//! the `Busy` retries by operand, how much of a 2-thread round the threads ran side by side (a
//! loaded 2-CPU machine often runs them one after the other, which measures nothing), and the
//! median of the rounds where they did for at least [`SIDE_BY_SIDE`] of it. No timing is
//! asserted. `TSM_BENCH_DEBUG` prints every round's time and overlap.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use platform_tdx::frames::{FramePool, Page};
use platform_tdx::sept::{Sept, SeptLevels};
use tsm_core::device_model::ModelDevice;
use tsm_core::mem_table::MemTable;
use tsm_core::relay::host::SharedDevice;
use tsm_core::{
    Completion, Error, Gpa, GuestId, Hpa, MAX_RELAY_BYTES, MmioRange, ModelSession, Operand,
    PageSize, RequesterId, ReservedMemory, SecureTable, TdiId, Tsm, TsmResult,
};

/// Lanes (guests with a TDI each) of the fixed workload.
const LANES: usize = 2;
/// Guest addresses of every lane start here (each guest has its own address space).
const GPA_BASE: u64 = 0x10_0000_0000;
/// Lane `i`'s BAR starts at `HPA_BASE + i * BAR_STRIDE`.
const HPA_BASE: u64 = 0x100_0000_0000;
/// 64 MiB between BARs.
const BAR_STRIDE: u64 = 0x400_0000;
/// 32 MiB BARs.
const BAR_PAGES: u64 = 8192;
/// Pages each lane maps in the `map` workload on the in-memory table: its map and leaf look-up
/// scan every leaf, so more pages would time the scan rather than the locks.
const MEM_PAGES: u64 = 1024;
/// Pages each lane maps in the `map` workload on the S-EPT: a round of several milliseconds,
/// long enough for the two threads to overlap on a loaded machine.
const SEPT_PAGES: u64 = 8192;
/// Bind/map/unbind cycles each lane makes in the `cycle` workload.
const CYCLES: u64 = 16;
/// Pages each cycle maps.
const CYCLE_PAGES: u64 = 32;
/// Leaves the in-memory table has room for: both lanes' pages.
const MEM_LEAVES: usize = 2048;
/// Pool pages for the S-EPT and its metadata table (both lanes, with room).
const POOL_PAGES: usize = 1024;
/// Where the S-EPT's pool pretends to live.
const POOL_PHYS: u64 = 0x40_0000_0000;
/// Rounds per configuration in the summary.
const ROUNDS: usize = 81;
/// The share of a round both threads must run side by side for the round to count as one
/// where they did (ours: the machine is shared, and often runs them one after the other).
const SIDE_BY_SIDE: f64 = 0.5;
/// Retries of one call before the bench calls it a livelock.
const MAX_RETRIES: u64 = 100_000_000;

/// One guest, one device (its own model device) with one TDI owning one BAR.
struct Lane {
    guest: GuestId,
    tdi: TdiId,
    bar: u64,
    device: SharedDevice,
}

/// The firmware (its secure table in `N` shards) and its lanes; built once per table, outside
/// every timing.
struct World<T, const N: usize> {
    fw: Tsm<T, ModelSession, N>,
    lanes: Vec<Lane>,
    /// Pages each lane maps in the `map` workload.
    pages: u64,
}

fn world<T: SecureTable, const N: usize>(tables: [T; N], pages: u64) -> World<T, N> {
    let fw = Tsm::sharded(
        tables,
        std::array::from_fn(|_| ModelSession::model()),
        ReservedMemory::new(),
    );
    let lanes = (0..LANES)
        .map(|i| {
            let bar = HPA_BASE + i as u64 * BAR_STRIDE;
            let range = MmioRange::from_raw(bar, BAR_PAGES).unwrap();
            let rid = RequesterId::try_new(0, 3 + i as u8, 0, 0).unwrap();
            let guest = fw.create_guest().unwrap();
            let dev = fw.create_device(rid, &[range]).unwrap();
            let tdi = fw.create_tdi(dev, rid).unwrap();
            let mut device = ModelDevice::model();
            device.report_ranges(rid, &[range]);
            Lane {
                guest,
                tdi,
                bar,
                device: SharedDevice::new(device),
            }
        })
        .collect();
    World { fw, lanes, pages }
}

/// Operations one thread (or a round) made, and the `Busy` results it retried, by operand in
/// lock order ([`Operand::ALL`]).
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    ops: u64,
    busy_by: [u64; 7],
}

impl Counts {
    fn busy(&self) -> u64 {
        self.busy_by.iter().sum()
    }
    fn add(&mut self, o: &Counts) {
        self.ops += o.ops;
        for (a, b) in self.busy_by.iter_mut().zip(o.busy_by) {
            *a += b;
        }
    }
}

impl<T: SecureTable, const N: usize> World<T, N> {
    /// `call` until it is not `Busy`, counting the operation and its retries.
    fn retry<R>(&self, n: &mut Counts, mut call: impl FnMut() -> TsmResult<R>) -> TsmResult<R> {
        n.ops += 1;
        for _ in 0..MAX_RETRIES {
            match call() {
                Err(Error::Busy(o)) => {
                    n.busy_by[Operand::ALL.iter().position(|a| *a == o).unwrap()] += 1;
                    std::hint::spin_loop();
                }
                r => return r,
            }
        }
        panic!("{MAX_RETRIES} Busy results in a row");
    }

    /// Relays from `first` to the end of the operation, as a host does: each request to the
    /// lane's device, each answer back (retried while `Busy`).
    fn relay(
        &self,
        lane: &Lane,
        first: TsmResult<Completion>,
        buf: &mut [u8; MAX_RELAY_BYTES],
        n: &mut Counts,
    ) -> Completion {
        let mut outcome = first.unwrap();
        while let Completion::Relay(len) = outcome {
            let mut answer = [0u8; MAX_RELAY_BYTES];
            let k = lane.device.lock().answer(&buf[..len], &mut answer);
            let response = k.map(|k| &answer[..k]);
            outcome = self
                .retry(n, || self.fw.device_response(lane.tdi, response, buf))
                .unwrap();
        }
        outcome
    }

    fn bind(&self, lane: &Lane, n: &mut Counts) {
        let mut buf = [0u8; MAX_RELAY_BYTES];
        let first = self.retry(n, || self.fw.bind(lane.tdi, lane.guest, &mut buf));
        assert_eq!(self.relay(lane, first, &mut buf, n), Completion::Done);
    }

    fn unbind(&self, lane: &Lane, n: &mut Counts) {
        let mut buf = [0u8; MAX_RELAY_BYTES];
        loop {
            let first = self.retry(n, || self.fw.unbind(lane.tdi, &mut buf));
            match self.relay(lane, first, &mut buf, n) {
                Completion::Done => return,
                Completion::Resumable => {}
                Completion::Relay(_) => panic!("relayed to the end, yet a request is left"),
            }
        }
    }

    fn page(lane: &Lane, i: u64) -> (Gpa, Hpa) {
        (
            Gpa::try_new(GPA_BASE + i * 4096).unwrap(),
            Hpa::try_new(lane.bar + i * 4096).unwrap(),
        )
    }

    fn map(&self, lane: &Lane, i: u64, n: &mut Counts) {
        let (gpa, hpa) = Self::page(lane, i);
        let k = PageSize::Size4K;
        self.retry(n, || self.fw.map_mmio(lane.tdi, lane.guest, gpa, hpa, k))
            .unwrap();
    }

    /// The `map` workload of one lane: map, refused host unmap, `self.pages` times.
    fn map_refused(&self, lane: &Lane, n: &mut Counts) {
        for i in 0..self.pages {
            self.map(lane, i, n);
            let (gpa, _) = Self::page(lane, i);
            let r = self.retry(n, || self.fw.host_unmap(lane.guest, gpa, PageSize::Size4K));
            assert_eq!(r, Err(Error::TdiBound));
        }
    }

    /// The `cycle` workload of one lane.
    fn cycles(&self, lane: &Lane, n: &mut Counts) {
        for _ in 0..CYCLES {
            self.bind(lane, n);
            for i in 0..CYCLE_PAGES {
                self.map(lane, i, n);
            }
            self.unbind(lane, n);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Work {
    Map,
    Cycle,
}

impl Work {
    fn name(self) -> &'static str {
        match self {
            Work::Map => "map + refused unmap",
            Work::Cycle => "bind/map/unbind",
        }
    }

    /// What one round does, in the units the summary counts: map/refused-unmap pairs, or
    /// cycles.
    fn units(self, pages: u64) -> u64 {
        LANES as u64
            * match self {
                Work::Map => pages,
                Work::Cycle => CYCLES,
            }
    }
}

/// What one round measured.
struct Round {
    /// Wall time from the first thread's start to the last thread's end.
    time: Duration,
    counts: Counts,
    /// The share of the wall time every thread was working: 1 for one thread; for two, how
    /// much the machine let them run side by side.
    overlap: f64,
}

/// One round of `work` over both lanes on `threads` threads (1: lane after lane; 2: a lane
/// each), the TDIs bound around it for `map`.
fn round<T: SecureTable + Send, const N: usize>(
    w: &World<T, N>,
    work: Work,
    threads: usize,
) -> Round {
    let mut setup = Counts::default();
    if work == Work::Map {
        for lane in &w.lanes {
            w.bind(lane, &mut setup);
        }
    }
    let lanes_of: Vec<Vec<&Lane>> = match threads {
        1 => vec![w.lanes.iter().collect()],
        _ => w.lanes.iter().map(|l| vec![l]).collect(),
    };
    // A spinning barrier: every thread is on a CPU when the work starts (a parking barrier
    // wakes them one by one, and on a short round they then barely overlap).
    let ready = AtomicUsize::new(0);
    let spans: Vec<(Instant, Instant, Counts)> = std::thread::scope(|s| {
        let handles: Vec<_> = lanes_of
            .iter()
            .map(|lanes| {
                let (ready, threads) = (&ready, lanes_of.len());
                s.spawn(move || {
                    let mut n = Counts::default();
                    ready.fetch_add(1, Ordering::SeqCst);
                    while ready.load(Ordering::SeqCst) < threads {
                        std::hint::spin_loop();
                    }
                    let began = Instant::now();
                    for lane in lanes {
                        match work {
                            Work::Map => w.map_refused(lane, &mut n),
                            Work::Cycle => w.cycles(lane, &mut n),
                        }
                    }
                    (began, Instant::now(), n)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    if work == Work::Map {
        for lane in &w.lanes {
            w.unbind(lane, &mut setup);
        }
    }
    // Every lane unbound to the end: no leaf left in any BAR.
    for lane in &w.lanes {
        let bar = MmioRange::from_raw(lane.bar, BAR_PAGES).unwrap();
        let left =
            w.fw.with_guest_table(lane.guest, |t| t.next_leaf(bar, bar.base()))
                .unwrap();
        assert_eq!(left, None, "a leaf left after the round");
    }
    let first = spans.iter().map(|s| s.0).min().unwrap();
    let last = spans.iter().map(|s| s.1).max().unwrap();
    let mut total = Counts::default();
    for (_, _, n) in &spans {
        total.add(n);
    }
    let all_started = spans.iter().map(|s| s.0).max().unwrap();
    let first_ended = spans.iter().map(|s| s.1).min().unwrap();
    let time = last - first;
    let both = first_ended.saturating_duration_since(all_started);
    Round {
        time,
        counts: total,
        overlap: both.as_secs_f64() / time.as_secs_f64(),
    }
}

/// Runs `f` on each table's world: the in-memory table, then the S-EPT, each first with one
/// shard (every guest behind one table lock) and then with two (a guest's table each, each
/// S-EPT shard over a pool of its own of the same size). `f` gets the table's name, the pages
/// of its `map` workload and a round of it.
fn each_table(mut f: impl FnMut(&'static str, u64, &dyn Fn(Work, usize) -> Round)) {
    // `TSM_BENCH_TABLES=x2` runs only the tables whose name holds that text.
    let only = std::env::var("TSM_BENCH_TABLES").unwrap_or_default();
    let mut f = |name: &'static str, pages, run: &dyn Fn(Work, usize) -> Round| {
        if name.contains(only.as_str()) {
            f(name, pages, run);
        }
    };
    let mem = world([MemTable::<MEM_LEAVES>::new()], MEM_PAGES);
    f("MemTable x1", MEM_PAGES, &|work, threads| {
        round(&mem, work, threads)
    });
    let mem = world([MemTable::<MEM_LEAVES>::new(), MemTable::new()], MEM_PAGES);
    f("MemTable x2", MEM_PAGES, &|work, threads| {
        round(&mem, work, threads)
    });
    let mut frames = vec![Page::ZERO; POOL_PAGES * 3];
    let (one, two) = frames.split_at_mut(POOL_PAGES);
    let (two_a, two_b) = two.split_at_mut(POOL_PAGES);
    fn sept(pages: &mut [Page], at: u64) -> Sept<'_> {
        Sept::new(FramePool::new(pages, at).unwrap(), SeptLevels::Four)
    }
    let step = POOL_PAGES as u64 * 4096;
    let x1 = world([sept(one, POOL_PHYS)], SEPT_PAGES);
    f("Sept x1", SEPT_PAGES, &|work, threads| {
        round(&x1, work, threads)
    });
    let x2 = world(
        [
            sept(two_a, POOL_PHYS + step),
            sept(two_b, POOL_PHYS + 2 * step),
        ],
        SEPT_PAGES,
    );
    f("Sept x2", SEPT_PAGES, &|work, threads| {
        round(&x2, work, threads)
    });
}

fn threads(c: &mut Criterion) {
    each_table(|table, pages, run| {
        for work in [Work::Map, Work::Cycle] {
            let mut group = c.benchmark_group(format!("threads/{table}/{}", work.name()));
            group
                .sample_size(10)
                .measurement_time(Duration::from_secs(2))
                .throughput(Throughput::Elements(work.units(pages)));
            for threads in [1, 2] {
                group.bench_function(BenchmarkId::from_parameter(threads), |b| {
                    b.iter_custom(|iters| (0..iters).map(|_| run(work, threads).time).sum());
                });
            }
            group.finish();
        }
    });
}

/// Each configuration's median round over [`ROUNDS`], printed side by side.
fn summary() {
    println!(
        "\nsummary (median of {ROUNDS} rounds; the same fixed work on 1 and 2 threads; set-up \
         untimed):"
    );
    each_table(|table, pages, run| {
        for work in [Work::Map, Work::Cycle] {
            let mut rate = [0.0; 2];
            let mut n = [Counts::default(); 2];
            let mut overlap = 0.0;
            // 2-thread rounds in which the threads ran side by side for at least
            // [`SIDE_BY_SIDE`] of the round, and their median rate.
            let mut side_by_side = (0, f64::NAN);
            for threads in [1, 2] {
                let mut times = vec![];
                let mut overlaps = vec![];
                for _ in 0..ROUNDS {
                    let r = run(work, threads);
                    times.push(r.time);
                    overlaps.push(r.overlap);
                    n[threads - 1].add(&r.counts);
                }
                let mut sorted = times.clone();
                sorted.sort();
                rate[threads - 1] = work.units(pages) as f64 / sorted[ROUNDS / 2].as_secs_f64();
                if std::env::var("TSM_BENCH_DEBUG").is_ok() {
                    eprintln!(
                        "  {table} {} {threads}: times {times:?} overlaps {overlaps:.2?}",
                        work.name()
                    );
                }
                if threads == 2 {
                    let mut both: Vec<Duration> = times
                        .iter()
                        .zip(&overlaps)
                        .filter(|(_, o)| **o >= SIDE_BY_SIDE)
                        .map(|(t, _)| *t)
                        .collect();
                    both.sort();
                    if let Some(t) = both.get(both.len() / 2) {
                        side_by_side = (both.len(), work.units(pages) as f64 / t.as_secs_f64());
                    }
                }
                overlaps.sort_by(f64::total_cmp);
                overlap = overlaps[ROUNDS / 2];
            }
            let unit = match work {
                Work::Map => "pairs/s",
                Work::Cycle => "cycles/s",
            };
            let per_op = |c: &Counts| c.busy() as f64 / c.ops as f64;
            // The share of calls that were refused `Busy` (each retry is a call).
            let share = |c: &Counts| c.busy() as f64 / (c.ops + c.busy()) as f64 * 100.0;
            let names = [
                "device table",
                "device",
                "tdi",
                "guest",
                "ownership",
                "table",
                "transport",
            ];
            let by: Vec<String> = names
                .iter()
                .zip(n[1].busy_by)
                .filter(|(_, k)| *k > 0)
                .map(|(name, k)| format!("{name} {:.0}%", k as f64 / n[1].busy() as f64 * 100.0))
                .collect();
            println!(
                "  {table:11} {:20}: 1 thread {:>9.0} {unit}, 2 threads {:>9.0} {unit}, ratio \
                 {:.2} (target >= 1.8); Busy: 1 thread {} of {} calls, 2 threads {:.2} retries \
                 per operation ({:.0}% of calls; {}); the two threads side by side {:.0}% of a round \
                 (median); {} rounds side by side for half the round or more: {:.0} {unit}, \
                 ratio {:.2}",
                work.name(),
                rate[0],
                rate[1],
                rate[1] / rate[0],
                n[0].busy(),
                n[0].ops,
                per_op(&n[1]),
                share(&n[1]),
                by.join(", "),
                overlap * 100.0,
                side_by_side.0,
                side_by_side.1,
                side_by_side.1 / rate[0],
            );
        }
    });
}

criterion_group!(benches, threads);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
