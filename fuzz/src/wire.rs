//! The TDISP decoder targets. Each decoder is checked against an independent reading of the
//! format written here from the PCIe 6.x TDISP layouts and the decoders' documented choices
//! (which fields are checked, and in which order): the decoder must return exactly what the
//! reading says (the same value or the same error), and whatever it accepts must re-encode to
//! the very bytes it was given.
//!
//! - `tdisp_request`: `decode_request` (the device side).
//! - `tdisp_response`: `decode_response` for a request code and an interface.
//! - `tdisp_report`: `DeviceInterfaceReport::parse` with a reporting offset.
//! - `report_portions`: `ReportAssembler` fed portions directly (checked against the
//!   portion rules: what is accepted is appended, a refusal changes nothing, the first portion
//!   fixes the total, the report is whole exactly when nothing remains), and a whole bind of
//!   the core, relayed by a host to a device whose security manager answers
//!   GET_DEVICE_INTERFACE_REPORT from the same script (portions, silence, garbage, another
//!   message, TDISP_ERROR, bytes that are no record at all) and everything else as the model
//!   DSM does (checked: the offsets the firmware asks for, that bytes which are no record are
//!   refused as `RelayMalformed` and change nothing, the bind's outcome as the portion rules,
//!   the retries, the report reading and the device's BARs predict, the device locked exactly
//!   when the bind succeeds, and that the TDI always unbinds after).

use tsm_core::addr::PHYS_ADDR_LIMIT;
use tsm_core::capacity::MAX_RANGES_PER_TDI;
use tsm_core::device_model::DsmModel;
use tsm_core::mem_table::MemTable;
use tsm_core::relay::{self, Direction, MAX_RELAY_BYTES, ModelSession, RecordContext, doe, spdm};
use tsm_core::tdisp::message::{
    Request, Response, decode_request, decode_response, encode_request, encode_response,
};
use tsm_core::tdisp::report::{
    DeviceInterfaceReport, MAX_REPORT_BYTES, RANGE_ATTR_NON_TEE, REPORT_PORTION, ReportAssembler,
};
use tsm_core::tdisp::requester::{MAX_ATTEMPTS, MAX_MESSAGE_BYTES};
use tsm_core::tdisp::{HEADER_SIZE, TDISP_VERSION_1_0, WireError, function_id, request, response};
use tsm_core::{Completion, DeviceFault, Error, MmioRange, RequesterId, TdiState, TdispState, Tsm};

use crate::common::fail;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]))
}

/// The header as the format has it: 16 bytes, version 1.0, reserved bytes 2-3 and 8-15 zero.
fn header(b: &[u8]) -> Result<(u8, u32, &[u8]), WireError> {
    if b.len() < HEADER_SIZE {
        return Err(WireError::Short);
    }
    if b[0] != TDISP_VERSION_1_0 {
        return Err(WireError::Version(b[0]));
    }
    if b[2..4] != [0, 0] || b[8..16].iter().any(|x| *x != 0) {
        return Err(WireError::Reserved);
    }
    Ok((b[1], u32_at(b, 4), &b[16..]))
}

fn exactly(body: &[u8], n: usize) -> Result<(), WireError> {
    match body.len().cmp(&n) {
        core::cmp::Ordering::Less => Err(WireError::Short),
        core::cmp::Ordering::Greater => Err(WireError::Long),
        core::cmp::Ordering::Equal => Ok(()),
    }
}

/// The request code a request message carries, or why it is refused.
fn read_request(b: &[u8]) -> Result<(u32, u8), WireError> {
    let (ty, fid, body) = header(b)?;
    match ty {
        request::GET_VERSION | request::GET_DEVICE_INTERFACE_STATE | request::STOP_INTERFACE => {
            exactly(body, 0)?
        }
        request::GET_CAPABILITIES | request::GET_DEVICE_INTERFACE_REPORT => exactly(body, 4)?,
        request::LOCK_INTERFACE => {
            // FLAGS (2), default stream (1), reserved (1), reporting offset (8), P2P mask (8).
            exactly(body, 20)?;
            if body[3] != 0 {
                return Err(WireError::Reserved);
            }
        }
        request::START_INTERFACE => exactly(body, 32)?,
        other => return Err(WireError::UnknownType(other)),
    }
    Ok((fid, ty))
}

/// `tdisp_request`: any bytes.
pub fn request_target(data: &[u8]) {
    let got = decode_request(data);
    let want = read_request(data);
    match (got, want) {
        (Ok((fid, req)), Ok((wfid, code))) if fid == wfid && req.code() == code => {
            let mut out = [0u8; 64];
            let n = encode_request(&mut out, fid, &req)
                .unwrap_or_else(|e| fail(format!("re-encoding {req:?}: {e:?}")));
            if out[..n] != *data {
                fail(format!(
                    "{req:?} re-encodes to {:02x?}, given {data:02x?}",
                    &out[..n]
                ));
            }
        }
        (Err(e), Err(w)) if e == w => {}
        (got, want) => fail(format!(
            "decode_request({data:02x?}) = {got:?}, the format says {want:?}"
        )),
    }
}

/// What a response message is, per the format, for `request_code` sent to `fid`.
fn read_response(b: &[u8], fid: u32, request_code: u8) -> Result<u8, WireError> {
    let (ty, got, body) = header(b)?;
    if got != fid {
        return Err(WireError::WrongInterface(got));
    }
    if ty == response::TDISP_ERROR {
        if body.len() < 8 {
            return Err(WireError::Short);
        }
        return Err(WireError::Refused {
            code: u32_at(body, 0),
            data: u32_at(body, 4),
        });
    }
    if ty != request_code & 0x7f {
        return Err(
            if (response::VERSION..=response::STOP_INTERFACE).contains(&ty) {
                WireError::UnexpectedType(ty)
            } else {
                WireError::UnknownType(ty)
            },
        );
    }
    match ty {
        response::VERSION => {
            let (&count, entries) = body.split_first().ok_or(WireError::Short)?;
            exactly(entries, usize::from(count))?;
        }
        // DSM_CAPS (4), REQ_MSGS_SUPPORTED (16), LOCK flags (2), reserved (3, not checked:
        // the decoder's documented choice), address width, two request counts.
        response::CAPABILITIES => exactly(body, 28)?,
        response::LOCK_INTERFACE => exactly(body, 32)?,
        response::DEVICE_INTERFACE_REPORT => {
            if body.len() < 4 {
                return Err(WireError::Short);
            }
            exactly(&body[4..], usize::from(u16_at(body, 0)))?;
        }
        response::DEVICE_INTERFACE_STATE => {
            exactly(body, 1)?;
            if body[0] > 3 {
                return Err(WireError::BadState(body[0]));
            }
        }
        response::START_INTERFACE | response::STOP_INTERFACE => exactly(body, 0)?,
        other => return Err(WireError::UnknownType(other)),
    }
    Ok(ty)
}

/// `tdisp_response`: byte 0 the request code, byte 1 bit 0 "the interface the message names"
/// (else bytes 2-5 name it), then the message.
pub fn response_target(data: &[u8]) {
    if data.len() < 6 {
        return;
    }
    let request_code = data[0];
    let msg = &data[6..];
    let fid = if data[1] & 1 != 0 && msg.len() >= 8 {
        u32_at(msg, 4)
    } else {
        u32_at(data, 2)
    };
    let got = decode_response(msg, fid, request_code);
    let want = read_response(msg, fid, request_code);
    match (got, want) {
        (Ok(resp), Ok(ty)) if resp.code() == ty => {
            let mut out = [0u8; 512];
            let n = encode_response(&mut out, fid, &resp)
                .unwrap_or_else(|e| fail(format!("re-encoding {resp:?}: {e:?}")));
            if out[..n] != *msg {
                fail(format!(
                    "{resp:?} re-encodes to {:02x?}, given {msg:02x?}",
                    &out[..n]
                ));
            }
        }
        (Err(e), Err(w)) if e == w => {}
        (got, want) => fail(format!(
            "decode_response({msg:02x?}, {fid:#x}, {request_code:#x}) = {got:?}, the format says {want:?}"
        )),
    }
}

/// One range of a report as the format has it: base (reporting offset taken off), pages,
/// attributes, ID.
type Range = (u64, u64, u16, u16);

/// A device interface report per the format and the parser's documented checks, in its
/// documented order: head (16 bytes, reserved zero), count at most `MAX_RANGES_PER_TDI`
/// (`TooManyRanges`), the ranges and the DEVICE_SPECIFIC_INFO length present and adding up
/// (`DeviceMalformed`), each range's first page past the offset (`DeviceMalformed`), below 2^52
/// (`InvalidRange`), 4 KiB aligned (`Misaligned`), non-empty and within 2^52 (`InvalidRange`),
/// and no two overlapping (`RangesOverlap`).
fn read_report(b: &[u8], offset: u64) -> Result<Vec<Range>, Error> {
    if b.len() < 16 || u16_at(b, 2) != 0 {
        return Err(Error::DeviceMalformed);
    }
    let count = u32_at(b, 12) as usize;
    if count > MAX_RANGES_PER_TDI {
        return Err(Error::TooManyRanges);
    }
    let dsi_at = 16 + 16 * count;
    if b.len() < dsi_at + 4 || u32_at(b, dsi_at) as usize != b.len() - dsi_at - 4 {
        return Err(Error::DeviceMalformed);
    }
    let mut ranges = Vec::new();
    for i in 0..count {
        let r = &b[16 + 16 * i..32 + 16 * i];
        let base = u64_at(r, 0)
            .checked_sub(offset)
            .ok_or(Error::DeviceMalformed)?;
        let pages = u64::from(u32_at(r, 8));
        if base >= PHYS_ADDR_LIMIT {
            return Err(Error::InvalidRange);
        }
        if base & 0xfff != 0 {
            return Err(Error::Misaligned);
        }
        if pages == 0 || base + pages * 0x1000 > PHYS_ADDR_LIMIT {
            return Err(Error::InvalidRange);
        }
        ranges.push((base, pages, u16_at(r, 12), u16_at(r, 14)));
    }
    for (i, a) in ranges.iter().enumerate() {
        for b in &ranges[i + 1..] {
            if a.0 < b.0 + b.1 * 0x1000 && b.0 < a.0 + a.1 * 0x1000 {
                return Err(Error::RangesOverlap);
            }
        }
    }
    Ok(ranges)
}

/// Compares `DeviceInterfaceReport::parse` with the format's reading.
fn check_report(bytes: &[u8], offset: u64) -> Result<DeviceInterfaceReport, Error> {
    let got = DeviceInterfaceReport::parse(bytes, offset);
    let want = read_report(bytes, offset);
    match (&got, &want) {
        (Ok(r), Ok(w)) => {
            let ranges: Vec<Range> = r
                .ranges
                .iter()
                .map(|x| (x.range.base().as_u64(), x.range.pages(), x.attributes, x.id))
                .collect();
            if ranges != *w {
                fail(format!(
                    "parse gave ranges {ranges:x?}, the format says {w:x?}"
                ));
            }
            let head = (
                r.interface_info,
                r.msix_message_control,
                r.lnr_control,
                r.tph_control,
                r.device_specific_len as usize,
            );
            let want_head = (
                u16_at(bytes, 0),
                u16_at(bytes, 4),
                u16_at(bytes, 6),
                u32_at(bytes, 8),
                bytes.len() - 20 - 16 * w.len(),
            );
            if head != want_head {
                fail(format!(
                    "parse gave head {head:x?}, the format says {want_head:x?}"
                ));
            }
            let tee: Vec<_> = r.tee_ranges().iter().map(|x| x.base().as_u64()).collect();
            let want_tee: Vec<_> = w
                .iter()
                .filter(|x| x.2 & RANGE_ATTR_NON_TEE == 0)
                .map(|x| x.0)
                .collect();
            let private: Vec<_> = r.reported_ranges().iter().map(|x| x.private).collect();
            let want_private: Vec<_> = w.iter().map(|x| x.2 & RANGE_ATTR_NON_TEE == 0).collect();
            if tee != want_tee || private != want_private {
                fail(format!(
                    "TEE ranges {tee:x?} / {private:?}, the format says {want_tee:x?}"
                ));
            }
        }
        (Err(e), Err(w)) if e == w => {}
        _ => fail(format!(
            "parse({bytes:02x?}, {offset:#x}) = {got:?}, the format says {want:?}"
        )),
    }
    got
}

/// `tdisp_report`: byte 0 picks the reporting offset (0, 4 KiB, 2 GiB or the next 8 bytes),
/// the rest is the report.
pub fn report_target(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let (offset, bytes) = match pick % 4 {
        0 => (0, rest),
        1 => (0x1000, rest),
        2 => (0x8000_0000, rest),
        _ if rest.len() >= 8 => (u64_at(rest, 0), &rest[8..]),
        _ => (0, rest),
    };
    let _ = check_report(bytes, offset);
}

/// One thing the device does in `report_portions` when asked for a report portion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Sends `len` bytes of the report from where the requester is, with `rem` remaining
    /// (`None`: the true remainder).
    Portion { len: usize, rem: Option<u16> },
    /// Says nothing.
    Silent,
    /// Sends bytes that are not a TDISP message (in a record of the exchange).
    Garbage,
    /// Answers with another response (DEVICE_INTERFACE_STATE).
    Other,
    /// Answers TDISP_ERROR.
    Refuse,
    /// The host hands bytes that are no record at all (`RelayMalformed`: the request stays
    /// outstanding, nothing counts).
    Unframed,
}

/// `report_portions` input: byte 0 the number of steps (mod 17), five bytes per step (kind,
/// length, remainder), the rest the report the portions are cut from.
fn steps(data: &[u8]) -> (Vec<Step>, &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return (Vec::new(), &[]);
    };
    let n = usize::from(n % 17).min(rest.len() / 5);
    let steps = rest[..5 * n]
        .chunks(5)
        .map(|c| {
            let len = usize::from(u16_at(c, 1));
            let rem = u16_at(c, 3);
            match c[0] % 9 {
                0 | 1 => Step::Portion {
                    len: len % 300,
                    rem: None,
                },
                2 => Step::Portion {
                    len: len % 300,
                    rem: Some(rem),
                },
                3 => Step::Portion {
                    len,
                    rem: Some(rem),
                },
                4 => Step::Silent,
                5 => Step::Garbage,
                6 => Step::Other,
                7 => Step::Refuse,
                _ => Step::Unframed,
            }
        })
        .collect();
    (steps, &rest[5 * n..])
}

/// `report` as a device serves it after a LOCK with MMIO_REPORTING_OFFSET `offset`: each
/// range present (as many as the count says and the bytes hold) has `offset` added to its
/// FIRST_PAGE, in the field's 64 bits.
fn shifted(report: &[u8], offset: u64) -> Vec<u8> {
    let mut out = report.to_vec();
    if out.len() < 16 {
        return out;
    }
    let count = u32_at(&out, 12) as usize;
    let room = (out.len() - 16) / 16;
    for i in 0..count.min(room) {
        let at = 16 + 16 * i;
        let first = u64_at(&out, at).wrapping_add(offset);
        out[at..at + 8].copy_from_slice(&first.to_le_bytes());
    }
    out
}

/// The portion the device sends at `offset` for a step.
fn portion(report: &[u8], offset: usize, len: usize, rem: Option<u16>) -> (Vec<u8>, u16) {
    let start = offset.min(report.len());
    let end = start.saturating_add(len).min(report.len());
    let mut bytes = report[start..end].to_vec();
    // Asked for more than there is: the rest is zeros (a device that pads).
    bytes.resize(len, 0);
    let rem = rem.unwrap_or_else(|| {
        u16::try_from(report.len().saturating_sub(offset + len)).unwrap_or(u16::MAX)
    });
    (bytes, rem)
}

/// The portion rules, from 11.3.12 (PORTION_LENGTH, REMAINDER_LENGTH) and the assembler's
/// documented limits: the first portion fixes the total (offset + portion + remainder), every
/// later one must agree with it; the total is at most `MAX_REPORT_BYTES`; an empty portion
/// must end the report; the report is whole when nothing remains.
fn rule(total: Option<usize>, offset: usize, len: usize, rem: u16) -> Result<bool, WireError> {
    let t = offset + len + usize::from(rem);
    if total.is_some_and(|x| x != t) {
        return Err(WireError::ReportInconsistent);
    }
    if t > MAX_REPORT_BYTES {
        return Err(WireError::ReportTooLarge);
    }
    if len == 0 && rem != 0 {
        return Err(WireError::ReportInconsistent);
    }
    Ok(rem == 0)
}

/// The device's BAR in `report_portions`: 16 MiB at 2 GiB.
const PORTIONS_BAR: (u64, u64) = (0x8000_0000, 4096);

/// What the device's end sends back.
enum Sent {
    /// A record of the exchange.
    Record(Vec<u8>),
    /// Nothing.
    Silent,
    /// Bytes that are no record.
    Unframed(Vec<u8>),
}

/// A device whose security manager answers GET_DEVICE_INTERFACE_REPORT from a script and
/// everything else as the model DSM, behind the model session; it checks what it is asked.
struct Scripted<'a> {
    dsm: DsmModel,
    session: ModelSession,
    fid: u32,
    steps: &'a [Step],
    next: usize,
    /// The report as scripted: host addresses.
    report: &'a [u8],
    /// The report as served: every FIRST_PAGE plus the MMIO_REPORTING_OFFSET of the LOCK the
    /// device answered (`None` before it).
    served: Option<(u64, Vec<u8>)>,
    /// The offset the firmware should ask for next (the predicted assembler offset).
    expect: usize,
    total: Option<usize>,
    asked: Vec<String>,
}

impl Scripted<'_> {
    /// The device's answer to the relayed `request`.
    fn answer(&mut self, request: &[u8]) -> Sent {
        let Some((ctx, msg)) = self.open(request) else {
            self.asked.push("a request that does not open".into());
            return Sent::Silent;
        };
        let mut out = [0u8; MAX_MESSAGE_BYTES];
        let n = match decode_request(&msg) {
            Ok((fid, Request::GetReport(r))) => {
                if fid != self.fid
                    || usize::from(r.offset.get()) != self.expect
                    || r.length.get() != REPORT_PORTION
                {
                    self.asked.push(format!(
                        "asked for {} bytes at {} of {fid:#x}, expected offset {}",
                        r.length.get(),
                        r.offset.get(),
                        self.expect
                    ));
                }
                let step = self.steps.get(self.next).copied().unwrap_or(Step::Silent);
                self.next += 1;
                let resp = match step {
                    Step::Silent => return Sent::Silent,
                    Step::Unframed => return Sent::Unframed(vec![0xa5; 40]),
                    Step::Garbage => {
                        out[..7].copy_from_slice(&[0xa5; 7]);
                        return self.seal(ctx, &out[..7]);
                    }
                    Step::Other => Response::State(TdispState::ConfigLocked),
                    Step::Refuse => Response::Error(tsm_core::tdisp::message::ErrorBody {
                        code: 5.into(),
                        data: 0.into(),
                    }),
                    Step::Portion { len, rem } => {
                        let served = self.served.as_ref().map_or(self.report, |(_, b)| b);
                        let (bytes, rem) = portion(served, self.expect, len.min(256), rem);
                        if let Ok(done) = rule(self.total, self.expect, bytes.len(), rem) {
                            self.total = Some(self.expect + bytes.len() + usize::from(rem));
                            if !done {
                                self.expect += bytes.len();
                            }
                        }
                        let n = encode_response(
                            &mut out,
                            self.fid,
                            &Response::Report {
                                portion: &bytes,
                                remainder: rem,
                            },
                        )
                        .unwrap_or_else(|e| fail(format!("{e:?}")));
                        return self.seal(ctx, &out[..n]);
                    }
                };
                encode_response(&mut out, self.fid, &resp)
                    .unwrap_or_else(|e| fail(format!("{e:?}")))
            }
            Ok((_, Request::LockInterface(p))) => {
                let offset = p.mmio_reporting_offset.get();
                self.served = Some((offset, shifted(self.report, offset)));
                match self.dsm.exchange(&msg, &mut out) {
                    Some(n) => n,
                    None => return Sent::Silent,
                }
            }
            _ => match self.dsm.exchange(&msg, &mut out) {
                Some(n) => n,
                None => return Sent::Silent,
            },
        };
        self.seal(ctx, &out[..n])
    }

    /// Opens a relayed request as the device's end does: its exchange and TDISP message.
    fn open(&self, request: &[u8]) -> Option<(RecordContext, Vec<u8>)> {
        let body = doe::decode(request, doe::TYPE_SECURED_SPDM).ok()?;
        let record = relay::record_of(&self.session, body).ok()?;
        let mut app = [0u8; MAX_RELAY_BYTES];
        let (ctx, n) =
            self.session
                .open_any(Direction::Request, record, spdm::OVERHEAD + 4, &mut app)?;
        let msg = spdm::decode(app.get(..n)?, spdm::VENDOR_DEFINED_REQUEST).ok()?;
        Some((ctx, msg.to_vec()))
    }

    /// `tdisp` sealed as the answer to the exchange `ctx`.
    fn seal(&mut self, ctx: RecordContext, tdisp: &[u8]) -> Sent {
        let back = RecordContext {
            direction: Direction::Response,
            ..ctx
        };
        let mut out = [0u8; MAX_RELAY_BYTES];
        match relay::frame(&mut self.session, &back, tdisp, &mut out) {
            Ok(n) => Sent::Record(out[..n].to_vec()),
            Err(e) => fail(format!("framing the answer: {e:?}")),
        }
    }
}

/// `report_portions`.
pub fn portions_target(data: &[u8]) {
    let _ = portions_run(data);
}

/// `report_portions`, returning how the bind ended (the seed test checks what its seeds
/// reach).
pub fn portions_run(data: &[u8]) -> tsm_core::TsmResult<Completion> {
    let (steps, report) = steps(data);
    // 1. The assembler, fed every portion step in order.
    let mut asm = ReportAssembler::new();
    let mut total = None;
    let mut seen: Vec<u8> = Vec::new();
    for step in &steps {
        let Step::Portion { len, rem } = *step else {
            continue;
        };
        let (bytes, rem) = portion(report, asm.offset(), len, rem);
        let want = rule(total, asm.offset(), bytes.len(), rem);
        let got = asm.accept(&bytes, rem);
        if got != want {
            fail(format!(
                "accept({} bytes at {}, remainder {rem}) = {got:?}, the rules say {want:?}",
                bytes.len(),
                seen.len()
            ));
        }
        if got.is_ok() {
            total = Some(seen.len() + bytes.len() + usize::from(rem));
            seen.extend_from_slice(&bytes);
        }
        if asm.bytes() != seen.as_slice() || asm.offset() != seen.len() {
            fail("the assembler's bytes are not the portions it accepted");
        }
        if got == Ok(true) {
            let _ = check_report(asm.bytes(), 0);
            break;
        }
    }

    // 2. A bind relayed to a device answering the report from the same script.
    bind_through_relay(&steps, report)
}

/// The firmware of `report_portions`: the core over an in-memory table, one guest, one device
/// with the BAR [`PORTIONS_BAR`], one TDI.
type PortionsFw = Tsm<MemTable<64>, ModelSession>;

fn bind_through_relay(steps: &[Step], report: &[u8]) -> tsm_core::TsmResult<Completion> {
    let fw = PortionsFw::new(MemTable::new(), ModelSession::model());
    let iface = RequesterId::try_new(0, 3, 0, 0).unwrap_or_else(|e| fail(e));
    let fid = function_id(iface).unwrap_or_else(|e| fail(format!("{e:?}")));
    let bar = MmioRange::from_raw(PORTIONS_BAR.0, PORTIONS_BAR.1).unwrap_or_else(|e| fail(e));
    let guest = fw.create_guest().unwrap_or_else(|e| fail(e));
    let dev = fw.create_device(iface, &[bar]).unwrap_or_else(|e| fail(e));
    let tdi = fw.create_tdi(dev, iface).unwrap_or_else(|e| fail(e));
    let mut device = Scripted {
        dsm: DsmModel::new(),
        session: ModelSession::model(),
        fid,
        steps,
        next: 0,
        report,
        served: None,
        expect: 0,
        total: None,
        asked: Vec::new(),
    };
    let mut buf = [0u8; MAX_RELAY_BYTES];
    let first = fw.bind(tdi, guest, &mut buf);
    let got = relay_to_end(&fw, tdi, first, &mut buf, &mut |req| device.answer(req));
    if !device.asked.is_empty() {
        fail(format!("the firmware asked: {:?}", device.asked));
    }
    // Every bind gets as far as LOCK (the script answers only report requests): the report
    // the device served carries that LOCK's offset.
    let offset = device.served.as_ref().map_or(0, |(o, _)| *o);
    let want = predict(steps, report, offset).and_then(|ranges| {
        let inside = ranges.iter().all(|r| {
            r.0 >= PORTIONS_BAR.0 && r.0 + r.1 * 0x1000 <= PORTIONS_BAR.0 + PORTIONS_BAR.1 * 0x1000
        });
        if ranges.is_empty() {
            // A report naming no range at all: the bind would own nothing.
            Err(DeviceFault::BadReport(Error::EmptyReport))
        } else if inside {
            Ok(ranges)
        } else {
            Err(DeviceFault::BadReport(Error::RangeOutsideDevice))
        }
    });
    let rec = fw.tdi(tdi).unwrap_or_else(|e| fail(e));
    let owned: Vec<(u64, u64)> = fw
        .owned_ranges(tdi)
        .unwrap_or_else(|e| fail(e))
        .iter()
        .map(|r| (r.base().as_u64(), r.pages()))
        .collect();
    let dsm_state = device.dsm.state(iface);
    match (&got, &want) {
        (Ok(Completion::Done), Ok(ranges)) => {
            let private: Vec<(u64, u64)> = ranges
                .iter()
                .filter(|r| r.2 & RANGE_ATTR_NON_TEE == 0)
                .map(|r| (r.0, r.1))
                .collect();
            if rec.state != (TdiState::Locked { owner: guest }) || owned != private {
                fail(format!(
                    "bound as {:?} owning {owned:x?}, the report's private ranges are {private:x?}",
                    rec.state
                ));
            }
            if dsm_state != TdispState::ConfigLocked {
                fail(format!("bound, the device is {dsm_state:?}"));
            }
        }
        (Err(e), Err(w)) if *e == Error::from(*w) => {
            if rec.state != TdiState::Unbound || rec.exchange.is_some() || !owned.is_empty() {
                fail(format!("a refused bind left {rec:?} owning {owned:x?}"));
            }
            // The firmware undid the device's LOCK with STOP_INTERFACE, which the device
            // answered.
            if dsm_state != TdispState::ConfigUnlocked || rec.unlock_first {
                fail(format!(
                    "a refused bind left the device {dsm_state:?}, unlock first {}",
                    rec.unlock_first
                ));
            }
        }
        _ => fail(format!(
            "the bind ended {got:?}, predicted {want:?} (steps {steps:?})"
        )),
    }
    if let Err(v) = tsm_tests::invariants::check(&fw) {
        fail(format!("invariant broken after the bind: {v:?}"));
    }
    // The TDI always unbinds, whatever the bind did, and the device ends unlocked.
    let first = fw.unbind(tdi, &mut buf);
    let done = relay_to_end(&fw, tdi, first, &mut buf, &mut |req| device.answer(req));
    let rec = fw.tdi(tdi).unwrap_or_else(|e| fail(e));
    if done != Ok(Completion::Done)
        || rec.state != TdiState::Unbound
        || rec.exchange.is_some()
        || device.dsm.state(iface) != TdispState::ConfigUnlocked
        || !fw.owned_ranges(tdi).is_ok_and(|r| r.is_empty())
    {
        fail(format!(
            "unbind after the bind: {done:?}, {rec:?}, device {:?}",
            device.dsm.state(iface)
        ));
    }
    got
}

/// Relays from `first` until the operation ends: each request to `answer`; bytes that are no
/// record must be refused as `RelayMalformed` with nothing changed (the request stays
/// outstanding and is answered again).
fn relay_to_end(
    fw: &PortionsFw,
    tdi: tsm_core::TdiId,
    first: tsm_core::TsmResult<Completion>,
    buf: &mut [u8; MAX_RELAY_BYTES],
    answer: &mut dyn FnMut(&[u8]) -> Sent,
) -> tsm_core::TsmResult<Completion> {
    let mut outcome = first;
    for _ in 0..200 {
        let Ok(Completion::Relay(n)) = outcome else {
            return outcome;
        };
        let request = buf[..n].to_vec();
        outcome = match answer(&request) {
            Sent::Record(bytes) => fw.device_response(tdi, Some(&bytes), buf),
            Sent::Silent => fw.device_response(tdi, None, buf),
            Sent::Unframed(bytes) => {
                let before = fw.snapshot().unwrap_or_else(|e| fail(e));
                let r = fw.device_response(tdi, Some(&bytes), buf);
                if r != Err(Error::RelayMalformed)
                    || fw.snapshot().unwrap_or_else(|e| fail(e)) != before
                {
                    fail(format!("bytes that are no record: {r:?}"));
                }
                // The same request is still outstanding: the host relays it again.
                buf[..n].copy_from_slice(&request);
                Ok(Completion::Relay(n))
            }
        };
    }
    fail("the relay did not end in 200 rounds")
}

/// What the bind must end with for a script: up to `MAX_ATTEMPTS` unanswered rounds per
/// request (silence retried; bytes that are no record are refused and do not count), the first
/// answer decoded (garbage and another message `Malformed`, TDISP_ERROR `Refused`), portions
/// assembled by the rules (a broken rule `Malformed`), the whole report read by the format
/// (`BadReport`), the device having added the LOCK's `lock_offset` to every FIRST_PAGE.
fn predict(steps: &[Step], report: &[u8], lock_offset: u64) -> Result<Vec<Range>, DeviceFault> {
    let report = &shifted(report, lock_offset);
    let mut next = 0;
    let mut offset = 0;
    let mut total = None;
    let mut assembled: Vec<u8> = Vec::new();
    for _ in 0..=MAX_REPORT_BYTES {
        let mut answer = None;
        let mut silent = 0;
        while silent < MAX_ATTEMPTS {
            let step = steps.get(next).copied().unwrap_or(Step::Silent);
            next += 1;
            match step {
                Step::Silent => silent += 1,
                Step::Unframed => {}
                other => {
                    answer = Some(other);
                    break;
                }
            }
        }
        match answer.ok_or(DeviceFault::NoResponse)? {
            Step::Silent | Step::Unframed => unreachable!(),
            Step::Garbage | Step::Other => return Err(DeviceFault::Malformed),
            Step::Refuse => return Err(DeviceFault::Refused),
            Step::Portion { len, rem } => {
                let (bytes, rem) = portion(report, offset, len.min(256), rem);
                match rule(total, offset, bytes.len(), rem) {
                    Err(_) => return Err(DeviceFault::Malformed),
                    Ok(done) => {
                        total = Some(offset + bytes.len() + usize::from(rem));
                        assembled.extend_from_slice(&bytes);
                        offset += bytes.len();
                        if done {
                            return read_report(&assembled, lock_offset)
                                .map_err(DeviceFault::BadReport);
                        }
                    }
                }
            }
        }
    }
    Err(DeviceFault::Malformed)
}
