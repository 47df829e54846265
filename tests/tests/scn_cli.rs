//! What a kernel developer writing a scenario sees: every error as `path:line:column: message`
//! naming the word at fault, the form expected there and the nearest known word; the
//! `tsm-scn` runner's exit status and summaries; and the suite running every file of
//! `tests/scenarios/`.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use std::path::PathBuf;
use std::process::{Command, Output};

use tsm_core::device_model::ModelDevice;
use tsm_core::mem_table::MemTable;
use tsm_core::relay::host::Relayed;
use tsm_tests::backend::CoreBackend;
use tsm_tests::interpreter::{Summary, check_scenario, run_scenario};
use tsm_tests::suite::SCENARIOS;

/// The lines that declare what the scenarios below use.
const SETUP: &str = "guest td1
device nic 0000:03:00.0 bar 0x8000_0000 1024
tdi nic.0 nic 0000:03:00.0
";

/// Runs `text` as `mine.scn` on a fresh core firmware, printing into `out`.
fn run_on_core(text: &str, out: &mut String) -> Summary {
    let tsm: Box<Relayed<MemTable<64>>> =
        Box::new(Relayed::new(MemTable::new(), ModelDevice::model()));
    run_scenario(&mut CoreBackend::new(&tsm, "core"), "mine.scn", text, out)
}

/// The one error `line` (after [`SETUP`]) gets, parsed and then run on the core.
fn error_of(line: &str) -> String {
    let text = format!("{SETUP}{line}\n");
    let mut out = String::new();
    if check_scenario("mine.scn", &text, &mut out) == 0 {
        let summary = run_on_core(&text, &mut out);
        assert_eq!((summary.passed, summary.failed), (3, 1), "{out}");
    }
    let errors: Vec<&str> = out.lines().filter(|l| !l.contains(" => ")).collect();
    assert_eq!(errors.len(), 1, "{out}");
    errors[0].to_string()
}

#[test]
fn an_unknown_name_is_named_with_the_nearest_one() {
    assert_eq!(
        error_of("bind nic.9 td1 range 0x8000_0000 1024"),
        "mine.scn:4:6: unknown name `nic.9`: expected a TDI name like nic.0 (declared by \
         `tdi nic.0 nic ...`); did you mean `nic.0`?"
    );
    assert_eq!(
        error_of("start td2 nic.0"),
        "mine.scn:4:7: unknown name `td2`: expected a guest name like td1 (declared by \
         `guest td1`); did you mean `td1`?"
    );
    // Nothing close: the expected form alone.
    assert_eq!(
        error_of("zap eth0"),
        "mine.scn:4:5: unknown name `eth0`: expected a device name like nic (declared by \
         `device nic ...`)"
    );
}

#[test]
fn an_unknown_status_is_refused_before_anything_runs() {
    assert_eq!(
        error_of("bind nic.0 td1 range 0x8000_0000 1024 -> TdiBund"),
        "mine.scn:4:42: unknown status `TdiBund`: expected a status like TdiBound (README, \
         \"Statuses\"), or Ok, Resumable, Relay; did you mean `TdiBound`?"
    );
    assert_eq!(
        error_of("unbind nic.0 -> OK"),
        "mine.scn:4:17: unknown status `OK`: expected a status like TdiBound (README, \
         \"Statuses\"), or Ok, Resumable, Relay; did you mean `Ok`?"
    );
    assert_eq!(
        error_of("unbind nic.0 ->"),
        "mine.scn:4:14: no status after `->`: expected a status like TdiBound (README, \
         \"Statuses\"), or Ok, Resumable, Relay"
    );
}

#[test]
fn a_wrong_kind_of_argument_names_the_expected_form() {
    // Swapped names: found by the file's check, before any backend runs, by what each name
    // was declared as.
    let mut out = String::new();
    let swapped = format!("{SETUP}start nic.0 td1\n");
    assert_eq!(check_scenario("mine.scn", &swapped, &mut out), 1, "{out}");
    assert_eq!(
        error_of("start nic.0 td1"),
        "mine.scn:4:7: `nic.0` is a TDI: expected a guest name like td1 (declared by \
         `guest td1`)"
    );
    assert_eq!(
        error_of("map td1 nic.0 0x10_0000_0000 0x8000_0000 4k"),
        "mine.scn:4:5: `td1` is a guest: expected a TDI name like nic.0 (declared by \
         `tdi nic.0 nic ...`)"
    );
    // Swapped words of other kinds: found by the parser.
    assert_eq!(
        error_of("map nic.0 td1 4k 0x10_0000_0000 0x8000_0000"),
        "mine.scn:4:15: bad number `4k`: expected a guest physical address like 0x10_0000_0000"
    );
    assert_eq!(
        error_of("map nic.0 td1 0x10_0000_0000 0x8000_0000 3m"),
        "mine.scn:4:42: unexpected `3m`: expected a page size: 4k, 2m or 1g; did you mean `2m`?"
    );
    assert_eq!(
        error_of("tdi nic.1 nic 0000:03:20.1"),
        "mine.scn:4:15: bad requester ID `0000:03:20.1`: expected a requester ID seg:bus:dev.fn \
         in hex like 0000:03:00.0"
    );
    assert_eq!(
        error_of("device-event nic.0 flr"),
        "mine.scn:4:20: unexpected `flr`: expected an event: disturb or reset"
    );
    assert_eq!(
        error_of("biind nic.0 td1"),
        "mine.scn:4:1: unknown operation `biind`: expected an operation such as guest, device, \
         tdi, bind, map, start or unbind; did you mean `bind`?"
    );
    assert_eq!(
        error_of("map nic.0 td1 0x10_0000_0000"),
        "mine.scn:4:1: wrong arguments to `map`: expected map <t> <g> <gpa> <hpa> <4k|2m|1g>"
    );
}

#[test]
fn a_status_without_its_arrow_is_named() {
    assert_eq!(
        error_of("unbind nic.0 TdiBound"),
        "mine.scn:4:14: status `TdiBound` without `->` before it: expected `-> Status` after \
         the operation"
    );
    assert_eq!(
        error_of("unbind nic.0 => TdiNotBound"),
        "mine.scn:4:17: status `TdiNotBound` without `->` before it: expected `-> Status` \
         after the operation"
    );
}

#[test]
fn a_bad_number_names_what_it_stands_for() {
    assert_eq!(
        error_of("expect-leaf td1 0x10_0000_00g0 none"),
        "mine.scn:4:17: bad number `0x10_0000_00g0`: expected a guest physical address like \
         0x10_0000_0000"
    );
    assert_eq!(
        error_of("zap nic 256"),
        "mine.scn:4:9: bad number `256`: expected a BAR index from 0 to 255"
    );
    assert_eq!(
        error_of("bind nic.0 td1 range 0x8000_0000 0x1_0000_0000"),
        "mine.scn:4:34: bad number `0x1_0000_0000`: expected a number of 4 KiB pages that \
         fits 32 bits"
    );
    assert_eq!(
        error_of("device nic2 0000:04:00.0 bar 0x9000_0000 many"),
        "mine.scn:4:42: bad number `many`: expected a number of 4 KiB pages like 16"
    );
}

#[test]
fn a_status_word_without_its_arrow_is_named_whatever_the_operation_made_of_it() {
    // Taken for a BAR index, or one word too many: the arrow is what is missing.
    assert_eq!(
        error_of("zap nic TdiBound"),
        "mine.scn:4:9: status `TdiBound` without `->` before it: expected `-> Status` after the \
         operation"
    );
    assert_eq!(
        error_of("unbind-all nic.0 Done"),
        "mine.scn:4:18: status `Done` without `->` before it: expected `-> Status` after the \
         operation"
    );
}

#[test]
fn done_is_the_statuses_table_name_for_ok() {
    let text =
        format!("{SETUP}bind nic.0 td1 range 0x8000_0000 1024 -> Done\nunbind nic.0 -> Ok\n");
    let mut out = String::new();
    assert_eq!(check_scenario("mine.scn", &text, &mut out), 0, "{out}");
    let summary = run_on_core(&text, &mut out);
    assert_eq!((summary.passed, summary.failed), (5, 0), "{out}");
}

#[test]
fn one_bad_declaration_is_one_error_and_a_name_declared_twice_is_named() {
    // The device line's requester ID is bad: that line is the one error, not every use of nic.
    let text = "guest td1\ndevice nic 0000:03:00 bar 0x8000_0000 1024\ntdi nic.0 nic 0000:03:00.0\n\
                zap nic\nguest nic.0\n";
    let mut out = String::new();
    assert_eq!(check_scenario("f.scn", text, &mut out), 2, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("f.scn:2:12: bad requester ID `0000:03:00`"),
        "{out}"
    );
    assert_eq!(
        lines[1],
        "f.scn:5:7: `nic.0` is already a TDI: expected a name no earlier line declared"
    );
}

#[test]
fn every_parse_error_of_a_file_is_printed() {
    let text = "guest td1\nbiind x\nunbind x -> Nope\n# fine\nzap nic -1\n";
    let mut out = String::new();
    assert_eq!(check_scenario("f.scn", text, &mut out), 3);
    let at: Vec<&str> = out.lines().map(|l| l.split(": ").next().unwrap()).collect();
    assert_eq!(at, ["f.scn:2:1", "f.scn:3:13", "f.scn:5:9"], "{out}");
}

/// Every file of `tests/scenarios/` is in the suite (the build script lists them), by path.
#[test]
fn the_suite_runs_every_scenario_file() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".scn"))
        .map(|n| format!("tests/scenarios/{n}"))
        .collect();
    files.sort();
    let listed: Vec<&str> = SCENARIOS.iter().map(|(path, _)| *path).collect();
    assert_eq!(listed, files);
    for (path, text) in SCENARIOS {
        let on_disk = std::fs::read_to_string(dir.join(path.rsplit('/').next().unwrap()));
        assert_eq!(on_disk.unwrap(), *text, "{path}");
        // Every name a suite file uses is declared before, as what it is used for.
        let mut out = String::new();
        assert_eq!(check_scenario(path, text, &mut out), 0, "{out}");
    }
}

/// A scenario file of its own for one test, removed when dropped.
struct TempScenario(PathBuf);

impl TempScenario {
    fn to_str(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempScenario {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn temp_scenario(name: &str, text: &str) -> TempScenario {
    let path = std::env::temp_dir().join(format!("tsm-scn-{}-{name}", std::process::id()));
    std::fs::write(&path, text).unwrap();
    TempScenario(path)
}

fn tsm_scn(args: &[&str]) -> (Option<i32>, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(env!("CARGO_BIN_EXE_tsm-scn"))
        .args(args)
        .output()
        .unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&stdout),
        String::from_utf8_lossy(&stderr)
    );
    (status.code(), out)
}

const FIRST: &str = "# My first scenario: a TDI is bound, and the host may not zap it.
guest td1
device nic 0000:03:00.0 bar 0x8000_0000 1024
tdi nic.0 nic 0000:03:00.0
bind nic.0 td1 range 0x8000_0000 1024
zap nic -> TdiBound
unbind nic.0
zap nic
";

#[test]
fn tsm_scn_runs_a_good_file_on_every_backend() {
    let path = temp_scenario("good.scn", FIRST);
    let p = path.to_str();
    let (code, out) = tsm_scn(&[p]);
    assert_eq!(code, Some(0), "{out}");
    let want: Vec<String> = ["core", "tdx", "sev"]
        .iter()
        .map(|b| format!("{p} ({b}): 7 passed, 0 failed"))
        .collect();
    assert_eq!(out.lines().collect::<Vec<_>>(), want, "{out}");

    let (code, out) = tsm_scn(&[p, "--backend", "tdx", "--verbose"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!("{p}:6: zap nic => TdiBound (expected TdiBound)\n")),
        "{out}"
    );
    assert!(
        out.ends_with(&format!("{p} (tdx): 7 passed, 0 failed\n")),
        "{out}"
    );
    assert!(!out.contains("(core)") && !out.contains("(sev)"), "{out}");
}

#[test]
fn tsm_scn_names_the_failing_line_and_exits_non_zero() {
    let failing = FIRST.replace("zap nic -> TdiBound", "zap nic");
    let path = temp_scenario("failing.scn", &failing);
    let p = path.to_str();
    let (code, out) = tsm_scn(&[p, "--backend", "sev"]);
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(
        out,
        format!("{p}:6: zap nic => TdiBound FAIL expected Ok\n{p} (sev): 4 passed, 1 failed\n")
    );

    // A parse error: printed once, and the file is not run.
    let typo = FIRST.replace("-> TdiBound", "-> TdiBund");
    let typo = temp_scenario("typo.scn", &typo);
    let t = typo.to_str();
    let (code, out) = tsm_scn(&[t, p, "--backend", "core"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.starts_with(&format!(
            "{t}:6:12: unknown status `TdiBund`: expected a status like TdiBound"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("{t}: 1 line is wrong: not run\n")),
        "{out}"
    );
    // The next file still runs.
    assert!(
        out.ends_with(&format!("{p} (core): 4 passed, 1 failed\n")),
        "{out}"
    );
}

#[test]
fn a_name_error_is_found_once_per_file_not_once_per_backend() {
    let wrong = FIRST.replace("zap nic -> TdiBound", "zap nix -> TdiBound");
    let path = temp_scenario("wrong-name.scn", &wrong);
    let p = path.to_str();
    let (code, out) = tsm_scn(&[p, "--backend", "all"]);
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(
        out,
        format!(
            "{p}:6:5: unknown name `nix`: expected a device name like nic (declared by \
             `device nic ...`); did you mean `nic`?\n{p}: 1 line is wrong: not run\n"
        )
    );
}

#[test]
fn tsm_scn_refuses_a_bad_command_line() {
    for args in [
        &[][..],
        &["x.scn", "--backend", "arm"],
        &["x.scn", "--backend"],
        &["--quiet", "x.scn"],
    ] {
        let (code, out) = tsm_scn(args);
        assert_eq!(code, Some(2), "{args:?}: {out}");
        assert!(out.contains("usage: tsm-scn FILE..."), "{out}");
    }
    // Asked for, the usage is no error.
    let (code, out) = tsm_scn(&["--help"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("usage: tsm-scn FILE..."), "{out}");
    let (code, out) = tsm_scn(&["/nonexistent/none.scn", "--backend", "core"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.starts_with("/nonexistent/none.scn: cannot read: "),
        "{out}"
    );
}

/// The first `text` block after `marker` in the README.
fn readme_block(marker: &str) -> String {
    let readme = include_str!("../../README.md");
    let after = &readme[readme.find(marker).unwrap()..];
    let body = &after[after.find("```text\n").unwrap() + "```text\n".len()..];
    body[..body.find("```").unwrap()].to_string()
}

/// The README's first scenario passes as it says, and its error example is what a misspelt
/// status prints.
#[test]
fn the_readme_first_scenario_runs_as_shown() {
    let text = readme_block("here `mine.scn`:");
    let file = temp_scenario("mine.scn", &text);
    let (code, out) = tsm_scn(&[file.to_str()]);
    assert_eq!(code, Some(0), "{out}");
    let shown = readme_block("Run it on every backend");
    let shown: Vec<&str> = shown.lines().skip(1).collect();
    let got: Vec<String> = out
        .lines()
        .map(|l| l.replace(file.to_str(), "mine.scn"))
        .collect();
    assert_eq!(got, shown);

    let typo = temp_scenario("mine-typo.scn", &text.replace("-> TdiBound", "-> TdiBund"));
    let (code, out) = tsm_scn(&[typo.to_str()]);
    assert_eq!(code, Some(1), "{out}");
    let shown = readme_block("so a typo cannot pass");
    let shown: Vec<&str> = shown.lines().skip(1).collect();
    let got: Vec<String> = out
        .lines()
        .map(|l| l.replace(typo.to_str(), "mine.scn"))
        .collect();
    assert_eq!(got, shown);
}
