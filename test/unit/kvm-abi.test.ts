import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { KVM } from '../../src/kvm/ioctls';
import * as S from '../../src/kvm/structs';
import { STATE_SIZES, XSAVE_MIN } from '../../src/kvm/state-abi';

/**
 * The struct layouts (src/kvm/structs.ts) must match the kernel's C layout exactly, or every ioctl passes
 * garbage. This compiles a program against <linux/kvm.h> and compares sizes, offsets and ioctl
 * numbers with what fc-run computes.
 */
const structs: [string, S.StructType, string[]][] = [
  ['kvm_userspace_memory_region', S.kvm_userspace_memory_region, ['slot', 'flags', 'guest_phys_addr', 'memory_size', 'userspace_addr']],
  ['kvm_regs', S.kvm_regs, ['rax', 'rsi', 'rsp', 'r8', 'r15', 'rip', 'rflags']],
  ['kvm_segment', S.kvm_segment, ['base', 'limit', 'selector', 'type', 'present', 'dpl', 'db', 's', 'l', 'g', 'avl', 'unusable']],
  ['kvm_dtable', S.kvm_dtable, ['base', 'limit']],
  ['kvm_sregs', S.kvm_sregs, ['cs', 'ldt', 'gdt', 'idt', 'cr0', 'cr3', 'cr4', 'efer', 'apic_base', 'interrupt_bitmap']],
  ['kvm_fpu', S.kvm_fpu, ['fpr', 'fcw', 'fsw', 'ftwx', 'last_opcode', 'last_ip', 'last_dp', 'xmm', 'mxcsr']],
  ['kvm_msr_entry', S.kvm_msr_entry, ['index', 'data']],
  ['kvm_msrs', S.kvm_msrs, ['nmsrs']],
  ['kvm_cpuid_entry2', S.kvm_cpuid_entry2, ['function', 'index', 'flags', 'eax', 'ebx', 'ecx', 'edx']],
  ['kvm_cpuid2', S.kvm_cpuid2, ['nent']],
  ['kvm_lapic_state', S.kvm_lapic_state, ['regs']],
  ['kvm_pit_config', S.kvm_pit_config, ['flags']],
  ['kvm_irqfd', S.kvm_irqfd, ['fd', 'gsi', 'flags', 'resamplefd']],
  ['kvm_ioeventfd', S.kvm_ioeventfd, ['datamatch', 'addr', 'len', 'fd', 'flags']],
  ['kvm_irq_level', S.kvm_irq_level, ['irq', 'level']],
  ['kvm_mp_state', S.kvm_mp_state, ['mp_state']],
];

/** The snapshot's opaque KVM structures (src/kvm/state-abi.ts): only their sizes matter. */
const stateStructs: [keyof typeof STATE_SIZES, string][] = [
  ['regs', 'kvm_regs'],
  ['sregs', 'kvm_sregs'],
  ['xcrs', 'kvm_xcrs'],
  ['debugregs', 'kvm_debugregs'],
  ['lapic', 'kvm_lapic_state'],
  ['vcpuEvents', 'kvm_vcpu_events'],
  ['msrEntry', 'kvm_msr_entry'],
  ['cpuidEntry', 'kvm_cpuid_entry2'],
  ['irqchip', 'kvm_irqchip'],
  ['pit2', 'kvm_pit_state2'],
  ['clock', 'kvm_clock_data'],
];

const ioctls = Object.keys(KVM).map((k) => `KVM_${k}`);

function cLayout(): Record<string, number> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fc-run-abi-'));
  try {
    const lines = [
      '#include <stdio.h>',
      '#include <stddef.h>',
      '#include <linux/kvm.h>',
      'int main(void) {',
      ...structs.flatMap(([name, , fields]) => [
        `  printf("sizeof ${name} %zu\\n", sizeof(struct ${name}));`,
        ...fields.map((f) => `  printf("offsetof ${name}.${f} %zu\\n", offsetof(struct ${name}, ${f}));`),
      ]),
      ...stateStructs.map(([, name]) => `  printf("sizeof ${name} %zu\\n", sizeof(struct ${name}));`),
      '  printf("sizeof kvm_xsave %zu\\n", sizeof(struct kvm_xsave));',
      ...ioctls.map((i) => `  printf("ioctl ${i} %lu\\n", (unsigned long)${i});`),
      '  printf("offsetof kvm_run.immediate_exit %zu\\n", offsetof(struct kvm_run, immediate_exit));',
      '  printf("offsetof kvm_run.exit_reason %zu\\n", offsetof(struct kvm_run, exit_reason));',
      '  printf("offsetof kvm_run.io %zu\\n", offsetof(struct kvm_run, io));',
      '  printf("offsetof kvm_run.mmio %zu\\n", offsetof(struct kvm_run, mmio));',
      '  return 0;',
      '}',
    ];
    fs.writeFileSync(path.join(dir, 'abi.c'), lines.join('\n'));
    execFileSync('gcc', ['-o', path.join(dir, 'abi'), path.join(dir, 'abi.c')]);
    const out = execFileSync(path.join(dir, 'abi'), { encoding: 'utf8' });
    return Object.fromEntries(out.trim().split('\n').map((l) => {
      const [kind, name, value] = l.split(' ');
      return [`${kind} ${name}`, Number(value)];
    }));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

const c = cLayout();

test.each(structs)('struct %s has the C size and field offsets', (name, type, fields) => {
  expect(S.sizeOf(type)).toBe(c[`sizeof ${name}`]);
  for (const f of fields) expect([f, S.offsetOf(type, f)]).toEqual([f, c[`offsetof ${name}.${f}`]]);
});

test.each(stateStructs)('snapshot part %s is the size of struct %s', (part, name) => {
  expect(STATE_SIZES[part]).toBe(c[`sizeof ${name}`]);
});

test('the smallest XSAVE area is struct kvm_xsave', () => {
  expect(XSAVE_MIN).toBe(c['sizeof kvm_xsave']);
});

test('every ioctl number matches <linux/kvm.h>', () => {
  const mine = Object.fromEntries(Object.entries(KVM).map(([k, v]) => [`ioctl KVM_${k}`, v]));
  const theirs = Object.fromEntries(ioctls.map((i) => [`ioctl ${i}`, c[`ioctl ${i}`]]));
  expect(mine).toEqual(theirs);
});

test('kvm_run offsets used by the exit loop match', () => {
  expect(S.KVM_RUN_OFFSETS.immediate_exit).toBe(c['offsetof kvm_run.immediate_exit']);
  expect(S.KVM_RUN_OFFSETS.exit_reason).toBe(c['offsetof kvm_run.exit_reason']);
  expect(S.KVM_RUN_OFFSETS.exit).toBe(c['offsetof kvm_run.io']);
  expect(S.KVM_RUN_OFFSETS.exit).toBe(c['offsetof kvm_run.mmio']);
});
