//! Time from the TSC, calibrated once against PIT channel 2.

use core::sync::atomic::{AtomicU64, Ordering};
use x86_64::instructions::port::{Port, PortWriteOnly};

static TSC_PER_MS: AtomicU64 = AtomicU64::new(0);

/// The time-stamp counter.
pub fn now() -> u64 {
    // SAFETY: rdtsc only reads the counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Measures the TSC rate over 10 ms of PIT channel 2 (on the BSP, before the APs start).
pub fn calibrate() -> u64 {
    const PIT_HZ: u64 = 1_193_182;
    const MS: u64 = 10;
    let count = (PIT_HZ * MS / 1000) as u16;
    // SAFETY: the PIT and port 0x61 belong to this kernel; channel 2 drives nothing but the
    // (disabled) speaker.
    let ticks = unsafe {
        let mut control = Port::<u8>::new(0x61); // NMI status and PC speaker control
        let mut mode = PortWriteOnly::<u8>::new(0x43);
        let mut channel2 = Port::<u8>::new(0x42);
        let gate = control.read();
        control.write((gate & !0x02) | 0x01); // speaker off, channel 2 gate on
        mode.write(0xB0); // channel 2, lobyte/hibyte, mode 0 (interrupt on terminal count)
        channel2.write(count as u8);
        channel2.write((count >> 8) as u8); // counting starts now
        let start = now();
        while control.read() & 0x20 == 0 {
            core::hint::spin_loop(); // OUT2 goes high at terminal count
        }
        now().wrapping_sub(start)
    };
    let per_ms = (ticks / MS).max(1);
    TSC_PER_MS.store(per_ms, Ordering::Relaxed);
    per_ms
}

/// The TSC value `ms` milliseconds from now.
pub fn deadline_ms(ms: u64) -> u64 {
    now().saturating_add(ms.saturating_mul(TSC_PER_MS.load(Ordering::Relaxed)))
}

/// Whether `deadline` (a TSC value) has passed.
pub fn passed(deadline: u64) -> bool {
    now() >= deadline
}

/// Milliseconds since the TSC read `start`.
pub fn ms_since(start: u64) -> u64 {
    now().saturating_sub(start) / TSC_PER_MS.load(Ordering::Relaxed).max(1)
}

/// Busy-waits `us` microseconds.
pub fn delay_us(us: u64) {
    let ticks = us.saturating_mul(TSC_PER_MS.load(Ordering::Relaxed)) / 1000;
    let end = now().saturating_add(ticks);
    while now() < end {
        core::hint::spin_loop();
    }
}
