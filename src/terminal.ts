import * as fs from 'node:fs';

/**
 * Whether `fd` is a terminal. Only a character device can be one; /dev/null and the other memory
 * devices (major 1) are answered without loading node:tty, which brings in net and the stream
 * modules (about 1.5 MiB and a millisecond of every start that has no terminal).
 */
export function isTerminal(fd: number): boolean {
  let st: fs.Stats;
  try {
    st = fs.fstatSync(fd);
  } catch {
    return false;
  }
  if (!st.isCharacterDevice() || Math.floor(st.rdev / 256) === 1) return false;
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return (require('node:tty') as typeof import('node:tty')).isatty(fd);
}
