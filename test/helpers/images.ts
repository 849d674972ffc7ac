/**
 * Builders for small but structurally real kernel images: ELF64 vmlinux-like files (optionally
 * with a Xen PVH note) and bzImages with a real setup header. The planner reads only headers, so
 * these exercise the same code paths a multi-megabyte kernel would.
 */
export interface ElfSegment {
  paddr: number;
  data: Buffer;
  memsz?: number;
}

export interface ElfOptions {
  entry: number;
  segments: ElfSegment[];
  pvhEntry?: number;
  machine?: number;
  elfClass?: number;
}

export function buildElf(opts: ElfOptions): Buffer {
  const phnum = opts.segments.length + (opts.pvhEntry !== undefined ? 1 : 0);
  const phoff = 64;
  let cursor = phoff + phnum * 56;
  const note = opts.pvhEntry !== undefined ? pvhNote(opts.pvhEntry) : undefined;
  const noteOffset = cursor;
  if (note) cursor += note.length;
  const segOffsets = opts.segments.map((s) => {
    cursor = Math.ceil(cursor / 16) * 16;
    const off = cursor;
    cursor += s.data.length;
    return off;
  });
  const file = Buffer.alloc(cursor);
  file.writeUInt32LE(0x464c457f, 0);
  file[4] = opts.elfClass ?? 2;
  file[5] = 1;
  file[6] = 1;
  file.writeUInt16LE(2, 16); // ET_EXEC
  file.writeUInt16LE(opts.machine ?? 62, 18);
  file.writeUInt32LE(1, 20);
  file.writeBigUInt64LE(BigInt(opts.entry), 24);
  file.writeBigUInt64LE(BigInt(phoff), 32);
  file.writeUInt16LE(64, 52);
  file.writeUInt16LE(56, 54);
  file.writeUInt16LE(phnum, 56);
  let ph = phoff;
  opts.segments.forEach((s, i) => {
    file.writeUInt32LE(1, ph); // PT_LOAD
    file.writeUInt32LE(7, ph + 4);
    file.writeBigUInt64LE(BigInt(segOffsets[i]), ph + 8);
    file.writeBigUInt64LE((BigInt(s.paddr) + 0xffffffff80000000n) & 0xffffffffffffffffn, ph + 16); // vaddr: the kernel map
    file.writeBigUInt64LE(BigInt(s.paddr), ph + 24);
    file.writeBigUInt64LE(BigInt(s.data.length), ph + 32);
    file.writeBigUInt64LE(BigInt(s.memsz ?? s.data.length), ph + 40);
    file.writeBigUInt64LE(0x1000n, ph + 48);
    s.data.copy(file, segOffsets[i]);
    ph += 56;
  });
  if (note) {
    file.writeUInt32LE(4, ph); // PT_NOTE
    file.writeBigUInt64LE(BigInt(noteOffset), ph + 8);
    file.writeBigUInt64LE(BigInt(note.length), ph + 32);
    file.writeBigUInt64LE(BigInt(note.length), ph + 40);
    note.copy(file, noteOffset);
  }
  return file;
}

function pvhNote(entry: number): Buffer {
  // An unrelated note first, so the walk has to step over it.
  const other = Buffer.alloc(12 + 4 + 4);
  other.writeUInt32LE(4, 0);
  other.writeUInt32LE(4, 4);
  other.writeUInt32LE(1, 8);
  other.write('GNU\0', 12, 'latin1');
  const xen = Buffer.alloc(12 + 4 + 4);
  xen.writeUInt32LE(4, 0);
  xen.writeUInt32LE(4, 4);
  xen.writeUInt32LE(18, 8); // XEN_ELFNOTE_PHYS32_ENTRY
  xen.write('Xen\0', 12, 'latin1');
  xen.writeUInt32LE(entry, 16);
  return Buffer.concat([other, xen]);
}

/** A minimal vmlinux-like ELF: one 64 KiB text segment at 16 MiB (like Linux), entry at its start. */
/** A kernel of a few instructions at 2 MiB, entered in long mode: `[0xeb, 0xfe]` spins (jmp $), `[0x0f, 0x0b]` faults (ud2). */
export function tinyGuestElf(code: number[]): Buffer {
  return buildElf({ entry: 0x200000, segments: [{ paddr: 0x200000, data: Buffer.from(code) }] });
}

export function tinyVmlinux(): Buffer {
  return buildElf({ entry: 0x1000000, segments: [{ paddr: 0x1000000, data: Buffer.alloc(4096, 0x90), memsz: 0x10000 }] });
}

export function tinyPvh(): Buffer {
  return buildElf({ entry: 0x1000000, pvhEntry: 0x1000040, segments: [{ paddr: 0x1000000, data: Buffer.alloc(4096, 0x90) }] });
}

export interface BzOptions {
  version?: number;
  xloadflags?: number;
  loadflags?: number;
  setupSects?: number;
  initSize?: number;
  initrdAddrMax?: number;
  cmdlineSize?: number;
  payloadBytes?: number;
}

export function buildBzImage(opts: BzOptions = {}): Buffer {
  const setupSects = opts.setupSects ?? 4;
  const setupBytes = ((setupSects === 0 ? 4 : setupSects) + 1) * 512;
  const payloadBytes = opts.payloadBytes ?? 8192;
  const file = Buffer.alloc(setupBytes + payloadBytes);
  file[0x1f1] = setupSects;
  file.writeUInt32LE(Math.ceil(payloadBytes / 16), 0x1f4); // syssize
  file.writeUInt16LE(0xaa55, 0x1fe);
  file.writeUInt32LE(0x53726448, 0x202);
  file.writeUInt16LE(opts.version ?? 0x020f, 0x206);
  file[0x211] = opts.loadflags ?? 1;
  file.writeUInt32LE(0x100000, 0x214);
  file.writeUInt32LE(opts.initrdAddrMax ?? 0x7fffffff, 0x22c);
  file.writeUInt32LE(0x200000, 0x230);
  file[0x234] = 1;
  file.writeUInt16LE(opts.xloadflags ?? 0x3, 0x236);
  file.writeUInt32LE(opts.cmdlineSize ?? 2047, 0x238);
  file.writeBigUInt64LE(0x1000000n, 0x258);
  file.writeUInt32LE(opts.initSize ?? 0x800000, 0x260);
  return file;
}
