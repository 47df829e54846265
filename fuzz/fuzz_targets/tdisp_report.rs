#![no_main]
//! `DeviceInterfaceReport::parse` checked against the format (`tsm_fuzz::wire::report_target`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tsm_fuzz::wire::report_target(data);
});
