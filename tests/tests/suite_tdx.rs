//! The scenario suite against the TDX back end: every operation goes through the SEAMCALL
//! register ABI and the secure EPT in page frames, every exchange with the device relayed by
//! the backend through shared request/response pages.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

mod common;

use platform_tdx::frames::Page;
use platform_tdx::sept::SeptLevels;
use tsm_tests::backend::Backend;
use tsm_tests::backend_tdx::{POOL_PAGES, TdxBackend, tdx_firmware};
use tsm_tests::suite::run_suite;

fn with_tdx(levels: SeptLevels, f: &mut dyn FnMut(&mut dyn Backend)) {
    let mut mem = vec![Page::ZERO; POOL_PAGES];
    let tsm = tdx_firmware(&mut mem, levels).unwrap();
    f(&mut TdxBackend::new(&tsm));
}

fn run(levels: SeptLevels) {
    let mut out = String::new();
    let summary = run_suite(&mut |f| with_tdx(levels, f), &mut out);
    print!("{out}");
    common::assert_complete_run(&out, summary, "tdx");
}

#[test]
fn every_scenario_passes_on_tdx_with_4_level_sept() {
    run(SeptLevels::Four);
}

#[test]
fn every_scenario_passes_on_tdx_with_5_level_sept() {
    run(SeptLevels::Five);
}
