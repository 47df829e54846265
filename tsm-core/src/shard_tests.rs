//! A sharded firmware: each guest's leaves live in its own table behind its own lock, and each
//! shard reads its own copy of the ownership table; only a claim or a release writes them all.

use std::sync::mpsc;
use std::time::Duration;

use crate::device_model::ModelDevice;
use crate::lifecycle::UnbindStep;
use crate::mem_table::MemTable;
use crate::registry::Tdi;
use crate::relay::host::Relayed;
use crate::*;

/// Two shards: guest slot 0 in table 0, slot 1 in table 1.
type T2 = Relayed<MemTable<64>, 2>;

const BARS: [u64; 2] = [0x8000_0000, 0x9000_0000];
const GPA: u64 = 0x10_0000_0000;

/// Two lanes: guest `i` (slot `i`, shard `i`) and a device of its own whose one TDI is bound to
/// that guest over its whole 1 MiB BAR.
struct Lanes {
    tsm: T2,
    guests: [GuestId; 2],
    tdis: [TdiId; 2],
}

fn lanes() -> Lanes {
    let tsm = T2::sharded([MemTable::new(), MemTable::new()], ModelDevice::model());
    let guests = [tsm.create_guest().unwrap(), tsm.create_guest().unwrap()];
    assert_eq!((guests[0].slot(), guests[1].slot()), (0, 1));
    let mut tdis = Vec::new();
    for (i, &bar) in BARS.iter().enumerate() {
        let rid = RequesterId::try_new(0, 3 + i as u8, 0, 0).unwrap();
        let range = MmioRange::from_raw(bar, 256).unwrap();
        let dev = tsm.create_device(rid, &[range]).unwrap();
        let tdi = tsm.create_tdi(dev, rid).unwrap();
        tsm.with_device(|d| d.report_ranges(rid, &[range])).unwrap();
        tsm.bind(tdi, guests[i]).unwrap();
        tdis.push(tdi);
    }
    Lanes {
        tsm,
        guests,
        tdis: [tdis[0], tdis[1]],
    }
}

fn page(lane: usize, i: u64) -> (Gpa, Hpa) {
    (
        Gpa::try_new(GPA + i * 0x1000).unwrap(),
        Hpa::try_new(BARS[lane] + i * 0x1000).unwrap(),
    )
}

fn map(l: &Lanes, lane: usize, i: u64) -> TsmResult<()> {
    let (g, h) = page(lane, i);
    l.tsm
        .map_mmio(l.tdis[lane], l.guests[lane], g, h, PageSize::Size4K)
}

/// Runs `op` here while another thread runs `hold` (which holds a lock until told to let go).
fn beside<R>(hold: impl FnOnce(&dyn Fn()) + Send, op: impl FnOnce() -> R) -> R {
    let (held_tx, held_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        s.spawn(move || {
            hold(&|| {
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

#[test]
fn each_guest_maps_into_its_own_shard() {
    let l = lanes();
    map(&l, 0, 0).unwrap();
    map(&l, 1, 0).unwrap();
    map(&l, 1, 1).unwrap();
    let snap = l.tsm.snapshot().unwrap();
    let guests_in = |shard: usize| -> Vec<GuestId> {
        snap.tables[shard]
            .leaves()
            .iter()
            .map(|x| x.guest)
            .collect()
    };
    assert_eq!(guests_in(0), vec![l.guests[0]]);
    assert_eq!(guests_in(1), vec![l.guests[1]; 2]);
    // Every lookup goes to the guest's own shard: both guests map the same guest address.
    for lane in 0..2 {
        let (g, h) = page(lane, 0);
        let leaf = l.tsm.leaf(l.guests[lane], g).unwrap().unwrap();
        assert_eq!((leaf.guest, leaf.hpa), (l.guests[lane], h));
        assert_eq!(
            l.tsm.with_guest_table(l.guests[lane], |t| t.leaves().len()),
            Ok(lane + 1)
        );
    }
}

#[test]
fn a_held_shard_holds_up_its_guests_only() {
    let l = lanes();
    map(&l, 0, 0).unwrap();
    let before = l.tsm.snapshot().unwrap();
    let tsm = &l.tsm;
    let hold0 = |wait: &dyn Fn()| tsm.hold_lock(Operand::SecureTable, Some(0), wait);
    // Guest 0's map, host unmap and track wait for its shard; the host's zap needs every shard.
    let (g0, h0) = page(0, 1);
    let got = beside(hold0, || {
        [
            tsm.map_mmio(l.tdis[0], l.guests[0], g0, h0, PageSize::Size4K),
            tsm.host_unmap(l.guests[0], page(0, 0).0, PageSize::Size4K)
                .map(drop),
            tsm.host_track(l.guests[0]).map(drop),
            tsm.host_zap(MmioRange::from_raw(0xa000_0000, 1).unwrap()),
        ]
    });
    assert_eq!(got, [Err(Error::Busy(Operand::SecureTable)); 4]);
    assert_eq!(tsm.snapshot().unwrap(), before, "Busy changed the firmware");
    // Guest 1 goes on in its own shard meanwhile: a map, a refused host unmap, an unbind.
    let got = beside(hold0, || {
        let mapped = map(&l, 1, 0);
        let unmap = tsm.host_unmap(l.guests[1], page(1, 0).0, PageSize::Size4K);
        let unbind = tsm.unbind(l.tdis[1]);
        (mapped, unmap, unbind)
    });
    assert_eq!(
        got,
        (Ok(()), Err(Error::TdiBound), Ok(Completion::Done)),
        "guest 1 waited for guest 0's shard"
    );
    let after = tsm.snapshot().unwrap();
    assert_eq!(after.tables[0], before.tables[0]);
    assert!(after.tables[1].leaves().is_empty());
    assert_eq!(tsm.tdi(l.tdis[1]).unwrap().state, TdiState::Unbound);
}

#[test]
fn host_zap_sees_a_leaf_in_any_shard() {
    let l = lanes();
    // Unbind lane 1, then let platform glue leave a leaf in shard 1 over its (now unowned) BAR.
    assert_eq!(l.tsm.unbind(l.tdis[1]), Ok(Completion::Done));
    let bar = MmioRange::from_raw(BARS[1], 256).unwrap();
    assert_eq!(l.tsm.host_zap(bar), Ok(()));
    let (g, h) = page(1, 7);
    l.tsm
        .with_guest_table(l.guests[1], |t| t.map(l.guests[1], g, h, PageSize::Size4K))
        .unwrap()
        .unwrap();
    assert_eq!(l.tsm.host_zap(bar), Err(Error::TdiBound));
    // The other lane's BAR, owned by its bound TDI, is refused by ownership as before.
    let bar0 = MmioRange::from_raw(BARS[0], 1).unwrap();
    assert_eq!(l.tsm.host_zap(bar0), Err(Error::TdiBound));
}

#[test]
fn maps_read_ownership_side_by_side() {
    let l = lanes();
    let tsm = &l.tsm;
    // A CPU reading guest 1's copy: maps of either guest go on beside it.
    let read = |wait: &dyn Fn()| tsm.read_owners_while(l.guests[1], wait);
    let got = beside(read, || {
        (
            map(&l, 0, 0),
            map(&l, 1, 0),
            tsm.owner_of(page(1, 0).1, PageSize::Size4K),
        )
    });
    assert_eq!(got, (Ok(()), Ok(()), Ok(Some(l.tdis[1]))));
}

#[test]
fn an_unbind_releases_once_no_cpu_reads_ownership() {
    let l = lanes();
    for i in 0..4 {
        map(&l, 0, i).unwrap();
    }
    let tsm = &l.tsm;
    let read = |wait: &dyn Fn()| tsm.read_owners_while(l.guests[1], wait);
    // Another CPU reads guest 1's copy of ownership (a map in flight there): guest 0's unbind
    // does every step but the release (which writes every copy), keeps its place, and says
    // call again. Nothing of the other lane waits.
    let got = beside(read, || (tsm.unbind(l.tdis[0]), map(&l, 1, 0)));
    assert_eq!(got, (Ok(Completion::Resumable), Ok(())));
    let record = tsm.tdi(l.tdis[0]).unwrap();
    assert!(
        matches!(
            record.state,
            TdiState::Unbinding {
                step: UnbindStep::Release,
                ..
            }
        ),
        "{:?}",
        record.state
    );
    assert_eq!(
        tsm.with_guest_table(l.guests[0], |t| t.leaves().len()),
        Ok(0)
    );
    assert_eq!(tsm.owned_ranges(l.tdis[0]).unwrap().len(), 1);
    assert_eq!(tsm.guest(l.guests[0]).unwrap().bound_tdis, 1);
    // The reader is gone: the next call releases.
    assert_eq!(tsm.unbind(l.tdis[0]), Ok(Completion::Done));
    assert_eq!(tsm.tdi(l.tdis[0]).unwrap().state, TdiState::Unbound);
    assert!(tsm.owned_ranges(l.tdis[0]).unwrap().is_empty());
    assert_eq!(tsm.guest(l.guests[0]).unwrap().bound_tdis, 0);
    // And it binds again.
    let rid = RequesterId::try_new(0, 3, 0, 0).unwrap();
    let bar = MmioRange::from_raw(BARS[0], 256).unwrap();
    tsm.with_device(|d| d.report_ranges(rid, &[bar])).unwrap();
    tsm.bind(l.tdis[0], l.guests[0]).unwrap();
    map(&l, 0, 0).unwrap();
}

#[test]
fn a_written_ownership_table_is_busy_for_every_reader() {
    let l = lanes();
    let before = l.tsm.snapshot().unwrap();
    let tsm = &l.tsm;
    let write = |wait: &dyn Fn()| tsm.hold_lock(Operand::Ownership, None, wait);
    let got = beside(write, || {
        [
            map(&l, 0, 0),
            map(&l, 1, 0),
            tsm.unbind(l.tdis[1]).map(drop),
            tsm.owner_of(page(1, 0).1, PageSize::Size4K).map(drop),
        ]
    });
    assert_eq!(got, [Err(Error::Busy(Operand::Ownership)); 4]);
    assert_eq!(tsm.snapshot().unwrap(), before);
}

/// Relays `first` by hand until the device's next answer is to the request `stop` says is the
/// one to hold back; returns that request's length.
fn relay_until(
    l: &Lanes,
    lane: usize,
    first: TsmResult<Completion>,
    buf: &mut [u8; MAX_RELAY_BYTES],
    stop: impl Fn(&Tdi) -> bool,
) -> usize {
    let mut outcome = first;
    loop {
        let Ok(Completion::Relay(n)) = outcome else {
            panic!("the exchange ended early: {outcome:?}");
        };
        if stop(&l.tsm.tdi(l.tdis[lane]).unwrap()) {
            return n;
        }
        let mut answer = [0u8; MAX_RELAY_BYTES];
        let k = l
            .tsm
            .with_device(|d| d.answer(&buf[..n], &mut answer))
            .unwrap();
        outcome = l
            .tsm
            .firmware()
            .device_response(l.tdis[lane], k.map(|k| &answer[..k]), buf);
    }
}

#[test]
fn a_claim_writes_every_copy_and_waits_for_none() {
    let l = lanes();
    let tsm = &l.tsm;
    assert_eq!(tsm.unbind(l.tdis[1]), Ok(Completion::Done));
    let rid = RequesterId::try_new(0, 4, 0, 0).unwrap();
    let bar = MmioRange::from_raw(BARS[1], 256).unwrap();
    tsm.with_device(|d| d.report_ranges(rid, &[bar])).unwrap();
    // Guest 1's bind, relayed up to the report request (a one-portion report: its answer claims).
    let mut buf = [0u8; MAX_RELAY_BYTES];
    let first = tsm.firmware().bind(l.tdis[1], l.guests[1], &mut buf);
    let n = relay_until(&l, 1, first, &mut buf, |t| {
        matches!(
            t.exchange.map(|e| e.op),
            Some(DeviceOp::Bind {
                step: BindStep::Report { .. },
                ..
            })
        )
    });
    let mut answer = [0u8; MAX_RELAY_BYTES];
    let k = tsm
        .with_device(|d| d.answer(&buf[..n], &mut answer))
        .unwrap()
        .unwrap();
    // A CPU reads guest 0's copy: the claim would write it too, so the answer is Busy and
    // changes nothing at all.
    let before = tsm.snapshot().unwrap();
    let read = |wait: &dyn Fn()| tsm.read_owners_while(l.guests[0], wait);
    let mut out = [0u8; MAX_RELAY_BYTES];
    let got = beside(read, || {
        tsm.firmware()
            .device_response(l.tdis[1], Some(&answer[..k]), &mut out)
    });
    assert_eq!(got, Err(Error::Busy(Operand::Ownership)));
    assert_eq!(
        tsm.snapshot().unwrap(),
        before,
        "a Busy claim changed the firmware"
    );
    // Alone, the same answer is taken: both copies hold the new ranges (the snapshot compares
    // them), and the TDI is bound.
    assert_eq!(
        tsm.firmware()
            .device_response(l.tdis[1], Some(&answer[..k]), &mut out),
        Ok(Completion::Done)
    );
    let after = tsm.snapshot().unwrap();
    assert_eq!(
        after.owners.private_of(l.tdis[1]).collect::<Vec<_>>(),
        vec![bar]
    );
    assert!(tsm.tdi(l.tdis[1]).unwrap().state.is_bound());
    map(&l, 1, 0).unwrap();
}

#[test]
fn a_waiting_host_write_makes_guest_lookups_busy_until_it_is_done() {
    let l = lanes();
    map(&l, 0, 0).unwrap();
    let tsm = &l.tsm;
    let read = |wait: &dyn Fn()| tsm.read_owners_while(l.guests[1], wait);
    // The host's unbind of guest 0's TDI meets a reader at its release: it waits.
    let got = beside(read, || tsm.unbind(l.tdis[0]));
    assert_eq!(got, Ok(Completion::Resumable));
    // Guests' lookups give way to the waiting host (a guest reading in a loop cannot hold
    // the release off), and change nothing; the host's own lookups go on.
    let before = tsm.snapshot().unwrap();
    let (gpa, hpa) = page(1, 0);
    map(&l, 1, 0).unwrap();
    let mid = tsm.snapshot().unwrap();
    for (lane, field) in [
        (1, GuestField::ReportedRange(0)),
        (0, GuestField::TdispState),
    ] {
        let got = tsm.guest_read(l.guests[lane], l.tdis[lane], field);
        if lane == 1 {
            assert_eq!(got, Err(Error::Busy(Operand::Ownership)));
        } else {
            // A field that needs no ownership lookup is read as before.
            assert!(got.is_ok(), "{got:?}");
        }
    }
    let accept = tsm.guest_accept(l.guests[1], gpa, |_, _| ());
    assert_eq!(accept, Err(Error::Busy(Operand::Ownership)));
    assert_eq!(
        tsm.snapshot().unwrap(),
        mid,
        "a guest's Busy changed the firmware"
    );
    assert_ne!(before, mid);
    assert_eq!(tsm.owner_of(hpa, PageSize::Size4K), Ok(Some(l.tdis[1])));
    // The host comes back: the release is made and guests read again.
    assert_eq!(tsm.unbind(l.tdis[0]), Ok(Completion::Done));
    assert!(
        tsm.guest_read(l.guests[1], l.tdis[1], GuestField::ReportedRange(0))
            .is_ok()
    );
    assert!(tsm.guest_accept(l.guests[1], gpa, |_, _| ()).is_ok());
}

#[test]
fn a_forced_unbind_releases_once_no_cpu_reads_ownership() {
    let l = lanes();
    for i in 0..4 {
        map(&l, 0, i).unwrap();
    }
    let tsm = &l.tsm;
    let read = |wait: &dyn Fn()| tsm.read_owners_while(l.guests[1], wait);
    let got = beside(read, || tsm.unbind_forced(l.tdis[0]));
    assert_eq!(got, Ok(Completion::Resumable));
    assert_eq!(
        tsm.tdi(l.tdis[0]).unwrap().state,
        TdiState::Unbinding {
            owner: l.guests[0],
            step: UnbindStep::Release
        }
    );
    assert_eq!(
        tsm.with_guest_table(l.guests[0], |t| t.leaves().len()),
        Ok(0)
    );
    assert_eq!(tsm.owned_ranges(l.tdis[0]).unwrap().len(), 1);
    // The retry goes straight to the release: nothing is searched again.
    assert_eq!(tsm.unbind_forced(l.tdis[0]), Ok(Completion::Done));
    assert_eq!(tsm.tdi(l.tdis[0]).unwrap().state, TdiState::Unbound);
    assert!(tsm.owned_ranges(l.tdis[0]).unwrap().is_empty());
    assert_eq!(tsm.guest(l.guests[0]).unwrap().bound_tdis, 0);
}

#[test]
fn sequence_numbers_stay_unique_when_a_device_moves_to_another_shard() {
    let l = lanes();
    let tsm = &l.tsm;
    // Device A (slot 0, shard 0) goes, device B takes slot 0, C slot 2, and A comes back in
    // slot 3 (shard 1): every exchange number differs from every one A's interface was ever
    // sent (shard 0's were even), so the device never answers from an old exchange, and its
    // bind holds.
    let seqs = |tdi: TdiId| tsm.tdi(tdi).unwrap().exchange.map(|e| e.seq);
    assert_eq!(tsm.unbind(l.tdis[0]), Ok(Completion::Done));
    let dev_a = tsm.tdi(l.tdis[0]).unwrap().device;
    tsm.remove_tdi(l.tdis[0]).unwrap();
    tsm.remove_device(dev_a).unwrap();
    let rid_b = RequesterId::try_new(0, 9, 0, 0).unwrap();
    let dev_b = tsm
        .create_device(rid_b, &[MmioRange::from_raw(0xb000_0000, 16).unwrap()])
        .unwrap();
    assert_eq!(dev_b.slot(), dev_a.slot());
    let rid_c = RequesterId::try_new(0, 10, 0, 0).unwrap();
    let dev_c = tsm
        .create_device(rid_c, &[MmioRange::from_raw(0xc000_0000, 16).unwrap()])
        .unwrap();
    assert_eq!(dev_c.slot(), 2);
    let rid_a = RequesterId::try_new(0, 3, 0, 0).unwrap();
    let bar = MmioRange::from_raw(BARS[0], 256).unwrap();
    let dev_a2 = tsm.create_device(rid_a, &[bar]).unwrap();
    assert_ne!(
        usize::from(dev_a2.slot()) % 2,
        usize::from(dev_a.slot()) % 2,
        "the device moved to the other shard"
    );
    let tdi = tsm.create_tdi(dev_a2, rid_a).unwrap();
    tsm.with_device(|d| d.report_ranges(rid_a, &[bar])).unwrap();
    let mut buf = [0u8; MAX_RELAY_BYTES];
    let first = tsm.firmware().bind(tdi, l.guests[0], &mut buf);
    assert!(matches!(first, Ok(Completion::Relay(_))));
    let seq = seqs(tdi).unwrap();
    // Shard 1 counts 1, 3, 5, ...; shard 0 counted 0, 2, 4, ...
    assert_eq!(seq % 2, 1, "sequence {seq} from the other shard's numbers");
    assert_eq!(tsm.relay(tdi, first, &mut buf), Ok(Completion::Done));
    let record = tsm.tdi(tdi).unwrap();
    assert!(record.state.is_bound());
    assert_eq!(
        tsm.with_device(|d| d.link_mut().tdisp_states())
            .unwrap()
            .iter()
            .find(|(f, _)| *f == tdisp::function_id(rid_a).unwrap())
            .map(|(_, s)| *s),
        Some(TdispState::ConfigLocked),
        "the device locked the interface the firmware bound"
    );
}
