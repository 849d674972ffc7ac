import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Workspace } from '../helpers/specs';
import { tinyGuestElf } from '../helpers/images';
import { hostTscKhz } from '../../guest/linux/host';

/**
 * The guest's share of fc-run's CPU time: each vCPU thread adds its CPU time inside KVM_RUN to a
 * shared counter (native/vcpu-threads.c), and fc-run prints the total when the VM stops. Checked
 * against the whole process's CPU time (bash's `times` for its child), in each vCPU thread mode,
 * with a guest that spins for a second of TSC time (at the rate KVM gives guests) before it resets
 * the machine, and with one that resets at once. CPU times, not wall times, and no ratio to the
 * VMM's own time: the checks hold on a loaded host and in a nested KVM, where fc-run's own CPU time
 * outgrows the guest's second.
 */
const ROOT = path.resolve(__dirname, '..', '..');
const BIN = path.join(ROOT, 'bin', 'fc-run');
const hasKvm = fs.existsSync('/dev/kvm');
const describeKvm = hasKvm ? describe : describe.skip;
if (!hasKvm) console.warn('SKIPPED: the KVM_RUN time tests need /dev/kvm');

/** Long mode: spins until the TSC has advanced `cycles`, then resets through the i8042. */
function spinThenReset(cycles: bigint): number[] {
  const imm = Buffer.alloc(8);
  imm.writeBigUInt64LE(cycles);
  const tsc = [0x0f, 0x31, 0x48, 0xc1, 0xe2, 0x20, 0x48, 0x09, 0xd0]; // rdtsc; shl rdx, 32; or rax, rdx
  const loop = [...tsc, 0x48, 0x29, 0xd8, 0x4c, 0x39, 0xc0]; // sub rax, rbx; cmp rax, r8
  return [
    ...tsc,
    0x48, 0x89, 0xc3, // mov rbx, rax
    0x49, 0xb8, ...imm, // mov r8, cycles
    ...loop,
    0x72, 0x100 - (loop.length + 2), // jb loop
    0xb0, 0xfe, 0xe6, 0x64, 0xf4, // mov al, 0xfe; out 0x64, al; hlt
  ];
}


describeKvm('the vCPU threads count their CPU time inside KVM_RUN', () => {
  let ws: Workspace;
  beforeAll(() => (ws = new Workspace()));
  afterAll(() => ws?.remove());

  /** Runs the guest; the stop status (--json-lines) and the process's CPU time in ms. */
  function run(name: string, code: number[], mode: string): { runMs: number; cpuMs: number; message: string } {
    const spec = ws.write(`${name}.json`, {
      'boot-source': { kernel_image_path: ws.write(`${name}.elf`, tinyGuestElf(code)) },
      'machine-config': { vcpu_count: 1, mem_size_mib: 16 },
    });
    const r = spawnSync('bash', ['-c', '"$0" "$1" --json-lines >"$2" 2>&1; s=$?; times; exit $s', BIN, spec, path.join(ws.dir, `${name}-${mode}.out`)], {
      encoding: 'utf8',
      env: { ...process.env, FC_RUN_VCPU_THREADS: mode },
    });
    expect(r.status).toBe(0);
    const status = fs
      .readFileSync(path.join(ws.dir, `${name}-${mode}.out`), 'utf8')
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as { type: string; event?: string; vcpu_run_ms?: number; message?: string })
      .find((s) => s.type === 'status' && s.event === 'stopped');
    expect(status?.vcpu_run_ms).toEqual(expect.any(Number));
    // `times`: the shell's own user and system time, then its children's.
    const children = r.stdout.trim().split('\n').pop()!;
    const secs = [...children.matchAll(/(\d+)m([0-9.]+)s/g)].map((m) => Number(m[1]) * 60 + Number(m[2]));
    expect(secs).toHaveLength(2);
    return { runMs: status!.vcpu_run_ms!, cpuMs: (secs[0] + secs[1]) * 1000, message: status!.message! };
  }

  test.each(['mixed', 'worker', 'native'])('%s: a spinning guest\'s time is counted, and never more than the process used', (mode) => {
    const idle = run('reset', spinThenReset(0n), mode);
    expect(idle.runMs).toBeGreaterThan(0);
    // `times` counts in 10 ms ticks.
    expect(idle.runMs).toBeLessThanOrEqual(idle.cpuMs + 20);
    expect(idle.message).toMatch(/, [0-9.]+ ms of vCPU time in KVM_RUN$/);

    const spin = run('spin', spinThenReset(BigInt(hostTscKhz()) * 1000n), mode);
    expect(spin.runMs).toBeLessThanOrEqual(spin.cpuMs + 20);
    // The guest spun for a second: it cannot have had more than that of CPU inside KVM_RUN (plus
    // what the resetting guest had), and unless the host gave it under a tenth of a core, it had
    // far more than the guest that resets at once.
    expect(spin.runMs).toBeLessThanOrEqual(1000 + idle.runMs + 50);
    expect(spin.runMs).toBeGreaterThan(idle.runMs + 100);
  }, 120_000);
});
