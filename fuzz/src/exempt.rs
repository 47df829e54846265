//! The one list of calls that may change something without succeeding outright, each with the
//! doc comment that allows it. Every other refusal, on every target, must leave the whole state
//! as it was: the core's record tables, the secure table (bytes and bookkeeping), the
//! platform's own tables (TDX TDI records, SEV contexts) and host memory. No call of the
//! firmware ever changes the device: the firmware never talks to it, the host relays (so the
//! device model's TDISP state is compared around every call, whatever its outcome).
//!
//! 0. A relayed step: a call that answers "relay this" (`Relay(n)`, TDX `TDX_SPDM_REQUEST`,
//!    SEV `SPDM_REQUEST`). `Tsm::bind`: "This call checks everything it can and returns
//!    `Relay(n)` with the first request in `out`"; `Tsm::device_response`: "The operation that
//!    waits goes on: `Relay(n)` with its next request in `out`"; README, "Relayed exchanges":
//!    "calling the same operation again re-sends the same request". Allowed: that TDI's
//!    exchange bookkeeping (the outstanding exchange: the same one resent, with one more
//!    unanswered attempt at most, or a new one under the TDI's next sequence number, which
//!    then advances by one: a sequence number is never reused), its nonce (a LOCK answered),
//!    its device's report read (a bind's, of this TDI); an unbind's relayed STOP also takes
//!    the TDI to `Unbinding { Stop }` with its leaves blocked ("The leaves are blocked before
//!    STOP is sent"). On TDX the TDI's request page and RCX; on SEV the request buffer
//!    (`spdm_ctrl.req`) and `FLAG_CONTINUE` in the written-back command buffer.
//!    `TDH.DEVIF.REQUEST` changes nothing but the request page.
//! 1. An unbind that stops with `TlbFlushPending`, `IotlbInvalidationPending`,
//!    `IotlbNotTracked` or `Inconsistent` keeps its progress (a
//!    plain unbind, or the device's STOP answer handed to `device_response`). `Tsm::unbind`:
//!    "A guest count that would drift is `Inconsistent` at the release, after the leaves are
//!    gone, with the ranges still owned"; README: "A TLB flush that is not done yet is
//!    `TlbFlushPending` with progress kept". Allowed: that TDI's record (still bound to the
//!    same owner, `Unbinding`, never a step back; the exchange it had, a START or check the
//!    unbind drops or the STOP just answered, ended; its nonce cleared); its leaves blocked or
//!    removed, its owner's epoch advanced by at most one. A forced unbind
//!    (`Tsm::unbind_forced`) stopped the same way has also cut its device's IDE stream: "each
//!    other bound one goes to ERROR", "any exchange the TDI had outstanding is dropped"; its
//!    TDI is marked to unlock first and the device's other TDIs may go to ERROR (leaves still
//!    to block), lose their exchanges (but a STOP) and be marked to unlock first.
//! 2. The device's answer ends the operation that waited on it with the operation's failure
//!    (`device_response`: "TDISP_ERROR or a malformed TDISP message ends the operation as its
//!    failure does"; "at it the operation ends `DeviceUnresponsive`, leaving the TDI as it
//!    was"). Allowed: that TDI's exchange ended, its nonce cleared and its unlock-first mark
//!    set or cleared (a bind refused after LOCK: "the next bind unlocks the interface first"),
//!    its device's report read dropped; nothing else: the TDI's state stays (an unbind whose
//!    STOP failed stays at `Unbinding { Stop }` with every leaf blocked).
//! 3. A START the device refuses or garbles puts the TDI in ERROR. `Tsm::guest_start`: "A
//!    device that refuses or garbles START puts the TDI in ERROR; one that does not answer
//!    leaves it as it was." Allowed: that TDI `Locked` -> `Error` with the same owner, its
//!    exchange ended, its leaves blocked.
//!
//! The TDI's trusted DMA context goes with its leaves under items 0, 1 and 3 (README, "Trusted
//! DMA": "The context is blocked where the MMIO is: when an unbind (or forced unbind) has
//! blocked the leaves, before STOP, and when the device reports ERROR"; "The unbind also
//! requests its IOTLB invalidation right at that block where the platform's track leaves the
//! IOTLB alone"; then "in a `Dma` step after the MMIO teardown: await the IOTLB invalidation
//! (`IotlbInvalidationPending` with the progress kept, as `TlbFlushPending`), remove the
//! context"). Where an exemption lets the TDI's leaves be blocked ([`Exempt::blocks`]) its
//! context may be blocked too and go on through its invalidation (the core record's `dma`;
//! TDX's PASID entry not present, BLOCKED, its invalidation queued; SEV's sDTE with V, IR and
//! IW clear, its fence count noted, every other bit kept); where it lets them be removed
//! ([`Exempt::removes`]) the context may be removed, and on TDX the owner's PASID entries
//! marked as owing its TRACK's IOTLB invalidation (README: "every TRACK (the host's
//! TDH.MEM.TRACK, or an unbind's Track step) of a TD with an accepted PASID entry [...] owes a
//! domain-selective IOTLB invalidation"). Nothing else ever changes a context on a
//! refusal: a refused TDH.DMAR or TDH.IQ leaf, TDG.DMAR.ACCEPT or SEV SDTE write changes
//! nothing (a guest message refused inside its answer: but its response page), and neither
//! does a host BLOCK or IQ.INV.REQUEST of an entry the firmware blocked already, which
//! succeeds (README: "a later BLOCK or IQ.INV.REQUEST of that entry by a host running Linux's
//! own order succeeds and changes nothing"); but an IQ.INV.REQUEST of an entry whose
//! invalidation TDH.IQ.INV.PROCESS completed since is how the core's record learns it
//! (`Invalidating` to `Invalidated`, `Tsm::host_dma_invalidate`), the entry kept.
//!
//! An exemption allows changes and never requires them: the targets check separately that an
//! exchange the device's answer ended (`DeviceUnresponsive`, `DeviceRefused`,
//! `DeviceMalformed` from a device answer) is no longer outstanding and that a refused or
//! garbled START left the TDI in ERROR ([`ended`]).
//!
//! `RelayMalformed` and `NoExchange` are never exempt: "Bytes that are not a record of *this*
//! exchange [...] are `RelayMalformed` (0x506) and change nothing: the exchange stays
//! outstanding" (the request page included). `Resumable` (TDX `TDX_INTERRUPTED_RESUMABLE`, SEV
//! `RESUME_REQUIRED`) is not a refusal: it is progress, and only the calls documented to return
//! it (unbind, device error, the interface check, TRACK, and a device answer that continues an
//! unbind or a check) may.

use tsm_core::lifecycle::UnbindStep;
use tsm_core::registry::{Device, Tdi};
use tsm_core::{BindStep, Completion, DeviceOp, Error, TdiId, TdiState};

/// Which operation a call ran, as far as exemptions go (its TDI read before the call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// `Tsm::bind` of this TDI (a fresh issue).
    Bind(TdiId),
    /// `Tsm::guest_start` of this TDI.
    Start(TdiId),
    /// `Tsm::check_interface` of this TDI.
    Check(TdiId),
    /// `Tsm::unbind` of this TDI.
    Unbind(TdiId),
    /// `Tsm::unbind_forced` of this TDI.
    Force(TdiId),
    /// `Tsm::device_response` for this TDI (TDX TDH.DEVIF.RESPONSE, an SEV continuation).
    Respond(TdiId),
    /// `Tsm::outstanding_request` (TDX TDH.DEVIF.REQUEST): changes nothing.
    Request(TdiId),
    /// Anything else.
    Other,
}

impl Call {
    /// The TDI the call names.
    pub fn tdi(self) -> Option<TdiId> {
        match self {
            Call::Bind(t)
            | Call::Start(t)
            | Call::Check(t)
            | Call::Unbind(t)
            | Call::Force(t)
            | Call::Respond(t)
            | Call::Request(t) => Some(t),
            Call::Other => None,
        }
    }
}

/// What a call may have changed beyond nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exempt {
    /// Nothing.
    Nothing,
    /// Item 0: a relayed step of this TDI; `unbinds` for an unbind's (its leaves blocked, the
    /// TDI at `Unbinding { Stop }`).
    Relayed {
        /// The TDI.
        tdi: TdiId,
        /// An unbind's STOP.
        unbinds: bool,
    },
    /// Item 1: an unbind of this TDI kept its progress.
    UnbindProgress(TdiId),
    /// Item 1: a forced unbind of this TDI kept its progress (the stream cut).
    ForcedProgress(TdiId),
    /// Item 2: the TDI's exchange ended with the operation's failure.
    ExchangeEnded(TdiId),
    /// Item 3: the TDI went to ERROR on a refused or garbled START.
    StartError(TdiId),
}

/// The exemption for `call` with `outcome` (`Err(None)`: a status the platform layer decided,
/// never exempt), `waiting` the operation the TDI had waiting on the device before the call.
pub fn exemption(
    call: Call,
    outcome: Result<Completion, Option<Error>>,
    waiting: Option<DeviceOp>,
) -> Exempt {
    let err = match outcome {
        Ok(Completion::Relay(_)) => {
            return match call {
                Call::Bind(t) | Call::Start(t) | Call::Check(t) | Call::Respond(t) => {
                    Exempt::Relayed {
                        tdi: t,
                        unbinds: false,
                    }
                }
                Call::Unbind(t) => Exempt::Relayed {
                    tdi: t,
                    unbinds: true,
                },
                Call::Force(_) | Call::Request(_) | Call::Other => Exempt::Nothing,
            };
        }
        Ok(_) | Err(None) => return Exempt::Nothing,
        Err(Some(e)) => e,
    };
    let progress = matches!(
        err,
        Error::TlbFlushPending
            | Error::IotlbInvalidationPending
            | Error::IotlbNotTracked
            | Error::Inconsistent
    );
    match call {
        Call::Unbind(t) if progress => Exempt::UnbindProgress(t),
        Call::Force(t) if progress => Exempt::ForcedProgress(t),
        Call::Respond(t) => match (err, waiting) {
            // Refusals of the answer itself change nothing. (Any other status may also be a
            // bind's own, ending it: `InvalidHandle` for a guest gone, `Misaligned` for its
            // report; a refusal before the core, of the request page, changes nothing, which
            // every exemption allows.)
            (
                Error::RelayMalformed
                | Error::NoExchange
                | Error::RelayBufferTooSmall
                | Error::Busy(_),
                _,
            )
            | (_, None) => Exempt::Nothing,
            (Error::DeviceRefused | Error::DeviceMalformed, Some(DeviceOp::Start { .. })) => {
                Exempt::StartError(t)
            }
            (_, Some(DeviceOp::Stop { .. })) if progress => Exempt::UnbindProgress(t),
            (_, Some(_)) => Exempt::ExchangeEnded(t),
        },
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
        UnbindStep::Dma => 4,
        UnbindStep::Release => 5,
    }
}

/// Whether an unbind at `after` went forward from `before` (a TDI not yet unbinding may be at
/// any step).
fn forward(before: TdiState, after: UnbindStep) -> bool {
    match before {
        TdiState::Unbinding { step, .. } => rank(after) >= rank(step),
        _ => true,
    }
}

impl Exempt {
    /// The TDI whose record (and leaves) may change.
    pub fn tdi(self) -> Option<TdiId> {
        match self {
            Exempt::Nothing => None,
            Exempt::Relayed { tdi, .. } => Some(tdi),
            Exempt::UnbindProgress(t)
            | Exempt::ForcedProgress(t)
            | Exempt::ExchangeEnded(t)
            | Exempt::StartError(t) => Some(t),
        }
    }

    /// Whether the TDI's live leaves may be blocked.
    pub fn blocks(self) -> bool {
        matches!(
            self,
            Exempt::Relayed { unbinds: true, .. }
                | Exempt::UnbindProgress(_)
                | Exempt::ForcedProgress(_)
                | Exempt::StartError(_)
        )
    }

    /// Whether the TDI's blocked leaves may be removed and its owner's epoch advance (by at
    /// most one): only an unbind that kept progress past STOP.
    pub fn removes(self) -> bool {
        matches!(self, Exempt::UnbindProgress(_) | Exempt::ForcedProgress(_))
    }

    /// Whether the secure table may change at all.
    pub fn touches_table(self) -> bool {
        self.blocks()
    }

    /// Checks the exempt TDI's record before and after against what the exemption allows:
    /// an exemption allows changes, it never requires them (a refusal before the core changes
    /// nothing), but a relayed step always leaves an exchange outstanding.
    pub fn check_record(self, b: &Tdi, a: &Tdi) -> Result<(), String> {
        let fail = |why: &str| Err(format!("{self:?}: {why}: {b:?} -> {a:?}"));
        if b == a && !matches!(self, Exempt::Relayed { .. }) {
            return Ok(());
        }
        if (b.device, b.iface, b.device_state) != (a.device, a.iface, a.device_state) {
            return fail("identity or the device's last word changed");
        }
        let owner = b.state.owner();
        let same_owner = |s: TdiState| owner.is_some() && s.owner() == owner;
        match self {
            Exempt::Nothing => {
                if b != a {
                    return fail("changed");
                }
            }
            Exempt::Relayed { unbinds, .. } => {
                let Some(ex) = a.exchange else {
                    return fail("relayed with nothing outstanding");
                };
                let resent = b.exchange.filter(|e| e.seq == ex.seq && e.op == ex.op);
                match resent {
                    Some(e) => {
                        if !(ex.attempts == e.attempts
                            || Some(ex.attempts) == e.attempts.checked_add(1))
                        {
                            return fail("a resent request changed its exchange");
                        }
                    }
                    None => {
                        // Sequence numbers come from one session counter that only grows.
                        if b.exchange.is_some_and(|old| ex.seq <= old.seq) || ex.attempts != 0 {
                            return fail("a new exchange not under a later sequence number");
                        }
                    }
                }
                let locked = matches!(
                    b.exchange.map(|e| e.op),
                    Some(DeviceOp::Bind {
                        step: BindStep::Lock { .. },
                        ..
                    })
                );
                if a.unlock_first != b.unlock_first || (a.nonce != b.nonce && !locked) {
                    return fail("bookkeeping beyond the exchange");
                }
                let state_ok = a.state == b.state
                    || (unbinds
                        && same_owner(a.state)
                        && a.state
                            == TdiState::Unbinding {
                                owner: owner.unwrap_or_else(|| unreachable!()),
                                step: UnbindStep::Stop,
                            }
                        && forward(b.state, UnbindStep::Stop));
                if !state_ok {
                    return fail("state");
                }
            }
            Exempt::ExchangeEnded(_) => {
                if b.exchange.is_none()
                    || a.exchange.is_some()
                    || a.state != b.state
                    || !(a.nonce == b.nonce || a.nonce.is_none())
                {
                    return fail("more than the exchange ended");
                }
            }
            Exempt::StartError(_) => {
                let errored = matches!(b.state, TdiState::Locked { .. })
                    && same_owner(a.state)
                    && matches!(a.state, TdiState::Error { .. });
                if !errored
                    || a.exchange.is_some()
                    || (a.unlock_first, a.nonce) != (b.unlock_first, b.nonce)
                {
                    return fail("a refused START did more than put the TDI in ERROR");
                }
            }
            Exempt::UnbindProgress(_) => {
                let ok = matches!(a.state, TdiState::Unbinding { step, .. }
                    if same_owner(a.state) && forward(b.state, step))
                    && a.exchange.is_none()
                    && a.unlock_first == b.unlock_first
                    && (a.nonce == b.nonce || a.nonce.is_none());
                if !ok {
                    return fail("unbind progress");
                }
            }
            Exempt::ForcedProgress(_) => {
                let ok = matches!(a.state, TdiState::Unbinding { step, .. }
                    if same_owner(a.state) && forward(b.state, step)
                        && matches!(step, UnbindStep::Track | UnbindStep::Remove(_) | UnbindStep::Dma | UnbindStep::Release))
                    && a.exchange.is_none()
                    && a.nonce.is_none()
                    && a.unlock_first;
                if !ok {
                    return fail("forced unbind progress");
                }
            }
        }
        Ok(())
    }

    /// Checks another TDI of the exempt TDI's device: unchanged, but under a forced unbind
    /// that cut the stream (`cut`), which may put it in ERROR (`Locked`/`Run` only, same
    /// owner), drop its exchange (not a STOP) and mark it to unlock first.
    pub fn check_sibling(self, cut: bool, b: &Tdi, a: &Tdi) -> Result<(), String> {
        if b == a {
            return Ok(());
        }
        let ok = matches!(self, Exempt::ForcedProgress(_))
            && cut
            && (b.device, b.iface, b.device_state) == (a.device, a.iface, a.device_state)
            && (a.state == b.state
                || (matches!(b.state, TdiState::Locked { .. } | TdiState::Run { .. })
                    && matches!(a.state, TdiState::Error { .. })
                    && a.state.owner() == b.state.owner()))
            && (a.exchange == b.exchange
                || (a.exchange.is_none()
                    && !matches!(b.exchange.map(|e| e.op), Some(DeviceOp::Stop { .. }))))
            && (a.unlock_first == b.unlock_first || a.unlock_first)
            && (a.nonce == b.nonce || a.nonce.is_none());
        if ok {
            Ok(())
        } else {
            Err(format!(
                "{self:?}: another TDI of the device: {b:?} -> {a:?}"
            ))
        }
    }

    /// Checks the exempt TDI's device record (`mine`: it is that device): its functions,
    /// BARs and TDI list never change; its report read only as the exemption allows (begun
    /// or carried on by a relayed bind of the TDI, dropped when its exchange ends or a forced
    /// unbind cut the device), its stream only cut by a forced unbind.
    pub fn check_device(self, mine: bool, b: &Device, a: &Device) -> Result<(), String> {
        if b == a {
            return Ok(());
        }
        let fail = || Err(format!("{self:?}: device {b:?} -> {a:?}"));
        if !mine || (&b.functions, &b.bars, &b.tdis) != (&a.functions, &a.bars, &a.tdis) {
            return fail();
        }
        let t = self.tdi();
        let read_of = |d: &Device| d.report_read.as_ref().map(|r| r.tdi);
        let read_ok = b.report_read == a.report_read
            || match self {
                Exempt::Relayed { tdi, .. } => {
                    read_of(a) == Some(tdi) && read_of(b).is_none_or(|x| x == tdi)
                }
                Exempt::ExchangeEnded(_) => read_of(b) == t && a.report_read.is_none(),
                Exempt::ForcedProgress(_) => a.report_read.is_none(),
                _ => false,
            };
        let stream_ok = b.stream == a.stream
            || (matches!(self, Exempt::ForcedProgress(_))
                && b.stream == tsm_core::IdeStream::Live
                && a.stream == tsm_core::IdeStream::Cut);
        if read_ok && stream_ok { Ok(()) } else { fail() }
    }
}

/// After the device's answer for `waiting` ended the operation with `err`: the TDI's record
/// `after` has nothing outstanding and, for a START the device refused or garbled, is in ERROR.
pub fn ended(
    waiting: Option<DeviceOp>,
    err: Option<Error>,
    after: Option<&Tdi>,
) -> Result<(), String> {
    let (Some(op), Some(e), Some(a)) = (waiting, err, after) else {
        return Ok(());
    };
    let device = matches!(
        e,
        Error::DeviceUnresponsive | Error::DeviceRefused | Error::DeviceMalformed
    );
    if device && a.exchange.is_some() {
        return Err(format!("{e:?} ended {op:?}, yet {a:?} waits"));
    }
    if matches!(op, DeviceOp::Start { .. })
        && matches!(e, Error::DeviceRefused | Error::DeviceMalformed)
        && !matches!(a.state, TdiState::Error { .. })
    {
        return Err(format!("a START the device {e:?} left {a:?}"));
    }
    Ok(())
}
