//! AMD SEV-TIO back end (skeleton): the command-buffer ABI and RMP arrive with the platform-sev
//! issue. Today it only re-exports the core so the crate graph is in place.
#![cfg_attr(not(any(test, feature = "std")), no_std)]

pub use tsm_core;
