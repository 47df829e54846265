//! The firmware as TDISP requester: it encodes the request of a TDI's outstanding exchange,
//! frames it for the host to relay, and opens and decodes what the host hands back. It never
//! talks to a device: the host carries both ways ([`crate::relay`]).

use super::message::{
    CapabilitiesRequest, LOCK_FLAG_NO_FW_UPDATE, LockParams, ReportRequest, Request, Response,
    decode_response, encode_request,
};
use super::report::REPORT_PORTION;
use super::{HEADER_SIZE, NONCE_SIZE, WireError};
use crate::exchange::{BindStep, DeviceOp, Exchange};
use crate::registry::Tdi;
use crate::relay::{self, Direction, RecordContext, SecureSession};
use crate::status::{Completion, Error};
use crate::transport::{DeviceFault, InterfaceId};
use zerocopy::little_endian::{U16, U32, U64};

/// Unanswered attempts (the host reports no answer) before an exchange ends
/// `DeviceUnresponsive`.
pub const MAX_ATTEMPTS: u8 = 3;
/// Largest TDISP message either side sends: a header, the report portion head and one portion.
pub const MAX_MESSAGE_BYTES: usize = HEADER_SIZE + 4 + REPORT_PORTION as usize;

/// The requester: the platform's secure session. Everything about an exchange lives in the
/// TDI record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requester<S> {
    session: S,
    /// The next exchange's sequence number: never reset and never wrapped, so no two exchanges
    /// of any TDIs share one. A sharded firmware's requesters count in steps of `stride` from
    /// their shard's index, so the numbers stay unique across the whole firmware: a device
    /// that moves to another shard (removed, its slot reused) never sees one again.
    next_seq: u64,
    stride: u64,
    last_error: Option<WireError>,
}

impl<S: SecureSession> Requester<S> {
    /// A requester over `session`.
    pub const fn new(session: S) -> Self {
        Self::for_shard(session, 0, 1)
    }

    /// The requester of shard `shard` of `shards` over `session`: its sequence numbers are
    /// `shard`, `shard + shards`, ... (see the type).
    pub const fn for_shard(session: S, shard: u64, shards: u64) -> Self {
        Self {
            session,
            next_seq: shard,
            stride: shards,
            last_error: None,
        }
    }

    /// The session (platform glue rekeys it).
    pub fn session_mut(&mut self) -> &mut S {
        &mut self.session
    }

    /// The session, read only.
    pub fn session(&self) -> &S {
        &self.session
    }

    /// A fresh sequence number for a new exchange. `SequenceExhausted` once the session has
    /// used them all: it must be rekeyed (SPDM KEY_UPDATE) before it seals anything again.
    pub(crate) fn take_seq(&mut self) -> Result<u64, Error> {
        let seq = self.next_seq;
        self.next_seq = seq
            .checked_add(self.stride)
            .ok_or(Error::SequenceExhausted)?;
        Ok(seq)
    }

    /// The sequence number the next exchange will get (tests drive it to the end).
    #[cfg(test)]
    pub(crate) fn set_next_seq(&mut self, seq: u64) {
        self.next_seq = seq;
    }

    /// The most recent TDISP-level error a device answered, for diagnostics.
    pub fn last_error(&self) -> Option<WireError> {
        self.last_error
    }

    /// Encodes and frames the request of `ex` for `iface` at `out`. Nothing changes: the same
    /// exchange always gives the same bytes, so a re-sent request is the one first sent.
    pub(crate) fn request(
        &mut self,
        tdi: &Tdi,
        ex: &Exchange,
        out: &mut [u8],
    ) -> Result<usize, Error> {
        let fid = tdi.iface.function_id();
        let req = match ex.op {
            DeviceOp::Bind { step, .. } => match step {
                BindStep::Unlock | BindStep::Undo { .. } => Request::Stop,
                BindStep::Version => Request::GetVersion,
                BindStep::Capabilities => Request::GetCapabilities(CapabilitiesRequest {
                    tsm_caps: U32::new(0),
                }),
                // The device reports every address plus this LOCK's own offset.
                BindStep::Lock { offset } => Request::LockInterface(LockParams {
                    flags: U16::new(LOCK_FLAG_NO_FW_UPDATE),
                    default_stream_id: 0,
                    reserved: 0,
                    mmio_reporting_offset: U64::new(offset),
                    bind_p2p_address_mask: U64::new(0),
                }),
                BindStep::Report { offset } => Request::GetReport(ReportRequest {
                    offset: U16::new(offset),
                    length: U16::new(REPORT_PORTION),
                }),
            },
            // Without the nonce of a LOCK this firmware sent the device would refuse: send the
            // zero nonce and let it.
            DeviceOp::Start { .. } => Request::Start(tdi.nonce.unwrap_or([0; NONCE_SIZE])),
            DeviceOp::Stop { confirm: false } => Request::Stop,
            DeviceOp::Stop { confirm: true } | DeviceOp::Check => Request::GetState,
        };
        let mut msg = [0u8; MAX_MESSAGE_BYTES];
        let n = encode_request(&mut msg, fid, &req).map_err(|_| Error::Inconsistent)?;
        let msg = msg.get(..n).ok_or(Error::Inconsistent)?;
        let ctx = context(fid, ex, Direction::Request);
        relay::frame(&mut self.session, &ctx, msg, out).map_err(|e| match e {
            relay::RelayError::BufferTooSmall => Error::RelayBufferTooSmall,
            _ => Error::Inconsistent,
        })
    }

    /// The session's digest of `report` (what the guest reads back for its TDI).
    pub(crate) fn report_digest(&self, report: &[u8]) -> [u8; crate::relay::REPORT_DIGEST_SIZE] {
        self.session.report_digest(report)
    }

    /// Starts a new exchange `op` for `tdi`: a fresh sequence number, the request framed at
    /// `out`, and the exchange recorded in the TDI only once the request is written (a
    /// failure leaves the record as it was).
    pub(crate) fn begin(
        &mut self,
        tdi: &mut Tdi,
        op: DeviceOp,
        out: &mut [u8],
    ) -> Result<Completion, Error> {
        let mut ex = Exchange {
            op,
            seq: self.take_seq()?,
            attempts: 0,
        };
        // A LOCK's MMIO_REPORTING_OFFSET is asked of the session once, for this exchange's
        // fresh sequence number (so it differs from every other LOCK's as long as the
        // session's secret does), and kept in the exchange: a re-send and the answer use the
        // kept value, never a second answer of the session.
        let ctx = context(tdi.iface.function_id(), &ex, Direction::Request);
        if let DeviceOp::Bind {
            step: BindStep::Lock { offset },
            ..
        } = &mut ex.op
        {
            *offset = super::reporting_offset(self.session.lock_secret(&ctx));
        }
        let n = self.request(tdi, &ex, out)?;
        tdi.exchange = Some(ex);
        Ok(Completion::Relay(n))
    }

    /// Opens relayed `bytes` as the answer to `ex` into `msg`: the TDISP message's length.
    /// `RelayMalformed` when they are not a record of this exchange (changes nothing).
    pub(crate) fn open(
        &mut self,
        iface: InterfaceId,
        ex: &Exchange,
        bytes: &[u8],
        msg: &mut [u8; MAX_MESSAGE_BYTES],
    ) -> Result<usize, Error> {
        let fid = iface.function_id();
        let ctx = context(fid, ex, Direction::Response);
        relay::unframe(&mut self.session, &ctx, bytes, msg).map_err(|_| Error::RelayMalformed)
    }

    /// Decodes an opened answer to `ex`: the device's own word. A TDISP_ERROR is
    /// `Refused`; anything but the expected response is `Malformed`.
    pub(crate) fn decode<'m>(
        &mut self,
        iface: InterfaceId,
        ex: &Exchange,
        msg: &'m [u8],
    ) -> Result<Response<'m>, DeviceFault> {
        let fid = iface.function_id();
        decode_response(msg, fid, ex.op.request_code()).map_err(|e| {
            self.last_error = Some(e);
            match e {
                WireError::Refused { .. } => DeviceFault::Refused,
                _ => DeviceFault::Malformed,
            }
        })
    }
}

/// What the records of exchange `ex` with interface `fid` are bound to.
pub const fn context(fid: u32, ex: &Exchange, direction: Direction) -> RecordContext {
    RecordContext {
        function_id: fid,
        seq: ex.seq,
        direction,
    }
}
