//! Bare-metal boot. On `x86_64-unknown-none` this is a PVH kernel QEMU boots with `-kernel`: it
//! sets up serial, exceptions, a frame pool and the other CPUs, runs the test stages and leaves
//! QEMU with a pass/fail code (see boot/README.md). On the host it is a launcher that builds the
//! kernel and boots it through `run-qemu.sh`, so `cargo run -p boot` works too.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
#[macro_use]
mod serial;
#[cfg(target_os = "none")]
mod acpi;
#[cfg(target_os = "none")]
mod entry;
#[cfg(target_os = "none")]
mod exit;
#[cfg(target_os = "none")]
mod frames;
#[cfg(target_os = "none")]
mod gdt;
#[cfg(target_os = "none")]
mod idt;
#[cfg(target_os = "none")]
mod logger;
#[cfg(target_os = "none")]
mod paging;
#[cfg(target_os = "none")]
mod pvh;
#[cfg(target_os = "none")]
mod shim;
#[cfg(target_os = "none")]
mod smp;
#[cfg(target_os = "none")]
mod smp_stage;
#[cfg(target_os = "none")]
mod stack;
#[cfg(target_os = "none")]
mod time;

#[cfg(target_os = "none")]
pub use kernel::{START_INFO, kmain};

#[cfg(target_os = "none")]
mod kernel;

#[cfg(not(target_os = "none"))]
mod launcher;

#[cfg(not(target_os = "none"))]
fn main() -> std::process::ExitCode {
    launcher::main()
}
