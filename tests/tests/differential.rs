//! Differential property test: one generator of host, guest and device operation sequences,
//! run on four firmwares through their own interfaces, which must agree after every step.
//!
//! The firmwares: the core driven directly (`CoreBackend`, in-memory secure table), TDX with a
//! 4-level and with a 5-level S-EPT (`TdxBackend`: SEAMCALL register blocks through
//! platform-tdx's dispatcher) and SEV-TIO (`SevBackend`: command buffers through
//! platform-sev's dispatcher, RMP in memory). All four reserve the same memory at init.
//!
//! A case is a small world (2-3 guests; two devices, one of them sometimes with a second small
//! BAR; 2-4 TDIs, among them the second function of a device) and 12-28 phrases, at most 80
//! operations. A phrase has a purpose: bring a TDI up (bind with a well-formed report, map
//! pages of its ranges, sometimes a run of up to 100 4K maps so that unbind and device errors
//! take several `Resumable` calls, often start it); unbind calls; a live TDI's device goes to
//! ERROR (disturb or reset and a check, a reported error, a refused START); its device stops
//! answering across unbind calls; its owner holds TLB flushes across unbind calls; the host
//! goes after a bound leaf and zaps a BAR; a device reports ranges the firmware must refuse;
//! a TDI, its device or a guest goes away and comes back (slots and contexts reused). Or a
//! phrase is one operation of any kind: binds with well-formed or hostile reports (outside
//! the BARs, past a BAR's end, overlapping, misaligned, empty, wrapping, too many ranges,
//! reserved memory, the whole BAR or another TDI's share), maps (a page the TDI owns for its
//! owner; or misaligned, reserved, outside the BARs, another TDI's page, for a guest that is
//! not the owner, an unknown guest or TDI), starts, device errors, checks, unbinds, forced
//! unbinds and stream set-ups, host unmap/block (a leaf exactly, misaligned, with the wrong
//! size, another guest's; any address), zaps (a BAR, part of one, outside the BARs), device
//! events and misbehaviour (silent, refuse, garbage, wrong interface or version, inconsistent
//! report, none), held or released flushes, removals and creations, and raw handles no
//! firmware gave out.
//!
//! Operations name objects by index (or "the k-th bound / unbound / live TDI"); each
//! firmware's own handles come from its world setup and its creations. Operations that depend
//! on state (a page the TDI owns, its owner, a leaf the host goes after) are resolved against
//! the core before they run, so every firmware gets the same concrete call.
//!
//! After every step: the outcome (`Ok`, `Resumable`, or the core `Error`) is equal on all four,
//! after [`normalise`]; every TDI's state as each firmware's interface reports it (class,
//! owner, and for ERROR whether the block walk is done: what the TDX state leaf can say), the
//! ranges each TDI owns, every guest's bound-TDI count, the device's TDISP state of every
//! interface, and every private leaf (guest, GPA, HPA, size, mapped or blocked) agree; each
//! leaf any firmware holds is also read back through every firmware's leaf query (the TDX
//! S-EPT read leaf, the RMP). `tsm_tests::invariants::check` holds on each firmware. At the
//! end every device behaves again, every flush completes, and every TDI is unbound to `Done`
//! on all four, leaving no leaf.
//!
//! A failure prints the step-by-step trace of the shrunk case (each call in scenario-like
//! syntax with its outcome, and every firmware's outcome where they differ), what disagreed,
//! and the shrunk operation list.
//!
//! Cases: [`DEFAULT_CASES`] per run, about 7000 steps on four firmwares (8 s of CPU in a debug
//! build, 15 s on a 2-vCPU machine busy with other builds). `TSM_DIFF_CASES` sets another number for long runs, e.g.
//! `TSM_DIFF_CASES=20000 cargo test -p tsm-tests --release --test differential -- --nocapture`
//! (`--nocapture` also prints how many cases reached each state and outcome);
//! `PROPTEST_RNG_SEED=<u64>` replays a run.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};
use std::time::Instant;

use platform_sev::{RmpEntry, rmp_index_words};
use platform_tdx::frames::{FramePool, Page};
use platform_tdx::sept::{Sept, SeptLevels};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{
    Config, RngSeed, TestCaseError, TestCaseResult, TestError, TestRunner,
};
use tsm_core::device_model::{DeviceEvent, Misbehaviour, ModelDevice};
use tsm_core::mem_table::MemTable;
use tsm_core::relay::host::{RelayHost, Relayed};
use tsm_core::tdisp::report::{RANGE_ATTR_NON_TEE, WireMmioRange, wire_range};
use tsm_core::{
    Completion, DeviceId, Error, Gpa, GuestId, Hpa, LeafState, MmioRange, ModelSession, PageSize,
    RequesterId, ReservedMemory, SecureSession, SecureTable, TdiId, TdiState, TdispState,
    TsmResult,
};
use tsm_tests::backend::{Backend, CoreBackend, FlushControl};
use tsm_tests::backend_sev::{MEM_BASE, MEM_PAGES, SevBackend};
use tsm_tests::backend_tdx::{TdxBackend, TdxFirmware};
use tsm_tests::invariants::{self, Violation};

// ------------------------------------------------------------------------------------------
// Run size.

/// Cases per run when `TSM_DIFF_CASES` is not set.
const DEFAULT_CASES: u32 = 160;
/// Below this many cases the reach fractions are printed but not required.
const MIN_CASES_FOR_REACH: usize = 100;

/// The cases a run draws: a fixed seed by default, so that the reach fractions below (which a
/// random draw of 160 cases could miss by chance) make CI fail only on a real change;
/// `PROPTEST_RNG_SEED=<u64>` draws others (long runs should set it, or `TSM_DIFF_CASES`).
fn seed() -> RngSeed {
    if std::env::var_os("PROPTEST_RNG_SEED").is_some() {
        Config::default().rng_seed
    } else {
        RngSeed::Fixed(0x7473_6d2d_6469_6666)
    }
}

fn cases() -> u32 {
    match std::env::var("TSM_DIFF_CASES") {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("TSM_DIFF_CASES={v:?} is not a number")),
        Err(_) => DEFAULT_CASES,
    }
}

// ------------------------------------------------------------------------------------------
// The world: where everything lives.

/// First page of every firmware's secure-table window (the SEV RMP covers exactly it).
const WINDOW_BASE: u64 = 0x8000_0000;
/// Pages of the window: both devices' BARs and an unclaimed stretch behind them.
const WINDOW_PAGES: usize = 0xc00;
/// BAR 0 of device 0 (1024 pages) and its optional BAR 1 (16 pages).
const DEV0_BAR0: u64 = 0x8000_0000;
const DEV0_BAR1: u64 = 0x8040_0000;
/// BAR 0 of device 1 (512 or 1024 pages).
const DEV1_BAR0: u64 = 0x8060_0000;
/// Inside the window, no device's BAR.
const OUTSIDE_BARS: u64 = 0x80b0_0000;
/// Where each TDX firmware's S-EPT pool pretends to live (reserved, never MMIO).
const POOL4_PHYS: u64 = 0x20_0000_0000;
const POOL5_PHYS: u64 = 0x21_0000_0000;
/// S-EPT pool pages per TDX firmware: far more than any case's tables need.
const POOL_PAGES: usize = 512;
/// Leaves the core's in-memory table holds: more than the window has pages.
const CORE_LEAVES: usize = 4096;
/// Guest addresses: 4K leaves, 2M leaves, 1G leaves, and runs of 4K leaves.
const GPA_4K: u64 = 0x10_0000_0000;
const GPA_2M: u64 = 0x10_4000_0000;
const GPA_1G: u64 = 0x40_0000_0000;
const GPA_RUN: u64 = 0x20_0000_0000;

/// The shape of one case's world.
#[derive(Debug, Clone, Copy)]
struct WorldSpec {
    guests: usize,
    /// Device 0 has BAR 1 (16 pages, e.g. an MSI-X table).
    bar1: bool,
    /// Pages of device 1's BAR 0.
    dev1_pages: u64,
    /// 2-4 TDIs: device 0 functions 0 and 1, then device 1 functions 0 and 3.
    tdis: usize,
}

/// One TDI of the world.
#[derive(Debug, Clone, Copy)]
struct TdiSpec {
    dev: usize,
    iface: RequesterId,
}

fn rid(bus: u8, function: u8) -> RequesterId {
    RequesterId::try_new(0, bus, 0, function).unwrap()
}

impl WorldSpec {
    fn device_rid(&self, d: usize) -> RequesterId {
        rid(3 + d as u8, 0)
    }

    fn bars(&self, d: usize) -> Vec<MmioRange> {
        match d {
            0 if self.bar1 => vec![
                MmioRange::from_raw(DEV0_BAR0, 1024).unwrap(),
                MmioRange::from_raw(DEV0_BAR1, 16).unwrap(),
            ],
            0 => vec![MmioRange::from_raw(DEV0_BAR0, 1024).unwrap()],
            _ => vec![MmioRange::from_raw(DEV1_BAR0, self.dev1_pages).unwrap()],
        }
    }

    fn tdis(&self) -> Vec<TdiSpec> {
        [(0, 0), (0, 1), (1, 0), (1, 3)]
            .iter()
            .take(self.tdis)
            .map(|&(dev, f)| TdiSpec {
                dev,
                iface: rid(3 + dev as u8, f),
            })
            .collect()
    }

    /// The TDI's share of its device's BAR 0 (base, pages): BAR 0 split evenly among the
    /// device's TDIs, so well-formed reports of sibling TDIs do not collide.
    fn window(&self, t: usize) -> (u64, u64) {
        let tdis = self.tdis();
        let spec = tdis[t % tdis.len()];
        let siblings: Vec<usize> = (0..tdis.len())
            .filter(|&i| tdis[i].dev == spec.dev)
            .collect();
        let bar = self.bars(spec.dev)[0];
        let share = bar.pages() / siblings.len() as u64;
        let nth = siblings.iter().position(|&i| i == t % tdis.len()).unwrap() as u64;
        (bar.base().as_u64() + nth * share * 0x1000, share)
    }
}

/// Memory every firmware reserves at init: the SEV backend's system memory (command buffers)
/// and both TDX pools.
fn reserved() -> ReservedMemory {
    let mut r =
        ReservedMemory::from_ranges(&[MmioRange::from_raw(MEM_BASE, MEM_PAGES as u64).unwrap()])
            .unwrap();
    for base in [POOL4_PHYS, POOL5_PHYS] {
        r.add(MmioRange::from_raw(base, POOL_PAGES as u64).unwrap())
            .unwrap();
    }
    r
}

fn window() -> MmioRange {
    MmioRange::from_raw(WINDOW_BASE, WINDOW_PAGES as u64).unwrap()
}

// ------------------------------------------------------------------------------------------
// Operations: what the generator draws.

/// An object by index into the world's list (modulo its length), or a raw handle that no
/// firmware gave out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pick {
    Obj(usize),
    Raw(u16),
    /// TDIs only: the `k`-th TDI (modulo their number) of those in `Filter` when the
    /// operation runs (the core's view), or TDI `k` when there is none.
    Where(Filter, usize),
}

/// Which TDIs a [`Pick::Where`] chooses among.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Filter {
    Bound,
    Unbound,
    /// CONFIG_LOCKED or RUN: bound, neither in ERROR nor mid-unbind.
    Live,
}

impl Filter {
    fn admits(self, s: TdiState) -> bool {
        match self {
            Filter::Bound => s.is_bound(),
            Filter::Unbound => !s.is_bound(),
            Filter::Live => matches!(s, TdiState::Locked { .. } | TdiState::Run { .. }),
        }
    }
}

/// A TDI of the world: by index, or [`Pick::Where`]'s way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sel {
    At(usize),
    Where(Filter, usize),
}

impl Sel {
    /// The index, once [`fix`] resolved `Where`.
    fn at(self) -> usize {
        match self {
            Sel::At(i) | Sel::Where(_, i) => i,
        }
    }

    /// The same choice as a [`Pick`].
    fn pick(self) -> Pick {
        match self {
            Sel::At(i) => Pick::Obj(i),
            Sel::Where(f, k) => Pick::Where(f, k),
        }
    }
}

/// How a report is made.
#[derive(Debug, Clone)]
enum ReportSpec {
    /// `parts` ranges, one in each equal part of the TDI's window: (start, length) as
    /// fractions of the part (0-255), plus a shared range when `shared`.
    Own { parts: Vec<(u8, u8)>, shared: bool },
    /// The TDI's whole window, plus a shared range when `shared`.
    Window { shared: bool },
    /// The whole BAR 0 of the TDI's device: a sibling's pages too.
    WholeBar,
    /// Another TDI's window: a bound sibling's (`TdiBound`) or another device's pages.
    OtherWindow(usize),
    /// A report the firmware must refuse.
    Hostile(Hostile),
}

#[derive(Debug, Clone, Copy)]
enum Hostile {
    OutsideBars,
    PastBarEnd,
    Overlapping,
    Misaligned,
    Empty,
    Wrapping,
    TooMany,
    Reserved,
}

/// Where a hostile map's host page is.
#[derive(Debug, Clone, Copy)]
enum HpaSpec {
    /// A page of one of the TDI's ranges (if it owns any).
    Owned {
        range: Index,
        page: Index,
    },
    /// A page of the TDI's window (owned or not).
    Window(u16),
    /// A page of another TDI's window.
    OtherWindow(usize, u16),
    OutsideBars,
    Reserved,
    /// A window page plus 0x800.
    Misaligned(u16),
}

/// Which guest a map names.
#[derive(Debug, Clone, Copy)]
enum GuestSel {
    /// The TDI's owner (guest 0 when unbound).
    Owner,
    /// A guest that is not the owner.
    NotOwner,
    Pick(Pick),
}

/// How the host goes after a leaf the core holds.
#[derive(Debug, Clone, Copy)]
enum Hit {
    Exact,
    /// The leaf's GPA plus 4K (2M/1G leaves) or 0x800 (4K leaves).
    Misaligned,
    /// The leaf's GPA with another size.
    WrongSize,
    /// The same GPA of another guest.
    OtherGuest,
}

/// What a zap covers.
#[derive(Debug, Clone, Copy)]
enum Zap {
    Bar(usize),
    /// `pages` pages from page `at` of BAR 0.
    Part {
        at: u16,
        pages: u16,
    },
    Outside,
}

#[derive(Debug, Clone)]
enum Op {
    Bind {
        tdi: Pick,
        guest: Pick,
        report: ReportSpec,
    },
    /// A page of a range the TDI owns, for its owner: the well-formed map.
    MapOwned {
        tdi: Sel,
        range: Index,
        page: Index,
        slot: u16,
        size: PageSize,
    },
    /// Up to `count` consecutive 4K pages of an owned range, one map call each.
    MapRun {
        tdi: Sel,
        range: Index,
        page: Index,
        slot: u8,
        count: u8,
    },
    MapHostile {
        tdi: Pick,
        guest: GuestSel,
        gpa: u64,
        hpa: HpaSpec,
        size: PageSize,
    },
    /// The owner starts the TDI.
    StartOwner {
        tdi: Sel,
    },
    Start {
        guest: Pick,
        tdi: Pick,
    },
    DeviceError(Pick),
    Check(Pick),
    Unbind(Pick),
    UnbindForce(Pick),
    StreamSetup(Pick),
    HostHitLeaf {
        leaf: Index,
        block: bool,
        how: Hit,
    },
    HostRandom {
        guest: Pick,
        gpa: u64,
        size: PageSize,
        block: bool,
    },
    HostZap {
        dev: usize,
        what: Zap,
    },
    DeviceEvent {
        tdi: Sel,
        reset: bool,
    },
    Misbehave {
        tdi: Sel,
        how: Option<Misbehaviour>,
    },
    DeferFlush {
        guest: usize,
        on: bool,
    },
    /// Hold (or complete) the flushes of the TDI's owner (guest 0 when unbound).
    DeferFlushOwner {
        tdi: Sel,
        on: bool,
    },
    RemoveTdi(Pick),
    RemoveDevice(Pick),
    DestroyGuest(Pick),
    /// A new guest joins the world (a destroyed guest's slot is reused).
    CreateGuest,
    /// Device `d` is registered again (refused while it is registered; after its removal,
    /// the world's device `d` is the new one).
    RecreateDevice(usize),
    /// TDI `t` is created again on its device, likewise.
    RecreateTdi(usize),
}

#[derive(Debug, Clone)]
struct Case {
    world: WorldSpec,
    phrases: Vec<Vec<Op>>,
    /// Operation `k` (of the phrases, in order) runs when `keep[k]`: shrinking drops single
    /// operations, so a shrunk case keeps only those its failure needs.
    keep: Vec<bool>,
}

impl Case {
    /// The operations that run, numbered in the phrases.
    fn ops(&self) -> impl Iterator<Item = (usize, &Op)> {
        self.phrases
            .iter()
            .flatten()
            .take(MAX_OPS)
            .enumerate()
            .filter(|(k, _)| self.keep.get(*k).copied().unwrap_or(true))
    }
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:?}", self.world)?;
        for (i, op) in self.ops() {
            writeln!(f, "  {i:>2}: {op:?}")?;
        }
        Ok(())
    }
}

// ---- strategies ----------------------------------------------------------------------------

fn pick(objects: usize, raw: &'static [u16]) -> impl Strategy<Value = Pick> {
    prop_oneof![
        12 => (0..objects).prop_map(Pick::Obj),
        1 => prop::sample::select(raw).prop_map(Pick::Raw),
    ]
}

const RAW_TDIS: &[u16] = &[100, 127, 0xffff];
const RAW_GUESTS: &[u16] = &[31, 0xffff];
const RAW_DEVICES: &[u16] = &[31, 0xffff];

fn tdi_pick() -> impl Strategy<Value = Pick> {
    pick(4, RAW_TDIS)
}

fn guest_pick() -> impl Strategy<Value = Pick> {
    pick(3, RAW_GUESTS)
}

fn size() -> impl Strategy<Value = PageSize> {
    prop_oneof![
        12 => Just(PageSize::Size4K),
        4 => Just(PageSize::Size2M),
        1 => Just(PageSize::Size1G),
    ]
}

/// Guest addresses for hostile requests: 4K and 2M slots, sometimes misaligned.
fn guest_addr() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => (0u64..1024).prop_map(|p| GPA_4K + p * 0x1000),
        3 => (0u64..8).prop_map(|p| GPA_2M + p * 0x20_0000),
        1 => (0u64..200).prop_map(|p| GPA_RUN + p * 0x1000),
        1 => (0u64..1024).prop_map(|p| GPA_4K + p * 0x1000 + 0x800),
    ]
}

fn hostile() -> impl Strategy<Value = Hostile> {
    prop_oneof![
        Just(Hostile::OutsideBars),
        Just(Hostile::PastBarEnd),
        Just(Hostile::Overlapping),
        Just(Hostile::Misaligned),
        Just(Hostile::Empty),
        Just(Hostile::Wrapping),
        Just(Hostile::TooMany),
        Just(Hostile::Reserved),
    ]
}

fn report() -> impl Strategy<Value = ReportSpec> {
    let hostile = hostile();
    prop_oneof![
        6 => (prop::collection::vec((any::<u8>(), any::<u8>()), 1..=3), any::<bool>())
            .prop_map(|(parts, shared)| ReportSpec::Own { parts, shared }),
        5 => any::<bool>().prop_map(|shared| ReportSpec::Window { shared }),
        1 => Just(ReportSpec::WholeBar),
        1 => (0usize..4).prop_map(ReportSpec::OtherWindow),
        3 => hostile.prop_map(ReportSpec::Hostile),
    ]
}

fn hpa_spec() -> impl Strategy<Value = HpaSpec> {
    prop_oneof![
        3 => (any::<Index>(), any::<Index>()).prop_map(|(range, page)| HpaSpec::Owned { range, page }),
        2 => (0u16..600).prop_map(HpaSpec::Window),
        2 => (0usize..4, 0u16..600).prop_map(|(t, p)| HpaSpec::OtherWindow(t, p)),
        1 => Just(HpaSpec::OutsideBars),
        1 => Just(HpaSpec::Reserved),
        1 => (0u16..600).prop_map(HpaSpec::Misaligned),
    ]
}

fn guest_sel() -> impl Strategy<Value = GuestSel> {
    prop_oneof![
        2 => Just(GuestSel::Owner),
        2 => Just(GuestSel::NotOwner),
        1 => guest_pick().prop_map(GuestSel::Pick),
    ]
}

fn misbehaviour() -> impl Strategy<Value = Option<Misbehaviour>> {
    prop_oneof![
        4 => Just(None),
        2 => Just(Some(Misbehaviour::Silent)),
        1 => Just(Some(Misbehaviour::Refuse)),
        1 => Just(Some(Misbehaviour::Garbage)),
        1 => prop_oneof![
            Just(Some(Misbehaviour::WrongInterface)),
            Just(Some(Misbehaviour::WrongVersion)),
            Just(Some(Misbehaviour::InconsistentReport)),
        ],
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let tdi = (0usize..4).prop_map(Sel::At);
    prop_oneof![
        8 => (tdi_pick(), guest_pick(), report())
            .prop_map(|(tdi, guest, report)| Op::Bind { tdi, guest, report }),
        6 => (tdi.clone(), any::<Index>(), any::<Index>(), 0u16..1024, size())
            .prop_map(|(tdi, range, page, slot, size)| Op::MapOwned { tdi, range, page, slot, size }),
        1 => (tdi.clone(), any::<Index>(), any::<Index>(), 0u8..4, prop_oneof![1 => 1u8..=64, 1 => 65u8..=100])
            .prop_map(|(tdi, range, page, slot, count)| Op::MapRun { tdi, range, page, slot, count }),
        4 => (tdi_pick(), guest_sel(), guest_addr(), hpa_spec(), size())
            .prop_map(|(tdi, guest, gpa, hpa, size)| Op::MapHostile { tdi, guest, gpa, hpa, size }),
        2 => tdi.clone().prop_map(|tdi| Op::StartOwner { tdi }),
        1 => (guest_pick(), tdi_pick()).prop_map(|(guest, tdi)| Op::Start { guest, tdi }),
        2 => tdi_pick().prop_map(Op::DeviceError),
        2 => tdi_pick().prop_map(Op::Check),
        4 => tdi_pick().prop_map(Op::Unbind),
        1 => tdi_pick().prop_map(Op::UnbindForce),
        1 => pick(2, RAW_DEVICES).prop_map(Op::StreamSetup),
        3 => (any::<Index>(), any::<bool>(), prop_oneof![
                3 => Just(Hit::Exact), 1 => Just(Hit::Misaligned),
                1 => Just(Hit::WrongSize), 1 => Just(Hit::OtherGuest)])
            .prop_map(|(leaf, block, how)| Op::HostHitLeaf { leaf, block, how }),
        2 => (guest_pick(), guest_addr(), size(), any::<bool>())
            .prop_map(|(guest, gpa, size, block)| Op::HostRandom { guest, gpa, size, block }),
        2 => (0usize..2, prop_oneof![
                2 => (0usize..2).prop_map(Zap::Bar),
                2 => (0u16..1100, 1u16..600).prop_map(|(at, pages)| Zap::Part { at, pages }),
                1 => Just(Zap::Outside)])
            .prop_map(|(dev, what)| Op::HostZap { dev, what }),
        2 => (tdi.clone(), prop::bool::weighted(0.3))
            .prop_map(|(tdi, reset)| Op::DeviceEvent { tdi, reset }),
        2 => (tdi, misbehaviour()).prop_map(|(tdi, how)| Op::Misbehave { tdi, how }),
        1 => (0usize..3, any::<bool>()).prop_map(|(guest, on)| Op::DeferFlush { guest, on }),
        1 => tdi_pick().prop_map(Op::RemoveTdi),
        1 => pick(2, RAW_DEVICES).prop_map(Op::RemoveDevice),
        1 => guest_pick().prop_map(Op::DestroyGuest),
        1 => prop_oneof![
            Just(Op::CreateGuest),
            (0usize..2).prop_map(Op::RecreateDevice),
            (0usize..4).prop_map(Op::RecreateTdi),
        ],
    ]
}

fn case() -> impl Strategy<Value = Case> {
    let world = (
        2usize..=3,
        any::<bool>(),
        prop_oneof![Just(512u64), Just(1024u64)],
        2usize..=4,
    )
        .prop_map(|(guests, bar1, dev1_pages, tdis)| WorldSpec {
            guests,
            bar1,
            dev1_pages,
            tdis,
        });
    let phrases = prop::collection::vec(phrase(), 12..=28);
    let keep = prop::collection::vec(prop::bool::weighted(0.999), MAX_OPS);
    (world, phrases, keep).prop_map(|(world, phrases, keep)| Case {
        world,
        phrases,
        keep,
    })
}

/// Most operations a case runs.
const MAX_OPS: usize = 80;

/// A short run of operations with a purpose, most of them on a TDI that is bound when they
/// run, or one operation of any kind.
fn phrase() -> impl Strategy<Value = Vec<Op>> {
    let t = 0usize..4;
    let g = 0usize..3;
    let live = (0usize..4).prop_map(|k| Sel::Where(Filter::Live, k));
    let good_report = prop_oneof![
        3 => any::<bool>().prop_map(|shared| ReportSpec::Window { shared }),
        2 => (prop::collection::vec((0u8..64, 128u8..=255), 1..=3), any::<bool>())
            .prop_map(|(parts, shared)| ReportSpec::Own { parts, shared }),
    ];
    let map = (any::<Index>(), any::<Index>(), 0u16..1024, size());
    let run = prop_oneof![1 => 8u8..=64, 2 => 65u8..=100];
    prop_oneof![
        // Bring a TDI up: bind with a well-formed report, map some pages (sometimes a run
        // long enough that unbind and device errors take several calls), often start it.
        6 => (t, g.clone(), good_report, prop::collection::vec(map, 0..=3),
              prop::option::weighted(0.4, (run, 0u8..4, any::<Index>(), any::<Index>())),
              prop::bool::weighted(0.7))
            .prop_map(|(t, guest, report, maps, run, start)| {
                let tdi = Sel::At(t);
                let mut v = vec![Op::Bind { tdi: Pick::Obj(t), guest: Pick::Obj(guest), report }];
                for (range, page, slot, size) in maps {
                    v.push(Op::MapOwned { tdi, range, page, slot, size });
                }
                if let Some((count, slot, page, range)) = run {
                    v.push(Op::MapRun { tdi, range, page, slot, count });
                }
                if start {
                    v.push(Op::StartOwner { tdi });
                }
                v
            }),
        // Unbind calls on a bound TDI.
        3 => (0usize..4, 1usize..=3)
            .prop_map(|(k, n)| vec![Op::Unbind(Pick::Where(Filter::Bound, k)); n]),
        // A live TDI's device goes to ERROR: an event the firmware learns from a check, a
        // reported error, or a START the device refuses.
        5 => (live, 0u8..4).prop_map(|(tdi, how)| {
            let p = tdi.pick();
            match how {
                0 => vec![Op::DeviceEvent { tdi, reset: false }, Op::Check(p)],
                1 => vec![Op::DeviceEvent { tdi, reset: true }, Op::Check(p)],
                2 => vec![Op::DeviceError(p), Op::DeviceError(p)],
                _ => vec![
                    Op::Misbehave { tdi, how: Some(Misbehaviour::Refuse) },
                    Op::StartOwner { tdi },
                    Op::Misbehave { tdi, how: None },
                ],
            }
        }),
        // A bound TDI's device stops answering during its unbind, then recovers (or not yet).
        1 => (0usize..4, 1usize..=2, any::<bool>(), any::<bool>()).prop_map(|(k, n, check, recover)| {
            let tdi = Sel::Where(Filter::Live, k);
            let p = tdi.pick();
            let mut v = vec![Op::Misbehave { tdi, how: Some(Misbehaviour::Silent) }];
            v.extend(std::iter::repeat_n(Op::Unbind(p), n));
            v.push(if check { Op::Check(p) } else { Op::DeviceError(p) });
            if recover {
                v.push(Op::Misbehave { tdi, how: None });
                v.push(Op::Unbind(p));
            }
            v
        }),
        // A bound TDI's owner holds its TLB flushes across unbind calls (and releases them,
        // or not yet).
        1 => (0usize..4, 1usize..=2, any::<bool>()).prop_map(|(k, n, release)| {
            let tdi = Sel::Where(Filter::Bound, k);
            let p = tdi.pick();
            let mut v = vec![Op::DeferFlushOwner { tdi, on: true }];
            v.extend(std::iter::repeat_n(Op::Unbind(p), n));
            if release {
                v.push(Op::DeferFlushOwner { tdi, on: false });
            }
            v
        }),
        // A device reports ranges the firmware must refuse for an unbound TDI.
        2 => (0usize..4, g.clone(), hostile()).prop_map(|(k, guest, h)| vec![Op::Bind {
            tdi: Pick::Where(Filter::Unbound, k),
            guest: Pick::Obj(guest),
            report: ReportSpec::Hostile(h),
        }]),
        // Objects go away and come back: a TDI (unbound first), its device, a guest.
        1 => (0usize..4, 0u8..3).prop_map(|(t, what)| match what {
            0 => vec![Op::Unbind(Pick::Obj(t)), Op::RemoveTdi(Pick::Obj(t)), Op::RecreateTdi(t)],
            1 => vec![
                Op::Unbind(Pick::Obj(t)),
                Op::RemoveTdi(Pick::Obj(t)),
                Op::RemoveDevice(Pick::Obj(t / 2)),
                Op::RecreateDevice(t / 2),
                Op::RecreateTdi(t),
            ],
            _ => vec![Op::DestroyGuest(Pick::Obj(t)), Op::CreateGuest],
        }),
        // The host goes after a bound TDI's pages.
        2 => (any::<Index>(), any::<bool>(), 0usize..2, 0usize..2).prop_map(|(leaf, block, dev, bar)| vec![
            Op::HostHitLeaf { leaf, block, how: Hit::Exact },
            Op::HostZap { dev, what: Zap::Bar(bar) },
        ]),
        // Anything, hostile operations included.
        10 => op().prop_map(|o| vec![o]),
    ]
}

// ------------------------------------------------------------------------------------------
// The firmwares under test.

/// What the test reads from a firmware besides its interface: the core instance inside it.
trait Peek {
    fn state(&self, tdi: TdiId) -> TsmResult<TdiState>;
    fn owned(&self, tdi: TdiId) -> TsmResult<Vec<MmioRange>>;
    fn leaves(&self) -> TsmResult<Vec<tsm_core::Leaf>>;
    fn bound_tdis(&self, guest: GuestId) -> TsmResult<u16>;
    fn device_state(&self, iface: RequesterId) -> TsmResult<TdispState>;
    fn invariants(&self) -> Result<(), Violation>;
}

impl<T: SecureTable + FlushControl, S: SecureSession> Peek for RelayHost<'_, T, S> {
    fn state(&self, tdi: TdiId) -> TsmResult<TdiState> {
        self.tdi(tdi).map(|t| t.state)
    }
    fn owned(&self, tdi: TdiId) -> TsmResult<Vec<MmioRange>> {
        self.owned_ranges(tdi).map(|r| r.to_vec())
    }
    fn leaves(&self) -> TsmResult<Vec<tsm_core::Leaf>> {
        self.with_table(|t| {
            let mut out = Vec::new();
            let mut from = window().base();
            while let Some(l) = t.next_leaf(window(), from) {
                out.push(l);
                match l.hpa.checked_add(l.size.bytes()) {
                    Some(next) => from = next,
                    None => break,
                }
            }
            out
        })
    }
    fn bound_tdis(&self, guest: GuestId) -> TsmResult<u16> {
        self.guest(guest).map(|g| g.bound_tdis)
    }
    fn device_state(&self, iface: RequesterId) -> TsmResult<TdispState> {
        self.with_device(|d| d.state(iface))
    }
    fn invariants(&self) -> Result<(), Violation> {
        invariants::check(self.firmware())
    }
}

/// One firmware: its label, its interface, and the core inside it.
trait Subject {
    fn label(&self) -> &'static str;
    fn backend(&mut self) -> &mut dyn Backend;
    fn peek(&self) -> Box<dyn Peek + '_>;
}

struct CoreSubject<'a>(CoreBackend<'a, MemTable<CORE_LEAVES>>);

impl Subject for CoreSubject<'_> {
    fn label(&self) -> &'static str {
        "core"
    }
    fn backend(&mut self) -> &mut dyn Backend {
        &mut self.0
    }
    fn peek(&self) -> Box<dyn Peek + '_> {
        Box::new(self.0.tsm.host())
    }
}

struct TdxSubject<'t, 'm>(&'static str, TdxBackend<'t, 'm>);

impl Subject for TdxSubject<'_, '_> {
    fn label(&self) -> &'static str {
        self.0
    }
    fn backend(&mut self) -> &mut dyn Backend {
        &mut self.1
    }
    fn peek(&self) -> Box<dyn Peek + '_> {
        Box::new(self.1.host())
    }
}

struct SevSubject<'a>(Box<SevBackend<'a>>);

impl Subject for SevSubject<'_> {
    fn label(&self) -> &'static str {
        "sev"
    }
    fn backend(&mut self) -> &mut dyn Backend {
        &mut *self.0
    }
    fn peek(&self) -> Box<dyn Peek + '_> {
        Box::new(self.0.host())
    }
}

/// Every firmware's handles for the world's objects, by index.
#[derive(Debug, Clone)]
struct Handles {
    guests: Vec<GuestId>,
    devices: Vec<DeviceId>,
    tdis: Vec<TdiId>,
}

impl Handles {
    fn guest(&self, p: Pick) -> GuestId {
        match p {
            Pick::Obj(i) | Pick::Where(_, i) => self.guests[i % self.guests.len()],
            Pick::Raw(s) => GuestId::from_slot(s),
        }
    }
    fn device(&self, p: Pick) -> DeviceId {
        match p {
            Pick::Obj(i) | Pick::Where(_, i) => self.devices[i % self.devices.len()],
            Pick::Raw(s) => DeviceId::from_slot(s),
        }
    }
    fn tdi(&self, p: Pick) -> TdiId {
        match p {
            Pick::Obj(i) | Pick::Where(_, i) => self.tdis[i % self.tdis.len()],
            Pick::Raw(s) => TdiId::from_slot(s),
        }
    }
    /// A guest handle back to the world's name for it.
    fn who(&self, g: GuestId) -> Who {
        match self.guests.iter().position(|&h| h == g) {
            Some(i) => Who::Guest(i),
            None => Who::Unknown(g.slot()),
        }
    }
}

/// A guest as the world knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Who {
    Guest(usize),
    Unknown(u16),
}

/// Registers the world's guests, devices and TDIs.
fn setup(s: &mut dyn Subject, w: &WorldSpec) -> Result<Handles, String> {
    let label = s.label();
    let b = s.backend();
    let fail = |what: &str, e: Error| format!("{label}: world setup: {what}: {e:?}");
    let guests = (0..w.guests)
        .map(|i| b.create_guest().map_err(|e| fail(&format!("guest {i}"), e)))
        .collect::<Result<Vec<_>, _>>()?;
    let devices = (0..2)
        .map(|d| {
            b.create_device(w.device_rid(d), &w.bars(d))
                .map_err(|e| fail(&format!("device {d}"), e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let tdis = w
        .tdis()
        .iter()
        .enumerate()
        .map(|(i, t)| {
            b.create_tdi(devices[t.dev], t.iface)
                .map_err(|e| fail(&format!("tdi {i}"), e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Handles {
        guests,
        devices,
        tdis,
    })
}

// ------------------------------------------------------------------------------------------
// Concrete calls: an operation resolved against the core, the same for every firmware.

#[derive(Debug, Clone)]
enum Call {
    Bind {
        tdi: Pick,
        guest: Pick,
        report: Vec<WireMmioRange>,
    },
    Map {
        tdi: Pick,
        guest: Pick,
        gpa: u64,
        hpa: u64,
        size: PageSize,
    },
    MapRun {
        tdi: Pick,
        guest: Pick,
        gpa: u64,
        hpa: u64,
        count: u64,
    },
    Start {
        guest: Pick,
        tdi: Pick,
    },
    DeviceError(Pick),
    Check(Pick),
    Unbind(Pick),
    UnbindForce(Pick),
    StreamSetup(Pick),
    HostUnmap {
        guest: Pick,
        gpa: u64,
        size: PageSize,
    },
    HostBlock {
        guest: Pick,
        gpa: u64,
        size: PageSize,
    },
    HostZap {
        base: u64,
        pages: u64,
    },
    DeviceEvent {
        tdi: usize,
        event: DeviceEvent,
    },
    Misbehave {
        tdi: usize,
        how: Option<Misbehaviour>,
    },
    DeferFlush {
        guest: usize,
        on: bool,
    },
    RemoveTdi(Pick),
    RemoveDevice(Pick),
    DestroyGuest(Pick),
    CreateGuest,
    RecreateDevice(usize),
    RecreateTdi(usize),
}

struct Name(char, Pick);

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.1 {
            Pick::Obj(i) | Pick::Where(_, i) => write!(f, "{}{i}", self.0),
            Pick::Raw(s) => write!(f, "#{s}"),
        }
    }
}

fn size_name(s: PageSize) -> &'static str {
    match s {
        PageSize::Size4K => "4k",
        PageSize::Size2M => "2m",
        PageSize::Size1G => "1g",
    }
}

fn misbehaviour_name(how: Option<Misbehaviour>) -> &'static str {
    match how {
        None => "none",
        Some(Misbehaviour::Silent) => "silent",
        Some(Misbehaviour::Garbage) => "garbage",
        Some(Misbehaviour::WrongInterface) => "wrong-interface",
        Some(Misbehaviour::WrongVersion) => "wrong-version",
        Some(Misbehaviour::Refuse) => "refuse",
        Some(Misbehaviour::InconsistentReport) => "inconsistent-report",
        Some(Misbehaviour::IgnoresReportingOffset) => "ignores-reporting-offset",
    }
}

/// Scenario syntax where the language has the operation (`t0`.. TDIs, `g0`.. guests, `d0`,
/// `d1` devices); `map-run` and `zap-range` are not scenario keywords.
impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = |p| Name('t', p);
        let g = |p| Name('g', p);
        match self {
            Call::Bind { tdi, guest, report } => {
                write!(f, "bind {} {}", t(*tdi), g(*guest))?;
                for r in report {
                    let kind = if r.range_attributes.get() & RANGE_ATTR_NON_TEE != 0 {
                        "shared-range"
                    } else {
                        "range"
                    };
                    write!(
                        f,
                        " {kind} {:#x} {}",
                        r.first_page.get(),
                        r.number_of_pages.get()
                    )?;
                }
                Ok(())
            }
            Call::Map {
                tdi,
                guest,
                gpa,
                hpa,
                size,
            } => write!(
                f,
                "map {} {} {gpa:#x} {hpa:#x} {}",
                t(*tdi),
                g(*guest),
                size_name(*size)
            ),
            Call::MapRun {
                tdi,
                guest,
                gpa,
                hpa,
                count,
            } => write!(
                f,
                "map-run {} {} {gpa:#x} {hpa:#x} 4k x{count}",
                t(*tdi),
                g(*guest)
            ),
            Call::Start { guest, tdi } => write!(f, "start {} {}", g(*guest), t(*tdi)),
            Call::DeviceError(p) => write!(f, "device-error {}", t(*p)),
            Call::Check(p) => write!(f, "check {}", t(*p)),
            Call::Unbind(p) => write!(f, "unbind {}", t(*p)),
            Call::UnbindForce(p) => write!(f, "unbind-force {}", t(*p)),
            Call::StreamSetup(p) => write!(f, "stream-setup {}", Name('d', *p)),
            Call::HostUnmap { guest, gpa, size } => {
                write!(f, "host-unmap {} {gpa:#x} {}", g(*guest), size_name(*size))
            }
            Call::HostBlock { guest, gpa, size } => {
                write!(f, "host-block {} {gpa:#x} {}", g(*guest), size_name(*size))
            }
            Call::HostZap { base, pages } => write!(f, "zap-range {base:#x} {pages}"),
            Call::DeviceEvent { tdi, event } => write!(
                f,
                "device-event t{tdi} {}",
                match event {
                    DeviceEvent::Disturb => "disturb",
                    DeviceEvent::ConventionalReset => "reset",
                }
            ),
            Call::Misbehave { tdi, how } => {
                write!(f, "device-misbehave t{tdi} {}", misbehaviour_name(*how))
            }
            Call::DeferFlush { guest, on } => {
                write!(f, "defer-flush g{guest} {}", if *on { "on" } else { "off" })
            }
            Call::RemoveTdi(p) => write!(f, "remove-tdi {}", t(*p)),
            Call::RemoveDevice(p) => write!(f, "remove-device {}", Name('d', *p)),
            Call::DestroyGuest(p) => write!(f, "destroy-guest {}", g(*p)),
            Call::CreateGuest => write!(f, "guest (new)"),
            Call::RecreateDevice(d) => write!(f, "device d{d} (again)"),
            Call::RecreateTdi(t) => write!(f, "tdi t{t} (again)"),
        }
    }
}

/// The reference's view used to resolve operations: the core firmware and its handles.
struct Reference<'r> {
    peek: &'r dyn Peek,
    handles: &'r Handles,
    world: &'r WorldSpec,
}

impl Reference<'_> {
    fn tdi_count(&self) -> usize {
        self.handles.tdis.len()
    }

    /// Guests of the world: those of the world spec, then those created since.
    fn guest_count(&self) -> usize {
        self.handles.guests.len()
    }

    fn owner(&self, tdi: usize) -> Option<usize> {
        let h = self.handles.tdis[tdi % self.tdi_count()];
        let state = self.peek.state(h).ok()?;
        match self.handles.who(state.owner()?) {
            Who::Guest(i) => Some(i),
            Who::Unknown(_) => None,
        }
    }

    fn owned(&self, tdi: usize) -> Vec<MmioRange> {
        self.peek
            .owned(self.handles.tdis[tdi % self.tdi_count()])
            .unwrap()
    }

    /// The `k`-th TDI (modulo their number) the core holds in a state `filter` admits, or
    /// TDI `k` if there is none such.
    fn tdi_where(&self, filter: Filter, k: usize) -> usize {
        let among: Vec<usize> = (0..self.tdi_count())
            .filter(|&i| {
                self.peek
                    .state(self.handles.tdis[i])
                    .is_ok_and(|s| filter.admits(s))
            })
            .collect();
        if among.is_empty() {
            k % self.tdi_count()
        } else {
            among[k % among.len()]
        }
    }

    fn not_owner(&self, tdi: usize) -> usize {
        let owner = self.owner(tdi).unwrap_or(0);
        (owner + 1) % self.guest_count()
    }

    fn guest_of(&self, sel: GuestSel, tdi: usize) -> Pick {
        match sel {
            GuestSel::Owner => Pick::Obj(self.owner(tdi).unwrap_or(0)),
            GuestSel::NotOwner => Pick::Obj(self.not_owner(tdi)),
            GuestSel::Pick(p) => p,
        }
    }
}

fn tdi_index(p: Pick) -> usize {
    match p {
        Pick::Obj(i) | Pick::Where(_, i) => i,
        Pick::Raw(_) => 0,
    }
}

/// `op` with every [`Pick::Bound`] and [`Sel::Bound`] resolved to a TDI index.
fn fix(op: &Op, r: &Reference<'_>) -> Op {
    let s = |sel: Sel| match sel {
        Sel::Where(f, k) => Sel::At(r.tdi_where(f, k)),
        at => at,
    };
    let p = |pick: Pick| match pick {
        Pick::Where(f, k) => Pick::Obj(r.tdi_where(f, k)),
        other => other,
    };
    let mut op = op.clone();
    match &mut op {
        Op::Bind { tdi, .. }
        | Op::MapHostile { tdi, .. }
        | Op::Start { tdi, .. }
        | Op::DeviceError(tdi)
        | Op::Check(tdi)
        | Op::Unbind(tdi)
        | Op::UnbindForce(tdi)
        | Op::RemoveTdi(tdi) => *tdi = p(*tdi),
        Op::MapOwned { tdi, .. }
        | Op::MapRun { tdi, .. }
        | Op::StartOwner { tdi }
        | Op::DeviceEvent { tdi, .. }
        | Op::Misbehave { tdi, .. }
        | Op::DeferFlushOwner { tdi, .. } => *tdi = s(*tdi),
        Op::HostHitLeaf { .. }
        | Op::HostRandom { .. }
        | Op::HostZap { .. }
        | Op::DeferFlush { .. }
        | Op::RemoveDevice(_)
        | Op::StreamSetup(_)
        | Op::DestroyGuest(_)
        | Op::CreateGuest
        | Op::RecreateDevice(_)
        | Op::RecreateTdi(_) => {}
    }
    op
}

fn report_ranges(r: &Reference<'_>, tdi: usize, spec: &ReportSpec) -> Vec<WireMmioRange> {
    let w = r.world;
    let n = r.tdi_count();
    let (base, share) = w.window(tdi % n);
    let dev = w.tdis()[tdi % n].dev;
    let private = |first: u64, pages: u64, id: u16| wire_range(first, pages as u32, 0, id);
    // A shared range: the last page of BAR 1 when the device has one, else the last page of
    // the TDI's window (which then is not owned).
    let shared_range = |id: u16| {
        let at = if dev == 0 && w.bar1 {
            DEV0_BAR1 + 15 * 0x1000
        } else {
            base + (share - 1) * 0x1000
        };
        wire_range(at, 1, RANGE_ATTR_NON_TEE, id)
    };
    match spec {
        ReportSpec::Own { parts, shared } => {
            let part = share / parts.len() as u64;
            let mut out: Vec<WireMmioRange> = parts
                .iter()
                .enumerate()
                .map(|(i, &(start, len))| {
                    let first = u64::from(start) * part / 256;
                    let pages = 1 + u64::from(len) * (part - first - 1) / 255;
                    private(base + (i as u64 * part + first) * 0x1000, pages, i as u16)
                })
                .collect();
            if *shared {
                // Out of the way of the private ranges: shrink the last one by a page when
                // the shared range lies in the window.
                if !(dev == 0 && w.bar1) {
                    let last = out.last_mut().unwrap();
                    let end =
                        last.first_page.get() + u64::from(last.number_of_pages.get()) * 0x1000;
                    let window_end = base + share * 0x1000;
                    if end == window_end && last.number_of_pages.get() > 1 {
                        last.number_of_pages.set(last.number_of_pages.get() - 1);
                    }
                }
                out.push(shared_range(out.len() as u16));
            }
            out
        }
        ReportSpec::Window { shared } => {
            if *shared {
                let private_pages = if dev == 0 && w.bar1 { share } else { share - 1 };
                vec![private(base, private_pages, 0), shared_range(1)]
            } else {
                vec![private(base, share, 0)]
            }
        }
        ReportSpec::WholeBar => {
            let bar = w.bars(dev)[0];
            vec![private(bar.base().as_u64(), bar.pages(), 0)]
        }
        ReportSpec::OtherWindow(other) => {
            let (b, s) = w.window(*other % n);
            vec![private(b, s, 0)]
        }
        ReportSpec::Hostile(h) => match h {
            Hostile::OutsideBars => vec![private(OUTSIDE_BARS, 4, 0)],
            Hostile::PastBarEnd => {
                let bar = w.bars(dev)[0];
                vec![private(bar.end() - 0x2000, 4, 0)]
            }
            Hostile::Overlapping => vec![private(base, 8, 0), private(base + 0x4000, 8, 1)],
            Hostile::Misaligned => vec![private(base + 0x800, 4, 0)],
            Hostile::Empty => vec![private(base, 0, 0)],
            Hostile::Wrapping => vec![private(0xffff_ffff_ffff_f000, 2, 0)],
            Hostile::TooMany => (0..17u16)
                .map(|i| private(base + u64::from(i) * 0x1000, 1, i))
                .collect(),
            Hostile::Reserved => vec![private(MEM_BASE, 1, 0)],
        },
    }
}

fn gpa_of(slot: u16, size: PageSize) -> u64 {
    match size {
        PageSize::Size4K => GPA_4K + u64::from(slot % 1024) * 0x1000,
        PageSize::Size2M => GPA_2M + u64::from(slot % 8) * 0x20_0000,
        PageSize::Size1G => GPA_1G + u64::from(slot % 2) * 0x4000_0000,
    }
}

/// `op` as a concrete call, every object named by its index in the world.
fn resolve(op: &Op, r: &Reference<'_>, core_leaves: &[tsm_core::Leaf]) -> Call {
    let call = resolve_op(op, r, core_leaves);
    let (tdis, guests) = (r.tdi_count(), r.guest_count());
    let wrap = |p: Pick, n: usize| match p {
        Pick::Obj(i) => Pick::Obj(i % n),
        raw => raw,
    };
    let t = |p| wrap(p, tdis);
    let g = |p| wrap(p, guests);
    match call {
        Call::Bind { tdi, guest, report } => Call::Bind {
            tdi: t(tdi),
            guest: g(guest),
            report,
        },
        Call::Map {
            tdi,
            guest,
            gpa,
            hpa,
            size,
        } => Call::Map {
            tdi: t(tdi),
            guest: g(guest),
            gpa,
            hpa,
            size,
        },
        Call::MapRun {
            tdi,
            guest,
            gpa,
            hpa,
            count,
        } => Call::MapRun {
            tdi: t(tdi),
            guest: g(guest),
            gpa,
            hpa,
            count,
        },
        Call::Start { guest, tdi } => Call::Start {
            guest: g(guest),
            tdi: t(tdi),
        },
        Call::DeviceError(p) => Call::DeviceError(t(p)),
        Call::Check(p) => Call::Check(t(p)),
        Call::Unbind(p) => Call::Unbind(t(p)),
        Call::UnbindForce(p) => Call::UnbindForce(t(p)),
        Call::StreamSetup(p) => Call::StreamSetup(wrap(p, 2)),
        Call::HostUnmap { guest, gpa, size } => Call::HostUnmap {
            guest: g(guest),
            gpa,
            size,
        },
        Call::HostBlock { guest, gpa, size } => Call::HostBlock {
            guest: g(guest),
            gpa,
            size,
        },
        Call::RemoveTdi(p) => Call::RemoveTdi(t(p)),
        Call::RemoveDevice(p) => Call::RemoveDevice(wrap(p, 2)),
        Call::DestroyGuest(p) => Call::DestroyGuest(g(p)),
        other => other,
    }
}

fn resolve_op(op: &Op, r: &Reference<'_>, core_leaves: &[tsm_core::Leaf]) -> Call {
    let n = r.tdi_count();
    match &fix(op, r) {
        Op::Bind { tdi, guest, report } => Call::Bind {
            tdi: *tdi,
            guest: *guest,
            report: report_ranges(r, tdi_index(*tdi), report),
        },
        Op::MapOwned {
            tdi,
            range,
            page,
            slot,
            size,
        } => {
            let owned = r.owned(tdi.at());
            let guest = Pick::Obj(r.owner(tdi.at()).unwrap_or(0));
            let gpa = gpa_of(*slot, *size);
            let hpa = if owned.is_empty() {
                r.world.window(tdi.at() % n).0
            } else {
                let rg = owned[range.index(owned.len())];
                let at = rg.base().as_u64() + page.index(rg.pages() as usize) as u64 * 0x1000;
                at & !size.offset_mask()
            };
            Call::Map {
                tdi: Pick::Obj(tdi.at()),
                guest,
                gpa,
                hpa,
                size: *size,
            }
        }
        Op::MapRun {
            tdi,
            range,
            page,
            slot,
            count,
        } => {
            let owned = r.owned(tdi.at());
            let guest = Pick::Obj(r.owner(tdi.at()).unwrap_or(0));
            let gpa = GPA_RUN + u64::from(*slot) * 0x100_0000;
            let (hpa, count) = if owned.is_empty() {
                (r.world.window(tdi.at() % n).0, 1)
            } else {
                let rg = owned[range.index(owned.len())];
                // From a page early enough in the range that most of the run fits.
                let first = page.index(rg.pages().div_ceil(4) as usize) as u64;
                let count = u64::from(*count).min(rg.pages() - first);
                (rg.base().as_u64() + first * 0x1000, count)
            };
            Call::MapRun {
                tdi: Pick::Obj(tdi.at()),
                guest,
                gpa,
                hpa,
                count,
            }
        }
        Op::MapHostile {
            tdi,
            guest,
            gpa,
            hpa,
            size,
        } => {
            let t = tdi_index(*tdi) % n;
            let (base, share) = r.world.window(t);
            let hpa = match hpa {
                HpaSpec::Owned { range, page } => {
                    let owned = r.owned(t);
                    if owned.is_empty() {
                        base
                    } else {
                        let rg = owned[range.index(owned.len())];
                        rg.base().as_u64() + page.index(rg.pages() as usize) as u64 * 0x1000
                    }
                }
                HpaSpec::Window(p) => base + u64::from(*p) % share * 0x1000,
                HpaSpec::OtherWindow(o, p) => {
                    let (b, s) = r.world.window(*o % n);
                    b + u64::from(*p) % s * 0x1000
                }
                HpaSpec::OutsideBars => OUTSIDE_BARS,
                HpaSpec::Reserved => POOL4_PHYS,
                HpaSpec::Misaligned(p) => base + u64::from(*p) % share * 0x1000 + 0x800,
            };
            Call::Map {
                tdi: *tdi,
                guest: r.guest_of(*guest, t),
                gpa: *gpa,
                hpa,
                size: *size,
            }
        }
        Op::StartOwner { tdi } => Call::Start {
            guest: Pick::Obj(r.owner(tdi.at()).unwrap_or(0)),
            tdi: Pick::Obj(tdi.at()),
        },
        Op::Start { guest, tdi } => Call::Start {
            guest: *guest,
            tdi: *tdi,
        },
        Op::DeviceError(t) => Call::DeviceError(*t),
        Op::Check(t) => Call::Check(*t),
        Op::Unbind(t) => Call::Unbind(*t),
        Op::UnbindForce(t) => Call::UnbindForce(*t),
        Op::StreamSetup(d) => Call::StreamSetup(*d),
        Op::HostHitLeaf { leaf, block, how } => {
            let (guest, gpa, size) = match core_leaves.get(leaf.index(core_leaves.len().max(1))) {
                None => (Pick::Obj(0), GPA_4K, PageSize::Size4K),
                Some(l) => {
                    let g = match r.handles.who(l.guest) {
                        Who::Guest(i) => i,
                        Who::Unknown(_) => 0,
                    };
                    let gpa = l.gpa.as_u64();
                    match how {
                        Hit::Exact => (Pick::Obj(g), gpa, l.size),
                        Hit::Misaligned => {
                            let by = if l.size == PageSize::Size4K {
                                0x800
                            } else {
                                0x1000
                            };
                            (Pick::Obj(g), gpa + by, l.size)
                        }
                        Hit::WrongSize => {
                            let other = if l.size == PageSize::Size4K {
                                PageSize::Size2M
                            } else {
                                PageSize::Size4K
                            };
                            (Pick::Obj(g), gpa & !other.offset_mask(), other)
                        }
                        Hit::OtherGuest => (Pick::Obj((g + 1) % r.guest_count()), gpa, l.size),
                    }
                }
            };
            if *block {
                Call::HostBlock { guest, gpa, size }
            } else {
                Call::HostUnmap { guest, gpa, size }
            }
        }
        Op::HostRandom {
            guest,
            gpa,
            size,
            block,
        } => {
            let (guest, gpa, size) = (*guest, *gpa, *size);
            if *block {
                Call::HostBlock { guest, gpa, size }
            } else {
                Call::HostUnmap { guest, gpa, size }
            }
        }
        Op::HostZap { dev, what } => {
            let bars = r.world.bars(*dev % 2);
            let (base, pages) = match what {
                Zap::Bar(i) => {
                    let b = bars[*i % bars.len()];
                    (b.base().as_u64(), b.pages())
                }
                Zap::Part { at, pages } => {
                    let b = bars[0];
                    let at = u64::from(*at) % b.pages();
                    (b.base().as_u64() + at * 0x1000, u64::from(*pages))
                }
                Zap::Outside => (OUTSIDE_BARS, 16),
            };
            Call::HostZap { base, pages }
        }
        Op::DeviceEvent { tdi, reset } => Call::DeviceEvent {
            tdi: tdi.at() % n,
            event: if *reset {
                DeviceEvent::ConventionalReset
            } else {
                DeviceEvent::Disturb
            },
        },
        Op::Misbehave { tdi, how } => Call::Misbehave {
            tdi: tdi.at() % n,
            how: *how,
        },
        Op::DeferFlush { guest, on } => Call::DeferFlush {
            guest: *guest % r.guest_count(),
            on: *on,
        },
        Op::DeferFlushOwner { tdi, on } => Call::DeferFlush {
            guest: r.owner(tdi.at()).unwrap_or(0),
            on: *on,
        },
        Op::RemoveTdi(t) => Call::RemoveTdi(*t),
        Op::RemoveDevice(d) => Call::RemoveDevice(*d),
        Op::DestroyGuest(g) => Call::DestroyGuest(*g),
        Op::CreateGuest => Call::CreateGuest,
        Op::RecreateDevice(d) => Call::RecreateDevice(*d % 2),
        Op::RecreateTdi(t) => Call::RecreateTdi(*t % n),
    }
}

type Outcome = TsmResult<Completion>;

fn done(r: TsmResult<()>) -> Outcome {
    r.map(|()| Completion::Done)
}

/// Runs a call on one firmware; one outcome per firmware call it makes.
/// Creations record the new handle in `h` (a new guest is appended; a device or TDI created
/// again replaces the world's old one).
fn apply(call: &Call, b: &mut dyn Backend, h: &mut Handles, w: &WorldSpec) -> Vec<Outcome> {
    let iface = |t: usize| w.tdis()[t].iface;
    let one = |r: Outcome| vec![r];
    match call {
        Call::Bind { tdi, guest, report } => {
            one(done(b.bind(h.tdi(*tdi), h.guest(*guest), report)))
        }
        Call::Map {
            tdi,
            guest,
            gpa,
            hpa,
            size,
        } => one(done(Gpa::try_new(*gpa).and_then(|gpa| {
            b.map(
                h.tdi(*tdi),
                h.guest(*guest),
                gpa,
                Hpa::try_new(*hpa)?,
                *size,
            )
        }))),
        Call::MapRun {
            tdi,
            guest,
            gpa,
            hpa,
            count,
        } => (0..*count)
            .map(|k| {
                done(Gpa::try_new(gpa + k * 0x1000).and_then(|gpa| {
                    let hpa = Hpa::try_new(hpa + k * 0x1000)?;
                    b.map(h.tdi(*tdi), h.guest(*guest), gpa, hpa, PageSize::Size4K)
                }))
            })
            .collect(),
        Call::Start { guest, tdi } => one(done(b.start(h.guest(*guest), h.tdi(*tdi)))),
        // The device is in ERROR when it reports it (as the scenarios' `device-error`).
        Call::DeviceError(t) => {
            if let Pick::Obj(k) = *t
                && let Err(e) = b.device_event(iface(k), DeviceEvent::Disturb)
            {
                return one(Err(e));
            }
            one(b.device_error(h.tdi(*t)))
        }
        Call::Check(t) => one(b.check(h.tdi(*t))),
        Call::Unbind(t) => one(b.unbind(h.tdi(*t))),
        Call::UnbindForce(t) => one(b.unbind_force(h.tdi(*t))),
        Call::StreamSetup(d) => one(done(b.setup_stream(h.device(*d)))),
        Call::HostUnmap { guest, gpa, size } => one(done(
            Gpa::try_new(*gpa).and_then(|gpa| b.host_unmap(h.guest(*guest), gpa, *size)),
        )),
        Call::HostBlock { guest, gpa, size } => one(done(
            Gpa::try_new(*gpa).and_then(|gpa| b.host_block(h.guest(*guest), gpa, *size)),
        )),
        Call::HostZap { base, pages } => one(done(
            MmioRange::from_raw(*base, *pages).and_then(|r| b.host_zap(r)),
        )),
        Call::DeviceEvent { tdi, event } => one(done(b.device_event(iface(*tdi), *event))),
        Call::Misbehave { tdi, how } => one(done(b.device_misbehave(iface(*tdi), *how))),
        Call::DeferFlush { guest, on } => one(done(b.defer_flush(h.guest(Pick::Obj(*guest)), *on))),
        Call::RemoveTdi(t) => one(done(b.remove_tdi(h.tdi(*t)))),
        Call::RemoveDevice(d) => one(done(b.remove_device(h.device(*d)))),
        Call::DestroyGuest(g) => one(done(b.destroy_guest(h.guest(*g)))),
        Call::CreateGuest => one(done(b.create_guest().map(|g| h.guests.push(g)))),
        Call::RecreateDevice(d) => one(done(
            b.create_device(w.device_rid(*d), &w.bars(*d))
                .map(|id| h.devices[*d] = id),
        )),
        Call::RecreateTdi(t) => {
            let spec = w.tdis()[*t];
            one(done(
                b.create_tdi(h.devices[spec.dev], spec.iface)
                    .map(|id| h.tdis[*t] = id),
            ))
        }
    }
}

/// THE one place where an outcome is rewritten before firmwares are compared: what a
/// platform's ABI or design cannot say as the core does. Each case:
///
/// 1. TDX: TDX_OPERAND_INVALID on a page-info operand stands for both `Misaligned` and
///    `InvalidPageSize` (`platform_tdx::status::decode` names it `Misaligned`), so
///    `InvalidPageSize` compares as `Misaligned` on every firmware.
///
/// 2. A TDI removal past STOP: `DmaContextRemains` compares as `TdiBound` (SEV's TDI_BIND
///    creates the DMA context, the others' first start does: one TDI is kept by its context
///    where the others' is kept by being bound). TDI removals only.
///
/// Nothing else: the SEV backend reads the core's code from `Outcome::detail`, every TDX
/// status the generator reaches decodes to the core's own status, and the generator keeps
/// guest addresses below 2^48 (a 4-level S-EPT refuses wider ones, which the core and the
/// other firmwares map: a platform limit, not an ABI one, so never drawn).
fn normalise(call: &Call, r: Outcome) -> Outcome {
    match (call, r) {
        (_, Err(Error::InvalidPageSize)) => Err(Error::Misaligned),
        (Call::RemoveTdi(_), Err(Error::DmaContextRemains)) => Err(Error::TdiBound),
        (_, r) => r,
    }
}

// ------------------------------------------------------------------------------------------
// Observations: what must agree after every step.

/// A TDI's state at the granularity every firmware's interface reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Unbound,
    Locked,
    Run,
    /// ERROR; `blocking`: leaves remain to be blocked.
    Error {
        blocking: bool,
    },
    Unbinding,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TdiView {
    class: Class,
    owner: Option<Who>,
}

fn view(state: TdiState, h: &Handles) -> TdiView {
    let class = match state {
        TdiState::Unbound => Class::Unbound,
        TdiState::Locked { .. } => Class::Locked,
        TdiState::Run { .. } => Class::Run,
        TdiState::Error { blocking, .. } => Class::Error {
            blocking: blocking.is_some(),
        },
        TdiState::Unbinding { .. } => Class::Unbinding,
    };
    TdiView {
        class,
        owner: state.owner().map(|g| h.who(g)),
    }
}

/// A leaf, with its guest named by the world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct LeafView {
    guest: Who,
    gpa: u64,
    hpa: u64,
    size: u64,
    blocked: bool,
}

fn leaf_view(l: &tsm_core::Leaf, h: &Handles) -> LeafView {
    LeafView {
        guest: h.who(l.guest),
        gpa: l.gpa.as_u64(),
        hpa: l.hpa.as_u64(),
        size: l.size.bytes(),
        blocked: matches!(l.state, LeafState::Blocked { .. }),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Observation {
    /// Per TDI, through the firmware's state query.
    states: Vec<TsmResult<TdiView>>,
    /// Per TDI: (base, pages) of each owned range.
    owned: Vec<TsmResult<Vec<(u64, u64)>>>,
    /// Per guest.
    bound: Vec<TsmResult<u16>>,
    /// Per TDI, the device model's TDISP state of its interface.
    device: Vec<TsmResult<TdispState>>,
    /// Every leaf in the window, by host address.
    leaves: TsmResult<Vec<LeafView>>,
    /// Per TDI, the guest whose private memory its DMA reaches (`None`: shared only), read
    /// from each platform's own IOMMU structure (`Backend::dma_reach`).
    reach: Vec<TsmResult<Option<Who>>>,
}

fn observe(s: &mut dyn Subject, h: &Handles, w: &WorldSpec) -> Observation {
    let states = h
        .tdis
        .iter()
        .map(|&t| s.backend().tdi_state(t).map(|st| view(st, h)))
        .collect();
    let p = s.peek();
    Observation {
        states,
        owned: h
            .tdis
            .iter()
            .map(|&t| {
                p.owned(t)
                    .map(|v| v.iter().map(|r| (r.base().as_u64(), r.pages())).collect())
            })
            .collect(),
        bound: h.guests.iter().map(|&g| p.bound_tdis(g)).collect(),
        device: w.tdis().iter().map(|t| p.device_state(t.iface)).collect(),
        leaves: p
            .leaves()
            .map(|ls| ls.iter().map(|l| leaf_view(l, h)).collect()),
        reach: {
            drop(p);
            h.tdis
                .iter()
                .map(|&t| {
                    s.backend().dma_reach(t).map(|r| match r {
                        tsm_core::dma::DmaReach::Private(g) => Some(h.who(g)),
                        tsm_core::dma::DmaReach::SharedOnly => None,
                    })
                })
                .collect()
        },
    }
}

/// The leaf at `gpa` of world guest `g` through the firmware's own leaf query.
fn query_leaf(s: &mut dyn Subject, h: &Handles, g: usize, gpa: u64) -> TsmResult<Option<LeafView>> {
    let gpa = Gpa::try_new(gpa)?;
    s.backend()
        .leaf(h.guests[g], gpa)
        .map(|l| l.map(|l| leaf_view(&l, h)))
}

/// Field-by-field differences between two observations.
fn differences(a: &Observation, b: &Observation, la: &str, lb: &str) -> String {
    let mut out = String::new();
    let mut field = |name: &str, i: Option<usize>, x: &dyn fmt::Debug, y: &dyn fmt::Debug| {
        let at = i.map_or(String::new(), |i| format!("[{i}]"));
        let _ = writeln!(
            out,
            "    {name}{at}: {la} {x:?}\n    {name}{at}: {lb} {y:?}"
        );
    };
    for i in 0..a.states.len() {
        if a.states[i] != b.states[i] {
            field("state of t", Some(i), &a.states[i], &b.states[i]);
        }
        if a.owned[i] != b.owned[i] {
            field("owned ranges of t", Some(i), &a.owned[i], &b.owned[i]);
        }
        if a.device[i] != b.device[i] {
            field(
                "device TDISP state of t",
                Some(i),
                &a.device[i],
                &b.device[i],
            );
        }
        if a.reach[i] != b.reach[i] {
            field("DMA reach of t", Some(i), &a.reach[i], &b.reach[i]);
        }
    }
    for i in 0..a.bound.len() {
        if a.bound[i] != b.bound[i] {
            field("bound TDIs of g", Some(i), &a.bound[i], &b.bound[i]);
        }
    }
    if a.leaves != b.leaves {
        match (&a.leaves, &b.leaves) {
            (Ok(x), Ok(y)) => {
                let xs: BTreeSet<_> = x.iter().collect();
                let ys: BTreeSet<_> = y.iter().collect();
                let only_a: Vec<_> = xs.difference(&ys).collect();
                let only_b: Vec<_> = ys.difference(&xs).collect();
                field("leaves only in", None, &only_a, &only_b);
            }
            (x, y) => field("leaves", None, x, y),
        }
    }
    out
}

// ------------------------------------------------------------------------------------------
// Reach: how many cases got where.

#[derive(Default)]
struct Tally {
    counts: RefCell<BTreeMap<&'static str, usize>>,
    steps: RefCell<usize>,
}

const CASES: &str = "cases";

/// What a case reached (each counted once per case).
#[derive(Default)]
struct Reached(BTreeSet<&'static str>);

impl Reached {
    fn note(&mut self, what: &'static str) {
        self.0.insert(what);
    }

    fn states(&mut self, o: &Observation) {
        for v in o.states.iter().flatten() {
            self.note(match v.class {
                Class::Unbound => continue,
                Class::Locked => "state: bound (CONFIG_LOCKED)",
                Class::Run => "state: running",
                Class::Error { .. } => "state: error",
                Class::Unbinding => "state: mid-unbind",
            });
        }
        if let Ok(l) = &o.leaves {
            if l.len() > 64 {
                self.note("more than 64 leaves");
            }
            if l.iter().any(|l| l.blocked) {
                self.note("a blocked leaf");
            }
        }
        if o.reach.iter().any(|r| matches!(r, Ok(Some(_)))) {
            self.note("DMA reaches private memory");
        }
    }

    fn outcome(&mut self, call: &Call, r: &Outcome) {
        let what = match (call, r) {
            (Call::Unbind(_), Ok(Completion::Resumable)) => "unbind: Resumable",
            (Call::Unbind(_), Ok(Completion::Done)) => "unbind: Done",
            (Call::UnbindForce(_), Ok(Completion::Done)) => "unbind-force: Done",
            (Call::Bind { .. }, Err(Error::StreamCut)) => "bind: StreamCut",
            (Call::Check(_) | Call::DeviceError(_), Ok(Completion::Resumable)) => {
                "check/device-error: Resumable"
            }
            (Call::Bind { .. }, Ok(_)) => "bind: Ok",
            (Call::Start { .. }, Ok(_)) => "start: Ok",
            (Call::Map { .. } | Call::MapRun { .. }, Ok(_)) => "map: Ok",
            (Call::HostUnmap { .. } | Call::HostBlock { .. }, Err(Error::TdiBound)) => {
                "host unmap/block: TdiBound"
            }
            (Call::HostUnmap { .. } | Call::HostBlock { .. }, Ok(_)) => "host unmap/block: Ok",
            (Call::HostZap { .. }, Err(Error::TdiBound)) => "zap: TdiBound",
            (Call::RemoveTdi(_) | Call::RemoveDevice(_) | Call::DestroyGuest(_), Ok(_)) => {
                "remove/destroy: Ok"
            }
            (_, Err(Error::TlbFlushPending)) => "TlbFlushPending",
            (_, Err(Error::DeviceUnresponsive)) => "DeviceUnresponsive",
            (_, Err(Error::DeviceRefused | Error::DeviceMalformed)) => {
                "DeviceRefused/DeviceMalformed"
            }
            (_, Err(Error::InvalidHandle)) => "InvalidHandle",
            (_, Err(Error::Misaligned)) => "Misaligned",
            (
                Call::Bind { .. },
                Err(
                    Error::RangeOutsideDevice
                    | Error::RangesOverlap
                    | Error::TooManyRanges
                    | Error::InvalidRange,
                ),
            ) => "bind: report refused",
            (_, Err(Error::HpaNotOwned | Error::NotOwner)) => "HpaNotOwned/NotOwner",
            _ => return,
        };
        self.note(what);
    }
}

impl Tally {
    fn add(&self, reached: &Reached, steps: usize) {
        let mut c = self.counts.borrow_mut();
        *c.entry(CASES).or_default() += 1;
        for what in &reached.0 {
            *c.entry(what).or_default() += 1;
        }
        *self.steps.borrow_mut() += steps;
    }

    fn fraction(&self, what: &str) -> f64 {
        let c = self.counts.borrow();
        c.get(what).copied().unwrap_or(0) as f64 / c.get(CASES).copied().unwrap_or(0).max(1) as f64
    }
}

// ------------------------------------------------------------------------------------------
// One case on all four firmwares.

/// Where SEV is in the firmwares `with_firmwares` gives (the last).
const SEV_AT: usize = 3;

/// Builds the four firmwares and runs `f` on them, SEV last ([`SEV_AT`]): SEV-TIO's one ASID
/// fence per guest is its TLB flush and its trusted DMA contexts' IOTLB invalidation at once,
/// raised when an unbind blocks a context and awaited before STOP, so while a test holds a
/// guest's flushes SEV serialises the unbinds the others run side by side (one's STOP waits
/// for another's fence). Cases compare SEV up to their first hold, the core with TDX to the
/// end; SEV's holds have their own tests.
fn with_firmwares(f: impl FnOnce(&mut [&mut dyn Subject]) -> TestCaseResult) -> TestCaseResult {
    let core_tsm = Box::new(Relayed::with_reserved(
        MemTable::<CORE_LEAVES>::new(),
        ModelDevice::model(),
        reserved(),
    ));
    let mut mem4 = vec![Page::ZERO; POOL_PAGES];
    let mut mem5 = vec![Page::ZERO; POOL_PAGES];
    let tdx4: Box<TdxFirmware<'_>> = Box::new(TdxFirmware::with_reserved(
        Sept::new(
            FramePool::new(&mut mem4, POOL4_PHYS).unwrap(),
            SeptLevels::Four,
        ),
        ModelSession::model(),
        reserved(),
    ));
    let tdx5: Box<TdxFirmware<'_>> = Box::new(TdxFirmware::with_reserved(
        Sept::new(
            FramePool::new(&mut mem5, POOL5_PHYS).unwrap(),
            SeptLevels::Five,
        ),
        ModelSession::model(),
        reserved(),
    ));
    let mut rmp = vec![RmpEntry::new(); WINDOW_PAGES];
    let mut index = vec![0; rmp_index_words(WINDOW_PAGES)];
    let sev =
        Box::new(SevBackend::with_rmp(&mut rmp, &mut index, WINDOW_BASE, reserved()).unwrap());
    let mut core = CoreSubject(CoreBackend::new(&core_tsm, "core"));
    let mut t4 = TdxSubject("tdx4", TdxBackend::new(&tdx4));
    let mut t5 = TdxSubject("tdx5", TdxBackend::new(&tdx5));
    let mut sev = SevSubject(sev);
    f(&mut [&mut core, &mut t4, &mut t5, &mut sev])
}

/// A failure: the trace so far and what went wrong.
fn failure(trace: &str, what: String) -> TestCaseError {
    TestCaseError::fail(format!("\n{trace}{what}"))
}

fn outcome_text(r: &[Outcome]) -> String {
    match r {
        [one] => match one {
            Ok(Completion::Done) => "Ok".into(),
            Ok(Completion::Resumable) => "Resumable".into(),
            Ok(Completion::Relay(n)) => format!("Relay({n})"),
            Err(e) => format!("{e:?}"),
        },
        many => {
            let ok = many.iter().filter(|r| r.is_ok()).count();
            let first_err = many.iter().find_map(|r| r.err());
            format!("{ok} of {} Ok, first refusal {first_err:?}", many.len())
        }
    }
}

/// Checks that every firmware agrees with the core after a step.
fn compare(
    fws: &mut [&mut dyn Subject],
    handles: &[Handles],
    w: &WorldSpec,
    trace: &str,
) -> Result<Observation, TestCaseError> {
    let obs: Vec<Observation> = fws
        .iter_mut()
        .zip(handles)
        .map(|(s, h)| observe(&mut **s, h, w))
        .collect();
    for (i, o) in obs.iter().enumerate().skip(1) {
        if *o != obs[0] {
            return Err(failure(
                trace,
                format!(
                    "firmwares disagree after the last step ({} vs {}):\n{}",
                    fws[0].label(),
                    fws[i].label(),
                    differences(&obs[0], o, fws[0].label(), fws[i].label())
                ),
            ));
        }
    }
    // Every leaf any firmware holds, read back through each firmware's own leaf query.
    let mut known: BTreeSet<(usize, u64)> = BTreeSet::new();
    for o in &obs {
        for l in o.leaves.iter().flatten() {
            match l.guest {
                Who::Guest(g) => {
                    known.insert((g, l.gpa));
                }
                Who::Unknown(slot) => {
                    return Err(failure(
                        trace,
                        format!(
                            "a leaf of guest slot {slot}, which the world never created: {l:?}"
                        ),
                    ));
                }
            }
        }
    }
    for &(g, gpa) in &known {
        let got: Vec<TsmResult<Option<LeafView>>> = fws
            .iter_mut()
            .zip(handles)
            .map(|(s, h)| query_leaf(&mut **s, h, g, gpa))
            .collect();
        for (i, x) in got.iter().enumerate().skip(1) {
            if *x != got[0] {
                return Err(failure(
                    trace,
                    format!(
                        "leaf query of g{g} {gpa:#x} disagrees: {} {:?}, {} {x:?}",
                        fws[0].label(),
                        got[0],
                        fws[i].label()
                    ),
                ));
            }
        }
        if got[0].as_ref().map(|l| l.map(|l| l.gpa)) != Ok(Some(gpa)) {
            return Err(failure(
                trace,
                format!(
                    "leaf query of g{g} {gpa:#x} does not find the leaf: {:?}",
                    got[0]
                ),
            ));
        }
    }
    for s in fws.iter() {
        if let Err(v) = s.peek().invariants() {
            return Err(failure(
                trace,
                format!("{}: invariant broken: {v:?}", s.label()),
            ));
        }
    }
    Ok(obs.into_iter().next().unwrap())
}

/// Runs `call` on every firmware and compares the outcomes; appends the call to the trace.
/// Runs `call` on every firmware and appends it to the trace with its outcome: `Ok` with the
/// outcomes when all firmwares agree, `Err` with every firmware's outcomes (also traced) when
/// they do not.
fn step(
    fws: &mut [&mut dyn Subject],
    handles: &mut [Handles],
    w: &WorldSpec,
    call: &Call,
    trace: &mut String,
) -> Result<Vec<Outcome>, Vec<Vec<Outcome>>> {
    let resumable = matches!(
        call,
        Call::Unbind(_) | Call::UnbindForce(_) | Call::Check(_) | Call::DeviceError(_)
    );
    let mut first = None;
    let outcomes: Vec<Vec<Outcome>> = fws
        .iter_mut()
        .zip(handles.iter_mut())
        .map(|(s, h)| {
            let mut out: Vec<Outcome> = apply(call, s.backend(), h, w)
                .into_iter()
                .map(|r| normalise(call, r))
                .collect();
            first.get_or_insert_with(|| out.clone());
            // Each firmware bounds the work of one call (capacity.rs, UNBIND_WORK_PER_CALL)
            // in units its own table defines, so how many `Resumable` calls an unbind or a
            // device error takes differs between them: the call is repeated until it is not
            // `Resumable`, and that outcome (and the state after it) is compared.
            let mut calls = 0;
            while resumable && out.last() == Some(&Ok(Completion::Resumable)) && calls < 1000 {
                out = apply(call, s.backend(), h, w)
                    .into_iter()
                    .map(|r| normalise(call, r))
                    .collect();
                calls += 1;
            }
            // Likewise a call that puts a TDI in ERROR blocks its leaves within one call's
            // work: device-error calls block the rest, on each firmware that has some left.
            for t in 0..h.tdis.len() {
                let mut calls = 0;
                while calls < 1000
                    && matches!(
                        s.peek().state(h.tdis[t]),
                        Ok(TdiState::Error {
                            blocking: Some(_),
                            ..
                        })
                    )
                {
                    // The firmware's call alone: the device is not told again.
                    let _ = s.backend().device_error(h.tdi(Pick::Obj(t)));
                    calls += 1;
                }
            }
            out
        })
        .collect();
    // Operations of the case are numbered as in the shrunk list; `--` marks calls the test
    // adds itself (bringing firmwares back in step, the final cleanup).
    if !trace.ends_with(']') {
        trace.push_str("  [--]");
    }
    let _ = write!(trace, " {call} -> {}", outcome_text(&outcomes[0]));
    let differ = outcomes.iter().any(|o| *o != outcomes[0]);
    if differ {
        for (s, o) in fws.iter().zip(&outcomes) {
            let _ = write!(trace, "\n      {:<5} {}", s.label(), outcome_text(o));
        }
        if outcomes.iter().any(|o| o.len() > 1) {
            let _ = write!(trace, "\n      (per call: {outcomes:?})");
        }
        trace.push('\n');
        return Err(outcomes);
    }
    trace.push('\n');
    // The first call's outcome on the core: what the case reached (a `Resumable` included).
    Ok(first.unwrap_or_default())
}

/// [`step`], failing the case when the firmwares disagree.
fn step_agreeing(
    fws: &mut [&mut dyn Subject],
    handles: &mut [Handles],
    w: &WorldSpec,
    call: &Call,
    trace: &mut String,
) -> Result<Vec<Outcome>, TestCaseError> {
    step(fws, handles, w, call, trace).map_err(|_| failure(trace, "outcomes disagree".into()))
}

fn run_case(case: &Case, tally: &Tally) -> TestCaseResult {
    with_firmwares(|all| {
        let w = &case.world;
        let mut handles = all
            .iter_mut()
            .map(|s| setup(&mut **s, w))
            .collect::<Result<Vec<_>, _>>()
            .map_err(TestCaseError::fail)?;
        let mut trace = format!("trace (world {w:?}):\n");
        let mut reached = Reached::default();
        // SEV (last) is compared up to the first hold of a guest's flushes (see
        // `with_firmwares`), the others to the end.
        let mut n = all.len();
        let mut fws = &mut all[..n];
        compare(fws, &handles, w, &trace)?;
        let mut held = vec![false; w.guests];
        let mut steps = 0;
        for (k, op) in case.ops() {
            let holds = matches!(
                op,
                Op::DeferFlush { on: true, .. } | Op::DeferFlushOwner { on: true, .. }
            );
            if holds && n == SEV_AT + 1 {
                n = SEV_AT;
                let _ = writeln!(trace, "  -- sev compared no further (a hold) --");
            }
            fws = &mut all[..n];
            let leaves = fws[0].peek().leaves().unwrap();
            let call = {
                let peek = fws[0].peek();
                let r = Reference {
                    peek: &*peek,
                    handles: &handles[0],
                    world: w,
                };
                resolve(op, &r, &leaves)
            };
            let _ = write!(trace, "  [{k:>2}]");
            match step(fws, &mut handles[..n], w, &call, &mut trace) {
                Ok(out) => {
                    for o in &out {
                        reached.outcome(&call, o);
                    }
                }
                Err(_) => return Err(failure(&trace, "outcomes disagree".into())),
            }
            if let Call::DeferFlush { guest, on } = call {
                held[guest] = on;
            }
            held.resize(handles[0].guests.len(), false);
            let obs = compare(fws, &handles[..n], w, &trace)?;
            reached.states(&obs);
            steps += 1;
        }
        // Every TDI unbinds completely once devices behave and flushes complete.
        let _ = writeln!(trace, "  -- cleanup --");
        for t in 0..handles[0].tdis.len() {
            step_agreeing(
                fws,
                &mut handles[..n],
                w,
                &Call::Misbehave { tdi: t, how: None },
                &mut trace,
            )?;
        }
        for g in 0..handles[0].guests.len() {
            step_agreeing(
                fws,
                &mut handles[..n],
                w,
                &Call::DeferFlush {
                    guest: g,
                    on: false,
                },
                &mut trace,
            )?;
        }
        for t in 0..handles[0].tdis.len() {
            let mut calls = 0;
            loop {
                let out = step_agreeing(
                    fws,
                    &mut handles[..n],
                    w,
                    &Call::Unbind(Pick::Obj(t)),
                    &mut trace,
                )?;
                compare(fws, &handles[..n], w, &trace)?;
                calls += 1;
                match out[0] {
                    Ok(Completion::Resumable) if calls < 100 => {}
                    Ok(Completion::Done) | Err(Error::InvalidHandle) => break,
                    other => {
                        return Err(failure(
                            &trace,
                            format!("t{t} does not unbind to Done: {other:?} after {calls} calls"),
                        ));
                    }
                }
            }
        }
        let obs = compare(fws, &handles[..n], w, &trace)?;
        if obs.leaves != Ok(Vec::new()) {
            return Err(failure(
                &trace,
                format!("leaves after every unbind: {:?}", obs.leaves),
            ));
        }
        tally.add(&reached, steps);
        Ok(())
    })
}

/// The firmwares' tables are large: give the runner room.
fn on_big_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn firmwares_agree_on_random_operation_sequences() {
    on_big_stack(run_all);
}

/// Once a disagreement (K1): TDX refused a new TLB epoch while the guest's previous one was
/// unflushed, the core's table and SEV's fences did not, so an unbind with the owner's flushes
/// held stopped at Track on TDX only. Every platform now keeps one epoch outstanding
/// (`SecureTable::track`); the minimal sequence agrees, the second unbind waiting everywhere.
#[test]
fn one_outstanding_tlb_epoch_on_every_firmware() {
    on_big_stack(|| {
        let w = WorldSpec {
            guests: 2,
            bar1: false,
            dev1_pages: 512,
            tdis: 2,
        };
        let result = with_firmwares(|fws| {
            let mut handles: Vec<Handles> = fws
                .iter_mut()
                .map(|s| setup(&mut **s, &w).unwrap())
                .collect();
            let mut trace = String::new();
            let g0 = Pick::Obj(0);
            for call in [
                Call::Bind {
                    tdi: Pick::Obj(0),
                    guest: g0,
                    report: vec![wire_range(DEV0_BAR0, 512, 0, 0)],
                },
                Call::Bind {
                    tdi: Pick::Obj(1),
                    guest: g0,
                    report: vec![wire_range(DEV0_BAR0 + 0x20_0000, 512, 0, 0)],
                },
                Call::DeferFlush { guest: 0, on: true },
                Call::Unbind(Pick::Obj(0)),
            ] {
                step_agreeing(fws, &mut handles, &w, &call, &mut trace)?;
            }
            let out = step_agreeing(
                fws,
                &mut handles,
                &w,
                &Call::Unbind(Pick::Obj(1)),
                &mut trace,
            )?;
            assert_eq!(out, [Err(Error::TlbFlushPending)], "{trace}");
            step_agreeing(
                fws,
                &mut handles,
                &w,
                &Call::DeferFlush {
                    guest: 0,
                    on: false,
                },
                &mut trace,
            )?;
            let out = step_agreeing(
                fws,
                &mut handles,
                &w,
                &Call::Unbind(Pick::Obj(1)),
                &mut trace,
            )?;
            assert_eq!(out, [Ok(Completion::Done)], "{trace}");
            compare(fws, &handles, &w, &trace)?;
            Ok(())
        });
        result.unwrap();
    });
}

fn run_all() {
    let tally = Tally::default();
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        // A failing case stops at its first disagreement, so shrinking runs are short: shrink
        // far enough to leave a sequence a person can read (at most two minutes).
        max_shrink_iters: 8192,
        max_shrink_time: 120_000,
        rng_seed: seed(),
        ..Config::default()
    });
    let started = Instant::now();
    match runner.run(&case(), |c| run_case(&c, &tally)) {
        Ok(()) => {}
        Err(TestError::Fail(why, case)) => {
            panic!(
                "firmwares disagree; shrunk case:{why}\nshrunk operations (numbered as in the \
                 trace; those after the failing one did not run):\n{case}"
            )
        }
        Err(e) => panic!("{e}"),
    }
    let total = tally.counts.borrow().get(CASES).copied().unwrap_or(0);
    println!(
        "differential: {total} cases, {} steps, in {:.1} s",
        tally.steps.borrow(),
        started.elapsed().as_secs_f64()
    );
    for (what, n) in tally.counts.borrow().iter().filter(|(k, _)| **k != CASES) {
        println!(
            "  {what:<34} {n:>6} cases {:>5.1}%",
            100.0 * *n as f64 / total.max(1) as f64
        );
    }
    assert_eq!(total, cases() as usize, "every case ran once");
    if total < MIN_CASES_FOR_REACH {
        println!("reach not checked below {MIN_CASES_FOR_REACH} cases");
        return;
    }
    // About two thirds of what a run of the default size reaches: far from flaky, and a
    // generator that stops reaching a state fails.
    for (what, least) in [
        ("state: bound (CONFIG_LOCKED)", 0.85),
        ("state: running", 0.6),
        ("DMA reaches private memory", 0.5),
        ("state: error", 0.45),
        ("state: mid-unbind", 0.45),
        ("unbind: Resumable", 0.25),
        ("check/device-error: Resumable", 0.08),
        ("more than 64 leaves", 0.3),
        ("TlbFlushPending", 0.1),
        ("DeviceUnresponsive", 0.18),
        ("host unmap/block: TdiBound", 0.3),
        ("bind: report refused", 0.35),
    ] {
        let got = tally.fraction(what);
        assert!(
            got >= least,
            "only {:.1}% of the cases reached {what:?} (want {:.0}%)",
            100.0 * got,
            100.0 * least
        );
    }
}
