import * as fs from 'node:fs';
import { openRegularFile } from '../config/regular-file';
import { EXIT_INVALID_SPEC, FcRunError } from '../errors';
import { HIMEM_START, MMIO_GAP_START } from './layout';

/** A part of the kernel file copied to guest memory; bytes past fileSize up to memSize are zeroed. */
export interface KernelSegment {
  fileOffset: number;
  fileSize: number;
  memSize: number;
  guestAddr: number;
}

/**
 * What the planner needs to know about a kernel image, read from its headers only (the file is
 * loaded into guest memory at launch).
 */
export interface KernelImage {
  path: string;
  fileSize: number;
  /**
   * elf: 64-bit ELF (vmlinux) entered in long mode with a Linux zero page;
   * pvh: ELF carrying XEN_ELFNOTE_PHYS32_ENTRY, entered in 32-bit protected mode with hvm_start_info;
   * bzimage: compressed kernel loaded at its preferred address and entered through the 64-bit boot
   * protocol at load address + 0x200.
   */
  format: 'elf' | 'pvh' | 'bzimage';
  entry: number;
  segments: KernelSegment[];
  /** bzImage only: the setup header facts the loader obeys. */
  bzimage?: {
    protocolVersion: string;
    setupSects: number;
    /** Bytes the kernel needs from its load address while it decompresses itself. */
    initSize: number;
    initrdAddrMax: number;
    /** Longest command line, excluding the NUL. */
    cmdlineSize: number;
    canLoadInitrdAbove4G: boolean;
  };
}

export class KernelImageError extends FcRunError {
  constructor(file: string, problem: string) {
    super('kernel-image', `kernel image ${file}: ${problem}`, EXIT_INVALID_SPEC);
  }
}

/** Reads bytes of the image at an offset; returns fewer bytes at end of file. */
export type ImageReader = (offset: number, length: number) => Buffer;

const ELF_MAGIC = 0x464c457f; // "\x7fELF" little-endian
const EM_X86_64 = 62;
const PT_LOAD = 1;
const PT_NOTE = 4;
const XEN_ELFNOTE_PHYS32_ENTRY = 18;
const BZ_BOOT_FLAG = 0xaa55;
const BZ_HDRS = 0x53726448; // "HdrS"
const XLF_KERNEL_64 = 1 << 0;
const XLF_CAN_BE_LOADED_ABOVE_4G = 1 << 1;
const LOADED_HIGH = 1 << 0;
/** Protocol 2.12 added xloadflags, which says whether the 64-bit entry exists. */
const MIN_BZ_PROTOCOL = 0x020c;
/** Program header tables bigger than this are not from a real kernel. */
const MAX_PHDRS = 256;
const ELF64_PHDR_SIZE = 56;
/** The 64-bit boot protocol entry (startup_64) sits this far into the protected-mode code. */
const BZ_ENTRY_64 = 0x200;
/** Notes are read whole; real kernels carry a few KiB of them. */
const MAX_NOTES_BYTES = 1 << 20;

/**
 * Reads a kernel file's headers. A FIFO, device, directory or socket is refused before any read
 * (FileError, code 'file-type'), so a path that names one never blocks or streams forever; only
 * header bytes are read, so the file's size costs nothing here (the plan bounds what is loaded).
 */
export function inspectKernelFile(file: string): KernelImage {
  const { fd, size } = openRegularFile(file, 'kernel image');
  try {
    const read: ImageReader = (offset, length) => {
      const len = Math.max(0, Math.min(length, size - offset));
      const buf = Buffer.alloc(len);
      let done = 0;
      while (done < len) {
        let got: number;
        try {
          got = fs.readSync(fd, buf, done, len - done, offset + done);
        } catch (err) {
          throw new KernelImageError(file, `cannot be read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
        }
        if (got === 0) return buf.subarray(0, done); // shrank while being read: the checks see a truncated file
        done += got;
      }
      return buf;
    };
    return inspectKernel(file, size, read);
  } finally {
    fs.closeSync(fd);
  }
}

/** Decides the format from the image's headers and extracts what loading it needs. */
export function inspectKernel(file: string, fileSize: number, read: ImageReader): KernelImage {
  const head = read(0, 0x300);
  if (head.length >= 4 && head.readUInt32LE(0) === ELF_MAGIC) return inspectElf(file, fileSize, read);
  if (head.length >= 0x206 && head.readUInt16LE(0x1fe) === BZ_BOOT_FLAG && head.readUInt32LE(0x202) === BZ_HDRS) {
    return inspectBzImage(file, fileSize, head);
  }
  if (head.length >= 2 && head[0] === 0x1f && head[1] === 0x8b) {
    throw new KernelImageError(file, 'is gzip-compressed; give the uncompressed vmlinux or the bzImage');
  }
  throw new KernelImageError(file, 'is neither an ELF vmlinux nor a bzImage (no ELF magic, no "HdrS" setup header)');
}

function inspectElf(file: string, fileSize: number, read: ImageReader): KernelImage {
  const fail = (problem: string): never => {
    throw new KernelImageError(file, problem);
  };
  const eh = read(0, 64);
  if (eh.length < 64) fail('ELF header is truncated');
  if (eh[4] !== 2) fail('is a 32-bit ELF; fc-run boots 64-bit x86 kernels (ELFCLASS64)');
  if (eh[5] !== 1) fail('is a big-endian ELF');
  if (eh.readUInt16LE(18) !== EM_X86_64) fail(`is an ELF for machine ${eh.readUInt16LE(18)}, not x86_64 (62)`);
  const entry = num(eh.readBigUInt64LE(24));
  const phoff = num(eh.readBigUInt64LE(32));
  const phentsize = eh.readUInt16LE(54);
  const phnum = eh.readUInt16LE(56);
  if (phnum === 0) fail('ELF has no program headers');
  if (phnum > MAX_PHDRS) fail(`ELF has ${phnum} program headers (more than ${MAX_PHDRS})`);
  if (phentsize !== ELF64_PHDR_SIZE) fail(`ELF program header size (e_phentsize) is ${phentsize}; ELF64 program headers are ${ELF64_PHDR_SIZE} bytes`);
  if (phoff + phnum * phentsize > fileSize) fail(`ELF program headers (${phnum} at offset ${phoff}) extend past the end of the file (${fileSize} bytes): is the file truncated?`);

  const segments: KernelSegment[] = [];
  let pvhEntry: number | undefined;
  const table = read(phoff, phnum * phentsize);
  for (let i = 0; i < phnum; i++) {
    const ph = table.subarray(i * phentsize, (i + 1) * phentsize);
    const type = ph.readUInt32LE(0);
    const offset = num(ph.readBigUInt64LE(8));
    const paddr = num(ph.readBigUInt64LE(24));
    const filesz = num(ph.readBigUInt64LE(32));
    const memsz = num(ph.readBigUInt64LE(40));
    if (offset + filesz > fileSize) fail(`ELF segment ${i} extends past the end of the file: its bytes are ${offset}..${offset + filesz}, the file has ${fileSize}; is the file truncated?`);
    if (type === PT_LOAD) {
      if (filesz > memsz) fail(`ELF segment ${i} has file size ${filesz} larger than its memory size ${memsz}`);
      if (memsz === 0) continue;
      if (paddr < HIMEM_START) fail(`ELF segment ${i} loads at ${hex(paddr)}, below 1 MiB where fc-run keeps the boot structures`);
      // No memory size helps here, so it is the image that is wrong, not mem_size_mib.
      if (paddr + memsz > MMIO_GAP_START) fail(`ELF segment ${i} occupies ${hex(paddr)}..${hex(paddr + memsz)}, past 3 GiB where the MMIO gap starts; fc-run loads kernels below 3 GiB`);
      segments.push({ fileOffset: offset, fileSize: filesz, memSize: memsz, guestAddr: paddr });
    } else if (type === PT_NOTE) {
      pvhEntry ??= findPvhEntry(read(offset, Math.min(filesz, MAX_NOTES_BYTES)));
    }
  }
  if (segments.length === 0) fail('ELF has no loadable (PT_LOAD) segments');
  segments.sort((a, b) => a.guestAddr - b.guestAddr);
  for (let i = 1; i < segments.length; i++) {
    const prev = segments[i - 1];
    if (prev.guestAddr + prev.memSize > segments[i].guestAddr) fail('ELF loadable segments overlap in physical memory');
  }
  const inside = (addr: number) => segments.some((s) => addr >= s.guestAddr && addr < s.guestAddr + s.memSize);
  if (pvhEntry !== undefined) {
    if (!inside(pvhEntry)) fail(`the PVH entry point ${hex(pvhEntry)} (Xen note PHYS32_ENTRY) is not inside any loadable segment`);
    return { path: file, fileSize, format: 'pvh', entry: pvhEntry, segments };
  }
  if (!inside(entry)) fail(`ELF entry point ${hex(entry)} is not inside any loadable segment (is it a virtual address?)`);
  return { path: file, fileSize, format: 'elf', entry, segments };
}

/** Walks ELF notes for Xen's PHYS32_ENTRY; malformed notes end the walk rather than throw. */
function findPvhEntry(notes: Buffer): number | undefined {
  let off = 0;
  while (off + 12 <= notes.length) {
    const namesz = notes.readUInt32LE(off);
    const descsz = notes.readUInt32LE(off + 4);
    const type = notes.readUInt32LE(off + 8);
    const nameStart = off + 12;
    const descStart = nameStart + align4(namesz);
    const next = descStart + align4(descsz);
    if (next > notes.length || next <= off) return undefined;
    const name = notes.subarray(nameStart, nameStart + namesz).toString('latin1').replace(/\0+$/, '');
    if (name === 'Xen' && type === XEN_ELFNOTE_PHYS32_ENTRY) {
      if (descsz === 4) return notes.readUInt32LE(descStart);
      if (descsz === 8) return num(notes.readBigUInt64LE(descStart));
      return undefined;
    }
    off = next;
  }
  return undefined;
}

/** The setup header fields read here end with init_size (0x260, 4 bytes). */
const BZ_HEADER_END = 0x264;

function inspectBzImage(file: string, fileSize: number, head: Buffer): KernelImage {
  const fail = (problem: string): never => {
    throw new KernelImageError(file, problem);
  };
  if (head.length < BZ_HEADER_END) fail(`bzImage is truncated: the file ends at ${fileSize} bytes, inside its setup header (which ends at ${BZ_HEADER_END})`);
  const version = head.readUInt16LE(0x206);
  const versionText = `${version >> 8}.${(version & 0xff).toString().padStart(2, '0')}`;
  if (version < MIN_BZ_PROTOCOL) fail(`bzImage boot protocol ${versionText} is too old; the 64-bit entry needs 2.12 or later`);
  const xloadflags = head.readUInt16LE(0x236);
  if (!(xloadflags & XLF_KERNEL_64)) fail('bzImage has no 64-bit entry point (XLF_KERNEL_64 is clear)');
  if (!(head[0x211] & LOADED_HIGH)) fail('bzImage is not a "loaded high" kernel (zImage is not supported)');
  const setupSects = head[0x1f1] === 0 ? 4 : head[0x1f1];
  const setupBytes = (setupSects + 1) * 512;
  if (setupBytes >= fileSize) fail(`bzImage is truncated: its ${setupSects} setup sectors end at ${setupBytes} bytes, and the file has ${fileSize}`);
  const pmSize = fileSize - setupBytes;
  if (pmSize <= BZ_ENTRY_64) fail(`bzImage is truncated: ${pmSize} bytes of kernel follow the setup sectors, too few to hold the 64-bit entry at offset ${hex(BZ_ENTRY_64)}`);
  // syssize counts the protected-mode code in 16-byte units; more than the file holds means a cut-off copy.
  const sysBytes = head.readUInt32LE(0x1f4) * 16;
  if (sysBytes > pmSize + 15) fail(`bzImage is truncated: its header (syssize) says ${sysBytes} bytes of kernel follow the setup sectors, and the file has ${pmSize}`);
  const initSize = head.readUInt32LE(0x260);
  if (initSize === 0) fail('bzImage header has init_size 0: the kernel does not say how much memory it needs to decompress');
  // The 64-bit entry decompresses the kernel at its preferred address (LOAD_PHYSICAL_ADDR,
  // 16 MiB by default) and needs init_size bytes from there; loading it there makes the region
  // it occupies exactly [pref_address, pref_address + init_size).
  const pref = Number(head.readBigUInt64LE(0x258));
  const loadAddr = pref >= HIMEM_START && pref < 2 ** 32 ? pref : HIMEM_START;
  return {
    path: file,
    fileSize,
    format: 'bzimage',
    entry: loadAddr + 0x200,
    segments: [{ fileOffset: setupBytes, fileSize: pmSize, memSize: Math.max(pmSize, initSize), guestAddr: loadAddr }],
    bzimage: {
      protocolVersion: versionText,
      setupSects,
      initSize,
      initrdAddrMax: head.readUInt32LE(0x22c),
      cmdlineSize: head.readUInt32LE(0x238),
      canLoadInitrdAbove4G: (xloadflags & XLF_CAN_BE_LOADED_ABOVE_4G) !== 0,
    },
  };
}

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

function align4(n: number): number {
  // Arithmetic, not `& ~3`: note sizes are u32 and bitwise operators would wrap them negative.
  return Math.ceil(n / 4) * 4;
}

/** 64-bit header fields as numbers; anything past 2^53 is not a real physical address anyway. */
function num(v: bigint): number {
  return v > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(v);
}
