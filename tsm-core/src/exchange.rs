//! A TDI's one outstanding exchange with its device: which operation waits on the device, at
//! which step, under which sequence number, after how many unanswered attempts. It lives in
//! the TDI record, so every call returns to the host and the next one resumes here.

use crate::ids::GuestId;
use crate::status::Error;
use crate::tdisp::request;

/// Where a bind stands: the requests of PCIe 6.x 11.3.6-11.3.12 in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BindStep {
    /// STOP_INTERFACE first: an earlier bind may have left the interface locked. Any answer
    /// but silence goes on (an unlocked interface refuses STOP).
    Unlock,
    /// GET_TDISP_VERSION: the device must speak 1.0.
    Version,
    /// GET_TDISP_CAPABILITIES: the device must support the lock flags this firmware sets.
    Capabilities,
    /// LOCK_INTERFACE_REQUEST with this MMIO_REPORTING_OFFSET, derived from the session once,
    /// when the exchange begins ([`Requester::begin`](crate::tdisp::requester::Requester)):
    /// every re-send carries it and the answer is parsed with it, whatever the session says
    /// when asked again.
    Lock {
        /// The offset the device adds to every address it reports.
        offset: u64,
    },
    /// GET_DEVICE_INTERFACE_REPORT from `offset`.
    Report {
        /// Report bytes received so far.
        offset: u16,
    },
    /// STOP_INTERFACE to undo a LOCK the firmware will not keep (the report is refused, or the
    /// device garbled or lost its answer to LOCK or to a report request); the bind then fails
    /// with `error` whatever the device answers.
    Undo {
        /// The bind's status.
        error: Error,
    },
}

/// The operation waiting on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceOp {
    /// A bind of the (still unbound) TDI to `guest`.
    Bind {
        /// The guest the TDI will be bound to.
        guest: GuestId,
        /// Which guest of that slot ([`GuestRecord::serial`](crate::registry::GuestRecord)):
        /// a guest destroyed mid-bind and a new one in its slot is not the bind's.
        serial: u64,
        /// Progress.
        step: BindStep,
    },
    /// START_INTERFACE for the owner `guest`.
    Start {
        /// The owner who asked.
        guest: GuestId,
    },
    /// Unbind's STOP_INTERFACE; `confirm` after the device refused STOP as already unlocked:
    /// GET_DEVICE_INTERFACE_STATE decides.
    Stop {
        /// Asking the state after a refused STOP.
        confirm: bool,
    },
    /// GET_DEVICE_INTERFACE_STATE for a check.
    Check,
}

impl DeviceOp {
    /// The TDISP request code this step sends.
    pub const fn request_code(&self) -> u8 {
        match self {
            DeviceOp::Bind { step, .. } => match step {
                BindStep::Unlock | BindStep::Undo { .. } => request::STOP_INTERFACE,
                BindStep::Version => request::GET_VERSION,
                BindStep::Capabilities => request::GET_CAPABILITIES,
                BindStep::Lock { .. } => request::LOCK_INTERFACE,
                BindStep::Report { .. } => request::GET_DEVICE_INTERFACE_REPORT,
            },
            DeviceOp::Start { .. } => request::START_INTERFACE,
            DeviceOp::Stop { confirm: false } => request::STOP_INTERFACE,
            DeviceOp::Stop { confirm: true } | DeviceOp::Check => {
                request::GET_DEVICE_INTERFACE_STATE
            }
        }
    }
}

/// One outstanding request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Exchange {
    /// What waits on the answer.
    pub op: DeviceOp,
    /// The sequence number its records are bound to, unique in the session: an answer to any
    /// other exchange, of any TDI, before or after, does not open.
    pub seq: u64,
    /// Times the host reported no answer.
    pub attempts: u8,
}
