//! Bounded walks over a TDI's leaves, and the unbind step machine built on them.

use crate::ids::{GuestId, TdiId};
use crate::lifecycle::{Cursor, TdiState, UnbindStep};
use crate::ownership::Ownership;
use crate::secure_table::{Leaf, LeafState, SecureTable, TableError};
use crate::status::{Completion, Error};
use crate::transport::{InterfaceId, TdispDevice};

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

/// The objects an unbind works on, all locked by the caller in lock order.
pub(crate) struct UnbindCtx<'a, T, D> {
    pub tdi: TdiId,
    pub iface: InterfaceId,
    pub owner: GuestId,
    pub owners: &'a mut Ownership,
    pub table: &'a mut T,
    pub device: &'a mut D,
}

enum Next {
    Step(UnbindStep),
    Yield(UnbindStep),
    /// The step failed with progress to keep (a STOP that failed after blocking).
    Fail(UnbindStep, Error),
    Release,
}

/// Runs unbind steps from `step` within `budget` leaf operations. Returns the state to store
/// and the outcome; on an error the state keeps the step that failed, so a retry resumes there.
pub(crate) fn run<T: SecureTable, D: TdispDevice>(
    ctx: &mut UnbindCtx<'_, T, D>,
    mut step: UnbindStep,
    mut budget: u32,
) -> (TdiState, Result<Completion, Error>) {
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
                    Ok(Completion::Resumable),
                );
            }
            Ok(Next::Fail(kept, e)) => {
                return (
                    TdiState::Unbinding {
                        owner: ctx.owner,
                        step: kept,
                    },
                    Err(e),
                );
            }
            Ok(Next::Release) => {
                ctx.owners.release(ctx.tdi);
                return (TdiState::Unbound, Ok(Completion::Done));
            }
            Err(e) => return (unbinding, Err(e)),
        }
    }
}

fn advance<T: SecureTable, D: TdispDevice>(
    ctx: &mut UnbindCtx<'_, T, D>,
    step: UnbindStep,
    budget: &mut u32,
) -> Result<Next, Error> {
    Ok(match step {
        // STOP first: the device scrubs and stops TEE traffic before the guest loses the pages.
        UnbindStep::Stop { blocking } => match ctx.device.stop_interface(ctx.iface) {
            Ok(()) => Next::Step(match blocking {
                Some(cursor) => UnbindStep::Block(cursor),
                None => UnbindStep::Track,
            }),
            // The device may be dead: the guest loses its MMIO now, STOP is retried later.
            Err(fault) => {
                let blocking = match blocking {
                    Some(cursor) => {
                        match block_leaves(ctx.owners, ctx.tdi, ctx.table, cursor, budget)? {
                            Walk::Finished => None,
                            Walk::Paused(c) => Some(c),
                        }
                    }
                    None => None,
                };
                Next::Fail(UnbindStep::Stop { blocking }, fault.into())
            }
        },
        UnbindStep::Block(cursor) => {
            match block_leaves(ctx.owners, ctx.tdi, ctx.table, cursor, budget)? {
                Walk::Finished => Next::Step(UnbindStep::Track),
                Walk::Paused(c) => Next::Yield(UnbindStep::Block(c)),
            }
        }
        // Every leaf is blocked: one epoch advance covers them all.
        UnbindStep::Track => {
            ctx.table.track(ctx.owner)?;
            Next::Step(UnbindStep::Remove(Cursor::START))
        }
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
