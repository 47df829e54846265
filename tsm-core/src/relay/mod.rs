//! What the host relays between the firmware and a device's security manager: a TDISP message
//! in an SPDM 1.2 vendor-defined message ([`spdm`]), sealed in a DSP0277 secured record by the
//! platform's session ([`session`]), in a DOE data object of type 2 ([`doe`]). The firmware
//! never sees a mailbox: it writes a request into a buffer the host gives it and decodes the
//! bytes the host hands back ([`crate::Tsm::device_response`]).
//!
//! | layer | spec | firmware -> device | device -> firmware |
//! |-------|------|--------------------|--------------------|
//! | DOE data object | PCIe 6.x 6.30.1 | vendor 0x0001, type 2 | the same, exactly as long as its header says |
//! | secured record | DSP0277 6.2 | sealed for (interface, sequence, request) | opens for (interface, sequence, response) |
//! | SPDM | DSP0274 1.2 10.24 | VENDOR_DEFINED_REQUEST 0xFE, standard 3, vendor 0x0001 | VENDOR_DEFINED_RESPONSE 0x7E |
//! | protocol | PCIe 6.x 6.31.2 | protocol ID 0x01 (TDISP) | the same |
//! | TDISP | PCIe 6.x 11.3 | the request | the response |

pub mod doe;
pub mod host;
pub mod session;
pub mod spdm;
pub mod version;

pub use session::{Direction, ModelSession, REPORT_DIGEST_SIZE, RecordContext, SecureSession};

use crate::tdisp::requester::MAX_MESSAGE_BYTES;

/// The largest request or response the relay carries: a TDISP message in every layer, padded.
pub const MAX_RELAY_BYTES: usize =
    (doe::HEADER_SIZE + session::MAX_OVERHEAD + spdm::OVERHEAD + MAX_MESSAGE_BYTES + 3) & !3;

/// Why relayed bytes are not a message of the exchange they were handed in for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RelayError {
    /// The DOE object.
    Doe(doe::DoeError),
    /// The secured record does not open for this exchange (another TDI's, a stale one, the
    /// other direction, altered bytes, another session).
    Session,
    /// The SPDM vendor-defined message.
    Spdm(spdm::SpdmError),
    /// More bytes than [`MAX_RELAY_BYTES`].
    TooLong,
    /// The output buffer is smaller than [`MAX_RELAY_BYTES`].
    BufferTooSmall,
}

/// Wraps one TDISP message in every layer at `out`; returns the bytes to relay.
pub fn frame<S: SecureSession>(
    session: &mut S,
    ctx: &RecordContext,
    tdisp: &[u8],
    out: &mut [u8],
) -> Result<usize, RelayError> {
    let code = match ctx.direction {
        Direction::Request => spdm::VENDOR_DEFINED_REQUEST,
        Direction::Response => spdm::VENDOR_DEFINED_RESPONSE,
    };
    let mut spdm_msg = [0u8; MAX_RELAY_BYTES];
    let n = spdm::encode(&mut spdm_msg, code, tdisp).map_err(RelayError::Spdm)?;
    let mut record = [0u8; MAX_RELAY_BYTES];
    let app = spdm_msg.get(..n).ok_or(RelayError::BufferTooSmall)?;
    // The session is handed exactly the room a record may take (its message plus
    // `session::MAX_OVERHEAD`), so a session that answers longer fails here, as a seal
    // failure, and never produces a DOE object past `MAX_RELAY_BYTES`.
    let cap = app
        .len()
        .saturating_add(session::MAX_OVERHEAD)
        .min(record.len());
    let room = record.get_mut(..cap).ok_or(RelayError::BufferTooSmall)?;
    let r = session
        .seal(ctx, app, room)
        .ok_or(RelayError::BufferTooSmall)?;
    let record = room.get(..r).ok_or(RelayError::BufferTooSmall)?;
    let len = doe::encode(out, doe::TYPE_SECURED_SPDM, record).map_err(RelayError::Doe)?;
    if len > MAX_RELAY_BYTES {
        return Err(RelayError::TooLong);
    }
    Ok(len)
}

/// The TDISP message inside relayed `bytes`, copied to `out`; its length.
pub fn unframe<S: SecureSession>(
    session: &mut S,
    ctx: &RecordContext,
    bytes: &[u8],
    out: &mut [u8],
) -> Result<usize, RelayError> {
    if bytes.len() > MAX_RELAY_BYTES {
        return Err(RelayError::TooLong);
    }
    let body = doe::decode(bytes, doe::TYPE_SECURED_SPDM).map_err(RelayError::Doe)?;
    let record = record_of(session, body)?;
    let mut app = [0u8; MAX_RELAY_BYTES];
    let n = session
        .open(ctx, record, &mut app)
        .ok_or(RelayError::Session)?;
    let code = match ctx.direction {
        Direction::Request => spdm::VENDOR_DEFINED_REQUEST,
        Direction::Response => spdm::VENDOR_DEFINED_RESPONSE,
    };
    let app = app.get(..n).ok_or(RelayError::Session)?;
    let msg = spdm::decode(app, code).map_err(RelayError::Spdm)?;
    let dst = out.get_mut(..msg.len()).ok_or(RelayError::BufferTooSmall)?;
    dst.copy_from_slice(msg);
    Ok(msg.len())
}

/// The record in a DOE payload: its own header says where it ends; only dword padding may
/// follow.
pub fn record_of<'b, S: SecureSession>(
    session: &S,
    body: &'b [u8],
) -> Result<&'b [u8], RelayError> {
    let len = session
        .record_len(body)
        .ok_or(RelayError::Doe(doe::DoeError::Short))?;
    doe::unpad(body, len).map_err(RelayError::Doe)
}

#[cfg(test)]
mod tests;
