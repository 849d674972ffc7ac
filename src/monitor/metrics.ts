/**
 * Metrics (the spec's `metrics` section), modelled on Firecracker's: counters that every thread
 * increments in shared memory, and a writer on the main thread that prints them as one JSON object
 * per line to a file or named pipe.
 *
 * ```ts
 * // every thread computes the same layout from the same inputs (the boot plan)
 * const layout: MetricsLayout = [
 *   { name: 'vmm', fields: ['boot_time_us', 'device_failures'], kind: { boot_time_us: 'gauge' } },
 *   { name: 'net.eth0', fields: NET_FIELDS },
 *   ...plan.vcpus.map((_, i) => ({ name: `vcpu.${i}`, fields: VCPU_FIELDS })),
 * ];
 * // main thread
 * const registry = MetricsRegistry.create(layout);
 * const writer = new MetricsWriter({ fd: openSink(path, 'metrics'), registry, lost: createLostCounter() });
 * writer.start();                                   // 'start' line, then one every 60 s
 * process.on('exit', () => writer.stop());          // 'exit' line
 * new Worker(script, { workerData: { metrics: registry.describe(), ... } });
 *
 * // in a worker (the VMM thread)
 * const registry = MetricsRegistry.attach(workerData.metrics.buffer, workerData.metrics.layout);
 * const counters = registry.group('net.eth0', NET_FIELDS);   // Record<NetField, number>
 * counters.rxFrames++;                              // a plain store into shared memory
 * ```
 *
 * Threading rule: every slot has exactly one writing thread (the thread owning the device or the
 * vCPU); other threads only read. Under that rule a plain `counters.x++` is race-free, and the
 * main thread can read every slot at any time, including after a worker died. Slots are aligned
 * 8-byte `Float64Array` elements, which V8 reads and writes with single instructions on x86-64, so
 * a reader never sees half of a store. Counts are exact up to 2^53.
 */
import { FcRunError } from '../errors';
import { writeOnce } from './sink';
import { createLostCounter } from './logger';

/**
 * `counter`: a monotonically increasing count (frames, bytes, exits); each metrics line reports
 * how much it grew since the previous line written. `gauge`: a value set from time to time (boot
 * time, queue depth); each line reports the current value.
 */
export type MetricKind = 'counter' | 'gauge';

/** One group of metrics: one JSON object in each metrics line. */
export interface MetricGroupSpec {
  /** Top-level key in each line: `vmm`, `net.eth0`, `block.rootfs`, `vcpu.0`, `mmds`... Unique. */
  readonly name: string;
  /** Field names, unique within the group; the JSON keys of the group's object, in this order. */
  readonly fields: readonly string[];
  /**
   * Kind of every field (one value), or of some fields (a map, fields not in it are counters).
   * Default: all counters.
   */
  readonly kind?: MetricKind | Readonly<Record<string, MetricKind>>;
}

/**
 * The groups of a metrics registry, in order. Threads that share a registry must compute the same
 * layout ({@link MetricsRegistry.attach} checks it); it is plain data, so it can also be passed
 * in `workerData` ({@link MetricsRegistry.describe}).
 */
export type MetricsLayout = readonly MetricGroupSpec[];

/** Keys every metrics line has at the top level; no group may use them. */
export const RESERVED_METRIC_KEYS = ['utc_timestamp_ms', 'reason', 'lost_metrics', 'lost_log_lines'] as const;

/** A resolved group: where its slots are. */
export interface MetricGroupInfo {
  readonly name: string;
  readonly fields: readonly string[];
  readonly kinds: readonly MetricKind[];
  /** Index of the group's first slot in {@link MetricsRegistry.values}. */
  readonly offset: number;
}

/** What a worker needs to attach to a registry; structured-cloneable (`workerData`). */
export interface MetricsDescription {
  buffer: SharedArrayBuffer;
  layout: MetricsLayout;
}

/** Slots before the metric slots: [0] holds the layout's fingerprint. */
const HEADER_SLOTS = 1;

/**
 * The shared counters of one microVM: a `SharedArrayBuffer` holding one `Float64Array` slot per
 * field of the layout. Create it on the main thread, attach to it in the workers.
 */
export class MetricsRegistry {
  /** The groups, in layout order. */
  readonly groups: readonly MetricGroupInfo[];
  /** All metric slots (without the header), in layout order. */
  readonly values: Float64Array;
  private readonly byName = new Map<string, MetricGroupInfo>();
  private readonly views = new Map<string, Record<string, number>>();

  private constructor(
    readonly buffer: SharedArrayBuffer,
    readonly layout: MetricsLayout,
  ) {
    const groups: MetricGroupInfo[] = [];
    let offset = 0;
    for (const g of layout) {
      const kinds = g.fields.map((f) => (typeof g.kind === 'string' ? g.kind : (g.kind?.[f] ?? 'counter')));
      const info = { name: g.name, fields: [...g.fields], kinds, offset };
      groups.push(info);
      this.byName.set(g.name, info);
      offset += g.fields.length;
    }
    this.groups = groups;
    this.values = new Float64Array(buffer, HEADER_SLOTS * 8, offset);
  }

  /**
   * Allocates the shared memory for `layout`, all slots 0.
   * @throws FcRunError (code `metrics-layout`) if the layout is malformed: duplicate or reserved
   *   group names, duplicate fields, kinds for unknown fields.
   */
  static create(layout: MetricsLayout): MetricsRegistry {
    const slots = checkLayout(layout);
    const buffer = new SharedArrayBuffer((HEADER_SLOTS + slots) * 8);
    new Float64Array(buffer)[0] = fingerprint(layout);
    return new MetricsRegistry(buffer, layout);
  }

  /**
   * Attaches to a registry created by {@link MetricsRegistry.create} in another thread.
   * @throws FcRunError (code `metrics-layout`) if `layout` is not the one the buffer was created for.
   */
  static attach(buffer: SharedArrayBuffer, layout: MetricsLayout): MetricsRegistry {
    const slots = checkLayout(layout);
    if (buffer.byteLength !== (HEADER_SLOTS + slots) * 8 || new Float64Array(buffer, 0, 1)[0] !== fingerprint(layout)) {
      throw new FcRunError('metrics-layout', 'metrics layout differs from the one the shared metrics were created with');
    }
    return new MetricsRegistry(buffer, layout);
  }

  /** The buffer and layout, to pass to a worker in `workerData` and give to {@link attach}. */
  describe(): MetricsDescription {
    return { buffer: this.buffer, layout: this.layout };
  }

  /** Whether the layout has a group of that name. */
  has(name: string): boolean {
    return this.byName.has(name);
  }

  /**
   * The live view of a group: an object with one enumerable accessor property per field, reading
   * and writing the group's shared slots, so device code keeps writing `counters.rxFrames++`.
   * The object is sealed (a misspelt field throws in strict code instead of being silently added);
   * spreading it, `JSON.stringify` and `postMessage` see the current values. The same object is
   * returned for each call with the same name.
   *
   * Only the one thread that owns the group may write to it (see the module notes).
   *
   * @param fields the fields the caller expects; they must be exactly the group's fields (in any
   *   order). Passing them also types the result: `Record<K, number>`.
   * @throws FcRunError (code `metrics-layout`) for an unknown group or mismatched fields.
   */
  group<K extends string>(name: string, fields: readonly K[]): Record<K, number>;
  group(name: string): Record<string, number>;
  group(name: string, fields?: readonly string[]): Record<string, number> {
    const info = this.byName.get(name);
    if (!info) throw new FcRunError('metrics-layout', `no metrics group "${name}" in the layout`);
    if (fields) {
      const missing = info.fields.filter((f) => !fields.includes(f));
      const extra = fields.filter((f) => !info.fields.includes(f));
      if (missing.length || extra.length) {
        const parts = [extra.length ? `not in the layout: ${extra.join(', ')}` : '', missing.length ? `missing: ${missing.join(', ')}` : ''];
        throw new FcRunError('metrics-layout', `metrics group "${name}" fields differ from the layout (${parts.filter(Boolean).join('; ')})`);
      }
    }
    let view = this.views.get(name);
    if (!view) {
      view = makeView(this.values, info);
      this.views.set(name, view);
    }
    return view;
  }

  /** The current values of every group, as plain data (gauges and counters alike, not deltas). */
  snapshot(): Record<string, Record<string, number>> {
    const out: Record<string, Record<string, number>> = {};
    for (const g of this.groups) {
      const o: Record<string, number> = {};
      g.fields.forEach((f, i) => (o[f] = this.values[g.offset + i]));
      out[g.name] = o;
    }
    return out;
  }
}

function makeView(values: Float64Array, info: MetricGroupInfo): Record<string, number> {
  const view: Record<string, number> = {};
  info.fields.forEach((field, i) => {
    const slot = info.offset + i;
    Object.defineProperty(view, field, {
      enumerable: true,
      get: () => values[slot],
      set: (v: number) => {
        values[slot] = v;
      },
    });
  });
  return Object.seal(view);
}

/** Validates a layout and returns its number of slots. */
function checkLayout(layout: MetricsLayout): number {
  const fail = (msg: string): never => {
    throw new FcRunError('metrics-layout', `invalid metrics layout: ${msg}`);
  };
  const names = new Set<string>();
  let slots = 0;
  for (const g of layout) {
    if (typeof g.name !== 'string' || g.name === '') fail('a group has no name');
    if ((RESERVED_METRIC_KEYS as readonly string[]).includes(g.name)) fail(`group name "${g.name}" is reserved`);
    if (names.has(g.name)) fail(`group "${g.name}" appears twice`);
    names.add(g.name);
    const fields = new Set<string>();
    for (const f of g.fields) {
      if (typeof f !== 'string' || f === '') fail(`group "${g.name}" has a field without a name`);
      if (fields.has(f)) fail(`field "${f}" appears twice in group "${g.name}"`);
      fields.add(f);
    }
    if (g.kind !== undefined) {
      const kinds = typeof g.kind === 'string' ? { '': g.kind } : g.kind;
      for (const [f, k] of Object.entries(kinds)) {
        if (typeof g.kind !== 'string' && !fields.has(f)) fail(`group "${g.name}" gives a kind to unknown field "${f}"`);
        if (k !== 'counter' && k !== 'gauge') fail(`group "${g.name}" field "${f}" has kind "${String(k)}" (expected counter or gauge)`);
      }
    }
    slots += g.fields.length;
  }
  return slots;
}

/** FNV-1a (32-bit) of the layout's canonical form: names, fields and kinds in order. */
function fingerprint(layout: MetricsLayout): number {
  const text = JSON.stringify(layout.map((g) => [g.name, g.fields, g.fields.map((f) => (typeof g.kind === 'string' ? g.kind : (g.kind?.[f] ?? 'counter')))]));
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/** Why a metrics line was written; the `reason` field of the line. */
export type FlushReason = 'start' | 'periodic' | 'request' | 'exit' | 'fatal';

/**
 * A number in a metrics line: the sum of some slots of the registry ({@link MetricsRegistry.values}
 * indices, or {@link LOST_METRICS_SLOT} / {@link LOST_LOG_SLOT}). A `counter` reports how much the
 * sum grew since the previous line written, a `gauge` the sum itself. No slots: always 0 (a field
 * kept for the shape of the line that nothing counts).
 */
export class MetricSum {
  constructor(
    readonly slots: readonly number[],
    readonly kind: MetricKind = 'counter',
  ) {}
}

/** The place of the flush reason (`start`, `periodic`...) in a line. */
export const FLUSH_REASON = Object.freeze({ flushReason: true as const });

/** The shape of a metrics line below `utc_timestamp_ms`: nested objects whose leaves are sums or the reason. */
export interface MetricTree {
  [key: string]: MetricSum | typeof FLUSH_REASON | MetricTree;
}

/** Pseudo-slot: metrics lines dropped (the writer's `lost` counter). */
export const LOST_METRICS_SLOT = -1;
/** Pseudo-slot: log lines dropped (the writer's `logLost` counter; 0 without one). */
export const LOST_LOG_SLOT = -2;

/**
 * fc-run's generic line shape: `reason`, one object per group with its fields, `lost_metrics`
 * and (with `logLost`) `lost_log_lines`.
 */
export function groupsTree(registry: MetricsRegistry, logLost: boolean): MetricTree {
  const tree: MetricTree = { reason: FLUSH_REASON };
  for (const g of registry.groups) {
    const o: MetricTree = {};
    g.fields.forEach((f, i) => (o[f] = new MetricSum([g.offset + i], g.kinds[i])));
    tree[g.name] = o;
  }
  tree.lost_metrics = new MetricSum([LOST_METRICS_SLOT]);
  if (logLost) tree.lost_log_lines = new MetricSum([LOST_LOG_SLOT]);
  return tree;
}

/** Options of {@link MetricsWriter}. */
export interface MetricsWriterOptions {
  /** Fd from `openSink(path, 'metrics')`. The writer does not close it. */
  fd: number;
  registry: MetricsRegistry;
  /** Milliseconds since the epoch; default `Date.now`. */
  clock?: () => number;
  /** Counter of dropped metrics lines (index 0). Default: a private one. */
  lost?: Int32Array;
  /** The loggers' lost-lines counter; when given, each line reports `lost_log_lines` (a delta). */
  logLost?: Int32Array;
  /**
   * Extra top-level keys for each line, such as `{ id }` (`emit_id`) or `{ properties }`. Called
   * at every flush; must return JSON-serialisable data. Its keys come before the groups; a key equal
   * to a group name or a reserved key is overridden by them. If it throws, the line is written
   * without the extra keys.
   */
  extra?: () => Record<string, unknown>;
  /** The shape of each line after `utc_timestamp_ms` and the extra keys. Default: {@link groupsTree}. */
  tree?: MetricTree;
}

/**
 * Writes the registry's metrics as JSON lines, on the main thread:
 *
 * `{"utc_timestamp_ms":1714564800123,<extra>,<tree>}`, the tree by default ({@link groupsTree})
 * `"reason":"periodic","vmm":{"boot_time_us":41234,...},"net.eth0":{"rxFrames":12,...},...,"lost_metrics":0`;
 * the microVM's lines use Firecracker's shape instead (see `firecracker-metrics.ts`).
 *
 * - Counters report how much they grew since the last line that was written (Firecracker resets
 *   its counters at each flush; here the writer keeps the values it last wrote and subtracts them,
 *   never writing to the shared slots, so it cannot race with the threads that count). When a line
 *   is dropped, the next written line covers both intervals: the sum of a counter over all written
 *   lines is its total.
 * - Gauges report their current value.
 * - `lost_metrics` is the number of lines dropped since the last written line (likewise
 *   `lost_log_lines` with {@link MetricsWriterOptions.logLost}).
 *
 * Writing never blocks and never throws. A line is written with one non-blocking `write(2)`; if the
 * write fails (`EAGAIN` on a full pipe, any error) the line is dropped and counted in `lost`. A
 * line longer than `PIPE_BUF` may be taken only in part by a pipe: the writer then keeps the rest
 * and writes it, before anything else, at the next flushes, so the reader always sees whole lines
 * (a new line is dropped while an old tail is still pending). There is a single writer per fd,
 * so such lines cannot interleave with others.
 */
export class MetricsWriter {
  private readonly fd: number;
  private readonly registry: MetricsRegistry;
  private readonly clock: () => number;
  /** Counter of dropped lines (index 0). */
  readonly lost: Int32Array;
  private readonly logLost: Int32Array | undefined;
  private readonly extra: (() => Record<string, unknown>) | undefined;
  private readonly tree: MetricTree;
  /** Slot values in the last line written, then the lost counters (see {@link read}). */
  private readonly last: Float64Array;
  /** The unwritten end of a line a pipe took only in part. */
  private pending: Buffer | undefined;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(options: MetricsWriterOptions) {
    this.fd = options.fd;
    this.registry = options.registry;
    this.clock = options.clock ?? Date.now;
    this.lost = options.lost ?? createLostCounter();
    this.logLost = options.logLost;
    this.extra = options.extra;
    this.tree = options.tree ?? groupsTree(this.registry, this.logLost !== undefined);
    this.last = new Float64Array(this.registry.values.length + 2);
  }

  /** Lines dropped so far. */
  get lostMetrics(): number {
    return Atomics.load(this.lost, 0);
  }

  /**
   * Writes one line now. Synchronous, so it can run in `process.on('exit')` or an
   * `uncaughtException` handler (reason `fatal`), and it reads the shared slots directly, so it
   * works when worker threads are dead. Never throws.
   *
   * @returns true if the line was written (possibly with a tail still pending), false if dropped.
   */
  flush(reason: FlushReason): boolean {
    try {
      if (this.pending) {
        const n = writeOnce(this.fd, this.pending);
        if (n > 0) this.pending = n < this.pending.length ? this.pending.subarray(n) : undefined;
        if (this.pending) {
          Atomics.add(this.lost, 0, 1);
          return false;
        }
      }
      const n0 = this.registry.values.length;
      const values = new Float64Array(n0 + 2);
      values.set(this.registry.values);
      values[n0] = Atomics.load(this.lost, 0);
      values[n0 + 1] = this.logLost ? Atomics.load(this.logLost, 0) : 0;
      const line = Buffer.from(`${JSON.stringify(this.build(reason, values))}\n`);
      const n = writeOnce(this.fd, line);
      if (n <= 0) {
        Atomics.add(this.lost, 0, 1);
        return false;
      }
      if (n < line.length) this.pending = Buffer.from(line.subarray(n));
      this.last.set(values);
      return true;
    } catch {
      Atomics.add(this.lost, 0, 1);
      return false;
    }
  }

  /**
   * Writes a `start` line, then a `periodic` line every `intervalMs` (Firecracker: 60 s). The
   * timer is unref'd: it never keeps the process alive. Calling it again restarts the timer.
   */
  start(intervalMs = 60_000): void {
    if (this.timer) clearInterval(this.timer);
    this.stopped = false;
    this.flush('start');
    this.timer = setInterval(() => this.flush('periodic'), intervalMs);
    this.timer.unref();
  }

  /**
   * Stops the periodic lines and writes the `exit` line (once: later calls do nothing until the
   * next {@link start}).
   */
  stop(reason: 'exit' | 'fatal' = 'exit'): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    if (this.stopped) return;
    this.stopped = true;
    this.flush(reason);
  }

  private build(reason: FlushReason, values: Float64Array): Record<string, unknown> {
    const line: Record<string, unknown> = { utc_timestamp_ms: this.clock() };
    if (this.extra) {
      let extra: Record<string, unknown> | undefined;
      try {
        extra = this.extra();
        JSON.stringify(extra);
      } catch {
        extra = undefined;
      }
      if (extra) for (const [k, v] of Object.entries(extra)) if (!(k in line) && !(k in this.tree)) line[k] = v;
    }
    const n0 = this.registry.values.length;
    const index = (slot: number) => (slot >= 0 ? slot : slot === LOST_METRICS_SLOT ? n0 : n0 + 1);
    const render = (tree: MetricTree, out: Record<string, unknown>): Record<string, unknown> => {
      for (const [key, node] of Object.entries(tree)) {
        if (node === FLUSH_REASON) out[key] = reason;
        else if (node instanceof MetricSum) {
          let now = 0;
          let before = 0;
          for (const s of node.slots) {
            now += values[index(s)];
            before += this.last[index(s)];
          }
          out[key] = node.kind === 'gauge' ? now : now - before;
        } else out[key] = render(node as MetricTree, {});
      }
      return out;
    };
    return render(this.tree, line);
  }
}
