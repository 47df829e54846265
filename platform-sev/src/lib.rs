//! AMD SEV-TIO back end: the firmware speaks AMD's SEV-TIO command-buffer interface, and
//! private MMIO is tracked in the reverse map table (RMP).
//!
//! - [`abi`]: command IDs and command-buffer layouts (zerocopy structs, size-asserted).
//! - [`status`]: SEV status codes and the one mapping from tsm-core statuses.
//! - [`rmp`]: RMP entries for MMIO pages in caller-provided memory, and the core's secure
//!   table on them.
//! - [`fw`]: the dispatcher and the context tables (guest contexts, device and TDI contexts).
//! - [`guest_msg`]: the guest messages TIO_GUEST_REQUEST carries (MMIO_VALIDATE, ...).
//! - [`relay`]: the SPDM request and response buffers of `spdm_ctrl`, as the Linux host reads
//!   and writes them, around the core's relayed DOE objects.
//! - [`memory`]: system memory as the firmware reaches it (command inputs and outputs).
//! - [`host`]: the host's side of the relay (the Linux reissue loop), for tests and the shim.
//! - [`pfn`]: the typed values bitfield entries take (a setter never sees a raw integer).
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![forbid(unsafe_code)]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

pub mod abi;
pub mod fw;
pub mod guest_msg;
pub mod host;
pub mod memory;
pub mod pfn;
pub mod relay;
pub mod rmp;
pub mod status;

pub use fw::Sev;
pub use rmp::{Rmp, RmpEntry};
pub use status::{Outcome, SevStatus};
pub use tsm_core;
/// The byte-layout crate the buffers derive from, for hosts that build buffers.
pub use zerocopy;

#[cfg(test)]
mod tests;
