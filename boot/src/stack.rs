//! Statically reserved per-CPU stacks.

use core::cell::UnsafeCell;

/// `CPUS` stacks of `SIZE` bytes each, 16-byte aligned.
#[repr(C, align(16))]
pub struct Stacks<const SIZE: usize, const CPUS: usize>(UnsafeCell<[[u8; SIZE]; CPUS]>);

// SAFETY: the memory is only ever used as stacks, each by the one CPU whose index selects it;
// Rust code never reads or writes it through this type.
unsafe impl<const SIZE: usize, const CPUS: usize> Sync for Stacks<SIZE, CPUS> {}

impl<const SIZE: usize, const CPUS: usize> Stacks<SIZE, CPUS> {
    /// Zero-filled stacks (placed in .bss).
    pub const fn new() -> Self {
        Self(UnsafeCell::new([[0; SIZE]; CPUS]))
    }

    /// Top (highest address, exclusive) of stack `cpu`; `None` if out of range.
    pub fn top(&self, cpu: usize) -> Option<u64> {
        if cpu >= CPUS {
            return None;
        }
        let base = self.0.get() as u64;
        // cpu < CPUS, so the sum stays inside the array (a few hundred KiB at most).
        Some(base + ((cpu + 1) * SIZE) as u64)
    }
}
