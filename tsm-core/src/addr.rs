//! Physical addresses, host and guest, as distinct types checked when built.

use core::fmt;
use core::marker::PhantomData;

use crate::page::PageSize;
use crate::status::Error;

/// Widest physical address the firmware accepts: MAXPHYADDR is at most 52 bits on x86_64
/// (Intel SDM Vol. 3A 4.1.4; AMD APM Vol. 2 5.3.1), and TDX/SEV take no wider operand.
pub const MAX_PHYS_ADDR_BITS: u32 = 52;

/// One past the highest acceptable physical address.
pub const PHYS_ADDR_LIMIT: u64 = 1 << MAX_PHYS_ADDR_BITS;

/// Marker for host physical addresses (system physical, where the device BARs live).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Host {}

/// Marker for guest physical addresses (the confidential VM's view).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Guest {}

/// A physical address in the space `S`; always below [`PHYS_ADDR_LIMIT`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PhysAddr<S> {
    raw: u64,
    space: PhantomData<S>,
}

/// Host physical address.
pub type Hpa = PhysAddr<Host>;
/// Guest physical address.
pub type Gpa = PhysAddr<Guest>;

impl<S> PhysAddr<S> {
    /// Checks `raw` against the physical address width: the only way in from host input.
    pub const fn try_new(raw: u64) -> Result<Self, Error> {
        if raw >= PHYS_ADDR_LIMIT {
            return Err(Error::InvalidAddress);
        }
        Ok(Self {
            raw,
            space: PhantomData,
        })
    }

    /// The raw 64-bit value.
    pub const fn as_u64(self) -> u64 {
        self.raw
    }

    /// Whether the address is aligned to `size`.
    pub const fn is_aligned(self, size: PageSize) -> bool {
        self.raw & size.offset_mask() == 0
    }

    /// `self + bytes`, or `None` when that leaves the physical address space.
    pub const fn checked_add(self, bytes: u64) -> Option<Self> {
        match self.raw.checked_add(bytes) {
            Some(raw) if raw < PHYS_ADDR_LIMIT => Some(Self {
                raw,
                space: PhantomData,
            }),
            _ => None,
        }
    }
}

impl<S> fmt::Debug for PhysAddr<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.raw)
    }
}

impl<S> fmt::Display for PhysAddr<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn width_is_checked() {
        assert_eq!(Hpa::try_new(PHYS_ADDR_LIMIT), Err(Error::InvalidAddress));
        assert_eq!(Gpa::try_new(u64::MAX), Err(Error::InvalidAddress));
        assert_eq!(
            Hpa::try_new(PHYS_ADDR_LIMIT - 1).map(Hpa::as_u64),
            Ok(PHYS_ADDR_LIMIT - 1)
        );
    }

    #[test]
    fn checked_add_stays_in_range() {
        let top = Hpa::try_new(PHYS_ADDR_LIMIT - 0x1000).ok();
        assert_eq!(top.and_then(|a| a.checked_add(0x1000)), None);
        assert_eq!(
            top.and_then(|a| a.checked_add(0xfff)).map(Hpa::as_u64),
            Some(PHYS_ADDR_LIMIT - 1)
        );
    }

    #[test]
    fn alignment() {
        let a = Hpa::try_new(0x20_0000).ok();
        assert_eq!(a.map(|a| a.is_aligned(PageSize::Size2M)), Some(true));
        assert_eq!(a.map(|a| a.is_aligned(PageSize::Size1G)), Some(false));
    }
}
