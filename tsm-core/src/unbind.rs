//! Bounded walks over a TDI's leaves, and the unbind step machine built on them.

use crate::ids::{GuestId, TdiId};
use crate::lifecycle::{Cursor, TdiState, UnbindStep};
use crate::ownership::Ownership;
use crate::secure_table::{Leaf, LeafState, SecureTable, TableError};
use crate::status::{Completion, Error};

/// Where a walk ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Walk {
    /// Every leaf of the TDI was visited.
    Finished,
    /// The budget ran out; resume here.
    Paused(Cursor),
}

/// Visits the TDI's leaves in host-address order from `cursor`, applying `act` to each, one unit
/// of `budget` per leaf. On an error the caller keeps its older cursor: redoing a block is a
/// no-op and a removed leaf is not found again, so nothing is done twice.
pub(crate) fn walk<T: SecureTable>(
    owners: &Ownership,
    tdi: TdiId,
    table: &mut T,
    mut cursor: Cursor,
    budget: &mut u32,
    mut act: impl FnMut(&mut T, &Leaf) -> Result<(), TableError>,
) -> Result<Walk, Error> {
    loop {
        let Some(range) = owners.range_of(tdi, cursor.range) else {
            return Ok(Walk::Finished);
        };
        let from = cursor.next.unwrap_or(range.base());
        let Some(leaf) = table.next_leaf(range, from) else {
            cursor = Cursor {
                range: cursor.range.checked_add(1).ok_or(Error::TooManyRanges)?,
                next: None,
            };
            continue;
        };
        if *budget == 0 {
            return Ok(Walk::Paused(Cursor {
                range: cursor.range,
                next: Some(leaf.hpa),
            }));
        }
        act(table, &leaf)?;
        *budget = budget.saturating_sub(1);
        cursor = match leaf.hpa.checked_add(leaf.size.bytes()) {
            Some(next) => Cursor {
                range: cursor.range,
                next: Some(next),
            },
            // The leaf ends at the top of the address space: nothing follows in this range.
            None => Cursor {
                range: cursor.range.checked_add(1).ok_or(Error::TooManyRanges)?,
                next: None,
            },
        };
    }
}

/// Blocks every still-mapped leaf from `cursor` on.
pub(crate) fn block_leaves<T: SecureTable>(
    owners: &Ownership,
    tdi: TdiId,
    table: &mut T,
    cursor: Cursor,
    budget: &mut u32,
) -> Result<Walk, Error> {
    walk(owners, tdi, table, cursor, budget, |t, leaf| {
        match leaf.state {
            LeafState::Mapped => t.block(leaf.guest, leaf.gpa, leaf.size),
            LeafState::Blocked { .. } => Ok(()),
        }
    })
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
    pub owners: &'a mut Ownership,
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
}

enum Next {
    Step(UnbindStep),
    Yield(UnbindStep),
    AskStop,
    Release,
}

/// Runs unbind steps from `step` within `budget` leaf operations. Returns the state to store
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
            Ok(Next::AskStop) => return (unbinding, Ok(Ended::AskStop)),
            // The owner's count would drift: every leaf is gone, but the ranges stay owned and
            // the TDI bound until the firmware's records agree again.
            Ok(Next::Release) if !ctx.releasable => return (unbinding, Err(Error::Inconsistent)),
            Ok(Next::Release) => {
                // A refused release changed nothing: the TDI stays unbinding, its ranges owned.
                if let Err(e) = ctx.owners.release(ctx.tdi) {
                    return (unbinding, Err(e));
                }
                return (TdiState::Unbound, Ok(Ended::Completion(Completion::Done)));
            }
            Err(e) => return (unbinding, Err(e)),
        }
    }
}

fn advance<T: SecureTable>(
    ctx: &mut UnbindCtx<'_, T>,
    step: UnbindStep,
    budget: &mut u32,
) -> Result<Next, Error> {
    Ok(match step {
        // Block first: the guest loses its MMIO before the device is asked anything, so a
        // dead device can leave the unbind waiting at STOP but never leave the guest live
        // pages, and the device is never unlocked under a guest that still maps it.
        UnbindStep::Block(cursor) => {
            match block_leaves(ctx.owners, ctx.tdi, ctx.table, cursor, budget)? {
                Walk::Finished => Next::Step(UnbindStep::Stop),
                Walk::Paused(c) => Next::Yield(UnbindStep::Block(c)),
            }
        }
        // STOP before the pages go back: the device scrubs and stops TEE traffic (PCIe 6.x
        // 11.3.9) while the firmware still owns its MMIO; the call returns with the request
        // and the device's answer resumes here. With the stream cut (forced unbind) the root
        // port already drops the device's TEE traffic: nothing to ask.
        UnbindStep::Stop => match ctx.stop {
            StopBy::Device => Next::AskStop,
            StopBy::Done => Next::Step(UnbindStep::Track),
        },
        // Every leaf is blocked: one epoch advance covers them all.
        UnbindStep::Track => match ctx.table.track(ctx.owner)? {
            Completion::Done => Next::Step(UnbindStep::Remove(Cursor::START)),
            Completion::Resumable | Completion::Relay(_) => Next::Yield(UnbindStep::Track),
        },
        UnbindStep::Remove(cursor) => {
            match walk(ctx.owners, ctx.tdi, ctx.table, cursor, budget, |t, leaf| {
                t.remove(leaf.guest, leaf.gpa, leaf.size).map(drop)
            })? {
                Walk::Finished => Next::Release,
                Walk::Paused(c) => Next::Yield(UnbindStep::Remove(c)),
            }
        }
    })
}
