#![no_main]
//! `ReportAssembler` and a bind relayed to a device answering report portions from a script,
//! checked against the portion rules (`tsm_fuzz::wire::portions_target`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tsm_fuzz::wire::portions_target(data);
});
