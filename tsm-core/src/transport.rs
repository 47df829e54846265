//! The firmware's side of TDISP: the requests it sends to a device's security manager. The
//! encoding on the wire belongs to whoever implements [`TdispDevice`].

use crate::ids::RequesterId;
use crate::status::Error;

/// A TDISP interface ID: the function's requester ID (PCIe 6.x 11.3.4, INTERFACE_ID).
pub type InterfaceId = RequesterId;

/// How a TDISP request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceFault {
    /// No answer within the transport's bounded retries.
    NoResponse,
    /// The device answered TDISP_ERROR (or an answer that is not the one asked for).
    Refused,
}

impl From<DeviceFault> for Error {
    fn from(f: DeviceFault) -> Self {
        match f {
            DeviceFault::NoResponse => Error::DeviceUnresponsive,
            DeviceFault::Refused => Error::DeviceRefused,
        }
    }
}

/// The TDISP requests the lifecycle needs. Each returns `Ok` only when the interface is in the
/// request's target state afterwards.
pub trait TdispDevice {
    /// LOCK_INTERFACE: CONFIG_UNLOCKED -> CONFIG_LOCKED.
    fn lock_interface(&mut self, iface: InterfaceId) -> Result<(), DeviceFault>;
    /// START_INTERFACE: CONFIG_LOCKED -> RUN.
    fn start_interface(&mut self, iface: InterfaceId) -> Result<(), DeviceFault>;
    /// STOP_INTERFACE: CONFIG_LOCKED, RUN or ERROR -> CONFIG_UNLOCKED. `Ok` also when the
    /// interface is already CONFIG_UNLOCKED (a conventional reset got there first).
    fn stop_interface(&mut self, iface: InterfaceId) -> Result<(), DeviceFault>;
}
