//! The BSP's main flow: serial and logger, GDT/IDT, start info, frame pool, the firmware-side
//! replay, the APs and the concurrent stage, the verdict.
//!
//! Command-line words (QEMU `-append`), test hooks proving red runs are red:
//! `fault` (page fault at 4 GiB), `overflow` (the BSP stack overflows into its guard page),
//! `fail` (one failing check), `hang` (a CPU misses the stage deadline), `deadline=<ms>` (stage
//! deadline, default [`STAGE_DEADLINE_MS`]); and `log=<level>`, the `log` records shown
//! (default [`logger::DEFAULT_LEVEL`]).

use crate::stack::{self, Kind};
use crate::{exit, frames, gdt, idt, logger, paging, pvh, shim, smp, smp_stage, time};
use core::sync::atomic::AtomicU32;

/// The PVH start-info pointer, saved by the entry code.
pub static START_INFO: AtomicU32 = AtomicU32::new(0);
/// Default deadline of the concurrent stage.
pub const STAGE_DEADLINE_MS: u64 = 10_000;

/// Rust entry of the BSP (from `bsp_start64` in entry.rs), on the boot stack.
pub extern "sysv64" fn kmain(start_info: u32) -> ! {
    if crate::serial::init().is_err() {
        // No console to say why: the runner reports a failure verdict without a log.
        exit::fail();
    }
    logger::init();
    kprintln!("boot: tsm PVH kernel");
    gdt::init_cpu(0);
    idt::init();
    idt::load();
    // Before anything runs deep on a stack, and before the APs start: they share the map.
    match paging::install_stack_guards() {
        Ok(guards) => {
            let (start, end) = stack::area();
            kprintln!(
                "stack: {} guard pages unmapped, stacks at {start:#x}-{end:#x} (4 KiB pages over {:#x}-{:#x})",
                guards.count,
                guards.start,
                guards.end
            );
        }
        Err(e) => {
            kprintln!("boot: FAIL stack guard pages: {e}");
            exit::fail();
        }
    }
    if let Some(top) = stack::top(Kind::Bsp, 0) {
        let bottom = top - stack::BSP_STACK_SIZE as u64;
        let guard = bottom - stack::GUARD_SIZE as u64;
        kprintln!("stack: BSP stack {bottom:#x}-{top:#x}, guard page at {guard:#x}");
    }

    // SAFETY: the entry code passes EBX from the PVH loader unchanged; nothing overwrote the
    // start info yet (the frame pool is not set up and the trampoline is not copied).
    let info = match unsafe { pvh::parse(u64::from(start_info)) } {
        Ok(info) => info,
        Err(e) => {
            kprintln!("boot: FAIL PVH start info at {start_info:#x}: {e}");
            exit::fail();
        }
    };
    kprintln!("boot: cmdline \"{}\"", info.cmdline());
    logger::set_level(info.value("log"));
    for r in info.regions() {
        kprintln!(
            "boot: memmap {:#012x}-{:#012x} type {}",
            r.addr,
            r.addr.saturating_add(r.size),
            r.kind
        );
    }
    let khz = time::calibrate();
    kprintln!("boot: tsc {khz} kHz");

    frames::init(info.regions());
    {
        let pool = frames::FRAMES.lock();
        for &(start, end) in pool.ranges() {
            kprintln!("frames: {start:#x}-{end:#x}");
        }
        kprintln!(
            "frames: {} of {} frames ({} KiB) free",
            pool.free_frames(),
            pool.total_frames(),
            pool.free_frames() * 4
        );
    }
    if !frame_self_test() {
        kprintln!("boot: FAIL frame pool self-test");
        exit::fail();
    }

    if info.has_flag("fault") {
        kprintln!("boot: deliberate page fault at 4 GiB (cmdline 'fault')");
        // SAFETY: not safe at all: 4 GiB is unmapped, the access page-faults and the handler
        // ends the run. That is the point of this hook.
        let v = unsafe { core::ptr::read_volatile(frames::IDENTITY_MAP_END as *const u64) };
        kprintln!("boot: FAIL read {v:#x} at 4 GiB without a fault");
        exit::fail();
    }

    if info.has_flag("overflow") {
        kprintln!("boot: deliberate stack overflow on the BSP stack (cmdline 'overflow')");
        let depth = overflow(0);
        kprintln!("boot: FAIL recursed {depth} frames deep without a fault");
        exit::fail();
    }

    let (mut passed, mut failed) = shim::run_shim(&mut crate::serial::Console);

    if info.has_flag("fail") {
        kprintln!("boot: FAIL deliberate failing check (cmdline 'fail')");
        failed += 1;
    }

    smp_stage::prepare();
    // The APs start only now: started earlier they would spin until the concurrent stage,
    // taking emulator time from the replay above; until their SIPI they stay halted.
    let (online, expected) = smp::start_aps(info.rsdp);
    kprintln!("smp: {online} of {expected} cpus online");
    let deadline = info
        .value("deadline")
        .and_then(|v| v.parse().ok())
        .unwrap_or(STAGE_DEADLINE_MS);
    let stage = || smp::run_stage(online, deadline, info.has_flag("hang"));
    if online == expected && logger::quiet_during(stage) {
        passed += 1;
    } else {
        failed += 1;
    }

    kprintln!("{passed} passed, {failed} failed");
    if failed == 0 {
        exit::pass()
    } else {
        exit::fail()
    }
}

/// Recurses until the stack runs out (the `overflow` hook): every frame holds a local array that
/// is written with volatile stores and handed to `black_box`, and the recursive call's result
/// is used afterwards, so the optimiser can neither drop the frames nor turn the recursion into
/// a loop. Each frame is far smaller than the guard page, so the first write past the bottom of
/// the stack lands in the guard.
#[inline(never)]
fn overflow(depth: u64) -> u64 {
    let mut frame = [0u8; 256];
    // SAFETY: `frame` is a live local array of this size; the store only writes it.
    unsafe { core::ptr::write_volatile(&raw mut frame, [depth as u8; 256]) };
    let frame = core::hint::black_box(&mut frame);
    if core::hint::black_box(depth) == u64::MAX {
        return depth;
    }
    let below = overflow(depth + 1);
    let index = usize::try_from(depth).unwrap_or(0) % frame.len();
    below.wrapping_add(u64::from(frame.get(index).copied().unwrap_or(0)))
}

/// Allocates two frames, checks they are zeroed, distinct and reusable after a free.
fn frame_self_test() -> bool {
    let (Some(a), Some(b)) = (frames::alloc_zeroed(), frames::alloc_zeroed()) else {
        return false;
    };
    // SAFETY: `a` is a fresh identity-mapped frame this function owns.
    let zero = unsafe { core::slice::from_raw_parts(a as *const u8, 4096) }
        .iter()
        .all(|&byte| byte == 0);
    // SAFETY: `a` is ours and 4 KiB long; writing it then freeing it is fine.
    unsafe { core::ptr::write_bytes(a as *mut u8, 0xAA, 4096) };
    // SAFETY: both came from the pool and are no longer used.
    unsafe {
        frames::free(a);
        frames::free(b);
    }
    let again = frames::alloc_zeroed();
    // SAFETY: just allocated and unused.
    let first = again.map(|c| unsafe { core::ptr::read_volatile(c as *const u64) });
    if let Some(c) = again {
        // SAFETY: unused again.
        unsafe { frames::free(c) };
    }
    zero && a != b && again == Some(b) && first == Some(0)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    use core::fmt::Write;
    let _ = writeln!(crate::serial::Raw, "\nPANIC: {info}");
    exit::fail()
}
