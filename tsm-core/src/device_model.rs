//! A device security manager (DSM) for tests: it answers encoded TDISP requests per the TDISP
//! state machine, keeps each interface's state and report, and can be told to misbehave.
//! [`ModelDevice`] is that DSM behind its DOE mailbox and its end of the SPDM session: what a
//! host relays the firmware's requests to.

use crate::capacity::MAX_TDIS;
use crate::ids::RequesterId;
use crate::lifecycle::TdispState;
use crate::mmio::MmioRange;
use crate::relay::spdm::{self, VENDOR_DEFINED_REQUEST};
use crate::relay::{self, Direction, MAX_RELAY_BYTES, ModelSession, RecordContext, doe};
use crate::tdisp::message::{
    Capabilities, ErrorBody, Request, Response, decode_request, encode_response,
};
use crate::tdisp::report::{
    MAX_REPORT_BYTES, RANGE_ATTR_NON_TEE, WireMmioRange, encode_report, report_head, wire_range,
};
use crate::tdisp::requester::MAX_MESSAGE_BYTES;
use crate::tdisp::{NONCE_SIZE, TDISP_VERSION_1_0, error_code, function_id};
use crate::transport::{DeviceFault, ReportedRange};
use zerocopy::little_endian::{U16, U32, U64};

/// The model DSM behind its DOE mailbox, with the device's end of the session: the device of
/// host tests, the scenario suite and the QEMU boot. The host hands it relayed requests
/// ([`ModelDevice::answer`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelDevice {
    dsm: DsmModel,
    session: ModelSession,
    /// The last requests the device acted on, by function and sequence number, with its
    /// answers: a request sent again (the host lost the answer) gets the same answer without
    /// being acted on twice, and one older than all of its function's is a replay the device
    /// drops (a host replaying an old STOP), as a real session's sequence window does. By
    /// function because the model stands for every device, and a sharded firmware keeps a
    /// session (and a sequence count) per shard, as it would per device.
    answered: heapless::Deque<Answered, ANSWER_WINDOW>,
}

/// Requests the model device remembers answering.
pub const ANSWER_WINDOW: usize = 8;

/// One answered request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answered {
    function_id: u32,
    seq: u64,
    answer: [u8; MAX_RELAY_BYTES],
    len: usize,
}

impl Default for ModelDevice {
    fn default() -> Self {
        Self::model()
    }
}

/// Most ranges a model report holds: more than the firmware accepts, to test that limit.
pub const MODEL_MAX_RANGES: usize = 20;

/// What the host or the device does to an interface outside TDISP messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceEvent {
    /// Function level reset, memory-space or bus-master disable, D3hot, or a configuration
    /// change: a CONFIG_LOCKED or RUN interface goes to ERROR (PCIe 6.x 11.3.2).
    Disturb,
    /// Conventional reset: every interface returns to CONFIG_UNLOCKED.
    ConventionalReset,
}

/// Ways the model DSM can misbehave for one interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Misbehaviour {
    /// Never answers.
    Silent,
    /// Answers bytes that are not a TDISP message.
    Garbage,
    /// Answers about another interface.
    WrongInterface,
    /// Answers with TDISP version 2.0.
    WrongVersion,
    /// Answers every request with TDISP_ERROR.
    Refuse,
    /// Sends report portions whose remainders do not add up.
    InconsistentReport,
    /// Reports its ranges' host addresses without the MMIO_REPORTING_OFFSET of the LOCK.
    IgnoresReportingOffset,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Interface {
    fid: u32,
    state: TdispState,
    nonce: [u8; NONCE_SIZE],
    /// MMIO_REPORTING_OFFSET of the LOCK that locked the interface.
    offset: u64,
    report: heapless::Vec<WireMmioRange, MODEL_MAX_RANGES>,
}

/// The model DSM.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DsmModel {
    interfaces: heapless::Vec<Interface, MAX_TDIS>,
    misbehaviour: heapless::Vec<(u32, Misbehaviour), 8>,
    nonces_issued: u64,
}

impl ModelDevice {
    /// A fresh model DSM with the session [`ModelSession::model`].
    pub const fn model() -> Self {
        Self {
            dsm: DsmModel::new(),
            session: ModelSession::model(),
            answered: heapless::Deque::new(),
        }
    }

    /// The DSM.
    pub fn link_mut(&mut self) -> &mut DsmModel {
        &mut self.dsm
    }

    /// The DSM, read only.
    pub fn dsm(&self) -> &DsmModel {
        &self.dsm
    }

    /// What the device's DOE mailbox returns for the relayed `request`: the answer's length in
    /// `response`, or `None` when the device does not answer (it is silent, the request does
    /// not open under its session, or it is older than every request the device remembers
    /// answering: a real DSM drops such a record). A request it answered lately gets the same
    /// answer again, without being acted on twice.
    #[must_use = "the answer's length is what the host relays back; None is a silent device"]
    pub fn answer(&mut self, request: &[u8], response: &mut [u8]) -> Option<usize> {
        // In the clear (DOE type 1): only version negotiation, answered beside the session.
        if doe::decode(request, doe::TYPE_SPDM).is_ok() {
            return relay::version::respond(request, response);
        }
        let body = doe::decode(request, doe::TYPE_SECURED_SPDM).ok()?;
        let record = relay::record_of(&self.session, body).ok()?;
        let mut app = [0u8; MAX_RELAY_BYTES];
        // FUNCTION_ID sits at bytes 4..8 of the TDISP header, after the SPDM head and protocol.
        let fid_at = spdm::OVERHEAD + 4;
        let (ctx, n) = self
            .session
            .open_any(Direction::Request, record, fid_at, &mut app)?;
        let same = |a: &&Answered| a.function_id == ctx.function_id;
        if let Some(done) = self.answered.iter().filter(same).find(|a| a.seq == ctx.seq) {
            let dst = response.get_mut(..done.len)?;
            dst.copy_from_slice(done.answer.get(..done.len)?);
            return Some(done.len);
        }
        let oldest = self.answered.iter().filter(same).map(|a| a.seq).min();
        if self.answered.is_full() && oldest.is_some_and(|o| ctx.seq < o) {
            return None;
        }
        let tdisp = spdm::decode(app.get(..n)?, VENDOR_DEFINED_REQUEST).ok()?;
        let mut reply = [0u8; MAX_MESSAGE_BYTES];
        let k = self.dsm.exchange(tdisp, &mut reply)?;
        let back = RecordContext {
            direction: Direction::Response,
            ..ctx
        };
        let n = relay::frame(&mut self.session, &back, reply.get(..k)?, response).ok()?;
        let mut done = Answered {
            function_id: ctx.function_id,
            seq: ctx.seq,
            answer: [0; MAX_RELAY_BYTES],
            len: n,
        };
        done.answer
            .get_mut(..n)?
            .copy_from_slice(response.get(..n)?);
        if self.answered.is_full() {
            self.answered.pop_front();
        }
        let _ = self.answered.push_back(done);
        Some(n)
    }

    /// The device will report `ranges` (plain TEE ranges, IDs in order) for `iface`.
    pub fn report_ranges(&mut self, iface: impl Into<RequesterId>, ranges: &[MmioRange]) {
        let all: heapless::Vec<ReportedRange, MODEL_MAX_RANGES> = ranges
            .iter()
            .map(|&range| ReportedRange {
                range,
                private: true,
            })
            .collect();
        self.report(iface, &all);
    }

    /// The device will report `ranges` for `iface`, shared ones marked IS_NON_TEE_MEM.
    pub fn report(&mut self, iface: impl Into<RequesterId>, ranges: &[ReportedRange]) {
        let wire: heapless::Vec<WireMmioRange, MODEL_MAX_RANGES> = ranges
            .iter()
            .zip(0u16..)
            .map(|(r, id)| {
                let attributes = if r.private { 0 } else { RANGE_ATTR_NON_TEE };
                wire_range(
                    r.range.base().as_u64(),
                    u32::try_from(r.range.pages()).unwrap_or(u32::MAX),
                    attributes,
                    id,
                )
            })
            .collect();
        self.link_mut().set_report(iface, &wire);
    }

    /// Injects the device-side cause of `fault` for `iface` (`None` clears it).
    pub fn set_fault(&mut self, iface: impl Into<RequesterId>, fault: Option<DeviceFault>) {
        let how = fault.map(|f| match f {
            DeviceFault::NoResponse => Misbehaviour::Silent,
            DeviceFault::Refused => Misbehaviour::Refuse,
            DeviceFault::Malformed | DeviceFault::BadReport(_) => Misbehaviour::Garbage,
        });
        self.link_mut().set_misbehaviour(iface, how);
    }

    /// The interface's TDISP state as the device sees it.
    pub fn state(&mut self, iface: impl Into<RequesterId>) -> TdispState {
        self.link_mut().state(iface)
    }

    /// Applies an out-of-band event to `iface` on the device.
    pub fn event(&mut self, iface: impl Into<RequesterId>, event: DeviceEvent) {
        self.link_mut().event(iface, event);
    }
}

fn fid_of(iface: impl Into<RequesterId>) -> u32 {
    let iface = iface.into();
    // Interfaces in tests live in segments below 256; wider ones share FUNCTION_ID 0.
    function_id(iface).unwrap_or(0)
}

impl DsmModel {
    /// A DSM with no interfaces; they appear CONFIG_UNLOCKED with an empty report when first
    /// addressed. An interface never given a report answers with MMIO_RANGE_COUNT 0, not
    /// distinctly: TDISP has no "no report" answer (an error would read as `DeviceRefused`),
    /// and a zero-range report is what the firmware must refuse anyway (`EmptyReport`).
    pub const fn new() -> Self {
        Self {
            interfaces: heapless::Vec::new(),
            misbehaviour: heapless::Vec::new(),
            nonces_issued: 0,
        }
    }

    fn interface(&mut self, fid: u32) -> Option<&mut Interface> {
        if !self.interfaces.iter().any(|i| i.fid == fid) {
            let fresh = Interface {
                fid,
                state: TdispState::ConfigUnlocked,
                nonce: [0; NONCE_SIZE],
                offset: 0,
                report: heapless::Vec::new(),
            };
            self.interfaces.push(fresh).ok()?;
        }
        self.interfaces.iter_mut().find(|i| i.fid == fid)
    }

    /// The interface's TDISP state as the device sees it.
    pub fn state(&self, iface: impl Into<RequesterId>) -> TdispState {
        let fid = fid_of(iface);
        self.interfaces
            .iter()
            .find(|i| i.fid == fid)
            .map_or(TdispState::ConfigUnlocked, |i| i.state)
    }

    /// Every interface that is not CONFIG_UNLOCKED (the state of any interface the device has
    /// not been asked about), by TDISP FUNCTION_ID, with its state: what a refusal must leave
    /// as it was.
    pub fn tdisp_states(&self) -> heapless::Vec<(u32, TdispState), MAX_TDIS> {
        self.interfaces
            .iter()
            .filter(|i| i.state != TdispState::ConfigUnlocked)
            .map(|i| (i.fid, i.state))
            .collect()
    }

    /// The ranges the device will report for `iface` (extra ones beyond the model's room are
    /// dropped). Like a real device's, the report is frozen while the interface is locked:
    /// a change then is ignored.
    pub fn set_report(&mut self, iface: impl Into<RequesterId>, ranges: &[WireMmioRange]) {
        if let Some(i) = self.interface(fid_of(iface))
            && i.state == TdispState::ConfigUnlocked
        {
            i.report = ranges.iter().copied().take(MODEL_MAX_RANGES).collect();
        }
    }

    /// The MMIO_REPORTING_OFFSET the interface's last LOCK carried (0 before any).
    pub fn reporting_offset(&self, iface: impl Into<RequesterId>) -> u64 {
        let fid = fid_of(iface);
        self.interfaces
            .iter()
            .find(|i| i.fid == fid)
            .map_or(0, |i| i.offset)
    }

    /// The ranges the device reports for `iface`, as host addresses (the report adds the
    /// LOCK's MMIO_REPORTING_OFFSET to each).
    pub fn report(&self, iface: impl Into<RequesterId>) -> &[WireMmioRange] {
        let fid = fid_of(iface);
        self.interfaces
            .iter()
            .find(|i| i.fid == fid)
            .map_or(&[], |i| i.report.as_slice())
    }

    /// Makes `iface` misbehave (or behave again with `None`).
    pub fn set_misbehaviour(&mut self, iface: impl Into<RequesterId>, how: Option<Misbehaviour>) {
        let fid = fid_of(iface);
        self.misbehaviour.retain(|(f, _)| *f != fid);
        if let Some(m) = how {
            // Eight misbehaving interfaces at once are plenty for a test; more are ignored.
            let _ = self.misbehaviour.push((fid, m));
        }
    }

    /// Applies an out-of-band event to `iface`.
    pub fn event(&mut self, iface: impl Into<RequesterId>, event: DeviceEvent) {
        if let Some(i) = self.interface(fid_of(iface)) {
            i.state = match (event, i.state) {
                (DeviceEvent::Disturb, TdispState::ConfigLocked | TdispState::Run) => {
                    TdispState::Error
                }
                (DeviceEvent::Disturb, s) => s,
                (DeviceEvent::ConventionalReset, _) => TdispState::ConfigUnlocked,
            };
        }
    }

    fn misbehaviour_of(&self, fid: u32) -> Option<Misbehaviour> {
        self.misbehaviour
            .iter()
            .find(|(f, _)| *f == fid)
            .map(|(_, m)| *m)
    }

    /// Answers one request, per the TDISP state machine (PCIe 6.x 11.3.2). A report answer
    /// names the bytes of `report_buf` to send.
    fn answer(
        &mut self,
        fid: u32,
        req: &Request,
        report_buf: &mut [u8; MAX_REPORT_BYTES],
    ) -> Result<Answer, u32> {
        self.nonces_issued = self.nonces_issued.wrapping_add(1);
        let counter = self.nonces_issued;
        let inconsistent = self.misbehaviour_of(fid) == Some(Misbehaviour::InconsistentReport);
        let no_offset = self.misbehaviour_of(fid) == Some(Misbehaviour::IgnoresReportingOffset);
        let i = self.interface(fid).ok_or(error_code::UNSPECIFIED)?;
        let refuse_state = Err(error_code::INVALID_INTERFACE_STATE);
        match req {
            Request::GetVersion => Ok(Answer::Reply(Response::Version(&[TDISP_VERSION_1_0]))),
            Request::GetCapabilities(_) => {
                Ok(Answer::Reply(Response::Capabilities(Capabilities {
                    dsm_caps: U32::new(0),
                    req_msgs_supported: [0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                    lock_interface_flags_supported: U16::new(0x1f),
                    reserved: [0; 3],
                    dev_addr_width: 52,
                    num_req_this: 1,
                    num_req_all: 1,
                })))
            }
            Request::LockInterface(p) if i.state == TdispState::ConfigUnlocked => {
                i.state = TdispState::ConfigLocked;
                i.offset = p.mmio_reporting_offset.get();
                let mut nonce = [0u8; NONCE_SIZE];
                for (k, b) in nonce.iter_mut().enumerate() {
                    *b = counter.to_le_bytes().get(k % 8).copied().unwrap_or(0) ^ (k as u8);
                }
                i.nonce = nonce;
                Ok(Answer::Reply(Response::Lock(nonce)))
            }
            Request::GetReport(r)
                if matches!(i.state, TdispState::ConfigLocked | TdispState::Run) =>
            {
                let head = report_head(u32::try_from(i.report.len()).unwrap_or(0));
                // FIRST_PAGE is the host address plus the LOCK's offset (11.3.11), in the
                // field's 64 bits: a (hostile) range the addition carries past them arrives
                // wrapped, below the offset, and the firmware refuses it as malformed.
                let offset = if no_offset { 0 } else { i.offset };
                let mut shifted: heapless::Vec<WireMmioRange, MODEL_MAX_RANGES> =
                    heapless::Vec::new();
                for r in &i.report {
                    let mut r = *r;
                    r.first_page = U64::new(r.first_page.get().wrapping_add(offset));
                    shifted.push(r).map_err(|_| error_code::UNSPECIFIED)?;
                }
                let total = encode_report(report_buf, &head, &shifted, &[])
                    .map_err(|_| error_code::UNSPECIFIED)?;
                let start = usize::from(r.offset.get()).min(total);
                let end = start.saturating_add(usize::from(r.length.get())).min(total);
                let remainder = u16::try_from(total.saturating_sub(end)).unwrap_or(u16::MAX);
                let remainder = if inconsistent {
                    remainder.wrapping_add(7)
                } else {
                    remainder
                };
                Ok(Answer::Report {
                    start,
                    end,
                    remainder,
                })
            }
            Request::GetState => Ok(Answer::Reply(Response::State(i.state))),
            Request::Start(nonce) if i.state == TdispState::ConfigLocked => {
                if *nonce != i.nonce {
                    return Err(error_code::INVALID_NONCE);
                }
                i.state = TdispState::Run;
                Ok(Answer::Reply(Response::Start))
            }
            Request::Stop if i.state != TdispState::ConfigUnlocked => {
                i.state = TdispState::ConfigUnlocked;
                Ok(Answer::Reply(Response::Stop))
            }
            _ => refuse_state,
        }
    }
}

/// What the model sends back.
enum Answer {
    Reply(Response<'static>),
    /// Bytes `start..end` of the encoded report, and REMAINDER_LENGTH.
    Report {
        start: usize,
        end: usize,
        remainder: u16,
    },
}

impl DsmModel {
    /// Answers one TDISP request (the message itself, unframed) into `response`; `None` when
    /// the interface is silent.
    pub fn exchange(&mut self, request: &[u8], response: &mut [u8]) -> Option<usize> {
        let mut report_buf = [0u8; MAX_REPORT_BYTES];
        let (fid, req) = match decode_request(request) {
            Ok(decoded) => decoded,
            Err(_) => {
                let fid = request
                    .get(4..8)
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, u32::from_le_bytes);
                let body = ErrorBody {
                    code: U32::new(error_code::INVALID_REQUEST),
                    data: U32::new(0),
                };
                return encode_response(response, fid, &Response::Error(body)).ok();
            }
        };
        let misbehaviour = self.misbehaviour_of(fid);
        if misbehaviour == Some(Misbehaviour::Silent) {
            return None;
        }
        if misbehaviour == Some(Misbehaviour::Garbage) {
            let garbage = [0xa5u8; 7];
            response.get_mut(..garbage.len())?.copy_from_slice(&garbage);
            return Some(garbage.len());
        }
        let answer = if misbehaviour == Some(Misbehaviour::Refuse) {
            Err(error_code::UNSPECIFIED)
        } else {
            self.answer(fid, &req, &mut report_buf)
        };
        let reply_fid = if misbehaviour == Some(Misbehaviour::WrongInterface) {
            fid ^ 1
        } else {
            fid
        };
        let len = match answer {
            Ok(Answer::Report {
                start,
                end,
                remainder,
            }) => {
                let portion = report_buf.get(start..end)?;
                encode_response(
                    response,
                    reply_fid,
                    &Response::Report { portion, remainder },
                )
                .ok()?
            }
            Ok(Answer::Reply(resp)) => encode_response(response, reply_fid, &resp).ok()?,
            Err(code) => {
                let body = ErrorBody {
                    code: U32::new(code),
                    data: U32::new(0),
                };
                encode_response(response, reply_fid, &Response::Error(body)).ok()?
            }
        };
        if misbehaviour == Some(Misbehaviour::WrongVersion) {
            *response.first_mut()? = 0x20;
        }
        Some(len)
    }
}
