//! Page sizes of a private MMIO leaf.

/// Size of one base page (4 KiB), the unit of MMIO ranges.
pub const PAGE_SIZE_4K: u64 = 1 << 12;

/// The leaf sizes both S-EPT and RMP can express (Intel SDM Vol. 3C 29.3.2: EPT leaves at
/// levels 1-3; AMD APM Vol. 2 15.36.3: RMP page size 4K or 2M, 1G via 2M entries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PageSize {
    /// 4 KiB, an EPT level-1 (PTE) leaf.
    Size4K,
    /// 2 MiB, an EPT level-2 (PDE) leaf.
    Size2M,
    /// 1 GiB, an EPT level-3 (PDPTE) leaf.
    Size1G,
}

impl PageSize {
    /// Every size, smallest first.
    pub const ALL: [PageSize; 3] = [PageSize::Size4K, PageSize::Size2M, PageSize::Size1G];

    /// log2 of the size in bytes.
    pub const fn shift(self) -> u32 {
        match self {
            PageSize::Size4K => 12,
            PageSize::Size2M => 21,
            PageSize::Size1G => 30,
        }
    }

    /// Size in bytes.
    pub const fn bytes(self) -> u64 {
        1 << self.shift()
    }

    /// Number of 4 KiB pages in one page of this size.
    pub const fn base_pages(self) -> u64 {
        match self {
            PageSize::Size4K => 1,
            PageSize::Size2M => 512,
            PageSize::Size1G => 512 * 512,
        }
    }

    /// Mask of the offset bits inside one page of this size.
    pub const fn offset_mask(self) -> u64 {
        // Never underflows: bytes() is at least 4096.
        self.bytes().wrapping_sub(1)
    }

    /// The TDX page-info level (TDX Module ABI, "Page Info" operand: 0 = 4K, 1 = 2M, 2 = 1G).
    pub const fn tdx_level(self) -> u8 {
        match self {
            PageSize::Size4K => 0,
            PageSize::Size2M => 1,
            PageSize::Size1G => 2,
        }
    }

    /// The size for a TDX page-info level; `None` for a level no MMIO leaf can have.
    pub const fn from_tdx_level(level: u64) -> Option<Self> {
        match level {
            0 => Some(PageSize::Size4K),
            1 => Some(PageSize::Size2M),
            2 => Some(PageSize::Size1G),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_levels_agree() {
        assert_eq!(PageSize::Size4K.bytes(), 4096);
        assert_eq!(PageSize::Size2M.bytes(), 2 << 20);
        assert_eq!(PageSize::Size1G.bytes(), 1 << 30);
        assert_eq!(PageSize::Size2M.base_pages(), 512);
        for size in PageSize::ALL {
            assert_eq!(
                PageSize::from_tdx_level(u64::from(size.tdx_level())),
                Some(size)
            );
        }
        assert_eq!(PageSize::from_tdx_level(3), None);
    }
}
