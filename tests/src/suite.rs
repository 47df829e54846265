//! The scenario files, compiled in, and the suite runner every backend and the QEMU boot use.

use core::fmt::Write;

use crate::backend::Backend;
use crate::interpreter::{Summary, run_scenario};

macro_rules! scenarios {
    ($($name:literal),* $(,)?) => {
        /// Every scenario file under `tests/scenarios/`, by name.
        pub const SCENARIOS: &[(&str, &str)] = &[$(($name, include_str!(concat!("../scenarios/", $name, ".scn")))),*];
    };
}

scenarios!(
    "lifecycle",
    "hostile",
    "unbind-bounded",
    "check-bounded",
    "device-error",
    "tdisp-wire",
    "path-mem-disable",
    "path-d3hot",
    "path-runtime-pm",
    "path-flr-pcie",
    "path-flr-af",
    "path-reset-ioctl",
    "path-hot-reset",
    "path-close",
    "force-unbind",
    "relay",
    "host-teardown",
);

/// Builds a fresh firmware, hands it to the closure it is given, and tears it down.
pub type Fresh<'f> = dyn FnMut(&mut dyn FnMut(&mut dyn Backend)) + 'f;

/// Runs every scenario, each on a fresh firmware that `fresh` builds and hands to the closure
/// it is given, and prints the summary line `N passed, M failed`.
pub fn run_suite(fresh: &mut Fresh<'_>, out: &mut dyn Write) -> Summary {
    let mut total = Summary::default();
    for (name, text) in SCENARIOS {
        fresh(&mut |backend: &mut dyn Backend| {
            let _ = writeln!(out, "== {name} ({})", backend.name());
            total.add(run_scenario(backend, name, text, out));
        });
    }
    let _ = writeln!(out, "{} passed, {} failed", total.passed, total.failed);
    total
}
