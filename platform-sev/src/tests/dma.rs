//! Trusted DMA on SEV-TIO: the TDI's sDTE, created by TDI_BIND, written by its owner's
//! TIO_MSG_SDTE_WRITE_REQ, torn down by TDI_UNBIND with the ASID fence; every refusal compared
//! with a snapshot of the whole firmware.

use super::*;
use crate::guest_msg::SdteWriteStatus as Sw;
use crate::sdte::{Q0_IR, Q0_IW, Q0_V, Q1_DOMAIN_ID, Q3_ASID, Q3_VMPL, Q5_VTOM, Q5_VTOM_EN, Sdte};
use tsm_core::dma::{DmaReach, DmaState};
use tsm_core::lifecycle::UnbindStep;

/// The request Linux's guest sends: V, IR, IW, VMPL 0, vTOM_EN and its default vTOM.
fn linux_sdte() -> Sdte {
    let mut s = Sdte::default();
    s.q[0] = (Q0_V | Q0_IR | Q0_IW).into();
    s.q[5] = (Q5_VTOM_EN | (0x7fff_ffff << 1)).into();
    s
}

fn req(id: u16, sdte: Sdte) -> msg::SdteWriteReq {
    let mut r = msg::SdteWriteReq::new_zeroed();
    r.guest_device_id = id.into();
    r.sdte = sdte;
    r
}

/// An SDTE write the firmware answers; its status.
fn write(w: &mut World, gctx: u64, r: msg::SdteWriteReq) -> u16 {
    ok(w.guest_msg(gctx, msg::MSG_SDTE_WRITE_REQ, r.as_bytes()));
    let rsp: msg::SdteWriteRsp = w.response();
    assert_eq!(rsp.guest_device_id, r.guest_device_id);
    rsp.status.get()
}

/// An SDTE write refused in its answer with `want`, nothing changed.
#[track_caller]
fn write_refused(w: &mut World, gctx: u64, r: msg::SdteWriteReq, want: Sw) {
    let rsp: msg::SdteWriteRsp = refused_in_answer(w, gctx, msg::MSG_SDTE_WRITE_REQ, r.as_bytes());
    assert_eq!(rsp.status.get(), want as u16);
}

fn dma(w: &World) -> Option<DmaState> {
    w.sev.tsm().tdi(w.tdi()).unwrap().dma
}

fn entry(w: &World) -> Option<crate::sdte::SdteSlot> {
    let iface = w.sev.tsm().tdi(w.tdi()).unwrap().iface;
    w.sev
        .tsm()
        .with_table(|r| r.sdtes().get(iface).copied())
        .unwrap()
}

/// The firmware part TDI_BIND gives the test's TDI: its guest device ID, the device's streams.
fn bind_fields() -> Sdte {
    let mut s = Sdte::default();
    s.q[3] = (u64::from(GDEV) << 16).into();
    s.q[4] = u64::from_le_bytes([IDE_STREAM, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]).into();
    s
}

/// Puts an SDTE write sent under VMPCK `vmpck` (the sender's VMPL).
fn put_under(w: &mut World, vmpck: u8, r: &msg::SdteWriteReq) {
    w.put_msg(msg::MSG_SDTE_WRITE_REQ, r.as_bytes());
    let mut hdr = MsgHeader::new(msg::MSG_SDTE_WRITE_REQ, r.as_bytes().len());
    hdr.msg_vmpck = vmpck;
    w.mem.write(MEM + 0x1000, hdr.as_bytes()).unwrap();
}

/// An SDTE write under VMPCK `vmpck` answered in its response with `want`, nothing changed
/// (the response page aside); the answer comes back under the same VMPCK.
#[track_caller]
fn write_refused_under(w: &mut World, vmpck: u8, r: msg::SdteWriteReq, want: Sw) {
    put_under(w, vmpck, &r);
    let mut before = w.state();
    ok(w.cmd(&guest_request(GCTX)));
    let mut after = w.state();
    before.mem[RESPONSE_PAGE].fill(0);
    after.mem[RESPONSE_PAGE].fill(0);
    same(
        &before,
        &after,
        format_args!("an SDTE write under VMPCK {vmpck}"),
    );
    let rsp: msg::SdteWriteRsp = w.response();
    assert_eq!(rsp.status.get(), want as u16);
    assert_eq!(response_vmpck(w), vmpck);
}

/// The VMPCK of the last answer's header.
fn response_vmpck(w: &World) -> u8 {
    let mut hdr = MsgHeader::new_zeroed();
    w.mem.read(MEM + 0x2000, hdr.as_mut_bytes()).unwrap();
    hdr.msg_vmpck
}

fn start(w: &mut World) {
    let mut r = msg::TdiReq::new_zeroed();
    r.guest_device_id = GDEV.into();
    ok(w.guest_msg(GCTX, msg::MSG_TDI_START_REQ, r.as_bytes()));
    let rsp: msg::TdiStartRsp = w.response();
    assert_eq!(rsp.status.get(), 0);
}

#[test]
fn the_whole_life_bind_write_start_unbind_with_the_fence() {
    let mut w = World::new();
    w.setup(Stage::Mapped);
    let g = w.guest(GCTX);
    // TDI_BIND created the sDTE: V clear, no translation, nothing of the guest's; the
    // firmware's fields TDI_BIND knows filled in with the create.
    assert_eq!(dma(&w), Some(DmaState::Pending));
    let e = entry(&w).unwrap();
    assert_eq!(
        (e.sdte.guest_part(), e.state, e.guest),
        (Sdte::default(), DmaState::Pending, g)
    );
    assert_eq!(e.sdte.firmware_part(), bind_fields());
    // The owner's write: valid, pointed at its ASID by the firmware, its own bits kept.
    assert_eq!(
        write(&mut w, GCTX, req(GDEV, linux_sdte())),
        Sw::Success as u16
    );
    assert_eq!(dma(&w), Some(DmaState::Active));
    let e = entry(&w).unwrap();
    assert_eq!((e.sdte.asid(), e.sdte.domain_id()), (5, 5));
    assert_eq!(e.sdte.guest_part(), linux_sdte());
    assert_eq!(
        (e.sdte.guest_device_id(), e.sdte.ide_stream_id()),
        (GDEV, bind_fields().ide_stream_id())
    );
    // Not running yet: shared memory only. Started: the guest's private memory.
    assert_eq!(
        w.sev.tsm().dma_reach(w.tdi()).unwrap(),
        DmaReach::SharedOnly
    );
    start(&mut w);
    assert_eq!(
        w.sev.tsm().dma_reach(w.tdi()).unwrap(),
        DmaReach::Private(g)
    );
    // A second write that would change the valid entry (VMPL 1) is kept until unbind; the
    // same bits again are an idempotent success. Neither changes anything.
    let mut vmpl1 = linux_sdte();
    vmpl1.q[3] = (1u64 << 49).into();
    write_refused(&mut w, GCTX, req(GDEV, vmpl1), Sw::KeptUntilUnbind);
    write_refused(&mut w, GCTX, req(GDEV, linux_sdte()), Sw::Success);
    assert_eq!(entry(&w).unwrap(), e);
    // Unbind: the sDTE is blocked with the MMIO, before STOP, and its fence raised (held by
    // the test): STOP waits for it, pending with the progress kept, until the fence completes.
    w.sev.tsm().with_table(|r| r.hold_fences(true)).unwrap();
    assert_eq!(
        unbind_all(&mut w),
        Outcome::from_core(Err(Error::IotlbInvalidationPending))
    );
    assert_eq!(dma(&w), Some(DmaState::Invalidating));
    assert!(matches!(
        w.sev.tsm().tdi(w.tdi()).unwrap().state,
        TdiState::Unbinding {
            step: UnbindStep::Stop,
            ..
        }
    ));
    let e = entry(&w).unwrap();
    assert_eq!(e.sdte.q[0].get() & (Q0_V | Q0_IR | Q0_IW), 0);
    assert!(w.sev.tsm().with_table(|r| r.fence_pending(g)).unwrap());
    // Asking again, reclaiming the TDI, or decommissioning the guest change nothing.
    refused(&mut w, Error::IotlbInvalidationPending, |w| {
        w.cmd(&tdi_unbind(GCTX))
    });
    refused(&mut w, SevStatus::IN_USE, |w| w.cmd(&tdi_reclaim()));
    // The fence completes: the unbind ends, the sDTE gone, the ASID free of it.
    w.sev.tsm().with_table(|r| r.hold_fences(false)).unwrap();
    ok(unbind_all(&mut w));
    assert_eq!(dma(&w), None);
    assert!(entry(&w).is_none());
    assert!(!w.sev.tsm().with_table(|r| r.sdtes().holds(g)).unwrap());
    // Unbound: the write is refused, nothing changed; the TDI is reclaimed.
    write_refused(&mut w, GCTX, req(GDEV, linux_sdte()), Sw::TdiNotBound);
    ok(w.cmd(&tdi_reclaim()));
}

#[test]
fn another_guests_write_is_invalid_tdi_and_changes_nothing() {
    let mut w = World::new();
    w.setup(Stage::Bound);
    write_refused(&mut w, GCTX2, req(GDEV, linux_sdte()), Sw::InvalidTdi);
    // The owner under another guest device ID: not the TDI the host handed in.
    write_refused(&mut w, GCTX, req(GDEV + 1, linux_sdte()), Sw::InvalidTdi);
    assert_eq!(dma(&w), Some(DmaState::Pending));
    // Once the owner's write is accepted, another guest's still changes nothing.
    assert_eq!(write(&mut w, GCTX, req(GDEV, linux_sdte())), 0);
    write_refused(&mut w, GCTX2, req(GDEV, Sdte::default()), Sw::InvalidTdi);
}

#[test]
fn bits_the_guest_may_not_set_are_reserved_and_change_nothing() {
    let mut w = World::new();
    w.setup(Stage::Bound);
    let mut firmware_bits = vec![(1, Q1_DOMAIN_ID), (3, Q3_ASID)];
    // Every other bit outside V, IR, IW, VMPL, vTOM, one at a time.
    for (i, mask) in crate::sdte::GUEST_BITS.iter().enumerate() {
        for bit in 0..64 {
            if mask & (1 << bit) == 0 {
                firmware_bits.push((i, 1 << bit));
            }
        }
    }
    for (i, bits) in firmware_bits {
        let mut s = linux_sdte();
        s.q[i] = (s.q[i].get() | bits).into();
        write_refused(&mut w, GCTX, req(GDEV, s), Sw::Reserved);
    }
    // So is an invalidation with one.
    let mut s = Sdte::default();
    s.q[4] = 1.into();
    write_refused(&mut w, GCTX, req(GDEV, s), Sw::Reserved);
    // The message's own reserved bytes are the command's INVALID_PARAM, nothing changed.
    let mut r = req(GDEV, linux_sdte());
    r.reserved[3] = 1;
    w.put_msg(msg::MSG_SDTE_WRITE_REQ, r.as_bytes());
    refused(&mut w, SevStatus::INVALID_PARAM, |w| {
        w.cmd(&guest_request(GCTX))
    });
    // The guest's bits alone are taken, whatever VMPL and vTOM.
    let mut s = linux_sdte();
    s.q[3] = Q3_VMPL.into();
    s.q[5] = (Q5_VTOM_EN | Q5_VTOM).into();
    assert_eq!(write(&mut w, GCTX, req(GDEV, s)), 0);
    assert_eq!(entry(&w).unwrap().sdte.guest_part(), s);
}

#[test]
fn writes_to_an_unbound_or_errored_tdi_are_refused_and_change_nothing() {
    let mut w = World::new();
    w.setup(Stage::Created);
    write_refused(&mut w, GCTX, req(GDEV, linux_sdte()), Sw::TdiNotBound);
    ok(w.cmd(&tdi_bind(GCTX)));
    ok(w.cmd(&tdi_error()));
    assert!(matches!(
        w.sev.tsm().tdi(w.tdi()).unwrap().state,
        TdiState::Error { .. }
    ));
    write_refused(&mut w, GCTX, req(GDEV, linux_sdte()), Sw::TdiNotBound);
    write_refused(&mut w, GCTX2, req(GDEV, linux_sdte()), Sw::InvalidTdi);
    // ERROR blocked the (never valid) entry with the MMIO; never valid, it needs no fence.
    assert_eq!(dma(&w), Some(DmaState::Invalidated));
    // The unbind of the errored TDI removes the never-valid entry without a fence of its own.
    let fences = w.sev.tsm().with_table(|r| r.fences()[0]).unwrap();
    ok(unbind_all(&mut w));
    assert!(entry(&w).is_none());
    let after = w.sev.tsm().with_table(|r| r.fences()[0]).unwrap();
    assert_eq!(
        after.raised(),
        fences.raised() + 1,
        "only the unbind's Track fence"
    );
}

#[test]
fn an_invalidation_is_success_until_the_entry_is_valid_then_kept_until_unbind() {
    let mut w = World::new();
    w.setup(Stage::Bound);
    // Linux's invalidation names its TDI; with nothing valid it has nothing to do.
    write_refused(&mut w, GCTX, req(GDEV, Sdte::default()), Sw::Success);
    assert_eq!(write(&mut w, GCTX, req(GDEV, linux_sdte())), 0);
    write_refused(
        &mut w,
        GCTX,
        req(GDEV, Sdte::default()),
        Sw::KeptUntilUnbind,
    );
    assert_eq!(dma(&w), Some(DmaState::Active));
}

#[test]
fn a_reclaim_while_the_context_remains_is_in_use_and_changes_nothing() {
    let mut w = World::new();
    w.setup(Stage::Bound);
    let g = w.guest(GCTX);
    assert_eq!(write(&mut w, GCTX, req(GDEV, linux_sdte())), 0);
    start(&mut w);
    // A forced unbind cuts the stream (no STOP to wait for); the fence the sDTE's block raised
    // (no leaf here) is held, so its Dma step waits for the invalidation; Track raised none.
    w.sev.tsm().with_table(|r| r.hold_fences(true)).unwrap();
    let raised = w.sev.tsm().with_table(|r| r.fences()[0].raised()).unwrap();
    let mut force = tdi_unbind(GCTX);
    force.flags = abi::FLAG_FORCE.into();
    let mut o = w.cmd(&force);
    for _ in 0..64 {
        if o.status != SevStatus::RESUME_REQUIRED {
            break;
        }
        o = w.cmd(&force);
    }
    assert_eq!(o, Outcome::from_core(Err(Error::IotlbInvalidationPending)));
    assert_eq!(dma(&w), Some(DmaState::Invalidating));
    assert_eq!(
        w.sev.tsm().with_table(|r| r.fences()[0].raised()).unwrap(),
        raised + 1
    );
    let o = refused(&mut w, Error::DmaContextRemains, |w| w.cmd(&tdi_reclaim()));
    assert_eq!(o.status, SevStatus::IN_USE);
    // The guest's context cannot go while its sDTE names the ASID.
    refused(&mut w, SevStatus::IN_USE, |w| w.cmd(&decommission(GCTX)));
    refused(&mut w, Error::IotlbInvalidationPending, |w| w.cmd(&force));
    // The fence completes: the unbind ends, then the TDI can be reclaimed.
    w.sev
        .tsm()
        .with_table(|r| r.hold_fences_of(g, false))
        .unwrap();
    ok(w.cmd(&force));
    ok(w.cmd(&tdi_reclaim()));
}

/// A valid entry may hold cached translations in the IOMMU: no write changes it before the
/// unbind's fence (clearing IR, setting IW, narrowing or widening vTOM, raising VMPL, dropping
/// vTOM_EN), each answered `KeptUntilUnbind` with nothing changed, no fence raised; the same
/// bits again are `Success`, changing nothing.
#[test]
fn a_valid_entry_is_never_rewritten_before_the_unbinds_fence() {
    let mut w = World::new();
    w.setup(Stage::Mapped);
    // Reads only, vTOM at 32 GiB (0x4000 2 MiB units): room to widen and to narrow.
    let base = {
        let mut s = linux_sdte();
        s.q[0] = (Q0_V | Q0_IR).into();
        s.q[5] = (Q5_VTOM_EN | (0x4000 << 1)).into();
        s
    };
    assert_eq!(write(&mut w, GCTX, req(GDEV, base)), 0);
    start(&mut w);
    let g = w.guest(GCTX);
    let fences = w.sev.tsm().with_table(|r| r.fences()[0]).unwrap();
    let valid = entry(&w).unwrap();
    let change = |i: usize, clear: u64, set: u64| {
        let mut s = base;
        s.q[i] = ((s.q[i].get() & !clear) | set).into();
        s
    };
    for (what, s) in [
        ("IR cleared", change(0, Q0_IR, 0)),
        ("IW set", change(0, 0, Q0_IW)),
        ("vTOM narrowed", change(5, Q5_VTOM, 0x10 << 1)),
        ("vTOM widened", change(5, Q5_VTOM, Q5_VTOM)),
        ("vTOM_EN cleared", change(5, Q5_VTOM_EN, 0)),
        ("VMPL 1", change(3, 0, 1 << 49)),
        ("VMPL 3", change(3, 0, Q3_VMPL)),
    ] {
        assert_ne!(s, base, "{what}");
        write_refused(&mut w, GCTX, req(GDEV, s), Sw::KeptUntilUnbind);
    }
    write_refused(&mut w, GCTX, req(GDEV, base), Sw::Success);
    assert_eq!(entry(&w).unwrap(), valid);
    assert_eq!(w.sev.tsm().with_table(|r| r.fences()[0]).unwrap(), fences);
    assert_eq!(
        w.sev.tsm().dma_reach(w.tdi()).unwrap(),
        DmaReach::Private(g)
    );
}

/// The sender's VMPL is the VMPCK its message came with: an entry VMPL below it (more
/// privileged) is `VmplBelowSender`, the entry left pending (the platform's check runs before
/// the core's accept); the sender's own VMPL or a higher one is taken. VMPCK 4 and above are
/// no key: the command's `INVALID_PARAM`, nothing changed.
#[test]
fn an_entry_vmpl_below_the_senders_vmpck_is_refused_before_the_accept() {
    let mut w = World::new();
    w.setup(Stage::Bound);
    let with_vmpl = |v: u64| {
        let mut s = linux_sdte();
        s.q[3] = (v << 49).into();
        s
    };
    for sender in 1..=3u8 {
        for vmpl in 0..u64::from(sender) {
            write_refused_under(
                &mut w,
                sender,
                req(GDEV, with_vmpl(vmpl)),
                Sw::VmplBelowSender,
            );
        }
    }
    assert_eq!(dma(&w), Some(DmaState::Pending));
    // An invalidation grants nothing: answered as for VMPCK 0.
    write_refused_under(&mut w, 3, req(GDEV, Sdte::default()), Sw::Success);
    // VMPCK past 3: no such key, the whole request refused.
    for vmpck in [4u8, 0x80, 0xFF] {
        put_under(&mut w, vmpck, &req(GDEV, with_vmpl(3)));
        refused(&mut w, SevStatus::INVALID_PARAM, |w| {
            w.cmd(&guest_request(GCTX))
        });
    }
    let mut info = msg::TdiReq::new_zeroed();
    info.guest_device_id = GDEV.into();
    w.put_msg(msg::MSG_TDI_INFO_REQ, info.as_bytes());
    let mut hdr = MsgHeader::new(msg::MSG_TDI_INFO_REQ, info.as_bytes().len());
    hdr.msg_vmpck = 4;
    w.mem.write(MEM + 0x1000, hdr.as_bytes()).unwrap();
    refused(&mut w, SevStatus::INVALID_PARAM, |w| {
        w.cmd(&guest_request(GCTX))
    });
    // A VMPL 2 sender may give its device VMPL 2 or 3: accepted, answered under VMPCK 2.
    put_under(&mut w, 2, &req(GDEV, with_vmpl(2)));
    ok(w.cmd(&guest_request(GCTX)));
    let rsp: msg::SdteWriteRsp = w.response();
    assert_eq!(rsp.status.get(), Sw::Success as u16);
    assert_eq!(response_vmpck(&w), 2);
    assert_eq!(dma(&w), Some(DmaState::Active));
    assert_eq!(entry(&w).unwrap().sdte.vmpl(), 2);
    // Now valid: the same bits are an idempotent success, a VMPL 0 sender lowering it is
    // kept until unbind (a valid entry never changes), and VMPL 1 from VMPL 2 stays refused.
    write_refused_under(&mut w, 2, req(GDEV, with_vmpl(2)), Sw::Success);
    write_refused_under(&mut w, 0, req(GDEV, with_vmpl(0)), Sw::KeptUntilUnbind);
    write_refused_under(&mut w, 2, req(GDEV, with_vmpl(1)), Sw::VmplBelowSender);
}

/// The sDTE TDI_BIND creates carries the device's streams as DEV_CONNECT named them and the
/// guest device ID of the bind; a rebind under another ID carries that one.
#[test]
fn the_bind_fills_the_entrys_guest_device_id_and_ide_streams() {
    let mut w = World::new();
    w.setup(Stage::Bound);
    let e = entry(&w).unwrap();
    assert_eq!(e.sdte.guest_device_id(), GDEV);
    assert_eq!(
        e.sdte.ide_stream_id(),
        [IDE_STREAM, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]
    );
    assert!(!e.sdte.valid());
    assert_eq!(e.sdte.guest_part(), Sdte::default());
    ok(unbind_all(&mut w));
    assert!(entry(&w).is_none());
    let mut bind = tdi_bind(GCTX);
    bind.guest_device_id = (GDEV + 7).into();
    ok(w.cmd(&bind));
    assert_eq!(entry(&w).unwrap().sdte.guest_device_id(), GDEV + 7);
}

// ---- the teardown's fence (review s21b L5, L6, L7) ------------------------------------------

/// `guest`'s fences raised so far.
fn raised(w: &World, guest: GuestId) -> u64 {
    w.sev
        .tsm()
        .with_table(|r| r.fences()[usize::from(guest.slot())].raised())
        .unwrap()
}

/// Completes `guest`'s pending fence and keeps holding the next one.
fn complete_fence(w: &mut World, guest: GuestId) {
    w.sev
        .tsm()
        .with_table(|r| {
            r.hold_fences_of(guest, false);
            r.hold_fences_of(guest, true);
        })
        .unwrap();
}

/// The TDI mapped, its sDTE written valid, started: DMA reaches the guest's private memory.
fn running(w: &mut World) -> GuestId {
    w.setup(Stage::Mapped);
    assert_eq!(write(w, GCTX, req(GDEV, linux_sdte())), 0);
    start(w);
    let g = w.guest(GCTX);
    assert_eq!(
        w.sev.tsm().dma_reach(w.tdi()).unwrap(),
        DmaReach::Private(g)
    );
    g
}

fn sdte_valid(w: &World) -> bool {
    entry(w).unwrap().sdte.q[0].get() & (Q0_V | Q0_IR | Q0_IW) != 0
}

/// TDI_ERROR while another fence of the guest is out (the host's ASID_FENCE_CLEAR, held):
/// the sDTE is blocked (V clear) at once, its fence cannot be raised yet and the context stays
/// `Blocked`. Every later call that continues the teardown asks again: while the fence is
/// still out each changes nothing; once it completed, the next TDI_ERROR, TDI_STATUS or
/// TDI_UNBIND (normal or forced) raises the sDTE's fence.
#[test]
fn an_error_with_a_fence_out_is_asked_again_by_every_later_call() {
    let call = |w: &mut World, what: &str| match what {
        "TDI_ERROR" => w.cmd(&tdi_error()),
        "TDI_STATUS" => w.cmd(&tdi_status()),
        "TDI_UNBIND" => w.cmd(&tdi_unbind(GCTX)),
        _ => {
            let mut force = tdi_unbind(GCTX);
            force.flags = abi::FLAG_FORCE.into();
            w.cmd(&force)
        }
    };
    for what in ["TDI_ERROR", "TDI_STATUS", "TDI_UNBIND", "TDI_UNBIND forced"] {
        let mut w = World::new();
        let g = running(&mut w);
        w.sev.tsm().with_table(|r| r.hold_fences(true)).unwrap();
        ok(w.cmd(&fence_clear(GCTX)));
        let host = raised(&w, g);
        ok(w.cmd(&tdi_error()));
        assert!(!sdte_valid(&w), "{what}: blocked in the first call");
        assert_eq!(dma(&w), Some(DmaState::Blocked), "{what}");
        assert_eq!(
            raised(&w, g),
            host,
            "{what}: no second fence while one is out"
        );
        // Still out: another TDI_ERROR asks, is told not yet, and changes nothing.
        let before = w.state();
        ok(w.cmd(&tdi_error()));
        same(
            &before,
            &w.state(),
            format_args!("{what}: TDI_ERROR, fence out"),
        );
        // The host's fence completes: this call asks, and the sDTE's fence is raised.
        complete_fence(&mut w, g);
        let o = call(&mut w, what);
        let want = match what {
            "TDI_UNBIND" => Outcome::from_core(Err(Error::IotlbInvalidationPending)),
            "TDI_UNBIND forced" => Outcome::from_core(Err(Error::TlbFlushPending)),
            _ => Outcome::SUCCESS,
        };
        assert_eq!(o, want, "{what}");
        assert_eq!(raised(&w, g), host + 1, "{what}");
        assert_eq!(dma(&w), Some(DmaState::Invalidating), "{what}");
        // That one fence covers the sDTE and the leaves: the unbind ends on it, no other.
        complete_fence(&mut w, g);
        let o = if what == "TDI_UNBIND forced" {
            call(&mut w, what)
        } else {
            unbind_all(&mut w)
        };
        ok(o);
        assert_eq!(
            raised(&w, g),
            host + 1,
            "{what}: one fence for the teardown"
        );
        assert!(entry(&w).is_none(), "{what}");
    }
}

/// A running TDI whose unbind meets the host's fence out (held): the world, the guest, the
/// fences raised before the unbind, and the unbind's answer, which is returned too.
fn unbind_behind_a_host_fence() -> (Box<World>, GuestId, u64, Outcome) {
    let mut w = World::new();
    let g = running(&mut w);
    w.sev.tsm().with_table(|r| r.hold_fences(true)).unwrap();
    ok(w.cmd(&fence_clear(GCTX)));
    let host = raised(&w, g);
    let pending = Outcome::from_core(Err(Error::IotlbInvalidationPending));
    assert_eq!(unbind_all(&mut w), pending);
    (w, g, host, pending)
}

/// An unbind with another fence out waits before STOP with the documented status
/// (`IotlbInvalidationPending`, not the TLB's), the sDTE and the leaves blocked, no STOP sent;
/// asking again changes nothing until the fence completes; then it raises its own fence and
/// waits for it the same way; then it ends, on that one fence.
#[test]
fn an_unbind_with_a_fence_out_waits_before_stop_as_the_iotlb() {
    let (mut w, g, host, pending) = unbind_behind_a_host_fence();
    assert!(matches!(
        w.sev.tsm().tdi(w.tdi()).unwrap().state,
        TdiState::Unbinding {
            step: UnbindStep::Stop,
            ..
        }
    ));
    assert_eq!(dma(&w), Some(DmaState::Blocked));
    assert!(!sdte_valid(&w));
    assert_eq!(
        w.device.dsm().state(rid(0)),
        TdispState::Run,
        "no STOP sent"
    );
    assert_eq!(raised(&w, g), host);
    refused(&mut w, Error::IotlbInvalidationPending, |w| {
        w.cmd(&tdi_unbind(GCTX))
    });
    complete_fence(&mut w, g);
    assert_eq!(w.cmd(&tdi_unbind(GCTX)), pending);
    assert_eq!(dma(&w), Some(DmaState::Invalidating));
    assert_eq!(raised(&w, g), host + 1);
    refused(&mut w, Error::IotlbInvalidationPending, |w| {
        w.cmd(&tdi_unbind(GCTX))
    });
    complete_fence(&mut w, g);
    ok(unbind_all(&mut w));
    assert_eq!(raised(&w, g), host + 1, "the Track step raised none");
    assert!(entry(&w).is_none());
}

/// Who raised the guest's last fence decides whether the unbind's Track raises one: two
/// histories that leave the same table (fence counts, sDTE, RMP entries, TDI record) differ
/// only there. With the host's fence out at the unbind's first call, the sDTE's request waits;
/// once it completes, either the unbind's next call raises the sDTE's fence (it covers every
/// blocked leaf: the Track raises none), or the host raises another fence first (the sDTE's
/// invalidation then rides on it, raising nothing, and the Track raises the unbind's own).
#[test]
fn the_track_raises_no_fence_only_after_the_sdtes_own() {
    let mut ends = Vec::new();
    let mut seen = Vec::new();
    for host_again in [false, true] {
        let (mut w, g, host, pending) = unbind_behind_a_host_fence();
        complete_fence(&mut w, g);
        if host_again {
            ok(w.cmd(&fence_clear(GCTX)));
        }
        assert_eq!(w.cmd(&tdi_unbind(GCTX)), pending);
        assert_eq!(raised(&w, g), host + 1, "host again {host_again}");
        assert_eq!(dma(&w), Some(DmaState::Invalidating));
        complete_fence(&mut w, g);
        let fence = w
            .sev
            .tsm()
            .with_table(|r| r.fences()[usize::from(g.slot())])
            .unwrap();
        let entries: Vec<(bool, bool, u32)> = w
            .sev
            .tsm()
            .with_table(|r| {
                r.entries()
                    .iter()
                    .map(|e| (e.assigned(), e.blocked(), e.fence_epoch()))
                    .collect()
            })
            .unwrap();
        seen.push((
            (fence.raised(), fence.done()),
            entry(&w),
            entries,
            w.sev.tsm().tdi(w.tdi()).unwrap(),
        ));
        ok(unbind_all(&mut w));
        assert!(entry(&w).is_none());
        ends.push(raised(&w, g) - host);
    }
    assert_eq!(seen[0], seen[1], "the same table before the Track");
    assert_eq!(
        ends,
        [1, 2],
        "the Track raised a fence after the host's only"
    );
}

/// One ASID fence per unbind: raised once the last leaf is blocked (the sDTE blocked in the
/// first call, before any leaf), awaited before STOP, and the Track step finds the leaves
/// covered and raises none; with or without MMIO leaves, in one call or many, after an ERROR.
/// An sDTE never valid needs no fence of its own: the Track step raises the unbind's one, as
/// the other platforms advance one TLB epoch.
#[test]
fn an_unbind_raises_one_fence() {
    for (what, stage, valid, extra_leaves, error_first) in [
        ("leaves, valid sDTE", Stage::Mapped, true, 0, false),
        ("no leaves, valid sDTE", Stage::Bound, true, 0, false),
        ("many leaves, valid sDTE", Stage::Bound, true, 100, false),
        ("leaves, ERROR first", Stage::Mapped, true, 0, true),
        ("leaves, sDTE never valid", Stage::Mapped, false, 0, false),
        ("no leaves, sDTE never valid", Stage::Bound, false, 0, false),
    ] {
        let mut w = World::new();
        w.setup(stage);
        for i in 0..extra_leaves {
            ok(w.cmd(&mmio_map(
                GPA + 0x40_0000 + i * 0x1000,
                BAR + 0x10_0000 + i * 0x1000,
                abi::MMIO_SIZE_4K,
            )));
        }
        if valid {
            assert_eq!(write(&mut w, GCTX, req(GDEV, linux_sdte())), 0);
            start(&mut w);
        }
        let g = w.guest(GCTX);
        let before = raised(&w, g);
        if error_first {
            ok(w.cmd(&tdi_error()));
        }
        let mut o = w.cmd(&tdi_unbind(GCTX));
        if extra_leaves > 0 {
            // The first call blocked the sDTE and left leaves for later calls: no fence yet.
            assert_eq!(o, Outcome::plain(SevStatus::RESUME_REQUIRED), "{what}");
            assert!(!sdte_valid(&w), "{what}");
            assert_eq!(dma(&w), Some(DmaState::Blocked), "{what}");
            assert_eq!(raised(&w, g), before, "{what}");
        }
        for _ in 0..64 {
            if o.status != SevStatus::RESUME_REQUIRED {
                break;
            }
            o = w.cmd(&tdi_unbind(GCTX));
        }
        ok(o);
        assert_eq!(raised(&w, g) - before, 1, "{what}");
        assert!(entry(&w).is_none(), "{what}");
        assert!(
            w.sev
                .tsm()
                .with_table(|r| r.entries().iter().all(|e| !e.assigned()))
                .unwrap(),
            "{what}"
        );
    }
}

/// Two TDIs of one guest, the first started with a valid sDTE, the second bound and never
/// started, the guest's fences held: the first unbind's one fence is out and it waits before
/// STOP; the second, with nothing cached and no leaf, ends without a fence of its own, and the
/// first ends once its fence completes. Every refusal between changes nothing.
#[test]
fn a_sibling_with_nothing_to_fence_unbinds_behind_a_held_fence() {
    let mut w = World::new();
    let g = running(&mut w);
    add_second_tdi(&mut w);
    let mut bind2 = on_second_tdi(tdi_bind(GCTX), |c, s| c.tdi_ctx = s);
    bind2.guest_device_id = (GDEV + 1).into();
    ok(w.cmd(&bind2));
    let unbind2 = on_second_tdi(tdi_unbind(GCTX), |c, s| c.tdi_ctx = s);
    w.sev
        .tsm()
        .with_table(|r| r.hold_fences_of(g, true))
        .unwrap();
    let before = raised(&w, g);
    let pending = Outcome::from_core(Err(Error::IotlbInvalidationPending));
    assert_eq!(unbind_all(&mut w), pending);
    assert_eq!(raised(&w, g), before + 1);
    refused(&mut w, Error::IotlbInvalidationPending, |w| {
        w.cmd(&tdi_unbind(GCTX))
    });
    ok(w.cmd(&unbind2));
    assert_eq!(raised(&w, g), before + 1, "the sibling raised no fence");
    refused(&mut w, Error::IotlbInvalidationPending, |w| {
        w.cmd(&tdi_unbind(GCTX))
    });
    w.sev
        .tsm()
        .with_table(|r| r.hold_fences_of(g, false))
        .unwrap();
    ok(unbind_all(&mut w));
    assert_eq!(raised(&w, g), before + 1);
    assert!(!w.sev.tsm().with_table(|r| r.sdtes().holds(g)).unwrap());
}

/// TDI_BIND binds and creates the sDTE in one core call: at no round of its exchanges is the
/// TDI bound without its sDTE, and the round that binds makes it with TDI_BIND's fields.
#[test]
fn the_bind_creates_the_sdte_in_the_call_that_binds() {
    let mut w = World::new();
    w.setup(Stage::Created);
    let mut o = w.once(&tdi_bind(GCTX));
    let mut rounds = 0;
    while o.status == SevStatus::SPDM_REQUEST {
        let record = w.sev.tsm().tdi(w.tdi()).unwrap();
        assert_eq!(record.state, TdiState::Unbound);
        assert_eq!((record.dma, entry(&w)), (None, None));
        w.relay();
        o = w.reissue();
        rounds += 1;
        assert!(rounds < 32);
    }
    assert!(rounds > 0, "the bind relayed: its rounds were checked");
    ok(o);
    let record = w.sev.tsm().tdi(w.tdi()).unwrap();
    assert!(matches!(record.state, TdiState::Locked { .. }));
    assert_eq!(record.dma, Some(DmaState::Pending));
    assert_eq!(entry(&w).unwrap().sdte.firmware_part(), bind_fields());
}

/// A TDI_BIND whose sDTE the table refuses (a slot the interface holds already: drift) is
/// refused with that status, the LOCK undone: nothing bound, nothing claimed, the slot as it
/// was. A bind refused for its report creates no sDTE either (`tdi_bind_report_status_info_unbind`
/// compares the whole firmware, sDTE table included).
#[test]
fn a_bind_whose_sdte_is_refused_binds_nothing() {
    let mut w = World::new();
    w.setup(Stage::Created);
    let g = w.guest(GCTX2);
    let t = w.tdi();
    let iface = w.sev.tsm().tdi(t).unwrap().iface;
    w.sev
        .tsm()
        .with_table(|r| r.dma_create(g, iface))
        .unwrap()
        .unwrap();
    let stale = entry(&w);
    refused_relayed(&mut w, Error::DmaContextExists, t, |w| {
        w.cmd(&tdi_bind(GCTX))
    });
    assert_eq!(w.sev.tsm().tdi(t).unwrap().state, TdiState::Unbound);
    assert!(w.sev.tsm().owned_ranges(t).unwrap().is_empty());
    assert_eq!(entry(&w), stale);
    assert_eq!(w.device.dsm().state(rid(0)), TdispState::ConfigUnlocked);
}
