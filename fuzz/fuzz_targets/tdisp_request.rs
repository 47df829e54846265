#![no_main]
//! `decode_request` checked against the format (`tsm_fuzz::wire::request_target`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tsm_fuzz::wire::request_target(data);
});
