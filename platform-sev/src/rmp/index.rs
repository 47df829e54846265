//! Where the RMP's assigned entries are, kept beside the entries so that a lookup searches
//! instead of scanning them: 4-byte entry numbers in the caller's index memory, sorted, found
//! by binary search. The entries stay the one truth: the index holds positions and reads every
//! key from the entry there.
//!
//! Two kinds of assigned entry: a firmware leaf (MMIO, immutable: every page of a 4K, 2M or
//! 1G leaf, each naming its own guest frame), written only by `map` and cleared only by
//! `remove`; and a host-assigned page (not MMIO), written only by the host's RMPUPDATE. The
//! leaves of one ASID never share a guest frame (`map` refuses that), so their guest ranges
//! are disjoint, and sorted by first frame they are sorted by last frame too.
//!
//! Capacity: every list names distinct assigned entries of the window (a leaf by its first
//! entry, a host page by its own), so leaves + host pages never exceed the window's `n` pages,
//! and each list has room for every state the entries can be in. The index memory holds
//! [`RMP_INDEX_WORDS_PER_PAGE`] words per window page, laid out as
//!
//! - words `[0, leaves)`: the leaves' first entries, ascending (host-address order);
//! - words `[n - hosts, n)`: the host pages, by (ASID, guest frame, entry number);
//! - words `[n, n + leaves)`: the leaves' first entries by (ASID, guest frame);
//!
//! every other word 0, so the index memory follows from the entries alone.

use tsm_core::secure_table::TableError;

use super::RmpEntry;
use crate::pfn::Pfn;

/// Index words (4 bytes each) per page of the RMP window (ours): one for the leaf or host page
/// an entry can head in host-address or host-key order, one for the leaf in guest order. That
/// is 8 bytes per 16-byte entry, and every page of the window can be a 4K leaf or a host page.
pub const RMP_INDEX_WORDS_PER_PAGE: usize = 2;
/// Pages of the largest window: entry numbers are 32 bits (16 TiB of MMIO).
pub(super) const MAX_WINDOW_PAGES: u64 = 1 << 32;

/// An assigned entry as the index orders it: its ASID, its guest frame, its entry number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Key {
    asid: u32,
    pfn: u64,
    at: u32,
}

impl Key {
    /// The key of `entry`, entry number `at`.
    pub(super) fn of(entry: &RmpEntry, at: u32) -> Self {
        Self {
            asid: entry.asid(),
            pfn: entry.gpa_pfn().get(),
            at,
        }
    }

    /// The key of a leaf of `asid` at guest frame `pfn` whose first entry is `at`.
    pub(super) fn leaf(asid: u32, pfn: Pfn, at: u32) -> Self {
        Self {
            asid,
            pfn: pfn.get(),
            at,
        }
    }
}

/// The entry numbered `at`.
fn entry(entries: &[RmpEntry], at: u32) -> Option<&RmpEntry> {
    entries.get(usize::try_from(at).ok()?)
}

/// The key of entry `at`; past every key if it is not in the window (never, while the index
/// and the entries agree).
fn key(entries: &[RmpEntry], at: u32) -> Key {
    entry(entries, at).map_or(
        Key {
            asid: u32::MAX,
            pfn: u64::MAX,
            at,
        },
        |e| Key::of(e, at),
    )
}

/// Frames the leaf whose first entry is `e` covers (1 if its size code is none).
fn leaf_pages(e: &RmpEntry) -> u64 {
    e.leaf_size().size().map_or(1, |s| s.base_pages())
}

/// Where the lists end: the index is these counts over the caller's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Index {
    /// Pages of the window (`n`).
    pages: usize,
    /// Leaves held (the length of both leaf lists).
    leaves: usize,
    /// Host-assigned pages held.
    hosts: usize,
}

/// The index's lists, read-only, beside the entries they point into.
pub(super) struct View<'a> {
    entries: &'a [RmpEntry],
    /// The first entry of every leaf, ascending: host-address order.
    by_hpa: &'a [u32],
    /// The same, by (ASID, guest frame): each guest's leaves in guest-address order.
    by_gpa: &'a [u32],
    /// Every host-assigned entry, by (ASID, guest frame, entry number).
    host: &'a [u32],
}

impl Index {
    /// Nothing assigned in a window of `pages` pages (whose index words are all 0).
    pub(super) const fn new(pages: usize) -> Self {
        Self {
            pages,
            leaves: 0,
            hosts: 0,
        }
    }

    /// The index words a window of `pages` pages needs (`None` past `usize`).
    pub(super) const fn words_for(pages: usize) -> Option<usize> {
        pages.checked_mul(RMP_INDEX_WORDS_PER_PAGE)
    }

    /// Where the host pages start: `n - hosts`.
    fn host_start(&self) -> usize {
        self.pages.saturating_sub(self.hosts)
    }

    /// The lists over `entries` and the index `words`.
    pub(super) fn view<'a>(&self, entries: &'a [RmpEntry], words: &'a [u32]) -> View<'a> {
        let (low, high) = words.split_at(self.pages.min(words.len()));
        View {
            entries,
            by_hpa: low.get(..self.leaves).unwrap_or_default(),
            host: low.get(self.host_start()..).unwrap_or_default(),
            by_gpa: high.get(..self.leaves).unwrap_or_default(),
        }
    }

    /// Whether one more leaf or host page fits. Always, while the index agrees with the
    /// entries: the caller adds an entry that is unassigned, so fewer than `n` are listed.
    fn has_room(&self) -> bool {
        self.leaves
            .checked_add(self.hosts)
            .is_some_and(|n| n < self.pages)
    }

    /// Adds the leaf `k` (before its entries are written): `Inconsistent`, with nothing
    /// changed, if the lists have no room (they always have while they agree with the
    /// entries, see [`Index::has_room`]).
    pub(super) fn add_leaf(
        &mut self,
        entries: &[RmpEntry],
        words: &mut [u32],
        k: Key,
    ) -> Result<(), TableError> {
        if !self.has_room() {
            return Err(TableError::Inconsistent);
        }
        let (h, g) = {
            let v = self.view(entries, words);
            (
                v.by_hpa.partition_point(|&f| f < k.at),
                v.leaf_at_or_after(k.asid, k.pfn),
            )
        };
        let (low, high) = words.split_at_mut(self.pages.min(words.len()));
        // Both runs end at the spare word past each list (0: room was checked above).
        let (Some(a), Some(b)) = (low.get_mut(h..=self.leaves), high.get_mut(g..=self.leaves))
        else {
            return Err(TableError::Inconsistent);
        };
        put_first(a, k.at);
        put_first(b, k.at);
        self.leaves = self.leaves.saturating_add(1);
        Ok(())
    }

    /// Takes out the leaf `k` (before its entries are cleared): `Inconsistent`, with nothing
    /// changed, if the index does not hold it.
    pub(super) fn drop_leaf(
        &mut self,
        entries: &[RmpEntry],
        words: &mut [u32],
        k: Key,
    ) -> Result<(), TableError> {
        let (h, g) = {
            let v = self.view(entries, words);
            let h = v
                .by_hpa
                .binary_search(&k.at)
                .map_err(|_| TableError::Inconsistent)?;
            let g = v.leaf_at_or_after(k.asid, k.pfn);
            if v.by_gpa.get(g) != Some(&k.at) {
                return Err(TableError::Inconsistent);
            }
            (h, g)
        };
        let (low, high) = words.split_at_mut(self.pages.min(words.len()));
        // Both runs hold at least the leaf: `h` and `g` were found in the lists.
        let (Some(a), Some(b)) = (low.get_mut(h..self.leaves), high.get_mut(g..self.leaves)) else {
            return Err(TableError::Inconsistent);
        };
        take_first(a);
        take_first(b);
        self.leaves = self.leaves.saturating_sub(1);
        Ok(())
    }

    /// A host page changes from `old` to `new` (`None`: unassigned), before the entry is
    /// written. `Inconsistent`, with nothing changed, only if a new page finds no room, which
    /// it always does while the index agrees with the entries ([`Index::has_room`]).
    pub(super) fn rekey_host(
        &mut self,
        entries: &[RmpEntry],
        words: &mut [u32],
        old: Option<Key>,
        new: Option<Key>,
    ) -> Result<(), TableError> {
        let (old_at, new_at) = {
            let host = self.view(entries, words).host;
            let old_at = old.and_then(|k| {
                let i = host.partition_point(|&f| key(entries, f) < k);
                (host.get(i) == Some(&k.at)).then_some((i, k))
            });
            // The new key's place among the others: the old key, still read from the entry,
            // is counted if it sorts below the new one and must not be.
            let new_at = new.map(|k| {
                let i = host.partition_point(|&f| key(entries, f) < k);
                match old_at {
                    Some((_, o)) if o < k => i.saturating_sub(1),
                    _ => i,
                }
            });
            (old_at.map(|(i, _)| i), new_at)
        };
        if old_at.is_none() && new_at.is_some() && !self.has_room() {
            return Err(TableError::Inconsistent);
        }
        let start = self.host_start();
        let host = words
            .get_mut(..self.pages)
            .ok_or(TableError::Inconsistent)?;
        // Each arm finds its run (in the list, or down to the spare word below it: room was
        // checked above) before it changes anything.
        match (old_at, new_at) {
            // Same entry number, another key: the word moves to its new place.
            (Some(i), Some(j)) => {
                let lo = start.saturating_add(i.min(j));
                let hi = start.saturating_add(i.max(j));
                let run = host.get_mut(lo..=hi).ok_or(TableError::Inconsistent)?;
                if i < j {
                    run.rotate_left(1);
                } else {
                    run.rotate_right(1);
                }
            }
            (Some(i), None) => {
                let run = host
                    .get_mut(start..=start.saturating_add(i))
                    .ok_or(TableError::Inconsistent)?;
                take_last(run);
                self.hosts = self.hosts.saturating_sub(1);
            }
            (None, Some(j)) => {
                let spare = start.checked_sub(1).ok_or(TableError::Inconsistent)?;
                let run = host
                    .get_mut(spare..start.saturating_add(j))
                    .ok_or(TableError::Inconsistent)?;
                put_last(run, new.map_or(0, |k| k.at));
                self.hosts = self.hosts.saturating_add(1);
            }
            (None, None) => {}
        }
        Ok(())
    }
}

/// `run` ends with a spare 0 word: every word moves up one and `at` takes the first place.
fn put_first(run: &mut [u32], at: u32) {
    if !run.is_empty() {
        run.rotate_right(1);
        if let Some(w) = run.first_mut() {
            *w = at;
        }
    }
}

/// The first word leaves `run`: every other word moves down one and the last becomes 0.
fn take_first(run: &mut [u32]) {
    if !run.is_empty() {
        run.rotate_left(1);
        if let Some(w) = run.last_mut() {
            *w = 0;
        }
    }
}

/// `run` starts with a spare 0 word: every word moves down one and `at` takes the last place.
fn put_last(run: &mut [u32], at: u32) {
    if !run.is_empty() {
        run.rotate_left(1);
        if let Some(w) = run.last_mut() {
            *w = at;
        }
    }
}

/// The last word leaves `run`: every other word moves up one and the first becomes 0.
fn take_last(run: &mut [u32]) {
    if !run.is_empty() {
        run.rotate_right(1);
        if let Some(w) = run.first_mut() {
            *w = 0;
        }
    }
}

impl View<'_> {
    /// Where the leaves of `asid` from guest frame `pfn` on start in `by_gpa`.
    fn leaf_at_or_after(&self, asid: u32, pfn: u64) -> usize {
        self.by_gpa.partition_point(|&f| {
            let k = key(self.entries, f);
            (k.asid, k.pfn) < (asid, pfn)
        })
    }

    /// The leaf of `asid` that reaches furthest among those starting below guest frame `end`
    /// (leaves of one ASID are disjoint: the last one to start), as its first entry.
    fn last_leaf_below(&self, asid: u32, end: u64) -> Option<&RmpEntry> {
        let after = self.leaf_at_or_after(asid, end);
        let first = *self.by_gpa.get(after.checked_sub(1)?)?;
        entry(self.entries, first).filter(|e| e.asid() == asid)
    }

    /// The entry of a leaf of `asid` whose own guest frame is `pfn`.
    pub(super) fn entry_of(&self, asid: u32, pfn: Pfn) -> Option<usize> {
        let pfn = pfn.get();
        let after = self.leaf_at_or_after(asid, pfn.checked_add(1)?);
        let first = *self.by_gpa.get(after.checked_sub(1)?)?;
        let head = entry(self.entries, first)?;
        let off = pfn.checked_sub(head.gpa_pfn().get())?;
        if head.asid() != asid || off >= leaf_pages(head) {
            return None;
        }
        let i = usize::try_from(first)
            .ok()?
            .checked_add(usize::try_from(off).ok()?)?;
        let e = self.entries.get(i)?;
        (e.assigned() && e.mmio() && e.asid() == asid && e.gpa_pfn().get() == pfn).then_some(i)
    }

    /// Whether an assigned entry of `asid`, leaf or host page, names a guest frame in `pfns`.
    pub(super) fn gpa_mapped(&self, asid: u32, pfns: core::ops::Range<u64>) -> bool {
        let leaf = self
            .last_leaf_below(asid, pfns.end)
            .is_some_and(|e| e.gpa_pfn().get().saturating_add(leaf_pages(e)) > pfns.start);
        let from = self.host.partition_point(|&f| {
            let k = key(self.entries, f);
            (k.asid, k.pfn) < (asid, pfns.start)
        });
        let host = self.host.get(from).is_some_and(|&f| {
            let k = key(self.entries, f);
            k.asid == asid && k.pfn < pfns.end
        });
        leaf || host
    }

    /// Whether any assigned entry names `asid`.
    pub(super) fn asid_in_use(&self, asid: u32) -> bool {
        let leaf = self.leaf_at_or_after(asid, 0);
        let host = self
            .host
            .partition_point(|&f| key(self.entries, f).asid < asid);
        let names = |f: &u32| key(self.entries, *f).asid == asid;
        self.by_gpa.get(leaf).is_some_and(names) || self.host.get(host).is_some_and(names)
    }

    /// The first entries of the leaves that start at entry `i` or later, ascending.
    pub(super) fn leaves_from(&self, i: u32) -> impl Iterator<Item = u32> + '_ {
        let from = self.by_hpa.partition_point(|&f| f < i);
        self.by_hpa.get(from..).unwrap_or_default().iter().copied()
    }
}

/// Tests: the index words a scan of `entries` lays out (`len` words), and the counts, to
/// compare with the ones kept.
#[cfg(test)]
pub(super) fn scanned(entries: &[RmpEntry], len: usize) -> (Index, Vec<u32>) {
    let mut leaves = Vec::new();
    let mut host = Vec::new();
    let mut i = 0usize;
    while let Some(e) = entries.get(i) {
        let at = u32::try_from(i).unwrap();
        let mut step = 1;
        if e.assigned() && e.mmio() {
            leaves.push(Key::of(e, at));
            step = usize::try_from(leaf_pages(e)).unwrap();
        } else if e.assigned() {
            host.push(Key::of(e, at));
        }
        i += step;
    }
    let n = entries.len();
    let mut words = vec![0u32; len];
    for (w, k) in words.iter_mut().zip(&leaves) {
        *w = k.at;
    }
    host.sort();
    for (w, k) in words[n - host.len()..n].iter_mut().zip(&host) {
        *w = k.at;
    }
    let (l, h) = (leaves.len(), host.len());
    leaves.sort();
    for (w, k) in words[n..n + l].iter_mut().zip(&leaves) {
        *w = k.at;
    }
    let ix = Index {
        pages: n,
        leaves: l,
        hosts: h,
    };
    (ix, words)
}
