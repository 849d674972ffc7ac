import { ChildProcess, execFile, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { processStartTime } from './proc';
import { Action, Desired, Known, reconcile } from './reconcile';
import { claimRunDir, ensureRunDir, ExitRecord, FleetError, isAlive, readJson, readStates, SupervisorRecord, SUPERVISOR_FILE, vmFiles, writeJsonAtomic, writeState } from './rundir';
import { readHostCpu } from '../boot';
import type { HostCpu } from '../boot';
import { scanDir, ScanCache } from './scan';
import { readTail, rotateIfLarge } from './serial-log';
import { DEFAULT_SETTINGS, FleetSettings, healthyRunMs, restartDelay, wantsRestart } from './settings';
import { stopVmProcess } from './stop';
import { FC_RUN_BIN, fcRunChildEnv } from '../package-root';
import { SIGSYS_LINE_PREFIX } from '../kvm/sigsys';

export interface FleetEvent {
  event: 'started' | 'adopted' | 'exited' | 'waiting' | 'stopping' | 'stopped' | 'forgotten' | 'skipped' | 'fixed' | 'git-pull' | 'warning';
  id?: string;
  message: string;
  [field: string]: unknown;
}

export interface SupervisorOptions {
  /** The directory of specs (absolute). */
  dir: string;
  runDir: string;
  /** Re-reads the whole directory this often, so a missed watch event is never a lost change. */
  checkIntervalMs: number;
  /** Runs `git pull --ff-only` in `dir` this often (dir must be a git work tree). */
  gitPullIntervalMs?: number;
  /** How often adopted VMs are checked for having exited, and serial logs for size. */
  pollMs?: number;
  /** The fc-run launcher to start VMs with (default: this package's bin/fc-run). */
  fcRunBin?: string;
  report(e: FleetEvent): void;
}

interface Vm extends Known {
  child?: ChildProcess;
  settings: FleetSettings;
}

const FULL_EVERY = 12;
const DEFAULT_BIN = FC_RUN_BIN;

/**
 * `fc-run up`: keeps one fc-run process per spec in a directory running, and the host matching
 * the directory as it changes. The VMs are not its children in any lasting sense: they run in
 * their own process groups, outlive the supervisor, and are adopted again (by pid and process
 * start time) when it comes back.
 */
export class Supervisor {
  private readonly vms = new Map<string, Vm>();
  private desired = new Map<string, Desired>();
  private reportedProblems = new Map<string, string>();
  private timers: NodeJS.Timeout[] = [];
  private watcher?: fs.FSWatcher;
  private rescanSoon?: NodeJS.Timeout;
  private wakeAt?: { at: number; timer: NodeJS.Timeout };
  private record?: SupervisorRecord;
  private stopped = false;
  private pulling = false;
  private readonly cache: ScanCache = new Map();
  private host?: HostCpu;
  private scans = 0;

  constructor(private readonly o: SupervisorOptions) {}

  /** Claims the run directory, adopts what still runs, converges once, then watches. */
  start(): void {
    ensureRunDir(this.o.runDir);
    this.record = claimRunDir(this.o.runDir, this.o.dir);
    this.adopt();
    this.rescan();
    try {
      this.watcher = fs.watch(this.o.dir, { recursive: true }, () => this.scheduleRescan());
      this.watcher.on('error', (err) => this.o.report({ event: 'warning', message: `watching ${this.o.dir} failed (${err.message}); changes are found by the periodic check only` }));
    } catch (err) {
      this.o.report({ event: 'warning', message: `cannot watch ${this.o.dir} (${(err as Error).message}); changes are found by the periodic check only` });
    }
    this.every(this.o.checkIntervalMs, () => this.rescan());
    this.every(this.o.pollMs ?? 1000, () => this.poll());
    if (this.o.gitPullIntervalMs !== undefined) this.every(this.o.gitPullIntervalMs, () => this.gitPull());
  }

  /** Stops watching and leaves every VM running, its state on disk for the next `fc-run up`. */
  close(): void {
    this.stopped = true;
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
    if (this.rescanSoon) clearTimeout(this.rescanSoon);
    if (this.wakeAt) clearTimeout(this.wakeAt.timer);
    this.watcher?.close();
    for (const vm of this.vms.values()) {
      vm.child?.removeAllListeners('exit');
      vm.child?.unref();
    }
  }

  /** What the supervisor knows now, for tests and `ps`-like views. */
  snapshot(): Known[] {
    return [...this.vms.values()].map(({ child: _child, settings: _settings, ...rest }) => ({ ...rest }));
  }

  private every(ms: number, fn: () => void): void {
    const t = setInterval(fn, ms);
    t.unref();
    this.timers.push(t);
  }

  private scheduleRescan(): void {
    if (this.stopped || this.rescanSoon) return;
    // Editors write a file in several steps: one look after the burst settles.
    this.rescanSoon = setTimeout(() => {
      this.rescanSoon = undefined;
      this.rescan();
    }, 100);
  }

  private adopt(): void {
    for (const s of readStates(this.o.runDir)) {
      const vm: Vm = { ...s, settings: { ...DEFAULT_SETTINGS, stopGraceMs: s.stopGraceMs ?? DEFAULT_SETTINGS.stopGraceMs } };
      this.vms.set(s.id, vm);
      if (s.state === 'running' || s.state === 'starting' || s.state === 'stopping') {
        if (isAlive(s)) {
          vm.state = 'running';
          vm.stoppedBy = undefined;
          this.o.report({ event: 'adopted', id: s.id, message: `${s.id}: adopted (pid ${s.pid})`, pid: s.pid });
        } else {
          // It ended while no supervisor was watching: the exit record says how, if fc-run wrote one.
          this.exited(vm, undefined, undefined, s.state === 'stopping');
        }
      }
    }
  }

  /**
   * Reads the directory again and converges. Unchanged specs come from the cache, except on every
   * FULL_EVERY-th call: then everything is validated again (a drive file removed, say).
   */
  rescan(): void {
    if (this.stopped) return;
    this.host ??= readHostCpu();
    const full = this.scans++ % FULL_EVERY === 0;
    // Recreated if someone removed it while we ran (mode 0700, as at start).
    try {
      fs.mkdirSync(this.o.runDir, { recursive: true, mode: 0o700 });
    } catch {
      // Reported by the file operations that then fail.
    }
    this.desired = scanDir(this.o.dir, this.o.runDir, this.host, full ? undefined : this.cache);
    if (full) this.cache.clear();
    this.reportProblems();
    this.converge();
  }

  private reportProblems(): void {
    const now = new Map<string, string>();
    for (const d of this.desired.values()) if (d.kind === 'invalid') now.set(d.spec, d.problem);
    for (const [spec, problem] of now) {
      if (this.reportedProblems.get(spec) === problem) continue;
      const id = [...this.desired.values()].find((d) => d.spec === spec)?.id;
      const running = id !== undefined && this.vms.get(id)?.state === 'running';
      this.o.report({ event: 'skipped', id, message: `${path.relative(this.o.dir, spec)}: ${problem}; skipped until fixed${running ? ' (its VM keeps running)' : ''}`, spec, problem });
    }
    for (const spec of this.reportedProblems.keys()) {
      if (!now.has(spec)) this.o.report({ event: 'fixed', message: `${path.relative(this.o.dir, spec)}: valid again`, spec });
    }
    const changed = now.size !== this.reportedProblems.size || [...now].some(([s, p]) => this.reportedProblems.get(s) !== p);
    this.reportedProblems = now;
    if (this.record && changed) {
      this.record.problems = Object.fromEntries(now);
      try {
        writeJsonAtomic(path.join(this.o.runDir, SUPERVISOR_FILE), this.record);
      } catch (err) {
        this.o.report({ event: 'warning', message: `cannot save ${SUPERVISOR_FILE} in ${this.o.runDir}: ${(err as Error).message}` });
      }
    }
  }

  /** Runs what reconcile decides against the remembered state (no directory read). */
  converge(): void {
    if (this.stopped) return;
    // A changed "fc-run" section applies without a restart: it is not part of the plan.
    for (const d of this.desired.values()) {
      const vm = this.vms.get(d.id);
      if (d.kind === 'valid' && vm && vm.planHash === d.planHash) vm.settings = d.settings;
    }
    const holds = new Map<string, string>();
    for (const id of new Set([...this.desired.keys(), ...this.vms.keys()])) {
      const hold = readJson<{ planHash: string }>(vmFiles(this.o.runDir, id).hold);
      if (hold) holds.set(id, hold.planHash);
    }
    for (const a of reconcile(this.desired, this.vms, holds, Date.now())) {
      // A failing file operation (the run directory removed, a full disk) must not end `fc-run up`
      // from inside a timer: it is reported and tried again on the next check.
      try {
        this.act(a);
      } catch (err) {
        this.o.report({ event: 'warning', id: a.id, message: `${a.id}: cannot ${a.kind} it: ${(err as Error).message}; trying again at the next check` });
      }
    }
    this.scheduleWake();
  }

  private act(a: Action): void {
    switch (a.kind) {
      case 'start':
        return this.launch(a.id, a.why);
      case 'stop':
        return this.stopVm(a.id, a.why);
      case 'forget':
        return this.forget(a.id);
      case 'skip':
        return;
    }
  }

  private launch(id: string, why: string): void {
    const want = this.desired.get(id);
    if (want?.kind !== 'valid') return;
    const f = vmFiles(this.o.runDir, id);
    const prev = this.vms.get(id);
    const samePlan = prev?.planHash === want.planHash;
    for (const stale of [f.sock, f.exit, f.hold, f.output]) fs.rmSync(stale, { force: true });
    // Created afresh ('wx'): a symlink planted at the log's name is never written through.
    const out = fs.openSync(f.output, 'wx', 0o600);
    let child: ChildProcess;
    try {
      child = spawn(process.execPath, [this.o.fcRunBin ?? DEFAULT_BIN, 'run', want.spec, `--api-sock=${f.sock}`, `--id=${id}`, `--serial-out=${f.serial}`, `--exit-record=${f.exit}`], {
        // '--opt=value': an id such as "-x" or "--help" (from a spec named -x.json) stays a value.
        // Its own process group: a Ctrl-C meant for `fc-run up` does not reach the VMs.
        detached: true,
        stdio: ['ignore', out, out],
        env: fcRunChildEnv(),
      });
    } finally {
      fs.closeSync(out);
    }
    const vm: Vm = {
      id,
      spec: want.spec,
      dir: this.o.dir,
      state: 'running',
      pid: child.pid,
      pidStart: child.pid !== undefined ? processStartTime(child.pid) : undefined,
      planHash: want.planHash,
      vcpus: want.vcpus,
      memMib: want.memMib,
      startedAt: Date.now(),
      restarts: samePlan && prev ? prev.restarts + (why === 'restart' ? 1 : 0) : 0,
      consecutive: samePlan && prev && why === 'restart' ? prev.consecutive : 0,
      lastExit: prev?.lastExit,
      stopGraceMs: want.settings.stopGraceMs,
      settings: want.settings,
      child,
    };
    this.vms.set(id, vm);
    child.on('error', (err) => {
      if (this.vms.get(id) === vm) this.exited(vm, null, undefined, false, `cannot start fc-run: ${err.message}`);
    });
    child.on('exit', (code, signal) => {
      if (this.vms.get(id) === vm && vm.state !== 'exited' && vm.state !== 'waiting' && vm.state !== 'held') this.exited(vm, code, signal ?? undefined, vm.state === 'stopping');
    });
    child.unref();
    writeState(this.o.runDir, this.persisted(vm));
    this.o.report({ event: 'started', id, message: `${id}: started${why === 'new' ? '' : ` (${why})`}, pid ${child.pid}`, pid: child.pid, why });
  }

  /** Saves a VM's state; a failure is reported, not thrown (this runs from child and timer events). */
  private save(vm: Vm): void {
    try {
      writeState(this.o.runDir, this.persisted(vm));
    } catch (err) {
      this.o.report({ event: 'warning', id: vm.id, message: `${vm.id}: cannot save its state in ${this.o.runDir}: ${(err as Error).message}` });
    }
  }

  private persisted(vm: Vm): Known {
    const { child: _c, settings: _s, ...rest } = vm;
    return rest;
  }

  /** Records how a VM's fc-run ended and when (if ever) it is due to start again. */
  private exited(vm: Vm, code: number | null | undefined, signal: string | undefined, byStop: boolean, why?: string): void {
    const f = vmFiles(this.o.runDir, vm.id);
    const rec = readJson<ExitRecord & { pid?: number }>(f.exit);
    const own = rec && (rec.pid === undefined || rec.pid === vm.pid) ? rec : undefined;
    const now = Date.now();
    const reason = why ?? own?.reason ?? (signal === 'SIGSYS' ? sigsysReason(f.output) : signal ? `killed by ${signal}` : code !== undefined && code !== null ? `exited with status ${code}` : 'ended without an exit record (killed with SIGKILL?)');
    vm.lastExit = { code: own?.code ?? code ?? null, signal, reason, time: new Date(now).toISOString() };
    vm.child = undefined;
    const hold = readJson<{ planHash: string }>(f.hold);
    if (hold?.planHash === vm.planHash) {
      vm.state = 'held';
      vm.stoppedBy = 'user';
    } else if (byStop) {
      vm.state = 'exited';
      vm.stoppedBy = vm.stoppedBy ?? 'supervisor';
    } else {
      const ran = now - (vm.startedAt ?? now);
      vm.consecutive = ran >= healthyRunMs(vm.settings) ? 1 : vm.consecutive + 1;
      if (wantsRestart(vm.settings.restart, vm.lastExit.code)) {
        vm.state = 'waiting';
        vm.nextStartAt = now + restartDelay(vm.consecutive, vm.settings);
      } else vm.state = 'exited';
    }
    this.save(vm);
    const code_ = vm.lastExit.code === null ? (signal ?? 'no status') : `status ${vm.lastExit.code}`;
    const next = vm.state === 'waiting' ? `; restarting in ${vm.nextStartAt! - now} ms` : '';
    this.o.report({ event: 'exited', id: vm.id, message: `${vm.id}: fc-run exited (${code_}): ${reason}${next}`, code: vm.lastExit.code, reason, next_start_ms: vm.state === 'waiting' ? vm.nextStartAt! - now : undefined });
    if (!this.stopped) setImmediate(() => this.converge());
  }

  private stopVm(id: string, why: 'changed' | 'removed'): void {
    const vm = this.vms.get(id);
    if (!vm || vm.pid === undefined) return;
    vm.state = 'stopping';
    vm.stoppedBy = 'supervisor';
    writeState(this.o.runDir, this.persisted(vm));
    const grace = vm.stopGraceMs ?? vm.settings.stopGraceMs;
    this.o.report({ event: 'stopping', id, message: `${id}: stopping (spec ${why}): Ctrl-Alt-Del, then SIGTERM after ${grace} ms`, why });
    void stopVmProcess(vm.pid, vm.pidStart ?? '', vmFiles(this.o.runDir, id).sock, grace).then((how) => {
      this.o.report({ event: 'stopped', id, message: `${id}: stopped (${how})`, how });
      // A VM we did not start gives no exit event: record its end here.
      if (this.vms.get(id) === vm && vm.state === 'stopping' && !vm.child) this.exited(vm, undefined, undefined, true);
    });
  }

  private forget(id: string): void {
    const f = vmFiles(this.o.runDir, id);
    for (const file of [f.state, f.sock, f.exit, f.hold]) fs.rmSync(file, { force: true });
    this.vms.delete(id);
    this.o.report({ event: 'forgotten', id, message: `${id}: spec removed; VM gone (its serial log stays in ${this.o.runDir})` });
  }

  /** Adopted VMs cannot be waited on: look whether they still run. Also caps serial logs. */
  private poll(): void {
    for (const vm of this.vms.values()) {
      if (!vm.child && (vm.state === 'running' || vm.state === 'starting') && !isAlive(vm)) this.exited(vm, undefined, undefined, false);
      if (vm.state === 'running' || vm.state === 'stopping') {
        const f = vmFiles(this.o.runDir, vm.id);
        try {
          rotateIfLarge(f.serial, f.serialOld, vm.settings.serialLogMaxBytes);
        } catch (err) {
          this.o.report({ event: 'warning', id: vm.id, message: `${vm.id}: cannot rotate ${f.serial}: ${(err as Error).message}` });
        }
      }
    }
  }

  /** A timer for the earliest backoff that ends, so restarts happen on time, not on the next poll. */
  private scheduleWake(): void {
    const due = [...this.vms.values()].filter((v) => v.state === 'waiting' && v.nextStartAt !== undefined).map((v) => v.nextStartAt!);
    if (due.length === 0 || this.stopped) return;
    const at = Math.min(...due);
    if (this.wakeAt && this.wakeAt.at <= at) return;
    if (this.wakeAt) clearTimeout(this.wakeAt.timer);
    const timer = setTimeout(() => {
      this.wakeAt = undefined;
      this.converge();
    }, Math.max(0, at - Date.now()));
    this.wakeAt = { at, timer };
  }

  private gitPull(): void {
    if (this.pulling || this.stopped) return;
    this.pulling = true;
    execFile('git', ['-C', this.o.dir, 'pull', '--ff-only', '--quiet'], { timeout: 120_000 }, (err, _out, errText) => {
      this.pulling = false;
      if (err) this.o.report({ event: 'git-pull', message: `git pull --ff-only in ${this.o.dir} failed: ${(errText || err.message).trim()}`, ok: false });
      else this.scheduleRescan();
    });
  }
}

/** Refuses --git-pull-interval for a directory that is not a git work tree. */
export function assertGitWorkTree(dir: string): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile('git', ['-C', dir, 'rev-parse', '--is-inside-work-tree'], (err, out) => {
      if (err || out.trim() !== 'true') reject(new FleetError(`--git-pull-interval: ${dir} is not a git work tree (git rev-parse says: ${err ? err.message.split('\n')[0] : out.trim()})`));
      else resolve();
    });
  });
}

/**
 * Why a VM's fc-run died of SIGSYS: the line its SIGSYS handler wrote to its log (stderr) naming
 * the call, kept here because a restart starts that log afresh.
 */
function sigsysReason(log: string): string {
  let tail = '';
  try {
    tail = readTail(log, 64 * 1024).toString('utf8');
  } catch {
    // an unreadable log: the generic reason
  }
  const line = tail.split('\n').reverse().find((l) => l.startsWith(SIGSYS_LINE_PREFIX));
  return line ? `killed by SIGSYS (seccomp): ${line.slice(SIGSYS_LINE_PREFIX.length)}` : 'killed by SIGSYS (seccomp): a system call its seccomp filter does not allow';
}
