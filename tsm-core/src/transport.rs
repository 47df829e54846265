//! What the firmware learns from a device's security manager: how an exchange failed, and the
//! ranges an interface report names.

use crate::mmio::MmioRange;
use crate::status::Error;

pub use crate::functions::InterfaceId;

/// How a TDISP exchange failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceFault {
    /// No answer within the bounded attempts.
    NoResponse,
    /// The device answered TDISP_ERROR.
    Refused,
    /// The answer was not a well-formed response to the request (length, version, type,
    /// interface ID).
    Malformed,
    /// The interface report was well-formed but its content is not acceptable.
    BadReport(Error),
}

impl From<DeviceFault> for Error {
    fn from(f: DeviceFault) -> Self {
        match f {
            DeviceFault::NoResponse => Error::DeviceUnresponsive,
            DeviceFault::Refused => Error::DeviceRefused,
            DeviceFault::Malformed => Error::DeviceMalformed,
            DeviceFault::BadReport(e) => e,
        }
    }
}

/// One MMIO range of an interface report (PCIe 6.x 11.3.11, MMIO_RANGE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReportedRange {
    /// The host pages.
    pub range: MmioRange,
    /// Private to the TDI (TEE memory): not marked IS_NON_TEE_MEM. Only these are owned.
    pub private: bool,
}
