import { lockForLife } from '../kvm/file-lock';
import { readRegularFile } from '../config/regular-file';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { FcRunError } from '../errors';
import { isValidId } from './ids';
import { commandLine, isFleetVmCommand, isSameProcess, processStartTime } from './proc';

/** Where `fc-run up`, `ps`, `logs` and `stop` keep and find their VMs' files. */
export function defaultRunDir(): string {
  if (process.getuid?.() === 0) return '/run/fc-run';
  const xdg = process.env.XDG_RUNTIME_DIR;
  if (xdg && path.isAbsolute(xdg)) return path.join(xdg, 'fc-run');
  return path.join(os.tmpdir(), `fc-run-${process.getuid?.() ?? 'user'}`);
}

export class FleetError extends FcRunError {
  constructor(message: string) {
    super('fleet', message);
  }
}

/** The files one VM has in the run directory. */
export function vmFiles(runDir: string, id: string) {
  const at = (suffix: string) => path.join(runDir, `${id}${suffix}`);
  return {
    state: at('.state.json'),
    sock: at('.sock'),
    serial: at('.serial.log'),
    serialOld: at('.serial.log.1'),
    exit: at('.exit.json'),
    output: at('.fc-run.log'),
    hold: at('.hold'),
  };
}

export interface ExitRecord {
  /** fc-run's exit status; null when it was ended by a signal (or nobody knows). */
  code: number | null;
  signal?: string;
  reason: string;
  time: string;
}

/** What `fc-run up` remembers about one VM; also what `fc-run ps` shows. */
export interface VmState {
  id: string;
  /** The spec's absolute path and the directory `fc-run up` watches. */
  spec: string;
  dir: string;
  state: 'starting' | 'running' | 'stopping' | 'exited' | 'waiting' | 'held';
  pid?: number;
  /** /proc/<pid>/stat start time of `pid`: with the pid, the process's identity. */
  pidStart?: string;
  planHash: string;
  vcpus: number;
  memMib: number;
  /** When this run started (ms since the epoch). */
  startedAt?: number;
  /** Restarts since `fc-run up` first started it; consecutive ones drive the backoff. */
  restarts: number;
  consecutive: number;
  /** When a waiting VM is due to start again (ms since the epoch). */
  nextStartAt?: number;
  lastExit?: ExitRecord;
  /** The spec's stop grace period when it started, for `fc-run stop`. */
  stopGraceMs?: number;
}

export function ensureRunDir(runDir: string): void {
  try {
    fs.mkdirSync(runDir, { recursive: true, mode: 0o700 });
  } catch (err) {
    throw new FleetError(`cannot create the run directory ${runDir}: ${(err as NodeJS.ErrnoException).code}; choose another with --run-dir`);
  }
  assertRunDirTrusted(runDir);
}

/**
 * The run directory's files decide which processes get signalled and which files get truncated
 * or replaced: a directory another user can write to (or owns: a squatted /tmp/fc-run-<uid>)
 * would let that user plant state files and symlinks. Refused rather than repaired.
 */
export function assertRunDirTrusted(runDir: string): void {
  let st: fs.Stats;
  try {
    st = fs.statSync(runDir);
  } catch (err) {
    throw new FleetError(`cannot read the run directory ${runDir}: ${(err as NodeJS.ErrnoException).code}; choose another with --run-dir`);
  }
  const uid = process.geteuid?.();
  if (!st.isDirectory()) throw new FleetError(`the run directory ${runDir} is not a directory; choose another with --run-dir`);
  if (uid !== undefined && st.uid !== uid) throw new FleetError(`the run directory ${runDir} belongs to uid ${st.uid}, not to this user (uid ${uid}); remove it or choose another with --run-dir`);
  if ((st.mode & 0o022) !== 0) throw new FleetError(`the run directory ${runDir} is writable by others (mode ${(st.mode & 0o777).toString(8)}); run "chmod go-w ${runDir}" or choose another with --run-dir`);
}

/** Written whole or not at all: a reader never sees half a record, even if the writer is killed. */
export function writeJsonAtomic(file: string, value: unknown): void {
  const tmp = `${file}.${process.pid}.tmp`;
  // 'wx' (O_EXCL) never writes through a symlink left at the temporary name.
  fs.rmSync(tmp, { force: true });
  fs.writeFileSync(tmp, `${JSON.stringify(value)}\n`, { mode: 0o600, flag: 'wx' });
  fs.renameSync(tmp, file);
}

/** Records are small: anything larger, or not a regular file (a FIFO, /dev/zero via a symlink), is not one. */
const MAX_RECORD_BYTES = 1 << 20;

export function readJson<T>(file: string): T | undefined {
  try {
    return JSON.parse(readRegularFile(file, 'run directory record', MAX_RECORD_BYTES, undefined, { noFollow: true }).toString('utf8')) as T;
  } catch {
    return undefined;
  }
}

const VM_STATES: ReadonlySet<string> = new Set(['starting', 'running', 'stopping', 'exited', 'waiting', 'held']);
const isCount = (v: unknown) => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
const optional = (v: unknown, ok: (v: unknown) => boolean) => v === undefined || ok(v);

/**
 * Whether a state file's contents are a VmState for the id its name gives. Its id becomes file
 * names (so "../x" would reach outside the run directory) and its pid gets signalled, so a
 * truncated, hand-edited or planted file is ignored rather than trusted.
 */
export function isVmState(v: unknown, fileId: string): v is VmState {
  if (typeof v !== 'object' || v === null) return false;
  const s = v as Record<string, unknown>;
  return (
    s.id === fileId &&
    isValidId(s.id) &&
    typeof s.state === 'string' &&
    VM_STATES.has(s.state) &&
    typeof s.spec === 'string' &&
    typeof s.dir === 'string' &&
    typeof s.planHash === 'string' &&
    isCount(s.vcpus) &&
    isCount(s.memMib) &&
    isCount(s.restarts) &&
    isCount(s.consecutive) &&
    optional(s.pid, (p) => isCount(p) && (p as number) > 0) &&
    optional(s.pidStart, (p) => typeof p === 'string') &&
    optional(s.startedAt, isCount) &&
    optional(s.nextStartAt, isCount) &&
    optional(s.stopGraceMs, isCount) &&
    optional(s.lastExit, (e) => typeof e === 'object' && e !== null && typeof (e as ExitRecord).reason === 'string')
  );
}

export function readStates(runDir: string): VmState[] {
  let names: string[];
  try {
    names = fs.readdirSync(runDir);
  } catch {
    return [];
  }
  const out: VmState[] = [];
  for (const n of names.filter((n) => n.endsWith('.state.json')).sort()) {
    const s = readJson<unknown>(path.join(runDir, n));
    if (isVmState(s, n.slice(0, -'.state.json'.length))) out.push(s);
  }
  return out;
}

export function writeState(runDir: string, s: VmState): void {
  writeJsonAtomic(vmFiles(runDir, s.id).state, s);
}

/**
 * Whether the VM a state describes is still running: pid and its start time both match, and the
 * process is an fc-run launched for this id (a state naming any other process is not believed).
 */
export function isAlive(s: Pick<VmState, 'id' | 'pid' | 'pidStart'>): boolean {
  if (!isSameProcess(s.pid, s.pidStart)) return false;
  const argv = commandLine(s.pid!);
  return argv !== undefined && isFleetVmCommand(argv, s.id) && isSameProcess(s.pid, s.pidStart);
}

export interface SupervisorRecord {
  pid: number;
  pidStart: string;
  dir: string;
  startedAt: number;
  /** Specs that are skipped (invalid, or sharing an id): path → why. */
  problems: Record<string, string>;
}

export const SUPERVISOR_FILE = 'up.json';

/**
 * Claims the run directory for one `fc-run up`: two supervisors would start every VM twice. A
 * record left by one that died (its pid gone or reused) is taken over.
 */
export function claimRunDir(runDir: string, dir: string): SupervisorRecord {
  const file = path.join(runDir, SUPERVISOR_FILE);
  const other = readJson<SupervisorRecord>(file);
  // The lock decides (two `up` started at the same instant would both pass the record check);
  // the record only says who holds it.
  if (!lockForLife(path.join(runDir, 'up.lock'))) {
    const who = other && isSameProcess(other.pid, other.pidStart) ? ` (pid ${other.pid}, for ${other.dir})` : '';
    throw new FleetError(`another fc-run up${who} is using the run directory ${runDir}; stop it first, or give this one its own --run-dir`);
  }
  if (other && other.pid !== process.pid && isSameProcess(other.pid, other.pidStart)) {
    throw new FleetError(`another fc-run up (pid ${other.pid}, for ${other.dir}) is using the run directory ${runDir}; stop it first, or give this one its own --run-dir`);
  }
  const me: SupervisorRecord = { pid: process.pid, pidStart: processStartTime(process.pid) ?? '', dir, startedAt: Date.now(), problems: {} };
  writeJsonAtomic(file, me);
  return me;
}

export function readSupervisor(runDir: string): (SupervisorRecord & { alive: boolean }) | undefined {
  const r = readJson<SupervisorRecord>(path.join(runDir, SUPERVISOR_FILE));
  return r ? { ...r, alive: isSameProcess(r.pid, r.pidStart) } : undefined;
}
