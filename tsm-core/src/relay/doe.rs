//! DOE data objects (PCIe 6.x 6.30.1, Data Object Exchange): the envelope a DOE mailbox carries.
//! Two header dwords (vendor ID and data object type; length in dwords including the header),
//! then the payload padded with zeros to a whole dword.

use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// PCI-SIG's vendor ID in a DOE header (PCIe 6.x 6.30.1.1, Table 6-55 data object types).
pub const VENDOR_PCI_SIG: u16 = 0x0001;
/// Data object type 1: CMA/SPDM (PCIe 6.x 6.31.3, SPDM over DOE).
pub const TYPE_SPDM: u8 = 1;
/// Data object type 2: secured CMA/SPDM (PCIe 6.x 6.31.4, DSP0277 records over DOE).
pub const TYPE_SECURED_SPDM: u8 = 2;
/// Size of the DOE header (two dwords).
pub const HEADER_SIZE: usize = 8;
/// DOE header dword 1 length field: bits 17:0, in dwords (PCIe 6.x 6.30.1, Figure 6-46).
const LENGTH_MASK: u32 = (1 << 18) - 1;

/// The two header dwords.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct Header {
    /// Vendor ID in 15:0, data object type in 23:16, reserved 31:24.
    dw0: U32,
    /// Length in dwords in 17:0, reserved 31:18.
    dw1: U32,
}

/// Why bytes are not an acceptable DOE object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DoeError {
    /// Shorter than its header or its own length; or not a whole number of dwords.
    Short,
    /// Longer than its header's length says.
    Long,
    /// Vendor other than PCI-SIG.
    Vendor(u16),
    /// Another data object type than the one expected.
    Type(u8),
    /// Reserved header bits set.
    Reserved,
    /// The output buffer cannot hold the object.
    BufferTooSmall,
}

/// Wraps `payload` in a DOE object of `object_type` at `out`, padded to a dword; returns its
/// length in bytes.
pub fn encode(out: &mut [u8], object_type: u8, payload: &[u8]) -> Result<usize, DoeError> {
    let padded = payload
        .len()
        .checked_next_multiple_of(4)
        .ok_or(DoeError::BufferTooSmall)?;
    let total = padded
        .checked_add(HEADER_SIZE)
        .ok_or(DoeError::BufferTooSmall)?;
    let dwords = u32::try_from(total / 4).map_err(|_| DoeError::BufferTooSmall)?;
    if dwords > LENGTH_MASK {
        return Err(DoeError::BufferTooSmall);
    }
    let header = Header {
        dw0: U32::new(u32::from(VENDOR_PCI_SIG) | (u32::from(object_type) << 16)),
        dw1: U32::new(dwords),
    };
    let dst = out.get_mut(..total).ok_or(DoeError::BufferTooSmall)?;
    let (head, body) = dst.split_at_mut(HEADER_SIZE);
    head.copy_from_slice(header.as_bytes());
    let (data, pad) = body.split_at_mut(payload.len());
    data.copy_from_slice(payload);
    pad.fill(0);
    Ok(total)
}

/// The payload (with its dword padding) of a DOE object of `object_type`. The object must be
/// exactly as long as its header says: a mailbox delivers whole objects.
pub fn decode(bytes: &[u8], object_type: u8) -> Result<&[u8], DoeError> {
    let (header, body) = Header::read_from_prefix(bytes).map_err(|_| DoeError::Short)?;
    let dw0 = header.dw0.get();
    let dw1 = header.dw1.get();
    let vendor = (dw0 & 0xffff) as u16;
    let kind = ((dw0 >> 16) & 0xff) as u8;
    if vendor != VENDOR_PCI_SIG {
        return Err(DoeError::Vendor(vendor));
    }
    if kind != object_type {
        return Err(DoeError::Type(kind));
    }
    if dw0 >> 24 != 0 || dw1 & !LENGTH_MASK != 0 {
        return Err(DoeError::Reserved);
    }
    // Length 0 means 2^18 dwords (6.30.1): far beyond any message this firmware takes.
    let dwords = usize::try_from(dw1).map_err(|_| DoeError::Long)?;
    let total = if dwords == 0 {
        1 << 20
    } else {
        dwords.checked_mul(4).ok_or(DoeError::Long)?
    };
    match bytes.len().cmp(&total) {
        core::cmp::Ordering::Less => Err(DoeError::Short),
        core::cmp::Ordering::Greater => Err(DoeError::Long),
        core::cmp::Ordering::Equal if total < HEADER_SIZE => Err(DoeError::Short),
        core::cmp::Ordering::Equal => Ok(body),
    }
}

/// `body` as a message of `len` bytes followed only by dword padding: the padding is fewer
/// than four zero bytes.
pub fn unpad(body: &[u8], len: usize) -> Result<&[u8], DoeError> {
    if body.len() < len {
        return Err(DoeError::Short);
    }
    let (msg, pad) = body.split_at(len);
    if pad.len() >= 4 || pad.iter().any(|&b| b != 0) {
        return Err(DoeError::Long);
    }
    Ok(msg)
}
