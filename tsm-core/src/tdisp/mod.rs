//! TDISP on the wire (PCIe 6.x 11.3, "TEE Device Interface Security Protocol"): message codes,
//! the message header, the codec, the device interface report, and the requester the firmware
//! runs. Messages travel inside an SPDM secured session that the host relays; that envelope is
//! the relay's business ([`crate::relay`]).

pub mod message;
pub mod report;
pub mod requester;

use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::ids::RequesterId;

/// TDISP message version 1.0 (PCIe 6.x 11.3.5: TDISPVersion, major in the high nibble).
pub const TDISP_VERSION_1_0: u8 = 0x10;

/// Request codes (PCIe 6.x Table 11-4, TDISP request codes).
pub mod request {
    /// GET_TDISP_VERSION.
    pub const GET_VERSION: u8 = 0x81;
    /// GET_TDISP_CAPABILITIES.
    pub const GET_CAPABILITIES: u8 = 0x82;
    /// LOCK_INTERFACE_REQUEST.
    pub const LOCK_INTERFACE: u8 = 0x83;
    /// GET_DEVICE_INTERFACE_REPORT.
    pub const GET_DEVICE_INTERFACE_REPORT: u8 = 0x84;
    /// GET_DEVICE_INTERFACE_STATE.
    pub const GET_DEVICE_INTERFACE_STATE: u8 = 0x85;
    /// START_INTERFACE_REQUEST.
    pub const START_INTERFACE: u8 = 0x86;
    /// STOP_INTERFACE_REQUEST.
    pub const STOP_INTERFACE: u8 = 0x87;
}

/// Response codes (PCIe 6.x Table 11-5): each request's code with bit 7 clear, and
/// TDISP_ERROR.
pub mod response {
    /// TDISP_VERSION.
    pub const VERSION: u8 = 0x01;
    /// TDISP_CAPABILITIES.
    pub const CAPABILITIES: u8 = 0x02;
    /// LOCK_INTERFACE_RESPONSE.
    pub const LOCK_INTERFACE: u8 = 0x03;
    /// DEVICE_INTERFACE_REPORT.
    pub const DEVICE_INTERFACE_REPORT: u8 = 0x04;
    /// DEVICE_INTERFACE_STATE.
    pub const DEVICE_INTERFACE_STATE: u8 = 0x05;
    /// START_INTERFACE_RESPONSE.
    pub const START_INTERFACE: u8 = 0x06;
    /// STOP_INTERFACE_RESPONSE.
    pub const STOP_INTERFACE: u8 = 0x07;
    /// TDISP_ERROR.
    pub const TDISP_ERROR: u8 = 0x7f;
}

/// TDISP_ERROR codes (PCIe 6.x Table 11-28).
pub mod error_code {
    /// INVALID_REQUEST.
    pub const INVALID_REQUEST: u32 = 0x0001;
    /// BUSY.
    pub const BUSY: u32 = 0x0003;
    /// INVALID_INTERFACE_STATE.
    pub const INVALID_INTERFACE_STATE: u32 = 0x0004;
    /// UNSPECIFIED.
    pub const UNSPECIFIED: u32 = 0x0005;
    /// UNSUPPORTED_REQUEST.
    pub const UNSUPPORTED_REQUEST: u32 = 0x0007;
    /// VERSION_MISMATCH.
    pub const VERSION_MISMATCH: u32 = 0x0041;
    /// INVALID_INTERFACE.
    pub const INVALID_INTERFACE: u32 = 0x0101;
    /// INVALID_NONCE.
    pub const INVALID_NONCE: u32 = 0x0102;
}

/// The MMIO_REPORTING_OFFSET (PCIe 6.x 11.3.9, LOCK_INTERFACE_REQUEST) the firmware sends
/// with a LOCK, shaped from the session's secret bits for it
/// ([`crate::relay::SecureSession::lock_secret`]); the device adds it to every FIRST_PAGE it
/// reports (11.3.11). Constraints (ours), each with its reason:
/// - 4 KiB aligned ([`REPORTING_OFFSET_MASK`] clears bits 11:0): FIRST_PAGE stays page
///   aligned and a page's offset inside its range survives, so a guest adds page offsets to
///   a reported address as it would to the host one;
/// - at least 2^52 ([`REPORTING_OFFSET_FLOOR`], one past the widest physical address): a
///   reported address is never a physical address, so a device that reports without the
///   offset is caught (its addresses lie below the offset: `DeviceMalformed`);
/// - below 2^62 (bits 63:62 clear): any physical address (< 2^52) plus it stays below 2^63,
///   so the device's addition cannot overflow 64 bits (checked anyway on both sides).
///
/// 49 secret bits (61:12 less the floor's bit 52 always set) remain: the host, which relays
/// only sealed records, can neither predict nor choose them.
pub const fn reporting_offset(secret: u64) -> u64 {
    (secret & REPORTING_OFFSET_MASK) | REPORTING_OFFSET_FLOOR
}

/// Bits of the secret an MMIO_REPORTING_OFFSET keeps: 61:12 (ours; see [`reporting_offset`]).
pub const REPORTING_OFFSET_MASK: u64 = 0x3fff_ffff_ffff_f000;
/// Every MMIO_REPORTING_OFFSET has bit 52 set: it is at least one past the widest physical
/// address ([`crate::addr::PHYS_ADDR_LIMIT`]; ours).
pub const REPORTING_OFFSET_FLOOR: u64 = crate::addr::PHYS_ADDR_LIMIT;

const _: () = {
    assert!(REPORTING_OFFSET_FLOOR & REPORTING_OFFSET_MASK == REPORTING_OFFSET_FLOOR);
    // The largest offset is below 2^62: plus any physical address it stays below 2^63.
    assert!(REPORTING_OFFSET_MASK.leading_zeros() >= 2);
};

/// START_INTERFACE_NONCE length (PCIe 6.x 11.3.10).
pub const NONCE_SIZE: usize = 32;

/// FUNCTION_ID bits (PCIe 6.x 11.3.4, INTERFACE_ID): requester ID in 15:0, requester segment
/// in 23:16, segment-valid in bit 24.
pub const FUNCTION_ID_SEGMENT_SHIFT: u32 = 16;
/// FUNCTION_ID requester-segment-valid bit.
pub const FUNCTION_ID_SEGMENT_VALID: u32 = 1 << 24;

/// The TDISP message header (PCIe 6.x 11.3.5): version, type, reserved, INTERFACE_ID.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct Header {
    /// TDISPVersion.
    pub version: u8,
    /// Request or response code.
    pub message_type: u8,
    /// Reserved, zero.
    pub reserved: [u8; 2],
    /// INTERFACE_ID.FUNCTION_ID.
    pub function_id: U32,
    /// INTERFACE_ID reserved bytes, zero.
    pub reserved_id: [u8; 8],
}

/// Size of [`Header`].
pub const HEADER_SIZE: usize = 16;
const _: () = assert!(core::mem::size_of::<Header>() == HEADER_SIZE);

/// Why a TDISP message was not acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WireError {
    /// Shorter than its header and fixed body.
    Short,
    /// Longer than its type allows.
    Long,
    /// A version other than 1.0.
    Version(u8),
    /// A message code this codec does not know.
    UnknownType(u8),
    /// A valid response, but not to the request sent.
    UnexpectedType(u8),
    /// A response about another interface than the one asked.
    WrongInterface(u32),
    /// Reserved bytes not zero.
    Reserved,
    /// A TDI state code outside 0..=3.
    BadState(u8),
    /// The output buffer cannot hold the message.
    BufferTooSmall,
    /// A segment wider than the 8 bits FUNCTION_ID has.
    SegmentTooWide,
    /// Report portions whose offsets and lengths do not add up.
    ReportInconsistent,
    /// A report larger than the firmware accepts.
    ReportTooLarge,
    /// The device answered TDISP_ERROR.
    Refused {
        /// ERROR_CODE.
        code: u32,
        /// ERROR_DATA.
        data: u32,
    },
}

/// FUNCTION_ID of an interface. `SegmentTooWide` when the segment needs more than 8 bits.
pub fn function_id(iface: RequesterId) -> Result<u32, WireError> {
    if iface.segment() > crate::functions::MAX_INTERFACE_SEGMENT {
        return Err(WireError::SegmentTooWide);
    }
    let segment = u32::from(iface.segment());
    let valid = if segment == 0 {
        0
    } else {
        FUNCTION_ID_SEGMENT_VALID
    };
    Ok(u32::from(iface.routing_id()) | (segment << FUNCTION_ID_SEGMENT_SHIFT) | valid)
}

#[cfg(test)]
mod tests;
