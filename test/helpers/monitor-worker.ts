// Worker side of test/unit/monitor.test.ts (run through test/helpers/ts-worker.js): writes log lines
// or increments shared metrics from a real worker thread, then reports back.
import { parentPort, workerData } from 'node:worker_threads';
import { Logger, type SharedLoggerOptions } from '../../src/monitor/logger';
import { MetricsRegistry, type MetricsDescription } from '../../src/monitor/metrics';

export type MonitorWorkerData =
  | { script: string; mode: 'log'; logger: SharedLoggerOptions; thread: string; lines: number }
  | { script: string; mode: 'metrics'; metrics: MetricsDescription; group: string; fields: string[]; times: number; gauge?: { field: string; value: number } };

const data = workerData as MonitorWorkerData;
if (data.mode === 'log') {
  const log = new Logger({ ...data.logger, thread: data.thread });
  for (let i = 0; i < data.lines; i++) log.info('test/worker', `${data.thread} line ${i}`);
  parentPort!.postMessage({ done: true });
} else {
  const registry = MetricsRegistry.attach(data.metrics.buffer, data.metrics.layout);
  const counters = registry.group(data.group, data.fields);
  for (let i = 0; i < data.times; i++) for (const f of data.fields) if (f !== data.gauge?.field) counters[f]++;
  if (data.gauge) counters[data.gauge.field] = data.gauge.value;
  parentPort!.postMessage({ done: true });
}
