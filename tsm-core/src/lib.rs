//! tsm-core: the platform-neutral part of a firmware TEE Security Manager.
//!
//! It keeps devices, their TDISP interfaces (TDIs) and confidential guests in fixed tables,
//! owns the private MMIO of bound TDIs through a platform's secure table ([`SecureTable`]:
//! S-EPT on TDX, RMP on SEV), refuses every host request that would steal a bound page, or
//! unmap or block one while the device can still reach the guest ([`Error::TdiBound`]), and
//! provides the bounded, idempotent unbind that returns a
//! device to the host. Platforms drive it through their own calling convention.
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

pub mod addr;
pub mod capacity;
pub mod device_model;
pub mod exchange;
pub mod functions;
pub mod guest;
pub mod ids;
pub mod lifecycle;
pub mod mem_table;
pub mod mmio;
pub mod ownership;
pub mod page;
pub mod registry;
pub mod relay;
pub mod reserved;
pub mod secure_table;
pub mod status;
pub mod tdisp;
pub mod transport;
pub mod tsm;
mod unbind;

pub use addr::{Gpa, Hpa};
pub use exchange::{BindStep, DeviceOp, Exchange};
pub use functions::{DeviceFunctions, VfLayout};
pub use guest::{AcceptCheck, GuestField};
pub use ids::{DeviceId, GuestId, Handle, RequesterId, TdiId};
pub use lifecycle::{TdiState, TdispState};
pub use mmio::MmioRange;
pub use page::PageSize;
pub use registry::IdeStream;
pub use relay::{MAX_RELAY_BYTES, ModelSession, SecureSession};
pub use reserved::ReservedMemory;
pub use secure_table::{Leaf, LeafState, SecureTable, TableError};
pub use status::{Completion, Error, Operand, TsmResult};
pub use transport::{DeviceFault, InterfaceId, ReportedRange};
pub use tsm::Tsm;

#[cfg(test)]
mod tests;
