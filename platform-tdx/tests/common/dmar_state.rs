//! TDH.DMAR.READ's state word decoded, shared by the tests that read a PASID entry's state.

/// `dmar_state_info_t` (TDH.DMAR.READ RDX; `dmar.h` @1666adc4): map_sts, bits 10:3.
const MAP_SHIFT: u32 = 3;
/// map_sts width.
const MAP_MASK: u64 = 0xff;
/// inv_sts, bits 13:11 (same source).
const INV_SHIFT: u32 = 11;
/// inv_sts width.
const INV_MASK: u64 = 0x7;

/// `(map_sts, inv_sts)` of TDH.DMAR.READ's RDX (`dmar::MAP_*`, `dmar::INV_*`).
pub fn read_state(rdx: u64) -> (u64, u64) {
    ((rdx >> MAP_SHIFT) & MAP_MASK, (rdx >> INV_SHIFT) & INV_MASK)
}
