//! The device interface report (PCIe 6.x 11.3.11, TDI_REPORT_STRUCTURE): parsed from the
//! device's bytes, assembled from the portions the device sends, and validated before any range
//! in it is trusted.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::WireError;
use crate::capacity::MAX_RANGES_PER_TDI;
use crate::mmio::{MmioRange, any_overlap};
use crate::status::Error;
use crate::transport::ReportedRange;

/// Largest report the firmware accepts, in bytes: the fixed part, [`MAX_RANGES_PER_TDI`]
/// ranges, and room for device-specific information.
pub const MAX_REPORT_BYTES: usize = 1024;

/// MMIO_RANGE attribute: the range holds the MSI-X table (11.3.11, RANGE_ATTRIBUTES bit 0).
pub const RANGE_ATTR_MSIX_TABLE: u16 = 1 << 0;
/// MMIO_RANGE attribute: the range holds the MSI-X PBA (bit 1).
pub const RANGE_ATTR_MSIX_PBA: u16 = 1 << 1;
/// MMIO_RANGE attribute IS_NON_TEE_MEM: not private, never owned by a bound TDI (bit 2).
pub const RANGE_ATTR_NON_TEE: u16 = 1 << 2;
/// MMIO_RANGE attribute IS_MEM_ATTR_UPDATABLE (bit 3).
pub const RANGE_ATTR_UPDATABLE: u16 = 1 << 3;

/// The report's fixed part, up to and including MMIO_RANGE_COUNT.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct ReportHead {
    /// INTERFACE_INFO.
    pub interface_info: U16,
    /// Reserved.
    pub reserved: U16,
    /// MSI_X_MESSAGE_CONTROL.
    pub msix_message_control: U16,
    /// LNR_CONTROL.
    pub lnr_control: U16,
    /// TPH_CONTROL.
    pub tph_control: U32,
    /// MMIO_RANGE_COUNT.
    pub mmio_range_count: U32,
}

/// One MMIO_RANGE as the report lays it out.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct WireMmioRange {
    /// FIRST_PAGE: byte address of the first 4 KiB page (plus MMIO_REPORTING_OFFSET).
    pub first_page: U64,
    /// NUMBER_OF_PAGES.
    pub number_of_pages: U32,
    /// RANGE_ATTRIBUTES.
    pub range_attributes: U16,
    /// RANGE_ID.
    pub range_id: U16,
}

const _: () = {
    assert!(core::mem::size_of::<ReportHead>() == 16);
    assert!(core::mem::size_of::<WireMmioRange>() == 16);
};

/// One validated range of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportRange {
    /// The host pages.
    pub range: MmioRange,
    /// RANGE_ATTRIBUTES.
    pub attributes: u16,
    /// RANGE_ID (which BAR, device-defined).
    pub id: u16,
}

/// A parsed, validated device interface report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInterfaceReport {
    /// INTERFACE_INFO.
    pub interface_info: u16,
    /// MSI_X_MESSAGE_CONTROL.
    pub msix_message_control: u16,
    /// LNR_CONTROL.
    pub lnr_control: u16,
    /// TPH_CONTROL.
    pub tph_control: u32,
    /// The MMIO ranges, in report order.
    pub ranges: heapless::Vec<ReportRange, MAX_RANGES_PER_TDI>,
    /// DEVICE_SPECIFIC_INFO_LEN.
    pub device_specific_len: u32,
}

impl DeviceInterfaceReport {
    /// Parses and validates `bytes`, a whole report. Addresses have `reporting_offset`
    /// (the MMIO_REPORTING_OFFSET sent with LOCK_INTERFACE) taken off.
    ///
    /// `DeviceMalformed` when lengths do not add up or reserved bits are set, or a FIRST_PAGE
    /// lies below the offset (the device did not add it: with the firmware's offsets, at
    /// least 2^52, no address reported without it can pass), `TooManyRanges`,
    /// `Misaligned` (a first page not 4 KiB aligned), `InvalidRange` (empty or wrapping) and
    /// `RangesOverlap` for ranges the firmware will not trust.
    pub fn parse(bytes: &[u8], reporting_offset: u64) -> Result<Self, Error> {
        let (head, rest) =
            ReportHead::read_from_prefix(bytes).map_err(|_| Error::DeviceMalformed)?;
        if head.reserved.get() != 0 {
            return Err(Error::DeviceMalformed);
        }
        let count =
            usize::try_from(head.mmio_range_count.get()).map_err(|_| Error::TooManyRanges)?;
        if count > MAX_RANGES_PER_TDI {
            return Err(Error::TooManyRanges);
        }
        let (wire_ranges, rest) = <[WireMmioRange]>::ref_from_prefix_with_elems(rest, count)
            .map_err(|_| Error::DeviceMalformed)?;
        let (dsi_len, dsi) = U32::read_from_prefix(rest).map_err(|_| Error::DeviceMalformed)?;
        if usize::try_from(dsi_len.get()).ok() != Some(dsi.len()) {
            return Err(Error::DeviceMalformed);
        }
        let mut ranges = heapless::Vec::new();
        for w in wire_ranges {
            let base = w
                .first_page
                .get()
                .checked_sub(reporting_offset)
                .ok_or(Error::DeviceMalformed)?;
            let range = MmioRange::from_raw(base, u64::from(w.number_of_pages.get())).map_err(
                |e| match e {
                    Error::InvalidAddress => Error::InvalidRange,
                    other => other,
                },
            )?;
            let entry = ReportRange {
                range,
                attributes: w.range_attributes.get(),
                id: w.range_id.get(),
            };
            ranges.push(entry).map_err(|_| Error::TooManyRanges)?;
        }
        let plain: heapless::Vec<MmioRange, MAX_RANGES_PER_TDI> =
            ranges.iter().map(|r| r.range).collect();
        if any_overlap(&plain) {
            return Err(Error::RangesOverlap);
        }
        Ok(Self {
            interface_info: head.interface_info.get(),
            msix_message_control: head.msix_message_control.get(),
            lnr_control: head.lnr_control.get(),
            tph_control: head.tph_control.get(),
            ranges,
            device_specific_len: dsi_len.get(),
        })
    }

    /// Every range, each marked private unless IS_NON_TEE_MEM.
    pub fn reported_ranges(&self) -> heapless::Vec<ReportedRange, MAX_RANGES_PER_TDI> {
        self.ranges
            .iter()
            .map(|r| ReportedRange {
                range: r.range,
                private: r.attributes & RANGE_ATTR_NON_TEE == 0,
            })
            .collect()
    }

    /// The ranges that are private to the TDI: every range not marked IS_NON_TEE_MEM.
    pub fn tee_ranges(&self) -> heapless::Vec<MmioRange, MAX_RANGES_PER_TDI> {
        self.ranges
            .iter()
            .filter(|r| r.attributes & RANGE_ATTR_NON_TEE == 0)
            .map(|r| r.range)
            .collect()
    }
}

/// Writes a report into `out` (device side and tests); returns its length.
pub fn encode_report(
    out: &mut [u8],
    head: &ReportHead,
    ranges: &[WireMmioRange],
    device_specific: &[u8],
) -> Result<usize, WireError> {
    let mut len = 0usize;
    let dsi_len =
        U32::new(u32::try_from(device_specific.len()).map_err(|_| WireError::ReportTooLarge)?);
    let parts: [&[u8]; 4] = [
        head.as_bytes(),
        ranges.as_bytes(),
        dsi_len.as_bytes(),
        device_specific,
    ];
    for part in parts {
        let end = len
            .checked_add(part.len())
            .ok_or(WireError::BufferTooSmall)?;
        out.get_mut(len..end)
            .ok_or(WireError::BufferTooSmall)?
            .copy_from_slice(part);
        len = end;
    }
    Ok(len)
}

/// Collects a report from DEVICE_INTERFACE_REPORT portions (11.3.12: PORTION_LENGTH,
/// REMAINDER_LENGTH), requested in order from offset 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportAssembler {
    buf: [u8; MAX_REPORT_BYTES],
    len: usize,
    total: Option<usize>,
}

impl Default for ReportAssembler {
    fn default() -> Self {
        Self::new()
    }
}

impl ReportAssembler {
    /// Nothing received yet.
    pub const fn new() -> Self {
        Self {
            buf: [0; MAX_REPORT_BYTES],
            len: 0,
            total: None,
        }
    }

    /// Offset of the next portion to ask for.
    pub fn offset(&self) -> usize {
        self.len
    }

    /// Takes the next portion; `Ok(true)` once the report is whole. The first portion fixes
    /// the total length; every later one must agree with it and make progress.
    pub fn accept(&mut self, portion: &[u8], remainder: u16) -> Result<bool, WireError> {
        let end = self
            .len
            .checked_add(portion.len())
            .ok_or(WireError::ReportTooLarge)?;
        let total = end
            .checked_add(usize::from(remainder))
            .ok_or(WireError::ReportTooLarge)?;
        if self.total.is_some_and(|t| t != total) {
            return Err(WireError::ReportInconsistent);
        }
        if total > MAX_REPORT_BYTES {
            return Err(WireError::ReportTooLarge);
        }
        if portion.is_empty() && remainder != 0 {
            return Err(WireError::ReportInconsistent);
        }
        self.buf
            .get_mut(self.len..end)
            .ok_or(WireError::ReportTooLarge)?
            .copy_from_slice(portion);
        self.len = end;
        self.total = Some(total);
        Ok(remainder == 0)
    }

    /// Whether the next portion, of at most `portion` bytes, can complete the report: always
    /// before the first (the total is not known yet).
    pub fn may_end_with(&self, portion: usize) -> bool {
        self.total
            .is_none_or(|t| t.saturating_sub(self.len) <= portion)
    }

    /// The report bytes received so far.
    pub fn bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }
}

/// Step between report portion sizes: the firmware asks for at most this much per message.
pub const REPORT_PORTION: u16 = 256;

/// Convenience for building reports in tests and the device model.
pub fn wire_range(first_page: u64, pages: u32, attributes: u16, id: u16) -> WireMmioRange {
    WireMmioRange {
        first_page: U64::new(first_page),
        number_of_pages: U32::new(pages),
        range_attributes: U16::new(attributes),
        range_id: U16::new(id),
    }
}

/// A report head with only the range count set.
pub fn report_head(count: u32) -> ReportHead {
    ReportHead {
        interface_info: U16::new(0),
        reserved: U16::new(0),
        msix_message_control: U16::new(0),
        lnr_control: U16::new(0),
        tph_control: U32::new(0),
        mmio_range_count: U32::new(count),
    }
}
