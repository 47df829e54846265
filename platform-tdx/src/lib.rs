//! Intel TDX back end (skeleton): the S-EPT, SEAMCALL-style ABI and C entry point arrive with
//! the platform-tdx issue. Today it only re-exports the core so the crate graph is in place.
#![cfg_attr(not(any(test, feature = "std")), no_std)]

pub use tsm_core;
