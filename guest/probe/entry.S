/* Entry points of the probe guest. */
    .section .text.entry, "ax"
    .code64
    .globl probe_entry64
probe_entry64:
    /* Linux 64-bit boot protocol: long mode, identity-mapped, RSI = boot_params. */
    cli
    lea __stack_top(%rip), %rsp
    mov %rsi, %rdi
    xor %esi, %esi
    call probe_main
1:  hlt
    jmp 1b

    .section .note.GNU-stack, "", @progbits
