//! Bare-metal boot (skeleton until the boot issue lands): on `x86_64-unknown-none` this will be
//! the PVH kernel; on the host it is a stub so `cargo test --workspace` builds every member.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {
        core::hint::spin_loop();
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("boot: this kernel runs only on x86_64-unknown-none under QEMU");
}
