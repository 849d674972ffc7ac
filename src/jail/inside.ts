import * as fs from 'node:fs';
import * as path from 'node:path';
import { FcRunError } from '../errors';

/**
 * Paths as the jailed process sees them. In the jailer form (`fc-run jail --exec-file …`), the
 * paths after `--` and inside the spec are written as Firecracker users write them: from inside
 * the chroot. The jailer checks them from outside, as root, so it must find the file the jailed
 * process will find: never one outside the jail root, whatever `..` or symbolic links say.
 */

/** The components of an inside path, absolute from the jail's `/` (`cwd` for a relative one), with `.`, `..` and repeated slashes settled. */
export function insideComponents(inside: string, cwd = '/'): string[] {
  // posix.resolve never climbs above "/": "../../etc" from "/" is "/etc", as in a chroot.
  return path.posix.resolve('/', cwd, inside).split('/').filter(Boolean);
}

/**
 * The host path of `inside` (relative ones from `cwd`, itself inside) in the jail at `root`,
 * lexically: symbolic links are not followed (see resolveInRoot).
 */
export function insideToHost(root: string, inside: string, cwd = '/'): string {
  return path.join(root, ...insideComponents(inside, cwd));
}

/** The inside path of a host path under `root`, or undefined when it is not under it. */
export function hostToInside(root: string, host: string): string | undefined {
  const rel = path.relative(root, host);
  if (rel === '') return '/';
  if (rel.startsWith('..') || path.isAbsolute(rel)) return undefined;
  return `/${rel.split(path.sep).join('/')}`;
}

const MAX_LINKS = 40; // Linux's limit on links followed in one lookup

/**
 * The host path of `inside` with symbolic links followed as the kernel follows them for a process
 * chrooted at `root` (absolute targets start again from the jail's `/`). Components that do not
 * exist are taken as they are, so the result names where the file would be.
 */
export function resolveInRoot(root: string, inside: string, cwd = '/'): string {
  let pending = insideComponents(inside, cwd);
  let done: string[] = [];
  let links = 0;
  while (pending.length > 0) {
    const name = pending.shift()!;
    if (name === '..') {
      done.pop();
      continue;
    }
    const host = path.join(root, ...done, name);
    let st: fs.Stats | undefined;
    try {
      st = fs.lstatSync(host);
    } catch {
      st = undefined;
    }
    if (!st?.isSymbolicLink()) {
      done.push(name);
      continue;
    }
    if (++links > MAX_LINKS) throw new FcRunError('jail-file', `${inside}: too many levels of symbolic links in the jail ${root}`);
    const target = fs.readlinkSync(host);
    // A link's target is split as is (".." kept): it climbs from where the link is, not above "/".
    pending = [...target.split('/').filter((c) => c !== '' && c !== '.'), ...pending];
    if (target.startsWith('/')) done = [];
  }
  return path.join(root, ...done);
}
