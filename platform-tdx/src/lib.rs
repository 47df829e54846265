//! Intel TDX back end of the TEE Security Manager: the firmware role the TDX module plays for
//! TDX Connect device assignment.
//!
//! - [`bits`]: the entries' multi-bit field values, as types no wider than their fields;
//! - [`ept`]: the S-EPT entry (architectural EPT bits plus the TDX secure state);
//! - [`frames`], [`radix`]: table pages from caller-provided memory, and the shared walker;
//! - [`sept`]: one S-EPT per TD and the MMIO metadata table, implementing
//!   [`tsm_core::SecureTable`];
//! - [`status`]: TDX completion statuses, and the one mapping from core statuses to them;
//! - [`module`]: the firmware object, [`TdxModule`]: the core over the S-EPT and the
//!   platform's SPDM session, with each TDI's record (function ID, TD, private pages);
//! - [`abi`]: the SEAMCALL-style register block and the leaf dispatcher;
//! - [`dmar`]: trusted DMA: the trusted IOMMU's PASID entries of the TDIs and the DMAR / IQ
//!   leaves;
//! - [`devif`]: the TDX-IO device-interface leaves with the public operand encodings (TDIs by
//!   TDISP function ID, `devif_id_t`, `devif_req_in_t`/`_out_t`, `devif_rsp_in_t`/`_out_t`);
//! - [`td`]: the TD teardown leaves (VPFLUSHDONE, CACHE.WB, KEY.FREEID, PAGE.RECLAIM,
//!   PAGE.WBINVD) and the TD's lifecycle;
//! - [`link`]: the TDX Connect link leaves: the SPDM session (TDH.SPDM.CONNECT, DISCONNECT,
//!   MNG) and the device's IDE stream (TDH.IDE.STREAM.CREATE, KM, BLOCK, DELETE);
//! - `capi` (feature `capi`; also built for the crate's own tests, which run it under Miri):
//!   the `extern "C"` entry points of the static library.
//!
//! # A pool sized for its leaves, and a TDI's life on the S-EPT
//!
//! The table pages come from memory the platform hands the pool; [`sept::Sept`] says how many
//! a run of leaves takes ([`sept::Sept::pool_pages_needed`] for leaves mapped anywhere). The
//! core, reached through [`TdxModule`]'s `Deref`, then binds a TDI (its TDISP requests relayed
//! to the model device), maps its two pages, refuses the host's unmap with `TdiBound` and a
//! map the pool has no room for with `SecureTableFull`, both changing nothing, and unbinds,
//! which gives every table page back: the metadata pages at once, the S-EPT pages at the TD's
//! next TRACK (a walker may still cache an entry naming them), its root with the TD. The
//! SEAMCALL leaves reach the same calls
//! ([`abi::Dispatcher`]; `tests/dispatcher.rs`).
//!
//! ```
//! use platform_tdx::TdxModule;
//! use platform_tdx::frames::{FramePool, Page};
//! use platform_tdx::sept::{Sept, SeptLevels};
//! use platform_tdx::tsm_core::device_model::ModelDevice;
//! use platform_tdx::tsm_core::relay::host::{RelayHost, SharedDevice};
//! use platform_tdx::tsm_core::{Completion, Error, Gpa, Hpa, MmioRange, ModelSession};
//! use platform_tdx::tsm_core::{PageSize, RequesterId, ReservedMemory};
//!
//! # fn main() -> Result<(), Error> {
//! const POOL: u64 = 0x1_0000_0000; // physical address of the pool's first page
//! const BAR: u64 = 0x8000_0000;
//! const GPA: u64 = 0x10_0000_0000;
//! // Two 4 KiB leaves at GPA and BAR: 4 S-EPT and 5 MMIOMT table pages, and a count page.
//! let tables = Sept::table_pages_for_run(SeptLevels::Four, GPA, BAR, 2, PageSize::Size4K);
//! let pages = tables.and_then(FramePool::pages_for).ok_or(Error::Inconsistent)?;
//! assert_eq!(pages, 10);
//! let mut memory = vec![Page::ZERO; pages];
//! let pool = FramePool::new(&mut memory, POOL).ok_or(Error::Inconsistent)?;
//! // The pool is never MMIO: a BAR, report or map touching it is refused.
//! let reserved = ReservedMemory::from_ranges(&[MmioRange::from_raw(POOL, pages as u64)?])?;
//! let fw = TdxModule::with_reserved(Sept::new(pool, SeptLevels::Four), ModelSession::model(), reserved);
//! let device = SharedDevice::new(ModelDevice::model());
//! let host = RelayHost::new(&fw, &device);
//!
//! let td = fw.create_guest()?;
//! let rid = RequesterId::try_new(0, 3, 0, 0)?;
//! let dev = fw.create_device(rid, &[MmioRange::from_raw(BAR, 16)?])?;
//! let tdi = fw.create_tdi(dev, rid)?;
//! let private = MmioRange::from_raw(BAR, 4)?; // the device reports 16 KiB of private MMIO
//! host.with_device(|d| d.report_ranges(rid, &[private]))?;
//! host.bind(tdi, td)?;
//! let page = |i: u64| Ok::<_, Error>((Gpa::try_new(GPA + i * 0x1000)?, Hpa::try_new(BAR + i * 0x1000)?));
//! for i in 0..2 {
//!     let (gpa, hpa) = page(i)?;
//!     fw.map_mmio(tdi, td, gpa, hpa, PageSize::Size4K)?;
//! }
//! let image = || fw.snapshot_with(|s| (s.pool().pages().copied().collect::<Vec<_>>(), s.bookkeeping()));
//! let before = image()?;
//! // The host may not unmap a bound page; a page 1 GiB away needs tables the pool lacks.
//! assert_eq!(fw.host_unmap(td, page(0)?.0, PageSize::Size4K), Err(Error::TdiBound));
//! let far = Gpa::try_new(GPA + 0x4000_0000)?;
//! assert_eq!(fw.map_mmio(tdi, td, far, page(2)?.1, PageSize::Size4K), Err(Error::SecureTableFull));
//! assert!(image()? == before);
//!
//! assert_eq!(host.unbind(tdi)?, Completion::Done);
//! assert_eq!(fw.leaf(td, page(0)?.0)?, None);
//! // The S-EPT's emptied table pages wait for the TD's next TRACK, then go back; its root
//! // stays the TD's until the TD is gone.
//! assert_eq!(fw.host_track(td)?, Completion::Done);
//! let free = || fw.with_table(|s| (s.pool().free_frames(), s.pool().total_frames()));
//! assert_eq!(free()?, (8, 9));
//! fw.destroy_guest(td)?;
//! assert_eq!(free()?, (9, 9)); // every table page back in the pool
//! # Ok(())
//! # }
//! ```
#![cfg_attr(not(any(test, feature = "std")), no_std)]
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
pub mod bits;
#[cfg(any(feature = "capi", test))]
pub mod capi;
pub mod devif;
pub mod dmar;
pub mod ept;
pub mod frames;
pub mod link;
pub mod module;
pub mod radix;
pub mod sept;
pub mod status;
pub mod td;

pub use module::{DevifEntry, DevifPages, TdxModule};
pub use tsm_core;
