//! tsm-core: the platform-neutral part of a firmware TEE Security Manager.
//!
//! It keeps devices, their TDISP interfaces (TDIs) and confidential guests in fixed tables,
//! owns the private MMIO of bound TDIs through a platform's secure table ([`SecureTable`]:
//! S-EPT on TDX, RMP on SEV), refuses every host request that would steal a bound page, or
//! unmap or block one while the device can still reach the guest ([`Error::TdiBound`]), and
//! provides the bounded, idempotent unbind that returns a
//! device to the host. Platforms drive it through their own calling convention.
//!
//! # A TDI's life, on the in-memory table
//!
//! The firmware over [`mem_table::MemTable`] (a platform gives its S-EPT or RMP instead), with
//! the host that relays its TDISP requests to the [`device_model::ModelDevice`]
//! ([`relay::host::Relayed`]): bind, map, a host unmap of the bound page refused with
//! [`Error::TdiBound`] and nothing changed, unbind, and then the host may have the page back.
//!
//! ```
//! use tsm_core::device_model::ModelDevice;
//! use tsm_core::mem_table::MemTable;
//! use tsm_core::relay::host::Relayed;
//! use tsm_core::{Completion, Error, Gpa, Hpa, MmioRange, PageSize, RequesterId};
//!
//! # fn main() -> Result<(), Error> {
//! // Room for 64 leaves; the table is the firmware's, the device is on the host's side.
//! let fw = Relayed::new(MemTable::<64>::new(), ModelDevice::model());
//! let guest = fw.create_guest()?;
//! let rid = RequesterId::try_new(0, 3, 0, 0)?; // 0000:03:00.0
//! let bar = MmioRange::from_raw(0x8000_0000, 16)?; // 64 KiB BAR at 2 GiB
//! let device = fw.create_device(rid, &[bar])?;
//! let tdi = fw.create_tdi(device, rid)?;
//!
//! // The device reports its first 4 KiB as private MMIO; bind runs LOCK and the report
//! // through the host's relay and leaves the TDI CONFIG_LOCKED, owned by the guest.
//! let private = MmioRange::from_raw(0x8000_0000, 1)?;
//! fw.with_device(|d| d.report_ranges(rid, &[private]))?;
//! fw.bind(tdi, guest)?;
//! let (gpa, hpa) = (Gpa::try_new(0x10_0000_0000)?, Hpa::try_new(0x8000_0000)?);
//! fw.map_mmio(tdi, guest, gpa, hpa, PageSize::Size4K)?;
//! assert_eq!(fw.owner_of(hpa, PageSize::Size4K)?, Some(tdi));
//!
//! // The host may not take the page back while the TDI is bound: refused, nothing changed.
//! let before = fw.snapshot()?;
//! assert_eq!(fw.host_unmap(guest, gpa, PageSize::Size4K), Err(Error::TdiBound));
//! assert_eq!(fw.snapshot()?, before);
//! assert!(fw.leaf(guest, gpa)?.is_some());
//!
//! // Unbind blocks the leaf, sends STOP_INTERFACE (relayed), flushes and removes it.
//! assert_eq!(fw.unbind(tdi)?, Completion::Done);
//! assert_eq!(fw.leaf(guest, gpa)?, None);
//! assert_eq!(fw.owner_of(hpa, PageSize::Size4K)?, None);
//! fw.host_zap(bar)?; // the host may now zap and reset the device
//! # Ok(())
//! # }
//! ```
//!
//! # Embedding
//!
//! What a firmware supplies, and what it gets:
//!
//! - **Its second-level table**: an implementation of [`SecureTable`] (the S-EPT on TDX,
//!   `platform_tdx::sept::Sept`; the RMP on SEV, in `platform-sev`). [`mem_table::MemTable`]
//!   is the in-memory one for tests and for the boot kernel's replay.
//! - **Its SPDM session** with each device: an implementation of [`SecureSession`] (seal,
//!   open, record length, the LOCK's secret, the report digest), which owns the keys.
//! - **The transport is the host's.** The firmware never touches a mailbox: an operation that
//!   needs the device ([`Tsm::bind`], [`Tsm::unbind`], [`Tsm::guest_start`], ...) writes a
//!   sealed request into a buffer of [`MAX_RELAY_BYTES`] and returns
//!   [`Completion::Relay`]`(n)`; the host sends those `n` bytes to the device's DOE mailbox and
//!   hands its answer (or `None`) to [`Tsm::device_response`], which returns the next `Relay`
//!   or the operation's end ([`relay`] has the layers). The platform crate maps this onto its
//!   calling convention (a SEAMCALL leaf, a PSP command).
//! - **Memory that is never MMIO** (its own image, the pools it hands over):
//!   [`ReservedMemory`], given to [`Tsm::with_reserved`].
//!
//! Capacities are fixed at build time, in [`capacity`] ([`capacity::MAX_DEVICES`],
//! [`capacity::MAX_TDIS`], [`capacity::MAX_GUESTS`], [`capacity::MAX_OWNED_RANGES`], ...);
//! running out is a status ([`Error::DeviceTableFull`], [`Error::TdiTableFull`],
//! [`Error::GuestTableFull`], [`Error::OwnershipTableFull`], ...), never a panic; change them
//! by editing that module. Every table is a fixed array, so a
//! `Tsm` is large (about 80-97 KiB; see [`Tsm`]'s "Size"): keep it in a `static` (both
//! constructors are `const fn`), or in memory the platform hands over, never in a local on a
//! 16-64 KiB firmware stack. No heap anywhere.
//!
//! Errors: every entry point returns [`TsmResult`]: [`Completion`] or an [`Error`], each
//! with the operand it names ([`Operand`] for `Busy`); [`status`] has the table of codes,
//! and a refusal changes nothing. Logging: below.
//!
//! Test support, not cryptography: [`ModelSession`] seals with a key that is in the public
//! source, and [`device_model`] is a device for tests. Both are compiled in so the workspace's
//! tests, the boot kernel and the examples can use them; a firmware image must give its own
//! [`SecureSession`] and never ship `Tsm<_, ModelSession>`.
//!
//! The embedder's relay loop, over a `static` firmware (the model session and device stand in
//! for the platform's session and the host's mailbox):
//!
//! ```
//! use tsm_core::device_model::ModelDevice;
//! use tsm_core::mem_table::MemTable;
//! use tsm_core::{Completion, Error, MAX_RELAY_BYTES, MmioRange, ModelSession, RequesterId, Tsm};
//!
//! // The firmware's one instance, built at compile time. A firmware gives its S-EPT or RMP
//! // and its own SPDM session here.
//! static TSM: Tsm<MemTable<64>, ModelSession> = Tsm::new(MemTable::new(), ModelSession::model());
//!
//! # fn main() -> Result<(), Error> {
//! let mut device = ModelDevice::model(); // on the host's side of the DOE mailbox
//! let guest = TSM.create_guest()?;
//! let rid = RequesterId::try_new(0, 3, 0, 0)?;
//! let bar = MmioRange::from_raw(0x8000_0000, 16)?;
//! let tdi = TSM.create_tdi(TSM.create_device(rid, &[bar])?, rid)?;
//! device.report_ranges(rid, &[MmioRange::from_raw(0x8000_0000, 1)?]);
//!
//! // The firmware writes each request into `request`; the host relays it and passes the
//! // device's answer back until the operation ends.
//! let mut request = [0u8; MAX_RELAY_BYTES];
//! let mut answer = [0u8; MAX_RELAY_BYTES];
//! let mut step = TSM.bind(tdi, guest, &mut request)?;
//! while let Completion::Relay(n) = step {
//!     let len = device.answer(request.get(..n).unwrap_or_default(), &mut answer);
//!     let response = len.and_then(|len| answer.get(..len));
//!     step = TSM.device_response(tdi, response, &mut request)?;
//! }
//! assert_eq!(step, Completion::Done);
//! # Ok(())
//! # }
//! ```
//!
//! # Logging
//!
//! Through the `log` facade, for an integrator to see why an operation failed: `warn` when a
//! device fails an exchange (unresponsive, refusing, malformed), reports ERROR or disagrees
//! with the firmware's state, and when a forced unbind or the platform cuts an IDE stream;
//! `debug` for a device response the core refuses, and in the platform crates for every
//! refused leaf or command (one line: the leaf or command, the status by name, the operand).
//! Nothing on a success path, refusals of host input only at `debug` (a host repeats them at
//! will; a `warn` costs it a whole failed exchange), and never a session key, nonce or lock
//! secret. Without a logger each call site is one load and
//! compare; `log`'s `max_level_*` / `release_max_level_*` features remove them at build time.
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
pub mod dma;
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
pub use secure_table::{Leaf, LeafState, Run, SecureTable, TableError};
pub use status::{Completion, Error, Operand, TsmResult};
pub use transport::{DeviceFault, InterfaceId, ReportedRange};
pub use tsm::Tsm;

#[cfg(test)]
mod dma_tests;
#[cfg(test)]
mod shard_tests;
#[cfg(test)]
mod tests;
