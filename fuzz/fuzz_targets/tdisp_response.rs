#![no_main]
//! `decode_response` checked against the format (`tsm_fuzz::wire::response_target`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tsm_fuzz::wire::response_target(data);
});
