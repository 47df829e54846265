//! Host shim (skeleton): the scenario language arrives with the core issue.
#![cfg_attr(not(any(test, feature = "std")), no_std)]
