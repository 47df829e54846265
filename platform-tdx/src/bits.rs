//! Values of the bitfield entries ([`crate::ept::SeptEntry`], [`crate::sept::MmioMtEntry`]) as
//! types that cannot hold more bits than their field.
//!
//! `bitfield-struct`'s `with_*` setters panic on a value wider than the field, in generated code
//! clippy never sees. Every multi-bit field of this crate's entries therefore has one of these
//! types instead of a raw integer: each constructor either proves the width from its input's
//! type (a [`PhysAddr`] is below 2^52, so its frame number fits 40 bits) or reduces the value
//! to the field's width by a documented rule, so the setters' panic branch is unreachable.
//! `bits::tests` checks every type's widest value against its field.

use tsm_core::addr::{PHYS_ADDR_LIMIT, PhysAddr};
use tsm_core::secure_table::Epoch;
use tsm_core::{GuestId, capacity::MAX_GUESTS};

/// Bits of a frame number in an entry: bits 51:12 (Intel SDM Vol. 3C 29.3.2, EPT entry formats;
/// the MMIO metadata entry keeps the same layout).
pub const PFN_BITS: u32 = 40;
const PFN_MASK: u64 = (1 << PFN_BITS) - 1;
/// A 4 KiB frame's offset bits (Intel SDM Vol. 3C 29.3.2: table pages and frames are 4 KiB).
const FRAME_SHIFT: u32 = 12;

/// A 4 KiB frame number below 2^40, i.e. a frame below the 52-bit physical address limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pfn(u64);

impl Pfn {
    /// The frame holding `addr`: below 2^52, so its frame number is below 2^40.
    pub const fn of<S>(addr: PhysAddr<S>) -> Pfn {
        Pfn(addr.as_u64() >> FRAME_SHIFT)
    }

    /// The frame holding the raw physical address `phys`; `None` at or above 2^52.
    pub const fn from_phys(phys: u64) -> Option<Pfn> {
        if phys >= PHYS_ADDR_LIMIT {
            return None;
        }
        Some(Pfn(phys >> FRAME_SHIFT))
    }

    /// The frame's physical address.
    pub const fn phys(self) -> u64 {
        self.0 << FRAME_SHIFT
    }

    /// The frame `frames` after this one, if it is still below 2^52.
    pub const fn checked_add(self, frames: u64) -> Option<Pfn> {
        match self.0.checked_add(frames) {
            Some(n) if n <= PFN_MASK => Some(Pfn(n)),
            _ => None,
        }
    }

    /// From the entry's 40 field bits (bitfield-struct getter).
    pub const fn from_bits(bits: u64) -> Pfn {
        Pfn(bits & PFN_MASK)
    }

    /// The 40 field bits (bitfield-struct setter; never wider, so it never panics).
    pub const fn into_bits(self) -> u64 {
        self.0
    }
}

/// Bits of the EPT memory-type field: bits 5:3 (Intel SDM Vol. 3C 29.3.2).
pub const MEM_TYPE_BITS: u32 = 3;
const MEM_TYPE_MASK: u8 = (1 << MEM_TYPE_BITS) - 1;

/// An EPT memory type (3 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MemType(u8);

impl MemType {
    /// UC (Intel SDM Vol. 3C 29.3.7: EPT memory type 0 = uncacheable).
    pub const UC: MemType = MemType(0);
    /// WB (Intel SDM Vol. 3C 29.3.7: 6 = write-back). Memory leaves; never MMIO.
    pub const WB: MemType = MemType(6);

    /// From the field's 3 bits (higher bits are dropped).
    pub const fn from_bits(bits: u8) -> MemType {
        MemType(bits & MEM_TYPE_MASK)
    }

    /// The field's 3 bits.
    pub const fn into_bits(self) -> u8 {
        self.0
    }
}

/// Bits of the TD slot an MMIO metadata entry names (ours: bits 7:2).
pub const MT_GUEST_BITS: u32 = 6;
const MT_GUEST_MASK: u8 = (1 << MT_GUEST_BITS) - 1;

const _: () = assert!(
    MAX_GUESTS <= 1 << MT_GUEST_BITS,
    "MMIOMT guest field too narrow"
);

/// A TD slot that fits the MMIO metadata entry's 6-bit field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MtGuest(u8);

impl MtGuest {
    /// `guest`'s slot; `None` for a slot the field cannot hold (never for a slot below
    /// `MAX_GUESTS`, which the assertion above keeps within 6 bits).
    pub fn of(guest: GuestId) -> Option<MtGuest> {
        u8::try_from(guest.slot())
            .ok()
            .filter(|&s| s <= MT_GUEST_MASK)
            .map(MtGuest)
    }

    /// The TD.
    pub const fn guest(self) -> GuestId {
        GuestId::from_slot(self.0 as u16)
    }

    /// From the field's 6 bits.
    pub const fn from_bits(bits: u8) -> MtGuest {
        MtGuest(bits & MT_GUEST_MASK)
    }

    /// The field's 6 bits.
    pub const fn into_bits(self) -> u8 {
        self.0
    }
}

/// Bits of the blocking epoch an MMIO metadata entry keeps (ours: bits 63:52; the TDX module
/// keeps a blocked page's epoch in its metadata too, PAMT BEPOCH).
pub const BEPOCH_BITS: u32 = 12;
/// Epochs the 12-bit field tells apart: 2^12.
pub const BEPOCH_WINDOW: u64 = 1 << BEPOCH_BITS;
const BEPOCH_MASK: u64 = BEPOCH_WINDOW - 1;

/// A TD epoch modulo 2^12, as a blocked leaf's metadata records it. `sept` keeps every
/// outstanding blocked leaf within 2^12 epochs of the current one, so the full epoch is
/// recovered exactly ([`Bepoch::epoch_at`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Bepoch(u16);

impl Bepoch {
    /// `epoch` modulo 2^12.
    pub const fn of(epoch: Epoch) -> Bepoch {
        // The mask keeps 12 bits, so the value fits a u16.
        Bepoch((epoch & BEPOCH_MASK) as u16)
    }

    /// The latest epoch at or before `current` that is congruent to this one modulo 2^12: the
    /// blocking epoch, given that it lies in `(current - 2^12, current]`.
    pub const fn epoch_at(self, current: Epoch) -> Epoch {
        let age = (current & BEPOCH_MASK).wrapping_sub(self.0 as u64) & BEPOCH_MASK;
        // age <= current: current's low bits minus the stored ones, modulo 2^12, never exceeds
        // current unless the entry is from the future, which blocking never records.
        current.saturating_sub(age)
    }

    /// From the field's 12 bits.
    pub const fn from_bits(bits: u16) -> Bepoch {
        Bepoch(bits & BEPOCH_MASK as u16)
    }

    /// The field's 12 bits.
    pub const fn into_bits(self) -> u16 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tsm_core::{Gpa, Hpa};

    /// The widest value each type can hold fits its field: the setters cannot panic.
    #[test]
    fn widest_values_fit_their_fields() {
        let top = Hpa::try_new(PHYS_ADDR_LIMIT - 1).unwrap();
        assert_eq!(Pfn::of(top).into_bits(), PFN_MASK);
        assert_eq!(Pfn::of(Gpa::try_new(0).unwrap()).into_bits(), 0);
        assert_eq!(Pfn::from_phys(PHYS_ADDR_LIMIT), None);
        assert_eq!(Pfn::from_bits(u64::MAX).into_bits(), PFN_MASK);
        assert_eq!(Pfn::from_bits(PFN_MASK).checked_add(1), None);
        assert_eq!(MemType::from_bits(u8::MAX).into_bits(), 7);
        assert_eq!(MtGuest::from_bits(u8::MAX).into_bits(), 63);
        assert_eq!(MtGuest::of(GuestId::from_slot(64)), None);
        assert_eq!(
            MtGuest::of(GuestId::from_slot(31)).map(MtGuest::guest),
            Some(GuestId::from_slot(31))
        );
        assert_eq!(Bepoch::of(u64::MAX).into_bits(), 0xfff);
        assert_eq!(Bepoch::from_bits(u16::MAX).into_bits(), 0xfff);
    }

    #[test]
    fn blocking_epoch_is_recovered_across_the_wrap() {
        // Blocked at 4095 (0xfff), read back at 4095, 4096 (0x000) and 8190.
        let b = Bepoch::of(4095);
        assert_eq!(b.epoch_at(4095), 4095);
        assert_eq!(b.epoch_at(4096), 4095);
        assert_eq!(b.epoch_at(4095 + 4095), 4095);
        // One whole window later the field alone cannot tell: `sept` never lets that happen.
        assert_eq!(b.epoch_at(4095 + 4096), 4095 + 4096);
        assert_eq!(Bepoch::of(4096).epoch_at(4097), 4096);
    }
}
