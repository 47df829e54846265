//! Per-CPU GDT and TSS. Selectors match the boot GDT (0x08 code, 0x10 data) plus the TSS at
//! 0x18, whose IST1 gives double faults and IST2 page faults their own stacks (stack.rs, each
//! above a guard page), so a stack overflow still gets reported.

use crate::stack::{self, Kind};
use core::arch::asm;
use core::cell::UnsafeCell;

/// Most CPUs the kernel supports (stacks and tables are static).
pub const MAX_CPUS: usize = 16;
/// IST index (1-based, as the IDT gate names it) of the double-fault stack.
pub const DOUBLE_FAULT_IST: u8 = 1;
/// IST index of the page-fault stack.
pub const PAGE_FAULT_IST: u8 = 2;

const CODE64: u64 = 0x00af_9a00_0000_ffff;
const DATA: u64 = 0x00cf_9200_0000_ffff;
const TSS_SELECTOR: u16 = 0x18;

/// 64-bit task-state segment (only IST1 and IST2 are used).
#[repr(C, packed(4))]
#[derive(Clone, Copy)]
struct Tss {
    reserved0: u32,
    rsp: [u64; 3],
    reserved1: u64,
    ist: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    iomap_base: u16,
}

#[repr(C, align(16))]
#[derive(Clone, Copy)]
struct CpuTables {
    gdt: [u64; 5],
    tss: Tss,
}

struct PerCpu(UnsafeCell<[CpuTables; MAX_CPUS]>);

// SAFETY: slot `cpu` is written only by CPU `cpu`, once, in `init_cpu` (called once per CPU).
unsafe impl Sync for PerCpu {}

const EMPTY_TSS: Tss = Tss {
    reserved0: 0,
    rsp: [0; 3],
    reserved1: 0,
    ist: [0; 7],
    reserved2: 0,
    reserved3: 0,
    iomap_base: size_of::<Tss>() as u16, // no I/O permission bitmap
};

static TABLES: PerCpu = PerCpu(UnsafeCell::new(
    [CpuTables {
        gdt: [0; 5],
        tss: EMPTY_TSS,
    }; MAX_CPUS],
));

#[repr(C, packed)]
struct DescriptorPtr {
    limit: u16,
    base: u64,
}

/// Builds and loads CPU `cpu`'s GDT and TSS. Call once per CPU, on that CPU.
pub fn init_cpu(cpu: usize) {
    let (Some(df_top), Some(pf_top), true) = (
        stack::top(Kind::DoubleFault, cpu),
        stack::top(Kind::PageFault, cpu),
        cpu < MAX_CPUS,
    ) else {
        kprintln!("gdt: cpu index {cpu} out of range (max {MAX_CPUS})");
        crate::exit::fail();
    };
    // SAFETY: cpu < MAX_CPUS, and only this CPU touches slot `cpu` (called once per CPU; an
    // index is never handed to two CPUs, see smp::start_aps).
    let tables = unsafe { &mut (*TABLES.0.get())[cpu] };
    let mut ist = [0; 7];
    ist[usize::from(DOUBLE_FAULT_IST - 1)] = df_top;
    ist[usize::from(PAGE_FAULT_IST - 1)] = pf_top;
    tables.tss = Tss { ist, ..EMPTY_TSS };
    let base = &raw const tables.tss as u64;
    let limit = (size_of::<Tss>() - 1) as u64;
    let tss_low = (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (0x89 << 40) // present, 64-bit available TSS
        | (((limit >> 16) & 0xf) << 48)
        | (((base >> 24) & 0xff) << 56);
    tables.gdt = [0, CODE64, DATA, tss_low, base >> 32];
    let ptr = DescriptorPtr {
        limit: (size_of::<[u64; 5]>() - 1) as u16,
        base: tables.gdt.as_ptr() as u64,
    };
    // SAFETY: the GDT lives in a static and keeps the boot selectors (0x08 code, 0x10 data), so
    // reloading CS/SS/DS/ES keeps executing the same flat segments; the TSS descriptor is valid.
    unsafe {
        asm!(
            "lgdt ({ptr})",            // load this CPU's GDT
            "pushq $0x08",             // far return target: code selector ...
            "leaq 1f(%rip), %rax",     //   ... and the next instruction
            "pushq %rax",
            "lretq",                   // reload CS
            "1:",
            "movl $0x10, %eax",        // reload the data segments
            "movl %eax, %ds",
            "movl %eax, %es",
            "movl %eax, %ss",
            "ltr {tss:x}",             // load the task register (IST stacks)
            ptr = in(reg) &raw const ptr,
            tss = in(reg) TSS_SELECTOR,
            out("rax") _,
            options(att_syntax, preserves_flags),
        );
    }
}
