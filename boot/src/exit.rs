//! Leaving QEMU through the isa-debug-exit device (`-device isa-debug-exit,iobase=0xf4,
//! iosize=0x04`). QEMU exits with status `(code << 1) | 1`: PASS gives 33, FAIL gives 35. A
//! triple fault under `-no-reboot` exits with 0, so 0 never means pass; the runner maps 33 to 0
//! and everything else to failure.

use x86_64::instructions::port::PortWriteOnly;

const DEBUG_EXIT_PORT: u16 = 0xf4;
/// Written on success: QEMU exit status 33.
pub const PASS: u32 = 0x10;
/// Written on failure: QEMU exit status 35.
pub const FAIL: u32 = 0x11;

/// Ends the QEMU run with `code`; halts forever if the exit device is missing.
pub fn exit(code: u32) -> ! {
    // SAFETY: the debug-exit port only ends the VM; nothing else listens there.
    unsafe { PortWriteOnly::<u32>::new(DEBUG_EXIT_PORT).write(code) };
    halt_forever()
}

/// Ends the run as a pass.
pub fn pass() -> ! {
    exit(PASS)
}

/// Ends the run as a failure.
pub fn fail() -> ! {
    exit(FAIL)
}

/// Stops this CPU for good (interrupts off, halt).
pub fn halt_forever() -> ! {
    x86_64::instructions::interrupts::disable();
    loop {
        x86_64::instructions::hlt(); // interrupts off: an SMI may wake it, then it halts again
    }
}
