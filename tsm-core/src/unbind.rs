//! Bounded walks over a TDI's leaves, and the unbind step machine built on them.

use crate::addr::Hpa;
use crate::capacity::{UNBIND_GRACE_WORK, UNBIND_MAX_LEAF_WORK};
use crate::dma::DmaState;
use crate::ids::{GuestId, TdiId};
use crate::lifecycle::{Cursor, TdiState, UnbindStep};
use crate::ownership::Ownership;
use crate::secure_table::{Found, Leaf, PageRest, Run, SecureTable, TableError, run_page};
use crate::status::{Completion, Error};
use crate::transport::InterfaceId;

/// Where a walk ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Walk {
    /// Every leaf of the TDI was visited.
    Finished,
    /// The budget ran out; resume here.
    Paused(Cursor),
}

/// Visits the TDI's leaves in host-address order from `cursor`, a run at a time
/// ([`SecureTable::find_leaves`]), applying `act` to each run. `budget` is work
/// ([`crate::capacity::UNBIND_WORK_PER_CALL`] says the unit): what the searches read and what
/// the changes cost (`act` returns it), so a call is short whatever the layout (a sparse one
/// spends its units searching). On an error the caller keeps its older cursor:
/// redoing a block is a no-op and a removed leaf is not found again, so nothing is done
/// twice; a run's change is all or nothing.
///
/// `act(table, first, count, limit)` changes the run when its work is at most `limit` and
/// returns the work, or `None` having changed nothing. The limit is the budget left plus, once
/// per walk, [`crate::capacity::UNBIND_MAX_LEAF_WORK`]: a run that would pass it is cut to one
/// leaf, which always fits while that spare is unused, so every call makes progress; once a
/// change went past the budget, a run over it waits for the next call. A call's work is
/// therefore at most its budget, plus `UNBIND_MAX_LEAF_WORK`, plus
/// [`crate::capacity::UNBIND_GRACE_WORK`] for each of the (at most two) walks it makes.
pub(crate) fn walk<T: SecureTable>(
    owners: &Ownership,
    tdi: TdiId,
    table: &mut T,
    mut cursor: Cursor,
    budget: &mut u32,
    mut act: impl FnMut(&mut T, &Leaf, u32, u32) -> Result<Option<u32>, TableError>,
) -> Result<Walk, Error> {
    // What one change may go past the budget, once: a leaf's worst case.
    let mut spare = UNBIND_MAX_LEAF_WORK;
    // Once the budget is spent (a change may overrun it), a little more to find that nothing
    // is left, so a call that did the last of the work says Done rather than Resumable.
    let mut grace = UNBIND_GRACE_WORK;
    loop {
        let Some(range) = owners.range_of(tdi, cursor.range) else {
            return Ok(Walk::Finished);
        };
        let from = cursor.next.unwrap_or(range.base());
        if *budget == 0 {
            match table.find_leaves(range, from, cursor.rest, 1, &mut grace) {
                Found::Broken => return Err(Error::Inconsistent),
                Found::End => {
                    cursor = Cursor {
                        range: cursor.range.checked_add(1).ok_or(Error::TooManyRanges)?,
                        next: None,
                        rest: None,
                    };
                    continue;
                }
                Found::Paused { .. } | Found::Run { .. } => {
                    return Ok(Walk::Paused(Cursor {
                        next: Some(from),
                        ..cursor
                    }));
                }
            }
        }
        // A run's leaves cost a unit each to find and another to change: half the budget
        // left bounds the run, so a search from a leaf always leaves work to change it.
        let max = (*budget / 2).max(1);
        let (first, count, next, rest) =
            match table.find_leaves(range, from, cursor.rest, max, budget) {
                // Never an end: the ranges stay owned, the step stays where it is.
                Found::Broken => return Err(Error::Inconsistent),
                Found::End => {
                    cursor = Cursor {
                        range: cursor.range.checked_add(1).ok_or(Error::TooManyRanges)?,
                        next: None,
                        rest: None,
                    };
                    continue;
                }
                Found::Paused { resume } => {
                    return Ok(Walk::Paused(Cursor {
                        range: cursor.range,
                        next: Some(resume),
                        rest: None,
                    }));
                }
                Found::Run {
                    first,
                    count,
                    next,
                    rest,
                } => (first, count, next, rest),
            };
        // The search may have spent the budget: what is left bounds the leaves changed.
        let mut done = count.min(*budget);
        let pause = Walk::Paused(Cursor {
            range: cursor.range,
            next: Some(first.hpa),
            rest: None,
        });
        if done == 0 {
            return Ok(pause);
        }
        // What the change costs (one per leaf, more for the table pages it walks and gives
        // back), known before it is made: a run over the limit is cut to one leaf, and a leaf
        // over it waits for the next call.
        let limit = budget.saturating_add(spare);
        let mut spent = act(table, &first, done, limit)?;
        if spent.is_none() && done > 1 {
            done = 1;
            spent = act(table, &first, done, limit)?;
        }
        let Some(spent) = spent else {
            return Ok(pause);
        };
        if spent > *budget {
            spare = 0;
        }
        *budget = budget.saturating_sub(spent.max(done));
        let end = run_page(first.hpa.as_u64(), first.size, done).and_then(|e| Hpa::try_new(e).ok());
        let (next, rest) = if done == count {
            // The search's resume point: the run's end (what the table knows of its page goes
            // with it), or past a table page with nothing more.
            (next, rest.filter(|_| next == end))
        } else {
            // Stopped inside the run: its leaves not done are still ahead in the page.
            let left = u16::try_from(count.saturating_sub(done)).unwrap_or(u16::MAX);
            (
                end,
                rest.map(|r| PageRest {
                    left: r.left.saturating_add(left),
                    ..r
                }),
            )
        };
        cursor = match next {
            Some(next) => Cursor {
                range: cursor.range,
                next: Some(next),
                rest,
            },
            // The run ends at the top of the address space: nothing follows in this range.
            None => Cursor {
                range: cursor.range.checked_add(1).ok_or(Error::TooManyRanges)?,
                next: None,
                rest: None,
            },
        };
    }
}

/// Blocks every still-mapped leaf from `cursor` on.
fn block_leaves<T: SecureTable>(
    owners: &Ownership,
    tdi: TdiId,
    table: &mut T,
    cursor: Cursor,
    budget: &mut u32,
) -> Result<Walk, Error> {
    // A block never gives table pages back: its work is the leaves and a few walks, charged
    // after it (at most `UNBIND_MAX_LEAF_WORK` past the budget).
    walk(owners, tdi, table, cursor, budget, |t, leaf, count, _| {
        t.block_range(leaf.guest, Run::new(leaf.gpa, leaf.hpa, leaf.size, count))
            .map(Some)
    })
}

/// Blocks a TDI's DMA context that still translates (pending or active): the platform's entry
/// no longer translates for new requests. Its IOTLB invalidation is requested at once (TDX:
/// queued for TDH.IQ.INV.PROCESS), or, on a platform whose invalidation is the guest's TLB
/// epoch advance ([`SecureTable::DMA_INVALIDATION_AFTER_LEAVES`], SEV: the ASID fence), once the
/// TDI's MMIO leaves are blocked too ([`ask_invalidation`], by the caller), so one fence covers
/// both. A blocked context, or none, stays as it is.
///
/// An error is the block's refusal (the context as it was, still translating) or the
/// request's (the context `Blocked`): either way the caller blocks this call's leaves first,
/// keeps that progress and then answers it, so no refusal leaves the guest's MMIO live for a
/// call longer.
fn block_dma<T: SecureTable>(
    table: &mut T,
    owner: GuestId,
    iface: InterfaceId,
    dma: &mut Option<DmaState>,
) -> Result<(), Error> {
    if still_translates(*dma) {
        table.dma_block(owner, iface)?;
        *dma = Some(DmaState::Blocked);
        if !T::DMA_INVALIDATION_AFTER_LEAVES {
            return ask_invalidation(table, owner, iface, dma);
        }
    }
    Ok(())
}

/// One blocking pass, the same for ERROR, a check and the unbind's Block step: the DMA
/// context first ([`block_dma`]), then the leaves from `cursor` within `budget`, then, once
/// every leaf is blocked, the context's invalidation asked ([`ask_invalidation`]). A refusal
/// of the context's block or request never stops the leaves: it comes back beside the pass's
/// progress, which the caller keeps before answering it. The progress: `None` when every
/// leaf and the context are blocked, else where the next pass starts (the same `cursor` while
/// the context still translates: the next pass blocks it again first).
pub(crate) fn block_pass<T: SecureTable>(
    table: &mut T,
    owners: &Ownership,
    tdi: TdiId,
    (owner, iface): (GuestId, InterfaceId),
    dma: &mut Option<DmaState>,
    cursor: Cursor,
    budget: &mut u32,
) -> Result<(Option<Cursor>, Result<(), Error>), Error> {
    let asked = block_dma(table, owner, iface, dma);
    Ok(match block_leaves(owners, tdi, table, cursor, budget)? {
        Walk::Finished if still_translates(*dma) => (Some(cursor), asked),
        Walk::Finished => (
            None,
            asked.and_then(|()| ask_invalidation(table, owner, iface, dma)),
        ),
        Walk::Paused(c) => (Some(c), asked),
    })
}

/// Whether a context in `dma` still translates into its guest's memory (not blocked yet).
fn still_translates(dma: Option<DmaState>) -> bool {
    matches!(dma, Some(DmaState::Pending | DmaState::Active))
}

/// Requests the IOTLB invalidation of a blocked context whose request is not in yet
/// (`Blocked`); any other context, or none, stays as it is. A platform that cannot request it
/// yet (SEV: another fence of the guest still out, `TlbNotFlushed`) leaves it `Blocked`, and
/// every later call that continues the teardown (the next ERROR or check, each unbind step
/// after Block: [`dma_need`]) asks again; any other refusal is the call's status, the context
/// still blocked (progress kept, on the side of safety).
pub(crate) fn ask_invalidation<T: SecureTable>(
    table: &mut T,
    owner: GuestId,
    iface: InterfaceId,
    dma: &mut Option<DmaState>,
) -> Result<(), Error> {
    if *dma != Some(DmaState::Blocked) {
        return Ok(());
    }
    ask(table, owner, iface, dma)
}

/// Asks the platform about the invalidation of the blocked context in `dma` and records its
/// answer; `TlbNotFlushed` (SEV: another fence of the guest still out) leaves it as it is, the
/// next call asks again.
fn ask<T: SecureTable>(
    table: &mut T,
    owner: GuestId,
    iface: InterfaceId,
    dma: &mut Option<DmaState>,
) -> Result<(), Error> {
    match invalidation(table, owner, iface) {
        Ok(state) => *dma = Some(state),
        Err(TableError::TlbNotFlushed) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// Requests (or asks again about) the IOTLB invalidation of `guest`'s blocked context of
/// `iface`: `Invalidated` once the platform completed it, `Invalidating` until then. The one
/// place a context's state follows [`SecureTable::dma_invalidate`].
pub(crate) fn invalidation<T: SecureTable>(
    table: &mut T,
    guest: GuestId,
    iface: InterfaceId,
) -> Result<DmaState, TableError> {
    Ok(if table.dma_invalidate(guest, iface)? {
        DmaState::Invalidated
    } else {
        DmaState::Invalidating
    })
}

/// The blocked context's IOTLB invalidation complete, asked (again) where it is not:
/// `IotlbInvalidationPending` until the platform completed it (TDX: the host's
/// TDH.IQ.INV.PROCESS; SEV: the host's fence), the request kept. No context, or one already
/// invalidated, passes.
fn await_dma<T: SecureTable>(
    table: &mut T,
    owner: GuestId,
    iface: InterfaceId,
    dma: &mut Option<DmaState>,
) -> Result<(), Error> {
    if !matches!(dma, Some(DmaState::Blocked | DmaState::Invalidating)) {
        return Ok(());
    }
    // A platform that cannot ask yet (SEV: another fence of the guest still out) waits the
    // same way: the host completes what is out, and the next call asks.
    ask(table, owner, iface, dma)?;
    if *dma == Some(DmaState::Invalidated) {
        Ok(())
    } else {
        Err(Error::IotlbInvalidationPending)
    }
}

/// What a step of the unbind after Block needs of the TDI's blocked DMA context before its own
/// work ([`dma_need`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DmaNeed {
    /// Nothing asked here.
    Nothing,
    /// Its invalidation asked if its request is not in yet ([`ask_invalidation`]).
    Asked,
    /// Its invalidation complete ([`await_dma`]: asked again until then).
    Complete,
}

/// What `step` needs of the TDI's DMA context, asked at its top ([`advance`]), so no step
/// forgets a request the platform could not take yet (SEV: another fence out). The Block step
/// makes its own: the block, and the request with it or after the TDI's last leaf
/// ([`block_dma`], [`SecureTable::DMA_INVALIDATION_AFTER_LEAVES`]).
fn dma_need(step: UnbindStep, stop: StopBy) -> DmaNeed {
    match step {
        UnbindStep::Block(_) => DmaNeed::Nothing,
        // STOP unlocks the interface: no cached translation into the guest outlives it.
        UnbindStep::Stop if stop == StopBy::Device => DmaNeed::Complete,
        // Nothing to send: the step goes on to Track in this call, which asks (a refusal is
        // then answered at Track, where the unbind has got to).
        UnbindStep::Stop => DmaNeed::Nothing,
        UnbindStep::Track | UnbindStep::Remove(_) => DmaNeed::Asked,
        // The removal needs it complete (a forced unbind's may still be out).
        UnbindStep::Dma => DmaNeed::Complete,
        // The Dma step removed the context: nothing left to ask.
        UnbindStep::Release => DmaNeed::Nothing,
    }
}

/// What the Stop step needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopBy {
    /// The device must acknowledge STOP_INTERFACE: the step ends the call asking for it.
    Device,
    /// Nothing more: the device acknowledged STOP, or a forced unbind cut its IDE stream so
    /// it can no longer reach the guest.
    Done,
}

/// The objects an unbind works on, all locked by the caller in lock order.
pub(crate) struct UnbindCtx<'a, T> {
    /// The owner's bound count can drop by one: the unbind may release.
    pub releasable: bool,
    pub tdi: TdiId,
    pub owner: GuestId,
    /// The TDI's interface (what its DMA context matches).
    pub iface: InterfaceId,
    /// The TDI's DMA context, torn down at the Dma step.
    pub dma: &'a mut Option<DmaState>,
    /// Read only: the release at the end is the caller's, under a write lock.
    pub owners: &'a Ownership,
    pub table: &'a mut T,
    pub stop: StopBy,
}

/// How a call of the unbind machine ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Done or Resumable.
    Completion(Completion),
    /// At Stop, every leaf blocked: the device must be asked.
    AskStop,
    /// Every leaf is gone and the owner can count the TDI out: the caller releases the TDI's
    /// ranges (the state returned is at the Release step, kept if it cannot yet).
    Release,
}

enum Next {
    Step(UnbindStep),
    Yield(UnbindStep),
    /// The call answers the error with its progress kept at the step.
    Failed(UnbindStep, Error),
    AskStop,
    Release,
}

/// Runs unbind steps from `step` within `budget` units of work (see [`walk`]). Returns the state to store
/// and the outcome; on an error the state keeps the step that failed, so a retry resumes there.
pub(crate) fn run<T: SecureTable>(
    ctx: &mut UnbindCtx<'_, T>,
    mut step: UnbindStep,
    mut budget: u32,
) -> (TdiState, Result<Ended, Error>) {
    loop {
        let unbinding = TdiState::Unbinding {
            owner: ctx.owner,
            step,
        };
        match advance(ctx, step, &mut budget) {
            Ok(Next::Step(next)) => step = next,
            Ok(Next::Yield(next)) => {
                return (
                    TdiState::Unbinding {
                        owner: ctx.owner,
                        step: next,
                    },
                    Ok(Ended::Completion(Completion::Resumable)),
                );
            }
            Ok(Next::Failed(next, e)) => {
                return (
                    TdiState::Unbinding {
                        owner: ctx.owner,
                        step: next,
                    },
                    Err(e),
                );
            }
            Ok(Next::AskStop) => return (unbinding, Ok(Ended::AskStop)),
            // The owner's count would drift: every leaf is gone, but the ranges stay owned and
            // the TDI bound until the firmware's records agree again.
            Ok(Next::Release) if !ctx.releasable => return (unbinding, Err(Error::Inconsistent)),
            Ok(Next::Release) => return (unbinding, Ok(Ended::Release)),
            Err(e) => return (unbinding, Err(e)),
        }
    }
}

fn advance<T: SecureTable>(
    ctx: &mut UnbindCtx<'_, T>,
    step: UnbindStep,
    budget: &mut u32,
) -> Result<Next, Error> {
    match dma_need(step, ctx.stop) {
        DmaNeed::Nothing => {}
        DmaNeed::Asked => ask_invalidation(ctx.table, ctx.owner, ctx.iface, ctx.dma)?,
        DmaNeed::Complete => await_dma(ctx.table, ctx.owner, ctx.iface, ctx.dma)?,
    }
    Ok(match step {
        // Block first: the guest loses its MMIO before the device is asked anything, so a
        // dead device can leave the unbind waiting at STOP but never leave the guest live
        // pages, and the device is never unlocked under a guest that still maps it.
        UnbindStep::Block(cursor) => {
            // The DMA context before the MMIO, in the unbind's first call: nothing new
            // translates into the guest's memory once the unbind has begun, however many calls
            // the MMIO takes. Its IOTLB invalidation is asked at once (TDX), or once the last
            // leaf is blocked (SEV: the one ASID fence then covers the context and the leaves,
            // and the Track step finds nothing to advance), and awaited before STOP (the
            // removal comes in the enforced order, at the Dma step). A blocked context stays
            // as it is. One entry's write, once per unbind: not charged to the leaves' budget,
            // so a call blocks as many leaves as any other.
            // A refusal of the context's block or of its request never stops the leaves: they
            // are blocked and their progress kept, and the call then answers it.
            // Still translating, the step stays at Block, which blocks it again first; all
            // blocked, a request refused or not made yet is asked again from Stop on.
            let who = (ctx.owner, ctx.iface);
            match block_pass(ctx.table, ctx.owners, ctx.tdi, who, ctx.dma, cursor, budget)? {
                (None, Ok(())) => Next::Step(UnbindStep::Stop),
                (None, Err(e)) => Next::Failed(UnbindStep::Stop, e),
                (Some(c), Ok(())) => Next::Yield(UnbindStep::Block(c)),
                (Some(c), Err(e)) => Next::Failed(UnbindStep::Block(c), e),
            }
        }
        // STOP before the pages go back: the device scrubs and stops TEE traffic (PCIe 6.x
        // 11.3.9) while the firmware still owns its MMIO; the call returns with the request
        // and the device's answer resumes here. With the stream cut (forced unbind) the root
        // port already drops the device's TEE traffic: nothing to ask.
        // The context's IOTLB invalidation completed before STOP unlocks the interface
        // ([`dma_need`]): no cached translation into the guest outlives CONFIG_LOCKED
        // (`IotlbInvalidationPending` until then, progress kept).
        UnbindStep::Stop => match ctx.stop {
            StopBy::Device => Next::AskStop,
            StopBy::Done => Next::Step(UnbindStep::Track),
        },
        // Every leaf is blocked: one epoch advance covers them all. The bookkeeping it may
        // need first (TDX's re-stamp) is charged to the call and resumes on the next. An
        // invalidation the platform could not take yet (SEV: another fence out; a forced unbind
        // awaits nothing before here) was asked again first ([`dma_need`]): on SEV its fence,
        // raised after the last leaf's block, covers the leaves too, and the advance has
        // nothing left to do.
        UnbindStep::Track => match ctx.table.track_within(ctx.owner, budget)? {
            Completion::Done => Next::Step(UnbindStep::Remove(Cursor::START)),
            Completion::Resumable | Completion::Relay(_) => Next::Yield(UnbindStep::Track),
        },
        // A table may refuse a leaf until more than the TLB forgot it (TDX: the IOTLB of an
        // IOMMU whose trusted context names the guest's table, `IotlbNotTracked`):
        // the step and its cursor stay, and the next call resumes here (asking again for an
        // invalidation not taken yet, as at Track).
        UnbindStep::Remove(cursor) => match walk(
            ctx.owners,
            ctx.tdi,
            ctx.table,
            cursor,
            budget,
            |t, leaf, n, limit| {
                let run = Run::new(leaf.gpa, leaf.hpa, leaf.size, n);
                t.remove_range_within(leaf.guest, run, limit)
            },
        )? {
            Walk::Finished => Next::Step(UnbindStep::Dma),
            Walk::Paused(c) => Next::Yield(UnbindStep::Remove(c)),
        },
        // The MMIO is gone from the guest and the TLBs: the DMA context last, in the order the
        // Linux TDX Connect host enforces. The Block step blocked it and asked its invalidation
        // (a non-forced unbind awaited it before STOP), and the step's top awaited it
        // ([`dma_need`]: a forced unbind's may still have been out; a pending one is an error
        // with the progress kept): remove it.
        UnbindStep::Dma => {
            *budget = budget.saturating_sub(1);
            if ctx.dma.is_some() {
                // The Block step blocked it, and nothing makes a context while unbinding.
                if still_translates(*ctx.dma) {
                    return Err(Error::Inconsistent);
                }
                ctx.table.dma_remove(ctx.owner, ctx.iface)?;
                *ctx.dma = None;
            }
            Next::Step(UnbindStep::Release)
        }
        UnbindStep::Release => Next::Release,
    })
}

#[cfg(test)]
mod tests;
