//! Guard pages. The boot identity map (entry.rs) uses 2 MiB pages; `install_stack_guards`
//! replaces each 2 MiB page that overlaps the stack area (stack.rs) by a table of 512 4 KiB
//! pages mapping the same memory, with the guard page under every stack left unmapped. It runs
//! on the BSP before anything else uses the map in earnest and before any AP starts, so every
//! CPU shares the result (they all load the same CR3).

use crate::stack::{self, PAGE_SIZE};
use core::cell::UnsafeCell;
use x86_64::registers::control::Cr3;
use x86_64::structures::paging::page_table::PageTableEntry;
use x86_64::structures::paging::{OffsetPageTable, PageTable, PageTableFlags as Flags, Translate};
use x86_64::{PhysAddr, VirtAddr};

/// Size of the identity map's pages.
const HUGE_PAGE_SIZE: u64 = 2 * 1024 * 1024;
/// 4 KiB tables enough for every 2 MiB page the stack area can overlap (it is only 4 KiB
/// aligned, so one more than its size in 2 MiB pages).
const TABLES: usize = stack::AREA_SIZE.div_ceil(HUGE_PAGE_SIZE as usize) + 1;

struct Tables(UnsafeCell<[PageTable; TABLES]>);

// SAFETY: the tables are written only by `install_stack_guards`, on the BSP, once, before any
// other CPU runs; afterwards only the MMU reads them.
unsafe impl Sync for Tables {}

/// The 4 KiB page tables of the stack area (in .bss, identity mapped: physical == virtual).
static STACK_TABLES: Tables = Tables(UnsafeCell::new([const { PageTable::new() }; TABLES]));

/// What was installed: the 4 KiB-mapped range and the number of guard pages unmapped.
pub struct Guards {
    /// Start of the range now mapped with 4 KiB pages.
    pub start: u64,
    /// End (exclusive) of that range.
    pub end: u64,
    /// Guard pages left unmapped.
    pub count: usize,
}

/// Splits the 2 MiB pages holding the stacks into 4 KiB pages and unmaps every guard page.
/// Call once, on the BSP, before starting the APs.
pub fn install_stack_guards() -> Result<Guards, &'static str> {
    let (area_start, area_end) = stack::area();
    let first = area_start & !(HUGE_PAGE_SIZE - 1);
    let end = area_end.next_multiple_of(HUGE_PAGE_SIZE);
    let huge_pages = usize::try_from((end - first) / HUGE_PAGE_SIZE).unwrap_or(usize::MAX);
    if huge_pages > TABLES {
        return Err("stack area spans more 2 MiB pages than there are tables");
    }
    let (pml4_frame, _) = Cr3::read();
    // SAFETY: CR3 holds the boot PML4 (entry.rs), a page in .bss inside the identity map, so its
    // physical address is its virtual address. Only this CPU runs and nothing else refers to it
    // while this function edits it.
    let pml4 = unsafe { &mut *(pml4_frame.start_address().as_u64() as *mut PageTable) };
    // SAFETY: called once, on the BSP, before any AP starts: nothing else refers to the tables.
    let tables = unsafe { &mut *STACK_TABLES.0.get() };

    let mut count = 0;
    for (i, table) in tables.iter_mut().enumerate().take(huge_pages) {
        let base = first + i as u64 * HUGE_PAGE_SIZE;
        let pde = directory_entry(pml4, base)?;
        // Same attributes as the 2 MiB page, as 4 KiB pages of the same physical memory.
        let flags = pde.flags() & !(Flags::HUGE_PAGE | Flags::ACCESSED | Flags::DIRTY);
        for (j, entry) in table.iter_mut().enumerate() {
            entry.set_addr(PhysAddr::new(base + (j * PAGE_SIZE) as u64), flags);
        }
        for guard in stack::guards().filter(|g| (base..base + HUGE_PAGE_SIZE).contains(g)) {
            let index = usize::try_from((guard - base) / PAGE_SIZE as u64).unwrap_or(usize::MAX);
            let entry = table
                .iter_mut()
                .nth(index)
                .ok_or("guard page outside its table")?;
            entry.set_unused();
            count += 1;
        }
        // The table is complete before the directory entry points at it (the MMU may walk the
        // new entry as soon as it is written).
        core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
        let table_addr = PhysAddr::new(&raw const *table as u64);
        pde.set_addr(table_addr, Flags::PRESENT | Flags::WRITABLE);
    }
    // Drop the 2 MiB translations this CPU may have cached (the 4 KiB ones map the same memory,
    // so the stack this code runs on stays valid throughout).
    x86_64::instructions::tlb::flush_all();

    if count != stack::guards().count() {
        return Err("not every guard page lies in the split range");
    }
    verify(pml4)?;
    Ok(Guards {
        start: first,
        end,
        count,
    })
}

/// The page-directory entry (a 2 MiB identity page) that maps `addr`.
fn directory_entry(pml4: &mut PageTable, addr: u64) -> Result<&mut PageTableEntry, &'static str> {
    let va = VirtAddr::new(addr);
    let pml4e = &pml4[va.p4_index()];
    if !pml4e.flags().contains(Flags::PRESENT) {
        return Err("PML4 entry of the stack area not present");
    }
    // SAFETY: a present PML4 entry of the boot map points at its PDPT, a page in .bss inside the
    // identity map; it is only edited here, by this CPU.
    let pdpt = unsafe { &mut *(pml4e.addr().as_u64() as *mut PageTable) };
    let pdpte = &pdpt[va.p3_index()];
    if !pdpte.flags().contains(Flags::PRESENT) || pdpte.flags().contains(Flags::HUGE_PAGE) {
        return Err("PDPT entry of the stack area is not a page directory");
    }
    // SAFETY: as above, for the page directory the PDPT entry points at.
    let pd = unsafe { &mut *(pdpte.addr().as_u64() as *mut PageTable) };
    let pde = &mut pd[va.p2_index()];
    if !pde.flags().contains(Flags::PRESENT | Flags::HUGE_PAGE) || pde.addr().as_u64() != addr {
        return Err("stack area is not identity mapped with 2 MiB pages");
    }
    Ok(pde)
}

/// Walks the new tables: every guard page unmapped, the stack page above it identity mapped.
fn verify(pml4: &mut PageTable) -> Result<(), &'static str> {
    // SAFETY: the whole map is an identity map, so a physical-memory offset of 0 is correct; the
    // mapper only reads the tables here.
    let map = unsafe { OffsetPageTable::new(pml4, VirtAddr::new(0)) };
    for guard in stack::guards() {
        if map.translate_addr(VirtAddr::new(guard)).is_some() {
            return Err("a guard page is still mapped");
        }
        let above = guard + PAGE_SIZE as u64;
        if map.translate_addr(VirtAddr::new(above)) != Some(PhysAddr::new(above)) {
            return Err("the stack above a guard page is not identity mapped");
        }
    }
    Ok(())
}
