//! Per-CPU GDT and TSS (`x86_64`'s table types). Selectors match the boot GDT (0x08 code, 0x10
//! data) plus the TSS at 0x18, whose IST1 gives double faults and IST2 page faults their own
//! stacks (stack.rs, each above a guard page), so a stack overflow still gets reported.
//!
//! Every CPU has its own pair: `ltr` marks the TSS descriptor busy, so two CPUs cannot load one
//! descriptor, and each CPU's IST stacks are its own.

use crate::stack::{self, Kind};
use spin::Once;
use x86_64::VirtAddr;
use x86_64::instructions::segmentation::{CS, DS, ES, SS, Segment};
use x86_64::instructions::tables::load_tss;
use x86_64::registers::segmentation::SegmentSelector;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable};
use x86_64::structures::tss::TaskStateSegment;

/// Most CPUs the kernel supports (stacks and tables are static).
pub const MAX_CPUS: usize = 16;
/// IST slot (0-based, as `x86_64` counts; the CPU's IST1) of the double-fault stack.
pub const DOUBLE_FAULT_IST_INDEX: u16 = 0;
/// IST slot (the CPU's IST2) of the page-fault stack.
pub const PAGE_FAULT_IST_INDEX: u16 = 1;

/// Null, code, data and the two-entry TSS descriptor.
const GDT_ENTRIES: usize = 5;

// Our GDTs keep the boot GDT's selectors (entry.rs: 0x08 code, 0x10 data), which the exception
// gates (built with the BSP's CS) and every AP (on the boot GDT until `init_cpu`) rely on.
const _: () = {
    let mut table = GlobalDescriptorTable::<GDT_ENTRIES>::empty();
    assert!(table.append(Descriptor::kernel_code_segment()).0 == 0x08);
    assert!(table.append(Descriptor::kernel_data_segment()).0 == 0x10);
};

/// One CPU's GDT and the selectors its entries got.
struct Gdt {
    table: GlobalDescriptorTable<GDT_ENTRIES>,
    code: SegmentSelector,
    data: SegmentSelector,
    tss: SegmentSelector,
}

/// Each CPU's TSS and GDT, built by that CPU in `init_cpu`. The tables sit in `Once`'s cell,
/// writable memory, where the CPU sets the TSS descriptor's busy bit on `ltr`.
static TSS: [Once<TaskStateSegment>; MAX_CPUS] = [const { Once::new() }; MAX_CPUS];
static GDT: [Once<Gdt>; MAX_CPUS] = [const { Once::new() }; MAX_CPUS];

/// Builds and loads CPU `cpu`'s GDT and TSS. Call once per CPU, on that CPU.
pub fn init_cpu(cpu: usize) {
    let (Some(tss), Some(gdt), Some(df_top), Some(pf_top)) = (
        TSS.get(cpu),
        GDT.get(cpu),
        stack::top(Kind::DoubleFault, cpu).and_then(|top| VirtAddr::try_new(top).ok()),
        stack::top(Kind::PageFault, cpu).and_then(|top| VirtAddr::try_new(top).ok()),
    ) else {
        kprintln!("gdt: cpu index {cpu} out of range (max {MAX_CPUS})");
        crate::exit::fail();
    };
    let tss = tss.call_once(|| {
        let mut tss = TaskStateSegment::new(); // no I/O permission bitmap
        tss.interrupt_stack_table[usize::from(DOUBLE_FAULT_IST_INDEX)] = df_top;
        tss.interrupt_stack_table[usize::from(PAGE_FAULT_IST_INDEX)] = pf_top;
        tss
    });
    let gdt = gdt.call_once(|| {
        let mut table = GlobalDescriptorTable::empty();
        // Appended in the boot GDT's order, so the selectors are its 0x08 and 0x10 (checked
        // above) and the TSS's 0x18.
        let code = table.append(Descriptor::kernel_code_segment());
        let data = table.append(Descriptor::kernel_data_segment());
        let tss = table.append(Descriptor::tss_segment(tss));
        Gdt {
            table,
            code,
            data,
            tss,
        }
    });
    gdt.table.load();
    // SAFETY: the GDT just loaded is 'static and holds a flat 64-bit code segment and a flat
    // data segment at the boot GDT's selectors (0x08, 0x10), so reloading CS/SS/DS/ES keeps
    // executing and addressing the same flat segments; the TSS descriptor points at this CPU's
    // 'static TSS, loaded by no other CPU (slot `cpu` is this CPU's alone, see smp::start_aps),
    // whose IST stacks are this CPU's.
    unsafe {
        CS::set_reg(gdt.code);
        DS::set_reg(gdt.data);
        ES::set_reg(gdt.data);
        SS::set_reg(gdt.data);
        load_tss(gdt.tss);
    }
}
