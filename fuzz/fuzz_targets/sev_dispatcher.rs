#![no_main]
//! SEV-TIO command sequences through the SEV-TIO dispatcher (`tsm_fuzz::sev`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tsm_fuzz::sev::run(data);
});
