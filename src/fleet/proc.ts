import * as fs from 'node:fs';

/**
 * A process's start time (/proc/<pid>/stat field 22, clock ticks since boot), or undefined when
 * no such process exists. A pid alone is not an identity: after a reboot of the supervisor the
 * pid may belong to something else, and pid + start time tells them apart.
 */
export function processStartTime(pid: number): string | undefined {
  let text: string;
  try {
    text = fs.readFileSync(`/proc/${pid}/stat`, 'latin1');
  } catch {
    return undefined;
  }
  // The command name (field 2) is in parentheses and may itself contain spaces or ')'.
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  // Fields after the name start at field 3; a zombie has exited and counts as gone.
  if (fields[0] === 'Z' || fields[0] === 'X') return undefined;
  return fields[22 - 3];
}

/** True when `pid` is the same process that had `startTime` when it was recorded. */
export function isSameProcess(pid: number | undefined, startTime: string | undefined): boolean {
  if (pid === undefined || startTime === undefined || !Number.isSafeInteger(pid) || pid <= 0) return false;
  return processStartTime(pid) === startTime;
}

/** A process's argv, or undefined when it is gone or unreadable. */
export function commandLine(pid: number): string[] | undefined {
  try {
    const raw = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    return raw.split('\0').filter((a, i, all) => i < all.length - 1 || a !== '');
  } catch {
    return undefined;
  }
}

/**
 * True when `argv` is an fc-run (or stand-in) launched by `fc-run up` for the VM `id`: it carries
 * both `--id <id>` and `--exit-record`. A state file is only data; before anything is signalled,
 * the process it names must look like the VM it claims to be.
 */
export function isFleetVmCommand(argv: readonly string[], id: string): boolean {
  const hasId = argv.some((a, i) => a === `--id=${id}` || (a === '--id' && argv[i + 1] === id));
  const hasRecord = argv.some((a) => a === '--exit-record' || a.startsWith('--exit-record='));
  return hasId && hasRecord;
}
