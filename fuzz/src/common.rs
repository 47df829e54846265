//! Checks shared by the dispatcher targets: the firmware's invariants, the consistency of its
//! record tables, and the comparison of two snapshots under an exemption.

use tsm_core::capacity::MAX_TDIS;
use tsm_core::device_model::Misbehaviour;
use tsm_core::ownership::Ownership;
use tsm_core::tdisp::function_id;
use tsm_core::tsm::Snapshot;
use tsm_core::{
    DeviceId, GuestId, IdeStream, Leaf, LeafState, MmioRange, RequesterId, SecureSession,
    SecureTable, TdiId, Tsm,
};

use crate::exempt::Exempt;

/// Fails the run with a message (the fuzz target's crash).
#[track_caller]
pub fn fail(what: impl core::fmt::Display) -> ! {
    panic!("{what}")
}

/// Prints `what` when `TSM_FUZZ_TRACE` is set (reading a failing input by hand).
pub fn trace(what: &str) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("TSM_FUZZ_TRACE").is_some()) {
        eprintln!("{what}");
    }
}

/// `tsm_tests::invariants::check` (every private leaf lies in a range owned by a TDI bound to
/// the leaf's guest, owned ranges never overlap, an unbound TDI owns nothing, a TDI that has
/// blocked all its leaves has no live leaf).
pub fn invariants<T: SecureTable + tsm_tests::backend::FlushControl, S: SecureSession>(
    tsm: &Tsm<T, S>,
    after: &str,
) {
    if let Err(v) = tsm_tests::invariants::check(tsm) {
        fail(format!("invariant broken after {after}: {v:?}"));
    }
}

/// Whether `rec`'s device has a live IDE stream in `s` (the only case its DMA may reach private
/// memory; [`dma_oracle`] asks it).
pub fn on_live_stream<U>(s: &Snapshot<U>, rec: &tsm_core::registry::Tdi) -> bool {
    s.devices
        .get(usize::from(rec.device.slot()))
        .and_then(Option::as_ref)
        .is_some_and(|d| d.stream == IdeStream::Live)
}

/// One platform's trusted IOMMU structure as [`dma_oracle`] reads it from the firmware: its
/// entries (SEV's sDTEs, TDX's PASID entries), whose each is, and whether one translates.
pub trait DmaTable {
    /// One entry.
    type Entry: core::fmt::Debug;
    /// The entry's name in a failure ("sDTE").
    const ENTRY: &'static str;
    /// The guest's name in a failure ("guest", "TD").
    const GUEST: &'static str;
    /// Every entry.
    fn entries(&self) -> &[Self::Entry];
    /// Whether `e` is the entry of the TDI `rec`.
    fn is_for(e: &Self::Entry, rec: &tsm_core::registry::Tdi) -> bool;
    /// The guest `e` was made for.
    fn guest(e: &Self::Entry) -> GuestId;
    /// Whether `e` translates a T=1 request into `g`'s private memory: `g`'s, active and
    /// naming `g`'s memory as the platform's hardware would read it.
    fn translates(&self, e: &Self::Entry, g: GuestId) -> bool;
    /// What [`DmaTable::translates`] read of `g` beside the entry, for a failure ("ASID 5").
    fn read_of(&self, g: GuestId) -> String;
}

/// Trusted DMA after every call, read from the firmware's own structures: a TDI's DMA reaches
/// a guest's private memory (`reach`, the core's `dma_reach`) only while the TDI is RUN bound
/// to that guest, its core record says the context is active, and its entry in `table`
/// translates into that guest's memory; a RUN TDI with an active context on a live stream does
/// reach it; and every entry belongs to a TDI bound to the entry's guest (none outlives an
/// unbind or a TDI). Marks in `reached` the TDI slots that reach private memory; whether any
/// does.
pub fn dma_oracle<U, D: DmaTable>(
    core: &Snapshot<U>,
    table: &D,
    reach: impl Fn(TdiId) -> tsm_core::TsmResult<tsm_core::dma::DmaReach>,
    reached: &mut [bool],
    what: &str,
) -> bool {
    use tsm_core::TdiState;
    use tsm_core::dma::{DmaReach, DmaState};
    let (name, guest) = (D::ENTRY, D::GUEST);
    let mut private = false;
    for (slot, rec) in core.tdis.iter().enumerate() {
        let Some(rec) = rec else { continue };
        let t = TdiId::from_slot(slot as u16);
        let reach =
            reach(t).unwrap_or_else(|e| fail(format!("dma_reach({t:?}): {e:?} after {what}")));
        let entry = table.entries().iter().find(|e| D::is_for(e, rec));
        if entry.is_some_and(|e| rec.state.owner() != Some(D::guest(e))) {
            fail(format!(
                "{name} {entry:?} of a TDI not bound to its {guest} ({:?}): {what}",
                rec.state
            ));
        }
        let live = on_live_stream(core, rec);
        let active = rec.dma == Some(DmaState::Active);
        match reach {
            DmaReach::Private(g) => {
                let translates = entry.is_some_and(|e| table.translates(e, g));
                if rec.state != (TdiState::Run { owner: g }) || !active || !translates {
                    fail(format!(
                        "TDI {slot} reaches {g:?}'s private memory: {:?}, context {:?}, \
                         {name} {entry:?}, {}: {what}",
                        rec.state,
                        rec.dma,
                        table.read_of(g)
                    ));
                }
                private = true;
                if let Some(r) = reached.get_mut(slot) {
                    *r = true;
                }
            }
            DmaReach::SharedOnly => {
                if matches!(rec.state, TdiState::Run { .. }) && active && live {
                    fail(format!(
                        "TDI {slot} runs with its {name} accepted, yet reaches shared memory \
                         only: {what}"
                    ));
                }
            }
        }
    }
    for e in table.entries() {
        if !core.tdis.iter().flatten().any(|r| D::is_for(e, r)) {
            fail(format!("{name} {e:?} of no TDI: {what}"));
        }
    }
    private
}

/// The record tables agree with each other: each guest's bound-TDI count is the number of TDIs
/// bound to it (and a missing guest owns none), the device table and the device slots hold
/// the same devices, every TDI's device lists it (and lists nothing else), and every owned
/// range belongs to a TDI bound to the range's guest.
pub fn registry_consistent<U>(s: &Snapshot<U>) -> Result<(), String> {
    for (g, guest) in s.guests.iter().enumerate() {
        let id = GuestId::from_slot(g as u16);
        let bound = s
            .tdis
            .iter()
            .flatten()
            .filter(|t| t.state.owner() == Some(id))
            .count();
        match guest {
            Some(rec) if usize::from(rec.bound_tdis) != bound => {
                return Err(format!(
                    "guest {g} counts {} bound TDIs, {bound} are bound to it",
                    rec.bound_tdis
                ));
            }
            None if bound != 0 => return Err(format!("{bound} TDIs bound to missing guest {g}")),
            _ => {}
        }
    }
    for (d, (claim, dev)) in s.claims.iter().zip(&s.devices).enumerate() {
        match (claim, dev) {
            (None, None) => {}
            (Some(c), Some(dev)) if c.functions == dev.functions && c.bars == dev.bars => {
                for (t, iface) in &dev.tdis {
                    let rec = s.tdis.get(usize::from(t.slot())).and_then(Option::as_ref);
                    if rec.is_none_or(|r| {
                        r.device != DeviceId::from_slot(d as u16) || r.iface != *iface
                    }) {
                        return Err(format!("device {d} lists TDI {t:?} ({iface:?}): {rec:?}"));
                    }
                }
            }
            _ => return Err(format!("device slot {d}: claim {claim:?}, device {dev:?}")),
        }
    }
    for (t, tdi) in s.tdis.iter().enumerate() {
        let Some(tdi) = tdi else { continue };
        let id = TdiId::from_slot(t as u16);
        let listed = s
            .devices
            .get(usize::from(tdi.device.slot()))
            .and_then(Option::as_ref)
            .is_some_and(|d| d.tdis.iter().any(|(x, i)| *x == id && *i == tdi.iface));
        if !listed {
            return Err(format!(
                "TDI {t} is not listed by its device {:?}",
                tdi.device
            ));
        }
    }
    // A device's report read belongs to the one TDI of it whose bind waits on the device.
    for (d, dev) in s.devices.iter().enumerate() {
        let Some(dev) = dev else { continue };
        for &(t, _) in &dev.tdis {
            let binding = s
                .tdis
                .get(usize::from(t.slot()))
                .and_then(Option::as_ref)
                .is_some_and(|r| {
                    matches!(
                        r.exchange.map(|e| e.op),
                        Some(tsm_core::DeviceOp::Bind { .. })
                    )
                });
            let reads = dev.report_read.as_ref().is_some_and(|r| r.tdi == t);
            if binding != reads {
                return Err(format!(
                    "device {d}: TDI {t:?} binding {binding}, the report read names it {reads}"
                ));
            }
        }
        if let Some(r) = &dev.report_read
            && !dev.tdis.iter().any(|(t, _)| *t == r.tdi)
        {
            return Err(format!(
                "device {d} reads a report for {:?}, not its TDI",
                r.tdi
            ));
        }
    }
    for o in s.owners.iter() {
        let owner = s
            .tdis
            .get(usize::from(o.tdi.slot()))
            .and_then(Option::as_ref)
            .and_then(|t| t.state.owner());
        if owner != Some(o.guest) {
            return Err(format!("owned range {o:?}, TDI owner {owner:?}"));
        }
    }
    Ok(())
}

/// What differs between two core snapshots that `exempt` does not allow: the device table,
/// the guests and the ownership never change under any exemption; the exempt TDI's record,
/// its device's record and (under a forced unbind that cut the stream) the device's other
/// TDIs only as [`Exempt::check_record`], [`Exempt::check_device`] and
/// [`Exempt::check_sibling`] say; everything else is equal. The secure table is compared whole
/// unless the exemption may touch it ([`Exempt::touches_table`]): then leaf by leaf
/// ([`leaves_diff`]) and its epochs by the target.
pub fn core_diff<U: PartialEq>(
    before: &Snapshot<U>,
    after: &Snapshot<U>,
    exempt: Exempt,
) -> Result<(), String> {
    let mut parts = Vec::new();
    if before.claims != after.claims {
        parts.push("device table".to_string());
    }
    if before.guests != after.guests {
        parts.push(format!("guests {:?} -> {:?}", before.guests, after.guests));
    }
    if before.owners != after.owners {
        parts.push("ownership".to_string());
    }
    let rec = |s: &Snapshot<U>, t: TdiId| s.tdis.get(usize::from(t.slot())).cloned().flatten();
    let device = exempt.tdi().and_then(|t| rec(before, t)).map(|r| r.device);
    let mut cut = false;
    for (d, (b, a)) in before.devices.iter().zip(&after.devices).enumerate() {
        let mine = device == Some(DeviceId::from_slot(d as u16));
        match (b, a) {
            (Some(b), Some(a)) => {
                if mine && b.stream == IdeStream::Live && a.stream == IdeStream::Cut {
                    cut = true;
                }
                if let Err(e) = exempt.check_device(mine, b, a) {
                    parts.push(e);
                }
            }
            (None, None) => {}
            _ => parts.push(format!("device {d}: {b:?} -> {a:?}")),
        }
    }
    for (t, (b, a)) in before.tdis.iter().zip(&after.tdis).enumerate() {
        let id = TdiId::from_slot(t as u16);
        match (b, a) {
            (Some(b), Some(a)) if exempt.tdi() == Some(id) => {
                if let Err(e) = exempt.check_record(b, a) {
                    parts.push(e);
                }
            }
            (Some(b), Some(a)) if Some(b.device) == device => {
                if let Err(e) = exempt.check_sibling(cut, b, a) {
                    parts.push(e);
                }
            }
            _ if b == a => {}
            _ => parts.push(format!("TDI {t}: {b:?} -> {a:?}")),
        }
    }
    if !exempt.touches_table() && before.table() != after.table() {
        parts.push("secure table".to_string());
    }
    if parts.is_empty() {
        Ok(())
    } else {
        Err(parts.join("; "))
    }
}

/// Every leaf of the secure table, in host-address order (at most `MAX_TDIS` * 4 of them).
pub fn leaves<T: SecureTable>(table: &T) -> Vec<Leaf> {
    let Ok(everything) = MmioRange::from_raw(0, tsm_core::addr::PHYS_ADDR_LIMIT >> 12) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut from = everything.base();
    while let Some(leaf) = table.next_leaf(everything, from) {
        out.push(leaf);
        if out.len() >= MAX_TDIS * 4 {
            break;
        }
        match leaf.hpa.checked_add(leaf.size.bytes()) {
            Some(next) => from = next,
            None => break,
        }
    }
    out
}

/// What differs between the secure table's leaves before and after a refusal beyond what
/// `exempt` allows (`owners`: the ownership before the call). Leaves of the exempt TDI (whose
/// host pages lie in a private range it owns) may only go `Mapped` -> `Blocked`
/// ([`Exempt::blocks`]) or be removed ([`Exempt::removes`]). Every other leaf, of every guest,
/// is exactly as it was; no leaf appears, moves, changes size or host address, changes its
/// blocking epoch or goes `Blocked` -> `Mapped`.
pub fn leaves_diff(
    owners: &Ownership,
    before: &[Leaf],
    after: &[Leaf],
    exempt: Exempt,
) -> Result<(), String> {
    let ranges: Vec<MmioRange> = exempt
        .tdi()
        .map(|t| owners.private_of(t).collect())
        .unwrap_or_default();
    let of_tdi = |l: &Leaf| ranges.iter().any(|r| r.contains_page(l.hpa, l.size));
    let key = |l: &Leaf| (l.guest, l.gpa, l.hpa, l.size);
    let find = |list: &[Leaf], l: &Leaf| {
        list.binary_search_by_key(&l.hpa, |x| x.hpa)
            .ok()
            .and_then(|i| list.get(i))
            .filter(|x| key(x) == key(l))
            .copied()
    };
    let mut parts = Vec::new();
    for a in after {
        match find(before, a) {
            None => parts.push(format!("leaf {a:?} appeared")),
            Some(b) if b.state == a.state => {}
            Some(b) => {
                let blocks = matches!(
                    (b.state, a.state),
                    (LeafState::Mapped, LeafState::Blocked { .. })
                );
                if !(blocks && exempt.blocks() && of_tdi(&b)) {
                    parts.push(format!("leaf {b:?} -> {:?}", a.state));
                }
            }
        }
    }
    for b in before {
        if find(after, b).is_none() && !(exempt.removes() && of_tdi(b)) {
            parts.push(format!("leaf {b:?} removed"));
        }
    }
    if parts.is_empty() {
        Ok(())
    } else {
        Err(format!("under {exempt:?}: {}", parts.join("; ")))
    }
}

/// The model's key for an interface (`device_model::fid_of`).
pub fn fid_of(iface: impl Into<RequesterId>) -> u32 {
    function_id(iface.into()).unwrap_or(0)
}

/// The misbehaviour numbered `n` (six of them), or `None`.
pub fn misbehaviour(n: u8) -> Option<Misbehaviour> {
    Some(match n % 7 {
        0 => Misbehaviour::Silent,
        1 => Misbehaviour::Garbage,
        2 => Misbehaviour::WrongInterface,
        3 => Misbehaviour::WrongVersion,
        4 => Misbehaviour::Refuse,
        5 => Misbehaviour::InconsistentReport,
        _ => return None,
    })
}

/// The first index where `a` and `b` differ outside `window` (whole-slice comparisons first:
/// a `memcmp`, not a loop the coverage instrumentation would slow down).
pub fn changed_outside<T: PartialEq>(
    a: &[T],
    b: &[T],
    window: Option<core::ops::Range<usize>>,
) -> Option<usize> {
    if a.len() != b.len() {
        return Some(a.len().min(b.len()));
    }
    let w = window.map_or(0..0, |w| {
        w.start.min(a.len())..w.end.min(a.len()).max(w.start.min(a.len()))
    });
    if a[..w.start] == b[..w.start] && a[w.end..] == b[w.end..] {
        return None;
    }
    (0..a.len()).find(|&i| !w.contains(&i) && a[i] != b[i])
}

/// Whether every leaf that changed between `before` and `after` (blocked or removed) belongs to
/// a TDI whose leaves the host may tear down in `before`'s state
/// (`Tsm::host_may_tear_down`: its unbind past STOP, or its device's stream cut).
pub fn host_teardown_only<U>(before: &Snapshot<U>, before_leaves: &[Leaf], after: &[Leaf]) -> bool {
    before_leaves
        .iter()
        .filter(|l| !after.contains(l))
        .all(|l| {
            before
                .owners
                .iter()
                .find(|o| o.range.contains_page(l.hpa, l.size))
                .is_some_and(|o| {
                    let Some(Some(rec)) = before.tdis.get(usize::from(o.tdi.slot())) else {
                        return false;
                    };
                    let Some(Some(dev)) = before.devices.get(usize::from(rec.device.slot())) else {
                        return false;
                    };
                    Tsm::<tsm_core::mem_table::MemTable<1>, tsm_core::ModelSession>::host_may_tear_down(
                        rec.state, dev.stream,
                    )
                })
        })
}
