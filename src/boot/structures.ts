import * as fs from 'node:fs';
import { openRegularFile } from '../config/regular-file';
import { FcRunError } from '../errors';
import type { GuestMemory } from '../kvm/memory';
import type { BootPlan } from './plan';
import * as L from './layout';

/**
 * Writes the boot-time data structures of a plan into guest memory: GDT, IDT, identity page
 * tables, command line, the Linux zero page or PVH start info, and the MP table. Everything here
 * follows the plan's addresses; nothing decides layout.
 */

/** A GDT descriptor from access flags (as in Linux's GDT_ENTRY macro), base and limit. */
export function gdtEntry(flags: number, base: number, limit: number): bigint {
  const b = BigInt(base);
  const l = BigInt(limit);
  const f = BigInt(flags);
  return (
    ((b & 0xff000000n) << 32n) |
    ((f & 0x0000f0ffn) << 40n) |
    ((l & 0x000f0000n) << 32n) |
    ((b & 0x00ffffffn) << 16n) |
    (l & 0x0000ffffn)
  );
}

/** Long-mode boot GDT: null, 64-bit code (0x08), data (0x10), TSS (0x18). */
export const GDT_LONG = [0n, gdtEntry(0xa09b, 0, 0xfffff), gdtEntry(0xc093, 0, 0xfffff), gdtEntry(0x808b, 0, 0xfffff)];
/** PVH boot GDT: null, flat 32-bit code (0x08), data (0x10), TSS (0x18). */
export const GDT_PVH = [0n, gdtEntry(0xc09b, 0, 0xfffff), gdtEntry(0xc093, 0, 0xfffff), gdtEntry(0x008b, 0, 0x67)];

const PTE_PRESENT = 1n;
const PTE_WRITE = 2n;
const PDE_HUGE = 0x80n;

function writeTable(mem: GuestMemory, addr: number, entries: bigint[]): void {
  const buf = Buffer.alloc(entries.length * 8);
  entries.forEach((e, i) => buf.writeBigUInt64LE(e, i * 8));
  mem.write(addr, buf);
}

/** Identity map of the first GiB with 2 MiB pages: PML4[0] → PDPT[0] → 512 PDEs. */
function writePageTables(mem: GuestMemory, plan: BootPlan): void {
  const { pml4, pdpt, pd } = plan.boot;
  writeTable(mem, pml4, [BigInt(pdpt) | PTE_PRESENT | PTE_WRITE]);
  writeTable(mem, pdpt, [BigInt(pd) | PTE_PRESENT | PTE_WRITE]);
  const pdes: bigint[] = [];
  for (let i = 0n; i < 512n; i++) pdes.push((i << 21n) | PTE_PRESENT | PTE_WRITE | PDE_HUGE);
  writeTable(mem, pd, pdes);
}

/** Linux boot_params ("zero page") offsets, from Documentation/arch/x86/zero-page.rst. */
const BP = {
  ext_ramdisk_image: 0x0c0,
  ext_ramdisk_size: 0x0c4,
  ext_cmd_line_ptr: 0x0c8,
  e820_entries: 0x1e8,
  setup_header: 0x1f1,
  boot_flag: 0x1fe,
  jump: 0x200,
  header: 0x202,
  type_of_loader: 0x210,
  loadflags: 0x211,
  ramdisk_image: 0x218,
  ramdisk_size: 0x21c,
  cmd_line_ptr: 0x228,
  setup_data: 0x250,
  kernel_alignment: 0x230,
  cmdline_size: 0x238,
  e820_table: 0x2d0,
  size: 4096,
} as const;
const E820_MAX_ENTRIES = 128;
const E820_TYPE = { ram: 1, reserved: 2 } as const;

function writeZeroPage(mem: GuestMemory, plan: BootPlan, setupHeader: Buffer | undefined): void {
  const zp = Buffer.alloc(BP.size);
  if (setupHeader) setupHeader.copy(zp, BP.setup_header);
  zp.writeUInt16LE(0xaa55, BP.boot_flag);
  zp.writeUInt32LE(0x53726448, BP.header);
  zp[BP.type_of_loader] = 0xff;
  zp.writeUInt32LE(plan.boot.cmdline.start, BP.cmd_line_ptr);
  zp.writeUInt32LE(plan.boot.cmdline.size - 1, BP.cmdline_size);
  if (!setupHeader) zp.writeUInt32LE(0x1000000, BP.kernel_alignment);
  // Fields the boot loader owns: whatever the image's copy of the header held is not ours to pass on.
  zp.writeUInt32LE(0, BP.ramdisk_image);
  zp.writeUInt32LE(0, BP.ramdisk_size);
  zp.writeBigUInt64LE(0n, BP.setup_data);
  if (plan.initrd) {
    zp.writeUInt32LE(plan.initrd.guestAddr % 2 ** 32, BP.ramdisk_image);
    zp.writeUInt32LE(plan.initrd.size % 2 ** 32, BP.ramdisk_size);
    zp.writeUInt32LE(Math.floor(plan.initrd.guestAddr / 2 ** 32), BP.ext_ramdisk_image);
    zp.writeUInt32LE(Math.floor(plan.initrd.size / 2 ** 32), BP.ext_ramdisk_size);
  }
  const e820 = plan.memory.e820.slice(0, E820_MAX_ENTRIES);
  zp[BP.e820_entries] = e820.length;
  e820.forEach((e, i) => {
    const o = BP.e820_table + i * 20;
    zp.writeBigUInt64LE(BigInt(e.start), o);
    zp.writeBigUInt64LE(BigInt(e.size), o + 8);
    zp.writeUInt32LE(E820_TYPE[e.type], o + 16);
  });
  mem.write(plan.boot.zeroPage, zp);
}

const XEN_HVM_START_MAGIC = 0x336ec578;

/** hvm_start_info, the module list (initrd) and the memory map for PVH boot. */
function writePvhStartInfo(mem: GuestMemory, plan: BootPlan): void {
  const info = Buffer.alloc(56);
  info.writeUInt32LE(XEN_HVM_START_MAGIC, 0);
  info.writeUInt32LE(1, 4); // version
  info.writeUInt32LE(plan.initrd ? 1 : 0, 12); // nr_modules
  info.writeBigUInt64LE(BigInt(plan.initrd ? plan.boot.pvhModlist : 0), 16);
  info.writeBigUInt64LE(BigInt(plan.boot.cmdline.start), 24);
  info.writeBigUInt64LE(BigInt(plan.boot.pvhMemmap), 40);
  info.writeUInt32LE(plan.memory.e820.length, 48);
  mem.write(plan.boot.pvhStartInfo, info);
  if (plan.initrd) {
    const mod = Buffer.alloc(32);
    mod.writeBigUInt64LE(BigInt(plan.initrd.guestAddr), 0);
    mod.writeBigUInt64LE(BigInt(plan.initrd.size), 8);
    mem.write(plan.boot.pvhModlist, mod);
  }
  const map = Buffer.alloc(24 * plan.memory.e820.length);
  plan.memory.e820.forEach((e, i) => {
    map.writeBigUInt64LE(BigInt(e.start), i * 24);
    map.writeBigUInt64LE(BigInt(e.size), i * 24 + 8);
    map.writeUInt32LE(E820_TYPE[e.type], i * 24 + 16);
  });
  mem.write(plan.boot.pvhMemmap, map);
}

function checksum(buf: Buffer): number {
  let sum = 0;
  for (const b of buf) sum = (sum + b) & 0xff;
  return (0x100 - sum) & 0xff;
}

/**
 * Intel MultiProcessor Specification 1.4 tables: a floating pointer, then a configuration table
 * listing every vCPU (APIC id = index), one ISA bus, the IOAPIC, the 24 IOAPIC pins (IRQ 0 as
 * ExtINT, the rest identity-mapped) and LINT0 = ExtINT, LINT1 = NMI on every CPU.
 */
export function buildMpTable(vcpus: number, start: number): Buffer {
  const ioapicId = vcpus + 1;
  const entries: Buffer[] = [];
  for (let cpu = 0; cpu < vcpus; cpu++) {
    const e = Buffer.alloc(20);
    e[0] = 0; // processor
    e[1] = cpu;
    e[2] = 0x14; // LAPIC version
    e[3] = 0x01 | (cpu === 0 ? 0x02 : 0); // enabled, bootstrap processor
    e.writeUInt32LE(0x600, 4); // family 6
    e.writeUInt32LE(0x201, 8); // FPU, APIC
    entries.push(e);
  }
  const bus = Buffer.alloc(8);
  bus[0] = 1;
  bus.write('ISA   ', 2, 'latin1');
  entries.push(bus);
  const ioapic = Buffer.alloc(8);
  ioapic[0] = 2;
  ioapic[1] = ioapicId;
  ioapic[2] = 0x11;
  ioapic[3] = 1;
  ioapic.writeUInt32LE(L.IOAPIC_ADDR, 4);
  entries.push(ioapic);
  // Pin 0 carries the 8259's ExtINT; ISA IRQ 0 (the PIT) arrives on pin 2, as KVM routes GSI 0
  // and as PC firmware reports it; every other IRQ goes to the pin of its number.
  const routes: [type: number, irq: number, pin: number][] = [[3, 0, 0], [0, 0, 2]];
  for (let irq = 1; irq < 24; irq++) if (irq !== 2) routes.push([0, irq, irq]);
  for (const [type, irq, pin] of routes) {
    const e = Buffer.alloc(8);
    e[0] = 3; // I/O interrupt assignment
    e[1] = type; // 3 = ExtINT, 0 = INT
    e[4] = 0; // source bus
    e[5] = irq;
    e[6] = ioapicId;
    e[7] = pin;
    entries.push(e);
  }
  for (const [type, lint] of [[3, 0], [1, 1]] as const) {
    const e = Buffer.alloc(8);
    e[0] = 4; // local interrupt assignment
    e[1] = type; // ExtINT on LINT0, NMI on LINT1
    e[4] = 0;
    e[5] = 0;
    e[6] = 0xff; // every local APIC
    e[7] = lint;
    entries.push(e);
  }
  const body = Buffer.concat(entries);
  const header = Buffer.alloc(44);
  header.write('PCMP', 0, 'latin1');
  header.writeUInt16LE(44 + body.length, 4);
  header[6] = 4; // spec 1.4
  header.write('FCRUN   ', 8, 'latin1');
  header.write('MICROVM     ', 16, 'latin1');
  header.writeUInt16LE(entries.length, 34);
  header.writeUInt32LE(L.LAPIC_ADDR, 36);
  const table = Buffer.concat([header, body]);
  table[7] = checksum(table);

  const fp = Buffer.alloc(16);
  fp.write('_MP_', 0, 'latin1');
  fp.writeUInt32LE(start + 16, 4);
  fp[8] = 1; // length in 16-byte units
  fp[9] = 4;
  fp[10] = checksum(fp);
  return Buffer.concat([fp, table]);
}

/**
 * Reads a segment of a file (a kernel's, an initrd) straight into guest memory and zeroes its tail
 * (the part of memSize beyond fileSize: an ELF kernel's bss, a bzImage's room to decompress into),
 * unless `zeroed` says guest memory there is already zero: then the whole segment's pages are
 * faulted in at once instead (GuestMemory.populate), the read's and the tail's. Reading or zeroing
 * them faults them in one by one, and a page the guest touches first (its bss, the room it
 * decompresses into) costs a page fault inside KVM_RUN, more than one here.
 */
function loadSegment(fd: number, mem: GuestMemory, seg: { fileOffset: number; fileSize: number; memSize: number; guestAddr: number }, what: string, zeroed: boolean): void {
  if (zeroed) mem.populate(seg.guestAddr, seg.memSize);
  else if (seg.memSize > seg.fileSize) mem.fill(seg.guestAddr + seg.fileSize, seg.memSize - seg.fileSize);
  let done = 0;
  while (done < seg.fileSize) {
    const n = Math.min(seg.fileSize - done, 64 << 20, mem.contiguousFrom(seg.guestAddr + done));
    const view = mem.view(seg.guestAddr + done, n);
    const target = view ?? Buffer.alloc(n);
    const got = fs.readSync(fd, target, 0, n, seg.fileOffset + done);
    if (got !== n) throw new FcRunError('kernel-load', `short read from the ${what} at offset ${seg.fileOffset + done}: the file changed after planning`);
    if (!view) mem.write(seg.guestAddr + done, target);
    done += n;
  }
}

/**
 * Opens a file the plan names, refusing one that is no longer the regular file of the size that
 * was planned (replaced by a FIFO or device, or rewritten, between planning and launch).
 */
function openPlanned(file: string, what: string, plannedSize: number): number {
  const { fd, size } = openRegularFile(file, what);
  if (size !== plannedSize) {
    fs.closeSync(fd);
    throw new FcRunError('kernel-load', `${what} ${file} changed size since it was planned (${plannedSize} bytes then, ${size} now)`);
  }
  return fd;
}

function readFileInto(file: string, mem: GuestMemory, guestAddr: number, size: number, zeroed: boolean): void {
  const fd = openPlanned(file, 'initrd', size);
  try {
    loadSegment(fd, mem, { fileOffset: 0, fileSize: size, memSize: size, guestAddr }, 'initrd', zeroed);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Loads kernel and initrd, then writes every boot structure the plan names. `memoryIsZero`: guest
 * memory is a fresh mapping nothing has written yet (GuestMemory.allocate), so a kernel segment's
 * bss needs no zeroing (the plan refuses overlapping segments, and they are loaded first) and the
 * kernel's and the initrd's pages are faulted in at once (loadSegment).
 */
export function prepareGuestMemory(mem: GuestMemory, plan: BootPlan, memoryIsZero: boolean): void {
  const fd = openPlanned(plan.kernel.path, 'kernel image', plan.kernel.fileSize);
  let setupHeader: Buffer | undefined;
  try {
    for (const seg of plan.kernel.segments) loadSegment(fd, mem, seg, 'kernel image', memoryIsZero);
    if (plan.kernel.format === 'bzimage') {
      const head = Buffer.alloc(0x280);
      fs.readSync(fd, head, 0, head.length, 0);
      const end = 0x202 + head[0x201];
      setupHeader = head.subarray(BP.setup_header, Math.min(end, head.length));
    }
  } finally {
    fs.closeSync(fd);
  }
  if (plan.initrd) readFileInto(plan.initrd.path, mem, plan.initrd.guestAddr, plan.initrd.size, memoryIsZero);

  writeTable(mem, plan.boot.gdt, plan.kernel.entryMode === 'pvh32' ? GDT_PVH : GDT_LONG);
  writeTable(mem, plan.boot.idt, [0n]);
  if (plan.kernel.entryMode === 'long64') writePageTables(mem, plan);
  const cmdline = Buffer.alloc(plan.boot.cmdline.size);
  cmdline.write(plan.cmdline, 'utf8');
  mem.write(plan.boot.cmdline.start, cmdline);
  if (plan.kernel.entryMode === 'pvh32') writePvhStartInfo(mem, plan);
  else writeZeroPage(mem, plan, setupHeader);
  mem.write(plan.boot.mptable.start, buildMpTable(plan.vcpus.count, plan.boot.mptable.start));
}
