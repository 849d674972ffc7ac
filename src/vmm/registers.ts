import type { Regs, Sregs } from '../kvm/kvm';

const h = (v: bigint | number) => '0x' + BigInt(v).toString(16).padStart(16, '0');

/** A register dump for error reports: what a developer needs to see where the guest died. */
export function formatRegisters(r: Regs, s: Sregs): string {
  const line = (names: (keyof Regs)[]) => names.map((n) => `${n.padStart(3)}=${h(r[n])}`).join(' ');
  return [
    line(['rip', 'rsp', 'rbp', 'rflags']),
    line(['rax', 'rbx', 'rcx', 'rdx']),
    line(['rsi', 'rdi', 'r8', 'r9']),
    line(['r10', 'r11', 'r12', 'r13']),
    line(['r14', 'r15']),
    `cr0=${h(s.cr0)} cr2=${h(s.cr2)} cr3=${h(s.cr3)} cr4=${h(s.cr4)} efer=${h(s.efer)}`,
    `cs=${s.cs.selector.toString(16)} (base ${h(s.cs.base)} l=${s.cs.l} db=${s.cs.db}) ss=${s.ss.selector.toString(16)} ` +
      `gdt=${h(s.gdt.base)}/${s.gdt.limit} idt=${h(s.idt.base)}/${s.idt.limit}`,
  ].join('\n');
}
