//! The indexed RMP against scans of its entries (the code before the index, kept here as the
//! reference): over random sequences of every operation, the index equals the one a scan
//! builds, every lookup answers as the scan does, and every refusal changes nothing; in a
//! window of 2 MiB and one so small that every page of it gets mapped. The index's capacity:
//! every page of a window larger than any fixed index had can be a 4K leaf or a host page.

use proptest::prelude::*;
use tsm_core::secure_table::{Leaf, Run, SecureTable, TableError};
use tsm_core::{Gpa, GuestId, Hpa, MmioRange, PageSize};

use super::index::scanned;
use super::{
    RMP_INDEX_WORDS_PER_PAGE, Rmp, RmpEntry, RmpFault, RmpStore, RmpUpdate, VecStore,
    rmp_index_words, vec_store,
};
use crate::pfn::Pfn;
use crate::status::SevStatus;

type Table = Rmp<VecStore>;

const BASE: u64 = 0x1_0000_0000;
/// 8 MiB: four 2M leaves or 2048 4K ones.
const PAGES: u64 = 2048;
/// Guest frames the sequences use: twice the window, so guest ranges collide.
const GPA_PAGES: u64 = 4096;
/// A window every page of which a sequence maps (`Op::Fill`).
const SMALL_PAGES: u64 = 24;
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
    /// Map every page of the window, in order, as a 4K leaf of the guest from guest frame on.
    Fill(u16, u64),
}

fn size(big: bool) -> PageSize {
    if big {
        PageSize::Size2M
    } else {
        PageSize::Size4K
    }
}

/// The ops over a window of `pages` pages and guest frames below `gpa_pages`.
fn op(pages: u64, gpa_pages: u64) -> impl Strategy<Value = Op> {
    let g = 0..GUESTS;
    let big = prop::bool::weighted(0.15);
    prop_oneof![
        1 => (g.clone(), 0..gpa_pages).prop_map(|(g, gp)| Op::Fill(g, gp)),
        1 => (g.clone(), 0..5u32).prop_map(|(g, a)| Op::SetAsid(g, a)),
        1 => (g.clone(), any::<bool>()).prop_map(|(g, r)| Op::Release(g, r)),
        12 => (g.clone(), 0..gpa_pages, 0..pages + 4, big)
            .prop_map(|(g, gp, hp, b)| Op::Map(g, gp, hp, b)),
        3 => (g.clone(), 0..gpa_pages, big).prop_map(|(g, gp, b)| Op::Block(g, gp, b)),
        2 => g.clone().prop_map(Op::Track),
        1 => (g.clone(), any::<bool>()).prop_map(|(g, h)| Op::Hold(g, h)),
        3 => (g.clone(), 0..gpa_pages, big).prop_map(|(g, gp, b)| Op::Remove(g, gp, b)),
        3 => (0..pages + 2, any::<bool>(), 0..5u32, 0..gpa_pages, any::<bool>())
            .prop_map(|(hp, a, asid, gp, ps)| Op::Host(hp, a, asid, gp, ps)),
        1 => (0..pages / 512 + 1).prop_map(|c| Op::Psmash(c * 512)),
        2 => (g, 0..pages, 0..gpa_pages, 1..8u64, any::<bool>(), any::<bool>())
            .prop_map(|(g, hp, gp, n, v, f)| Op::Validate(g, hp, gp, n, v, f)),
    ]
}

/// Whether the op's own lookups, and a spread of others, answer as the scans do.
fn lookups_agree(t: &Table, probes: &[(u16, u64, u64, u64)]) -> Result<(), TestCaseError> {
    let (idx, words) = scanned(t.entries(), t.mem.index.len());
    prop_assert_eq!(t.idx, idx);
    prop_assert_eq!(&t.mem.index, &words);
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
                t.view().gpa_mapped(asid, pfns.clone()),
                gpa_mapped_scan(t, asid, pfns)
            );
        }
        prop_assert_eq!(t.view().asid_in_use(asid), asid_in_use_scan(t, asid));
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
        Op::Fill(g, gp) => {
            let pages = t.entries().len() as u64;
            for i in 0..pages {
                apply(t, &Op::Map(g, gp + i, i, false))?;
            }
        }
    }
    Ok(())
}

/// A lookup: guest slot, guest frame, and a host range (first page, pages).
type Probe = (u16, u64, u64, u64);

/// Lookups spread over guest frames below `gpa_pages` and host ranges in `pages`.
fn probes(pages: u64, gpa_pages: u64) -> impl Strategy<Value = Vec<Probe>> {
    let span = (pages / 4).max(2);
    prop::collection::vec((0..GUESTS, 0..gpa_pages, 0..pages - span, 1..span), 4)
}

/// Runs `steps` from a fresh RMP of `pages` pages, the index checked against scans around
/// every op.
fn run(pages: u64, setup: &[u32], steps: &[(Op, Vec<Probe>)]) -> Result<(), TestCaseError> {
    let mut t = Rmp::new(hpa(0), vec_store(pages as usize)).unwrap();
    for (g, &asid) in (0..GUESTS).zip(setup) {
        let _ = t.set_asid(GuestId::from_slot(g), asid);
    }
    for (op, probes) in steps {
        // The op's own lookups first, as it will make them.
        let own = match *op {
            Op::Map(g, gp, hp, _) | Op::Validate(g, hp, gp, ..) => {
                vec![(g, gp, hp.min(pages - 1), 1)]
            }
            Op::Block(g, gp, _) | Op::Remove(g, gp, _) => vec![(g, gp, 0, pages)],
            _ => vec![],
        };
        lookups_agree(&t, &own)?;
        apply(&mut t, op)?;
        lookups_agree(&t, probes)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    #[cfg_attr(miri, ignore)] // thousands of scans of the whole RMP: minutes under Miri, safe code only
    fn indexed_rmp_answers_like_a_scan(
        setup in prop::collection::vec(1..5u32, GUESTS as usize),
        steps in prop::collection::vec((op(PAGES, GPA_PAGES), probes(PAGES, GPA_PAGES)), 1..120),
    ) {
        run(PAGES, &setup, &steps)?;
    }

    /// A window so small that fills and maps take every page (as 4K leaves of one guest or
    /// several, or host pages): the index's lists meet, and every op still agrees.
    #[test]
    #[cfg_attr(miri, ignore)] // as above
    fn full_small_window_answers_like_a_scan(
        setup in prop::collection::vec(1..5u32, GUESTS as usize),
        steps in prop::collection::vec(
            (op(SMALL_PAGES, 2 * SMALL_PAGES), probes(SMALL_PAGES, 2 * SMALL_PAGES)),
            1..160,
        ),
    ) {
        run(SMALL_PAGES, &setup, &steps)?;
    }
}

/// A 1G leaf and 4K leaves around it in a window of 1 GiB and 8 MiB: the lookups inside and
/// around each leaf, and the walk by host address, answer as the scans do.
#[test]
#[cfg_attr(miri, ignore)] // a 1 GiB window (262144 entries) written and scanned: safe code only
fn big_leaves_answer_like_a_scan() {
    let pages = (1 << 18) + 2048;
    let mut t = Rmp::new(hpa(0), vec_store(pages)).unwrap();
    let g = GuestId::from_slot(0);
    t.set_asid(g, 7).unwrap();
    let giant = Gpa::try_new(1 << 30).unwrap();
    assert_eq!(t.map(g, giant, hpa(0), PageSize::Size1G), Ok(()));
    for i in 0..8 {
        let at = (1 << 18) + 16 * i;
        assert_eq!(t.map(g, gpa(i), hpa(at), PageSize::Size4K), Ok(()));
    }
    assert_index_scanned(&t);
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

/// The index the RMP keeps, counts and every word, is the one a scan of its entries lays out.
#[track_caller]
fn assert_index_scanned(t: &Table) {
    let (idx, words) = scanned(t.entries(), t.mem.index.len());
    assert_eq!(t.idx, idx);
    assert!(t.mem.index == words, "the index words differ from a scan's");
}

/// The index memory: 8 bytes a window page (two 4-byte words), half the entry's 16; less is
/// refused at construction, with nothing to change; more is accepted and stays 0.
#[test]
fn index_memory_is_two_words_a_page() {
    assert_eq!(RMP_INDEX_WORDS_PER_PAGE * size_of::<u32>(), 8);
    assert_eq!(
        2 * RMP_INDEX_WORDS_PER_PAGE * size_of::<u32>(),
        size_of::<RmpEntry>()
    );
    assert_eq!(rmp_index_words(1000), 2000);
    assert_eq!(rmp_index_words(usize::MAX), usize::MAX);
    let short = RmpStore::new(vec![RmpEntry::new(); 16], vec![0u32; 31]);
    assert_eq!(Rmp::new(hpa(0), short).err(), Some(SevStatus::INVALID_LEN));
    let none = RmpStore::new(Vec::<RmpEntry>::new(), Vec::<u32>::new());
    assert!(Rmp::new(hpa(0), none).is_ok());
    // Stale words from an earlier life are cleared with the entries.
    let spare = RmpStore::new(vec![RmpEntry::new(); 16], vec![7u32; 40]);
    let mut t = Rmp::new(hpa(0), spare).unwrap();
    assert!(t.mem.index.iter().all(|&w| w == 0));
    let g = GuestId::from_slot(0);
    t.set_asid(g, 1).unwrap();
    for i in 0..16 {
        assert_eq!(t.map(g, gpa(i), hpa(i), PageSize::Size4K), Ok(()));
    }
    assert_index_scanned(&t);
    assert!(t.mem.index[32..].iter().all(|&w| w == 0));
    // The RMP itself holds no per-page memory: the index is the caller's, like the entries.
    // Beside them it holds the secure device table, one sDTE per TDI the core can hold.
    let table = size_of::<crate::sdte::SdteTable>();
    assert!(table <= tsm_core::capacity::MAX_TDIS * 128);
    assert!(size_of::<Rmp<RmpStore<&mut [RmpEntry], &mut [u32]>>>() - table < 2048);
}

/// Every page of a window larger than the fixed index of old (4096 leaves) maps as a 4K leaf:
/// two guests take it page by page, alternating, so both leaf lists are full; then every map
/// is refused as a table without an index refuses it (the host page is taken), with nothing
/// changed, and a removal lets exactly that page be mapped again.
#[test]
#[cfg_attr(miri, ignore)] // 8448 maps in an 8448-page window: minutes under Miri, safe code only
fn whole_window_maps_in_4k_leaves() {
    let pages = 4096 * 2 + 256;
    let mut t = Rmp::new(hpa(0), vec_store(pages)).unwrap();
    let (a, b) = (GuestId::from_slot(0), GuestId::from_slot(1));
    t.set_asid(a, 1).unwrap();
    t.set_asid(b, 2).unwrap();
    for i in 0..pages as u64 {
        let g = if i % 2 == 0 { a } else { b };
        assert_eq!(
            t.map(g, gpa(i), hpa(i), PageSize::Size4K),
            Ok(()),
            "page {i}"
        );
    }
    assert_index_scanned(&t);
    assert!(t.entries().iter().all(|e| e.assigned() && e.mmio()));
    let before = t.clone();
    let last = pages as u64;
    for (g, gp, hp, want) in [
        (a, last, 0, TableError::HpaMapped),
        (b, last, last - 1, TableError::HpaMapped),
        (a, 0, 1, TableError::GpaMapped),
        (a, last, last, TableError::OutOfFrames),
    ] {
        let h = Hpa::try_new(BASE + hp * 0x1000).unwrap();
        assert_eq!(t.map(g, gpa(gp), h, PageSize::Size4K), Err(want));
        assert_eq!(t, before);
    }
    // The host cannot take a firmware page, full or not.
    let steal = RmpUpdate {
        assigned: true,
        asid: 9,
        gpa: 0,
        page_size: false,
    };
    assert_eq!(t.host_rmpupdate(BASE, steal), Err(RmpFault::Permission));
    assert_eq!(t, before);
    // A lookup of the last leaf and the walk from it, in a full index.
    assert_eq!(t.leaf(b, gpa(last - 1)).map(|l| l.hpa), Some(hpa(last - 1)));
    let whole = MmioRange::try_new(hpa(0), last).unwrap();
    assert_eq!(
        t.next_leaf(whole, hpa(last - 1)),
        next_leaf_scan(&t, whole, hpa(last - 1))
    );
    t.block(a, gpa(6), PageSize::Size4K).unwrap();
    assert_eq!(t.track(a), Ok(tsm_core::Completion::Done));
    assert_eq!(t.remove(a, gpa(6), PageSize::Size4K), Ok(hpa(6)));
    assert_index_scanned(&t);
    assert_eq!(t.map(b, gpa(last), hpa(6), PageSize::Size4K), Ok(()));
    assert_index_scanned(&t);
}

/// Every page of a window larger than the fixed host list of old (256 pages) can be the
/// host's; re-keying them in a full index needs no room; the firmware maps what the host gives
/// back, up to a window shared by host pages and leaves to the last page.
#[test]
#[cfg_attr(miri, ignore)] // thousands of RMPUPDATEs: a minute under Miri, safe code only
fn whole_window_as_host_pages() {
    let pages = 1024u64;
    let mut t = Rmp::new(hpa(0), vec_store(pages as usize)).unwrap();
    let steal = |asid: u32, i: u64| RmpUpdate {
        assigned: true,
        asid,
        gpa: i * 0x1000,
        page_size: false,
    };
    // Descending guest frames, so every page sorts first among the host pages.
    for i in 0..pages {
        let at = BASE + i * 0x1000;
        assert_eq!(t.host_rmpupdate(at, steal(9, pages - i)), Ok(()));
    }
    assert_index_scanned(&t);
    // Moves within a full list: each page to another ASID and frame, and back.
    for i in (0..pages).step_by(7) {
        let at = BASE + i * 0x1000;
        assert_eq!(t.host_rmpupdate(at, steal(3, i)), Ok(()));
        assert_index_scanned(&t);
    }
    assert_eq!(t.host_rmpupdate(BASE, steal(12, 5)), Ok(()));
    assert_index_scanned(&t);
    // Nothing left for a leaf: the host page is a refusal, the index none.
    let g = GuestId::from_slot(0);
    t.set_asid(g, 1).unwrap();
    let before = t.clone();
    assert_eq!(
        t.map(g, gpa(1 << 20), hpa(0), PageSize::Size4K),
        Err(TableError::HpaMapped)
    );
    assert_eq!(t, before);
    // Half the pages back, then leaves into them: the window is full of both kinds.
    let give_back = RmpUpdate {
        assigned: false,
        asid: 0,
        gpa: 0,
        page_size: false,
    };
    for i in (0..pages).step_by(2) {
        assert_eq!(t.host_rmpupdate(BASE + i * 0x1000, give_back), Ok(()));
        assert_eq!(t.map(g, gpa(i), hpa(i), PageSize::Size4K), Ok(()));
    }
    assert_index_scanned(&t);
    assert!(t.entries().iter().all(|e| e.assigned()));
    // Giving back a host page lets the host take it again at another key.
    let odd = BASE + 0x1000;
    assert_eq!(t.host_rmpupdate(odd, give_back), Ok(()));
    assert_eq!(t.host_rmpupdate(odd, steal(1, 0)), Ok(()));
    assert_index_scanned(&t);
    assert!(t.view().asid_in_use(1));
    assert_eq!(
        t.map(g, gpa(0), hpa(1), PageSize::Size4K),
        Err(TableError::GpaMapped)
    );
}

/// A range map (the trait's provided one: every page checked, then every page mapped) of the
/// whole window in 4K leaves succeeds, with no capacity check of its own; a run whose last page
/// is taken is refused as that page's map is, with nothing changed.
#[test]
#[cfg_attr(miri, ignore)] // a 4608-page window mapped twice over: safe code only
fn range_map_takes_the_whole_window() {
    let pages = 4608u32;
    let mut t = Rmp::new(hpa(0), vec_store(pages as usize)).unwrap();
    let (a, b) = (GuestId::from_slot(0), GuestId::from_slot(1));
    t.set_asid(a, 1).unwrap();
    t.set_asid(b, 2).unwrap();
    assert_eq!(
        t.map(b, gpa(0), hpa(u64::from(pages) - 1), PageSize::Size4K),
        Ok(())
    );
    let before = t.clone();
    assert_eq!(
        t.map_range(a, Run::new(gpa(0), hpa(0), PageSize::Size4K, pages)),
        Err(TableError::HpaMapped)
    );
    assert_eq!(t, before);
    assert_eq!(
        t.map_range(a, Run::new(gpa(0), hpa(0), PageSize::Size4K, pages - 1)),
        Ok(())
    );
    assert_index_scanned(&t);
    assert!(t.entries().iter().all(|e| e.assigned()));
}
