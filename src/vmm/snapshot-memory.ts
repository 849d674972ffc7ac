import * as fs from 'node:fs';
import * as path from 'node:path';
import { FcRunError } from '../errors';
import { GuestMemory, PAGE_SIZE } from '../kvm/memory';

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
 * Writes guest memory to a memory file: each region at its offset (regions back to back). Only
 * pages that are resident and not all zero are written; the rest stay holes, so the file takes
 * disk space for what the guest really holds.
 */
export function writeMemoryFile(mem: GuestMemory, target: string): MemoryFileReport {
  const regions = mem.describe();
  const size = regions.reduce((n, r) => n + r.size, 0);
  let written = 0;
  writeFileAtomically(target, 'memory file', (fd) => {
    let fileOffset = 0;
    regions.forEach((r, index) => {
      const resident = mem.residentPages(index);
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
        const keep = (resident[p] & 1) !== 0 && Buffer.compare(mem.regionBytes(index, p * PAGE_SIZE, PAGE_SIZE), ZERO_PAGE) !== 0;
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
