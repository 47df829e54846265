//! The C entry point: builds platform-tdx as a static library (feature `capi`, with the test
//! support `model-device`: the model device a C host relays to) once, compiles each C program
//! of `c-test/` against `include/tsm_tdx.h` with the machine's `cc`, links it, and runs it.
//! `bind_zap.c`: bind (every exchange relayed by the C host), map, refused zap, unbind,
//! allowed zap. `host_flow.c`: the Linux host's whole flow, then the eight vfio paths (old
//! order refused with nothing changed, patched order allowed, rebind), all through
//! `tsm_tdx_seamcall` / `tsm_tdx_tdcall`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn work() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("c-abi")
}

/// The static library with the model device, built once for every test of this file.
fn static_lib() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        // The outer build's target folder (`CARGO_TARGET_TMPDIR` is its `tmp/`): the
        // dependencies the tests already compiled are not compiled again.
        let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .expect("CARGO_TARGET_TMPDIR is <target-dir>/tmp")
            .to_path_buf();
        std::fs::create_dir_all(work()).expect("create the C programs' folder");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let build = Command::new(cargo)
            .current_dir(manifest())
            .args([
                "rustc",
                "-p",
                "platform-tdx",
                "--lib",
                "--features",
                "model-device",
                "--crate-type",
                "staticlib",
                "--target-dir",
            ])
            .arg(&target_dir)
            // The outer test build's flags are for the host test binary, not for this library.
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .output()
            .expect("run cargo");
        assert!(
            build.status.success(),
            "static library build failed:\n{}",
            String::from_utf8_lossy(&build.stderr)
        );
        let lib = target_dir.join("debug").join("libplatform_tdx.a");
        assert!(lib.exists(), "{} missing", lib.display());
        lib
    })
}

/// Compiles `c-test/<name>.c` (`-Wall -Wextra -Werror`), links the library, runs it; returns
/// its standard output after checking it exited 0.
fn run_c_program(name: &str) -> String {
    let lib = static_lib();
    let exe = work().join(name);
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
    let run = Command::new(&exe).output().expect("run the C program");
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    print!("{stdout}");
    assert!(run.status.success(), "C program {name} failed:\n{stdout}");
    stdout
}

/// Spawns cargo and the C compiler: not something Miri can interpret.
#[test]
#[cfg_attr(miri, ignore)]
fn c_program_links_the_static_library_and_runs_the_host_flow() {
    let stdout = run_c_program("bind_zap");
    assert!(
        stdout.contains("zap while bound              status 0xc0000f1000000001 ok"),
        "{stdout}"
    );
    assert!(
        stdout.contains("zap after unbind             status 0x0000000000000000 ok"),
        "{stdout}"
    );
    assert!(
        stdout.contains("bind relayed                 status 0x0000000000000000 ok"),
        "{stdout}"
    );
    assert!(
        stdout.contains("garbled response             status 0xc0000f0f00000002 ok"),
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
