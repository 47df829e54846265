//! Golden byte layouts (PCIe 6.x 11.3), round trips, and the requester against the model DSM
//! misbehaving in every way it can.

use super::message::*;
use super::report::*;
use super::*;
use crate::lifecycle::TdispState;
use crate::mmio::MmioRange;
use crate::status::Error;
use zerocopy::little_endian::{U16, U32, U64};

const FID: u32 = 0x0301;

fn enc_req(req: &Request) -> Vec<u8> {
    let mut buf = [0u8; 128];
    let n = encode_request(&mut buf, FID, req).unwrap();
    buf[..n].to_vec()
}

fn enc_resp(resp: &Response<'_>) -> Vec<u8> {
    let mut buf = [0u8; 512];
    let n = encode_response(&mut buf, FID, resp).unwrap();
    buf[..n].to_vec()
}

#[test]
fn header_layout() {
    let bytes = enc_req(&Request::GetVersion);
    assert_eq!(
        bytes,
        [0x10, 0x81, 0, 0, 0x01, 0x03, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    );
    let seg = RequesterId::try_new(5, 3, 0, 1).unwrap();
    assert_eq!(
        function_id(seg),
        Ok(0x0105_0301),
        "segment in 23:16, valid bit 24"
    );
    assert_eq!(
        function_id(RequesterId::try_new(0x100, 0, 0, 0).unwrap()),
        Err(WireError::SegmentTooWide)
    );
}

#[test]
fn request_layouts() {
    let lock = LockParams {
        flags: U16::new(0x0001),
        default_stream_id: 7,
        reserved: 0,
        mmio_reporting_offset: U64::new(0x1122_3344_5566_7788),
        bind_p2p_address_mask: U64::new(0xffff_0000_0000_0000),
    };
    let b = enc_req(&Request::LockInterface(lock));
    assert_eq!(b.len(), 36);
    assert_eq!(b[1], 0x83);
    assert_eq!(&b[16..20], &[0x01, 0x00, 7, 0]);
    assert_eq!(&b[20..28], &0x1122_3344_5566_7788u64.to_le_bytes());
    assert_eq!(&b[28..36], &0xffff_0000_0000_0000u64.to_le_bytes());

    let b = enc_req(&Request::GetReport(ReportRequest {
        offset: U16::new(0x0102),
        length: U16::new(0x0304),
    }));
    assert_eq!((b[1], &b[16..]), (0x84, &[0x02, 0x01, 0x04, 0x03][..]));
    let b = enc_req(&Request::Start([0xab; NONCE_SIZE]));
    assert_eq!((b[1], b.len(), b[16], b[47]), (0x86, 48, 0xab, 0xab));
    assert_eq!(enc_req(&Request::Stop)[1], 0x87);
    assert_eq!(enc_req(&Request::GetState)[1], 0x85);
    let b = enc_req(&Request::GetCapabilities(CapabilitiesRequest {
        tsm_caps: U32::new(0xa0b0_c0d0),
    }));
    assert_eq!((b[1], &b[16..]), (0x82, &[0xd0, 0xc0, 0xb0, 0xa0][..]));
}

#[test]
fn response_layouts() {
    let b = enc_resp(&Response::Report {
        portion: &[9, 8, 7],
        remainder: 0x0506,
    });
    assert_eq!((b[1], &b[16..]), (0x04, &[3, 0, 0x06, 0x05, 9, 8, 7][..]));
    assert_eq!(&enc_resp(&Response::State(TdispState::Run))[15..], &[0, 2]);
    let b = enc_resp(&Response::Error(ErrorBody {
        code: U32::new(0x0104),
        data: U32::new(9),
    }));
    assert_eq!(
        (b[1], &b[16..]),
        (0x7f, &[0x04, 0x01, 0, 0, 9, 0, 0, 0][..])
    );
    assert_eq!(&enc_resp(&Response::Version(&[0x10]))[16..], &[1, 0x10]);
    assert_eq!(enc_resp(&Response::Lock([1; NONCE_SIZE])).len(), 48);
}

#[test]
fn report_layout() {
    let mut head = report_head(1);
    head.interface_info = U16::new(0x0002);
    head.msix_message_control = U16::new(0x8001);
    head.lnr_control = U16::new(0x0003);
    head.tph_control = U32::new(0x0000_0104);
    let mut out = [0u8; 64];
    let n = encode_report(
        &mut out,
        &head,
        &[wire_range(0x8000_0000, 16, RANGE_ATTR_MSIX_TABLE, 2)],
        &[0xee],
    )
    .unwrap();
    let golden: [u8; 37] = [
        0x02, 0x00, 0x00, 0x00, 0x01, 0x80, 0x03, 0x00, 0x04, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00,
        0x00, // head
        0x00, 0x00, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x01, 0x00, 0x02,
        0x00, // range
        0x01, 0x00, 0x00, 0x00, 0xee, // device-specific info
    ];
    assert_eq!(&out[..n], &golden);
    let r = DeviceInterfaceReport::parse(&golden, 0).unwrap();
    assert_eq!(
        (
            r.interface_info,
            r.msix_message_control,
            r.lnr_control,
            r.tph_control
        ),
        (2, 0x8001, 3, 0x104)
    );
    assert_eq!(
        r.ranges[0].range,
        MmioRange::from_raw(0x8000_0000, 16).unwrap()
    );
    assert_eq!(
        (
            r.ranges[0].attributes,
            r.ranges[0].id,
            r.device_specific_len
        ),
        (1, 2, 1)
    );
}

fn report_bytes(ranges: &[WireMmioRange], dsi: &[u8]) -> Vec<u8> {
    let mut out = [0u8; MAX_REPORT_BYTES];
    let n = encode_report(&mut out, &report_head(ranges.len() as u32), ranges, dsi).unwrap();
    out[..n].to_vec()
}

#[test]
fn report_validation() {
    let ok = wire_range(0x8000_0000, 4, 0, 0);
    let parse = |b: &[u8]| DeviceInterfaceReport::parse(b, 0).map(|r| r.ranges.len());
    assert_eq!(parse(&report_bytes(&[ok], &[])), Ok(1));
    assert_eq!(
        parse(&report_bytes(&[ok, wire_range(0x8000_3000, 1, 0, 1)], &[])),
        Err(Error::RangesOverlap)
    );
    assert_eq!(
        parse(&report_bytes(&[wire_range(0x8000_0800, 1, 0, 0)], &[])),
        Err(Error::Misaligned)
    );
    assert_eq!(
        parse(&report_bytes(&[wire_range(0x8000_0000, 0, 0, 0)], &[])),
        Err(Error::InvalidRange)
    );
    assert_eq!(
        parse(&report_bytes(
            &[wire_range(0xf_ffff_ffff_f000, 2, 0, 0)],
            &[]
        )),
        Err(Error::InvalidRange)
    );
    assert_eq!(
        parse(&report_bytes(&[wire_range(!0xfff, 1, 0, 0)], &[])),
        Err(Error::InvalidRange)
    );
    assert_eq!(
        parse(&report_bytes(&[ok; 17], &[])),
        Err(Error::TooManyRanges)
    );
    // Count and length disagree: one byte short, one byte long, a lying range count.
    let good = report_bytes(&[ok], &[1, 2]);
    assert_eq!(parse(&good[..good.len() - 1]), Err(Error::DeviceMalformed));
    assert_eq!(
        parse(&[good.clone(), vec![0]].concat()),
        Err(Error::DeviceMalformed)
    );
    let mut lying = good.clone();
    lying[12] = 2;
    assert_eq!(parse(&lying), Err(Error::DeviceMalformed));
    let mut reserved = good;
    reserved[2] = 1;
    assert_eq!(parse(&reserved), Err(Error::DeviceMalformed));
    // Non-TEE ranges are reported but never owned.
    let r = DeviceInterfaceReport::parse(
        &report_bytes(
            &[ok, wire_range(0x8001_0000, 1, RANGE_ATTR_NON_TEE, 1)],
            &[],
        ),
        0,
    )
    .unwrap();
    assert_eq!(
        r.tee_ranges().as_slice(),
        &[MmioRange::from_raw(0x8000_0000, 4).unwrap()]
    );
}

#[test]
fn assembler_checks_portions() {
    let mut a = ReportAssembler::new();
    assert_eq!(a.accept(&[1, 2], 3), Ok(false));
    assert_eq!(
        a.accept(&[3], 3),
        Err(WireError::ReportInconsistent),
        "total changed"
    );
    assert_eq!(
        a.accept(&[], 3),
        Err(WireError::ReportInconsistent),
        "no progress"
    );
    assert_eq!(a.accept(&[3, 4, 5], 0), Ok(true));
    assert_eq!(a.bytes(), &[1, 2, 3, 4, 5]);
    let mut big = ReportAssembler::new();
    assert_eq!(
        big.accept(&[0; 4], u16::MAX),
        Err(WireError::ReportTooLarge)
    );
}

#[test]
fn decoder_rejects_what_was_not_asked() {
    let state = enc_resp(&Response::State(TdispState::Run));
    assert!(decode_response(&state, FID, request::GET_DEVICE_INTERFACE_STATE).is_ok());
    assert_eq!(
        decode_response(&state, FID + 1, request::GET_DEVICE_INTERFACE_STATE),
        Err(WireError::WrongInterface(FID))
    );
    assert_eq!(
        decode_response(&state, FID, request::STOP_INTERFACE),
        Err(WireError::UnexpectedType(0x05))
    );
    assert_eq!(
        decode_response(&state[..16], FID, request::GET_DEVICE_INTERFACE_STATE),
        Err(WireError::Short)
    );
    assert_eq!(
        decode_response(&[state.clone(), vec![0]].concat(), FID, 0x85),
        Err(WireError::Long)
    );
    assert_eq!(
        decode_response(&state[..15], FID, 0x85),
        Err(WireError::Short)
    );
    let mut bad = state.clone();
    bad[16] = 4;
    assert_eq!(
        decode_response(&bad, FID, 0x85),
        Err(WireError::BadState(4))
    );
    let mut v2 = state.clone();
    v2[0] = 0x20;
    assert_eq!(
        decode_response(&v2, FID, 0x85),
        Err(WireError::Version(0x20))
    );
    let mut rsv = state;
    rsv[9] = 1;
    assert_eq!(decode_response(&rsv, FID, 0x85), Err(WireError::Reserved));
    let err = enc_resp(&Response::Error(ErrorBody {
        code: U32::new(4),
        data: U32::new(0),
    }));
    assert_eq!(
        decode_response(&err, FID, 0x87),
        Err(WireError::Refused { code: 4, data: 0 })
    );
    let mut unknown = enc_resp(&Response::Stop);
    unknown[1] = 0x55;
    assert_eq!(
        decode_response(&unknown, FID, 0x87),
        Err(WireError::UnknownType(0x55))
    );
}

#[test]
fn round_trips() {
    for req in [
        Request::GetVersion,
        Request::GetState,
        Request::Stop,
        Request::Start([3; NONCE_SIZE]),
        Request::GetReport(ReportRequest {
            offset: U16::new(7),
            length: U16::new(9),
        }),
        Request::GetCapabilities(CapabilitiesRequest {
            tsm_caps: U32::new(1),
        }),
    ] {
        assert_eq!(decode_request(&enc_req(&req)), Ok((FID, req)));
    }
    let portion = [1u8, 2, 3];
    for resp in [
        Response::Start,
        Response::Stop,
        Response::State(TdispState::Error),
        Response::Lock([9; NONCE_SIZE]),
        Response::Report {
            portion: &portion,
            remainder: 4,
        },
        Response::Version(&[0x10, 0x11]),
    ] {
        let bytes = enc_resp(&resp);
        let request_code = resp.code() | 0x80;
        assert_eq!(decode_response(&bytes, FID, request_code), Ok(resp));
    }
    let mut tiny = [0u8; 10];
    assert_eq!(
        encode_request(&mut tiny, FID, &Request::Stop),
        Err(WireError::BufferTooSmall)
    );
}

#[test]
fn reporting_offsets_keep_their_documented_shape() {
    for secret in [
        0,
        u64::MAX,
        0x0010_0000_0000_0fff,
        0xc000_0000_0000_0000,
        0x1234_5678_9abc_def0,
    ] {
        let o = reporting_offset(secret);
        assert_eq!(o % 0x1000, 0, "{secret:#x}");
        assert!((1 << 52..1 << 62).contains(&o), "{secret:#x} -> {o:#x}");
        // The largest physical page plus the offset never overflows.
        assert!(
            (crate::addr::PHYS_ADDR_LIMIT - 0x1000)
                .checked_add(o)
                .is_some()
        );
    }
    // Different secrets give different offsets in every kept bit.
    assert_ne!(reporting_offset(0x1000), reporting_offset(0x2000));
    assert_ne!(reporting_offset(1 << 61), reporting_offset(0));
}

#[test]
fn a_report_is_read_with_its_offset_and_refused_without_it() {
    let offset = reporting_offset(0x5a5a_5a5a_5a5a_5a5a);
    let host = 0x8000_0000;
    let shifted = report_bytes(&[wire_range(host + offset, 4, 0, 0)], &[]);
    let r = DeviceInterfaceReport::parse(&shifted, offset).unwrap();
    assert_eq!(r.ranges[0].range, MmioRange::from_raw(host, 4).unwrap());
    // The host address as it is (the device ignored the offset): below the offset.
    let plain = report_bytes(&[wire_range(host, 4, 0, 0)], &[]);
    assert_eq!(
        DeviceInterfaceReport::parse(&plain, offset),
        Err(Error::DeviceMalformed)
    );
    // Another bind's offset: the addresses land past every physical address, or below.
    let other = reporting_offset(0x0101_0101_0101_0101);
    assert!(DeviceInterfaceReport::parse(&shifted, other).is_err());
}
