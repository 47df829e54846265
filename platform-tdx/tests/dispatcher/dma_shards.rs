//! Trusted DMA on a sharded module (`TdxModule::sharded`, two shards): TDH.IQ.INV.PROCESS
//! walks every shard's queue, and a shard held elsewhere stops it after the shards before it
//! (`TDX_OPERAND_BUSY`, repeated by the host; completing twice is completing once).

use super::*;
use platform_tdx::dmar::{self, INV_DONE, INV_QUEUED, MAP_BLOCKED};
use tsm_core::GuestId;

/// Table pages of each shard's pool.
const POOL_PAGES: usize = 32;
/// A second device's BAR (bus 4).
const BAR_4: u64 = 0x9000_0000;

impl<'m, const N: usize> World<'m, N> {
    /// The firmware over `N` shards, each S-EPT over its own pool in `pools` (as
    /// `tests/shards.rs` builds it: `common/sharded.rs`).
    fn sharded(pools: &'m mut [Vec<Page>; N]) -> Self {
        World {
            fw: sharded::sharded_module(pools),
            mem: RefCell::new(vec![0; HOST_PAGES * MESSAGE_PAGE_BYTES]),
            device: RefCell::new(ModelDevice::model()),
            pages: RefCell::new(BTreeMap::new()),
            tds: std::cell::Cell::new(0),
        }
    }
}

/// One TD of the sharded world: its TDR, its guest, its running TDI (function ID) and the
/// TDI's PASID entry index.
#[derive(Clone, Copy)]
struct Lane {
    td: u64,
    guest: GuestId,
    tdi: u64,
    idx: u64,
}

/// Two TDs (guest slots 0 and 1: shards 0 and 1), each with a device of its own (buses 3 and
/// 4) whose TDI is bound, its PASID entry on IOMMU 0 added and accepted, and started.
fn two_lanes(w: &World<'_, 2>) -> [Lane; 2] {
    let mut slot = 0;
    [(3, BAR, PAGES_A), (4, BAR_4, PAGES_B)].map(|(bus, bar, pages)| {
        let td = w.create_td();
        let guest = w.fw.td_of(td).unwrap().unwrap();
        assert_eq!(guest.slot(), slot, "TD {slot} in shard {slot}");
        slot += 1;
        let dev = device_world(w, bus, bar);
        let tdi = w.create_tdi_for(td, dev, rid(bus), pages);
        let bind = SeamRegs {
            rcx: tdi,
            rdx: td,
            ..Default::default()
        };
        assert_eq!(w.relayed(abi::TSM_DEVIF_BIND, bind).rax, TDX_SUCCESS);
        assert_eq!(w.start(td, tdi), TDX_SUCCESS);
        Lane {
            td,
            guest,
            tdi,
            idx: dmar::dmar_idx(rid(bus)),
        }
    })
}

/// The entry's `dmar_state_info_t` (TDH.DMAR.READ RDX): (map_sts, inv_sts).
fn entry_state<const N: usize>(w: &World<'_, N>, lane: Lane) -> (u64, u64) {
    let out = w.call(
        u64::from(abi::TDH_DMAR_READ),
        SeamRegs {
            rcx: lane.idx,
            ..Default::default()
        },
    );
    assert_eq!(out.rax, TDX_SUCCESS);
    read_state(out.rdx)
}

/// Everything of shard `guest`'s: its S-EPT pool's bytes and bookkeeping (PASID entries
/// among them).
fn shard_image<const N: usize>(w: &World<'_, N>, guest: GuestId) -> (Vec<Page>, SeptBookkeeping) {
    w.fw.with_guest_table(guest, |t| {
        (t.pool().pages().copied().collect(), t.bookkeeping())
    })
    .unwrap()
}

/// Both lanes unbound as far as they go: each unbind blocked its entry, queued the entry's
/// invalidation and waits for it before STOP (no track yet: no domain owed). Every queued
/// invalidation is in place, none done.
fn both_waiting(w: &World<'_, 2>, lanes: [Lane; 2]) {
    let pending = TDX_DMAR_INVALID_INV_STATE | u64::from(OPERAND_ID_DMAR);
    for lane in lanes {
        assert_eq!(w.unbind_all(lane.tdi), pending);
        assert_eq!(entry_state(w, lane), (MAP_BLOCKED, INV_QUEUED));
    }
    for lane in lanes {
        assert_eq!(
            iotlb_request(w, lane.td),
            TDX_IOMMU_IOTLB_TRACKING_NOT_REQUIRED,
            "TD {:#x} has not tracked since its entry was accepted",
            lane.td
        );
        // The host's TRACK owes the TD's domain on the IOMMU: requested, queued with the
        // entry's own invalidation for the same PROCESS.
        let track = w.call(
            u64::from(abi::TDH_MEM_TRACK),
            SeamRegs {
                rcx: lane.td,
                ..Default::default()
            },
        );
        assert_eq!(track.rax, TDX_SUCCESS);
        assert_eq!(iotlb_request(w, lane.td), TDX_SUCCESS);
        assert_eq!(
            iotlb_request(w, lane.td),
            TDX_IOMMU_IOTLB_TRACKING_NOT_DONE,
            "TD {:#x}'s domain queued",
            lane.td
        );
    }
    for lane in lanes {
        assert_eq!(
            w.unbind_all(lane.tdi),
            pending,
            "nothing done before PROCESS"
        );
    }
}

/// The lane's unbind ends (the host completing the domain invalidation its track owes), its
/// entry gone, every table page back in its shard's pool.
fn unbound(w: &World<'_, 2>, lane: Lane) {
    assert_eq!(w.unbind_drained(lane.tdi), TDX_SUCCESS);
    let read = w.call(
        u64::from(abi::TDH_DMAR_READ),
        SeamRegs {
            rcx: lane.idx,
            ..Default::default()
        },
    );
    assert_eq!(read.rax, TDX_DMAR_ENTRY_NOT_PRESENT | 1);
    // The TD's given-up table pages are free after its next TRACK.
    let track = w.call(
        u64::from(abi::TDH_MEM_TRACK),
        SeamRegs {
            rcx: lane.td,
            ..Default::default()
        },
    );
    assert_eq!(track.rax, TDX_SUCCESS);
    // Every page but the TD's S-EPT root (the TD's for its life).
    let (free, total) =
        w.fw.with_guest_table(lane.guest, |t| {
            let root = usize::from(t.root_phys(lane.guest).is_some());
            (t.pool().free_frames() + root, t.pool().total_frames())
        })
        .unwrap();
    assert_eq!(free, total, "shard of TD {:#x}", lane.td);
}

#[test]
fn one_iq_process_completes_every_shards_queue() {
    let mut pools: [Vec<Page>; 2] = std::array::from_fn(|_| vec![Page::ZERO; POOL_PAGES]);
    let world = World::sharded(&mut pools);
    let w = &world;
    let lanes = two_lanes(w);
    both_waiting(w, lanes);
    assert_eq!(iq_process(w), TDX_SUCCESS);
    for lane in lanes {
        assert_eq!(entry_state(w, lane), (MAP_BLOCKED, INV_DONE));
        assert_eq!(
            iotlb_request(w, lane.td),
            TDX_IOMMU_IOTLB_TRACKING_NOT_REQUIRED,
            "the domain of TD {:#x} done too",
            lane.td
        );
    }
    for lane in lanes {
        unbound(w, lane);
    }
}

/// The documented exception: shard 1 held elsewhere (its lock taken, as another CPU's leaf on
/// a TD of that shard holds it), PROCESS completes shard 0's queue and answers
/// `TDX_OPERAND_BUSY` on the S-EPT, shard 1 untouched (A's unbind may end, B's still waits);
/// repeated, it completes shard 1's and changes nothing in shard 0; once more, nothing at all.
#[test]
fn a_busy_shard_stops_iq_process_after_the_shards_before_it() {
    let mut pools: [Vec<Page>; 2] = std::array::from_fn(|_| vec![Page::ZERO; POOL_PAGES]);
    let world = World::sharded(&mut pools);
    let w = &world;
    let [a, b] = two_lanes(w);
    both_waiting(w, [a, b]);
    let (mem, held) = (w.mem.borrow().clone(), shard_image(w, b.guest));
    let record_b = w.fw.tsm().tdi(w.id(b.tdi)).unwrap();
    let busy = w.fw.with_guest_table(b.guest, |_| iq_process(w)).unwrap();
    assert_eq!(
        busy,
        TDX_OPERAND_BUSY | u64::from(OPERAND_ID_SEPT_TREE),
        "shard 1 held"
    );
    assert_eq!(entry_state(w, a), (MAP_BLOCKED, INV_DONE), "shard 0 done");
    assert_eq!(entry_state(w, b), (MAP_BLOCKED, INV_QUEUED));
    assert!(
        shard_image(w, b.guest) == held
            && *w.mem.borrow() == mem
            && w.fw.tsm().tdi(w.id(b.tdi)).unwrap() == record_b,
        "the busy shard changed"
    );
    assert_eq!(
        iotlb_request(w, a.td),
        TDX_IOMMU_IOTLB_TRACKING_NOT_REQUIRED,
        "A's domain done with shard 0"
    );
    assert_eq!(
        iotlb_request(w, b.td),
        TDX_IOMMU_IOTLB_TRACKING_NOT_DONE,
        "B's domain still queued in the held shard"
    );
    let pending = TDX_DMAR_INVALID_INV_STATE | u64::from(OPERAND_ID_DMAR);
    assert_eq!(w.unbind_all(b.tdi), pending, "B still waits");
    // A's unbind ends now; the host repeats PROCESS for the rest.
    unbound(w, a);
    let done_a = shard_image(w, a.guest);
    assert_eq!(iq_process(w), TDX_SUCCESS);
    assert_eq!(entry_state(w, b), (MAP_BLOCKED, INV_DONE));
    assert_eq!(
        iotlb_request(w, b.td),
        TDX_IOMMU_IOTLB_TRACKING_NOT_REQUIRED
    );
    assert!(
        shard_image(w, a.guest) == done_a,
        "completing shard 0 twice is completing it once"
    );
    let before = w.image();
    assert_eq!(iq_process(w), TDX_SUCCESS);
    assert!(w.image() == before, "a third PROCESS changed something");
    unbound(w, b);
}

/// The TDs' own invalidation requests (TDG.IQ.INV.REQUEST) in two shards on one IOMMU: each
/// TD's request is its own (the host's INV_REQ_TD for one TD leaves the other's waiting), the
/// queue's room is counted over both shards, and one TDH.IQ.INV.PROCESS completes both,
/// writing each TD's status word once.
#[test]
fn td_requests_in_two_shards_complete_at_one_process() {
    let mut pools = [vec![Page::ZERO; POOL_PAGES], vec![Page::ZERO; POOL_PAGES]];
    let w = &World::<2>::sharded(&mut pools);
    let lanes = two_lanes(w);
    // Each TD's descriptor page and status word (free host pages here).
    let page = |i: usize| host_page(37 + i as u64);
    let status = |i: usize| host_page(38) + 0x800 + i as u64 * 8;
    let domain = dmar::INV_DESC_IOTLB
        | dmar::IOTLB_G_DOMAIN << dmar::IOTLB_G_SHIFT
        | dmar::IOTLB_DW
        | dmar::IOTLB_DR;
    for (i, lane) in lanes.iter().enumerate() {
        let wait = dmar::WAIT_DESC_HOST | (0x100 + i as u64) << 32;
        let descs = [[domain, 0, 0, 0], [wait, status(i), 0, 0]];
        let bytes: Vec<u8> = descs
            .iter()
            .flatten()
            .flat_map(|q| q.to_le_bytes())
            .collect();
        w.write(page(i), &bytes);
        let out = w.tdcall(
            lane.td,
            dmar::TDG_IQ_INV_REQUEST,
            SeamRegs {
                rcx: 2,
                rdx: page(i),
                ..Default::default()
            },
        );
        assert_eq!((out.rax, out.rcx), (TDX_SUCCESS, 1), "TD {i}'s request");
    }
    let host = |lane: Lane| {
        w.call(
            u64::from(abi::TDH_IQ_INV_REQUEST),
            SeamRegs {
                rcx: 0,
                rdx: dmar::INV_REQ_TD | 1 << dmar::INV_REQ_POOL_SHIFT,
                r8: lane.td,
                r9: dmar::WAIT_DESC_HOST,
                r10: host_page(HOST_PAGES as u64 - 1),
                ..Default::default()
            },
        )
    };
    let used = || {
        lanes
            .map(|l| {
                w.fw.tsm()
                    .with_guest_table(l.guest, |t| t.dmar().iq_used(0))
                    .unwrap()
            })
            .iter()
            .sum::<u16>()
    };
    let word = |i: usize| u32::from_le_bytes(w.read(status(i), 4).try_into().unwrap());
    assert_eq!(host(lanes[0]).rax, TDX_SUCCESS);
    assert_eq!(used(), 2, "TD 0's descriptor and wait, in shard 0");
    assert_eq!(host(lanes[1]).rax, TDX_SUCCESS);
    assert_eq!(used(), 4);
    assert_eq!((word(0), word(1)), (0, 0));
    assert_eq!(iq_process(w), TDX_SUCCESS);
    assert_eq!(used(), 0);
    assert_eq!((word(0), word(1)), (0x100, 0x101), "each TD's own word");
    w.write(status(0), &[0; 16]);
    assert_eq!(iq_process(w), TDX_SUCCESS);
    assert_eq!((word(0), word(1)), (0, 0), "written once");
    for lane in lanes {
        let again = host(lane).rax;
        assert_eq!(again, TDX_GUEST_INV_NOT_REQUIRED | u64::from(OPERAND_ID_R8));
    }
}
