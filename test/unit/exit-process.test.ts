import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { BUNDLE_PREFIX, BUNDLE_SUFFIX } from '../../src/code-cache';
import { PACKAGE_ROOT } from '../../src/package-root';

// How fc-run ends once it has started threads (src/vmm/threads.ts: from the first thread
// started with startThread, process.exit ends with _exit). Node's own process.exit terminates
// each thread's JavaScript and joins it: a thread blocked in a system call (a vCPU in KVM_RUN)
// holds the exit up, and a thread inside a native call could abort the process (with koffi, the
// FFI fc-run used before its own addon, it did: SIGABRT instead of the exit code). Each case runs a
// real process with a thread doing just that, through fc-run's native addon.

const THREADS = path.join(PACKAGE_ROOT, 'dist', 'vmm', 'threads.js');
const ADDON = path.join(PACKAGE_ROOT, 'dist', 'native', 'fcrun.node');
let dir: string;

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fc-run-exit-'));
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/** A thread bundle (the format src/code-cache.ts loads) that says 'go' and then runs `body`. */
function bundle(name: string, body: string): string {
  const file = path.join(dir, `${name}.js`);
  const code = `const addon = { exports: {} }; process.dlopen(addon, ${JSON.stringify(ADDON)}); const c = addon.exports; require('node:worker_threads').parentPort.postMessage('go'); ${body}`;
  fs.writeFileSync(file, `${BUNDLE_PREFIX}${code}${BUNDLE_SUFFIX}`);
  return file;
}

interface Ended {
  status: number | null;
  signal: string | null;
  stderr: string;
  marker: string | undefined;
}

/**
 * Starts `thread` (`how` 'fc-run': with fc-run's startThread; 'node': as a plain Worker, so
 * Node's own exit applies), waits for its 'go', then ends the process with process.exit(2). An 'exit' listener writes a
 * marker, as fc-run's exit record and last metrics line do. Killed after `limitMs`.
 */
function endWhileThreadRuns(thread: string, how: 'fc-run' | 'node', limitMs = 20_000): Promise<Ended> {
  const marker = path.join(dir, `marker-${Math.random().toString(36).slice(2)}`);
  const script = `
    const t = require(${JSON.stringify(THREADS)});
    const w = ${how === 'fc-run' ? `t.startThread(${JSON.stringify(thread)}, 'test')` : `new (require('node:worker_threads').Worker)(t.threadLoaderCode(${JSON.stringify(thread)}), { eval: true })`};
    process.on('exit', (c) => require('node:fs').writeFileSync(${JSON.stringify(marker)}, 'exit ' + c));
    w.once('message', () => setTimeout(() => process.exit(2), 5));`;
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), limitMs);
    child.on('close', (status, signal) => {
      clearTimeout(timer);
      const m = fs.existsSync(marker) ? fs.readFileSync(marker, 'utf8') : undefined;
      resolve({ status, signal, stderr, marker: m });
    });
  });
}

describe('ending fc-run while its threads run', () => {
  it('a thread in the middle of native calls: exit code 2 and the exit listeners ran', async () => {
    const busy = bundle('busy', `for (let i = 0; ; i++) c.close(-1);`);
    for (let i = 0; i < 5; i++) {
      const r = await endWhileThreadRuns(busy, 'fc-run');
      expect({ status: r.status, signal: r.signal, marker: r.marker }).toEqual({ status: 2, signal: null, marker: 'exit 2' });
    }
  }, 120_000);

  it('a thread blocked in a system call (as a vCPU in KVM_RUN is): fc-run still ends at once with its code', async () => {
    // A read from a pipe nobody writes to never returns; Node's process.exit would join this thread forever.
    const blocked = bundle('blocked', `const fds = new Int32Array(2); c.pipe2(fds, 0); c.read(fds[0], Buffer.alloc(1), 1);`);
    const r = await endWhileThreadRuns(blocked, 'fc-run');
    expect({ status: r.status, signal: r.signal, marker: r.marker }).toEqual({ status: 2, signal: null, marker: 'exit 2' });
    const node = await endWhileThreadRuns(blocked, 'node', 3000);
    expect(node.signal).toBe('SIGKILL'); // still running when the test gave up on it
  }, 120_000);

  it('without threads, process.exit is left as it is', async () => {
    const r = await new Promise<{ status: number | null; out: string }>((resolve) => {
      const script = `require(${JSON.stringify(THREADS)}); const before = process.reallyExit; process.on('exit', () => process.stdout.write(String(process.reallyExit === before))); process.exit(3);`;
      const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
      let out = '';
      child.stdout.on('data', (d) => (out += d));
      child.on('close', (status) => resolve({ status, out }));
    });
    expect(r).toEqual({ status: 3, out: 'true' });
  });
});
