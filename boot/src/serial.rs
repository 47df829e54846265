//! The serial console on COM1 (0x3f8), driven by `uart_16550`: a `core::fmt::Write` sink and
//! the `kprint!` / `kprintln!` macros. Lines from different CPUs are kept whole by a lock.

use core::fmt::{self, Write};
use uart_16550::backend::PioBackend;
use uart_16550::{BaudRate, Config, InitError, Uart16550};

/// The first PC serial port's I/O base (QEMU's `-serial stdio`).
const COM1: u16 = 0x3f8;

/// A handle on COM1; it does no I/O until used.
const fn com1() -> Uart16550<PioBackend> {
    // SAFETY: COM1's eight registers (0x3f8-0x3ff) belong to this kernel for the whole run.
    match unsafe { Uart16550::new_port(COM1) } {
        Ok(uart) => uart,
        // Only for a base whose eight registers wrap past port 0xffff: not COM1 (const-checked).
        Err(_) => panic!("COM1 is a valid port base"),
    }
}

/// COM1 behind the lock that keeps lines from different CPUs whole.
static CONSOLE: spin::Mutex<Uart16550<PioBackend>> = spin::Mutex::new(com1());

/// Programs COM1 for 115200 baud, 8N1, FIFO on (14-byte threshold), interrupts off. Fails if
/// no UART answers at COM1.
pub fn init() -> Result<(), InitError> {
    CONSOLE.lock().init(Config {
        baud_rate: BaudRate::Baud115200,
        ..Config::DEFAULT
    })
}

/// Sends `s` with every `\n` as `\r\n` (a terminal's line end), in FIFO-sized bursts.
fn send(uart: &mut Uart16550<PioBackend>, s: &str) {
    let mut lines = s.split('\n');
    if let Some(first) = lines.next() {
        uart.send_bytes_exact(first.as_bytes());
    }
    for line in lines {
        uart.send_bytes_exact(b"\r\n");
        uart.send_bytes_exact(line.as_bytes());
    }
}

/// Unlocked COM1 writer: use [`Console`] or the macros unless the lock may be held (faults).
/// It writes through a handle of its own on the UART [`init`] already programmed.
pub struct Raw;

impl Write for Raw {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        send(&mut com1(), s);
        Ok(())
    }
}

/// Locked COM1 writer: each `write_str` call is atomic with respect to other CPUs.
pub struct Console;

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        send(&mut CONSOLE.lock(), s);
        Ok(())
    }
}

/// Locked writer for one formatted unit: holds the lock across every piece of it.
struct Locked<'a>(&'a mut Uart16550<PioBackend>);

impl Write for Locked<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        send(self.0, s);
        Ok(())
    }
}

/// Prints formatted text as one unit (used by the macros and the logger).
pub fn print(args: fmt::Arguments) {
    let mut uart = CONSOLE.lock();
    // Sending never fails.
    let _ = Locked(&mut uart).write_fmt(args);
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
