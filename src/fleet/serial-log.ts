import * as fs from 'node:fs';

/**
 * Guest serial output goes from fc-run straight to a file (opened O_APPEND): a write to a regular
 * file never waits for a reader, so a slow, stopped or restarting supervisor can never block the
 * VM, as a full pipe would. The supervisor caps the file by copy-and-truncate: the old contents
 * move to `<file>.1` and the file is cut to zero, after which fc-run's appends land at its start.
 * What the guest writes between the copy and the cut (microseconds) is lost; nothing else is.
 */
export function rotateIfLarge(file: string, old: string, maxBytes: number): boolean {
  // The common case, every second for every VM: one lstat, nothing opened.
  try {
    const pre = fs.lstatSync(file);
    if (!pre.isFile() || pre.size < maxBytes) return false;
  } catch {
    return false;
  }
  let fd: number;
  try {
    // Never through a symlink: truncating would cut whatever file it points to.
    fd = fs.openSync(file, fs.constants.O_WRONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK);
  } catch {
    return false;
  }
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile() || st.size < maxBytes) return false;
    // Removed first, then created exclusively: a symlink at <file>.1 is replaced, not written through.
    fs.rmSync(old, { force: true });
    fs.copyFileSync(file, old, fs.constants.COPYFILE_EXCL);
    fs.ftruncateSync(fd, 0);
    return true;
  } finally {
    fs.closeSync(fd);
  }
}

function readRange(file: string, from: number, to: number): Buffer {
  if (to <= from) return Buffer.alloc(0);
  const fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK | fs.constants.O_NOFOLLOW);
  try {
    const buf = Buffer.alloc(to - from);
    const n = fs.readSync(fd, buf, 0, buf.length, from);
    return buf.subarray(0, n);
  } finally {
    fs.closeSync(fd);
  }
}

/** The last `maxBytes` of a file (all of a shorter one); empty when there is no file. */
export function readTail(file: string, maxBytes: number): Buffer {
  const size = sizeOf(file);
  return size === undefined ? Buffer.alloc(0) : readRange(file, Math.max(0, size - maxBytes), size);
}

function sizeOf(file: string): number | undefined {
  try {
    return fs.statSync(file).size;
  } catch {
    return undefined;
  }
}

/**
 * Hands the whole log, the rotated older part first, to `emit` in 64 KiB pieces (a log may be
 * far larger than memory). Returns how far the current file was read, where a follower goes on.
 */
export function streamWholeLog(file: string, old: string, emit: (chunk: Buffer) => void): number {
  let end = 0;
  for (const f of [old, file]) {
    let fd: number;
    try {
      fd = fs.openSync(f, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK | fs.constants.O_NOFOLLOW);
    } catch {
      continue;
    }
    try {
      if (!fs.fstatSync(fd).isFile()) continue;
      const buf = Buffer.alloc(64 * 1024);
      let pos = 0;
      for (let n; (n = fs.readSync(fd, buf, 0, buf.length, pos)) > 0; pos += n) emit(Buffer.from(buf.subarray(0, n)));
      if (f === file) end = pos;
    } finally {
      fs.closeSync(fd);
    }
  }
  return end;
}

/**
 * Follows the log across rotations: `poll()` returns what was appended since the last call. When
 * the file got shorter it was rotated: the rest of what we had not read is at the same offset in
 * `<file>.1`, and reading goes on from the new file's start.
 */
export class LogFollower {
  private pos: number;
  private oldSig: string;

  constructor(
    private readonly file: string,
    private readonly old: string,
    /** Start at the current end (what was already printed). */
    startAt = sizeOf(file) ?? 0,
  ) {
    this.pos = startAt;
    this.oldSig = signature(old);
  }

  poll(maxBytes = 1 << 20): Buffer {
    const parts: Buffer[] = [];
    // A rotation rewrites <file>.1; the file itself may already have grown past where we were.
    const sig = signature(this.old);
    const size = sizeOf(this.file) ?? 0;
    if (sig !== this.oldSig || size < this.pos) {
      this.oldSig = sig;
      const oldSize = sizeOf(this.old) ?? 0;
      if (oldSize > this.pos) parts.push(readRange(this.old, this.pos, Math.min(oldSize, this.pos + maxBytes)));
      this.pos = 0;
    }
    const end = Math.min(sizeOf(this.file) ?? 0, this.pos + maxBytes);
    parts.push(readRange(this.file, this.pos, end));
    this.pos = end;
    return Buffer.concat(parts);
  }
}

function signature(file: string): string {
  try {
    const st = fs.statSync(file, { bigint: true });
    return `${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
  } catch {
    return '';
  }
}
