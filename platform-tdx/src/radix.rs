//! A radix tree of 4 KiB table pages, 9 address bits per level, as x86 paging structures are:
//! the walker shared by the S-EPT (keyed by guest physical address) and the MMIO metadata
//! table (keyed by host physical address). Table pages come from a [`FramePool`]; a page whose
//! last entry is cleared goes back to it, the root included: at once, or, in a tree hardware
//! walks ([`Radix::deferred`]), into the tree's [`Retired`] chain for its owner to free once
//! every walker has flushed.
//!
//! [`Radix::lookup`] is the one entry point of every walk, and it refuses an address the tree
//! cannot hold ([`OutsideTree`]): a 4-level tree resolves 48 address bits, and an address with
//! higher bits set would otherwise alias the entry of its low 48 bits (the slot computation
//! drops the rest). Every other operation works on a [`Lookup`], which only a successful
//! `lookup` makes and which carries the address it was made for.

use core::marker::PhantomData;

use tsm_core::addr::MAX_PHYS_ADDR_BITS;

use crate::bits::Pfn;
use crate::frames::{ENTRIES_PER_PAGE, FrameIndex, FramePool, PoolError, Retired};

/// Deepest tree: 5 levels (Intel SDM Vol. 3C 29.3.2, 5-level EPT with a PML5 table).
pub const MAX_LEVELS: u8 = 5;

/// Address bits below level `level`'s index (level 1 indexes bits 20:12; Intel SDM Vol. 3C
/// 29.3.2: each EPT level translates 9 bits above the 12-bit page offset).
pub const fn level_shift(level: u8) -> u32 {
    match level {
        0 | 1 => 12,
        2 => 21,
        3 => 30,
        4 => 39,
        _ => 48,
    }
}

/// Bytes one entry at `level` covers.
pub const fn level_span(level: u8) -> u64 {
    1u64 << level_shift(level)
}

/// Index of `addr`'s entry in its level-`level` table.
pub const fn slot_of(addr: u64, level: u8) -> usize {
    (addr.wrapping_shr(level_shift(level)) & 0x1ff) as usize
}

/// A walk was asked for an address the tree cannot hold: at or above 2^(12 + 9 x levels), or
/// at or above the 52-bit physical address limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OutsideTree;

/// Why [`Radix::install`] did not install. Decided before anything is written: the tree and
/// the pool are as they were.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InstallError {
    /// The tree cannot hold the address ([`OutsideTree`]).
    OutsideTree,
    /// The walk meets an entry in use: the target entry, or one above it that is not a table.
    Occupied,
    /// The pool has fewer free pages than the missing tables ([`PoolError::Empty`]).
    PoolEmpty,
    /// The pool's bookkeeping disagrees with itself ([`PoolError::Inconsistent`]).
    Inconsistent,
}

impl From<PoolError> for InstallError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::Empty => InstallError::PoolEmpty,
            PoolError::Inconsistent => InstallError::Inconsistent,
        }
    }
}

impl From<OutsideTree> for InstallError {
    fn from(_: OutsideTree) -> Self {
        InstallError::OutsideTree
    }
}

/// How one kind of table encodes its entries.
pub trait EntryFormat {
    /// The value of an unused entry (a new table page is filled with it).
    const FREE: u64;
    /// An entry pointing to the table page `frame` (never `FREE`: the page counts it).
    fn table(frame: Pfn) -> u64;
    /// Whether `raw` at `level` points to a table page (and is not a leaf or free).
    fn is_table(raw: u64, level: u8) -> bool;
    /// The physical address in a table entry.
    fn child(raw: u64) -> u64;
}

/// The pages a walk for one address visited, indexed by level (`[level]`), and where it
/// stopped: the first entry that is not a table pointer, or the entry at the target level.
/// Only [`Radix::lookup`] makes one, so the address it holds is one the tree can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lookup {
    /// The address walked for (checked against the tree's width).
    addr: u64,
    /// Table page at each level the walk visited (`None` above the root or below the stop).
    pub pages: [Option<FrameIndex>; MAX_LEVELS as usize + 1],
    /// Level of the entry the walk stopped at (the root's level when there is no root).
    pub level: u8,
    /// That entry (`FREE` when there is no root).
    pub raw: u64,
    /// Whether there is a root at all.
    pub rooted: bool,
}

impl Lookup {
    /// The address the walk was for.
    pub const fn addr(&self) -> u64 {
        self.addr
    }

    /// The table page holding the entry the walk stopped at.
    pub fn page(&self) -> Option<FrameIndex> {
        self.pages.get(usize::from(self.level)).copied().flatten()
    }

    /// The same walk for `addr`, an address whose walk goes through the same pages down to
    /// the level this one stopped at (the caller's window), read from the entry there: what
    /// [`Radix::lookup`] would return for `addr`, without walking again.
    pub fn sibling(&self, pool: &FramePool<'_>, addr: u64) -> Lookup {
        let raw = match self.page() {
            Some(page) => pool.entry(page, slot_of(addr, self.level)),
            None => self.raw,
        };
        Lookup { addr, raw, ..*self }
    }
}

/// Entries in one 64-byte cache line: what a scan of free entries reads for one unit of work
/// (ours; 8-byte entries, Intel SDM Vol. 3C 29.3.2, in 64-byte lines).
pub const LINE_ENTRIES: usize = 8;

/// Where a bounded search ([`Radix::next_entry_bounded`]) stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// An entry: its base address, level, raw value, the table page holding it and its slot.
    Entry {
        /// Base address of the range the entry covers.
        base: u64,
        /// Its level.
        level: u8,
        /// The entry.
        raw: u64,
        /// The table page holding it.
        page: FrameIndex,
        /// Its slot in that page.
        slot: usize,
        /// Entries of that page in use after this one, when the scan knows (it read the page
        /// from slot 0).
        rest: Option<u64>,
    },
    /// No entry at or above the start and below the end.
    End,
    /// The work ran out: nothing starts at or above the start and below `resume`.
    Paused {
        /// Where to search from next.
        resume: u64,
    },
    /// An entry the scan cannot follow (a table pointer outside the pool) covering `base`.
    Broken {
        /// Base address of the range the entry covers.
        base: u64,
    },
}

/// A radix tree of `top` levels with entries in format `F`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Radix<F> {
    root: Option<FrameIndex>,
    top: u8,
    /// Emptied pages go to `retired`, not the pool: hardware walks the tree and may cache the
    /// entries that named them; and the root stays while the tree empties (a register names
    /// it: [`Radix::deferred`]).
    defer: bool,
    /// Pages emptied since the owner last took them ([`Radix::take_retired`]).
    retired: Retired,
    format: PhantomData<F>,
}

impl<F: EntryFormat> Radix<F> {
    /// An empty tree of `top` levels (clamped to 1..=5).
    pub const fn new(top: u8) -> Self {
        let top = if top == 0 {
            1
        } else if top > MAX_LEVELS {
            MAX_LEVELS
        } else {
            top
        };
        Self {
            root: None,
            top,
            defer: false,
            retired: Retired::EMPTY,
            format: PhantomData,
        }
    }

    /// An empty tree of `top` levels whose emptied pages wait in its [`Retired`] chain instead
    /// of going back to the pool: a tree a vCPU or an IOMMU walks (the S-EPT), whose owner
    /// frees them once every walker has flushed the entries that named them. Its root, once
    /// made, stays for the tree's life ([`Radix::keeps_root`]): a pointer register names it
    /// (EPTP), which no flush rewrites; [`Radix::retire_root`] ends it.
    pub const fn deferred(top: u8) -> Self {
        let mut t = Self::new(top);
        t.defer = true;
        t
    }

    /// The pages emptied and not yet taken ([`Radix::take_retired`]).
    pub const fn retired(&self) -> Retired {
        self.retired
    }

    /// Hands the emptied pages to the owner, who frees them after the next flush.
    pub fn take_retired(&mut self) -> Retired {
        core::mem::take(&mut self.retired)
    }

    /// Whether `n` emptied pages can be given back ([`Radix::give_back`]). Reads only.
    fn check_give_back(&self, pool: &FramePool<'_>, n: usize) -> Result<(), PoolError> {
        if self.defer {
            pool.check_chain(&self.retired)
        } else {
            pool.check_release(n)
        }
    }

    /// An emptied page, out of the tree: retired ([`Radix::deferred`]) or free.
    fn give_back(&mut self, pool: &mut FramePool<'_>, page: FrameIndex) -> Result<(), PoolError> {
        if self.defer {
            pool.retire(page, &mut self.retired)
        } else {
            pool.release(page)
        }
    }

    /// Whether the root stays when its last entry goes: a walked tree's ([`Radix::deferred`];
    /// TDX: the TD's EPTP, and a PASID entry's SLPTPTR, name the S-EPT root).
    pub const fn keeps_root(&self) -> bool {
        self.defer
    }

    /// Ends a walked tree's life ([`Radix::deferred`]): its empty root joins the retired
    /// pages. Nothing with no root; `Inconsistent`, nothing changed, when the root
    /// still holds entries (a tree ends empty).
    pub fn retire_root(&mut self, pool: &mut FramePool<'_>) -> Result<(), PoolError> {
        let Some(root) = self.root else {
            return Ok(());
        };
        if pool.used(root) != 0 {
            return Err(PoolError::Inconsistent);
        }
        pool.retire(root, &mut self.retired)?;
        self.root = None;
        Ok(())
    }

    /// The root page, allocated (empty) when the tree has none yet: what a pin needs when
    /// something outside the tree must name it before any entry exists (TDX: a PASID entry
    /// accepted by a TD that has mapped nothing). `Empty` (nothing changed) when the pool is.
    pub fn ensure_root(&mut self, pool: &mut FramePool<'_>) -> Result<FrameIndex, PoolError> {
        if let Some(root) = self.root {
            return Ok(root);
        }
        let root = pool.alloc(F::FREE)?;
        self.root = Some(root);
        Ok(root)
    }

    /// A tree of `top` levels whose root page is `root` (tables built by hand, in tests and
    /// when adopting tables another component laid out).
    pub const fn with_root(root: FrameIndex, top: u8) -> Self {
        let mut t = Self::new(top);
        t.root = Some(root);
        t
    }

    /// Levels of the tree.
    pub const fn levels(&self) -> u8 {
        self.top
    }

    /// The root page, if any entry exists.
    pub const fn root(&self) -> Option<FrameIndex> {
        self.root
    }

    /// Address bits the tree resolves: 9 per level above the 12-bit page offset (Intel SDM
    /// Vol. 3C 29.3.2: 48 with 4 levels, 57 with 5), and never more than the 52-bit physical
    /// address width (`tsm_core::addr::MAX_PHYS_ADDR_BITS`).
    pub const fn width_bits(&self) -> u32 {
        let bits = level_shift(self.top).saturating_add(9);
        if bits < MAX_PHYS_ADDR_BITS {
            bits
        } else {
            MAX_PHYS_ADDR_BITS
        }
    }

    /// One past the highest address the tree holds.
    pub const fn limit(&self) -> u64 {
        1u64 << self.width_bits()
    }

    /// Whether the tree can hold `addr`: the one width check every walk makes.
    pub const fn holds(&self, addr: u64) -> bool {
        addr < self.limit()
    }

    /// Walks towards `addr`, down to level `target` at the lowest, through table entries.
    /// [`OutsideTree`] (and nothing read) for an address the tree cannot hold.
    pub fn lookup(
        &self,
        pool: &FramePool<'_>,
        addr: u64,
        target: u8,
    ) -> Result<Lookup, OutsideTree> {
        if !self.holds(addr) {
            return Err(OutsideTree);
        }
        let mut out = Lookup {
            addr,
            pages: [None; MAX_LEVELS as usize + 1],
            level: self.top,
            raw: F::FREE,
            rooted: false,
        };
        let Some(mut page) = self.root else {
            return Ok(out);
        };
        out.rooted = true;
        let mut level = self.top;
        loop {
            if let Some(p) = out.pages.get_mut(usize::from(level)) {
                *p = Some(page);
            }
            let raw = pool.entry(page, slot_of(addr, level));
            out.level = level;
            out.raw = raw;
            if level <= target.max(1) || !F::is_table(raw, level) {
                return Ok(out);
            }
            let Some(child) = pool.index_of(F::child(raw)) else {
                return Ok(out);
            };
            page = child;
            level = level.saturating_sub(1);
        }
    }

    /// Table pages [`Radix::install`] would allocate to place an entry at `target` for `addr`.
    pub fn missing_tables(
        &self,
        pool: &FramePool<'_>,
        addr: u64,
        target: u8,
    ) -> Result<u8, OutsideTree> {
        Ok(self.missing_after(&self.lookup(pool, addr, target)?, target))
    }

    /// Table pages an install at `target` needs, given the walk `found` to that level.
    pub fn missing_after(&self, found: &Lookup, target: u8) -> u8 {
        if !found.rooted {
            return self.top.saturating_sub(target).saturating_add(1);
        }
        if found.level > target && found.raw == F::FREE {
            return found.level.saturating_sub(target);
        }
        0
    }

    /// Writes `value` into the level-`target` entry for `addr`, creating the missing tables.
    /// Refused (and nothing changed) when the tree cannot hold `addr`, the walk meets an entry
    /// that is neither free nor a table above `target`, the pool has too few frames, or the
    /// pool's bookkeeping disagrees with itself.
    pub fn install(
        &mut self,
        pool: &mut FramePool<'_>,
        addr: u64,
        target: u8,
        value: u64,
    ) -> Result<(), InstallError> {
        let found = self.lookup(pool, addr, target)?;
        self.install_at(pool, &found, target, value)
    }

    /// Whether [`Radix::install_at`] would succeed, decided by reading only, apart from the
    /// pool's supply of pages: the table pages it would allocate. Checks that the walk `found`
    /// stopped on a free entry and that the one existing page it writes can count one more
    /// entry. The caller proves the allocations ([`FramePool::check_alloc`]), for one install
    /// or for several that share the pool.
    pub fn check_install(
        &self,
        pool: &FramePool<'_>,
        found: &Lookup,
        target: u8,
        value: u64,
    ) -> Result<usize, InstallError> {
        if found.rooted && found.raw != F::FREE {
            return Err(InstallError::Occupied);
        }
        if let (true, Some(page)) = (found.rooted, found.page()) {
            // Above the target the entry becomes a table pointer, never FREE.
            let to_free = found.level <= target && value == F::FREE;
            pool.count_after(page, slot_of(found.addr, found.level), to_free, F::FREE)?;
        }
        Ok(usize::from(self.missing_after(found, target)))
    }

    /// [`Radix::install`] after the caller's own walk `found` (`lookup(addr, target)`, with
    /// nothing changed since).
    pub fn install_at(
        &mut self,
        pool: &mut FramePool<'_>,
        found: &Lookup,
        target: u8,
        value: u64,
    ) -> Result<(), InstallError> {
        let addr = found.addr;
        let need = self.check_install(pool, found, target, value)?;
        pool.check_alloc(need)?;
        // Every check passed: from here on only allocations and counts already proven to
        // succeed (the new pages are empty, so counting their one entry cannot fail).
        let (mut page, mut level) = match (found.rooted, found.page()) {
            (true, Some(p)) => (p, found.level),
            _ => {
                let root = pool.alloc(F::FREE)?;
                self.root = Some(root);
                (root, self.top)
            }
        };
        while level > target {
            let child = pool.alloc(F::FREE)?;
            let frame = pool.pfn(child);
            pool.set_counted(page, slot_of(addr, level), F::table(frame), F::FREE)?;
            page = child;
            level = level.saturating_sub(1);
        }
        pool.set_counted(page, slot_of(addr, level), value, F::FREE)?;
        Ok(())
    }

    /// Table levels, from the top down to `target`, that an install for the walk `found` would
    /// create, as a range of levels (`lo..=hi`, empty when `lo > hi`): the root and below it
    /// when there is no root, else those below a free entry above `target`.
    pub fn missing_levels(&self, found: &Lookup, target: u8) -> (u8, u8) {
        if !found.rooted {
            return (target, self.top);
        }
        if found.level > target && found.raw == F::FREE {
            return (target, found.level.saturating_sub(1));
        }
        (1, 0)
    }

    /// [`Radix::install_at`] of `values(0)` for the walk `found`, then entries `1..count` of
    /// the same table page set to `values(i)` with one count update: a run of free entries
    /// at level `target` in one table page. The caller proved every entry of the run free,
    /// the pages the install takes and the count after ([`FramePool::write_run`] refuses a
    /// count past the page's entries; nothing after the first entry is written then).
    pub fn install_run(
        &mut self,
        pool: &mut FramePool<'_>,
        found: &Lookup,
        target: u8,
        count: usize,
        mut values: impl FnMut(usize) -> u64,
    ) -> Result<(), InstallError> {
        self.install_at(pool, found, target, values(0))?;
        let Some(rest) = count.checked_sub(1).filter(|&n| n > 0) else {
            return Ok(());
        };
        let at = self.lookup(pool, found.addr, target)?;
        let page = at.page().ok_or(InstallError::Inconsistent)?;
        let used = pool
            .used(page)
            .checked_add(rest as u64)
            .ok_or(InstallError::Inconsistent)?;
        let first = slot_of(found.addr, target).saturating_add(1);
        pool.write_run(page, first, rest, used, |i, _| values(i.saturating_add(1)))?;
        Ok(())
    }

    /// Rewrites `count` entries of the table page the walk `at` stopped in, from its slot on,
    /// to `value(i, old)`; the caller proved each stays in use (the count does not change).
    pub fn rewrite_run(
        &self,
        pool: &mut FramePool<'_>,
        at: &Lookup,
        count: usize,
        value: impl FnMut(usize, u64) -> u64,
    ) -> Result<(), PoolError> {
        let page = at.page().ok_or(PoolError::Inconsistent)?;
        let used = pool.used(page);
        pool.write_run(page, slot_of(at.addr, at.level), count, used, value)
    }

    /// Frees `count` entries of the table page the walk `at` stopped in, from its slot on, with
    /// one count update, and when the page empties gives it back and clears its entry in the
    /// page above ([`Radix::clear`], up to the root). The caller proved the counts (see
    /// [`Radix::clear`]) and that every entry of the run is in use.
    pub fn clear_run(
        &mut self,
        pool: &mut FramePool<'_>,
        at: &Lookup,
        count: usize,
    ) -> Result<(), PoolError> {
        let page = at.page().ok_or(PoolError::Inconsistent)?;
        let left = pool
            .used(page)
            .checked_sub(count as u64)
            .ok_or(PoolError::Inconsistent)?;
        if left == 0 {
            self.check_give_back(pool, 1)?;
        }
        pool.write_run(page, slot_of(at.addr, at.level), count, left, |_, _| {
            F::FREE
        })?;
        if left != 0 || (at.level >= self.top && self.keeps_root()) {
            return Ok(());
        }
        self.give_back(pool, page)?;
        if at.level >= self.top {
            self.root = None;
            return Ok(());
        }
        let level = at.level.saturating_add(1);
        let parent = Lookup {
            level,
            raw: at
                .pages
                .get(usize::from(level))
                .copied()
                .flatten()
                .map_or(F::FREE, |p| pool.entry(p, slot_of(at.addr, level))),
            ..*at
        };
        self.clear(pool, &parent)
    }

    /// Whether [`Radix::rewrite`] would succeed, decided by reading only.
    pub fn check_rewrite(
        &self,
        pool: &FramePool<'_>,
        at: &Lookup,
        value: u64,
    ) -> Result<(), PoolError> {
        let page = at.page().ok_or(PoolError::Inconsistent)?;
        pool.count_after(page, slot_of(at.addr, at.level), value == F::FREE, F::FREE)
            .map(drop)
    }

    /// Overwrites the entry a previous [`Radix::lookup`] stopped at. Nothing is written when
    /// the count of its page would drift, or when the walk found no page
    /// ([`PoolError::Inconsistent`]).
    pub fn rewrite(
        &self,
        pool: &mut FramePool<'_>,
        at: &Lookup,
        value: u64,
    ) -> Result<(), PoolError> {
        let page = at.page().ok_or(PoolError::Inconsistent)?;
        pool.set_counted(page, slot_of(at.addr, at.level), value, F::FREE)
    }

    /// Whether [`Radix::clear`] would succeed, decided by reading only: the table pages it
    /// would return to the pool. Every count it would update is checked (one that would go
    /// below zero, or to zero while the page holds other entries, is
    /// [`PoolError::Inconsistent`]). The caller proves the pool can take the pages back
    /// ([`FramePool::check_release`]), for one clear or for several that share the pool.
    pub fn check_clear(&self, pool: &FramePool<'_>, at: &Lookup) -> Result<usize, PoolError> {
        let mut level = at.level;
        let mut released = 0usize;
        while let Some(page) = at.pages.get(usize::from(level)).copied().flatten() {
            // The walk's pages are distinct, and each one's entry is read as it is now: the
            // parent's pointer to a page released below is still in place.
            if pool.count_after(page, slot_of(at.addr, level), true, F::FREE)? != 0
                || (level >= self.top && self.keeps_root())
            {
                break;
            }
            released = released.checked_add(1).ok_or(PoolError::Inconsistent)?;
            if level >= self.top {
                break;
            }
            level = level.saturating_add(1);
        }
        Ok(released)
    }

    /// Frees the entry a previous [`Radix::lookup`] stopped at, and every table page left
    /// empty by it, up to and including the root. Nothing is written when a count would drift
    /// or the pool could not take the pages back ([`PoolError::Inconsistent`]).
    pub fn clear(&mut self, pool: &mut FramePool<'_>, at: &Lookup) -> Result<(), PoolError> {
        let released = self.check_clear(pool, at)?;
        self.check_give_back(pool, released)?;
        // Every check passed: the updates below are the ones just proven.
        let addr = at.addr;
        let mut level = at.level;
        while let Some(page) = at.pages.get(usize::from(level)).copied().flatten() {
            pool.set_counted(page, slot_of(addr, level), F::FREE, F::FREE)?;
            if pool.used(page) != 0 || (level >= self.top && self.keeps_root()) {
                return Ok(());
            }
            self.give_back(pool, page)?;
            if level >= self.top {
                self.root = None;
                return Ok(());
            }
            level = level.saturating_add(1);
        }
        Ok(())
    }

    /// [`Radix::next_entry`], bounded: every entry in use it reads (a table pointer on the
    /// way down, a leaf) costs one unit of `work`, and every cache line of free entries
    /// ([`LINE_ENTRIES`]) one; the search stops when it is spent ([`Scan::Paused`], nothing found below the resume
    /// point). A table page whose entries in use (its count) have all been seen is left
    /// without reading the rest; so is the page at level `rest.0` holding `from` once it has
    /// seen `rest.1` entries at or after `from` (what an earlier search said of it, an upper
    /// bound). `work` 0 on entry: paused at `from`.
    pub fn next_entry_bounded(
        &self,
        pool: &FramePool<'_>,
        from: u64,
        end: u64,
        rest: Option<(u8, u64)>,
        work: &mut u32,
    ) -> Scan {
        let Some(root) = self.root else {
            return Scan::End;
        };
        let end = end.min(self.limit());
        let mut cursor = from;
        'restart: while cursor < end {
            let mut page = root;
            let mut level = self.top;
            let mut table_base = 0u64;
            loop {
                let span = level_span(level);
                let first = slot_of(cursor, level);
                // The page's count says how many entries are in use: from slot 0 on, the scan
                // leaves the page once it has seen them all. From mid-page it cannot know.
                let hinted = rest
                    .filter(|&(l, _)| l == level && cursor == from)
                    .map(|(_, n)| n);
                let mut left = match (first == 0, hinted) {
                    (true, Some(n)) => pool.used(page).min(n),
                    (true, None) => pool.used(page),
                    (false, Some(n)) => n,
                    (false, None) => u64::MAX,
                };
                let known = left != u64::MAX;
                let mut descended = false;
                for slot in first..ENTRIES_PER_PAGE {
                    let Some(base) = (slot as u64)
                        .checked_mul(span)
                        .and_then(|o| table_base.checked_add(o))
                    else {
                        return Scan::End;
                    };
                    if base >= end {
                        return Scan::End;
                    }
                    if left == 0 {
                        // Every entry in use at or above `first` has been seen.
                        break;
                    }
                    // One unit per entry in use read, and one per cache line of free entries
                    // (LINE_ENTRIES; the line's first entry read pays for it).
                    let raw = pool.entry(page, slot);
                    let free = raw == F::FREE;
                    if !free || slot == first || slot % LINE_ENTRIES == 0 {
                        if *work == 0 {
                            return Scan::Paused {
                                resume: cursor.max(base),
                            };
                        }
                        *work = work.saturating_sub(1);
                    }
                    if free {
                        continue;
                    }
                    left = left.saturating_sub(1);
                    if level > 1 && F::is_table(raw, level) {
                        let Some(child) = pool.index_of(F::child(raw)) else {
                            // A table outside the pool: nothing below it can be read.
                            return Scan::Broken { base };
                        };
                        if base > cursor {
                            cursor = base;
                        }
                        page = child;
                        table_base = base;
                        level = level.saturating_sub(1);
                        descended = true;
                        break;
                    }
                    if base >= cursor {
                        return Scan::Entry {
                            base,
                            level,
                            raw,
                            page,
                            slot,
                            rest: known.then_some(left),
                        };
                    }
                    let Some(next) = base.checked_add(span) else {
                        return Scan::End;
                    };
                    cursor = next;
                }
                if !descended {
                    let parent_span = level_span(level.saturating_add(1));
                    let Some(next) = table_base.checked_add(parent_span) else {
                        return Scan::End;
                    };
                    cursor = next;
                    if level >= self.top {
                        return Scan::End;
                    }
                    continue 'restart;
                }
            }
        }
        Scan::End
    }

    /// The first non-free, non-table entry whose covered range starts at or above `from` and
    /// below `end`, in address order: (its base address, level, raw value). The search never
    /// goes past [`Radix::limit`].
    pub fn next_entry(&self, pool: &FramePool<'_>, from: u64, end: u64) -> Option<(u64, u8, u64)> {
        let root = self.root?;
        let end = end.min(self.limit());
        let mut cursor = from;
        'restart: while cursor < end {
            let mut page = root;
            let mut level = self.top;
            // Base address of the current table's coverage.
            let mut table_base = 0u64;
            loop {
                let span = level_span(level);
                let first = slot_of(cursor, level);
                let mut descended = false;
                for slot in first..ENTRIES_PER_PAGE {
                    let base = table_base.checked_add((slot as u64).checked_mul(span)?)?;
                    if base >= end {
                        return None;
                    }
                    let raw = pool.entry(page, slot);
                    if raw == F::FREE {
                        continue;
                    }
                    if level > 1 && F::is_table(raw, level) {
                        let child = pool.index_of(F::child(raw))?;
                        if base > cursor {
                            cursor = base;
                        }
                        page = child;
                        table_base = base;
                        level = level.saturating_sub(1);
                        descended = true;
                        break;
                    }
                    if base >= cursor {
                        return Some((base, level, raw));
                    }
                    // A leaf that starts below the cursor: skip past it.
                    cursor = base.checked_add(span)?;
                }
                if !descended {
                    // This table holds nothing more at or above the cursor: continue after it.
                    let parent_span = level_span(level.saturating_add(1));
                    cursor = table_base.checked_add(parent_span)?;
                    if level >= self.top {
                        return None;
                    }
                    continue 'restart;
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::Page;

    /// A toy format: bit 0 marks a table pointer, anything else non-zero is a leaf.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Toy;
    impl EntryFormat for Toy {
        const FREE: u64 = 0;
        fn table(frame: Pfn) -> u64 {
            frame.phys() | 1
        }
        fn is_table(raw: u64, _level: u8) -> bool {
            raw & 1 == 1
        }
        fn child(raw: u64) -> u64 {
            raw & !0xfff
        }
    }

    #[test]
    fn install_walk_clear_returns_every_page() {
        let mut mem = vec![Page::ZERO; 17];
        let mut pool = FramePool::new(&mut mem, 0x100_0000).unwrap();
        let mut t: Radix<Toy> = Radix::new(4);
        assert_eq!(t.missing_tables(&pool, 0x20_0000, 1), Ok(4));
        assert_eq!(t.install(&mut pool, 0x20_0000, 1, 0xa0), Ok(()));
        assert_eq!(pool.free_frames(), 12);
        assert_eq!(t.missing_tables(&pool, 0x20_1000, 1), Ok(0));
        assert_eq!(t.missing_tables(&pool, 0x40_0000, 1), Ok(1));
        assert_eq!(t.install(&mut pool, 0x40_0000, 2, 0xb0), Ok(()));
        let l = t.lookup(&pool, 0x20_0000, 1).unwrap();
        assert_eq!((l.level, l.raw), (1, 0xa0));
        // A walk through a leaf at level 2 stops there.
        let l = t.lookup(&pool, 0x40_1000, 1).unwrap();
        assert_eq!((l.level, l.raw), (2, 0xb0));
        // Installing below a leaf is refused.
        assert_eq!(
            t.install(&mut pool, 0x40_1000, 1, 0xc0),
            Err(InstallError::Occupied)
        );
        assert_eq!(t.next_entry(&pool, 0, u64::MAX), Some((0x20_0000, 1, 0xa0)));
        assert_eq!(
            t.next_entry(&pool, 0x20_1000, u64::MAX),
            Some((0x40_0000, 2, 0xb0))
        );
        assert_eq!(t.next_entry(&pool, 0x40_0001, u64::MAX), None);
        assert_eq!(t.next_entry(&pool, 0, 0x20_0000), None);
        let l = t.lookup(&pool, 0x20_0000, 1).unwrap();
        t.clear(&mut pool, &l).unwrap();
        assert_eq!(pool.free_frames(), 13);
        let l = t.lookup(&pool, 0x40_0000, 2).unwrap();
        t.clear(&mut pool, &l).unwrap();
        assert_eq!(pool.free_frames(), 16);
        assert_eq!(t.root(), None);
    }

    /// A 4-level tree resolves 48 bits: an address with bit 48 (or higher) set would alias the
    /// entry of its low bits. Every walk refuses it, and nothing is read or written.
    #[test]
    fn addresses_wider_than_the_tree_are_refused_not_aliased() {
        let mut mem = vec![Page::ZERO; 17];
        let mut pool = FramePool::new(&mut mem, 0).unwrap();
        let mut t: Radix<Toy> = Radix::new(4);
        assert_eq!(t.install(&mut pool, 0x1000, 1, 0xa0), Ok(()));
        let before: Vec<Page> = pool.pages().copied().collect();
        assert_eq!((t.width_bits(), t.limit()), (48, 1 << 48));
        for alias in [
            1u64 << 48 | 0x1000,
            1 << 51 | 0x1000,
            1 << 63 | 0x1000,
            u64::MAX,
        ] {
            assert_eq!(t.lookup(&pool, alias, 1), Err(OutsideTree), "{alias:#x}");
            assert_eq!(t.missing_tables(&pool, alias, 1), Err(OutsideTree));
            assert_eq!(
                t.install(&mut pool, alias, 1, 0xb0),
                Err(InstallError::OutsideTree)
            );
        }
        assert_eq!(t.next_entry(&pool, 1 << 48, u64::MAX), None);
        assert_eq!(pool.pages().copied().collect::<Vec<_>>(), before);
        // 5 levels resolve 57 bits, clamped to the 52-bit physical address width.
        let t5: Radix<Toy> = Radix::new(5);
        assert_eq!(t5.width_bits(), 52);
        assert_eq!(t5.lookup(&pool, 1 << 52, 1), Err(OutsideTree));
        assert!(t5.lookup(&pool, (1 << 52) - 1, 1).is_ok());
    }

    #[test]
    fn too_few_frames_changes_nothing() {
        let mut mem = vec![Page::ZERO; 4];
        let mut pool = FramePool::new(&mut mem, 0).unwrap();
        let mut t: Radix<Toy> = Radix::new(4);
        assert_eq!(
            t.install(&mut pool, 0x1000, 1, 0xa0),
            Err(InstallError::PoolEmpty)
        );
        assert_eq!(pool.free_frames(), 3);
        assert_eq!(t.root(), None);
    }

    #[test]
    fn next_entry_skips_far_apart_leaves() {
        let mut mem = vec![Page::ZERO; 33];
        let mut pool = FramePool::new(&mut mem, 0).unwrap();
        let mut t: Radix<Toy> = Radix::new(5);
        let addrs = [
            0x1000u64,
            0x7f_ffff_f000,
            0x8000_0000_0000,
            0x000f_ffff_ffff_f000,
        ];
        for a in addrs {
            assert_eq!(t.install(&mut pool, a, 1, a | 0x10), Ok(()));
        }
        let mut from = 0;
        let mut seen = vec![];
        while let Some((base, level, raw)) = t.next_entry(&pool, from, u64::MAX) {
            assert_eq!((level, raw), (1, base | 0x10));
            seen.push(base);
            from = base + 0x1000;
        }
        assert_eq!(seen, addrs);
    }
}
