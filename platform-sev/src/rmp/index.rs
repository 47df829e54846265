//! Where the RMP's assigned entries are, kept beside the entries so that no operation scans
//! them: 4-byte entry numbers in fixed arrays, sorted, found by binary search. The entries
//! stay the one truth: the index holds positions and reads every key from the entry there.
//!
//! Two kinds of assigned entry: a firmware leaf (MMIO, immutable: every page of a 4K, 2M or
//! 1G leaf, each naming its own guest frame), written only by `map` and cleared only by
//! `remove`; and a host-assigned page (not MMIO), written only by the host's RMPUPDATE. The
//! leaves of one ASID never share a guest frame (`map` refuses that), so their guest ranges
//! are disjoint, and sorted by first frame they are sorted by last frame too.

use tsm_core::secure_table::TableError;

use super::RmpEntry;
use crate::pfn::Pfn;

/// Firmware leaves the RMP holds at once, of every guest and size together (ours: 4096 leaves
/// cover 16 MiB in 4K leaves, 8 GiB in 2M ones, 4 TiB in 1G ones; the index costs 32 KiB).
pub const MAX_RMP_LEAVES: usize = 4096;
/// Pages the host may have assigned (RMPUPDATE) inside the MMIO window at once (ours: the
/// window is device MMIO, which a host has no reason to hand a guest as memory).
pub const MAX_RMP_HOST_PAGES: usize = 256;
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

/// The index: positions of assigned entries, each array sorted, no position twice. Every
/// array follows from the entries alone, so two RMPs with equal entries have equal indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Index {
    /// The first entry of every leaf, ascending: host-address order.
    by_hpa: heapless::Vec<u32, MAX_RMP_LEAVES>,
    /// The same, by (ASID, guest frame): each guest's leaves in guest-address order.
    by_gpa: heapless::Vec<u32, MAX_RMP_LEAVES>,
    /// Every host-assigned entry, by (ASID, guest frame, entry number).
    host: heapless::Vec<u32, MAX_RMP_HOST_PAGES>,
}

impl Index {
    /// Nothing assigned.
    pub(super) const fn new() -> Self {
        Self {
            by_hpa: heapless::Vec::new(),
            by_gpa: heapless::Vec::new(),
            host: heapless::Vec::new(),
        }
    }

    /// Where the leaves of `asid` from guest frame `pfn` on start in `by_gpa`.
    fn leaf_at_or_after(&self, entries: &[RmpEntry], asid: u32, pfn: u64) -> usize {
        self.by_gpa.partition_point(|&f| {
            let k = key(entries, f);
            (k.asid, k.pfn) < (asid, pfn)
        })
    }

    /// The leaf of `asid` that reaches furthest among those starting below guest frame `end`
    /// (leaves of one ASID are disjoint: the last one to start), as its first entry.
    fn last_leaf_below<'e>(
        &self,
        entries: &'e [RmpEntry],
        asid: u32,
        end: u64,
    ) -> Option<&'e RmpEntry> {
        let after = self.leaf_at_or_after(entries, asid, end);
        let first = *self.by_gpa.get(after.checked_sub(1)?)?;
        entry(entries, first).filter(|e| e.asid() == asid)
    }

    /// The entry of a leaf of `asid` whose own guest frame is `pfn`.
    pub(super) fn entry_of(&self, entries: &[RmpEntry], asid: u32, pfn: Pfn) -> Option<usize> {
        let pfn = pfn.get();
        let after = self.leaf_at_or_after(entries, asid, pfn.checked_add(1)?);
        let first = *self.by_gpa.get(after.checked_sub(1)?)?;
        let head = entry(entries, first)?;
        let off = pfn.checked_sub(head.gpa_pfn().get())?;
        if head.asid() != asid || off >= leaf_pages(head) {
            return None;
        }
        let i = usize::try_from(first)
            .ok()?
            .checked_add(usize::try_from(off).ok()?)?;
        let e = entries.get(i)?;
        (e.assigned() && e.mmio() && e.asid() == asid && e.gpa_pfn().get() == pfn).then_some(i)
    }

    /// Whether an assigned entry of `asid`, leaf or host page, names a guest frame in `pfns`.
    pub(super) fn gpa_mapped(
        &self,
        entries: &[RmpEntry],
        asid: u32,
        pfns: core::ops::Range<u64>,
    ) -> bool {
        let leaf = self
            .last_leaf_below(entries, asid, pfns.end)
            .is_some_and(|e| e.gpa_pfn().get().saturating_add(leaf_pages(e)) > pfns.start);
        let from = self.host.partition_point(|&f| {
            let k = key(entries, f);
            (k.asid, k.pfn) < (asid, pfns.start)
        });
        let host = self.host.get(from).is_some_and(|&f| {
            let k = key(entries, f);
            k.asid == asid && k.pfn < pfns.end
        });
        leaf || host
    }

    /// Whether any assigned entry names `asid`.
    pub(super) fn asid_in_use(&self, entries: &[RmpEntry], asid: u32) -> bool {
        let leaf = self.leaf_at_or_after(entries, asid, 0);
        let host = self.host.partition_point(|&f| key(entries, f).asid < asid);
        let names = |f: &u32| key(entries, *f).asid == asid;
        self.by_gpa.get(leaf).is_some_and(names) || self.host.get(host).is_some_and(names)
    }

    /// The first entries of the leaves that start at entry `i` or later, ascending.
    pub(super) fn leaves_from(&self, i: u32) -> impl Iterator<Item = u32> + '_ {
        let from = self.by_hpa.partition_point(|&f| f < i);
        self.by_hpa.get(from..).unwrap_or_default().iter().copied()
    }

    /// Leaves that can still be added.
    pub(super) fn leaf_room(&self) -> usize {
        MAX_RMP_LEAVES.saturating_sub(self.by_hpa.len())
    }

    /// Adds the leaf `k` (before its entries are written): `OutOfFrames` when
    /// [`MAX_RMP_LEAVES`] are held, with nothing changed.
    pub(super) fn add_leaf(&mut self, entries: &[RmpEntry], k: Key) -> Result<(), TableError> {
        if self.by_hpa.is_full() || self.by_gpa.is_full() {
            return Err(TableError::OutOfFrames);
        }
        let h = self.by_hpa.partition_point(|&f| f < k.at);
        let g = self.leaf_at_or_after(entries, k.asid, k.pfn);
        self.by_hpa
            .insert(h, k.at)
            .map_err(|_| TableError::OutOfFrames)?;
        if self.by_gpa.insert(g, k.at).is_err() {
            self.by_hpa.remove(h);
            return Err(TableError::OutOfFrames);
        }
        Ok(())
    }

    /// Takes out the leaf `k` (before its entries are cleared): `Inconsistent`, with nothing
    /// changed, if the index does not hold it.
    pub(super) fn drop_leaf(&mut self, entries: &[RmpEntry], k: Key) -> Result<(), TableError> {
        let h = self
            .by_hpa
            .binary_search(&k.at)
            .map_err(|_| TableError::Inconsistent)?;
        let g = self.leaf_at_or_after(entries, k.asid, k.pfn);
        if self.by_gpa.get(g) != Some(&k.at) {
            return Err(TableError::Inconsistent);
        }
        self.by_hpa.remove(h);
        self.by_gpa.remove(g);
        Ok(())
    }

    /// A host page changes from `old` to `new` (`None`: unassigned), before the entry is
    /// written: `Err`, with nothing changed, when it would be one page more than
    /// [`MAX_RMP_HOST_PAGES`].
    pub(super) fn rekey_host(
        &mut self,
        entries: &[RmpEntry],
        old: Option<Key>,
        new: Option<Key>,
    ) -> Result<(), ()> {
        let old = old.and_then(|k| {
            let i = self.host.partition_point(|&f| key(entries, f) < k);
            (self.host.get(i) == Some(&k.at)).then_some(i)
        });
        if new.is_some() && old.is_none() && self.host.is_full() {
            return Err(());
        }
        if let Some(i) = old {
            self.host.remove(i);
        }
        if let Some(k) = new {
            // The page's own position is out of the array now: every key read is another's.
            let i = self.host.partition_point(|&f| key(entries, f) < k);
            self.host.insert(i, k.at).map_err(drop)?;
        }
        Ok(())
    }

    /// Tests: the index a scan of `entries` builds, to compare with the one kept.
    #[cfg(test)]
    pub(super) fn scanned(entries: &[RmpEntry]) -> Self {
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
        let mut ix = Self::new();
        ix.by_hpa = leaves.iter().map(|k| k.at).collect();
        leaves.sort();
        ix.by_gpa = leaves.iter().map(|k| k.at).collect();
        host.sort();
        ix.host = host.iter().map(|k| k.at).collect();
        ix
    }
}
