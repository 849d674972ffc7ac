import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { buildFilter, DENIED_SYSCALLS, SECCOMP_RET_ALLOW, SECCOMP_RET_KILL_PROCESS } from '../../src/kvm/seccomp';

/** A classic-BPF interpreter for the instructions the filter uses, run on a seccomp_data. */
function run(filter: Buffer, data: { nr: number; arch?: number; args?: number[] }): number {
  const mem = Buffer.alloc(64);
  mem.writeInt32LE(data.nr, 0);
  mem.writeUInt32LE(data.arch ?? 0xc000003e, 4);
  (data.args ?? []).forEach((a, i) => mem.writeBigUInt64LE(BigInt(a), 16 + i * 8));
  let acc = 0;
  for (let pc = 0, steps = 0; steps < 1000; steps++) {
    if (pc * 8 >= filter.length) throw new Error('ran off the end of the program');
    const code = filter.readUInt16LE(pc * 8);
    const jt = filter[pc * 8 + 2];
    const jf = filter[pc * 8 + 3];
    const k = filter.readUInt32LE(pc * 8 + 4);
    if (code === 0x20) acc = mem.readUInt32LE(k);
    else if (code === 0x15) pc += acc === k ? jt : jf;
    else if (code === 0x45) pc += (acc & k) !== 0 ? jt : jf;
    else if (code === 0x35) pc += acc >>> 0 >= k >>> 0 ? jt : jf;
    else if (code === 0x06) return k;
    else throw new Error(`unexpected BPF code 0x${code.toString(16)}`);
    pc++;
  }
  throw new Error('no return');
}

describe('seccomp filter program', () => {
  const f = buildFilter();
  test('every refused call kills the process; ordinary calls pass', () => {
    for (const [name, nr] of Object.entries(DENIED_SYSCALLS)) expect([name, run(f, { nr }) >>> 0]).toEqual([name, SECCOMP_RET_KILL_PROCESS]);
    for (const nr of [0, 1, 3, 7, 9, 10, 11, 16, 17, 18, 202, 232, 281, 290]) expect(run(f, { nr }) >>> 0).toBe(SECCOMP_RET_ALLOW); // read, write, close, poll, mmap, mprotect, munmap, ioctl, pread, pwrite, futex, epoll_wait, epoll_pwait, eventfd2
  });
  test('threads yes, processes and new namespaces no; clone3 and io_uring say ENOSYS; only Unix sockets; no TIOCSTI', () => {
    expect(run(f, { nr: 56, args: [0x3d0f00] }) >>> 0).toBe(SECCOMP_RET_ALLOW); // pthread_create's flags
    expect(run(f, { nr: 56, args: [0x1200011] }) >>> 0).toBe(SECCOMP_RET_KILL_PROCESS); // fork's flags
    expect(run(f, { nr: 56, args: [0x3d0f00 | 0x40000000] }) >>> 0).toBe(SECCOMP_RET_KILL_PROCESS); // a thread in a new netns
    for (const nr of [435, 425, 426, 427]) expect(run(f, { nr }) >>> 0).toBe(0x00050000 | 38);
    for (const nr of [41, 53]) {
      expect(run(f, { nr, args: [1, 1] }) >>> 0).toBe(SECCOMP_RET_ALLOW);
      for (const domain of [2, 10, 16, 17]) expect(run(f, { nr, args: [domain, 1] }) >>> 0).toBe(SECCOMP_RET_KILL_PROCESS);
    }
    expect(run(f, { nr: 16, args: [0, 0xae80] }) >>> 0).toBe(SECCOMP_RET_ALLOW); // KVM_RUN
    expect(run(f, { nr: 16, args: [0, 0x5401] }) >>> 0).toBe(SECCOMP_RET_ALLOW); // TCGETS
    for (const req of [0x5412, 0x541c]) expect(run(f, { nr: 16, args: [0, req] }) >>> 0).toBe(SECCOMP_RET_KILL_PROCESS);
  });
  test('x32-ABI system calls are refused, whatever their number', () => {
    for (const nr of [0x40000000, 0x40000000 + 520, 0x40000000 + 0, 0xffffffff]) expect(run(f, { nr: nr | 0 }) >>> 0).toBe(SECCOMP_RET_KILL_PROCESS);
  });

  test('another architecture is refused', () => {
    expect(run(f, { nr: 0, arch: 0x40000003 }) >>> 0).toBe(SECCOMP_RET_KILL_PROCESS);
  });
});

describe('seccomp filter in a real process', () => {
  const child = path.join(__dirname, '..', 'helpers', 'seccomp-child.js');
  let dir: string;
  beforeEach(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fc-run-seccomp-'))));
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));
  const runChild = (attempt: string) => spawnSync(process.execPath, [child, attempt, dir], { encoding: 'utf8', timeout: 30_000 });

  test('what fc-run does after launch still works under the filter', () => {
    const r = runChild('none');
    expect(r.stdout).toBe('ok: data\nsurvived\n');
    expect(r.status).toBe(0);
  });
  test.each(['exec', 'tcp'])('trying %s kills the process with SIGSYS', (attempt) => {
    const r = runChild(attempt);
    expect(r.stdout).toBe('ok: data\n');
    expect(r.signal).toBe('SIGSYS');
  });
});
