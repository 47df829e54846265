//! A sharded firmware: each guest's leaves live in its own table behind its own lock, and each
//! shard reads its own copy of the ownership table; only a claim or a release writes them all.

use std::sync::mpsc;
use std::time::Duration;

use crate::device_model::ModelDevice;
use crate::lifecycle::UnbindStep;
use crate::mem_table::MemTable;
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
                step: UnbindStep::Remove(_),
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

#[test]
fn a_claim_writes_every_copy_and_waits_for_none() {
    let l = lanes();
    let tsm = &l.tsm;
    assert_eq!(tsm.unbind(l.tdis[1]), Ok(Completion::Done));
    // A CPU reads guest 0's copy: guest 1's bind reads its report, but its claim would write
    // guest 0's copy too, so the answer that claims is Busy and changes nothing.
    let before = tsm.snapshot().unwrap();
    let read = |wait: &dyn Fn()| tsm.read_owners_while(l.guests[0], wait);
    let rid = RequesterId::try_new(0, 4, 0, 0).unwrap();
    let bar = MmioRange::from_raw(BARS[1], 256).unwrap();
    tsm.with_device(|d| d.report_ranges(rid, &[bar])).unwrap();
    let host = tsm.host();
    let got = beside(read, || {
        let mut buf = [0u8; MAX_RELAY_BYTES];
        let mut outcome = tsm.firmware().bind(l.tdis[1], l.guests[1], &mut buf);
        // Relay by hand, stopping at the first Busy.
        while let Ok(Completion::Relay(n)) = outcome {
            let mut answer = [0u8; MAX_RELAY_BYTES];
            let k = host
                .with_device(|d| d.answer(&buf[..n], &mut answer))
                .unwrap();
            outcome = tsm
                .firmware()
                .device_response(l.tdis[1], k.map(|k| &answer[..k]), &mut buf);
        }
        outcome
    });
    assert_eq!(got, Err(Error::Busy(Operand::Ownership)));
    let mid = tsm.snapshot().unwrap();
    assert_eq!(mid.owners, before.owners, "a Busy claim changed ownership");
    assert_eq!(mid.tables, before.tables);
    // Alone, the answer is taken: both copies hold the new ranges (the snapshot compares them).
    let mut buf = [0u8; MAX_RELAY_BYTES];
    assert!(
        tsm.tdi(l.tdis[1]).unwrap().exchange.is_some(),
        "the report exchange waits"
    );
    let n = tsm
        .firmware()
        .outstanding_request(l.tdis[1], &mut buf)
        .unwrap();
    let outcome = tsm.relay(l.tdis[1], Ok(Completion::Relay(n)), &mut buf);
    assert_eq!(outcome, Ok(Completion::Done));
    let after = tsm.snapshot().unwrap();
    assert_eq!(
        after.owners.private_of(l.tdis[1]).collect::<Vec<_>>(),
        vec![bar]
    );
    assert!(tsm.tdi(l.tdis[1]).unwrap().state.is_bound());
    map(&l, 1, 0).unwrap();
}
