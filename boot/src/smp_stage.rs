//! The concurrent stage every CPU runs at the same time (after a start barrier, under a
//! deadline enforced by `smp.rs`). For now: a shared counter taken with `try_lock`, counting
//! how often the lock was busy. To be replaced by firmware operations on shared state.

use core::fmt::{self, Write};

/// Increments each CPU performs.
const ITERATIONS: u32 = 20_000;

static COUNTER: spin::Mutex<u64> = spin::Mutex::new(0);

/// What one CPU did in the stage.
#[derive(Clone, Copy, Debug)]
pub struct CpuResult {
    /// Operations completed.
    pub ops: u32,
    /// Attempts that found the shared state busy.
    pub busy: u32,
    /// Operations that went wrong.
    pub failed: u32,
}

impl fmt::Display for CpuResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ops, {} busy, {} failed",
            self.ops, self.busy, self.failed
        )
    }
}

/// Runs on every CPU (`cpu` in `0..ncpu`, 0 = BSP) at once.
pub fn run_concurrent(_cpu: usize, _ncpu: usize) -> CpuResult {
    let mut result = CpuResult {
        ops: 0,
        busy: 0,
        failed: 0,
    };
    while result.ops < ITERATIONS {
        match COUNTER.try_lock() {
            Some(mut counter) => {
                *counter += 1;
                result.ops += 1;
            }
            None => {
                result.busy = result.busy.saturating_add(1);
                core::hint::spin_loop();
            }
        }
    }
    result
}

/// Checks the shared state once every CPU finished; true if consistent.
pub fn verify(ncpu: usize, out: &mut dyn Write) -> bool {
    let total = *COUNTER.lock();
    let expected = ncpu as u64 * u64::from(ITERATIONS);
    let _ = writeln!(out, "smp: shared counter {total}, expected {expected}");
    total == expected
}
