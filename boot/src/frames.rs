//! A pool of 4 KiB physical frames carved from the usable RAM the PVH memory map reports, above
//! the kernel image and below 4 GiB (the identity-mapped range, so phys == virt). Allocation
//! bumps through the regions; freed frames go on an intrusive free list.

use crate::pvh::{RAM, Region};

/// Frame size.
pub const FRAME_SIZE: u64 = 4096;
/// Highest address (exclusive) the pool hands out: the end of the identity map.
pub const IDENTITY_MAP_END: u64 = 4 << 30;
const MAX_RANGES: usize = 16;

/// A physical frame pool. Addresses are physical and usable directly as pointers.
pub struct FramePool {
    ranges: [(u64, u64); MAX_RANGES],
    nranges: usize,
    /// Range being bumped through, and the next never-used frame in it.
    current: usize,
    next: u64,
    /// Head of the free list (0 = empty); each free frame holds the next address.
    free_list: u64,
    total: u64,
    in_use: u64,
}

/// The kernel's frame pool, filled by [`init`].
pub static FRAMES: spin::Mutex<FramePool> = spin::Mutex::new(FramePool::empty());

impl FramePool {
    /// A pool with no memory.
    pub const fn empty() -> Self {
        Self {
            ranges: [(0, 0); MAX_RANGES],
            nranges: 0,
            current: 0,
            next: 0,
            free_list: 0,
            total: 0,
            in_use: 0,
        }
    }

    /// Every whole frame of usable RAM in `regions` inside `[floor, ceiling)`.
    pub fn from_memmap(regions: &[Region], floor: u64, ceiling: u64) -> Self {
        let mut pool = Self::empty();
        for r in regions.iter().filter(|r| r.kind == RAM) {
            let start = align_up(r.addr.max(floor));
            let end = r.addr.saturating_add(r.size).min(ceiling) & !(FRAME_SIZE - 1);
            if start >= end {
                continue;
            }
            let Some(slot) = pool.ranges.get_mut(pool.nranges) else {
                kprintln!("frames: more than {MAX_RANGES} RAM ranges, ignoring the rest");
                break;
            };
            *slot = (start, end);
            pool.nranges += 1;
            pool.total += (end - start) / FRAME_SIZE;
        }
        pool.next = pool.ranges.first().map_or(0, |r| r.0);
        pool
    }

    /// The ranges the pool draws from, as `(start, end)` physical addresses.
    pub fn ranges(&self) -> &[(u64, u64)] {
        self.ranges.get(..self.nranges).unwrap_or(&[])
    }

    /// Frames managed in total.
    pub fn total_frames(&self) -> u64 {
        self.total
    }

    /// Frames currently available.
    pub fn free_frames(&self) -> u64 {
        self.total - self.in_use
    }

    /// A zero-filled frame, by physical (= virtual) address; `None` when exhausted.
    pub fn alloc_zeroed(&mut self) -> Option<u64> {
        let frame = self.take()?;
        // SAFETY: the frame is usable RAM inside the identity map that nobody else owns (it was
        // free or never used), and it is 4 KiB long and page aligned.
        unsafe { core::ptr::write_bytes(frame as *mut u8, 0, FRAME_SIZE as usize) };
        self.in_use += 1;
        Some(frame)
    }

    /// Returns a frame to the pool.
    ///
    /// # Safety
    /// `frame` must come from `alloc_zeroed` on this pool, not be freed already, and no longer
    /// be used by anyone.
    pub unsafe fn free(&mut self, frame: u64) {
        // SAFETY: per the contract the frame is ours again; its first word stores the link.
        unsafe { core::ptr::write(frame as *mut u64, self.free_list) };
        self.free_list = frame;
        self.in_use -= 1;
    }

    /// `count` physically contiguous zeroed frames, bumped from one range (never from the free
    /// list); their first address. For structures that want one block, like a table pool.
    pub fn alloc_contiguous(&mut self, count: u64) -> Option<u64> {
        let bytes = count.checked_mul(FRAME_SIZE)?;
        loop {
            let &(_, end) = self.ranges.get(self.current)?;
            let start = self.next;
            if start.checked_add(bytes)? <= end {
                self.next = start + bytes;
                // SAFETY: `[start, start + bytes)` lies in a usable RAM range inside the identity
                // map and was never handed out (the bump cursor only moves forward).
                unsafe { core::ptr::write_bytes(start as *mut u8, 0, bytes as usize) };
                self.in_use += count;
                return Some(start);
            }
            self.current += 1;
            self.next = self.ranges.get(self.current)?.0;
        }
    }

    fn take(&mut self) -> Option<u64> {
        if self.free_list != 0 {
            let frame = self.free_list;
            // SAFETY: free frames are ours; `free` stored the next link in the first word.
            self.free_list = unsafe { core::ptr::read(frame as *const u64) };
            return Some(frame);
        }
        loop {
            let &(_, end) = self.ranges.get(self.current)?;
            if self.next < end {
                let frame = self.next;
                self.next += FRAME_SIZE;
                return Some(frame);
            }
            self.current += 1;
            self.next = self.ranges.get(self.current)?.0;
        }
    }
}

fn align_up(addr: u64) -> u64 {
    addr.saturating_add(FRAME_SIZE - 1) & !(FRAME_SIZE - 1)
}

/// Fills [`FRAMES`] from the memory map, above the kernel image.
pub fn init(regions: &[Region]) {
    unsafe extern "C" {
        static __kernel_end: u8;
    }
    let kernel_end = &raw const __kernel_end as u64;
    *FRAMES.lock() = FramePool::from_memmap(regions, kernel_end, IDENTITY_MAP_END);
}

/// A zero-filled frame from the kernel pool.
pub fn alloc_zeroed() -> Option<u64> {
    FRAMES.lock().alloc_zeroed()
}

/// Returns a frame to the kernel pool.
///
/// # Safety
/// As [`FramePool::free`].
pub unsafe fn free(frame: u64) {
    // SAFETY: forwarded contract.
    unsafe { FRAMES.lock().free(frame) }
}
