//! A firmware image's TDX back end: one static instance, its table pool a static array sized
//! at build time, initialised once on first use, entered from any CPU. Nothing here needs a
//! heap or `std` but `main` (the host's stand-in for the platform's entry), so the same
//! statics work in a `no_std` image; `boot` (the bare-metal kernel) builds its instances over
//! frames from the PVH memory map instead, and `src/capi.rs` over memory a C caller hands in.
//!
//! `cargo run -p platform-tdx --example static_firmware`; `cargo test` runs it too.

use platform_tdx::TdxModule;
use platform_tdx::frames::{FramePool, Page};
use platform_tdx::sept::{Sept, SeptLevels};
use platform_tdx::tsm_core::device_model::ModelDevice;
use platform_tdx::tsm_core::relay::host::{RelayHost, SharedDevice};
use platform_tdx::tsm_core::{
    Completion, Error, Gpa, Hpa, MmioRange, ModelSession, PageSize, RequesterId, ReservedMemory,
};
use spin::{Mutex, Once};

/// Private MMIO pages the image is built to map at once (ours: an example's budget), in at
/// most `TDS` TDs, anywhere in their address spaces.
const LEAVES: usize = 64;
/// TDs that map private MMIO at once (ours).
const TDS: usize = 4;
/// The pool: enough table pages for `LEAVES` 4 KiB leaves wherever they land, and its count
/// pages. Checked at build time, so an image that cannot hold its budget does not build.
const POOL_PAGES: usize =
    match Sept::pool_pages_needed(SeptLevels::Four, TDS, LEAVES, PageSize::Size4K) {
        Some(pages) => pages,
        None => panic!("the pool size overflows"),
    };

/// The pool's memory: in `.bss`, 4 KiB aligned (`Page` is). Locked once, by [`firmware`],
/// and leaked to the firmware for good: nothing else can reach it after.
static POOL_MEMORY: Mutex<[Page; POOL_PAGES]> = Mutex::new([Page::ZERO; POOL_PAGES]);

/// The firmware; `None` inside if it could not be built (then it never is).
static FIRMWARE: Once<Option<TdxModule<'static, ModelSession>>> = Once::new();

/// The firmware instance, built on first use. A racing CPU waits for the first to finish.
fn firmware() -> Option<&'static TdxModule<'static, ModelSession>> {
    FIRMWARE
        .call_once(|| {
            let pages: &'static mut [Page; POOL_PAGES] =
                spin::MutexGuard::leak(POOL_MEMORY.try_lock()?);
            // Identity-mapped, as in an image without paging tricks: the pool's physical
            // address is its address.
            let phys = pages.as_ptr().addr() as u64;
            let reserved =
                ReservedMemory::from_ranges(&[MmioRange::from_raw(phys, POOL_PAGES as u64).ok()?])
                    .ok()?;
            let pool = FramePool::new(pages, phys)?;
            let sept = Sept::new(pool, SeptLevels::Four);
            // A real platform passes the SPDM session it established with the device.
            Some(TdxModule::with_reserved(
                sept,
                ModelSession::model(),
                reserved,
            ))
        })
        .as_ref()
}

/// The device the host relays to (the model DSM; on a real platform, the device's DOE
/// mailbox, reached by the host kernel).
static DEVICE: SharedDevice = SharedDevice::new(ModelDevice::model());

const BAR: u64 = 0x8000_0000;
const GPA: u64 = 0x10_0000_0000;

/// The address of 4 KiB page `i` from `base` (checked: this is firmware-side code too).
fn page(base: u64, i: u64) -> Result<u64, Error> {
    i.checked_mul(0x1000)
        .and_then(|offset| base.checked_add(offset))
        .ok_or(Error::Inconsistent)
}

/// One TDI bound, its pages mapped, the host's unmap refused, and unbound, on the static
/// instance.
fn run() -> Result<(), Error> {
    let fw = firmware().ok_or(Error::Inconsistent)?;
    let same = firmware().ok_or(Error::Inconsistent)?;
    assert!(core::ptr::eq(fw, same), "one instance");
    let free = |fw: &TdxModule<'_, _>| fw.with_table(|s| s.pool().free_frames());
    let empty = free(fw)?;
    println!("pool: {POOL_PAGES} pages, {empty} table pages free");

    let host = RelayHost::new(fw, &DEVICE);
    let td = fw.create_guest()?;
    let rid = RequesterId::try_new(0, 3, 0, 0)?;
    let device = fw.create_device(rid, &[MmioRange::from_raw(BAR, 1024)?])?;
    let tdi = fw.create_tdi(device, rid)?;
    let private = MmioRange::from_raw(BAR, LEAVES as u64)?;
    host.with_device(|d| d.report_ranges(rid, &[private]))?;
    host.bind(tdi, td)?;
    for i in 0..LEAVES as u64 {
        let gpa = Gpa::try_new(page(GPA, i)?)?;
        fw.map_mmio(tdi, td, gpa, Hpa::try_new(page(BAR, i)?)?, PageSize::Size4K)?;
    }
    println!(
        "bound and mapped {LEAVES} pages, {} table pages free",
        free(fw)?
    );

    let gpa = Gpa::try_new(GPA)?;
    let refused = fw.host_unmap(td, gpa, PageSize::Size4K);
    assert_eq!(refused, Err(Error::TdiBound));
    println!("host unmap of a bound page: {refused:?}");

    let mut calls = 1u32;
    while host.unbind(tdi)? == Completion::Resumable {
        calls = calls.saturating_add(1);
    }
    assert_eq!(fw.leaf(td, gpa)?, None);
    // The S-EPT's emptied table pages wait for the TD's next TRACK (a vCPU may still cache
    // an entry that named them), then go back.
    assert!(free(fw)? < empty);
    assert_eq!(fw.host_track(td)?, Completion::Done);
    assert_eq!(free(fw)?, empty, "every table page back");
    println!("unbound in {calls} call(s), {empty} table pages free again");
    Ok(())
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("static firmware: {e:?}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_example_runs() {
        assert_eq!(super::run(), Ok(()));
    }
}
