//! The C entry point: builds platform-tdx as a static library (feature `capi`, with the test
//! support `model-device`: the model device a C host relays to), compiles
//! `c-test/bind_zap.c` against `include/tsm_tdx.h` with the machine's `cc`, links them, and
//! runs the program: bind (every exchange relayed by the C host), map, refused zap, unbind,
//! allowed zap, all through `tsm_tdx_seamcall`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;

/// Spawns cargo and the C compiler: not something Miri can interpret.
#[test]
#[cfg_attr(miri, ignore)]
fn c_program_links_the_static_library_and_runs_the_host_flow() {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("c-abi");
    let target_dir = work.join("target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());

    let build = Command::new(cargo)
        .current_dir(&manifest)
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

    let exe = work.join("bind_zap");
    let cc = Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(manifest.join("include"))
        .arg(manifest.join("c-test").join("bind_zap.c"))
        .arg(&lib)
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
    let stdout = String::from_utf8_lossy(&run.stdout);
    print!("{stdout}");
    assert!(run.status.success(), "C program failed:\n{stdout}");
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
