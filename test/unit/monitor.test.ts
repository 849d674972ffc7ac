import { execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { FcRunError } from '../../src/errors';
import { createLostCounter, Logger, LogLevel, openSink, parseLogLevel, PIPE_BUF } from '../../src/monitor/logger';
import { MetricsRegistry, MetricsWriter, type MetricsLayout } from '../../src/monitor/metrics';
import type { MonitorWorkerData } from '../helpers/monitor-worker';

const TS_WORKER = path.resolve(__dirname, '..', 'helpers', 'ts-worker.js');
const MONITOR_WORKER = path.resolve(__dirname, '..', 'helpers', 'monitor-worker.ts');
const T0 = Date.UTC(2024, 4, 1, 12, 0, 0, 123);
const STAMP = '2024-05-01T12:00:00.123Z';
const clock = () => T0;

let dir: string;
const opened: number[] = [];
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fc-run-monitor-'));
});
afterEach(() => {
  for (const fd of opened.splice(0)) {
    try {
      fs.closeSync(fd);
    } catch {
      /* already closed by the test */
    }
  }
  fs.rmSync(dir, { recursive: true, force: true });
});

function track(fd: number): number {
  opened.push(fd);
  return fd;
}
function sink(p: string, what?: string): number {
  return track(openSink(p, what));
}
function mkfifo(name: string): string {
  const p = path.join(dir, name);
  execFileSync('mkfifo', [p]);
  return p;
}
function openReader(p: string): number {
  return track(fs.openSync(p, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK));
}
/** Everything a non-blocking fd has to read right now. */
function drain(fd: number): Buffer {
  const chunks: Buffer[] = [];
  const buf = Buffer.alloc(1 << 16);
  for (;;) {
    let n: number;
    try {
      n = fs.readSync(fd, buf, 0, buf.length, null);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EAGAIN') break;
      throw e;
    }
    if (n === 0) break;
    chunks.push(Buffer.from(buf.subarray(0, n)));
  }
  return Buffer.concat(chunks);
}
/** Fills a pipe through `fd` until it takes no more bytes. */
function fillPipe(fd: number): void {
  const page = Buffer.alloc(4096, 0x2e);
  const fill = (b: Buffer) => {
    for (;;) {
      try {
        fs.writeSync(fd, b);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'EAGAIN') return;
        throw e;
      }
    }
  };
  fill(page);
  fill(page.subarray(0, 1));
}
function lines(text: string): string[] {
  expect(text.endsWith('\n')).toBe(true);
  return text.slice(0, -1).split('\n');
}
function runWorker(data: MonitorWorkerData): Promise<void> {
  return new Promise((resolve, reject) => {
    const w = new Worker(TS_WORKER, { workerData: data });
    w.once('error', reject);
    w.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`worker exited with ${code}`))));
  });
}

describe('parseLogLevel', () => {
  test('accepts the Firecracker names in any case, and Warn', () => {
    expect(parseLogLevel('Error')).toBe(LogLevel.Error);
    expect(parseLogLevel('WARNING')).toBe(LogLevel.Warning);
    expect(parseLogLevel('warn')).toBe(LogLevel.Warning);
    expect(parseLogLevel('Info')).toBe(LogLevel.Info);
    expect(parseLogLevel('debug')).toBe(LogLevel.Debug);
    expect(parseLogLevel('tRaCe')).toBe(LogLevel.Trace);
    expect(parseLogLevel('Off')).toBe(LogLevel.Off);
  });

  test('refuses anything else with a clear message', () => {
    expect(() => parseLogLevel('verbose')).toThrow(FcRunError);
    expect(() => parseLogLevel('verbose')).toThrow('invalid log level "verbose": expected one of Error, Warning, Info, Debug, Trace, Off');
    expect(() => parseLogLevel('')).toThrow('invalid log level ""');
  });
});

describe('openSink', () => {
  test('creates a missing file and appends to an existing one', () => {
    const p = path.join(dir, 'vm.log');
    const log = () => new Logger({ fd: sink(p), level: LogLevel.Info, thread: 'main', clock });
    log().info('t', 'first');
    log().info('t', 'second');
    expect(lines(fs.readFileSync(p, 'utf8'))).toEqual([`${STAMP} [anonymous-instance:main] first`, `${STAMP} [anonymous-instance:main] second`]);
    expect(fs.statSync(p).mode & 0o777 & ~0o600).toBe(0);
  });

  test('opens a FIFO without a reader at once, non-blocking', () => {
    const fd = sink(mkfifo('log.fifo'));
    expect(fs.writeSync(fd, 'x')).toBe(1);
  });

  test('names the path and the errno text when it cannot open', () => {
    const missing = path.join(dir, 'no', 'such', 'dir', 'vm.log');
    expect(() => openSink(missing, 'metrics')).toThrow(`cannot open metrics file ${missing}: no such file or directory (ENOENT)`);
    expect(() => openSink(dir)).toThrow(`cannot open log file ${dir}: illegal operation on a directory (EISDIR)`);
  });
});

describe('Logger', () => {
  function logTo(opts: Partial<ConstructorParameters<typeof Logger>[0]> = {}) {
    const p = path.join(dir, 'vm.log');
    const log = new Logger({ fd: sink(p), level: LogLevel.Info, thread: 'main', clock, ...opts });
    return { log, read: () => lines(fs.readFileSync(p, 'utf8')) };
  }

  test('writes the documented line format with and without level and origin', () => {
    const p = path.join(dir, 'vm.log');
    const fd = sink(p);
    const base = { fd, level: LogLevel.Trace, instanceId: 'vm1', clock };
    new Logger({ ...base, thread: 'main' }).info('boot', 'plain');
    new Logger({ ...base, thread: 'vcpu 0', showLevel: true }).warn('vmm/vcpu', 'with level');
    new Logger({ ...base, thread: 'vmm', showOrigin: true }).debug('devices/virtio/net', 'with origin');
    new Logger({ ...base, thread: 'api', showLevel: true, showOrigin: true }).error('api/server', 'with both');
    new Logger({ fd, level: LogLevel.Info, thread: 'main', clock, showLevel: true }).info('x', 'default id');
    expect(lines(fs.readFileSync(p, 'utf8'))).toEqual([
      `${STAMP} [vm1:main] plain`,
      `${STAMP} [vm1:vcpu 0:WARN] with level`,
      `${STAMP} [vm1:vmm:devices/virtio/net] with origin`,
      `${STAMP} [vm1:api:ERROR:api/server] with both`,
      `${STAMP} [anonymous-instance:main:INFO] default id`,
    ]);
  });

  test('writes the levels at or above the configured one, and nothing when Off', () => {
    let stamps = 0;
    const { log, read } = logTo({ level: LogLevel.Warning, showLevel: true, clock: () => (stamps++, T0) });
    log.error('t', 'e');
    log.warn('t', 'w');
    log.info('t', 'i');
    log.debug('t', 'd');
    log.trace('t', 't');
    log.log(LogLevel.Error, 't', 'e2');
    log.log(LogLevel.Debug, 't', 'd2');
    expect(read()).toEqual([`${STAMP} [anonymous-instance:main:ERROR] e`, `${STAMP} [anonymous-instance:main:WARN] w`, `${STAMP} [anonymous-instance:main:ERROR] e2`]);
    expect(stamps).toBe(3); // filtered calls never build a line
    expect(log.enabled(LogLevel.Warning)).toBe(true);
    expect(log.enabled(LogLevel.Info)).toBe(false);

    const off = new Logger({ fd: 1_000_000, level: LogLevel.Off, thread: 'main' });
    off.error('t', 'nothing');
    expect(off.enabled(LogLevel.Error)).toBe(false);
    expect(off.lostLines).toBe(0);
    Logger.off().error('t', 'nothing either');

    const trace = logTo({ level: LogLevel.Trace });
    trace.log.trace('t', 'all');
    expect(trace.read()).toHaveLength(4);
  });

  test('the module filter keeps only origins under it', () => {
    const { log, read } = logTo({ module: 'vmm::devices', showOrigin: true });
    log.info('vmm/devices/net', 'kept');
    log.info('vmm/vcpu', 'dropped');
    expect(read()).toEqual([`${STAMP} [anonymous-instance:main:vmm/devices/net] kept`]);
  });

  test('a message with newlines stays one line', () => {
    const { log, read } = logTo();
    log.info('t', 'one\ntwo\r\nthree\n');
    expect(read()).toEqual([`${STAMP} [anonymous-instance:main] one\\ntwo\\r\\nthree\\n`]);
  });

  test('a long line is cut to PIPE_BUF bytes, marked, and stays one valid UTF-8 line', () => {
    const { log } = logTo();
    log.info('t', 'x'.repeat(10_000));
    log.info('t', '€'.repeat(3000)); // 3 bytes each
    log.info('t', '😀'.repeat(2000)); // 4 bytes each, a surrogate pair in UTF-16
    log.info('t', 'short');
    const raw = fs.readFileSync(path.join(dir, 'vm.log'));
    const ls = lines(raw.toString('utf8'));
    expect(ls).toHaveLength(4);
    for (const l of ls.slice(0, 3)) {
      expect(Buffer.byteLength(l) + 1).toBeLessThanOrEqual(PIPE_BUF);
      expect(Buffer.byteLength(l) + 1).toBeGreaterThan(PIPE_BUF - 4);
      expect(l.endsWith('…')).toBe(true);
      expect(l).not.toContain('\ufffd');
    }
    expect(Buffer.byteLength(ls[0]) + 1).toBe(PIPE_BUF);
    expect(ls[3]).toBe(`${STAMP} [anonymous-instance:main] short`);
  });

  test('a failing write is counted as lost, never thrown', () => {
    const lost = createLostCounter();
    const log = new Logger({ fd: 1_000_000, level: LogLevel.Info, thread: 'main', lost });
    const other = log.forThread('api');
    expect(() => log.info('t', 'to a bad fd')).not.toThrow();
    other.error('t', 'again');
    expect(Atomics.load(lost, 0)).toBe(2);
    expect(log.lostLines).toBe(2);
  });

  test('shared() carries the settings and the lost counter to another logger', () => {
    const p = path.join(dir, 'vm.log');
    const log = new Logger({ fd: sink(p), level: LogLevel.Debug, thread: 'main', instanceId: 'vm7', showLevel: true, clock });
    const shared = log.shared();
    expect(shared.lost).toBe(log.lost);
    const copy = structuredClone(shared);
    new Logger({ ...copy, thread: 'vcpu 1', clock }).debug('t', 'from the copy');
    expect(lines(fs.readFileSync(p, 'utf8'))).toEqual([`${STAMP} [vm7:vcpu 1:DEBUG] from the copy`]);
    Atomics.add(copy.lost!, 0, 5);
    expect(log.lostLines).toBe(5); // the clone shares the memory
  });
});

describe('Logger on a named pipe', () => {
  const LINE = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \[vm:(main|w\d)\] (main|w\d) line (\d+)$/;

  /** Far more than a pipe holds (64 KiB is about 1,500 of these lines), few enough for a loaded machine. */
  const LINES = 20_000;

  function writeMany(fd: number, n: number) {
    const lost = createLostCounter();
    const log = new Logger({ fd, level: LogLevel.Info, thread: 'main', instanceId: 'vm', lost, clock });
    const started = process.hrtime.bigint();
    for (let i = 0; i < n; i++) log.info('t', `main line ${i}`);
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    return { lost: Atomics.load(lost, 0), ms };
  }

  function checkPrefix(text: string, lost: number, n: number) {
    const ls = lines(text);
    expect(ls.length + lost).toBe(n);
    expect(lost).toBeGreaterThan(0);
    // Nothing drained the pipe while writing: what got in is the first lines, whole and in order.
    ls.forEach((l, i) => expect(l).toBe(`${STAMP} [vm:main] main line ${i}`));
  }

  test('with no reader: writes never block, lines read + lost = lines written', () => {
    const fifo = mkfifo('log.fifo');
    const fd = sink(fifo);
    const { lost, ms } = writeMany(fd, LINES);
    expect(ms).toBeLessThan(15_000);
    const reader = openReader(fifo);
    checkPrefix(drain(reader).toString('utf8'), lost, LINES);
  });

  test('with a reader that never reads: same', () => {
    const fifo = mkfifo('log.fifo');
    const reader = openReader(fifo);
    const fd = sink(fifo);
    const { lost, ms } = writeMany(fd, LINES);
    expect(ms).toBeLessThan(15_000);
    checkPrefix(drain(reader).toString('utf8'), lost, LINES);
  });

  test('several threads and a live reader: whole lines, read + lost = written', async () => {
    const fifo = mkfifo('log.fifo');
    const fd = sink(fifo);
    const out = path.join(dir, 'out.log');
    const outFd = track(fs.openSync(out, 'w'));
    const cat = spawn('cat', [fifo], { stdio: ['ignore', outFd, 'inherit'] });
    const catExit = new Promise<number | null>((resolve) => cat.once('exit', resolve));
    const lost = createLostCounter();
    const main = new Logger({ fd, level: LogLevel.Info, thread: 'main', instanceId: 'vm', lost, clock });
    const PER = 10_000;
    const workers = [1, 2, 3].map((i) =>
      runWorker({ script: MONITOR_WORKER, mode: 'log', logger: { ...main.shared(), fd }, thread: `w${i}`, lines: PER }),
    );
    for (let i = 0; i < PER; i++) main.info('t', `main line ${i}`);
    await Promise.all(workers);
    fs.closeSync(fd); // the last writer: cat sees the end of the stream
    expect(await catExit).toBe(0);
    const ls = lines(fs.readFileSync(out, 'utf8'));
    const seen = new Set<string>();
    for (const l of ls) {
      const m = LINE.exec(l);
      expect(m).not.toBeNull();
      expect(m![1]).toBe(m![2]);
      seen.add(`${m![2]} ${m![3]}`);
    }
    expect(seen.size).toBe(ls.length);
    expect(ls.length + Atomics.load(lost, 0)).toBe(4 * PER);
  }, 120_000); // four writers and cat: tens of seconds on a loaded 2-core machine
});

describe('MetricsRegistry', () => {
  const NET = ['rxFrames', 'txFrames'] as const;
  const layout: MetricsLayout = [
    { name: 'vmm', fields: ['boot_time_us', 'device_failures'], kind: { boot_time_us: 'gauge' } },
    { name: 'net.eth0', fields: NET },
  ];

  test('a group is a live, typed, sealed view of the shared slots', () => {
    const reg = MetricsRegistry.create(layout);
    const net = reg.group('net.eth0', NET);
    net.rxFrames++;
    net.rxFrames += 2;
    net.txFrames = 7;
    expect(reg.group('net.eth0')).toBe(net);
    expect({ ...net }).toEqual({ rxFrames: 3, txFrames: 7 });
    expect(JSON.parse(JSON.stringify(net))).toEqual({ rxFrames: 3, txFrames: 7 });
    expect(structuredClone(net)).toEqual({ rxFrames: 3, txFrames: 7 });
    expect(() => ((net as Record<string, number>).rxFrame = 1)).toThrow(TypeError);
    const other = MetricsRegistry.attach(reg.buffer, layout).group('net.eth0', NET);
    expect(other.rxFrames).toBe(3);
    expect(reg.snapshot()).toEqual({ vmm: { boot_time_us: 0, device_failures: 0 }, 'net.eth0': { rxFrames: 3, txFrames: 7 } });
  });

  test('refuses malformed layouts, mismatched fields and a foreign layout', () => {
    expect(() => MetricsRegistry.create([{ name: 'a', fields: ['x'] }, { name: 'a', fields: ['y'] }])).toThrow('group "a" appears twice');
    expect(() => MetricsRegistry.create([{ name: 'reason', fields: ['x'] }])).toThrow('group name "reason" is reserved');
    expect(() => MetricsRegistry.create([{ name: 'a', fields: ['x', 'x'] }])).toThrow('field "x" appears twice');
    expect(() => MetricsRegistry.create([{ name: 'a', fields: ['x'], kind: { y: 'gauge' } }])).toThrow('unknown field "y"');
    const reg = MetricsRegistry.create(layout);
    expect(() => reg.group('net.eth1')).toThrow('no metrics group "net.eth1"');
    expect(() => reg.group('net.eth0', ['rxFrames', 'rxBytes'])).toThrow('not in the layout: rxBytes; missing: txFrames');
    expect(() => MetricsRegistry.attach(reg.buffer, [layout[1], layout[0]])).toThrow('metrics layout differs');
    expect(() => MetricsRegistry.attach(reg.buffer, [{ ...layout[0], kind: 'gauge' }, layout[1]])).toThrow('metrics layout differs');
  });
});

describe('MetricsWriter', () => {
  const NET = ['rxFrames', 'txFrames'] as const;
  const layout: MetricsLayout = [
    { name: 'vmm', fields: ['boot_time_us', 'device_failures'], kind: { boot_time_us: 'gauge' } },
    { name: 'net.eth0', fields: NET },
  ];

  test('one JSON object per line; counters as deltas, gauges as values', () => {
    const p = path.join(dir, 'vm.metrics');
    const reg = MetricsRegistry.create(layout);
    const writer = new MetricsWriter({ fd: sink(p, 'metrics'), registry: reg, clock, lost: createLostCounter(), extra: () => ({ id: 'vm1' }) });
    const vmm = reg.group('vmm');
    const net = reg.group('net.eth0', NET);
    expect(writer.flush('start')).toBe(true);
    vmm.boot_time_us = 41_234;
    net.rxFrames += 5;
    net.txFrames++;
    expect(writer.flush('periodic')).toBe(true);
    expect(writer.flush('request')).toBe(true);
    net.rxFrames++;
    writer.flush('fatal');
    const ls = lines(fs.readFileSync(p, 'utf8'));
    expect(ls[1]).toBe(
      `{"utc_timestamp_ms":${T0},"id":"vm1","reason":"periodic","vmm":{"boot_time_us":41234,"device_failures":0},"net.eth0":{"rxFrames":5,"txFrames":1},"lost_metrics":0}`,
    );
    expect(ls.map((l) => JSON.parse(l))).toEqual([
      { utc_timestamp_ms: T0, reason: 'start', id: 'vm1', vmm: { boot_time_us: 0, device_failures: 0 }, 'net.eth0': { rxFrames: 0, txFrames: 0 }, lost_metrics: 0 },
      { utc_timestamp_ms: T0, reason: 'periodic', id: 'vm1', vmm: { boot_time_us: 41234, device_failures: 0 }, 'net.eth0': { rxFrames: 5, txFrames: 1 }, lost_metrics: 0 },
      { utc_timestamp_ms: T0, reason: 'request', id: 'vm1', vmm: { boot_time_us: 41234, device_failures: 0 }, 'net.eth0': { rxFrames: 0, txFrames: 0 }, lost_metrics: 0 },
      { utc_timestamp_ms: T0, reason: 'fatal', id: 'vm1', vmm: { boot_time_us: 41234, device_failures: 0 }, 'net.eth0': { rxFrames: 1, txFrames: 0 }, lost_metrics: 0 },
    ]);
    expect(net.rxFrames).toBe(6); // the writer never resets the shared slots
  });

  test('an extra() that throws is left out; lost log lines are reported', () => {
    const p = path.join(dir, 'vm.metrics');
    const logLost = createLostCounter();
    const writer = new MetricsWriter({
      fd: sink(p, 'metrics'),
      registry: MetricsRegistry.create([]),
      clock,
      logLost,
      extra: () => {
        throw new Error('boom');
      },
    });
    Atomics.add(logLost, 0, 3);
    writer.flush('request');
    writer.flush('request');
    expect(lines(fs.readFileSync(p, 'utf8')).map((l) => JSON.parse(l))).toEqual([
      { utc_timestamp_ms: T0, reason: 'request', lost_metrics: 0, lost_log_lines: 3 },
      { utc_timestamp_ms: T0, reason: 'request', lost_metrics: 0, lost_log_lines: 0 },
    ]);
  });

  test('start() writes a start line and periodic lines, stop() one exit line', async () => {
    const p = path.join(dir, 'vm.metrics');
    const writer = new MetricsWriter({ fd: sink(p, 'metrics'), registry: MetricsRegistry.create(layout) });
    writer.start(20);
    // At least one periodic line, however late the timer fires on a loaded machine.
    const end = Date.now() + 20_000;
    while (!(fs.existsSync(p) && fs.readFileSync(p, 'utf8').includes('"periodic"')) && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
    writer.stop();
    writer.stop();
    const reasons = lines(fs.readFileSync(p, 'utf8')).map((l) => JSON.parse(l).reason);
    expect(reasons[0]).toBe('start');
    expect(reasons.at(-1)).toBe('exit');
    expect(reasons.filter((r) => r === 'exit')).toHaveLength(1);
    expect(reasons.slice(1, -1).length).toBeGreaterThanOrEqual(1);
    expect(new Set(reasons.slice(1, -1))).toEqual(new Set(['periodic']));
  });

  test('counters incremented in worker threads show in the main thread, also after the workers ended', async () => {
    const VCPU = ['exits', 'io_exits', 'tsc_khz'];
    const vlayout: MetricsLayout = [0, 1].map((i) => ({ name: `vcpu.${i}`, fields: VCPU, kind: { tsc_khz: 'gauge' } }));
    const reg = MetricsRegistry.create(vlayout);
    const p = path.join(dir, 'vm.metrics');
    const writer = new MetricsWriter({ fd: sink(p, 'metrics'), registry: reg, clock });
    writer.flush('start');
    await Promise.all(
      [0, 1].map((i) =>
        runWorker({ script: MONITOR_WORKER, mode: 'metrics', metrics: reg.describe(), group: `vcpu.${i}`, fields: VCPU, times: 1000 * (i + 1), gauge: { field: 'tsc_khz', value: 2_000_000 + i } }),
      ),
    );
    writer.flush('fatal');
    const last = JSON.parse(lines(fs.readFileSync(p, 'utf8'))[1]);
    expect(last).toEqual({
      utc_timestamp_ms: T0,
      reason: 'fatal',
      'vcpu.0': { exits: 1000, io_exits: 1000, tsc_khz: 2_000_000 },
      'vcpu.1': { exits: 2000, io_exits: 2000, tsc_khz: 2_000_001 },
      lost_metrics: 0,
    });
  });

  test('lines dropped on a full pipe are counted and reported in the next written line', () => {
    const fifo = mkfifo('metrics.fifo');
    const fd = sink(fifo, 'metrics');
    const reader = openReader(fifo);
    const reg = MetricsRegistry.create(layout);
    const net = reg.group('net.eth0', NET);
    const lost = createLostCounter();
    const writer = new MetricsWriter({ fd, registry: reg, clock, lost });
    fillPipe(fd);
    for (let i = 0; i < 5; i++) {
      net.rxFrames++;
      expect(writer.flush('periodic')).toBe(false);
    }
    expect(writer.lostMetrics).toBe(5);
    drain(reader);
    expect(writer.flush('request')).toBe(true);
    const ls = lines(drain(reader).toString('utf8'));
    expect(ls).toHaveLength(1); // read + lost = 1 + 5 = written
    const line = JSON.parse(ls[0]);
    expect(line.lost_metrics).toBe(5);
    expect(line['net.eth0'].rxFrames).toBe(5); // the dropped intervals are not lost
    writer.flush('request');
    expect(JSON.parse(drain(reader).toString('utf8')).lost_metrics).toBe(0);
  });

  test('a line larger than the pipe is finished by later flushes before any other line', () => {
    const fifo = mkfifo('metrics.fifo');
    const fd = sink(fifo, 'metrics');
    const reader = openReader(fifo);
    const fields = Array.from({ length: 20_000 }, (_, i) => `some_rather_long_field_name_${i}`);
    const reg = MetricsRegistry.create([{ name: 'big', fields }]);
    const writer = new MetricsWriter({ fd, registry: reg, clock });
    let stream = '';
    expect(writer.flush('start')).toBe(true); // taken in part
    expect(writer.flush('periodic')).toBe(false); // the pipe is full: dropped
    let dropped = 1;
    for (;;) {
      stream += drain(reader).toString('utf8');
      if (writer.flush('request')) break;
      dropped++;
    }
    for (;;) {
      stream += drain(reader).toString('utf8');
      if (writer.flush('exit')) break;
    }
    stream += drain(reader).toString('utf8');
    const whole = stream.split('\n').slice(0, -1);
    expect(whole.length).toBeGreaterThanOrEqual(2);
    const [first, second] = whole.map((l) => JSON.parse(l));
    expect(first.reason).toBe('start');
    expect(second.reason).toBe('request');
    expect(second.lost_metrics).toBe(dropped);
    expect(Object.keys(second.big)).toHaveLength(20_000);
  });
});

describe('VmMonitor', () => {
  test('after a fatal line nothing more is written, even with the periodic timer running', async () => {
    const { VmMonitor } = await import('../../src/monitor/vm-monitor');
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fc-run-vmmon-'));
    try {
      const file = path.join(dir, 'm.jsonl');
      const m = new VmMonitor({ metrics: { path: file, emitId: false }, metricsIntervalMs: 5 }, 1, [], false);
      m.start();
      await new Promise((r) => setTimeout(r, 30));
      m.fatal('boom');
      const before = fs.readFileSync(file, 'utf8');
      await new Promise((r) => setTimeout(r, 40));
      expect(fs.readFileSync(file, 'utf8')).toBe(before);
      const reasons = before.trim().split('\n').map((l) => JSON.parse(l).fc_run.reason);
      expect(reasons[0]).toBe('start');
      expect(reasons[reasons.length - 1]).toBe('fatal');
      m.stop(); // no-op after fatal
      expect(fs.readFileSync(file, 'utf8')).toBe(before);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('metrics in Firecracker\'s shape', () => {
  type Line = Record<string, Record<string, number | Record<string, number>>> & { fc_run: Record<string, unknown> };
  let tmp: string;
  beforeEach(() => (tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'fc-run-fcmetrics-'))));
  afterEach(() => fs.rmSync(tmp, { recursive: true, force: true }));

  const devices = [
    { kind: 'block' as const, id: 'rootfs' },
    { kind: 'block' as const, id: 'data' },
    { kind: 'net' as const, id: 'eth0', mmds: true },
    { kind: 'vsock' as const, id: 'vsock' },
  ];
  const read = (file: string) => lines(fs.readFileSync(file, 'utf8')).map((l) => JSON.parse(l) as Line);

  test('per-device groups then their aggregate; counters as deltas; vCPU counts summed into vcpu and kept per vCPU in fc_run', async () => {
    const { VmMonitor } = await import('../../src/monitor/vm-monitor');
    const file = path.join(tmp, 'm.jsonl');
    const m = new VmMonitor({ instanceId: 'vm-7', metrics: { path: file, emitId: true, properties: { team: 'a' } } }, 2, devices, true);
    m.start();
    const reg = m.registry;
    reg.group('block_rootfs').reads += 3;
    reg.group('block_rootfs').readBytes += 1536;
    reg.group('block_data').reads += 2;
    reg.group('block_data').throttled += 1;
    reg.group('block_data').interrupts += 4;
    reg.group('vcpu0').exitsIoOut += 5;
    reg.group('vcpu1').exitsIoOut += 2;
    reg.group('vcpu1').serialTxBytes += 9;
    reg.group('vcpu0').i8042Resets += 1;
    reg.group('net_eth0').rxFrames += 4;
    reg.group('net_eth0').mmdsFramesIn += 6;
    reg.group('net_eth0').rxDropped += 1;
    reg.group('vsock').connectionsOpened += 1;
    reg.group('mmds').noToken += 1;
    m.countApiRequest('PUT', '/actions', true);
    m.countApiRequest('PATCH', '/drives/rootfs', false);
    m.countApiRequest('GET', '/', true);
    m.countApiRequest('DELETE', '/', false); // nothing in Firecracker counts it
    expect(m.flush()).toBe(true);
    reg.group('block_rootfs').reads += 1;
    m.stop();
    const [start, req, exit] = read(file);
    const top = Object.keys(req);
    expect(top.slice(0, 3)).toEqual(['utc_timestamp_ms', 'id', 'properties']);
    expect(top.indexOf('block_data')).toBeLessThan(top.indexOf('block'));
    expect(top.indexOf('block_rootfs')).toBeLessThan(top.indexOf('block'));
    expect(top.indexOf('net_eth0')).toBeLessThan(top.indexOf('net'));
    expect(top.at(-1)).toBe('fc_run');
    expect(top).not.toContain('rtc'); // x86_64 Firecracker has none
    expect(req).toMatchObject({ id: 'vm-7', properties: { team: 'a' } });
    expect(start.block_rootfs.read_count).toBe(0);
    expect(req.block_rootfs).toMatchObject({ read_count: 3, read_bytes: 1536, rate_limiter_throttled_events: 0 });
    expect(req.block_data).toMatchObject({ read_count: 2, rate_limiter_throttled_events: 1 });
    expect(req.block).toMatchObject({ read_count: 5, read_bytes: 1536, rate_limiter_throttled_events: 1, read_agg: { min_us: 0, max_us: 0, sum_us: 0 } });
    expect(exit.block_rootfs.read_count).toBe(1);
    expect(exit.block.read_count).toBe(1);
    expect(req.vcpu).toMatchObject({ exit_io_out: 7, exit_io_in: 0 });
    expect(req.uart.write_count).toBe(9);
    expect(req.i8042.reset_count).toBe(1);
    expect(req.net_eth0).toMatchObject({ rx_packets_count: 4, rx_count: 4 });
    expect(req.mmds).toMatchObject({ rx_accepted: 6, rx_no_token: 1 });
    expect(req.vsock.conns_added).toBe(1);
    expect(req.entropy.entropy_bytes).toBe(0); // no entropy device: the group is there, all zeros
    expect(req.interrupts.triggers).toBe(4);
    expect(req.put_api_requests).toMatchObject({ actions_count: 1, actions_fails: 0 });
    expect(req.patch_api_requests).toMatchObject({ drive_count: 1, drive_fails: 1 });
    expect(req.get_api_requests.instance_info_count).toBe(1);
    // fc-run's own counters: what has no Firecracker name, and every vCPU in full.
    const own = req.fc_run as Record<string, Record<string, number>> & { reason: string };
    expect(own.reason).toBe('request');
    expect(own.vcpu0).toMatchObject({ exits_io_out: 5, i8042_resets: 1 });
    expect(own.vcpu1).toMatchObject({ exits_io_out: 2, serial_tx_bytes: 9 });
    expect(own.net_eth0.rx_dropped).toBe(1);
    expect(own.net_eth0).not.toHaveProperty('rx_frames'); // shown as net_eth0.rx_packets_count
    expect(own.block_data.interrupts).toBe(4); // also summed into interrupts.triggers
    expect(own).not.toHaveProperty('api');
  });

  test('lost metrics and log lines are counted in logger; a fatal stop sets vmm.panic_count', async () => {
    const { VmMonitor } = await import('../../src/monitor/vm-monitor');
    const file = path.join(tmp, 'm.jsonl');
    const m = new VmMonitor({ metrics: { path: file, emitId: false } }, 1, [], false);
    m.start();
    const lost = m.shared().logger.lost;
    Atomics.add(lost!, 0, 2);
    m.fatal('boom'); // logs one line: the logger is off, so that one is not lost
    const [start, fatal] = read(file);
    expect(start).not.toHaveProperty('id');
    expect(start).not.toHaveProperty('properties');
    expect(start.vmm.panic_count).toBe(0);
    expect(fatal.vmm.panic_count).toBe(1);
    expect(fatal.logger).toEqual({ missed_metrics_count: 0, metrics_fails: 0, missed_log_count: 2, rate_limited_log_count: 0 });
    expect(fatal.fc_run.reason).toBe('fatal');
    expect(start.api_server.process_startup_time_us).toBeGreaterThan(0);
  });

  test('API requests map to Firecracker\'s request counters', async () => {
    const { apiRequestFields } = await import('../../src/monitor/vm-metrics');
    expect(apiRequestFields('GET', '/machine-config', true)).toEqual(['get_api_requests.machine_cfg_count']);
    expect(apiRequestFields('PUT', '/mmds', false)).toEqual(['put_api_requests.mmds_count', 'put_api_requests.mmds_fails']);
    expect(apiRequestFields('PATCH', '/network-interfaces/eth0/', true)).toEqual(['patch_api_requests.network_count']);
    expect(apiRequestFields('PUT', '/actions?x=1', false)).toEqual(['put_api_requests.actions_count', 'put_api_requests.actions_fails']);
    expect(apiRequestFields('PUT', '/drives/rootfs', true)).toEqual([]); // not possible on a running fc-run VM
    expect(apiRequestFields('GET', '/nope', true)).toEqual([]);
  });
});
