//! TDH.DEVIF.CREATE's registers as the tests issue them, shared by the tests that create a TDI.

use platform_tdx::abi::{self, SeamRegs};
use tsm_core::RequesterId;

/// TDH.DEVIF.CREATE of `iface` on SPDM id `dev`'s stream (ours: stream ID == SPDM id) for TD
/// `td`, with `private` the TDI's private pages (R8 DEVIFCS, R9 TD buffer, R10 VMM buffer).
pub fn devif_create_regs(
    dev: u64,
    iface: RequesterId,
    td: u64,
    private: impl Into<[u64; 3]>,
) -> SeamRegs {
    let [devifcs, td_buf, vmm_buf] = private.into();
    SeamRegs {
        rcx: abi::devif_id(0, dev as u8, abi::function_id(iface) as u32),
        rdx: td,
        r8: devifcs,
        r9: td_buf,
        r10: vmm_buf,
        ..Default::default()
    }
}
