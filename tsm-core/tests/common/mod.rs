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
use tsm_core::mem_table::MemTable;
use tsm_core::*;

/// The firmware under test.
pub type T = Tsm<MemTable<512>, ModelDevice>;

/// BAR base of device `d`: 16 MiB apart, 8 MiB each.
pub fn bar(d: usize) -> u64 {
    0x8000_0000 + (d as u64) * 0x100_0000
}

/// A firmware and the handles it gave out.
pub struct World {
    /// The firmware.
    pub tsm: T,
    /// Guest handles.
    pub guests: Vec<GuestId>,
    /// TDI handles, two per device.
    pub tdis: Vec<TdiId>,
    /// Interface IDs, by TDI index.
    pub ifaces: Vec<InterfaceId>,
}

/// Three guests, two devices with two TDIs each.
pub fn world() -> World {
    let tsm = T::new(MemTable::new(), ModelDevice::new());
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
/// nothing; owned ranges never overlap.
pub fn check_invariants(w: &World) {
    let snap = w.tsm.snapshot().unwrap();
    for leaf in snap.table.leaves() {
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
    }
    for (i, a) in snap.owners.iter().enumerate() {
        for b in snap.owners.iter().skip(i + 1) {
            assert!(
                !a.range.overlaps(&b.range),
                "owned ranges overlap: {a:?} {b:?}"
            );
        }
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
