import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PACKAGE_ROOT } from '../../src/package-root';

// The native vCPU threads (native/vcpu-threads.c through src/kvm/vcpu-threads.ts) without KVM: the
// thread's only system call of its own is ioctl(KVM_RUN) on the fd it is given, so an fd that is
// not a vCPU (an eventfd: ENOTTY) exercises the whole handshake: start, name, result, the group's
// futex, a seccomp filter of the thread's own, quit and join. Each case runs in a child process
// (a seccomp filter cannot be taken back, and a thread must not outlive its test).

const DIST = path.join(PACKAGE_ROOT, 'dist');

function child(body: string): { status: number | null; out: string; err: string } {
  const script = `
    const t = require(${JSON.stringify(path.join(DIST, 'kvm', 'vcpu-threads.js'))});
    const libc = require(${JSON.stringify(path.join(DIST, 'kvm', 'libc.js'))});
    const fs = require('node:fs');
    const out = (v) => process.stdout.write(JSON.stringify(v));
    ${body}`;
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 30_000 });
  return { status: r.status, out: r.stdout, err: r.stderr };
}

/** Waits (polling the group, as the exit thread does) until `ok()` or 5 s. */
const WAIT = `
  function until(group, ok) {
    const end = Date.now() + 5000;
    while (!ok()) { if (Date.now() > end) throw new Error('timed out'); group.wait(group.seq(), 50000); }
  }`;

describe('native vCPU threads', () => {
  it('are built by npm run build (into the native addon)', () => {
    expect(fs.existsSync(path.join(DIST, 'native', 'fcrun.node'))).toBe(true);
  });

  it('start idle with a name, an id and a nice value of their own, enter KVM_RUN once per run(), report its result, and end when told', () => {
    const r = child(`${WAIT}
      const group = t.VcpuThreadGroup.create();
      const fd = libc.sys.eventfd(0, 0);
      const before = group.seq();
      const th = new t.NativeVcpuThread(group, 7, fd, 12 /* SIGUSR2 */, undefined, 10);
      until(group, () => th.state() === t.VCPU_THREAD.IDLE);
      const tid = th.tid();
      const name = fs.readFileSync('/proc/self/task/' + tid + '/comm', 'utf8').trim();
      const niceOf = (task) => Number(fs.readFileSync('/proc/self/task/' + task + '/stat', 'utf8').split(') ')[1].split(' ')[16]);
      const nice = [niceOf(tid), niceOf(process.pid)];
      const seqStarted = group.seq();
      const results = [];
      for (let i = 0; i < 3; i++) {
        const s = group.seq();
        if (!th.run()) throw new Error('not idle');
        until(group, () => th.state() === t.VCPU_THREAD.IDLE && group.seq() !== s);
        results.push(th.result());
      }
      th.quit();
      until(group, () => th.state() === t.VCPU_THREAD.DONE);
      const runWhenDone = th.run(); // only an idle thread enters the guest
      th.join();
      out({ tid, pid: process.pid, name, nice, started: seqStarted !== before, results, runWhenDone, gone: !fs.existsSync('/proc/self/task/' + tid) });`);
    expect(r.err).toBe('');
    const v = JSON.parse(r.out);
    expect(v.tid).toBeGreaterThan(v.pid);
    expect(v.name).toBe('fc_vcpu 7');
    // Its nice value is its own: the process's other threads keep theirs.
    expect(v.nice).toEqual([10, 0]);
    expect(v.started).toBe(true);
    // ioctl(KVM_RUN) on an eventfd: ENOTTY (25), as minus errno.
    expect(v.results).toEqual([-25, -25, -25]);
    expect(v.runWhenDone).toBe(false);
    expect(v.gone).toBe(true);
  });

  it('block every signal but the kick signal', () => {
    const r = child(`${WAIT}
      const group = t.VcpuThreadGroup.create();
      const th = new t.NativeVcpuThread(group, 0, libc.sys.eventfd(0, 0), 12);
      until(group, () => th.state() === t.VCPU_THREAD.IDLE);
      const status = fs.readFileSync('/proc/self/task/' + th.tid() + '/status', 'utf8');
      out(/SigBlk:\\s+([0-9a-f]+)/.exec(status)[1]);
      th.quit(); until(group, () => th.state() === t.VCPU_THREAD.DONE); th.join();`);
    expect(r.err).toBe('');
    const blocked = BigInt(`0x${JSON.parse(r.out)}`);
    expect(blocked & (1n << 11n)).toBe(0n); // SIGUSR2 (12) gets through
    expect(blocked & (1n << 14n)).not.toBe(0n); // SIGTERM (15) goes to another thread
    expect(blocked & (1n << 1n)).not.toBe(0n); // SIGINT (2) too
  });

  it("install a seccomp filter of their own: the thread's KVM_RUN gets the filter's errno, the rest of the process is untouched", () => {
    // Classic BPF: load the syscall number; ioctl (16) -> SECCOMP_RET_ERRNO | EACCES (13); else allow.
    const r = child(`${WAIT}
      const insn = (code, jt, jf, k) => { const b = Buffer.alloc(8); b.writeUInt16LE(code, 0); b[2] = jt; b[3] = jf; b.writeUInt32LE(k >>> 0, 4); return b; };
      const filter = Buffer.concat([insn(0x20, 0, 0, 0), insn(0x15, 0, 1, 16), insn(0x06, 0, 0, 0x00050000 | 13), insn(0x06, 0, 0, 0x7fff0000)]);
      const group = t.VcpuThreadGroup.create();
      const th = new t.NativeVcpuThread(group, 1, libc.sys.eventfd(0, 0), 12, filter);
      until(group, () => th.state() === t.VCPU_THREAD.IDLE);
      const s = group.seq();
      th.run();
      until(group, () => th.state() === t.VCPU_THREAD.IDLE && group.seq() !== s);
      const own = th.result();
      // This thread is not filtered: its own ioctl on the eventfd still gets ENOTTY.
      const mine = libc.sys.ioctlInt(libc.sys.eventfd(0, 0), 0xAE80, 0) < 0 ? libc.errno() : 0;
      th.quit(); until(group, () => th.state() === t.VCPU_THREAD.DONE); th.join();
      out({ own, mine });`);
    expect(r.err).toBe('');
    expect(JSON.parse(r.out)).toEqual({ own: -13, mine: 25 });
  });

  it('a filter the kernel refuses ends the thread, with the reason', () => {
    // A jump past the end of the program: the kernel rejects it (EINVAL).
    const r = child(`${WAIT}
      const bad = Buffer.alloc(8); bad.writeUInt16LE(0x05, 0); bad.writeUInt32LE(5, 4);
      const group = t.VcpuThreadGroup.create();
      const th = new t.NativeVcpuThread(group, 2, libc.sys.eventfd(0, 0), 12, bad);
      until(group, () => th.state() === t.VCPU_THREAD.DONE);
      const e = th.filterError();
      th.join();
      out(e);`);
    expect(r.err).toBe('');
    expect(JSON.parse(r.out)).toBe(22);
  });

  it("tell an event loop through the group's notification fd: one byte per round, again once rearmed", () => {
    const r = child(`${WAIT}
      const fds = Buffer.alloc(8);
      if (libc.sys.pipe2(fds, 0o4000) < 0) throw new Error('pipe2');
      const [rd, wr] = [fds.readInt32LE(0), fds.readInt32LE(4)];
      const drain = () => { let n = 0; const b = Buffer.alloc(64); for (;;) { try { n += fs.readSync(rd, b); } catch { return n; } } };
      // The thread bumps the group's sequence before it writes the byte: a byte that is due may
      // come a moment after the state says so (a busy host), so wait for it, up to 5 s.
      const pause = new Int32Array(new SharedArrayBuffer(4));
      const drainDue = () => { const end = Date.now() + 5000; let n = drain(); while (n === 0 && Date.now() < end) { Atomics.wait(pause, 0, 0, 1); n += drain(); } return n; };
      const group = t.VcpuThreadGroup.create(wr);
      const th = new t.NativeVcpuThread(group, 0, libc.sys.eventfd(0, 0), 12);
      until(group, () => th.state() === t.VCPU_THREAD.IDLE);
      const afterStart = drainDue();
      // Three exits without a rearm: still the one byte (nobody looked yet), so the pipe never fills.
      for (let i = 0; i < 3; i++) { const s = group.seq(); th.run(); until(group, () => th.state() === t.VCPU_THREAD.IDLE && group.seq() !== s); }
      const unarmed = drain();
      group.rearm();
      const s = group.seq(); th.run(); until(group, () => th.state() === t.VCPU_THREAD.IDLE && group.seq() !== s);
      const rearmed = drainDue();
      group.rearm();
      group.poke();
      const poked = drainDue();
      th.quit(); until(group, () => th.state() === t.VCPU_THREAD.DONE); th.join();
      out({ afterStart, unarmed, rearmed, poked });`);
    expect(r.err).toBe('');
    expect(JSON.parse(r.out)).toEqual({ afterStart: 1, unarmed: 0, rearmed: 1, poked: 1 });
  });

  it('a quit always ends the thread: sent while it starts, or again while it ends, it never leaves it waiting or hides DONE', () => {
    // A quit while the thread starts must not be overwritten by its IDLE, and a second quit
    // racing the thread's own end must not overwrite DONE with QUIT: either way whoever waits for
    // DONE would wait for ever.
    const r = child(`
      const group = t.VcpuThreadGroup.create();
      const fd = libc.sys.eventfd(0, 0);
      let stuck = 0;
      for (let i = 0; i < 300; i++) {
        const th = new t.NativeVcpuThread(group, i % 32, fd, 12);
        th.quit();
        for (let spin = 0; spin < (i % 7) * 50; spin++);
        th.quit();
        const end = Date.now() + 2000;
        while (th.state() !== t.VCPU_THREAD.DONE && Date.now() < end) group.wait(group.seq(), 20000);
        if (th.state() !== t.VCPU_THREAD.DONE) stuck++;
        else th.join();
        if (stuck) break;
      }
      out(stuck);`);
    expect(r.err).toBe('');
    expect(JSON.parse(r.out)).toBe(0);
  });

  it('a poke wakes the waiting thread at once, and a wait with nothing to see ends at its timeout', () => {
    const r = child(`
      const group = t.VcpuThreadGroup.create();
      const s0 = group.seq();
      let t0 = Date.now();
      const idle = group.wait(s0, 100000);
      const waited = Date.now() - t0;
      group.poke();
      t0 = Date.now();
      const poked = group.wait(s0, 5000000);
      out({ idleSame: idle === s0, waited, poked: poked !== s0, fast: Date.now() - t0 < 1000 });`);
    expect(r.err).toBe('');
    const v = JSON.parse(r.out);
    expect(v.idleSame).toBe(true);
    expect(v.waited).toBeGreaterThanOrEqual(90);
    expect(v.poked).toBe(true);
    expect(v.fast).toBe(true);
  });

  it('FC_RUN_VCPU_THREADS takes "mixed", "main", "worker" or "native" and refuses anything else; unset, "main" for one vCPU and "mixed" for more; --seccomp-filter turns "main" into "mixed"; which vCPUs get a worker', () => {
    const r = child(`
      const th = require(${JSON.stringify(path.join(DIST, 'vmm', 'threads.js'))});
      const got = [];
      for (const v of [undefined, '', 'mixed', 'main', 'worker', 'native', 'fast']) {
        if (v === undefined) delete process.env.FC_RUN_VCPU_THREADS; else process.env.FC_RUN_VCPU_THREADS = v;
        for (const n of [1, 2]) for (const custom of [false, true]) {
          try { got.push(th.vcpuThreadsMode(n, custom)); } catch (e) { got.push(e.code + ': ' + e.message); }
        }
      }
      const workers = ['mixed', 'main', 'worker', 'native'].map((m) => [1, 2, 32].map((n) => th.workerVcpus(m, n)));
      out({ got, workers });`);
    expect(r.err).toBe('');
    const { got, workers } = JSON.parse(r.out) as { got: string[]; workers: number[][] };
    // Per setting: 1 vCPU, 1 vCPU with --seccomp-filter, 2 vCPUs, 2 vCPUs with --seccomp-filter.
    expect(got.slice(0, 24)).toEqual([
      ...['main', 'mixed', 'mixed', 'mixed'],
      ...['main', 'mixed', 'mixed', 'mixed'],
      ...['mixed', 'mixed', 'mixed', 'mixed'],
      ...['main', 'mixed', 'main', 'mixed'],
      ...['worker', 'worker', 'worker', 'worker'],
      ...['native', 'native', 'native', 'native'],
    ]);
    for (const e of got.slice(24)) expect(e).toMatch(/^bad-environment: FC_RUN_VCPU_THREADS is "fast"/);
    // mixed: vCPU 0 alone on a worker; main (vCPU 0 on the main thread) and native: none; worker: every vCPU.
    expect(workers).toEqual([[1, 1, 1], [0, 0, 0], [1, 2, 32], [0, 0, 0]]);
  });
});
