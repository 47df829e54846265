//! Boots the bare-metal kernel (`boot`, x86_64-unknown-none) in QEMU through the same runner
//! `cargo boot` uses (boot/run-qemu.sh) and checks that green runs are green and red runs red:
//! a normal boot, a deliberate page fault, a deliberate stack overflow, a deliberate failing
//! check and a CPU that misses the concurrent stage's deadline.
//!
//! Needs `qemu-system-x86_64`: run as root, the first boot installs it with apt-get (the
//! README says so at its top); otherwise these tests fail without it, they never skip.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock, PoisonError};

const TARGET: &str = "x86_64-unknown-none";
/// The kernel's build profile, the one `cargo boot` and `cargo run -p boot` use: optimised, with
/// debug assertions and overflow checks (workspace Cargo.toml).
const PROFILE: &str = "kernel";
const QEMU: &str = "qemu-system-x86_64";
/// CPUs the runner gives QEMU (`-smp 4`).
const CPUS: usize = 4;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent: the workspace root")
        .to_path_buf()
}

/// The target folder this test was built in (`CARGO_TARGET_TMPDIR` is its `tmp/`): the
/// kernel is built there, where `cargo run -p boot` put it, so a boot before the tests leaves
/// nothing to compile, and the dependencies compile once for both. Cargo releases the folder's
/// lock before it runs the tests, so the nested build does not wait on the outer one.
fn target_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent()
        .expect("CARGO_TARGET_TMPDIR is <target-dir>/tmp")
        .to_path_buf()
}

/// Builds the kernel once.
fn kernel() -> &'static Path {
    static KERNEL: OnceLock<PathBuf> = OnceLock::new();
    KERNEL.get_or_init(|| {
        let root = workspace_root();
        // Best effort: if rustup is missing the build below says what is wrong.
        let _ = Command::new("rustup")
            .args(["target", "add", TARGET])
            .output();
        let target_dir = target_dir();
        let out = Command::new(env!("CARGO"))
            .args([
                "build",
                "-p",
                "boot",
                "--target",
                TARGET,
                "--profile",
                PROFILE,
            ])
            .arg("--target-dir")
            .arg(&target_dir)
            .current_dir(&root)
            .output()
            .expect("run cargo");
        assert!(
            out.status.success(),
            "building the kernel failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        target_dir.join(TARGET).join(PROFILE).join("boot")
    })
}

fn require_qemu() {
    static INSTALL: OnceLock<()> = OnceLock::new();
    INSTALL.get_or_init(|| {
        if Command::new(QEMU).arg("--version").output().is_ok() {
            return;
        }
        // As the README promises: a fresh Debian machine gets QEMU when the tests run as root
        // (the same install boot/run-qemu.sh does for `cargo boot`).
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
        if root {
            eprintln!("boot tests: {QEMU} not found, installing qemu-system-x86 with apt-get");
            let apt = |args: &[&str]| {
                Command::new("apt-get")
                    .args(args)
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .status()
                    .is_ok_and(|s| s.success())
            };
            if !apt(&["install", "-y", "qemu-system-x86"]) {
                apt(&["update"]);
                apt(&["install", "-y", "qemu-system-x86"]);
            }
        }
    });
    if let Err(e) = Command::new(QEMU).arg("--version").output() {
        panic!(
            "{QEMU} not found ({e}): the boot tests need it and do not skip. \
             Install it with: sudo apt-get install -y qemu-system-x86"
        );
    }
}

struct Run {
    code: Option<i32>,
    log: String,
}

impl Run {
    fn lines(&self) -> impl DoubleEndedIterator<Item = &str> {
        self.log.lines().map(str::trim)
    }

    /// The `N passed, M failed` summary, if the kernel printed one.
    /// The kernel's closing summary: the last `N passed, M failed` line (each back end's
    /// suite prints its own before it).
    fn summary(&self) -> Option<(u32, u32)> {
        self.lines().rev().find_map(|l| {
            let (passed, failed) = l.split_once(" passed, ")?;
            Some((
                passed.parse().ok()?,
                failed.strip_suffix(" failed")?.parse().ok()?,
            ))
        })
    }
}

/// Boots the kernel with `words` on its command line; one QEMU at a time.
fn boot(words: &[&str]) -> Run {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    require_qemu();
    let kernel = kernel();
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    let root = workspace_root();
    let out = Command::new("bash")
        .arg(root.join("boot").join("run-qemu.sh"))
        .arg(kernel)
        .args(words)
        .current_dir(&root)
        .output()
        .expect("run boot/run-qemu.sh");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("--- boot {words:?}: {}\n{log}", out.status);
    Run {
        code: out.status.code(),
        log,
    }
}

/// The boots, in a module of their own so the quick loop can leave them out by name
/// (`cargo test --workspace -- --skip qemu::`, README "Run it").
mod qemu {
    use super::*;

    #[test]
    fn normal_boot_passes_on_every_cpu() {
        let run = boot(&[]);
        assert_eq!(run.code, Some(0), "boot failed:\n{}", run.log);
        let (passed, failed) = run.summary().expect("summary line");
        assert!(
            passed > 0 && failed == 0,
            "summary {passed} passed, {failed} failed"
        );
        // Every scenario ran on every back end inside the firmware environment.
        for (name, _) in tsm_tests::suite::SCENARIOS {
            for backend in ["core", "tdx", "sev"] {
                let header = format!("== {name} ({backend})");
                assert!(
                    run.lines().any(|l| l == header),
                    "no `{header}`:
{}",
                    run.log
                );
            }
        }
        assert!(
            !run.log.contains("FAIL"),
            "a line failed:
{}",
            run.log
        );
        // The START gate inside the firmware environment: START without the guest's accept is
        // refused on the core and TDX, goes through on SEV (start-gate.scn's first START), and
        // the smp stage's guests accept and start on their own.
        let start = "tests/scenarios/start-gate.scn:14: start td1 nic.0 no-accept => ";
        let outcomes: Vec<&str> = run.lines().filter_map(|l| l.strip_prefix(start)).collect();
        assert_eq!(
            outcomes,
            [
                "DmaNotAccepted (expected DmaNotAccepted)",
                "DmaNotAccepted (expected DmaNotAccepted)",
                "Ok (expected Ok)"
            ],
            "{}",
            run.log
        );
        // The count in front of "START refused before the guest's accept", per platform:
        // SEV's START is never gated, so its count is 0 (core and TDX may see none in a run).
        let gated = |table: &str| -> Option<u64> {
            let prefix = format!("smp: {table}: ");
            let line = run.lines().find(|l| l.starts_with(&prefix))?;
            let (before, _) = line.split_once(" START refused before the guest's accept, ")?;
            before.rsplit(' ').next()?.parse().ok()
        };
        for table in ["core", "tdx"] {
            assert!(
                gated(table).is_some(),
                "no START gate count for {table}:\n{}",
                run.log
            );
        }
        assert_eq!(
            gated("sev"),
            Some(0),
            "SEV's START is not gated:\n{}",
            run.log
        );
        assert!(
            run.lines()
                .any(|l| l.starts_with("stack: ") && l.contains(" guard pages unmapped")),
            "no guard pages:\n{}",
            run.log
        );
        assert!(
            run.lines()
                .any(|l| l.starts_with("run-qemu: PASS in ") && l.ends_with(" s")),
            "the runner did not give the boot's wall time:\n{}",
            run.log
        );
        let smp_ok = format!("smp: {CPUS} cpus ok");
        assert!(
            run.lines().any(|l| l == smp_ok),
            "no `{smp_ok}` line:\n{}",
            run.log
        );
        for cpu in 0..CPUS {
            let prefix = format!("smp: cpu {cpu} (apic ");
            assert!(
                run.lines()
                    .any(|l| l.starts_with(&prefix) && l.ends_with(" 0 failed")),
                "no result line for cpu {cpu}:\n{}",
                run.log
            );
        }
        // The concurrent stage ran on every secure table, the CPUs met (the kernel enforces its
        // Busy floor; the count is read back here too), and every TDI unbound completely.
        for table in ["core", "tdx", "sev"] {
            let prefix = format!("smp: {table}: ");
            let busy = run
                .lines()
                .find_map(|l| {
                    let (_, rest) = l.strip_prefix(&prefix)?.split_once(" ok, ")?;
                    rest.split_once(" busy ")?.0.parse::<u64>().ok()
                })
                .unwrap_or_else(|| panic!("no stage tally for {table}:\n{}", run.log));
            assert!(busy > 0, "no contention on {table}:\n{}", run.log);
            assert!(
                run.lines().any(|l| l.starts_with(&prefix)
                    && l.ends_with(" leaves mapped at the end, 0 after unbinding every TDI")),
                "{table}: TDIs left bound after the stage:\n{}",
                run.log
            );
        }
        // Independent guests, a shard each, one CPU per lane: they worked and never met.
        let lanes = run
            .lines()
            .find(|l| l.starts_with("smp: lanes ("))
            .unwrap_or_else(|| panic!("no lanes tally:\n{}", run.log));
        assert!(
            lanes.contains(&format!("({CPUS} independent guests, a shard each)"))
                && lanes.contains(", 0 busy (")
                && lanes.contains(" 0 failed, "),
            "lanes contended or failed: {lanes}\n{}",
            run.log
        );
    }

    #[test]
    fn page_fault_is_red() {
        // `log=info` also shows that `log` records reach the serial console, as
        // `[LEVEL target] message`, before the fault.
        let run = boot(&["fault", "log=info"]);
        assert!(
            run.lines()
                .any(|l| l == "[INFO boot::logger] serial logger at level INFO"),
            "no log record on the console:\n{}",
            run.log
        );
        assert_ne!(
            run.code,
            Some(0),
            "a page fault must fail the run:\n{}",
            run.log
        );
        assert!(
            run.log.contains("EXCEPTION: #PF page fault (vector 14)")
                && run.log.contains("at rip 0x"),
            "no exception report:\n{}",
            run.log
        );
        assert!(
            !run.log.contains("stack overflow"),
            "a wild access is not a stack overflow:\n{}",
            run.log
        );
        assert!(
            run.summary().is_none(),
            "the run went on after the fault:\n{}",
            run.log
        );
    }

    #[test]
    fn stack_overflow_is_reported_as_a_fault() {
        // An unknown log level is named and the default kept (nothing logged at info).
        let run = boot(&["overflow", "log=loud"]);
        assert!(
            run.lines().any(|l| l
                == "boot: unknown log level 'loud' (off, error, warn, info, debug or trace), keeping WARN"),
            "an unknown log level went unreported:\n{}",
            run.log
        );
        assert!(
            !run.log.contains("[INFO "),
            "an info record showed at the default level:\n{}",
            run.log
        );
        assert_ne!(
            run.code,
            Some(0),
            "a stack overflow must fail the run:\n{}",
            run.log
        );
        // The kernel itself reported the failure through isa-debug-exit: not a triple fault (QEMU
        // status 0 under -no-reboot), not a timeout.
        assert_eq!(run.code, Some(1), "not a failure verdict:\n{}", run.log);
        assert!(
            run.log.contains("run-qemu: FAIL (kernel reported failure)"),
            "the kernel did not report the failure itself:\n{}",
            run.log
        );
        // The overflow page-faults in the guard page under the BSP stack, on the page-fault IST
        // stack, and is named as an overflow of that stack, at the guard page the boot announced.
        let guard = run
            .lines()
            .find_map(|l| {
                l.strip_prefix("stack: BSP stack ")?
                    .split_once(", guard page at ")
            })
            .map(|(_, guard)| guard.to_string())
            .expect("boot line naming the BSP stack's guard page");
        assert!(
            run.log.contains("EXCEPTION: #PF page fault (vector 14)"),
            "no page-fault report:\n{}",
            run.log
        );
        let fault = run
            .lines()
            .find(|l| l.starts_with("FAULT: stack overflow: BSP stack of cpu 0 "))
            .unwrap_or_else(|| panic!("no stack overflow report:\n{}", run.log));
        assert!(
            fault.contains(&format!("ran into its guard page at {guard} ")),
            "the report names another guard page than {guard}: {fault}"
        );
        assert!(
            run.summary().is_none(),
            "the run went on after the overflow:\n{}",
            run.log
        );
    }

    #[test]
    fn failing_check_is_red() {
        // `log=debug` too: the concurrent stage caps it at warn, says so, and still passes
        // (at debug its refusals missed the stage deadline), so the one failure is `fail`'s.
        let run = boot(&["fail", "log=debug"]);
        assert_ne!(
            run.code,
            Some(0),
            "a failed check must fail the run:\n{}",
            run.log
        );
        let (_, failed) = run.summary().expect("summary line");
        assert_eq!(
            failed, 1,
            "not exactly the deliberate failure:\n{}",
            run.log
        );
        assert!(
            run.lines().any(|l| l.starts_with("[DEBUG ")),
            "no debug record before the stage:\n{}",
            run.log
        );
        assert!(
            run.lines()
                .any(|l| l.starts_with("boot: the concurrent stage logs at warn at most")),
            "the stage's log cap went unannounced:\n{}",
            run.log
        );
        let smp_ok = format!("smp: {CPUS} cpus ok");
        assert!(
            run.lines().any(|l| l == smp_ok),
            "the stage failed at log=debug:\n{}",
            run.log
        );
    }

    #[test]
    fn missed_stage_deadline_is_red() {
        let run = boot(&["hang", "deadline=500"]);
        assert_ne!(
            run.code,
            Some(0),
            "a hung CPU must fail the run:\n{}",
            run.log
        );
        assert!(
            run.log.contains("did not finish within 500 ms"),
            "no deadline message:\n{}",
            run.log
        );
        // The CPUs that waited for it say why they gave up, naming the deadline.
        assert!(
            run.lines().any(|l| l.starts_with("smp: FAIL cpu ")
                && l.contains("barrier before the stage deadline (500 ms;")),
            "no barrier message naming the deadline:\n{}",
            run.log
        );
    }
}
