//! SPDM 1.2 vendor-defined messages (DSP0274 1.2.x, 10.24 VENDOR_DEFINED_REQUEST and
//! VENDOR_DEFINED_RESPONSE) carrying a PCI-SIG protocol message: the layer TDISP rides in
//! (PCIe 6.x 6.31.2, Table 6-59: the payload's first byte is the protocol ID).

use zerocopy::little_endian::U16;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// SPDMVersion 1.2 (DSP0274 1.2, 10.3 "SPDM version": major in 7:4, minor in 3:0).
pub const SPDM_VERSION_1_2: u8 = 0x12;
/// VENDOR_DEFINED_REQUEST request code (DSP0274 1.2, Table 4 "SPDM request codes").
pub const VENDOR_DEFINED_REQUEST: u8 = 0xFE;
/// VENDOR_DEFINED_RESPONSE response code (DSP0274 1.2, Table 5 "SPDM response codes").
pub const VENDOR_DEFINED_RESPONSE: u8 = 0x7E;
/// StandardID of PCI-SIG (DSP0274 1.2, Table 58 "Standards body or vendor ID": 3).
pub const STANDARD_ID_PCI_SIG: u16 = 3;
/// PCI-SIG's VendorID in the message, two bytes long (PCIe 6.x 6.31.2).
pub const VENDOR_ID_PCI_SIG: u16 = 0x0001;
/// Protocol ID of TDISP in the vendor-defined payload (PCIe 6.x 6.31.2, Table 6-59:
/// 0x00 IDE_KM, 0x01 TDISP).
pub const PROTOCOL_TDISP: u8 = 0x01;

/// The fixed part of a vendor-defined request or response with a two-byte vendor ID.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct Head {
    version: u8,
    code: u8,
    param1: u8,
    param2: u8,
    standard_id: U16,
    vendor_id_len: u8,
    vendor_id: U16,
    payload_len: U16,
}

/// Size of the fixed part.
pub const HEAD_SIZE: usize = 11;
const _: () = assert!(core::mem::size_of::<Head>() == HEAD_SIZE);
/// Bytes a TDISP message gains in this layer: the head and the protocol ID.
pub const OVERHEAD: usize = HEAD_SIZE + 1;

/// Why bytes are not an acceptable vendor-defined message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpdmError {
    /// Shorter than the head or its payload length.
    Short,
    /// Bytes beyond the payload length.
    Long,
    /// Not SPDM 1.2.
    Version(u8),
    /// Another request/response code than the vendor-defined one expected.
    Code(u8),
    /// Param1/Param2 not zero.
    Reserved,
    /// Not PCI-SIG's standard or vendor ID.
    Vendor,
    /// A protocol other than TDISP.
    Protocol(u8),
    /// The output buffer cannot hold the message.
    BufferTooSmall,
}

/// Wraps the TDISP message `tdisp` in a vendor-defined message with `code` (request or
/// response) at `out`; returns the length.
pub fn encode(out: &mut [u8], code: u8, tdisp: &[u8]) -> Result<usize, SpdmError> {
    let payload = tdisp
        .len()
        .checked_add(1)
        .ok_or(SpdmError::BufferTooSmall)?;
    let total = payload
        .checked_add(HEAD_SIZE)
        .ok_or(SpdmError::BufferTooSmall)?;
    let head = Head {
        version: SPDM_VERSION_1_2,
        code,
        param1: 0,
        param2: 0,
        standard_id: U16::new(STANDARD_ID_PCI_SIG),
        vendor_id_len: 2,
        vendor_id: U16::new(VENDOR_ID_PCI_SIG),
        payload_len: U16::new(u16::try_from(payload).map_err(|_| SpdmError::BufferTooSmall)?),
    };
    let dst = out.get_mut(..total).ok_or(SpdmError::BufferTooSmall)?;
    let (h, rest) = dst.split_at_mut(HEAD_SIZE);
    h.copy_from_slice(head.as_bytes());
    let (proto, msg) = rest.split_at_mut(1);
    proto.fill(PROTOCOL_TDISP);
    msg.copy_from_slice(tdisp);
    Ok(total)
}

/// The TDISP message inside a vendor-defined message with `code`; `bytes` must be exactly
/// the message.
pub fn decode(bytes: &[u8], code: u8) -> Result<&[u8], SpdmError> {
    let (head, rest) = Head::read_from_prefix(bytes).map_err(|_| SpdmError::Short)?;
    if head.version != SPDM_VERSION_1_2 {
        return Err(SpdmError::Version(head.version));
    }
    if head.code != code {
        return Err(SpdmError::Code(head.code));
    }
    if head.param1 != 0 || head.param2 != 0 {
        return Err(SpdmError::Reserved);
    }
    if head.standard_id.get() != STANDARD_ID_PCI_SIG
        || head.vendor_id_len != 2
        || head.vendor_id.get() != VENDOR_ID_PCI_SIG
    {
        return Err(SpdmError::Vendor);
    }
    let payload = match rest.len().cmp(&usize::from(head.payload_len.get())) {
        core::cmp::Ordering::Less => return Err(SpdmError::Short),
        core::cmp::Ordering::Greater => return Err(SpdmError::Long),
        core::cmp::Ordering::Equal => rest,
    };
    match payload.split_first() {
        Some((&PROTOCOL_TDISP, msg)) => Ok(msg),
        Some((&other, _)) => Err(SpdmError::Protocol(other)),
        None => Err(SpdmError::Short),
    }
}
