//! The C entry points of the static library (feature `capi`): one firmware instance in a
//! static, initialized once with the memory its frame pool may use, and the SEAMCALL / TDCALL
//! dispatch over a [`SeamRegs`] block. The C declarations are in `include/tsm_tdx.h`.
//!
//! The prototype runs with physical addresses equal to the addresses the caller passes
//! (identity mapping, as in a firmware image without paging tricks), and uses the core's
//! device model as its TDISP transport.

use spin::Once;
use tsm_core::Tsm;
use tsm_core::device_model::ModelDevice;

use crate::abi::{Dispatcher, HostFault, HostMemory, RANGE_LIST_CAPACITY, RangeList, SeamRegs};
use crate::frames::{FramePool, PAGE_BYTES, Page};
use crate::sept::{Sept, SeptLevels};
use crate::status::{
    OPERAND_ID_RCX, OPERAND_ID_RDX, TDX_OPERAND_INVALID, TDX_SUCCESS, TDX_SYS_NOT_READY, TdxStatus,
};
use tsm_core::tdisp::report::{WireMmioRange, wire_range};

/// The firmware instance the C entry points drive.
pub type CFirmware = Tsm<Sept<'static>, ModelDevice>;

static FIRMWARE: Once<CFirmware> = Once::new();

/// Host memory read through identity-mapped pointers.
struct IdentityMemory;

impl HostMemory for IdentityMemory {
    fn read(&self, hpa: u64, out: &mut [u8]) -> Result<(), HostFault> {
        let Ok(addr) = usize::try_from(hpa) else {
            return Err(HostFault::OutsideHostMemory);
        };
        if addr == 0 {
            return Err(HostFault::OutsideHostMemory);
        }
        // SAFETY: the contract of `tsm_tdx_seamcall` (and of the TDX ABI) is that a parameter
        // page operand is the address of readable host memory of the page's size; the bytes
        // are copied out before use, so a host changing them later cannot affect the checks.
        unsafe {
            core::ptr::copy_nonoverlapping(addr as *const u8, out.as_mut_ptr(), out.len());
        }
        Ok(())
    }
}

/// Initializes the firmware with `len` bytes at `mem` for its S-EPT frame pool (4-level).
/// Returns TDX_SUCCESS, or TDX_OPERAND_INVALID (RCX: `mem` null or not 4 KiB aligned; RDX:
/// less than one page) or TDX_OPERAND_INVALID (RAX) when already initialized.
///
/// # Safety
///
/// `mem` must point to `len` writable bytes that nothing else uses for the rest of the
/// program: the firmware keeps them as its table pages.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tsm_tdx_init(mem: *mut u8, len: usize) -> TdxStatus {
    if mem.is_null() || !(mem as usize).is_multiple_of(PAGE_BYTES) {
        return TDX_OPERAND_INVALID | u64::from(OPERAND_ID_RCX);
    }
    let pages = len / PAGE_BYTES;
    if pages == 0 {
        return TDX_OPERAND_INVALID | u64::from(OPERAND_ID_RDX);
    }
    if FIRMWARE.is_completed() {
        return TDX_OPERAND_INVALID;
    }
    // SAFETY: `mem` is non-null, 4 KiB aligned (checked above) and, by this function's
    // contract, `pages * 4096` bytes of memory exclusively ours forever; `Page` is plain `u64`s,
    // valid for any bit pattern.
    let frames: &'static mut [Page] =
        unsafe { core::slice::from_raw_parts_mut(mem.cast::<Page>(), pages) };
    let Some(pool) = FramePool::new(frames, mem as u64) else {
        return TDX_OPERAND_INVALID | u64::from(OPERAND_ID_RDX);
    };
    let mut ours = false;
    FIRMWARE.call_once(|| {
        ours = true;
        Tsm::new(Sept::new(pool, SeptLevels::Four), ModelDevice::model())
    });
    if ours {
        TDX_SUCCESS
    } else {
        TDX_OPERAND_INVALID
    }
}

/// One SEAMCALL: `regs->rax` holds the leaf on entry and the status on return. Returns the
/// status too. TDX_SYS_NOT_READY before `tsm_tdx_init`.
///
/// # Safety
///
/// `regs` must be null or point to a valid, writable `struct tsm_tdx_regs`; every parameter
/// page address passed in it must be readable memory of the size the leaf reads.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tsm_tdx_seamcall(regs: *mut SeamRegs) -> TdxStatus {
    // SAFETY: the caller guarantees `regs` is null or valid and writable; `as_mut` checks null.
    let Some(regs) = (unsafe { regs.as_mut() }) else {
        return TDX_OPERAND_INVALID;
    };
    let Some(tsm) = FIRMWARE.get() else {
        regs.rax = TDX_SYS_NOT_READY;
        return TDX_SYS_NOT_READY;
    };
    Dispatcher::new(tsm, IdentityMemory).seamcall(regs);
    regs.rax
}

/// One TDCALL from TD `td` (the guest side). Same contract as [`tsm_tdx_seamcall`].
///
/// # Safety
///
/// As for [`tsm_tdx_seamcall`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tsm_tdx_tdcall(td: u64, regs: *mut SeamRegs) -> TdxStatus {
    // SAFETY: the caller guarantees `regs` is null or valid and writable; `as_mut` checks null.
    let Some(regs) = (unsafe { regs.as_mut() }) else {
        return TDX_OPERAND_INVALID;
    };
    let Some(tsm) = FIRMWARE.get() else {
        regs.rax = TDX_SYS_NOT_READY;
        return TDX_SYS_NOT_READY;
    };
    let Ok(td) = tsm_core::GuestId::from_raw(td) else {
        regs.rax = TDX_OPERAND_INVALID;
        return regs.rax;
    };
    Dispatcher::new(tsm, IdentityMemory).tdcall(td, regs);
    regs.rax
}

/// Sets what the prototype's device reports for interface `iface` (packed requester ID): the
/// ranges of `list`, as a real device's firmware would. The prototype's TDISP transport is the
/// core's model DSM; on hardware this call has no counterpart. Returns TDX_SUCCESS,
/// TDX_OPERAND_INVALID (RCX: bad interface; RDX: unreadable or malformed list) or
/// TDX_SYS_NOT_READY before `tsm_tdx_init`.
///
/// # Safety
///
/// `list` must be null or point to a readable `struct tsm_tdx_range_list`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tsm_tdx_model_report(iface: u64, list: *const RangeList) -> TdxStatus {
    let Some(tsm) = FIRMWARE.get() else {
        return TDX_SYS_NOT_READY;
    };
    let Ok(iface) = tsm_core::RequesterId::from_packed(iface) else {
        return TDX_OPERAND_INVALID | u64::from(OPERAND_ID_RCX);
    };
    // SAFETY: the caller guarantees `list` is null or valid for reads; `as_ref` checks null.
    let Some(list) = (unsafe { list.as_ref() }) else {
        return TDX_OPERAND_INVALID | u64::from(OPERAND_ID_RDX);
    };
    let count = usize::try_from(list.count).unwrap_or(usize::MAX);
    let Some(entries) = list.ranges.get(..count) else {
        return TDX_OPERAND_INVALID | u64::from(OPERAND_ID_RDX);
    };
    let mut wire: heapless::Vec<WireMmioRange, RANGE_LIST_CAPACITY> = heapless::Vec::new();
    for e in entries {
        let _ = wire.push(wire_range(e.first_page, e.pages, e.attributes, e.range_id));
    }
    match tsm.with_transport(|d| d.link_mut().set_report(iface, &wire)) {
        Ok(()) => TDX_SUCCESS,
        Err(_) => TDX_OPERAND_INVALID,
    }
}

/// Without `std` the static library needs its own panic handler. The lints make host input
/// unable to reach a panic; if one happens anyway, trap (SIGILL on a host, #UD in firmware)
/// rather than continue.
#[cfg(all(not(feature = "std"), not(test)))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `ud2` raises an invalid-opcode exception and never returns.
    unsafe {
        core::arch::asm!("ud2", options(noreturn));
    }
    #[cfg(not(target_arch = "x86_64"))]
    loop {
        core::hint::spin_loop();
    }
}

/// A hosted target's precompiled `core` carries unwind tables that name the personality
/// routine, so a `no_std` static library linked into a C program must provide the symbol. It
/// is never called: the library is built with `panic = "abort"` and the panic handler traps.
#[cfg(all(not(feature = "std"), not(test), not(target_os = "none")))]
#[unsafe(no_mangle)]
pub extern "C" fn rust_eh_personality() {}
