//! The scenario files (every `tests/scenarios/*.scn`, listed by `build.rs`), compiled in, and
//! the suite runner every backend and the QEMU boot use.

use core::fmt::Write;

use crate::backend::Backend;
use crate::interpreter::{Summary, run_scenario};

include!(concat!(env!("OUT_DIR"), "/scenarios.rs"));

/// Builds a fresh firmware, hands it to the closure it is given, and tears it down.
pub type Fresh<'f> = dyn FnMut(&mut dyn FnMut(&mut dyn Backend)) + 'f;

/// Runs every scenario, each on a fresh firmware that `fresh` builds and hands to the closure
/// it is given, and prints the summary line `N passed, M failed`.
pub fn run_suite(fresh: &mut Fresh<'_>, out: &mut dyn Write) -> Summary {
    let mut total = Summary::default();
    for (path, text) in SCENARIOS {
        fresh(&mut |backend: &mut dyn Backend| {
            let _ = writeln!(out, "== {path} ({})", backend.name());
            total.add(run_scenario(backend, path, text, out));
        });
    }
    let _ = writeln!(out, "{} passed, {} failed", total.passed, total.failed);
    total
}
