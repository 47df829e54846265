//! The relay on SEV-TIO, driven round by round through command buffers as the Linux host
//! drives it: `SPDM_REQUEST` with the request in `spdm_ctrl.req`, the host's DOE exchange,
//! the device's answer in `spdm_ctrl.resp`, the written-back command issued again. Every
//! reissue that is not the device's answer to the TDI's outstanding request is refused with
//! its precise status and changes nothing.

use super::*;
use crate::host;

fn spdm_request() -> Outcome {
    Outcome::plain(SevStatus::SPDM_REQUEST)
}

/// The word at 0x04 of the last command's written-back buffer has FLAG_CONTINUE.
fn continue_set(w: &World) -> bool {
    let word = u32::from_le_bytes(w.last_bytes()[4..8].try_into().unwrap());
    word & abi::FLAG_CONTINUE != 0
}

/// `c` as a reissue: FLAG_CONTINUE set, as in a buffer the firmware wrote back.
fn continued<C: Command>(mut c: C) -> C {
    let bytes = c.as_mut_bytes();
    let word = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) | abi::FLAG_CONTINUE;
    bytes[4..8].copy_from_slice(&word.to_le_bytes());
    c
}

fn page(w: &World, at: u64) -> Vec<u8> {
    let mut v = vec![0u8; 4096];
    w.mem.read(at, &mut v).unwrap();
    v
}

/// Checks the request buffer as Linux reads it (sev-linux-buffers.md sections 2.2 and 3):
/// `capacity_sz`, `payload_sz` the data object rounded to 32, data object REQ 1.0 of secured
/// SPDM with `length` 0x10 + a whole number of dwords, zeros after the payload.
#[track_caller]
fn check_request(w: &World) {
    let p = page(w, SPDM_REQ);
    let word = |at: usize| u32::from_le_bytes(p[at..at + 4].try_into().unwrap()) as usize;
    let length = word(0x44);
    assert_eq!(word(0), 4096, "capacity_sz");
    assert_eq!(word(4), length.next_multiple_of(32), "payload_sz");
    assert!(p[8..0x40].iter().all(|b| *b == 0), "header reserved");
    assert_eq!(word(0x40), 1, "data object ID");
    assert_eq!((p[0x48], p[0x49], p[0x4A]), (0, 1, 2), "version, data type");
    assert!(
        length > 0x10 && (length - 0x10) % 4 == 0,
        "length {length:#x}"
    );
    assert!(p[0x40 + length..0x40 + word(4)].iter().all(|b| *b == 0));
}

/// Issues `c` once and drives it to its end by hand, checking every request and the
/// written-back FLAG_CONTINUE. Returns every round's outcome.
#[track_caller]
fn drive<C: Command>(w: &mut World, c: &C) -> Vec<Outcome> {
    let mut outcomes = vec![w.once(c)];
    while *outcomes.last().unwrap() == spdm_request() {
        assert!(
            continue_set(w),
            "SPDM_REQUEST without FLAG_CONTINUE written back"
        );
        check_request(w);
        w.relay();
        outcomes.push(w.reissue());
        assert!(outcomes.len() < 32, "{outcomes:?}");
    }
    let last = outcomes.last().unwrap().status;
    if last == SevStatus::SUCCESS || last == SevStatus::RESUME_REQUIRED {
        assert!(!continue_set(w), "FLAG_CONTINUE left set after {last:?}");
    }
    outcomes
}

fn rounds(n: usize, last: Outcome) -> Vec<Outcome> {
    let mut v = vec![spdm_request(); n];
    v.push(last);
    v
}

/// Flips one byte of the response buffer.
fn flip(w: &mut World, at: u64) {
    let mut b = [0u8];
    w.mem.read(at, &mut b).unwrap();
    w.mem.write(at, &[b[0] ^ 0x10]).unwrap();
}

fn put_u32(w: &mut World, at: u64, v: u32) {
    w.mem.write(at, &v.to_le_bytes()).unwrap();
}

#[test]
fn bind_start_status_unbind_purely_through_command_buffers() {
    let mut w = World::new();
    w.setup(Stage::Created);
    let t = w.tdi();
    // Bind: GET_VERSION, GET_CAPABILITIES, LOCK_INTERFACE, one report portion.
    let before_bind = w.state();
    assert_eq!(w.once(&tdi_bind(GCTX)), spdm_request());
    // While the device is asked, the TDI is still unbound and nothing else moved.
    let mid = w.state();
    assert_eq!(w.sev.tsm().tdi(t).unwrap().state, TdiState::Unbound);
    assert_eq!(mid.core.owners, before_bind.core.owners);
    assert_eq!(mid.core.table(), before_bind.core.table());
    w.relay();
    let mut outcomes = vec![spdm_request(), w.reissue()];
    while *outcomes.last().unwrap() == spdm_request() {
        check_request(&w);
        w.relay();
        outcomes.push(w.reissue());
    }
    assert_eq!(outcomes, rounds(4, Outcome::SUCCESS));
    assert!(!continue_set(&w));
    assert_eq!(
        w.sev.tsm().tdi(t).unwrap().state,
        TdiState::Locked {
            owner: w.guest(GCTX)
        }
    );
    assert_eq!(w.device.state(rid(0)), TdispState::ConfigLocked);
    assert_eq!(w.sev.tdi_ctx(tdi_sla()).unwrap().guest_device_id, GDEV);
    ok(w.cmd(&mmio_map(GPA, BAR, abi::MMIO_SIZE_2M)));

    // The guest starts it: START_INTERFACE; its answer is written only at the last round.
    let mut r = msg::TdiReq::new_zeroed();
    r.guest_device_id = GDEV.into();
    w.put_msg(msg::MSG_TDI_START_REQ, r.as_bytes());
    let response_page = page(&w, MEM + 0x2000);
    assert_eq!(w.once(&guest_request(GCTX)), spdm_request());
    assert_eq!(page(&w, MEM + 0x2000), response_page);
    check_request(&w);
    w.relay();
    ok(w.reissue());
    assert_eq!(start_outcome(&w.response()), Outcome::SUCCESS);
    assert!(matches!(
        w.sev.tsm().tdi(t).unwrap().state,
        TdiState::Run { .. }
    ));
    assert_eq!(w.device.state(rid(0)), TdispState::Run);

    // TDI_STATUS asks the device: RUN, written once the answer is in.
    w.mem.write(MEM, &[0xFF; 16]).unwrap();
    assert_eq!(drive(&mut w, &tdi_status()), rounds(1, Outcome::SUCCESS));
    let mut s = abi::TdiStatusData::new_zeroed();
    w.mem.read(MEM, s.as_mut_bytes()).unwrap();
    assert_eq!((s.length.get(), s.tdisp_state), (0x10, 2));

    // Unbind: the leaf is blocked, STOP_INTERFACE, then fence and unassign.
    assert_eq!(
        drive(&mut w, &tdi_unbind(GCTX)),
        rounds(1, Outcome::SUCCESS)
    );
    assert_eq!(w.sev.tsm().tdi(t).unwrap().state, TdiState::Unbound);
    assert_eq!(w.device.state(rid(0)), TdispState::ConfigUnlocked);
    assert!(
        w.sev
            .tsm()
            .with_table(|r| r.entries().iter().all(|e| *e == RmpEntry::new()))
            .unwrap()
    );
    assert_eq!(w.sev.tdi_ctx(tdi_sla()).unwrap().guest_device_id, 0);
    // An unbound TDI: unbind, and TDI_STATUS (CONFIG_UNLOCKED), ask nothing.
    assert_eq!(drive(&mut w, &tdi_unbind(GCTX)), vec![Outcome::SUCCESS]);
    assert_eq!(drive(&mut w, &tdi_status()), vec![Outcome::SUCCESS]);
    ok(w.cmd(&tdi_reclaim()));
}

#[test]
fn a_continuation_with_nothing_outstanding_is_no_spdm_request_and_changes_nothing() {
    let mut w = World::new();
    w.setup(Stage::Mapped);
    // A bound TDI with nothing outstanding, and an unbound one (the second).
    add_second_tdi(&mut w);
    let mut start = msg::TdiReq::new_zeroed();
    start.guest_device_id = GDEV.into();
    w.put_msg(msg::MSG_TDI_START_REQ, start.as_bytes());
    let o = refused(&mut w, Error::NoExchange, |w| {
        w.cmd(&continued(tdi_status()))
    });
    assert_eq!(o.status, SevStatus::NO_SPDM_REQUEST);
    refused(&mut w, Error::NoExchange, |w| {
        w.cmd(&continued(tdi_unbind(GCTX)))
    });
    refused(&mut w, Error::NoExchange, |w| {
        w.cmd(&continued(guest_request(GCTX)))
    });
    let bind2 = on_second_tdi(continued(tdi_bind(GCTX)), |c, s| c.tdi_ctx = s);
    let mut bind2 = bind2;
    bind2.guest_device_id = (GDEV + 1).into();
    refused(&mut w, Error::NoExchange, |w| w.cmd(&bind2));
    // A message that never waits on the device is no continuation either.
    let v = validate_req(0, 0, 1, GPA, msg::VALIDATE_FLAG_VALIDATED);
    w.put_msg(msg::MSG_MMIO_VALIDATE_REQ, v.as_bytes());
    refused(&mut w, Error::NoExchange, |w| {
        w.cmd(&continued(guest_request(GCTX)))
    });
    // A forced unbind never continues anything.
    let mut force = continued(tdi_unbind(GCTX));
    force.flags = (abi::FLAG_FORCE | abi::FLAG_CONTINUE).into();
    refused(&mut w, SevStatus::INVALID_PARAM, |w| w.cmd(&force));
}

/// TDI 1's bind with its GET_VERSION outstanding and the device's answer in the response
/// buffer; TDI 2 (function 1) bound to the other guest.
fn bind_waiting_for_its_answer() -> Box<World> {
    let mut w = World::new();
    w.setup(Stage::Created);
    add_second_tdi(&mut w);
    ok(w.cmd(&on_second_tdi(tdi_bind(GCTX2), |c, s| c.tdi_ctx = s)));
    assert_eq!(w.once(&tdi_bind(GCTX)), spdm_request());
    w.relay();
    w
}

#[test]
fn a_reissue_whose_response_is_not_the_answer_is_refused_and_changes_nothing() {
    let mut w = bind_waiting_for_its_answer();
    let t = w.tdi();
    let payload = SPDM_RESP + 0x50;
    let malformed = Outcome::from_core(Err(Error::RelayMalformed));
    assert_eq!(malformed.status, SevStatus::INVALID_SPDM_RESPONSE);

    // Garbled: one byte of the record (its MAC no longer checks), of its header, of the
    // data object header.
    for at in [
        payload + 20,
        payload + 1,
        SPDM_RESP + 0x40,
        SPDM_RESP + 0x49,
    ] {
        flip(&mut w, at);
        refused(&mut w, malformed, |w| w.reissue());
        flip(&mut w, at);
    }
    // Plain SPDM instead of secured, an encrypted buffer, payload_sz that disagrees.
    for (at, v) in [
        (SPDM_RESP + 0x4A, [1u8]),
        (SPDM_RESP + 0x08, [1u8]),
        (SPDM_RESP + 0x04, [0x20u8]),
    ] {
        let mut old = [0u8];
        w.mem.read(at, &mut old).unwrap();
        w.mem.write(at, &v).unwrap();
        refused(&mut w, malformed, |w| w.reissue());
        w.mem.write(at, &old).unwrap();
    }
    // Padded past Linux's rounding of the record: garbled. A length past any answer that
    // `payload_sz` does not repeat: garbled too.
    let mut len = [0u8; 4];
    w.mem.read(SPDM_RESP + 0x44, &mut len).unwrap();
    let len = u32::from_le_bytes(len);
    put_u32(&mut w, SPDM_RESP + 0x44, len + 32);
    put_u32(&mut w, SPDM_RESP + 4, len + 32);
    refused(&mut w, malformed, |w| w.reissue());
    put_u32(&mut w, SPDM_RESP + 0x44, 0x800);
    put_u32(&mut w, SPDM_RESP + 4, len);
    refused(&mut w, malformed, |w| w.reissue());
    put_u32(&mut w, SPDM_RESP + 0x44, len);
    put_u32(&mut w, SPDM_RESP + 4, len);

    // The request itself handed back as the answer.
    let req = page(&w, SPDM_REQ);
    let mut resp = page(&w, SPDM_RESP);
    let n = u32::from_le_bytes(req[0x44..0x48].try_into().unwrap()) as usize - 0x10;
    let saved = resp.clone();
    host::write_response(&mut w.mem, SPDM_RESP, 2, Some(&req[0x50..0x50 + n])).unwrap();
    refused(&mut w, malformed, |w| w.reissue());
    resp.copy_from_slice(&saved);
    w.mem.write(SPDM_RESP, &resp).unwrap();

    // Another TDI's answer: TDI 2's state check relayed into the same response buffer (what
    // Linux's stale saved command does), then TDI 1's continuation.
    let first = w.last.clone();
    let mut status2 = on_second_tdi(tdi_status(), |c, s| c.tdi_ctx = s);
    status2.status_paddr = (MEM + 0x10).into();
    assert_eq!(w.once(&status2), spdm_request());
    w.relay();
    let second = core::mem::replace(&mut w.last, first);
    refused(&mut w, malformed, |w| w.reissue());
    // TDI 2's continuation takes its own answer.
    let first = core::mem::replace(&mut w.last, second);
    ok(w.reissue());
    w.last = first;

    // The response page unreadable.
    let good = w.last.clone();
    let resp_sla = sla(UNMAPPED >> 12);
    w.last.1.0[0x10..0x18].copy_from_slice(&resp_sla.to_le_bytes());
    refused(&mut w, SevStatus::INVALID_ADDRESS, |w| w.reissue());
    w.last = good;

    // After all that the exchange is still outstanding. The request page holds TDI 2's
    // request now (a device's SPDM buffers are shared by its TDIs): the bind issued afresh
    // writes its outstanding request again, and its answer goes on.
    assert_eq!(w.once(&tdi_bind(GCTX)), spdm_request());
    w.relay();
    assert_eq!(w.reissue(), spdm_request());
    // Stale: the same answer once more (the request it answered is no longer outstanding).
    refused(&mut w, malformed, |w| w.reissue());
    w.relay();
    let mut o = w.reissue();
    while o == spdm_request() {
        w.relay();
        o = w.reissue();
    }
    ok(o);
    assert!(matches!(
        w.sev.tsm().tdi(t).unwrap().state,
        TdiState::Locked { .. }
    ));
}

/// RESPONSE_TOO_LARGE (psp-sev.h `SEV_RET_SEV_STATUS_RESPONSE_TOO_LARGE` 0x3F): the host's
/// response data object is consistent (its headers agree, as Linux writes them after a
/// `pci_doe` of up to `spdm_req_size_max - 0x50` bytes) but longer than the firmware takes.
/// Distinct from a garbled response (INVALID_SPDM_RESPONSE); detail 0 (the SEV layer
/// decides); nothing changes and the exchange stays outstanding, for TDI_BIND and for a
/// TDI_START relayed by TIO_GUEST_REQUEST alike.
#[test]
fn a_consistent_response_longer_than_the_firmware_takes_is_response_too_large() {
    let too_large = Outcome::plain(SevStatus::RESPONSE_TOO_LARGE);
    // Just past the largest answer, a whole page as Linux sizes `resp`, past the page, u32::MAX.
    let lengths = [
        crate::relay::MAX_DOBJ as u32 + 32,
        abi::SPDM_RSP_SIZE - 0x40,
        abi::SPDM_RSP_SIZE,
        u32::MAX - 31,
    ];
    let mut w = bind_waiting_for_its_answer();
    let t = w.tdi();
    let mut len = [0u8; 4];
    w.mem.read(SPDM_RESP + 0x44, &mut len).unwrap();
    let len = u32::from_le_bytes(len);
    for bad in lengths {
        put_u32(&mut w, SPDM_RESP + 0x44, bad);
        put_u32(&mut w, SPDM_RESP + 4, bad);
        let o = refused(&mut w, too_large, |w| w.reissue());
        assert_eq!(o.status.0, 0x3F);
        assert_ne!(o.status, SevStatus::INVALID_SPDM_RESPONSE);
        assert!(w.sev.tsm().tdi(t).unwrap().exchange.is_some());
    }
    // The true answer still goes on, and the bind completes.
    put_u32(&mut w, SPDM_RESP + 0x44, len);
    put_u32(&mut w, SPDM_RESP + 4, len);
    let mut o = w.reissue();
    while o == spdm_request() {
        w.relay();
        o = w.reissue();
    }
    ok(o);

    // TDI_START inside TIO_GUEST_REQUEST: the command's status; the guest hears nothing.
    let mut w = World::new();
    w.setup(Stage::Mapped);
    let mut start = msg::TdiReq::new_zeroed();
    start.guest_device_id = GDEV.into();
    w.put_msg(msg::MSG_TDI_START_REQ, start.as_bytes());
    assert_eq!(w.once(&guest_request(GCTX)), spdm_request());
    w.relay();
    let mut len = [0u8; 4];
    w.mem.read(SPDM_RESP + 0x44, &mut len).unwrap();
    let len = u32::from_le_bytes(len);
    for bad in lengths {
        put_u32(&mut w, SPDM_RESP + 0x44, bad);
        put_u32(&mut w, SPDM_RESP + 4, bad);
        refused(&mut w, too_large, |w| w.reissue());
    }
    put_u32(&mut w, SPDM_RESP + 0x44, len);
    put_u32(&mut w, SPDM_RESP + 4, len);
    ok(w.reissue());
    assert_eq!(start_outcome(&w.response()), Outcome::SUCCESS);
}

#[test]
fn a_continuation_of_another_operation_is_exchange_pending_and_changes_nothing() {
    let mut w = bind_waiting_for_its_answer();
    let pending = Outcome::from_core(Err(Error::ExchangePending));
    assert_eq!(pending.status, SevStatus::IN_USE);
    // The bind waits: a state check's, an unbind's or a START's continuation is not its.
    refused(&mut w, pending, |w| w.cmd(&continued(tdi_status())));
    refused(&mut w, pending, |w| w.cmd(&continued(tdi_unbind(GCTX))));
    let mut start = msg::TdiReq::new_zeroed();
    start.guest_device_id = GDEV.into();
    w.put_msg(msg::MSG_TDI_START_REQ, start.as_bytes());
    refused(&mut w, pending, |w| w.cmd(&continued(guest_request(GCTX))));
    // Nor is another guest's bind of it.
    let mut other = continued(tdi_bind(GCTX2));
    other.guest_device_id = (GDEV + 7).into();
    refused(&mut w, pending, |w| w.cmd(&other));
    // The same bind issued afresh sends the outstanding request again, byte for byte.
    let before = w.state();
    let req = page(&w, SPDM_REQ);
    let waiting = w.last.clone();
    assert_eq!(w.once(&tdi_bind(GCTX)), spdm_request());
    assert_eq!(page(&w, SPDM_REQ), req);
    same(&before, &w.state(), "a bind issued again while it waits");
    // And the host's reissue with the device's answer goes on.
    w.last = waiting;
    assert_eq!(w.reissue(), spdm_request());
}

#[test]
fn three_empty_responses_end_device_unresponsive() {
    let mut w = World::new();
    w.setup(Stage::Mapped);
    let t = w.tdi();
    let unresponsive = Outcome::from_core(Err(Error::DeviceUnresponsive));
    assert_eq!(unresponsive.status, SevStatus::ERR_IN_DEV_CONN);
    // A state check: the same request comes back twice, the third silence ends it with the
    // TDI as it was.
    refused_relayed(&mut w, unresponsive, t, |w| {
        assert_eq!(w.once(&tdi_status()), spdm_request());
        let req = page(w, SPDM_REQ);
        for _ in 0..2 {
            host::write_response(&mut w.mem, SPDM_RESP, 2, None).unwrap();
            assert_eq!(w.reissue(), spdm_request());
            assert_eq!(page(w, SPDM_REQ), req, "the same request is sent again");
        }
        host::write_response(&mut w.mem, SPDM_RESP, 2, None).unwrap();
        w.reissue()
    });
    assert!(matches!(
        w.sev.tsm().tdi(t).unwrap().state,
        TdiState::Locked { .. }
    ));
    // Nothing is outstanding any more.
    refused(&mut w, Error::NoExchange, |w| w.reissue());
    // An empty response is also a data object of length 0 (as Linux initialises it).
    refused_relayed(&mut w, unresponsive, t, |w| {
        assert_eq!(w.once(&tdi_status()), spdm_request());
        for _ in 0..2 {
            put_u32(w, SPDM_RESP + 0x44, 0);
            assert_eq!(w.reissue(), spdm_request());
        }
        put_u32(w, SPDM_RESP + 0x44, 0);
        w.reissue()
    });
    // Through the host's loop, with the device silent: a bind ends unbound.
    let mut w = World::new();
    w.setup(Stage::Created);
    let t = w.tdi();
    w.device
        .set_fault(rid(0), Some(tsm_core::DeviceFault::NoResponse));
    refused_relayed(&mut w, unresponsive, t, |w| w.cmd(&tdi_bind(GCTX)));
    assert_eq!(w.sev.tsm().tdi(t).unwrap().state, TdiState::Unbound);
    w.device.set_fault(rid(0), None);
    ok(w.cmd(&tdi_bind(GCTX)));
}

#[test]
fn tdi_unbind_force_works_with_an_exchange_outstanding() {
    let mut force = tdi_unbind(GCTX);
    force.flags = abi::FLAG_FORCE.into();
    let force_all = |w: &mut World, force: &abi::TdiUnbind| {
        let mut o = w.cmd(force);
        while o.status == SevStatus::RESUME_REQUIRED {
            o = w.cmd(force);
        }
        o
    };
    // An unbind waiting for STOP: the device even answered, but the host forces instead.
    let mut w = World::new();
    w.setup(Stage::Mapped);
    let t = w.tdi();
    assert_eq!(w.once(&tdi_unbind(GCTX)), spdm_request());
    w.relay();
    ok(force_all(&mut w, &force));
    assert_eq!(w.sev.tsm().tdi(t).unwrap().state, TdiState::Unbound);
    assert!(
        w.sev
            .tsm()
            .with_table(|r| r.entries().iter().all(|e| *e == RmpEntry::new()))
            .unwrap()
    );
    // The late answer finds nothing to continue.
    let o = refused(&mut w, Error::NoExchange, |w| w.reissue());
    assert_eq!(o.status, SevStatus::NO_SPDM_REQUEST);

    // A state check waiting: forced away the same way.
    let mut w = World::new();
    w.setup(Stage::Mapped);
    assert_eq!(w.once(&tdi_status()), spdm_request());
    w.relay();
    ok(force_all(&mut w, &force));
    refused(&mut w, Error::NoExchange, |w| w.reissue());

    // A bind waiting: the TDI is unbound, so the forced unbind is done at once and abandons
    // the bind, without cutting the stream.
    let mut w = World::new();
    w.setup(Stage::Created);
    assert_eq!(w.once(&tdi_bind(GCTX)), spdm_request());
    w.relay();
    let waiting = w.last.clone();
    ok(w.cmd(&force));
    w.last = waiting;
    refused(&mut w, Error::NoExchange, |w| w.reissue());
    ok(w.cmd(&tdi_bind(GCTX)));
}

#[test]
fn the_request_and_response_pages_are_checked_before_anything_changes() {
    let mut w = World::new();
    w.setup(Stage::Mapped);
    add_second_tdi(&mut w);
    let mut start = msg::TdiReq::new_zeroed();
    start.guest_device_id = GDEV.into();
    w.put_msg(msg::MSG_TDI_START_REQ, start.as_bytes());
    let mut bind2 = on_second_tdi(tdi_bind(GCTX), |c, s| c.tdi_ctx = s);
    bind2.guest_device_id = (GDEV + 1).into();
    // Each of the four commands, where it would change something.
    let with = |ctrl: abi::SpdmCtrl| -> Vec<(abi::CommandId, Vec<u8>)> {
        let mut b = bind2;
        b.spdm_ctrl = ctrl;
        let mut u = tdi_unbind(GCTX);
        u.spdm_ctrl = ctrl;
        let mut s = tdi_status();
        s.spdm_ctrl = ctrl;
        let mut g = guest_request(GCTX);
        g.spdm_ctrl = ctrl;
        vec![
            (abi::TIO_TDI_BIND, b.as_bytes().to_vec()),
            (abi::TIO_TDI_STATUS, s.as_bytes().to_vec()),
            (abi::TIO_GUEST_REQUEST, g.as_bytes().to_vec()),
            (abi::TIO_TDI_UNBIND, u.as_bytes().to_vec()),
        ]
    };
    let req_at = |addr: u64| abi::SpdmCtrl {
        req: sla(addr >> 12).into(),
        ..spdm_ctrl()
    };
    let cases = [
        (req_at(RO_PAGE), SevStatus::INVALID_ADDRESS),
        (req_at(UNMAPPED), SevStatus::INVALID_ADDRESS),
        (req_at(BAR + 0x30_0000), SevStatus::INVALID_ADDRESS),
        (req_at(FW_PAGE2), SevStatus::INVALID_PAGE_STATE),
        (req_at(SPDM_RESP), SevStatus::INVALID_PARAM),
        (
            abi::SpdmCtrl {
                req: 0.into(),
                ..spdm_ctrl()
            },
            SevStatus::INVALID_PARAM,
        ),
        (
            abi::SpdmCtrl {
                resp: 0.into(),
                ..spdm_ctrl()
            },
            SevStatus::INVALID_PARAM,
        ),
    ];
    // A device context on FW_PAGE2: a firmware page.
    let mut dev = dev_create();
    dev.dev_ctx = sla(FW_PAGE2 >> 12).into();
    dev.device_id = RequesterId::try_new(0, 3, 1, 0)
        .unwrap()
        .routing_id()
        .into();
    dev.bar_list = 0.into();
    ok(w.cmd(&dev));
    for (ctrl, want) in cases {
        for (id, bytes) in with(ctrl) {
            refused(&mut w, want, |w| w.raw(id, &bytes));
        }
    }
    // With good pages each goes through.
    for (id, bytes) in with(spdm_ctrl()) {
        let o = w.raw(id, &bytes);
        assert!(
            o.status == SevStatus::SUCCESS || o.status == SevStatus::RESUME_REQUIRED,
            "{id:#x}: {o:?}"
        );
    }
}

#[test]
fn a_start_whose_relay_fails_is_refused_as_a_command_and_the_guest_hears_nothing() {
    let mut w = World::new();
    w.setup(Stage::Mapped);
    let t = w.tdi();
    let mut start = msg::TdiReq::new_zeroed();
    start.guest_device_id = GDEV.into();
    w.put_msg(msg::MSG_TDI_START_REQ, start.as_bytes());
    assert_eq!(w.once(&guest_request(GCTX)), spdm_request());
    w.relay();
    flip(&mut w, SPDM_RESP + 0x50 + 20);
    let o = refused(&mut w, Error::RelayMalformed, |w| w.reissue());
    assert_eq!(o.status, SevStatus::INVALID_SPDM_RESPONSE);
    flip(&mut w, SPDM_RESP + 0x50 + 20);
    // The message no longer names the TDI: refused too.
    let mut other = start;
    other.guest_device_id = (GDEV + 3).into();
    w.put_msg(msg::MSG_TDI_START_REQ, other.as_bytes());
    refused(&mut w, SevStatus::INVALID_PARAM, |w| w.reissue());
    w.put_msg(msg::MSG_TDI_START_REQ, start.as_bytes());
    ok(w.reissue());
    assert_eq!(start_outcome(&w.response()), Outcome::SUCCESS);
    assert!(matches!(
        w.sev.tsm().tdi(t).unwrap().state,
        TdiState::Run { .. }
    ));

    // A device that refuses START: the guest's answer says so, the TDI is in ERROR.
    let mut w = World::new();
    w.setup(Stage::Mapped);
    w.device
        .set_fault(rid(0), Some(tsm_core::DeviceFault::Refused));
    ok(w.guest_msg(GCTX, msg::MSG_TDI_START_REQ, start.as_bytes()));
    assert_eq!(
        start_outcome(&w.response()),
        Outcome::from_core(Err(Error::DeviceRefused))
    );
    assert!(matches!(
        w.sev.tsm().tdi(w.tdi()).unwrap().state,
        TdiState::Error { .. }
    ));
}

#[test]
fn a_start_whose_request_page_is_the_guests_message_is_refused_before_anything_changes() {
    let mut w = World::new();
    w.setup(Stage::Mapped);
    let t = w.tdi();
    let mut start = msg::TdiReq::new_zeroed();
    start.guest_device_id = GDEV.into();
    w.put_msg(msg::MSG_TDI_START_REQ, start.as_bytes());
    let mut c = guest_request(GCTX);
    // The firmware would write its STOP/START request over the guest's message.
    c.spdm_ctrl.req = sla(c.req_paddr.get() >> 12).into();
    refused(&mut w, SevStatus::INVALID_PARAM, |w| w.cmd(&c));
    assert!(matches!(
        w.sev.tsm().tdi(t).unwrap().state,
        TdiState::Locked { .. }
    ));
    assert_eq!(w.sev.tsm().tdi(t).unwrap().exchange, None);
}
