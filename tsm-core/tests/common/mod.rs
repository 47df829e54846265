//! A small world and the invariants every step must keep, shared by the property and the
//! concurrency tests.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use tsm_core::device_model::ModelDevice;
use tsm_core::dma::{DmaReach, DmaState};
use tsm_core::lifecycle::UnbindStep;
use tsm_core::mem_table::MemTable;
use tsm_core::tdisp::report::wire_range;
use tsm_core::*;

/// The firmware under test: the core over its in-memory table, which makes a TDI's trusted
/// DMA context at the end of every bind when `B` (SEV-TIO's TDI_BIND) and leaves it to the
/// host otherwise (TDX).
pub type T<const B: bool> = tsm_core::relay::host::Relayed<MemTable<512, B>>;

/// BAR base of device `d`: 16 MiB apart, 8 MiB each.
pub fn bar(d: usize) -> u64 {
    0x8000_0000 + (d as u64) * 0x100_0000
}

/// A firmware and the handles it gave out.
pub struct World<const B: bool> {
    /// The firmware.
    pub tsm: T<B>,
    /// Guest handles.
    pub guests: Vec<GuestId>,
    /// TDI handles, two per device.
    pub tdis: Vec<TdiId>,
    /// Interface IDs, by TDI index.
    pub ifaces: Vec<RequesterId>,
}

/// Three guests, two devices with two TDIs each.
pub fn world<const B: bool>() -> World<B> {
    let tsm = T::new(MemTable::new(), ModelDevice::model());
    let guests = (0..3).map(|_| tsm.create_guest().unwrap()).collect();
    let mut tdis = Vec::new();
    let mut ifaces = Vec::new();
    for d in 0..2 {
        let rid = RequesterId::try_new(0, 3 + d as u8, 0, 0).unwrap();
        let dev = tsm
            .create_device(rid, &[MmioRange::from_raw(bar(d), 2048).unwrap()])
            .unwrap();
        for f in 0..2 {
            let iface = RequesterId::try_new(0, 3 + d as u8, 0, f).unwrap();
            tdis.push(tsm.create_tdi(dev, iface).unwrap());
            ifaces.push(iface);
        }
    }
    World {
        tsm,
        guests,
        tdis,
        ifaces,
    }
}

/// Every leaf lies in a range owned by a TDI bound to the leaf's guest; unbound TDIs own
/// nothing; owned ranges never overlap; every guest's bound-TDI count is the number of TDIs
/// bound to it, and every owner exists.
pub fn check_invariants<const B: bool>(w: &World<B>) {
    let snap = w.tsm.snapshot().unwrap();
    for (slot, guest) in snap.guests.iter().enumerate() {
        let bound = snap
            .tdis
            .iter()
            .flatten()
            .filter(|t| t.state.owner().map(|g| g.slot() as usize) == Some(slot))
            .count();
        let recorded = guest.map(|g| usize::from(g.bound_tdis));
        assert!(
            recorded == Some(bound) || (guest.is_none() && bound == 0),
            "guest #{slot} records {recorded:?} bound TDIs, {bound} are bound to it"
        );
    }
    for leaf in snap.table().leaves() {
        let owned = snap
            .owners
            .iter()
            .find(|o| o.range.contains_page(leaf.hpa, leaf.size))
            .unwrap_or_else(|| panic!("leaf {leaf:?} outside every owned range"));
        assert_eq!(
            owned.guest, leaf.guest,
            "leaf {leaf:?} in a range owned for another guest"
        );
        let tdi = snap.tdis[owned.tdi.slot() as usize].as_ref().unwrap();
        assert_eq!(
            tdi.state.owner(),
            Some(leaf.guest),
            "leaf {leaf:?} of a TDI not bound to its guest"
        );
        assert!(owned.private, "leaf {leaf:?} in a shared range");
        // Once a TDI has blocked all its leaves (ERROR done, unbind past Block), none is live.
        let blocked_all = matches!(
            tdi.state,
            TdiState::Error { blocking: None, .. }
                | TdiState::Unbinding {
                    step: UnbindStep::Stop
                        | UnbindStep::Track
                        | UnbindStep::Remove(_)
                        | UnbindStep::Dma
                        | UnbindStep::Release,
                    ..
                }
        );
        assert!(
            !(blocked_all && leaf.state == LeafState::Mapped),
            "live leaf {leaf:?} of a TDI in {:?}",
            tdi.state
        );
    }
    // Every trusted DMA context: the one of a bound TDI, in its owner's domain, in the state
    // the TDI's record says (an invalidation the platform completed since may be ahead of it);
    // and what the device's DMA reaches follows from them alone.
    let contexts = snap.table().dma_contexts();
    for (slot, tdi) in snap.tdis.iter().enumerate() {
        let Some(tdi) = tdi else { continue };
        let entry = contexts.iter().find(|c| c.iface == tdi.iface);
        match (tdi.dma, entry) {
            (None, None) => {}
            (Some(s), Some(e)) => {
                assert_eq!(
                    Some(e.guest),
                    tdi.state.owner(),
                    "TDI #{slot}: context of another guest"
                );
                assert!(
                    e.state == s
                        || (s == DmaState::Invalidating && e.state == DmaState::Invalidated),
                    "TDI #{slot}: record says {s:?}, the table {:?}",
                    e.state
                );
            }
            (r, e) => panic!("TDI #{slot}: record {r:?}, table {e:?}"),
        }
        // The core's table takes the accept before START: nothing runs without it.
        if matches!(tdi.state, TdiState::Run { .. }) {
            assert_eq!(
                tdi.dma,
                Some(DmaState::Active),
                "TDI #{slot} runs without an accepted context"
            );
        }
        // Once an unbind is under way the context no longer translates, and past STOP its
        // IOTLB invalidation is complete (a forced unbind's stream is cut: no STOP to await).
        if let TdiState::Unbinding { step, .. } = tdi.state {
            assert!(
                !matches!(tdi.dma, Some(DmaState::Pending | DmaState::Active))
                    || matches!(step, UnbindStep::Block(_)),
                "TDI #{slot} unbinding at {step:?} with a translating context"
            );
            let past_stop = !matches!(step, UnbindStep::Block(_) | UnbindStep::Stop);
            let live = snap.devices[tdi.device.slot() as usize]
                .as_ref()
                .is_some_and(|d| d.stream == tsm_core::IdeStream::Live);
            if past_stop && live {
                assert!(
                    matches!(tdi.dma, None | Some(DmaState::Invalidated)),
                    "TDI #{slot} past STOP with its context {:?}",
                    tdi.dma
                );
            }
        }
        // Whoever makes it, an unbound TDI has no context. A table that makes it at bind makes
        // it with the binding, and only a teardown once the device can no longer reach the
        // guest removes it (never from a locked or running TDI): those always have one.
        assert!(
            tdi.dma.is_none() || tdi.state.is_bound(),
            "TDI #{slot} unbound with a DMA context"
        );
        if B && matches!(tdi.state, TdiState::Locked { .. } | TdiState::Run { .. }) {
            assert!(
                tdi.dma.is_some(),
                "TDI #{slot} {:?} without the context its bind made",
                tdi.state
            );
        }
        let stream = snap.devices[tdi.device.slot() as usize]
            .as_ref()
            .unwrap()
            .stream;
        if let DmaReach::Private(g) = tsm_core::dma::reach(tdi.state, tdi.dma, stream) {
            assert_eq!(tdi.state, TdiState::Run { owner: g });
            assert_eq!(
                entry.map(|e| (e.guest, e.state)),
                Some((g, DmaState::Active))
            );
        }
    }
    assert_eq!(
        contexts.len(),
        snap.tdis
            .iter()
            .flatten()
            .filter(|t| t.dma.is_some())
            .count(),
        "a context no TDI records"
    );
    for (i, a) in snap.owners.iter().enumerate() {
        for b in snap.owners.iter().skip(i + 1) {
            assert!(
                !a.range.overlaps(&b.range),
                "owned ranges overlap: {a:?} {b:?}"
            );
        }
    }
    // Every owned range is one the device itself reported for that interface.
    for owned in snap.owners.iter() {
        let iface = snap.tdis[owned.tdi.slot() as usize].as_ref().unwrap().iface;
        let reported = w
            .tsm
            .with_device(|d| {
                d.link_mut().report(iface).iter().any(|r| {
                    r.first_page.get() == owned.range.base().as_u64()
                        && u64::from(r.number_of_pages.get()) == owned.range.pages()
                })
            })
            .unwrap();
        assert!(
            reported,
            "owned range {owned:?} was not in the device's report"
        );
    }
    for (slot, tdi) in snap.tdis.iter().enumerate() {
        if let Some(tdi) = tdi {
            let owns = snap.owners.iter().any(|o| o.tdi.slot() as usize == slot);
            // A bound TDI may own nothing (an interface without MMIO); an unbound one never does.
            assert!(
                !owns || tdi.state.is_bound(),
                "unbound TDI #{slot} owns ranges"
            );
        }
    }
}

/// The device reports `ranges` (raw base, pages: hostile values welcome) for `tdi`, then the
/// host binds it. The report is only replaced while the firmware holds the TDI unbound, so a
/// bound TDI's report stays the one it was bound with (a reset device could otherwise change
/// it before the firmware notices).
pub fn report_and_bind<const B: bool>(
    w: &World<B>,
    tdi: TdiId,
    guest: GuestId,
    ranges: &[(u64, u64)],
) -> TsmResult<()> {
    if let Ok(record) = w
        .tsm
        .tdi(tdi)
        .map_err(drop)
        .and_then(|r| if r.state.is_bound() { Err(()) } else { Ok(r) })
    {
        let wire: Vec<_> = ranges
            .iter()
            .enumerate()
            .map(|(i, &(base, pages))| {
                wire_range(base, u32::try_from(pages).unwrap_or(u32::MAX), 0, i as u16)
            })
            .collect();
        w.tsm
            .with_device(|d| d.link_mut().set_report(record.iface, &wire))?;
    }
    w.tsm.bind(tdi, guest)
}
