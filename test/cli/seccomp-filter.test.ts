import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { BIN, requireBuilt, ROOT, runCli } from '../helpers/cli';

/**
 * `--seccomp-filter FILE`: Firecracker's seccompiler JSON, one filter per thread category, compiled
 * before anything is launched. The compiler itself is tested in test/unit/seccompiler.test.ts;
 * here, what the command line does with it, and (where /dev/kvm exists) that each category lands
 * on its own thread.
 */
const PROBE = path.join(ROOT, 'guest', 'probe', 'build', 'probe.elf');
const hasKvm = fs.existsSync('/dev/kvm');
const describeKvm = hasKvm ? describe : describe.skip;

let dir: string;
beforeAll(() => {
  requireBuilt();
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fc-run-seccomp-filter-'));
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function file(name: string, value: unknown): string {
  const f = path.join(dir, name);
  fs.writeFileSync(f, typeof value === 'string' || Buffer.isBuffer(value) ? value : JSON.stringify(value, null, 2));
  return f;
}

/** A category that lets everything through except `deny` (each with `action`). */
const allowAllBut = (deny: string[], action: unknown = { errno: 1 }) => ({ default_action: 'allow', filter_action: action, filter: deny.map((syscall) => ({ syscall })) });

const spec = (devices: Record<string, unknown> = {}) =>
  file(`vm-${Math.random().toString(36).slice(2)}.json`, {
    'boot-source': { kernel_image_path: PROBE, boot_args: 'console=ttyS0 reboot=k panic=1' },
    'machine-config': { vcpu_count: 1, mem_size_mib: 64 },
    ...devices,
  });

describe('fc-run run --seccomp-filter (command line)', () => {
  it('refuses a filter file with a mistake before anything is launched, naming the JSON path (exit 2)', () => {
    const bad = file('bad.json', { vmm: allowAllBut(['mount']), api: allowAllBut(['mount']), vcpu: allowAllBut(['mountt']) });
    const r = runCli(['run', spec(), '--seccomp-filter', bad], { hostile: true });
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/vcpu\.filter\[0\]\.syscall/);
    expect(r.err).toMatch(/mountt/);
    expect(r.err).not.toMatch(/\/dev\/kvm/);
  });

  it('refuses a missing category, as Firecracker does', () => {
    const partial = file('partial.json', { vmm: allowAllBut(['mount']), vcpu: allowAllBut(['mount']) });
    const r = runCli(['run', spec(), '--seccomp-filter', partial], { hostile: true });
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/api/);
  });

  it('refuses a file that is not there, a directory, or not UTF-8 (exit 1, what and where)', () => {
    for (const f of [path.join(dir, 'nope.json'), dir, file('binary.json', Buffer.from([0x7b, 0xff, 0xfe, 0x7d]))]) {
      const r = runCli(['run', spec(), '--seccomp-filter', f], { hostile: true });
      expect(r.code).not.toBe(0);
      expect(r.err).toMatch(/seccomp filter file/);
    }
  });

  it('cannot be combined with --no-seccomp', () => {
    const ok = file('ok.json', { vmm: allowAllBut(['mount']), api: allowAllBut(['mount']), vcpu: allowAllBut(['mount']) });
    const r = runCli(['run', spec(), '--seccomp-filter', ok, '--no-seccomp']);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/--seccomp-filter and --no-seccomp cannot be combined/);
  });

  it("is listed in run's help as taking seccompiler JSON", () => {
    const r = runCli(['run', '--help']);
    expect(r.out).toMatch(/--seccomp-filter FILE/);
    expect(r.out).toMatch(/seccompiler/);
  });
});

describeKvm('fc-run run --seccomp-filter (on KVM)', () => {
  const run = (args: string[], env: Record<string, string> = {}) => spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', timeout: 120_000, env: { ...process.env, NO_COLOR: '1', ...env } });

  it('boots the probe with a filter on every category, and says which were installed', () => {
    const log = path.join(dir, 'boot.log');
    const f = file('permissive.json', { vmm: allowAllBut(['mount']), api: allowAllBut(['mount']), vcpu: allowAllBut(['mount']) });
    const r = run(['run', spec({ entropy: {} }), '--seccomp-filter', f, '--log-path', log, '--level', 'Info']);
    expect(r.stderr).toMatch(/^fc-run: the guest reset the machine/);
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^ok - /m);
    expect(fs.readFileSync(log, 'utf8')).toMatch(/per-thread seccomp filters from --seccomp-filter: api, vmm, vcpu/);
  });

  it("puts the vcpu category on the vCPU thread: a filter that kills on ioctl ends fc-run by SIGSYS at KVM_RUN", () => {
    const f = file('vcpu-kill.json', { vmm: allowAllBut(['mount']), api: allowAllBut(['mount']), vcpu: allowAllBut(['ioctl'], 'kill_process') });
    const r = run(['run', spec(), '--seccomp-filter', f]);
    expect(r.signal).toBe('SIGSYS');
    expect(r.stdout).not.toMatch(/^ok - /m);
  });

  it('puts the vmm category on the VMM thread only: killing on epoll_wait there ends fc-run by SIGSYS', () => {
    const f = file('vmm-kill.json', { vmm: allowAllBut(['epoll_wait', 'epoll_pwait'], 'kill_process'), api: allowAllBut(['mount']), vcpu: allowAllBut(['mount']) });
    const r = run(['run', spec({ entropy: {} }), '--seccomp-filter', f]);
    expect(r.signal).toBe('SIGSYS');
  });

  it("makes no call a vCPU filter of the user's need allow beyond the VMM's own: with clock_gettime killed on vCPU threads and access on the main thread, every mode boots, without the KVM_RUN time", () => {
    // fc-run's count of the vCPUs' time inside KVM_RUN reads CLOCK_THREAD_CPUTIME_ID (not in the
    // vDSO: a system call) around each KVM_RUN; under a vcpu filter from a file it is not counted.
    const f = file('no-clock.json', { vmm: allowAllBut(['mount']), api: allowAllBut(['access', 'faccessat', 'faccessat2'], 'kill_process'), vcpu: allowAllBut(['clock_gettime'], 'kill_process') });
    for (const mode of ['mixed', 'worker', 'native']) {
      const r = run(['run', spec(), '--seccomp-filter', f], { FC_RUN_VCPU_THREADS: mode });
      expect({ mode, status: r.status, signal: r.signal, stderr: r.stderr }).toEqual({ mode, status: 0, signal: null, stderr: expect.stringMatching(/^fc-run: the guest reset the machine/) });
      expect(r.stderr).not.toMatch(/KVM_RUN/);
    }
    // Without a file, the built-in lists allow the clock reads and the time is counted.
    const plain = run(['run', spec()]);
    expect(plain.status).toBe(0);
    expect(plain.stderr).toMatch(/, [0-9.]+ ms of vCPU time in KVM_RUN$/m);
  });

  it('does not put the vcpu category on the main thread: the same ioctl ban in vmm and api only boots (no VMM-thread ioctls)', () => {
    const f = file('api-only.json', { vmm: allowAllBut(['mount']), api: allowAllBut(['execve'], 'kill_process'), vcpu: allowAllBut(['mount']) });
    const r = run(['run', spec(), '--seccomp-filter', f]);
    expect(r.status).toBe(0);
  });
});
