//! The scenario suite against the SEV-TIO back end: every operation goes through the SEV-TIO
//! command-buffer dispatcher, and every outcome must equal the core's.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

mod common;

use platform_sev::RmpEntry;
use tsm_tests::backend::Backend;
use tsm_tests::backend_sev::{RMP_PAGES, SevBackend};
use tsm_tests::suite::run_suite;

fn with_sev(f: &mut dyn FnMut(&mut dyn Backend)) {
    let mut rmp = vec![RmpEntry::new(); RMP_PAGES];
    let mut backend = Box::new(SevBackend::new(&mut rmp).unwrap());
    f(&mut *backend);
}

/// The firmware tables are large; give the runner room.
fn on_big_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn every_scenario_passes_on_sev() {
    on_big_stack(|| {
        let mut out = String::new();
        let summary = run_suite(&mut with_sev, &mut out);
        print!("{out}");
        common::assert_complete_run(&out, summary, "sev");
    });
}
