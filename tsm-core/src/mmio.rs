//! MMIO ranges: page-aligned, non-empty, non-wrapping runs of host physical pages.

use crate::addr::{Hpa, PHYS_ADDR_LIMIT};
use crate::page::{PAGE_SIZE_4K, PageSize};
use crate::status::Error;

/// A run of 4 KiB host pages, as a TDISP interface report lists them (PCIe 6.x 11.3.11,
/// "MMIO_RANGE": first page, number of pages). Valid by construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MmioRange {
    base: Hpa,
    pages: u64,
}

impl MmioRange {
    /// Builds a range of `pages` 4 KiB pages at `base`.
    ///
    /// `Misaligned` if `base` is not 4 KiB aligned, `InvalidRange` if it is empty or would run
    /// past the physical address space.
    pub fn try_new(base: Hpa, pages: u64) -> Result<Self, Error> {
        if !base.is_aligned(PageSize::Size4K) {
            return Err(Error::Misaligned);
        }
        let bytes = pages.checked_mul(PAGE_SIZE_4K).ok_or(Error::InvalidRange)?;
        let end = base
            .as_u64()
            .checked_add(bytes)
            .ok_or(Error::InvalidRange)?;
        if pages == 0 || end > PHYS_ADDR_LIMIT {
            return Err(Error::InvalidRange);
        }
        Ok(Self { base, pages })
    }

    /// Builds a range from raw host values (address, page count).
    pub fn from_raw(base: u64, pages: u64) -> Result<Self, Error> {
        Self::try_new(Hpa::try_new(base)?, pages)
    }

    /// First byte of the range.
    pub const fn base(&self) -> Hpa {
        self.base
    }

    /// Number of 4 KiB pages.
    pub const fn pages(&self) -> u64 {
        self.pages
    }

    /// Length in bytes; never past [`PHYS_ADDR_LIMIT`] by construction.
    pub const fn bytes(&self) -> u64 {
        self.pages.saturating_mul(PAGE_SIZE_4K)
    }

    /// One past the last byte; never above [`PHYS_ADDR_LIMIT`] by construction.
    pub const fn end(&self) -> u64 {
        // Cannot overflow: try_new proved base + pages * 4K <= PHYS_ADDR_LIMIT.
        self.base
            .as_u64()
            .saturating_add(self.pages.saturating_mul(PAGE_SIZE_4K))
    }

    /// Whether `[start, start + bytes)` lies wholly inside the range.
    pub fn contains_span(&self, start: u64, bytes: u64) -> bool {
        match start.checked_add(bytes) {
            Some(end) => start >= self.base.as_u64() && end <= self.end(),
            None => false,
        }
    }

    /// Whether one page of `size` at `hpa` lies wholly inside the range.
    pub fn contains_page(&self, hpa: Hpa, size: PageSize) -> bool {
        self.contains_span(hpa.as_u64(), size.bytes())
    }

    /// Whether the two ranges share at least one byte.
    pub fn overlaps(&self, other: &MmioRange) -> bool {
        self.base.as_u64() < other.end() && other.base.as_u64() < self.end()
    }
}

/// Whether any two of `ranges` share a byte.
pub fn any_overlap(ranges: &[MmioRange]) -> bool {
    ranges.iter().enumerate().any(|(i, r)| {
        ranges
            .iter()
            .skip(i.saturating_add(1))
            .any(|o| o.overlaps(r))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(base: u64, pages: u64) -> MmioRange {
        MmioRange::from_raw(base, pages).unwrap_or_else(|e| panic!("bad test range: {e:?}"))
    }

    #[test]
    fn construction_checks() {
        assert_eq!(MmioRange::from_raw(0x1001, 1), Err(Error::Misaligned));
        assert_eq!(MmioRange::from_raw(0x1000, 0), Err(Error::InvalidRange));
        assert_eq!(
            MmioRange::from_raw(PHYS_ADDR_LIMIT - 0x1000, 2),
            Err(Error::InvalidRange)
        );
        assert_eq!(
            MmioRange::from_raw(0x1000, u64::MAX),
            Err(Error::InvalidRange)
        );
        assert_eq!(
            MmioRange::from_raw(PHYS_ADDR_LIMIT, 1),
            Err(Error::InvalidAddress)
        );
        assert_eq!(range(PHYS_ADDR_LIMIT - 0x1000, 1).end(), PHYS_ADDR_LIMIT);
    }

    #[test]
    fn containment_and_overlap() {
        let r = range(0x20_0000, 512);
        let hpa = |v| Hpa::try_new(v).unwrap_or_else(|e| panic!("{e:?}"));
        assert!(r.contains_page(hpa(0x20_0000), PageSize::Size2M));
        assert!(!r.contains_page(hpa(0x20_1000), PageSize::Size2M));
        assert!(r.contains_page(hpa(0x3f_f000), PageSize::Size4K));
        assert!(!r.contains_page(hpa(0x40_0000), PageSize::Size4K));
        assert!(!r.contains_span(u64::MAX, 2));
        assert!(r.overlaps(&range(0x3f_f000, 1)));
        assert!(!r.overlaps(&range(0x40_0000, 1)));
        assert!(!r.overlaps(&range(0x1f_f000, 1)));
        assert!(range(0x1f_f000, 2).overlaps(&r));
        assert!(any_overlap(&[range(0x1000, 1), r, range(0x3f_f000, 1)]));
        assert!(!any_overlap(&[range(0x1000, 1), r, range(0x40_0000, 1)]));
    }
}
