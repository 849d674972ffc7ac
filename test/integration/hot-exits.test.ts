import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Workspace } from '../helpers/specs';

/**
 * The serial console's hot exits handled in C right after KVM_RUN (HotExits, the default) against
 * every exit handled in JavaScript (FC_RUN_HOT_EXITS=js), in each way of running vCPUs: the probe
 * guest prints the same console (its timing line aside), and the metrics count the same serial
 * bytes and port I/O exits. test/unit/hot-exits.test.ts compares the two on single exits.
 */
const ROOT = path.resolve(__dirname, '..', '..');
const BIN = path.join(ROOT, 'bin', 'fc-run');
const PROBE = path.join(ROOT, 'guest', 'probe', 'build', 'probe.elf');
const hasKvm = fs.existsSync('/dev/kvm');
const describeKvm = hasKvm ? describe : describe.skip;
if (!hasKvm) console.warn('SKIPPED: hot exit tests need /dev/kvm');

describeKvm('the serial console handled in C and in JavaScript', () => {
  let ws: Workspace;
  beforeAll(() => {
    ws = new Workspace();
  });
  afterAll(() => ws.remove());

  function launch(mode: string, hot: string, vcpus: number): { out: string; raw: string; metrics: Record<string, Record<string, number>> } {
    const spec = ws.write(`probe-${vcpus}.json`, { 'boot-source': { kernel_image_path: PROBE, boot_args: 'console=ttyS0 reboot=k panic=1' }, 'machine-config': { vcpu_count: vcpus, mem_size_mib: 64 } });
    const metricsPath = path.join(ws.dir, `metrics-${mode}-${hot}-${vcpus}`);
    const r = spawnSync(BIN, [spec, '--metrics-path', metricsPath], { encoding: 'utf8', timeout: 120_000, env: { ...process.env, FC_RUN_VCPU_THREADS: mode, FC_RUN_HOT_EXITS: hot } });
    expect({ status: r.status, err: r.stderr }).toEqual({ status: 0, err: expect.stringContaining('the guest reset the machine') });
    const lines = fs.readFileSync(metricsPath, 'utf8').trim().split('\n');
    // The guest's own clock readings differ from run to run.
    return { out: r.stdout.replace(/^# kvm-clock-ns: .*$/m, '# kvm-clock-ns: (timing)'), raw: r.stdout, metrics: JSON.parse(lines[lines.length - 1]) };
  }

  it.each([
    ['main', 1],
    ['native', 2],
    ['worker', 2],
  ])('give the same console and counts with vCPUs in %s mode (%i vCPUs)', (mode, vcpus) => {
    const native = launch(mode as string, 'native', vcpus as number);
    const js = launch(mode as string, 'js', vcpus as number);
    // The probe's checks, line for line (its "#" lines carry timings and counts that vary with the host's load).
    const checks = (out: string) => out.split('\n').filter((l) => /^(not )?ok /.test(l));
    expect(checks(native.out).length).toBeGreaterThanOrEqual(9);
    expect(checks(native.out).filter((l) => l.startsWith('not ok'))).toEqual([]);
    expect(checks(native.out)).toEqual(checks(js.out));
    for (const r of [native, js]) {
      // Every byte printed was counted once (the console is all the guest wrote to COM1), and each
      // was a transmit write after a line status read.
      expect(r.metrics.uart.write_count).toBe(Buffer.byteLength(r.raw));
      expect(r.metrics.vcpu.exit_io_out).toBeGreaterThanOrEqual(r.metrics.uart.write_count);
      expect(r.metrics.vcpu.exit_io_in).toBeGreaterThanOrEqual(r.metrics.uart.write_count);
      expect(r.metrics.uart.missed_write_count).toBe(0);
    }
  });

  it('refuses an FC_RUN_HOT_EXITS it does not know', () => {
    const spec = ws.write('probe-bad.json', { 'boot-source': { kernel_image_path: PROBE }, 'machine-config': { vcpu_count: 1, mem_size_mib: 64 } });
    const r = spawnSync(BIN, [spec], { encoding: 'utf8', timeout: 60_000, env: { ...process.env, FC_RUN_HOT_EXITS: 'C' } });
    expect(r.status).toBe(1);
    expect(r.stderr).toContain('FC_RUN_HOT_EXITS is "C"');
  });
});
