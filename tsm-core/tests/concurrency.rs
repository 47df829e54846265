//! Many threads drive one firmware (the core over its in-memory table) at once, in rounds:
//! every round starts behind a barrier, so the threads meet on the few objects there are (three
//! guests, two devices with two TDIs each), and ends with every invariant checked on the quiet
//! firmware, the per-guest bound-TDI counts included. Try-locks make contention `Busy`, never a
//! hang, and contention must have happened: at least a minimum number of `Busy` results.
//! Afterwards every TDI unbinds completely.
//!
//! Soak runs: `TSM_CONC_THREADS` (default 8) threads and `TSM_CONC_ROUNDS` (default 20) rounds
//! of at least [`OPS_PER_ROUND`] operations and 10 ms per thread, e.g.
//! `TSM_CONC_THREADS=16 TSM_CONC_ROUNDS=2000 cargo test -p tsm-core --release --test
//! concurrency -- --nocapture`. The `Busy` floor scales with the rounds and needs two threads
//! or more (one thread meets no one). The same workload on the TDX S-EPT and the SEV
//! RMP is `tests/tests/concurrency.rs` of `tsm-tests`, with the same knobs.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

mod common;

use std::sync::Barrier;
use std::time::{Duration, Instant};

use common::{World, bar, check_invariants, report_and_bind, world};
use tsm_core::*;

/// Operations each thread performs per round, at least.
const OPS_PER_ROUND: u64 = 250;
/// How long each thread works per round, at least: several scheduler time slices, so that
/// threads run side by side or are preempted inside the firmware, on a loaded machine too.
const ROUND_TIME: Duration = Duration::from_millis(10);
/// `Busy` results required per round, on average over a run with two threads or more. The
/// least 20 runs of the default knobs showed on a loaded two-core machine was over 1.3 million
/// per run (65,000 a round) in debug builds and over 4 million in release builds, on every
/// table: this floor is hundreds of times lower, yet no run without contention reaches it.
const MIN_BUSY_PER_ROUND: u64 = 200;

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v} is not a number"))
        })
        .unwrap_or(default)
}

/// xorshift64: a deterministic per-thread stream, no dependency needed.
struct Rng(u64);
impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

/// What one thread saw in one round.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    ops: u64,
    ok: u64,
    /// `Busy` results, by operand in lock order.
    busy_by: [u64; 7],
}

impl Tally {
    fn busy(&self) -> u64 {
        self.busy_by.iter().sum()
    }
    fn add(&mut self, o: &Tally) {
        self.ops += o.ops;
        self.ok += o.ok;
        for (a, b) in self.busy_by.iter_mut().zip(o.busy_by) {
            *a += b;
        }
    }
}

/// One thread's operations of one round: at least [`OPS_PER_ROUND`], for at least
/// [`ROUND_TIME`].
fn hammer<const B: bool>(w: &World<B>, rng: &mut Rng) -> Tally {
    let mut tally = Tally::default();
    let began = Instant::now();
    while tally.ops < OPS_PER_ROUND || began.elapsed() < ROUND_TIME {
        let t = rng.next(4) as usize;
        let tdi = w.tdis[t];
        let g = w.guests[rng.next(3) as usize];
        let owner = w
            .tsm
            .tdi(tdi)
            .ok()
            .and_then(|r| r.state.owner())
            .unwrap_or(g);
        let base = bar(t / 2) + (t as u64 % 2) * 0x40_0000;
        let page = rng.next(64) * 0x1000;
        let gpa = Gpa::try_new(0x10_0000_0000 + (t as u64) * 0x100_0000 + page).unwrap();
        let hpa = Hpa::try_new(base + page).unwrap();
        let done = |r: TsmResult<()>| r.map(|()| Completion::Done);
        let r = match rng.next(10) {
            0 => done(report_and_bind(w, tdi, g, &[(base, 96)])),
            1 | 2 => done(w.tsm.map_mmio(tdi, owner, gpa, hpa, PageSize::Size4K)),
            3 => done(w.tsm.start_with_guest_accept(owner, tdi)),
            4 => w.tsm.unbind(tdi),
            5 => w.tsm.device_error(tdi),
            6 => w.tsm.check_interface(tdi),
            7 => done(w.tsm.host_zap(MmioRange::from_raw(base, 1).unwrap())),
            8 => w.tsm.host_track(owner),
            _ => {
                let r = w.tsm.host_unmap(owner, gpa, PageSize::Size4K);
                // Every private leaf belongs to a bound TDI: the host never removes one, whatever
                // another thread mapped in between.
                if let Ok(hpa) = r {
                    panic!("host removed the private leaf at {gpa:?} -> {hpa:?}");
                }
                r.map(|_| Completion::Done)
            }
        };
        tally.ops += 1;
        match r {
            Ok(_) => tally.ok += 1,
            Err(Error::Busy(o)) => {
                tally.busy_by[Operand::ALL.iter().position(|a| *a == o).unwrap()] += 1;
            }
            Err(_) => {}
        }
    }
    tally
}

#[test]
fn concurrent_operations_keep_the_invariants_with_host_made_contexts() {
    concurrent_operations::<false>();
}

#[test]
fn concurrent_operations_keep_the_invariants_with_contexts_made_at_bind() {
    concurrent_operations::<true>();
}

/// The rounds over one table mode: `B`, the table makes each TDI's context at the end of its
/// bind (SEV-TIO); otherwise the host makes it (TDX).
fn concurrent_operations<const B: bool>() {
    let w = world::<B>();
    let threads = knob("TSM_CONC_THREADS", 8).max(1);
    let rounds = knob("TSM_CONC_ROUNDS", 20);
    let mut rngs: Vec<Rng> = (0..threads)
        .map(|id| Rng(0x9e37_79b9_7f4a_7c15 ^ (id as u64 + 1)))
        .collect();
    let mut total = Tally::default();
    for round in 0..rounds {
        let start = Barrier::new(threads);
        std::thread::scope(|s| {
            let handles: Vec<_> = rngs
                .iter_mut()
                .map(|rng| {
                    let (w, start) = (&w, &start);
                    s.spawn(move || {
                        start.wait();
                        hammer(w, rng)
                    })
                })
                .collect();
            for h in handles {
                total.add(&h.join().unwrap());
            }
        });
        // The round is over: every thread has joined, the firmware is quiet.
        let checked =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check_invariants(&w)));
        assert!(checked.is_ok(), "invariant broken after round {round}");
    }
    let [dt, dev, tdi, guest, own, table, transport] = total.busy_by;
    println!(
        "core (contexts made at bind: {B}): {threads} threads, {rounds} rounds: {} ops, {} ok, {} busy (device table {dt}, \
         device {dev}, tdi {tdi}, guest {guest}, ownership {own}, secure table {table}, \
         transport {transport})",
        total.ops,
        total.ok,
        total.busy()
    );
    if threads > 1 {
        let floor = rounds as u64 * MIN_BUSY_PER_ROUND;
        assert!(
            total.busy() >= floor,
            "only {} Busy results in {} operations (floor {floor}): the threads did not contend",
            total.busy(),
            total.ops
        );
    }
    for &t in &w.tdis {
        let mut calls = 0;
        while w.tsm.unbind(t) != Ok(Completion::Done) {
            calls += 1;
            assert!(calls < 100);
        }
    }
    assert!(w.tsm.with_table(|t| t.leaves().is_empty()).unwrap());
    check_invariants(&w);
}

/// Two guests in shards of their own (slots 0 and 1 of a two-shard firmware), each with a
/// device and a bound TDI of its own: two threads mapping, asking the host to unmap and block
/// (refused) and looking up their own lane's pages never meet a lock the other holds. Every
/// lock those calls take is the lane's own (TDI, device, guest, table shard) or the ownership
/// table read side by side, so not one `Busy` is allowed, however the threads interleave.
#[test]
fn independent_guests_do_not_contend() {
    use tsm_core::device_model::ModelDevice;
    use tsm_core::mem_table::MemTable;
    use tsm_core::relay::host::Relayed;

    const PAGES: u64 = 256;
    let tsm = Relayed::<MemTable<512>, 2>::sharded(
        [MemTable::new(), MemTable::new()],
        ModelDevice::model(),
    );
    let lanes: Vec<(GuestId, TdiId, u64)> = (0..2)
        .map(|i| {
            let guest = tsm.create_guest().unwrap();
            assert_eq!(usize::from(guest.slot()), i, "one guest per shard");
            let rid = RequesterId::try_new(0, 3 + i as u8, 0, 0).unwrap();
            let range = MmioRange::from_raw(bar(i), PAGES).unwrap();
            let dev = tsm.create_device(rid, &[range]).unwrap();
            let tdi = tsm.create_tdi(dev, rid).unwrap();
            tsm.with_device(|d| d.report_ranges(rid, &[range])).unwrap();
            tsm.bind(tdi, guest).unwrap();
            (guest, tdi, bar(i))
        })
        .collect();
    let rounds = knob("TSM_CONC_ROUNDS", 20);
    for _ in 0..rounds {
        let start = Barrier::new(2);
        let busy: u64 = std::thread::scope(|s| {
            let handles: Vec<_> = lanes
                .iter()
                .map(|&(guest, tdi, base)| {
                    let (tsm, start) = (&tsm, &start);
                    s.spawn(move || {
                        let mut busy = 0u64;
                        let mut count = |r: Result<(), Error>| {
                            if let Err(Error::Busy(o)) = r {
                                eprintln!("Busy({o:?}) between independent guests");
                                busy += 1;
                            }
                        };
                        start.wait();
                        for i in 0..PAGES {
                            let gpa = Gpa::try_new(0x10_0000_0000 + i * 0x1000).unwrap();
                            let hpa = Hpa::try_new(base + i * 0x1000).unwrap();
                            let k = PageSize::Size4K;
                            count(tsm.map_mmio(tdi, guest, gpa, hpa, k));
                            let unmap = tsm.host_unmap(guest, gpa, k);
                            assert!(matches!(unmap, Err(Error::TdiBound | Error::Busy(_))));
                            count(unmap.map(drop).or_else(ok_if_bound));
                            count(tsm.host_block(guest, gpa, k).or_else(ok_if_bound));
                            count(tsm.leaf(guest, gpa).map(drop));
                            count(tsm.owner_of(hpa, k).map(drop));
                        }
                        busy
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(busy, 0, "independent guests contended");
        // The round's leaves go, one unbind per lane (its release writes ownership, so the
        // lanes unbind one after the other), and the TDIs bind again.
        for &(guest, tdi, base) in &lanes {
            let mut calls = 0;
            while tsm.unbind(tdi).unwrap() != Completion::Done {
                calls += 1;
                assert!(calls < 1000, "the unbind never finished");
            }
            let iface = tsm.tdi(tdi).unwrap().iface;
            let range = MmioRange::from_raw(base, PAGES).unwrap();
            tsm.with_device(|d| d.report_ranges(iface, &[range]))
                .unwrap();
            tsm.bind(tdi, guest).unwrap();
        }
    }
}

fn ok_if_bound(e: Error) -> Result<(), Error> {
    match e {
        Error::TdiBound => Ok(()),
        e => Err(e),
    }
}
