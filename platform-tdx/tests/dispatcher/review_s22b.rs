//! Review s22b findings B1 and B2 (tdxstat), kept as regression tests of their fixes: the
//! trusted queue's slots reserved at TDH.DMAR.ADD, and the unbind's IOTLB wait named inside
//! the call.

use super::*;
use platform_tdx::dmar;

/// The used and the committed (used or reserved) slots of IOMMU 0's trusted queue.
fn slots(w: &World<'_>) -> (u16, u16) {
    w.fw.with_table(|t| (t.dmar().iq_used(0), t.dmar().iq_committed(0)))
        .unwrap()
}

/// Two TDIs of one TD, X (03:00.0) and Y (04:00.0), both on IOMMU 0, bound and mapped; X's
/// entry added, accepted and running. Y's entry is added by the caller. Returns (td, x, y).
fn two_tdis(w: &World<'_>) -> (u64, u64, u64) {
    let td = w.create_td();
    let bar_y = 0x9000_0000;
    let dev_x = device_world(w, 3, BAR);
    let dev_y = device_world(w, 4, bar_y);
    let x = w.create_tdi(dev_x, rid(3), PAGES_A);
    let y = w.create_tdi(dev_y, rid(4), PAGES_B);
    for (tdi, bar, gpa) in [(x, BAR, GPA), (y, bar_y, GPA + 0x4000_0000)] {
        bind_mapped_2m(w, tdi, td, bar, gpa);
    }
    assert_eq!(add(w, td, 3), TDX_SUCCESS);
    assert_eq!(accept(w, td, x), TDX_SUCCESS);
    assert_eq!(w.start(td, x), TDX_SUCCESS);
    (td, x, y)
}

/// TDH.DMAR.ADD of the PASID entry of bus `bus`'s function 0 for `td`: its status.
fn add(w: &World<'_>, td: u64, bus: u8) -> u64 {
    let regs = dmar_add_regs(dmar::dmar_idx(rid(bus)), td);
    w.call(u64::from(dmar::TDH_DMAR_ADD), regs).rax
}

/// T1 (finding B1), as fixed: every PASID entry reserves, at TDH.DMAR.ADD, the 3 slots its
/// invalidation takes in its IOMMU's trusted queue, and its TD the 2 of the domain request
/// a TRACK may owe there; so the firmware's own requests (queued when an unbind blocks the
/// entry) always have their room and never overflow the ring. With 5 slots, X's entry
/// reserves all 5 and Y's ADD is refused `TDX_IOMMU_IQ_QUEUE_FULL` + RCX (ours: the module's
/// ADD reserves nothing), changing nothing; the unbind of X then queues within its room.
#[test]
fn b1_an_add_without_room_for_its_invalidation_is_refused_and_changes_nothing() {
    let mut mem = vec![Page::ZERO; 40];
    let world = World::with_iq_slots(&mut mem, 5);
    let w = &world;
    let (td, x, _) = two_tdis(w);
    assert_eq!(
        slots(w),
        (0, 5),
        "X's entry and the TD's domain reserve all 5"
    );
    let full = TDX_IOMMU_IQ_QUEUE_FULL | u64::from(OPERAND_ID_RCX);
    refused(w, "Y's ADD: 3 more slots", || add(w, td, 4), full);
    // The core's refusal of an entry that exists comes first.
    refused(
        w,
        "X's ADD again",
        || add(w, td, 3),
        TDX_DMAR_INVALID_MAPPING_STATE | u64::from(OPERAND_ID_RCX),
    );
    let entry_wait = TDX_DMAR_INVALID_INV_STATE | u64::from(OPERAND_ID_DMAR);
    assert_eq!(w.unbind_all(x), entry_wait);
    assert_eq!(
        slots(w),
        (3, 5),
        "the firmware's own request, within its reservation"
    );
    refused(w, "Y's ADD, the queue busy", || add(w, td, 4), full);
    assert_eq!(iq_process(w), TDX_SUCCESS);
    assert_eq!(
        slots(w),
        (0, 2),
        "PROCESS gave the entry's back; the domain's stays"
    );
    assert_eq!(w.unbind_drained(x), TDX_SUCCESS);
    assert_eq!(slots(w), (0, 0), "X's entry removed: nothing kept");
    assert_eq!(add(w, td, 4), TDX_SUCCESS, "Y's entry has its room now");
    assert_eq!(slots(w), (0, 5));
}

/// T1b (finding B1's knock-on), as fixed: with room for both entries (3 + 3 + 2 = 8 slots),
/// two unbinds on one IOMMU queue 6 descriptors, and the host's documented answer to
/// `TDX_IOMMU_IOTLB_TRACKING_NOT_DONE` (INV_REQ_IOTLB of the TD, then PROCESS) still finds
/// its 2 slots: the queue is exactly full, never over; nothing drifts or underflows at
/// PROCESS, and every slot is given back once both entries are removed.
#[test]
fn b1_the_hosts_domain_request_always_has_room_beside_the_firmwares_own() {
    let mut mem = vec![Page::ZERO; 40];
    let world = World::with_iq_slots(&mut mem, 8);
    let w = &world;
    let (td, x, y) = two_tdis(w);
    assert_eq!(add(w, td, 4), TDX_SUCCESS);
    assert_eq!(accept(w, td, y), TDX_SUCCESS);
    assert_eq!(w.start(td, y), TDX_SUCCESS);
    assert_eq!(slots(w), (0, 8));
    let full = TDX_IOMMU_IQ_QUEUE_FULL | u64::from(OPERAND_ID_RCX);
    let z = {
        let dev_z = device_world(w, 5, 0xa000_0000);
        w.create_tdi(dev_z, rid(5), PAGES_C)
    };
    let bind = SeamRegs {
        rcx: z,
        rdx: td,
        ..Default::default()
    };
    assert_eq!(w.relayed(abi::TSM_DEVIF_BIND, bind).rax, TDX_SUCCESS);
    refused(w, "a third entry", || add(w, td, 5), full);
    let entry_wait = TDX_DMAR_INVALID_INV_STATE | u64::from(OPERAND_ID_DMAR);
    assert_eq!(w.unbind_all(x), entry_wait);
    assert_eq!(w.unbind_all(y), entry_wait);
    assert_eq!(
        slots(w),
        (6, 8),
        "both firmware requests queued, within their room"
    );
    // The host tracks the TD: the IOMMU owes its domain, and the documented answer fits.
    let track = SeamRegs {
        rcx: td,
        ..Default::default()
    };
    assert_eq!(
        w.call(u64::from(abi::TDH_MEM_TRACK), track).rax,
        TDX_SUCCESS
    );
    assert_eq!(
        iotlb_request(w, td),
        TDX_SUCCESS,
        "the domain's reserved 2 slots"
    );
    assert_eq!(slots(w), (8, 8), "exactly full");
    refused(
        w,
        "the domain's request again: no room of its own left",
        || iotlb_request(w, td),
        TDX_IOMMU_IQ_QUEUE_FULL | u64::from(OPERAND_ID_RDX),
    );
    assert_eq!(iq_process(w), TDX_SUCCESS);
    assert_eq!(slots(w), (0, 2), "PROCESS gave back what was queued, once");
    assert_eq!(iq_process(w), TDX_SUCCESS);
    assert_eq!(slots(w), (0, 2), "a second PROCESS changes nothing");
    assert_eq!(w.unbind_drained(x), TDX_SUCCESS);
    assert_eq!(slots(w), (0, 2), "Y's entry keeps the TD's domain reserved");
    assert_eq!(w.unbind_drained(y), TDX_SUCCESS);
    assert_eq!(slots(w), (0, 0));
}

/// T2 (finding B2): the unbind's IOTLB wait was named by reading the TDI's step after the
/// core call through a try-lock, so another CPU holding the TDI's slot for an instant (a
/// query, the host's TDH.DMAR.READ) turned the domain's wait at the Remove step into the
/// entry's (INV_STATE + DMAR). Now the core's status names the wait the table refused inside
/// the call (`IotlbNotTracked`): whoever reads the TDI meanwhile, every answer at the Remove
/// step is the domain's (or BUSY). A race: it was caught within 400k calls in 1 of 3 release runs;
/// 1M calls here.
#[test]
fn b2_a_domain_wait_is_named_the_entrys_when_the_tdi_is_read_concurrently() {
    use platform_tdx::status::TDX_OPERAND_BUSY;
    let mut mem = vec![Page::ZERO; 32];
    let (world, td, tdi) = bound_world(&mut mem);
    let w = &world;
    let add = dmar_add_regs(dmar::dmar_idx(rid(3)), td);
    assert_eq!(w.call(u64::from(dmar::TDH_DMAR_ADD), add).rax, TDX_SUCCESS);
    assert_eq!(accept(w, td, tdi), TDX_SUCCESS);
    assert_eq!(w.start(td, tdi), TDX_SUCCESS);
    let entry_wait = TDX_DMAR_INVALID_INV_STATE | u64::from(OPERAND_ID_DMAR);
    let domain_wait = TDX_IOMMU_IOTLB_TRACKING_NOT_DONE;
    assert_eq!(w.unbind_all(tdi), entry_wait, "Stop: the entry's own");
    assert_eq!(iq_process(w), TDX_SUCCESS);
    assert_eq!(w.unbind_all(tdi), domain_wait, "Remove: the domain's");
    let id = w.id(tdi);
    let fw = &w.fw;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut seen = std::collections::BTreeMap::<u64, u32>::new();
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::hint::black_box(fw.tsm().tdi(id).ok());
            }
        });
        for _ in 0..1_000_000 {
            let rax = w.call(u64::from(abi::TSM_DEVIF_UNBIND), on(tdi)).rax;
            *seen.entry(rax).or_default() += 1;
            if rax == entry_wait {
                break;
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let other: Vec<_> = seen
        .iter()
        .filter(|(rax, _)| **rax != domain_wait && **rax & !0xffff_ffff != TDX_OPERAND_BUSY)
        .collect();
    assert!(
        other.is_empty(),
        "at the Remove step (the domain owed) TSM.DEVIF.UNBIND answered {:#x?}",
        seen
    );
    // The loop did ask at the Remove step: the domain's wait was answered, not only BUSY.
    assert!(seen.get(&domain_wait).is_some_and(|&n| n > 0), "{seen:#x?}");
}
