//! Runs scenario text against a [`Backend`]: one printed line per operation, and a failure
//! with its line number when a status differs from the one the line expects.

use core::fmt::{self, Write};

use heapless::{String, Vec};
use tsm_core::capacity::MAX_TDIS_PER_DEVICE;
use tsm_core::device_model::{DeviceEvent, MODEL_MAX_RANGES};
use tsm_core::tdisp::report::{RANGE_ATTR_NON_TEE, WireMmioRange, wire_range};
use tsm_core::{
    Completion, DeviceId, Error, Gpa, GuestId, Handle, Hpa, Leaf, LeafState, MmioRange,
    RequesterId, TdiId, TdiState, TsmResult,
};

use crate::backend::{Backend, DeviceCall, DmaAccess, MAX_RELAY_ROUNDS, RelayBuf};
use crate::scenario::{
    AnswerWith, Diagnostic, EventName, HostPath, LeafName, Line, NameKind, Op, Order, Problem,
    ReachName, StateName, nearest, parse_line,
};
use tsm_core::MAX_RELAY_BYTES;
use tsm_core::dma::DmaReach;

/// Named objects one scenario may create.
pub const MAX_NAMES: usize = 64;
/// Calls `unbind-all` makes before it gives up (each call does a bounded amount of work).
pub const MAX_UNBIND_CALLS: u32 = 1 << 20;

/// Operations that matched and that did not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    /// Lines whose status matched.
    pub passed: u32,
    /// Lines whose status did not match, or that did not parse.
    pub failed: u32,
}

impl Summary {
    /// Adds another summary.
    pub fn add(&mut self, other: Summary) {
        self.passed = self.passed.saturating_add(other.passed);
        self.failed = self.failed.saturating_add(other.failed);
    }
}

// Fixed-size slots (no heap): the largest variant sets the size on purpose.
#[allow(clippy::large_enum_variant)]
enum Obj<'a> {
    Guest(GuestId),
    Device {
        id: DeviceId,
        bars: Vec<(u64, u64), { tsm_core::capacity::MAX_BARS }>,
        tdis: Vec<&'a str, MAX_TDIS_PER_DEVICE>,
    },
    Tdi {
        id: TdiId,
        iface: RequesterId,
    },
}

impl Obj<'_> {
    fn kind(&self) -> NameKind {
        match self {
            Obj::Guest(_) => NameKind::Guest,
            Obj::Device { .. } => NameKind::Device,
            Obj::Tdi { .. } => NameKind::Tdi,
        }
    }
}

/// A device's BARs (raw base, pages) and the names of its TDIs.
type DeviceParts<'s, 'a> = (&'s [(u64, u64)], &'s [&'a str]);

/// What a line observed: a status, or for `expect-*` lines the state that was found.
enum Observed {
    Status(TsmResult<Completion>),
    State(TdiState),
    Leaf(Option<Leaf>),
    /// What a TDI's DMA reached (a `dma` line, or a host path after which a device still
    /// reaches private memory).
    Reach(TdiId, DmaReach),
}

impl fmt::Display for Observed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Observed::Status(Ok(Completion::Done)) => f.write_str("Ok"),
            Observed::Status(Ok(Completion::Resumable)) => f.write_str("Resumable"),
            Observed::Status(Ok(Completion::Relay(_))) => f.write_str("Relay"),
            Observed::Status(Err(e)) => write!(f, "{e:?}"),
            Observed::State(s) => write!(f, "state={s:?}"),
            Observed::Leaf(l) => write!(f, "leaf={l:?}"),
            Observed::Reach(t, r) => write!(f, "dma of {t:?} reaches {r:?}"),
        }
    }
}

/// Why a line could not run at all (as opposed to returning a status): a diagnostic whose
/// token is empty when the fault is the operation's (filled in with the operation's word).
type Setup<'a> = Diagnostic<'a>;

fn too_many() -> Setup<'static> {
    Diagnostic::new(
        Problem::TooManyNames,
        "",
        "fewer objects: a scenario keeps at most 64 names, 4 held requests",
    )
}

fn nothing_held() -> Setup<'static> {
    Diagnostic::new(
        Problem::NothingHeld,
        "",
        "`hold <t>` and an operation that stopped at `Relay` before it",
    )
}

fn no_such_answer() -> Setup<'static> {
    Diagnostic::new(
        Problem::NoSuchAnswer,
        "",
        "an answer relayed earlier for the TDI (stale), or a byte inside the answer (flip)",
    )
}

/// Requests held at once (`hold`), and TDIs whose last answer is kept for `answer ... stale`.
const MAX_HELD: usize = 4;
/// Invalidations an unbind may wait for in turn (TDX: the owner's domain, then the DMA
/// context's own): the host completes each and calls again.
const IOTLB_WAITS: usize = 2;
const MAX_KEPT_ANSWERS: usize = 8;

/// A request the host keeps instead of relaying.
struct Held {
    tdi: TdiId,
    request: RelayBuf,
    len: usize,
}

struct Interpreter<'a, 'b> {
    backend: &'b mut dyn Backend,
    names: Vec<(&'a str, Obj<'a>), MAX_NAMES>,
    /// TDIs whose next device call stops at its first request.
    hold_next: Vec<TdiId, MAX_HELD>,
    held: Vec<Held, MAX_HELD>,
    /// The last answer relayed for a TDI.
    answers: Vec<(TdiId, RelayBuf, usize), MAX_KEPT_ANSWERS>,
    /// `invalidations manual`: an unbind's stop for an IOTLB invalidation is its status.
    manual_invalidations: bool,
}

/// One byte more than the relay carries.
static TOO_LONG: [u8; MAX_RELAY_BYTES + 1] = [0; MAX_RELAY_BYTES + 1];
/// Bytes that are no DOE object (vendor 0xa5a5).
static GARBAGE: [u8; 24] = [0xa5; 24];

fn done(r: TsmResult<()>) -> Observed {
    Observed::Status(r.map(|()| Completion::Done))
}

impl<'a> Interpreter<'a, '_> {
    /// The object `name` stands for, which must be of kind `want`.
    fn find(&self, name: &'a str, want: NameKind) -> Result<&Obj<'a>, Setup<'a>> {
        let kinds = self.names.iter().map(|(n, o)| (*n, o.kind()));
        match (
            name_problem(kinds, name, want),
            self.names.iter().find(|(n, _)| *n == name),
        ) {
            (None, Some((_, o))) => Ok(o),
            (Some(d), _) => Err(d),
            // Unreachable: a name with no problem was found.
            (None, None) => Err(Diagnostic::new(Problem::UnknownName, name, want.expected())),
        }
    }

    fn raw<K>(name: &'a str) -> Option<Result<Handle<K>, Setup<'a>>> {
        let raw = name.strip_prefix('#')?;
        // Wider than a slot: the highest slot, which no table has, so the firmware says InvalidHandle.
        Some(
            crate::scenario::num(raw)
                .map(|v| Handle::from_slot(u16::try_from(v).unwrap_or(u16::MAX))),
        )
    }

    fn guest(&self, name: &'a str) -> Result<GuestId, Setup<'a>> {
        if let Some(h) = Self::raw(name) {
            return h;
        }
        match self.find(name, NameKind::Guest)? {
            Obj::Guest(g) => Ok(*g),
            _ => Err(Diagnostic::new(
                Problem::UnknownName,
                name,
                NameKind::Guest.expected(),
            )),
        }
    }

    fn tdi(&self, name: &'a str) -> Result<(TdiId, Option<RequesterId>), Setup<'a>> {
        if let Some(h) = Self::raw(name) {
            return h.map(|t| (t, None));
        }
        match self.find(name, NameKind::Tdi)? {
            Obj::Tdi { id, iface } => Ok((*id, Some(*iface))),
            _ => Err(Diagnostic::new(
                Problem::UnknownName,
                name,
                NameKind::Tdi.expected(),
            )),
        }
    }

    /// A device event or misbehaviour names the interface, which a raw handle does not carry.
    fn iface(&self, name: &'a str) -> Result<RequesterId, Setup<'a>> {
        self.tdi(name)?
            .1
            .ok_or_else(|| Diagnostic::new(Problem::RawHandle, name, NameKind::Tdi.expected()))
    }

    fn device(&self, name: &'a str) -> Result<DeviceId, Setup<'a>> {
        if let Some(h) = Self::raw(name) {
            return h;
        }
        match self.find(name, NameKind::Device)? {
            Obj::Device { id, .. } => Ok(*id),
            _ => Err(Diagnostic::new(
                Problem::UnknownName,
                name,
                NameKind::Device.expected(),
            )),
        }
    }

    fn device_parts(&self, name: &'a str) -> Result<DeviceParts<'_, 'a>, Setup<'a>> {
        match self.find(name, NameKind::Device)? {
            Obj::Device { bars, tdis, .. } => Ok((bars, tdis)),
            _ => Err(Diagnostic::new(
                Problem::UnknownName,
                name,
                NameKind::Device.expected(),
            )),
        }
    }

    fn name(&mut self, name: &'a str, obj: Obj<'a>) -> Result<(), Setup<'a>> {
        self.names.push((name, obj)).map_err(|_| too_many())
    }

    fn run(&mut self, op: &Op<'a>) -> Result<Observed, Setup<'a>> {
        let b = &mut *self.backend;
        Ok(match *op {
            Op::Guest { name } => match b.create_guest() {
                Ok(g) => {
                    self.name(name, Obj::Guest(g))?;
                    done(Ok(()))
                }
                Err(e) => done(Err(e)),
            },
            Op::Device {
                name,
                rid,
                ref bars,
            } => {
                let ranges: Result<Vec<MmioRange, { tsm_core::capacity::MAX_BARS }>, Error> = bars
                    .iter()
                    .map(|&(base, pages)| MmioRange::from_raw(base, pages))
                    .collect();
                match ranges.and_then(|r| b.create_device(rid, &r)) {
                    Ok(id) => {
                        self.name(
                            name,
                            Obj::Device {
                                id,
                                bars: bars.clone(),
                                tdis: Vec::new(),
                            },
                        )?;
                        done(Ok(()))
                    }
                    Err(e) => done(Err(e)),
                }
            }
            Op::Tdi {
                name,
                device,
                iface,
            } => {
                let dev = self.device(device)?;
                match self.backend.create_tdi(dev, iface) {
                    Ok(id) => {
                        if let Some((_, Obj::Device { tdis, .. })) =
                            self.names.iter_mut().find(|(n, _)| *n == device)
                        {
                            tdis.push(name).map_err(|_| too_many())?;
                        }
                        self.name(name, Obj::Tdi { id, iface })?;
                        done(Ok(()))
                    }
                    Err(e) => done(Err(e)),
                }
            }
            Op::Bind {
                tdi,
                guest,
                ref ranges,
            } => {
                let (t, g) = (self.tdi(tdi)?.0, self.guest(guest)?);
                let report: Vec<WireMmioRange, MODEL_MAX_RANGES> = ranges
                    .iter()
                    .zip(0u16..)
                    .map(|(r, id)| {
                        let attributes = if r.shared { RANGE_ATTR_NON_TEE } else { 0 };
                        wire_range(r.base, r.pages, attributes, id)
                    })
                    .collect();
                match self.backend.set_report(t, &report) {
                    Ok(()) => {
                        Observed::Status(self.device_call(DeviceCall::Bind { tdi: t, guest: g })?)
                    }
                    Err(e) => done(Err(e)),
                }
            }
            Op::Map {
                tdi,
                guest,
                gpa,
                hpa,
                size,
            } => {
                let (t, g) = (self.tdi(tdi)?.0, self.guest(guest)?);
                done(Gpa::try_new(gpa).and_then(|gpa| {
                    let hpa = Hpa::try_new(hpa)?;
                    self.backend.map(t, g, gpa, hpa, size)
                }))
            }
            Op::Start { guest, tdi, accept } => {
                let (g, t) = (self.guest(guest)?, self.tdi(tdi)?.0);
                // The usual start: the TDI's DMA context created and accepted first.
                if accept && let Err(e) = self.backend.prepare_start(g, t) {
                    return Ok(Observed::Status(Err(e)));
                }
                Observed::Status(self.device_call(DeviceCall::Start { guest: g, tdi: t })?)
            }
            Op::Unbind { tdi } => {
                let t = self.tdi(tdi)?.0;
                Observed::Status(self.device_call(DeviceCall::Unbind { tdi: t })?)
            }
            Op::UnbindAll { tdi } => Observed::Status(self.unbind_all(self.tdi(tdi)?.0)),
            Op::UnbindForce { tdi } => {
                Observed::Status(self.backend.unbind_force(self.tdi(tdi)?.0))
            }
            Op::UnbindForceAll { tdi } => Observed::Status(self.unbind_force_all(self.tdi(tdi)?.0)),
            Op::StreamSetup { device } => done(self.backend.setup_stream(self.device(device)?)),
            // The device reports ERROR because it is in ERROR (TDISP: a locked or running
            // interface it no longer trusts): it stops sending T=1 then, not when the firmware
            // hears of it. An unlocked interface stays as it is.
            Op::DeviceError { tdi } => {
                let iface = self.iface(tdi)?;
                if let Err(e) = self.backend.device_event(iface, DeviceEvent::Disturb) {
                    return Ok(done(Err(e)));
                }
                Observed::Status(self.backend.device_error(self.tdi(tdi)?.0))
            }
            Op::Check { tdi } => {
                let t = self.tdi(tdi)?.0;
                Observed::Status(self.device_call(DeviceCall::Check { tdi: t })?)
            }
            Op::Hold { tdi } => {
                let t = self.tdi(tdi)?.0;
                if !self.hold_next.contains(&t) {
                    self.hold_next.push(t).map_err(|_| too_many())?;
                }
                done(Ok(()))
            }
            Op::Relay { tdi } => {
                let t = self.tdi(tdi)?.0;
                let mut held = self.take_held(t)?;
                let first = Ok(Completion::Relay(held.len));
                let outcome = self.relay_from(t, first, &mut held.request);
                Observed::Status(self.invalidated_and_again(t, outcome)?)
            }
            Op::Answer { tdi, with } => {
                let t = self.tdi(tdi)?.0;
                Observed::Status(self.answer(t, with)?)
            }
            Op::Zap { device, bar } => {
                // A raw handle has no BARs the host knows: the zap names none (InvalidHandle).
                if !device.starts_with('#') {
                    self.device_parts(device)?;
                }
                done(self.zap(device, bar))
            }
            Op::HostUnmap { guest, gpa, size } => {
                let g = self.guest(guest)?;
                done(Gpa::try_new(gpa).and_then(|gpa| self.backend.host_unmap(g, gpa, size)))
            }
            Op::HostBlock { guest, gpa, size } => {
                let g = self.guest(guest)?;
                done(Gpa::try_new(gpa).and_then(|gpa| self.backend.host_block(g, gpa, size)))
            }
            Op::Host {
                path,
                ref devices,
                order,
            } => {
                // What each TDI's DMA reaches before: the old order must change none of it.
                let before = self.reaches(devices)?;
                let outcome = self.host_path(path, devices, order)?;
                let after = self.reaches(devices)?;
                let wrong = match order {
                    // The old order: whatever it returns, no TDI's reach changed.
                    Order::ZapFirst => before
                        .iter()
                        .zip(after.iter())
                        .find(|(b, a)| b != a)
                        .map(|(_, a)| *a),
                    // Unbind first (even one a dead device stopped): no device reaches
                    // private memory any more.
                    Order::UnbindFirst | Order::UnbindForceFirst => after
                        .iter()
                        .find(|(_, r)| *r != DmaReach::SharedOnly)
                        .copied(),
                };
                match wrong {
                    Some((t, r)) => Observed::Reach(t, r),
                    None => done(outcome),
                }
            }
            Op::DeviceEvent { tdi, event } => {
                let iface = self.iface(tdi)?;
                let event = match event {
                    EventName::Disturb => DeviceEvent::Disturb,
                    EventName::Reset => DeviceEvent::ConventionalReset,
                };
                done(self.backend.device_event(iface, event))
            }
            Op::DeviceMisbehave { tdi, how } => {
                let iface = self.iface(tdi)?;
                done(self.backend.device_misbehave(iface, how))
            }
            Op::DeferFlush { guest, on } => {
                let g = self.guest(guest)?;
                done(self.backend.defer_flush(g, on))
            }
            Op::Invalidations { manual } => {
                self.manual_invalidations = manual;
                done(self.backend.set_manual_invalidations(manual))
            }
            Op::CompleteInvalidations { tdi } => {
                done(self.backend.complete_invalidations(self.tdi(tdi)?.0))
            }
            Op::DmaCreate { tdi } => done(self.backend.dma_create(self.tdi(tdi)?.0)),
            Op::DmaAccept { guest, tdi } => {
                let g = self.guest(guest)?;
                done(self.backend.dma_accept(g, self.tdi(tdi)?.0))
            }
            // One access: the TDI's context and state, then the platform's translation of the
            // address for the owner in the access's direction.
            Op::Dma {
                tdi,
                write,
                gpa,
                ref reach,
            } => {
                let t = self.tdi(tdi)?.0;
                let access = Gpa::try_new(gpa).map(|gpa| DmaAccess { write, gpa });
                let reach = reach.on(self.backend.name());
                match access.and_then(|a| self.backend.dma_access(t, a)) {
                    Ok(r) if reach_is(r, reach) => done(Ok(())),
                    Ok(r) => Observed::Reach(t, r),
                    Err(e) => done(Err(e)),
                }
            }
            Op::ExpectState { tdi, ref state } => match self.backend.tdi_state(self.tdi(tdi)?.0) {
                Ok(s) if state_is(s, state.on(self.backend.name())) => done(Ok(())),
                Ok(s) => Observed::State(s),
                Err(e) => done(Err(e)),
            },
            Op::ExpectLeaf {
                guest,
                gpa,
                ref leaf,
            } => {
                let g = self.guest(guest)?;
                match Gpa::try_new(gpa).and_then(|gpa| self.backend.leaf(g, gpa)) {
                    Ok(l) if leaf_is(l.as_ref(), leaf.on(self.backend.name())) => done(Ok(())),
                    Ok(l) => Observed::Leaf(l),
                    Err(e) => done(Err(e)),
                }
            }
            Op::RemoveTdi { tdi } => done(self.backend.remove_tdi(self.tdi(tdi)?.0)),
            Op::RemoveDevice { device } => done(self.backend.remove_device(self.device(device)?)),
            Op::DestroyGuest { guest } => done(self.backend.destroy_guest(self.guest(guest)?)),
        })
    }

    /// Starts `call`; a held TDI keeps its first request, any other is relayed to its end.
    fn device_call(&mut self, call: DeviceCall) -> Result<TsmResult<Completion>, Setup<'a>> {
        let tdi = call.tdi();
        let mut waits = 0;
        loop {
            let mut request = [0u8; MAX_RELAY_BYTES];
            let first = self.backend.begin(call, &mut request);
            if let Some(i) = self.hold_next.iter().position(|t| *t == tdi)
                && let Ok(Completion::Relay(len)) = first
            {
                self.hold_next.swap_remove(i);
                self.keep(Held { tdi, request, len })?;
                return Ok(first);
            }
            let outcome = self.relay_from(tdi, first, &mut request);
            if waits < IOTLB_WAITS && self.completed_invalidations(tdi, &outcome) {
                waits = waits.saturating_add(1);
                continue;
            }
            return Ok(outcome);
        }
    }

    /// Whether `outcome` is an unbind's stop at an IOTLB invalidation (TDX: the context's own
    /// before STOP, or the owner's domain at Remove; SEV: the fence) that the host then
    /// completed (TDX: TDH.IQ.INV.REQUEST of the domain and TDH.IQ.INV.PROCESS), as the Linux
    /// host does before it calls again; never in manual mode (`invalidations manual`), where
    /// the stop is the line's status.
    fn completed_invalidations(&mut self, tdi: TdiId, outcome: &TsmResult<Completion>) -> bool {
        !self.manual_invalidations
            && matches!(
                outcome,
                Err(Error::IotlbInvalidationPending | Error::IotlbNotTracked)
            )
            && self.backend.complete_invalidations(tdi).is_ok()
    }

    /// A held request relayed to its end that left the unbind at an IOTLB invalidation: the
    /// host completes it and calls the unbind again ([`Self::device_call`], the hold rules
    /// included); any other outcome as it is.
    fn invalidated_and_again(
        &mut self,
        tdi: TdiId,
        outcome: TsmResult<Completion>,
    ) -> Result<TsmResult<Completion>, Setup<'a>> {
        if self.completed_invalidations(tdi, &outcome) {
            self.device_call(DeviceCall::Unbind { tdi })
        } else {
            Ok(outcome)
        }
    }

    fn keep(&mut self, held: Held) -> Result<(), Setup<'a>> {
        self.held.retain(|h| h.tdi != held.tdi);
        self.held.push(held).map_err(|_| too_many())
    }

    fn take_held(&mut self, tdi: TdiId) -> Result<Held, Setup<'a>> {
        let i = self
            .held
            .iter()
            .position(|h| h.tdi == tdi)
            .ok_or_else(nothing_held)?;
        Ok(self.held.swap_remove(i))
    }

    /// The device's answer to `request`, kept as `tdi`'s last.
    fn ask_device(&mut self, tdi: TdiId, request: &[u8], answer: &mut RelayBuf) -> Option<usize> {
        let len = self.backend.mailbox(request, answer)?;
        self.answers.retain(|(t, _, _)| *t != tdi);
        if self.answers.is_full() {
            self.answers.remove(0);
        }
        let _ = self.answers.push((tdi, *answer, len));
        Some(len)
    }

    /// Relays from `first` until the operation ends, as the host does.
    fn relay_from(
        &mut self,
        tdi: TdiId,
        first: TsmResult<Completion>,
        request: &mut RelayBuf,
    ) -> TsmResult<Completion> {
        let mut outcome = first;
        for _ in 0..MAX_RELAY_ROUNDS {
            let Ok(Completion::Relay(n)) = outcome else {
                return outcome;
            };
            let sent = *request;
            let mut answer = [0u8; MAX_RELAY_BYTES];
            let len = self.ask_device(tdi, sent.get(..n).ok_or(Error::Inconsistent)?, &mut answer);
            let got = match len {
                Some(k) => Some(answer.get(..k).ok_or(Error::Inconsistent)?),
                None => None,
            };
            outcome = self.backend.respond(tdi, got, request);
        }
        Err(Error::Inconsistent)
    }

    /// `answer`: hands the firmware what `with` says for `tdi`'s held request. The request
    /// stays held while the exchange is outstanding (a refused answer, or a next request).
    fn answer(
        &mut self,
        tdi: TdiId,
        with: AnswerWith<'a>,
    ) -> Result<TsmResult<Completion>, Setup<'a>> {
        // Answers that need no request can be handed in with nothing held: the firmware then
        // has no exchange either (`NoExchange`).
        let held = self.take_held(tdi).ok();
        let mut bytes = [0u8; MAX_RELAY_BYTES];
        let answer: Option<&[u8]> = match with {
            AnswerWith::None => None,
            AnswerWith::Garbage => Some(&GARBAGE),
            AnswerWith::Long => Some(&TOO_LONG),
            AnswerWith::Stale => {
                let (_, kept, n) = self
                    .answers
                    .iter()
                    .find(|(t, _, _)| *t == tdi)
                    .ok_or_else(no_such_answer)?;
                bytes = *kept;
                bytes.get(..*n)
            }
            AnswerWith::Genuine | AnswerWith::Flip(_) => {
                let held = held.as_ref().ok_or_else(nothing_held)?;
                let sent = held.request.get(..held.len).ok_or_else(nothing_held)?;
                let n = self.ask_device(tdi, sent, &mut bytes);
                match (with, n) {
                    (AnswerWith::Flip(at), Some(n)) => {
                        let byte = bytes
                            .get_mut(usize::from(at))
                            .filter(|_| usize::from(at) < n)
                            .ok_or_else(no_such_answer)?;
                        *byte ^= 1;
                        bytes.get(..n)
                    }
                    (AnswerWith::Flip(_), None) => return Err(no_such_answer()),
                    (_, n) => n.and_then(|n| bytes.get(..n)),
                }
            }
            AnswerWith::Other(name) => {
                let other = self.tdi(name)?.0;
                let theirs = self
                    .held
                    .iter()
                    .find(|h| h.tdi == other)
                    .ok_or_else(nothing_held)?;
                let (req, len) = (theirs.request, theirs.len);
                let n = self
                    .backend
                    .mailbox(req.get(..len).ok_or_else(nothing_held)?, &mut bytes)
                    .ok_or_else(no_such_answer)?;
                bytes.get(..n)
            }
        };
        let mut request = held.as_ref().map_or([0u8; MAX_RELAY_BYTES], |h| h.request);
        let outcome = self.backend.respond(tdi, answer, &mut request);
        match (outcome, held) {
            (Ok(Completion::Relay(len)), _) => self.keep(Held { tdi, request, len })?,
            // The answer was refused: the exchange is outstanding, its request still held.
            (Err(Error::RelayMalformed | Error::Busy(_)), Some(held)) => self.keep(held)?,
            _ => {}
        }
        Ok(outcome)
    }

    fn unbind_all(&mut self, tdi: TdiId) -> TsmResult<Completion> {
        let mut last = Ok(Completion::Resumable);
        for _ in 0..MAX_UNBIND_CALLS {
            last = self.backend.unbind(tdi);
            if last != Ok(Completion::Resumable) {
                break;
            }
        }
        last
    }

    fn unbind_force_all(&mut self, tdi: TdiId) -> TsmResult<Completion> {
        let mut last = Ok(Completion::Resumable);
        for _ in 0..MAX_UNBIND_CALLS {
            last = self.backend.unbind_force(tdi);
            if last != Ok(Completion::Resumable) {
                break;
            }
        }
        last
    }

    fn zap(&mut self, device: &'a str, bar: Option<u8>) -> TsmResult<()> {
        let (bars, _) = self
            .device_parts(device)
            .map_err(|_| Error::InvalidHandle)?;
        let bars: Vec<(u64, u64), { tsm_core::capacity::MAX_BARS }> =
            Vec::from_slice(bars).map_err(|_| Error::TooManyRanges)?;
        for (i, &(base, pages)) in bars.iter().enumerate() {
            if bar.is_none_or(|b| usize::from(b) == i) {
                self.backend.host_zap(MmioRange::from_raw(base, pages)?)?;
            }
        }
        Ok(())
    }

    /// A vfio-pci path: (unbind every TDI of every device first, or not), zap every BAR, then
    /// what the path does to the device.
    /// What the DMA of every TDI of `devices` reaches now (a TDI the backend cannot answer
    /// for counts as reaching shared memory only: it has no state to reach anything with).
    fn reaches(
        &mut self,
        devices: &[&'a str],
    ) -> Result<
        Vec<(TdiId, DmaReach), { MAX_TDIS_PER_DEVICE * crate::scenario::MAX_DEVICE_SET }>,
        Setup<'a>,
    > {
        let mut ids: Vec<TdiId, { MAX_TDIS_PER_DEVICE * crate::scenario::MAX_DEVICE_SET }> =
            Vec::new();
        for &d in devices {
            for &t in self.device_parts(d)?.1 {
                ids.push(self.tdi(t)?.0).map_err(|_| too_many())?;
            }
        }
        let mut out = Vec::new();
        for id in ids {
            let r = self.backend.dma_reach(id).unwrap_or(DmaReach::SharedOnly);
            out.push((id, r)).map_err(|_| too_many())?;
        }
        Ok(out)
    }

    fn host_path(
        &mut self,
        path: HostPath,
        devices: &[&'a str],
        order: Order,
    ) -> Result<TsmResult<()>, Setup<'a>> {
        let mut tdis: Vec<TdiId, { MAX_TDIS_PER_DEVICE * crate::scenario::MAX_DEVICE_SET }> =
            Vec::new();
        let mut ifaces: Vec<
            RequesterId,
            { MAX_TDIS_PER_DEVICE * crate::scenario::MAX_DEVICE_SET },
        > = Vec::new();
        for &d in devices {
            for &t in self.device_parts(d)?.1 {
                tdis.push(self.tdi(t)?.0).map_err(|_| too_many())?;
                ifaces.push(self.iface(t)?).map_err(|_| too_many())?;
            }
        }
        Ok((|| {
            match order {
                Order::UnbindFirst => {
                    for &t in &tdis {
                        // Still Resumable after MAX_UNBIND_CALLS: the zap then shows the result.
                        let _ = self.unbind_all(t)?;
                    }
                }
                Order::UnbindForceFirst => {
                    for &t in &tdis {
                        // As above.
                        let _ = self.unbind_force_all(t)?;
                    }
                }
                Order::ZapFirst => {}
            }
            for d in devices {
                self.zap(d, None)?;
            }
            let event = match path {
                HostPath::HotReset => DeviceEvent::ConventionalReset,
                HostPath::MemDisable
                | HostPath::D3hot
                | HostPath::RuntimePm
                | HostPath::FlrPcie
                | HostPath::FlrAf
                | HostPath::ResetIoctl
                | HostPath::Close => DeviceEvent::Disturb,
            };
            for &i in &ifaces {
                self.backend.device_event(i, event)?;
            }
            Ok(())
        })())
    }
}

fn reach_is(r: DmaReach, want: ReachName) -> bool {
    matches!(
        (r, want),
        (DmaReach::Private(_), ReachName::Private) | (DmaReach::SharedOnly, ReachName::Shared)
    )
}

fn state_is(s: TdiState, want: StateName) -> bool {
    matches!(
        (s, want),
        (TdiState::Unbound, StateName::Unbound)
            | (TdiState::Locked { .. }, StateName::Locked)
            | (TdiState::Run { .. }, StateName::Run)
            | (TdiState::Error { .. }, StateName::Error)
            | (TdiState::Unbinding { .. }, StateName::Unbinding)
    )
}

fn leaf_is(l: Option<&Leaf>, want: LeafName) -> bool {
    matches!(
        (l.map(|l| l.state), want),
        (None, LeafName::None)
            | (Some(LeafState::Mapped), LeafName::Mapped)
            | (Some(LeafState::Blocked { .. }), LeafName::Blocked)
    )
}

/// Runs one scenario, printing every line (see [`run_scenario_with`]).
pub fn run_scenario(
    backend: &mut dyn Backend,
    path: &str,
    text: &str,
    out: &mut dyn Write,
) -> Summary {
    run_scenario_with(backend, path, text, out, true)
}

/// Runs one scenario, read from `path`. Stops at the first line that fails: a status other
/// than the expected one prints `path:line: operation => got FAIL expected X`, a line that
/// does not parse or names what it cannot (`path:line:column: message`). With `verbose`,
/// every line that passes prints `path:line: operation => got (expected X)` as well.
pub fn run_scenario_with(
    backend: &mut dyn Backend,
    path: &str,
    text: &str,
    out: &mut dyn Write,
    verbose: bool,
) -> Summary {
    let mut summary = Summary::default();
    let mut interp = Interpreter {
        backend,
        names: Vec::new(),
        hold_next: Vec::new(),
        held: Vec::new(),
        answers: Vec::new(),
        manual_invalidations: false,
    };
    for (index, raw) in text.lines().enumerate() {
        let lineno = index.saturating_add(1);
        let body = crate::scenario::strip_comment(raw)
            .split("->")
            .next()
            .unwrap_or("")
            .trim();
        let result = parse_line(raw).and_then(|line| match line {
            Some(line) => interp.run(&line.op).map(|o| Some((line, o))),
            None => Ok(None),
        });
        let (line, observed): (Line<'_>, Observed) = match result {
            Ok(Some(done)) => done,
            Ok(None) => continue,
            Err(mut e) => {
                if e.token.is_empty() {
                    e.token = body.split_whitespace().next().unwrap_or("");
                }
                let e = e.in_line(raw);
                let _ = writeln!(out, "{}", e.at(path, lineno));
                summary.failed = summary.failed.saturating_add(1);
                return summary;
            }
        };
        let mut got: String<160> = String::new();
        let _ = write!(got, "{observed}");
        let expect = line.expect_on(interp.backend.name());
        if got.as_str() == expect {
            if verbose {
                let _ = writeln!(out, "{path}:{lineno}: {body} => {got} (expected {expect})");
            }
            summary.passed = summary.passed.saturating_add(1);
        } else {
            let _ = writeln!(
                out,
                "{path}:{lineno}: {body} => {got} FAIL expected {expect}"
            );
            summary.failed = summary.failed.saturating_add(1);
            return summary;
        }
    }
    summary
}

/// What is wrong with using `name` as a `want` among the `declared` names and their kinds:
/// not declared, or declared as another kind (with the nearest declared name of the right
/// kind); `None` when it is fine. The one rule for the file's check and for running a line.
fn name_problem<'a>(
    declared: impl Iterator<Item = (&'a str, NameKind)> + Clone,
    name: &'a str,
    want: NameKind,
) -> Option<Diagnostic<'a>> {
    let same_kind = declared.clone().filter(|(_, k)| *k == want).map(|(n, _)| n);
    let problem = match declared.clone().find(|(n, _)| *n == name) {
        Some((_, k)) if k == want => return None,
        Some((_, k)) => Problem::WrongKind(k),
        None => Problem::UnknownName,
    };
    Some(Diagnostic::new(problem, name, want.expected()).nearest(nearest(name, same_kind)))
}

/// The name a `guest`, `device` or `tdi` line declares, read from its words alone (for a line
/// that does not parse).
fn meant_declaration(raw: &str) -> Option<(&str, NameKind)> {
    let mut words = crate::scenario::strip_comment(raw)
        .split("->")
        .next()?
        .split_whitespace();
    let kind = match words.next()? {
        "guest" => NameKind::Guest,
        "device" => NameKind::Device,
        "tdi" => NameKind::Tdi,
        _ => return None,
    };
    Some((words.next()?, kind))
}

/// Checks every line of a scenario without running it, once for every backend: prints each
/// line that does not parse, or uses a name no earlier line declared (or declared as another
/// kind), as `path:line:column: message`, and returns how many such lines there are. Raw
/// handles (`#N`) are the firmware's to judge. A name whose declaring line fails at run time
/// is still caught then, on the backend where it failed.
pub fn check_scenario(path: &str, text: &str, out: &mut dyn Write) -> u32 {
    let mut errors = 0u32;
    let mut declared: Vec<(&str, NameKind), MAX_NAMES> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let lineno = index.saturating_add(1);
        let line = match parse_line(raw) {
            Ok(Some(line)) => line,
            Ok(None) => continue,
            Err(e) => {
                let _ = writeln!(out, "{}", e.at(path, lineno));
                errors = errors.saturating_add(1);
                // The name a bad declaring line meant is known from here on: one mistake,
                // one error, not one more at every later use of the name.
                if let Some(d) = meant_declaration(raw) {
                    let _ = declared.push(d);
                }
                continue;
            }
        };
        let mut problem = None;
        line.op.for_each_use(|name, want| {
            if problem.is_some() || name.starts_with('#') {
                return;
            }
            problem = name_problem(declared.iter().copied(), name, want);
        });
        // A declaring line expected to fail declares nothing (as when it runs; where the
        // backends' expectations differ, the default one decides).
        let declares = line.op.declares().filter(|_| line.expect == "Ok");
        if problem.is_none()
            && let Some((name, _)) = declares
            && let Some((_, was)) = declared.iter().find(|(n, _)| *n == name)
        {
            problem = Some(Diagnostic::new(
                Problem::Redeclared(*was),
                name,
                "a name no earlier line declared",
            ));
        }
        if let Some(e) = problem {
            let _ = writeln!(out, "{}", e.in_line(raw).at(path, lineno));
            errors = errors.saturating_add(1);
        }
        if let Some(d) = declares
            && declared.push(d).is_err()
        {
            let mut e = too_many();
            e.token = d.0;
            let _ = writeln!(out, "{}", e.in_line(raw).at(path, lineno));
            errors = errors.saturating_add(1);
        }
    }
    errors
}
