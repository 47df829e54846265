//! The concurrent stage: every CPU drives one shared firmware at once with the workload of
//! `tsm_tests::workload` (bind, map, the guest's own DMA accept and START, unbind, device
//! errors, state checks, host zaps, TLB tracks and unmaps on four TDIs of two guests), on
//! each secure table in turn: the core
//! over its in-memory table, TDX over the S-EPT in page frames from the kernel's pool, and
//! SEV-TIO over the RMP in physical frames (its core, which SEV's lock discipline protects).
//! Each table's part starts behind a barrier, and a CPU that has done its share goes on until
//! every CPU has, so the CPUs meet. Try-locks make contention a `Busy` status, never a hang.
//! Afterwards, for each table: contention happened (at least [`MIN_BUSY`] `Busy` results
//! across the CPUs, with two CPUs or more), every invariant holds (the per-guest bound-TDI
//! counts included), and every TDI unbinds completely.
//!
//! Then the opposite: independent lanes (`workload::run_lane`) on a core firmware of
//! [`workload::LANES`] shards, CPU `i` on lane `i` (a guest in shard `i`, its own device and
//! bound TDI), mapping and asking the host to unmap and block: not one `Busy` is allowed,
//! since guests in different shards share no lock.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicUsize, Ordering};

use platform_sev::RmpEntry;
use platform_tdx::frames::{FramePool, Page};
use platform_tdx::sept::{Sept, SeptLevels};
use spin::Once;
use tsm_core::device_model::ModelDevice;
use tsm_core::mem_table::MemTable;
use tsm_core::relay::host::{RelayHost, Relayed};
use tsm_core::{ModelSession, SecureSession, SecureTable};
use tsm_tests::backend::{CoreBackend, FlushControl};
use tsm_tests::backend_sev::{RMP_INDEX_WORDS, RMP_PAGES, SevBackend};
use tsm_tests::backend_tdx::{TdxBackend, TdxFirmware};
use tsm_tests::invariants;
use tsm_tests::workload::{self, Lane, Rng, Tally, Targets};

use crate::frames::FRAME_SIZE;
use crate::{shim, smp, time};

/// Operations each CPU performs on each table, at least.
const OPS: u64 = 4_000;
/// `Busy` results the CPUs must have met on each table together (with two CPUs or more). The
/// least 20 boots of the optimised kernel (4 CPUs, TCG, loaded two-core host) showed was 10,265
/// (boot/README.md): this floor is far below it, yet no run without contention reaches it.
pub const MIN_BUSY: u64 = 1_000;
/// The tables, in the order the stage runs them.
const TABLES: [&str; 4] = ["core", "tdx", "sev", "lanes"];
/// The independent-lanes part's index in [`TABLES`].
const LANES_PART: usize = 3;
/// Leaves each lane's shard holds (a lane maps at most [`workload::LANE_PAGES`]).
const LANE_LEAVES: usize = 128;
/// Leaves the core's in-memory table holds (the workload maps at most 4 x 96).
const CORE_LEAVES: usize = 1024;
/// Physical frames of the TDX S-EPT pool.
const TDX_POOL_FRAMES: u64 = 512;

type CoreFirmware = Relayed<MemTable<CORE_LEAVES>>;
/// The lanes' firmware: a shard per lane.
type LanesFirmware = Relayed<MemTable<LANE_LEAVES>, { workload::LANES }>;

/// The core's firmware and its device, built at compile time: far too large for an AP's stack.
static CORE: CoreFirmware = Relayed::new(MemTable::new(), ModelDevice::model());

/// The handles the workload works on in each firmware, once `prepare` built them (`None`:
/// that one could not be set up, which `verify` reports). The TDX and SEV firmwares are
/// built at run time over physical frames; each is set up in its own function, so that no
/// stack frame holds more than one of them.
static CORE_TARGETS: Once<Option<Targets>> = Once::new();
static TDX: Once<Option<(TdxBackend<'static, 'static>, Targets)>> = Once::new();
/// The TDX firmware the backend above drives (it borrows it for the rest of the boot).
static TDX_FW: Once<Option<TdxFirmware<'static>>> = Once::new();
static SEV: Once<Option<(SevBackend<'static>, Targets)>> = Once::new();
/// The lanes' firmware (built at run time on the BSP's stack: its constructor is not const).
static LANES_FW: Once<LanesFirmware> = Once::new();
/// The lanes, once `prepare` bound them.
static LANES: Once<Option<heapless::Vec<Lane, { workload::LANES }>>> = Once::new();

/// CPUs that reached each table's start barrier.
static ARRIVED: [AtomicUsize; 4] = [const { AtomicUsize::new(0) }; 4];
/// CPUs that have done their share of each table.
static DONE: [AtomicUsize; 4] = [const { AtomicUsize::new(0) }; 4];

/// What one CPU did in the stage, per table.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuResult {
    /// The workload's tally on each table.
    pub tables: [Tally; 4],
    /// Milliseconds this CPU spent on each table, its barrier included.
    pub ms: [u64; 4],
    /// Parts that could not run (firmware not set up, a CPU missing at a barrier).
    pub failed: u64,
}

impl CpuResult {
    /// Everything that went wrong: parts that could not run, and host requests that removed
    /// a private leaf.
    pub fn failures(&self) -> u64 {
        self.tables
            .iter()
            .fold(self.failed, |a, t| a.saturating_add(t.failed))
    }
}

impl fmt::Display for CpuResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, t) in TABLES.iter().zip(self.tables.iter()) {
            write!(f, "{name} {} ops {} busy, ", t.ops, t.busy())?;
        }
        write!(f, "{} failed", self.failures())
    }
}

#[inline(never)]
fn setup_core() -> Option<Targets> {
    workload::setup(&mut CoreBackend::new(&CORE, "core")).ok()
}

#[inline(never)]
fn build_tdx() -> Option<TdxFirmware<'static>> {
    let (phys, pages) = shim::physical::<Page>(TDX_POOL_FRAMES)?;
    let pool = FramePool::new(pages, phys)?;
    // Never MMIO: system RAM (the S-EPT pool's frames among it).
    Some(TdxFirmware::with_reserved(
        Sept::new(pool, SeptLevels::Four),
        ModelSession::model(),
        shim::system_ram()?,
    ))
}

#[inline(never)]
fn setup_tdx() -> Option<(TdxBackend<'static, 'static>, Targets)> {
    let fw = TDX_FW.call_once(build_tdx).as_ref()?;
    let mut backend = TdxBackend::new(fw);
    let targets = workload::setup(&mut backend).ok()?;
    Some((backend, targets))
}

#[inline(never)]
fn setup_sev() -> Option<(SevBackend<'static>, Targets)> {
    let rmp_frames = (RMP_PAGES * core::mem::size_of::<RmpEntry>()) as u64 / FRAME_SIZE + 1;
    let (_, rmp) = shim::physical::<RmpEntry>(rmp_frames)?;
    let index_frames = (RMP_INDEX_WORDS * core::mem::size_of::<u32>()) as u64 / FRAME_SIZE + 1;
    let (_, index) = shim::physical::<u32>(index_frames)?;
    let mut backend = SevBackend::new(rmp, index).ok()?;
    let targets = workload::setup(&mut backend).ok()?;
    Some((backend, targets))
}

#[inline(never)]
fn setup_lanes() -> Option<heapless::Vec<Lane, { workload::LANES }>> {
    let fw = LANES_FW.call_once(|| {
        Relayed::sharded(
            [const { MemTable::new() }; workload::LANES],
            ModelDevice::model(),
        )
    });
    workload::setup_lanes(&fw.host()).ok()
}

/// CPU `cpu`'s part of the lanes: the barrier, then its own lane (CPUs past the lanes sit it
/// out) for [`OPS`] operations and on until every CPU with a lane has done so.
fn part_lanes(lanes: &[Lane], (cpu, ncpu): (usize, usize), result: &mut CpuResult) {
    let start = time::now();
    let k = LANES_PART;
    let (Some(done), Some(tally), Some(fw)) =
        (DONE.get(k), result.tables.get_mut(k), LANES_FW.get())
    else {
        result.failed += 1;
        return;
    };
    if !barrier(k, ncpu) {
        kprintln!(
            "smp: FAIL cpu {cpu}: not every cpu reached the lanes' barrier before the stage deadline"
        );
        result.failed += 1;
        return;
    }
    let Some(lane) = lanes.get(cpu) else {
        return;
    };
    let mut more = until_all_done(done, ncpu.min(lanes.len()));
    *tally = workload::run_lane(&fw.host(), lane, &mut more);
    if let Some(ms) = result.ms.get_mut(k) {
        *ms = time::ms_since(start);
    }
}

/// Builds the stage's firmwares and registers their guests, devices and TDIs, before the
/// stage starts.
pub fn prepare() {
    CORE_TARGETS.call_once(setup_core);
    TDX.call_once(setup_tdx);
    SEV.call_once(setup_sev);
    LANES.call_once(setup_lanes);
}

/// Waits until every CPU reached table `k`'s barrier; false if the stage deadline passed first.
fn barrier(k: usize, ncpu: usize) -> bool {
    let Some(arrived) = ARRIVED.get(k) else {
        return false;
    };
    arrived.fetch_add(1, Ordering::AcqRel);
    while arrived.load(Ordering::Acquire) < ncpu {
        if smp::deadline_passed() {
            return false;
        }
        core::hint::spin_loop();
    }
    true
}

/// One CPU's stopping rule in a part: at least [`OPS`] operations, then on until `workers`
/// CPUs have done theirs (counted in `done`) or the stage deadline passes.
fn until_all_done(done: &AtomicUsize, workers: usize) -> impl FnMut(u64) -> bool + '_ {
    let mut counted = false;
    move |ops| {
        if ops < OPS {
            return true;
        }
        if !counted {
            done.fetch_add(1, Ordering::AcqRel);
            counted = true;
        }
        done.load(Ordering::Acquire) < workers && !smp::deadline_passed()
    }
}

/// CPU `cpu`'s part of table `k`: the barrier, then [`OPS`] operations, then more until every
/// CPU has done its [`OPS`] (or the stage deadline passes).
fn part<T: SecureTable + FlushControl, S: SecureSession>(
    tsm: &RelayHost<'_, T, S>,
    targets: &Targets,
    k: usize,
    (cpu, ncpu): (usize, usize),
    result: &mut CpuResult,
) {
    let start = time::now();
    let (Some(done), Some(tally)) = (DONE.get(k), result.tables.get_mut(k)) else {
        result.failed += 1;
        return;
    };
    if !barrier(k, ncpu) {
        let name = TABLES.get(k).copied().unwrap_or("?");
        kprintln!(
            "smp: FAIL cpu {cpu}: not every cpu reached the {name} table's barrier before the stage deadline ({} ms; `deadline=<ms>` sets it)",
            smp::deadline_ms()
        );
        result.failed += 1;
        return;
    }
    let mut rng = Rng::new(cpu, k as u64);
    let mut more = until_all_done(done, ncpu);
    *tally = workload::run_round(tsm, targets, &mut rng, &mut more);
    if let Some(ms) = result.ms.get_mut(k) {
        *ms = time::ms_since(start);
    }
}

/// Runs on every CPU (`cpu` in `0..ncpu`, 0 = BSP) at once: each table in turn.
pub fn run_concurrent(cpu: usize, ncpu: usize) -> CpuResult {
    let mut result = CpuResult::default();
    let me = (cpu, ncpu);
    match CORE_TARGETS.get() {
        Some(Some(targets)) => part(&CORE.host(), targets, 0, me, &mut result),
        _ => result.failed += 1,
    }
    match TDX.get() {
        Some(Some((backend, targets))) => part(&backend.host(), targets, 1, me, &mut result),
        _ => result.failed += 1,
    }
    match SEV.get() {
        Some(Some((backend, targets))) => part(&backend.host(), targets, 2, me, &mut result),
        _ => result.failed += 1,
    }
    match LANES.get() {
        Some(Some(lanes)) => part_lanes(lanes, me, &mut result),
        _ => result.failed += 1,
    }
    result
}

/// The lanes after every CPU finished: not one `Busy`, every outcome the expected one, the
/// invariants hold, every lane unbinds completely.
fn verify_lanes(lanes: &[Lane], results: &[CpuResult], out: &mut dyn Write) -> bool {
    let Some(fw) = LANES_FW.get() else {
        let _ = writeln!(out, "smp: FAIL lanes: no firmware");
        return false;
    };
    let mut total = Tally::default();
    let mut ms = 0;
    for r in results {
        if let Some(t) = r.tables.get(LANES_PART) {
            total.add(t);
        }
        ms = ms.max(r.ms.get(LANES_PART).copied().unwrap_or(0));
    }
    let working = results.len().min(lanes.len());
    let _ = writeln!(
        out,
        "smp: lanes ({working} independent guests, a shard each): {total}, {ms} ms"
    );
    let mut ok = total.failed == 0;
    // No Busy proves nothing unless every lane worked.
    let least = OPS.saturating_mul(working as u64);
    if total.ops < least {
        let _ = writeln!(
            out,
            "smp: FAIL lanes: {} operations, fewer than {least} ({OPS} per lane)",
            total.ops
        );
        ok = false;
    }
    if total.busy() != 0 {
        let _ = writeln!(
            out,
            "smp: FAIL lanes: {} Busy results between independent guests (none allowed)",
            total.busy()
        );
        ok = false;
    }
    let host = fw.host();
    if let Err(v) = invariants::check(fw.firmware()) {
        let _ = writeln!(out, "smp: FAIL lanes: invariant broken: {v:?}");
        return false;
    }
    if let Err((tdi, last)) = workload::drain_lanes(&host, lanes) {
        let _ = writeln!(
            out,
            "smp: FAIL lanes: TDI {tdi:?} never finished unbinding ({last:?})"
        );
        return false;
    }
    ok && invariants::leaf_count(fw.firmware()) == Ok(0)
}

/// Table `k` after every CPU finished: contention happened, the invariants hold, every TDI
/// unbinds completely.
fn verify_table<T: SecureTable + FlushControl, S: SecureSession>(
    host: &RelayHost<'_, T, S>,
    targets: &Targets,
    k: usize,
    results: &[CpuResult],
    out: &mut dyn Write,
) -> bool {
    let name = TABLES.get(k).copied().unwrap_or("?");
    let mut total = Tally::default();
    let mut ms = 0;
    for r in results {
        if let Some(t) = r.tables.get(k) {
            total.add(t);
        }
        ms = ms.max(r.ms.get(k).copied().unwrap_or(0));
    }
    let _ = writeln!(out, "smp: {name}: {total}, {ms} ms");
    let mut ok = total.failed == 0;
    // The guests accept and start on their own: only a gated platform refuses a START.
    if !T::DMA_ACCEPT_BEFORE_START && total.not_accepted != 0 {
        let _ = writeln!(
            out,
            "smp: FAIL {name}: START gated on a platform without the gate"
        );
        ok = false;
    }
    // Some guest reached RUN: a run whose STARTs all failed would pass every other check.
    if total.started == 0 {
        let _ = writeln!(
            out,
            "smp: FAIL {name}: no START went through in {} operations",
            total.ops
        );
        ok = false;
    }
    if results.len() > 1 && total.busy() < MIN_BUSY {
        let _ = writeln!(
            out,
            "smp: FAIL {name}: only {} Busy results across {} cpus (floor {MIN_BUSY}): the cpus did not contend",
            total.busy(),
            results.len()
        );
        ok = false;
    }
    let tsm = host.firmware();
    if let Err(v) = invariants::check(tsm) {
        let _ = writeln!(
            out,
            "smp: FAIL {name}: invariant broken after the concurrent run: {v:?}"
        );
        return false;
    }
    let leaves_before = invariants::leaf_count(tsm).unwrap_or(0);
    if let Err((tdi, last)) = workload::drain(host, targets) {
        let _ = writeln!(
            out,
            "smp: FAIL {name}: TDI {tdi:?} never finished unbinding ({last:?})"
        );
        return false;
    }
    let leaves_after = invariants::leaf_count(tsm);
    let _ = writeln!(
        out,
        "smp: {name}: {leaves_before} leaves mapped at the end, {} after unbinding every TDI",
        leaves_after.map_or(usize::MAX, |n| n)
    );
    if let Err(v) = invariants::check(tsm) {
        let _ = writeln!(
            out,
            "smp: FAIL {name}: invariant broken after unbinding: {v:?}"
        );
        return false;
    }
    ok && leaves_after == Ok(0)
}

/// Once every CPU finished (`results`, one per CPU): each table is checked.
pub fn verify(results: &[CpuResult], out: &mut dyn Write) -> bool {
    let mut ok = true;
    match CORE_TARGETS.get() {
        Some(Some(targets)) => ok &= verify_table(&CORE.host(), targets, 0, results, out),
        _ => {
            let _ = writeln!(out, "smp: FAIL core: no firmware");
            ok = false;
        }
    }
    match TDX.get() {
        Some(Some((backend, targets))) => {
            ok &= verify_table(&backend.host(), targets, 1, results, out);
        }
        _ => {
            let _ = writeln!(out, "smp: FAIL tdx: no firmware (frames or RAM map)");
            ok = false;
        }
    }
    match SEV.get() {
        Some(Some((backend, targets))) => {
            ok &= verify_table(&backend.host(), targets, 2, results, out);
        }
        _ => {
            let _ = writeln!(out, "smp: FAIL sev: no firmware (frames)");
            ok = false;
        }
    }
    match LANES.get() {
        Some(Some(lanes)) => ok &= verify_lanes(lanes, results, out),
        _ => {
            let _ = writeln!(out, "smp: FAIL lanes: not set up");
            ok = false;
        }
    }
    ok
}
