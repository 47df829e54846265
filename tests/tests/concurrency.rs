//! The concurrent workload (`tsm_tests::workload`) on every secure table: the core's in-memory
//! table, the TDX S-EPT in page frames and the SEV-TIO RMP. Threads share one firmware and
//! hammer it in rounds; every round starts behind a barrier (so the threads meet) and ends with
//! every invariant checked on the quiet firmware, the per-guest bound-TDI counts included.
//! Contention must have happened: at least a minimum number of `Busy` results per run.
//! Afterwards every TDI unbinds completely and no leaf is left.
//!
//! Soak runs: `TSM_CONC_THREADS` (default 8) threads and `TSM_CONC_ROUNDS` (default 20) rounds
//! of at least [`OPS_PER_ROUND`] operations and 10 ms per thread, e.g.
//! `TSM_CONC_THREADS=16 TSM_CONC_ROUNDS=2000 cargo test -p tsm-tests --release --test
//! concurrency -- --nocapture`. The `Busy` floor scales with the rounds and needs two threads
//! or more (one thread meets no one).
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use std::sync::Barrier;
use std::time::{Duration, Instant};

use platform_sev::RmpEntry;
use platform_tdx::frames::{FramePool, Page};
use platform_tdx::sept::{Sept, SeptLevels};
use tsm_core::device_model::ModelDevice;
use tsm_core::mem_table::MemTable;
use tsm_core::relay::host::{RelayHost, Relayed};
use tsm_core::{SecureSession, SecureTable};
use tsm_tests::backend::{CoreBackend, FlushControl};
use tsm_tests::backend_sev::{RMP_INDEX_WORDS, RMP_PAGES, SevBackend};
use tsm_tests::backend_tdx::{TdxBackend, TdxFirmware, tdx_firmware};
use tsm_tests::invariants;
use tsm_tests::workload::{self, Rng, Tally, Targets};

/// Operations each thread performs per round, at least.
pub const OPS_PER_ROUND: u64 = 250;
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

/// Runs the workload on `tsm` from `TSM_CONC_THREADS` threads for `TSM_CONC_ROUNDS` rounds,
/// checking every invariant after every round; then asserts the contention floor and that
/// every TDI unbinds completely.
fn hammer<T: SecureTable + FlushControl + Send, S: SecureSession + Send>(
    label: &str,
    host: &RelayHost<'_, T, S>,
    targets: &Targets,
) -> Tally {
    let tsm = host.firmware();
    let threads = knob("TSM_CONC_THREADS", 8).max(1);
    let rounds = knob("TSM_CONC_ROUNDS", 20);
    invariants::check(tsm).unwrap();
    let mut rngs: Vec<Rng> = (0..threads).map(|t| Rng::new(t, 0)).collect();
    let mut total = Tally::default();
    for round in 0..rounds {
        let start = Barrier::new(threads);
        let tallies: Vec<Tally> = std::thread::scope(|s| {
            let handles: Vec<_> = rngs
                .iter_mut()
                .map(|rng| {
                    let start = &start;
                    s.spawn(move || {
                        start.wait();
                        let began = Instant::now();
                        let mut more = |ops| ops < OPS_PER_ROUND || began.elapsed() < ROUND_TIME;
                        workload::run_round(host, targets, rng, &mut more)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for t in &tallies {
            total.add(t);
        }
        if let Err(v) = invariants::check(tsm) {
            panic!("{label}: invariant broken after round {round}: {v:?}");
        }
    }
    println!("{label}: {threads} threads, {rounds} rounds: {total}");
    assert_eq!(
        total.failed, 0,
        "{label}: a host request removed a private leaf"
    );
    // The guests start on their own: START alone is refused for lack of the guest's accept
    // only where the platform gates it (the core's run asserts it met the gate).
    if !T::DMA_ACCEPT_BEFORE_START {
        assert_eq!(total.not_accepted, 0, "{label}: a START gated on SEV");
    }
    // Some guest reached RUN: a run in which every START failed (every accept refused, say)
    // would pass every other check while never tearing a running TDI down.
    assert!(
        total.started > 0,
        "{label}: no START went through in {} operations",
        total.ops
    );
    if threads > 1 {
        let floor = rounds as u64 * MIN_BUSY_PER_ROUND;
        assert!(
            total.busy() >= floor,
            "{label}: only {} Busy results in {} operations (floor {floor}): the threads did not contend",
            total.busy(),
            total.ops
        );
    }
    let leaves = invariants::leaf_count(tsm).unwrap();
    workload::drain(host, targets)
        .unwrap_or_else(|e| panic!("{label}: unbind never finished: {e:?}"));
    invariants::check(tsm).unwrap();
    assert_eq!(
        invariants::leaf_count(tsm),
        Ok(0),
        "{label}: leaves left after unbinding"
    );
    println!("{label}: {leaves} leaves mapped at the end, 0 after unbinding every TDI");
    total
}

/// The firmware tables are large; give the setup room.
fn on_big_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn concurrent_workload_on_the_core_table() {
    on_big_stack(|| {
        let tsm: Box<Relayed<MemTable<1024>>> =
            Box::new(Relayed::new(MemTable::new(), ModelDevice::model()));
        let targets = workload::setup(&mut CoreBackend::new(&tsm, "core")).unwrap();
        let total = hammer("core", &tsm.host(), &targets);
        // Binds succeed often enough here that STARTs before the guest's accept are common.
        assert!(total.not_accepted > 0, "core: no START met the gate");
    });
}

#[test]
fn concurrent_workload_on_the_tdx_sept() {
    on_big_stack(|| {
        let mut mem = vec![Page::ZERO; 512];
        let tsm: Box<TdxFirmware<'_>> = Box::new(tdx_firmware(&mut mem, SeptLevels::Four).unwrap());
        let mut backend = Box::new(TdxBackend::new(&tsm));
        let targets = workload::setup(&mut *backend).unwrap();
        hammer("tdx", &backend.host(), &targets);
    });
}

#[test]
fn concurrent_workload_on_the_sev_rmp() {
    on_big_stack(|| {
        let mut rmp = vec![RmpEntry::new(); RMP_PAGES];
        let mut index = vec![0; RMP_INDEX_WORDS];
        let mut backend = Box::new(SevBackend::new(&mut rmp, &mut index).unwrap());
        let targets = workload::setup(&mut *backend).unwrap();
        hammer("sev", &backend.host(), &targets);
    });
}

/// The independent-lanes workload (`workload::run_lane`): one thread per lane, each lane a
/// guest in a shard of its own with its own device and bound TDI, for `TSM_CONC_ROUNDS` rounds
/// behind a barrier. Not one `Busy` is allowed: every lock those calls take is the lane's own
/// or a copy of the ownership table they only read. Then every lane unbinds completely.
fn lanes<T: SecureTable + FlushControl + Send, const N: usize>(name: &str, fw: &Relayed<T, N>) {
    let host = fw.host();
    let lanes = workload::setup_lanes(&host).unwrap();
    let rounds = knob("TSM_CONC_ROUNDS", 20);
    let mut total = Tally::default();
    for _ in 0..rounds {
        let start = Barrier::new(lanes.len());
        let tallies: Vec<Tally> = std::thread::scope(|s| {
            let handles: Vec<_> = lanes
                .iter()
                .map(|lane| {
                    let (host, start) = (&host, &start);
                    s.spawn(move || {
                        start.wait();
                        let began = Instant::now();
                        workload::run_lane(host, lane, &mut |ops| {
                            ops < OPS_PER_ROUND || began.elapsed() < ROUND_TIME
                        })
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        tallies.iter().for_each(|t| total.add(t));
    }
    println!("{name}: {} lanes: {total}", lanes.len());
    assert_eq!(
        total.busy(),
        0,
        "{name}: independent lanes contended: {total}"
    );
    assert_eq!(
        total.failed, 0,
        "{name}: a lane saw an unexpected outcome: {total}"
    );
    workload::drain_lanes(&host, &lanes).unwrap();
    invariants::check(fw.firmware()).unwrap();
    assert_eq!(invariants::leaf_count(fw.firmware()), Ok(0));
}

#[test]
fn independent_lanes_on_the_core_table_never_contend() {
    on_big_stack(|| {
        let fw: Box<Relayed<MemTable<256>, { workload::LANES }>> = Box::new(Relayed::sharded(
            std::array::from_fn(|_| MemTable::new()),
            ModelDevice::model(),
        ));
        lanes("core", &fw);
    });
}

#[test]
fn independent_lanes_on_the_tdx_sept_never_contend() {
    on_big_stack(|| {
        let mut mem = vec![Page::ZERO; 64 * workload::LANES];
        let mut pools = mem.chunks_mut(64).enumerate().map(|(i, pages)| {
            let at = 0x20_0000_0000 + i as u64 * 64 * 4096;
            Sept::new(FramePool::new(pages, at).unwrap(), SeptLevels::Four)
        });
        let tables: [Sept<'_>; workload::LANES] = std::array::from_fn(|_| pools.next().unwrap());
        let fw = Box::new(Relayed::sharded(tables, ModelDevice::model()));
        lanes("tdx", &fw);
    });
}
