//! The concurrent stage: every CPU drives one shared firmware instance at once with host,
//! guest and device operations (bind, map, start, unbind, device errors, state checks, host
//! zaps and unmaps). Try-locks make contention a `Busy` status, never a hang; afterwards the
//! invariants must hold and every TDI must unbind completely.

use core::fmt::{self, Write};

use spin::Once;
use tsm_core::device_model::ModelDevice;
use tsm_core::mem_table::MemTable;
use tsm_core::tdisp::report::wire_range;
use tsm_core::{
    Completion, Error, Gpa, GuestId, Hpa, MmioRange, PageSize, RequesterId, TdiId, Tsm,
};

/// Operations each CPU performs.
const ITERATIONS: u32 = 4_000;
/// Guests, and devices with one TDI each, in the shared firmware.
const GUESTS: usize = 4;
const TDIS: usize = 8;
/// Each TDI's device has a 4 MiB BAR at `BAR_BASE + i * 16 MiB`; the TDI reports 1 MiB of it.
const BAR_BASE: u64 = 0x8000_0000;
const BAR_STRIDE: u64 = 0x100_0000;
const REPORTED_PAGES: u32 = 256;
/// Guest physical window of TDI `i`: `GPA_BASE + i * 16 MiB`.
const GPA_BASE: u64 = 0x10_0000_0000;
/// Calls to unbind one TDI before `verify` gives up (each does bounded work).
const MAX_UNBIND_CALLS: u32 = 10_000;

type Shared = Tsm<MemTable<2048>, ModelDevice>;

/// The shared firmware, built at compile time: it is far too large for a stack.
static FIRMWARE: Shared = Tsm::new(MemTable::new(), ModelDevice::model());

/// The handles the stage works on, once `prepare` registered them.
struct World {
    tsm: &'static Shared,
    guests: [GuestId; GUESTS],
    tdis: [TdiId; TDIS],
}

static WORLD: Once<Option<World>> = Once::new();

/// What one CPU did in the stage.
#[derive(Clone, Copy, Debug)]
pub struct CpuResult {
    /// Operations completed.
    pub ops: u32,
    /// Operations that found an object busy.
    pub busy: u32,
    /// Operations that went wrong (a host request removed a bound leaf, or setup failed).
    pub failed: u32,
}

impl fmt::Display for CpuResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ops, {} busy, {} failed",
            self.ops, self.busy, self.failed
        )
    }
}

fn setup() -> Option<World> {
    let tsm = &FIRMWARE;
    let mut guests = [GuestId::from_slot(0); GUESTS];
    for g in &mut guests {
        *g = tsm.create_guest().ok()?;
    }
    let mut tdis = [TdiId::from_slot(0); TDIS];
    for (i, t) in tdis.iter_mut().enumerate() {
        let bus = u8::try_from(i + 3).ok()?;
        let rid = RequesterId::try_new(0, bus, 0, 0).ok()?;
        let base = BAR_BASE + (i as u64) * BAR_STRIDE;
        let dev = tsm
            .create_device(rid, &[MmioRange::from_raw(base, 1024).ok()?])
            .ok()?;
        *t = tsm.create_tdi(dev, rid).ok()?;
        let report = [wire_range(base, REPORTED_PAGES, 0, 0)];
        tsm.with_transport(|d| d.link_mut().set_report(rid, &report))
            .ok()?;
    }
    Some(World { tsm, guests, tdis })
}

/// Registers the stage's guests, devices and TDIs before the stage starts.
pub fn prepare() {
    WORLD.call_once(setup);
}

/// xorshift64: a per-CPU operation stream.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Runs on every CPU (`cpu` in `0..ncpu`, 0 = BSP) at once.
pub fn run_concurrent(cpu: usize, _ncpu: usize) -> CpuResult {
    let mut result = CpuResult {
        ops: 0,
        busy: 0,
        failed: 0,
    };
    let Some(Some(w)) = WORLD.get() else {
        result.failed = 1;
        return result;
    };
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((cpu as u64 + 1) << 32));
    while result.ops < ITERATIONS {
        let i = rng.below(TDIS as u64) as usize;
        let tdi = w.tdis[i];
        let guest = w.guests[rng.below(GUESTS as u64) as usize];
        let owner = w
            .tsm
            .tdi(tdi)
            .ok()
            .and_then(|t| t.state.owner())
            .unwrap_or(guest);
        let page = rng.below(u64::from(REPORTED_PAGES)) * 0x1000;
        let hpa = Hpa::try_new(BAR_BASE + (i as u64) * BAR_STRIDE + page);
        let gpa = Gpa::try_new(GPA_BASE + (i as u64) * BAR_STRIDE + page);
        let (Ok(hpa), Ok(gpa)) = (hpa, gpa) else {
            result.failed += 1;
            break;
        };
        let outcome = match rng.below(9) {
            0 => w.tsm.bind(tdi, guest).map(|()| Completion::Done),
            1 | 2 => w
                .tsm
                .map_mmio(tdi, owner, gpa, hpa, PageSize::Size4K)
                .map(|()| Completion::Done),
            3 => w.tsm.guest_start(owner, tdi).map(|()| Completion::Done),
            4 => w.tsm.unbind(tdi),
            5 => w.tsm.device_error(tdi),
            6 => w.tsm.check_interface(tdi),
            7 => {
                let r = MmioRange::try_new(hpa, 1).and_then(|r| w.tsm.host_zap(r));
                r.map(|()| Completion::Done)
            }
            _ => {
                let r = w.tsm.host_unmap(owner, gpa, PageSize::Size4K);
                // Every private leaf belongs to a bound TDI: the host may never remove one.
                if r.is_ok() {
                    result.failed += 1;
                }
                r.map(|_| Completion::Done)
            }
        };
        if matches!(outcome, Err(Error::Busy(_))) {
            result.busy += 1;
        }
        result.ops += 1;
    }
    result
}

/// Once every CPU finished: the invariants hold, and every TDI unbinds completely.
pub fn verify(_ncpu: usize, out: &mut dyn Write) -> bool {
    let Some(Some(w)) = WORLD.get() else {
        let _ = writeln!(out, "smp: FAIL the shared firmware was not set up");
        return false;
    };
    if let Err(v) = tsm_tests::invariants::check(w.tsm) {
        let _ = writeln!(
            out,
            "smp: FAIL invariant broken after the concurrent run: {v:?}"
        );
        return false;
    }
    let leaves_before = w.tsm.with_table(|t| t.leaves().len()).unwrap_or(0);
    for &tdi in &w.tdis {
        let mut calls = 0;
        while w.tsm.unbind(tdi) != Ok(Completion::Done) {
            calls += 1;
            if calls > MAX_UNBIND_CALLS {
                let _ = writeln!(out, "smp: FAIL TDI {tdi:?} never finished unbinding");
                return false;
            }
        }
    }
    let leaves_after = w.tsm.with_table(|t| t.leaves().len()).unwrap_or(usize::MAX);
    let _ = writeln!(
        out,
        "smp: {leaves_before} leaves mapped at the end, {leaves_after} after unbinding every TDI"
    );
    leaves_after == 0 && tsm_tests::invariants::check(w.tsm).is_ok()
}
