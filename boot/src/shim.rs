//! The host shim on bare metal: every scenario file of the project, compiled in, replayed
//! against a fresh firmware instance each, on every back end: the core with its in-memory
//! table, TDX (SEAMCALL register ABI, S-EPT in physical frames from the kernel's pool) and
//! SEV-TIO (command buffers, RMP in physical frames). One printed line per operation.

use core::fmt::Write;

use platform_sev::RmpEntry;
use platform_tdx::frames::{FramePool, Page};
use platform_tdx::sept::{Sept, SeptLevels};
use tsm_core::device_model::ModelDevice;
use tsm_core::mem_table::MemTable;
use tsm_core::relay::host::Relayed;
use tsm_core::{MmioRange, ModelSession, ReservedMemory};
use tsm_tests::backend::{Backend, CoreBackend};
use tsm_tests::backend_sev::{RMP_INDEX_WORDS, RMP_PAGES, SevBackend};
use tsm_tests::backend_tdx::{TdxBackend, TdxFirmware};
use tsm_tests::interpreter::Summary;
use tsm_tests::suite::run_suite;

use crate::frames::{FRAME_SIZE, FRAMES};

/// Leaves the in-memory secure table of each core run holds.
const CORE_LEAVES: usize = 256;
/// Physical frames each TDX run's S-EPT pool gets (the suite needs far fewer).
const TDX_POOL_FRAMES: u64 = 512;

/// Runs the stage, reporting on `out`; returns `(passed, failed)`.
pub fn run_shim(out: &mut dyn Write) -> (u32, u32) {
    let mut total = Summary::default();

    let mut fresh_core = |run: &mut dyn FnMut(&mut dyn Backend)| {
        // On the BSP stack (8 MiB): one firmware and its device per scenario, dropped after it.
        let tsm: Relayed<MemTable<CORE_LEAVES>> =
            Relayed::new(MemTable::new(), ModelDevice::model());
        run(&mut CoreBackend::new(&tsm, "core"));
    };
    total.add(run_suite(&mut fresh_core, out));

    match (physical::<Page>(TDX_POOL_FRAMES), system_ram()) {
        (Some((phys, pages)), Some(ram)) => {
            let mut fresh_tdx = |run: &mut dyn FnMut(&mut dyn Backend)| {
                pages.fill(Page::ZERO);
                let Some(pool) = FramePool::new(&mut *pages, phys) else {
                    return;
                };
                // Never MMIO: system RAM (the S-EPT pool's frames among it).
                let tsm: TdxFirmware<'_> = TdxFirmware::with_reserved(
                    Sept::new(pool, SeptLevels::Four),
                    ModelSession::model(),
                    ram.clone(),
                );
                run(&mut TdxBackend::new(&tsm));
            };
            total.add(run_suite(&mut fresh_tdx, out));
        }
        (pool, ram) => {
            let _ = writeln!(
                crate::serial::Console,
                "shim: FAIL no TDX run (pool {}, RAM map {})",
                pool.is_some(),
                ram.is_some()
            );
            total.failed = total.failed.saturating_add(1);
        }
    }

    let rmp_frames = (RMP_PAGES * core::mem::size_of::<RmpEntry>()) as u64 / FRAME_SIZE + 1;
    let index_frames = (RMP_INDEX_WORDS * core::mem::size_of::<u32>()) as u64 / FRAME_SIZE + 1;
    match (
        physical::<RmpEntry>(rmp_frames),
        physical::<u32>(index_frames),
    ) {
        (Some((_, rmp)), Some((_, index))) => {
            let mut fresh_sev = |run: &mut dyn FnMut(&mut dyn Backend)| {
                rmp.fill(RmpEntry::new());
                match SevBackend::new(&mut *rmp, &mut *index) {
                    Ok(mut backend) => run(&mut backend),
                    Err(e) => {
                        let _ =
                            writeln!(crate::serial::Console, "shim: FAIL no SEV firmware: {e:?}");
                    }
                }
            };
            total.add(run_suite(&mut fresh_sev, out));
        }
        _ => total.failed = total.failed.saturating_add(1),
    }
    (total.passed, total.failed)
}

/// System RAM, from the bottom of memory to the top of the kernel's frame pool (which the
/// PVH memory map filled): what the TDX-usable memory is on this machine.
pub(crate) fn system_ram() -> Option<ReservedMemory> {
    let top = FRAMES.lock().ranges().iter().map(|&(_, end)| end).max()?;
    let ram = MmioRange::from_raw(0, top / FRAME_SIZE).ok()?;
    ReservedMemory::from_ranges(&[ram]).ok()
}

/// `frames` contiguous zeroed physical frames from the kernel pool, as a slice of `T` (a
/// table the firmware keeps in physical memory), with their physical address.
pub(crate) fn physical<T>(frames: u64) -> Option<(u64, &'static mut [T])> {
    let phys = FRAMES.lock().alloc_contiguous(frames)?;
    let len = usize::try_from(frames * FRAME_SIZE).ok()? / core::mem::size_of::<T>();
    // SAFETY: the frames are identity mapped (phys == virt), zeroed, page aligned (so aligned
    // for any table entry type), owned by nobody else and never freed; every `T` used here
    // (S-EPT pages, RMP entries, RMP index words) is plain data valid for the all-zero bit pattern.
    let slice = unsafe { core::slice::from_raw_parts_mut(phys as *mut T, len) };
    Some((phys, slice))
}
