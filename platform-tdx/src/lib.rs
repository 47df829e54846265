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
//! - [`devif`]: the TDX-IO device-interface leaves with the public operand encodings (TDIs by
//!   TDISP function ID, `devif_id_t`, `devif_req_in_t`/`_out_t`, `devif_rsp_in_t`/`_out_t`);
//! - [`td`]: the TD teardown leaves (VPFLUSHDONE, CACHE.WB, KEY.FREEID, PAGE.RECLAIM,
//!   PAGE.WBINVD) and the TD's lifecycle;
//! - [`link`]: the TDX Connect link leaves: the SPDM session (TDH.SPDM.CONNECT, DISCONNECT,
//!   MNG) and the device's IDE stream (TDH.IDE.STREAM.CREATE, KM, BLOCK, DELETE);
//! - `capi` (feature `capi`; also built for the crate's own tests, which run it under Miri):
//!   the `extern "C"` entry points of the static library.
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
