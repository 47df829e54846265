//! The C entry points of the static library (feature `capi`): one firmware instance in a
//! static, initialized once with the memory its frame pool owns and the host memory it may
//! read and write, and the SEAMCALL / TDCALL dispatch over a [`SeamRegs`] block. The C
//! declarations are in `include/tsm_tdx.h`.
//!
//! The prototype runs with physical addresses equal to the addresses the caller passes
//! (identity mapping, as in a firmware image without paging tricks). It never talks to a
//! device: a leaf that needs one answers `TDX_SPDM_REQUEST` with the request in the TDI's
//! request page, and the C host relays it (README, "The relay"). A firmware build has one
//! init, `tsm_tdx_init_session`: it takes the SPDM session the integrator established with
//! the device as C callbacks ([`session`]: `struct tsm_tdx_session`, copied once). With
//! feature `model-device` (test support, never in a firmware build) the library also carries
//! `tsm_tdx_init`, which seals with [`tsm_core::ModelSession`] (a key in the public source:
//! the host can forge every device answer, so it must never be in a firmware image), the
//! model device for a C host to relay to (`ModelMailbox`: `tsm_tdx_model_doe`,
//! `tsm_tdx_model_report`) and the model session as C callbacks (`tsm_tdx_model_session`).
//!
//! What the entry points guarantee:
//! - `tsm_tdx_init_session` (and the test support's `tsm_tdx_init`) checks its arguments without touching memory, then builds the pool inside
//!   the one-time initialization: of two racing callers exactly one succeeds, the other gets
//!   `TDX_SYSINIT_NOT_PENDING` and its buffer is never touched.
//! - Every read and write of host memory, the register block included, goes through one
//!   checked accessor ([`HostWindow`]) over the host range registered at init: an address
//!   outside it is `TDX_OPERAND_ADDR_RANGE_ERROR` on the operand, never a fault.
//! - Host memory is read into a private snapshot, each 8-byte word with one relaxed atomic
//!   load (a single load instruction, as a volatile read would be, but defined when the host
//!   writes the same word concurrently: a volatile read racing a host write is a data race
//!   Miri reports). The register block is read once on entry and written once on return;
//!   nothing reads host memory after the operation.
//! - Reserved fields of what the host passes must be zero.
//!
//! The logic lives in [`Firmware`] so tests can run several instances (and run under Miri);
//! the `extern "C"` functions are one-line calls on the static one.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use spin::Once;
use tsm_core::{MmioRange, ReservedMemory};
use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::abi::{Dispatcher, HostFault, HostMemory, SeamRegs};
use crate::frames::{FramePool, PAGE_BYTES, Page};
use crate::module::TdxModule;
use crate::sept::{Sept, SeptLevels};
use crate::status::{
    OPERAND_ID_R8, OPERAND_ID_R9, OPERAND_ID_R10, OPERAND_ID_RCX, OPERAND_ID_RDX,
    OPERAND_ID_REG_BLOCK, TDX_OPERAND_ADDR_RANGE_ERROR, TDX_OPERAND_INVALID, TDX_SUCCESS,
    TDX_SYS_NOT_READY, TDX_SYSINIT_NOT_PENDING, TdxStatus,
};

#[cfg(any(feature = "model-device", test))]
mod model;
pub mod session;
#[cfg(any(feature = "model-device", test))]
pub use model::ModelMailbox;
pub use session::{CRecordContext, CSession, SessionOps};

/// The firmware instance the C entry points drive: one shard (one S-EPT over the one pool
/// `tsm_tdx_init_session` is given, one session); a sharded module ([`TdxModule::sharded`]) is for
/// Rust platforms, and the C ABI does not change with it.
pub type CFirmware = TdxModule<'static, CSession>;

/// Bytes of one host-memory access: the accessor moves 8-byte words.
const WORD: usize = core::mem::size_of::<u64>();

fn invalid(operand: u32) -> TdxStatus {
    TDX_OPERAND_INVALID | u64::from(operand)
}

fn fault(f: HostFault, operand: u32) -> TdxStatus {
    match f {
        HostFault::OutsideHostMemory => TDX_OPERAND_ADDR_RANGE_ERROR | u64::from(operand),
        HostFault::Misaligned => invalid(operand),
    }
}

/// The host memory the firmware may read and write: the one range registered at init. The
/// only way the firmware touches host memory.
#[derive(Debug, Clone, Copy)]
pub struct HostWindow {
    base: NonNull<u64>,
    len: usize,
}

// SAFETY: the window is a pointer and a length; every access through it is an atomic load or
// store of an aligned word inside the range the caller of `HostWindow::new` promised stays
// valid for the program's life, so sharing it between threads is sound.
unsafe impl Send for HostWindow {}
// SAFETY: as for Send: `&HostWindow` only permits atomic accesses.
unsafe impl Sync for HostWindow {}

impl HostWindow {
    /// The window over `len` bytes at `base`. `Err` with the status naming the argument (R8:
    /// `base` null or not 8-byte aligned; R9: `len` zero, not a multiple of 8, or past the
    /// 52-bit address space).
    ///
    /// # Safety
    ///
    /// If it returns `Ok`, `base` must be valid for reads and writes of `len` bytes for the
    /// rest of the program, and every other access to those bytes must be atomic or not
    /// concurrent with the firmware's (C code outside Rust's memory model: word-sized stores;
    /// the firmware's one narrower access is a TD's 4-byte status word, `write_u32`).
    pub unsafe fn new(base: *mut u8, len: usize) -> Result<Self, TdxStatus> {
        let Some(base) = NonNull::new(base.cast::<u64>()) else {
            return Err(invalid(OPERAND_ID_R8));
        };
        if !base.as_ptr().addr().is_multiple_of(WORD) {
            return Err(invalid(OPERAND_ID_R8));
        }
        if len == 0 || !len.is_multiple_of(WORD) {
            return Err(invalid(OPERAND_ID_R9));
        }
        let end = (base.as_ptr().addr() as u64).checked_add(len as u64);
        if end.is_none_or(|end| end > tsm_core::addr::PHYS_ADDR_LIMIT) {
            return Err(TDX_OPERAND_ADDR_RANGE_ERROR | u64::from(OPERAND_ID_R9));
        }
        Ok(Self { base, len })
    }

    /// Host address of the window's first byte.
    pub fn base(&self) -> u64 {
        self.base.as_ptr().addr() as u64
    }

    /// Whether `[addr, addr + len)` overlaps the window.
    fn overlaps(&self, addr: u64, len: u64) -> bool {
        let end = self.base().saturating_add(self.len as u64);
        addr < end && self.base() < addr.saturating_add(len)
    }

    /// The words covering `[addr, addr + bytes)`: the one check every access makes.
    fn words(
        &self,
        addr: u64,
        bytes: usize,
    ) -> Result<impl Iterator<Item = &AtomicU64>, HostFault> {
        let offset = addr
            .checked_sub(self.base())
            .and_then(|o| usize::try_from(o).ok())
            .ok_or(HostFault::OutsideHostMemory)?;
        let end = offset
            .checked_add(bytes)
            .ok_or(HostFault::OutsideHostMemory)?;
        if end > self.len {
            return Err(HostFault::OutsideHostMemory);
        }
        if !offset.is_multiple_of(WORD) || !bytes.is_multiple_of(WORD) {
            return Err(HostFault::Misaligned);
        }
        let first = offset / WORD;
        Ok((first..end / WORD).map(move |i| {
            // SAFETY: `i` indexes a word inside the window (checked above), so the pointer is
            // in bounds, 8-byte aligned (base and offset are), and valid for the program's
            // life by `HostWindow::new`'s contract; other accesses are atomic or not
            // concurrent, as `AtomicU64::from_ptr` requires.
            unsafe { AtomicU64::from_ptr(self.base.as_ptr().add(i)) }
        }))
    }

    /// The word holding the 4-byte-aligned half-word at `addr`, and the half's bit shift in
    /// it (a TD's wait status word): through `words`, so every access to host memory is the
    /// same size (no mixed-size atomics on one word).
    fn half_word(&self, addr: u64) -> Result<(&AtomicU64, u32), HostFault> {
        if !addr.is_multiple_of(4) {
            return Err(HostFault::Misaligned);
        }
        let shift = if addr.is_multiple_of(WORD as u64) {
            0
        } else {
            32
        };
        let word = self
            .words(addr & !(WORD as u64 - 1), WORD)?
            .next()
            .ok_or(HostFault::OutsideHostMemory)?;
        Ok((word, shift))
    }

    /// Copies `out.len()` bytes of host memory at `addr` into `out`, each word with one load.
    pub fn read(&self, addr: u64, out: &mut [u8]) -> Result<(), HostFault> {
        let words = self.words(addr, out.len())?;
        for (word, chunk) in words.zip(out.chunks_exact_mut(WORD)) {
            chunk.copy_from_slice(&word.load(Ordering::Relaxed).to_ne_bytes());
        }
        Ok(())
    }

    /// Copies `src` into host memory at `addr`, each word with one store.
    pub fn write(&self, addr: u64, src: &[u8]) -> Result<(), HostFault> {
        let words = self.words(addr, src.len())?;
        for (word, chunk) in words.zip(src.chunks_exact(WORD)) {
            let mut bytes = [0u8; WORD];
            bytes.copy_from_slice(chunk);
            word.store(u64::from_ne_bytes(bytes), Ordering::Relaxed);
        }
        Ok(())
    }

    /// Reads a `T` from host memory into a private copy.
    fn read_value<T: FromBytes + IntoBytes>(&self, addr: u64) -> Result<T, HostFault> {
        let mut value = T::new_zeroed();
        self.read(addr, value.as_mut_bytes())?;
        Ok(value)
    }

    /// Writes `value` to host memory.
    fn write_value<T: IntoBytes + Immutable>(&self, addr: u64, value: &T) -> Result<(), HostFault> {
        self.write(addr, value.as_bytes())
    }
}

impl HostMemory for HostWindow {
    fn read(&self, hpa: u64, out: &mut [u8]) -> Result<(), HostFault> {
        HostWindow::read(self, hpa, out)
    }

    fn probe_read(&self, hpa: u64, len: usize) -> Result<(), HostFault> {
        self.words(hpa, len).map(drop)
    }

    /// The window is writable wherever it is readable, and never moves.
    fn probe_write(&self, hpa: u64, len: usize) -> Result<(), HostFault> {
        self.words(hpa, len).map(drop)
    }

    fn write(&self, hpa: u64, src: &[u8]) -> Result<(), HostFault> {
        HostWindow::write(self, hpa, src)
    }

    fn probe_write_u32(&self, hpa: u64) -> Result<(), HostFault> {
        self.half_word(hpa).map(drop)
    }

    /// The 4 bytes written (little-endian in memory, as every other write here) by two atomic
    /// read-modify-writes of their half of the word.
    fn write_u32(&self, hpa: u64, value: u32) -> Result<(), HostFault> {
        let (word, shift) = self.half_word(hpa)?;
        // The half cleared, then set: two wait-free read-modify-writes of this half only, so
        // a concurrent store to the other half is never lost (a poller may see the half 0 in
        // between, never a wrong value). Host memory is little-endian: the half at the lower
        // address is the word's low half.
        let half = u64::from(value) << shift;
        let mask = u64::from(u32::MAX) << shift;
        word.fetch_and(u64::from_le(!mask), Ordering::Relaxed);
        word.fetch_or(u64::from_le(half), Ordering::Relaxed);
        Ok(())
    }
}

/// An initialized firmware: its state and the host memory it may touch.
struct Instance {
    tsm: CFirmware,
    host: HostWindow,
}

/// Init's arguments once checked (nothing touched yet).
struct InitArgs {
    mem: *mut u8,
    pages: usize,
    window: HostWindow,
    reserved: ReservedMemory,
}

/// A firmware behind the C entry points: initialized once, then entered from any thread.
pub struct Firmware {
    state: Once<Option<Instance>>,
}

/// Whether init ran and succeeded, never the firmware's memory.
impl core::fmt::Debug for Firmware {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Firmware")
            .field("initialized", &self.state.get().map(Option::is_some))
            .finish()
    }
}

impl Default for Firmware {
    fn default() -> Self {
        Self::new()
    }
}

impl Firmware {
    /// A firmware not yet initialized.
    pub const fn new() -> Self {
        Self { state: Once::new() }
    }

    fn instance(&self) -> Option<&Instance> {
        self.state.get()?.as_ref()
    }

    /// The host memory registered at init (`None` before).
    pub fn host(&self) -> Option<&HostWindow> {
        Some(&self.instance()?.host)
    }

    /// `tsm_tdx_init` (test support, feature `model-device`): see the C header. The firmware
    /// seals with [`tsm_core::ModelSession`] through its C callbacks; its key is public: never
    /// in a firmware build.
    ///
    /// # Safety
    ///
    /// As [`Firmware::init_session`] for the memory arguments.
    #[cfg(any(feature = "model-device", test))]
    pub unsafe fn init(
        &self,
        mem: *mut u8,
        len: usize,
        host: *mut u8,
        host_len: usize,
    ) -> TdxStatus {
        // SAFETY: the caller's contract.
        match unsafe { self.check(mem, len, host, host_len) } {
            // SAFETY: the model's callbacks meet `CSession::new`'s contract: each bounds what it
            // reads and writes by the lengths it is given, keeps no pointer, returns normally.
            Ok(args) => match unsafe { CSession::new(&session::model::OPS) } {
                Ok(model) => self.commit(args, model),
                Err(s) => s,
            },
            Err(s) => s,
        }
    }

    /// `tsm_tdx_init_session`: see the C header. The firmware seals with the C session `*ops`
    /// (copied once, here). `ops` is operand R10: NULL or not aligned for the struct is
    /// `TDX_OPERAND_INVALID` + R10, a NULL callback `TDX_OPERAND_INVALID` naming it
    /// (`OPERAND_ID_SESSION_*`). Checked after the memory arguments, before anything is
    /// touched.
    ///
    /// A callback that calls into this firmware is not undefined behaviour: every lock the
    /// firmware takes is a `try_lock`, so the nested call answers `TDX_OPERAND_BUSY` on the
    /// object the outer call holds (and a nested init `TDX_SYSINIT_NOT_PENDING`).
    ///
    /// # Safety
    ///
    /// `mem` must point to `len` writable bytes that nothing else uses for the rest of the
    /// program (the firmware keeps them as its table pages), and `host` to `host_len` bytes
    /// as [`HostWindow::new`] requires. Neither is touched unless this call succeeds. A
    /// non-null, aligned `ops` must be valid for one read of a [`SessionOps`] whose callbacks
    /// and `ctx` meet [`CSession::new`]'s contract for the rest of the program if this call
    /// succeeds.
    pub unsafe fn init_session(
        &self,
        mem: *mut u8,
        len: usize,
        host: *mut u8,
        host_len: usize,
        ops: *const SessionOps,
    ) -> TdxStatus {
        // SAFETY: the caller's contract.
        let args = match unsafe { self.check(mem, len, host, host_len) } {
            Ok(a) => a,
            Err(s) => return s,
        };
        if ops.is_null() || !ops.is_aligned() {
            return invalid(OPERAND_ID_R10);
        }
        // SAFETY: non-null and aligned (checked), valid for a read by the caller's contract;
        // every bit pattern is a valid `SessionOps` (a pointer and nullable function
        // pointers). Read once: later changes to the caller's struct are never seen.
        let ops = unsafe { ops.read() };
        // SAFETY: the caller's contract is `CSession::new`'s for the callbacks and `ctx`.
        let session = match unsafe { CSession::new(&ops) } {
            Ok(session) => session,
            Err(s) => return s,
        };
        if let Err(s) = self.check_session(&args, &ops) {
            return s;
        }
        self.commit(args, session)
    }

    /// The session's code and context are the integrator's, never memory the host writes or
    /// the firmware's own: a callback or a non-NULL `ctx` inside the host window, the pool or
    /// the firmware's state is `TDX_OPERAND_INVALID` naming the callback
    /// (`OPERAND_ID_SESSION_*`), or R10 for `ctx`. Checked after the NULL checks.
    fn check_session(&self, args: &InitArgs, ops: &SessionOps) -> Result<(), TdxStatus> {
        let pool = (
            args.mem.addr() as u64,
            (args.pages as u64).saturating_mul(PAGE_BYTES as u64),
        );
        let state = (
            core::ptr::from_ref(self).addr() as u64,
            core::mem::size_of::<Self>() as u64,
        );
        let inside = |addr: usize| {
            let addr = addr as u64;
            let within =
                |(base, len): (u64, u64)| addr.checked_sub(base).is_some_and(|off| off < len);
            args.window.overlaps(addr, 1) || within(pool) || within(state)
        };
        for (addr, operand) in ops.callback_addresses() {
            if inside(addr) {
                return Err(invalid(operand));
            }
        }
        if !ops.ctx.is_null() && inside(ops.ctx.addr()) {
            return Err(invalid(OPERAND_ID_R10));
        }
        Ok(())
    }

    /// Init's argument checks, touching no memory: the pool's pages, the host window and the
    /// memory the firmware reserves.
    ///
    /// # Safety
    ///
    /// As [`Firmware::init_session`] for `host` (the window is only kept if init succeeds).
    unsafe fn check(
        &self,
        mem: *mut u8,
        len: usize,
        host: *mut u8,
        host_len: usize,
    ) -> Result<InitArgs, TdxStatus> {
        let mem_addr = mem.addr();
        if mem.is_null() || !mem_addr.is_multiple_of(PAGE_BYTES) {
            return Err(invalid(OPERAND_ID_RCX));
        }
        let pages = len / PAGE_BYTES;
        if pages == 0 {
            return Err(invalid(OPERAND_ID_RDX));
        }
        if !FramePool::fits(pages, mem_addr as u64) {
            return Err(TDX_OPERAND_ADDR_RANGE_ERROR | u64::from(OPERAND_ID_RDX));
        }
        // SAFETY: the caller's contract for `host`; the window is only kept on success.
        let window = unsafe { HostWindow::new(host, host_len) }?;
        let pool_bytes = (pages as u64).saturating_mul(PAGE_BYTES as u64);
        if window.overlaps(mem_addr as u64, pool_bytes) {
            return Err(invalid(OPERAND_ID_R8));
        }
        // Never MMIO: the pool (S-EPT pages) and host memory (system RAM, the TDX-usable
        // memory of this prototype). A BAR, report or mapping touching either is refused.
        let state = (
            core::ptr::from_ref(self).addr() as u64,
            core::mem::size_of::<Self>(),
        );
        let reserved = reserved_memory(mem_addr as u64, pages, &window, state)
            .ok_or(TDX_OPERAND_ADDR_RANGE_ERROR | u64::from(OPERAND_ID_RDX))?;
        Ok(InitArgs {
            mem,
            pages,
            window,
            reserved,
        })
    }

    /// Builds the firmware from checked arguments, once: of two racing callers exactly one
    /// runs this, the other's memory is never touched.
    fn commit(&self, args: InitArgs, session: CSession) -> TdxStatus {
        let InitArgs {
            mem,
            pages,
            window,
            reserved,
        } = args;
        if self.state.is_completed() {
            return TDX_SYSINIT_NOT_PENDING;
        }
        let mut ours = false;
        // A second caller racing this one waits here until the first is done and never runs
        // the closure: its memory is never touched.
        self.state.call_once(|| {
            ours = true;
            // SAFETY: `mem` is non-null and 4 KiB aligned (checked in `check`) and, by init's
            // contract, `pages * 4096` bytes exclusively ours forever; `Page` is plain `u64`s,
            // valid for any bit pattern.
            let frames: &'static mut [Page] =
                unsafe { core::slice::from_raw_parts_mut(mem.cast::<Page>(), pages) };
            let pool = FramePool::new(frames, mem.addr() as u64)?;
            Some(Instance {
                tsm: TdxModule::with_reserved(Sept::new(pool, SeptLevels::Four), session, reserved),
                host: window,
            })
        });
        match (ours, self.instance()) {
            (false, _) => TDX_SYSINIT_NOT_PENDING,
            (true, Some(_)) => TDX_SUCCESS,
            // Unreachable: FramePool::fits said yes. The firmware stays not ready.
            (true, None) => TDX_OPERAND_ADDR_RANGE_ERROR | u64::from(OPERAND_ID_RDX),
        }
    }

    /// Runs `call` on a private copy of the register block at `regs`, read once, and writes
    /// the result back once. The status, also left in the block's RAX.
    fn with_regs(
        &self,
        regs: *mut SeamRegs,
        call: impl FnOnce(&Instance, &mut SeamRegs),
    ) -> TdxStatus {
        let Some(fw) = self.instance() else {
            return TDX_SYS_NOT_READY;
        };
        let at = regs.addr() as u64;
        let mut block: SeamRegs = match fw.host.read_value(at) {
            Ok(b) => b,
            Err(f) => return fault(f, OPERAND_ID_REG_BLOCK),
        };
        call(fw, &mut block);
        match fw.host.write_value(at, &block) {
            Ok(()) => block.rax,
            // Unreachable: the same words were just read.
            Err(f) => fault(f, OPERAND_ID_REG_BLOCK),
        }
    }

    /// `tsm_tdx_seamcall`: see the C header.
    pub fn seamcall(&self, regs: *mut SeamRegs) -> TdxStatus {
        self.with_regs(regs, |fw, block| {
            Dispatcher::new(&fw.tsm, &fw.host).seamcall(block);
        })
    }

    /// `tsm_tdx_tdcall`: see the C header.
    pub fn tdcall(&self, td: u64, regs: *mut SeamRegs) -> TdxStatus {
        // `td` is the calling TD's TDR page (TDH.MNG.CREATE RCX).
        self.with_regs(regs, |fw, block| {
            Dispatcher::new(&fw.tsm, &fw.host).tdcall(td, block);
        })
    }
}

/// The firmware's pool, its own state (the [`Firmware`] object, which holds every table of
/// the core) and the host memory window, whole 4 KiB pages each, as reserved memory; `None`
/// past the physical address space. The code image is the embedder's to reserve: a static
/// library cannot see its bounds.
fn reserved_memory(
    pool: u64,
    pages: usize,
    host: &HostWindow,
    state: (u64, usize),
) -> Option<ReservedMemory> {
    let pages_over = |base: u64, bytes: u64| {
        let page = PAGE_BYTES as u64;
        let first = base.checked_div(page)?.checked_mul(page)?;
        let end = base.checked_add(bytes)?.checked_next_multiple_of(page)?;
        MmioRange::from_raw(first, end.checked_sub(first)?.checked_div(page)?).ok()
    };
    let pool = MmioRange::from_raw(pool, pages as u64).ok()?;
    let host = pages_over(host.base(), host.len as u64)?;
    let state = pages_over(state.0, state.1 as u64)?;
    ReservedMemory::from_ranges(&[pool, host, state]).ok()
}

static FIRMWARE: Firmware = Firmware::new();

/// Test support (feature `model-device`, never in a firmware build): initializes the firmware
/// as [`tsm_tdx_init_session`] does, sealing with the model session, whose key is in the
/// public source (the host could forge every device answer). See `include/tsm_tdx.h`.
///
/// # Safety
///
/// As [`Firmware::init`].
#[cfg(any(feature = "model-device", test))]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tsm_tdx_init(
    mem: *mut u8,
    len: usize,
    host: *mut u8,
    host_len: usize,
) -> TdxStatus {
    // SAFETY: the caller's contract is Firmware::init's.
    unsafe { FIRMWARE.init(mem, len, host, host_len) }
}

/// Initializes the firmware: `len` bytes at `mem` for its S-EPT frame pool (4-level), the
/// host memory `[host, host + host_len)` every register block and parameter page must lie in,
/// and the integrator's SPDM session `*ops` (copied once) that seals every request and opens
/// every answer. See `include/tsm_tdx.h` for the statuses.
///
/// # Safety
///
/// As [`Firmware::init_session`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tsm_tdx_init_session(
    mem: *mut u8,
    len: usize,
    host: *mut u8,
    host_len: usize,
    ops: *const SessionOps,
) -> TdxStatus {
    // SAFETY: the caller's contract is Firmware::init_session's.
    unsafe { FIRMWARE.init_session(mem, len, host, host_len, ops) }
}

/// One SEAMCALL: the block at `regs` (in host memory) holds the leaf in RAX on entry and the
/// status on return. Returns the status too.
#[unsafe(no_mangle)]
pub extern "C" fn tsm_tdx_seamcall(regs: *mut SeamRegs) -> TdxStatus {
    FIRMWARE.seamcall(regs)
}

/// One TDCALL from TD `td` (the guest side). Same contract as [`tsm_tdx_seamcall`].
#[unsafe(no_mangle)]
pub extern "C" fn tsm_tdx_tdcall(td: u64, regs: *mut SeamRegs) -> TdxStatus {
    FIRMWARE.tdcall(td, regs)
}

/// Test support (feature `model-device`): the model device a C host relays to.
#[cfg(feature = "model-device")]
static MODEL: ModelMailbox = ModelMailbox::new();

/// Test support (feature `model-device`): sets what the model device reports for interface
/// `iface` (packed requester ID): the ranges of the list at `list` (in host memory), as a
/// real device's firmware would. On hardware this call has no counterpart.
#[cfg(feature = "model-device")]
#[unsafe(no_mangle)]
pub extern "C" fn tsm_tdx_model_report(
    iface: u64,
    list: *const crate::abi::RangeList,
) -> TdxStatus {
    MODEL.report(&FIRMWARE, iface, list.addr() as u64)
}

/// Test support (feature `model-device`): one exchange with the model device's DOE mailbox:
/// the `len` request bytes at `request` in, the answer to `response` and its length (0: no
/// answer) to `*response_len`, all in host memory. The host's side of the relay; on hardware
/// the host's DOE driver and the device take its place.
#[cfg(feature = "model-device")]
#[unsafe(no_mangle)]
pub extern "C" fn tsm_tdx_model_doe(
    request: *const u8,
    len: u64,
    response: *mut u8,
    response_len: *mut u64,
) -> TdxStatus {
    MODEL.doe(
        &FIRMWARE,
        request.addr() as u64,
        len,
        response.addr() as u64,
        response_len.addr() as u64,
    )
}

/// Test support (feature `model-device`): writes the model session's callbacks (`ctx` NULL)
/// to `*ops`, for a C session that delegates to them. `TDX_OPERAND_INVALID` + RCX for a NULL
/// or misaligned `ops` (nothing written).
///
/// # Safety
///
/// A non-null, aligned `ops` must be valid for one write of a [`SessionOps`].
#[cfg(feature = "model-device")]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tsm_tdx_model_session(ops: *mut SessionOps) -> TdxStatus {
    if ops.is_null() || !ops.is_aligned() {
        return invalid(OPERAND_ID_RCX);
    }
    // SAFETY: non-null and aligned (checked), writable by the caller's contract.
    unsafe { ops.write(session::model::OPS) };
    TDX_SUCCESS
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

#[cfg(test)]
mod tests {
    //! The C entry point's guarantees, on private [`Firmware`] instances (and one test on the
    //! static behind the `extern "C"` functions). They run under Miri (`scripts/miri.sh`),
    //! which checks every host-memory access for data races and out-of-bounds use.
    use super::*;
    use crate::abi::{self, RangeEntry, RangeList};
    use crate::module::DevifEntry;
    use crate::status::{self, TSM_TOO_MANY_RANGES};
    use core::sync::atomic::AtomicUsize;
    use std::boxed::Box;
    use std::vec::Vec;
    use tsm_core::TdiId;
    use tsm_core::capacity::MAX_TDIS;
    use tsm_core::tsm::Snapshot;

    /// One 4 KiB page of host memory, as the C side would allocate it.
    #[repr(C, align(4096))]
    struct HostPage([u64; 512]);

    /// Pages that live for the rest of the test program, as the C contract requires.
    fn leak_pages(n: usize, fill: u64) -> &'static mut [Page] {
        Box::leak(std::vec![Page([fill; 512]); n].into_boxed_slice())
    }

    fn leak_host(n: usize) -> &'static mut [HostPage] {
        let mut v = Vec::with_capacity(n);
        v.resize_with(n, || HostPage([0; 512]));
        Box::leak(v.into_boxed_slice())
    }

    /// A raw pointer another thread may use (the test keeps what it points to alive).
    struct Shared<T>(*mut T);
    impl<T> Clone for Shared<T> {
        fn clone(&self) -> Self {
            *self
        }
    }
    impl<T> Copy for Shared<T> {}
    // SAFETY: the pointees are leaked ('static) and accessed only through the firmware's
    // checked accessor or atomics.
    unsafe impl<T> Send for Shared<T> {}

    /// The word `index` of host page `page`, for atomic host-side access in tests.
    fn word(host: *mut HostPage, page: usize, index: usize) -> &'static AtomicU64 {
        // SAFETY: in bounds of a leaked, 8-byte-aligned host page array; every access to
        // these words in the tests is atomic.
        unsafe { AtomicU64::from_ptr(host.add(page).cast::<u64>().add(index)) }
    }

    /// Writes `regs` into the block at `at` with atomic stores (the host's side).
    fn put_regs(at: *mut SeamRegs, regs: SeamRegs) {
        for (i, v) in regs.as_bytes().chunks_exact(8).enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(v);
            // SAFETY: `at` is an 8-byte-aligned block of nine words in leaked host memory.
            unsafe { AtomicU64::from_ptr(at.cast::<u64>().add(i)) }
                .store(u64::from_ne_bytes(b), Ordering::Relaxed);
        }
    }

    fn get_regs(at: *mut SeamRegs) -> SeamRegs {
        let mut out = SeamRegs::default();
        for (i, v) in out.as_mut_bytes().chunks_exact_mut(8).enumerate() {
            // SAFETY: as in `put_regs`.
            let w = unsafe { AtomicU64::from_ptr(at.cast::<u64>().add(i)) }.load(Ordering::Relaxed);
            v.copy_from_slice(&w.to_ne_bytes());
        }
        out
    }

    fn list_words(list: &RangeList) -> Vec<u64> {
        list.as_bytes()
            .chunks_exact(8)
            .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
            .collect()
    }

    /// Host memory layout of the tests: page 0 the range list, page 1 the register block (and
    /// in word [`LEN_WORD`] the model's answer length), pages 2 and 3 a TDI's request and
    /// response pages, page 4 the TD's TDR page, page 5 the SPDM metadata, page 6 the SPDM
    /// config page, page 7 the dev_info page, page 8 the IDE stream's metadata.
    const HOST_PAGES: usize = 12;
    /// The TDI's private pages (TDH.DEVIF.CREATE R8, R9, R10).
    const DEVIF_PAGES: [usize; 3] = [9, 10, 11];
    const CONFIG_PAGE: usize = 6;
    const DEV_INFO_PAGE: usize = 7;
    const IDE_PAGE: usize = 8;
    /// The device's one SPDM metadata page (TDH.SPDM.CREATE RDX).
    const SPDM_PAGE: usize = 5;
    const TDR_PAGE: usize = 4;
    /// The HKID the tests' TD is created with (any private one: not 0).
    const HKID: u64 = 1;
    const REQUEST_PAGE: usize = 2;
    const RESPONSE_PAGE: usize = 3;
    const LEN_WORD: usize = 64;

    struct World {
        fw: &'static Firmware,
        host: *mut HostPage,
        pool: *mut Page,
        pool_pages: usize,
    }

    impl World {
        fn new() -> World {
            Self::sealing_with(None)
        }
        /// A firmware sealing with the model session, or with the C session `ops`.
        fn sealing_with(ops: Option<&SessionOps>) -> World {
            let fw: &'static Firmware = Box::leak(Box::new(Firmware::new()));
            let pool = leak_pages(24, 0);
            let pool_pages = pool.len();
            let pool = pool.as_mut_ptr();
            let host = leak_host(HOST_PAGES).as_mut_ptr();
            let (mem, len) = (pool.cast(), pool_pages * PAGE_BYTES);
            let (host_at, host_len) = (host.cast(), HOST_PAGES * PAGE_BYTES);
            // SAFETY: both leaked, exclusively handed to this firmware; `ops` a valid struct
            // whose callbacks are sound for the program's life.
            let s = unsafe {
                match ops {
                    None => fw.init(mem, len, host_at, host_len),
                    Some(ops) => fw.init_session(mem, len, host_at, host_len, ops),
                }
            };
            assert_eq!(s, TDX_SUCCESS);
            World {
                fw,
                host,
                pool,
                pool_pages,
            }
        }
        fn list_at(&self) -> *mut RangeList {
            self.host.cast()
        }
        fn regs_at(&self) -> *mut SeamRegs {
            // SAFETY: page 1 of the leaked host pages.
            unsafe { self.host.add(1) }.cast()
        }
        /// Host address of page `i`.
        fn page(&self, i: usize) -> u64 {
            self.host.wrapping_add(i).addr() as u64
        }
        /// The TDI's answer length word, as the model writes it.
        fn len_at(&self) -> u64 {
            self.page(1) + (LEN_WORD * 8) as u64
        }
        /// The host's event loop over the C entry points: while the status says
        /// TDX_SPDM_REQUEST, one DOE exchange with `model` and TDH.DEVIF.RESPONSE.
        fn relay(&self, model: &ModelMailbox, tdi: u64, mut out: SeamRegs) -> SeamRegs {
            let mut rounds = 0;
            while out.rax == status::TDX_SPDM_REQUEST {
                rounds += 1;
                assert!(rounds < 100);
                let doe = model.doe(
                    self.fw,
                    self.page(REQUEST_PAGE),
                    (out.rcx >> abi::OUT_LENGTH_SHIFT) & 0xffff,
                    self.page(RESPONSE_PAGE),
                    self.len_at(),
                );
                assert_eq!(doe, TDX_SUCCESS);
                let len = word(self.host, 1, LEN_WORD).load(Ordering::Relaxed);
                out = self.call(abi::TDH_DEVIF_RESPONSE, self.response(tdi, len != 0));
            }
            out
        }
        /// TDH.DEVIF.RESPONSE's registers: the answer in the response page (or none), the
        /// next request to the request page.
        fn response(&self, tdi: u64, answered: bool) -> SeamRegs {
            SeamRegs {
                rcx: tdi,
                rdx: abi::devif_rsp_in(
                    if answered {
                        self.page(RESPONSE_PAGE)
                    } else {
                        0
                    },
                    false,
                ),
                r8: self.page(REQUEST_PAGE),
                ..SeamRegs::default()
            }
        }
        /// Registers of a leaf on `tdi` that may leave a request: RDX `rdx`, R8 the request
        /// page.
        fn on_tdi(&self, tdi: u64, rdx: u64) -> SeamRegs {
            SeamRegs {
                rcx: tdi,
                rdx,
                r8: self.page(REQUEST_PAGE),
                ..SeamRegs::default()
            }
        }
        /// A TD, a device with one BAR that `model` reports for its interface, and its TDI
        /// for the TD, with the private pages `DEVIF_PAGES`: (TD, the TDI's function ID).
        fn td_and_tdi(&self, model: &ModelMailbox) -> (u64, u64) {
            let td = self.page(TDR_PAGE);
            let created = self.call(
                abi::TDH_MNG_CREATE,
                SeamRegs {
                    rcx: td,
                    rdx: HKID,
                    ..SeamRegs::default()
                },
            );
            assert_eq!(created.rax, TDX_SUCCESS);
            let dev = self.spdm_create();
            self.put_list(&one_range(BAR_A, 16));
            assert_eq!(self.bars(dev).rax, TDX_SUCCESS);
            self.link(model, dev);
            assert_eq!(
                model.report(self.fw, RID, self.list_at().addr() as u64),
                TDX_SUCCESS
            );
            let created = self.call(
                abi::TDH_DEVIF_CREATE,
                SeamRegs {
                    rcx: abi::devif_id(0, dev as u8, RID as u32),
                    rdx: td,
                    r8: self.page(DEVIF_PAGES[0]),
                    r9: self.page(DEVIF_PAGES[1]),
                    r10: self.page(DEVIF_PAGES[2]),
                    ..SeamRegs::default()
                },
            );
            assert_eq!(created.rax, TDX_SUCCESS);
            // The TDI is named by its function ID.
            (td, RID)
        }
        /// The Linux host's link set-up of SPDM id `dev` (function `RID`), as `tdx_link_connect`
        /// issues it: TDH.SPDM.CONNECT relayed to `model` (the same registers re-issued after
        /// the DOE round trip), TDH.IDE.STREAM.CREATE, TDH.IDE.STREAM.KM SETUP.
        fn link(&self, model: &ModelMailbox, dev: u64) {
            // spdm_config_info_t: KEY_UPD, policy 0, every certificate slot.
            word(self.host, CONFIG_PAGE, 0).store(
                u64::from(crate::link::SPDM_CAP_KEY_UPD) | 0xFF << 40,
                Ordering::Relaxed,
            );
            let connect = SeamRegs {
                rcx: dev,
                rdx: self.page(CONFIG_PAGE),
                r8: self.page(RESPONSE_PAGE),
                r9: self.page(REQUEST_PAGE),
                r10: abi::hpa_array(self.page(DEV_INFO_PAGE), 1),
                ..SeamRegs::default()
            };
            let mut out = self.call(abi::TDH_SPDM_CONNECT, connect);
            let mut rounds = 0;
            while out.rax == status::TDX_SPDM_REQUEST {
                rounds += 1;
                assert!(rounds < 4);
                let doe = model.doe(
                    self.fw,
                    self.page(REQUEST_PAGE),
                    out.rcx,
                    self.page(RESPONSE_PAGE),
                    self.len_at(),
                );
                assert_eq!(doe, TDX_SUCCESS);
                out = self.call(abi::TDH_SPDM_CONNECT, connect);
            }
            assert_eq!(out.rax, TDX_SUCCESS);
            let rid = RID & 0xffff;
            let stream = self.call(
                abi::TDH_IDE_STREAM_CREATE,
                SeamRegs {
                    rcx: crate::link::STREAM_INFO_TYPE_SEL,
                    rdx: dev,
                    r8: abi::hpa_array(self.page(IDE_PAGE), 1),
                    r10: rid << 8,
                    r11: 1 | rid << 8,
                    r12: 1 | 0xfff << 20,
                    r13: 0xffff_ffff,
                    ..SeamRegs::default()
                },
            );
            assert_eq!(stream.rax, TDX_SUCCESS);
            let km = self.call(
                abi::TDH_IDE_STREAM_KM,
                SeamRegs {
                    rcx: dev,
                    rdx: stream.rcx,
                    r8: crate::link::IDE_KM_SETUP,
                    r9: self.page(RESPONSE_PAGE),
                    r10: self.page(REQUEST_PAGE),
                    ..SeamRegs::default()
                },
            );
            assert_eq!(km.rax, TDX_SUCCESS);
        }
        /// TDH.SPDM.CREATE of the device (function `RID`, segment 0) with its one metadata
        /// page: the SPDM id.
        fn spdm_create(&self) -> u64 {
            let out = self.call(
                abi::TDH_SPDM_CREATE,
                SeamRegs {
                    rcx: RID,
                    rdx: abi::hpa_array(self.page(SPDM_PAGE), 1),
                    ..SeamRegs::default()
                },
            );
            assert_eq!(out.rax, TDX_SUCCESS);
            out.rcx
        }
        /// TSM.SPDM.BARS of SPDM id `dev` with the list in page 0.
        fn bars(&self, dev: u64) -> SeamRegs {
            self.call(
                abi::TSM_SPDM_BARS,
                SeamRegs {
                    rcx: dev,
                    rdx: self.list_at().addr() as u64,
                    ..SeamRegs::default()
                },
            )
        }
        fn put_list(&self, list: &RangeList) {
            for (i, w) in list_words(list).into_iter().enumerate() {
                word(self.host, 0, i).store(w, Ordering::Relaxed);
            }
        }
        fn call(&self, leaf: u16, regs: SeamRegs) -> SeamRegs {
            put_regs(
                self.regs_at(),
                SeamRegs {
                    rax: u64::from(leaf),
                    ..regs
                },
            );
            let status = self.fw.seamcall(self.regs_at());
            let out = get_regs(self.regs_at());
            assert_eq!(out.rax, status);
            out
        }
        /// Every record table of the core and the pool's pages (read through the firmware's
        /// own `&mut`, no second alias), and every TDI's record.
        fn pool_image(&self) -> (Snapshot<Vec<Page>>, Vec<Option<DevifEntry>>) {
            let fw = self.fw.instance().expect("initialised");
            let snap = fw
                .tsm
                .snapshot_with(|t| t.pool().pages().copied().collect())
                .expect("not busy");
            let pages = (0..MAX_TDIS as u16)
                .map(|s| fw.tsm.devif(TdiId::from_slot(s)).expect("not busy"))
                .collect();
            (snap, pages)
        }
    }

    const BAR_A: u64 = 0x8000_0000;
    const BAR_B: u64 = 0x9000_0000;
    const RID: u64 = 0x0300;

    fn one_range(first_page: u64, pages: u32) -> RangeList {
        let mut list = RangeList {
            count: 1,
            ..RangeList::default()
        };
        list.ranges[0] = RangeEntry {
            first_page,
            pages,
            attributes: 0,
            range_id: 0,
        };
        list
    }

    /// Two threads initialize one firmware at once with different memory: exactly one
    /// succeeds, the other gets TDX_SYSINIT_NOT_PENDING and its pool memory is never touched.
    #[test]
    fn init_from_two_threads_exactly_one_wins_and_the_loser_is_untouched() {
        const PATTERN: u64 = 0xa5a5_a5a5_a5a5_a5a5;
        let fw: &'static Firmware = Box::leak(Box::new(Firmware::new()));
        let callers: Vec<_> = (0..2)
            .map(|_| {
                let pool = Shared(leak_pages(8, PATTERN).as_mut_ptr());
                let host = Shared(leak_host(1).as_mut_ptr());
                (pool, host)
            })
            .collect();
        let threads: Vec<_> = callers
            .iter()
            .copied()
            .map(|(pool, host)| {
                std::thread::spawn(move || {
                    let (pool, host) = (pool, host);
                    // SAFETY: leaked memory handed to the firmware for good.
                    unsafe { fw.init(pool.0.cast(), 8 * PAGE_BYTES, host.0.cast(), PAGE_BYTES) }
                })
            })
            .collect();
        let statuses: Vec<u64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let mut sorted = statuses.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            [TDX_SUCCESS, TDX_SYSINIT_NOT_PENDING],
            "{statuses:#x?}"
        );
        let loser = statuses.iter().position(|&s| s != TDX_SUCCESS).unwrap();
        // SAFETY: the loser's pool, leaked; no firmware uses it.
        let untouched = unsafe { core::slice::from_raw_parts(callers[loser].0.0, 8) };
        assert!(untouched.iter().all(|p| p.0.iter().all(|&w| w == PATTERN)));
        // A third call is refused the same way; the winner's firmware works.
        let (pool, host) = (leak_pages(8, PATTERN), leak_host(1));
        // SAFETY: leaked.
        let third = unsafe {
            fw.init(
                pool.as_mut_ptr().cast(),
                8 * PAGE_BYTES,
                host.as_mut_ptr().cast(),
                PAGE_BYTES,
            )
        };
        assert_eq!(third, TDX_SYSINIT_NOT_PENDING);
        assert!(pool.iter().all(|p| p.0.iter().all(|&w| w == PATTERN)));
        let winner_host = callers[1 - loser].1.0.cast::<SeamRegs>();
        put_regs(
            winner_host,
            SeamRegs {
                rax: u64::from(abi::TDH_MNG_CREATE),
                // The TDR: the winner's one host page (the firmware only checks it is host
                // memory; it never writes a TDR page).
                rcx: winner_host.addr() as u64,
                rdx: HKID,
                ..SeamRegs::default()
            },
        );
        assert_eq!(fw.seamcall(winner_host), TDX_SUCCESS);
    }

    /// A host thread rewrites the range list (count, reserved field, first page) and the list
    /// operand in the register block while the firmware creates devices from them. Each call
    /// decodes one snapshot: it creates a device with exactly one of the two BARs, or refuses
    /// with the status for what it read; never a mixture, never a fault (and, under Miri, no
    /// data race).
    #[test]
    fn host_memory_changing_under_a_read_gives_one_consistent_snapshot() {
        let w = World::new();
        let spdm_id = w.spdm_create();
        let calls = if cfg!(miri) { 12 } else { 400 };
        let good = one_range(BAR_A, 16);
        w.put_list(&good);
        let list_addr = w.list_at().addr() as u64;
        // RDX before the writer's first store: the list (not what TDH.SPDM.CREATE left).
        word(w.host, 1, 2).store(list_addr, Ordering::Relaxed);
        let outside = w.pool.addr() as u64;
        let host = Shared(w.host);
        let stop = Box::leak(Box::new(core::sync::atomic::AtomicBool::new(false)));
        let writer = {
            let stop: &'static core::sync::atomic::AtomicBool = stop;
            std::thread::spawn(move || {
                let host = host;
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // Word 0: count (low half) and reserved (high half); word 1: first page.
                    let count_word = match i % 3 {
                        0 => 1,
                        1 => 1 | 7 << 32,
                        _ => 200,
                    };
                    word(host.0, 0, 0).store(count_word, Ordering::Relaxed);
                    word(host.0, 0, 1).store(
                        if i.is_multiple_of(2) { BAR_A } else { BAR_B },
                        Ordering::Relaxed,
                    );
                    // RDX of the register block (word 2 of page 1): the list, or not host memory.
                    word(host.0, 1, 2).store(
                        if i % 5 == 4 { outside } else { list_addr },
                        Ordering::Relaxed,
                    );
                    i = i.wrapping_add(1);
                    std::thread::yield_now();
                }
            })
        };
        let mut seen = std::collections::BTreeSet::new();
        let id = spdm_id;
        for _ in 0..calls {
            // Only RAX and RCX are the caller's; RDX belongs to the writer.
            word(w.host, 1, 0).store(u64::from(abi::TSM_SPDM_BARS), Ordering::Relaxed);
            word(w.host, 1, 1).store(id, Ordering::Relaxed);
            let status = w.fw.seamcall(w.regs_at());
            let out = get_regs(w.regs_at());
            assert_eq!(out.rax, status);
            match status {
                TDX_SUCCESS => {
                    let fw = w.fw.instance().unwrap();
                    let mut spdm = fw.tsm.lock_spdm().unwrap();
                    let entry = spdm[id as usize].as_mut().unwrap();
                    let dev = entry.device.take().unwrap();
                    let bars = fw.tsm.device(dev).unwrap().bars;
                    assert_eq!(bars.len(), 1);
                    let base = bars[0].base().as_u64();
                    assert!(base == BAR_A || base == BAR_B, "{base:#x}");
                    assert_eq!(bars[0].pages(), 16);
                    fw.tsm.remove_device(dev).unwrap();
                }
                s if s == invalid(OPERAND_ID_RDX)
                    || s == TSM_TOO_MANY_RANGES | u64::from(OPERAND_ID_RDX)
                    || s == TDX_OPERAND_ADDR_RANGE_ERROR | u64::from(OPERAND_ID_RDX) => {}
                s => panic!("unexpected status {s:#x}"),
            }
            seen.insert(status);
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        assert!(!seen.is_empty());
    }

    /// Memory the firmware was given at init (its pool, host memory) and its own state are
    /// never MMIO.
    #[test]
    fn a_bar_over_the_pool_or_host_memory_is_reserved_memory() {
        let w = World::new();
        let dev = w.spdm_create();
        let pool_before = w.pool_image();
        // The host registers a device whose BAR is the frame pool's base (then one over its
        // own memory): with it the TD could have been given S-EPT pages as private MMIO.
        for (what, base) in [
            ("the pool's first page", w.pool.addr() as u64),
            (
                "the pool's last page",
                w.pool.addr() as u64 + (w.pool_pages as u64 - 1) * 4096,
            ),
            ("host memory", w.host.addr() as u64 & !0xfff),
            (
                "the firmware's own state",
                core::ptr::from_ref(w.fw).addr() as u64 & !0xfff,
            ),
        ] {
            w.put_list(&one_range(base, 1));
            let out = w.bars(dev);
            assert_eq!(
                out.rax,
                status::TSM_RESERVED_MEMORY | u64::from(OPERAND_ID_RDX),
                "BAR over {what}"
            );
        }
        assert_eq!(w.pool_image(), pool_before);
        // A real MMIO BAR is fine.
        w.put_list(&one_range(BAR_A, 16));
        assert_eq!(w.bars(dev).rax, TDX_SUCCESS);
    }

    /// Every address the host passes is checked against the host memory registered at init:
    /// outside it (unmapped, the firmware's own pool, past the end, straddling the end) is
    /// TDX_OPERAND_ADDR_RANGE_ERROR on the operand and nothing is read or written; reserved
    /// fields must be zero.
    #[test]
    fn addresses_outside_host_memory_are_refused_and_reserved_fields_must_be_zero() {
        let w = World::new();
        let dev = w.spdm_create();
        let pool_before = w.pool_image();
        let host_end = w.host.addr() as u64 + (HOST_PAGES * PAGE_BYTES) as u64;
        w.put_list(&one_range(BAR_A, 16));
        let range_error = |op: u32| TDX_OPERAND_ADDR_RANGE_ERROR | u64::from(op);
        // The list operand.
        for (what, rdx) in [
            ("an unmapped page", 0x1000u64),
            ("the firmware's pool", w.pool.addr() as u64),
            ("past the end", host_end),
            ("far away", 0x7_0000_0000),
        ] {
            let out = w.call(
                abi::TSM_SPDM_BARS,
                SeamRegs {
                    rcx: dev,
                    rdx,
                    ..SeamRegs::default()
                },
            );
            assert_eq!(out.rax, range_error(OPERAND_ID_RDX), "list in {what}");
            // The metadata array too, and nothing is recorded.
            let out = w.call(
                abi::TDH_SPDM_CREATE,
                SeamRegs {
                    rcx: RID | 1,
                    rdx: abi::hpa_array(rdx, 1),
                    ..SeamRegs::default()
                },
            );
            assert_eq!(out.rax, range_error(OPERAND_ID_RDX), "metadata in {what}");
        }
        // The register block itself: outside, straddling the end, misaligned. Nothing is
        // written anywhere (the pool is compared byte for byte).
        for (what, at, expect) in [
            (
                "the pool",
                w.pool.cast::<SeamRegs>(),
                range_error(OPERAND_ID_REG_BLOCK),
            ),
            (
                "null",
                core::ptr::null_mut(),
                range_error(OPERAND_ID_REG_BLOCK),
            ),
            (
                "straddling the end",
                w.host
                    .cast::<u8>()
                    .wrapping_add(HOST_PAGES * PAGE_BYTES - 16)
                    .cast(),
                range_error(OPERAND_ID_REG_BLOCK),
            ),
            (
                "misaligned",
                w.regs_at().cast::<u8>().wrapping_add(4).cast(),
                invalid(OPERAND_ID_REG_BLOCK),
            ),
        ] {
            assert_eq!(w.fw.seamcall(at), expect, "register block in {what}");
            assert_eq!(w.fw.tdcall(0, at), expect, "TDCALL block in {what}");
        }
        assert_eq!(w.pool_image(), pool_before);
        // The model report's list: outside, reserved field set, too many entries.
        let model = ModelMailbox::new();
        assert_eq!(
            ModelMailbox::new().report(w.fw, RID, w.pool.addr() as u64),
            range_error(OPERAND_ID_RDX)
        );
        let mut list = one_range(BAR_A, 16);
        list.reserved = 1;
        w.put_list(&list);
        assert_eq!(
            model.report(w.fw, RID, w.list_at().addr() as u64),
            invalid(OPERAND_ID_RDX)
        );
        assert_eq!(w.bars(dev).rax, invalid(OPERAND_ID_RDX));
        list.reserved = 0;
        list.count = 17;
        w.put_list(&list);
        assert_eq!(
            model.report(w.fw, RID, w.list_at().addr() as u64),
            TSM_TOO_MANY_RANGES | u64::from(OPERAND_ID_RDX)
        );
        w.put_list(&one_range(BAR_A, 16));
        assert_eq!(
            model.report(w.fw, RID, w.list_at().addr() as u64),
            TDX_SUCCESS
        );
        assert_eq!(w.pool_image().0.table().len(), w.pool_pages);
    }

    /// Init checks every argument before it touches memory.
    #[test]
    fn init_refuses_bad_arguments_without_touching_memory() {
        let fw = Firmware::new();
        let pool = leak_pages(4, 7);
        let host = leak_host(1);
        let p = pool.as_mut_ptr().cast::<u8>();
        let h = host.as_mut_ptr().cast::<u8>();
        let cases = [
            (
                "null pool",
                core::ptr::null_mut(),
                4 * PAGE_BYTES,
                h,
                PAGE_BYTES,
                invalid(OPERAND_ID_RCX),
            ),
            (
                "misaligned pool",
                p.wrapping_add(8),
                3 * PAGE_BYTES,
                h,
                PAGE_BYTES,
                invalid(OPERAND_ID_RCX),
            ),
            (
                "pool under a page",
                p,
                PAGE_BYTES - 1,
                h,
                PAGE_BYTES,
                invalid(OPERAND_ID_RDX),
            ),
            (
                "null host",
                p,
                4 * PAGE_BYTES,
                core::ptr::null_mut(),
                PAGE_BYTES,
                invalid(OPERAND_ID_R8),
            ),
            (
                "misaligned host",
                p,
                4 * PAGE_BYTES,
                h.wrapping_add(4),
                8,
                invalid(OPERAND_ID_R8),
            ),
            (
                "empty host",
                p,
                4 * PAGE_BYTES,
                h,
                0,
                invalid(OPERAND_ID_R9),
            ),
            (
                "host length not whole words",
                p,
                4 * PAGE_BYTES,
                h,
                12,
                invalid(OPERAND_ID_R9),
            ),
            (
                "host overlaps the pool",
                p,
                4 * PAGE_BYTES,
                p.wrapping_add(PAGE_BYTES),
                8,
                invalid(OPERAND_ID_R8),
            ),
        ];
        for (what, mem, len, host, host_len, expect) in cases {
            // SAFETY: leaked memory; refused calls touch nothing.
            let status = unsafe { fw.init(mem, len, host, host_len) };
            assert_eq!(status, expect, "{what}");
        }
        assert!(pool.iter().all(|p| p.0.iter().all(|&w| w == 7)));
        assert_eq!(fw.seamcall(h.cast()), TDX_SYS_NOT_READY);
    }

    /// The C window takes the TD's 4-byte status word at an address 4 mod 8, touching only
    /// its half of the word: the other half is the host's and stays as it was (review s23 H1:
    /// the window used to refuse it `Misaligned`); a misaligned or outside one is refused.
    #[test]
    fn a_four_byte_store_at_4_mod_8_leaves_the_other_half_alone() {
        // One raw pointer for the firmware and the host's side alike (no reborrow between).
        let host = leak_host(1).as_mut_ptr();
        let base = host.cast::<u8>();
        // SAFETY: leaked, 4 KiB aligned, 4 KiB long.
        let w = unsafe { HostWindow::new(base, PAGE_BYTES) }.unwrap();
        let at = base.addr() as u64 + 0x40;
        // Plain (not atomic) host accesses, none concurrent with the store: Miri's weak-memory
        // model cannot mix an 8-byte atomic and a 4-byte one on the same word (it panics).
        let word8 = host.cast::<u64>().wrapping_add(8);
        // SAFETY: word 8 of the leaked page; no other access runs meanwhile.
        unsafe { word8.write(0x1111_2222_3333_4444) };
        assert_eq!(HostMemory::write_u32(&w, at + 4, 0xdead_beef), Ok(()));
        // SAFETY: as above.
        assert_eq!(unsafe { word8.read() }, 0xdead_beef_3333_4444);
        assert_eq!(HostMemory::probe_write_u32(&w, at + 4), Ok(()));
        assert_eq!(
            HostMemory::write_u32(&w, at + 2, 1),
            Err(HostFault::Misaligned)
        );
        assert_eq!(
            HostMemory::write_u32(&w, at + PAGE_BYTES as u64, 1),
            Err(HostFault::OutsideHostMemory)
        );
        assert_eq!(
            HostMemory::probe_write_u32(&w, base.addr() as u64 + PAGE_BYTES as u64 - 4),
            Ok(())
        );
    }

    /// The TD's own IOTLB request through the C entry points (`tsm_tdx_tdcall` and
    /// `tsm_tdx_seamcall` on a firmware's window): TDG.IQ.INV.REQUEST with a wait whose status
    /// word is at an address 4 mod 8, the host's INV_REQ_TD and PROCESS; the status word is
    /// written, the word's other half untouched (review s23 H1: the
    /// window refused 4-byte writes, and PROCESS dropped the error, so the TD waited for ever).
    #[test]
    fn a_tds_iotlb_request_writes_its_status_word_through_the_c_window() {
        let w = World::new();
        let model = ModelMailbox::new();
        let (td, tdi) = w.td_and_tdi(&model);
        let out = w.call(abi::TSM_DEVIF_BIND, w.on_tdi(tdi, td));
        assert_eq!(w.relay(&model, tdi, out).rax, TDX_SUCCESS);
        let rid = tsm_core::RequesterId::from_routing(0, RID as u16);
        let idx = crate::dmar::dmar_idx(rid);
        let add = w.call(
            crate::dmar::TDH_DMAR_ADD,
            SeamRegs {
                rcx: idx,
                rdx: td,
                r8: crate::dmar::ADD_QWORD0_4LEVEL,
                r9: crate::dmar::ADD_QWORD1,
                ..SeamRegs::default()
            },
        );
        assert_eq!(add.rax, TDX_SUCCESS);
        let tdcall = |leaf: u16, regs: SeamRegs| {
            put_regs(
                w.regs_at(),
                SeamRegs {
                    rax: u64::from(leaf),
                    ..regs
                },
            );
            let status = w.fw.tdcall(td, w.regs_at());
            let out = get_regs(w.regs_at());
            assert_eq!(out.rax, status);
            out
        };
        let accept = SeamRegs {
            rcx: tdi,
            ..SeamRegs::default()
        };
        assert_eq!(
            tdcall(crate::dmar::TDG_DMAR_ACCEPT, accept).rax,
            TDX_SUCCESS
        );
        // The descriptors in page 0 (the range list's, free again); the status word in
        // page 1's word 100, its high half (4 mod 8); the host's own status in word 101.
        // Plain host accesses to the status word, none concurrent with the firmware's: Miri's
        // weak-memory model cannot mix an 8-byte atomic and a 4-byte one on one word.
        let status_word = w.host.wrapping_add(1).cast::<u64>().wrapping_add(100);
        // SAFETY: word 100 of leaked host page 1, no call running.
        unsafe { status_word.write(0x5555_5555) };
        let status_at = w.page(1) + 100 * 8 + 4;
        let descs = [
            crate::dmar::INV_DESC_IOTLB
                | crate::dmar::IOTLB_G_DOMAIN << crate::dmar::IOTLB_G_SHIFT
                | crate::dmar::IOTLB_DW
                | crate::dmar::IOTLB_DR,
            0,
            0,
            0,
            crate::dmar::WAIT_DESC_TYPE
                | crate::dmar::WAIT_DESC_SW
                | crate::dmar::WAIT_DESC_FN
                | 0xabcd_0123 << 32,
            status_at,
            0,
            0,
        ];
        for (i, q) in descs.into_iter().enumerate() {
            word(w.host, 0, i).store(q, Ordering::Relaxed);
        }
        let req = tdcall(
            crate::dmar::TDG_IQ_INV_REQUEST,
            SeamRegs {
                rcx: 2,
                rdx: w.page(0),
                ..SeamRegs::default()
            },
        );
        assert_eq!((req.rax, req.rcx), (TDX_SUCCESS, 1));
        let host = w.call(
            crate::dmar::TDH_IQ_INV_REQUEST,
            SeamRegs {
                rcx: 0,
                rdx: crate::dmar::INV_REQ_TD | 1 << crate::dmar::INV_REQ_POOL_SHIFT,
                r8: td,
                r9: crate::dmar::WAIT_DESC_HOST | 7 << 32,
                r10: w.page(1) + 101 * 8,
                ..SeamRegs::default()
            },
        );
        assert_eq!((host.rax, host.rcx), (TDX_SUCCESS, 0));
        // SAFETY: as above.
        assert_eq!(unsafe { status_word.read() }, 0x5555_5555, "not yet");
        let process = w.call(crate::dmar::TDH_IQ_INV_PROCESS, SeamRegs::default());
        assert_eq!(process.rax, TDX_SUCCESS);
        assert_eq!(
            // SAFETY: as above.
            unsafe { status_word.read() },
            0xabcd_0123_5555_5555,
            "the high half written, the low half the host's"
        );
    }

    /// Bind and unbind through the C entry points, every exchange relayed by the host through
    /// its pages to the model device: the request lands in the request page (whole words,
    /// its length in RCX), the answer is read from the response page.
    #[test]
    fn bind_and_unbind_relayed_through_host_pages() {
        let w = World::new();
        let model = ModelMailbox::new();
        let (td, tdi) = w.td_and_tdi(&model);
        let out = w.call(abi::TSM_DEVIF_BIND, w.on_tdi(tdi, td));
        assert_eq!(out.rax, status::TDX_SPDM_REQUEST);
        // The DOE header: PCI-SIG, secured SPDM, its length in dwords; RCX devif_req_out_t.
        let head = word(w.host, REQUEST_PAGE, 0).load(Ordering::Relaxed);
        assert_eq!(head & 0xffff_ffff, 0x0002_0001);
        assert_eq!(
            (head >> 32) * 4,
            (out.rcx >> abi::OUT_LENGTH_SHIFT) & 0xffff
        );
        assert_eq!(w.relay(&model, tdi, out).rax, TDX_SUCCESS);
        let state = w.call(
            abi::TSM_DEVIF_STATE,
            SeamRegs {
                rcx: tdi,
                ..SeamRegs::default()
            },
        );
        assert_eq!(state.rdx, abi::TdiStateCode::Locked as u64);
        let unbind = w.call(abi::TSM_DEVIF_UNBIND, w.on_tdi(tdi, 0));
        assert_eq!(w.relay(&model, tdi, unbind).rax, TDX_SUCCESS);
        // The model's own refusals: a length past a page, an output outside host memory.
        let req = w.page(REQUEST_PAGE);
        let rsp = w.page(RESPONSE_PAGE);
        assert_eq!(
            model.doe(w.fw, req, 4097, rsp, w.len_at()),
            invalid(OPERAND_ID_RDX)
        );
        assert_eq!(
            model.doe(w.fw, req, 8, w.pool.addr() as u64, w.len_at()),
            TDX_OPERAND_ADDR_RANGE_ERROR | u64::from(OPERAND_ID_R8)
        );
    }

    /// A host thread rewrites the response page, word by word, between the device's answer
    /// and garbage while TDH.DEVIF.RESPONSE reads it. Each call reads every word once into
    /// firmware memory: it takes the whole answer (the exchange moves on by exactly one
    /// step) or refuses what it read with TDX_DEVIF_TDISP_INVALID_MESSAGE and changes
    /// nothing; never a fault (and, under Miri, no data race).
    #[test]
    fn a_response_page_rewritten_during_the_call_is_read_once() {
        let w = World::new();
        let model = ModelMailbox::new();
        let (td, tdi) = w.td_and_tdi(&model);
        let out = w.call(abi::TSM_DEVIF_BIND, w.on_tdi(tdi, td));
        assert_eq!(out.rax, status::TDX_SPDM_REQUEST);
        let doe = model.doe(
            w.fw,
            w.page(REQUEST_PAGE),
            (out.rcx >> abi::OUT_LENGTH_SHIFT) & 0xffff,
            w.page(RESPONSE_PAGE),
            w.len_at(),
        );
        assert_eq!(doe, TDX_SUCCESS);
        let len = word(w.host, 1, LEN_WORD).load(Ordering::Relaxed);
        let words = usize::try_from(len).unwrap().div_ceil(8);
        let answer: Vec<u64> = (0..words)
            .map(|i| word(w.host, RESPONSE_PAGE, i).load(Ordering::Relaxed))
            .collect();
        let seq = |w: &World| {
            let fw = w.fw.instance().unwrap();
            let id = fw.tsm.devif_of(tdi as u32).unwrap().unwrap().0;
            let t = fw.tsm.tdi(id).unwrap();
            t.exchange.map(|e| e.seq)
        };
        let first = seq(&w).unwrap();
        let host = Shared(w.host);
        let stop = Box::leak(Box::new(core::sync::atomic::AtomicBool::new(false)));
        let writer = {
            let stop: &'static core::sync::atomic::AtomicBool = stop;
            let answer = answer.clone();
            std::thread::spawn(move || {
                let host = host;
                let mut round = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for (i, &good) in answer.iter().enumerate() {
                        let garbage = good ^ (round | 1);
                        let v = if round.is_multiple_of(2) {
                            good
                        } else {
                            garbage
                        };
                        word(host.0, RESPONSE_PAGE, i).store(v, Ordering::Relaxed);
                    }
                    round = round.wrapping_add(1);
                    std::thread::yield_now();
                }
            })
        };
        let calls = if cfg!(miri) { 8 } else { 2000 };
        let mut taken = None;
        for call in 0..calls {
            let out = w.call(abi::TDH_DEVIF_RESPONSE, w.response(tdi, true));
            match out.rax {
                s if s == status::TDX_DEVIF_TDISP_INVALID_MESSAGE | u64::from(OPERAND_ID_RDX) => {
                    assert_eq!(seq(&w), Some(first), "a refused answer moved the exchange");
                }
                status::TDX_SPDM_REQUEST => {
                    taken = Some(call);
                    break;
                }
                s => panic!("unexpected status {s:#x}"),
            }
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        if taken.is_none() {
            // The writer never left the whole answer in place during a call: put it back.
            for (i, &good) in answer.iter().enumerate() {
                word(w.host, RESPONSE_PAGE, i).store(good, Ordering::Relaxed);
            }
            let out = w.call(abi::TDH_DEVIF_RESPONSE, w.response(tdi, true));
            assert_eq!(out.rax, status::TDX_SPDM_REQUEST);
        }
        assert_eq!(seq(&w), Some(first.wrapping_add(1)), "exactly one step");
    }

    /// A C session for the tests: counts its calls and delegates to the model session's C
    /// callbacks, or lies when told to (`ctx` points to it).
    #[derive(Default)]
    struct Counting {
        /// seal, open, record_len, lock_secret, report_digest.
        calls: [AtomicUsize; 5],
        /// 0: open delegates; 1: open fails; 2: open claims one byte past its buffer.
        open_mode: AtomicUsize,
        /// Added to the record length the model reads.
        record_len_past: AtomicUsize,
        /// 0: seal delegates; 1: seal fails; 2: seal claims one byte past its buffer; 3: seal
        /// claims exactly its buffer.
        seal_mode: AtomicUsize,
        /// Seal fails from its call number `n` on (1: the first); 0: never.
        seal_fails_from: AtomicUsize,
        /// The room the last seal was given beyond its message (`out_cap - app_len`).
        seal_room: AtomicUsize,
        /// lock_secret answers the model's secret the first time it is called, and a value
        /// one page lower for every call before this one after that.
        secret_drifts: core::sync::atomic::AtomicBool,
        /// When not 0: the firmware (`&'static Firmware`) seal calls back into, with the
        /// register block at `reenter_regs`; the nested statuses go to `reentered`.
        reenter_fw: core::sync::atomic::AtomicPtr<Firmware>,
        reenter_regs: core::sync::atomic::AtomicPtr<SeamRegs>,
        reentered: std::sync::Mutex<Vec<TdxStatus>>,
    }

    impl Counting {
        fn leak() -> &'static Counting {
            Box::leak(Box::default())
        }
        fn ops(&'static self) -> SessionOps {
            SessionOps {
                ctx: core::ptr::from_ref(self).cast_mut().cast(),
                seal: Some(counting_seal),
                open: Some(counting_open),
                record_len: Some(counting_record_len),
                lock_secret: Some(counting_lock_secret),
                report_digest: Some(counting_report_digest),
            }
        }
        /// Calls into the firmware from inside a callback, if told to: TSM.DEVIF.STATE and
        /// TSM.DEVIF.BIND of the tests' TDI on a second register block.
        fn reenter(&self) {
            // SAFETY: NULL, or a leaked `Firmware` the test stored.
            let Some(fw) = (unsafe { self.reenter_fw.load(Ordering::Relaxed).as_ref() }) else {
                return;
            };
            let regs = self.reenter_regs.load(Ordering::Relaxed);
            for leaf in [abi::TSM_DEVIF_STATE, abi::TSM_DEVIF_BIND] {
                put_regs(
                    regs,
                    SeamRegs {
                        rax: u64::from(leaf),
                        rcx: RID,
                        ..SeamRegs::default()
                    },
                );
                let status = fw.seamcall(regs);
                self.reentered.lock().unwrap().push(status);
            }
        }
        fn calls(&self) -> [usize; 5] {
            self.calls.each_ref().map(|c| c.load(Ordering::Relaxed))
        }
        /// # Safety
        ///
        /// `ctx` is a `Counting` (the tests' ops).
        unsafe fn of<'a>(ctx: *mut core::ffi::c_void, call: usize) -> &'a Counting {
            // SAFETY: the caller's contract.
            let c = unsafe { &*ctx.cast::<Counting>() };
            c.calls[call].fetch_add(1, Ordering::Relaxed);
            c
        }
    }

    unsafe extern "C" fn counting_seal(
        ctx: *mut core::ffi::c_void,
        rc: *const CRecordContext,
        app: *const u8,
        app_len: usize,
        out: *mut u8,
        cap: usize,
        out_len: *mut usize,
    ) -> core::ffi::c_int {
        // SAFETY: the firmware's pointers, valid for the lengths given; ctx a Counting.
        unsafe {
            let c = Counting::of(ctx, 0);
            c.reenter();
            c.seal_room
                .store(cap.wrapping_sub(app_len), Ordering::Relaxed);
            let from = c.seal_fails_from.load(Ordering::Relaxed);
            if from != 0 && c.calls[0].load(Ordering::Relaxed) >= from {
                return -1;
            }
            match c.seal_mode.load(Ordering::Relaxed) {
                0 => session::model::seal(ctx, rc, app, app_len, out, cap, out_len),
                1 => -1,
                mode => {
                    let s = session::model::seal(ctx, rc, app, app_len, out, cap, out_len);
                    *out_len = if mode == 2 { cap + 1 } else { cap };
                    s
                }
            }
        }
    }

    unsafe extern "C" fn counting_open(
        ctx: *mut core::ffi::c_void,
        rc: *const CRecordContext,
        record: *const u8,
        record_len: usize,
        out: *mut u8,
        cap: usize,
        out_len: *mut usize,
    ) -> core::ffi::c_int {
        // SAFETY: as in `counting_seal`.
        unsafe {
            match Counting::of(ctx, 1).open_mode.load(Ordering::Relaxed) {
                0 => session::model::open(ctx, rc, record, record_len, out, cap, out_len),
                1 => -1,
                _ => {
                    let s = session::model::open(ctx, rc, record, record_len, out, cap, out_len);
                    *out_len = cap + 1;
                    s
                }
            }
        }
    }

    unsafe extern "C" fn counting_record_len(
        ctx: *mut core::ffi::c_void,
        bytes: *const u8,
        len: usize,
        out: *mut usize,
    ) -> core::ffi::c_int {
        // SAFETY: as in `counting_seal`.
        unsafe {
            let c = Counting::of(ctx, 2);
            let s = session::model::record_len(ctx, bytes, len, out);
            *out += c.record_len_past.load(Ordering::Relaxed);
            s
        }
    }

    unsafe extern "C" fn counting_lock_secret(
        ctx: *mut core::ffi::c_void,
        rc: *const CRecordContext,
    ) -> u64 {
        // SAFETY: as in `counting_seal`.
        unsafe {
            let c = Counting::of(ctx, 3);
            let secret = session::model::lock_secret(ctx, rc);
            if !c.secret_drifts.load(Ordering::Relaxed) {
                return secret;
            }
            // The calls before this one: 0 the first time.
            let before = c.calls[3].load(Ordering::Relaxed).saturating_sub(1) as u64;
            secret.wrapping_sub(before * 0x1000)
        }
    }

    unsafe extern "C" fn counting_report_digest(
        ctx: *mut core::ffi::c_void,
        report: *const u8,
        len: usize,
        digest: *mut u8,
    ) {
        // SAFETY: as in `counting_seal`.
        unsafe {
            Counting::of(ctx, 4);
            session::model::report_digest(ctx, report, len, digest);
        }
    }

    /// `init_session` checks the memory arguments first (as `init`), then the session: NULL
    /// or misaligned ops is OPERAND_INVALID + R10, a NULL callback OPERAND_INVALID naming it;
    /// nothing is touched, and the firmware stays not ready until a whole session is given.
    #[test]
    fn init_session_refuses_a_missing_session_or_callback_without_touching_memory() {
        let fw = Firmware::new();
        let pool = leak_pages(8, 7);
        let host = leak_host(1);
        let (p, h) = (
            pool.as_mut_ptr().cast::<u8>(),
            host.as_mut_ptr().cast::<u8>(),
        );
        let full = Counting::leak().ops();
        let ops_words = [0u64; 7];
        let misaligned = ops_words
            .as_ptr()
            .cast::<u8>()
            .wrapping_add(4)
            .cast::<SessionOps>();
        // Pointer cases: the pointer given.
        let pointers: [(&str, *mut u8, *const SessionOps, TdxStatus); 3] = [
            ("null ops", p, core::ptr::null(), invalid(OPERAND_ID_R10)),
            ("misaligned ops", p, misaligned, invalid(OPERAND_ID_R10)),
            (
                "null pool and null ops: the pool first",
                core::ptr::null_mut(),
                core::ptr::null(),
                invalid(OPERAND_ID_RCX),
            ),
        ];
        // Callback cases: the whole struct but one callback, each named by its operand.
        type Clear = fn(&mut SessionOps);
        let missing: [(&str, Clear, u32); 5] = [
            (
                "no seal",
                |o| o.seal = None,
                status::OPERAND_ID_SESSION_SEAL,
            ),
            (
                "no open",
                |o| o.open = None,
                status::OPERAND_ID_SESSION_OPEN,
            ),
            (
                "no record_len",
                |o| o.record_len = None,
                status::OPERAND_ID_SESSION_RECORD_LEN,
            ),
            (
                "no lock_secret",
                |o| o.lock_secret = None,
                status::OPERAND_ID_SESSION_LOCK_SECRET,
            ),
            (
                "no report_digest",
                |o| o.report_digest = None,
                status::OPERAND_ID_SESSION_REPORT_DIGEST,
            ),
        ];
        let mut structs = [full; 5];
        for (ops, (_, clear, _)) in structs.iter_mut().zip(&missing) {
            clear(ops);
        }
        let cases = pointers.into_iter().chain(
            missing
                .iter()
                .zip(&structs)
                .map(|((what, _, operand), ops)| (*what, p, &raw const *ops, invalid(*operand))),
        );
        for (what, mem, at, expect) in cases {
            // SAFETY: leaked memory; refused calls touch nothing.
            let status = unsafe { fw.init_session(mem, 8 * PAGE_BYTES, h, PAGE_BYTES, at) };
            assert_eq!(status, expect, "{what}");
            assert!(pool.iter().all(|p| p.0.iter().all(|&w| w == 7)), "{what}");
            assert_eq!(fw.seamcall(h.cast()), TDX_SYS_NOT_READY, "{what}");
        }
        // SAFETY: as above; a whole session is taken.
        let status = unsafe { fw.init_session(p, 8 * PAGE_BYTES, h, PAGE_BYTES, &full) };
        assert_eq!(status, TDX_SUCCESS);
        // SAFETY: as above; refused, nothing touched.
        let again = unsafe { fw.init_session(p, 8 * PAGE_BYTES, h, PAGE_BYTES, &full) };
        assert_eq!(again, TDX_SYSINIT_NOT_PENDING);
    }

    /// A session whose code or context lies in memory the host writes (the host window), in
    /// the pool or in the firmware's own state is refused, naming the callback (or R10 for
    /// `ctx`), with nothing touched and the firmware still not ready; the same session with
    /// its own memory is taken.
    #[test]
    fn init_session_refuses_a_session_in_host_memory_the_pool_or_the_firmware() {
        let fw: &'static Firmware = Box::leak(Box::new(Firmware::new()));
        let pool = leak_pages(8, 7);
        let host = leak_host(2);
        let (p, h) = (
            pool.as_mut_ptr().cast::<u8>(),
            host.as_mut_ptr().cast::<u8>(),
        );
        let full = Counting::leak().ops();
        let in_host = h.wrapping_add(PAGE_BYTES + 8);
        let in_pool = p.wrapping_add(3 * PAGE_BYTES);
        let in_fw = core::ptr::from_ref(fw).cast_mut().cast::<u8>();
        // SAFETY: function pointers made of data addresses, never called: init refuses them
        // before any use.
        let (seal_in_host, digest_in_pool) = unsafe {
            (
                core::mem::transmute::<*mut u8, session::CipherFn>(in_host),
                core::mem::transmute::<*mut u8, session::ReportDigestFn>(in_pool),
            )
        };
        let cases: [(&str, SessionOps, TdxStatus); 5] = [
            (
                "ctx in host memory",
                SessionOps {
                    ctx: in_host.cast(),
                    ..full
                },
                invalid(OPERAND_ID_R10),
            ),
            (
                "ctx in the pool",
                SessionOps {
                    ctx: in_pool.cast(),
                    ..full
                },
                invalid(OPERAND_ID_R10),
            ),
            (
                "ctx in the firmware's state",
                SessionOps {
                    ctx: in_fw.cast(),
                    ..full
                },
                invalid(OPERAND_ID_R10),
            ),
            (
                "seal in host memory",
                SessionOps {
                    seal: Some(seal_in_host),
                    ..full
                },
                invalid(status::OPERAND_ID_SESSION_SEAL),
            ),
            (
                "report_digest in the pool",
                SessionOps {
                    report_digest: Some(digest_in_pool),
                    ..full
                },
                invalid(status::OPERAND_ID_SESSION_REPORT_DIGEST),
            ),
        ];
        for (what, ops, expect) in cases {
            // SAFETY: leaked memory; refused calls touch nothing and call no callback.
            let status = unsafe { fw.init_session(p, 8 * PAGE_BYTES, h, 2 * PAGE_BYTES, &ops) };
            assert_eq!(status, expect, "{what}");
            assert!(pool.iter().all(|p| p.0.iter().all(|&w| w == 7)), "{what}");
            assert_eq!(fw.seamcall(h.cast()), TDX_SYS_NOT_READY, "{what}");
        }
        // SAFETY: as above; the tests' own session is taken.
        let status = unsafe { fw.init_session(p, 8 * PAGE_BYTES, h, 2 * PAGE_BYTES, &full) };
        assert_eq!(status, TDX_SUCCESS);
    }

    /// Bind, then unbind, with the firmware sealing and opening through a C session that
    /// delegates to the model: every request is sealed and every answer opened through the
    /// callbacks (the model device shares the model's keys, so the exchange only completes if
    /// they are used), the LOCK's offset and the report digest come from them too. The ops
    /// struct was copied at init: clearing the caller's copy afterwards changes nothing.
    #[test]
    fn bind_and_unbind_through_a_c_session() {
        let counting = Counting::leak();
        let ops: &'static mut SessionOps = Box::leak(Box::new(counting.ops()));
        let w = World::sealing_with(Some(ops));
        // The integrator's struct changes after init: the firmware's copy does not.
        *ops = SessionOps {
            ctx: core::ptr::null_mut(),
            seal: None,
            ..*ops
        };
        core::hint::black_box(&*ops);
        let model = ModelMailbox::new();
        let (td, tdi) = w.td_and_tdi(&model);
        assert_eq!(counting.calls(), [0; 5]);
        let out = w.call(abi::TSM_DEVIF_BIND, w.on_tdi(tdi, td));
        assert_eq!(out.rax, status::TDX_SPDM_REQUEST);
        assert_eq!(w.relay(&model, tdi, out).rax, TDX_SUCCESS);
        let [seal, open, record_len, lock_secret, digest] = counting.calls();
        assert!(
            seal >= 4 && open == seal && record_len == open,
            "{:?}",
            counting.calls()
        );
        assert!(lock_secret >= 1 && digest == 1, "{:?}", counting.calls());
        let unbind = w.call(abi::TSM_DEVIF_UNBIND, w.on_tdi(tdi, 0));
        assert_eq!(w.relay(&model, tdi, unbind).rax, TDX_SUCCESS);
        assert!(counting.calls()[0] > seal && counting.calls()[1] > open);
    }

    /// A C session whose open() fails, or claims more bytes than its buffer, or whose
    /// record_len runs past the bytes it was given: the device's answer to the bind is
    /// refused with TDX_DEVIF_TDISP_INVALID_MESSAGE + RDX and nothing changes (the request
    /// still waits, re-read unchanged); once the session behaves the bind completes.
    #[test]
    fn a_c_session_refusing_the_answer_refuses_the_response_and_changes_nothing() {
        let counting = Counting::leak();
        let w = World::sealing_with(Some(&counting.ops()));
        let model = ModelMailbox::new();
        let (td, tdi) = w.td_and_tdi(&model);
        let out = w.call(abi::TSM_DEVIF_BIND, w.on_tdi(tdi, td));
        assert_eq!(out.rax, status::TDX_SPDM_REQUEST);
        let len = (out.rcx >> abi::OUT_LENGTH_SHIFT) & 0xffff;
        let doe = model.doe(
            w.fw,
            w.page(REQUEST_PAGE),
            len,
            w.page(RESPONSE_PAGE),
            w.len_at(),
        );
        assert_eq!(doe, TDX_SUCCESS);
        let request: Vec<u64> = (0..512)
            .map(|i| word(w.host, REQUEST_PAGE, i).load(Ordering::Relaxed))
            .collect();
        let before = w.pool_image();
        let refused = status::TDX_DEVIF_TDISP_INVALID_MESSAGE | u64::from(OPERAND_ID_RDX);
        for (what, open_mode, past) in [
            ("open fails", 1, 0),
            ("open claims past its buffer", 2, 0),
            ("record_len past the input", 0, 1),
            ("record_len far past the input", 0, 1 << 40),
        ] {
            counting.open_mode.store(open_mode, Ordering::Relaxed);
            counting.record_len_past.store(past, Ordering::Relaxed);
            let out = w.call(abi::TDH_DEVIF_RESPONSE, w.response(tdi, true));
            assert_eq!(out.rax, refused, "{what}");
            assert_eq!(w.pool_image(), before, "{what}");
        }
        // The request still waits: re-read, it is the one first written.
        let again = w.call(
            abi::TDH_DEVIF_REQUEST,
            SeamRegs {
                rcx: tdi,
                rdx: crate::devif::TDISP_LOCK_INTERFACE as u64,
                r8: w.page(REQUEST_PAGE),
                ..SeamRegs::default()
            },
        );
        assert_eq!(again.rax, status::TDX_SPDM_REQUEST);
        let reread: Vec<u64> = (0..512)
            .map(|i| word(w.host, REQUEST_PAGE, i).load(Ordering::Relaxed))
            .collect();
        assert_eq!(reread, request);
        assert_eq!(w.pool_image(), before);
        counting.open_mode.store(0, Ordering::Relaxed);
        counting.record_len_past.store(0, Ordering::Relaxed);
        let out = w.call(abi::TDH_DEVIF_RESPONSE, w.response(tdi, true));
        assert_eq!(w.relay(&model, tdi, out).rax, TDX_SUCCESS);
    }

    /// A C session whose seal() fails or claims more than its buffer: the bind writes no
    /// request, answers TSM_RELAY_BUFFER_TOO_SMALL + the transport and changes nothing (the
    /// TDI stays unbound, no exchange begun); once seal behaves the bind goes through.
    #[test]
    fn a_c_session_failing_to_seal_leaves_no_request_and_changes_nothing() {
        let counting = Counting::leak();
        let w = World::sealing_with(Some(&counting.ops()));
        let model = ModelMailbox::new();
        let (td, tdi) = w.td_and_tdi(&model);
        let before = w.pool_image();
        let page = |w: &World| -> Vec<u64> {
            (0..512)
                .map(|i| word(w.host, REQUEST_PAGE, i).load(Ordering::Relaxed))
                .collect()
        };
        let request_page = page(&w);
        for (what, mode) in [("seal fails", 1), ("seal claims past its buffer", 2)] {
            counting.seal_mode.store(mode, Ordering::Relaxed);
            let out = w.call(abi::TSM_DEVIF_BIND, w.on_tdi(tdi, td));
            assert_eq!(
                out.rax,
                status::TSM_RELAY_BUFFER_TOO_SMALL | u64::from(status::OPERAND_ID_TRANSPORT),
                "{what}"
            );
            assert_eq!(w.pool_image(), before, "{what}");
            assert_eq!(
                page(&w),
                request_page,
                "{what}: the request page was written"
            );
        }
        counting.seal_mode.store(0, Ordering::Relaxed);
        let out = w.call(abi::TSM_DEVIF_BIND, w.on_tdi(tdi, td));
        assert_eq!(out.rax, status::TDX_SPDM_REQUEST);
        assert_eq!(w.relay(&model, tdi, out).rax, TDX_SUCCESS);
    }

    /// The TDISP request code of the request the last call left (devif_req_out_t 7:0).
    fn code(out: &SeamRegs) -> u8 {
        (out.rcx & 0xff) as u8
    }

    /// The request page's words.
    fn request_page(w: &World) -> Vec<u64> {
        (0..512)
            .map(|i| word(w.host, REQUEST_PAGE, i).load(Ordering::Relaxed))
            .collect()
    }

    /// The core's record of the tests' TDI.
    fn tdi_record(w: &World) -> tsm_core::registry::Tdi {
        let fw = w.fw.instance().unwrap();
        let id = fw.tsm.devif_of(RID as u32).unwrap().unwrap().0;
        fw.tsm.tdi(id).unwrap()
    }

    /// The private ranges the tests' TDI owns.
    fn owned(w: &World) -> Vec<MmioRange> {
        let fw = w.fw.instance().unwrap();
        let id = fw.tsm.devif_of(RID as u32).unwrap().unwrap().0;
        fw.tsm.owned_ranges(id).unwrap().into_iter().collect()
    }

    /// Relays until the status is not TDX_SPDM_REQUEST; each request's TDISP code in order.
    /// Before the LOCK is answered the host re-reads it (TDH.DEVIF.REQUEST) and reports no
    /// answer once (a re-send): both must give the bytes first written.
    fn relay_resending_lock(
        w: &World,
        model: &ModelMailbox,
        mut out: SeamRegs,
    ) -> (SeamRegs, Vec<u8>) {
        let mut codes = Vec::new();
        while out.rax == status::TDX_SPDM_REQUEST {
            assert!(codes.len() < 100);
            codes.push(code(&out));
            if code(&out) == crate::devif::TDISP_LOCK_INTERFACE {
                let first = request_page(w);
                let again = w.call(
                    abi::TDH_DEVIF_REQUEST,
                    SeamRegs {
                        rcx: RID,
                        rdx: u64::from(crate::devif::TDISP_LOCK_INTERFACE),
                        r8: w.page(REQUEST_PAGE),
                        ..SeamRegs::default()
                    },
                );
                assert_eq!(again.rax, status::TDX_SPDM_REQUEST);
                assert_eq!(request_page(w), first, "the re-read LOCK");
                let resent = w.call(abi::TDH_DEVIF_RESPONSE, w.response(RID, false));
                assert_eq!(resent.rax, status::TDX_SPDM_REQUEST);
                assert_eq!(request_page(w), first, "the re-sent LOCK");
            }
            let doe = model.doe(
                w.fw,
                w.page(REQUEST_PAGE),
                (out.rcx >> abi::OUT_LENGTH_SHIFT) & 0xffff,
                w.page(RESPONSE_PAGE),
                w.len_at(),
            );
            assert_eq!(doe, TDX_SUCCESS);
            let len = word(w.host, 1, LEN_WORD).load(Ordering::Relaxed);
            out = w.call(abi::TDH_DEVIF_RESPONSE, w.response(RID, len != 0));
        }
        (out, codes)
    }

    /// A C session whose lock_secret answers differently every time it is asked again (the
    /// model's secret the first time, one page lower per earlier call after that): the
    /// firmware asks it exactly once per LOCK exchange, re-reads and re-sends of the LOCK
    /// included, so the bound TDI owns exactly the pages the device reported (8 of the BAR's
    /// 16), not pages shifted by a second answer. Twice, so the second bind's LOCK gets a
    /// drifted answer too.
    #[test]
    fn a_lock_secret_answering_differently_when_asked_again_never_moves_the_owned_pages() {
        let counting = Counting::leak();
        counting.secret_drifts.store(true, Ordering::Relaxed);
        let w = World::sealing_with(Some(&counting.ops()));
        let model = ModelMailbox::new();
        let (td, tdi) = w.td_and_tdi(&model);
        // The device reports the BAR's first 8 pages of 16.
        w.put_list(&one_range(BAR_A, 8));
        assert_eq!(
            model.report(w.fw, RID, w.list_at().addr() as u64),
            TDX_SUCCESS
        );
        let reported = MmioRange::from_raw(BAR_A, 8).unwrap();
        for bind in 1..=2usize {
            let out = w.call(abi::TSM_DEVIF_BIND, w.on_tdi(tdi, td));
            let (out, codes) = relay_resending_lock(&w, &model, out);
            assert_eq!(out.rax, TDX_SUCCESS, "bind {bind}");
            let locks = codes
                .iter()
                .filter(|&&c| c == crate::devif::TDISP_LOCK_INTERFACE)
                .count();
            assert_eq!(locks, 1, "bind {bind}: {codes:x?}");
            assert_eq!(
                counting.calls()[3],
                bind,
                "lock_secret calls after bind {bind}"
            );
            assert_eq!(owned(&w), [reported], "bind {bind}");
            let unbind = w.call(abi::TSM_DEVIF_UNBIND, w.on_tdi(tdi, 0));
            assert_eq!(w.relay(&model, tdi, unbind).rax, TDX_SUCCESS);
            assert_eq!(owned(&w), []);
        }
    }

    /// A C session whose seal fails part way through a bind, at each of the bind's requests
    /// in turn, as the header and README state: the call that would have written the request
    /// (TSM.DEVIF.BIND for the first, TDH.DEVIF.RESPONSE for the others) answers
    /// TSM_RELAY_BUFFER_TOO_SMALL + TDX_OPERAND_ID_TRANSPORT; the first changes nothing, the
    /// others have consumed the device's answer and ended the bind: the TDI is unbound with no
    /// exchange (TDH.DEVIF.RESPONSE then has nothing to answer), and once the LOCK may have
    /// been sent the next bind starts with STOP_INTERFACE. That next bind, with seal behaving,
    /// completes.
    #[test]
    fn a_seal_failing_at_each_bind_step_ends_the_bind_as_documented() {
        let too_small =
            status::TSM_RELAY_BUFFER_TOO_SMALL | u64::from(status::OPERAND_ID_TRANSPORT);
        // The requests of a whole bind, in order.
        let codes = {
            let counting = Counting::leak();
            let w = World::sealing_with(Some(&counting.ops()));
            let model = ModelMailbox::new();
            let (td, tdi) = w.td_and_tdi(&model);
            let out = w.call(abi::TSM_DEVIF_BIND, w.on_tdi(tdi, td));
            let (out, codes) = relay_resending_lock(&w, &model, out);
            assert_eq!(out.rax, TDX_SUCCESS);
            // A seal per request, and one for each of the LOCK's re-read and re-send (the
            // same record context: the header says seal is asked again).
            assert_eq!(counting.calls()[0], codes.len() + 2);
            codes
        };
        let lock = codes
            .iter()
            .position(|&c| c == crate::devif::TDISP_LOCK_INTERFACE)
            .unwrap();
        assert!(codes.len() > lock + 1, "{codes:x?}");
        for (step, &failing) in codes.iter().enumerate() {
            let what = format!("seal of request {step} ({failing:#x}) fails");
            let counting = Counting::leak();
            let w = World::sealing_with(Some(&counting.ops()));
            let model = ModelMailbox::new();
            let (td, tdi) = w.td_and_tdi(&model);
            counting.seal_fails_from.store(step + 1, Ordering::Relaxed);
            let before = w.pool_image();
            let page = request_page(&w);
            let mut out = w.call(abi::TSM_DEVIF_BIND, w.on_tdi(tdi, td));
            if step == 0 {
                assert_eq!(out.rax, too_small, "{what}");
                assert_eq!(w.pool_image(), before, "{what}: changed something");
                assert_eq!(request_page(&w), page, "{what}: wrote the request page");
            } else {
                for expected in &codes[..step] {
                    assert_eq!(out.rax, status::TDX_SPDM_REQUEST, "{what}");
                    assert_eq!(code(&out), *expected, "{what}");
                    let doe = model.doe(
                        w.fw,
                        w.page(REQUEST_PAGE),
                        (out.rcx >> abi::OUT_LENGTH_SHIFT) & 0xffff,
                        w.page(RESPONSE_PAGE),
                        w.len_at(),
                    );
                    assert_eq!(doe, TDX_SUCCESS);
                    out = w.call(abi::TDH_DEVIF_RESPONSE, w.response(tdi, true));
                }
                assert_eq!(out.rax, too_small, "{what}");
            }
            let state = w.call(
                abi::TSM_DEVIF_STATE,
                SeamRegs {
                    rcx: tdi,
                    ..SeamRegs::default()
                },
            );
            assert_eq!(state.rax, TDX_SUCCESS);
            assert_eq!(state.rdx, abi::TdiStateCode::Unbound as u64, "{what}");
            let record = tdi_record(&w);
            assert_eq!(record.exchange, None, "{what}");
            assert_eq!(record.unlock_first, step >= lock, "{what}");
            assert_eq!(owned(&w), [], "{what}");
            // Nothing waits for an answer any more.
            let late = w.call(abi::TDH_DEVIF_RESPONSE, w.response(tdi, true));
            assert_eq!(
                late.rax,
                status::TDX_DEVIF_TDISP_OUT_REQ | u64::from(OPERAND_ID_RCX),
                "{what}"
            );
            // The session recovers: the next bind starts over (with STOP once LOCK may have
            // reached the device) and completes.
            counting.seal_fails_from.store(0, Ordering::Relaxed);
            let out = w.call(abi::TSM_DEVIF_BIND, w.on_tdi(tdi, td));
            assert_eq!(out.rax, status::TDX_SPDM_REQUEST, "{what}");
            let first = if step >= lock {
                crate::devif::TDISP_STOP_INTERFACE
            } else {
                codes[0]
            };
            assert_eq!(code(&out), first, "{what}");
            assert_eq!(w.relay(&model, tdi, out).rax, TDX_SUCCESS, "{what}");
        }
    }

    /// A C session whose seal fails when an unbind asks for STOP_INTERFACE: TSM.DEVIF.UNBIND
    /// answers TSM_RELAY_BUFFER_TOO_SMALL + TDX_OPERAND_ID_TRANSPORT with no request
    /// written; the unbind waits at STOP (state Unbinding) with nothing outstanding, and once
    /// seal works TSM.DEVIF.UNBIND again asks for STOP and completes. A re-send whose seal
    /// fails changes nothing: the STOP still waits.
    #[test]
    fn a_seal_failing_in_an_unbind_leaves_it_waiting_at_stop() {
        let too_small =
            status::TSM_RELAY_BUFFER_TOO_SMALL | u64::from(status::OPERAND_ID_TRANSPORT);
        let counting = Counting::leak();
        let w = World::sealing_with(Some(&counting.ops()));
        let model = ModelMailbox::new();
        let (td, tdi) = w.td_and_tdi(&model);
        let out = w.call(abi::TSM_DEVIF_BIND, w.on_tdi(tdi, td));
        assert_eq!(w.relay(&model, tdi, out).rax, TDX_SUCCESS);
        counting.seal_mode.store(1, Ordering::Relaxed);
        let page = request_page(&w);
        let mut out = w.call(abi::TSM_DEVIF_UNBIND, w.on_tdi(tdi, 0));
        let mut calls = 0;
        while out.rax == status::TDX_INTERRUPTED_RESUMABLE {
            calls += 1;
            assert!(calls < 1000);
            out = w.call(abi::TSM_DEVIF_UNBIND, w.on_tdi(tdi, 0));
        }
        assert_eq!(out.rax, too_small);
        assert_eq!(request_page(&w), page, "a request was written");
        let state = w.call(
            abi::TSM_DEVIF_STATE,
            SeamRegs {
                rcx: tdi,
                ..SeamRegs::default()
            },
        );
        assert_eq!(state.rdx, abi::TdiStateCode::Unbinding as u64);
        assert_eq!(tdi_record(&w).exchange, None);
        // Asked again while seal still fails: the same refusal, nothing else.
        let before = w.pool_image();
        assert_eq!(
            w.call(abi::TSM_DEVIF_UNBIND, w.on_tdi(tdi, 0)).rax,
            too_small
        );
        assert_eq!(w.pool_image(), before);
        counting.seal_mode.store(0, Ordering::Relaxed);
        let out = w.call(abi::TSM_DEVIF_UNBIND, w.on_tdi(tdi, 0));
        assert_eq!(out.rax, status::TDX_SPDM_REQUEST);
        assert_eq!(code(&out), crate::devif::TDISP_STOP_INTERFACE);
        // The STOP's re-send fails to seal: nothing changes, the STOP still waits.
        counting.seal_mode.store(1, Ordering::Relaxed);
        let waiting = tdi_record(&w).exchange;
        let before = w.pool_image();
        let resent = w.call(abi::TDH_DEVIF_RESPONSE, w.response(tdi, false));
        assert_eq!(resent.rax, too_small);
        assert_eq!(w.pool_image(), before);
        assert_eq!(tdi_record(&w).exchange, waiting);
        counting.seal_mode.store(0, Ordering::Relaxed);
        let mut out = w.relay(&model, tdi, out);
        while out.rax == status::TDX_INTERRUPTED_RESUMABLE {
            out = w.call(abi::TSM_DEVIF_UNBIND, w.on_tdi(tdi, 0));
        }
        assert_eq!(out.rax, TDX_SUCCESS);
        assert_eq!(owned(&w), []);
    }

    /// A callback that calls back into the firmware is not undefined behaviour and does not
    /// deadlock: the nested TSM.DEVIF.STATE and TSM.DEVIF.BIND of the TDI the outer bind holds
    /// answer TDX_OPERAND_BUSY + the TDI, and the outer bind goes on to completion.
    #[test]
    fn a_callback_calling_into_the_firmware_gets_operand_busy() {
        let counting = Counting::leak();
        let w = World::sealing_with(Some(&counting.ops()));
        let model = ModelMailbox::new();
        let (td, tdi) = w.td_and_tdi(&model);
        // A second register block, in host memory past the range list in page 0.
        let nested = w.host.cast::<u8>().wrapping_add(2048).cast::<SeamRegs>();
        counting.reenter_regs.store(nested, Ordering::Relaxed);
        counting
            .reenter_fw
            .store(core::ptr::from_ref(w.fw).cast_mut(), Ordering::Relaxed);
        let out = w.call(abi::TSM_DEVIF_BIND, w.on_tdi(tdi, td));
        assert_eq!(out.rax, status::TDX_SPDM_REQUEST);
        counting
            .reenter_fw
            .store(core::ptr::null_mut(), Ordering::Relaxed);
        let busy = status::TDX_OPERAND_BUSY | u64::from(status::OPERAND_ID_DEVIF);
        assert_eq!(*counting.reentered.lock().unwrap(), [busy, busy]);
        assert_eq!(w.relay(&model, tdi, out).rax, TDX_SUCCESS);
    }

    /// Seal is handed exactly the room a record may take: its message plus
    /// TSM_TDX_SESSION_MAX_OVERHEAD (32) bytes. A record filling that room is framed (a DOE
    /// object within the relay's size); one byte more is a seal failure,
    /// TSM_RELAY_BUFFER_TOO_SMALL + TDX_OPERAND_ID_TRANSPORT with nothing changed, never the
    /// firmware's TSM_INCONSISTENT.
    #[test]
    fn a_seal_gets_exactly_the_room_a_record_may_take() {
        let counting = Counting::leak();
        let w = World::sealing_with(Some(&counting.ops()));
        let model = ModelMailbox::new();
        let (td, tdi) = w.td_and_tdi(&model);
        let before = w.pool_image();
        counting.seal_mode.store(2, Ordering::Relaxed);
        let out = w.call(abi::TSM_DEVIF_BIND, w.on_tdi(tdi, td));
        assert_eq!(
            out.rax,
            status::TSM_RELAY_BUFFER_TOO_SMALL | u64::from(status::OPERAND_ID_TRANSPORT)
        );
        assert_eq!(
            counting.seal_room.load(Ordering::Relaxed),
            tsm_core::relay::session::MAX_OVERHEAD
        );
        assert_eq!(w.pool_image(), before);
        counting.seal_mode.store(3, Ordering::Relaxed);
        let out = w.call(abi::TSM_DEVIF_BIND, w.on_tdi(tdi, td));
        assert_eq!(out.rax, status::TDX_SPDM_REQUEST);
        let len = (out.rcx >> abi::OUT_LENGTH_SHIFT) & 0xffff;
        assert!(len as usize <= tsm_core::relay::MAX_RELAY_BYTES, "{len}");
        assert_eq!(
            counting.seal_room.load(Ordering::Relaxed),
            tsm_core::relay::session::MAX_OVERHEAD
        );
    }

    /// The `extern "C"` functions drive the one static firmware (the only test that uses it).
    #[test]
    fn the_extern_c_functions_drive_the_static_firmware() {
        let regs = leak_host(1).as_mut_ptr().cast::<SeamRegs>();
        assert_eq!(tsm_tdx_seamcall(regs), TDX_SYS_NOT_READY);
        let pool = leak_pages(8, 0);
        // SAFETY: leaked memory handed to the static firmware for good.
        let s = unsafe {
            tsm_tdx_init(
                pool.as_mut_ptr().cast(),
                8 * PAGE_BYTES,
                regs.cast(),
                PAGE_BYTES,
            )
        };
        assert_eq!(s, TDX_SUCCESS);
        put_regs(
            regs,
            SeamRegs {
                rax: u64::from(abi::TDH_MNG_CREATE),
                // The TDR: the one host page (never written by the firmware).
                rcx: regs.addr() as u64,
                rdx: HKID,
                ..SeamRegs::default()
            },
        );
        assert_eq!(tsm_tdx_seamcall(regs), TDX_SUCCESS);
        let td = regs.addr() as u64;
        put_regs(
            regs,
            SeamRegs {
                rax: u64::from(abi::TDG_MMIO_ACCEPT),
                rcx: 0x1000,
                ..SeamRegs::default()
            },
        );
        assert_eq!(
            tsm_tdx_tdcall(td, regs),
            status::TDX_EPT_WALK_FAILED | u64::from(OPERAND_ID_RCX)
        );
        // SAFETY: as above; refused without touching anything.
        let again = unsafe {
            tsm_tdx_init(
                pool.as_mut_ptr().cast(),
                8 * PAGE_BYTES,
                regs.cast(),
                PAGE_BYTES,
            )
        };
        assert_eq!(again, TDX_SYSINIT_NOT_PENDING);
    }
}
