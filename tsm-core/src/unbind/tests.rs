//! Where the unbind machine asks the platform for a blocked context's IOTLB invalidation:
//! the platform calls each unbind call makes, in order, step by step, on a table that logs
//! them, for both orders of [`SecureTable::DMA_INVALIDATION_AFTER_LEAVES`]. `TlbNotFlushed` is
//! ignored where the request is only asked; any other refusal is the call's status, the step
//! it met it at kept.

use crate::dma::DmaState;
use crate::lifecycle::{Cursor, TdiState, UnbindStep};
use crate::mem_table::MemTable;
use crate::relay::host::Relayed;
use crate::secure_table::{Found, Leaf, PageRest, Run, SecureTable, TableError};
use crate::tests::{BAR, GPA, World, gpa, hpa, range, refused, world_on};
use crate::*;

/// The in-memory table, logging the calls an unbind's teardown makes (`AFTER`: its
/// `DMA_INVALIDATION_AFTER_LEAVES`). The log is no part of its state: a refusal that asked
/// again still changed nothing.
#[derive(Debug, Clone, Default)]
struct Logged<const AFTER: bool> {
    inner: MemTable<256>,
    log: Vec<&'static str>,
}

impl<const AFTER: bool> PartialEq for Logged<AFTER> {
    fn eq(&self, other: &Self) -> bool {
        self.inner == other.inner
    }
}

impl<const AFTER: bool> Logged<AFTER> {
    fn note<R>(&mut self, ok: &'static str, no: &'static str, r: &Result<R, TableError>) {
        self.log.push(if r.is_ok() { ok } else { no });
    }
}

impl<const AFTER: bool> SecureTable for Logged<AFTER> {
    const DMA_ACCEPT_BEFORE_START: bool = MemTable::<256>::DMA_ACCEPT_BEFORE_START;
    const DMA_INVALIDATION_AFTER_LEAVES: bool = AFTER;

    fn map(&mut self, g: GuestId, a: Gpa, h: Hpa, s: PageSize) -> Result<(), TableError> {
        self.inner.map(g, a, h, s)
    }
    fn block(&mut self, g: GuestId, a: Gpa, s: PageSize) -> Result<(), TableError> {
        self.inner.block(g, a, s)
    }
    fn track(&mut self, g: GuestId) -> Result<Completion, TableError> {
        self.inner.track(g)
    }
    fn track_within(&mut self, g: GuestId, work: &mut u32) -> Result<Completion, TableError> {
        let r = self.inner.track_within(g, work);
        self.note("track", "track:refused", &r);
        r
    }
    fn remove(&mut self, g: GuestId, a: Gpa, s: PageSize) -> Result<Hpa, TableError> {
        self.inner.remove(g, a, s)
    }
    fn leaf(&self, g: GuestId, a: Gpa) -> Option<Leaf> {
        self.inner.leaf(g, a)
    }
    fn next_leaf(&self, within: MmioRange, from: Hpa) -> Option<Leaf> {
        self.inner.next_leaf(within, from)
    }
    fn check_map(&self, g: GuestId, a: Gpa, h: Hpa, s: PageSize) -> Result<(), TableError> {
        self.inner.check_map(g, a, h, s)
    }
    fn check_block(&self, g: GuestId, a: Gpa, s: PageSize) -> Result<(), TableError> {
        self.inner.check_block(g, a, s)
    }
    fn check_remove(&self, g: GuestId, a: Gpa, s: PageSize) -> Result<(), TableError> {
        self.inner.check_remove(g, a, s)
    }
    fn find_leaves(
        &self,
        within: MmioRange,
        from: Hpa,
        rest: Option<PageRest>,
        max: u32,
        work: &mut u32,
    ) -> Found {
        self.inner.find_leaves(within, from, rest, max, work)
    }
    fn map_range(&mut self, g: GuestId, run: Run) -> Result<(), TableError> {
        self.inner.map_range(g, run)
    }
    fn block_range(&mut self, g: GuestId, run: Run) -> Result<u32, TableError> {
        let r = self.inner.block_range(g, run);
        self.note("block", "block:refused", &r);
        r
    }
    fn remove_range(&mut self, g: GuestId, run: Run) -> Result<u32, TableError> {
        self.inner.remove_range(g, run)
    }
    fn remove_range_within(
        &mut self,
        g: GuestId,
        run: Run,
        limit: u32,
    ) -> Result<Option<u32>, TableError> {
        let r = self.inner.remove_range_within(g, run, limit);
        self.note("remove", "remove:refused", &r);
        r
    }
    fn dma_create(&mut self, g: GuestId, i: InterfaceId) -> Result<(), TableError> {
        self.inner.dma_create(g, i)
    }
    fn dma_accept(&mut self, g: GuestId, i: InterfaceId) -> Result<(), TableError> {
        self.inner.dma_accept(g, i)
    }
    fn dma_block(&mut self, g: GuestId, i: InterfaceId) -> Result<(), TableError> {
        let r = self.inner.dma_block(g, i);
        self.note("dma_block", "dma_block:refused", &r);
        r
    }
    fn dma_invalidate(&mut self, g: GuestId, i: InterfaceId) -> Result<bool, TableError> {
        let r = self.inner.dma_invalidate(g, i);
        self.log.push(match r {
            Ok(true) => "inv:done",
            Ok(false) => "inv:out",
            Err(TableError::TlbNotFlushed) => "inv:not-yet",
            Err(_) => "inv:refused",
        });
        r
    }
    fn dma_remove(&mut self, g: GuestId, i: InterfaceId) -> Result<(), TableError> {
        let r = self.inner.dma_remove(g, i);
        self.note("dma_remove", "dma_remove:refused", &r);
        r
    }
    fn guest_destroyed(&mut self, g: GuestId) -> Result<(), TableError> {
        self.inner.guest_destroyed(g)
    }
    fn check_host(&self, g: GuestId, a: Gpa, h: Hpa) -> Result<(), TableError> {
        self.inner.check_host(g, a, h)
    }
}

type W<const AFTER: bool> = World<Relayed<Logged<AFTER>>>;

/// `t0` bound to `g1` with one leaf, its context accepted, running; the log empty.
fn running<const AFTER: bool>() -> W<AFTER> {
    let w = world_on(Logged::<AFTER>::default());
    let tsm = &w.tsm;
    let iface = tsm.tdi(w.t0).unwrap().iface;
    tsm.with_device(|d| d.report_ranges(iface, &[range(BAR, 512)]))
        .unwrap();
    tsm.bind(w.t0, w.g1).unwrap();
    tsm.map_mmio(w.t0, w.g1, gpa(GPA), hpa(BAR), PageSize::Size4K)
        .unwrap();
    tsm.host_dma_create(w.t0).unwrap();
    tsm.guest_dma_accept(w.g1, w.t0).unwrap();
    tsm.start_with_guest_accept(w.g1, w.t0).unwrap();
    take_log(&w);
    w
}

fn take_log<const AFTER: bool>(w: &W<AFTER>) -> Vec<&'static str> {
    w.tsm.with_table(|t| core::mem::take(&mut t.log)).unwrap()
}

fn with_inner<const AFTER: bool>(w: &W<AFTER>, f: impl FnOnce(&mut MemTable<256>)) {
    w.tsm.with_table(|t| f(&mut t.inner)).unwrap();
}

fn refuse_invalidation<const AFTER: bool>(w: &W<AFTER>, refusal: Option<TableError>) {
    with_inner(w, |t| t.refuse_invalidation(refusal));
}

fn step<const AFTER: bool>(w: &W<AFTER>) -> Option<UnbindStep> {
    match w.tsm.tdi(w.t0).unwrap().state {
        TdiState::Unbinding { step, .. } => Some(step),
        _ => None,
    }
}

/// One call: its status, the step it left the TDI at (`None`: not unbinding) and what it
/// asked the table, in order.
#[track_caller]
fn call<const AFTER: bool>(
    w: &W<AFTER>,
    forced: bool,
    status: TsmResult<Completion>,
    at: Option<UnbindStep>,
    log: &[&str],
) {
    let got = if forced {
        w.tsm.unbind_forced(w.t0)
    } else {
        w.tsm.unbind(w.t0)
    };
    assert_eq!(got, status, "AFTER {AFTER} forced {forced}");
    match at {
        // Exact, cursors included: a resume at the wrong place is a failure.
        Some(s) => assert_eq!(step(w), Some(s), "AFTER {AFTER}"),
        None => assert_eq!(step(w), None),
    }
    assert_eq!(take_log(w), log, "AFTER {AFTER} forced {forced}");
}

/// The same call refused with `err`, nothing changed, asking what `log` says.
#[track_caller]
fn call_refused<const AFTER: bool>(w: &W<AFTER>, forced: bool, err: Error, log: &[&str]) {
    refused(&w.tsm, err, || {
        if forced {
            w.tsm.unbind_forced(w.t0)
        } else {
            w.tsm.unbind(w.t0)
        }
    });
    assert_eq!(take_log(w), log, "AFTER {AFTER} forced {forced}");
}

/// The Block step's own requests: the context blocked in the first call, its invalidation
/// asked with the block (AFTER false) and after the last leaf (both: the latter a no-op once
/// the former was taken).
fn first_call(after: bool, answer: &'static str) -> Vec<&'static str> {
    if after {
        vec!["dma_block", "block", answer]
    } else {
        vec!["dma_block", answer, "block"]
    }
}

fn then<'a>(mut a: Vec<&'a str>, b: &[&'a str]) -> Vec<&'a str> {
    a.extend_from_slice(b);
    a
}

const PENDING: TsmResult<Completion> = Err(Error::IotlbInvalidationPending);
const DONE: TsmResult<Completion> = Ok(Completion::Done);
const TAIL: [&str; 3] = ["track", "remove", "dma_remove"];

/// The platform cannot take the request yet (`TlbNotFlushed`): a plain unbind asks after the
/// leaves and again before STOP, and waits there; a forced one asks at every step on (Stop
/// passes on to Track in the same call and asks nothing itself) and waits at Dma.
fn not_yet<const AFTER: bool>() {
    let not_yet = Some(TableError::TlbNotFlushed);
    let w = running::<AFTER>();
    refuse_invalidation(&w, not_yet);
    let mut log = first_call(AFTER, "inv:not-yet");
    if !AFTER {
        log.push("inv:not-yet");
    }
    log.push("inv:not-yet");
    call(&w, false, PENDING, Some(UnbindStep::Stop), &log);
    call_refused(&w, false, Error::IotlbInvalidationPending, &["inv:not-yet"]);
    refuse_invalidation(&w, None);
    call(&w, false, DONE, None, &then(vec!["inv:done"], &TAIL));

    let w = running::<AFTER>();
    refuse_invalidation(&w, not_yet);
    let mut log = first_call(AFTER, "inv:not-yet");
    if !AFTER {
        log.push("inv:not-yet");
    }
    log.extend([
        "inv:not-yet",
        "track",
        "inv:not-yet",
        "remove",
        "inv:not-yet",
    ]);
    call(&w, true, PENDING, Some(UnbindStep::Dma), &log);
    call_refused(&w, true, Error::IotlbInvalidationPending, &["inv:not-yet"]);
    refuse_invalidation(&w, None);
    call(&w, true, DONE, None, &["inv:done", "dma_remove"]);
}

/// Any other refusal is the call's status at the step that asked: after the leaves, the
/// Block step's (kept at Stop); then a plain unbind's Stop, a forced one's Track (its Stop
/// asks nothing), each again and again, nothing changed.
fn other_refusal<const AFTER: bool>() {
    let full = Err(Error::SecureTableFull);
    for forced in [false, true] {
        let w = running::<AFTER>();
        refuse_invalidation(&w, Some(TableError::OutOfFrames));
        let log = first_call(AFTER, "inv:refused");
        call(&w, forced, full, Some(UnbindStep::Stop), &log);
        if forced {
            call(&w, true, full, Some(UnbindStep::Track), &["inv:refused"]);
        }
        call_refused(&w, forced, Error::SecureTableFull, &["inv:refused"]);
        refuse_invalidation(&w, None);
        call(&w, forced, DONE, None, &then(vec!["inv:done"], &TAIL));
    }
}

/// Resumed at Track (the advance refused) or at Remove (the flush not complete): each asks
/// first, `TlbNotFlushed` ignored and the step's own work tried; any other refusal is the
/// status before that work.
fn resumed_steps<const AFTER: bool>() {
    let mut head = first_call(AFTER, "inv:not-yet");
    if !AFTER {
        head.push("inv:not-yet");
    }
    // Track: the epoch advance refused.
    let w = running::<AFTER>();
    refuse_invalidation(&w, Some(TableError::TlbNotFlushed));
    with_inner(&w, |t| t.refuse_track(Some(TableError::IotlbNotTracked)));
    let log = then(head.clone(), &["inv:not-yet", "track:refused"]);
    let not_tracked = Err(Error::IotlbNotTracked);
    call(&w, true, not_tracked, Some(UnbindStep::Track), &log);
    let again = ["inv:not-yet", "track:refused"];
    call_refused(&w, true, Error::IotlbNotTracked, &again);
    refuse_invalidation(&w, Some(TableError::OutOfFrames));
    call_refused(&w, true, Error::SecureTableFull, &["inv:refused"]);
    refuse_invalidation(&w, None);
    with_inner(&w, |t| t.refuse_track(None));
    call(&w, true, DONE, None, &then(vec!["inv:done"], &TAIL));

    // Remove: the flush the leaf waits for not complete.
    let w = running::<AFTER>();
    refuse_invalidation(&w, Some(TableError::TlbNotFlushed));
    let g1 = w.g1;
    with_inner(&w, |t| t.set_defer_flush(g1, true));
    let log = then(
        head.clone(),
        &["inv:not-yet", "track", "inv:not-yet", "remove:refused"],
    );
    let flush = Err(Error::TlbFlushPending);
    call(
        &w,
        true,
        flush,
        Some(UnbindStep::Remove(Cursor::START)),
        &log,
    );
    let again = ["inv:not-yet", "remove:refused"];
    call_refused(&w, true, Error::TlbFlushPending, &again);
    refuse_invalidation(&w, Some(TableError::OutOfFrames));
    call_refused(&w, true, Error::SecureTableFull, &["inv:refused"]);
    refuse_invalidation(&w, None);
    with_inner(&w, |t| t.complete_flush(g1));
    call(&w, true, DONE, None, &["inv:done", "remove", "dma_remove"]);
}

/// The request taken but not complete (TDX: waiting for TDH.IQ.INV.PROCESS): a plain unbind
/// asks once with the block (AFTER false) or after the leaves (AFTER true), then once more
/// before STOP, and waits there; a forced one waits at Dma, asking only there after the
/// first call's request.
fn taken_not_complete<const AFTER: bool>() {
    for forced in [false, true] {
        let w = running::<AFTER>();
        let g1 = w.g1;
        with_inner(&w, |t| t.set_defer_invalidations(g1, true));
        let mut log = first_call(AFTER, "inv:out");
        let at = if forced {
            log.extend(["track", "remove", "inv:out"]);
            UnbindStep::Dma
        } else {
            log.push("inv:out");
            UnbindStep::Stop
        };
        call(&w, forced, PENDING, Some(at), &log);
        call_refused(&w, forced, Error::IotlbInvalidationPending, &["inv:out"]);
        with_inner(&w, |t| t.complete_invalidations(g1));
        let rest: &[&str] = if forced {
            &["inv:done", "dma_remove"]
        } else {
            &["inv:done", "track", "remove", "dma_remove"]
        };
        call(&w, forced, DONE, None, rest);
        assert_eq!(w.tsm.tdi(w.t0).unwrap().dma, None::<DmaState>);
    }
}

#[test]
fn an_invalidation_not_taken_yet_is_asked_at_every_step_after_block() {
    not_yet::<false>();
    not_yet::<true>();
}

#[test]
fn any_other_refusal_is_the_status_of_the_step_that_asked() {
    other_refusal::<false>();
    other_refusal::<true>();
}

#[test]
fn a_resumed_track_or_remove_asks_before_its_own_work() {
    resumed_steps::<false>();
    resumed_steps::<true>();
}

#[test]
fn a_request_out_is_awaited_before_stop_or_at_dma_only() {
    taken_not_complete::<false>();
    taken_not_complete::<true>();
}
