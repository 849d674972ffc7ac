/**
 * The human-readable VMM log (the spec's `logger` section), modelled on Firecracker's logger.
 *
 * One {@link Logger} per thread, all writing to the same fd:
 *
 * ```ts
 * // main thread
 * const lost = createLostCounter();
 * const fd = openSink(spec.logger.log_path, 'log');
 * const log = new Logger({ fd, level: parseLogLevel(spec.logger.level ?? 'Info'), showLevel: true,
 *   showOrigin: true, thread: 'main', instanceId: spec.id, lost });
 * log.info('boot', 'launching microVM');
 * new Worker(script, { workerData: { logger: log.shared(), ... } });
 *
 * // in the worker
 * const log = new Logger({ ...workerData.logger, thread: 'vcpu 0' });
 * log.warn('vmm/vcpu', 'unhandled MSR write');
 * ```
 *
 * A line reads `2024-05-01T12:00:00.123Z [instance:vcpu 0:WARN:vmm/vcpu] unhandled MSR write`
 * (the level and origin only with `showLevel` / `showOrigin`). Every line is written with a single
 * non-blocking `write(2)` of at most {@link PIPE_BUF} bytes, so lines from different threads never
 * interleave, a slow or absent reader of a named pipe never blocks a thread, and a line that cannot
 * be written is dropped and counted in the shared lost counter.
 */
import { EXIT_INVALID_SPEC, FcRunError } from '../errors';
import { PIPE_BUF, writeOnce } from './sink';

export { openSink, openSinkInfo, PIPE_BUF } from './sink';

/**
 * Log levels, most severe first, as Firecracker names them. A logger configured at level L writes
 * the messages whose level is L or more severe; `Off` writes nothing.
 */
export enum LogLevel {
  Off = 0,
  Error = 1,
  Warning = 2,
  Info = 3,
  Debug = 4,
  Trace = 5,
}

/** Firecracker's default level. */
export const DEFAULT_LOG_LEVEL = LogLevel.Info;

/** How each level is written in a line when `showLevel` is on (Firecracker's spelling). */
export const LEVEL_TAGS: Readonly<Record<Exclude<LogLevel, LogLevel.Off>, string>> = {
  [LogLevel.Error]: 'ERROR',
  [LogLevel.Warning]: 'WARN',
  [LogLevel.Info]: 'INFO',
  [LogLevel.Debug]: 'DEBUG',
  [LogLevel.Trace]: 'TRACE',
};

const LEVEL_NAMES: Readonly<Record<string, LogLevel>> = {
  off: LogLevel.Off,
  error: LogLevel.Error,
  warning: LogLevel.Warning,
  warn: LogLevel.Warning,
  info: LogLevel.Info,
  debug: LogLevel.Debug,
  trace: LogLevel.Trace,
};

/**
 * Parses the spec's `logger.level`: `Error`, `Warning`, `Info`, `Debug`, `Trace` or `Off`,
 * case-insensitive; `Warn` is accepted as `Warning`, as Firecracker does.
 *
 * @throws FcRunError (code `log-level`, exit status 2) for anything else, listing what is accepted.
 */
export function parseLogLevel(value: string): LogLevel {
  const level = typeof value === 'string' ? LEVEL_NAMES[value.toLowerCase()] : undefined;
  if (level === undefined) {
    throw new FcRunError(
      'log-level',
      `invalid log level ${JSON.stringify(value)}: expected one of Error, Warning, Info, Debug, Trace, Off (case-insensitive; "Warn" means Warning)`,
      EXIT_INVALID_SPEC,
    );
  }
  return level;
}

/**
 * A shared counter of dropped lines: an `Int32Array` of length 1 on a `SharedArrayBuffer`, so all
 * threads add to the same slot (pass it through `workerData`; structured cloning keeps the memory
 * shared). Read it with `Atomics.load(lost, 0)`.
 */
export function createLostCounter(): Int32Array {
  return new Int32Array(new SharedArrayBuffer(4));
}

/** The logger settings that can cross to a worker thread in `workerData` (see {@link Logger.shared}). */
export interface SharedLoggerOptions {
  /** Process-wide fd from {@link openSink}; ignored when `level` is `Off`. */
  fd: number;
  /** Least severe level written. */
  level: LogLevel;
  /** Write the level tag (`INFO`, `WARN`, ...) in each line's header. Default false. */
  showLevel?: boolean;
  /** Write the origin tag in each line's header. Default false. */
  showOrigin?: boolean;
  /** The microVM id written first in each header. Default `anonymous-instance` (as Firecracker). */
  instanceId?: string;
  /**
   * Shared counter of dropped lines (index 0), incremented with `Atomics.add`; see
   * {@link createLostCounter}. Default: a private counter of this logger.
   */
  lost?: Int32Array;
  /**
   * Only write messages whose origin starts with this prefix (the spec's `logger.module`). A `::`
   * in it is read as `/`, so `vmm::devices` selects the origins `vmm/devices...`. Default: all.
   */
  module?: string;
}

/** Options of {@link Logger}. */
export interface LoggerOptions extends SharedLoggerOptions {
  /** Name of the writing thread, in each header: `main`, `vmm`, `vcpu 0`, `api`... */
  thread: string;
  /** Milliseconds since the epoch; default `Date.now`. Not passed to workers. */
  clock?: () => number;
}

/** The id Firecracker writes when the microVM has none. */
export const ANONYMOUS_INSTANCE = 'anonymous-instance';

const ELLIPSIS = '…';
const ELLIPSIS_BYTES = Buffer.byteLength(ELLIPSIS);
/** Bytes of a line before its '\n'. */
const MAX_BODY = PIPE_BUF - 1;

/**
 * Writes log lines for one thread. Construct one per thread with the same fd and the same `lost`
 * array; the methods never throw and never block.
 *
 * Cost: a call below the configured level is one comparison. When building the message itself is
 * costly, guard it with {@link Logger.enabled}.
 */
export class Logger {
  /** Least severe level written. */
  readonly level: LogLevel;
  /** Shared counter of dropped lines (index 0). */
  readonly lost: Int32Array;
  private readonly opts: LoggerOptions;
  private readonly clock: () => number;
  private readonly module: string | undefined;
  /** `[instance:thread` */
  private readonly head: string;
  /** Per level: the header between the thread and the origin (`:WARN`), or ''. */
  private readonly levelTags: string[];
  /** One line's bytes; lines are built here to avoid an allocation per line. */
  private readonly buf = Buffer.allocUnsafe(PIPE_BUF);

  constructor(options: LoggerOptions) {
    this.opts = { ...options };
    this.level = options.level;
    this.lost = options.lost ?? createLostCounter();
    this.clock = options.clock ?? Date.now;
    this.module = options.module ? options.module.replace(/::/g, '/') : undefined;
    this.head = `[${escapeLine(options.instanceId ?? ANONYMOUS_INSTANCE)}:${escapeLine(options.thread)}`;
    this.levelTags = [];
    for (const l of [LogLevel.Error, LogLevel.Warning, LogLevel.Info, LogLevel.Debug, LogLevel.Trace] as const) {
      this.levelTags[l] = options.showLevel ? `:${LEVEL_TAGS[l]}` : '';
    }
  }

  /** A logger that writes nothing (level `Off`), for when the spec has no `logger` section. */
  static off(thread = 'main'): Logger {
    return new Logger({ fd: -1, level: LogLevel.Off, thread });
  }

  /**
   * The settings to hand to a worker thread in `workerData`: plain data plus the shared `lost`
   * array. The worker builds its own logger with `new Logger({ ...shared, thread: 'vcpu 0' })`.
   */
  shared(): SharedLoggerOptions {
    const { fd, level, showLevel, showOrigin, instanceId, module } = this.opts;
    return { fd, level, showLevel, showOrigin, instanceId, module, lost: this.lost };
  }

  /** A logger with the same settings, clock and lost counter, for another thread name on this thread. */
  forThread(thread: string): Logger {
    return new Logger({ ...this.opts, lost: this.lost, thread });
  }

  /** Lines dropped so far by all the loggers sharing this one's `lost` array. */
  get lostLines(): number {
    return Atomics.load(this.lost, 0);
  }

  /** Whether a message at `level` would be written (ignoring the module filter). */
  enabled(level: LogLevel): boolean {
    return level !== LogLevel.Off && level <= this.level;
  }

  /** Logs at level Error. `origin` is a source tag such as `devices/virtio/net`. */
  error(origin: string, message: string): void {
    if (this.level >= LogLevel.Error) this.write(LogLevel.Error, origin, message);
  }

  /** Logs at level Warning. */
  warn(origin: string, message: string): void {
    if (this.level >= LogLevel.Warning) this.write(LogLevel.Warning, origin, message);
  }

  /** Logs at level Info. */
  info(origin: string, message: string): void {
    if (this.level >= LogLevel.Info) this.write(LogLevel.Info, origin, message);
  }

  /** Logs at level Debug. */
  debug(origin: string, message: string): void {
    if (this.level >= LogLevel.Debug) this.write(LogLevel.Debug, origin, message);
  }

  /** Logs at level Trace. */
  trace(origin: string, message: string): void {
    if (this.level >= LogLevel.Trace) this.write(LogLevel.Trace, origin, message);
  }

  /** Logs at `level` (a no-op for `Off`). */
  log(level: LogLevel, origin: string, message: string): void {
    if (level !== LogLevel.Off && this.level >= level) this.write(level, origin, message);
  }

  /**
   * Builds and writes one line; drops it (counting it in `lost`) if the write fails or is partial.
   * Never throws: whatever goes wrong, the caller carries on.
   */
  private write(level: Exclude<LogLevel, LogLevel.Off>, origin: string, message: string): void {
    try {
      if (this.module !== undefined && !origin.startsWith(this.module)) return;
      const originTag = this.opts.showOrigin ? `:${escapeLine(origin)}` : '';
      const line = `${new Date(this.clock()).toISOString()} ${this.head}${this.levelTags[level]}${originTag}] ${escapeLine(message)}`;
      const buf = this.buf;
      let len: number;
      // A UTF-16 code unit takes at most 3 UTF-8 bytes: short strings need no byte count.
      if (line.length * 3 <= MAX_BODY || Buffer.byteLength(line) <= MAX_BODY) {
        len = buf.write(line, 0, 'utf8');
      } else {
        // Buffer.write never writes part of a character, so the cut is on a character boundary.
        len = buf.write(line, 0, MAX_BODY - ELLIPSIS_BYTES, 'utf8');
        len += buf.write(ELLIPSIS, len, 'utf8');
      }
      buf[len++] = 0x0a;
      if (writeOnce(this.opts.fd, buf, len) !== len) Atomics.add(this.lost, 0, 1);
    } catch {
      Atomics.add(this.lost, 0, 1);
    }
  }
}

/**
 * Makes `text` safe inside one line: `\n` and `\r` become the two characters `\n` and `\r`, so one
 * call always gives one line.
 */
export function escapeLine(text: string): string {
  return /[\r\n]/.test(text) ? text.replace(/\r/g, '\\r').replace(/\n/g, '\\n') : text;
}
