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
//!    context table, no memory. Checked: the unbind step never goes back, and a failed STOP
//!    (a device error) leaves exactly `Unbinding { Stop }` with none of the TDI's leaves
//!    mapped and comes at or before that step; the secure table is compared leaf by leaf
//!    (`common::leaves_diff`): a leaf of that TDI (host pages in a range it owns) may only go
//!    `Mapped` -> `Blocked` or, past STOP only, be removed, and every other leaf is exactly as
//!    it was; every other guest's epoch is as it was and the owner's advances by at most one,
//!    past STOP only. On SEV-TIO no RMP entry outside the TDI's ranges may change; on TDX the
//!    pool's bytes are not compared under an exemption (the leaf-level check stands for them).
//! 2. A guest start the device refuses or garbles puts the TDI in ERROR. `Tsm::guest_start`:
//!    "A device that refuses puts the TDI in ERROR; one that does not answer leaves it as it
//!    was." Allowed: that TDI's record, which must become `Error` with the same owner, and the
//!    secure table (its leaves blocked, nothing else). `DeviceUnresponsive` is not exempt. On
//!    SEV-TIO the start is a guest message: the command succeeds and the refusal is in the
//!    answer; the TDI is the one whose context the command names, read before the call.
//! 3. A device that acts on a request and then garbles its answer (the model's
//!    `WrongInterface` and `WrongVersion` misbehaviours) may change its own TDISP state under a
//!    refused call: `Tsm::bind`, "The device may have locked and then garbled or lost its
//!    answer: put it back in a known state. The failed LOCK is the status whatever STOP
//!    returns." Allowed: the device's TDISP state of that interface only, and only under a
//!    call that sent that interface a request (bind, start, unbind or interface check of a
//!    TDI of it, read from the request before the call); the firmware's own records still
//!    may not change.
//!
//! `Resumable` (TDX `TDX_INTERRUPTED_RESUMABLE`, SEV `RESUME_REQUIRED`) is not a refusal: it is
//! progress, and only the calls documented to return it (unbind, device error, the interface
//! check, TRACK) may.

use tsm_core::device_model::Misbehaviour;
use tsm_core::lifecycle::UnbindStep;
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
    /// Exemption 1, a failed STOP (`DeviceUnresponsive`, `DeviceRefused`, `DeviceMalformed`):
    /// this TDI's leaves blocked, the TDI at `Unbinding { Stop }`.
    UnbindStopFailed(TdiId),
    /// Exemption 1, progress kept (`TlbFlushPending`, `Inconsistent`): this TDI's leaves
    /// blocked or removed, its owner's epoch advanced by at most one.
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
            Some(Error::DeviceUnresponsive | Error::DeviceRefused | Error::DeviceMalformed),
        ) => Exempt::UnbindStopFailed(t),
        (Call::Unbind(t), Some(Error::TlbFlushPending | Error::Inconsistent)) => {
            Exempt::UnbindProgress(t)
        }
        (Call::Start(t), Some(Error::DeviceRefused | Error::DeviceMalformed)) => {
            Exempt::StartError(t)
        }
        _ => Exempt::Nothing,
    }
}

/// How far an unbind got: a step never goes back.
fn rank(step: UnbindStep) -> u8 {
    match step {
        UnbindStep::Block(_) => 0,
        UnbindStep::Stop => 1,
        UnbindStep::Track => 2,
        UnbindStep::Remove(_) => 3,
    }
}

impl Exempt {
    /// The TDI whose record (and leaves) may change.
    pub fn tdi(self) -> Option<TdiId> {
        match self {
            Exempt::Nothing => None,
            Exempt::UnbindStopFailed(t) | Exempt::UnbindProgress(t) | Exempt::StartError(t) => {
                Some(t)
            }
        }
    }

    /// The TDI an unbind progressed on (its interface may have been stopped).
    pub fn unbinding(self) -> Option<TdiId> {
        match self {
            Exempt::UnbindStopFailed(t) | Exempt::UnbindProgress(t) => Some(t),
            _ => None,
        }
    }

    /// Whether the TDI's blocked leaves may be removed and its owner's epoch advance (by at
    /// most one): only an unbind that kept progress past STOP.
    pub fn removes(self) -> bool {
        matches!(self, Exempt::UnbindProgress(_))
    }

    /// Checks the TDI's state after the refusal against what the exemption allows: the owner
    /// never changes; an unbind never goes back a step (before `Block` -> any step, `Stop` ->
    /// `Stop`/`Track`/`Remove`, `Track` -> `Track`/`Remove`, `Remove` -> `Remove`; a TDI not yet
    /// unbinding may be at any step); a failed STOP comes at or before the Stop step and
    /// leaves exactly `Unbinding { Stop }`; a refused start makes the TDI `Error`.
    pub fn check_state(self, before: TdiState, after: TdiState) -> Result<(), String> {
        let owner = before.owner();
        let forward = |step: UnbindStep| match before {
            TdiState::Unbinding { step: was, .. } => rank(step) >= rank(was),
            _ => true,
        };
        let ok = match self {
            Exempt::Nothing => before == after,
            Exempt::UnbindStopFailed(_) => {
                owner.is_some()
                    && forward(UnbindStep::Stop)
                    && Some(after)
                        == owner.map(|owner| TdiState::Unbinding {
                            owner,
                            step: UnbindStep::Stop,
                        })
            }
            Exempt::UnbindProgress(_) => {
                owner.is_some()
                    && matches!(after, TdiState::Unbinding { owner: o, step }
                        if Some(o) == owner && forward(step))
            }
            Exempt::StartError(_) => {
                owner.is_some()
                    && matches!(after, TdiState::Error { owner: o, .. } if Some(o) == owner)
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
