import { execFileSync, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Workspace } from '../helpers/specs';
import { tinyGuestElf } from '../helpers/images';

/**
 * Logs and metrics of a real run: the probe guest boots with a drive and an entropy device, and
 * the test reads what fc-run wrote to real files and named pipes.
 */
const ROOT = path.resolve(__dirname, '..', '..');
const BIN = path.join(ROOT, 'bin', 'fc-run');
const PROBE = path.join(ROOT, 'guest', 'probe', 'build', 'probe.elf');
const hasKvm = fs.existsSync('/dev/kvm');
const describeKvm = hasKvm ? describe : describe.skip;
if (!hasKvm) console.warn('SKIPPED: the logs and metrics test needs /dev/kvm');

type Line = { utc_timestamp_ms: number; reason: string; lost_metrics: number; lost_log_lines: number; [group: string]: unknown };

let ws: Workspace;
beforeAll(() => (ws = new Workspace()));
afterAll(() => ws.remove());

function run(args: string[], env: Record<string, string> = {}) {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', timeout: 120_000, env: { ...process.env, NO_COLOR: '1', ...env } });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

function probeSpec(name: string, extra: Record<string, unknown> = {}): string {
  const disk = Buffer.alloc(64 * 1024);
  disk.write('sector zero of the test disk....');
  return ws.write(name, {
    'boot-source': { kernel_image_path: PROBE, boot_args: 'console=ttyS0' },
    'machine-config': { vcpu_count: 2, mem_size_mib: 64 },
    drives: [{ drive_id: 'disk0', path_on_host: ws.write(`${name}.img`, disk), is_root_device: false, is_read_only: false }],
    entropy: {},
    ...extra,
  });
}

function lines(file: string): Line[] {
  return fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l.length > 0)
    .map((l) => JSON.parse(l) as Line);
}

/** Counter totals over all lines (counters are deltas per line). */
function total(all: Line[], group: string, field: string): number {
  return all.reduce((n, l) => n + ((l[group] as Record<string, number> | undefined)?.[field] ?? 0), 0);
}

describeKvm('logs and metrics', () => {
  test('metrics from the spec: JSON lines at start and exit whose counters add up to what the guest did', () => {
    const metricsPath = path.join(ws.dir, 'vm.metrics');
    const spec = probeSpec('metrics.json', { metrics: { metrics_path: 'vm.metrics', emit_id: true, properties: { tenant: 'blue' } } });
    const r = run([spec, '--id', 'vm-42']);
    expect(r.code).toBe(0);
    const all = lines(metricsPath);
    expect(all[0].reason).toBe('start');
    expect(all[all.length - 1].reason).toBe('exit');
    expect(all[0]).toMatchObject({ id: 'vm-42', properties: { tenant: 'blue' } });
    // What the probe did: serial output, one boot-timer write, one i8042 reset, virtio register accesses.
    const serialOut = r.out.length; // the console is stdout; every byte went through the UART
    expect(total(all, 'vcpu0', 'serialTxBytes') + total(all, 'vcpu1', 'serialTxBytes')).toBe(serialOut);
    expect(total(all, 'vcpu0', 'exitsIo')).toBeGreaterThan(serialOut / 2);
    expect(total(all, 'vcpu0', 'bootTimerWrites') + total(all, 'vcpu1', 'bootTimerWrites')).toBe(1);
    expect(total(all, 'vcpu0', 'i8042Resets') + total(all, 'vcpu1', 'i8042Resets')).toBe(1);
    expect(total(all, 'vcpu0', 'virtioRegisterAccesses')).toBeGreaterThan(20);
    expect((all[all.length - 1].vmm as Record<string, number>).bootTimeUs).toBeGreaterThan(0);
    // The drive: the probe reads sector 0, writes sector 1, flushes, and reads past the end (an error).
    expect(total(all, 'block_disk0', 'reads')).toBeGreaterThanOrEqual(1);
    expect(total(all, 'block_disk0', 'writes')).toBe(1);
    expect(total(all, 'block_disk0', 'writeBytes')).toBe(512);
    expect(total(all, 'block_disk0', 'flushes')).toBe(1);
    expect(total(all, 'block_disk0', 'errors')).toBe(1);
    expect(total(all, 'block_disk0', 'interrupts')).toBeGreaterThan(0);
    expect(total(all, 'entropy', 'bytes')).toBe(64);
    for (const l of all) expect(l.lost_metrics).toBe(0);
  });

  test('periodic lines; log lines with level and origin, in a file', () => {
    const metricsPath = path.join(ws.dir, 'periodic.metrics');
    const logPath = path.join(ws.dir, 'vm.log');
    const spec = probeSpec('periodic.json', { logger: { log_path: 'vm.log', level: 'Debug', show_level: true, show_log_origin: true } });
    const r = run([spec, '--metrics-path', metricsPath], { FC_RUN_METRICS_INTERVAL_MS: '20' });
    expect(r.code).toBe(0);
    const all = lines(metricsPath);
    expect(all.filter((l) => l.reason === 'periodic').length).toBeGreaterThan(0);
    const log = fs.readFileSync(logPath, 'utf8');
    expect(log).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \[anonymous-instance:main:INFO:vmm\] running 2 vCPU\(s\), 2 virtio device\(s\)$/m);
    expect(log).toMatch(/\[anonymous-instance:main:INFO:vmm\] Guest-boot-time = \d+ us \d+ ms/);
    // The guest ran (and the VM stopped cleanly) under the seccomp filter.
    expect(log).toMatch(/\[anonymous-instance:main:INFO:vmm\] seccomp filter installed/);
    expect(log).toMatch(/\[anonymous-instance:vcpu [01]:INFO:vmm\/vcpu\] vCPU [01] stops the VM: reset/);
  });

  test('a crash path still flushes metrics: a triple fault ends with a "fatal" line and an error in the log', () => {
    const kernel = ws.write('ud2.elf', tinyGuestElf([0x0f, 0x0b]));
    const spec = ws.write('crash.json', { 'boot-source': { kernel_image_path: kernel }, 'machine-config': { vcpu_count: 1, mem_size_mib: 16 } });
    const metricsPath = path.join(ws.dir, 'crash.metrics');
    const logPath = path.join(ws.dir, 'crash.log');
    const r = run([spec, '--metrics-path', metricsPath, '--log-path', logPath, '--show-level']);
    expect(r.code).toBe(1);
    const all = lines(metricsPath);
    expect(all.map((l) => l.reason)).toEqual(['start', 'fatal']);
    expect(total(all, 'vcpu0', 'exitsShutdown')).toBe(1);
    const log = fs.readFileSync(logPath, 'utf8');
    expect(log).toMatch(/\[anonymous-instance:vcpu 0:ERROR\] vCPU 0 triple-faulted/);
    expect(log).toMatch(/\[anonymous-instance:main:ERROR\] the microVM failed/);
  });

  test('named pipes: a reader gets every line; a full pipe nobody reads never blocks the VM (lines are dropped and counted)', async () => {
    // A reader that reads: the metrics arrive whole, as they happen.
    const fifo = path.join(ws.dir, 'metrics.fifo');
    execFileSync('mkfifo', [fifo]);
    const spec = probeSpec('fifo.json');
    const reader = fs.createReadStream(fifo, { encoding: 'utf8' });
    let got = '';
    reader.on('data', (d) => (got += d));
    const child = spawn(process.execPath, [BIN, spec, '--metrics-path', fifo], { env: { ...process.env, NO_COLOR: '1' }, stdio: 'ignore' });
    // The reader ends when the last writer closes the pipe: everything written has been read then.
    const ended = new Promise<void>((resolve) => reader.on('end', resolve));
    const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
    await ended;
    reader.destroy();
    expect(code).toBe(0);
    const fromPipe = got.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Line);
    expect(fromPipe.map((l) => l.reason)).toEqual(['start', 'exit']);

    // A log pipe that is full and never read, at the most verbose level: the guest runs exactly as
    // with a log file, and the lines that could not be written are counted.
    const full = path.join(ws.dir, 'log.fifo');
    execFileSync('mkfifo', [full]);
    const holder = fs.openSync(full, fs.constants.O_RDWR | fs.constants.O_NONBLOCK);
    const chunk = Buffer.alloc(4096, 0x2e);
    try {
      for (;;) fs.writeSync(holder, chunk);
    } catch (err) {
      expect((err as NodeJS.ErrnoException).code).toBe('EAGAIN');
    }
    const bootUs = (metrics: string) => (lines(metrics).pop()!.vmm as Record<string, number>).bootTimeUs;
    const times: { file: number[]; pipe: number[] } = { file: [], pipe: [] };
    let lost = 0;
    for (let i = 0; i < 3; i++) {
      const m1 = path.join(ws.dir, `file-${i}.metrics`);
      expect(run([spec, '--log-path', path.join(ws.dir, `file-${i}.log`), '--level', 'Trace', '--metrics-path', m1]).code).toBe(0);
      times.file.push(bootUs(m1));
      const m2 = path.join(ws.dir, `pipe-${i}.metrics`);
      expect(run([spec, '--log-path', full, '--level', 'Trace', '--metrics-path', m2]).code).toBe(0);
      times.pipe.push(bootUs(m2));
      lost += lines(m2).reduce((n, l) => n + l.lost_log_lines, 0);
      const logged = fs.readFileSync(path.join(ws.dir, `file-${i}.log`), 'utf8').split('\n').filter(Boolean).length;
      // Every line the file run wrote was lost in the pipe run (the same events happen in both).
      expect(lines(m2).reduce((n, l) => n + l.lost_log_lines, 0)).toBeGreaterThanOrEqual(logged - 1);
    }
    fs.closeSync(holder);
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[1];
    console.log(`guest boot time with a log file: ${(median(times.file) / 1000).toFixed(1)} ms; with a full, unread log pipe: ${(median(times.pipe) / 1000).toFixed(1)} ms (median of 3); ${lost} log lines dropped and counted`);
    expect(lost).toBeGreaterThan(0);
    // A writer that blocked would never finish (and the test would time out); one that waited a
    // little on each line would take far longer than the file runs. Generous, for a loaded machine.
    expect(median(times.pipe)).toBeLessThan(median(times.file) * 5 + 1_000_000);
  }, 120_000);

  test('SIGTERM stops a running VM cleanly: the last metrics line and the log say so', async () => {
    const kernel = ws.write('spin.elf', tinyGuestElf([0xeb, 0xfe])); // jmp $
    const spec = ws.write('spin.json', { 'boot-source': { kernel_image_path: kernel }, 'machine-config': { vcpu_count: 1, mem_size_mib: 16 } });
    const metricsPath = path.join(ws.dir, 'spin.metrics');
    const logPath = path.join(ws.dir, 'spin.log');
    const child = spawn(process.execPath, [BIN, spec, '--metrics-path', metricsPath, '--log-path', logPath], { env: { ...process.env, NO_COLOR: '1' } });
    let err = '';
    child.stderr.on('data', (d) => (err += d));
    const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
    try {
      const until = Date.now() + 30_000;
      while (!(fs.existsSync(metricsPath) && fs.readFileSync(metricsPath, 'utf8').includes('"start"'))) {
        if (Date.now() > until) throw new Error('the VM did not start');
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      child.kill('SIGTERM');
      expect(await exited).toBe(0);
    } finally {
      child.kill('SIGKILL');
    }
    expect(err).toMatch(/stopped by SIGTERM/);
    expect(lines(metricsPath).map((l) => l.reason)).toEqual(['start', 'exit']);
    expect(fs.readFileSync(logPath, 'utf8')).toMatch(/the VM stopped: stopped by SIGTERM/);
  });

  test('a log or metrics path that cannot be opened is a clear error before the VM starts', () => {
    const spec = probeSpec('badpath.json');
    const r = run([spec, '--metrics-path', '/nonexistent-dir/vm.metrics']);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/cannot open metrics file \/nonexistent-dir\/vm\.metrics/);
    expect(r.out).toBe('');
    // One file for both would interleave log lines with metrics lines.
    const both = path.join(ws.dir, 'both.out');
    const same = run([spec, '--metrics-path', both, '--log-path', path.join(ws.dir, '.', 'both.out')]);
    expect(same.code).toBe(1);
    expect(same.err).toMatch(/the log and the metrics would both go to .*both\.out/);
    expect(same.out).toBe('');
  });
});
