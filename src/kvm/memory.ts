import * as fs from 'node:fs';
import { FcRunError } from '../errors';
import { addressOf, errno, MADV_POPULATE_WRITE, MAP_ANONYMOUS, MAP_NORESERVE, MAP_PRIVATE, PROT_READ, PROT_WRITE, sys, SyscallError, viewOf } from './libc';

/** One contiguous range of guest RAM and where it lives in this process. */
export interface RegionDescriptor {
  guestAddr: number;
  size: number;
  /** Host virtual address of the mapping, valid in every thread of the process. */
  hostAddr: bigint;
  /**
   * With dirty tracking: one bit per page, set by the VMM's own writes into guest memory (what
   * KVM's dirty log cannot see), shared by every thread.
   */
  dirty?: SharedArrayBuffer;
}

export class GuestMemoryError extends FcRunError {
  constructor(message: string) {
    super('guest-memory', message);
  }
}

/**
 * Each region is viewed in chunks of this size, each made when first touched. Accesses inside one
 * chunk are zero-copy; the rare access that straddles two is copied piecewise. V8 caps a single
 * ArrayBuffer well below large guest memories, and it counts every view's bytes as external memory:
 * one view of a whole 64 MiB guest crossed V8's 64 MB threshold and cost every launch a full
 * garbage collection (a scavenge and a mark-compact, ~5 ms), though a boot touches a few MiB.
 */
const CHUNK = 16 << 20;

export const PAGE_SIZE = 4096;

interface Region extends RegionDescriptor {
  /** Views of the region's chunks, made when first needed (chunkOf). */
  chunks: (Uint8Array | undefined)[];
  dirtyBits?: Int32Array;
}

/**
 * Guest RAM: anonymous MAP_NORESERVE mappings (the host commits pages only when the guest touches
 * them, so memory can be overcommitted), split around the MMIO gap. Every access is checked to lie
 * entirely inside one region: a guest-supplied address can never reach host memory outside it.
 */
export class GuestMemory {
  private constructor(
    private readonly regions: Region[],
    private readonly owner: boolean,
    /** Mapped from a file (a restored snapshot): a page never touched holds the file's bytes, not zeros. */
    readonly fileBacked = false,
  ) {}

  /** Maps fresh, zeroed memory for the given ranges. */
  static allocate(ranges: { start: number; size: number }[]): GuestMemory {
    const regions = ranges.map((r) => {
      const ptr = sys.mmap(null, r.size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      const hostAddr = addressOf(ptr);
      if (hostAddr === 0xffffffffffffffffn) throw new SyscallError('mmap(guest memory)', errno(), `${r.size} bytes at guest 0x${r.start.toString(16)}`);
      return { guestAddr: r.start, size: r.size, hostAddr, chunks: [] as Uint8Array[] };
    });
    const mem = new GuestMemory(regions, true);
    mem.mapViews();
    return mem;
  }

  /**
   * Maps guest memory from a memory file (a snapshot's), each region at its offset in the file
   * (regions back to back). The mapping is private: the guest's writes are copied on write, the
   * file is never modified, and pages are read in only when touched, so mapping costs the same
   * whatever the memory size.
   */
  static mapFile(ranges: { start: number; size: number }[], fd: number): GuestMemory {
    let offset = 0;
    const regions: Region[] = [];
    for (const r of ranges) {
      const ptr = sys.mmap(null, r.size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd, offset);
      const hostAddr = addressOf(ptr);
      if (hostAddr === 0xffffffffffffffffn) {
        for (const done of regions) sys.munmap(sys.pointerAt(done.hostAddr), done.size);
        throw new SyscallError('mmap(memory file)', errno(), `${r.size} bytes at file offset ${offset}`);
      }
      regions.push({ guestAddr: r.start, size: r.size, hostAddr, chunks: [] });
      offset += r.size;
    }
    const mem = new GuestMemory(regions, true, true);
    mem.mapViews();
    return mem;
  }

  /** Views memory another thread allocated (same process). */
  static attach(descriptors: RegionDescriptor[]): GuestMemory {
    const mem = new GuestMemory(descriptors.map((d) => ({ ...d, chunks: [], dirtyBits: d.dirty && new Int32Array(d.dirty) })), false);
    mem.tracking = descriptors.some((d) => d.dirty !== undefined);
    mem.mapViews();
    return mem;
  }

  /** Unmapped (release): no chunk may be viewed any more. */
  private released = false;

  private mapViews(): void {
    for (const r of this.regions) r.chunks = new Array<Uint8Array | undefined>(Math.ceil(r.size / CHUNK)).fill(undefined);
  }

  /** Chunk `i` of region `r`, viewed now if it was not yet. */
  private chunkOf(r: Region, i: number): Uint8Array {
    const have = r.chunks[i];
    if (have) return have;
    if (this.released) throw new GuestMemoryError('guest memory was released');
    const off = i * CHUNK;
    const addr = r.hostAddr + BigInt(off);
    const view = new Uint8Array(viewOf(sys.pointerAt(addr), Math.min(CHUNK, r.size - off)));
    r.chunks[i] = view;
    return view;
  }

  /** How many bytes from `gpa` on can be viewed at once ({@link view}): up to the end of its chunk. */
  contiguousFrom(gpa: number): number {
    const r = this.regionFor(gpa, 1);
    const off = gpa - r.guestAddr;
    return Math.min(CHUNK - (off % CHUNK), r.size - off);
  }

  describe(): RegionDescriptor[] {
    return this.regions.map(({ guestAddr, size, hostAddr, dirty }) => ({ guestAddr, size, hostAddr, ...(dirty ? { dirty } : {}) }));
  }

  /**
   * Starts recording the pages the VMM writes (markDirty): call it before the device thread
   * attaches (it gets the bitmaps through describe()).
   */
  enableDirtyTracking(): void {
    for (const r of this.regions) {
      r.dirty = new SharedArrayBuffer(Math.ceil(r.size / PAGE_SIZE / 32) * 4);
      r.dirtyBits = new Int32Array(r.dirty);
    }
    this.tracking = true;
  }

  private tracking = false;

  /** Records that the VMM wrote [gpa, gpa+len) (with dirty tracking on; otherwise nothing). */
  markDirty(gpa: number, len: number): void {
    if (!this.tracking || len <= 0) return;
    for (const r of this.regions) {
      const from = Math.max(gpa, r.guestAddr);
      const to = Math.min(gpa + len, r.guestAddr + r.size);
      if (from >= to || !r.dirtyBits) continue;
      for (let p = Math.floor((from - r.guestAddr) / PAGE_SIZE); p * PAGE_SIZE < to - r.guestAddr; p++) Atomics.or(r.dirtyBits, p >> 5, 1 << (p & 31));
    }
  }

  /** The pages of region `index` the VMM wrote since the last call (one byte per page), and clears them. */
  takeDirty(index: number): Uint8Array {
    const r = this.regions[index];
    const out = new Uint8Array(Math.ceil(r.size / PAGE_SIZE));
    if (!r.dirtyBits) return out;
    for (let w = 0; w < r.dirtyBits.length; w++) {
      const bits = Atomics.exchange(r.dirtyBits, w, 0);
      if (bits === 0) continue;
      for (let b = 0; b < 32; b++) if (bits & (1 << b) && w * 32 + b < out.length) out[w * 32 + b] = 1;
    }
    return out;
  }


  private regionFor(gpa: number, len: number): Region {
    if (!Number.isSafeInteger(gpa) || !Number.isSafeInteger(len) || gpa < 0 || len < 0) {
      throw new GuestMemoryError(`invalid guest access: address ${gpa}, length ${len}`);
    }
    for (const r of this.regions) {
      if (gpa >= r.guestAddr && gpa + len <= r.guestAddr + r.size) return r;
    }
    throw new GuestMemoryError(`guest access [0x${gpa.toString(16)}, 0x${(gpa + len).toString(16)}) is outside guest RAM`);
  }

  /** True when [gpa, gpa+len) lies inside one RAM region. */
  contains(gpa: number, len: number): boolean {
    try {
      this.regionFor(gpa, len);
      return true;
    } catch {
      return false;
    }
  }

  /**
   * A zero-copy view of [gpa, gpa+len) when it lies in one chunk; undefined when it straddles two
   * (use read/write then). Throws when the range is not guest RAM.
   */
  view(gpa: number, len: number): Uint8Array | undefined {
    const r = this.regionFor(gpa, len);
    const off = gpa - r.guestAddr;
    const chunk = Math.floor(off / CHUNK);
    const inChunk = off - chunk * CHUNK;
    if (inChunk + len > CHUNK) return undefined;
    return this.chunkOf(r, chunk).subarray(inChunk, inChunk + len);
  }

  /** Copies guest memory into `dst`. */
  read(gpa: number, dst: Uint8Array): void {
    this.copy(gpa, dst.length, (chunk, at, done, n) => dst.set(chunk.subarray(at, at + n), done));
  }

  /** Copies `src` into guest memory. */
  write(gpa: number, src: Uint8Array): void {
    this.copy(gpa, src.length, (chunk, at, done, n) => chunk.set(src.subarray(done, done + n), at));
  }

  /**
   * Faults in the pages of [gpa, gpa+len) (rounded out to whole pages) in one system call
   * (madvise MADV_POPULATE_WRITE, Linux 5.14): as if each page were written, without writing it
   * and without a page fault per page (each costs ~3 µs on a nested-virtualization host, and one
   * taken by the guest from inside KVM_RUN costs more). Fresh anonymous memory stays zero. False
   * if the range is not within one region or the kernel cannot do it (nothing is done then: the
   * pages fault in when first touched, as without this).
   */
  populate(gpa: number, len: number): boolean {
    const r = len > 0 ? this.regions.find((g) => gpa >= g.guestAddr && gpa + len <= g.guestAddr + g.size) : undefined;
    if (!r) return false;
    const start = Math.floor((gpa - r.guestAddr) / PAGE_SIZE) * PAGE_SIZE;
    const end = Math.min(r.size, Math.ceil((gpa - r.guestAddr + len) / PAGE_SIZE) * PAGE_SIZE);
    const addr = r.hostAddr + BigInt(start);
    return sys.madvise(sys.pointerAt(addr), end - start, MADV_POPULATE_WRITE) === 0;
  }

  /** Zeroes [gpa, gpa+len). */
  fill(gpa: number, len: number, value = 0): void {
    this.copy(gpa, len, (chunk, at, _done, n) => chunk.fill(value, at, at + n));
  }

  private copy(gpa: number, len: number, step: (chunk: Uint8Array, at: number, done: number, n: number) => void): void {
    const r = this.regionFor(gpa, len);
    let off = gpa - r.guestAddr;
    let done = 0;
    while (done < len) {
      const chunk = Math.floor(off / CHUNK);
      const at = off - chunk * CHUNK;
      const n = Math.min(len - done, CHUNK - at);
      step(this.chunkOf(r, chunk), at, done, n);
      done += n;
      off += n;
    }
  }



  /**
   * Which pages of region `index` may hold something other than zeros: one byte per page, 1 when
   * it may. Anonymous memory: pages present or swapped out (/proc/self/pagemap), since a page the
   * guest never touched reads as zeros. Memory mapped from a file: every page (an untouched page
   * holds the file's bytes).
   */
  populatedPages(index: number): Uint8Array {
    const r = this.regions[index];
    const pages = Math.ceil(r.size / PAGE_SIZE);
    const out = new Uint8Array(pages);
    if (this.fileBacked) return out.fill(1);
    const PRESENT = 1n << 63n;
    const SWAPPED = 1n << 62n;
    const fd = fs.openSync('/proc/self/pagemap', 'r');
    try {
      const batch = 8192;
      const buf = Buffer.alloc(8 * batch);
      const first = Number(r.hostAddr / BigInt(PAGE_SIZE));
      for (let p = 0; p < pages; p += batch) {
        const n = Math.min(batch, pages - p);
        let got = 0;
        while (got < 8 * n) {
          const k = fs.readSync(fd, buf, got, 8 * n - got, (first + p) * 8 + got);
          if (k === 0) throw new SyscallError('read(/proc/self/pagemap)', 5, 'short read');
          got += k;
        }
        for (let i = 0; i < n; i++) if ((buf.readBigUInt64LE(8 * i) & (PRESENT | SWAPPED)) !== 0n) out[p + i] = 1;
      }
    } finally {
      fs.closeSync(fd);
    }
    return out;
  }

  /** The bytes [gpa, gpa+len) to read: a view within one chunk, else a copy. */
  bytes(gpa: number, len: number): Uint8Array {
    const view = this.view(gpa, len);
    if (view) return view;
    const copy = new Uint8Array(len);
    this.read(gpa, copy);
    return copy;
  }

  /** Region `index`'s bytes [offset, offset+len), zero-copy (within one chunk). */
  regionBytes(index: number, offset: number, len: number): Uint8Array {
    return this.bytes(this.regions[index].guestAddr + offset, len);
  }

  /** Unmaps memory this instance allocated. Views become invalid. */
  release(): void {
    if (!this.owner) return;
    this.released = true;
    for (const r of this.regions) {
      const addr = r.hostAddr;
      sys.munmap(sys.pointerAt(addr), r.size);
      r.chunks = [];
    }
  }
}
