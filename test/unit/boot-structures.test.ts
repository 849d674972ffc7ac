import { buildMpTable, gdtEntry } from '../../src/boot/structures';
import { applyCpuidTemplate, applyFilter, normalizeCpuid, withTscDeadline } from '../../src/boot/vcpu-setup';
import type { BootPlan } from '../../src/boot/plan';
import type { CpuidEntry } from '../../src/kvm/kvm';

const sum = (b: Buffer) => b.reduce((a, x) => (a + x) & 0xff, 0);

describe('MP table', () => {
  const table = buildMpTable(4, 0x9fc00);
  const config = table.subarray(16);

  test('floating pointer and configuration table carry valid checksums and point at each other', () => {
    expect(table.toString('latin1', 0, 4)).toBe('_MP_');
    expect(sum(table.subarray(0, 16))).toBe(0);
    expect(table.readUInt32LE(4)).toBe(0x9fc10);
    expect(config.toString('latin1', 0, 4)).toBe('PCMP');
    expect(config.readUInt16LE(4)).toBe(config.length);
    expect(sum(config)).toBe(0);
  });

  test('lists every CPU (the first as bootstrap) and routes ISA IRQ 0 to IOAPIC pin 2', () => {
    const cpus: number[][] = [];
    const irqs: number[][] = [];
    for (let off = 44; off < config.length; ) {
      const type = config[off];
      if (type === 0) {
        cpus.push([config[off + 1], config[off + 3]]);
        off += 20;
      } else {
        if (type === 3) irqs.push([config[off + 1], config[off + 5], config[off + 7]]);
        off += 8;
      }
    }
    expect(cpus).toEqual([[0, 3], [1, 1], [2, 1], [3, 1]]);
    expect(irqs).toContainEqual([3, 0, 0]); // ExtINT on pin 0
    expect(irqs).toContainEqual([0, 0, 2]); // the PIT on pin 2
    expect(irqs.filter(([, irq]) => irq === 2)).toEqual([]);
    expect(irqs).toContainEqual([0, 23, 23]);
  });
});

test('GDT entries encode like Linux GDT_ENTRY', () => {
  expect(gdtEntry(0xa09b, 0, 0xfffff)).toBe(0x00af9b000000ffffn);
  expect(gdtEntry(0xc093, 0, 0xfffff)).toBe(0x00cf93000000ffffn);
});

describe('CPUID normalization', () => {
  const plan = { vcpus: { count: 4, smt: false } } as BootPlan;
  // What a recent KVM reports: leaf 0xb with subleaf 0 only, zeroed.
  const supported: CpuidEntry[] = [
    { function: 0x1, index: 0, flags: 0, eax: 0x906ea, ebx: 0x00010800, ecx: 0, edx: 0 },
    { function: 0xb, index: 0, flags: 1, eax: 0, ebx: 0, ecx: 0, edx: 0 },
  ];

  test('each vCPU sees its APIC id, the CPU count and the hypervisor bit', () => {
    const leaf1 = normalizeCpuid(supported, 2, plan).find((e) => e.function === 1)!;
    expect(leaf1.ebx >>> 24).toBe(2);
    expect((leaf1.ebx >>> 16) & 0xff).toBe(4);
    expect(leaf1.ebx & 0xffff).toBe(0x0800); // CLFLUSH size kept
    expect(leaf1.ecx >>> 31).toBe(1);
  });

  test('the TSC-deadline timer is shown where KVM emulates it, and only there', () => {
    const bit = (entries: CpuidEntry[]) => (entries.find((e) => e.function === 1)!.ecx >>> 24) & 1;
    expect(bit(supported)).toBe(0);
    expect(bit(withTscDeadline(supported, true))).toBe(1);
    expect(bit(withTscDeadline(supported, false))).toBe(0);
    expect(supported[0].ecx).toBe(0); // the input is not changed
    expect(withTscDeadline(supported, true).find((e) => e.function === 0xb)).toEqual(supported[1]);
  });

  test('leaf 0xb gets an SMT level, a core level and a terminating level', () => {
    const b = normalizeCpuid(supported, 3, plan).filter((e) => e.function === 0xb).sort((x, y) => x.index - y.index);
    expect(b.map((e) => [e.index, e.eax, e.ebx, (e.ecx >> 8) & 0xff, e.edx])).toEqual([
      [0, 0, 1, 1, 3],
      [1, 2, 4, 2, 3],
      [2, 0, 0, 0, 3],
    ]);
    expect(b.every((e) => e.flags & 1)).toBe(true);
  });

  test('with SMT, two threads per core: leaf 0xb, leaf 4 and HTT say so', () => {
    const smt = { vcpus: { count: 4, smt: true } } as BootPlan;
    const withCache: CpuidEntry[] = [
      ...supported,
      { function: 0x4, index: 0, flags: 1, eax: (1 << 5) | 0x1, ebx: 0, ecx: 0, edx: 0 }, // L1 data
      { function: 0x4, index: 3, flags: 1, eax: (3 << 5) | 0x3, ebx: 0, ecx: 0, edx: 0 }, // L3 unified
    ];
    const out = normalizeCpuid(withCache, 3, smt);
    const b = out.filter((e) => e.function === 0xb).sort((x, y) => x.index - y.index);
    expect(b.map((e) => [e.index, e.eax, e.ebx, (e.ecx >> 8) & 0xff, e.edx])).toEqual([
      [0, 1, 2, 1, 3], // SMT level: APIC id bit 0 is the thread, 2 threads
      [1, 2, 4, 2, 3], // core level: 4 logical CPUs in the package
      [2, 0, 0, 0, 3],
    ]);
    const [l1, l3] = out.filter((e) => e.function === 4).sort((x, y) => x.index - y.index);
    expect((l1.eax >>> 14) & 0xfff).toBe(1); // L1 shared by the 2 threads of a core
    expect((l3.eax >>> 14) & 0xfff).toBe(3); // L3 shared by all 4
    expect(l1.eax >>> 26).toBe(1); // 2 cores per package
    expect(out.find((e) => e.function === 1)!.edx & (1 << 28)).not.toBe(0); // HTT
  });

  test('AMD leaf 0x8000001e: extended APIC id, core id and threads per core', () => {
    const amd: CpuidEntry[] = [...supported, { function: 0x8000001e, index: 0, flags: 0, eax: 0, ebx: 0xffff0000, ecx: 0, edx: 0 }];
    const e = normalizeCpuid(amd, 3, { vcpus: { count: 4, smt: true } } as BootPlan).find((x) => x.function === 0x8000001e)!;
    expect(e.eax).toBe(3);
    expect(e.ebx >>> 0).toBe(0xffff0101); // vCPU 3 is thread 1 of core 1; 2 threads per core
  });

  test('the KVM signature leaf is present', () => {
    const sig = normalizeCpuid(supported, 0, plan).find((e) => e.function === 0x40000000)!;
    const b = Buffer.alloc(12);
    b.writeUInt32LE(sig.ebx, 0);
    b.writeUInt32LE(sig.ecx, 4);
    b.writeUInt32LE(sig.edx, 8);
    expect(b.toString('latin1')).toBe('KVMKVMKVM\0\0\0');
  });

  test('the input is not modified', () => {
    const copy = JSON.stringify(supported);
    normalizeCpuid(supported, 1, plan);
    expect(JSON.stringify(supported)).toBe(copy);
  });
});

describe('custom CPU templates', () => {
  const entries: CpuidEntry[] = [
    { function: 1, index: 0, flags: 0, eax: 0xa0671, ebx: 0, ecx: 0xf7f83203, edx: 0x1f8bfbff },
    { function: 7, index: 0, flags: 1, eax: 2, ebx: 0xf1bf2bfb, ecx: 0, edx: 0 },
    { function: 7, index: 1, flags: 1, eax: 0x10, ebx: 0, ecx: 0, edx: 0 },
  ];

  test('a filter forces the masked bits and keeps the rest, on 64-bit values too', () => {
    expect(applyFilter(0xffn, { mask: '0x0f', value: '0x05' })).toBe(0xf5n);
    expect(applyFilter(0n, { mask: '0x8000000000000001', value: '0xffffffffffffffff' })).toBe(0x8000000000000001n);
  });

  test('modifiers change the named register of the matching leaf and subleaf only', () => {
    const out = applyCpuidTemplate(entries, [
      { leaf: 1, subleaf: 0, flags: 0, register: 'ecx', filter: { mask: '0x00000003', value: '0x00000000' } },
      { leaf: 7, subleaf: 1, flags: 1, register: 'eax', filter: { mask: '0x80000000', value: '0x80000000' } },
    ]);
    expect(out[0].ecx >>> 0).toBe(0xf7f83200);
    expect(out[0].edx >>> 0).toBe(0x1f8bfbff);
    expect(out[1]).toEqual(entries[1]); // subleaf 0 untouched
    expect(out[2].eax >>> 0).toBe(0x80000010);
    expect(entries[0].ecx >>> 0).toBe(0xf7f83203); // the input is not modified
  });

  test('a modifier for a leaf or subleaf the host does not offer is a clear error', () => {
    expect(() => applyCpuidTemplate(entries, [{ leaf: 0x14, subleaf: 0, flags: 0, register: 'eax', filter: { mask: '0x1', value: '0x0' } }])).toThrow(
      'the CPU template modifies CPUID leaf 0x14 subleaf 0x0, which this host\'s KVM does not offer',
    );
    expect(() => applyCpuidTemplate(entries, [{ leaf: 7, subleaf: 2, flags: 1, register: 'eax', filter: { mask: '0x1', value: '0x0' } }])).toThrow(/leaf 0x7 subleaf 0x2/);
  });
});
