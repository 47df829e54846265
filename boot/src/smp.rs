//! Application processors: INIT-SIPI-SIPI through the xAPIC (MMIO at 0xFEE00000), a 16-bit
//! real-mode trampoline copied to 0x8000, then the concurrent stage every CPU runs at once
//! behind a start barrier and under a TSC deadline. The BSP starts them just before that stage
//! (kernel.rs), so an AP only waits for the others to check in, never through the replay.
//!
//! The CPUs to start come from the ACPI MADT (RSDP from the PVH start info). Without one, APIC
//! IDs 1, 2, ... are tried in turn until one fails to check in within [`CHECKIN_MS`].

use crate::gdt::MAX_CPUS;
use crate::smp_stage::{self, CpuResult};
use crate::stack::{self, Kind};
use crate::{idt, time};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// Where the trampoline runs (SIPI vector 0x08).
const TRAMPOLINE_BASE: u64 = 0x8000;
const SIPI_VECTOR: u32 = (TRAMPOLINE_BASE >> 12) as u32;
const LAPIC_BASE: u64 = 0xFEE0_0000;
const LAPIC_ID: u64 = 0x20;
const LAPIC_SVR: u64 = 0xF0;
const LAPIC_ICR_LOW: u64 = 0x300;
const LAPIC_ICR_HIGH: u64 = 0x310;
/// How long an AP has to check in after its SIPIs.
pub const CHECKIN_MS: u64 = 1000;

core::arch::global_asm!(
    r#"
    // Copied to {base} and entered in real mode by each AP's SIPI (CS = {base} >> 4, IP = 0).
    .section .rodata.ap_trampoline, "a"
    .global tsm_ap_trampoline_start
    .global tsm_ap_trampoline_end
    .code16
tsm_ap_trampoline_start:
    cli                                  // no interrupts until the kernel's IDT is loaded
    cld                                  // string instructions count upwards
    xor %ax, %ax                         // DS = 0, so addresses below are absolute
    mov %ax, %ds
    lgdtl {base} + (tramp_gdt_ptr - tsm_ap_trampoline_start)   // flat 32-bit GDT
    mov %cr0, %eax                       // CR0 ...
    or $1, %eax                          //   ... | PE
    mov %eax, %cr0                       //   protected mode
    ljmpl $0x08, ${base} + (tramp32 - tsm_ap_trampoline_start) // load the 32-bit CS
    .code32
tramp32:
    mov $0x10, %ax                       // flat data segment
    mov %ax, %ds                         //   for DS
    mov %ax, %es                         //   ES
    mov %ax, %ss                         //   SS
    mov $ap_start32, %eax                // kernel's 32-bit AP entry (entry.rs), above 1 MiB
    jmp *%eax                            // continue there: long mode, then ap_main
    .p2align 3
tramp_gdt:
    .quad 0                              // 0x00: null
    .quad 0x00cf9a000000ffff             // 0x08: code, 32-bit, flat
    .quad 0x00cf92000000ffff             // 0x10: data, flat
tramp_gdt_ptr:
    .word tramp_gdt_ptr - tramp_gdt - 1  // limit
    .long {base} + (tramp_gdt - tsm_ap_trampoline_start) // base, where the copy lives
tsm_ap_trampoline_end:
    .code64
    .text
"#,
    base = const TRAMPOLINE_BASE,
    options(att_syntax)
);

unsafe extern "C" {
    static tsm_ap_trampoline_start: u8;
    static tsm_ap_trampoline_end: u8;
}

/// Stack top for the AP being started (read by `ap_start64` in entry.rs).
pub static AP_BOOT_STACK: AtomicU64 = AtomicU64::new(0);
/// CPU index for the AP being started (read by `ap_start64` in entry.rs).
pub static AP_BOOT_CPU: AtomicU64 = AtomicU64::new(0);

/// CPUs running kernel code (BSP included).
static ONLINE: AtomicUsize = AtomicUsize::new(1);
/// APIC ID per CPU index.
static APIC_IDS: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];

static GO: AtomicBool = AtomicBool::new(false);
static NCPU: AtomicUsize = AtomicUsize::new(1);
static ARRIVED: AtomicUsize = AtomicUsize::new(0);
static HANG_CPU: AtomicUsize = AtomicUsize::new(usize::MAX);
/// The stage deadline (a TSC value), set before the stage starts.
static DEADLINE: AtomicU64 = AtomicU64::new(u64::MAX);
/// The same deadline in milliseconds from the start, for the messages that name it.
static DEADLINE_MS: AtomicU64 = AtomicU64::new(0);
static RESULTS: [spin::Once<CpuResult>; MAX_CPUS] = [const { spin::Once::new() }; MAX_CPUS];

fn lapic_read(reg: u64) -> u32 {
    // SAFETY: the xAPIC page is identity mapped; register reads have no side effects.
    unsafe { core::ptr::read_volatile((LAPIC_BASE + reg) as *const u32) }
}

fn lapic_write(reg: u64, value: u32) {
    // SAFETY: the xAPIC page is identity mapped and owned by this kernel.
    unsafe { core::ptr::write_volatile((LAPIC_BASE + reg) as *mut u32, value) }
}

/// The calling CPU's local APIC ID.
pub fn apic_id() -> u32 {
    lapic_read(LAPIC_ID) >> 24
}

fn send_ipi(apic: u32, command: u32) {
    lapic_write(LAPIC_ICR_HIGH, apic << 24);
    lapic_write(LAPIC_ICR_LOW, command);
    let deadline = time::deadline_ms(100);
    while lapic_read(LAPIC_ICR_LOW) & (1 << 12) != 0 && !time::passed(deadline) {
        core::hint::spin_loop(); // delivery pending
    }
}

/// INIT-SIPI-SIPI to `apic` as CPU `cpu`; true once it checked in.
fn start_ap(cpu: usize, apic: u32) -> bool {
    let Some(stack) = stack::top(Kind::Ap, cpu) else {
        return false;
    };
    AP_BOOT_STACK.store(stack, Ordering::SeqCst);
    AP_BOOT_CPU.store(cpu as u64, Ordering::SeqCst);
    if let Some(slot) = APIC_IDS.get(cpu) {
        slot.store(apic, Ordering::Relaxed);
    }
    let before = ONLINE.load(Ordering::Acquire);
    send_ipi(apic, 0x4500); // INIT, level assert
    time::delay_us(10_000);
    for _ in 0..2 {
        send_ipi(apic, 0x4600 | SIPI_VECTOR); // STARTUP at TRAMPOLINE_BASE
        let deadline = time::deadline_ms(CHECKIN_MS / 2);
        while !time::passed(deadline) {
            if ONLINE.load(Ordering::Acquire) > before {
                return true;
            }
            core::hint::spin_loop();
        }
    }
    false
}

/// Starts the APs; returns `(online, expected)` CPU counts, BSP included.
pub fn start_aps(rsdp: u64) -> (usize, usize) {
    lapic_write(LAPIC_SVR, lapic_read(LAPIC_SVR) | 0x1FF); // APIC on, spurious vector 0xFF
    let start = &raw const tsm_ap_trampoline_start;
    let len = (&raw const tsm_ap_trampoline_end as usize) - (start as usize);
    // SAFETY: 0x8000.. is conventional RAM below 1 MiB that nothing else uses (the frame pool
    // starts above the kernel, and the start info was copied out already); len is ~100 bytes.
    unsafe { core::ptr::copy_nonoverlapping(start, TRAMPOLINE_BASE as *mut u8, len) };

    let bsp = apic_id();
    if let Some(slot) = APIC_IDS.first() {
        slot.store(bsp, Ordering::Relaxed);
    }
    let mut cpu = 1;
    match crate::acpi::cpus::<MAX_CPUS>(rsdp) {
        Some(list) => {
            kprintln!("smp: MADT lists {} cpus (bsp apic {bsp})", list.ids().len());
            for &apic in list.ids().iter().filter(|&&id| id != bsp) {
                if start_ap(cpu, apic) {
                    kprintln!("smp: cpu {cpu} (apic {apic}) online");
                } else {
                    kprintln!(
                        "smp: FAIL cpu {cpu} (apic {apic}) did not check in within {CHECKIN_MS} ms"
                    );
                    // Park it (INIT: back to wait-for-SIPI) and start no other: a late AP must
                    // never pick up the next CPU's stack and GDT slot from AP_BOOT_*.
                    send_ipi(apic, 0x4500);
                    cpu += 1;
                    break;
                }
                cpu += 1;
            }
        }
        None => {
            kprintln!("smp: no MADT, probing APIC IDs 1.. (bsp apic {bsp})");
            for apic in (0..MAX_CPUS as u32).filter(|&id| id != bsp) {
                if cpu >= MAX_CPUS || !start_ap(cpu, apic) {
                    break;
                }
                kprintln!("smp: cpu {cpu} (apic {apic}) online");
                cpu += 1;
            }
        }
    }
    (ONLINE.load(Ordering::Acquire), cpu)
}

/// Whether the stage deadline has passed (CPUs waiting for each other in the stage give up).
pub fn deadline_passed() -> bool {
    time::passed(DEADLINE.load(Ordering::Acquire))
}

/// The stage deadline in milliseconds from the start of the stage (`deadline=` word).
pub fn deadline_ms() -> u64 {
    DEADLINE_MS.load(Ordering::Acquire)
}

/// Long-mode entry of each AP (from `ap_start64` in entry.rs), on its own stack.
pub extern "sysv64" fn ap_main(cpu: u64) -> ! {
    let cpu = cpu as usize;
    crate::gdt::init_cpu(cpu);
    idt::load();
    ONLINE.fetch_add(1, Ordering::AcqRel);
    while !GO.load(Ordering::Acquire) {
        core::hint::spin_loop(); // until the last AP checked in: the stage starts right after
    }
    stage(cpu);
    crate::exit::halt_forever()
}

/// One CPU's part of the stage: barrier, then the hook.
fn stage(cpu: usize) {
    let ncpu = NCPU.load(Ordering::Acquire);
    ARRIVED.fetch_add(1, Ordering::AcqRel);
    while ARRIVED.load(Ordering::Acquire) < ncpu {
        core::hint::spin_loop();
    }
    if cpu == HANG_CPU.load(Ordering::Acquire) {
        kprintln!("smp: cpu {cpu} hangs on purpose (cmdline 'hang')");
        loop {
            core::hint::spin_loop();
        }
    }
    let result = smp_stage::run_concurrent(cpu, ncpu);
    if let Some(slot) = RESULTS.get(cpu) {
        slot.call_once(|| result);
    }
}

/// Runs the concurrent stage on `ncpu` CPUs (BSP = CPU 0, the caller). Fails if a CPU misses
/// the start barrier or does not finish within `deadline_ms` of the start. With `hang`, the
/// last CPU never finishes (test hook).
pub fn run_stage(ncpu: usize, deadline_ms: u64, hang: bool) -> bool {
    NCPU.store(ncpu, Ordering::Release);
    if hang && ncpu > 1 {
        HANG_CPU.store(ncpu - 1, Ordering::Release);
    }
    let deadline = time::deadline_ms(deadline_ms);
    DEADLINE_MS.store(deadline_ms, Ordering::Release);
    DEADLINE.store(deadline, Ordering::Release);
    GO.store(true, Ordering::Release);
    ARRIVED.fetch_add(1, Ordering::AcqRel);
    while ARRIVED.load(Ordering::Acquire) < ncpu {
        if time::passed(deadline) {
            let arrived = ARRIVED.load(Ordering::Acquire);
            kprintln!("smp: FAIL only {arrived} of {ncpu} cpus reached the start barrier");
            return false;
        }
        core::hint::spin_loop();
    }
    stage(0);
    let mut ok = true;
    let mut results = [CpuResult::default(); MAX_CPUS];
    for (cpu, slot) in RESULTS.iter().enumerate().take(ncpu) {
        while slot.get().is_none() && !time::passed(deadline) {
            core::hint::spin_loop();
        }
        let apic = APIC_IDS.get(cpu).map_or(0, |a| a.load(Ordering::Relaxed));
        match slot.get() {
            Some(r) => {
                kprintln!("smp: cpu {cpu} (apic {apic}): {r}");
                ok &= r.failures() == 0;
                if let Some(slot) = results.get_mut(cpu) {
                    *slot = *r;
                }
            }
            None => {
                kprintln!(
                    "smp: FAIL cpu {cpu} (apic {apic}) did not finish within {deadline_ms} ms"
                );
                ok = false;
            }
        }
    }
    if !ok {
        return false;
    }
    let results = results.get(..ncpu).unwrap_or(&[]);
    if !smp_stage::verify(results, &mut crate::serial::Console) {
        kprintln!("smp: FAIL shared state inconsistent");
        return false;
    }
    kprintln!("smp: {ncpu} cpus ok");
    true
}
