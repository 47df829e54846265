//! Operation tests of [`Tsm`]: every refusal leaves every table exactly as it was.

use crate::capacity::{MAX_DEVICES, MAX_GUESTS, MAX_TDIS_PER_DEVICE, UNBIND_WORK_PER_CALL};

/// Leaves one unbind call blocks or removes on the in-memory table: it has no bounded search,
/// so each search costs one unit of work and each leaf changed one more (capacity.rs).
const LEAVES_PER_CALL: u32 = UNBIND_WORK_PER_CALL / 2;
use crate::device_model::{DeviceEvent, ModelDevice};
use crate::mem_table::MemTable;
use crate::tdisp::report;
use crate::*;

pub(crate) type T = crate::relay::host::Relayed<MemTable<256>>;
/// A firmware whose table makes a TDI's trusted DMA context at bind (as SEV-TIO's).
pub(crate) type TB = crate::relay::host::Relayed<MemTable<256, true>>;

pub(crate) const BAR: u64 = 0x8000_0000;
pub(crate) const GPA: u64 = 0x10_0000_0000;

pub(crate) fn hpa(v: u64) -> Hpa {
    Hpa::try_new(v).unwrap()
}
pub(crate) fn gpa(v: u64) -> Gpa {
    Gpa::try_new(v).unwrap()
}
pub(crate) fn range(base: u64, pages: u64) -> MmioRange {
    MmioRange::from_raw(base, pages).unwrap()
}
pub(crate) fn rid(bus: u8, func: u8) -> RequesterId {
    RequesterId::try_new(0, bus, 0, func).unwrap()
}

/// VFs of the test device: routing IDs 03:01.0 to 03:02.7 (offset 8, stride 1).
const VFS: VfLayout = VfLayout {
    first_offset: 8,
    stride: 1,
    count: 16,
};

/// A firmware with two guests and one device (a 4 MiB BAR, 16 VFs) with two TDIs.
pub(crate) struct World<X = T> {
    pub(crate) tsm: X,
    pub(crate) g1: GuestId,
    pub(crate) g2: GuestId,
    pub(crate) dev: DeviceId,
    pub(crate) t0: TdiId,
    pub(crate) t1: TdiId,
}

pub(crate) fn world() -> World {
    world_on(MemTable::new())
}

/// [`world`] over `table`.
pub(crate) fn world_on<Tab: SecureTable>(table: Tab) -> World<crate::relay::host::Relayed<Tab>> {
    let tsm = crate::relay::host::Relayed::new(table, ModelDevice::model());
    let g1 = tsm.create_guest().unwrap();
    let g2 = tsm.create_guest().unwrap();
    let functions = DeviceFunctions::new(rid(3, 0), Some(VFS)).unwrap();
    let dev = tsm
        .create_device_with(functions, &[range(BAR, 1024), range(BAR + 0x40_0000, 16)])
        .unwrap();
    let t0 = tsm.create_tdi(dev, rid(3, 0)).unwrap();
    let t1 = tsm.create_tdi(dev, rid(3, 1)).unwrap();
    World {
        tsm,
        g1,
        g2,
        dev,
        t0,
        t1,
    }
}

/// The device reports `ranges` for `tdi`, then the host binds it.
pub(crate) fn bind(tsm: &T, tdi: TdiId, guest: GuestId, ranges: &[MmioRange]) -> TsmResult<()> {
    if let Ok(record) = tsm.tdi(tdi) {
        tsm.with_device(|d| d.report_ranges(record.iface, ranges))?;
    }
    tsm.bind(tdi, guest)
}

/// `t0` bound to `g1` over the first 2 MiB, with `leaves` 4 KiB leaves mapped.
pub(crate) fn bound(leaves: u64) -> World {
    let w = world();
    bind(&w.tsm, w.t0, w.g1, &[range(BAR, 512)]).unwrap();
    for i in 0..leaves {
        w.tsm
            .map_mmio(
                w.t0,
                w.g1,
                gpa(GPA + i * 0x1000),
                hpa(BAR + i * 0x1000),
                PageSize::Size4K,
            )
            .unwrap();
    }
    w
}

/// `snap` without the device's last answer to a check, which a check that agrees records.
fn normalised(
    mut snap: crate::tsm::Snapshot<MemTable<256>>,
) -> crate::tsm::Snapshot<MemTable<256>> {
    for t in snap.tdis.iter_mut().flatten() {
        t.device_state = None;
    }
    snap
}

/// Runs `op`, expects `err`, and proves every table is unchanged.
#[track_caller]
pub(crate) fn refused<Tab, R>(
    tsm: &crate::relay::host::Relayed<Tab>,
    err: Error,
    op: impl FnOnce() -> TsmResult<R>,
) where
    Tab: SecureTable + Clone + PartialEq + core::fmt::Debug,
    R: core::fmt::Debug,
{
    let before = tsm.snapshot().unwrap();
    let device = |tsm: &crate::relay::host::Relayed<Tab>| {
        tsm.with_device(|d| d.link_mut().tdisp_states()).unwrap()
    };
    let device_before = device(tsm);
    let got = op();
    assert_eq!(got.as_ref().err(), Some(&err), "got {got:?}");
    assert_eq!(
        device(tsm),
        device_before,
        "device TDISP state changed by a refused {err:?}"
    );
    assert_eq!(
        tsm.snapshot().unwrap(),
        before,
        "state changed by a refused {err:?}"
    );
}

pub(crate) fn state<Tab: SecureTable>(
    w: &World<crate::relay::host::Relayed<Tab>>,
    t: TdiId,
) -> TdiState {
    w.tsm.tdi(t).unwrap().state
}

#[test]
fn guests_fill_and_drain() {
    let tsm = T::new(MemTable::new(), ModelDevice::model());
    let all: Vec<_> = (0..MAX_GUESTS)
        .map(|_| tsm.create_guest().unwrap())
        .collect();
    refused(&tsm, Error::GuestTableFull, || tsm.create_guest());
    tsm.destroy_guest(all[3]).unwrap();
    refused(&tsm, Error::InvalidHandle, || tsm.destroy_guest(all[3]));
    refused(&tsm, Error::InvalidHandle, || {
        tsm.destroy_guest(GuestId::from_slot(u16::MAX))
    });
    assert_eq!(tsm.create_guest(), Ok(all[3]));
}

#[test]
fn device_registration_checks() {
    let w = world();
    let tsm = &w.tsm;
    refused(tsm, Error::DuplicateDevice, || {
        tsm.create_device(rid(3, 0), &[])
    });
    refused(tsm, Error::RangesOverlap, || {
        tsm.create_device(rid(4, 0), &[range(0x1000, 2), range(0x2000, 1)])
    });
    refused(tsm, Error::TooManyRanges, || {
        tsm.create_device(rid(4, 0), &[range(0x1000, 1); 7])
    });
    refused(tsm, Error::DuplicateTdi, || {
        tsm.create_tdi(w.dev, rid(3, 1))
    });
    refused(tsm, Error::InvalidHandle, || {
        tsm.create_tdi(DeviceId::from_slot(9), rid(3, 2))
    });
    refused(tsm, Error::DeviceInUse, || tsm.remove_device(w.dev));
    for f in 2..MAX_TDIS_PER_DEVICE {
        tsm.create_tdi(
            w.dev,
            RequesterId::try_new(0, 3, (f / 8) as u8, (f % 8) as u8).unwrap(),
        )
        .unwrap();
    }
    refused(tsm, Error::TdiTableFull, || {
        tsm.create_tdi(w.dev, RequesterId::try_new(0, 3, 2, 0).unwrap())
    });
    for bus in 1..MAX_DEVICES {
        tsm.create_device(rid(10 + bus as u8, 0), &[]).unwrap();
    }
    refused(tsm, Error::DeviceTableFull, || {
        tsm.create_device(rid(200, 0), &[])
    });
}

#[test]
fn bind_refusals_change_nothing() {
    let w = world();
    let tsm = &w.tsm;
    refused(tsm, Error::InvalidHandle, || {
        bind(tsm, TdiId::from_slot(77), w.g1, &[])
    });
    refused(tsm, Error::InvalidHandle, || {
        bind(tsm, w.t0, GuestId::from_slot(20), &[])
    });
    refused(tsm, Error::RangeOutsideDevice, || {
        bind(tsm, w.t0, w.g1, &[range(BAR, 1025)])
    });
    refused(tsm, Error::RangesOverlap, || {
        bind(tsm, w.t0, w.g1, &[range(BAR, 2), range(BAR + 0x1000, 1)])
    });
    refused(tsm, Error::TooManyRanges, || {
        bind(tsm, w.t0, w.g1, &[range(BAR, 1); 17])
    });
    // The device does not lock: nothing is owned, the TDI stays unbound.
    tsm.with_device(|d| d.set_fault(rid(3, 0), Some(DeviceFault::NoResponse)))
        .unwrap();
    refused(tsm, Error::DeviceUnresponsive, || {
        bind(tsm, w.t0, w.g1, &[range(BAR, 4)])
    });
    tsm.with_device(|d| d.set_fault(rid(3, 0), Some(DeviceFault::Refused)))
        .unwrap();
    refused(tsm, Error::DeviceRefused, || {
        bind(tsm, w.t0, w.g1, &[range(BAR, 4)])
    });
    tsm.with_device(|d| d.set_fault(rid(3, 0), None)).unwrap();

    bind(tsm, w.t0, w.g1, &[range(BAR, 4)]).unwrap();
    assert_eq!(state(&w, w.t0), TdiState::Locked { owner: w.g1 });
    assert_eq!(tsm.guest(w.g1).unwrap().bound_tdis, 1);
    assert_eq!(
        tsm.with_device(|d| d.state(rid(3, 0))).unwrap(),
        TdispState::ConfigLocked
    );
    refused(tsm, Error::TdiAlreadyBound, || {
        bind(tsm, w.t0, w.g2, &[range(BAR + 0x10000, 4)])
    });
    // Another TDI may not claim any byte of it.
    refused(tsm, Error::TdiBound, || {
        bind(tsm, w.t1, w.g2, &[range(BAR + 0x3000, 4)])
    });
    refused(tsm, Error::GuestInUse, || tsm.destroy_guest(w.g1));
    refused(tsm, Error::TdiBound, || tsm.remove_tdi(w.t0));
}

#[test]
fn map_refusals_change_nothing() {
    let w = bound(1);
    let tsm = &w.tsm;
    let (t0, g1) = (w.t0, w.g1);
    let map = |t, g, a, h, s| tsm.map_mmio(t, g, gpa(a), hpa(h), s);
    refused(tsm, Error::NotOwner, || {
        map(t0, w.g2, GPA + 0x10000, BAR + 0x10000, PageSize::Size4K)
    });
    refused(tsm, Error::TdiNotBound, || {
        map(w.t1, g1, GPA + 0x10000, BAR + 0x10000, PageSize::Size4K)
    });
    refused(tsm, Error::Misaligned, || {
        map(t0, g1, GPA + 0x1000, BAR + 0x20_0000, PageSize::Size2M)
    });
    refused(tsm, Error::HpaNotOwned, || {
        map(t0, g1, GPA + 0x10000, BAR + 0x20_0000, PageSize::Size4K)
    });
    refused(tsm, Error::GpaAlreadyMapped, || {
        map(t0, g1, GPA, BAR + 0x1000, PageSize::Size4K)
    });
    refused(tsm, Error::HpaAlreadyMapped, || {
        map(t0, g1, GPA + 0x1000, BAR, PageSize::Size4K)
    });
    refused(tsm, Error::InvalidHandle, || {
        map(TdiId::from_slot(999), g1, GPA, BAR, PageSize::Size4K)
    });
    // Contention is a status naming the operand, never a spin.
    let busy = tsm
        .with_table(|_| map(t0, g1, GPA + 0x1000, BAR + 0x1000, PageSize::Size4K))
        .unwrap();
    assert_eq!(busy, Err(Error::Busy(Operand::SecureTable)));
    map(t0, g1, GPA + 0x1000, BAR + 0x1000, PageSize::Size4K).unwrap();
    // A page of another bound TDI is not mappable through this one.
    bind(tsm, w.t1, w.g2, &[range(BAR + 0x30_0000, 16)]).unwrap();
    refused(tsm, Error::TdiBound, || {
        map(t0, g1, GPA + 0x30_0000, BAR + 0x30_0000, PageSize::Size4K)
    });
    refused(tsm, Error::TdiBound, || {
        map(t0, g1, GPA + 0x20_0000, BAR + 0x20_0000, PageSize::Size2M)
    });
}

#[test]
fn start_is_the_owners_and_only_from_locked() {
    let w = bound(0);
    let tsm = &w.tsm;
    refused(tsm, Error::NotOwner, || {
        tsm.start_with_guest_accept(w.g2, w.t0)
    });
    refused(tsm, Error::TdiNotBound, || {
        tsm.start_with_guest_accept(w.g1, w.t1)
    });
    let busy = tsm
        .with_transport(|_| tsm.start_with_guest_accept(w.g1, w.t0))
        .unwrap();
    assert_eq!(busy, Err(Error::Busy(Operand::Transport)));
    tsm.with_device(|d| d.set_fault(rid(3, 0), Some(DeviceFault::NoResponse)))
        .unwrap();
    refused(tsm, Error::DeviceUnresponsive, || {
        tsm.start_with_guest_accept(w.g1, w.t0)
    });
    tsm.with_device(|d| d.set_fault(rid(3, 0), None)).unwrap();
    tsm.start_with_guest_accept(w.g1, w.t0).unwrap();
    assert_eq!(state(&w, w.t0), TdiState::Run { owner: w.g1 });
    refused(tsm, Error::TdiNotLocked, || {
        tsm.start_with_guest_accept(w.g1, w.t0)
    });
}

#[test]
fn host_requests_on_bound_pages_are_refused() {
    let w = bound(2);
    let tsm = &w.tsm;
    refused(tsm, Error::TdiBound, || {
        tsm.host_unmap(w.g1, gpa(GPA), PageSize::Size4K)
    });
    refused(tsm, Error::TdiBound, || {
        tsm.host_block(w.g1, gpa(GPA + 0x1000), PageSize::Size4K)
    });
    refused(tsm, Error::TdiBound, || {
        tsm.host_unmap(w.g1, gpa(GPA), PageSize::Size2M)
    });
    refused(tsm, Error::NotMapped, || {
        tsm.host_unmap(w.g1, gpa(GPA + 0x5000), PageSize::Size4K)
    });
    refused(tsm, Error::InvalidHandle, || {
        tsm.host_unmap(GuestId::from_slot(30), gpa(GPA), PageSize::Size4K)
    });
    // A zap of a range only partly bound is refused whole.
    refused(tsm, Error::TdiBound, || {
        tsm.host_zap(range(BAR + 0x1f_f000, 2))
    });
    refused(tsm, Error::TdiBound, || tsm.host_zap(range(BAR, 1024)));
    assert_eq!(tsm.host_zap(range(BAR + 0x20_0000, 512)), Ok(()));
    // Refused in every bound state, including ERROR and mid-unbind.
    assert_eq!(tsm.device_error(w.t0), Ok(Completion::Done));
    refused(tsm, Error::TdiBound, || tsm.host_zap(range(BAR, 1)));
    refused(tsm, Error::TdiBound, || {
        tsm.host_unmap(w.g1, gpa(GPA), PageSize::Size4K)
    });
}

#[test]
fn unbind_is_idempotent_complete_and_rebindable() {
    // A world and three snapshots of it by value, unoptimised: more than a test thread's
    // default stack.
    std::thread::Builder::new()
        .stack_size(8 << 20)
        .spawn(unbind_is_idempotent_complete_and_rebindable_body)
        .unwrap()
        .join()
        .unwrap();
}

fn unbind_is_idempotent_complete_and_rebindable_body() {
    let w = bound(3);
    let tsm = &w.tsm;
    refused(tsm, Error::InvalidHandle, || {
        tsm.unbind(TdiId::from_slot(500))
    });
    let before = tsm.snapshot().unwrap();
    assert_eq!(tsm.unbind(w.t1), Ok(Completion::Done));
    assert_eq!(
        tsm.snapshot().unwrap(),
        before,
        "unbind of an unbound TDI changed state"
    );

    tsm.start_with_guest_accept(w.g1, w.t0).unwrap();
    assert_eq!(tsm.unbind(w.t0), Ok(Completion::Done));
    assert_eq!(state(&w, w.t0), TdiState::Unbound);
    assert!(tsm.owned_ranges(w.t0).unwrap().is_empty());
    assert!(tsm.with_table(|t| t.leaves().is_empty()).unwrap());
    assert_eq!(tsm.guest(w.g1).unwrap().bound_tdis, 0);
    assert_eq!(
        tsm.with_device(|d| d.state(rid(3, 0))).unwrap(),
        TdispState::ConfigUnlocked
    );
    assert_eq!(tsm.host_zap(range(BAR, 1024)), Ok(()));
    let after = tsm.snapshot().unwrap();
    assert_eq!(tsm.unbind(w.t0), Ok(Completion::Done));
    assert_eq!(tsm.snapshot().unwrap(), after);

    bind(tsm, w.t0, w.g2, &[range(BAR, 512)]).unwrap();
    tsm.map_mmio(w.t0, w.g2, gpa(GPA), hpa(BAR), PageSize::Size2M)
        .unwrap();
    tsm.start_with_guest_accept(w.g2, w.t0).unwrap();
    assert_eq!(state(&w, w.t0), TdiState::Run { owner: w.g2 });
    tsm.destroy_guest(w.g1).unwrap();
}

#[test]
fn unbind_is_bounded_and_resumable() {
    let n = u64::from(LEAVES_PER_CALL) + 5;
    let w = bound(n);
    let tsm = &w.tsm;
    let mut calls = 0;
    loop {
        calls += 1;
        let leaves_before = tsm.with_table(|t| t.leaves().len()).unwrap();
        let out = tsm.unbind(w.t0).unwrap();
        let leaves_after = tsm.with_table(|t| t.leaves().len()).unwrap();
        assert!(leaves_before - leaves_after <= LEAVES_PER_CALL as usize);
        if out == Completion::Done {
            break;
        }
        assert!(matches!(state(&w, w.t0), TdiState::Unbinding { .. }));
        refused(tsm, Error::UnbindInProgress, || {
            tsm.map_mmio(
                w.t0,
                w.g1,
                gpa(GPA + 0x10_0000),
                hpa(BAR + 0x10_0000),
                PageSize::Size4K,
            )
        });
        refused(tsm, Error::UnbindInProgress, || {
            tsm.start_with_guest_accept(w.g1, w.t0)
        });
        refused(tsm, Error::TdiBound, || tsm.host_zap(range(BAR, 1)));
        assert!(calls < 100);
    }
    // Two passes (block, remove), each a search and a change per leaf and the search that
    // finds the end, at UNBIND_WORK_PER_CALL units per call.
    assert_eq!(
        calls,
        (2 * (2 * n + 1)).div_ceil(u64::from(UNBIND_WORK_PER_CALL))
    );
    assert_eq!(state(&w, w.t0), TdiState::Unbound);
}

#[test]
fn removal_waits_for_the_tlb_flush() {
    let w = bound(2);
    let tsm = &w.tsm;
    tsm.with_table(|t| t.set_defer_flush(w.g1, true)).unwrap();
    assert_eq!(tsm.unbind(w.t0), Err(Error::TlbFlushPending));
    let leaf = tsm.leaf(w.g1, gpa(GPA)).unwrap().unwrap();
    assert!(
        matches!(leaf.state, LeafState::Blocked { .. }),
        "blocked before any removal"
    );
    assert!(matches!(
        state(&w, w.t0),
        TdiState::Unbinding {
            step: lifecycle::UnbindStep::Remove(_),
            ..
        }
    ));
    refused(tsm, Error::TlbFlushPending, || tsm.unbind(w.t0));
    tsm.with_table(|t| t.complete_flush(w.g1)).unwrap();
    assert_eq!(tsm.unbind(w.t0), Ok(Completion::Done));
}

#[test]
fn unresponsive_device_keeps_unbind_progress() {
    let w = bound(1);
    let tsm = &w.tsm;
    tsm.start_with_guest_accept(w.g1, w.t0).unwrap();
    tsm.with_device(|d| d.set_fault(rid(3, 0), Some(DeviceFault::NoResponse)))
        .unwrap();
    assert_eq!(tsm.unbind(w.t0), Err(Error::DeviceUnresponsive));
    assert_eq!(
        state(&w, w.t0),
        TdiState::Unbinding {
            owner: w.g1,
            step: lifecycle::UnbindStep::Stop
        }
    );
    assert_eq!(state(&w, w.t0).tdisp(), TdispState::Error);
    refused(tsm, Error::UnbindInProgress, || {
        tsm.start_with_guest_accept(w.g1, w.t0)
    });
    refused(tsm, Error::DeviceUnresponsive, || tsm.unbind(w.t0));
    tsm.with_device(|d| d.set_fault(rid(3, 0), None)).unwrap();
    assert_eq!(tsm.unbind(w.t0), Ok(Completion::Done));
}

#[test]
fn device_error_blocks_in_bounded_steps() {
    let n = u64::from(LEAVES_PER_CALL) + 3;
    let w = bound(n);
    let tsm = &w.tsm;
    tsm.with_device(|d| d.event(rid(3, 0), DeviceEvent::Disturb))
        .unwrap();
    assert_eq!(tsm.device_error(w.t0), Ok(Completion::Resumable));
    let blocked = |tsm: &T| {
        tsm.with_table(|t| {
            t.leaves()
                .iter()
                .filter(|l| l.state != LeafState::Mapped)
                .count()
        })
        .unwrap()
    };
    assert_eq!(blocked(tsm), LEAVES_PER_CALL as usize);
    assert_eq!(tsm.device_error(w.t0), Ok(Completion::Done));
    assert_eq!(blocked(tsm), n as usize);
    assert_eq!(
        state(&w, w.t0),
        TdiState::Error {
            owner: w.g1,
            blocking: None
        }
    );
    refused(tsm, Error::TdiInError, || {
        tsm.start_with_guest_accept(w.g1, w.t0)
    });
    refused(tsm, Error::TdiInError, || {
        tsm.map_mmio(
            w.t0,
            w.g1,
            gpa(GPA + 0x10_0000),
            hpa(BAR + 0x10_0000),
            PageSize::Size4K,
        )
    });
    let before = tsm.snapshot().unwrap();
    assert_eq!(tsm.device_error(w.t0), Ok(Completion::Done));
    assert_eq!(tsm.snapshot().unwrap(), before);
    refused(tsm, Error::TdiNotBound, || tsm.device_error(w.t1));
    while tsm.unbind(w.t0).unwrap() == Completion::Resumable {}
    assert_eq!(state(&w, w.t0), TdiState::Unbound);
}

#[test]
fn refused_start_puts_the_tdi_in_error() {
    let w = bound(1);
    let tsm = &w.tsm;
    tsm.with_device(|d| d.set_fault(rid(3, 0), Some(DeviceFault::Refused)))
        .unwrap();
    assert_eq!(
        tsm.start_with_guest_accept(w.g1, w.t0),
        Err(Error::DeviceRefused)
    );
    assert_eq!(
        state(&w, w.t0),
        TdiState::Error {
            owner: w.g1,
            blocking: None
        }
    );
    assert!(matches!(
        tsm.leaf(w.g1, gpa(GPA)).unwrap().map(|l| l.state),
        Some(LeafState::Blocked { .. })
    ));
}

// ---- issue 10: Busy on every lock --------------------------------------------------------
//
// Every lock each operation takes, in lock order (a test per cell below holds that lock from
// another thread and expects exactly `Busy(operand)` with nothing changed; a blank cell is
// held too, and must not make the operation busy). Slot tables (device, TDI, guest) are held
// at the slot the operation names, or at every slot where it inserts into the first free one.
//
// | operation                       | dev table | device | TDI | guest | ownership | secure table | transport |
// |---------------------------------|-----------|--------|-----|-------|-----------|--------------|-----------|
// | create_guest                    |           |        |     | any   |           |              |           |
// | destroy_guest                   |           |        |     | x     |           | x            |           |
// | create_device(_with)            | x         | new    |     |       |           |              |           |
// | remove_device                   | x         | x      |     |       |           |              |           |
// | create_tdi                      |           | x      | any |       |           |              |           |
// | remove_tdi                      |           | x      | x   |       |           |              |           |
// | bind (first call)               |           | x      | x   | x     |           |              | x         |
// | map_mmio                        |           |        | x   | x     | x         | x            |           |
// | guest_start (first call)        |           |        | x   | x     |           |              | x         |
// | device_error                    |           |        | x   |       | x         | x            |           |
// | check_interface, bound          |           |        | x   |       | x         | x            | x         |
// | check_interface, ERROR/unbinding|           |        | x   |       | x         | x            |           |
// | unbind, bound                   |           | x      | x   | x     | x         | x            | x         |
// | unbind, unbound                 |           | x      | x   |       |           |              |           |
// | device_response                 |           | x      | x   | x     | x         | x            | x         |
// | unbind_forced, bound, cuts      |           | x      | x+  | x     | x         | x            |           |
// | unbind_forced, stream cut       |           | x      | x   | x     | x         | x            |           |
// | unbind_forced, unbound          |           | x      | x   |       |           |              |           |
// | setup_stream, cut               |           | x      | x+  |       |           |              |           |
// | setup_stream, live, TDI bound   |           | x      | x   |       |           |              |           |
// | host_unmap, host_block          |           | x      | x   | x     | x         | x            |           |
// | host_track                      |           |        |     | x     |           | x            |           |
// | host_zap, range not owned       |           |        |     |       | x         | x            |           |
// | host_zap, range of a bound TDI  |           |        |     |       | x         |              |           |
// | tdi                             |           |        | x   |       |           |              |           |
// | device                          |           | x      |     |       |           |              |           |
// | guest                           |           |        |     | x     |           |              |           |
// | owned_ranges                    |           |        |     |       | x         |              |           |
// | leaf, with_table                |           |        |     |       |           | x            |           |
// | with_transport                  |           |        |     |       |           |              | x         |
// | snapshot(_with)                 | x         | x      | x   | x     | x         | x            |           |
//
// x+: the TDI, then (when the stream is cut by this call) every other TDI of the device, all
// held together (setup_stream: every TDI of the device). Operations that need the device are
// shown by their first call (which returns `Relay`) and by `device_response`, which takes
// every lock the continued operation may need.

/// The lock tests' firmware: `bound(1)` (t0 bound to g1 and CONFIG_LOCKED, one 4 KiB leaf at
/// GPA -> BAR; t1 unbound, its device reporting a range for the next bind), plus `dev2`, a
/// device with no TDI. Slots: g1 0, g2 1; dev 0, dev2 1 (a new device gets 2); t0 0, t1 1.
struct Locks {
    w: World,
    dev2: DeviceId,
}

fn locks_world() -> Locks {
    let w = bound(1);
    let dev2 = w
        .tsm
        .create_device(rid(4, 0), &[range(0x9000_0000, 16)])
        .unwrap();
    w.tsm
        .with_device(|d| d.report_ranges(rid(3, 1), &[range(BAR + 0x20_0000, 4)]))
        .unwrap();
    assert_eq!(
        (w.g1.slot(), w.g2.slot(), w.dev.slot(), dev2.slot()),
        (0, 1, 0, 1)
    );
    assert_eq!((w.t0.slot(), w.t1.slot()), (0, 1));
    Locks { w, dev2 }
}

/// One row of the table: an operation on the fixture, and every lock it takes, in lock order,
/// with the slot the test holds (`None`: every slot).
struct LockCase {
    op: &'static str,
    setup: fn(&Locks),
    run: fn(&Locks) -> TsmResult<()>,
    takes: &'static [(Operand, Option<u16>)],
}

fn nothing(_: &Locks) {}

/// One firmware call with a request buffer; its outcome without the completion.
fn first(call: impl FnOnce(&mut [u8]) -> TsmResult<Completion>) -> TsmResult<()> {
    let mut buf = [0u8; crate::relay::MAX_RELAY_BYTES];
    call(&mut buf).map(drop)
}

use Operand::{
    Device as Dv, DeviceTable as Dt, Guest as Gu, Ownership as Ow, SecureTable as St, Tdi as Td,
    Transport as Tr,
};

const LOCK_CASES: &[LockCase] = &[
    LockCase {
        op: "create_guest",
        setup: nothing,
        run: |f| f.w.tsm.create_guest().map(drop),
        takes: &[(Gu, None)],
    },
    LockCase {
        op: "destroy_guest",
        setup: nothing,
        run: |f| f.w.tsm.destroy_guest(f.w.g2),
        takes: &[(Gu, Some(1)), (St, None)],
    },
    LockCase {
        op: "create_device",
        setup: nothing,
        run: |f| {
            f.w.tsm
                .create_device(rid(9, 0), &[range(0x9100_0000, 1)])
                .map(drop)
        },
        takes: &[(Dt, None), (Dv, Some(2))],
    },
    LockCase {
        op: "remove_device",
        setup: nothing,
        run: |f| f.w.tsm.remove_device(f.dev2),
        takes: &[(Dt, None), (Dv, Some(1))],
    },
    LockCase {
        op: "create_tdi",
        setup: nothing,
        run: |f| f.w.tsm.create_tdi(f.w.dev, rid(3, 2)).map(drop),
        takes: &[(Dv, Some(0)), (Td, None)],
    },
    LockCase {
        op: "remove_tdi",
        setup: nothing,
        run: |f| f.w.tsm.remove_tdi(f.w.t1),
        takes: &[(Dv, Some(0)), (Td, Some(1))],
    },
    LockCase {
        op: "bind",
        setup: nothing,
        run: |f| first(|b| f.w.tsm.firmware().bind(f.w.t1, f.w.g2, b)),
        takes: &[(Dv, Some(0)), (Td, Some(1)), (Gu, Some(1)), (Tr, None)],
    },
    LockCase {
        op: "device_response to a bind",
        setup: |f| {
            first(|b| f.w.tsm.firmware().bind(f.w.t1, f.w.g2, b)).unwrap();
        },
        run: |f| first(|b| f.w.tsm.firmware().device_response(f.w.t1, None, b)),
        takes: &[
            (Dv, Some(0)),
            (Td, Some(1)),
            (Gu, Some(1)),
            (Ow, None),
            (St, None),
            (Tr, None),
        ],
    },
    LockCase {
        op: "map_mmio",
        setup: nothing,
        run: |f| {
            let (g, h) = (gpa(GPA + 0x1000), hpa(BAR + 0x1000));
            f.w.tsm.map_mmio(f.w.t0, f.w.g1, g, h, PageSize::Size4K)
        },
        takes: &[(Td, Some(0)), (Gu, Some(0)), (Ow, None), (St, None)],
    },
    LockCase {
        op: "guest_start",
        setup: |f| {
            f.w.tsm.host_dma_create(f.w.t0).unwrap();
            f.w.tsm.guest_dma_accept(f.w.g1, f.w.t0).unwrap();
        },
        run: |f| first(|b| f.w.tsm.firmware().guest_start(f.w.g1, f.w.t0, b)),
        takes: &[(Td, Some(0)), (Gu, Some(0)), (Tr, None)],
    },
    LockCase {
        op: "device_error",
        setup: nothing,
        run: |f| f.w.tsm.device_error(f.w.t0).map(drop),
        takes: &[(Td, Some(0)), (Ow, None), (St, None)],
    },
    LockCase {
        op: "check_interface of a locked TDI",
        setup: nothing,
        run: |f| first(|b| f.w.tsm.firmware().check_interface(f.w.t0, b)),
        takes: &[(Td, Some(0)), (Ow, None), (St, None), (Tr, None)],
    },
    LockCase {
        op: "check_interface of a TDI in ERROR",
        setup: |f| {
            assert_eq!(f.w.tsm.device_error(f.w.t0), Ok(Completion::Done));
        },
        run: |f| f.w.tsm.check_interface(f.w.t0).map(drop),
        takes: &[(Td, Some(0)), (Ow, None), (St, None)],
    },
    LockCase {
        op: "unbind of a bound TDI",
        setup: nothing,
        run: |f| first(|b| f.w.tsm.firmware().unbind(f.w.t0, b)),
        takes: &[
            (Dv, Some(0)),
            (Td, Some(0)),
            (Gu, Some(0)),
            (Ow, None),
            (St, None),
            (Tr, None),
        ],
    },
    LockCase {
        op: "unbind of an unbound TDI",
        setup: nothing,
        run: |f| first(|b| f.w.tsm.firmware().unbind(f.w.t1, b)),
        takes: &[(Dv, Some(0)), (Td, Some(1))],
    },
    LockCase {
        op: "unbind_forced of a bound TDI (cuts the stream; t1 is the device's other TDI)",
        setup: nothing,
        run: |f| f.w.tsm.unbind_forced(f.w.t0).map(drop),
        takes: &[
            (Dv, Some(0)),
            (Td, Some(0)),
            (Gu, Some(0)),
            (Ow, None),
            (St, None),
        ],
    },
    LockCase {
        op: "unbind_forced of a bound TDI: the device's other TDI is locked too",
        setup: nothing,
        run: |f| f.w.tsm.unbind_forced(f.w.t0).map(drop),
        takes: &[
            (Dv, Some(0)),
            (Td, Some(1)),
            (Gu, Some(0)),
            (Ow, None),
            (St, None),
        ],
    },
    LockCase {
        op: "unbind_forced of a bound TDI whose stream is cut",
        setup: |f| {
            bind(&f.w.tsm, f.w.t1, f.w.g2, &[range(BAR + 0x20_0000, 4)]).unwrap();
            assert_eq!(f.w.tsm.unbind_forced(f.w.t1), Ok(Completion::Done));
        },
        run: |f| f.w.tsm.unbind_forced(f.w.t0).map(drop),
        takes: &[
            (Dv, Some(0)),
            (Td, Some(0)),
            (Gu, Some(0)),
            (Ow, None),
            (St, None),
        ],
    },
    LockCase {
        op: "unbind_forced of an unbound TDI",
        setup: nothing,
        run: |f| f.w.tsm.unbind_forced(f.w.t1).map(drop),
        takes: &[(Dv, Some(0)), (Td, Some(1))],
    },
    LockCase {
        op: "setup_stream of a cut stream",
        setup: |f| {
            bind(&f.w.tsm, f.w.t1, f.w.g2, &[range(BAR + 0x20_0000, 4)]).unwrap();
            assert_eq!(f.w.tsm.unbind_forced(f.w.t1), Ok(Completion::Done));
            assert_eq!(f.w.tsm.unbind(f.w.t0), Ok(Completion::Done));
        },
        run: |f| f.w.tsm.setup_stream(f.w.dev),
        takes: &[(Dv, Some(0)), (Td, Some(0))],
    },
    LockCase {
        op: "setup_stream of a cut stream, second TDI",
        setup: |f| {
            bind(&f.w.tsm, f.w.t1, f.w.g2, &[range(BAR + 0x20_0000, 4)]).unwrap();
            assert_eq!(f.w.tsm.unbind_forced(f.w.t1), Ok(Completion::Done));
            assert_eq!(f.w.tsm.unbind(f.w.t0), Ok(Completion::Done));
        },
        run: |f| f.w.tsm.setup_stream(f.w.dev),
        takes: &[(Dv, Some(0)), (Td, Some(1))],
    },
    LockCase {
        op: "setup_stream of a live stream (t0 bound: TdiBound)",
        setup: nothing,
        run: |f| f.w.tsm.setup_stream(f.w.dev),
        takes: &[(Dv, Some(0)), (Td, Some(0))],
    },
    LockCase {
        op: "host_unmap of a bound TDI's leaf (its owner found, then every lock in order)",
        setup: nothing,
        run: |f| {
            f.w.tsm
                .host_unmap(f.w.g1, gpa(GPA), PageSize::Size4K)
                .map(drop)
        },
        takes: &[
            (Dv, Some(0)),
            (Td, Some(0)),
            (Gu, Some(0)),
            (Ow, None),
            (St, None),
        ],
    },
    LockCase {
        op: "host_block of a bound TDI's leaf",
        setup: nothing,
        run: |f| f.w.tsm.host_block(f.w.g1, gpa(GPA), PageSize::Size4K),
        takes: &[
            (Dv, Some(0)),
            (Td, Some(0)),
            (Gu, Some(0)),
            (Ow, None),
            (St, None),
        ],
    },
    LockCase {
        op: "host_track",
        setup: nothing,
        run: |f| f.w.tsm.host_track(f.w.g1).map(drop),
        takes: &[(Gu, Some(0)), (St, None)],
    },
    LockCase {
        op: "host_zap of a range no TDI owns",
        setup: nothing,
        run: |f| f.w.tsm.host_zap(range(BAR + 0x20_0000, 1)),
        takes: &[(Ow, None), (St, None)],
    },
    LockCase {
        op: "host_zap of a bound range",
        setup: nothing,
        run: |f| f.w.tsm.host_zap(range(BAR, 1)),
        takes: &[(Ow, None)],
    },
    LockCase {
        op: "tdi",
        setup: nothing,
        run: |f| f.w.tsm.tdi(f.w.t0).map(drop),
        takes: &[(Td, Some(0))],
    },
    LockCase {
        op: "device",
        setup: nothing,
        run: |f| f.w.tsm.device(f.w.dev).map(drop),
        takes: &[(Dv, Some(0))],
    },
    LockCase {
        op: "guest",
        setup: nothing,
        run: |f| f.w.tsm.guest(f.w.g1).map(drop),
        takes: &[(Gu, Some(0))],
    },
    LockCase {
        op: "owned_ranges",
        setup: nothing,
        run: |f| f.w.tsm.owned_ranges(f.w.t0).map(drop),
        takes: &[(Ow, None)],
    },
    LockCase {
        op: "leaf",
        setup: nothing,
        run: |f| f.w.tsm.leaf(f.w.g1, gpa(GPA)).map(drop),
        takes: &[(St, None)],
    },
    LockCase {
        op: "with_table",
        setup: nothing,
        run: |f| f.w.tsm.with_table(|_| ()),
        takes: &[(St, None)],
    },
    LockCase {
        op: "with_transport",
        setup: nothing,
        run: |f| f.w.tsm.with_transport(|_| ()),
        takes: &[(Tr, None)],
    },
    LockCase {
        op: "snapshot",
        setup: nothing,
        run: |f| f.w.tsm.snapshot().map(drop),
        takes: &[
            (Dt, None),
            (Dv, Some(1)),
            (Td, Some(1)),
            (Gu, Some(1)),
            (Ow, None),
            (St, None),
        ],
    },
];

/// Runs `op` on this thread while another thread holds `operand`'s lock (slot `slot`). The
/// holder lets go after 30 s even if `op` has not returned: an operation that waits for a lock
/// instead of reporting `Busy` then fails its assertion rather than hanging, and a test thread
/// that a loaded machine stalls for seconds still runs `op` while the lock is held.
fn while_held<R>(tsm: &T, operand: Operand, slot: Option<u16>, op: impl FnOnce() -> R) -> R {
    use std::sync::mpsc;
    use std::time::Duration;
    let (held_tx, held_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        s.spawn(move || {
            tsm.hold_lock(operand, slot, || {
                held_tx.send(()).unwrap();
                let _ = release_rx.recv_timeout(Duration::from_secs(30));
            })
        });
        held_rx.recv().unwrap();
        let got = op();
        let _ = release_tx.send(());
        got
    })
}

fn tdisp(tsm: &T) -> heapless::Vec<(u32, TdispState), { capacity::MAX_TDIS }> {
    tsm.with_device(|d| d.link_mut().tdisp_states()).unwrap()
}

#[test]
fn busy_on_every_lock_names_the_operand_and_changes_nothing() {
    let mut busy = 0;
    for case in LOCK_CASES {
        let order = |o: &Operand| Operand::ALL.iter().position(|a| a == o).unwrap();
        assert!(
            case.takes
                .windows(2)
                .all(|w| order(&w[0].0) < order(&w[1].0)),
            "{}: the table lists its locks out of lock order",
            case.op
        );
        for operand in Operand::ALL {
            let f = locks_world();
            (case.setup)(&f);
            let before = f.w.tsm.snapshot().unwrap();
            let device_before = tdisp(&f.w.tsm);
            let held = case.takes.iter().find(|(o, _)| *o == operand);
            let slot = held.and_then(|&(_, s)| s);
            let got = while_held(&f.w.tsm, operand, slot, || (case.run)(&f));
            let Some(_) = held else {
                assert!(
                    !matches!(got, Err(Error::Busy(_))),
                    "{} does not take the {operand:?} lock, yet: {got:?}",
                    case.op
                );
                continue;
            };
            assert_eq!(
                got,
                Err(Error::Busy(operand)),
                "{} with the {operand:?} lock held elsewhere",
                case.op
            );
            assert_eq!(
                tdisp(&f.w.tsm),
                device_before,
                "{}: Busy({operand:?}) changed a device's TDISP state",
                case.op
            );
            assert_eq!(
                f.w.tsm.snapshot().unwrap(),
                before,
                "{}: Busy({operand:?}) changed the firmware",
                case.op
            );
            busy += 1;
        }
    }
    // Every cell of the table was shown.
    let cells: usize = LOCK_CASES.iter().map(|c| c.takes.len()).sum();
    assert_eq!(busy, cells);
}

#[test]
fn teardown_order_is_enforced() {
    let w = bound(0);
    let tsm = &w.tsm;
    refused(tsm, Error::DeviceInUse, || tsm.remove_device(w.dev));
    assert_eq!(tsm.unbind(w.t0), Ok(Completion::Done));
    tsm.remove_tdi(w.t0).unwrap();
    tsm.remove_tdi(w.t1).unwrap();
    refused(tsm, Error::InvalidHandle, || tsm.remove_tdi(w.t1));
    tsm.remove_device(w.dev).unwrap();
    refused(tsm, Error::InvalidHandle, || tsm.remove_device(w.dev));
    // The requester ID is free again.
    assert!(tsm.create_device(rid(3, 0), &[]).is_ok());
}

#[test]
fn a_report_the_firmware_will_not_trust_undoes_the_lock() {
    let w = world();
    let tsm = &w.tsm;
    for (ranges, err) in [
        (
            &[range(BAR, 2), range(BAR + 0x1000, 1)][..],
            Error::RangesOverlap,
        ),
        (&[range(BAR, 1025)][..], Error::RangeOutsideDevice),
        (&[range(BAR, 1); 17][..], Error::TooManyRanges),
        (&[][..], Error::EmptyReport),
    ] {
        refused(tsm, err, || bind(tsm, w.t0, w.g1, ranges));
        assert_eq!(
            tsm.with_device(|d| d.state(rid(3, 0))).unwrap(),
            TdispState::ConfigUnlocked,
            "{err:?}"
        );
    }
    tsm.with_device(|d| d.set_fault(rid(3, 0), Some(DeviceFault::Malformed)))
        .unwrap();
    refused(tsm, Error::DeviceMalformed, || {
        bind(tsm, w.t0, w.g1, &[range(BAR, 4)])
    });
    tsm.with_device(|d| d.set_fault(rid(3, 0), None)).unwrap();
    // The ranges a TDI owns are the device's, whatever the host would have liked.
    bind(tsm, w.t0, w.g1, &[range(BAR + 0x10_0000, 8)]).unwrap();
    assert_eq!(
        tsm.owned_ranges(w.t0).unwrap().as_slice(),
        &[range(BAR + 0x10_0000, 8)]
    );
}

#[test]
fn a_bind_with_no_report_is_refused_and_the_interface_unlocked() {
    let w = world();
    let tsm = &w.tsm;
    // The device model was never given a report for t1: it reports no range.
    assert!(
        tsm.with_device(|d| d.link_mut().report(rid(3, 1)).is_empty())
            .unwrap()
    );
    refused(tsm, Error::EmptyReport, || tsm.bind(w.t1, w.g1));
    assert_eq!(
        tsm.with_device(|d| d.state(rid(3, 1))).unwrap(),
        TdispState::ConfigUnlocked
    );
    assert_eq!(state(&w, w.t1), TdiState::Unbound);
    assert!(
        !tsm.tdi(w.t1).unwrap().unlock_first,
        "STOP was acknowledged"
    );
    // Given a report, the same TDI binds.
    bind(tsm, w.t1, w.g1, &[range(BAR + 0x10_0000, 1)]).unwrap();
    assert_eq!(
        tsm.owned_ranges(w.t1).unwrap().as_slice(),
        &[range(BAR + 0x10_0000, 1)]
    );
}

#[test]
fn check_interface_finds_device_errors_and_silent_resets() {
    let w = bound(3);
    let tsm = &w.tsm;
    refused(tsm, Error::TdiNotBound, || tsm.check_interface(w.t1));
    let before = normalised(tsm.snapshot().unwrap());
    assert_eq!(tsm.check_interface(w.t0), Ok(Completion::Done));
    assert_eq!(
        tsm.tdi(w.t0).unwrap().device_state,
        Some(TdispState::ConfigLocked)
    );
    assert_eq!(
        normalised(tsm.snapshot().unwrap()),
        before,
        "a device that agrees changes nothing"
    );
    tsm.start_with_guest_accept(w.g1, w.t0).unwrap();
    tsm.with_device(|d| d.event(rid(3, 0), DeviceEvent::Disturb))
        .unwrap();
    assert_eq!(tsm.check_interface(w.t0), Ok(Completion::Done));
    assert_eq!(
        state(&w, w.t0),
        TdiState::Error {
            owner: w.g1,
            blocking: None
        }
    );
    assert!(
        tsm.with_table(|t| t.leaves().iter().all(|l| l.state != LeafState::Mapped))
            .unwrap()
    );
    while tsm.unbind(w.t0).unwrap() == Completion::Resumable {}

    // A conventional reset the host did not announce: the device says CONFIG_UNLOCKED.
    bind(tsm, w.t0, w.g1, &[range(BAR, 512)]).unwrap();
    tsm.with_device(|d| d.event(rid(3, 0), DeviceEvent::ConventionalReset))
        .unwrap();
    assert_eq!(tsm.check_interface(w.t0), Ok(Completion::Done));
    assert!(matches!(state(&w, w.t0), TdiState::Error { .. }));
    assert_eq!(
        tsm.unbind(w.t0),
        Ok(Completion::Done),
        "STOP of a reset interface is done"
    );
    tsm.with_device(|d| d.set_fault(rid(3, 0), Some(DeviceFault::NoResponse)))
        .unwrap();
    bind(tsm, w.t1, w.g1, &[range(BAR + 0x20_0000, 4)]).unwrap();
    refused(tsm, Error::TdiNotBound, || tsm.check_interface(w.t0));
}

// ---- issue 9: what a hostile host or device could do ------------------------------------

/// A firmware that reserves `RESERVED` (say, its own table pool) and system memory below 2 GiB.
const RESERVED: u64 = 0x7000_0000;
fn reserving() -> T {
    let reserved = ReservedMemory::from_ranges(&[range(0, 0x7_0000), range(RESERVED, 16)]);
    T::with_reserved(MemTable::new(), ModelDevice::model(), reserved.unwrap())
}

#[test]
fn reserved_memory_is_never_a_bar_a_report_or_a_mapping() {
    let tsm = reserving();
    let g = tsm.create_guest().unwrap();
    // A BAR over the firmware's pool, or touching system memory by one page, is refused.
    refused(&tsm, Error::ReservedMemory, || {
        tsm.create_device(rid(3, 0), &[range(RESERVED, 1)])
    });
    refused(&tsm, Error::ReservedMemory, || {
        tsm.create_device(rid(3, 0), &[range(BAR, 4), range(RESERVED - 0x1000, 2)])
    });
    let dev = tsm.create_device(rid(3, 0), &[range(BAR, 16)]).unwrap();
    let tdi = tsm.create_tdi(dev, rid(3, 0)).unwrap();
    // A report naming the pool is outside the device's BARs, whatever it marks it.
    refused(&tsm, Error::RangeOutsideDevice, || {
        bind(&tsm, tdi, g, &[range(RESERVED, 1)])
    });
    bind(&tsm, tdi, g, &[range(BAR, 16)]).unwrap();
    // Mapping the pool's first page into the guest is refused before ownership is asked.
    refused(&tsm, Error::ReservedMemory, || {
        tsm.map_mmio(tdi, g, gpa(GPA), hpa(RESERVED), PageSize::Size4K)
    });
    refused(&tsm, Error::ReservedMemory, || {
        tsm.map_mmio(tdi, g, gpa(0), hpa(0), PageSize::Size2M)
    });
    assert_eq!(
        tsm.map_mmio(tdi, g, gpa(GPA), hpa(BAR), PageSize::Size4K),
        Ok(())
    );
}

#[test]
fn bars_of_two_devices_never_share_a_page() {
    let w = world();
    let tsm = &w.tsm;
    refused(tsm, Error::BarInUse, || {
        tsm.create_device(rid(9, 0), &[range(BAR + 0x3f_f000, 1)])
    });
    refused(tsm, Error::BarInUse, || {
        tsm.create_device(rid(9, 0), &[range(0x1000, 1), range(BAR + 0x40_f000, 4)])
    });
    // Adjacent is fine.
    let other = tsm.create_device(rid(9, 0), &[range(BAR + 0x41_0000, 1)]);
    assert!(other.is_ok());
    tsm.remove_device(other.unwrap()).unwrap();
    // Once a device is gone its BARs are free again.
    let ghost = tsm
        .create_device(rid(9, 0), &[range(0x9000_0000, 1)])
        .unwrap();
    tsm.remove_device(ghost).unwrap();
    assert!(
        tsm.create_device(rid(10, 0), &[range(0x9000_0000, 1)])
            .is_ok()
    );
}

#[test]
fn an_interface_belongs_to_one_device_and_has_one_tdi() {
    let w = world();
    let tsm = &w.tsm;
    // The same physical device registered again through another function, or a device whose
    // PFs are the world device's VFs: one requester ID is never registered twice.
    refused(tsm, Error::DuplicateDevice, || {
        tsm.create_device(rid(3, 1), &[])
    });
    refused(tsm, Error::DuplicateDevice, || {
        tsm.create_device(RequesterId::try_new(0, 3, 2, 0).unwrap(), &[])
    });
    let vfs_over_world = VfLayout {
        first_offset: 0x300,
        stride: 1,
        count: 1,
    };
    refused(tsm, Error::DuplicateDevice, || {
        let f = DeviceFunctions::new(
            RequesterId::try_new(0, 0, 0, 0).unwrap(),
            Some(vfs_over_world),
        );
        tsm.create_device_with(f.unwrap(), &[])
    });
    let other = tsm
        .create_device(rid(4, 0), &[range(0x9000_0000, 16)])
        .unwrap();
    // A TDI of the other device naming the world device's interface is refused, so the
    // world's bound interface can never be locked, stopped or re-nonced through it.
    refused(tsm, Error::ForeignInterface, || {
        tsm.create_tdi(other, rid(3, 0))
    });
    refused(tsm, Error::ForeignInterface, || {
        tsm.create_tdi(w.dev, rid(4, 0))
    });
    refused(tsm, Error::ForeignInterface, || {
        tsm.create_tdi(w.dev, RequesterId::try_new(0, 3, 3, 0).unwrap())
    });
    // The device's own bus, device and function numbers in another segment: another function.
    refused(tsm, Error::ForeignInterface, || {
        tsm.create_tdi(w.dev, RequesterId::try_new(1, 3, 0, 2).unwrap())
    });
    // VFs of the device are its interfaces.
    let vf = tsm
        .create_tdi(w.dev, RequesterId::try_new(0, 3, 2, 7).unwrap())
        .unwrap();
    assert_eq!(
        tsm.tdi(vf).unwrap().iface,
        RequesterId::try_new(0, 3, 2, 7).unwrap()
    );
}

#[test]
fn an_interface_id_is_a_function_of_its_device_in_a_segment_tdisp_can_name() {
    let w = world();
    let tsm = &w.tsm;
    // A device in segment 0x100: its functions are its own, but FUNCTION_ID's segment is
    // 8 bits, so none of them can be a TDISP interface.
    let wide = tsm
        .create_device(
            RequesterId::try_new(0x100, 3, 0, 0).unwrap(),
            &[range(0x9000_0000, 16)],
        )
        .unwrap();
    refused(tsm, Error::InvalidRequesterId, || {
        tsm.create_tdi(wide, RequesterId::try_new(0x100, 3, 0, 0).unwrap())
    });
    // A function of it named in segment 0 is another device's, not this one's.
    refused(tsm, Error::ForeignInterface, || {
        tsm.create_tdi(wide, RequesterId::try_new(0, 3, 0, 2).unwrap())
    });
    // Segment 0xff is the widest FUNCTION_ID carries: bits 23:16 with bit 24 set.
    let seg = tsm
        .create_device(
            RequesterId::try_new(0xff, 3, 0, 0).unwrap(),
            &[range(0xa000_0000, 16)],
        )
        .unwrap();
    let t = tsm
        .create_tdi(seg, RequesterId::try_new(0xff, 3, 0, 1).unwrap())
        .unwrap();
    assert_eq!(tsm.tdi(t).unwrap().iface.function_id(), 0x01ff_0301);
    assert_eq!(tsm.tdi(w.t1).unwrap().iface.function_id(), 0x0301);
    let functions = DeviceFunctions::physical(rid(3, 0));
    assert_eq!(functions.interface(rid(4, 0)), Err(Error::ForeignInterface));
    assert_eq!(
        functions.interface(rid(3, 5)).map(RequesterId::from),
        Ok(rid(3, 5))
    );
}

fn mapped(tsm: &T) -> usize {
    tsm.with_table(|t| {
        t.leaves()
            .iter()
            .filter(|l| l.state == LeafState::Mapped)
            .count()
    })
    .unwrap()
}

#[test]
fn a_tdi_stuck_at_stop_keeps_no_live_guest_mapping() {
    let n = u64::from(LEAVES_PER_CALL) + 5;
    let w = bound(n);
    let tsm = &w.tsm;
    tsm.start_with_guest_accept(w.g1, w.t0).unwrap();
    tsm.with_device(|d| d.set_fault(rid(3, 0), Some(DeviceFault::NoResponse)))
        .unwrap();
    // The leaves go before STOP is sent: Resumable while some are live, and the device's
    // silence is reported only once none is.
    assert_eq!(tsm.unbind(w.t0), Ok(Completion::Resumable));
    assert_eq!(mapped(tsm), 5);
    assert_eq!(state(&w, w.t0).tdisp(), TdispState::Error);
    assert_eq!(
        tsm.with_device(|d| d.state(rid(3, 0))).unwrap(),
        TdispState::Run,
        "no STOP while the guest still maps the interface"
    );
    assert_eq!(tsm.unbind(w.t0), Err(Error::DeviceUnresponsive));
    assert_eq!(mapped(tsm), 0);
    assert_eq!(
        state(&w, w.t0),
        TdiState::Unbinding {
            owner: w.g1,
            step: lifecycle::UnbindStep::Stop
        }
    );
    // Nothing left to block: a device error or a retried STOP that fails changes nothing.
    refused_ok(tsm, || tsm.device_error(w.t0));
    refused(tsm, Error::DeviceUnresponsive, || tsm.unbind(w.t0));
    // Once the device answers, the unbind finishes.
    tsm.with_device(|d| d.set_fault(rid(3, 0), None)).unwrap();
    let mut calls = 0;
    while tsm.unbind(w.t0) == Ok(Completion::Resumable) {
        calls += 1;
        assert!(calls < 10);
    }
    assert_eq!(state(&w, w.t0), TdiState::Unbound);
    assert_eq!(tsm.with_table(|t| t.leaves().len()).unwrap(), 0);
}

/// Runs `op`, expects `Ok(Done)`, and proves nothing changed (an idempotent no-op).
#[track_caller]
fn refused_ok(tsm: &T, op: impl FnOnce() -> TsmResult<Completion>) {
    let before = tsm.snapshot().unwrap();
    assert_eq!(op(), Ok(Completion::Done));
    assert_eq!(tsm.snapshot().unwrap(), before);
}

#[test]
fn device_error_and_check_finish_blocking_of_an_abandoned_unbind_without_the_device() {
    for via_check in [false, true] {
        let n = u64::from(LEAVES_PER_CALL) + 1;
        let w = bound(n);
        let tsm = &w.tsm;
        tsm.with_device(|d| d.set_fault(rid(3, 0), Some(DeviceFault::NoResponse)))
            .unwrap();
        // The host starts an unbind and abandons it after one call.
        assert_eq!(tsm.unbind(w.t0), Ok(Completion::Resumable));
        assert_eq!(mapped(tsm), 1);
        // A device error or a check (which does not ask the silent device) finishes it.
        let got = if via_check {
            tsm.check_interface(w.t0)
        } else {
            tsm.device_error(w.t0)
        };
        assert_eq!(got, Ok(Completion::Done), "via_check={via_check}");
        assert_eq!(
            mapped(tsm),
            0,
            "a TDI being torn down left the guest live MMIO"
        );
        assert_eq!(
            state(&w, w.t0),
            TdiState::Unbinding {
                owner: w.g1,
                step: lifecycle::UnbindStep::Stop
            }
        );
    }
}

#[test]
fn every_reported_range_lies_inside_the_bars_and_clear_of_bound_ranges() {
    let w = world();
    let tsm = &w.tsm;
    let shared = |r| ReportedRange {
        range: r,
        private: false,
    };
    let private = |r| ReportedRange {
        range: r,
        private: true,
    };
    let report = |tdi: TdiId, ranges: &[ReportedRange]| {
        let iface = tsm.tdi(tdi).unwrap().iface;
        tsm.with_device(|d| d.report(iface, ranges)).unwrap();
    };
    // A shared range over a page another TDI reports later: that bind is refused.
    report(
        w.t0,
        &[private(range(BAR, 4)), shared(range(BAR + 0x10_1000, 1))],
    );
    assert_eq!(tsm.bind(w.t0, w.g1), Ok(()));
    report(w.t1, &[private(range(BAR + 0x10_0000, 4))]);
    refused(tsm, Error::TdiBound, || tsm.bind(w.t1, w.g2));
    assert_eq!(tsm.unbind(w.t0), Ok(Completion::Done));
    bind(tsm, w.t1, w.g2, &[range(BAR + 0x10_0000, 4)]).unwrap();
    // A shared range outside every BAR.
    report(
        w.t0,
        &[private(range(BAR, 4)), shared(range(0x5000_0000, 1))],
    );
    refused(tsm, Error::RangeOutsideDevice, || tsm.bind(w.t0, w.g1));
    // A shared range over the sibling TDI's private page.
    report(
        w.t0,
        &[private(range(BAR, 4)), shared(range(BAR + 0x10_1000, 1))],
    );
    refused(tsm, Error::TdiBound, || tsm.bind(w.t0, w.g1));
    // A shared range in the BAR, clear of everything: bound, and only the private range owned.
    report(
        w.t0,
        &[private(range(BAR, 4)), shared(range(BAR + 0x20_0000, 1))],
    );
    assert_eq!(tsm.bind(w.t0, w.g1), Ok(()));
    assert_eq!(tsm.owned_ranges(w.t0).unwrap().as_slice(), &[range(BAR, 4)]);
}

#[test]
fn a_drifted_bound_count_is_inconsistent() {
    let w = bound(2);
    let tsm = &w.tsm;
    // The guest's count says nothing is bound: the unbind takes the leaves away but will not
    // release the ranges on a count that cannot go down.
    tsm.set_bound_tdis_for_test(w.g1, 0);
    assert_eq!(tsm.unbind(w.t0), Err(Error::Inconsistent));
    assert_eq!(tsm.with_table(|t| t.leaves().len()).unwrap(), 0);
    assert_eq!(
        tsm.owned_ranges(w.t0).unwrap().as_slice(),
        &[range(BAR, 512)]
    );
    assert!(state(&w, w.t0).is_bound());
    refused(tsm, Error::Inconsistent, || tsm.unbind(w.t0));
    // A count that would overflow at bind is drift too.
    tsm.set_bound_tdis_for_test(w.g2, u16::MAX);
    refused(tsm, Error::Inconsistent, || {
        bind(tsm, w.t1, w.g2, &[range(BAR + 0x20_0000, 1)])
    });
    tsm.set_bound_tdis_for_test(w.g1, 1);
    assert_eq!(tsm.unbind(w.t0), Ok(Completion::Done));
    assert_eq!(tsm.guest(w.g1).unwrap().bound_tdis, 0);
}

#[test]
fn operands_are_checked_in_one_order() {
    let w = bound(1);
    let tsm = &w.tsm;
    let ghost = GuestId::from_slot(30);
    // Handles first: an unknown guest is InvalidHandle, not NotOwner, whatever else is wrong.
    refused(tsm, Error::InvalidHandle, || {
        tsm.map_mmio(w.t0, ghost, gpa(GPA + 1), hpa(BAR), PageSize::Size4K)
    });
    refused(tsm, Error::InvalidHandle, || {
        tsm.start_with_guest_accept(ghost, w.t0)
    });
    refused(tsm, Error::InvalidHandle, || {
        tsm.host_unmap(ghost, gpa(GPA + 0x1000), PageSize::Size2M)
    });
    // Then alignment and width: a misaligned request is Misaligned, not NotMapped/NotOwner.
    refused(tsm, Error::Misaligned, || {
        tsm.host_unmap(w.g1, gpa(GPA + 0x1000), PageSize::Size2M)
    });
    refused(tsm, Error::Misaligned, || {
        tsm.host_block(w.g1, gpa(GPA + 0x1000), PageSize::Size2M)
    });
    refused(tsm, Error::Misaligned, || {
        tsm.map_mmio(w.t0, w.g2, gpa(GPA + 1), hpa(BAR), PageSize::Size4K)
    });
    // Then state.
    refused(tsm, Error::NotOwner, || {
        tsm.map_mmio(w.t0, w.g2, gpa(GPA), hpa(BAR), PageSize::Size4K)
    });
    refused(tsm, Error::NotMapped, || {
        tsm.host_unmap(w.g1, gpa(GPA + 0x20_0000), PageSize::Size2M)
    });
}

// ---- issue 11 section 2: force unbind ----------------------------------------------------

fn stream(w: &World) -> IdeStream {
    w.tsm.device(w.dev).unwrap().stream
}

#[test]
fn forced_unbind_cuts_the_stream_and_needs_no_stop() {
    for fault in [
        DeviceFault::NoResponse,
        DeviceFault::Refused,
        DeviceFault::Malformed,
    ] {
        let w = bound(2);
        let tsm = &w.tsm;
        tsm.start_with_guest_accept(w.g1, w.t0).unwrap();
        tsm.with_device(|d| d.set_fault(rid(3, 0), Some(fault)))
            .unwrap();
        // A plain unbind blocks, then waits at STOP.
        assert_eq!(tsm.unbind(w.t0), Err(Error::from(fault)), "{fault:?}");
        assert!(matches!(
            state(&w, w.t0),
            TdiState::Unbinding {
                step: lifecycle::UnbindStep::Stop,
                ..
            }
        ));
        refused(tsm, Error::TdiBound, || tsm.host_zap(range(BAR, 1)));
        assert_eq!(stream(&w), IdeStream::Live);
        // Forced: the stream is cut, the TDI unbound, the device never asked.
        assert_eq!(tsm.unbind_forced(w.t0), Ok(Completion::Done));
        assert_eq!(state(&w, w.t0), TdiState::Unbound);
        assert_eq!(stream(&w), IdeStream::Cut);
        assert_eq!(mapped(tsm), 0);
        assert_eq!(tsm.guest(w.g1).unwrap().bound_tdis, 0);
        tsm.host_zap(range(BAR, 1)).unwrap();
        // No bind on the device until its stream is set up again.
        tsm.with_device(|d| d.set_fault(rid(3, 0), None)).unwrap();
        tsm.with_device(|d| d.report_ranges(rid(3, 0), &[range(BAR, 512)]))
            .unwrap();
        refused(tsm, Error::StreamCut, || tsm.bind(w.t0, w.g1));
        refused(tsm, Error::StreamCut, || tsm.bind(w.t1, w.g2));
        tsm.setup_stream(w.dev).unwrap();
        assert_eq!(stream(&w), IdeStream::Live);
        // The interface was returned to CONFIG_UNLOCKED: the rebind locks it again.
        tsm.bind(w.t0, w.g1).unwrap();
        assert_eq!(state(&w, w.t0), TdiState::Locked { owner: w.g1 });
    }
}

#[test]
fn forced_unbind_is_bounded_and_resumable() {
    // Past one call's blocking and removal each, within the table's 256 leaves.
    let n = u64::from(LEAVES_PER_CALL) * 2 - 6;
    let w = bound(n);
    let tsm = &w.tsm;
    tsm.with_device(|d| d.set_fault(rid(3, 0), Some(DeviceFault::NoResponse)))
        .unwrap();
    let mut calls = 0;
    loop {
        calls += 1;
        match tsm.unbind_forced(w.t0).unwrap() {
            Completion::Done => break,
            Completion::Resumable => {
                assert_eq!(stream(&w), IdeStream::Cut);
                assert!(state(&w, w.t0).is_bound());
            }
            Completion::Relay(_) => panic!("a forced unbind never asks the device"),
        }
        assert!(calls < 100);
    }
    // Two blocking passes and two removal passes at least.
    assert!(calls >= 4, "{calls}");
    assert_eq!(state(&w, w.t0), TdiState::Unbound);
    assert_eq!(mapped(tsm), 0);
    // A second forced unbind of the unbound TDI changes nothing.
    refused_ok(tsm, || tsm.unbind_forced(w.t0));
}

/// A search that meets an entry it cannot read fails the unbind as `Inconsistent`: the TDI
/// stays unbinding at its step with its ranges owned and the leaves past the entry mapped,
/// never `Done`; once the table reads again, the same unbind finishes.
#[test]
fn an_unreadable_entry_fails_the_unbind_closed() {
    let w = bound(3);
    let tsm = &w.tsm;
    tsm.with_device(|d| d.set_fault(rid(3, 0), Some(DeviceFault::NoResponse)))
        .unwrap();
    // The second leaf (host BAR + 4 KiB) cannot be read.
    tsm.with_table(|t| t.break_at(Some(hpa(BAR + 0x1000))))
        .unwrap();
    assert_eq!(tsm.unbind_forced(w.t0), Err(Error::Inconsistent));
    let before = tsm.snapshot().unwrap();
    assert_eq!(tsm.unbind_forced(w.t0), Err(Error::Inconsistent));
    assert!(
        tsm.snapshot().unwrap() == before,
        "a failed walk changed state"
    );
    assert!(state(&w, w.t0).is_bound());
    assert!(!tsm.owned_ranges(w.t0).unwrap().is_empty());
    assert!(tsm.leaf(w.g1, gpa(GPA + 0x2000)).unwrap().is_some());
    tsm.with_table(|t| t.break_at(None)).unwrap();
    let mut calls = 0;
    while tsm.unbind_forced(w.t0).unwrap() != Completion::Done {
        calls += 1;
        assert!(calls < 10);
    }
    assert_eq!(state(&w, w.t0), TdiState::Unbound);
    assert_eq!(mapped(tsm), 0);
}

#[test]
fn forced_unbind_of_an_unbound_tdi_does_not_cut() {
    let w = bound(1);
    let tsm = &w.tsm;
    refused_ok(tsm, || tsm.unbind_forced(w.t1));
    assert_eq!(stream(&w), IdeStream::Live);
    // Stream set-up under a bound TDI is refused, live stream or not.
    refused(tsm, Error::TdiBound, || tsm.setup_stream(w.dev));
    refused(tsm, Error::InvalidHandle, || {
        tsm.unbind_forced(TdiId::from_slot(40))
    });
}

#[test]
fn the_cut_cuts_off_every_tdi_of_the_device() {
    let w = bound(1);
    let tsm = &w.tsm;
    bind(tsm, w.t1, w.g2, &[range(BAR + 0x20_0000, 4)]).unwrap();
    tsm.map_mmio(w.t1, w.g2, gpa(GPA), hpa(BAR + 0x20_0000), PageSize::Size4K)
        .unwrap();
    tsm.start_with_guest_accept(w.g2, w.t1).unwrap();
    assert_eq!(tsm.unbind_forced(w.t0), Ok(Completion::Done));
    // t1 is in ERROR: no map, no start; its leaves are blocked by the next device_error.
    assert!(matches!(state(&w, w.t1), TdiState::Error { owner, .. } if owner == w.g2));
    refused(tsm, Error::TdiInError, || {
        tsm.map_mmio(
            w.t1,
            w.g2,
            gpa(GPA + 0x1000),
            hpa(BAR + 0x20_1000),
            PageSize::Size4K,
        )
    });
    assert_eq!(tsm.device_error(w.t1), Ok(Completion::Done));
    assert!(matches!(
        tsm.leaf(w.g2, gpa(GPA)).unwrap().map(|l| l.state),
        Some(LeafState::Blocked { .. })
    ));
    // The stream stays up only once every TDI is unbound.
    refused(tsm, Error::TdiBound, || tsm.setup_stream(w.dev));
    // t1 is force-unbound too, with the device silent; the stream is already cut.
    tsm.with_device(|d| d.set_fault(rid(3, 1), Some(DeviceFault::NoResponse)))
        .unwrap();
    assert_eq!(tsm.unbind_forced(w.t1), Ok(Completion::Done));
    assert_eq!(state(&w, w.t1), TdiState::Unbound);
    assert_eq!(tsm.leaf(w.g2, gpa(GPA)).unwrap(), None);
    tsm.with_device(|d| d.set_fault(rid(3, 1), None)).unwrap();
    tsm.setup_stream(w.dev).unwrap();
    // A live stream: set-up again is a no-op.
    refused_ok(tsm, || tsm.setup_stream(w.dev).map(|()| Completion::Done));
    bind(tsm, w.t1, w.g2, &[range(BAR + 0x20_0000, 4)]).unwrap();
}

#[test]
fn forced_unbind_refusals_change_nothing() {
    let w = bound(1);
    let tsm = &w.tsm;
    // The owner's record drifted: the unbind runs to the release and stops there.
    tsm.set_bound_tdis_for_test(w.g1, 0);
    assert_eq!(tsm.unbind_forced(w.t0), Err(Error::Inconsistent));
    assert!(state(&w, w.t0).is_bound());
    refused(tsm, Error::Inconsistent, || tsm.unbind_forced(w.t0));
    refused(tsm, Error::InvalidHandle, || {
        tsm.setup_stream(DeviceId::from_slot(40))
    });
}

#[test]
fn a_normal_unbind_whose_stop_fails_keeps_its_step() {
    let w = bound(1);
    let tsm = &w.tsm;
    tsm.with_device(|d| d.set_fault(rid(3, 0), Some(DeviceFault::Refused)))
        .unwrap();
    assert_eq!(tsm.unbind(w.t0), Err(Error::DeviceRefused));
    refused(tsm, Error::DeviceRefused, || tsm.unbind(w.t0));
    assert_eq!(stream(&w), IdeStream::Live);
}

#[test]
fn the_host_may_tear_down_leaves_only_once_the_device_cannot_reach_the_guest() {
    use crate::lifecycle::{Cursor, UnbindStep};
    let o = GuestId::from_slot(0);
    let unbinding = |step| TdiState::Unbinding { owner: o, step };
    for (state, live, cut) in [
        (TdiState::Unbound, false, false),
        (TdiState::Locked { owner: o }, false, true),
        (TdiState::Run { owner: o }, false, true),
        (
            TdiState::Error {
                owner: o,
                blocking: None,
            },
            false,
            true,
        ),
        (unbinding(UnbindStep::Block(Cursor::START)), false, true),
        (unbinding(UnbindStep::Stop), false, true),
        (unbinding(UnbindStep::Track), true, true),
        (unbinding(UnbindStep::Remove(Cursor::START)), true, true),
    ] {
        assert_eq!(
            Tsm::<MemTable<256>, ModelSession>::host_may_tear_down(state, IdeStream::Live),
            live,
            "{state:?}"
        );
        assert_eq!(
            Tsm::<MemTable<256>, ModelSession>::host_may_tear_down(state, IdeStream::Cut),
            cut,
            "{state:?}"
        );
    }
}

#[test]
fn the_owner_of_a_page_is_the_bound_tdi_whose_report_holds_it() {
    let w = bound(0);
    let tsm = &w.tsm;
    assert_eq!(tsm.owner_of(hpa(BAR), PageSize::Size4K), Ok(Some(w.t0)));
    assert_eq!(
        tsm.owner_of(hpa(BAR + 0x1f_f000), PageSize::Size4K),
        Ok(Some(w.t0))
    );
    assert_eq!(tsm.owner_of(hpa(BAR), PageSize::Size2M), Ok(Some(w.t0)));
    assert_eq!(
        tsm.owner_of(hpa(BAR + 0x20_0000), PageSize::Size4K),
        Ok(None)
    );
    assert_eq!(
        tsm.owner_of(hpa(!0xfff & ((1 << 52) - 1)), PageSize::Size1G),
        Err(Error::InvalidRange)
    );
    assert_eq!(tsm.unbind(w.t0), Ok(Completion::Done));
    assert_eq!(tsm.owner_of(hpa(BAR), PageSize::Size4K), Ok(None));
}

// ---- the MMIO reporting offset, the guest's accept and reads ----------------------------

/// The offset a TDI's last LOCK carried, as the firmware keeps it and as the device got it.
fn lock_offset(w: &World, t: TdiId) -> u64 {
    let record = w.tsm.tdi(t).unwrap();
    let kept = record.mmio_offset.unwrap();
    let got = w
        .tsm
        .with_device(|d| d.dsm().reporting_offset(record.iface))
        .unwrap();
    assert_eq!(kept, got, "the device adds the offset the firmware keeps");
    kept
}

#[test]
fn every_lock_gets_its_own_reporting_offset_within_the_documented_bounds() {
    let w = world();
    let tsm = &w.tsm;
    let mut seen = std::vec::Vec::new();
    for _ in 0..3 {
        bind(tsm, w.t0, w.g1, &[range(BAR, 512)]).unwrap();
        bind(tsm, w.t1, w.g2, &[range(BAR + 0x20_0000, 16)]).unwrap();
        for t in [w.t0, w.t1] {
            let offset = lock_offset(&w, t);
            assert_eq!(offset % 0x1000, 0, "4 KiB aligned: {offset:#x}");
            assert!(offset >= 1 << 52, "never a physical address: {offset:#x}");
            assert!(offset < 1 << 62, "no addition can overflow: {offset:#x}");
            assert!(!seen.contains(&offset), "{offset:#x} repeats");
            seen.push(offset);
            // Parsed with it: the TDI owns the host pages, not the reported addresses.
            assert!(tsm.owned_ranges(t).unwrap()[0].base().as_u64() < 1 << 52);
        }
        assert_eq!(tsm.unbind(w.t0), Ok(Completion::Done));
        assert_eq!(tsm.unbind(w.t1), Ok(Completion::Done));
        for t in [w.t0, w.t1] {
            let r = tsm.tdi(t).unwrap();
            assert_eq!(
                (r.mmio_offset, r.report_digest, r.nonce),
                (None, None, None)
            );
        }
    }
}

#[test]
fn a_device_that_reports_without_the_offset_is_refused_and_nothing_changes() {
    let w = world();
    let tsm = &w.tsm;
    tsm.with_device(|d| {
        d.link_mut().set_misbehaviour(
            rid(3, 0),
            Some(device_model::Misbehaviour::IgnoresReportingOffset),
        )
    })
    .unwrap();
    refused(tsm, Error::DeviceMalformed, || {
        bind(tsm, w.t0, w.g1, &[range(BAR, 4)])
    });
    let r = tsm.tdi(w.t0).unwrap();
    assert_eq!((r.state, r.mmio_offset), (TdiState::Unbound, None));
    // The same device behaving binds.
    tsm.with_device(|d| d.link_mut().set_misbehaviour(rid(3, 0), None))
        .unwrap();
    bind(tsm, w.t0, w.g1, &[range(BAR, 4)]).unwrap();
}

#[test]
fn a_report_that_wraps_with_the_offset_is_malformed() {
    let w = world();
    let tsm = &w.tsm;
    // The device's 64-bit FIRST_PAGE wraps once the offset is added: below the offset.
    let wild = report::wire_range(0xffff_ffff_ffff_f000, 1, 0, 0);
    tsm.with_device(|d| d.link_mut().set_report(rid(3, 0), &[wild]))
        .unwrap();
    refused(tsm, Error::DeviceMalformed, || tsm.bind(w.t0, w.g1));
}

/// The guest's accept of the page at `gpa` naming `reported`: the check's verdict on the
/// page the table maps there (the model table has no pending state to change).
fn accept(w: &World, guest: GuestId, at: u64, reported: u64) -> TsmResult<()> {
    let g = gpa(at);
    w.tsm
        .guest_accept(guest, g, |t, check| {
            let leaf = SecureTable::leaf(t, guest, g).ok_or(Error::NotMapped)?;
            check.check(leaf.hpa, leaf.size, reported)
        })
        .and_then(|r| r)
}

#[test]
fn the_guest_accepts_a_page_only_where_its_report_puts_it() {
    let w = bound(4);
    let tsm = &w.tsm;
    let offset = lock_offset(&w, w.t0);
    for i in 0..4 {
        let reported = BAR + i * 0x1000 + offset;
        assert_eq!(accept(&w, w.g1, GPA + i * 0x1000, reported), Ok(()));
        // Another page of the same report, the host address, the offset of another bind:
        // each refused, nothing changed.
        for wrong in [reported + 0x1000, BAR + i * 0x1000, reported ^ (1 << 40)] {
            refused(tsm, Error::ReportedAddressMismatch, || {
                accept(&w, w.g1, GPA + i * 0x1000, wrong)
            });
        }
    }
    // Another guest's page, an unknown guest, a page with no leaf (the platform refuses).
    refused(tsm, Error::NotMapped, || {
        accept(&w, w.g2, GPA, BAR + offset)
    });
    // ... and the core's check itself, given to g2's accept, refuses g1's page at its very
    // reported address (no leaf of g2 there: no owner), whatever the platform would do.
    assert_eq!(
        tsm.guest_accept(w.g2, gpa(GPA), |_, check| {
            check.check(hpa(BAR), PageSize::Size4K, BAR + offset)
        }),
        Ok(Err(Error::HpaNotOwned))
    );
    refused(tsm, Error::NotMapped, || {
        accept(&w, w.g1, GPA + 0x10_0000, BAR + offset)
    });
    refused(tsm, Error::InvalidHandle, || {
        accept(&w, GuestId::from_slot(9), GPA, BAR + offset)
    });
    // A TDI in ERROR is no longer accepted into: the guest must not take its MMIO.
    assert_eq!(tsm.device_error(w.t0), Ok(Completion::Done));
    refused(tsm, Error::TdiInError, || {
        accept(&w, w.g1, GPA, BAR + offset)
    });
}

#[test]
fn the_check_refuses_a_page_outside_the_tdis_ranges_and_without_an_owner() {
    let w = bound(1);
    let offset = lock_offset(&w, w.t0);
    w.tsm
        .guest_accept(w.g1, gpa(GPA), |_, check| {
            // A page past the TDI's 2 MiB, even one whose address matches.
            let outside = BAR + 0x20_0000;
            assert_eq!(
                check.check(hpa(outside), PageSize::Size4K, outside + offset),
                Err(Error::HpaNotOwned)
            );
        })
        .unwrap();
    w.tsm
        .guest_accept(w.g1, gpa(GPA + 0x1000), |_, check| {
            assert_eq!(
                check.check(hpa(BAR), PageSize::Size4K, BAR + offset),
                Err(Error::HpaNotOwned),
                "no leaf at the address: no owner to check against"
            );
        })
        .unwrap();
}

#[test]
fn the_guest_reads_its_own_tdi_only() {
    let w = bound(0);
    let tsm = &w.tsm;
    let offset = lock_offset(&w, w.t0);
    assert_eq!(
        tsm.guest_read(w.g1, w.t0, GuestField::TdispVersion),
        Ok(0x10)
    );
    assert_eq!(
        tsm.guest_read(w.g1, w.t0, GuestField::TdispState),
        Ok(TdispState::ConfigLocked as u64)
    );
    assert_eq!(
        tsm.guest_read(w.g1, w.t0, GuestField::ReportedRange(0)),
        Ok(BAR + offset)
    );
    // The digest is the session's digest of the report the device sent: the guest hashes
    // the report it reads (the device's, offset included) and compares.
    let report = {
        let mut buf = [0u8; report::MAX_REPORT_BYTES];
        let ranges = [report::wire_range(BAR + offset, 512, 0, 0)];
        let n = report::encode_report(&mut buf, &report::report_head(1), &ranges, &[]).unwrap();
        buf[..n].to_vec()
    };
    let digest = ModelSession::model().report_digest(&report);
    for word in 0..6u8 {
        let at = usize::from(word) * 8;
        let want = u64::from_le_bytes(digest[at..at + 8].try_into().unwrap());
        assert_eq!(
            tsm.guest_read(w.g1, w.t0, GuestField::ReportDigest(word)),
            Ok(want)
        );
    }
    let fields = [
        GuestField::TdispVersion,
        GuestField::TdispState,
        GuestField::ReportDigest(0),
        GuestField::ReportedRange(0),
    ];
    for field in fields {
        refused(tsm, Error::NotOwner, || tsm.guest_read(w.g2, w.t0, field));
        refused(tsm, Error::TdiNotBound, || {
            tsm.guest_read(w.g1, w.t1, field)
        });
        refused(tsm, Error::InvalidHandle, || {
            tsm.guest_read(w.g1, TdiId::from_slot(60), field)
        });
        refused(tsm, Error::InvalidHandle, || {
            tsm.guest_read(GuestId::from_slot(9), w.t0, field)
        });
    }
    refused(tsm, Error::InvalidRange, || {
        tsm.guest_read(w.g1, w.t0, GuestField::ReportDigest(6))
    });
    refused(tsm, Error::InvalidRange, || {
        tsm.guest_read(w.g1, w.t0, GuestField::ReportedRange(1))
    });
}

/// The platform's stream cut (`Tsm::cut_stream`, TDX TDH.IDE.STREAM.BLOCK): a bound TDI goes
/// to ERROR and the host may then tear its leaves down itself; no TDI binds and the stream
/// cannot be set up under a bound TDI; a second cut changes nothing; after the TDI's unbind,
/// `setup_stream` makes the stream live and the TDI binds again.
#[test]
fn cut_stream_is_the_forced_cut_without_an_unbind() {
    let w = bound(2);
    let tsm = &w.tsm;
    assert_eq!(tsm.cut_stream(w.dev), Ok(()));
    assert_eq!(tsm.device(w.dev).unwrap().stream, IdeStream::Cut);
    assert!(matches!(state(&w, w.t0), TdiState::Error { .. }));
    assert!(tsm.tdi(w.t0).unwrap().unlock_first);
    let before = tsm.snapshot().unwrap();
    assert_eq!(tsm.cut_stream(w.dev), Ok(()));
    assert_eq!(
        tsm.snapshot().unwrap(),
        before,
        "a second cut changed something"
    );
    refused(tsm, Error::StreamCut, || {
        bind(tsm, w.t1, w.g2, &[range(BAR + 0x20_0000, 16)])
    });
    refused(tsm, Error::TdiBound, || tsm.setup_stream(w.dev));
    refused(tsm, Error::InvalidHandle, || {
        tsm.cut_stream(DeviceId::from_slot(7))
    });
    // The device can no longer reach the guest: the host removes a leaf itself.
    assert_eq!(tsm.host_block(w.g1, gpa(GPA), PageSize::Size4K), Ok(()));
    assert_eq!(tsm.host_track(w.g1), Ok(Completion::Done));
    assert_eq!(
        tsm.host_unmap(w.g1, gpa(GPA), PageSize::Size4K),
        Ok(hpa(BAR))
    );
    let mut done = tsm.unbind_forced(w.t0);
    while done == Ok(Completion::Resumable) {
        done = tsm.unbind_forced(w.t0);
    }
    assert_eq!(done, Ok(Completion::Done));
    assert_eq!(tsm.setup_stream(w.dev), Ok(()));
    assert_eq!(tsm.device(w.dev).unwrap().stream, IdeStream::Live);
    assert_eq!(bind(tsm, w.t0, w.g1, &[range(BAR, 512)]), Ok(()));
}

/// A TDI removed while its interface may still be locked on the device (a forced unbind
/// never sent STOP) hands that on: the TDI created again for the interface sends STOP first,
/// so its bind succeeds; an interface whose TDI was removed cleanly starts without one.
#[test]
fn a_tdi_created_again_unlocks_what_its_removed_predecessor_left_locked() {
    let w = bound(2);
    let tsm = &w.tsm;
    tsm.start_with_guest_accept(w.g1, w.t0).unwrap();
    assert_eq!(tsm.unbind_forced(w.t0), Ok(Completion::Done));
    assert!(tsm.tdi(w.t0).unwrap().unlock_first);
    tsm.remove_tdi(w.t0).unwrap();
    tsm.setup_stream(w.dev).unwrap();
    let again = tsm.create_tdi(w.dev, rid(3, 0)).unwrap();
    assert!(tsm.tdi(again).unwrap().unlock_first, "inherited");
    tsm.with_device(|d| d.report_ranges(rid(3, 0), &[range(BAR, 512)]))
        .unwrap();
    tsm.bind(again, w.g1).unwrap();
    assert_eq!(state(&w, again), TdiState::Locked { owner: w.g1 });
    assert!(!tsm.tdi(again).unwrap().unlock_first);
    assert_eq!(tsm.unbind(again), Ok(Completion::Done));
    // Removed cleanly: nothing is handed on.
    tsm.remove_tdi(again).unwrap();
    let third = tsm.create_tdi(w.dev, rid(3, 0)).unwrap();
    assert!(!tsm.tdi(third).unwrap().unlock_first);
    assert_eq!(tsm.device(w.dev).unwrap().maybe_locked, Default::default());
}
