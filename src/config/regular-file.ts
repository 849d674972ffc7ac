import * as fs from 'node:fs';
import { EXIT_FAILURE, EXIT_INVALID_SPEC, FcRunError } from '../errors';

/**
 * Why a file named by the user cannot be used: 'file-unreadable' (missing, permissions: exit 1, as
 * for any file that fails to open), 'file-type' (a FIFO, device, directory or socket) and
 * 'file-too-large' (exit 2: the input itself is wrong, whatever the host does).
 */
export class FileError extends FcRunError {
  constructor(
    code: 'file-unreadable' | 'file-type' | 'file-too-large',
    readonly file: string,
    message: string,
  ) {
    super(code, message, code === 'file-unreadable' ? EXIT_FAILURE : EXIT_INVALID_SPEC);
  }
}

export interface RegularFile {
  fd: number;
  size: number;
}

/** What a non-regular file is, in words a user recognises. */
export function fileKind(st: fs.Stats): string {
  if (st.isDirectory()) return 'a directory';
  if (st.isFIFO()) return 'a FIFO (named pipe)';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  if (st.isSocket()) return 'a socket';
  if (st.isFile()) return 'a regular file';
  return 'not a regular file';
}

function unreadable(file: string, what: string, err: unknown): FileError {
  const e = err as NodeJS.ErrnoException;
  const why =
    e.code === 'ENOENT' ? 'does not exist'
    : e.code === 'EACCES' || e.code === 'EPERM' ? 'is not readable (permission denied)'
    : e.code === 'ELOOP' ? 'is a symbolic link loop'
    : e.code === 'ENOTDIR' ? 'has a path component that is not a directory'
    : e.code === 'ENAMETOOLONG' ? 'has a name too long for the file system'
    : `cannot be opened (${e.code ?? e.message})`;
  return new FileError('file-unreadable', file, `${what} ${file} ${why}`);
}

function notRegular(file: string, what: string, st: fs.Stats): FileError {
  return new FileError('file-type', file, `${what} ${file} is ${fileKind(st)}; give a regular file`);
}

/**
 * Opens a regular file for reading and returns its descriptor and size; the caller closes it.
 *
 * Symbolic links are followed. A FIFO, device, directory or socket is refused before anything is
 * read: stat() first, so opening never has a device's side effects, then the open descriptor is
 * checked again (the path may have been swapped in between), and O_NONBLOCK makes even that open
 * of a FIFO return at once instead of waiting for a writer. A file larger than maxBytes is refused
 * with its size and the limit, and `limitReason` says where the limit comes from.
 */
export function openRegularFile(file: string, what: string, maxBytes = Number.MAX_SAFE_INTEGER, limitReason?: string, opts: { noFollow?: boolean } = {}): RegularFile {
  let st: fs.Stats;
  try {
    // noFollow: a symbolic link is refused as what it is, for files in a directory others may have touched.
    st = opts.noFollow ? fs.lstatSync(file) : fs.statSync(file);
  } catch (err) {
    throw unreadable(file, what, err);
  }
  if (!st.isFile()) throw notRegular(file, what, st);
  let fd: number;
  try {
    // libuv adds O_CLOEXEC itself.
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK | (opts.noFollow ? fs.constants.O_NOFOLLOW : 0));
  } catch (err) {
    // A socket swapped in after the stat fails here with ENXIO.
    if ((err as NodeJS.ErrnoException).code === 'ENXIO') throw new FileError('file-type', file, `${what} ${file} is not a regular file; give a regular file`);
    throw unreadable(file, what, err);
  }
  try {
    const fst = fs.fstatSync(fd);
    if (!fst.isFile()) throw notRegular(file, what, fst);
    if (fst.size > maxBytes) {
      const why = limitReason ? ` (${limitReason})` : '';
      throw new FileError('file-too-large', file, `${what} ${file} is ${fst.size} bytes; the limit is ${maxBytes} bytes${why}`);
    }
    return { fd, size: fst.size };
  } catch (err) {
    fs.closeSync(fd);
    throw err;
  }
}

/**
 * Reads a whole regular file of at most maxBytes. Reads until end of file rather than trusting
 * the size from fstat, so a file that grows while it is read is still refused at the limit and
 * never read past it.
 */
export function readRegularFile(file: string, what: string, maxBytes = 64 * 1024 * 1024, limitReason?: string, opts: { noFollow?: boolean } = {}): Buffer {
  const { fd, size } = openRegularFile(file, what, maxBytes, limitReason, opts);
  try {
    const chunks: Buffer[] = [];
    let total = 0;
    let want = Math.min(Math.max(size, 4096), maxBytes + 1);
    for (;;) {
      const buf = Buffer.alloc(Math.min(want, maxBytes + 1 - total));
      if (buf.length === 0) break;
      let got: number;
      try {
        got = fs.readSync(fd, buf, 0, buf.length, total);
      } catch (err) {
        throw new FileError('file-unreadable', file, `${what} ${file} cannot be read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
      }
      if (got === 0) break;
      chunks.push(buf.subarray(0, got));
      total += got;
      want = 64 * 1024;
    }
    if (total > maxBytes) {
      const why = limitReason ? ` (${limitReason})` : '';
      throw new FileError('file-too-large', file, `${what} ${file} is more than ${maxBytes} bytes; the limit is ${maxBytes} bytes${why}`);
    }
    return Buffer.concat(chunks, total);
  } finally {
    fs.closeSync(fd);
  }
}
