#![no_main]
//! `ReportAssembler` and `WireTdisp::read_report` checked against the portion rules
//! (`tsm_fuzz::wire::portions_target`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tsm_fuzz::wire::portions_target(data);
});
