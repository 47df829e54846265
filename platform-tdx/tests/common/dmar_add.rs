//! TDH.DMAR.ADD's registers as the tests issue them, shared by the tests that add a PASID
//! entry.

use platform_tdx::abi::SeamRegs;
use platform_tdx::dmar;

/// TDH.DMAR.ADD of PASID entry `idx` (`dmar_idx_t`) for the TD whose TDR is `td`, the entry's
/// qwords as the module requires them over a 4-level S-EPT (present clear, no SLPTPTR or DID).
pub fn dmar_add_regs(idx: u64, td: u64) -> SeamRegs {
    SeamRegs {
        rcx: idx,
        rdx: td,
        r8: dmar::ADD_QWORD0_4LEVEL,
        r9: dmar::ADD_QWORD1,
        ..Default::default()
    }
}
