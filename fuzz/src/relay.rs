//! `relay_answers`: the core's relayed exchanges under a hostile host. A firmware over an
//! in-memory table with two guests, two devices and two TDIs each (reports inside the BARs),
//! and the model device behind the host. Each step starts an operation that needs the device
//! (bind, guest start, interface check, unbind, forced unbind), hands an answer to a TDI's
//! outstanding request through `Tsm::device_response` (the device's own answer, nothing, the
//! device's answer with bits flipped, cut short, padded, with a wrong DOE length, an answer
//! kept from earlier: a replay, another TDI's, an answer to an exchange that ended; the
//! request reflected, made-up bytes, bytes from the input, too long), relays a TDI's exchange
//! to its end, maps a page, or acts beside the firmware (device misbehaviour, disturbance,
//! reset, held TLB flushes, a device error, the host's stream set-up).
//!
//! After every call: no panic; `tsm_tests::invariants::check` and the record tables'
//! consistency; every request the firmware hands out opens at the device's end as a request
//! of the TDI's outstanding exchange; an answer opens exactly when it is the device's own
//! answer to that exchange ([`Answers::opens_for`]); `RelayMalformed` and `NoExchange` change
//! nothing at all (the whole snapshot, `Tsm::snapshot`, compared); every other refusal and
//! every relayed step changes only what [`crate::exempt`] allows. At the end, once the host
//! cooperates (flushes completed, the device behaving), every TDI unbinds within a bounded
//! number of calls, the host resets the devices and sets their streams up, and every TDI binds
//! again, relayed to its end, and unbinds again.

use arbitrary::{Arbitrary, Unstructured};
use tsm_core::device_model::{DeviceEvent, ModelDevice};
use tsm_core::mem_table::MemTable;
use tsm_core::tdisp::report::{RANGE_ATTR_NON_TEE, wire_range};
use tsm_core::tsm::Snapshot;
use tsm_core::{
    Completion, DeviceId, Error, Gpa, GuestId, Hpa, MAX_RELAY_BYTES, MmioRange, ModelSession,
    PageSize, RequesterId, TdiId, TdiState, Tsm, TsmResult,
};

use crate::answer::{Answer, Answers, check_request};
use crate::common::{self, core_diff, fail, fid_of, registry_consistent};
use crate::enc::ops;
use crate::exempt::{Call, Exempt, exemption};
use crate::tdx::DevAction;

/// Steps per input.
pub const MAX_STEPS: usize = 64;
/// Rounds a relay to the end takes at most.
const MAX_ROUNDS: usize = 64;
/// Calls an unbind to the end makes at most.
const UNBIND_CALLS: usize = 64;
/// Guests, devices, TDIs per device.
const GUESTS: usize = 2;
const DEVICES: usize = 2;
const TDIS_PER_DEVICE: usize = 2;
/// Leaves the table holds.
const LEAVES: usize = 128;

type Fw = Tsm<MemTable<LEAVES>, ModelSession>;
type Snap = Snapshot<MemTable<LEAVES>>;

/// BAR of device `d`: 8 MiB, 16 MiB apart.
pub fn bar(d: usize) -> u64 {
    0x8000_0000 + (d as u64) * 0x100_0000
}

ops! {
    /// One step.
    pub enum Step {
        /// Starts an operation on TDI `tdi % 4`: `op % 5` = bind to guest `guest % 2`, the
        /// guest's start, check, unbind, forced unbind (which asks the device nothing).
        Begin { tdi: u8, op: u8, guest: u8 },
        /// Hands `answer` to TDI `tdi % 4`'s outstanding request (answering the last request
        /// of TDI `of % 4`: its own, or another's).
        Give { tdi: u8, of: u8, answer: Answer },
        /// Hands the next `len % 64 + 1` bytes of the input (after this step) to TDI
        /// `tdi % 4`, inside a DOE header of type 2 when `doe`.
        Raw { tdi: u8, len: u8, doe: bool },
        /// The device's own answers to TDI `tdi % 4`'s requests until its operation ends.
        Finish { tdi: u8 },
        /// Maps page `page` of TDI `tdi % 4`'s first owned range for its owner.
        Map { tdi: u8, page: u8 },
        /// The device or host acts on TDI `tdi % 4`'s interface.
        Device { tdi: u8, action: DevAction },
        /// Hold guest `guest % 2`'s TLB flushes, or complete them.
        HoldFlush { guest: u8, hold: bool },
        /// `Tsm::device_error` of TDI `tdi % 4`.
        DeviceError { tdi: u8 },
        /// `Tsm::setup_stream` of device `dev % 2`.
        Setup { dev: u8 },
    }
}

/// How deep a run got.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    /// Calls of the firmware.
    pub calls: usize,
    /// `Relay(n)` outcomes.
    pub relays: usize,
    /// Answers refused as `RelayMalformed`.
    pub malformed: usize,
    /// Answers that opened.
    pub opened: usize,
    /// `NoExchange` refusals.
    pub no_exchange: usize,
    /// Refusals that changed something under an exemption.
    pub exempt: usize,
    /// Some TDI was bound, running, in ERROR, mid-unbind.
    pub locked: bool,
    /// See `locked`.
    pub run: bool,
    /// See `locked`.
    pub error: bool,
    /// See `locked`.
    pub unbinding: bool,
}

struct World {
    fw: Fw,
    device: ModelDevice,
    answers: Answers,
    guests: Vec<GuestId>,
    devices: Vec<DeviceId>,
    tdis: Vec<TdiId>,
    ifaces: Vec<RequesterId>,
    /// Each TDI's last request, as the host kept it.
    requests: Vec<Option<Vec<u8>>>,
    /// Guest pages mapped so far (each map takes a fresh one).
    next_gpa: u64,
    stats: Stats,
}

/// Runs one input; panics when a check fails.
pub fn run(data: &[u8]) -> Stats {
    let mut u = Unstructured::new(data);
    let mut w = World::new();
    for _ in 0..MAX_STEPS {
        if u.is_empty() {
            break;
        }
        let Ok(step) = Step::arbitrary(&mut u) else {
            break;
        };
        let raw = match step {
            Step::Raw { len, .. } => {
                let n = (usize::from(len) % 64 + 1).min(u.len());
                u.bytes(n).map(<[u8]>::to_vec).unwrap_or_default()
            }
            _ => Vec::new(),
        };
        w.step(step, &raw);
    }
    w.finish();
    w.stats
}

impl World {
    fn new() -> Self {
        let fw = Fw::new(MemTable::new(), ModelSession::model());
        let mut device = ModelDevice::model();
        let guests = (0..GUESTS)
            .map(|_| fw.create_guest().unwrap_or_else(|e| fail(e)))
            .collect();
        let mut devices = Vec::new();
        let mut tdis = Vec::new();
        let mut ifaces = Vec::new();
        for d in 0..DEVICES {
            let rid = RequesterId::try_new(0, 3 + d as u8, 0, 0).unwrap_or_else(|e| fail(e));
            let bars = [MmioRange::from_raw(bar(d), 2048).unwrap_or_else(|e| fail(e))];
            let dev = fw.create_device(rid, &bars).unwrap_or_else(|e| fail(e));
            devices.push(dev);
            for f in 0..TDIS_PER_DEVICE {
                let iface =
                    RequesterId::try_new(0, 3 + d as u8, 0, f as u8).unwrap_or_else(|e| fail(e));
                tdis.push(fw.create_tdi(dev, iface).unwrap_or_else(|e| fail(e)));
                ifaces.push(iface);
                // A private 64 KiB range and a shared page, in this function's half of the BAR.
                let base = bar(d) + (f as u64) * 0x40_0000;
                device.link_mut().set_report(
                    iface,
                    &[
                        wire_range(base, 16, 0, 0),
                        wire_range(base + 0x20_0000, 1, RANGE_ATTR_NON_TEE, 1),
                    ],
                );
            }
        }
        World {
            fw,
            device,
            answers: Answers::default(),
            guests,
            devices,
            tdis,
            ifaces,
            requests: vec![None; DEVICES * TDIS_PER_DEVICE],
            next_gpa: 0x10_0000_0000,
            stats: Stats::default(),
        }
    }

    fn snapshot(&self) -> Snap {
        self.fw.snapshot().unwrap_or_else(|e| fail(e))
    }

    /// Runs one call of the firmware that may ask to relay and checks it: `call` names the
    /// operation, `handed` the answer given (for the oracle).
    fn call(
        &mut self,
        i: usize,
        call: Call,
        handed: Option<&[u8]>,
        f: impl FnOnce(&Fw, &mut [u8]) -> TsmResult<Completion>,
    ) -> TsmResult<Completion> {
        let t = self.tdis[i];
        let before = self.snapshot();
        let mut buf = [0u8; MAX_RELAY_BYTES];
        let outcome = f(&self.fw, &mut buf);
        let after = self.snapshot();
        self.stats.calls += 1;
        let what = format!("{call:?} of TDI {i}, handed {handed:02x?} -> {outcome:?}");
        common::trace(&what);
        common::invariants(&self.fw, &what);
        if let Err(e) = registry_consistent(&after) {
            fail(format!("records disagree after {what}: {e}"));
        }
        let rec = |s: &Snap| s.tdis[usize::from(t.slot())].unwrap_or_else(|| fail("no TDI"));
        let waiting = rec(&before).exchange.map(|e| e.op);
        // The answer oracle.
        if let (Call::Respond(_), Some(bytes), Some(ex)) = (call, handed, rec(&before).exchange) {
            let genuine = self
                .answers
                .opens_for(bytes, fid_of(self.ifaces[i]), ex.seq);
            match outcome {
                Err(Error::RelayMalformed) => {
                    self.stats.malformed += 1;
                    if genuine {
                        fail(format!(
                            "the device's own answer refused as malformed: {what}"
                        ));
                    }
                }
                _ if !genuine => fail(format!(
                    "bytes the device never sent for this exchange went on: {what}"
                )),
                _ => self.stats.opened += 1,
            }
        }
        if let (Call::Respond(_), Err(e)) = (call, outcome)
            && let Err(why) = crate::exempt::ended(waiting, Some(e), Some(&rec(&after)))
        {
            fail(format!("{why}: {what}"));
        }
        match outcome {
            Err(Error::RelayMalformed | Error::NoExchange) => {
                if outcome == Err(Error::NoExchange) {
                    self.stats.no_exchange += 1;
                }
                if before != after {
                    fail(format!("{what} changed something"));
                }
            }
            Ok(Completion::Relay(_)) | Err(_) => {
                let exempt = match outcome {
                    Ok(c) => exemption(call, Ok(c), waiting),
                    Err(e) => exemption(call, Err(Some(e)), waiting),
                };
                let bl = common::leaves(before.table());
                let al = common::leaves(after.table());
                let diff = core_diff(&before, &after, exempt).and_then(|()| {
                    if exempt.touches_table() {
                        common::leaves_diff(&before.owners, &bl, &al, exempt)
                    } else {
                        Ok(())
                    }
                });
                if let Err(e) = diff {
                    fail(format!("{what} ({exempt:?}) changed state: {e}"));
                }
                if outcome.is_err() && exempt != Exempt::Nothing && before != after {
                    self.stats.exempt += 1;
                }
            }
            Ok(_) => {}
        }
        if let Ok(Completion::Relay(n)) = outcome {
            self.stats.relays += 1;
            let ex = rec(&after)
                .exchange
                .unwrap_or_else(|| fail(format!("relay with nothing outstanding: {what}")));
            let request = buf
                .get(..n)
                .unwrap_or_else(|| fail("relay past the buffer"));
            if let Err(e) = check_request(request, fid_of(self.ifaces[i]), ex.seq) {
                fail(format!("{e}: {what}"));
            }
            self.requests[i] = Some(request.to_vec());
        }
        for r in after.tdis.iter().flatten() {
            match r.state {
                TdiState::Unbound => {}
                TdiState::Locked { .. } => self.stats.locked = true,
                TdiState::Run { .. } => self.stats.run = true,
                TdiState::Error { .. } => self.stats.error = true,
                TdiState::Unbinding { .. } => self.stats.unbinding = true,
            }
        }
        outcome
    }

    /// Hands `bytes` (or nothing) to TDI `i`'s outstanding request.
    fn give(&mut self, i: usize, bytes: Option<Vec<u8>>) -> TsmResult<Completion> {
        let t = self.tdis[i];
        self.call(i, Call::Respond(t), bytes.as_deref(), |fw, buf| {
            fw.device_response(t, bytes.as_deref(), buf)
        })
    }

    /// The device's own answers to TDI `i`'s requests from `outcome` on, until the operation
    /// ends.
    fn finish_relay(
        &mut self,
        i: usize,
        mut outcome: TsmResult<Completion>,
    ) -> TsmResult<Completion> {
        for _ in 0..MAX_ROUNDS {
            let Ok(Completion::Relay(_)) = outcome else {
                return outcome;
            };
            let request = self.requests[i].clone().unwrap_or_default();
            let answer = self.answers.genuine(&mut self.device, &request);
            outcome = self.give(i, answer);
        }
        fail(format!(
            "TDI {i}'s relay did not end in {MAX_ROUNDS} rounds"
        ))
    }

    fn step(&mut self, step: Step, raw: &[u8]) {
        let n = self.tdis.len();
        match step {
            Step::Begin { tdi, op, guest } => {
                let i = usize::from(tdi) % n;
                let t = self.tdis[i];
                let g = self.guests[usize::from(guest) % GUESTS];
                let _ = match op % 5 {
                    0 => self.call(i, Call::Bind(t), None, |fw, b| fw.bind(t, g, b)),
                    1 => self.call(i, Call::Start(t), None, |fw, b| fw.guest_start(g, t, b)),
                    2 => self.call(i, Call::Check(t), None, |fw, b| fw.check_interface(t, b)),
                    3 => self.call(i, Call::Unbind(t), None, |fw, b| fw.unbind(t, b)),
                    _ => self.call(i, Call::Force(t), None, |fw, _| fw.unbind_forced(t)),
                };
            }
            Step::Give { tdi, of, answer } => {
                let i = usize::from(tdi) % n;
                let request = self.requests[usize::from(of) % n]
                    .clone()
                    .unwrap_or_default();
                let (bytes, _) = self.answers.make(answer, &mut self.device, &request);
                let _ = self.give(i, bytes);
            }
            Step::Raw { tdi, doe, .. } => {
                let i = usize::from(tdi) % n;
                let bytes = if doe {
                    let mut out = vec![0u8; raw.len() + 16];
                    let k = tsm_core::relay::doe::encode(
                        &mut out,
                        tsm_core::relay::doe::TYPE_SECURED_SPDM,
                        raw,
                    )
                    .unwrap_or(0);
                    out.truncate(k);
                    out
                } else {
                    raw.to_vec()
                };
                let _ = self.give(i, Some(bytes));
            }
            Step::Finish { tdi } => {
                let i = usize::from(tdi) % n;
                let _ = self.finish_relay(i, Ok(Completion::Relay(0)));
            }
            Step::Map { tdi, page } => {
                let i = usize::from(tdi) % n;
                let t = self.tdis[i];
                let Ok(rec) = self.fw.tdi(t) else { return };
                let (Some(owner), Some(range)) = (
                    rec.state.owner(),
                    self.fw
                        .owned_ranges(t)
                        .ok()
                        .and_then(|r| r.first().copied()),
                ) else {
                    return;
                };
                let hpa = range.base().as_u64() + (u64::from(page) % range.pages()) * 0x1000;
                let gpa = self.next_gpa;
                self.next_gpa += 0x1000;
                let before = self.snapshot();
                let r = self.fw.map_mmio(
                    t,
                    owner,
                    Gpa::try_new(gpa).unwrap_or_else(|e| fail(e)),
                    Hpa::try_new(hpa).unwrap_or_else(|e| fail(e)),
                    PageSize::Size4K,
                );
                if r.is_err() && self.snapshot() != before {
                    fail(format!("a refused map changed something: {r:?}"));
                }
            }
            Step::Device { tdi, action } => {
                let iface = self.ifaces[usize::from(tdi) % n];
                let d = &mut self.device;
                match action {
                    DevAction::Misbehave { how } => d
                        .link_mut()
                        .set_misbehaviour(iface, common::misbehaviour(how)),
                    DevAction::Behave => d.link_mut().set_misbehaviour(iface, None),
                    DevAction::Disturb => d.event(iface, DeviceEvent::Disturb),
                    DevAction::Reset => d.event(iface, DeviceEvent::ConventionalReset),
                }
            }
            Step::HoldFlush { guest, hold } => {
                let g = self.guests[usize::from(guest) % GUESTS];
                let _ = self.fw.with_table(|t| {
                    t.set_defer_flush(g, hold);
                    if !hold {
                        t.complete_flush(g);
                    }
                });
            }
            Step::DeviceError { tdi } => {
                let t = self.tdis[usize::from(tdi) % n];
                let before = self.snapshot();
                let r = self.fw.device_error(t);
                if r.is_err() && self.snapshot() != before {
                    fail(format!("a refused device error changed something: {r:?}"));
                }
                common::invariants(&self.fw, "device error");
            }
            Step::Setup { dev } => {
                let d = self.devices[usize::from(dev) % DEVICES];
                let before = self.snapshot();
                let r = self.fw.setup_stream(d);
                if r.is_err() && self.snapshot() != before {
                    fail(format!("a refused stream set-up changed something: {r:?}"));
                }
            }
        }
    }

    /// Unbinds TDI `i` to the end, relaying the device's own answers: `Done`, the TDI unbound
    /// with nothing outstanding.
    fn unbind_to_end(&mut self, i: usize, what: &str) {
        let t = self.tdis[i];
        let mut again = true;
        for _ in 0..UNBIND_CALLS {
            let first = self.call(i, Call::Unbind(t), None, |fw, b| fw.unbind(t, b));
            match self.finish_relay(i, first) {
                Ok(Completion::Resumable) => continue,
                // A STOP the device answered while it misbehaved (an answer the host lost,
                // which the device gives again to the same request) ends that exchange as the
                // device's failure; the host calls once more, and the next STOP is new.
                Err(Error::DeviceMalformed | Error::DeviceRefused | Error::DeviceUnresponsive)
                    if again =>
                {
                    again = false;
                }
                Ok(Completion::Done) => {
                    let rec = self.fw.tdi(t).unwrap_or_else(|e| fail(e));
                    if rec.state != TdiState::Unbound || rec.exchange.is_some() {
                        fail(format!("{what}: unbind done, TDI {rec:?}"));
                    }
                    return;
                }
                other => fail(format!(
                    "{what}: TDI {i} ({:?}) did not unbind: {other:?}",
                    self.fw.tdi(t)
                )),
            }
        }
        fail(format!(
            "{what}: TDI {i} did not unbind in {UNBIND_CALLS} calls"
        ));
    }

    /// Once the host cooperates, every TDI unbinds, and after the host resets the devices and
    /// sets their streams up, binds again and unbinds again.
    fn finish(&mut self) {
        let _ = self.fw.with_table(|t| {
            for &g in &self.guests {
                t.set_defer_flush(g, false);
                t.complete_flush(g);
            }
        });
        for &iface in &self.ifaces {
            self.device.link_mut().set_misbehaviour(iface, None);
        }
        for i in 0..self.tdis.len() {
            self.unbind_to_end(i, "after the run");
        }
        for &iface in &self.ifaces {
            self.device.event(iface, DeviceEvent::ConventionalReset);
        }
        for d in 0..DEVICES {
            if let Err(e) = self.fw.setup_stream(self.devices[d]) {
                fail(format!(
                    "stream set-up of device {d} with every TDI unbound: {e:?}"
                ));
            }
        }
        for i in 0..self.tdis.len() {
            let t = self.tdis[i];
            let g = self.guests[i % GUESTS];
            let first = self.call(i, Call::Bind(t), None, |fw, b| fw.bind(t, g, b));
            let r = self.finish_relay(i, first);
            let rec = self.fw.tdi(t).unwrap_or_else(|e| fail(e));
            if r != Ok(Completion::Done) || rec.state != (TdiState::Locked { owner: g }) {
                fail(format!("TDI {i} did not bind again: {r:?}, {rec:?}"));
            }
            self.unbind_to_end(i, "after the rebind");
        }
    }
}

/// A seed: the steps, each `Raw` step followed by its bytes.
pub fn encode(steps: &[(Step, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (s, raw) in steps {
        crate::enc::Encode::encode(s, &mut out);
        if let Step::Raw { len, .. } = s {
            let n = usize::from(*len) % 64 + 1;
            let mut bytes = raw.clone();
            bytes.resize(n, 0);
            out.extend(bytes);
        }
    }
    out
}

/// Decodes a seed (the seed generator checks the round trip).
pub fn decode(data: &[u8]) -> Vec<(Step, Vec<u8>)> {
    let mut u = Unstructured::new(data);
    let mut out = Vec::new();
    while !u.is_empty() && out.len() < MAX_STEPS {
        let Ok(step) = Step::arbitrary(&mut u) else {
            break;
        };
        let raw = match step {
            Step::Raw { len, .. } => {
                let n = (usize::from(len) % 64 + 1).min(u.len());
                u.bytes(n).map(<[u8]>::to_vec).unwrap_or_default()
            }
            _ => Vec::new(),
        };
        out.push((step, raw));
    }
    out
}
