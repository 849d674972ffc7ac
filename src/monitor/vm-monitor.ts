import * as fs from 'node:fs';
import { ANONYMOUS_INSTANCE, createLostCounter, Logger, LogLevel, parseLogLevel } from './logger';
import type { SharedLoggerOptions } from './logger';
import { MetricsRegistry, MetricsWriter } from './metrics';
import type { MetricsLayout } from './metrics';
import { openSink } from './sink';
import { FcRunError } from '../errors';
import { API_FIELDS, apiRequestFields, MeteredDevice, VMM_FIELDS, vmMetricsLayout } from './vm-metrics';
import { firecrackerMetricsTree } from './firecracker-metrics';

/** Where logs and metrics go, from the spec's `logger`/`metrics` sections and the CLI flags. */
export interface MonitorConfig {
  instanceId?: string;
  /** No `path`: lines go to standard error. */
  log?: { path?: string; level: string; showLevel: boolean; showOrigin: boolean; module?: string };
  metrics?: { path: string; emitId: boolean; properties?: Record<string, string> };
  /** Milliseconds between periodic metrics lines (Firecracker: 60 s). */
  metricsIntervalMs?: number;
}

/**
 * One microVM's logger and metrics: the main thread's logger, the shared metrics memory every
 * thread counts into, and the writer that flushes it as JSON lines at start, periodically, at
 * exit and on a fatal error.
 */
export class VmMonitor {
  readonly log: Logger;
  readonly registry: MetricsRegistry;
  readonly vmm: Record<(typeof VMM_FIELDS)[number], number>;
  private readonly api: Record<(typeof API_FIELDS)[number], number>;
  private readonly writer: MetricsWriter | undefined;
  private readonly fds: number[] = [];
  private started = false;
  private stopped = false;

  constructor(
    private readonly config: MonitorConfig,
    vcpus: number,
    devices: readonly MeteredDevice[],
    mmds: boolean,
  ) {
    const instanceId = config.instanceId ?? ANONYMOUS_INSTANCE;
    const lost = createLostCounter();
    try {
      this.openSinks(config);
    } catch (err) {
      this.close();
      throw err;
    }
    const [logFd, metricsFd] = [this.logFd, this.metricsFd];
    if (config.log) {
      this.log = new Logger({ fd: logFd ?? 2, level: parseLogLevel(config.log.level), showLevel: config.log.showLevel, showOrigin: config.log.showOrigin, module: config.log.module, instanceId, lost, thread: 'main' });
    } else {
      this.log = new Logger({ fd: -1, level: LogLevel.Off, thread: 'main', instanceId, lost });
    }
    this.registry = MetricsRegistry.create(vmMetricsLayout(vcpus, devices, mmds));
    this.vmm = this.registry.group('vmm', VMM_FIELDS);
    this.api = this.registry.group('api', API_FIELDS);
    if (config.metrics && metricsFd !== undefined) {
      const { emitId, properties } = config.metrics;
      this.writer = new MetricsWriter({
        fd: metricsFd,
        registry: this.registry,
        logLost: lost,
        tree: firecrackerMetricsTree(this.registry, devices),
        extra: () => ({ ...(emitId ? { id: instanceId } : {}), ...(properties && Object.keys(properties).length > 0 ? { properties } : {}) }),
      });
    }
  }

  private logFd: number | undefined;
  private metricsFd: number | undefined;

  /** Opens the log and metrics files; one file for both would mix their lines, so it is refused. */
  private openSinks(config: MonitorConfig): void {
    if (config.log?.path) this.fds.push((this.logFd = openSink(config.log.path, 'log')));
    if (config.metrics) this.fds.push((this.metricsFd = openSink(config.metrics.path, 'metrics')));
    if (this.logFd !== undefined && this.metricsFd !== undefined) {
      const [a, b] = [fs.fstatSync(this.logFd), fs.fstatSync(this.metricsFd)];
      if (a.dev === b.dev && a.ino === b.ino) {
        throw new FcRunError('monitor-same-file', `the log and the metrics would both go to ${config.metrics!.path}: give them different files or pipes`);
      }
    }
  }

  /** What a worker thread needs to log and count. */
  shared(): { logger: SharedLoggerOptions; metrics: { buffer: SharedArrayBuffer; layout: MetricsLayout } } {
    return { logger: this.log.shared(), metrics: this.registry.describe() };
  }

  /**
   * Counts an API request in Firecracker's `get_api_requests`/`put_api_requests`/
   * `patch_api_requests` groups (`ok`: it succeeded). Call it on the main thread once per request.
   */
  countApiRequest(method: string, path: string, ok: boolean): void {
    for (const f of apiRequestFields(method, path, ok)) this.api[f]++;
  }

  /** The VM is about to run: the first metrics line, then one every interval. */
  start(): void {
    if (this.started) return;
    this.started = true;
    // Firecracker's api_server startup times: from the process's start to now, wall and CPU.
    // (process.uptime, not performance.now: the global `performance` loads perf_hooks, ~10 modules.)
    this.vmm.processStartupTimeUs = Math.round(process.uptime() * 1e6);
    const cpu = process.cpuUsage();
    this.vmm.processStartupTimeCpuUs = cpu.user + cpu.system;
    this.writer?.start(this.config.metricsIntervalMs ?? 60_000);
  }

  /** A metrics line now (the API's FlushMetrics will call this). */
  flush(): boolean {
    return this.writer?.flush('request') ?? false;
  }

  /** The last metrics line (reason "exit") and the files closed. Safe to call more than once. */
  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    if (this.started) this.writer?.stop();
    this.close();
  }

  /** Something fatal happened: say it in the log and flush the metrics (reason "fatal") before dying. */
  fatal(message: string): void {
    if (this.stopped) return;
    this.stopped = true;
    this.vmm.panicCount = 1;
    this.log.error('vmm', message);
    if (this.started) this.writer?.stop('fatal');
    else this.writer?.flush('fatal');
    this.close();
  }

  private close(): void {
    for (const fd of this.fds.splice(0)) {
      try {
        fs.closeSync(fd);
      } catch {
        // already closed
      }
    }
  }
}
