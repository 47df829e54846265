//! Fuzz targets for the firmware (cargo-fuzz, libFuzzer; README.md, "Fuzzing"). Each target's
//! logic lives here so that the seed generator and the seed test run exactly what libFuzzer
//! runs:
//!
//! - [`tdx`]: `tdx_dispatcher`, SEAMCALL/TDCALL sequences through the TDX register dispatcher;
//! - [`sev`]: `sev_dispatcher`, SEV-TIO command sequences from templates (guest requests
//!   included) with their fields mutated;
//! - [`wire`]: `tdisp_request`, `tdisp_response`, `tdisp_report`, `report_portions`, every
//!   TDISP decoder against an independent reading of the format.
//!
//! The dispatcher targets check after every call; [`exempt`] lists the refusals that may
//! change something, in one place.

pub mod answer;
pub mod common;
pub mod enc;
pub mod exempt;
pub mod relay;
pub mod seeds;
pub mod sev;
pub mod tdx;
pub mod wire;
