#![no_main]
//! Arbitrary and mangled answers handed to `Tsm::device_response` at every step of bind,
//! start, check and unbind (`tsm_fuzz::relay`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tsm_fuzz::relay::run(data);
});
