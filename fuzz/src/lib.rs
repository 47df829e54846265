//! Fuzz targets for the firmware (cargo-fuzz, libFuzzer; README.md, "Fuzzing"). Each target's
//! logic lives here so that the seed generator and the seed test run exactly what libFuzzer
//! runs:
//!
//! - [`tdx`]: `tdx_dispatcher`, SEAMCALL/TDCALL sequences through the TDX register dispatcher,
//!   relayed through shared request/response pages;
//! - [`sev`]: `sev_dispatcher`, SEV-TIO command sequences from templates (guest requests
//!   included) with their fields mutated, relayed through the SPDM buffers;
//! - [`relay`]: `relay_answers`, arbitrary and mangled answers handed to the core's
//!   `device_response` at every step of bind, start, check and unbind;
//! - [`wire`]: `tdisp_request`, `tdisp_response`, `tdisp_report`, `report_portions`, every
//!   TDISP decoder against an independent reading of the format, and a relayed bind reading a
//!   report in scripted portions.
//!
//! The host's side of the relay, and the oracle on answers, is [`answer`]. The targets check
//! after every call; [`exempt`] lists what a call may change without succeeding outright, in
//! one place.

pub mod answer;
pub mod common;
pub mod enc;
pub mod exempt;
pub mod relay;
pub mod seeds;
pub mod sev;
pub mod tdx;
pub mod wire;
