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

type Counts = Record<string, number>;
type Line = { utc_timestamp_ms: number; fc_run: { reason: string; [group: string]: unknown }; logger: Counts; vmm: Counts; api_server: Counts; [group: string]: unknown };

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

/** Counter totals over all lines (counters are deltas per line); `group` may be `fc_run.<group>`. */
function total(all: Line[], group: string, field: string): number {
  const pick = (l: Line) => group.split('.').reduce<unknown>((o, k) => (o as Record<string, unknown> | undefined)?.[k], l) as Counts | undefined;
  return all.reduce((n, l) => n + (pick(l)?.[field] ?? 0), 0);
}

const reasons = (all: Line[]) => all.map((l) => l.fc_run.reason);

/**
 * Firecracker's metrics groups and fields (x86_64, Firecracker main at 81b38b9 plus v1.16.1's
 * net.mac_address_updates), written out here rather than taken from the source under test. `agg`
 * marks a latency aggregate: an object of min_us, max_us, sum_us.
 */
const AGG = ['min_us', 'max_us', 'sum_us'];
const FC_BLOCK = 'activate_fails cfg_fails no_avail_buffer event_fails execute_fails invalid_reqs_count flush_count queue_event_count rate_limiter_event_count update_count update_fails read_bytes write_bytes read_count write_count read_agg:agg write_agg:agg rate_limiter_throttled_events io_engine_throttled_events remaining_reqs_count';
const FC_NET = 'activate_fails cfg_fails no_rx_avail_buffer no_tx_avail_buffer event_fails rx_queue_event_count rx_event_rate_limiter_count rx_rate_limiter_throttled rx_tap_event_count rx_bytes_count rx_packets_count rx_fails rx_count tap_read_fails tap_write_fails tap_write_agg:agg tx_bytes_count tx_malformed_frames tx_fails tx_count tx_packets_count tx_queue_event_count tx_rate_limiter_event_count tx_rate_limiter_throttled tx_spoofed_mac_count tx_remaining_reqs_count mac_address_updates';
const FC_GROUPS: Record<string, string> = {
  api_server: 'process_startup_time_us process_startup_time_cpu_us',
  balloon: 'activate_fails inflate_count stats_updates_count stats_update_fails deflate_count event_fails free_page_report_count free_page_report_freed free_page_report_fails free_page_hint_count free_page_hint_freed free_page_hint_fails',
  block_disk0: FC_BLOCK,
  block: FC_BLOCK,
  deprecated_api: 'deprecated_http_api_calls',
  get_api_requests: 'instance_info_count machine_cfg_count mmds_count vmm_version_count hotplug_memory_count',
  i8042: 'error_count missed_read_count missed_write_count read_count reset_count write_count',
  uart: 'error_count flush_count missed_read_count missed_write_count read_count write_count rate_limiter_dropped_bytes',
  latencies_us: 'full_create_snapshot diff_create_snapshot load_snapshot pause_vm resume_vm vmm_full_create_snapshot vmm_diff_create_snapshot vmm_load_snapshot vmm_pause_vm vmm_resume_vm',
  logger: 'missed_metrics_count metrics_fails missed_log_count rate_limited_log_count',
  mmds: 'rx_accepted rx_accepted_err rx_accepted_unusual rx_bad_eth rx_invalid_token rx_no_token rx_count tx_bytes tx_count tx_errors tx_frames connections_created connections_destroyed',
  net: FC_NET,
  patch_api_requests: 'drive_count drive_fails network_count network_fails machine_cfg_count machine_cfg_fails mmds_count mmds_fails hotplug_memory_count hotplug_memory_fails pmem_count pmem_fails',
  put_api_requests: 'actions_count actions_fails boot_source_count boot_source_fails drive_count drive_fails logger_count logger_fails machine_cfg_count machine_cfg_fails cpu_cfg_count cpu_cfg_fails metrics_count metrics_fails network_count network_fails mmds_count mmds_fails vsock_count vsock_fails pmem_count pmem_fails serial_count serial_fails hotplug_memory_count hotplug_memory_fails',
  seccomp: 'num_faults',
  vcpu: 'exit_io_in exit_io_out exit_mmio_read exit_mmio_write failures kvmclock_ctrl_fails exit_io_in_agg:agg exit_io_out_agg:agg exit_mmio_read_agg:agg exit_mmio_write_agg:agg',
  vmm: 'panic_count',
  signals: 'sigbus sigsegv sigxfsz sigxcpu sigpipe sighup sigill',
  vsock: 'activate_fails cfg_fails rx_queue_event_fails tx_queue_event_fails ev_queue_event_fails muxer_event_fails conn_event_fails rx_queue_event_count tx_queue_event_count rx_bytes_count tx_bytes_count rx_packets_count tx_packets_count conns_added conns_killed conns_removed killq_resync tx_flush_fails tx_write_fails rx_read_fails',
  entropy: 'activate_fails entropy_event_fails entropy_event_count entropy_bytes host_rng_fails entropy_rate_limiter_throttled rate_limiter_event_count',
  pmem: 'activate_fails cfg_fails event_fails queue_event_count rate_limiter_throttled_events rate_limiter_event_count',
  interrupts: 'triggers config_updates',
  memory_hotplug: 'activate_fails queue_event_fails queue_event_count plug_agg:agg plug_count plug_bytes plug_fails unplug_agg:agg unplug_count unplug_bytes unplug_fails unplug_discard_fails unplug_all_agg:agg unplug_all_count unplug_all_fails state_agg:agg state_count state_fails',
};

describeKvm('logs and metrics', () => {
  test('metrics from the spec: JSON lines at start and exit whose counters add up to what the guest did', () => {
    const metricsPath = path.join(ws.dir, 'vm.metrics');
    const spec = probeSpec('metrics.json', { metrics: { metrics_path: 'vm.metrics', emit_id: true, properties: { tenant: 'blue' } } });
    const r = run([spec, '--id', 'vm-42']);
    expect(r.code).toBe(0);
    const all = lines(metricsPath);
    expect(reasons(all)[0]).toBe('start');
    expect(reasons(all).at(-1)).toBe('exit');
    expect(all[0]).toMatchObject({ id: 'vm-42', properties: { tenant: 'blue' } });

    // Every line has Firecracker's groups and fields, in Firecracker's order, then fc-run's own.
    const order = ['utc_timestamp_ms', 'id', 'properties', ...Object.keys(FC_GROUPS), 'fc_run'];
    for (const l of all) {
      expect(Object.keys(l)).toEqual(order);
      expect(Number.isInteger(l.utc_timestamp_ms)).toBe(true);
      for (const [group, fields] of Object.entries(FC_GROUPS)) {
        const g = l[group] as Record<string, unknown>;
        expect([group, Object.keys(g)]).toEqual([group, fields.split(' ').map((f) => f.split(':')[0])]);
        for (const f of fields.split(' ')) {
          const [name, agg] = f.split(':');
          if (agg) expect([group, name, Object.keys(g[name] as object)]).toEqual([group, name, AGG]);
          else expect([group, name, typeof g[name]]).toEqual([group, name, 'number']);
        }
      }
    }

    // What the probe did: serial output, one boot-timer write, one i8042 reset, virtio register accesses.
    const serialOut = r.out.length; // the console is stdout; every byte went through the UART
    expect(total(all, 'uart', 'write_count')).toBe(serialOut);
    expect(total(all, 'uart', 'missed_write_count') + total(all, 'uart', 'error_count')).toBe(0);
    expect(total(all, 'vcpu', 'exit_io_out')).toBeGreaterThanOrEqual(serialOut);
    expect(total(all, 'vcpu', 'exit_io_in')).toBeGreaterThan(0); // the probe polls the UART's line status
    expect(total(all, 'vcpu', 'exit_mmio_read')).toBeGreaterThan(0);
    expect(total(all, 'vcpu', 'exit_mmio_write')).toBeGreaterThan(0);
    expect(total(all, 'vcpu', 'failures')).toBe(0);
    // The per-vCPU detail adds up to Firecracker's sums.
    expect(total(all, 'fc_run.vcpu0', 'exits_io_out') + total(all, 'fc_run.vcpu1', 'exits_io_out')).toBe(total(all, 'vcpu', 'exit_io_out'));
    expect(total(all, 'fc_run.vcpu0', 'serial_tx_bytes') + total(all, 'fc_run.vcpu1', 'serial_tx_bytes')).toBe(serialOut);
    expect(total(all, 'fc_run.vcpu0', 'boot_timer_writes') + total(all, 'fc_run.vcpu1', 'boot_timer_writes')).toBe(1);
    expect(total(all, 'i8042', 'reset_count')).toBe(1);
    expect(total(all, 'i8042', 'write_count')).toBeGreaterThanOrEqual(1);
    expect(total(all, 'fc_run.vcpu0', 'virtio_register_accesses')).toBeGreaterThan(20);
    expect(all.at(-1)!.fc_run.vmm).toMatchObject({ boot_time_us: expect.any(Number) });
    expect((all.at(-1)!.fc_run.vmm as Counts).boot_time_us).toBeGreaterThan(0);
    expect(all.at(-1)!.api_server.process_startup_time_us).toBeGreaterThan(0);
    expect(all.at(-1)!.vmm.panic_count).toBe(0);
    // The drive: the probe reads sector 0, writes sector 1, flushes, and reads past the end (an error).
    expect(total(all, 'block_disk0', 'read_count')).toBeGreaterThanOrEqual(1);
    expect(total(all, 'block_disk0', 'read_bytes')).toBeGreaterThanOrEqual(512);
    expect(total(all, 'block_disk0', 'write_count')).toBe(1);
    expect(total(all, 'block_disk0', 'write_bytes')).toBe(512);
    expect(total(all, 'block_disk0', 'flush_count')).toBe(1);
    expect(total(all, 'block_disk0', 'execute_fails')).toBe(1);
    expect(total(all, 'block_disk0', 'queue_event_count')).toBeGreaterThanOrEqual(1);
    expect(total(all, 'fc_run.block_disk0', 'interrupts')).toBeGreaterThan(0);
    // The aggregate is the sum of the devices (one here), line by line.
    for (const l of all) {
      const { read_agg: _r, write_agg: _w, ...one } = l.block_disk0 as Counts;
      expect(l.block).toMatchObject(one);
    }
    expect(total(all, 'interrupts', 'triggers')).toBe(total(all, 'fc_run.block_disk0', 'interrupts') + total(all, 'fc_run.entropy', 'interrupts'));
    expect(total(all, 'entropy', 'entropy_bytes')).toBe(64);
    expect(total(all, 'entropy', 'entropy_event_count')).toBeGreaterThanOrEqual(1);
    expect(total(all, 'fc_run.entropy', 'requests')).toBeGreaterThanOrEqual(1);
    for (const l of all) expect(l.logger.missed_metrics_count).toBe(0);
  });

  test('periodic lines; log lines with level and origin, in a file', () => {
    const metricsPath = path.join(ws.dir, 'periodic.metrics');
    const logPath = path.join(ws.dir, 'vm.log');
    const spec = probeSpec('periodic.json', { logger: { log_path: 'vm.log', level: 'Debug', show_level: true, show_log_origin: true } });
    const r = run([spec, '--metrics-path', metricsPath], { FC_RUN_METRICS_INTERVAL_MS: '20' });
    expect(r.code).toBe(0);
    const all = lines(metricsPath);
    expect(reasons(all).filter((r) => r === 'periodic').length).toBeGreaterThan(0);
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
    expect(reasons(all)).toEqual(['start', 'fatal']);
    expect(total(all, 'fc_run.vcpu0', 'exits_shutdown')).toBe(1);
    expect(total(all, 'vcpu', 'failures')).toBe(1);
    expect(all.map((l) => l.vmm.panic_count)).toEqual([0, 1]);
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
    expect(reasons(fromPipe)).toEqual(['start', 'exit']);

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
    const bootUs = (metrics: string) => (lines(metrics).pop()!.fc_run.vmm as Counts).boot_time_us;
    const times: { file: number[]; pipe: number[] } = { file: [], pipe: [] };
    let lost = 0;
    for (let i = 0; i < 3; i++) {
      const m1 = path.join(ws.dir, `file-${i}.metrics`);
      expect(run([spec, '--log-path', path.join(ws.dir, `file-${i}.log`), '--level', 'Trace', '--metrics-path', m1]).code).toBe(0);
      times.file.push(bootUs(m1));
      const m2 = path.join(ws.dir, `pipe-${i}.metrics`);
      expect(run([spec, '--log-path', full, '--level', 'Trace', '--metrics-path', m2]).code).toBe(0);
      times.pipe.push(bootUs(m2));
      lost += total(lines(m2), 'logger', 'missed_log_count');
      const logged = fs.readFileSync(path.join(ws.dir, `file-${i}.log`), 'utf8').split('\n').filter(Boolean).length;
      // Every line the file run wrote was lost in the pipe run (the same events happen in both).
      expect(total(lines(m2), 'logger', 'missed_log_count')).toBeGreaterThanOrEqual(logged - 1);
    }
    fs.closeSync(holder);
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[1];
    console.log(`guest boot time with a log file: ${(median(times.file) / 1000).toFixed(1)} ms; with a full, unread log pipe: ${(median(times.pipe) / 1000).toFixed(1)} ms (median of 3); ${lost} log lines dropped and counted`);
    expect(lost).toBeGreaterThan(0);
    // A writer that blocked would never finish (and the test would time out); one that waited a
    // little on each line would take far longer than the file runs. Generous, for a loaded machine.
    expect(median(times.pipe)).toBeLessThan(median(times.file) * 5 + 1_000_000);
  }, 120_000);

  // SIGHUP too: a closed terminal or an ssh session gone ends the VM with its last lines written.
  test.each(['SIGTERM', 'SIGHUP'] as const)('%s stops a running VM cleanly: the last metrics line and the log say so', async (sig) => {
    const kernel = ws.write(`spin-${sig}.elf`, tinyGuestElf([0xeb, 0xfe])); // jmp $
    const spec = ws.write(`spin-${sig}.json`, { 'boot-source': { kernel_image_path: kernel }, 'machine-config': { vcpu_count: 1, mem_size_mib: 16 } });
    const metricsPath = path.join(ws.dir, `spin-${sig}.metrics`);
    const logPath = path.join(ws.dir, `spin-${sig}.log`);
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
      child.kill(sig);
      expect(await exited).toBe(0);
    } finally {
      child.kill('SIGKILL');
    }
    expect(err).toMatch(new RegExp(`stopped by ${sig}`));
    expect(reasons(lines(metricsPath))).toEqual(['start', 'exit']);
    expect(fs.readFileSync(logPath, 'utf8')).toMatch(new RegExp(`the VM stopped: stopped by ${sig}`));
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
    // Found with the other output collisions, before anything is opened (exit 2, as validate reports it).
    expect(same.code).toBe(2);
    expect(same.err).toMatch(/error\[output-overwrites\]: --metrics-path and --log-path are the same file \(.*both\.out\)/);
    expect(same.out).toBe('');
  });
});
