//! The scenario suite against the core with the in-memory secure table.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

mod common;

use tsm_core::device_model::ModelDevice;
use tsm_core::mem_table::MemTable;
use tsm_core::relay::host::Relayed;
use tsm_tests::backend::{Backend, CoreBackend};
use tsm_tests::interpreter::run_scenario;
use tsm_tests::suite::{SCENARIOS, run_suite};

type CoreTsm = Relayed<MemTable<1024>>;

fn with_core(f: &mut dyn FnMut(&mut dyn Backend)) {
    let tsm: Box<CoreTsm> = Box::new(Relayed::new(MemTable::new(), ModelDevice::model()));
    f(&mut CoreBackend::new(&tsm, "core"));
}

#[test]
fn every_scenario_passes_on_the_core() {
    let mut out = String::new();
    let summary = run_suite(&mut with_core, &mut out);
    print!("{out}");
    common::assert_complete_run(&out, summary, "core");
}

#[test]
fn each_host_path_asserts_both_orders() {
    for path in [
        "mem-disable",
        "d3hot",
        "runtime-pm",
        "flr-pcie",
        "flr-af",
        "reset-ioctl",
        "hot-reset",
        "close",
    ] {
        let (_, text) = SCENARIOS
            .iter()
            .find(|(n, _)| *n == format!("tests/scenarios/path-{path}.scn"))
            .unwrap();
        assert!(text.contains(&format!("host {path} ")), "{path}");
        assert!(
            text.contains("zap-first -> TdiBound"),
            "{path}: old order not refused"
        );
        assert!(
            text.contains("unbind-first\n"),
            "{path}: new order not asserted to succeed"
        );
    }
}

#[test]
fn a_wrong_expectation_fails_with_its_line_number() {
    let text = "guest g\n# comment\nunbind #3 -> Ok\nguest h\n";
    let mut out = String::new();
    let mut summary = Default::default();
    with_core(&mut |b| summary = run_scenario(b, "demo", text, &mut out));
    assert_eq!((summary.passed, summary.failed), (1, 1));
    assert!(
        out.contains("demo:3: unbind #3 => InvalidHandle FAIL expected Ok"),
        "{out}"
    );
    assert!(
        !out.contains("demo:4"),
        "the run must stop at the failure: {out}"
    );
}

#[test]
fn parse_errors_and_unknown_names_fail_the_run() {
    for (text, at) in [
        ("guest g\nbind nope g\n", "bad:2:6: unknown name `nope`"),
        ("frobnicate\n", "bad:1:1: unknown operation `frobnicate`"),
        ("guest g\nstart g g\n", "bad:2:9: `g` is a guest"),
    ] {
        let mut out = String::new();
        let mut summary = Default::default();
        with_core(&mut |b| summary = run_scenario(b, "bad", text, &mut out));
        assert_eq!(summary.failed, 1, "{text}: {out}");
        assert!(out.contains(at), "{out}");
    }
}
