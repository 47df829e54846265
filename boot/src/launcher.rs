//! Host side of `cargo run -p boot [-- words]`: adds the bare-metal target with rustup, then
//! runs `cargo run -p boot --target x86_64-unknown-none -- words` from the workspace root,
//! which builds the kernel and boots it through `run-qemu.sh` (the target's cargo runner).

use std::path::Path;
use std::process::{Command, ExitCode};

const TARGET: &str = "x86_64-unknown-none";

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
    let status = Command::new(cargo)
        .args(["run", "-p", "boot", "--target", TARGET, "--"])
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
