//! Trusted DMA contexts: created by the host, accepted by the owner only, reaching private
//! memory only while the TDI runs, torn down by unbind in the enforced order, never changed by
//! the host out of order; every refusal changes nothing.

use crate::dma::{DmaReach, DmaState};
use crate::lifecycle::UnbindStep;
use crate::mem_table::{DmaEntry, MemTable};
use crate::relay::host::Relayed;
use crate::tests::{BAR, GPA, World, bound, gpa, range, refused, state};
use crate::*;

/// A world whose table makes a TDI's context when it is bound (`DMA_CONTEXT_AT_BIND`).
type BindWorld = World<crate::tests::TB>;

fn binding_world() -> BindWorld {
    crate::tests::world_on(crate::mem_table::MemTable::new())
}

/// The platform table's contexts.
fn contexts<const B: bool>(w: &World<Relayed<MemTable<256, B>>>) -> Vec<DmaEntry> {
    w.tsm.with_table(|t| t.dma_contexts().to_vec()).unwrap()
}

fn reach<Tab: SecureTable>(w: &World<Relayed<Tab>>, t: TdiId) -> DmaReach {
    w.tsm.dma_reach(t).unwrap()
}

fn dma<Tab: SecureTable>(w: &World<Relayed<Tab>>, t: TdiId) -> Option<DmaState> {
    w.tsm.tdi(t).unwrap().dma
}

/// `t0` bound to `g1` with one leaf, its context created and accepted, running.
fn running() -> World {
    let w = bound(1);
    w.tsm.host_dma_create(w.t0).unwrap();
    w.tsm.guest_dma_accept(w.g1, w.t0).unwrap();
    w.tsm.start_with_guest_accept(w.g1, w.t0).unwrap();
    w
}

/// Whether the guest's leaf at `GPA` is blocked (not removed, not mapped).
fn leaf_blocked(w: &World) -> bool {
    matches!(
        w.tsm.leaf(w.g1, gpa(GPA)).unwrap().map(|l| l.state),
        Some(crate::secure_table::LeafState::Blocked { .. })
    )
}

/// The table refuses a DMA context's invalidation request with `refusal` (`None`: takes it).
fn refuse_invalidation(w: &World, refusal: Option<crate::secure_table::TableError>) {
    w.tsm
        .with_table(|t| t.refuse_invalidation(refusal))
        .unwrap();
}

#[test]
fn dma_reaches_private_memory_only_running_with_the_context_accepted() {
    let w = bound(1);
    let tsm = &w.tsm;
    assert_eq!(reach(&w, w.t0), DmaReach::SharedOnly, "locked, no context");
    tsm.host_dma_create(w.t0).unwrap();
    assert_eq!(dma(&w, w.t0), Some(DmaState::Pending));
    assert_eq!(
        reach(&w, w.t0),
        DmaReach::SharedOnly,
        "created, not accepted"
    );
    tsm.guest_dma_accept(w.g1, w.t0).unwrap();
    assert_eq!(dma(&w, w.t0), Some(DmaState::Active));
    assert_eq!(
        reach(&w, w.t0),
        DmaReach::SharedOnly,
        "accepted, not running"
    );
    // Accepting again changes nothing.
    let before = tsm.snapshot().unwrap();
    assert_eq!(tsm.guest_dma_accept(w.g1, w.t0), Ok(()));
    assert_eq!(tsm.snapshot().unwrap(), before);
    tsm.start_with_guest_accept(w.g1, w.t0).unwrap();
    assert_eq!(reach(&w, w.t0), DmaReach::Private(w.g1));
    let ctx = contexts(&w);
    assert_eq!(ctx.len(), 1);
    assert_eq!((ctx[0].guest, ctx[0].state), (w.g1, DmaState::Active));
    // ERROR: the device is no longer trusted with the guest.
    assert_eq!(tsm.device_error(w.t0), Ok(Completion::Done));
    assert_eq!(reach(&w, w.t0), DmaReach::SharedOnly, "in ERROR");
}

#[test]
fn start_waits_for_the_owner_to_accept_the_context() {
    let w = bound(0);
    let tsm = &w.tsm;
    // No context, then a context created and not accepted: START is refused, nothing changes.
    refused(tsm, Error::DmaNotAccepted, || tsm.start_only(w.g1, w.t0));
    tsm.host_dma_create(w.t0).unwrap();
    refused(tsm, Error::DmaNotAccepted, || tsm.start_only(w.g1, w.t0));
    assert_eq!(reach(&w, w.t0), DmaReach::SharedOnly);
    // Another guest's accept is refused and does not open the gate.
    refused(tsm, Error::NotOwner, || tsm.guest_dma_accept(w.g2, w.t0));
    refused(tsm, Error::DmaNotAccepted, || tsm.start_only(w.g1, w.t0));
    // The owner's accept opens it.
    tsm.guest_dma_accept(w.g1, w.t0).unwrap();
    tsm.start_only(w.g1, w.t0).unwrap();
    assert_eq!(state(&w, w.t0), TdiState::Run { owner: w.g1 });
    assert_eq!(reach(&w, w.t0), DmaReach::Private(w.g1));
}

#[test]
fn dma_context_refusals_change_nothing() {
    let w = bound(1);
    let tsm = &w.tsm;
    // Unbound, unknown, no context, not the owner.
    refused(tsm, Error::TdiNotBound, || tsm.host_dma_create(w.t1));
    refused(tsm, Error::InvalidHandle, || {
        tsm.host_dma_create(TdiId::from_slot(99))
    });
    refused(tsm, Error::NoDmaContext, || {
        tsm.guest_dma_accept(w.g1, w.t0)
    });
    tsm.host_dma_create(w.t0).unwrap();
    refused(tsm, Error::DmaContextExists, || tsm.host_dma_create(w.t0));
    refused(tsm, Error::NotOwner, || tsm.guest_dma_accept(w.g2, w.t0));
    refused(tsm, Error::TdiNotBound, || tsm.guest_dma_accept(w.g1, w.t1));
    refused(tsm, Error::InvalidHandle, || {
        tsm.guest_dma_accept(GuestId::from_slot(30), w.t0)
    });
    // While the device can reach the guest, the host can neither disable, invalidate nor
    // remove the context (nor create another, above).
    refused(tsm, Error::TdiBound, || tsm.host_dma_block(w.t0));
    refused(tsm, Error::TdiBound, || tsm.host_dma_invalidate(w.t0));
    refused(tsm, Error::TdiBound, || tsm.host_dma_remove(w.t0));
    tsm.guest_dma_accept(w.g1, w.t0).unwrap();
    tsm.start_with_guest_accept(w.g1, w.t0).unwrap();
    refused(tsm, Error::TdiBound, || tsm.host_dma_block(w.t0));
    refused(tsm, Error::TdiBound, || tsm.host_dma_remove(w.t0));
    // In ERROR the context stays the firmware's until unbind.
    assert_eq!(tsm.device_error(w.t0), Ok(Completion::Done));
    refused(tsm, Error::TdiInError, || tsm.host_dma_create(w.t0));
    refused(tsm, Error::TdiInError, || tsm.guest_dma_accept(w.g1, w.t0));
    refused(tsm, Error::TdiBound, || tsm.host_dma_block(w.t0));
    assert_eq!(reach(&w, w.t0), DmaReach::SharedOnly);
}

#[test]
fn unbind_blocks_the_context_with_the_mmio_and_awaits_its_invalidation_before_stop() {
    let w = running();
    let tsm = &w.tsm;
    tsm.with_table(|t| t.set_defer_invalidations(w.g1, true))
        .unwrap();
    let got = tsm.unbind(w.t0);
    assert_eq!(got, Err(Error::IotlbInvalidationPending));
    // The MMIO and the context blocked, the context's invalidation requested and awaited
    // before STOP: the device still RUN (no cached translation outlives CONFIG_LOCKED), the
    // leaf blocked, the ranges still owned; the device reaches shared memory only.
    assert_eq!(
        state(&w, w.t0),
        TdiState::Unbinding {
            owner: w.g1,
            step: UnbindStep::Stop
        }
    );
    assert_eq!(
        tsm.with_device(|d| d.link_mut().tdisp_states()).unwrap()[0].1,
        crate::lifecycle::TdispState::Run,
        "no STOP sent"
    );
    assert!(leaf_blocked(&w));
    assert_eq!(dma(&w, w.t0), Some(DmaState::Invalidating));
    assert_eq!(contexts(&w)[0].state, DmaState::Invalidating);
    assert_eq!(tsm.owned_ranges(w.t0).unwrap().len(), 1);
    assert_eq!(reach(&w, w.t0), DmaReach::SharedOnly);
    // Calling again before the invalidation completes: the same status, nothing changes.
    refused(tsm, Error::IotlbInvalidationPending, || tsm.unbind(w.t0));
    // The platform completes it: the context goes, then the ranges.
    tsm.with_table(|t| t.complete_invalidations(w.g1)).unwrap();
    assert_eq!(tsm.unbind(w.t0), Ok(Completion::Done));
    assert_eq!(state(&w, w.t0), TdiState::Unbound);
    assert_eq!(dma(&w, w.t0), None);
    assert!(contexts(&w).is_empty());
    assert!(tsm.owned_ranges(w.t0).unwrap().is_empty());
    // Rebindable, with a new context.
    crate::tests::bind(tsm, w.t0, w.g1, &[range(BAR, 512)]).unwrap();
    tsm.host_dma_create(w.t0).unwrap();
    assert_eq!(dma(&w, w.t0), Some(DmaState::Pending));
}

#[test]
fn unbind_without_a_pending_invalidation_removes_the_context_in_one_call() {
    let w = running();
    assert_eq!(w.tsm.unbind(w.t0), Ok(Completion::Done));
    assert_eq!(dma(&w, w.t0), None);
    assert!(contexts(&w).is_empty());
    assert_eq!(reach(&w, w.t0), DmaReach::SharedOnly);
}

#[test]
fn a_forced_unbind_tears_the_context_down_too() {
    let w = running();
    let tsm = &w.tsm;
    tsm.with_device(|d| d.set_fault(crate::tests::rid(3, 0), Some(DeviceFault::NoResponse)))
        .unwrap();
    tsm.with_table(|t| t.set_defer_invalidations(w.g1, true))
        .unwrap();
    assert_eq!(
        tsm.unbind_forced(w.t0),
        Err(Error::IotlbInvalidationPending)
    );
    // The stream is cut: the device reaches nothing private, whatever the context's state.
    assert_eq!(reach(&w, w.t0), DmaReach::SharedOnly);
    // The TDI cannot be removed while the context remains.
    refused(tsm, Error::DmaContextRemains, || tsm.remove_tdi(w.t0));
    tsm.with_table(|t| t.complete_invalidations(w.g1)).unwrap();
    assert_eq!(tsm.unbind_forced(w.t0), Ok(Completion::Done));
    assert!(contexts(&w).is_empty());
    assert_eq!(tsm.remove_tdi(w.t0), Ok(()));
}

#[test]
fn the_host_tears_the_context_down_itself_after_stop_in_order_only() {
    let w = running();
    let tsm = &w.tsm;
    // The TLB flush waits: the unbind stops past STOP (the context's invalidation complete
    // before it), at the MMIO removal.
    tsm.with_table(|t| t.set_defer_flush(w.g1, true)).unwrap();
    assert_eq!(tsm.unbind(w.t0), Err(Error::TlbFlushPending));
    assert!(matches!(
        state(&w, w.t0),
        TdiState::Unbinding {
            step: UnbindStep::Remove(_),
            ..
        }
    ));
    // The unbind blocked the context with the MMIO and its invalidation completed before
    // STOP: the host's block and invalidate find that done (Ok, nothing changes); its removal
    // goes (the order's refusals: `the_host_cannot_invalidate_or_remove_..._out_of_order`).
    assert_eq!(dma(&w, w.t0), Some(DmaState::Invalidated));
    assert_eq!(contexts(&w)[0].state, DmaState::Invalidated);
    let before = tsm.snapshot().unwrap();
    tsm.host_dma_block(w.t0).unwrap();
    assert_eq!(tsm.snapshot().unwrap(), before);
    tsm.host_dma_invalidate(w.t0).unwrap();
    assert_eq!(tsm.snapshot().unwrap(), before);
    tsm.host_dma_remove(w.t0).unwrap();
    assert_eq!(dma(&w, w.t0), None);
    refused(tsm, Error::NoDmaContext, || tsm.host_dma_block(w.t0));
    // The unbind goes on and skips what the host did.
    tsm.with_table(|t| t.complete_flush(w.g1)).unwrap();
    assert_eq!(tsm.unbind(w.t0), Ok(Completion::Done));
    assert_eq!(state(&w, w.t0), TdiState::Unbound);
}

#[test]
fn the_host_cannot_invalidate_or_remove_an_active_context_out_of_order() {
    // The device's stream cut: the host may tear the TDI down, but only in order.
    let w = running();
    let tsm = &w.tsm;
    tsm.cut_stream(w.dev).unwrap();
    assert_eq!(
        dma(&w, w.t0),
        Some(DmaState::Active),
        "nothing blocked it yet"
    );
    assert_eq!(reach(&w, w.t0), DmaReach::SharedOnly, "the stream is cut");
    refused(tsm, Error::DmaNotBlocked, || tsm.host_dma_invalidate(w.t0));
    refused(tsm, Error::DmaNotBlocked, || tsm.host_dma_remove(w.t0));
    tsm.host_dma_block(w.t0).unwrap();
    refused(tsm, Error::IotlbInvalidationPending, || {
        tsm.host_dma_remove(w.t0)
    });
    tsm.host_dma_invalidate(w.t0).unwrap();
    tsm.host_dma_remove(w.t0).unwrap();
    assert_eq!(dma(&w, w.t0), None);
}

#[test]
fn a_device_in_error_has_its_dma_context_blocked_with_its_mmio() {
    let w = running();
    let tsm = &w.tsm;
    // Blocked with its MMIO and its invalidation asked (the in-memory table completes it).
    assert_eq!(tsm.device_error(w.t0), Ok(Completion::Done));
    assert_eq!(dma(&w, w.t0), Some(DmaState::Invalidated));
    assert_eq!(
        contexts(&w)[0].state,
        DmaState::Invalidated,
        "the platform's entry too"
    );
    // The unbind removes it.
    assert_eq!(tsm.unbind(w.t0), Ok(Completion::Done));
    assert!(contexts(&w).is_empty());
}

#[test]
fn an_unbind_blocks_the_context_before_it_asks_the_device_to_stop() {
    let w = running();
    let tsm = &w.tsm;
    // The device never answers STOP: the unbind waits at Stop, its context already blocked.
    tsm.with_device(|d| d.set_fault(crate::tests::rid(3, 0), Some(DeviceFault::NoResponse)))
        .unwrap();
    assert_eq!(tsm.unbind(w.t0), Err(Error::DeviceUnresponsive));
    assert_eq!(
        state(&w, w.t0),
        TdiState::Unbinding {
            owner: w.g1,
            step: UnbindStep::Stop
        }
    );
    // Blocked, and its invalidation asked (the in-memory table completes it at once).
    assert_eq!(contexts(&w)[0].state, DmaState::Invalidated);
}

/// The platform's part of an accept: `check` refuses before anything changes, `write` runs
/// with the context already accepted in the same table lock; a pending context the check
/// refuses stays pending, with the table as it was.
#[test]
fn an_accept_with_the_platforms_part_checks_first_then_writes_under_the_same_lock() {
    let w = bound(1);
    let tsm = &w.tsm;
    tsm.host_dma_create(w.t0).unwrap();
    // The platform's refusal: nothing changed, the core's record and table still pending.
    let before = tsm.snapshot().unwrap();
    let got = tsm.guest_dma_accept_with(
        w.g1,
        w.t0,
        |t, iface, state| {
            assert_eq!(state, DmaState::Pending);
            assert_eq!(t.dma_contexts()[0].iface, iface);
            Err("refused")
        },
        |_, _| -> Result<(), crate::secure_table::TableError> { panic!("written after a refusal") },
    );
    assert_eq!(got, Ok(Err("refused")));
    assert_eq!(tsm.snapshot().unwrap(), before);
    assert_eq!(dma(&w, w.t0), Some(DmaState::Pending));
    // The core's refusals come first: the platform's check never runs for them.
    refused(tsm, Error::NotOwner, || {
        tsm.guest_dma_accept_with(
            w.g2,
            w.t0,
            |_, _, _| -> Result<(), ()> { panic!("checked for another guest") },
            |_, _| Ok(()),
        )
    });
    // Accepted: `write` sees the context already active in the table it holds.
    let got = tsm.guest_dma_accept_with(
        w.g1,
        w.t0,
        |_, _, _| Ok::<(), ()>(()),
        |t, iface| {
            let c = t.dma_contexts()[0];
            assert_eq!((c.iface, c.state), (iface, DmaState::Active));
            Ok(7)
        },
    );
    assert_eq!(got, Ok(Ok(7)));
    assert_eq!(dma(&w, w.t0), Some(DmaState::Active));
    // Again, active: the check is told so, and its refusal changes nothing.
    let before = tsm.snapshot().unwrap();
    let got = tsm.guest_dma_accept_with(
        w.g1,
        w.t0,
        |_, _, state| {
            assert_eq!(state, DmaState::Active);
            Err(())
        },
        |_, _| Ok(()),
    );
    assert_eq!(got, Ok(Err(())));
    assert_eq!(tsm.snapshot().unwrap(), before);
}

/// A `write` that fails once the check passed is drift: `Inconsistent`, the accept kept with
/// record and table agreeing (the context translates only as the table says).
#[test]
fn a_failing_platform_write_after_the_accept_is_inconsistent_with_record_and_table_agreeing() {
    let w = bound(1);
    let tsm = &w.tsm;
    tsm.host_dma_create(w.t0).unwrap();
    let got = tsm.guest_dma_accept_with(
        w.g1,
        w.t0,
        |_, _, _| Ok::<(), ()>(()),
        |_, _| Err::<(), _>(crate::secure_table::TableError::Inconsistent),
    );
    assert_eq!(got, Err(Error::Inconsistent));
    assert_eq!(dma(&w, w.t0), Some(DmaState::Active));
    assert_eq!(contexts(&w)[0].state, DmaState::Active);
}

/// An IOTLB invalidation the platform cannot take yet (SEV: another fence of the guest out,
/// `TlbNotFlushed`) leaves the blocked context `Blocked`; every later call that continues the
/// teardown asks again: the next ERROR, the check, and the unbind (which waits before STOP).
#[test]
fn an_invalidation_the_platform_cannot_take_yet_is_asked_again_by_every_later_call() {
    use crate::secure_table::TableError;
    let not_yet = |w: &World, refuse: bool| {
        refuse_invalidation(w, refuse.then_some(TableError::TlbNotFlushed));
    };
    type Call = fn(&World) -> TsmResult<Completion>;
    let calls: [(&str, Call); 3] = [
        ("ERROR", |w| w.tsm.device_error(w.t0)),
        ("check", |w| w.tsm.check_interface(w.t0)),
        ("unbind", |w| w.tsm.unbind(w.t0)),
    ];
    for (what, call) in calls {
        let w = running();
        let tsm = &w.tsm;
        not_yet(&w, true);
        assert_eq!(tsm.device_error(w.t0), Ok(Completion::Done), "{what}");
        assert_eq!(dma(&w, w.t0), Some(DmaState::Blocked), "{what}");
        assert_eq!(contexts(&w)[0].state, DmaState::Blocked, "{what}");
        // Still out: each call asks, is told not yet, and changes nothing.
        let before = tsm.snapshot().unwrap();
        assert_eq!(tsm.device_error(w.t0), Ok(Completion::Done), "{what}");
        assert_eq!(tsm.check_interface(w.t0), Ok(Completion::Done), "{what}");
        assert_eq!(tsm.snapshot().unwrap(), before, "{what}");
        // The platform can take it now: this call asks, and the context is invalidated.
        not_yet(&w, false);
        assert_eq!(call(&w), Ok(Completion::Done), "{what}");
        if what == "unbind" {
            assert_eq!(dma(&w, w.t0), None);
            assert!(contexts(&w).is_empty());
        } else {
            assert_eq!(dma(&w, w.t0), Some(DmaState::Invalidated), "{what}");
            assert_eq!(contexts(&w)[0].state, DmaState::Invalidated, "{what}");
        }
    }
}

/// An unbind whose invalidation the platform cannot take yet waits before STOP with the
/// documented status (`IotlbInvalidationPending`, not the TLB's), the progress kept, and goes
/// on once the platform takes it. A forced unbind (no STOP) asks again at each later step.
#[test]
fn an_unbind_whose_invalidation_cannot_be_asked_yet_waits_before_stop_as_the_iotlb() {
    use crate::secure_table::TableError;
    let w = running();
    let tsm = &w.tsm;
    refuse_invalidation(&w, Some(TableError::TlbNotFlushed));
    assert_eq!(tsm.unbind(w.t0), Err(Error::IotlbInvalidationPending));
    assert_eq!(
        state(&w, w.t0),
        TdiState::Unbinding {
            owner: w.g1,
            step: UnbindStep::Stop
        }
    );
    assert_eq!(dma(&w, w.t0), Some(DmaState::Blocked));
    refused(tsm, Error::IotlbInvalidationPending, || tsm.unbind(w.t0));
    refuse_invalidation(&w, None);
    assert_eq!(tsm.unbind(w.t0), Ok(Completion::Done));
    assert!(contexts(&w).is_empty());

    let w = running();
    let tsm = &w.tsm;
    refuse_invalidation(&w, Some(TableError::TlbNotFlushed));
    assert_eq!(
        tsm.unbind_forced(w.t0),
        Err(Error::IotlbInvalidationPending)
    );
    assert_eq!(dma(&w, w.t0), Some(DmaState::Blocked));
    refused(tsm, Error::IotlbInvalidationPending, || {
        tsm.unbind_forced(w.t0)
    });
    refuse_invalidation(&w, None);
    assert_eq!(tsm.unbind_forced(w.t0), Ok(Completion::Done));
    assert!(contexts(&w).is_empty());
}

/// Any other refusal of the invalidation's request is never dropped: the call that asked
/// answers it as its precise status, the context (and the leaves) still blocked; the next
/// call asks again.
#[test]
fn any_other_refusal_of_the_invalidation_is_the_calls_status() {
    use crate::secure_table::TableError;
    let refuse = |w: &World, on: bool| {
        refuse_invalidation(w, on.then_some(TableError::OutOfFrames));
    };
    // ERROR: blocked, the refusal its status; the next ERROR and the check report it again.
    let w = running();
    let tsm = &w.tsm;
    refuse(&w, true);
    assert_eq!(tsm.device_error(w.t0), Err(Error::SecureTableFull));
    assert_eq!(dma(&w, w.t0), Some(DmaState::Blocked));
    assert_eq!(reach(&w, w.t0), DmaReach::SharedOnly);
    assert!(leaf_blocked(&w));
    refused(tsm, Error::SecureTableFull, || tsm.device_error(w.t0));
    refused(tsm, Error::SecureTableFull, || tsm.check_interface(w.t0));
    refuse(&w, false);
    assert_eq!(tsm.device_error(w.t0), Ok(Completion::Done));
    assert_eq!(dma(&w, w.t0), Some(DmaState::Invalidated));

    // Unbind: refused with the context and the leaves blocked and that progress kept (at
    // Stop, which asks again before it sends anything), no STOP sent; the host's own request
    // answers the same.
    let w = running();
    let tsm = &w.tsm;
    refuse(&w, true);
    assert_eq!(tsm.unbind(w.t0), Err(Error::SecureTableFull));
    assert!(matches!(
        state(&w, w.t0),
        TdiState::Unbinding {
            step: UnbindStep::Stop,
            ..
        }
    ));
    assert_eq!(dma(&w, w.t0), Some(DmaState::Blocked));
    assert_eq!(
        tsm.with_device(|d| d.link_mut().tdisp_states()).unwrap()[0].1,
        crate::lifecycle::TdispState::Run,
        "no STOP sent"
    );
    refused(tsm, Error::SecureTableFull, || tsm.unbind(w.t0));
    refuse(&w, false);
    assert_eq!(tsm.unbind(w.t0), Ok(Completion::Done));
    assert!(contexts(&w).is_empty());
}

/// A refused context block never stops the MMIO: ERROR and the unbind block every leaf all
/// the same, keep that progress, answer the refusal, and block the context again on the next
/// call; no STOP goes out while it still translates, and once the table takes the block the
/// unbind ends.
#[test]
fn a_refused_context_block_still_blocks_every_leaf_and_is_asked_again() {
    use crate::secure_table::TableError;
    let refuse = |w: &World, on: bool| {
        w.tsm
            .with_table(|t| t.refuse_block(on.then_some(TableError::Inconsistent)))
            .unwrap();
    };
    // ERROR: the leaves blocked, the context still active, asked again by the next call.
    let w = running();
    let tsm = &w.tsm;
    refuse(&w, true);
    assert_eq!(tsm.device_error(w.t0), Err(Error::Inconsistent));
    assert!(leaf_blocked(&w));
    assert_eq!(dma(&w, w.t0), Some(DmaState::Active));
    refused(tsm, Error::Inconsistent, || tsm.device_error(w.t0));
    refuse(&w, false);
    assert_eq!(tsm.device_error(w.t0), Ok(Completion::Done));
    assert_eq!(dma(&w, w.t0), Some(DmaState::Invalidated));

    // Unbind: the leaves blocked, the step still Block, no STOP sent; then it ends.
    let w = running();
    let tsm = &w.tsm;
    refuse(&w, true);
    assert_eq!(tsm.unbind(w.t0), Err(Error::Inconsistent));
    assert!(leaf_blocked(&w));
    assert!(matches!(
        state(&w, w.t0),
        TdiState::Unbinding {
            step: UnbindStep::Block(_),
            ..
        }
    ));
    assert_eq!(dma(&w, w.t0), Some(DmaState::Active));
    assert_eq!(
        tsm.with_device(|d| d.link_mut().tdisp_states()).unwrap()[0].1,
        crate::lifecycle::TdispState::Run,
        "no STOP sent"
    );
    refused(tsm, Error::Inconsistent, || tsm.unbind(w.t0));
    refuse(&w, false);
    assert_eq!(tsm.unbind(w.t0), Ok(Completion::Done));
    assert!(contexts(&w).is_empty());
}

/// Drives `tdi`'s bind to `guest` through [`Tsm::device_response_binding`], the device
/// reporting `ranges`; `fill` is the platform's write of the new context (`fills` counts it).
fn bind_creating<const B: bool>(
    w: &World<Relayed<MemTable<256, B>>>,
    tdi: TdiId,
    guest: GuestId,
    ranges: &[MmioRange],
    fills: &core::cell::Cell<u32>,
    fill: fn() -> Result<(), crate::secure_table::TableError>,
) -> TsmResult<()> {
    let tsm = &w.tsm;
    let iface = tsm.tdi(tdi)?.iface;
    tsm.with_device(|d| d.report_ranges(iface, ranges))?;
    let mut buf = [0u8; crate::relay::MAX_RELAY_BYTES];
    let mut outcome = tsm.firmware().bind(tdi, guest, &mut buf);
    for _ in 0..crate::relay::host::MAX_RELAY_ROUNDS {
        let Ok(Completion::Relay(n)) = outcome else {
            return outcome.map(drop);
        };
        // Never bound without the context, at any round (on a table that makes it at bind).
        let record = tsm.tdi(tdi)?;
        assert!(!B || record.state.owner().is_some() == record.dma.is_some());
        let mut answer = [0u8; crate::relay::MAX_RELAY_BYTES];
        let len = tsm.with_device(|d| d.answer(&buf[..n], &mut answer))?;
        let response = len.map(|k| &answer[..k]);
        outcome = tsm
            .firmware()
            .device_response_binding(tdi, response, &mut buf, |t, owner, i| {
                fills.set(fills.get() + 1);
                // The context is there, pending, the bind's.
                assert!(
                    t.dma_contexts()
                        .iter()
                        .any(|c| (c.guest, c.iface, c.state) == (owner, i, DmaState::Pending))
                );
                fill()
            });
    }
    panic!("the bind never ended");
}

/// A platform whose bind sets up the DMA context (SEV-TIO's TDI_BIND): the answer that binds
/// creates it in the same call and locks, `fill` once; no round ever shows the TDI bound
/// without it. A bind refused on either half changes nothing.
#[test]
fn a_bind_that_creates_the_context_binds_and_creates_in_one_call() {
    let w = binding_world();
    let tsm = &w.tsm;
    let fills = core::cell::Cell::new(0);
    bind_creating(&w, w.t0, w.g1, &[range(BAR, 512)], &fills, || Ok(())).unwrap();
    assert_eq!(fills.get(), 1);
    assert_eq!(state(&w, w.t0), TdiState::Locked { owner: w.g1 });
    assert_eq!(dma(&w, w.t0), Some(DmaState::Pending));
    let iface = tsm.tdi(w.t0).unwrap().iface;
    assert_eq!(
        contexts(&w),
        [DmaEntry {
            guest: w.g1,
            iface,
            state: DmaState::Pending
        }]
    );
    // The host's own create finds it there.
    refused(tsm, Error::DmaContextExists, || tsm.host_dma_create(w.t0));
    // The bind half refused (a report the firmware will not trust): no context, no fill.
    refused(tsm, Error::EmptyReport, || {
        bind_creating(&w, w.t1, w.g1, &[], &fills, || Ok(()))
    });
    // The create half refused (a context the table holds for the interface already): nothing
    // claimed, the LOCK undone, nothing changed.
    let iface1 = tsm.tdi(w.t1).unwrap().iface;
    tsm.with_table(|t| t.dma_create(w.g2, iface1))
        .unwrap()
        .unwrap();
    refused(tsm, Error::DmaContextExists, || {
        bind_creating(&w, w.t1, w.g1, &[range(BAR + 0x20_0000, 4)], &fills, || {
            Ok(())
        })
    });
    assert_eq!(fills.get(), 1);
    assert_eq!(
        tsm.with_device(|d| d.state(crate::tests::rid(3, 1)))
            .unwrap(),
        crate::lifecycle::TdispState::ConfigUnlocked
    );
}

/// Whether a bind makes the context is the table's ([`SecureTable::DMA_CONTEXT_AT_BIND`]), not
/// the entry point's: on a table that makes it, a plain device response that completes the
/// bind creates it (the unbind removes it); on one that does not, a `fill` never runs and the
/// bind makes none (the host creates it).
#[test]
fn the_table_decides_whether_a_bind_makes_the_context() {
    let w = binding_world();
    let tsm = &w.tsm;
    let iface = tsm.tdi(w.t0).unwrap().iface;
    tsm.with_device(|d| d.report_ranges(iface, &[range(BAR, 512)]))
        .unwrap();
    tsm.bind(w.t0, w.g1).unwrap();
    assert_eq!(state(&w, w.t0), TdiState::Locked { owner: w.g1 });
    assert_eq!(dma(&w, w.t0), Some(DmaState::Pending));
    assert_eq!(
        contexts(&w),
        [DmaEntry {
            guest: w.g1,
            iface,
            state: DmaState::Pending
        }]
    );
    assert_eq!(tsm.unbind(w.t0), Ok(Completion::Done));
    assert_eq!(dma(&w, w.t0), None);
    assert!(contexts(&w).is_empty());

    let w = crate::tests::world();
    let fills = core::cell::Cell::new(0);
    bind_creating(&w, w.t0, w.g1, &[range(BAR, 512)], &fills, || Ok(())).unwrap();
    assert_eq!(fills.get(), 0);
    assert_eq!(state(&w, w.t0), TdiState::Locked { owner: w.g1 });
    assert_eq!(dma(&w, w.t0), None);
    assert!(contexts(&w).is_empty());
    w.tsm.host_dma_create(w.t0).unwrap();
    assert_eq!(dma(&w, w.t0), Some(DmaState::Pending));
}

/// Review s23 M1: a claim refused by drift, on a table that makes the context at bind, leaves
/// no context behind (the claim is built before the create, and its commit cannot refuse);
/// and an unbound TDI that has a context is drift at the bind's start, before the device is
/// asked anything.
#[test]
fn a_drifted_claim_makes_no_context_and_a_context_on_an_unbound_tdi_is_drift() {
    let w = binding_world();
    let tsm = &w.tsm;
    let fills = core::cell::Cell::new(0);
    bind_creating(&w, w.t1, w.g1, &[range(BAR + 0x20_0000, 4)], &fills, || {
        Ok(())
    })
    .unwrap();
    fills.set(0);
    tsm.drift_ownership_for_test();
    refused(tsm, Error::Inconsistent, || {
        bind_creating(&w, w.t0, w.g1, &[range(BAR, 512)], &fills, || Ok(()))
    });
    assert_eq!(fills.get(), 0);
    assert_eq!(dma(&w, w.t0), None);
    assert_eq!(contexts(&w).len(), 1, "t1's alone");
    assert_eq!(state(&w, w.t0), TdiState::Unbound);

    let w = binding_world();
    let tsm = &w.tsm;
    tsm.set_dma_for_test(w.t0, Some(DmaState::Pending));
    let mut buf = [0u8; crate::relay::MAX_RELAY_BYTES];
    refused(tsm, Error::Inconsistent, || {
        tsm.firmware().bind(w.t0, w.g1, &mut buf).map(drop)
    });
}

/// A create the table refuses (its entries full) refuses the bind before anything is claimed:
/// the ranges stay free, no context, no fill, the LOCK undone; the same bind then goes through.
#[test]
fn a_refused_create_at_the_bind_claims_nothing() {
    use crate::secure_table::TableError;
    let w = binding_world();
    let tsm = &w.tsm;
    let fills = core::cell::Cell::new(0);
    tsm.with_table(|t| t.refuse_create(Some(TableError::OutOfFrames)))
        .unwrap();
    refused(tsm, Error::SecureTableFull, || {
        bind_creating(&w, w.t0, w.g1, &[range(BAR, 512)], &fills, || Ok(()))
    });
    assert_eq!(fills.get(), 0);
    assert!(tsm.owned_ranges(w.t0).unwrap().is_empty());
    assert_eq!(
        tsm.with_device(|d| d.state(crate::tests::rid(3, 0)))
            .unwrap(),
        crate::lifecycle::TdispState::ConfigUnlocked
    );
    tsm.with_table(|t| t.refuse_create(None)).unwrap();
    bind_creating(&w, w.t0, w.g1, &[range(BAR, 512)], &fills, || Ok(())).unwrap();
    assert_eq!(fills.get(), 1);
    assert_eq!(tsm.owned_ranges(w.t0).unwrap().len(), 1);
    assert_eq!(dma(&w, w.t0), Some(DmaState::Pending));
}

/// A `fill` that fails after the bind's create is drift: `Inconsistent`, the TDI bound with its
/// context created and not translating, record and table agreeing.
#[test]
fn a_failing_fill_at_the_bind_is_inconsistent_with_the_tdi_bound_and_its_context_there() {
    let w = binding_world();
    let fills = core::cell::Cell::new(0);
    let got = bind_creating(&w, w.t0, w.g1, &[range(BAR, 512)], &fills, || {
        Err(crate::secure_table::TableError::Inconsistent)
    });
    assert_eq!(got, Err(Error::Inconsistent));
    assert_eq!(state(&w, w.t0), TdiState::Locked { owner: w.g1 });
    assert_eq!(dma(&w, w.t0), Some(DmaState::Pending));
    assert_eq!(contexts(&w)[0].state, DmaState::Pending);
    assert_eq!(reach(&w, w.t0), DmaReach::SharedOnly);
}

/// A START the device refuses puts the TDI in ERROR and blocks its context; a refusal of the
/// invalidation's request there is not the call's status (the device's fault is) but is not
/// lost: the next call that continues the teardown answers it.
#[test]
fn a_refused_invalidation_after_a_refused_start_is_the_next_calls_status() {
    use crate::secure_table::TableError;
    let w = bound(1);
    let tsm = &w.tsm;
    tsm.host_dma_create(w.t0).unwrap();
    tsm.guest_dma_accept(w.g1, w.t0).unwrap();
    tsm.with_device(|d| d.set_fault(crate::tests::rid(3, 0), Some(DeviceFault::Refused)))
        .unwrap();
    refuse_invalidation(&w, Some(TableError::OutOfFrames));
    assert_eq!(
        tsm.start_with_guest_accept(w.g1, w.t0),
        Err(Error::DeviceRefused)
    );
    assert!(matches!(state(&w, w.t0), TdiState::Error { .. }));
    assert_eq!(dma(&w, w.t0), Some(DmaState::Blocked));
    refused(tsm, Error::SecureTableFull, || tsm.device_error(w.t0));
    refuse_invalidation(&w, None);
    assert_eq!(tsm.device_error(w.t0), Ok(Completion::Done));
    assert_eq!(dma(&w, w.t0), Some(DmaState::Invalidated));
}

/// The two IOTLB waits are two statuses, decided inside the call under its locks: an unbind
/// the table refuses for the guest's domain (the track's invalidation still owed, TDX) answers
/// `IotlbNotTracked` at its Track step; one waiting for its context's own invalidation answers
/// `IotlbInvalidationPending` before STOP (forced: at its Dma step). Each keeps its progress,
/// answers the same again changing nothing, and goes on once the wait is over.
#[test]
fn an_unbind_names_which_iotlb_wait_it_met() {
    use crate::secure_table::TableError;
    let at = |w: &World, step| TdiState::Unbinding { owner: w.g1, step };
    for forced in [false, true] {
        let unbind = |w: &World| {
            if forced {
                w.tsm.unbind_forced(w.t0)
            } else {
                w.tsm.unbind(w.t0)
            }
        };
        // The guest's domain: the leaves blocked, STOP answered, the context invalidated; the
        // epoch advance refused, the step kept at Track.
        let w = running();
        let tsm = &w.tsm;
        tsm.with_table(|t| t.refuse_track(Some(TableError::IotlbNotTracked)))
            .unwrap();
        assert_eq!(unbind(&w), Err(Error::IotlbNotTracked), "forced {forced}");
        assert_eq!(state(&w, w.t0), at(&w, UnbindStep::Track));
        assert_eq!(dma(&w, w.t0), Some(DmaState::Invalidated));
        assert!(leaf_blocked(&w));
        refused(tsm, Error::IotlbNotTracked, || unbind(&w));
        tsm.with_table(|t| t.refuse_track(None)).unwrap();
        assert_eq!(unbind(&w), Ok(Completion::Done));
        assert_eq!(state(&w, w.t0), TdiState::Unbound);
        assert!(contexts(&w).is_empty());

        // The context's own: before STOP (forced: the leaves gone, at the Dma step).
        let w = running();
        let tsm = &w.tsm;
        tsm.with_table(|t| t.set_defer_invalidations(w.g1, true))
            .unwrap();
        assert_eq!(
            unbind(&w),
            Err(Error::IotlbInvalidationPending),
            "forced {forced}"
        );
        let step = if forced {
            UnbindStep::Dma
        } else {
            UnbindStep::Stop
        };
        assert_eq!(state(&w, w.t0), at(&w, step));
        assert_eq!(dma(&w, w.t0), Some(DmaState::Invalidating));
        refused(tsm, Error::IotlbInvalidationPending, || unbind(&w));
        tsm.with_table(|t| t.complete_invalidations(w.g1)).unwrap();
        assert_eq!(unbind(&w), Ok(Completion::Done));
        assert_eq!(state(&w, w.t0), TdiState::Unbound);
        assert!(contexts(&w).is_empty());
    }
}
