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

use platform_tdx::frames::{FramePool, Page};
use platform_tdx::sept::{Sept, SeptLevels};
use tsm_core::ModelSession;
use tsm_tests::backend::Backend;
use tsm_tests::backend_tdx::{TdxBackend, TdxFirmware};
use tsm_tests::suite::run_suite;

/// Table pages each scenario's firmware gets: plenty for the suite's mappings.
const POOL_PAGES: usize = 256;
/// Where the test's "physical memory" for table pages pretends to be.
const POOL_PHYS: u64 = 0x20_0000_0000;

fn with_tdx(levels: SeptLevels, f: &mut dyn FnMut(&mut dyn Backend)) {
    let mut mem = vec![Page::ZERO; POOL_PAGES];
    let pool = FramePool::new(&mut mem, POOL_PHYS).unwrap();
    let tsm = TdxFirmware::new(Sept::new(pool, levels), ModelSession::model());
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
