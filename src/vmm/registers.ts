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

const INTERNAL_ERROR_NAMES: Record<number, string> = { 1: 'emulation failure', 2: 'simultaneous exceptions', 3: 'delivery event failed', 4: 'unexpected exit reason' };

/**
 * What kvm_run.internal says: the suberror, its data words and, for an emulation failure with
 * KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES, the bytes of the instruction KVM could not
 * emulate (data[0] is the flags word, then insn_size and up to 15 bytes).
 */
export function describeInternalError(run: DataView, at: number): string {
  const sub = run.getUint32(at, true);
  const ndata = Math.min(run.getUint32(at + 4, true), 16);
  const words = Array.from({ length: ndata }, (_, i) => run.getBigUint64(at + 8 + 8 * i, true));
  let text = `KVM internal error: ${INTERNAL_ERROR_NAMES[sub] ?? 'suberror'} (${sub})`;
  if (sub === 1 && ndata >= 3 && (words[0] & 1n) !== 0n) {
    const size = Math.min(run.getUint8(at + 16), 15);
    const bytes = Array.from({ length: size }, (_, i) => run.getUint8(at + 17 + i).toString(16).padStart(2, '0'));
    text += `; instruction bytes: ${size > 0 ? bytes.join(' ') : '(none reported)'}`;
  }
  if (ndata > 0) text += `; data: ${words.map((w) => '0x' + w.toString(16)).join(' ')}`;
  return text;
}
