//! The TDI lifecycle: TDISP states plus the firmware's binding facts, and the one transition
//! table every operation consults before it changes anything.

use crate::addr::Hpa;
use crate::ids::GuestId;
use crate::secure_table::PageRest;
use crate::status::Error;

/// TDISP interface states (PCIe 6.x 11.3.2, TDI state machine; codes as in
/// GET_DEVICE_INTERFACE_STATE_RESPONSE, 11.3.12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TdispState {
    /// CONFIG_UNLOCKED: the host may configure the interface; no TEE traffic.
    ConfigUnlocked = 0,
    /// CONFIG_LOCKED: configuration frozen, the guest may verify it.
    ConfigLocked = 1,
    /// RUN: the guest uses the interface with TEE traffic.
    Run = 2,
    /// ERROR: the device saw a violation; only STOP_INTERFACE leaves it.
    Error = 3,
}

/// A position in a TDI's owned ranges: range index, and the host address to continue from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cursor {
    /// Index of the range among the TDI's owned ranges.
    pub range: u8,
    /// Lowest host address not yet visited in that range (`None`: from the range's base).
    pub next: Option<Hpa>,
    /// What the secure table said of the rest of its table page at `next`, handed back to its
    /// next search ([`crate::secure_table::SecureTable::find_leaves`]). Kept across host calls:
    /// the table ignores a hint made before anything was added to it (`PageRest::generation`).
    /// Addresses the walk has passed are not looked at again: that nothing is mapped into the
    /// range while its TDI unbinds is the core's rule (maps are refused `UnbindInProgress`).
    pub rest: Option<PageRest>,
}

impl Cursor {
    /// The first leaf of the first range.
    pub const START: Cursor = Cursor {
        range: 0,
        next: None,
        rest: None,
    };
}

/// Where a bounded unbind stands; kept in the TDI between calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnbindStep {
    /// Blocking the TDI's leaves so the guest loses access: first, so that no call of an
    /// unbind ever ends with the guest holding live MMIO of a device that may be stopping.
    Block(Cursor),
    /// Every leaf is blocked; STOP_INTERFACE not yet acknowledged by the device.
    Stop,
    /// Advancing the guest's TLB epoch and flushing.
    Track,
    /// Removing the blocked, flushed leaves.
    Remove(Cursor),
    /// Every leaf removed: the TDI's trusted DMA context, if any, is blocked, its IOTLB
    /// invalidation requested and awaited (`IotlbInvalidationPending` until it completes, the
    /// progress kept in the record's [`crate::dma::DmaState`]), and removed.
    Dma,
    /// Every leaf and the DMA context removed: the TDI's ranges go back (every ownership copy
    /// written) at the next call that finds no CPU reading them.
    Release,
}

/// A TDI as the firmware sees it. Unbound is TDISP CONFIG_UNLOCKED with no owner; every other
/// state has an owner, so "owned but unlocked" or "running without owner" cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TdiState {
    /// CONFIG_UNLOCKED and shared: the host owns the BARs.
    Unbound,
    /// CONFIG_LOCKED, bound to `owner`.
    Locked {
        /// The guest the TDI is bound to.
        owner: GuestId,
    },
    /// RUN, started by `owner`.
    Run {
        /// The guest the TDI is bound to.
        owner: GuestId,
    },
    /// ERROR reported by the device; leaves are blocked (`blocking` is where that stands).
    Error {
        /// The guest the TDI is bound to.
        owner: GuestId,
        /// `Some` while leaves remain to be blocked.
        blocking: Option<Cursor>,
    },
    /// An unbind has started and not finished: still bound, no new mapping, no start.
    Unbinding {
        /// The guest the TDI is bound to.
        owner: GuestId,
        /// Progress of the unbind.
        step: UnbindStep,
    },
}

/// What happens to a TDI. Host page requests (`HostTouch`) only ask whether they may proceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Host binds the TDI to a guest (after LOCK_INTERFACE).
    Bind(GuestId),
    /// Host maps private MMIO of the TDI for a guest.
    Map(GuestId),
    /// Guest accepts and starts the TDI (START_INTERFACE).
    Start(GuestId),
    /// Device reports ERROR or a configuration change.
    DeviceError,
    /// Host asks for unbind (begin or continue).
    Unbind,
    /// The unbind finished its last step.
    Released,
    /// Host unmaps, blocks or zaps pages of the TDI.
    HostTouch,
}

impl TdiState {
    /// The owning guest, if bound.
    pub const fn owner(&self) -> Option<GuestId> {
        match *self {
            TdiState::Unbound => None,
            TdiState::Locked { owner }
            | TdiState::Run { owner }
            | TdiState::Error { owner, .. }
            | TdiState::Unbinding { owner, .. } => Some(owner),
        }
    }

    /// Whether the firmware owns the TDI's MMIO (every state but `Unbound`).
    pub const fn is_bound(&self) -> bool {
        !matches!(self, TdiState::Unbound)
    }

    /// Where blocking of live leaves stands, if some remain: in ERROR and at the start of an
    /// unbind the guest must lose its MMIO before anything else happens.
    pub const fn blocking(&self) -> Option<Cursor> {
        match *self {
            TdiState::Error { blocking, .. } => blocking,
            TdiState::Unbinding {
                step: UnbindStep::Block(cursor),
                ..
            } => Some(cursor),
            _ => None,
        }
    }

    /// The same state with blocking progress `blocking` (`None`: every leaf is blocked);
    /// states that do not block are kept.
    pub const fn with_blocking(self, blocking: Option<Cursor>) -> Self {
        match (self, blocking) {
            (TdiState::Error { owner, .. }, _) => TdiState::Error { owner, blocking },
            (
                TdiState::Unbinding {
                    owner,
                    step: UnbindStep::Block(_),
                },
                Some(cursor),
            ) => TdiState::Unbinding {
                owner,
                step: UnbindStep::Block(cursor),
            },
            (
                TdiState::Unbinding {
                    owner,
                    step: UnbindStep::Block(_),
                },
                None,
            ) => TdiState::Unbinding {
                owner,
                step: UnbindStep::Stop,
            },
            (other, _) => other,
        }
    }

    /// The TDISP state the firmware believes the device is in. An unbind whose STOP was not
    /// acknowledged reports ERROR: the interface is neither usable nor released.
    pub const fn tdisp(&self) -> TdispState {
        match self {
            TdiState::Unbound => TdispState::ConfigUnlocked,
            TdiState::Locked { .. } => TdispState::ConfigLocked,
            TdiState::Run { .. } => TdispState::Run,
            TdiState::Error { .. }
            | TdiState::Unbinding {
                step: UnbindStep::Block(_) | UnbindStep::Stop,
                ..
            } => TdispState::Error,
            TdiState::Unbinding { .. } => TdispState::ConfigUnlocked,
        }
    }
}

/// The transition table. Pure: callers compute the next state, finish every other check, and
/// only then store it.
///
/// | from \ event | Bind(g)          | Map(g), Start(g) (g must own)     | DeviceError | Unbind          | Released    | HostTouch |
/// |--------------|------------------|-----------------------------------|-------------|-----------------|-------------|-----------|
/// | Unbound      | Locked(g)        | TdiNotBound                       | TdiNotBound | Unbound (no-op) | TdiNotBound | Unbound   |
/// | Locked(o)    | TdiAlreadyBound  | Locked / Run(o)                   | Error(o)    | Unbinding(Block)| TdiBound    | TdiBound  |
/// | Run(o)       | TdiAlreadyBound  | Run / TdiNotLocked                | Error(o)    | Unbinding(Block)| TdiBound    | TdiBound  |
/// | Error(o)     | TdiAlreadyBound  | TdiInError                        | unchanged   | Unbinding(*)    | TdiBound    | TdiBound  |
/// | Unbinding(o) | UnbindInProgress | UnbindInProgress                  | unchanged   | unchanged       | Unbound     | TdiBound  |
///
/// A guest other than the owner gets `NotOwner` for Map and Start in every bound state.
/// Unbind starts blocking from the first leaf for Locked and Run; from Error it goes on where
/// ERROR's blocking stands (`Block(cursor)`), or to `Stop` when every leaf is blocked.
/// "unchanged" for DeviceError means the state class: the operation still continues blocking.
pub fn transition(state: TdiState, event: Event) -> Result<TdiState, Error> {
    use Event as E;
    use TdiState as S;
    let owner = state.owner();
    match (state, event) {
        (S::Unbound, E::Bind(g)) => Ok(S::Locked { owner: g }),
        (S::Unbinding { .. }, E::Bind(_)) => Err(Error::UnbindInProgress),
        (_, E::Bind(_)) => Err(Error::TdiAlreadyBound),

        (S::Unbound, E::Map(_) | E::Start(_) | E::DeviceError | E::Released) => {
            Err(Error::TdiNotBound)
        }
        (_, E::Map(g) | E::Start(g)) if owner != Some(g) => Err(Error::NotOwner),
        (S::Locked { .. } | S::Run { .. }, E::Map(_)) => Ok(state),
        (S::Locked { owner }, E::Start(_)) => Ok(S::Run { owner }),
        (S::Run { .. }, E::Start(_)) => Err(Error::TdiNotLocked),
        (S::Error { .. }, E::Map(_) | E::Start(_)) => Err(Error::TdiInError),
        (S::Unbinding { .. }, E::Map(_) | E::Start(_)) => Err(Error::UnbindInProgress),

        (S::Locked { owner } | S::Run { owner }, E::DeviceError) => Ok(S::Error {
            owner,
            blocking: Some(Cursor::START),
        }),
        (S::Error { .. } | S::Unbinding { .. }, E::DeviceError) => Ok(state),

        (S::Unbound | S::Unbinding { .. }, E::Unbind) => Ok(state),
        (S::Locked { owner } | S::Run { owner }, E::Unbind) => Ok(S::Unbinding {
            owner,
            step: UnbindStep::Block(Cursor::START),
        }),
        (S::Error { owner, blocking }, E::Unbind) => Ok(S::Unbinding {
            owner,
            step: match blocking {
                Some(cursor) => UnbindStep::Block(cursor),
                None => UnbindStep::Stop,
            },
        }),

        (S::Unbinding { .. }, E::Released) => Ok(S::Unbound),
        (_, E::Released) => Err(Error::TdiBound),

        (S::Unbound, E::HostTouch) => Ok(S::Unbound),
        (_, E::HostTouch) => Err(Error::TdiBound),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: GuestId = GuestId::from_slot(1);
    const B: GuestId = GuestId::from_slot(2);

    fn all_states() -> [TdiState; 6] {
        [
            TdiState::Unbound,
            TdiState::Locked { owner: A },
            TdiState::Run { owner: A },
            TdiState::Error {
                owner: A,
                blocking: None,
            },
            TdiState::Unbinding {
                owner: A,
                step: UnbindStep::Stop,
            },
            TdiState::Unbinding {
                owner: A,
                step: UnbindStep::Remove(Cursor::START),
            },
        ]
    }

    #[test]
    fn bind_only_from_unbound() {
        for s in all_states() {
            let expect = match s {
                TdiState::Unbound => Ok(TdiState::Locked { owner: B }),
                TdiState::Unbinding { .. } => Err(Error::UnbindInProgress),
                _ => Err(Error::TdiAlreadyBound),
            };
            assert_eq!(transition(s, Event::Bind(B)), expect, "{s:?}");
        }
    }

    #[test]
    fn start_only_by_owner_from_locked() {
        for s in all_states() {
            let expect = match s {
                TdiState::Unbound => Err(Error::TdiNotBound),
                TdiState::Locked { .. } => Ok(TdiState::Run { owner: A }),
                TdiState::Run { .. } => Err(Error::TdiNotLocked),
                TdiState::Error { .. } => Err(Error::TdiInError),
                TdiState::Unbinding { .. } => Err(Error::UnbindInProgress),
            };
            assert_eq!(transition(s, Event::Start(A)), expect, "{s:?}");
            let other = if s.is_bound() {
                Err(Error::NotOwner)
            } else {
                Err(Error::TdiNotBound)
            };
            assert_eq!(transition(s, Event::Start(B)), other, "{s:?}");
        }
    }

    #[test]
    fn map_only_by_owner_while_locked_or_running() {
        for s in all_states() {
            let expect = match s {
                TdiState::Unbound => Err(Error::TdiNotBound),
                TdiState::Locked { .. } | TdiState::Run { .. } => Ok(s),
                TdiState::Error { .. } => Err(Error::TdiInError),
                TdiState::Unbinding { .. } => Err(Error::UnbindInProgress),
            };
            assert_eq!(transition(s, Event::Map(A)), expect, "{s:?}");
        }
    }

    #[test]
    fn device_error_and_unbind() {
        for s in all_states() {
            let err = transition(s, Event::DeviceError);
            let unbind = transition(s, Event::Unbind);
            match s {
                TdiState::Unbound => {
                    assert_eq!(err, Err(Error::TdiNotBound));
                    assert_eq!(unbind, Ok(TdiState::Unbound));
                }
                TdiState::Locked { .. } | TdiState::Run { .. } => {
                    assert_eq!(
                        err,
                        Ok(TdiState::Error {
                            owner: A,
                            blocking: Some(Cursor::START)
                        })
                    );
                    assert_eq!(
                        unbind,
                        Ok(TdiState::Unbinding {
                            owner: A,
                            step: UnbindStep::Block(Cursor::START)
                        })
                    );
                }
                TdiState::Error { .. } => {
                    assert_eq!(err, Ok(s));
                    // Blocking already done under ERROR is not redone.
                    assert_eq!(
                        unbind,
                        Ok(TdiState::Unbinding {
                            owner: A,
                            step: UnbindStep::Stop
                        })
                    );
                    let half = TdiState::Error {
                        owner: A,
                        blocking: Some(Cursor {
                            range: 1,
                            next: None,
                            rest: None,
                        }),
                    };
                    assert_eq!(
                        transition(half, Event::Unbind),
                        Ok(TdiState::Unbinding {
                            owner: A,
                            step: UnbindStep::Block(Cursor {
                                range: 1,
                                next: None,
                                rest: None,
                            })
                        })
                    );
                }
                TdiState::Unbinding { .. } => {
                    assert_eq!(err, Ok(s));
                    assert_eq!(unbind, Ok(s));
                }
            }
        }
    }

    #[test]
    fn host_touch_refused_whenever_bound_and_release_only_from_unbinding() {
        for s in all_states() {
            let touch = transition(s, Event::HostTouch);
            let release = transition(s, Event::Released);
            match s {
                TdiState::Unbound => {
                    assert_eq!(touch, Ok(s));
                    assert_eq!(release, Err(Error::TdiNotBound));
                }
                TdiState::Unbinding { .. } => {
                    assert_eq!(touch, Err(Error::TdiBound));
                    assert_eq!(release, Ok(TdiState::Unbound));
                }
                _ => {
                    assert_eq!(touch, Err(Error::TdiBound));
                    assert_eq!(release, Err(Error::TdiBound));
                }
            }
        }
    }

    #[test]
    fn tdisp_view() {
        assert_eq!(TdiState::Unbound.tdisp(), TdispState::ConfigUnlocked);
        assert_eq!(TdiState::Run { owner: A }.tdisp(), TdispState::Run);
        assert_eq!(
            TdiState::Unbinding {
                owner: A,
                step: UnbindStep::Stop
            }
            .tdisp(),
            TdispState::Error
        );
        assert_eq!(
            TdiState::Unbinding {
                owner: A,
                step: UnbindStep::Track
            }
            .tdisp(),
            TdispState::ConfigUnlocked
        );
        assert_eq!(TdispState::Error as u8, 3);
    }
}
