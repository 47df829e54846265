//! The typed values the bitfield entries ([`crate::rmp::RmpEntry`], [`crate::abi::SlaAddr`])
//! take. `bitfield-struct` setters panic on a value wider than their field, and clippy does
//! not see into the generated code; so no field narrower than its Rust type is ever set from
//! a plain integer. Each type here holds only values that fit its field, by construction.

use tsm_core::PageSize;
use tsm_core::addr::{MAX_PHYS_ADDR_BITS, PhysAddr};

/// Bits of the offset within a 4K page.
pub const PAGE_SHIFT: u32 = 12;

/// The 4K page frame number of a physical address below 2^52 (tsm-core's
/// `PHYS_ADDR_LIMIT`): at most [`Pfn::BITS`] = 40 bits, the width of the page-frame fields of
/// an RMP entry (guest physical address bits 51:12) and of an SLA (sev-dev-tio.h
/// `struct sla_addr_t`, `pfn : 40`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pfn(u64);

impl Pfn {
    /// Width of the field a frame number fills.
    pub const BITS: u32 = 40;
    const MASK: u64 = (1 << Self::BITS) - 1;

    /// The frame holding `addr` (any address below 2^52 has one).
    pub const fn of<S>(addr: PhysAddr<S>) -> Self {
        Self(addr.as_u64() >> PAGE_SHIFT)
    }

    /// A frame number given as a number: `None` past 40 bits.
    pub const fn try_new(pfn: u64) -> Option<Self> {
        if pfn <= Self::MASK {
            Some(Self(pfn))
        } else {
            None
        }
    }

    /// The frame number.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The frame's first byte (below 2^52).
    pub const fn address(self) -> u64 {
        self.0 << PAGE_SHIFT
    }

    /// The frame `n` frames on, if it is still below 2^52.
    pub const fn checked_add(self, n: u64) -> Option<Self> {
        match self.0.checked_add(n) {
            Some(pfn) => Self::try_new(pfn),
            None => None,
        }
    }

    /// For `bitfield-struct`: the field's bits (always within 40).
    pub const fn into_bits(self) -> u64 {
        self.0
    }

    /// For `bitfield-struct`: a frame from the field's bits (only the low 40 are kept).
    pub const fn from_bits(bits: u64) -> Self {
        Self(bits & Self::MASK)
    }
}

// A frame number and its page offset make a physical address of the width tsm-core accepts.
const _: () = assert!(Pfn::BITS + PAGE_SHIFT == MAX_PHYS_ADDR_BITS);

/// The guest leaf size an RMP entry records (ours, 2 bits): the TDX level code of the
/// [`PageSize`] (0 4K, 1 2M, 2 1G), so a lookup anywhere in a leaf returns the whole leaf.
/// 3 is never written; read back it is no size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct LeafCode(u8);

impl LeafCode {
    /// Width of the field.
    pub const BITS: u32 = 2;
    const MASK: u8 = (1 << Self::BITS) - 1;

    /// The code of a leaf size.
    pub const fn of(size: PageSize) -> Self {
        Self(size.tdx_level() & Self::MASK)
    }

    /// The leaf size the code names, if any.
    pub fn size(self) -> Option<PageSize> {
        PageSize::from_tdx_level(u64::from(self.0))
    }

    /// For `bitfield-struct`: the field's bits (always within 2).
    pub const fn into_bits(self) -> u8 {
        self.0
    }

    /// For `bitfield-struct`: a code from the field's bits (only the low 2 are kept).
    pub const fn from_bits(bits: u8) -> Self {
        Self(bits & Self::MASK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tsm_core::{Gpa, Hpa};

    #[test]
    fn frames_fit_their_field() {
        let top = Hpa::try_new(tsm_core::addr::PHYS_ADDR_LIMIT - 1).unwrap();
        assert_eq!(Pfn::of(top).get(), (1 << 40) - 1);
        assert_eq!(Pfn::of(top).checked_add(1), None);
        assert_eq!(Pfn::try_new(1 << 40), None);
        assert_eq!(Pfn::from_bits(u64::MAX).get(), (1 << 40) - 1);
        let gpa = Gpa::try_new(0x12_3456_7000).unwrap();
        assert_eq!(Pfn::of(gpa).address(), 0x12_3456_7000);
        for size in [PageSize::Size4K, PageSize::Size2M, PageSize::Size1G] {
            assert_eq!(LeafCode::of(size).size(), Some(size));
        }
        assert_eq!(LeafCode::from_bits(0xFF).size(), None);
    }
}
