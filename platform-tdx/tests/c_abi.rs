//! The C entry point: builds platform-tdx as a static library (feature `capi`, with the test
//! support `model-device`: the model device a C host relays to) once, moves it out of the
//! firmware library's path to `libplatform_tdx_model.a`, compiles each C program
//! of `c-test/` against `include/tsm_tdx.h` with the machine's `cc`, links it, and runs it.
//! `bind_zap.c`: bind (every exchange relayed by the C host), map, refused zap, unbind,
//! allowed zap. `host_flow.c`: the Linux host's whole flow, then the eight vfio paths (old
//! order refused with nothing changed, patched order allowed, rebind), all through
//! `tsm_tdx_seamcall` / `tsm_tdx_tdcall`. `session.c`: the firmware sealing through a C
//! session (`tsm_tdx_init_session`), run once per mode (delegating, three that refuse the
//! device's answer, a lock_secret that drifts, a seal failing after the LOCK, an over-long
//! seal). `pool_pages.c`: the header's pool-size macros against the Rust rule.
//! `bare_metal.c`: the library built for `x86_64-unknown-none` (feature `capi` only, as a
//! firmware takes it) and linked into a freestanding ELF with its own `_start` (linked, not
//! run): no test support in it, `tsm_tdx_init` (the model session's public key) included.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn work() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("c-abi")
}

/// The outer build's target folder (`CARGO_TARGET_TMPDIR` is its `tmp/`): the dependencies
/// the tests already compiled are not compiled again.
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR is <target-dir>/tmp")
        .to_path_buf()
}

/// Builds platform-tdx as a static library with `features`, for `target` (`None`: the
/// host), into the outer target folder; its path.
fn build_static_lib(features: &str, target: Option<&str>) -> PathBuf {
    let target_dir = target_dir();
    std::fs::create_dir_all(work()).expect("create the C programs' folder");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(manifest()).args([
        "rustc",
        "-p",
        "platform-tdx",
        "--lib",
        "--features",
        features,
        "--crate-type",
        "staticlib",
    ]);
    if let Some(t) = target {
        cmd.args(["--target", t]);
    }
    let build = cmd
        .arg("--target-dir")
        .arg(&target_dir)
        // The outer test build's flags are for the host test binary, not for this library.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .expect("run cargo");
    assert!(
        build.status.success(),
        "static library build ({features}, {target:?}) failed:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let lib = match target {
        Some(t) => target_dir.join(t),
        None => target_dir,
    }
    .join("debug")
    .join("libplatform_tdx.a");
    assert!(lib.exists(), "{} missing", lib.display());
    lib
}

/// The static library with the model device, built once for every test of this file, and
/// moved out of the target folder to `libplatform_tdx_model.a` in the tests' work folder:
/// cargo writes it to `<target>/debug/libplatform_tdx.a`, the path of the firmware (`capi`)
/// library, where an integrator linking after a test run would get the model session (its
/// key is public) by mistake.
fn static_lib() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let built = build_static_lib("model-device", None);
        let lib = work().join("libplatform_tdx_model.a");
        // Both live under the target folder: a rename, a copy if the file systems differ. The
        // last run's copy goes first: cargo hard-links its output, so when nothing was rebuilt
        // `built` and that copy are one file, and a rename between two links of one file does
        // nothing (POSIX rename), leaving the model library at the firmware's path.
        let _ = std::fs::remove_file(&lib);
        if std::fs::rename(&built, &lib).is_err() {
            std::fs::copy(&built, &lib).expect("copy the model-device library");
            std::fs::remove_file(&built).expect("remove the model-device library");
        }
        assert!(
            !built.exists(),
            "{} still holds the model library",
            built.display()
        );
        lib
    })
}

/// Compiles `c-test/<name>.c` (`-Wall -Wextra -Werror`), links the library, runs it; returns
/// its standard output after checking it exited 0.
fn run_c_program(name: &str) -> String {
    run_c_program_with(name, &[])
}

/// As [`run_c_program`], with arguments; the executable is compiled once per argument list.
fn run_c_program_with(name: &str, args: &[&str]) -> String {
    let lib = static_lib();
    let exe = work().join(
        std::iter::once(name)
            .chain(args.iter().copied())
            .collect::<Vec<_>>()
            .join("-"),
    );
    let cc = Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(manifest().join("include"))
        .arg(manifest().join("c-test").join(format!("{name}.c")))
        .arg(lib)
        .arg("-o")
        .arg(&exe)
        .output()
        .expect("run cc");
    assert!(
        cc.status.success(),
        "cc failed:\n{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let run = Command::new(&exe)
        .args(args)
        .output()
        .expect("run the C program");
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    print!("{stdout}");
    assert!(
        run.status.success(),
        "C program {name} {args:?} failed:\n{stdout}"
    );
    stdout
}

/// Spawns cargo and the C compiler: not something Miri can interpret.
#[test]
#[cfg_attr(miri, ignore)]
fn c_program_links_the_static_library_and_runs_the_host_flow() {
    let stdout = run_c_program("bind_zap");
    assert!(
        stdout.contains(&format!(
            "{:<34} status 0xc0000f1000000001 ok",
            "zap while bound"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "{:<34} status 0x0000000000000000 ok",
            "zap after unbind"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "{:<34} status 0x0000000000000000 ok",
            "bind relayed"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "{:<34} status 0xc0000f0f00000002 ok",
            "garbled response"
        )),
        "{stdout}"
    );
    assert!(stdout.ends_with("PASS: 0 failure(s)\n"), "{stdout}");
}

/// The whole host flow and the eight vfio paths, through the C entry point only.
#[test]
#[cfg_attr(miri, ignore)]
fn c_host_flow_runs_every_vfio_path_in_the_old_and_the_patched_order() {
    let stdout = run_c_program("host_flow");
    let paths = [
        "mem-disable",
        "d3hot",
        "runtime-pm",
        "flr-pcie",
        "flr-af",
        "reset-ioctl",
        "hot-reset",
        "close",
    ];
    for (i, path) in paths.iter().enumerate() {
        let line = |what: &str, status: &str| format!("{path:<11} {what:<34} {status} ok\n");
        for (what, status) in [
            ("start relayed", "0x0000000000000000"),
            ("old: TSM.MMIO.ZAP_CHECK", "0xc0000f1000000001"),
            ("old: TDH.MMIO.BLOCK", "0xc0000f1000000001"),
            ("old: TDH.MMIO.UNMAP", "0xc0000f1000000001"),
            ("unbind done", "0x0000000000000000"),
            ("new: TSM.MMIO.ZAP_CHECK", "0x0000000000000000"),
            ("TDH.DEVIF.REMOVE", "0x0000000000000000"),
        ] {
            assert!(
                stdout.contains(&line(what, status)),
                "{path} {what}:\n{stdout}"
            );
        }
        // Every other path the host removes the leaves the unbind left after STOP.
        let host_unmap = line("host: TDH.MMIO.UNMAP", "0x0000000000000000");
        assert_eq!(
            stdout.contains(&host_unmap),
            i % 2 == 1,
            "{path}:\n{stdout}"
        );
    }
    assert!(stdout.ends_with("\nPASS\n"), "{stdout}");
}

/// The firmware sealing through a session written in C that delegates to the model session's
/// callbacks: init's refusals of a missing session or function (each named), the struct
/// changed after init (not seen), and the whole flow; every callback was called.
#[test]
#[cfg_attr(miri, ignore)]
fn c_session_carries_the_whole_flow() {
    let stdout = run_c_program_with("session", &["delegate"]);
    for (what, status) in [
        ("init, NULL session", "0xc00001000000000a"),
        ("init, NULL pool and NULL session", "0xc000010000000001"),
        ("init, no seal", "0xc000010000000f0a"),
        ("init, no open", "0xc000010000000f0b"),
        ("init, no record_len", "0xc000010000000f0c"),
        ("init, no lock_secret", "0xc000010000000f0d"),
        ("init, no report_digest", "0xc000010000000f0e"),
        ("refused inits left it not ready", "0xc000050500000000"),
        ("init with the C session", "0x0000000000000000"),
        ("BARs, first_page not 4 KiB aligned", "0xc000010000000002"),
        ("BARs, no pages", "0xc000f00400000002"),
        ("BARs, first_page at 2^52", "0xc000010100000002"),
        ("BARs, running past 2^52", "0xc000f00400000002"),
        ("bind relayed", "0x0000000000000000"),
        ("zap while bound", "0xc0000f1000000001"),
        ("unbind relayed", "0x0000000000000000"),
        ("zap after unbind", "0x0000000000000000"),
    ] {
        let line = format!("{what:<34} status {status} ok\n");
        assert!(stdout.contains(&line), "{line}:\n{stdout}");
    }
    for call in ["seal", "open", "record_len", "lock_secret", "report_digest"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("{call:<34} ")) && l.ends_with(" call(s) ok")),
            "{call}:\n{stdout}"
        );
    }
    assert!(stdout.ends_with("PASS: 0 failure(s)\n"), "{stdout}");
}

/// A C session that will not open the device's answer (fails, claims more than its buffer,
/// or a record past the bytes): the bind's relayed response is refused with
/// TDX_DEVIF_TDISP_INVALID_MESSAGE + RDX, the TDI's state is unchanged and the request still
/// waits, byte for byte.
#[test]
#[cfg_attr(miri, ignore)]
fn c_session_refusing_the_answer_refuses_the_response_and_changes_nothing() {
    for mode in ["open-fails", "open-overlong", "record-len-past"] {
        let stdout = run_c_program_with("session", &[mode]);
        let refused = format!(
            "{:<34} status 0xc0000f0f00000002 ok\n",
            "the device's answer refused"
        );
        assert_eq!(stdout.matches(&refused).count(), 2, "{mode}:\n{stdout}");
        let unchanged = format!(
            "{:<34} status 0x{:016x} ok\n",
            "  TDI state, code, owner unchanged", 0
        );
        assert_eq!(stdout.matches(&unchanged).count(), 2, "{mode}:\n{stdout}");
        assert!(
            stdout.contains(&format!(
                "{:<34} status 0x{:016x} ok\n",
                "  the same bytes", 0
            )),
            "{mode}:\n{stdout}"
        );
        assert!(
            stdout.ends_with("PASS: 0 failure(s)\n"),
            "{mode}:\n{stdout}"
        );
    }
}

/// Asserts every `(what, status)` line of a `session.c` run.
fn assert_lines(mode: &str, stdout: &str, lines: &[(&str, &str)]) {
    for (what, status) in lines {
        let line = format!("{what:<34} status {status} ok\n");
        assert!(stdout.contains(&line), "{mode}: {line}:\n{stdout}");
    }
    assert!(
        stdout.ends_with("PASS: 0 failure(s)\n"),
        "{mode}:\n{stdout}"
    );
}

/// A C session whose lock_secret answers differently each time it is asked again: the host
/// re-reads the LOCK and reports no answer once (the LOCK is re-sent, byte for byte), the
/// bind completes, lock_secret was asked exactly once, and the TDI owns exactly the pages
/// the device reported (first and last owned, the next one free).
#[test]
#[cfg_attr(miri, ignore)]
fn c_session_with_a_drifting_lock_secret_binds_what_the_device_reported() {
    let mode = "secret-drifts";
    let stdout = run_c_program_with("session", &[mode]);
    let owned = "0xc0000f1000000001";
    assert_lines(
        mode,
        &stdout,
        &[
            ("the LOCK re-read", "0xc0000f5700000000"),
            ("no answer: the LOCK re-sent", "0xc0000f5700000000"),
            ("bind relayed", "0x0000000000000000"),
            ("one LOCK", "0x0000000000000001"),
            ("lock_secret asked once", "0x0000000000000001"),
            ("the reported first page owned", owned),
            ("the reported last page owned", owned),
            ("the page after them free", "0x0000000000000000"),
        ],
    );
    assert_eq!(
        stdout
            .matches(&format!(
                "{:<34} status 0x{:016x} ok\n",
                "  the same bytes", 0
            ))
            .count(),
        2,
        "{stdout}"
    );
}

/// A C session whose seal fails for the request after the LOCK: that TDH_DEVIF_RESPONSE is
/// TSM_RELAY_BUFFER_TOO_SMALL + TRANSPORT, the TDI is as before the bind with nothing
/// outstanding; once seal works the next bind starts with STOP_INTERFACE and completes.
#[test]
#[cfg_attr(miri, ignore)]
fn c_session_failing_to_seal_after_the_lock_ends_the_bind_as_documented() {
    let mode = "seal-fails-after-lock";
    let stdout = run_c_program_with("session", &[mode]);
    assert_lines(
        mode,
        &stdout,
        &[
            ("the seal after LOCK fails", "0xc000f03300000f06"),
            ("  LOCK was asked of the session", "0x0000000000000001"),
            (
                "  TDI state, code, owner as before the bind",
                "0x0000000000000000",
            ),
            ("  no request outstanding", "0xc0000f1400000001"),
            ("the next bind starts with STOP", "0x0000000000000087"),
            ("  and completes", "0x0000000000000000"),
        ],
    );
}

/// Seal is given exactly TSM_TDX_SESSION_MAX_OVERHEAD bytes past the message: a record one
/// byte longer is TSM_RELAY_BUFFER_TOO_SMALL + TRANSPORT with nothing changed and no request
/// written (never TSM_INCONSISTENT); a record filling the room is relayed.
#[test]
#[cfg_attr(miri, ignore)]
fn c_session_sealing_past_its_room_is_relay_buffer_too_small() {
    let mode = "seal-overlong";
    let stdout = run_c_program_with("session", &[mode]);
    assert_lines(
        mode,
        &stdout,
        &[
            ("bind: relay this", "0xc000f03300000f06"),
            ("  TDI state, code, owner unchanged", "0x0000000000000000"),
            ("  no request written", "0x0000000000000000"),
            ("bind: relay this", "0xc0000f5700000000"),
            ("  a DOE object within the page", "0x0000000000000001"),
            ("seal's least room", "0x0000000000000020"),
            ("seal's most room", "0x0000000000000020"),
        ],
    );
}

/// The header's pool-size macros give what `Sept::pool_pages_needed` gives, over the grid the
/// C program prints.
#[test]
#[cfg_attr(miri, ignore)]
fn header_pool_size_macros_match_the_rust_rule() {
    use platform_tdx::sept::{Sept, SeptLevels};
    use platform_tdx::tsm_core::PageSize;
    let stdout = run_c_program("pool_pages");
    let mut rows = 0;
    for line in stdout.lines().filter_map(|l| l.strip_prefix("pool ")) {
        let v: Vec<usize> = line.split(' ').map(|n| n.parse().unwrap()).collect();
        let [tds, leaves, level, pages] = v[..] else {
            panic!("{line}")
        };
        let size = [PageSize::Size4K, PageSize::Size2M, PageSize::Size1G][level];
        assert_eq!(
            Sept::pool_pages_needed(SeptLevels::Four, tds, leaves, size),
            Some(pages),
            "TSM_TDX_POOL_PAGES({tds}, {leaves}, {level})"
        );
        rows += 1;
    }
    assert_eq!(rows, 4 * 13 * 3, "{stdout}");
}

/// Which of `tools` is not on PATH, if any.
fn missing_tool(tools: &[&'static str]) -> Option<&'static str> {
    tools.iter().copied().find(|t| {
        Command::new(t)
            .arg("--version")
            .output()
            .map_or(true, |o| !o.status.success())
    })
}

/// The static library built for `x86_64-unknown-none` (feature `capi` only, as a firmware
/// image takes it) links with a freestanding C object that has its own `_start` into a static
/// ELF: no undefined symbols, the entry points are in it, and none of the test support is:
/// not `tsm_tdx_init` (it seals with the model session, whose key is public), not
/// `tsm_tdx_model_*`, no model session code. Not run. A missing tool fails the test: a
/// check that never ran is not a pass.
#[test]
#[cfg_attr(miri, ignore)]
fn static_library_links_into_a_freestanding_x86_64_unknown_none_image() {
    if let Some(tool) = missing_tool(&["cc", "ld", "nm"]) {
        panic!("`{tool}` is not installed: the freestanding link needs cc, ld and nm");
    }
    let lib = build_static_lib("capi", Some("x86_64-unknown-none"));
    let dir = work().join("bare-metal");
    std::fs::create_dir_all(&dir).unwrap();
    let obj = dir.join("bare_metal.o");
    let elf = dir.join("firmware.elf");
    let run = |cmd: &mut Command, what: &str| {
        let out = cmd.output().unwrap_or_else(|e| panic!("run {what}: {e}"));
        assert!(
            out.status.success(),
            "{what} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(
        Command::new("cc")
            .args([
                "-std=c11",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-ffreestanding",
                "-nostdlib",
                "-fno-pic",
                "-static",
                // A hosted compiler's defaults a freestanding image has no runtime for.
                "-fno-stack-protector",
                "-mno-red-zone",
                "-c",
                "-I",
            ])
            .arg(manifest().join("include"))
            .arg(manifest().join("c-test").join("bare_metal.c"))
            .arg("-o")
            .arg(&obj),
        "cc -ffreestanding",
    );
    run(
        Command::new("ld")
            .args([
                "-static",
                "-nostdlib",
                "--gc-sections",
                "-e",
                "_start",
                "-o",
            ])
            .arg(&elf)
            .arg(&obj)
            .arg(&lib),
        "ld -static -nostdlib",
    );
    let undefined = run(Command::new("nm").arg("-u").arg(&elf), "nm -u");
    assert!(
        undefined.trim().is_empty(),
        "undefined symbols:\n{undefined}"
    );
    let symbols = run(Command::new("nm").arg(&elf), "nm");
    for entry in [
        "_start",
        "tsm_tdx_init_session",
        "tsm_tdx_seamcall",
        "tsm_tdx_tdcall",
    ] {
        assert!(
            symbols.lines().any(|l| l.ends_with(&format!(" T {entry}"))),
            "{entry} is not a defined text symbol:\n{symbols}"
        );
    }
    // The test support never reaches a firmware build: no model init, device or session.
    assert!(
        !symbols.lines().any(|l| l.ends_with(" tsm_tdx_init")),
        "tsm_tdx_init in a firmware image:\n{symbols}"
    );
    assert!(!symbols.contains("tsm_tdx_model_"), "{symbols}");
    assert!(!symbols.contains("ModelSession"), "{symbols}");
    // The link drops what `_start` does not reach: the library itself must not define them
    // either.
    let archive = run(Command::new("nm").arg(&lib), "nm of the library");
    let defined: Vec<&str> = archive
        .lines()
        .filter(|l| l.contains(" T "))
        .filter_map(|l| l.rsplit(' ').next())
        .filter(|name| name.starts_with("tsm_tdx_"))
        .collect();
    assert_eq!(
        defined.len(),
        3,
        "the firmware library defines {defined:?}, not exactly the three entry points"
    );
    for entry in ["tsm_tdx_init_session", "tsm_tdx_seamcall", "tsm_tdx_tdcall"] {
        assert!(defined.contains(&entry), "{entry} not in {defined:?}");
    }
}
