//! The firmware's invariants, checked from outside through its public API (after a concurrent
//! run, on the host or in the QEMU boot): every private leaf lies in a range owned by a TDI
//! bound to the leaf's guest; owned ranges never overlap; an unbound TDI owns nothing; a TDI
//! whose leaves have all been blocked (ERROR done blocking, an unbind past its block pass) has
//! no live leaf; every guest's bound-TDI count is the number of TDIs bound to it; a TDI's
//! outstanding exchange is one its state can have (a bind of an unbound TDI, a START of a
//! locked one, a check of a locked or running one, the STOP of an unbind at Stop).

use heapless::Vec;

use crate::backend::FlushControl;
use tsm_core::addr::PHYS_ADDR_LIMIT;
use tsm_core::capacity::{MAX_GUESTS, MAX_OWNED_RANGES, MAX_TDIS};
use tsm_core::lifecycle::UnbindStep;
use tsm_core::page::PAGE_SIZE_4K;
use tsm_core::{
    DeviceOp, Error, GuestId, Hpa, LeafState, MmioRange, SecureSession, SecureTable, TdiId,
    TdiState, Tsm,
};

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
    /// A guest's bound-TDI count is not the number of TDIs bound to it.
    BoundCount {
        /// The guest.
        guest: GuestId,
        /// Its record's count.
        recorded: u16,
        /// TDIs whose owner it is (locked, running, in ERROR or being unbound).
        bound: u16,
    },
    /// A TDI is bound to a guest that does not exist.
    OwnerMissing(TdiId),
    /// A TDI's outstanding exchange is not one its state can have.
    ExchangeState(TdiId),
    /// A TDI's trusted DMA context translates in the platform's table while the core records
    /// it not active, or the other way round.
    DmaContext(TdiId),
    /// A TDI's unbind went past STOP on a live stream with its context's IOTLB invalidation
    /// not complete, or is under way with its context still translating.
    DmaPastStop(TdiId),
    /// The firmware was busy or refused a query (the check needs a quiet firmware).
    Query(Error),
}

/// Checks every invariant of a quiet firmware.
pub fn check<T: SecureTable + FlushControl, S: SecureSession, const N: usize>(
    tsm: &Tsm<T, S, N>,
) -> Result<(), Violation> {
    let mut owned: Vec<(MmioRange, TdiState), MAX_OWNED_RANGES> = Vec::new();
    let mut bound = [0u16; MAX_GUESTS];
    for slot in 0..MAX_TDIS {
        let id = TdiId::from_slot(u16::try_from(slot).unwrap_or(u16::MAX));
        let record = match tsm.tdi(id) {
            Ok(t) => t,
            Err(Error::InvalidHandle) => continue,
            Err(e) => return Err(Violation::Query(e)),
        };
        let state = record.state;
        let consistent = match (record.exchange.map(|e| e.op), state) {
            (None, _) => true,
            (Some(DeviceOp::Bind { .. }), TdiState::Unbound) => true,
            (Some(DeviceOp::Start { guest }), TdiState::Locked { owner }) => guest == owner,
            (Some(DeviceOp::Check), TdiState::Locked { .. } | TdiState::Run { .. }) => true,
            (
                Some(DeviceOp::Stop { .. }),
                TdiState::Unbinding {
                    step: UnbindStep::Stop,
                    ..
                },
            ) => true,
            _ => false,
        };
        if !consistent {
            return Err(Violation::ExchangeState(id));
        }
        if let Some(owner) = state.owner() {
            let count = bound
                .get_mut(usize::from(owner.slot()))
                .ok_or(Violation::OwnerMissing(id))?;
            *count = count.saturating_add(1);
        }
        // The platform's own IOMMU entry translates for the owner exactly while the core
        // records the context active (blocked, invalidated, removed or never accepted: not).
        if let Some(owner) = state.owner() {
            let translates = tsm
                .with_guest_table(owner, |t| t.dma_translates(owner, record.iface))
                .map_err(Violation::Query)?;
            if translates != (record.dma == Some(tsm_core::dma::DmaState::Active)) {
                return Err(Violation::DmaContext(id));
            }
        }
        // An unbind blocks the context in its first call and awaits its invalidation before
        // STOP (a forced unbind's stream is cut: nothing to await).
        if let TdiState::Unbinding { step, .. } = state {
            use tsm_core::dma::DmaState;

            let blocking = matches!(step, UnbindStep::Block(_));
            let translating = matches!(record.dma, Some(DmaState::Pending | DmaState::Active));
            let past_stop = !blocking && step != UnbindStep::Stop;
            let live = tsm
                .device(record.device)
                .is_ok_and(|d| d.stream == tsm_core::IdeStream::Live);
            let done = matches!(record.dma, None | Some(DmaState::Invalidated));
            if (translating && !blocking) || (past_stop && live && !done) {
                return Err(Violation::DmaPastStop(id));
            }
        }
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
    for (slot, &count) in bound.iter().enumerate() {
        let guest = GuestId::from_slot(u16::try_from(slot).unwrap_or(u16::MAX));
        let recorded = match tsm.guest(guest) {
            Ok(g) => g.bound_tdis,
            // Only a guest that exists can own a TDI.
            Err(Error::InvalidHandle) if count == 0 => continue,
            Err(Error::InvalidHandle) => {
                return Err(Violation::BoundCount {
                    guest,
                    recorded: 0,
                    bound: count,
                });
            }
            Err(e) => return Err(Violation::Query(e)),
        };
        if recorded != count {
            return Err(Violation::BoundCount {
                guest,
                recorded,
                bound: count,
            });
        }
    }
    for_each_leaf(tsm, |shard, leaf| {
        // A guest's leaves live in its own shard only.
        if usize::from(leaf.guest.slot()).checked_rem(N) != Some(shard) {
            return Err(Violation::LeafOfOtherGuest(leaf.hpa));
        }
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
                    step: UnbindStep::Stop
                        | UnbindStep::Track
                        | UnbindStep::Remove(_)
                        | UnbindStep::Release,
                    ..
                }
        );
        if blocked_all && leaf.state == LeafState::Mapped {
            return Err(Violation::LiveLeafAfterBlocking(leaf.hpa));
        }
        Ok(())
    })
}

/// Calls `f` with every private leaf of every shard (shard `i` is reached through guest slot
/// `i`, whose leaves it holds), in shard order and host-address order within one.
fn for_each_leaf<T: SecureTable, S: SecureSession, const N: usize>(
    tsm: &Tsm<T, S, N>,
    mut f: impl FnMut(usize, tsm_core::Leaf) -> Result<(), Violation>,
) -> Result<(), Violation> {
    let everything =
        MmioRange::from_raw(0, PHYS_ADDR_LIMIT / PAGE_SIZE_4K).map_err(Violation::Query)?;
    for shard in 0..N {
        let guest = GuestId::from_slot(u16::try_from(shard).unwrap_or(u16::MAX));
        tsm.with_guest_table(guest, |table| {
            let mut from = everything.base();
            while let Some(leaf) = table.next_leaf(everything, from) {
                f(shard, leaf)?;
                match leaf.hpa.checked_add(leaf.size.bytes()) {
                    Some(next) => from = next,
                    None => break,
                }
            }
            Ok(())
        })
        .map_err(Violation::Query)??;
    }
    Ok(())
}

/// The number of private leaves in the secure table (every guest's), on a quiet firmware.
pub fn leaf_count<T: SecureTable, S: SecureSession, const N: usize>(
    tsm: &Tsm<T, S, N>,
) -> Result<usize, Violation> {
    let mut n = 0usize;
    for_each_leaf(tsm, |_, _| {
        n = n.saturating_add(1);
        Ok(())
    })?;
    Ok(n)
}
