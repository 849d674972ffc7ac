import * as fs from 'node:fs';
import * as path from 'node:path';
import { FcRunError } from '../errors';
import { GuestMemory, PAGE_SIZE } from '../kvm/memory';
import { errno, sys, SyscallError } from '../kvm/libc';

/** The most bytes written by one call: big enough to be cheap, small enough to never copy much. */
const MAX_RUN = 1 << 20;
const ZERO_PAGE = Buffer.alloc(PAGE_SIZE);

export interface MemoryFileReport {
  /** The file's size: every region, back to back. */
  size: number;
  /** Bytes actually written; the rest of the file is holes (pages never touched, or all zero). */
  written: number;
}

/** A file being written beside its target: `commit()` flushes it and renames it into place. */
export interface PreparedFile {
  readonly fd: number;
  readonly target: string;
  /** Flushes the new file to disk (commit does too). */
  flush(): void;
  commit(): void;
  /** Removes the new file unless it was committed (safe to call after commit). */
  abort(): void;
}

let tmpCounter = 0;

/**
 * Opens a new file beside `target` for writing (a short name, so a target whose name is near the
 * limit still fits). Refuses a target that ends in "/" or exists and is not a regular file.
 */
export function prepareFile(target: string, what: string): PreparedFile {
  if (target.endsWith('/')) throw new FcRunError('snapshot-path', `the ${what} ${target} names a directory: give a file path`);
  let existing: fs.Stats | undefined;
  try {
    existing = fs.statSync(target);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'ENOENT') throw new FcRunError('snapshot-path', `cannot write the ${what} ${target}: ${code ?? (err as Error).message}`);
  }
  if (existing && !existing.isFile()) throw new FcRunError('snapshot-path', `the ${what} ${target} exists and is not a regular file: give a file path`);
  const tmp = path.join(path.dirname(target), `.fcrun${process.pid}-${++tmpCounter}.tmp`);
  let fd: number;
  try {
    fd = fs.openSync(tmp, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW, 0o600);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new FcRunError('snapshot-path', `cannot create the ${what} beside ${target}: ${code ?? (err as Error).message}`);
  }
  let open = true;
  let done = false;
  const close = () => {
    if (!open) return;
    open = false;
    fs.closeSync(fd);
  };
  let flushed = false;
  const flush = () => {
    if (flushed) return;
    try {
      fs.fdatasyncSync(fd);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      throw new FcRunError('snapshot-write', `cannot write the ${what} ${target}: ${code ?? (err as Error).message}`);
    }
    flushed = true;
  };
  return {
    fd,
    target,
    flush,
    commit() {
      flush();
      try {
        close();
        fs.renameSync(tmp, target);
        done = true;
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        throw new FcRunError('snapshot-write', `cannot write the ${what} ${target}: ${code ?? (err as Error).message}`);
      }
    },
    abort() {
      if (done) return;
      try {
        close();
      } catch {
        // already closed
      }
      fs.rmSync(tmp, { force: true });
    },
  };
}

/**
 * Puts two prepared files in place together (a snapshot's memory and state files): both are
 * flushed first, then renamed; if the second rename fails the first target gets its old file back,
 * so a failure never leaves a new file beside an old one.
 */
export function commitPair(first: PreparedFile, second: PreparedFile): void {
  first.flush();
  second.flush();
  let backup: string | undefined;
  if (fs.existsSync(first.target)) {
    backup = path.join(path.dirname(first.target), `.fcrun${process.pid}-${++tmpCounter}.old`);
    try {
      fs.linkSync(first.target, backup);
    } catch {
      backup = undefined; // no hard links here: the pair is then only as safe as the renames
    }
  }
  try {
    first.commit();
    try {
      second.commit();
    } catch (err) {
      if (backup) fs.renameSync(backup, first.target);
      backup = undefined;
      throw err;
    }
  } finally {
    if (backup) fs.rmSync(backup, { force: true });
  }
}

/** Writes all of `bytes` at the start of a prepared file. */
export function writeAll(f: PreparedFile, bytes: Uint8Array): void {
  let done = 0;
  try {
    while (done < bytes.length) done += fs.writeSync(f.fd, bytes, done, bytes.length - done);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new FcRunError('snapshot-write', `cannot write ${f.target}: ${code ?? (err as Error).message}`);
  }
}

/**
 * Writes `target` so that its bytes are exactly what `write(fd)` puts in it, or leaves whatever was
 * there before: the data goes to a new file beside it, is flushed to disk, and only then renamed
 * over the target. A VM restored from the target keeps its private mapping of the old file.
 */
export function writeFileAtomically(target: string, what: string, write: (fd: number) => void): void {
  const f = prepareFile(target, what);
  try {
    try {
      write(f.fd);
    } catch (err) {
      if (err instanceof FcRunError) throw err;
      const code = (err as NodeJS.ErrnoException).code;
      throw new FcRunError('snapshot-write', `cannot write the ${what} ${target}: ${code ?? (err as Error).message}`);
    }
    f.commit();
  } finally {
    f.abort();
  }
}

/**
 * A Diff memory file is guest memory (changed pages as data, holes elsewhere) followed by a
 * trailer: a bitmap of the pages it holds (bit p of byte p/8, pages of all regions back to back)
 * and a footer: magic "FCRUNDIF", u32 format, u32 reserved, u64 guest memory bytes, u64 pages held.
 * Merging reads the bitmap, not the file's holes (copying can fill or punch holes), and a Diff
 * file given to restore has the wrong size and is refused as such.
 */
const DIFF_MAGIC = 'FCRUNDIF';
const DIFF_FORMAT = 1;
const DIFF_FOOTER = 32;

const bitmapBytes = (memBytes: number) => Math.ceil(memBytes / PAGE_SIZE / 8);

function diffTrailer(only: Uint8Array[], memBytes: number): Buffer {
  const bitmap = Buffer.alloc(bitmapBytes(memBytes));
  let page = 0;
  let count = 0;
  for (const region of only) {
    for (let p = 0; p < region.length; p++, page++) {
      if (region[p]) {
        bitmap[page >> 3] |= 1 << (page & 7);
        count++;
      }
    }
  }
  const footer = Buffer.alloc(DIFF_FOOTER);
  footer.write(DIFF_MAGIC, 0, 'latin1');
  footer.writeUInt32LE(DIFF_FORMAT, 8);
  footer.writeBigUInt64LE(BigInt(memBytes), 16);
  footer.writeBigUInt64LE(BigInt(count), 24);
  return Buffer.concat([bitmap, footer]);
}

/** A Diff memory file's footer, if `fd` (of `fileBytes`) ends with one that fits its size. */
function readDiffFooter(fd: number, fileBytes: number): { memBytes: number; pages: number } | undefined {
  if (fileBytes < DIFF_FOOTER) return undefined;
  const footer = Buffer.alloc(DIFF_FOOTER);
  if (fs.readSync(fd, footer, 0, DIFF_FOOTER, fileBytes - DIFF_FOOTER) !== DIFF_FOOTER) return undefined;
  if (footer.toString('latin1', 0, 8) !== DIFF_MAGIC) return undefined;
  const memBytes = Number(footer.readBigUInt64LE(16));
  if (!Number.isSafeInteger(memBytes) || memBytes % PAGE_SIZE !== 0 || memBytes + bitmapBytes(memBytes) + DIFF_FOOTER !== fileBytes) return undefined;
  if (footer.readUInt32LE(8) !== DIFF_FORMAT) throw new FcRunError('snapshot-memory', `this Diff memory file is format ${footer.readUInt32LE(8)}; this fc-run reads format ${DIFF_FORMAT}`, 2);
  return { memBytes, pages: Number(footer.readBigUInt64LE(24)) };
}

/**
 * Writes guest memory to a memory file: each region at its offset (regions back to back).
 *
 * A Full file (no `only`) holds every page that may hold data and is not all zero; the rest stay
 * holes, so the file takes disk space for what the guest really holds. A Diff file (`only`: one
 * byte per page per region, 1 = changed) holds exactly the changed pages, zero pages included,
 * and the trailer above: `mergeMemoryFiles` lays those pages over the base.
 */
export function writeMemoryFile(mem: GuestMemory, target: string | PreparedFile, opts: { only?: Uint8Array[] } = {}): MemoryFileReport {
  const regions = mem.describe();
  const size = regions.reduce((n, r) => n + r.size, 0);
  let written = 0;
  const write = (fd: number) => {
    let fileOffset = 0;
    regions.forEach((r, index) => {
      const candidates = opts.only ? opts.only[index] : mem.populatedPages(index);
      const pages = r.size / PAGE_SIZE;
      let runStart = -1;
      const flush = (end: number) => {
        if (runStart < 0) return;
        const len = (end - runStart) * PAGE_SIZE;
        const bytes = mem.regionBytes(index, runStart * PAGE_SIZE, len);
        let done = 0;
        while (done < len) done += fs.writeSync(fd, bytes, done, len - done, fileOffset + runStart * PAGE_SIZE + done);
        written += len;
        runStart = -1;
      };
      for (let p = 0; p < pages; p++) {
        const keep = candidates[p] !== 0 && (opts.only !== undefined || Buffer.compare(mem.regionBytes(index, p * PAGE_SIZE, PAGE_SIZE), ZERO_PAGE) !== 0);
        if (!keep) flush(p);
        else {
          if (runStart < 0) runStart = p;
          if ((p + 1 - runStart) * PAGE_SIZE >= MAX_RUN) flush(p + 1);
        }
      }
      flush(pages);
      fileOffset += r.size;
    });
    fs.ftruncateSync(fd, size);
    if (opts.only) {
      const trailer = diffTrailer(opts.only, size);
      let done = 0;
      while (done < trailer.length) done += fs.writeSync(fd, trailer, done, trailer.length - done, size + done);
    }
  };
  if (typeof target === 'string') writeFileAtomically(target, 'memory file', write);
  else {
    try {
      write(target.fd);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      throw new FcRunError('snapshot-write', `cannot write the memory file ${target.target}: ${code ?? (err as Error).message}`);
    }
  }
  return { size, written };
}

const SEEK_DATA = 3;
const SEEK_HOLE = 4;
const ENXIO = 6;

/**
 * The data extents of a file ([start, end) byte ranges), from SEEK_DATA/SEEK_HOLE. A file system
 * that does not report holes gives one extent covering everything.
 */
export function dataExtents(fd: number, size: number): [number, number][] {
  const out: [number, number][] = [];
  let at = 0;
  while (at < size) {
    const data = Number(sys.lseek(fd, at, SEEK_DATA));
    if (data < 0) {
      const e = errno();
      if (e === ENXIO) break; // no data after `at`
      throw new SyscallError('lseek(SEEK_DATA)', e);
    }
    if (data >= size) break;
    const hole = Number(sys.lseek(fd, data, SEEK_HOLE));
    if (hole < 0) throw new SyscallError('lseek(SEEK_HOLE)', errno());
    out.push([data, Math.min(hole, size)]);
    at = hole;
  }
  return out;
}

export interface MergeReport {
  size: number;
  /** Bytes taken from each input, base first. */
  fromEach: number[];
}

/**
 * `fc-run snapshot merge`: the base memory file (a Full snapshot's, or an earlier merge) with the
 * pages each Diff memory file holds laid over it in order, written to `out` (atomically, sparse).
 * Each Diff must be of the base's guest memory size; `out` may not be one of the inputs.
 */
export function mergeMemoryFiles(base: string, diffs: string[], out: string): MergeReport {
  const inputs = [base, ...diffs];
  const fds: number[] = [];
  try {
    let size = -1;
    const held: (Buffer | undefined)[] = [];
    for (const [i, f] of inputs.entries()) {
      let fd: number;
      try {
        fd = fs.openSync(f, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
      } catch (err) {
        throw new FcRunError('snapshot-memory', `cannot open the memory file ${f}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, 2);
      }
      fds.push(fd);
      const st = fs.fstatSync(fd);
      if (!st.isFile()) throw new FcRunError('snapshot-memory', `${f} is not a regular file`, 2);
      try {
        const o = fs.statSync(out);
        if (o.dev === st.dev && o.ino === st.ino) throw new FcRunError('snapshot-memory', `the output ${out} is the input ${f}: write the merge to a new file`, 2);
      } catch (err) {
        if (err instanceof FcRunError) throw err;
      }
      const footer = readDiffFooter(fd, st.size);
      if (i === 0) {
        if (footer) throw new FcRunError('snapshot-memory', `${f} is a Diff memory file: the base is a Full snapshot's memory file (or an earlier merge)`, 2);
        if (st.size === 0 || st.size % PAGE_SIZE !== 0) throw new FcRunError('snapshot-memory', `${f} is ${st.size} bytes, not whole pages of guest memory: not a memory file`, 2);
        size = st.size;
        held.push(undefined);
        continue;
      }
      if (!footer) throw new FcRunError('snapshot-memory', `${f} is not a Diff memory file (it has no Diff trailer: a Full snapshot's memory file is a base, not a Diff)`, 2);
      if (footer.memBytes !== size) throw new FcRunError('snapshot-memory', `${f} is a Diff of ${footer.memBytes} bytes of guest memory but ${base} holds ${size}: not the same VM`, 2);
      const bitmap = Buffer.alloc(bitmapBytes(size));
      if (fs.readSync(fd, bitmap, 0, bitmap.length, size) !== bitmap.length) throw new FcRunError('snapshot-memory', `${f}: its page bitmap cannot be read`, 2);
      let count = 0;
      for (const b of bitmap) for (let x = b; x; x &= x - 1) count++;
      if (count !== footer.pages) throw new FcRunError('snapshot-memory', `${f} is damaged: its bitmap marks ${count} pages, its footer says ${footer.pages}`, 2);
      held.push(bitmap);
    }
    const fromEach = inputs.map(() => 0);
    const buf = Buffer.alloc(MAX_RUN);
    writeFileAtomically(out, 'merged memory file', (outFd) => {
      const copy = (i: number, start: number, end: number) => {
        for (let at = start; at < end; ) {
          const n = fs.readSync(fds[i], buf, 0, Math.min(MAX_RUN, end - at), at);
          if (n === 0) throw new FcRunError('snapshot-memory', `${inputs[i]} ended early at byte ${at}`, 2);
          let done = 0;
          while (done < n) done += fs.writeSync(outFd, buf, done, n - done, at + done);
          at += n;
          fromEach[i] += n;
        }
      };
      // The base's data (its holes stay holes), then each Diff's pages, runs at a time.
      for (const [start, end] of dataExtents(fds[0], size)) copy(0, start, end);
      held.forEach((bitmap, i) => {
        if (!bitmap) return;
        const pages = size / PAGE_SIZE;
        let run = -1;
        for (let p = 0; p <= pages; p++) {
          const set = p < pages && (bitmap[p >> 3] & (1 << (p & 7))) !== 0;
          if (set && run < 0) run = p;
          if (!set && run >= 0) {
            copy(i, run * PAGE_SIZE, p * PAGE_SIZE);
            run = -1;
          }
        }
      });
      fs.ftruncateSync(outFd, size);
    });
    return { size, fromEach };
  } finally {
    for (const fd of fds) fs.closeSync(fd);
  }
}

/** Checks a memory file holds exactly the regions a snapshot describes, and opens it read-only. */
export function openMemoryFile(file: string, regions: { start: number; size: number }[]): number {
  const expected = regions.reduce((n, r) => n + r.size, 0);
  let fd: number;
  try {
    // O_NONBLOCK: a FIFO is refused below instead of waiting for a writer.
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK | fs.constants.O_NOCTTY);
  } catch (err) {
    throw new FcRunError('snapshot-memory', `cannot open the memory file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, 2);
  }
  const st = fs.fstatSync(fd);
  if (st.isFile() && st.size !== expected && readDiffFooter(fd, st.size)) {
    fs.closeSync(fd);
    throw new FcRunError('snapshot-memory', `the memory file ${file} is a Diff snapshot's: merge it onto its base first (fc-run snapshot merge BASE.mem ${file} -o MERGED.mem) and restore with the merged file`, 2);
  }
  if (!st.isFile() || st.size !== expected) {
    fs.closeSync(fd);
    const got = st.isFile() ? `${st.size} bytes` : 'not a regular file';
    throw new FcRunError('snapshot-memory', `the memory file ${file} does not fit the snapshot: it needs ${expected} bytes of guest memory, the file has ${got} (is it the memory file written with this snapshot?)`, 2);
  }
  return fd;
}
