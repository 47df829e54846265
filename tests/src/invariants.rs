//! The firmware's invariants, checked from outside through its public API (after a concurrent
//! run, on the host or in the QEMU boot): every private leaf lies in a range owned by a TDI
//! bound to the leaf's guest; owned ranges never overlap; an unbound TDI owns nothing; a TDI
//! whose leaves have all been blocked (ERROR done blocking, an unbind past its block pass) has
//! no live leaf.

use heapless::Vec;
use tsm_core::addr::PHYS_ADDR_LIMIT;
use tsm_core::capacity::{MAX_OWNED_RANGES, MAX_TDIS};
use tsm_core::lifecycle::UnbindStep;
use tsm_core::page::PAGE_SIZE_4K;
use tsm_core::{Error, Hpa, LeafState, MmioRange, SecureTable, TdiId, TdiState, TdispDevice, Tsm};

/// Which invariant broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// A leaf outside every owned range.
    LeafNotOwned(Hpa),
    /// A leaf in a range owned by a TDI not bound to the leaf's guest.
    LeafOfOtherGuest(Hpa),
    /// Two owned ranges overlap.
    OwnedRangesOverlap,
    /// An unbound TDI owns ranges.
    UnboundOwns(TdiId),
    /// A live (mapped) leaf of a TDI that has blocked all its leaves.
    LiveLeafAfterBlocking(Hpa),
    /// The firmware was busy or refused a query (the check needs a quiet firmware).
    Query(Error),
}

/// Checks every invariant of a quiet firmware.
pub fn check<T: SecureTable, D: TdispDevice>(tsm: &Tsm<T, D>) -> Result<(), Violation> {
    let mut owned: Vec<(MmioRange, TdiState), MAX_OWNED_RANGES> = Vec::new();
    for slot in 0..MAX_TDIS {
        let id = TdiId::from_slot(u16::try_from(slot).unwrap_or(u16::MAX));
        let state = match tsm.tdi(id) {
            Ok(t) => t.state,
            Err(Error::InvalidHandle) => continue,
            Err(e) => return Err(Violation::Query(e)),
        };
        let ranges = tsm.owned_ranges(id).map_err(Violation::Query)?;
        if !state.is_bound() && !ranges.is_empty() {
            return Err(Violation::UnboundOwns(id));
        }
        for r in ranges {
            if owned.iter().any(|(o, _)| o.overlaps(&r)) {
                return Err(Violation::OwnedRangesOverlap);
            }
            owned
                .push((r, state))
                .map_err(|_| Violation::OwnedRangesOverlap)?;
        }
    }
    let everything =
        MmioRange::from_raw(0, PHYS_ADDR_LIMIT / PAGE_SIZE_4K).map_err(Violation::Query)?;
    tsm.with_table(|table| {
        let mut from = everything.base();
        while let Some(leaf) = table.next_leaf(everything, from) {
            let (_, state) = owned
                .iter()
                .find(|(r, _)| r.contains_page(leaf.hpa, leaf.size))
                .ok_or(Violation::LeafNotOwned(leaf.hpa))?;
            if state.owner() != Some(leaf.guest) {
                return Err(Violation::LeafOfOtherGuest(leaf.hpa));
            }
            let blocked_all = matches!(
                state,
                TdiState::Error { blocking: None, .. }
                    | TdiState::Unbinding {
                        step: UnbindStep::Stop | UnbindStep::Track | UnbindStep::Remove(_),
                        ..
                    }
            );
            if blocked_all && leaf.state == LeafState::Mapped {
                return Err(Violation::LiveLeafAfterBlocking(leaf.hpa));
            }
            match leaf.hpa.checked_add(leaf.size.bytes()) {
                Some(next) => from = next,
                None => break,
            }
        }
        Ok(())
    })
    .map_err(Violation::Query)?
}
