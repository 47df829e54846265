//! The concurrent workload: many CPUs (host threads, or every CPU of the QEMU boot) drive one
//! shared firmware at once with host, guest and device operations on a few objects, so that
//! they contend for the same locks. The same workload runs on the core with its in-memory
//! table, on TDX with the S-EPT and on SEV-TIO with the RMP: it needs only the core's `Tsm`
//! over a platform's [`SecureTable`] (what the platform's lock discipline protects).
//!
//! no_std and heap-free, so the boot's SMP stage runs exactly what the host test runs.

use core::fmt;

use tsm_core::tdisp::report::wire_range;
use tsm_core::{
    Completion, Error, Gpa, GuestId, Hpa, MmioRange, Operand, PageSize, RequesterId, SecureTable,
    TdiId, TsmResult,
};

use crate::backend::{Backend, FlushControl};
use tsm_core::relay::host::RelayHost;
use tsm_core::{SecureSession, Tsm};

/// Guests the workload binds to: few, so that operations meet on them.
pub const GUESTS: usize = 2;
/// TDIs (one per device): few, so that operations meet on them.
pub const TDIS: usize = 4;
/// Device `i` has one BAR of [`BAR_PAGES`] pages at `BAR_BASE + i * BAR_STRIDE`.
pub const BAR_BASE: u64 = 0x8000_0000;
/// Distance between two devices' BARs, and between two TDIs' guest windows.
pub const BAR_STRIDE: u64 = 0x100_0000;
/// Pages of each device's BAR.
pub const BAR_PAGES: u64 = 1024;
/// Pages each TDI's report names (from the start of its BAR): more than one unbind call
/// handles, so unbinds are sometimes `Resumable`.
pub const REPORTED_PAGES: u32 = 96;
/// Guest physical window of TDI `i`: `GPA_BASE + i * BAR_STRIDE`.
pub const GPA_BASE: u64 = 0x10_0000_0000;
/// Unbind calls per TDI before [`drain`] gives up (each call does bounded work).
pub const MAX_UNBIND_CALLS: u32 = 1_000;

/// The objects the workload works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Targets {
    /// Guests.
    pub guests: [GuestId; GUESTS],
    /// TDIs, TDI `i` on device `i`.
    pub tdis: [TdiId; TDIS],
}

/// The requester ID of device (and TDI) `i`: bus `3 + i`.
fn rid(i: usize) -> TsmResult<RequesterId> {
    let bus = u8::try_from(i).ok().and_then(|i| i.checked_add(3));
    RequesterId::try_new(0, bus.ok_or(Error::InvalidRequesterId)?, 0, 0)
}

fn bar_base(i: usize) -> u64 {
    let i = u64::try_from(i).unwrap_or(u64::MAX);
    BAR_BASE.saturating_add(i.saturating_mul(BAR_STRIDE))
}

fn window(i: usize) -> u64 {
    let i = u64::try_from(i).unwrap_or(u64::MAX);
    GPA_BASE.saturating_add(i.saturating_mul(BAR_STRIDE))
}

/// Registers the guests, devices and TDIs through a scenario backend (so each platform does
/// what its own ABI does for them: SEV activates an ASID per guest, reads the BARs from
/// configuration space ...), and binds and unbinds each TDI once through it, which leaves the
/// device reporting the TDI's range for every later bind.
pub fn setup(backend: &mut dyn Backend) -> TsmResult<Targets> {
    let mut targets = Targets {
        guests: [GuestId::from_slot(0); GUESTS],
        tdis: [TdiId::from_slot(0); TDIS],
    };
    for g in &mut targets.guests {
        *g = backend.create_guest()?;
    }
    let first = targets
        .guests
        .first()
        .copied()
        .ok_or(Error::InvalidHandle)?;
    for (i, t) in targets.tdis.iter_mut().enumerate() {
        let rid = rid(i)?;
        let base = bar_base(i);
        let dev = backend.create_device(rid, &[MmioRange::from_raw(base, BAR_PAGES)?])?;
        *t = backend.create_tdi(dev, rid)?;
        backend.bind(*t, first, &[wire_range(base, REPORTED_PAGES, 0, 0)])?;
        let mut calls = 0u32;
        while backend.unbind(*t)? != Completion::Done {
            calls = calls.saturating_add(1);
            if calls > MAX_UNBIND_CALLS {
                return Err(Error::Inconsistent);
            }
        }
    }
    Ok(targets)
}

/// What one CPU saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Operations performed.
    pub ops: u64,
    /// Operations that succeeded.
    pub ok: u64,
    /// Operations that found a lock held: `Busy`, by operand in lock order.
    pub busy_by: [u64; 7],
    /// STARTs refused because the owner had not accepted the TDI's DMA context
    /// (`DmaNotAccepted`: the START gate of the core and TDX; never on SEV).
    pub not_accepted: u64,
    /// STARTs that went through (the TDI RUN): a workload whose guests never reach RUN
    /// exercises none of what a running TDI's teardown does, so the runs assert a floor.
    pub started: u64,
    /// Operations that went wrong: a host request removed a private leaf.
    pub failed: u64,
}

impl Tally {
    /// Every `Busy` result.
    pub fn busy(&self) -> u64 {
        self.busy_by.iter().fold(0, |a, &b| a.saturating_add(b))
    }

    /// Adds another CPU's tally.
    pub fn add(&mut self, other: &Tally) {
        self.ops = self.ops.saturating_add(other.ops);
        self.ok = self.ok.saturating_add(other.ok);
        for (a, b) in self.busy_by.iter_mut().zip(other.busy_by.iter()) {
            *a = a.saturating_add(*b);
        }
        self.not_accepted = self.not_accepted.saturating_add(other.not_accepted);
        self.started = self.started.saturating_add(other.started);
        self.failed = self.failed.saturating_add(other.failed);
    }

    fn record(&mut self, outcome: &TsmResult<Completion>) {
        self.ops = self.ops.saturating_add(1);
        match outcome {
            Ok(_) => self.ok = self.ok.saturating_add(1),
            Err(Error::Busy(operand)) => {
                let i = Operand::ALL.iter().position(|o| o == operand);
                if let Some(n) = i.and_then(|i| self.busy_by.get_mut(i)) {
                    *n = n.saturating_add(1);
                }
            }
            Err(Error::DmaNotAccepted) => self.not_accepted = self.not_accepted.saturating_add(1),
            Err(_) => {}
        }
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [dt, dev, tdi, guest, own, table, transport] = self.busy_by;
        write!(
            f,
            "{} ops, {} ok, {} busy (device table {dt}, device {dev}, tdi {tdi}, guest {guest}, \
             ownership {own}, secure table {table}, transport {transport}), {} START ok, {} \
             START refused before the guest's accept, {} failed",
            self.ops,
            self.ok,
            self.busy(),
            self.started,
            self.not_accepted,
            self.failed
        )
    }
}

/// xorshift64: a deterministic per-CPU operation stream.
#[derive(Debug, Clone, Copy)]
pub struct Rng(u64);

impl Rng {
    /// The stream of CPU (thread) `cpu` in run `run`.
    pub fn new(cpu: usize, run: u64) -> Self {
        let cpu = u64::try_from(cpu).unwrap_or(0).wrapping_add(1);
        Rng((0x9e37_79b9_7f4a_7c15 ^ (cpu << 32) ^ run.wrapping_mul(0x2545_f491_4f6c_dd1d)) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0.checked_rem(n).unwrap_or(0)
    }

    fn index(&mut self, len: usize) -> usize {
        let n = u64::try_from(len).unwrap_or(1);
        usize::try_from(self.below(n)).unwrap_or(0)
    }
}

/// One random operation on `tsm`, tallied.
pub fn step<T: SecureTable + FlushControl, S: SecureSession>(
    tsm: &RelayHost<'_, T, S>,
    targets: &Targets,
    rng: &mut Rng,
    tally: &mut Tally,
) {
    let i = rng.index(TDIS);
    let tdi = targets.tdis.get(i).copied().unwrap_or(TdiId::from_slot(0));
    let guest = targets
        .guests
        .get(rng.index(GUESTS))
        .copied()
        .unwrap_or(GuestId::from_slot(0));
    let owner = tsm
        .tdi(tdi)
        .ok()
        .and_then(|t| t.state.owner())
        .unwrap_or(guest);
    let page = rng.below(u64::from(REPORTED_PAGES)).saturating_mul(0x1000);
    let hpa = Hpa::try_new(bar_base(i).saturating_add(page));
    let gpa = Gpa::try_new(window(i).saturating_add(page));
    let (Ok(hpa), Ok(gpa)) = (hpa, gpa) else {
        tally.failed = tally.failed.saturating_add(1);
        return;
    };
    let done = |r: TsmResult<()>| r.map(|()| Completion::Done);
    let outcome = match rng.below(12) {
        // A bind, then half the time the usual start at once (the host creates the context,
        // the guest accepts it and starts), as a host brings a TDI up: TDIs spend most of the
        // run unbinding or in ERROR, and a start must meet a locked one.
        0 => {
            let r = done(tsm.bind(tdi, guest));
            if r.is_ok() && rng.below(2) == 0 && tsm.start_with_guest_accept(guest, tdi).is_ok() {
                tally.started = tally.started.saturating_add(1);
            }
            r
        }
        1 | 2 => done(tsm.map_mmio(tdi, owner, gpa, hpa, PageSize::Size4K)),
        // The start's parts, each on its own: the host creates the TDI's DMA context, its
        // owner accepts it (the guest's call), or the owner's START alone, which a platform
        // that gates START on the accept refuses until then; or the three in a row, as a host
        // and its guest do (each refused as it is): the parts alone rarely meet in order
        // between two unbinds, and the runs assert that some TDI reaches RUN.
        3 => match rng.below(4) {
            0 => done(tsm.host_dma_create(tdi)),
            1 => done(tsm.guest_dma_accept(owner, tdi)),
            part => {
                let r = done(if part == 2 {
                    tsm.start_only(owner, tdi)
                } else {
                    tsm.start_with_guest_accept(owner, tdi)
                });
                if r.is_ok() {
                    tally.started = tally.started.saturating_add(1);
                }
                r
            }
        },
        // An unbind that stops for an IOTLB invalidation has the host complete it, as the
        // Linux host does (TDX: its queue processed), for the next call to go on: left to
        // itself the queue is never processed on TDX and its TDIs stay unbinding.
        4 => {
            let r = tsm.unbind(tdi);
            if matches!(
                r,
                Err(Error::IotlbInvalidationPending | Error::IotlbNotTracked)
            ) {
                complete_invalidations(tsm.firmware(), tdi);
            }
            r
        }
        5 => tsm.device_error(tdi),
        6 => tsm.check_interface(tdi),
        7 => done(MmioRange::try_new(hpa, 1).and_then(|r| tsm.host_zap(r))),
        8 => tsm.host_track(owner),
        // A forced unbind cuts the stream of every TDI of the device; the host sets it up
        // again, which the firmware refuses while any of them is still bound.
        9 => tsm.unbind_forced(tdi),
        10 => done(tsm.tdi(tdi).and_then(|t| tsm.setup_stream(t.device))),
        _ => {
            let may = |t: TdiId| {
                tsm.tdi(t).ok().and_then(|r| {
                    let stream = tsm.device(r.device).ok()?.stream;
                    Some(!r.state.is_bound() || Tsm::<T, S>::host_may_tear_down(r.state, stream))
                })
            };
            let before = may(tdi);
            let r = tsm.host_unmap(owner, gpa, PageSize::Size4K);
            // Every private leaf belongs to a bound TDI: the host may remove one only once that
            // TDI's device can no longer reach the guest (its unbind past STOP, or its stream
            // cut). Another CPU may have moved the TDI there meanwhile, so a removal counts as
            // a failure only when the TDI allowed it neither before nor after.
            if r.is_ok() && before == Some(false) && may(tdi) == Some(false) {
                tally.failed = tally.failed.saturating_add(1);
            }
            r.map(|_| Completion::Done)
        }
    };
    tally.record(&outcome);
}

/// One CPU's part of a round: operations of its stream for as long as `more` says, which it
/// asks before every operation with the number done so far.
pub fn run_round<T: SecureTable + FlushControl, S: SecureSession>(
    tsm: &RelayHost<'_, T, S>,
    targets: &Targets,
    rng: &mut Rng,
    more: &mut dyn FnMut(u64) -> bool,
) -> Tally {
    let mut tally = Tally::default();
    while more(tally.ops) {
        step(tsm, targets, rng, &mut tally);
    }
    tally
}

/// On a quiet firmware: unbinds every TDI completely. `Err` names a TDI whose unbind did not
/// finish within [`MAX_UNBIND_CALLS`] calls, with its last status.
pub fn drain<T: SecureTable + FlushControl, S: SecureSession>(
    tsm: &RelayHost<'_, T, S>,
    targets: &Targets,
) -> Result<(), (TdiId, TsmResult<Completion>)> {
    for &tdi in &targets.tdis {
        let mut calls = 0u32;
        loop {
            match tsm.unbind(tdi) {
                Ok(Completion::Done) => break,
                last if calls >= MAX_UNBIND_CALLS => return Err((tdi, last)),
                Err(Error::IotlbInvalidationPending | Error::IotlbNotTracked) => {
                    complete_invalidations(tsm.firmware(), tdi);
                    calls = calls.saturating_add(1);
                }
                _ => calls = calls.saturating_add(1),
            }
        }
    }
    Ok(())
}

/// The host completes the IOTLB invalidation `tdi`'s unbind waits for, as the Linux host does
/// when an unbind stops there (TDX: TDH.IQ.INV.PROCESS), in the table of the TDI's owner.
pub fn complete_invalidations<T: SecureTable + FlushControl, S: SecureSession, const N: usize>(
    tsm: &Tsm<T, S, N>,
    tdi: TdiId,
) {
    let Ok(record) = tsm.tdi(tdi) else { return };
    if let Some(owner) = record.state.owner() {
        let _ = tsm.with_guest_table(owner, |t| t.complete_invalidations(owner, record.iface));
    }
}

// ---- independent lanes ------------------------------------------------------------------

/// Lanes of the independent workload: at most one per CPU, each a guest in a shard of its own
/// (guest slot `i`, table shard `i`), a device of its own (device slot `i`, session shard `i`)
/// and one TDI bound to that guest over the device's BAR.
pub const LANES: usize = 4;
/// Pages of each lane's BAR (and reported range).
pub const LANE_PAGES: u64 = 64;
/// Lane `i`'s BAR starts at `LANE_BAR_BASE + i * BAR_STRIDE`.
pub const LANE_BAR_BASE: u64 = 0xa000_0000;

/// One lane's handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lane {
    /// The lane's guest.
    pub guest: GuestId,
    /// The lane's bound TDI.
    pub tdi: TdiId,
    /// The BAR's base address.
    pub bar: u64,
}

/// On a fresh firmware of `N` shards: lane `i` in shard `i` for every shard, each TDI bound.
/// `Inconsistent` if the firmware gives a guest or device another slot than the lane's (a
/// firmware that is not fresh).
pub fn setup_lanes<T: SecureTable, S: SecureSession, const N: usize>(
    host: &RelayHost<'_, T, S, N>,
) -> TsmResult<heapless::Vec<Lane, N>> {
    let mut lanes = heapless::Vec::new();
    for i in 0..N {
        let k = u64::try_from(i).map_err(|_| Error::Inconsistent)?;
        let bus = u8::try_from(i).map_err(|_| Error::Inconsistent)?;
        let bar = LANE_BAR_BASE.saturating_add(k.saturating_mul(BAR_STRIDE));
        let range = MmioRange::from_raw(bar, LANE_PAGES)?;
        let guest = host.create_guest()?;
        let rid = RequesterId::try_new(0, 0x40_u8.saturating_add(bus), 0, 0)?;
        let dev = host.create_device(rid, &[range])?;
        if usize::from(guest.slot()) != i || usize::from(dev.slot()) != i {
            return Err(Error::Inconsistent);
        }
        let tdi = host.create_tdi(dev, rid)?;
        host.with_device(|d| d.report_ranges(rid, &[range]))?;
        host.bind(tdi, guest)?;
        lanes
            .push(Lane { guest, tdi, bar })
            .map_err(|_| Error::Inconsistent)?;
    }
    Ok(lanes)
}

/// One CPU's work on its own lane for as long as `more` says: map a page of the lane's TDI
/// (already mapped after the first pass), ask as the host to unmap and to block it (refused:
/// the TDI is bound), look the leaf and its owner up. Every outcome but the expected one is
/// `failed`; every `Busy` is tallied (between lanes there must be none).
pub fn run_lane<T: SecureTable, S: SecureSession, const N: usize>(
    host: &RelayHost<'_, T, S, N>,
    lane: &Lane,
    more: &mut dyn FnMut(u64) -> bool,
) -> Tally {
    let mut tally = Tally::default();
    let mut i = 0u64;
    while more(tally.ops) {
        let page = (i % LANE_PAGES).saturating_mul(0x1000);
        i = i.wrapping_add(1);
        let (Ok(gpa), Ok(hpa)) = (
            Gpa::try_new(GPA_BASE.saturating_add(page)),
            Hpa::try_new(lane.bar.saturating_add(page)),
        ) else {
            tally.failed = tally.failed.saturating_add(1);
            return tally;
        };
        let k = PageSize::Size4K;
        let map = host.map_mmio(lane.tdi, lane.guest, gpa, hpa, k);
        let mapped = matches!(map, Ok(()) | Err(Error::GpaAlreadyMapped));
        let unmap = host.host_unmap(lane.guest, gpa, k).map(drop);
        let block = host.host_block(lane.guest, gpa, k);
        let leaf = host.leaf(lane.guest, gpa);
        let owner = host.owner_of(hpa, k);
        let expected = mapped
            && unmap == Err(Error::TdiBound)
            && block == Err(Error::TdiBound)
            && leaf.is_ok_and(|l| l.is_some_and(|l| l.hpa == hpa))
            && owner == Ok(Some(lane.tdi));
        for r in [map, unmap, block, leaf.map(drop), owner.map(drop)] {
            tally.record(&r.map(|()| Completion::Done));
        }
        if !expected {
            tally.failed = tally.failed.saturating_add(1);
        }
    }
    tally
}

/// On a quiet firmware: unbinds every lane's TDI completely (`Err` names one that did not
/// finish within [`MAX_UNBIND_CALLS`] calls, with its last status).
pub fn drain_lanes<T: SecureTable + FlushControl, S: SecureSession, const N: usize>(
    host: &RelayHost<'_, T, S, N>,
    lanes: &[Lane],
) -> Result<(), (TdiId, TsmResult<Completion>)> {
    for lane in lanes {
        let mut last = host.unbind(lane.tdi);
        let mut calls = 1;
        while last != Ok(Completion::Done) {
            if calls >= MAX_UNBIND_CALLS {
                return Err((lane.tdi, last));
            }
            if matches!(
                last,
                Err(Error::IotlbInvalidationPending | Error::IotlbNotTracked)
            ) {
                complete_invalidations(host.firmware(), lane.tdi);
            }
            last = host.unbind(lane.tdi);
            calls = calls.saturating_add(1);
        }
    }
    Ok(())
}
