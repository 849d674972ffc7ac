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

/**
 * Writes `target` so that its bytes are exactly what `write(fd)` puts in it, or leaves whatever was
 * there before: the data goes to a new file beside it, is flushed to disk, and only then renamed
 * over the target. A VM restored from the target keeps its private mapping of the old file.
 */
export function writeFileAtomically(target: string, what: string, write: (fd: number) => void): void {
  let existing: fs.Stats | undefined;
  try {
    existing = fs.statSync(target);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'ENOENT') throw new FcRunError('snapshot-path', `cannot write the ${what} ${target}: ${code ?? (err as Error).message}`);
  }
  if (existing && !existing.isFile()) throw new FcRunError('snapshot-path', `the ${what} ${target} exists and is not a regular file: give a file path`);
  const tmp = path.join(path.dirname(target), `.${path.basename(target)}.fc-run-${process.pid}.tmp`);
  let fd: number;
  try {
    fd = fs.openSync(tmp, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new FcRunError('snapshot-path', `cannot create the ${what} beside ${target}: ${code ?? (err as Error).message}`);
  }
  try {
    write(fd);
    fs.fdatasyncSync(fd);
    fs.closeSync(fd);
    fs.renameSync(tmp, target);
  } catch (err) {
    try {
      fs.closeSync(fd);
    } catch {
      // already closed
    }
    fs.rmSync(tmp, { force: true });
    if (err instanceof FcRunError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    throw new FcRunError('snapshot-write', `cannot write the ${what} ${target}: ${code ?? (err as Error).message}`);
  }
}

/**
 * Writes guest memory to a memory file: each region at its offset (regions back to back).
 *
 * A Full file (no `only`) holds every page that may hold data and is not all zero; the rest stay
 * holes, so the file takes disk space for what the guest really holds. A Diff file (`only`: one
 * byte per page per region, 1 = changed) holds exactly the changed pages, zero pages included as
 * data, and holes everywhere else: `mergeMemoryFiles` lays its data over the base.
 */
export function writeMemoryFile(mem: GuestMemory, target: string, opts: { only?: Uint8Array[] } = {}): MemoryFileReport {
  const regions = mem.describe();
  const size = regions.reduce((n, r) => n + r.size, 0);
  let written = 0;
  writeFileAtomically(target, 'memory file', (fd) => {
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
  });
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
 * `fc-run snapshot merge`: the base memory file (a Full snapshot's, or an earlier merge) with each
 * Diff memory file laid over it in order, written to `out` (atomically, sparse). Every file must
 * be the same size; `out` may not be one of the inputs.
 */
export function mergeMemoryFiles(base: string, diffs: string[], out: string): MergeReport {
  const inputs = [base, ...diffs];
  const fds: number[] = [];
  try {
    let size = -1;
    for (const f of inputs) {
      let fd: number;
      try {
        fd = fs.openSync(f, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
      } catch (err) {
        throw new FcRunError('snapshot-memory', `cannot open the memory file ${f}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, 2);
      }
      fds.push(fd);
      const st = fs.fstatSync(fd);
      if (!st.isFile()) throw new FcRunError('snapshot-memory', `${f} is not a regular file`, 2);
      if (size < 0) size = st.size;
      else if (st.size !== size) throw new FcRunError('snapshot-memory', `${f} is ${st.size} bytes but ${base} is ${size}: a Diff memory file is the size of the guest's memory, like its base`, 2);
      if (st.size % PAGE_SIZE !== 0) throw new FcRunError('snapshot-memory', `${f} is ${st.size} bytes, not whole pages: not a memory file`, 2);
      try {
        const o = fs.statSync(out);
        if (o.dev === st.dev && o.ino === st.ino) throw new FcRunError('snapshot-memory', `the output ${out} is the input ${f}: write the merge to a new file`, 2);
      } catch (err) {
        if (err instanceof FcRunError) throw err;
      }
    }
    const extents = fds.map((fd, i) => {
      const ex = dataExtents(fd, size);
      // A Diff read as one extent on a file system without holes would overwrite the whole base with its zeros.
      const st = fs.fstatSync(fd);
      if (i > 0 && ex.length === 1 && ex[0][0] === 0 && ex[0][1] === size && st.blocks * 512 < size) {
        throw new FcRunError('snapshot-memory', `the file system holding ${inputs[i]} does not report holes (SEEK_HOLE), so the pages a Diff holds cannot be told from the rest: copy the files to a file system that does (ext4, xfs, btrfs, tmpfs)`, 2);
      }
      return ex;
    });
    const fromEach = inputs.map(() => 0);
    const buf = Buffer.alloc(MAX_RUN);
    writeFileAtomically(out, 'merged memory file', (outFd) => {
      extents.forEach((ex, i) => {
        for (const [start, end] of ex) {
          for (let at = start; at < end; ) {
            const n = fs.readSync(fds[i], buf, 0, Math.min(MAX_RUN, end - at), at);
            if (n === 0) break;
            let done = 0;
            while (done < n) done += fs.writeSync(outFd, buf, done, n - done, at + done);
            at += n;
            fromEach[i] += n;
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
    fd = fs.openSync(file, fs.constants.O_RDONLY);
  } catch (err) {
    throw new FcRunError('snapshot-memory', `cannot open the memory file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, 2);
  }
  const st = fs.fstatSync(fd);
  if (!st.isFile() || st.size !== expected) {
    fs.closeSync(fd);
    const got = st.isFile() ? `${st.size} bytes` : 'not a regular file';
    throw new FcRunError('snapshot-memory', `the memory file ${file} does not fit the snapshot: it needs ${expected} bytes of guest memory, the file has ${got} (is it the memory file written with this snapshot?)`, 2);
  }
  return fd;
}
