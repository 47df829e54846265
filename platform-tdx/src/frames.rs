//! Table pages: a frame pool over caller-provided physical memory. No heap: the caller hands
//! the pool a run of 4 KiB pages (and the physical address of the first), and every S-EPT and
//! MMIO-metadata table page comes from it and goes back to it.

use crate::bits::Pfn;

/// Bytes in one table page (Intel SDM Vol. 3C 29.3.2: every EPT paging structure is 4 KiB).
pub const PAGE_BYTES: usize = 4096;
/// Entries in one table page: 4096 bytes of 8-byte entries (Intel SDM Vol. 3C 29.3.2).
pub const ENTRIES_PER_PAGE: usize = 512;

const PAGE_SHIFT: u32 = 12;
const PAGE_OFFSET_MASK: u64 = (1 << PAGE_SHIFT) - 1;

/// Bit 63 of a list link: an S-EPT entry's suppress-#VE bit, set in every free S-EPT entry
/// (TDX module ABI SEPT_FREE; Intel SDM Vol. 3C 29.3.3, EPT-violation #VE), so a guest access
/// through a retired page's link entry exits to the host as through any free entry.
const LINK_SVE: u64 = 1 << 63;

/// A list link as a page's first entry holds it: index + 1 of the next page (0 ends the list)
/// in the frame-number bits, bits 11:0 clear, bit 63 set ([`LINK_SVE`]). Read as an EPT or VT-d
/// second-level entry that is not present (Intel SDM Vol. 3C 29.3.2: bits 2:0 clear; VT-d 3.x
/// 9.8: R and W clear), so a walker that still caches the entry above a retired page
/// ([`Retired`]) meets nothing there.
const fn link(next: u32) -> u64 {
    LINK_SVE | (next as u64) << PAGE_SHIFT
}

/// The next page's index + 1 from a link ([`link`]); `None` for a value no link takes.
fn unlink(raw: u64) -> Option<u32> {
    if raw & PAGE_OFFSET_MASK != 0 || raw & LINK_SVE == 0 {
        return None;
    }
    u32::try_from((raw & !LINK_SVE) >> PAGE_SHIFT).ok()
}

/// Table pages out of their tree but not yet free: a chain through each page's first entry, in
/// the free list's encoding, so the whole chain joins the free list in one step
/// ([`FramePool::reclaim`]). A page waits here while a vCPU's or an IOMMU's paging-structure
/// cache may still hold the entry that named it: handed to another table at once, it would be
/// walked as that table (the TDX module frees an S-EPT page only after its parent entry was
/// blocked and tracked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retired {
    /// index + 1 of the first page; 0 when the chain is empty.
    head: u32,
    /// The last page (0 when the chain is empty).
    tail: FrameIndex,
    /// Pages in the chain.
    count: usize,
}

impl Retired {
    /// No page.
    pub const EMPTY: Retired = Retired {
        head: 0,
        tail: 0,
        count: 0,
    };

    /// Pages in the chain.
    pub const fn len(&self) -> usize {
        self.count
    }

    /// Whether the chain holds no page.
    pub const fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// One 4 KiB table page as the hardware sees it: 512 little-endian 64-bit entries.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(C, align(4096))]
pub struct Page(pub [u64; ENTRIES_PER_PAGE]);

impl Page {
    /// A page of zeroes.
    pub const ZERO: Page = Page([0; ENTRIES_PER_PAGE]);
}

const _: () = assert!(core::mem::size_of::<Page>() == PAGE_BYTES);

struct Hex(u64);

impl core::fmt::Debug for Hex {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl core::fmt::Debug for Page {
    /// The non-zero entries only, as `slot: value`.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_map()
            .entries(
                self.0
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| **e != 0)
                    .map(|(i, e)| (i, Hex(*e))),
            )
            .finish()
    }
}

/// Index of a page in the pool.
pub type FrameIndex = u32;

/// Why the pool refused. Every refusal is decided before anything is written: the pool is as
/// it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoolError {
    /// No page is free (the free list and the free count agree on it).
    Empty,
    /// The pool's own bookkeeping disagrees with itself: a page index outside the pool, a free
    /// list that disagrees with the free count (a head naming a page while the count says none
    /// is free, an end while the count says more are, a link out of the pool), a release that
    /// would make more pages free than the pool has, or a page's entry count that would go
    /// below zero, past the page's 512 entries, or to zero while the page still holds entries.
    Inconsistent,
}

/// Entries a page's count can reach: every entry in use.
const MAX_USED: u64 = ENTRIES_PER_PAGE as u64;

/// A pool of table pages over memory the caller owns. Free pages form a list threaded through
/// their first entry (index + 1 of the next free page; 0 ends the list).
///
/// One page in 513 (at the end of the memory) holds the pool's bookkeeping instead of tables:
/// for every table page, how many of its entries are in use, so the walker knows a page became
/// empty without scanning its 512 entries on every change (the one scan confirms a page the
/// count says is empty, before it goes back to the pool).
///
/// The counters (`free`, and every page's entry count) are kept exact: every update is
/// checked, and one that would go below zero or past what the pool can hold is refused as
/// [`PoolError::Inconsistent`] with nothing written (never saturated, which would hide the
/// drift and free a table page that still holds entries, or leak one).
pub struct FramePool<'m> {
    pages: &'m mut [Page],
    used: &'m mut [Page],
    phys_base: u64,
    free_head: u32,
    free: usize,
    /// Bumped whenever an entry may have become in use (a count that grew, a raw write): a
    /// search hint made under an older generation is stale (see `PageRest`). Not part of the
    /// table's meaning, so not compared by the tests that prove a refusal changed nothing.
    generation: u64,
}

/// The pool's shape and free count, never its pages.
impl core::fmt::Debug for FramePool<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FramePool")
            .field("phys_base", &format_args!("{:#x}", self.phys_base))
            .field("table_pages", &self.pages.len())
            .field("free", &self.free)
            .finish_non_exhaustive()
    }
}

impl<'m> FramePool<'m> {
    /// A pool over `pages`, whose first page is at physical address `phys_base`.
    ///
    /// `None` when `phys_base` is not 4 KiB aligned, when the pages would run past the 52-bit
    /// physical address space, or when there are more than `u32::MAX - 1` pages.
    pub fn new(pages: &'m mut [Page], phys_base: u64) -> Option<Self> {
        let total = pages.len();
        let table_pages = Self::table_pages(total, phys_base)?;
        let (pages, used) = pages.split_at_mut(table_pages);
        let count = u32::try_from(table_pages).ok()?;
        used.fill(Page::ZERO);
        let mut pool = Self {
            pages,
            used,
            phys_base,
            free_head: 0,
            free: 0,
            generation: 0,
        };
        for index in (0..count).rev() {
            // Cannot fail: every index is in the pool, its count is 0 and fewer are free.
            pool.release(index).ok()?;
        }
        Some(pool)
    }

    /// Pages to hand [`FramePool::new`] for a pool of `table_pages` table pages: those and the
    /// count pages beside them (one per 512 table pages, see the type). The smallest such
    /// number; `None` if it overflows. [`crate::sept::Sept::pool_pages_needed`] says how many
    /// table pages the S-EPT needs.
    pub const fn pages_for(table_pages: usize) -> Option<usize> {
        table_pages.checked_add(table_pages.div_ceil(ENTRIES_PER_PAGE))
    }

    /// Whether [`FramePool::new`] accepts `total` pages at `phys_base`, decided without
    /// touching the memory (the C entry point checks before it takes the pages).
    pub fn fits(total: usize, phys_base: u64) -> bool {
        Self::table_pages(total, phys_base).is_some()
    }

    /// Table pages of a pool over `total` pages at `phys_base`, if the pool can exist.
    fn table_pages(total: usize, phys_base: u64) -> Option<usize> {
        // c count pages hold 512 counts each for the other total - c pages: c = ceil(total / 513).
        // Saturating as a bound, not a counter: 513 is a constant far below usize::MAX, and
        // c <= total.
        let count_pages = total.div_ceil(ENTRIES_PER_PAGE.saturating_add(1));
        let table_pages = total.saturating_sub(count_pages);
        let count = u32::try_from(table_pages).ok().filter(|&n| n < u32::MAX)?;
        let bytes = u64::from(count).checked_mul(PAGE_BYTES as u64)?;
        let end = phys_base.checked_add(bytes)?;
        if phys_base & PAGE_OFFSET_MASK != 0
            || phys_base >= tsm_core::addr::PHYS_ADDR_LIMIT
            || end > tsm_core::addr::PHYS_ADDR_LIMIT
        {
            return None;
        }
        Some(table_pages)
    }

    /// Head of the free list (index + 1 of the first free page; 0 when none is free).
    pub(crate) const fn free_head(&self) -> u32 {
        self.free_head
    }

    /// Pages on the free list.
    pub const fn free_frames(&self) -> usize {
        self.free
    }

    /// Pages the pool holds in all.
    pub fn total_frames(&self) -> usize {
        self.pages.len()
    }

    /// The page at the head `head` of a free list the count says holds `free` pages, and the
    /// head of the list after it. Reads only.
    fn pop(&self, head: u32, free: usize) -> Result<(FrameIndex, u32), PoolError> {
        let Some(index) = head.checked_sub(1) else {
            // The list is empty: so must the count be.
            return Err(if free == 0 {
                PoolError::Empty
            } else {
                PoolError::Inconsistent
            });
        };
        // The head names a free page: the count must say there is one.
        if free == 0 {
            return Err(PoolError::Inconsistent);
        }
        let page = self.page(index).ok_or(PoolError::Inconsistent)?;
        let next = unlink(page.0[0]).ok_or(PoolError::Inconsistent)?;
        // The link is 0 (end) or index + 1 of a page of the pool.
        if !usize::try_from(next).is_ok_and(|n| n <= self.pages.len()) {
            return Err(PoolError::Inconsistent);
        }
        // A free page holds no counted entries (release() refuses a page that does).
        if self.used_ref(index) != Some(&0) {
            return Err(PoolError::Inconsistent);
        }
        Ok((index, next))
    }

    /// Whether `n` allocations in a row would succeed, decided by reading only: `Ok` when they
    /// would, [`PoolError::Empty`] when the list (in agreement with the count) holds fewer,
    /// [`PoolError::Inconsistent`] when the first `n` pages of the list disagree with the
    /// count or the pool. Callers that allocate several pages prove it before they write.
    pub fn check_alloc(&self, n: usize) -> Result<(), PoolError> {
        let (mut head, mut free) = (self.free_head, self.free);
        for _ in 0..n {
            let (_, next) = self.pop(head, free)?;
            head = next;
            free = free.checked_sub(1).ok_or(PoolError::Inconsistent)?;
        }
        Ok(())
    }

    /// Takes a page off the free list and fills every entry with `fill`. Nothing changes on a
    /// refusal. The one place a page's old contents are overwritten: a free page holds its
    /// list link and whatever entries it held when released ([`FramePool::release`] does not
    /// fill), so every page is written once per use, here, with the value its table format
    /// calls free.
    pub fn alloc(&mut self, fill: u64) -> Result<FrameIndex, PoolError> {
        let (index, next) = self.pop(self.free_head, self.free)?;
        let free = self.free.checked_sub(1).ok_or(PoolError::Inconsistent)?;
        let page = usize::try_from(index)
            .ok()
            .and_then(|i| self.pages.get_mut(i))
            .ok_or(PoolError::Inconsistent)?;
        // Every check passed. The page's count is 0 already (pop() checked it).
        page.0.fill(fill);
        self.free_head = next;
        self.free = free;
        Ok(index)
    }

    /// Whether `n` more pages can go back to the free list: the count can never exceed the
    /// pool's pages. Reads only.
    pub fn check_release(&self, n: usize) -> Result<(), PoolError> {
        match self.free.checked_add(n) {
            Some(free) if free <= self.pages.len() => Ok(()),
            _ => Err(PoolError::Inconsistent),
        }
    }

    /// Returns page `index` to the free list. [`PoolError::Inconsistent`], with nothing
    /// changed, for an index outside the pool, a page whose entry count is not 0 (a table
    /// still in use) or a release that would make more pages free than the pool has.
    pub fn release(&mut self, index: FrameIndex) -> Result<(), PoolError> {
        if self.used_ref(index) != Some(&0) {
            return Err(PoolError::Inconsistent);
        }
        self.check_release(1)?;
        let free = self.free.checked_add(1).ok_or(PoolError::Inconsistent)?;
        // Never fails: new() refuses u32::MAX pages, and index is one of them.
        let head = index.checked_add(1).ok_or(PoolError::Inconsistent)?;
        let next = self.free_head;
        let page = usize::try_from(index)
            .ok()
            .and_then(|i| self.pages.get_mut(i))
            .ok_or(PoolError::Inconsistent)?;
        // Every check passed. No fill: alloc() fills the page when it is next handed out,
        // and a page whose count is 0 holds only free entries already.
        page.0[0] = link(next);
        self.free_head = head;
        self.free = free;
        Ok(())
    }

    /// Whether page `index` can be retired: in the pool, no counted entry. Reads only.
    pub fn check_retire(&self, index: FrameIndex) -> Result<(), PoolError> {
        match self.used_ref(index) {
            Some(0) => Ok(()),
            _ => Err(PoolError::Inconsistent),
        }
    }

    /// Puts page `index`, out of its tree and empty, at the head of `chain` instead of the free
    /// list ([`Retired`]). [`PoolError::Inconsistent`], nothing changed, as
    /// [`FramePool::release`] refuses.
    pub fn retire(&mut self, index: FrameIndex, chain: &mut Retired) -> Result<(), PoolError> {
        self.check_retire(index)?;
        self.check_chain(chain)?;
        let count = chain.count.checked_add(1).ok_or(PoolError::Inconsistent)?;
        let head = index.checked_add(1).ok_or(PoolError::Inconsistent)?;
        let page = usize::try_from(index)
            .ok()
            .and_then(|i| self.pages.get_mut(i))
            .ok_or(PoolError::Inconsistent)?;
        // Every check passed. The page's entries are free already (its count is 0).
        page.0[0] = link(chain.head);
        let tail = if chain.count == 0 { index } else { chain.tail };
        *chain = Retired { head, tail, count };
        Ok(())
    }

    /// Whether `chain`'s ends agree with its count and lie in the pool. Reads only.
    pub fn check_chain(&self, chain: &Retired) -> Result<(), PoolError> {
        let shaped = if chain.count == 0 {
            chain.head == 0 && chain.tail == 0
        } else {
            chain.head != 0
                && self.check_retire(chain.head.saturating_sub(1)).is_ok()
                && self.check_retire(chain.tail).is_ok()
        };
        if shaped && chain.count <= self.pages.len() {
            Ok(())
        } else {
            Err(PoolError::Inconsistent)
        }
    }

    /// Whether [`FramePool::join`] of `first` and `then` would succeed. Reads only.
    pub fn check_join(&self, first: &Retired, then: &Retired) -> Result<(), PoolError> {
        self.check_chain(first)?;
        self.check_chain(then)?;
        match first.count.checked_add(then.count) {
            Some(n) if n <= self.pages.len() => Ok(()),
            _ => Err(PoolError::Inconsistent),
        }
    }

    /// Appends `then` to `first` (two chains of one tree's retired pages become one, waiting
    /// for the later of their flushes). Nothing changes on a refusal.
    pub fn join(&mut self, first: &mut Retired, then: Retired) -> Result<(), PoolError> {
        self.check_join(first, &then)?;
        if then.count == 0 {
            return Ok(());
        }
        if first.count == 0 {
            *first = then;
            return Ok(());
        }
        let count = first
            .count
            .checked_add(then.count)
            .ok_or(PoolError::Inconsistent)?;
        let tail = usize::try_from(first.tail)
            .ok()
            .and_then(|i| self.pages.get_mut(i))
            .ok_or(PoolError::Inconsistent)?;
        tail.0[0] = link(then.head);
        *first = Retired {
            head: first.head,
            tail: then.tail,
            count,
        };
        Ok(())
    }

    /// Whether [`FramePool::reclaim`] of `chain` would succeed. Reads only.
    pub fn check_reclaim(&self, chain: &Retired) -> Result<(), PoolError> {
        self.check_chain(chain)?;
        self.check_release(chain.count)
    }

    /// Puts every page of `chain` on the free list in one step (its last page links to the old
    /// head) and empties the chain: the walkers that could still name them have all flushed.
    /// Nothing changes on a refusal.
    pub fn reclaim(&mut self, chain: &mut Retired) -> Result<(), PoolError> {
        self.check_reclaim(chain)?;
        if chain.count == 0 {
            return Ok(());
        }
        let free = self
            .free
            .checked_add(chain.count)
            .ok_or(PoolError::Inconsistent)?;
        let next = self.free_head;
        let tail = usize::try_from(chain.tail)
            .ok()
            .and_then(|i| self.pages.get_mut(i))
            .ok_or(PoolError::Inconsistent)?;
        tail.0[0] = link(next);
        self.free_head = chain.head;
        self.free = free;
        *chain = Retired::EMPTY;
        Ok(())
    }

    /// The entry count of page `index` (`None` outside the pool).
    fn used_ref(&self, index: FrameIndex) -> Option<&u64> {
        let i = usize::try_from(index).ok()?;
        if i >= self.pages.len() {
            return None;
        }
        self.used
            .get(i / ENTRIES_PER_PAGE)?
            .0
            .get(i % ENTRIES_PER_PAGE)
    }

    /// Entries of page `index` in use (kept by [`FramePool::set_counted`]; 0 outside the pool).
    pub fn used(&self, index: FrameIndex) -> u64 {
        self.used_ref(index).copied().unwrap_or(0)
    }

    /// The entry count of page `index` once entry `slot` is written, without writing: counted
    /// entries are those that are not `free`; the entry becomes `free` when `to_free`.
    /// [`PoolError::Inconsistent`] for an index or slot outside the pool, a count that would go
    /// below zero or past the page's entries, or one that would reach zero while another entry
    /// of the page is still in use (checked by a scan, only when a page empties).
    pub fn count_after(
        &self,
        index: FrameIndex,
        slot: usize,
        to_free: bool,
        free: u64,
    ) -> Result<u64, PoolError> {
        let page = self.page(index).ok_or(PoolError::Inconsistent)?;
        let old = *page.0.get(slot).ok_or(PoolError::Inconsistent)?;
        let used = *self.used_ref(index).ok_or(PoolError::Inconsistent)?;
        if used > MAX_USED {
            return Err(PoolError::Inconsistent);
        }
        match (old == free, to_free) {
            (true, false) => used
                .checked_add(1)
                .filter(|&n| n <= MAX_USED)
                .ok_or(PoolError::Inconsistent),
            (false, true) => {
                let left = used.checked_sub(1).ok_or(PoolError::Inconsistent)?;
                let others_in_use = page
                    .0
                    .iter()
                    .enumerate()
                    .any(|(i, &e)| i != slot && e != free);
                if left == 0 && others_in_use {
                    return Err(PoolError::Inconsistent);
                }
                Ok(left)
            }
            _ => Ok(used),
        }
    }

    /// Writes entry `slot` of page `index`, counting entries that are not `free`. Nothing is
    /// written when [`FramePool::count_after`] refuses.
    pub fn set_counted(
        &mut self,
        index: FrameIndex,
        slot: usize,
        value: u64,
        free: u64,
    ) -> Result<(), PoolError> {
        let used = self.count_after(index, slot, value == free, free)?;
        // Both places found before either is written (count_after proved they exist).
        let i = usize::try_from(index).map_err(|_| PoolError::Inconsistent)?;
        let entry = self
            .pages
            .get_mut(i)
            .and_then(|p| p.0.get_mut(slot))
            .ok_or(PoolError::Inconsistent)?;
        let count = self
            .used
            .get_mut(i / ENTRIES_PER_PAGE)
            .and_then(|p| p.0.get_mut(i % ENTRIES_PER_PAGE))
            .ok_or(PoolError::Inconsistent)?;
        if used > *count {
            self.generation = self.generation.saturating_add(1);
        }
        *entry = value;
        *count = used;
        Ok(())
    }

    /// Writes entries `first..first + count` of page `index` to `value(i, old)` (`i` counting
    /// from 0, `old` the entry there) and sets the page's entry count to `used`: a run of
    /// entries with one bookkeeping update. The caller proved `used` is the count after the
    /// writes; [`PoolError::Inconsistent`], with nothing written, for an index or a slot
    /// outside the pool or a count past the page's entries.
    pub fn write_run(
        &mut self,
        index: FrameIndex,
        first: usize,
        count: usize,
        used: u64,
        mut value: impl FnMut(usize, u64) -> u64,
    ) -> Result<(), PoolError> {
        if used > MAX_USED {
            return Err(PoolError::Inconsistent);
        }
        let i = usize::try_from(index).map_err(|_| PoolError::Inconsistent)?;
        let end = first.checked_add(count).ok_or(PoolError::Inconsistent)?;
        // Both places found before either is written.
        let entries = self
            .pages
            .get_mut(i)
            .and_then(|p| p.0.get_mut(first..end))
            .ok_or(PoolError::Inconsistent)?;
        let counter = self
            .used
            .get_mut(i / ENTRIES_PER_PAGE)
            .and_then(|p| p.0.get_mut(i % ENTRIES_PER_PAGE))
            .ok_or(PoolError::Inconsistent)?;
        if used > *counter {
            self.generation = self.generation.saturating_add(1);
        }
        for (n, e) in entries.iter_mut().enumerate() {
            *e = value(n, *e);
        }
        *counter = used;
        Ok(())
    }

    /// Entries of page `index` that are not `free` (a scan: 0 outside the pool).
    pub fn in_use(&self, index: FrameIndex, free: u64) -> u64 {
        // A sum of 0/1, not a filtered count: the compiler turns it into vector compares.
        self.page(index)
            .map_or(0, |p| p.0.iter().map(|&e| u64::from(e != free)).sum())
    }

    /// Physical address of page `index`.
    pub fn phys(&self, index: FrameIndex) -> u64 {
        // Cannot overflow: new() proved every page lies below the 52-bit limit.
        self.phys_base
            .saturating_add(u64::from(index).saturating_mul(PAGE_BYTES as u64))
    }

    /// Frame number of page `index`, as a table entry holds it.
    pub fn pfn(&self, index: FrameIndex) -> Pfn {
        // Below 2^40 for every page of the pool: new() proved each lies below the 52-bit limit.
        Pfn::from_bits(self.phys(index) >> PAGE_SHIFT)
    }

    /// The page at physical address `phys`, if it is one of the pool's.
    pub fn index_of(&self, phys: u64) -> Option<FrameIndex> {
        let offset = phys.checked_sub(self.phys_base)?;
        if offset & PAGE_OFFSET_MASK != 0 {
            return None;
        }
        let index = u32::try_from(offset >> PAGE_SHIFT).ok()?;
        (usize::try_from(index).ok()? < self.pages.len()).then_some(index)
    }

    /// Entry `slot` of page `index` (0 for an index or slot outside the pool).
    pub fn entry(&self, index: FrameIndex, slot: usize) -> u64 {
        #[cfg(test)]
        ENTRY_READS.with(|n| n.set(n.get() + 1));
        usize::try_from(index)
            .ok()
            .and_then(|i| self.pages.get(i))
            .and_then(|p| p.0.get(slot))
            .copied()
            .unwrap_or(0)
    }

    /// Writes entry `slot` of page `index` (ignored outside the pool).
    pub fn set_entry(&mut self, index: FrameIndex, slot: usize, value: u64) {
        if let Some(e) = usize::try_from(index)
            .ok()
            .and_then(|i| self.pages.get_mut(i))
            .and_then(|p| p.0.get_mut(slot))
        {
            *e = value;
            // A raw write bypasses the counts: it may add an entry.
            self.generation = self.generation.saturating_add(1);
        }
    }

    /// How many times an entry may have become in use ([`FramePool::set_counted`] or
    /// [`FramePool::write_run`] with a count that grew, [`FramePool::set_entry`]); saturates
    /// (2^64 writes: never). A search hint is valid only under the generation it was made in.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Page `index` (for scans of a whole table).
    pub fn page(&self, index: FrameIndex) -> Option<&Page> {
        self.pages.get(usize::try_from(index).ok()?)
    }

    /// Every page's bytes (tables, then bookkeeping), for tests that prove a refusal changed
    /// nothing.
    pub fn pages(&self) -> impl Iterator<Item = &Page> {
        self.pages.iter().chain(self.used.iter())
    }
}

/// Audit support (tests and fuzz oracles, never a firmware build): the lists as they are.
#[cfg(any(test, feature = "std"))]
impl FramePool<'_> {
    /// The pages of the list from `head` (index + 1; 0 is the end), following the links; `Err`
    /// with what is wrong when a link is malformed, leaves the pool, or the list runs past
    /// `limit` pages (a cycle).
    fn walk_list(&self, mut head: u32, limit: usize) -> Result<std::vec::Vec<FrameIndex>, String> {
        let mut out = std::vec::Vec::new();
        while let Some(index) = head.checked_sub(1) {
            if out.len() >= limit {
                return Err(format!(
                    "list longer than {limit}: a cycle or a drifted count"
                ));
            }
            let page = self
                .page(index)
                .ok_or_else(|| format!("link to page {index}, outside the pool"))?;
            out.push(index);
            head = unlink(page.0[0])
                .ok_or_else(|| format!("page {index}: malformed link {:#x}", page.0[0]))?;
        }
        Ok(out)
    }

    /// The free list's pages; `Err` when it disagrees with the free count.
    pub fn free_list(&self) -> Result<std::vec::Vec<FrameIndex>, String> {
        let pages = self.walk_list(self.free_head, self.free)?;
        if pages.len() != self.free {
            return Err(format!("{} pages listed, count {}", pages.len(), self.free));
        }
        Ok(pages)
    }

    /// `chain`'s pages, head first; `Err` when its links, tail or count disagree.
    pub fn chain_pages(&self, chain: &Retired) -> Result<std::vec::Vec<FrameIndex>, String> {
        let pages = self.walk_list(chain.head, chain.count)?;
        if pages.len() != chain.count || (chain.count != 0 && pages.last() != Some(&chain.tail)) {
            return Err(format!("chain {chain:?} holds {pages:?}"));
        }
        Ok(pages)
    }
}

#[cfg(test)]
std::thread_local! {
    /// Tests: entries read through [`FramePool::entry`] on this thread (what a search reads),
    /// to hold a work charge against the reads it stands for.
    pub(crate) static ENTRY_READS: core::cell::Cell<u64> = const { core::cell::Cell::new(0) };
}

#[cfg(test)]
impl FramePool<'_> {
    /// Tests: overwrites the free count, as drift would.
    pub(crate) fn force_free_count(&mut self, n: usize) {
        self.free = n;
    }

    /// Tests: overwrites page `index`'s entry count, as drift would.
    pub(crate) fn force_used(&mut self, index: FrameIndex, n: u64) {
        let i = usize::try_from(index).unwrap();
        self.used[i / ENTRIES_PER_PAGE].0[i % ENTRIES_PER_PAGE] = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_allocates_every_page_once_and_takes_them_back() {
        let mut mem = vec![Page::ZERO; 4];
        let mut pool = FramePool::new(&mut mem, 0x10_0000).unwrap();
        // One page of the four holds the entry counts.
        assert_eq!(pool.free_frames(), 3);
        assert_eq!(pool.total_frames(), 3);
        let a = pool.alloc(7).unwrap();
        let b = pool.alloc(0).unwrap();
        let c = pool.alloc(0).unwrap();
        assert_eq!((a, b, c), (0, 1, 2));
        assert_eq!(pool.alloc(0), Err(PoolError::Empty));
        assert_eq!(pool.check_alloc(1), Err(PoolError::Empty));
        assert_eq!(pool.entry(a, 511), 7);
        assert_eq!(pool.phys(c), 0x10_2000);
        assert_eq!(pool.index_of(0x10_2000), Some(2));
        assert_eq!(pool.index_of(0x10_3000), None);
        assert_eq!(pool.index_of(0x10_0008), None);
        assert_eq!(pool.index_of(0xf_f000), None);
        pool.release(b).unwrap();
        assert_eq!(pool.free_frames(), 1);
        assert_eq!(pool.check_alloc(1), Ok(()));
        assert_eq!(pool.check_alloc(2), Err(PoolError::Empty));
        assert_eq!(pool.alloc(0), Ok(b));
    }

    /// Everything a test compares to prove a refusal changed nothing: every byte (tables and
    /// counts), the free count and the list head.
    fn state(pool: &FramePool<'_>) -> (Vec<Page>, usize, u32) {
        (pool.pages().copied().collect(), pool.free, pool.free_head)
    }

    /// Drifted counters are refused as `Inconsistent`, never saturated, and the refusal
    /// changes nothing: the free count against the free list (alloc, release), the entry
    /// counts against the entries (set_counted), indexes outside the pool (release,
    /// set_counted).
    #[test]
    fn drifted_counters_are_inconsistent_and_change_nothing() {
        let mut mem = vec![Page::ZERO; 5];
        let mut pool = FramePool::new(&mut mem, 0x10_0000).unwrap();
        assert_eq!(pool.total_frames(), 4);
        let a = pool.alloc(0).unwrap();
        pool.set_counted(a, 3, 0x33, 0).unwrap();
        pool.set_counted(a, 9, 0x99, 0).unwrap();
        assert_eq!(pool.used(a), 2);
        let refused =
            |pool: &mut FramePool<'_>,
             what: &str,
             op: &dyn Fn(&mut FramePool<'_>) -> Result<(), PoolError>| {
                let before = state(pool);
                assert_eq!(op(pool), Err(PoolError::Inconsistent), "{what}");
                assert!(
                    state(pool) == before,
                    "{what}: the refusal changed the pool"
                );
            };

        // The free count says no page is free while the list's head names one.
        pool.force_free_count(0);
        refused(&mut pool, "alloc, count 0", &|p| p.alloc(0).map(drop));
        refused(&mut pool, "check_alloc, count 0", &|p| p.check_alloc(1));
        // The count says more pages are free than the list holds.
        pool.force_free_count(4);
        refused(&mut pool, "check_alloc past the list", &|p| {
            p.check_alloc(4)
        });
        // The count says every page is free: one more release would go past the pool.
        let a_used = pool.used(a);
        pool.force_used(a, 0);
        refused(&mut pool, "release past the pool", &|p| p.release(a));
        pool.force_used(a, a_used);
        pool.force_free_count(3);
        // The list's head links out of the pool.
        let head = pool.free_head - 1;
        pool.set_entry(head, 0, link(pool.pages.len() as u32 + 1));
        refused(&mut pool, "alloc, link out of the pool", &|p| {
            p.alloc(0).map(drop)
        });
        pool.set_entry(head, 0, 99);
        refused(&mut pool, "alloc, link with low bits", &|p| {
            p.alloc(0).map(drop)
        });
        pool.set_entry(head, 0, link(head + 1 + 1));
        assert_eq!(pool.check_alloc(3), Ok(()));

        // An index outside the pool (release used to ignore it silently).
        refused(&mut pool, "release outside", &|p| p.release(4));
        refused(&mut pool, "release u32::MAX", &|p| p.release(u32::MAX));
        refused(&mut pool, "set_counted outside", &|p| {
            p.set_counted(4, 0, 1, 0)
        });
        refused(&mut pool, "set_counted slot 512", &|p| {
            p.set_counted(a, 512, 1, 0)
        });
        // A page whose count says it holds entries is a table in use: not released.
        refused(&mut pool, "release a counted page", &|p| p.release(a));

        // Entry counts: below zero, past the page's entries, or to zero while entries remain.
        pool.force_used(a, 0);
        refused(&mut pool, "count below zero", &|p| {
            p.set_counted(a, 3, 0, 0)
        });
        pool.force_used(a, 1);
        refused(&mut pool, "count 0 with an entry left", &|p| {
            p.set_counted(a, 3, 0, 0)
        });
        pool.force_used(a, 512);
        refused(&mut pool, "count past 512", &|p| p.set_counted(a, 4, 1, 0));
        pool.force_used(a, u64::MAX);
        refused(&mut pool, "count past its type", &|p| {
            p.set_counted(a, 4, 1, 0)
        });
        refused(&mut pool, "rewrite under a count past 512", &|p| {
            p.set_counted(a, 3, 0x34, 0)
        });

        // With the counts put right, the same operations succeed.
        pool.force_used(a, 2);
        pool.set_counted(a, 3, 0, 0).unwrap();
        pool.set_counted(a, 9, 0, 0).unwrap();
        assert_eq!(pool.used(a), 0);
        pool.release(a).unwrap();
        assert_eq!(pool.free_frames(), 4);
        assert_eq!(pool.check_alloc(4), Ok(()));
        assert_eq!(pool.check_alloc(5), Err(PoolError::Empty));
    }

    /// The pool lives in memory the caller owns (the C entry point makes it from a raw
    /// pointer): over a slice in the middle of a buffer it reads and writes only that slice,
    /// keeps every page's count in the right place across the boundary between its two count
    /// pages, takes pages back in any order and hands them out again from its list, leaves its
    /// list and counts in the caller's memory, and a new pool over that memory starts clean.
    #[test]
    fn a_pool_over_caller_memory_cycles_its_pages_and_touches_nothing_else() {
        const GUARD: u64 = 0x6b6b_6b6b_6b6b_6b6b;
        const BASE: u64 = 0x20_0000;
        // 515 pages: 513 table pages and 2 count pages, so page 512's count is on the second.
        let mut mem = vec![Page([GUARD; ENTRIES_PER_PAGE]); 517];
        {
            let mut pool = FramePool::new(&mut mem[1..516], BASE).unwrap();
            assert_eq!((pool.total_frames(), pool.free_frames()), (513, 513));
            let all: Vec<FrameIndex> = (0..513).map(|_| pool.alloc(0).unwrap()).collect();
            assert_eq!(all, (0..513).collect::<Vec<_>>());
            assert_eq!(pool.alloc(0), Err(PoolError::Empty));
            // Counted entries on pages either side of the count pages' boundary.
            for (n, page) in [0, 511, 512].into_iter().enumerate() {
                for slot in 1..=n + 1 {
                    pool.set_counted(page, slot, 0x1000 + slot as u64, 0)
                        .unwrap();
                }
            }
            assert_eq!(
                [0, 1, 511, 512].map(|p| pool.used(p)),
                [1, 0, 2, 3],
                "counts"
            );
            assert_eq!(pool.release(512), Err(PoolError::Inconsistent));
            for (page, slot) in [(0, 1), (511, 1), (511, 2), (512, 1), (512, 2), (512, 3)] {
                pool.set_counted(page, slot, 0, 0).unwrap();
            }
            // Back in another order (even pages, then odd ones); out again last in, first out.
            let order: Vec<FrameIndex> = all
                .iter()
                .copied()
                .filter(|p| p % 2 == 0)
                .chain(all.iter().copied().filter(|p| p % 2 == 1))
                .collect();
            for &page in &order {
                pool.release(page).unwrap();
            }
            assert_eq!(pool.free_frames(), 513);
            assert_eq!(pool.release(0), Err(PoolError::Inconsistent));
            let again: Vec<FrameIndex> = (0..513).map(|_| pool.alloc(0).unwrap()).collect();
            assert!(again.iter().eq(order.iter().rev()), "allocation order");
            pool.set_counted(512, 7, 0xabc, 0).unwrap();
        }
        // The caller's memory: page 512 holds its entry, its count is slot 0 of the second
        // count page, every other count is 0, and the pages around the pool are untouched.
        assert_eq!(mem[1 + 512].0[7], 0xabc);
        assert_eq!(mem[515].0[0], 1);
        assert!(mem[514].0.iter().all(|&c| c == 0));
        assert!(mem[515].0[1..].iter().all(|&c| c == 0));
        for guard in [&mem[0], &mem[516]] {
            assert!(guard.0.iter().all(|&w| w == GUARD));
        }
        // A pool built over that memory again starts with every page free and no counts.
        let mut pool = FramePool::new(&mut mem[1..516], BASE).unwrap();
        assert_eq!(pool.free_frames(), 513);
        assert!((0..513).all(|p| pool.used(p) == 0));
        assert_eq!(pool.check_alloc(513), Ok(()));
        assert_eq!(pool.alloc(0), Ok(0));
    }

    /// The one fill: release writes only the list link (the page's entries stay as they were),
    /// and alloc writes every entry with the fill asked for, whatever the page held, so every
    /// page handed out is all `fill`, on first use and on reuse alike.
    #[test]
    fn alloc_fills_and_release_does_not() {
        const STALE: u64 = 0x5a5a_5a5a_5a5a_5a5a;
        let mut mem = vec![Page([STALE; ENTRIES_PER_PAGE]); 5];
        let mut pool = FramePool::new(&mut mem, 0x10_0000).unwrap();
        for fill in [0, 0x8000_0000_0000_0000, 7] {
            let pages: Vec<FrameIndex> = (0..4).map(|_| pool.alloc(fill).unwrap()).collect();
            for &p in &pages {
                assert!(
                    pool.page(p).unwrap().0.iter().all(|&e| e == fill),
                    "{fill:#x}"
                );
                // Leave entries behind, as a table page's free entries (of another format) would.
                pool.set_entry(p, 300, STALE);
            }
            for &p in &pages {
                pool.release(p).unwrap();
                // Released: the link in entry 0, every other entry as it was.
                let page = pool.page(p).unwrap();
                assert_eq!(page.0[300], STALE);
                assert!(page.0[1..].iter().all(|&e| e == fill || e == STALE));
            }
        }
    }

    /// Retired pages are neither free nor in a table: every entry of theirs reads as not
    /// present to an EPT or VT-d walker, chains join in one step and go back to the free list
    /// in one step, and a page still counted, or a chain that disagrees with the pool, is
    /// refused with nothing changed.
    #[test]
    fn retired_pages_wait_apart_not_present_and_rejoin_the_free_list_at_once() {
        // Bits 2:0 (EPT R/W/X; VT-d second-level R/W) and 10 (EPT user execute).
        const PRESENT: u64 = 0b111 | 1 << 10;
        let mut mem = vec![Page::ZERO; 8];
        let mut pool = FramePool::new(&mut mem, 0x10_0000).unwrap();
        assert_eq!(pool.total_frames(), 7);
        const FREE: u64 = 1 << 63;
        let pages: Vec<FrameIndex> = (0..5).map(|_| pool.alloc(FREE).unwrap()).collect();
        let (mut a, mut b) = (Retired::EMPTY, Retired::EMPTY);
        pool.set_counted(pages[0], 5, 0x1007, FREE).unwrap();
        let before = state(&pool);
        assert_eq!(pool.retire(pages[0], &mut a), Err(PoolError::Inconsistent));
        assert_eq!(pool.retire(7, &mut a), Err(PoolError::Inconsistent));
        assert!(
            state(&pool) == before && a.is_empty(),
            "a refusal changed something"
        );
        pool.set_counted(pages[0], 5, FREE, FREE).unwrap();
        for &p in &pages[..3] {
            pool.retire(p, &mut a).unwrap();
        }
        for &p in &pages[3..] {
            pool.retire(p, &mut b).unwrap();
        }
        assert_eq!((a.len(), b.len(), pool.free_frames()), (3, 2, 2));
        for &p in &pages {
            assert!(
                pool.page(p).unwrap().0.iter().all(|&e| e & PRESENT == 0),
                "page {p} reads as present"
            );
        }
        // A chain that names a page outside the pool, or disagrees with its count.
        let bad = Retired {
            head: 99,
            tail: 1,
            count: 1,
        };
        let before = state(&pool);
        assert_eq!(pool.reclaim(&mut bad.clone()), Err(PoolError::Inconsistent));
        assert_eq!(pool.join(&mut a.clone(), bad), Err(PoolError::Inconsistent));
        let counted = Retired { count: 0, ..a };
        assert_eq!(pool.check_reclaim(&counted), Err(PoolError::Inconsistent));
        assert!(state(&pool) == before, "a refusal changed something");
        pool.join(&mut a, b).unwrap();
        assert_eq!(a.len(), 5);
        pool.reclaim(&mut a).unwrap();
        assert!(a.is_empty());
        assert_eq!(pool.free_frames(), 7);
        assert_eq!(pool.check_alloc(7), Ok(()));
        assert_eq!(pool.check_alloc(8), Err(PoolError::Empty));
        let mut again: Vec<FrameIndex> = (0..7).map(|_| pool.alloc(0).unwrap()).collect();
        again.sort_unstable();
        assert_eq!(again, (0..7).collect::<Vec<_>>());
    }

    #[test]
    fn pool_refuses_bad_memory() {
        let mut mem = vec![Page::ZERO; 1];
        assert!(FramePool::new(&mut mem, 0x10_0800).is_none());
        assert!(FramePool::new(&mut mem, tsm_core::addr::PHYS_ADDR_LIMIT).is_none());
    }
}
