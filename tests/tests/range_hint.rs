//! The S-EPT's search hint kept across unbind calls (`PageRest`) is self-validating: a table
//! change between two calls of a paused unbind, by any path (here the `with_table` back door,
//! which maps where no host ABI may), never makes the unbind skip a leaf. The unbind never says
//! `Done` with a private leaf of the TDI still mapped in its ranges. (With the hint trusted,
//! the block pass skips the late leaves and the removal pass meets them unblocked.)
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use platform_tdx::frames::Page;
use platform_tdx::sept::SeptLevels;
use tsm_core::secure_table::SecureTable;
use tsm_core::tdisp::report::wire_range;
use tsm_core::{Completion, Gpa, Hpa, MmioRange, PageSize, RequesterId};
use tsm_tests::backend::Backend;
use tsm_tests::backend_tdx::{POOL_PAGES, TdxBackend, TdxFirmware, tdx_firmware};

const BAR: u64 = 0x8000_0000;
const GPA: u64 = 0x10_0000_0000;
/// Leaves mapped before the unbind, in runs of [`RUN`] with a free slot between runs, all in
/// the one 2 MiB MMIO-metadata page: a call's budget runs out inside a run, so the walk pauses
/// with what the search knew of the rest of the page (the hint).
const FIRST: u64 = 120;
const RUN: u64 = 30;

/// Leaf `i` of the first ones: host slot `i + i / RUN`, contiguous in both addresses in a run.
fn first(i: u64) -> (Gpa, Hpa) {
    let slot = i + i / RUN;
    (
        Gpa::try_new(GPA + slot * 0x1000 + (i / RUN) * 0x10_0000).unwrap(),
        Hpa::try_new(BAR + slot * 0x1000).unwrap(),
    )
}

/// A leaf mapped late at host slot `slot`, alone (its GPA far from the others).
fn late(slot: u64) -> (Gpa, Hpa) {
    (
        Gpa::try_new(GPA + 0x1000_0000 + slot * 0x2000).unwrap(),
        Hpa::try_new(BAR + slot * 0x1000).unwrap(),
    )
}

/// Unbinds by force, one call at a time, calling `between(fw, call)` after each `Resumable`.
fn run(between: &mut dyn FnMut(&TdxFirmware<'_>, u32)) {
    let mut mem = vec![Page::ZERO; POOL_PAGES];
    let fw = tdx_firmware(&mut mem, SeptLevels::Four).unwrap();
    let mut b = TdxBackend::new(&fw);
    let g = b.create_guest().unwrap();
    let rid = RequesterId::try_new(0, 3, 0, 0).unwrap();
    let bar = MmioRange::from_raw(BAR, 256).unwrap();
    let dev = b.create_device(rid, &[bar]).unwrap();
    let tdi = b.create_tdi(dev, rid).unwrap();
    b.bind(tdi, g, &[wire_range(BAR, 256, 0, 0)]).unwrap();
    for i in 0..FIRST {
        let (gpa, hpa) = first(i);
        b.map(tdi, g, gpa, hpa, PageSize::Size4K).unwrap();
    }
    let mut calls = 0;
    loop {
        let done = b.unbind_force(tdi).unwrap();
        let left = fw.with_table(|t| t.next_leaf(bar, bar.base())).unwrap();
        if done == Completion::Done {
            assert_eq!(left, None, "Done with a leaf of the TDI still mapped");
            break;
        }
        assert_eq!(done, Completion::Resumable);
        between(&fw, calls);
        calls += 1;
        assert!(calls < 1000);
    }
    assert!(calls >= 2, "the walk never paused: {calls}");
}

#[test]
fn a_leaf_mapped_ahead_of_a_paused_unbind_is_still_removed() {
    let g = tsm_core::GuestId::from_slot(0);
    run(&mut |fw, call| {
        // Past every leaf the walk's hint counted, in the same page: a trusted stale hint
        // leaves the page before it reaches them.
        if call < 4 {
            for k in 0..4u64 {
                let (gpa, hpa) = late(130 + 4 * u64::from(call) + k);
                fw.with_table(|t| t.map(g, gpa, hpa, PageSize::Size4K))
                    .unwrap()
                    .unwrap();
            }
        }
    });
}

#[test]
fn unbind_without_changes_between_calls_removes_everything() {
    run(&mut |_, _| {});
}
