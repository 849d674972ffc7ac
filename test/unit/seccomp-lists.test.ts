import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { allowListNames, builtinFilters, listsFitThisNode, patchPid } from '../../src/kvm/seccomp-builtin';
import { ALLOWED_CALLS, ALLOWED_IOCTLS, SECCOMP_LISTS_NODE_MAJORS } from '../../src/kvm/seccomp-lists';
import { SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO, SECCOMP_RET_KILL_PROCESS, SECCOMP_RET_LOG, SECCOMP_RET_TRAP } from '../../src/kvm/seccomp-actions';
import { X86_64_SYSCALLS } from '../../src/kvm/syscall-table';
import { checkProgram, runBpf } from '../helpers/bpf-interpreter';

const PID = 4242;
const f = builtinFilters(PID);
const nr = (name: string) => X86_64_SYSCALLS.get(name)!;
const decide = (program: Buffer, call: string, args: (number | bigint)[] = []) => runBpf(program, { nr: nr(call), args: args.map(BigInt) }) >>> 0;
const ENOSYS = (SECCOMP_RET_ERRNO | 38) >>> 0;

describe('the built-in seccomp allow-lists (src/kvm/seccomp-lists.ts)', () => {
  test('the filters npm run build precompiled (dist/kvm/seccomp-builtin.generated.js), with a process id written in, are the ones these lists compile to for it', () => {
    const file = path.join(__dirname, '..', '..', 'dist', 'kvm', 'seccomp-builtin.generated.js');
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const generated = require(file) as Record<number, Record<string, { bpf: string; pidAt: number[] }>>;
    const actions = [SECCOMP_RET_TRAP, SECCOMP_RET_KILL_PROCESS, SECCOMP_RET_LOG].map((a) => a >>> 0);
    expect(Object.keys(generated).map(Number).sort()).toEqual([...actions].sort());
    for (const action of actions) {
      for (const pid of [1, 77, 4242, 123457, 4194304]) {
        const fresh = builtinFilters(pid, action, false);
        for (const scope of ['process', 'api', 'vmm', 'vcpu'] as const) {
          const patched = patchPid(Buffer.from(generated[action][scope].bpf, 'base64'), generated[action][scope].pidAt, pid);
          expect([action, pid, scope, patched.equals(fresh[scope])]).toEqual([action, pid, scope, true]);
        }
      }
    }
    // tgkill reaches this process's threads only
    const built = builtinFilters(4242, SECCOMP_RET_TRAP);
    expect(decide(built.vcpu, 'tgkill', [4242, 7, 12])).toBe(SECCOMP_RET_ALLOW);
    expect(decide(built.vcpu, 'tgkill', [4243, 7, 12])).toBe(SECCOMP_RET_TRAP);
  });

  test('every row names a real call and says why; every program passes the kernel checks', () => {
    for (const c of ALLOWED_CALLS) {
      expect([c.call, X86_64_SYSCALLS.has(c.call)]).toEqual([c.call, true]);
      expect(c.why.length).toBeGreaterThan(5);
    }
    for (const p of Object.values(f)) {
      checkProgram(p);
      expect(p.length / 8).toBeLessThan(4096);
    }
  });

  test('each thread list is inside the process-wide one; vcpu is the smallest', () => {
    const all = new Set(allowListNames('process'));
    for (const t of ['api', 'vmm', 'vcpu'] as const) for (const c of allowListNames(t)) expect([t, c, all.has(c)]).toEqual([t, c, true]);
    expect(allowListNames('vcpu').length).toBeLessThan(allowListNames('vmm').length);
    expect(allowListNames('vcpu').length).toBeLessThan(allowListNames('api').length);
  });

  test('the dangerous classes trap on every filter; ordinary runtime calls pass', () => {
    for (const p of Object.values(f)) {
      for (const call of ['execve', 'execveat', 'fork', 'vfork', 'ptrace', 'process_vm_readv', 'mount', 'umount2', 'unshare', 'setns', 'pivot_root', 'chroot', 'init_module', 'bpf', 'perf_event_open', 'kexec_load', 'setuid', 'keyctl', 'userfaultfd', 'kill', 'getppid', 'mknodat']) {
        expect([call, decide(p, call)]).toEqual([call, SECCOMP_RET_TRAP]);
      }
      for (const call of ['read', 'write', 'futex', 'mmap', 'munmap', 'mprotect', 'madvise', 'mremap', 'getrandom', 'sched_yield', 'gettid', 'exit', 'rt_sigreturn']) {
        expect([call, decide(p, call)]).toEqual([call, SECCOMP_RET_ALLOW]);
      }
      for (const call of ['clone3', 'io_uring_setup', 'io_uring_enter']) expect([call, decide(p, call)]).toEqual([call, ENOSYS]);
    }
  });

  test('arguments: sockets Unix only, clone threads only, tgkill to fc-run itself, ioctl requests listed', () => {
    for (const p of [f.process, f.api, f.vmm]) {
      expect(decide(p, 'socket', [1, 1])).toBe(SECCOMP_RET_ALLOW);
      for (const domain of [2, 10, 16, 17]) expect(decide(p, 'socket', [domain, 1])).toBe(SECCOMP_RET_TRAP);
    }
    for (const p of [f.process, f.api]) {
      expect(decide(p, 'clone', [0x3d0f00])).toBe(SECCOMP_RET_ALLOW); // pthread_create's flags
      expect(decide(p, 'clone', [0x1200011])).toBe(SECCOMP_RET_TRAP); // fork's
      expect(decide(p, 'clone', [0x3d0f00 | 0x40000000])).toBe(SECCOMP_RET_TRAP); // a thread in a new netns
      expect(decide(p, 'clone', [0x3d0f00 | 0x4000])).toBe(SECCOMP_RET_TRAP); // CLONE_VFORK
    }
    for (const p of Object.values(f)) {
      expect(decide(p, 'tgkill', [PID, 7, 12])).toBe(SECCOMP_RET_ALLOW);
      expect(decide(p, 'tgkill', [PID + 1, 7, 12])).toBe(SECCOMP_RET_TRAP);
      expect(decide(p, 'kill', [PID, 15])).toBe(SECCOMP_RET_ALLOW);
      for (const pid of [PID + 1, 1, -1]) expect(decide(p, 'kill', [pid, 15])).toBe(SECCOMP_RET_TRAP);
      expect(decide(p, 'ioctl', [5, 0x5412])).toBe(SECCOMP_RET_TRAP); // TIOCSTI
      expect(decide(p, 'ioctl', [5, 0xae01])).toBe(SECCOMP_RET_TRAP); // KVM_CREATE_VM
      expect(decide(p, 'ioctl', [5, 0x400454ca])).toBe(SECCOMP_RET_TRAP); // TUNSETIFF
      expect(decide(p, 'ioctl', [0, 0x5402])).toBe(SECCOMP_RET_ALLOW); // TCSETS: the SIGSYS handler puts the terminal back, whatever the thread
    }
    expect(decide(f.vcpu, 'ioctl', [5, 0xae80])).toBe(SECCOMP_RET_ALLOW); // KVM_RUN
    expect(decide(f.vmm, 'ioctl', [5, 0xae80])).toBe(SECCOMP_RET_TRAP);
  });

  test('per thread: no sockets, no opening files and no threads on a vCPU thread; no opening files on the VMM thread', () => {
    for (const call of ['socket', 'connect', 'accept4', 'clone', 'unlink', 'rename']) expect([call, decide(f.vcpu, call, [1])]).toEqual([call, SECCOMP_RET_TRAP]);
    for (const call of ['clone', 'unlink', 'rename']) expect([call, decide(f.vmm, call, [0x3d0f00])]).toEqual([call, SECCOMP_RET_TRAP]);
    // Opening a file fails there (EACCES) rather than killing fc-run: the runtime may try to read
    // a /sys or /proc file on a rarer path and copes with a failure. Whatever the flags.
    const EACCES = (SECCOMP_RET_ERRNO | 13) >>> 0;
    for (const flags of [0x80000, 0x241, 0x2]) {
      expect(decide(f.vcpu, 'openat', [-100, 0, flags])).toBe(EACCES);
      expect(decide(f.vmm, 'openat', [-100, 0, flags])).toBe(EACCES);
    }
    expect(decide(f.api, 'openat')).toBe(SECCOMP_RET_ALLOW);
    expect(decide(f.process, 'openat')).toBe(SECCOMP_RET_ALLOW);
  });

  test('made for the Node majors of package.json engines, and this Node is one of them', () => {
    const engines = (JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', 'package.json'), 'utf8')) as { engines: { node: string } }).engines.node;
    expect(SECCOMP_LISTS_NODE_MAJORS).toContain(Number(/\d+/.exec(engines)![0]));
    expect(listsFitThisNode('20.1.0')).toBe(true);
    expect(listsFitThisNode('22.3.0')).toBe(false);
    expect(listsFitThisNode()).toBe(SECCOMP_LISTS_NODE_MAJORS.includes(Number(process.versions.node.split('.')[0])));
    expect(ALLOWED_IOCTLS.every((i) => Number.isInteger(i.request) && i.request > 0)).toBe(true);
  });
});

describe('the allow-lists in a real process (trap, then killed by SIGSYS with the call named)', () => {
  const child = path.join(__dirname, '..', 'helpers', 'seccomp-allow-child.js');
  const run = (attempt: string) => spawnSync(process.execPath, [child, attempt], { encoding: 'utf8', timeout: 30_000, env: { ...process.env, FC_RUN_SECCOMP_REPORT: '' } });

  test('ordinary work goes on under the filters', () => {
    const r = run('none');
    expect(r.stderr).toBe('');
    expect(r.stdout).toBe('ok: //\nsurvived\n');
    expect(r.status).toBe(0);
  });
  test.each([
    ['unlisted', /syscall 110 \(getppid\) is not on the seccomp filter of thread \d+ \(api: the main thread\)/],
    ['argument', /syscall 41 \(socket\) .*\(api: the main thread\); arguments 0x2, 0x1/],
    ['ioctl', /syscall 16 \(ioctl\) .*arguments 0x0, 0x5412/],
    ['clone', /syscall 56 \(clone\) .*arguments 0x11/],
    ['thread', /syscall 41 \(socket\) is not on the seccomp filter of thread \d+ \(vcpu 0: a vCPU worker\); arguments 0x1, 0x1/],
  ])('%s: killed by SIGSYS, the call named on stderr', (attempt, line) => {
    const r = run(attempt);
    expect(r.stderr).toMatch(/^fc-run: killed by SIGSYS \(seccomp\): /m);
    expect(r.stderr).toMatch(line);
    expect(r.stderr).not.toMatch(/survived/);
    expect(r.stdout).not.toMatch(/survived/);
    expect(r.signal).toBe('SIGSYS');
  });
});
