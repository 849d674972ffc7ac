/*
 * An /init that makes no system call: on an instruction-emulating KVM, SYSCALL from ring 3 does
 * not enter the guest kernel, so a real init cannot run there. It spins; the kernel's own work
 * (root mounted, ip= configured, hwrng read, the tty echoing, Ctrl-Alt-Del restarting) goes on
 * around it.
 */
	.globl _start
	.text
_start:
	pause
	jmp _start
