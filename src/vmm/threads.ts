import type { Worker } from 'node:worker_threads';
import { isTerminal } from '../terminal';
import * as path from 'node:path';
import { writeSync } from 'node:fs';
import { PACKAGE_ROOT, VCPU_WORKER_SCRIPT } from '../package-root';
import { hardExit } from '../kvm/libc';
import { FcRunError } from '../errors';

/**
 * What a thread runs (`new Worker(code, { eval: true })`) to load its bundle (dist/bundle/, one
 * file) compiled from V8's code cache, as bin/fc-run loads the CLI's; the bundle's own requires
 * (node: built-ins) resolve from the package. Tests running TypeScript sources start the
 * built bundles too.
 */
export function threadLoaderCode(bundle: string): string {
  const loader = JSON.stringify(path.join(PACKAGE_ROOT, 'dist', 'code-cache.js'));
  const file = JSON.stringify(bundle);
  return `require(${loader}).loadBundle(${file}, require('node:module').createRequire(${file}));`;
}

/** Starts a thread running `bundle`; every thread fc-run starts goes through here. */
export function startThread(bundle: string, name: string, workerData?: object): Worker {
  exitWithoutThreadTeardown();
  // The thread's standard output and error (fc-run's threads write none of their own; Node's
  // warnings would) are passed on with plain writes: Node's default pipes them into
  // process.stdout and process.stderr, building those streams (and net, for a pipe) in every launch.
  // Loaded with the first thread: a one-vCPU VM without devices starts none.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { Worker } = require('node:worker_threads') as typeof import('node:worker_threads');
  const w = new Worker(threadLoaderCode(bundle), { eval: true, name, workerData, stdout: true, stderr: true });
  w.stdout.on('data', (chunk: Buffer) => passOn(1, chunk));
  w.stderr.on('data', (chunk: Buffer) => passOn(2, chunk));
  return w;
}

/** Writes all of `chunk` to `fd`; a reader that has gone loses it, as it would anyway. */
function passOn(fd: number, chunk: Buffer): void {
  try {
    for (let off = 0; off < chunk.length; ) off += writeSync(fd, chunk, off);
  } catch {
    // EPIPE, EBADF: nowhere to write it
  }
}

let hardExitInstalled = false;

/**
 * From the first thread on, process.exit ends the process as before ('exit' listeners run: the
 * exit record, the last metrics line) but without Node's teardown of the threads. That teardown
 * stops each thread by terminating its JavaScript and then joins it. A thread stopped that way
 * while it was inside a koffi call (koffi was fc-run's FFI before its own addon) aborted the whole
 * process with a fatal error (SIGABRT) instead of giving the exit code: seen when a spec was refused
 * or a signal came while a vCPU thread started ahead of need was still loading, and reproduced by
 * exiting at random moments after starting threads. A thread blocked in a system
 * call (KVM_RUN, epoll_wait) also holds up the join. So Node's last step, `process.reallyExit`,
 * becomes libc's `_exit`: the kernel ends every thread at once, and nothing is lost, since fc-run
 * writes its output and files synchronously. Every process.exit is covered, wherever it is called.
 */
function exitWithoutThreadTeardown(): void {
  if (hardExitInstalled) return;
  hardExitInstalled = true;
  const proc = process as unknown as { reallyExit: (code?: number) => void };
  const nodeExit = proc.reallyExit.bind(process);
  proc.reallyExit = (c?: number) => {
    // Node's own exit puts the terminal back as it found it; _exit does not (a crash while the
    // serial console holds the terminal raw would leave it raw).
    try {
      if (isTerminal(0) && (process.stdin as { isRaw?: boolean }).isRaw) process.stdin.setRawMode(false);
    } catch {
      // not a terminal any more: nothing to put back
    }
    try {
      hardExit(c ?? 0);
    } catch {
      nodeExit(c); // the native addon could not be loaded: Node's own way out
    }
  };
}

/**
 * vCPU threads started ahead of need. A new worker takes tens of milliseconds to load its
 * modules; starting it while the spec is validated and planned takes that off the boot path.
 * Idle threads are unref'd so they never keep fc-run alive.
 */
const idle: Worker[] = [];
/** When each thread has loaded everything it will run (its 'loaded' message). */
const loaded = new WeakMap<Worker, Promise<void>>();

function spawn(): Worker {
  const w = startThread(VCPU_WORKER_SCRIPT, 'vcpu');
  w.unref();
  loaded.set(
    w,
    new Promise<void>((resolve, reject) => {
      const onMessage = (m: { kind?: string }) => {
        if (m?.kind !== 'loaded') return;
        w.off('message', onMessage);
        w.off('error', reject);
        resolve();
      };
      w.on('message', onMessage);
      w.once('error', reject);
    }),
  );
  return w;
}

/**
 * `count` idle vCPU threads, each with everything it runs loaded: waited for before the seccomp
 * filters are installed, so that no thread starts, opens its bundle or loads a library under them.
 */
export async function vcpuThreadsLoaded(count: number): Promise<void> {
  while (idle.length < count) idle.push(spawn());
  await Promise.all(idle.slice(0, count).map((w) => loaded.get(w)));
}

/** Starts the worker threads that `count` vCPUs will take, ahead of need (see vcpuThreadsMode). */
export function prewarmVcpuThreads(count: number, customFilters = false): void {
  // Native vCPU threads need no worker: the main thread handles their exits.
  const workers = workerVcpus(vcpuThreadsMode(count, customFilters), count);
  while (idle.length < workers) idle.push(spawn());
}

/** A vCPU thread waiting for its 'start' message. */
export function takeVcpuThread(): Worker {
  const w = idle.shift() ?? spawn();
  w.ref();
  return w;
}

/**
 * How vCPUs run: 'worker', a worker thread (a V8 isolate, ~9 MiB) per vCPU calling KVM_RUN itself
 * and handling its own exits (~10 µs each); 'native', a native thread per vCPU
 * (native/vcpu-threads.c, ~0.2 MiB) whose exits the main thread handles (a hand-off each way,
 * 30-90 µs); 'mixed', vCPU 0 on a worker and the others native; 'main', vCPU 0 on the main thread
 * itself (it enters the guest between its event loop's callbacks, and a watcher thread gets it out
 * whenever the loop has work) and the others native. In a Linux boot vCPU 0 makes ~94 % of the
 * exits that reach fc-run (53,186 of 56,496 with 2 vCPUs): 'mixed' and 'main' keep those fast,
 * while each further vCPU costs a thread instead of an isolate.
 */
export type VcpuThreadsMode = 'worker' | 'native' | 'mixed' | 'main';

/**
 * Whether the serial console's hot exits are handled in C right after KVM_RUN (HotExits in
 * src/kvm/vcpu-threads.ts; where the native library is built): FC_RUN_HOT_EXITS unset, empty or
 * "native"; "js" handles every exit in JavaScript (for comparisons: the results are the same).
 */
export function hotExitsWanted(): boolean {
  const v = process.env.FC_RUN_HOT_EXITS;
  if (v === undefined || v === '' || v === 'native') return true;
  if (v === 'js') return false;
  throw new FcRunError('bad-environment', `FC_RUN_HOT_EXITS is "${v}": it can be "native" (the serial console's line status reads and transmit writes handled in C, the default) or "js" (every exit handled in JavaScript)`);
}

/**
 * How the vCPUs of a VM with `count` of them run (MicroVmOptions.vcpuThreads):
 * FC_RUN_VCPU_THREADS=worker|native|mixed|main, or unset or empty: 'main' for one vCPU (no worker
 * thread at all: ~9 MiB and ~25 ms of CPU less per launch) and 'mixed' for more, which keeps vCPU
 * 0 on a worker at the native threads' level (vcpuThreadNice: below the main thread only when the
 * VM has more vCPUs than the host CPUs; vCPUs wait on each other). `customFilters` (--seccomp-filter): 'main'
 * becomes 'mixed', since a vCPU on the main thread would run under the file's api filter.
 */
export function vcpuThreadsMode(count: number, customFilters = false): VcpuThreadsMode {
  const v = process.env.FC_RUN_VCPU_THREADS;
  let mode: VcpuThreadsMode;
  if (v === undefined || v === '') mode = count === 1 ? 'main' : 'mixed';
  else if (v === 'worker' || v === 'native' || v === 'mixed' || v === 'main') mode = v;
  else {
    throw new FcRunError(
      'bad-environment',
      `FC_RUN_VCPU_THREADS is "${v}": it can be "mixed" (vCPU 0 on a worker thread, the others on native threads), "main" (vCPU 0 on the main thread, the others on native threads), "worker" (a worker thread per vCPU) or "native" (a native thread per vCPU); unset, fc-run uses "main" for one vCPU and "mixed" for more`,
    );
  }
  return mode === 'main' && customFilters ? 'mixed' : mode;
}

/** Which of `count` vCPUs (ids 0 to count - 1) run on a worker of their own in `mode`; the rest are native (or, in 'main' mode, vCPU 0 on the main thread). */
export function workerVcpus(mode: VcpuThreadsMode, count: number): number {
  return mode === 'worker' ? count : mode === 'mixed' ? Math.min(1, count) : 0;
}
