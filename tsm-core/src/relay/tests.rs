//! The relay: golden bytes and arbitrary bytes for every framing layer, and the firmware's
//! exchanges driven by hand as a host would, with every way a host can get the answer wrong.

use proptest::prelude::*;

use super::*;
use crate::capacity::UNBIND_OPS_PER_CALL;
use crate::device_model::{DeviceEvent, ModelDevice};
use crate::mem_table::MemTable;
use crate::relay::host::Relayed;
use crate::tdisp::request;
use crate::tdisp::requester::MAX_ATTEMPTS;
use crate::*;

// ---- layers ------------------------------------------------------------------------------

#[test]
fn the_relay_buffer_size_is_the_documented_one() {
    // README.md, "Relayed exchanges"; a DOE object is whole dwords.
    assert_eq!(MAX_RELAY_BYTES, 328);
    assert_eq!(MAX_RELAY_BYTES % 4, 0);
    assert!(include_str!("../../../README.md").contains("`MAX_RELAY_BYTES` (328)"));
}

#[test]
fn doe_object_golden_bytes() {
    let mut out = [0u8; 32];
    let n = doe::encode(&mut out, doe::TYPE_SECURED_SPDM, &[1, 2, 3, 4, 5]).unwrap();
    // Vendor 0x0001, type 2; 4 dwords; payload padded with zeros to a dword.
    assert_eq!(
        &out[..n],
        &[
            0x01, 0x00, 0x02, 0x00, 0x04, 0x00, 0x00, 0x00, 1, 2, 3, 4, 5, 0, 0, 0
        ]
    );
    assert_eq!(
        doe::decode(&out[..n], doe::TYPE_SECURED_SPDM),
        Ok(&[1, 2, 3, 4, 5, 0, 0, 0][..])
    );
    assert_eq!(
        doe::decode(&out[..n], doe::TYPE_SPDM),
        Err(doe::DoeError::Type(2))
    );
    let mut bad = out;
    bad[0] = 0x86; // Intel's vendor ID is not PCI-SIG's.
    bad[1] = 0x80;
    assert_eq!(
        doe::decode(&bad[..n], doe::TYPE_SECURED_SPDM),
        Err(doe::DoeError::Vendor(0x8086))
    );
    let mut bad = out;
    bad[3] = 1;
    assert_eq!(
        doe::decode(&bad[..n], doe::TYPE_SECURED_SPDM),
        Err(doe::DoeError::Reserved)
    );
    assert_eq!(
        doe::decode(&out[..n - 4], doe::TYPE_SECURED_SPDM),
        Err(doe::DoeError::Short)
    );
    assert_eq!(
        doe::decode(&out[..n + 4], doe::TYPE_SECURED_SPDM),
        Err(doe::DoeError::Long)
    );
    let mut zero = out;
    zero[4] = 0; // Length 0 is 2^18 dwords.
    assert_eq!(
        doe::decode(&zero[..n], doe::TYPE_SECURED_SPDM),
        Err(doe::DoeError::Short)
    );
    assert_eq!(doe::unpad(&[1, 2, 0, 0], 2), Ok(&[1, 2][..]));
    assert_eq!(doe::unpad(&[1, 2, 0, 9], 2), Err(doe::DoeError::Long));
    assert_eq!(
        doe::unpad(&[1, 0, 0, 0, 0], 1),
        Err(doe::DoeError::Long),
        "four bytes of padding is a dword too many"
    );
}

#[test]
fn spdm_vendor_defined_golden_bytes() {
    let tdisp = [0x10, 0x81, 0, 0, 0x00, 0x03, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let mut out = [0u8; 64];
    let n = spdm::encode(&mut out, spdm::VENDOR_DEFINED_REQUEST, &tdisp).unwrap();
    let mut golden = vec![
        0x12, 0xFE, 0, 0, // SPDM 1.2, VENDOR_DEFINED_REQUEST, Param1, Param2
        0x03, 0x00, // StandardID: PCI-SIG
        0x02, // Len of VendorID
        0x01, 0x00, // VendorID: PCI-SIG
        17, 0x00, // ReqLength: protocol ID and the TDISP message
        0x01, // Protocol ID: TDISP
    ];
    golden.extend_from_slice(&tdisp);
    assert_eq!(&out[..n], &golden[..]);
    assert_eq!(
        spdm::decode(&out[..n], spdm::VENDOR_DEFINED_REQUEST),
        Ok(&tdisp[..])
    );
    assert_eq!(
        spdm::decode(&out[..n], spdm::VENDOR_DEFINED_RESPONSE),
        Err(spdm::SpdmError::Code(0xFE))
    );
    let cases: [(usize, u8, spdm::SpdmError); 5] = [
        (0, 0x11, spdm::SpdmError::Version(0x11)),
        (2, 1, spdm::SpdmError::Reserved),
        (4, 4, spdm::SpdmError::Vendor),
        (7, 0x86, spdm::SpdmError::Vendor),
        (11, 0x00, spdm::SpdmError::Protocol(0)),
    ];
    for (at, value, err) in cases {
        let mut bad = out;
        bad[at] = value;
        assert_eq!(
            spdm::decode(&bad[..n], spdm::VENDOR_DEFINED_REQUEST),
            Err(err),
            "byte {at}"
        );
    }
    assert_eq!(
        spdm::decode(&out[..n - 1], spdm::VENDOR_DEFINED_REQUEST),
        Err(spdm::SpdmError::Short)
    );
    assert_eq!(
        spdm::decode(&out[..n + 1], spdm::VENDOR_DEFINED_REQUEST),
        Err(spdm::SpdmError::Long)
    );
}

fn ctx(fid: u32, seq: u64, direction: Direction) -> RecordContext {
    RecordContext {
        function_id: fid,
        seq,
        direction,
    }
}

#[test]
fn a_sealed_record_opens_only_for_its_own_exchange() {
    let mut s = ModelSession::model();
    let app = *b"\x12\xfe\0\0 an SPDM message, in the clear";
    let mut rec = [0u8; 128];
    let c = ctx(0x0300, 7, Direction::Request);
    let n = s.seal(&c, &app, &mut rec).unwrap();
    // SessionID, SequenceNumber, Length in the clear; the data is not.
    assert_eq!(&rec[..4], &s.session_id.to_le_bytes());
    assert_eq!(&rec[4..12], &7u64.to_le_bytes());
    assert_eq!(usize::from(u16::from_le_bytes([rec[12], rec[13]])), n - 14);
    assert!(!rec[..n].windows(8).any(|w| w == &app[4..12]), "sealed");
    assert_eq!(s.record_len(&rec[..n]), Some(n));
    let mut out = [0u8; 128];
    assert_eq!(s.open(&c, &rec[..n], &mut out), Some(app.len()));
    assert_eq!(&out[..app.len()], &app);
    for other in [
        ctx(0x0301, 7, Direction::Request),
        ctx(0x0300, 8, Direction::Request),
        ctx(0x0300, 7, Direction::Response),
    ] {
        assert_eq!(s.open(&other, &rec[..n], &mut out), None, "{other:?}");
    }
    for i in 0..n {
        let mut bad = rec;
        bad[i] ^= 0x40;
        assert_eq!(s.open(&c, &bad[..n], &mut out), None, "byte {i} altered");
    }
    let mut stranger = ModelSession::new(s.session_id, 1);
    assert_eq!(stranger.open(&c, &rec[..n], &mut out), None, "other keys");
}

proptest! {
    #[test]
    fn layers_round_trip(msg in prop::collection::vec(any::<u8>(), 16..MAX_MESSAGE_BYTES), fid in any::<u32>(), seq in any::<u64>()) {
        let mut s = ModelSession::model();
        let c = ctx(fid, seq, Direction::Response);
        let mut out = [0u8; MAX_RELAY_BYTES];
        let n = frame(&mut s, &c, &msg, &mut out).unwrap();
        prop_assert!(n <= MAX_RELAY_BYTES && n % 4 == 0);
        let mut back = [0u8; MAX_RELAY_BYTES];
        let k = unframe(&mut s, &c, &out[..n], &mut back).unwrap();
        prop_assert_eq!(&back[..k], &msg[..]);
    }

    #[test]
    fn arbitrary_bytes_never_unframe(bytes in prop::collection::vec(any::<u8>(), 0..2 * MAX_RELAY_BYTES)) {
        let mut s = ModelSession::model();
        let mut back = [0u8; MAX_RELAY_BYTES];
        let _ = doe::decode(&bytes, doe::TYPE_SECURED_SPDM);
        let _ = spdm::decode(&bytes, spdm::VENDOR_DEFINED_RESPONSE);
        prop_assert!(unframe(&mut s, &ctx(0x300, 0, Direction::Response), &bytes, &mut back).is_err());
    }

    #[test]
    fn a_framed_answer_with_any_byte_changed_does_not_open(at in 0usize..200, bit in 0u8..8) {
        let mut s = ModelSession::model();
        let c = ctx(0x300, 3, Direction::Response);
        let mut out = [0u8; MAX_RELAY_BYTES];
        let n = frame(&mut s, &c, &[0x10, 0x05, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], &mut out).unwrap();
        let at = at % n;
        out[at] ^= 1 << bit;
        let mut back = [0u8; MAX_RELAY_BYTES];
        prop_assert!(unframe(&mut s, &c, &out[..n], &mut back).is_err());
    }
}

// ---- the firmware's exchanges, relayed by hand ---------------------------------------------

type W = Relayed<MemTable<256>>;
const BAR: u64 = 0x8000_0000;
const GPA: u64 = 0x10_0000_0000;

fn rid(func: u8) -> RequesterId {
    RequesterId::try_new(0, 3, 0, func).unwrap()
}

struct World {
    fw: W,
    g1: GuestId,
    g2: GuestId,
    t0: TdiId,
    t1: TdiId,
}

fn world() -> World {
    let fw = W::new(MemTable::new(), ModelDevice::model());
    let g1 = fw.create_guest().unwrap();
    let g2 = fw.create_guest().unwrap();
    let dev = fw
        .create_device_with(
            DeviceFunctions::new(rid(0), None).unwrap(),
            &[MmioRange::from_raw(BAR, 1024).unwrap()],
        )
        .unwrap();
    let t0 = fw.create_tdi(dev, rid(0)).unwrap();
    let t1 = fw.create_tdi(dev, rid(1)).unwrap();
    fw.with_device(|d| {
        d.report_ranges(rid(0), &[MmioRange::from_raw(BAR, 16).unwrap()]);
        d.report_ranges(rid(1), &[MmioRange::from_raw(BAR + 0x10_0000, 16).unwrap()]);
    })
    .unwrap();
    World { fw, g1, g2, t0, t1 }
}

/// `t0` bound to `g1`, one leaf mapped.
fn bound() -> World {
    let w = world();
    w.fw.bind(w.t0, w.g1).unwrap();
    w.fw.map_mmio(
        w.t0,
        w.g1,
        Gpa::try_new(GPA).unwrap(),
        Hpa::try_new(BAR).unwrap(),
        PageSize::Size4K,
    )
    .unwrap();
    accept_dma(&w, w.t0, w.g1);
    w
}

/// The usual step before START: the host creates `tdi`'s trusted DMA context, its owner accepts it.
fn accept_dma(w: &World, tdi: TdiId, guest: GuestId) {
    w.fw.firmware().host_dma_create(tdi).unwrap();
    w.fw.firmware().guest_dma_accept(guest, tdi).unwrap();
}

type Buf = [u8; MAX_RELAY_BYTES];

fn buf() -> Buf {
    [0u8; MAX_RELAY_BYTES]
}

/// The request's TDISP message, read the way the device reads it.
fn tdisp_of(request: &[u8]) -> Vec<u8> {
    let body = doe::decode(request, doe::TYPE_SECURED_SPDM).unwrap();
    let s = ModelSession::model();
    let record = record_of(&s, body).unwrap();
    let mut app = buf();
    let (_, n) = s
        .open_any(Direction::Request, record, spdm::OVERHEAD + 4, &mut app)
        .unwrap();
    spdm::decode(&app[..n], spdm::VENDOR_DEFINED_REQUEST)
        .unwrap()
        .to_vec()
}

fn code_of(request: &[u8]) -> u8 {
    tdisp_of(request)[1]
}

/// The device's answer to the request in `out[..n]`.
fn answer(w: &World, out: &Buf, n: usize) -> Vec<u8> {
    let mut resp = buf();
    let k =
        w.fw.with_device(|d| d.answer(&out[..n], &mut resp))
            .unwrap()
            .expect("the model device answers");
    resp[..k].to_vec()
}

fn relay_n(c: TsmResult<Completion>) -> usize {
    match c {
        Ok(Completion::Relay(n)) => n,
        other => panic!("expected a request to relay, got {other:?}"),
    }
}

/// Every table, and the device's view, must be exactly as `before`.
#[track_caller]
fn unchanged(w: &World, before: &crate::tsm::Snapshot<MemTable<256>>) {
    assert_eq!(&w.fw.snapshot().unwrap(), before);
}

#[test]
fn a_whole_lifecycle_is_a_sequence_of_relayed_requests() {
    let w = world();
    let fw = w.fw.firmware();
    let mut out = buf();
    let mut codes = vec![];
    let mut step = fw.bind(w.t0, w.g1, &mut out);
    while let Ok(Completion::Relay(n)) = step {
        codes.push(code_of(&out[..n]));
        let a = answer(&w, &out, n);
        step = fw.device_response(w.t0, Some(&a), &mut out);
    }
    assert_eq!(step, Ok(Completion::Done));
    assert_eq!(
        codes,
        [
            request::GET_VERSION,
            request::GET_CAPABILITIES,
            request::LOCK_INTERFACE,
            request::GET_DEVICE_INTERFACE_REPORT
        ]
    );
    assert_eq!(
        fw.tdi(w.t0).unwrap().state,
        TdiState::Locked { owner: w.g1 }
    );
    assert_eq!(fw.tdi(w.t0).unwrap().exchange, None);

    accept_dma(&w, w.t0, w.g1);
    let n = relay_n(fw.guest_start(w.g1, w.t0, &mut out));
    assert_eq!(code_of(&out[..n]), request::START_INTERFACE);
    let a = answer(&w, &out, n);
    assert_eq!(
        fw.device_response(w.t0, Some(&a), &mut out),
        Ok(Completion::Done)
    );
    assert_eq!(fw.tdi(w.t0).unwrap().state, TdiState::Run { owner: w.g1 });

    let n = relay_n(fw.check_interface(w.t0, &mut out));
    assert_eq!(code_of(&out[..n]), request::GET_DEVICE_INTERFACE_STATE);
    let a = answer(&w, &out, n);
    assert_eq!(
        fw.device_response(w.t0, Some(&a), &mut out),
        Ok(Completion::Done)
    );
    assert_eq!(fw.tdi(w.t0).unwrap().device_state, Some(TdispState::Run));

    let n = relay_n(fw.unbind(w.t0, &mut out));
    assert_eq!(code_of(&out[..n]), request::STOP_INTERFACE);
    let a = answer(&w, &out, n);
    assert_eq!(
        fw.device_response(w.t0, Some(&a), &mut out),
        Ok(Completion::Done)
    );
    assert_eq!(fw.tdi(w.t0).unwrap().state, TdiState::Unbound);
    assert_eq!(
        w.fw.with_device(|d| d.state(rid(0))).unwrap(),
        TdispState::ConfigUnlocked
    );
}

#[test]
fn a_report_comes_in_portions_each_asked_from_where_the_last_ended() {
    let w = world();
    let ranges: Vec<_> = (0..16)
        .map(|i| MmioRange::from_raw(BAR + i * 0x1_0000, 1).unwrap())
        .collect();
    w.fw.with_device(|d| d.report_ranges(rid(0), &ranges))
        .unwrap();
    let fw = w.fw.firmware();
    let mut out = buf();
    let mut offsets = vec![];
    let mut step = fw.bind(w.t0, w.g1, &mut out);
    while let Ok(Completion::Relay(n)) = step {
        let msg = tdisp_of(&out[..n]);
        if msg[1] == request::GET_DEVICE_INTERFACE_REPORT {
            offsets.push(u16::from_le_bytes([msg[16], msg[17]]));
        }
        let a = answer(&w, &out, n);
        step = fw.device_response(w.t0, Some(&a), &mut out);
    }
    assert_eq!(step, Ok(Completion::Done));
    // 16 + 16 * 16 + 4 bytes, asked 256 at a time.
    assert_eq!(offsets, [0, 256]);
    assert_eq!(fw.owned_ranges(w.t0).unwrap().len(), 16);
}

#[test]
fn an_answer_with_nothing_outstanding_is_refused_and_changes_nothing() {
    let w = bound();
    let mut out = buf();
    let before = w.fw.snapshot().unwrap();
    for tdi in [w.t0, w.t1] {
        assert_eq!(
            w.fw.firmware()
                .device_response(tdi, Some(&[0u8; 16]), &mut out),
            Err(Error::NoExchange)
        );
        assert_eq!(
            w.fw.firmware().device_response(tdi, None, &mut out),
            Err(Error::NoExchange)
        );
    }
    unchanged(&w, &before);
}

#[test]
fn relayed_bytes_that_are_not_this_exchanges_answer_change_nothing() {
    let w = bound();
    let fw = w.fw.firmware();
    let mut out = buf();
    // An answer to t0's previous exchange (its check), kept by a host.
    let n = relay_n(fw.check_interface(w.t0, &mut out));
    let stale = answer(&w, &out, n);
    assert_eq!(
        fw.device_response(w.t0, Some(&stale), &mut out),
        Ok(Completion::Done)
    );
    // An answer for t1's outstanding bind.
    let mut out1 = buf();
    let n1 = relay_n(fw.bind(w.t1, w.g2, &mut out1));
    let others = answer(&w, &out1, n1);
    // t0's START, outstanding.
    let n = relay_n(fw.guest_start(w.g1, w.t0, &mut out));
    let request = out[..n].to_vec();
    let genuine = answer(&w, &out, n);
    let mut flipped = genuine.clone();
    flipped[20] ^= 1;
    let mut padded = genuine.clone();
    padded.extend_from_slice(&[0; 4]);
    let mut unsecured = genuine.clone();
    unsecured[2] = doe::TYPE_SPDM;
    let long = vec![0u8; MAX_RELAY_BYTES + 1];
    let cases: [(&str, &[u8]); 9] = [
        ("garbage", &[0xa5; 40]),
        ("empty", &[]),
        ("truncated", &genuine[..genuine.len() - 4]),
        ("a bit flipped", &flipped),
        ("an extra dword", &padded),
        ("unsecured SPDM", &unsecured),
        ("too long", &long),
        ("the request itself", &request),
        ("a stale answer", &stale),
    ];
    let before = w.fw.snapshot().unwrap();
    let device = w.fw.with_device(|d| d.dsm().tdisp_states()).unwrap();
    for (what, bytes) in cases.iter().chain([&("another TDI's answer", &others[..])]) {
        assert_eq!(
            fw.device_response(w.t0, Some(bytes), &mut out),
            Err(Error::RelayMalformed),
            "{what}"
        );
        unchanged(&w, &before);
    }
    assert_eq!(
        w.fw.with_device(|d| d.dsm().tdisp_states()).unwrap(),
        device
    );
    // The genuine answers still land, each with its own TDI.
    assert_eq!(
        fw.device_response(w.t0, Some(&genuine), &mut out),
        Ok(Completion::Done)
    );
    assert_eq!(fw.tdi(w.t0).unwrap().state, TdiState::Run { owner: w.g1 });
    let mut step = fw.device_response(w.t1, Some(&others), &mut out1);
    while let Ok(Completion::Relay(n)) = step {
        let a = answer(&w, &out1, n);
        step = fw.device_response(w.t1, Some(&a), &mut out1);
    }
    assert_eq!(step, Ok(Completion::Done));
}

#[test]
fn calling_a_waiting_operation_again_resends_the_same_request() {
    let w = bound();
    let fw = w.fw.firmware();
    let (mut a, mut b) = (buf(), buf());
    let n = relay_n(fw.bind(w.t1, w.g2, &mut a));
    let before = w.fw.snapshot().unwrap();
    assert_eq!(relay_n(fw.bind(w.t1, w.g2, &mut b)), n);
    assert_eq!(a[..n], b[..n]);
    unchanged(&w, &before);
    let n = relay_n(fw.guest_start(w.g1, w.t0, &mut a));
    assert_eq!(relay_n(fw.guest_start(w.g1, w.t0, &mut b)), n);
    assert_eq!(a[..n], b[..n]);
    // An unanswered request is resent as it was, up to the bound.
    for _ in 1..MAX_ATTEMPTS {
        assert_eq!(relay_n(fw.device_response(w.t0, None, &mut b)), n);
        assert_eq!(a[..n], b[..n]);
    }
    assert_eq!(
        fw.device_response(w.t0, None, &mut b),
        Err(Error::DeviceUnresponsive)
    );
    // A silent START leaves the TDI as it was.
    assert_eq!(
        fw.tdi(w.t0).unwrap().state,
        TdiState::Locked { owner: w.g1 }
    );
    assert_eq!(fw.tdi(w.t0).unwrap().exchange, None);
}

#[test]
fn other_operations_wait_for_the_outstanding_one() {
    let w = bound();
    let fw = w.fw.firmware();
    let mut out = buf();
    relay_n(fw.check_interface(w.t0, &mut out));
    let before = w.fw.snapshot().unwrap();
    assert_eq!(
        fw.guest_start(w.g1, w.t0, &mut out),
        Err(Error::ExchangePending)
    );
    unchanged(&w, &before);
    relay_n(fw.bind(w.t1, w.g2, &mut out));
    let before = w.fw.snapshot().unwrap();
    assert_eq!(fw.bind(w.t1, w.g1, &mut out), Err(Error::ExchangePending));
    assert_eq!(fw.remove_tdi(w.t1), Err(Error::ExchangePending));
    unchanged(&w, &before);
    // One report read per device: a third TDI of the device waits for t1's bind.
    let t2 = fw.create_tdi(fw.tdi(w.t0).unwrap().device, rid(2)).unwrap();
    let before = w.fw.snapshot().unwrap();
    assert_eq!(fw.bind(t2, w.g2, &mut out), Err(Error::ExchangePending));
    unchanged(&w, &before);
    // A buffer too small for a request is refused before anything.
    let mut small = [0u8; MAX_RELAY_BYTES - 1];
    assert_eq!(
        fw.bind(t2, w.g2, &mut small),
        Err(Error::RelayBufferTooSmall)
    );
    assert_eq!(
        fw.device_response(w.t1, None, &mut small),
        Err(Error::RelayBufferTooSmall)
    );
    unchanged(&w, &before);
}

/// Starts `op` on `w`'s TDIs and leaves its first request unanswered.
fn abandon(w: &World, op: u8) -> TdiId {
    let fw = w.fw.firmware();
    let mut out = buf();
    match op {
        0 => {
            // A bind abandoned after LOCK: the interface is locked on the device.
            let mut step = fw.bind(w.t1, w.g2, &mut out);
            while let Ok(Completion::Relay(n)) = step {
                if code_of(&out[..n]) == request::GET_DEVICE_INTERFACE_REPORT {
                    return w.t1;
                }
                let a = answer(w, &out, n);
                step = fw.device_response(w.t1, Some(&a), &mut out);
            }
            panic!("no report was asked: {step:?}");
        }
        1 => relay_n(fw.guest_start(w.g1, w.t0, &mut out)),
        2 => relay_n(fw.check_interface(w.t0, &mut out)),
        _ => {
            let mut step = fw.unbind(w.t0, &mut out);
            while step == Ok(Completion::Resumable) {
                step = fw.unbind(w.t0, &mut out);
            }
            relay_n(step)
        }
    };
    w.t0
}

#[test]
fn an_abandoned_exchange_never_wedges_unbind_and_its_late_answer_is_refused() {
    for op in 0..4 {
        for forced in [false, true] {
            let w = bound();
            let fw = w.fw.firmware();
            let tdi = abandon(&w, op);
            let late = {
                let mut out = buf();
                let n = match fw.tdi(tdi).unwrap().exchange.unwrap().op {
                    DeviceOp::Bind { .. } => relay_n(fw.bind(tdi, w.g2, &mut out)),
                    DeviceOp::Start { .. } => relay_n(fw.guest_start(w.g1, tdi, &mut out)),
                    DeviceOp::Check => relay_n(fw.check_interface(tdi, &mut out)),
                    DeviceOp::Stop { .. } => relay_n(fw.unbind(tdi, &mut out)),
                };
                answer(&w, &out, n)
            };
            let mut calls = 0;
            loop {
                calls += 1;
                assert!(calls < 20, "op {op} forced {forced}: unbind does not end");
                let done = if forced {
                    fw.unbind_forced(tdi)
                } else {
                    w.fw.unbind(tdi)
                };
                if done == Ok(Completion::Done) {
                    break;
                }
                assert_eq!(done, Ok(Completion::Resumable), "op {op} forced {forced}");
            }
            assert_eq!(fw.tdi(tdi).unwrap().state, TdiState::Unbound);
            assert_eq!(fw.tdi(tdi).unwrap().exchange, None);
            let before = w.fw.snapshot().unwrap();
            let mut out = buf();
            assert!(
                matches!(
                    fw.device_response(tdi, Some(&late), &mut out),
                    Err(Error::NoExchange | Error::RelayMalformed)
                ),
                "op {op} forced {forced}"
            );
            unchanged(&w, &before);
            let device = fw.tdi(tdi).unwrap().device;
            if fw.device(device).unwrap().stream == IdeStream::Cut {
                fw.setup_stream(device).unwrap();
            }
            // Rebindable; an interface a bind or a cut may have left locked is unlocked first.
            let guest = if tdi == w.t0 { w.g1 } else { w.g2 };
            let n = relay_n(fw.bind(tdi, guest, &mut out));
            let first = code_of(&out[..n]);
            if op == 0 || (forced && tdi == w.t0) {
                assert_eq!(first, request::STOP_INTERFACE, "op {op} forced {forced}");
            }
            let step = fw.bind(tdi, guest, &mut out);
            assert_eq!(w.fw.relay(tdi, step, &mut out), Ok(Completion::Done));
            assert!(fw.tdi(tdi).unwrap().state.is_bound());
        }
    }
}

#[test]
fn a_report_the_firmware_refuses_is_undone_with_stop_before_the_bind_fails() {
    let w = world();
    // A range outside the device's BARs.
    w.fw.with_device(|d| d.report_ranges(rid(0), &[MmioRange::from_raw(BAR - 0x1000, 1).unwrap()]))
        .unwrap();
    let fw = w.fw.firmware();
    let mut out = buf();
    let mut codes = vec![];
    let mut step = fw.bind(w.t0, w.g1, &mut out);
    while let Ok(Completion::Relay(n)) = step {
        codes.push(code_of(&out[..n]));
        let a = answer(&w, &out, n);
        step = fw.device_response(w.t0, Some(&a), &mut out);
    }
    assert_eq!(step, Err(Error::RangeOutsideDevice));
    assert_eq!(codes.last(), Some(&request::STOP_INTERFACE));
    assert_eq!(
        w.fw.with_device(|d| d.state(rid(0))).unwrap(),
        TdispState::ConfigUnlocked
    );
    let record = fw.tdi(w.t0).unwrap();
    assert_eq!(
        (record.state, record.exchange, record.unlock_first),
        (TdiState::Unbound, None, false)
    );
}

// ---- arbitrary answers at every step -------------------------------------------------------

#[derive(Debug, Clone)]
enum Garble {
    Bytes(Vec<u8>),
    Flip(usize, u8),
    Silence,
}

fn garble() -> impl Strategy<Value = Garble> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..2 * MAX_RELAY_BYTES).prop_map(Garble::Bytes),
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Garble::Flip(at, bit)),
        Just(Garble::Silence),
    ]
}

/// Starts operation `op` and relays `steps` genuine answers (fewer if it ends first).
fn drive(w: &World, op: u8, steps: usize, out: &mut Buf) -> (TdiId, TsmResult<Completion>) {
    let fw = w.fw.firmware();
    let (tdi, mut step) = match op {
        0 => (w.t1, fw.bind(w.t1, w.g2, out)),
        1 => (w.t0, fw.guest_start(w.g1, w.t0, out)),
        2 => (w.t0, fw.check_interface(w.t0, out)),
        3 => {
            w.fw.with_device(|d| d.event(rid(0), DeviceEvent::Disturb))
                .unwrap();
            (w.t0, fw.check_interface(w.t0, out))
        }
        _ => (w.t0, fw.unbind(w.t0, out)),
    };
    for _ in 0..steps {
        match step {
            Ok(Completion::Relay(n)) => {
                let a = answer(w, out, n);
                step = fw.device_response(tdi, Some(&a), out);
            }
            Ok(Completion::Resumable) if op == 4 => step = fw.unbind(tdi, out),
            _ => break,
        }
    }
    (tdi, step)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, failure_persistence: None, ..ProptestConfig::default() })]

    /// At every step of every operation, whatever the host hands back: no panic; a refusal of
    /// the bytes changes nothing; and the TDI can always be unbound and bound again.
    #[test]
    fn arbitrary_answers_at_every_step(op in 0u8..5, steps in 0usize..8, g in garble()) {
        let w = bound();
        let fw = w.fw.firmware();
        let mut out = buf();
        let (tdi, step) = drive(&w, op, steps, &mut out);
        if let Ok(Completion::Relay(n)) = step {
            let genuine = answer(&w, &out, n);
            let bytes = match &g {
                Garble::Bytes(b) => Some(b.clone()),
                Garble::Flip(at, bit) => {
                    let mut b = genuine.clone();
                    let at = at % b.len();
                    b[at] ^= 1 << bit;
                    Some(b)
                }
                Garble::Silence => None,
            };
            let before = w.fw.snapshot().unwrap();
            let got = fw.device_response(tdi, bytes.as_deref(), &mut out);
            if matches!(got, Err(Error::RelayMalformed | Error::NoExchange)) {
                prop_assert_eq!(&w.fw.snapshot().unwrap(), &before);
            }
            if let Garble::Silence = g {
                prop_assert!(matches!(got, Ok(Completion::Relay(_))), "{:?}", got);
            } else {
                prop_assert_eq!(got, Err(Error::RelayMalformed));
            }
        }
        // Always unbindable, in a bounded number of calls, and rebindable after.
        let mut calls = 0;
        while w.fw.unbind(tdi) != Ok(Completion::Done) {
            calls += 1;
            prop_assert!(calls < 2 * (UNBIND_OPS_PER_CALL as usize));
        }
        prop_assert_eq!(fw.tdi(tdi).unwrap().state, TdiState::Unbound);
        prop_assert_eq!(fw.tdi(tdi).unwrap().exchange, None);
        let guest = if tdi == w.t0 { w.g1 } else { w.g2 };
        prop_assert_eq!(w.fw.bind(tdi, guest), Ok(()));
    }
}

// ---- sequence numbers: one counter for the session ---------------------------------------

/// The sequence number in a request this firmware framed (the model session's header).
fn seq_of(request: &[u8]) -> u64 {
    u64::from_le_bytes(request[12..20].try_into().unwrap())
}

/// Runs a bind of `tdi` to its end through the device, returning every answer it relayed.
fn bind_recording(w: &World, tdi: TdiId, guest: GuestId) -> Vec<Vec<u8>> {
    let fw = w.fw.firmware();
    let mut out = buf();
    let mut answers = vec![];
    let mut step = fw.bind(tdi, guest, &mut out);
    while let Ok(Completion::Relay(n)) = step {
        let a = answer(w, &out, n);
        answers.push(a.clone());
        step = fw.device_response(tdi, Some(&a), &mut out);
    }
    assert_eq!(step, Ok(Completion::Done));
    answers
}

#[test]
fn a_recreated_tdi_never_accepts_the_answers_of_its_predecessor() {
    let w = world();
    let fw = w.fw.firmware();
    let old = bind_recording(&w, w.t0, w.g1);
    assert_eq!(w.fw.unbind(w.t0), Ok(Completion::Done));
    let dev = fw.tdi(w.t0).unwrap().device;
    fw.remove_tdi(w.t0).unwrap();
    let t = fw.create_tdi(dev, rid(0)).unwrap();
    let mut out = buf();
    relay_n(fw.bind(t, w.g1, &mut out));
    let before = w.fw.snapshot().unwrap();
    for a in &old {
        assert_eq!(
            fw.device_response(t, Some(a), &mut out),
            Err(Error::RelayMalformed)
        );
    }
    unchanged(&w, &before);
}

#[test]
fn no_two_exchanges_of_any_tdis_share_a_sequence_number() {
    let w = world();
    let fw = w.fw.firmware();
    let mut seqs = vec![];
    let mut out = buf();
    for _ in 0..3 {
        for (t, g) in [(w.t0, w.g1), (w.t1, w.g2)] {
            let n = relay_n(fw.bind(t, g, &mut out));
            seqs.push(seq_of(&out[..n]));
            // Resent unchanged while it waits.
            let again = relay_n(fw.bind(t, g, &mut out));
            assert_eq!(seq_of(&out[..again]), *seqs.last().unwrap());
            assert_eq!(w.fw.unbind(t), Ok(Completion::Done));
        }
    }
    let mut sorted = seqs.clone();
    sorted.dedup();
    assert_eq!(sorted, seqs, "strictly increasing: {seqs:?}");
    assert!(seqs.windows(2).all(|p| p[0] < p[1]), "{seqs:?}");
}

#[test]
fn a_session_out_of_sequence_numbers_refuses_new_exchanges() {
    let w = world();
    let fw = w.fw.firmware();
    fw.with_transport(|r| r.set_next_seq(u64::MAX)).unwrap();
    let before = w.fw.snapshot().unwrap();
    let mut out = buf();
    assert_eq!(fw.bind(w.t0, w.g1, &mut out), Err(Error::SequenceExhausted));
    unchanged(&w, &before);
}

#[test]
fn a_bind_lands_only_on_the_guest_it_was_started_for() {
    let w = world();
    let fw = w.fw.firmware();
    let mut out = buf();
    let mut step = fw.bind(w.t0, w.g1, &mut out);
    // The guest goes away mid-bind and another takes its slot.
    fw.destroy_guest(w.g1).unwrap();
    let g = fw.create_guest().unwrap();
    assert_eq!(g, w.g1, "the same handle");
    while let Ok(Completion::Relay(n)) = step {
        let a = answer(&w, &out, n);
        step = fw.device_response(w.t0, Some(&a), &mut out);
    }
    assert_eq!(step, Err(Error::InvalidHandle));
    assert_eq!(fw.tdi(w.t0).unwrap().state, TdiState::Unbound);
    assert_eq!(fw.guest(g).unwrap().bound_tdis, 0);
    // The report read ended with the bind, and the interface is unlocked again.
    assert_eq!(
        fw.device(fw.tdi(w.t0).unwrap().device).unwrap().report_read,
        None
    );
    assert_eq!(
        w.fw.with_device(|d| d.state(rid(0))).unwrap(),
        TdispState::ConfigUnlocked
    );
    // A bind for the new guest starts afresh.
    assert_eq!(w.fw.bind(w.t0, g), Ok(()));
}

#[test]
fn the_host_relays_no_start_until_the_guest_accepted_its_dma_context() {
    let w = world();
    w.fw.bind(w.t0, w.g1).unwrap();
    // START alone, with no context and then with the host's context not yet accepted: refused
    // before anything goes to the device, nothing changed.
    let before = w.fw.snapshot().unwrap();
    assert_eq!(w.fw.start_only(w.g1, w.t0), Err(Error::DmaNotAccepted));
    unchanged(&w, &before);
    w.fw.firmware().host_dma_create(w.t0).unwrap();
    let before = w.fw.snapshot().unwrap();
    assert_eq!(w.fw.start_only(w.g1, w.t0), Err(Error::DmaNotAccepted));
    unchanged(&w, &before);
    assert_eq!(
        w.fw.with_device(|d| d.state(rid(0))).unwrap(),
        TdispState::ConfigLocked
    );
    // The guest's own accept, then START alone goes to the device.
    w.fw.firmware().guest_dma_accept(w.g1, w.t0).unwrap();
    assert_eq!(w.fw.start_only(w.g1, w.t0), Ok(()));
    assert_eq!(w.fw.tdi(w.t0).unwrap().state, TdiState::Run { owner: w.g1 });
    assert_eq!(
        w.fw.with_device(|d| d.state(rid(0))).unwrap(),
        TdispState::Run
    );
}

#[test]
fn the_model_device_never_acts_on_a_replayed_request() {
    let w = bound();
    let fw = w.fw.firmware();
    let mut out = buf();
    // A STOP the host kept from an abandoned unbind...
    let n = relay_n(fw.unbind(w.t0, &mut out));
    let old_stop = out[..n].to_vec();
    assert_eq!(fw.unbind_forced(w.t0), Ok(Completion::Done));
    fw.setup_stream(fw.tdi(w.t0).unwrap().device).unwrap();
    w.fw.bind(w.t0, w.g1).unwrap();
    accept_dma(&w, w.t0, w.g1);
    w.fw.start_only(w.g1, w.t0).unwrap();
    for _ in 0..crate::device_model::ANSWER_WINDOW {
        assert_eq!(w.fw.check_interface(w.t0), Ok(Completion::Done));
    }
    // ... replayed to the device later does not unlock the running interface behind the
    // firmware's back.
    let mut resp = buf();
    assert_eq!(
        w.fw.with_device(|d| d.answer(&old_stop, &mut resp))
            .unwrap(),
        None
    );
    assert_eq!(
        w.fw.with_device(|d| d.state(rid(0))).unwrap(),
        TdispState::Run
    );
    // A request answered lately is answered again, the same, and not acted on twice.
    let n = relay_n(fw.check_interface(w.t0, &mut out));
    let (mut a, mut b) = (buf(), buf());
    let first =
        w.fw.with_device(|d| d.answer(&out[..n], &mut a))
            .unwrap()
            .unwrap();
    let again =
        w.fw.with_device(|d| d.answer(&out[..n], &mut b))
            .unwrap()
            .unwrap();
    assert_eq!(a[..first], b[..again]);
    assert_eq!(
        fw.device_response(w.t0, Some(&b[..again]), &mut out),
        Ok(Completion::Done)
    );
}

#[test]
fn every_public_firmware_type_formats_as_a_short_summary() {
    let w = bound();
    let tsm = format!("{:?}", *w.fw);
    // Two guests made: the summary counts them and prints no table.
    assert!(
        tsm.starts_with("Tsm { guests_created: 2, reserved: "),
        "{tsm}"
    );
    assert!(tsm.len() < 200, "{tsm}");
    let relayed = format!("{:?}", w.fw);
    assert!(relayed.starts_with("Relayed { fw: Tsm {"), "{relayed}");
    let host = format!("{:?}", w.fw.host());
    assert!(host.starts_with("RelayHost { fw: Tsm {"), "{host}");
    let slots = crate::registry::Slots::<u8, 4>::new(crate::status::Operand::Tdi);
    assert_eq!(
        format!("{slots:?}"),
        "Slots { capacity: 4, operand: Tdi, .. }"
    );
}

/// The sizes [`Tsm`](crate::tsm::Tsm)'s docs ("Size: keep it in a static") promise: a change
/// that grows them past these bounds updates those docs too.
#[test]
fn the_firmware_is_as_large_as_its_docs_say() {
    use core::mem::size_of;
    assert!(size_of::<crate::tsm::Tsm<MemTable<256>, ModelSession>>() <= 104 * 1024);
    assert!(size_of::<ModelDevice>() <= 64 * 1024);
}
