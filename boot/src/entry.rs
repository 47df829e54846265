//! The PVH entry: the ELF note QEMU looks for, 32-bit start-up to long mode, and the jump into
//! Rust. Application processors join at `ap_start32` (reached from the real-mode trampoline in
//! `smp.rs`) and share the long-mode switch and the page tables built here.
//!
//! Page tables: an identity map of the first 4 GiB with 2 MiB pages (PML4[0] -> PDPT,
//! PDPT[0..4] -> four page directories). Everything at or above 4 GiB is unmapped, so an access
//! there page-faults (used by the `fault` test hook). `paging.rs` later maps the stack area with
//! 4 KiB pages and unmaps the guard page under every stack.
//!
//! The BSP stack is the first stack of the area in `stack.rs`, above its own guard page; the
//! page tables here are in `.bss.boot`, never directly below a stack.

use crate::smp::{AP_BOOT_CPU, AP_BOOT_STACK};
use crate::stack::{AREA, BSP_TOP_OFFSET};

core::arch::global_asm!(
    r#"
    // ---- XEN_ELFNOTE_PHYS32_ENTRY: tells QEMU to boot us through PVH ----------------------
    .section .note.pvh, "a"
    .p2align 2                          // notes are 4-byte aligned (QEMU rejects 8)
    .long 4                             // name size: "Xen\0"
    .long 8                             // descriptor size: one 64-bit address
    .long 18                            // type 18 = XEN_ELFNOTE_PHYS32_ENTRY
    .asciz "Xen"                        // name
    .quad pvh_start                     // descriptor: physical address of the 32-bit entry

    // ---- shared 32-bit -> 64-bit switch (paging tables must already exist) --------------
    .macro enter_long_mode
    mov %cr4, %eax                      // CR4 ...
    or $0x20, %eax                      //   ... | PAE
    mov %eax, %cr4                      //   (long mode requires PAE paging)
    mov $boot_pml4, %eax                // top-level page table
    mov %eax, %cr3                      //   loaded into CR3
    mov $0xC0000080, %ecx               // IA32_EFER
    rdmsr                               //   read it into EDX:EAX
    or $0x100, %eax                     //   | LME (long mode enable)
    wrmsr                               //   write it back
    mov %cr0, %eax                      // CR0 ...
    or $0x80000001, %eax                //   ... | PG | PE
    mov %eax, %cr0                      //   paging on: long mode active (compatibility mode)
    lgdt boot_gdt_ptr                   // GDT with a 64-bit code segment at selector 0x08
    .endm

    .section .text.pvh, "ax"
    .code32
    .global pvh_start
pvh_start:                              // PVH: 32-bit flat protected mode, paging off, EBX = start info
    cld                                 // string instructions count upwards
    mov %ebx, %esi                      // keep the start-info pointer while clearing .bss
    mov $__bss_start, %edi              // clear .bss: from
    mov $__bss_end, %ecx                //   to
    sub %edi, %ecx                      //   length in bytes
    shr $2, %ecx                        //   in dwords (.bss is 16-byte aligned)
    xor %eax, %eax                      //   with zeroes
    rep stosl                           //   (page tables and stacks live in .bss)
    mov %esi, {start_info}              // save the start-info pointer for Rust
    mov ${stacks} + {bsp_top}, %esp     // a stack (not used until Rust, but defined from here on)

    mov $boot_pdpt, %eax                // PML4[0] = PDPT ...
    or $0x3, %eax                       //   | present | writable
    mov %eax, boot_pml4                 //   (upper half of the entry stays zero)

    mov $boot_pd, %eax                  // PDPT[0..4] = the four page directories ...
    or $0x3, %eax                       //   | present | writable
    mov $boot_pdpt, %edi                // first PDPT entry
    mov $4, %ecx                        // four entries: 4 x 1 GiB
1:  mov %eax, (%edi)                    // PDPT[i] = PD[i]
    add $0x1000, %eax                   // next page directory (they are contiguous)
    add $8, %edi                        // next PDPT entry
    loop 1b                             // ECX times

    mov $0x83, %eax                     // PD entry: address 0 | present | writable | 2 MiB page
    mov $boot_pd, %edi                  // first entry of the first page directory
    mov $2048, %ecx                     // 4 x 512 entries: 2048 x 2 MiB = 4 GiB
2:  mov %eax, (%edi)                    // PD[i] = identity-mapped 2 MiB page at i * 2 MiB
    add $0x200000, %eax                 // next physical 2 MiB
    add $8, %edi                        // next entry
    loop 2b                             // ECX times

    enter_long_mode                     // PAE, CR3, EFER.LME, paging, 64-bit GDT
    ljmp $0x08, $bsp_start64            // far jump into the 64-bit code segment

    .global ap_start32
ap_start32:                             // APs, from the trampoline: 32-bit flat, paging off
    enter_long_mode                     // same page tables and GDT as the BSP
    ljmp $0x08, $ap_start64             // far jump into the 64-bit code segment

    .code64
bsp_start64:
    mov $0x10, %eax                     // data segment selector
    mov %eax, %ds                       //   for DS
    mov %eax, %es                       //   ES
    mov %eax, %ss                       //   SS
    xor %eax, %eax                      // null selector
    mov %eax, %fs                       //   for FS
    mov %eax, %gs                       //   GS
    mov ${stacks} + {bsp_top}, %rsp     // BSP stack top (stack.rs), 16-byte aligned
    mov {start_info}(%rip), %edi        // argument: start-info physical address
    call {kmain}                        // kmain never returns
3:  hlt                                 // but if it did: stop here
    jmp 3b

ap_start64:
    mov $0x10, %eax                     // data segment selector
    mov %eax, %ds                       //   for DS
    mov %eax, %es                       //   ES
    mov %eax, %ss                       //   SS
    xor %eax, %eax                      // null selector
    mov %eax, %fs                       //   for FS
    mov %eax, %gs                       //   GS
    mov {ap_stack}(%rip), %rsp          // this AP's stack top, set by the BSP before INIT-SIPI
    mov {ap_cpu}(%rip), %rdi            // argument: this AP's CPU index
    call {ap_main}                      // ap_main never returns
4:  hlt                                 // but if it did: stop here
    jmp 4b

    // ---- 64-bit GDT used until each CPU loads its own (gdt.rs keeps the same selectors) -
    .section .rodata.boot_gdt, "a"
    .p2align 3
boot_gdt:
    .quad 0                             // 0x00: null
    .quad 0x00af9a000000ffff            // 0x08: code, 64-bit, ring 0
    .quad 0x00cf92000000ffff            // 0x10: data, ring 0
boot_gdt_end:
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1   // limit
    .quad boot_gdt                      // base (32-bit lgdt reads the low 4 bytes)

    // ---- page tables (zeroed by pvh_start); the stacks are in stack.rs -----------------
    .section .bss.boot, "aw", @nobits
    .p2align 12
boot_pml4: .skip 4096                   // PML4
boot_pdpt: .skip 4096                   // page-directory-pointer table
boot_pd:   .skip 4096 * 4               // four page directories

    .text                               // back to the default section for what follows
"#,
    start_info = sym crate::START_INFO,
    kmain = sym crate::kmain,
    ap_main = sym crate::smp::ap_main,
    ap_stack = sym AP_BOOT_STACK,
    ap_cpu = sym AP_BOOT_CPU,
    stacks = sym AREA,
    bsp_top = const BSP_TOP_OFFSET,
    options(att_syntax)
);
