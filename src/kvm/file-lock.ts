import * as fs from 'node:fs';
import { errno, sys, SyscallError } from './libc';

const LOCK_EX = 2;
const LOCK_NB = 4;
const EWOULDBLOCK = 11;

/**
 * Takes an exclusive flock(2) on `file` (created if missing) for as long as this process lives:
 * the kernel drops it when the process ends, however it ends, so there is never a stale lock to
 * detect. Returns false when another process holds it. The descriptor is close-on-exec, so
 * children do not inherit the lock.
 */
export function lockForLife(file: string): boolean {
  const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_NOFOLLOW, 0o600);
  const id = fs.fstatSync(fd);
  const key = `${id.dev}:${id.ino}`;
  // Already ours (flock locks belong to the open file, so a second open here would conflict).
  if (held.has(key)) {
    fs.closeSync(fd);
    return true;
  }
  if (sys.flock(fd, LOCK_EX | LOCK_NB) === 0) {
    held.set(key, fd); // never closed: closing would release the lock
    return true;
  }
  const e = errno();
  fs.closeSync(fd);
  if (e === EWOULDBLOCK) return false;
  throw new SyscallError('flock', e, file);
}

/** Locks this process holds: file identity to descriptor. */
const held = new Map<string, number>();
