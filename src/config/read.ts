import * as fs from 'node:fs';
import { EXIT_FAILURE, FcRunError } from '../errors';

/** Specs, CPU templates and metadata files: larger than this is a mistake, not a config. */
export const MAX_CONFIG_FILE_BYTES = 1024 * 1024;

/** What a file is, in words, from its stat: for "is a FIFO, not a regular file". */
export function fileKind(st: fs.Stats): string {
  if (st.isDirectory()) return 'a directory';
  if (st.isFIFO()) return 'a named pipe (FIFO)';
  if (st.isSocket()) return 'a socket';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  if (st.isSymbolicLink()) return 'a symbolic link';
  return 'a regular file';
}

function errnoText(file: string, what: string, err: unknown): FcRunError {
  const e = err as NodeJS.ErrnoException;
  const why =
    e.code === 'ENOENT' ? 'does not exist'
    : e.code === 'EISDIR' ? 'is a directory'
    : e.code === 'ENXIO' ? 'is a socket or a device without a driver, not a regular file'
    : e.code === 'EACCES' || e.code === 'EPERM' ? 'cannot be read (permission denied)'
    : e.code === 'ELOOP' ? 'is a symbolic link loop'
    : `cannot be read (${e.code ?? e.message})`;
  return new FcRunError('file-unreadable', `${what} ${file} ${why}`, EXIT_FAILURE);
}

/**
 * Opens a file that must be a regular file, without ever blocking or reading unbounded data: it
 * is opened non-blocking (a FIFO would otherwise wait for a writer), then its type and size are
 * taken from the open descriptor (so a file swapped after a check cannot slip through). The
 * caller closes the descriptor.
 */
export function openRegularFile(file: string, what: string, maxBytes: number): { fd: number; size: number } {
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK | fs.constants.O_NOCTTY);
  } catch (err) {
    throw errnoText(file, what, err);
  }
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) throw new FcRunError('file-type', `${what} ${file} is ${fileKind(st)}, not a regular file`, EXIT_FAILURE);
    if (st.size > maxBytes) {
      throw new FcRunError('file-too-large', `${what} ${file} is ${st.size} bytes; the limit is ${maxBytes} bytes`, EXIT_FAILURE);
    }
    return { fd, size: st.size };
  } catch (err) {
    fs.closeSync(fd);
    throw err;
  }
}

/**
 * Reads a UTF-8 text file that must be a regular file of at most `maxBytes`, turning every
 * failure into a sentence that names the file and what it is for.
 */
export function readText(file: string, what: string, maxBytes = MAX_CONFIG_FILE_BYTES): string {
  const { fd, size } = openRegularFile(file, what, maxBytes);
  try {
    // One byte past the size fstat gave: a file that grows while it is read is caught.
    const buf = Buffer.alloc(size + 1);
    let got = 0;
    for (;;) {
      let n: number;
      try {
        n = fs.readSync(fd, buf, got, buf.length - got, null);
      } catch (err) {
        throw errnoText(file, what, err);
      }
      if (n === 0) break;
      got += n;
      if (got === buf.length) break;
    }
    if (got > size) {
      if (got > maxBytes) throw new FcRunError('file-too-large', `${what} ${file} is larger than the limit of ${maxBytes} bytes`, EXIT_FAILURE);
      throw new FcRunError('file-changed', `${what} ${file} grew while it was being read; try again once it is written`, EXIT_FAILURE);
    }
    try {
      return new TextDecoder('utf-8', { fatal: true }).decode(buf.subarray(0, got));
    } catch {
      throw new FcRunError('file-encoding', `${what} ${file} is not UTF-8 text`, EXIT_FAILURE);
    }
  } finally {
    fs.closeSync(fd);
  }
}
