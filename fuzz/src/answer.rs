//! The host's side of the relay, shared by the targets: what a host hands back for a request
//! (the device's own answer, nothing, or bytes it made up or mangled), and a record of every
//! answer the device ever produced, so that a target can tell exactly which bytes are the
//! device's answer to which exchange.
//!
//! The oracle this gives (README, "Relayed exchanges": "Bytes that are not a record of *this*
//! exchange [...] are `RelayMalformed`"): bytes handed to `device_response` open exactly when
//! the device produced them as the answer to the TDI's outstanding exchange (its interface and
//! sequence number). [`Answers::opens_for`] says whether they are; a firmware that opens
//! anything else, or refuses the device's own answer as `RelayMalformed`, fails the target.

use std::collections::HashMap;

use tsm_core::device_model::ModelDevice;
use tsm_core::relay::{self, Direction, MAX_RELAY_BYTES, ModelSession, RecordContext, doe, spdm};

use crate::enc::ops;

ops! {
    /// What the host hands back for a request.
    pub enum Answer {
        /// The device's own answer to the request (nothing when the device is silent).
        Genuine,
        /// No answer.
        Silent,
        /// The device's answer with bit `bit % 8` of byte `at` (modulo its length) flipped.
        Flip { at: u16, bit: u8 },
        /// The device's answer cut to `len` bytes (modulo its length).
        Truncate { len: u16 },
        /// The device's answer with `by % 16 + 1` bytes of `fill` after it.
        Extend { by: u8, fill: u8 },
        /// The device's answer with its DOE length field moved by `delta` dwords.
        DoeLength { delta: i8 },
        /// An answer the host kept from earlier (`back` from the newest): a replay, another
        /// TDI's answer, an answer to an exchange that has ended.
        Replay { back: u8 },
        /// The request itself, reflected.
        Reflect,
        /// `len % 400` bytes of `fill`, behind a DOE header of type 2 for their length when
        /// `doe`.
        Bytes { len: u16, fill: u8, doe: bool },
        /// More bytes than any answer (`MAX_RELAY_BYTES` + 4, a whole DOE object).
        TooLong,
    }
}

/// Offset of FUNCTION_ID in a decrypted record's application data (the SPDM head and the
/// protocol byte, then the TDISP header's bytes 4..8).
const FID_AT: usize = spdm::OVERHEAD + 4;

/// Answers kept for replays, newest last.
const HISTORY: usize = 16;

/// Every answer the device produced, and the last few for replays.
#[derive(Debug, Default)]
pub struct Answers {
    /// Each answer's bytes and the exchange it answers (interface, sequence number).
    produced: HashMap<Vec<u8>, RecordContext>,
    history: Vec<Vec<u8>>,
}

/// The exchange a relayed object belongs to, as the device's end of the session opens it:
/// `None` when it does not open in that direction.
pub fn context_of(bytes: &[u8], direction: Direction) -> Option<RecordContext> {
    let session = ModelSession::model();
    let body = doe::decode(bytes, doe::TYPE_SECURED_SPDM).ok()?;
    let record = relay::record_of(&session, body).ok()?;
    let mut app = [0u8; MAX_RELAY_BYTES];
    session
        .open_any(direction, record, FID_AT, &mut app)
        .map(|(ctx, _)| ctx)
}

impl Answers {
    /// The device's answer to `request`, recorded; `None` when it does not answer.
    pub fn genuine(&mut self, device: &mut ModelDevice, request: &[u8]) -> Option<Vec<u8>> {
        let mut out = [0u8; MAX_RELAY_BYTES];
        let n = device.answer(request, &mut out)?;
        let bytes = out.get(..n)?.to_vec();
        // The device seals its answer for the exchange of the request it opened (the answer's
        // own TDISP header may name another interface: a device that garbles).
        let ctx = context_of(request, Direction::Request)
            .map(|c| RecordContext {
                direction: Direction::Response,
                ..c
            })
            .unwrap_or_else(|| crate::common::fail("the device answered a request it cannot open"));
        self.produced.insert(bytes.clone(), ctx);
        if self.history.len() == HISTORY {
            self.history.remove(0);
        }
        self.history.push(bytes.clone());
        Some(bytes)
    }

    /// Whether `bytes` are the device's answer to exchange `seq` of interface `fid`.
    pub fn opens_for(&self, bytes: &[u8], fid: u32, seq: u64) -> bool {
        self.produced.get(bytes).is_some_and(|c| {
            c.function_id == fid && c.seq == seq && c.direction == Direction::Response
        })
    }

    /// Whether `payload` (a DOE payload the host wrote) is (`exact`) or starts with the
    /// payload of the device's answer to exchange `seq` of interface `fid`.
    pub fn payload_of(&self, payload: &[u8], fid: u32, seq: u64, exact: bool) -> bool {
        self.produced.iter().any(|(bytes, c)| {
            c.function_id == fid
                && c.seq == seq
                && c.direction == Direction::Response
                && doe::decode(bytes, doe::TYPE_SECURED_SPDM).is_ok_and(|p| {
                    if exact {
                        payload == p
                    } else {
                        payload.starts_with(p)
                    }
                })
        })
    }

    /// What the host hands back for `request` under `answer` (`None`: no answer), and whether
    /// it is the device's answer produced just now (`fresh`).
    pub fn make(
        &mut self,
        answer: Answer,
        device: &mut ModelDevice,
        request: &[u8],
    ) -> (Option<Vec<u8>>, bool) {
        let mut mangle = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut g = self.genuine(device, request)?;
            f(&mut g);
            Some(g)
        };
        match answer {
            Answer::Genuine => {
                let known = self.produced.len();
                let g = self.genuine(device, request);
                // A request the device answered before gets that answer again without being
                // acted on (`ModelDevice::answer`): the device's state may have moved since
                // (a reset, an FLR), so only an answer never seen is the device's state now.
                let fresh = g.is_some() && self.produced.len() > known;
                (g, fresh)
            }
            Answer::Silent => (None, false),
            Answer::Flip { at, bit } => (
                mangle(&|g| {
                    let n = g.len().max(1);
                    if let Some(b) = g.get_mut(usize::from(at) % n) {
                        *b ^= 1 << (bit % 8);
                    }
                }),
                false,
            ),
            Answer::Truncate { len } => (
                mangle(&|g| {
                    let n = g.len().max(1);
                    g.truncate(usize::from(len) % n);
                }),
                false,
            ),
            Answer::Extend { by, fill } => (
                mangle(&|g| g.extend(std::iter::repeat_n(fill, usize::from(by % 16) + 1))),
                false,
            ),
            Answer::DoeLength { delta } => (
                mangle(&|g| {
                    if let Some(w) = g.get_mut(4..8) {
                        let v = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
                        let v = if delta == 0 {
                            v ^ 1
                        } else {
                            v.wrapping_add_signed(i32::from(delta))
                        };
                        w.copy_from_slice(&v.to_le_bytes());
                    }
                }),
                false,
            ),
            Answer::Replay { back } => {
                let n = self.history.len();
                let pick = n
                    .checked_sub(1 + usize::from(back) % n.max(1))
                    .and_then(|i| self.history.get(i))
                    .cloned();
                (pick, false)
            }
            Answer::Reflect => (Some(request.to_vec()), false),
            Answer::Bytes { len, fill, doe } => {
                let len = usize::from(len % 400);
                let mut v = vec![fill; len];
                if doe {
                    let mut out = vec![0u8; len + 16];
                    if let Ok(k) = doe::encode(&mut out, doe::TYPE_SECURED_SPDM, &v) {
                        out.truncate(k);
                        v = out;
                    }
                }
                (Some(v), false)
            }
            Answer::TooLong => {
                let mut out = vec![0u8; MAX_RELAY_BYTES + 8];
                let payload = vec![0x5a; MAX_RELAY_BYTES - 4];
                let k = doe::encode(&mut out, doe::TYPE_SECURED_SPDM, &payload).unwrap_or(0);
                out.truncate(k);
                (Some(out), false)
            }
        }
    }
}

/// Checks a request the firmware handed out for the TDI with interface `fid`: a DOE object
/// that the device's end opens as a request of exchange `seq` of that interface.
pub fn check_request(request: &[u8], fid: u32, seq: u64) -> Result<(), String> {
    match context_of(request, Direction::Request) {
        Some(c) if c.function_id == fid && c.seq == seq => Ok(()),
        other => Err(format!(
            "the request opens as {other:?}, not exchange {seq} of interface {fid:#x}"
        )),
    }
}
