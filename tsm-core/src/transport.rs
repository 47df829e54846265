//! The firmware's side of TDISP: the requests it sends to a device's security manager. The
//! encoding on the wire belongs to whoever implements [`TdispDevice`].

use crate::capacity::MAX_RANGES_PER_TDI;
use crate::ids::RequesterId;
use crate::lifecycle::TdispState;
use crate::mmio::MmioRange;
use crate::status::Error;

/// A TDISP interface ID: the function's requester ID (PCIe 6.x 11.3.4, INTERFACE_ID).
pub type InterfaceId = RequesterId;

/// How a TDISP request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceFault {
    /// No answer within the transport's bounded retries.
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

/// The TDISP requests the lifecycle needs. Each returns `Ok` only when the interface is in the
/// request's target state afterwards.
pub trait TdispDevice {
    /// LOCK_INTERFACE: CONFIG_UNLOCKED -> CONFIG_LOCKED.
    fn lock_interface(&mut self, iface: InterfaceId) -> Result<(), DeviceFault>;
    /// GET_DEVICE_INTERFACE_REPORT: every MMIO range of the interface's report, private and
    /// shared, from the device's own report, validated. Only meaningful while CONFIG_LOCKED or
    /// RUN.
    fn interface_ranges(
        &mut self,
        iface: InterfaceId,
    ) -> Result<heapless::Vec<ReportedRange, MAX_RANGES_PER_TDI>, DeviceFault>;
    /// GET_DEVICE_INTERFACE_STATE.
    fn interface_state(&mut self, iface: InterfaceId) -> Result<TdispState, DeviceFault>;
    /// START_INTERFACE: CONFIG_LOCKED -> RUN.
    fn start_interface(&mut self, iface: InterfaceId) -> Result<(), DeviceFault>;
    /// STOP_INTERFACE: CONFIG_LOCKED, RUN or ERROR -> CONFIG_UNLOCKED. `Ok` also when the
    /// interface is already CONFIG_UNLOCKED (a conventional reset got there first).
    fn stop_interface(&mut self, iface: InterfaceId) -> Result<(), DeviceFault>;
}
