//! What every suite test asserts of a run, whichever back end it drove.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use tsm_tests::interpreter::Summary;
use tsm_tests::suite::SCENARIOS;

/// No line failed, every scenario ran to its last operation on `backend`, and the summary
/// line closes the output.
pub fn assert_complete_run(out: &str, summary: Summary, backend: &str) {
    let failures: Vec<&str> = out.lines().filter(|l| l.contains("FAIL")).collect();
    assert_eq!(summary.failed, 0, "failures:\n{}", failures.join("\n"));
    for (name, text) in SCENARIOS {
        assert!(
            out.contains(&format!("== {name} ({backend})")),
            "{name} did not run on {backend}"
        );
        let lines: Vec<&str> = text.lines().collect();
        let last = lines
            .iter()
            .rposition(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .unwrap();
        assert!(
            out.contains(&format!("{name}:{}: ", last + 1)),
            "{name} did not reach its last line on {backend}"
        );
    }
    assert!(out.ends_with(&format!("{} passed, 0 failed\n", summary.passed)));
}
