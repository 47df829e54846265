//! The host shim: a line-based scenario language, its interpreter, and the backends it drives.
//! no_std and heap-free, so the QEMU boot replays the same scenarios as the host tests.
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

pub mod backend;
pub mod backend_sev;
pub mod backend_tdx;
pub mod interpreter;
pub mod invariants;
pub mod scenario;
pub mod suite;
pub mod workload;
