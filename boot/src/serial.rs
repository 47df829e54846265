//! The serial console on COM1 (0x3f8): a `core::fmt::Write` sink and the `kprint!` /
//! `kprintln!` macros. Lines from different CPUs are kept whole by a lock.

use crate::port::{inb, outb};
use core::fmt::{self, Write};

const COM1: u16 = 0x3f8;

/// Serialises whole lines between CPUs.
static LOCK: spin::Mutex<()> = spin::Mutex::new(());

/// Programs COM1 for 115200 baud, 8N1, FIFO on, interrupts off.
pub fn init() {
    // SAFETY: COM1 belongs to this kernel; the sequence is the standard 16550 set-up.
    unsafe {
        outb(COM1 + 1, 0x00); // interrupts off
        outb(COM1 + 3, 0x80); // DLAB on: next two writes are the divisor
        outb(COM1, 0x01); // divisor 1 = 115200 baud (low byte)
        outb(COM1 + 1, 0x00); //   (high byte)
        outb(COM1 + 3, 0x03); // DLAB off, 8 data bits, no parity, 1 stop bit
        outb(COM1 + 2, 0xC7); // FIFO on, cleared, 14-byte threshold
        outb(COM1 + 4, 0x03); // DTR | RTS
    }
}

fn write_byte(byte: u8) {
    // SAFETY: COM1 belongs to this kernel; reading LSR and writing THR have no other effect.
    unsafe {
        while inb(COM1 + 5) & 0x20 == 0 {
            core::hint::spin_loop(); // wait for an empty transmit holding register
        }
        outb(COM1, byte);
    }
}

/// Unlocked COM1 writer: use [`Console`] or the macros unless the lock may be held (faults).
pub struct Raw;

impl Write for Raw {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for byte in s.bytes() {
            if byte == b'\n' {
                write_byte(b'\r');
            }
            write_byte(byte);
        }
        Ok(())
    }
}

/// Locked COM1 writer: each `write_str` call is atomic with respect to other CPUs.
pub struct Console;

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let _guard = LOCK.lock();
        Raw.write_str(s)
    }
}

/// Prints formatted text as one unit (used by the macros).
pub fn print(args: fmt::Arguments) {
    let _guard = LOCK.lock();
    // Raw never fails.
    let _ = Raw.write_fmt(args);
}

/// Prints to the serial console.
#[allow(unused_macros)] // part of the console API for the stages
macro_rules! kprint {
    ($($arg:tt)*) => { $crate::serial::print(format_args!($($arg)*)) };
}

/// Prints a line to the serial console; the line is never interleaved with another CPU's.
macro_rules! kprintln {
    () => { $crate::serial::print(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::serial::print(format_args!("{}\n", format_args!($($arg)*))) };
}
