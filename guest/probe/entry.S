/*
 * Entry points of the probe guest.
 *
 *  probe_entry64    Linux 64-bit boot protocol: long mode, identity-mapped, RSI = boot_params.
 *  probe_entry_pvh  PVH (Xen PHYS32_ENTRY note): 32-bit protected mode, paging off,
 *                   EBX = hvm_start_info. Builds its own page tables and enters long mode.
 *  ap_trampoline    Copied to TRAMPOLINE_BASE by the boot CPU; application processors start
 *                   there in real mode after INIT/SIPI and climb to long mode.
 */
#define TRAMPOLINE_BASE 0x10000
#define MODE_LINUX64 0
#define MODE_PVH 1
#define MSR_EFER 0xc0000080

    .section .text.entry, "ax"
    .code64
    .globl probe_entry64
probe_entry64:
    cli
    lea __stack_top(%rip), %rsp
    mov %rsi, %rdi
    mov $MODE_LINUX64, %esi
    call probe_main
1:  hlt
    jmp 1b

    .code32
    .globl probe_entry_pvh
probe_entry_pvh:
    cli
    mov %ebx, %esi                       /* keep hvm_start_info */
    /* Identity-map the first GiB with 2 MiB pages. */
    lea pvh_pd, %edi
    xor %eax, %eax
    mov $0x83, %eax                      /* present, writable, 2 MiB page */
    mov $512, %ecx
2:  mov %eax, (%edi)
    movl $0, 4(%edi)
    add $0x200000, %eax
    add $8, %edi
    loop 2b
    lea pvh_pd, %eax
    or $3, %eax
    mov %eax, pvh_pdpt
    lea pvh_pdpt, %eax
    or $3, %eax
    mov %eax, pvh_pml4
    lea pvh_pml4, %eax
    mov %eax, %cr3
    mov %cr4, %eax
    or $0x20, %eax                       /* PAE */
    mov %eax, %cr4
    mov $MSR_EFER, %ecx
    rdmsr
    or $0x100, %eax                      /* LME */
    wrmsr
    lgdt probe_gdt_ptr
    mov %cr0, %eax
    or $0x80000001, %eax                 /* PG | PE */
    mov %eax, %cr0
    ljmp $0x10, $pvh_long
    .code64
pvh_long:
    mov $0x18, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    lea __stack_top(%rip), %rsp
    mov %esi, %edi                       /* hvm_start_info (below 4 GiB) */
    mov $MODE_PVH, %esi
    call probe_main
3:  hlt
    jmp 3b

/* Application processors arrive here in long mode from the trampoline. */
    .globl ap_entry64
ap_entry64:
    mov $1, %eax
    lock xadd %eax, ap_next_stack(%rip)
    inc %eax
    shl $12, %eax
    lea ap_stacks(%rip), %rsp
    add %rax, %rsp
    call ap_main
4:  cli
    hlt
    jmp 4b

/* ---- the AP trampoline: position-dependent at TRAMPOLINE_BASE ---- */
#define T(label) (TRAMPOLINE_BASE + ((label) - ap_trampoline))
    .globl ap_trampoline, ap_trampoline_end, ap_trampoline_cr3, ap_trampoline_entry
    .code16
ap_trampoline:
    cli
    mov %cs, %ax
    mov %ax, %ds
    lgdtl (tramp_gdt_ptr - ap_trampoline)
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl $0x08, $T(tramp32)
    .code32
tramp32:
    mov $0x18, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %cr4, %eax
    or $0x20, %eax
    mov %eax, %cr4
    mov T(ap_trampoline_cr3), %eax
    mov %eax, %cr3
    mov $MSR_EFER, %ecx
    rdmsr
    or $0x100, %eax
    wrmsr
    mov %cr0, %eax
    or $0x80000000, %eax
    mov %eax, %cr0
    ljmp $0x10, $T(tramp64)
    .code64
tramp64:
    mov $0x18, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov T(ap_trampoline_entry), %rax
    jmp *%rax
    .p2align 3
tramp_gdt:
    .quad 0
    .quad 0x00cf9a000000ffff             /* 0x08: 32-bit code */
    .quad 0x00af9a000000ffff             /* 0x10: 64-bit code */
    .quad 0x00cf92000000ffff             /* 0x18: data */
tramp_gdt_ptr:
    .word tramp_gdt_ptr - tramp_gdt - 1
    .long T(tramp_gdt)
    .p2align 2
ap_trampoline_cr3:
    .long 0
    .p2align 3
ap_trampoline_entry:
    .quad 0
ap_trampoline_end:

/* The boot CPU's GDT for the PVH path (same layout as the trampoline's). */
    .section .rodata
    .p2align 3
probe_gdt:
    .quad 0
    .quad 0x00cf9a000000ffff
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
probe_gdt_ptr:
    .word probe_gdt_ptr - probe_gdt - 1
    .long probe_gdt

#ifdef WITH_PVH_NOTE
/* XEN_ELFNOTE_PHYS32_ENTRY: tells a VMM this image can be entered through PVH. */
    .section .note.Xen, "a"
    .p2align 2
    .long 4                              /* namesz */
    .long 4                              /* descsz */
    .long 18                             /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long probe_entry_pvh
#endif

    .bss
    .p2align 12
pvh_pml4: .skip 4096
pvh_pdpt: .skip 4096
pvh_pd:   .skip 4096
    .globl ap_stacks
ap_stacks: .skip 4096 * 33
ap_next_stack: .long 0

    .section .note.GNU-stack, "", @progbits
