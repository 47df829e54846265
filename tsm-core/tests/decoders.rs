//! Every TDISP decoder survives arbitrary bytes: no panic, and whatever it accepts re-encodes to
//! the same bytes.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use proptest::prelude::*;
use tsm_core::tdisp::message::{decode_request, decode_response, encode_request};
use tsm_core::tdisp::report::{DeviceInterfaceReport, ReportAssembler};
use tsm_core::tdisp::request;

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn requests(bytes in prop::collection::vec(any::<u8>(), 0..80)) {
        if let Ok((fid, req)) = decode_request(&bytes) {
            let mut out = [0u8; 128];
            let n = encode_request(&mut out, fid, &req).unwrap();
            prop_assert_eq!(&out[..n], &bytes[..]);
        }
    }

    #[test]
    fn responses(bytes in prop::collection::vec(any::<u8>(), 0..320), fid in any::<u32>(), code in 0x80u8..0x88) {
        let _ = decode_response(&bytes, fid, code);
    }

    #[test]
    fn responses_with_a_valid_header(
        ty in prop_oneof![1u8..8, Just(0x7f), any::<u8>()],
        body in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut bytes = vec![0x10, ty, 0, 0, 1, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        bytes.extend_from_slice(&body);
        for code in [request::GET_VERSION, request::LOCK_INTERFACE, request::GET_DEVICE_INTERFACE_REPORT,
                     request::GET_DEVICE_INTERFACE_STATE, request::START_INTERFACE, request::STOP_INTERFACE,
                     request::GET_CAPABILITIES] {
            let _ = decode_response(&bytes, 0x0301, code);
        }
    }

    #[test]
    fn reports(bytes in prop::collection::vec(any::<u8>(), 0..600), offset in any::<u64>()) {
        if let Ok(r) = DeviceInterfaceReport::parse(&bytes, offset) {
            // Whatever is accepted is valid: no range overlaps another.
            for (i, a) in r.ranges.iter().enumerate() {
                for b in r.ranges.iter().skip(i + 1) {
                    prop_assert!(!a.range.overlaps(&b.range));
                }
            }
        }
    }

    #[test]
    fn report_portions(portions in prop::collection::vec((prop::collection::vec(any::<u8>(), 0..300), any::<u16>()), 0..8)) {
        let mut a = ReportAssembler::new();
        for (portion, remainder) in portions {
            match a.accept(&portion, remainder) {
                Ok(true) | Err(_) => break,
                Ok(false) => {}
            }
        }
        prop_assert!(a.bytes().len() <= tsm_core::tdisp::report::MAX_REPORT_BYTES);
    }
}
