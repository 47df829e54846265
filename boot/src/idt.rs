//! Exception handling: the CPU exceptions print vector, error code and RIP on the serial console
//! and end the run as a failure. A fault is a red run, never a hang.
//!
//! Double faults and page faults run on their own interrupt stacks (IST1, IST2; gdt.rs), so a
//! stack overflow, which page-faults in the guard page under the stack (stack.rs), is reported
//! like any other fault and named as an overflow: `FAULT: stack overflow: ...`.

use crate::gdt::{DOUBLE_FAULT_IST_INDEX, PAGE_FAULT_IST_INDEX};
use crate::stack;
use core::sync::atomic::{AtomicU32, Ordering};
use x86_64::VirtAddr;
use x86_64::registers::control::Cr2;
use x86_64::structures::idt::{EntryOptions, InterruptDescriptorTable};

/// Exceptions that push an error code: 8, 10-14, 17, 21, 29, 30.
const fn has_error_code(vector: usize) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30)
}
const _: () = assert!(has_error_code(14) && !has_error_code(3));

core::arch::global_asm!(
    r#"
    // One stub per vector: make the stack look the same for all, then go to the common path.
    .macro isr_stub vec, errcode
isr_stub_\vec:
    .if \errcode == 0
    pushq $0                            // no CPU error code: push a dummy one
    .endif
    pushq $\vec                         // the vector number
    jmp isr_common
    .endm

    .section .text.isr, "ax"
    .code64
isr_common:
    mov %rsp, %rdi                      // argument: &Frame {{ vector, error, rip, cs, rflags, rsp, ss }}
    and $-16, %rsp                      // ABI stack alignment for the call
    call {handler}                      // prints and exits; never returns
5:  hlt                                 // but if it did: stop here
    jmp 5b

    isr_stub 0, 0
    isr_stub 1, 0
    isr_stub 2, 0
    isr_stub 3, 0
    isr_stub 4, 0
    isr_stub 5, 0
    isr_stub 6, 0
    isr_stub 7, 0
    isr_stub 8, 1
    isr_stub 9, 0
    isr_stub 10, 1
    isr_stub 11, 1
    isr_stub 12, 1
    isr_stub 13, 1
    isr_stub 14, 1
    isr_stub 15, 0
    isr_stub 16, 0
    isr_stub 17, 1
    isr_stub 18, 0
    isr_stub 19, 0
    isr_stub 20, 0
    isr_stub 21, 1
    isr_stub 22, 0
    isr_stub 23, 0
    isr_stub 24, 0
    isr_stub 25, 0
    isr_stub 26, 0
    isr_stub 27, 0
    isr_stub 28, 0
    isr_stub 29, 1
    isr_stub 30, 1
    isr_stub 31, 0

    // Stub addresses, read by `init` to fill the IDT.
    .section .rodata.isr, "a"
    .p2align 3
    .global tsm_isr_stub_table
tsm_isr_stub_table:
    .irp vec, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad isr_stub_\vec
    .endr

    .text
"#,
    handler = sym exception_handler,
    options(att_syntax)
);

unsafe extern "C" {
    static tsm_isr_stub_table: [u64; 32];
}

/// The IDT (`x86_64`'s type: all 256 gates, those past the exceptions not present).
static IDT: spin::Once<InterruptDescriptorTable> = spin::Once::new();

/// Points exception `vector`'s gate at `stub` and returns the gate's options; `None` for the
/// vectors `x86_64` keeps private because no current CPU raises them (9, 15, 22-27, 31): they
/// stay not present, and were one raised, the CPU would report a #NP naming the gate instead.
///
/// # Safety
/// `stub` must be the address of a handler for `vector` (it takes the frame the CPU pushes for
/// this vector, error code or not, and never returns).
unsafe fn set_gate(
    idt: &mut InterruptDescriptorTable,
    vector: usize,
    stub: VirtAddr,
) -> Option<&mut EntryOptions> {
    // SAFETY: the caller passes this vector's handler.
    let options = unsafe {
        match vector {
            0 => idt.divide_error.set_handler_addr(stub),
            1 => idt.debug.set_handler_addr(stub),
            2 => idt.non_maskable_interrupt.set_handler_addr(stub),
            3 => idt.breakpoint.set_handler_addr(stub),
            4 => idt.overflow.set_handler_addr(stub),
            5 => idt.bound_range_exceeded.set_handler_addr(stub),
            6 => idt.invalid_opcode.set_handler_addr(stub),
            7 => idt.device_not_available.set_handler_addr(stub),
            8 => idt.double_fault.set_handler_addr(stub),
            10 => idt.invalid_tss.set_handler_addr(stub),
            11 => idt.segment_not_present.set_handler_addr(stub),
            12 => idt.stack_segment_fault.set_handler_addr(stub),
            13 => idt.general_protection_fault.set_handler_addr(stub),
            14 => idt.page_fault.set_handler_addr(stub),
            16 => idt.x87_floating_point.set_handler_addr(stub),
            17 => idt.alignment_check.set_handler_addr(stub),
            18 => idt.machine_check.set_handler_addr(stub),
            19 => idt.simd_floating_point.set_handler_addr(stub),
            20 => idt.virtualization.set_handler_addr(stub),
            21 => idt.cp_protection_exception.set_handler_addr(stub),
            28 => idt.hv_injection_exception.set_handler_addr(stub),
            29 => idt.vmm_communication_exception.set_handler_addr(stub),
            30 => idt.security_exception.set_handler_addr(stub),
            _ => return None,
        }
    };
    Some(options)
}

/// Builds the IDT (once, on the BSP, after its GDT is loaded: the gates take the current CS).
pub fn init() {
    IDT.call_once(|| {
        // SAFETY: the table is 32 addresses in .rodata, defined above.
        let stubs = unsafe { tsm_isr_stub_table };
        let mut idt = InterruptDescriptorTable::new();
        for (vector, stub) in stubs.into_iter().enumerate() {
            // SAFETY: `stub` is this vector's stub above: it pushes a dummy error code where
            // the CPU pushes none, and the common path never returns.
            let Some(options) =
                (unsafe { set_gate(&mut idt, vector, VirtAddr::new_truncate(stub)) })
            else {
                continue;
            };
            // Page faults and double faults switch to their own stacks (gdt.rs): an overflow
            // leaves no room on the faulting stack to push the frame.
            let ist = match vector {
                8 => Some(DOUBLE_FAULT_IST_INDEX),
                14 => Some(PAGE_FAULT_IST_INDEX),
                _ => None,
            };
            if let Some(ist) = ist {
                // SAFETY: each CPU's TSS (gdt.rs) gives this slot a stack of its own, used by
                // this vector alone.
                unsafe { options.set_stack_index(ist) };
            }
        }
        idt
    });
}

/// Loads the IDT on the calling CPU (after `init`).
pub fn load() {
    let Some(idt) = IDT.get() else {
        kprintln!("idt: load before init");
        crate::exit::fail();
    };
    idt.load();
}

/// What the stubs leave on the stack.
#[repr(C)]
struct Frame {
    vector: u64,
    error: u64,
    rip: u64,
    _cs: u64,
    rflags: u64,
    rsp: u64,
    _ss: u64,
}

const NAMES: [&str; 32] = [
    "#DE divide error",
    "#DB debug",
    "NMI",
    "#BP breakpoint",
    "#OF overflow",
    "#BR bound range",
    "#UD invalid opcode",
    "#NM device not available",
    "#DF double fault",
    "coprocessor segment overrun",
    "#TS invalid TSS",
    "#NP segment not present",
    "#SS stack fault",
    "#GP general protection",
    "#PF page fault",
    "reserved",
    "#MF x87 floating point",
    "#AC alignment check",
    "#MC machine check",
    "#XM SIMD floating point",
    "#VE virtualization",
    "#CP control protection",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "#HV hypervisor injection",
    "#VC VMM communication",
    "#SX security",
    "reserved",
];

/// APIC ID + 1 of the CPU reporting a fault; 0 while none is.
static REPORTING: AtomicU32 = AtomicU32::new(0);

extern "sysv64" fn exception_handler(frame: *const Frame) -> ! {
    use core::fmt::Write;
    let me = crate::smp::apic_id() + 1;
    if let Err(other) = REPORTING.compare_exchange(0, me, Ordering::AcqRel, Ordering::Acquire) {
        if other == me {
            // A fault inside this handler (on an IST stack, the nested fault has just reused
            // it): write a fixed line and leave rather than report, and perhaps fault, again.
            let _ = crate::serial::Raw.write_str("\nEXCEPTION: fault while reporting a fault\n");
            crate::exit::fail()
        }
        // Another CPU is reporting and will end the run; do not cut its report short.
        crate::exit::halt_forever()
    }
    // SAFETY: the stub passes its stack pointer, where it and the CPU just pushed a Frame.
    let frame = unsafe { &*frame };
    let cr2 = Cr2::read_raw();
    let name = usize::try_from(frame.vector)
        .ok()
        .and_then(|v| NAMES.get(v))
        .unwrap_or(&"unknown");
    // Unlocked writer: the fault may have hit while this CPU held the console lock.
    let _ = writeln!(
        crate::serial::Raw,
        "\nEXCEPTION: {name} (vector {}) error code {:#x} at rip {:#x} (cr2 {:#x}, rsp {:#x}, rflags {:#x}) on apic {}",
        frame.vector,
        frame.error,
        frame.rip,
        cr2,
        frame.rsp,
        frame.rflags,
        me - 1,
    );
    // A page fault in a guard page (or a double fault raised by one, while pushing an
    // exception frame onto a full stack) is a stack that ran out.
    let hit = match frame.vector {
        8 | 14 => stack::guard_hit(cr2),
        _ => None,
    }
    .or_else(|| stack::guard_hit(frame.rsp));
    if let Some(hit) = hit {
        let _ = writeln!(
            crate::serial::Raw,
            "FAULT: stack overflow: {} of cpu {} ({:#x}-{:#x}) ran into its guard page at {:#x} (cr2 {cr2:#x})",
            hit.kind.name(),
            hit.cpu,
            hit.stack_bottom(),
            hit.stack_top(),
            hit.guard,
        );
    }
    crate::exit::fail()
}
