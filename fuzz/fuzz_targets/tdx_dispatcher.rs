#![no_main]
//! SEAMCALL/TDCALL sequences through the TDX dispatcher (`tsm_fuzz::tdx`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tsm_fuzz::tdx::run(data);
});
