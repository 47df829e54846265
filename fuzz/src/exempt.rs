//! The one list of refusals that may change something, each with the doc comment that allows
//! it. Every other refusal, on every target, must leave the whole state as it was: the core's
//! record tables, the secure table (bytes and bookkeeping), the platform's own tables, the
//! device model's TDISP state and, for SEV-TIO, system memory.
//!
//! 1. An unbind that stops with `TlbFlushPending`, a device error (`DeviceUnresponsive`,
//!    `DeviceRefused`, `DeviceMalformed`) or `Inconsistent` keeps its progress.
//!    `Tsm::unbind`: "The leaves are blocked before STOP is sent, so no call of an unbind ever
//!    returns with the guest holding live MMIO: `Resumable` while blocking, and a STOP the
//!    device does not answer is the status only once every leaf is blocked (retry resumes at
//!    STOP). [...] A guest count that would drift is `Inconsistent` at the release, after the
//!    leaves are gone, with the ranges still owned." `unbind::run`: "on an error the state
//!    keeps the step that failed, so a retry resumes there"; README: "A TLB flush that is not
//!    done yet is `TlbFlushPending` with progress kept." Allowed: that TDI's record, which
//!    must stay bound to the same owner and be `Unbinding`; the secure table (leaves blocked
//!    or removed, the epoch advanced); that interface's TDISP state (STOP may have been done).
//!    Nothing else: no other TDI, no guest record, no ownership (ranges stay owned), no
//!    context table, no memory.
//! 2. A guest start the device refuses or garbles puts the TDI in ERROR. `Tsm::guest_start`:
//!    "A device that refuses puts the TDI in ERROR; one that does not answer leaves it as it
//!    was." Allowed: that TDI's record, which must become `Error` with the same owner, and the
//!    secure table (its leaves blocked). `DeviceUnresponsive` is not exempt. On SEV-TIO the
//!    start is a guest message: the command succeeds and the refusal is in the answer.
//! 3. A device that acts on a request and then garbles its answer (the model's
//!    `WrongInterface` and `WrongVersion` misbehaviours) may change its own TDISP state under a
//!    refused call: `Tsm::bind`, "The device may have locked and then garbled or lost its
//!    answer: put it back in a known state. The failed LOCK is the status whatever STOP
//!    returns." Allowed: the device's TDISP state of that interface only; the firmware's own
//!    records still may not change.
//!
//! `Resumable` (TDX `TDX_INTERRUPTED_RESUMABLE`, SEV `RESUME_REQUIRED`) is not a refusal: it is
//! progress, and only the calls documented to return it (unbind, device error, the interface
//! check, TRACK) may.

use tsm_core::device_model::Misbehaviour;
use tsm_core::{Error, TdiId, TdiState};

/// Which operation a call ran, as far as exemptions go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// `Tsm::unbind` of this TDI.
    Unbind(TdiId),
    /// `Tsm::guest_start` of this TDI.
    Start(TdiId),
    /// Anything else.
    Other,
}

/// What a refused call may have changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exempt {
    /// Nothing.
    Nothing,
    /// Exemption 1: unbind progress of this TDI.
    UnbindProgress(TdiId),
    /// Exemption 2: this TDI went to ERROR.
    StartError(TdiId),
}

/// The exemption for `call` refused with core status `err` (`None`: a status the platform
/// layer decided, never exempt).
pub fn exemption(call: Call, err: Option<Error>) -> Exempt {
    match (call, err) {
        (
            Call::Unbind(t),
            Some(
                Error::TlbFlushPending
                | Error::DeviceUnresponsive
                | Error::DeviceRefused
                | Error::DeviceMalformed
                | Error::Inconsistent,
            ),
        ) => Exempt::UnbindProgress(t),
        (Call::Start(t), Some(Error::DeviceRefused | Error::DeviceMalformed)) => {
            Exempt::StartError(t)
        }
        _ => Exempt::Nothing,
    }
}

impl Exempt {
    /// The TDI whose record may change.
    pub fn tdi(self) -> Option<TdiId> {
        match self {
            Exempt::Nothing => None,
            Exempt::UnbindProgress(t) | Exempt::StartError(t) => Some(t),
        }
    }

    /// Whether the secure table may change.
    pub fn table(self) -> bool {
        self != Exempt::Nothing
    }

    /// Checks the TDI's state after the refusal against what the exemption allows.
    pub fn check_state(self, before: TdiState, after: TdiState) -> Result<(), String> {
        let ok = match self {
            Exempt::Nothing => before == after,
            Exempt::UnbindProgress(_) => {
                before.owner().is_some()
                    && matches!(after, TdiState::Unbinding { owner, .. } if Some(owner) == before.owner())
            }
            Exempt::StartError(_) => {
                before.owner().is_some()
                    && matches!(after, TdiState::Error { owner, .. } if Some(owner) == before.owner())
            }
        };
        if ok {
            Ok(())
        } else {
            Err(format!("{self:?}: TDI state {before:?} -> {after:?}"))
        }
    }
}

/// Exemption 3: a device misbehaving like this acts on a request before it garbles the answer.
pub fn acts_then_garbles(how: Misbehaviour) -> bool {
    matches!(
        how,
        Misbehaviour::WrongInterface | Misbehaviour::WrongVersion
    )
}
