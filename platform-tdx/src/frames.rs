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

/// A pool of table pages over memory the caller owns. Free pages form a list threaded through
/// their first entry (index + 1 of the next free page; 0 ends the list).
///
/// One page in 513 (at the end of the memory) holds the pool's bookkeeping instead of tables:
/// for every table page, how many of its entries are in use, so the walker knows a page became
/// empty without scanning its 512 entries.
pub struct FramePool<'m> {
    pages: &'m mut [Page],
    used: &'m mut [Page],
    phys_base: u64,
    free_head: u32,
    free: usize,
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
        };
        for index in (0..count).rev() {
            pool.release(index);
        }
        Some(pool)
    }

    /// Whether [`FramePool::new`] accepts `total` pages at `phys_base`, decided without
    /// touching the memory (the C entry point checks before it takes the pages).
    pub fn fits(total: usize, phys_base: u64) -> bool {
        Self::table_pages(total, phys_base).is_some()
    }

    /// Table pages of a pool over `total` pages at `phys_base`, if the pool can exist.
    fn table_pages(total: usize, phys_base: u64) -> Option<usize> {
        // c count pages hold 512 counts each for the other total - c pages: c = ceil(total / 513).
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

    /// Pages on the free list.
    pub const fn free_frames(&self) -> usize {
        self.free
    }

    /// Pages the pool holds in all.
    pub fn total_frames(&self) -> usize {
        self.pages.len()
    }

    /// Takes a page off the free list and fills every entry with `fill`.
    pub fn alloc(&mut self, fill: u64) -> Option<FrameIndex> {
        let index = self.free_head.checked_sub(1)?;
        let page = self.pages.get_mut(usize::try_from(index).ok()?)?;
        let next = u32::try_from(page.0[0]).ok()?;
        page.0.fill(fill);
        self.set_used(index, 0);
        self.free_head = next;
        self.free = self.free.saturating_sub(1);
        Some(index)
    }

    /// Returns page `index` to the free list.
    pub fn release(&mut self, index: FrameIndex) {
        let next = self.free_head;
        let Some(page) = usize::try_from(index)
            .ok()
            .and_then(|i| self.pages.get_mut(i))
        else {
            return;
        };
        page.0.fill(0);
        page.0[0] = u64::from(next);
        // Cannot overflow: new() refuses u32::MAX pages.
        self.free_head = index.saturating_add(1);
        self.free = self.free.saturating_add(1);
    }

    fn used_slot(&mut self, index: FrameIndex) -> Option<&mut u64> {
        let i = usize::try_from(index).ok()?;
        self.used
            .get_mut(i / ENTRIES_PER_PAGE)?
            .0
            .get_mut(i % ENTRIES_PER_PAGE)
    }

    fn set_used(&mut self, index: FrameIndex, n: u64) {
        if let Some(u) = self.used_slot(index) {
            *u = n;
        }
    }

    /// Entries of page `index` in use (kept by [`FramePool::set_counted`]).
    pub fn used(&self, index: FrameIndex) -> u64 {
        usize::try_from(index)
            .ok()
            .and_then(|i| {
                self.used
                    .get(i / ENTRIES_PER_PAGE)?
                    .0
                    .get(i % ENTRIES_PER_PAGE)
            })
            .copied()
            .unwrap_or(0)
    }

    /// Writes entry `slot` of page `index`, counting entries that are not `free`.
    pub fn set_counted(&mut self, index: FrameIndex, slot: usize, value: u64, free: u64) {
        let old = self.entry(index, slot);
        self.set_entry(index, slot, value);
        let delta = (old == free, value == free);
        if let Some(u) = self.used_slot(index) {
            match delta {
                (true, false) => *u = u.saturating_add(1),
                (false, true) => *u = u.saturating_sub(1),
                _ => {}
            }
        }
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
        }
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
        assert_eq!(pool.alloc(0), None);
        assert_eq!(pool.entry(a, 511), 7);
        assert_eq!(pool.phys(c), 0x10_2000);
        assert_eq!(pool.index_of(0x10_2000), Some(2));
        assert_eq!(pool.index_of(0x10_3000), None);
        assert_eq!(pool.index_of(0x10_0008), None);
        assert_eq!(pool.index_of(0xf_f000), None);
        pool.release(b);
        assert_eq!(pool.free_frames(), 1);
        assert_eq!(pool.alloc(0), Some(b));
    }

    #[test]
    fn pool_refuses_bad_memory() {
        let mut mem = vec![Page::ZERO; 1];
        assert!(FramePool::new(&mut mem, 0x10_0800).is_none());
        assert!(FramePool::new(&mut mem, tsm_core::addr::PHYS_ADDR_LIMIT).is_none());
    }
}
