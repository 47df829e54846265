//! The indexed RMP against scans of its entries (the code before the index, kept here as the
//! reference): over random sequences of every operation, the index equals the one a scan
//! builds, every lookup answers as the scan does, and every refusal changes nothing.

use proptest::prelude::*;
use tsm_core::secure_table::{Leaf, SecureTable, TableError};
use tsm_core::{Gpa, GuestId, Hpa, MmioRange, PageSize};

use super::index::Index;
use super::{Rmp, RmpEntry, RmpFault, RmpUpdate};
use crate::pfn::Pfn;

type Table = Rmp<Vec<RmpEntry>>;

const BASE: u64 = 0x1_0000_0000;
/// 8 MiB: four 2M leaves or 2048 4K ones.
const PAGES: u64 = 2048;
/// Guest frames the sequences use: twice the window, so guest ranges collide.
const GPA_PAGES: u64 = 4096;
const GUESTS: u16 = 3;

fn hpa(page: u64) -> Hpa {
    Hpa::try_new(BASE + page * 0x1000).unwrap()
}
fn gpa(page: u64) -> Gpa {
    Gpa::try_new(page * 0x1000).unwrap()
}

/// The lookup by guest address as it was: the first entry, by host address, of the guest's
/// ASID naming the frame.
fn find_scan(t: &Table, guest: GuestId, at: Gpa) -> Result<(usize, Leaf), TableError> {
    let asid = t.fence(guest)?.asid;
    let pfn = Pfn::of(at);
    let i = t
        .entries()
        .iter()
        .position(|e| e.assigned() && e.mmio() && e.asid() == asid && e.gpa_pfn() == pfn)
        .ok_or(TableError::NotMapped)?;
    t.leaf_at(i).ok_or(TableError::NotMapped)
}

fn gpa_mapped_scan(t: &Table, asid: u32, pfns: core::ops::Range<u64>) -> bool {
    t.entries()
        .iter()
        .any(|e| e.assigned() && e.asid() == asid && pfns.contains(&e.gpa_pfn().get()))
}

fn asid_in_use_scan(t: &Table, asid: u32) -> bool {
    t.entries().iter().any(|e| e.assigned() && e.asid() == asid)
}

/// The walk by host address as it was: entry by entry from `from`.
fn next_leaf_scan(t: &Table, within: MmioRange, from: Hpa) -> Option<Leaf> {
    let start = from.max(within.base()).as_u64().max(t.base);
    let start = start.checked_add(0xFFF)? & !0xFFF;
    let mut i = t.index(start)?;
    loop {
        let hpa = t.hpa_of(i)?;
        if hpa.as_u64() >= within.end() {
            return None;
        }
        match t.leaf_at(i) {
            Some((_, leaf)) if leaf.hpa >= from && within.contains_page(leaf.hpa, leaf.size) => {
                return Some(leaf);
            }
            Some((first, leaf)) => {
                let pages = usize::try_from(leaf.size.base_pages()).ok()?;
                i = first.checked_add(pages)?.max(i.checked_add(1)?);
            }
            None => i = i.checked_add(1)?,
        }
        if i >= t.entries().len() {
            return None;
        }
    }
}

/// What a map is refused with, by the checks as they were (scans), capacity aside.
fn map_scan(t: &Table, g: GuestId, gpa: Gpa, hpa: Hpa, size: PageSize) -> Result<(), TableError> {
    let asid = t.fence(g)?.asid;
    if !gpa.is_aligned(size) || !hpa.is_aligned(size) {
        return Err(TableError::Misaligned);
    }
    let r = t
        .span(hpa.as_u64(), size.base_pages())
        .ok_or(TableError::OutOfFrames)?;
    let lo = Pfn::of(gpa).get();
    if gpa_mapped_scan(t, asid, lo..lo + size.base_pages()) {
        return Err(TableError::GpaMapped);
    }
    if t.entries()[r].iter().any(|e| e.assigned()) {
        return Err(TableError::HpaMapped);
    }
    Ok(())
}

#[derive(Debug, Clone)]
enum Op {
    SetAsid(u16, u32),
    Release(u16, bool),
    Map(u16, u64, u64, bool),
    Block(u16, u64, bool),
    Track(u16),
    Hold(u16, bool),
    Remove(u16, u64, bool),
    Host(u64, bool, u32, u64, bool),
    Psmash(u64),
    Validate(u16, u64, u64, u64, bool, bool),
}

fn size(big: bool) -> PageSize {
    if big {
        PageSize::Size2M
    } else {
        PageSize::Size4K
    }
}

fn op() -> impl Strategy<Value = Op> {
    let g = 0..GUESTS;
    let big = prop::bool::weighted(0.15);
    prop_oneof![
        1 => (g.clone(), 0..5u32).prop_map(|(g, a)| Op::SetAsid(g, a)),
        1 => (g.clone(), any::<bool>()).prop_map(|(g, r)| Op::Release(g, r)),
        12 => (g.clone(), 0..GPA_PAGES, 0..PAGES + 4, big)
            .prop_map(|(g, gp, hp, b)| Op::Map(g, gp, hp, b)),
        3 => (g.clone(), 0..GPA_PAGES, big).prop_map(|(g, gp, b)| Op::Block(g, gp, b)),
        2 => g.clone().prop_map(Op::Track),
        1 => (g.clone(), any::<bool>()).prop_map(|(g, h)| Op::Hold(g, h)),
        3 => (g.clone(), 0..GPA_PAGES, big).prop_map(|(g, gp, b)| Op::Remove(g, gp, b)),
        3 => (0..PAGES + 2, any::<bool>(), 0..5u32, 0..GPA_PAGES, any::<bool>())
            .prop_map(|(hp, a, asid, gp, ps)| Op::Host(hp, a, asid, gp, ps)),
        1 => (0..PAGES / 512 + 1).prop_map(|c| Op::Psmash(c * 512)),
        2 => (g, 0..PAGES, 0..GPA_PAGES, 1..8u64, any::<bool>(), any::<bool>())
            .prop_map(|(g, hp, gp, n, v, f)| Op::Validate(g, hp, gp, n, v, f)),
    ]
}

/// Whether the op's own lookups, and a spread of others, answer as the scans do.
fn lookups_agree(t: &Table, probes: &[(u16, u64, u64, u64)]) -> Result<(), TestCaseError> {
    prop_assert_eq!(&t.idx, &Index::scanned(t.entries()));
    for &(g, gp, lo, n) in probes {
        let guest = GuestId::from_slot(g);
        prop_assert_eq!(t.find(guest, gpa(gp)), find_scan(t, guest, gpa(gp)));
        prop_assert_eq!(
            t.leaf(guest, gpa(gp)),
            find_scan(t, guest, gpa(gp)).ok().map(|x| x.1)
        );
        let asid = t.asid(guest);
        for pages in [1, 512] {
            let pfns = gp..gp + pages;
            prop_assert_eq!(
                t.idx.gpa_mapped(t.entries(), asid, pfns.clone()),
                gpa_mapped_scan(t, asid, pfns)
            );
        }
        prop_assert_eq!(
            t.idx.asid_in_use(t.entries(), asid),
            asid_in_use_scan(t, asid)
        );
        let within = MmioRange::try_new(hpa(lo), n).unwrap();
        for from in [within.base(), hpa(lo + n / 2), hpa(lo.saturating_sub(3))] {
            prop_assert_eq!(t.next_leaf(within, from), next_leaf_scan(t, within, from));
        }
    }
    Ok(())
}

fn apply(t: &mut Table, op: &Op) -> Result<(), TestCaseError> {
    let before = t.clone();
    let unchanged_on = |t: &Table, refused: bool| -> Result<(), TestCaseError> {
        if refused {
            prop_assert_eq!(t, &before);
        }
        Ok(())
    };
    match *op {
        Op::SetAsid(g, asid) => {
            let r = t.set_asid(GuestId::from_slot(g), asid);
            unchanged_on(t, r.is_err())?;
        }
        Op::Release(g, restore) => {
            let r = t.release_asid(GuestId::from_slot(g));
            unchanged_on(t, r.is_err())?;
            if let (Ok(released), true) = (r, restore) {
                t.restore_asid(released);
                prop_assert_eq!(&*t, &before);
            }
        }
        Op::Map(g, gp, hp, big) => {
            let (guest, s) = (GuestId::from_slot(g), size(big));
            let (gp, hp) = if big {
                (gp & !511, hp & !511)
            } else {
                (gp, hp)
            };
            let Ok(h) = Hpa::try_new(BASE + hp * 0x1000) else {
                return Ok(());
            };
            let want = map_scan(t, guest, gpa(gp), h, s);
            let got = t.map(guest, gpa(gp), h, s);
            prop_assert_eq!(got, want);
            unchanged_on(t, got.is_err())?;
        }
        Op::Block(g, gp, big) => {
            let r = t.block(GuestId::from_slot(g), gpa(gp), size(big));
            unchanged_on(t, r.is_err())?;
        }
        Op::Track(g) => {
            let r = t.track(GuestId::from_slot(g));
            unchanged_on(t, r.is_err())?;
        }
        Op::Hold(g, hold) => t.hold_fences_of(GuestId::from_slot(g), hold),
        Op::Remove(g, gp, big) => {
            let r = t.remove(GuestId::from_slot(g), gpa(gp), size(big));
            unchanged_on(t, r.is_err())?;
        }
        Op::Host(hp, assigned, asid, gp, ps) => {
            let update = RmpUpdate {
                assigned,
                asid,
                gpa: gp * 0x1000,
                page_size: ps,
            };
            let r = t.host_rmpupdate(BASE + hp * 0x1000, update);
            unchanged_on(t, r.is_err())?;
        }
        Op::Psmash(hp) => {
            let r = t.host_psmash(BASE + hp * 0x1000);
            unchanged_on(t, r.is_err())?;
        }
        Op::Validate(g, hp, gp, n, v, force) => {
            let r = t.validate(GuestId::from_slot(g), hpa(hp), gpa(gp), n, v, force);
            unchanged_on(t, r.is_err())?;
        }
    }
    Ok(())
}

fn probes() -> impl Strategy<Value = Vec<(u16, u64, u64, u64)>> {
    prop::collection::vec((0..GUESTS, 0..GPA_PAGES, 0..PAGES - 600, 1..600u64), 4)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    #[cfg_attr(miri, ignore)] // thousands of scans of the whole RMP: minutes under Miri, safe code only
    fn indexed_rmp_answers_like_a_scan(
        setup in prop::collection::vec(1..5u32, GUESTS as usize),
        steps in prop::collection::vec((op(), probes()), 1..120),
    ) {
        let mut t = Rmp::new(hpa(0), vec![RmpEntry::new(); PAGES as usize]).unwrap();
        for (g, asid) in (0..GUESTS).zip(setup) {
            let _ = t.set_asid(GuestId::from_slot(g), asid);
        }
        for (op, probes) in &steps {
            // The op's own lookups first, as it will make them.
            let own = match *op {
                Op::Map(g, gp, hp, _) | Op::Validate(g, hp, gp, ..) => vec![(g, gp, hp.min(PAGES - 1), 1)],
                Op::Block(g, gp, _) | Op::Remove(g, gp, _) => vec![(g, gp, 0, PAGES)],
                _ => vec![],
            };
            lookups_agree(&t, &own)?;
            apply(&mut t, op)?;
            lookups_agree(&t, probes)?;
        }
    }
}

/// A 1G leaf and 4K leaves around it in a window of 1 GiB and 8 MiB: the lookups inside and
/// around each leaf, and the walk by host address, answer as the scans do.
#[test]
#[cfg_attr(miri, ignore)] // a 1 GiB window (262144 entries) written and scanned: safe code only
fn big_leaves_answer_like_a_scan() {
    let pages = (1 << 18) + 2048;
    let mut t = Rmp::new(hpa(0), vec![RmpEntry::new(); pages]).unwrap();
    let g = GuestId::from_slot(0);
    t.set_asid(g, 7).unwrap();
    let giant = Gpa::try_new(1 << 30).unwrap();
    assert_eq!(t.map(g, giant, hpa(0), PageSize::Size1G), Ok(()));
    for i in 0..8 {
        let at = (1 << 18) + 16 * i;
        assert_eq!(t.map(g, gpa(i), hpa(at), PageSize::Size4K), Ok(()));
    }
    assert_eq!(t.idx, Index::scanned(t.entries()));
    for gp in [
        0,
        3,
        7,
        8,
        (1 << 18) - 1,
        1 << 18,
        (1 << 18) + 5,
        (1 << 19) - 1,
        1 << 19,
    ] {
        assert_eq!(
            t.find(g, gpa(gp)),
            find_scan(&t, g, gpa(gp)),
            "frame {gp:#x}"
        );
    }
    let whole = MmioRange::try_new(hpa(0), pages as u64).unwrap();
    for from in [
        0,
        1,
        1 << 18,
        (1 << 18) + 1,
        (1 << 18) + 17,
        pages as u64 - 1,
    ] {
        assert_eq!(
            t.next_leaf(whole, hpa(from)),
            next_leaf_scan(&t, whole, hpa(from))
        );
    }
    // A map over any frame of the 1G leaf is refused as the scan refuses it.
    assert_eq!(
        t.map(
            g,
            gpa((1 << 18) + 9),
            hpa(pages as u64 - 1),
            PageSize::Size4K
        ),
        Err(TableError::GpaMapped)
    );
}

/// A full index is a status with nothing changed, for the firmware's maps and the host's
/// RMPUPDATE alike; a removal makes room again.
#[test]
#[cfg_attr(miri, ignore)] // 4096 maps and their index checks: a minute under Miri, safe code only
fn full_index_is_a_status() {
    let pages = super::MAX_RMP_LEAVES + super::MAX_RMP_HOST_PAGES + 2;
    let mut t = Rmp::new(hpa(0), vec![RmpEntry::new(); pages]).unwrap();
    let g = GuestId::from_slot(0);
    t.set_asid(g, 1).unwrap();
    for i in 0..super::MAX_RMP_LEAVES as u64 {
        assert_eq!(t.map(g, gpa(i), hpa(i), PageSize::Size4K), Ok(()));
    }
    assert_eq!(t.leaf_room(), 0);
    let before = t.clone();
    let next = super::MAX_RMP_LEAVES as u64;
    // Every other refusal comes first, as without the index.
    assert_eq!(
        t.map(g, gpa(0), hpa(next), PageSize::Size4K),
        Err(TableError::GpaMapped)
    );
    assert_eq!(
        t.map(g, gpa(next), hpa(0), PageSize::Size4K),
        Err(TableError::HpaMapped)
    );
    assert_eq!(
        t.map(g, gpa(next), hpa(next), PageSize::Size4K),
        Err(TableError::OutOfFrames)
    );
    assert_eq!(t, before);
    // The host's pages.
    let steal = |i: u64| RmpUpdate {
        assigned: true,
        asid: 9,
        gpa: i * 0x1000,
        page_size: false,
    };
    for i in 0..super::MAX_RMP_HOST_PAGES as u64 {
        assert_eq!(
            t.host_rmpupdate(BASE + (next + i) * 0x1000, steal(i)),
            Ok(())
        );
    }
    let before = t.clone();
    let last = BASE + (pages as u64 - 1) * 0x1000;
    assert_eq!(t.host_rmpupdate(last, steal(0)), Err(RmpFault::IndexFull));
    assert_eq!(t, before);
    // Re-assigning a page the host holds needs no room.
    assert_eq!(t.host_rmpupdate(BASE + next * 0x1000, steal(77)), Ok(()));
    assert_eq!(t.idx, Index::scanned(t.entries()));
    // A removal frees a leaf's room.
    t.block(g, gpa(5), PageSize::Size4K).unwrap();
    assert_eq!(t.track(g), Ok(tsm_core::Completion::Done));
    assert_eq!(t.remove(g, gpa(5), PageSize::Size4K), Ok(hpa(5)));
    assert_eq!(t.leaf_room(), 1);
    assert_eq!(t.map(g, gpa(next), hpa(5), PageSize::Size4K), Ok(()));
    assert_eq!(t.idx, Index::scanned(t.entries()));
}
