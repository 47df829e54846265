//! Every stack the kernel runs on, in one statically reserved area, each with an unmapped 4 KiB
//! guard page directly below it (`paging.rs` unmaps them). An overflow of any stack writes into
//! its guard page and page-faults there, instead of silently overwriting whatever lies below
//! (the boot page tables used to sit right under the BSP stack, and the AP and double-fault
//! stacks were contiguous).
//!
//! Layout of the area (4 KiB aligned, every slot a guard page followed by its stack):
//!
//! | slots | stack size | used by |
//! |---|---|---|
//! | 1 | [`BSP_STACK_SIZE`] (8 MiB) | the BSP, from `bsp_start64` on (entry.rs) |
//! | `MAX_CPUS - 1` | [`AP_STACK_SIZE`] (64 KiB) | CPUs 1.., from `ap_start64` on |
//! | `MAX_CPUS` | [`IST_STACK_SIZE`] (16 KiB) | double faults (IST1), one per CPU |
//! | `MAX_CPUS` | [`IST_STACK_SIZE`] (16 KiB) | page faults (IST2), one per CPU |
//!
//! Page faults get their own IST stack because a stack overflow leaves no stack to push the
//! fault frame on: delivered on the faulting stack, the #PF would itself fault and become a
//! double fault (or, without a working #DF stack, a silent triple fault).
//!
//! A frame larger than the guard page cannot jump over it unnoticed: the target's code
//! generation probes every page of a stack frame larger than 4 KiB.

use crate::gdt::MAX_CPUS;
use core::cell::UnsafeCell;

/// Page size of the guard pages and of the mappings around them.
pub const PAGE_SIZE: usize = 4096;
/// One unmapped page under every stack.
pub const GUARD_SIZE: usize = PAGE_SIZE;
/// The BSP's stack: the shim builds firmware instances on it.
/// Debug builds keep several copies of a platform firmware and its backend (each up to ~170
/// KiB) on the stack while building them.
pub const BSP_STACK_SIZE: usize = 8 * 1024 * 1024;
/// Each AP's stack.
pub const AP_STACK_SIZE: usize = 64 * 1024;
/// Each interrupt stack (IST): double faults and page faults, per CPU.
pub const IST_STACK_SIZE: usize = 16 * 1024;

/// The kinds of stacks, in the order they are laid out in the area.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// The bootstrap processor's stack (CPU 0).
    Bsp,
    /// An application processor's stack (CPUs 1..).
    Ap,
    /// A CPU's double-fault stack (IST1).
    DoubleFault,
    /// A CPU's page-fault stack (IST2).
    PageFault,
}

const KINDS: [Kind; 4] = [Kind::Bsp, Kind::Ap, Kind::DoubleFault, Kind::PageFault];

impl Kind {
    /// How this stack is called in reports.
    pub const fn name(self) -> &'static str {
        match self {
            Kind::Bsp => "BSP stack",
            Kind::Ap => "AP stack",
            Kind::DoubleFault => "double-fault IST stack",
            Kind::PageFault => "page-fault IST stack",
        }
    }

    const fn size(self) -> usize {
        match self {
            Kind::Bsp => BSP_STACK_SIZE,
            Kind::Ap => AP_STACK_SIZE,
            Kind::DoubleFault | Kind::PageFault => IST_STACK_SIZE,
        }
    }

    /// CPU index of the first slot.
    const fn first_cpu(self) -> usize {
        match self {
            Kind::Ap => 1,
            Kind::Bsp | Kind::DoubleFault | Kind::PageFault => 0,
        }
    }

    const fn count(self) -> usize {
        match self {
            Kind::Bsp => 1,
            Kind::Ap => MAX_CPUS - 1,
            Kind::DoubleFault | Kind::PageFault => MAX_CPUS,
        }
    }

    /// Bytes per slot: the guard page and the stack above it.
    const fn slot(self) -> usize {
        GUARD_SIZE + self.size()
    }

    /// Offset of this kind's first slot in the area.
    const fn offset(self) -> usize {
        match self {
            Kind::Bsp => 0,
            Kind::Ap => Kind::Bsp.end(),
            Kind::DoubleFault => Kind::Ap.end(),
            Kind::PageFault => Kind::DoubleFault.end(),
        }
    }

    /// Offset just past this kind's last slot.
    const fn end(self) -> usize {
        self.offset() + self.count() * self.slot()
    }
}

/// Size of the whole area.
pub const AREA_SIZE: usize = Kind::PageFault.end();
/// Offset of the BSP stack's top in the area (entry.rs loads it into RSP).
pub const BSP_TOP_OFFSET: usize = Kind::Bsp.offset() + Kind::Bsp.slot();

const _: () = {
    let mut i = 0;
    while i < KINDS.len() {
        // Every guard and every stack starts on a page boundary.
        assert!(KINDS[i].size().is_multiple_of(PAGE_SIZE) && KINDS[i].size() > 0);
        i += 1;
    }
    assert!(Kind::Bsp.offset() == 0 && BSP_TOP_OFFSET <= AREA_SIZE);
};

/// The stack area. Page aligned, so each slot's guard is exactly one page.
#[repr(C, align(4096))]
pub struct Area(UnsafeCell<[u8; AREA_SIZE]>);

// SAFETY: the memory is only ever used as stacks, each by the one CPU whose index selects it
// (an AP that misses its check-in is parked with INIT and no later AP is started, so the boot
// variables that hand out an index are never reused under a late AP; smp::start_aps), or left
// unmapped as guard pages; Rust code never reads or writes it through this type.
unsafe impl Sync for Area {}

/// The stacks (in .bss; entry.rs names it to set up the BSP stack).
pub static AREA: Area = Area(UnsafeCell::new([0; AREA_SIZE]));

/// `[start, end)` of the stack area.
pub fn area() -> (u64, u64) {
    let start = AREA.0.get() as u64;
    (start, start + AREA_SIZE as u64)
}

/// Address of the guard page of `kind`'s stack for CPU `cpu`; `None` if there is none.
fn guard(kind: Kind, cpu: usize) -> Option<u64> {
    let slot = cpu.checked_sub(kind.first_cpu())?;
    if slot >= kind.count() {
        return None;
    }
    // slot < count, so the offset stays inside the area (a few MiB).
    Some(area().0 + (kind.offset() + slot * kind.slot()) as u64)
}

/// Top (highest address, exclusive, 16-byte aligned) of `kind`'s stack for CPU `cpu`.
pub fn top(kind: Kind, cpu: usize) -> Option<u64> {
    guard(kind, cpu).map(|g| g + kind.slot() as u64)
}

/// Every guard page, lowest first.
pub fn guards() -> impl Iterator<Item = u64> {
    KINDS.into_iter().flat_map(|kind| {
        (kind.first_cpu()..kind.first_cpu() + kind.count()).filter_map(move |cpu| guard(kind, cpu))
    })
}

/// A fault address inside a guard page: whose stack ran out.
#[derive(Clone, Copy, Debug)]
pub struct GuardHit {
    /// Kind of the stack that overflowed.
    pub kind: Kind,
    /// CPU index the stack belongs to.
    pub cpu: usize,
    /// The guard page's address.
    pub guard: u64,
}

impl GuardHit {
    /// Bottom of the overflowed stack (just above the guard page).
    pub fn stack_bottom(&self) -> u64 {
        self.guard + GUARD_SIZE as u64
    }

    /// Top of the overflowed stack.
    pub fn stack_top(&self) -> u64 {
        self.guard + self.kind.slot() as u64
    }
}

/// Which stack's guard page `addr` lies in, if any.
pub fn guard_hit(addr: u64) -> Option<GuardHit> {
    let (start, end) = area();
    if !(start..end).contains(&addr) {
        return None;
    }
    let offset = usize::try_from(addr - start).ok()?;
    let kind = KINDS
        .into_iter()
        .find(|k| (k.offset()..k.end()).contains(&offset))?;
    let inside = offset - kind.offset();
    if inside % kind.slot() >= GUARD_SIZE {
        return None; // in the stack itself
    }
    let cpu = kind.first_cpu() + inside / kind.slot();
    Some(GuardHit {
        kind,
        cpu,
        guard: guard(kind, cpu)?,
    })
}
