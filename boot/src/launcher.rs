//! Host side of `cargo run -p boot [-- words]`: adds the bare-metal target with rustup, then
//! runs `cargo run -p boot --target x86_64-unknown-none --profile kernel -- words` from the
//! workspace root (what `cargo boot` runs), which builds the kernel optimised (the `kernel`
//! profile of the workspace manifest keeps debug assertions and overflow checks) and boots it
//! through `run-qemu.sh` (the target's cargo runner), which prints the boot's wall time.
//! The kernel goes to the launcher's own target folder (the one `--target-dir` or
//! `CARGO_TARGET_DIR` chose), where `cargo test`'s boot test finds it already built.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const TARGET: &str = "x86_64-unknown-none";
/// The kernel's build profile (workspace Cargo.toml; the QEMU tests use the same one).
const PROFILE: &str = "kernel";

/// Builds and boots the kernel; the exit code is the boot's verdict.
pub fn main() -> ExitCode {
    let boot_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = boot_dir.parent().unwrap_or(boot_dir);
    match Command::new("rustup")
        .args(["target", "add", TARGET])
        .current_dir(root)
        .status()
    {
        Ok(status) if status.success() => {}
        Ok(status) => {
            eprintln!("boot: `rustup target add {TARGET}` failed ({status})");
            return ExitCode::FAILURE;
        }
        Err(e) => eprintln!("boot: rustup not available ({e}); assuming {TARGET} is installed"),
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut run = Command::new(cargo);
    run.args([
        "run",
        "-p",
        "boot",
        "--target",
        TARGET,
        "--profile",
        PROFILE,
    ]);
    if let Some(dir) = target_dir() {
        run.arg("--target-dir").arg(dir);
    }
    let status = run
        .arg("--")
        .args(std::env::args_os().skip(1))
        .current_dir(root)
        .status();
    match status {
        Ok(status) if status.success() => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("boot: kernel run failed ({status})");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("boot: cannot run cargo: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The target folder this launcher was built in: it runs from `<target-dir>/<profile>/boot`,
/// a folder cargo made (its target folder tagged `CACHEDIR.TAG`, or the profile folder holding
/// `.fingerprint`). `None` (the inner cargo picks the folder as usual) for a launcher run from
/// anywhere else.
fn target_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let profile = exe.parent()?;
    let dir = profile.parent()?;
    let cargos = dir.join("CACHEDIR.TAG").is_file() || profile.join(".fingerprint").is_dir();
    cargos.then(|| dir.to_path_buf())
}
