import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as nodePath from 'node:path';
import type { RunningVm } from '../boot/launch';
import type { VmMonitor } from '../monitor/vm-monitor';
import { EXIT_FAILURE, FcRunError } from '../errors';
import { claimSocketPath } from '../kvm/unix-socket';
import { findDeepNesting, MAX_JSON_DEPTH } from '../config/json-depth';

/**
 * The optional HTTP API for changing a running microVM, on a Unix socket (`--api-sock`), with
 * Firecracker's paths and bodies for what fc-run can change at run time:
 *
 *   GET   /                            instance info
 *   PUT   /actions                     {"action_type": "FlushMetrics" | "SendCtrlAltDel"}
 *   GET   /mmds, PUT /mmds, PATCH /mmds (JSON merge patch)
 *   PATCH /drives/{id}                 {"drive_id", "rate_limiter"}
 *   PATCH /network-interfaces/{id}     {"iface_id", "rx_rate_limiter", "tx_rate_limiter"}
 *
 * Every error is `{"fault_message": "…"}` with a 4xx status, or 503 (the VM is not running, the
 * VMM thread did not answer, the API is full), also for requests Node's HTTP parser refuses; a
 * 500 means a bug. Everything else about a VM is its spec.
 */

export interface ApiContext {
  id: string;
  version: string;
  monitor: VmMonitor;
  /** Set while the VM runs. */
  vm?: RunningVm;
  /** The VM has stopped: every request gets 503. */
  stopped?: boolean;
  /** Largest request body accepted. */
  maxBody: number;
}

class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

type Bucket = { size?: unknown; one_time_burst?: unknown; refill_time?: unknown };

/** A bucket change: a configuration, or null to remove the bucket. */
export type BucketChange = { size: number; refill_time: number; one_time_burst?: number } | null;
export type LimiterChange = { bandwidth?: BucketChange; ops?: BucketChange };

/**
 * A rate limiter body as Firecracker's API takes it: a bucket left out stays as it is; `null`, or
 * a size or refill_time of 0, removes it.
 */
function limiterChange(where: string, value: unknown): LimiterChange {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new ApiError(400, `${where}: expected an object with "bandwidth" and/or "ops"`);
  const out: LimiterChange = {};
  for (const key of Object.keys(value)) {
    if (key !== 'bandwidth' && key !== 'ops') throw new ApiError(400, `${where}: unknown field "${key}" (expected "bandwidth" or "ops")`);
    const b = (value as Record<string, unknown>)[key];
    if (b === null) {
      out[key] = null;
      continue;
    }
    if (typeof b !== 'object' || Array.isArray(b)) throw new ApiError(400, `${where}.${key}: expected an object or null`);
    const bucket = b as Bucket;
    // Other keys in a bucket are ignored, as Firecracker's TokenBucketConfig (no deny_unknown_fields) does.
    const int = (name: string, v: unknown) => {
      if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw new ApiError(400, `${where}.${key}.${name}: expected an integer >= 0`);
      return v;
    };
    const size = int('size', bucket.size);
    const refill = int('refill_time', bucket.refill_time);
    if (size === 0 || refill === 0) {
      out[key] = null;
      continue;
    }
    out[key] = { size, refill_time: refill, ...(bucket.one_time_burst !== undefined && bucket.one_time_burst !== null ? { one_time_burst: int('one_time_burst', bucket.one_time_burst) } : {}) };
  }
  return out;
}

/** A URL or name as shown in messages and log lines: bounded, and quoted so control bytes stay visible. */
function shown(text: string, max = 100): string {
  return JSON.stringify(text.length > max ? `${text.slice(0, max)}…` : text);
}

/**
 * Reads a JSON body. Nesting is checked on the text before parsing: every walker of the value
 * afterwards (merge patch, the control channel, the MMDS renderer) recurses.
 */
function readBody(req: http.IncomingMessage, max: number, phase: (receiving: boolean) => void): Promise<unknown> {
  const declared = Number(req.headers['content-length']);
  if (declared > max) return Promise.reject(new ApiError(413, `the request body is larger than ${max} bytes`));
  phase(true);
  return new Promise<unknown>((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > max) {
        // Stop reading; the 413 goes out, then the connection closes.
        req.removeAllListeners('data');
        req.pause();
        reject(new ApiError(413, `the request body is larger than ${max} bytes`));
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8');
      if (text.trim() === '') return resolve(undefined);
      const deep = findDeepNesting(text);
      if (deep) return reject(new ApiError(400, `the body nests arrays and objects deeper than ${MAX_JSON_DEPTH} levels (at character ${deep.offset}); at most ${MAX_JSON_DEPTH} are allowed`));
      let value: unknown;
      try {
        // A number past a double's range parses as Infinity and would be stored (and served) as null.
        value = JSON.parse(text, (_k, v: unknown) => {
          if (typeof v === 'number' && !Number.isFinite(v)) throw new ApiError(400, 'the body has a number beyond the range of a double');
          return v;
        });
      } catch (err) {
        return reject(err instanceof ApiError ? err : new ApiError(400, `the body is not valid JSON: ${(err as Error).message}`));
      }
      resolve(value);
    });
    // The connection went away (or was closed to make room) before the body was complete.
    req.on('close', () => {
      if (!req.complete) reject(new ApiError(400, 'the connection closed before the request body was complete'));
    });
    req.on('error', () => reject(new ApiError(400, 'the request body could not be read')));
  }).finally(() => phase(false));
}

const isObject = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);
const typeName = (v: unknown) => (v === null ? 'null' : Array.isArray(v) ? 'an array' : typeof v === 'object' ? 'an object' : `a ${typeof v}`);

/** The devices whose rate limiters PATCH can change, by path prefix. */
const PATCHABLE: Record<string, { idKey: string; limiters: string[]; what: string; control: 'drive' | 'iface' }> = {
  drives: { idKey: 'drive_id', limiters: ['rate_limiter'], what: 'drive', control: 'drive' },
  'network-interfaces': { idKey: 'iface_id', limiters: ['rx_rate_limiter', 'tx_rate_limiter'], what: 'interface', control: 'iface' },
};

const ACTIONS = ['FlushMetrics', 'SendCtrlAltDel'];

/** Runs an operation on the VM; its refusals (the VM stopping, say) become API errors with their message. */
async function vmOperation<T>(op: () => Promise<T>): Promise<T> {
  try {
    return await op();
  } catch (err) {
    if (err instanceof FcRunError) throw new ApiError(err.code === 'vm-stopped' ? 503 : 400, err.message);
    throw err;
  }
}

async function route(ctx: ApiContext, method: string, url: string, req: http.IncomingMessage, receiving: (on: boolean) => void): Promise<{ status: number; body?: unknown }> {
  const path = url.split('?')[0].replace(/\/+$/, '') || '/';
  const allow = (methods: string[]) => {
    if (!methods.includes(method)) throw new ApiError(405, `${method} is not allowed on ${shown(path)} (allowed: ${methods.join(', ')})`);
  };
  if (ctx.stopped) throw new ApiError(503, 'the microVM has stopped');
  const running = () => {
    if (!ctx.vm) throw new ApiError(503, ctx.stopped ? 'the microVM has stopped' : 'the microVM is not running yet');
    return ctx.vm;
  };
  const param = (raw: string) => {
    try {
      return decodeURIComponent(raw);
    } catch {
      throw new ApiError(400, `malformed percent-encoding in ${shown(path)}`);
    }
  };
  const control = async (request: unknown) => {
    const c = running().control;
    if (!c) throw new ApiError(400, 'this microVM has no virtio devices');
    const reply = await c.request(request);
    if (!reply.ok) throw new ApiError(reply.status, reply.message);
    return reply.value;
  };
  /** The body, which must be a JSON object; `example` shows what one looks like. */
  const objectBody = async (example: string) => {
    const body = await readBody(req, ctx.maxBody, receiving);
    if (body === undefined) throw new ApiError(400, `${method} ${path} needs a JSON object body, like ${example}`);
    if (!isObject(body)) throw new ApiError(400, `${method} ${path} needs a JSON object body, like ${example}; got ${typeName(body)}`);
    return body;
  };
  if (path === '/') {
    allow(['GET']);
    return { status: 200, body: { id: ctx.id, state: ctx.vm ? (ctx.vm.paused ? 'Paused' : 'Running') : 'Not started', vmm_version: ctx.version, app_name: 'fc-run' } };
  }
  if (path === '/vm') {
    allow(['PATCH']);
    const body = await objectBody('{"state": "Paused"}');
    const unknown = Object.keys(body).filter((k) => k !== 'state');
    if (unknown.length > 0) throw new ApiError(400, `unknown field ${shown(unknown[0])} (only "state" can change)`);
    const vm = running();
    if (body.state === 'Paused') await vmOperation(() => vm.pause());
    else if (body.state === 'Resumed') await vmOperation(() => vm.resume());
    else throw new ApiError(400, `state must be "Paused" or "Resumed", got ${typeof body.state === 'string' ? shown(body.state) : typeName(body.state)}`);
    return { status: 204 };
  }
  if (path === '/actions') {
    allow(['PUT']);
    const body = await objectBody('{"action_type": "FlushMetrics"}');
    const unknown = Object.keys(body).filter((k) => k !== 'action_type');
    if (unknown.length > 0) throw new ApiError(400, `unknown field ${shown(unknown[0])} in the action (only "action_type" is allowed)`);
    const action = body.action_type;
    if (action === 'FlushMetrics') {
      if (!ctx.monitor.flush()) throw new ApiError(400, 'no metrics are configured (metrics_path or --metrics-path), or the line could not be written');
      return { status: 204 };
    }
    if (action === 'SendCtrlAltDel') {
      running().sendCtrlAltDel();
      return { status: 204 };
    }
    if (action === 'InstanceStart') throw new ApiError(400, 'the microVM starts from its spec; InstanceStart is not needed');
    const got = typeof action === 'string' ? shown(action) : typeName(action);
    throw new ApiError(400, `action_type must be ${ACTIONS.map((a) => `"${a}"`).join(' or ')}, got ${got}`);
  }
  if (path === '/snapshot/create') {
    allow(['PUT']);
    const body = await objectBody('{"snapshot_type": "Full", "snapshot_path": "vm.snap", "mem_file_path": "vm.mem"}');
    const unknown = Object.keys(body).filter((k) => !['snapshot_type', 'snapshot_path', 'mem_file_path'].includes(k));
    if (unknown.length > 0) throw new ApiError(400, `unknown field ${shown(unknown[0])} (a snapshot takes snapshot_type, snapshot_path and mem_file_path)`);
    const type = body.snapshot_type ?? 'Full';
    if (type !== 'Full' && type !== 'Diff') throw new ApiError(400, `snapshot_type must be "Full" or "Diff", got ${typeof type === 'string' ? shown(type) : typeName(type)}`);
    const file = (key: string) => {
      const v = body[key];
      if (typeof v !== 'string' || v.length === 0) throw new ApiError(400, `${key} must be a non-empty path, got ${typeof v === 'string' ? 'an empty string' : typeName(v)}`);
      if (v.includes('\0') || v.length > 4096) throw new ApiError(400, `${key} is not a usable path`);
      return nodePath.resolve(v);
    };
    const req = { type: type as 'Full' | 'Diff', snapshotPath: file('snapshot_path'), memFilePath: file('mem_file_path') };
    const vm = running();
    const report = await vmOperation(() => vm.createSnapshot(req));
    const diff = report.diff ? `; Diff: ${report.diff.pages} changed page(s), ${report.diff.method}` : '';
    ctx.monitor.log.info('api', `${type} snapshot written: ${report.snapshotPath} (${report.stateBytes} bytes of state, ${report.memory.written} of ${report.memory.size} bytes of memory${diff}) in ${report.ms.toFixed(1)} ms`);
    return { status: 204 };
  }
  if (path === '/mmds') {
    allow(['GET', 'PUT', 'PATCH']);
    if (method === 'GET') return { status: 200, body: await control({ op: 'mmds-get' }) };
    const body = await objectBody('{"latest": {"meta-data": {"ami-id": "ami-1"}}}');
    await control({ op: method === 'PUT' ? 'mmds-put' : 'mmds-patch', data: body });
    return { status: 204 };
  }
  for (const [prefix, kind] of Object.entries(PATCHABLE)) {
    const m = new RegExp(`^/${prefix}/([^/]+)$`).exec(path);
    if (!m) continue;
    allow(['PATCH']);
    const id = param(m[1]);
    const body = await objectBody(`{"${kind.idKey}": "${kind.what === 'drive' ? 'rootfs' : 'eth0'}", "${kind.limiters[0]}": {"bandwidth": {"size": 1048576, "refill_time": 1000}}}`);
    const given = body[kind.idKey];
    if (given !== undefined && typeof given !== 'string') throw new ApiError(400, `${kind.idKey} must be a string, got ${typeName(given)}`);
    if (given !== undefined && given !== id) throw new ApiError(400, `${kind.idKey} ${shown(given)} does not match the path (${shown(id)})`);
    const unknown = Object.keys(body).filter((k) => k !== kind.idKey && !kind.limiters.includes(k));
    if (unknown.length > 0) throw new ApiError(400, `only ${kind.limiters.join(' and ')} can change on a running ${kind.what} (got ${unknown.slice(0, 5).map((k) => shown(k, 40)).join(', ')})`);
    const limiters: Record<string, LimiterChange> = {};
    for (const k of kind.limiters) if (body[k] !== undefined) limiters[k] = limiterChange(k, body[k]);
    if (Object.keys(limiters).length === 0) throw new ApiError(400, `nothing to change: give ${kind.limiters.join(' and/or ')}`);
    await control({ op: 'limiters', kind: kind.control, id, limiters });
    return { status: 204 };
  }
  throw new ApiError(404, `no such path: ${shown(path)}`);
}

export interface ApiServer {
  /** Stops listening and removes the socket file (if it is still the one this server made). */
  close(): void;
}

/** How much of the process a client can hold, and for how long. */
export interface ApiLimits {
  /** Open connections; at the limit a new client takes the place of the one idle or slow the longest, or gets 503. */
  maxConnections: number;
  /** Time to send the request line and headers. */
  headersTimeoutMs: number;
  /** Time to send the whole request, body included. */
  requestTimeoutMs: number;
  /** A connection with no traffic at all for this long is closed. */
  idleTimeoutMs: number;
  /** A connection between requests is closed after this long. */
  keepAliveTimeoutMs: number;
  /** A request still being answered after this long (a client that does not read its response) may be closed to make room. */
  stuckMs: number;
  /** After a last response, input is read and dropped for this long before the socket closes. */
  lingerMs: number;
}

export const DEFAULT_API_LIMITS: ApiLimits = {
  maxConnections: 16,
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 15_000,
  idleTimeoutMs: 15_000,
  keepAliveTimeoutMs: 5_000,
  stuckMs: 10_000,
  lingerMs: 2_000,
};

/** A connection's state, for choosing which one makes room for a new client. */
interface Connection {
  /** waiting: for (the rest of) a request's head, or idle between requests; receiving: a body; answering: the request is complete and being handled. */
  phase: 'waiting' | 'receiving' | 'answering';
  since: number;
  res?: http.ServerResponse;
}

/** What a Node HTTP parse error means for the client, as a status and a message. */
function parseFault(err: NodeJS.ErrnoException): { status: number; message: string } {
  const detail = err.message.replace(/^Parse Error: /, '');
  switch (err.code) {
    case 'ERR_HTTP_REQUEST_TIMEOUT':
      return { status: 408, message: 'the request was not complete in time; send the whole request at once' };
    case 'HPE_HEADER_OVERFLOW':
      return { status: 431, message: 'the request line and headers are too large' };
    case 'HPE_PAUSED_H2_UPGRADE':
      return { status: 400, message: 'HTTP/2 is not supported; use HTTP/1.1' };
    case 'HPE_INVALID_METHOD':
      return { status: 400, message: 'malformed request: the method is not a known HTTP method' };
    default:
      return { status: 400, message: `malformed HTTP request: ${detail}` };
  }
}

/**
 * Starts listening on `socketPath`, readable and writable by the owner only. A stale socket file
 * (nobody listening) is replaced; a live one is refused.
 */
export async function startApi(socketPath: string, ctx: ApiContext, limitsIn: Partial<ApiLimits> = {}): Promise<ApiServer> {
  const limits = { ...DEFAULT_API_LIMITS, ...limitsIn };
  // The flag names a path the user chose: anything but a stale socket there is a usage error.
  claimSocketPath(socketPath, '--api-sock', EXIT_FAILURE);
  const connections = new Map<net.Socket, Connection>();
  /** Connections answered on the raw socket: later parse errors on them are not answered again. */
  const answered = new WeakSet<net.Socket>();
  /**
   * Closes a connection after its last response without cutting that response off: the write
   * side closes, what the client still sends is read and dropped for a moment, then the socket
   * goes. Closing at once with input unread would reset the connection, and a client still
   * writing its request would lose the answer.
   */
  const lingering = new Set<net.Socket>();
  const linger = (socket: net.Socket) => {
    if (lingering.has(socket)) return;
    // Lingering sockets are out of `connections` but still hold fds: a client opening connections
    // in a loop, each pushing an older one out, would otherwise keep hundreds open. At most
    // maxConnections linger; the oldest is cut to make room.
    if (lingering.size >= limits.maxConnections) {
      const oldest = lingering.values().next().value as net.Socket;
      lingering.delete(oldest);
      oldest.destroy();
    }
    lingering.add(socket);
    socket.once('close', () => lingering.delete(socket));
    socket.end();
    socket.on('data', () => undefined);
    socket.resume();
    socket.once('end', () => (socket.writableFinished ? socket.destroy() : socket.once('finish', () => socket.destroy())));
    setTimeout(() => socket.destroy(), limits.lingerMs).unref();
  };
  const setPhase = (socket: net.Socket, phase: Connection['phase'], res?: http.ServerResponse) => {
    const c = connections.get(socket);
    if (c) Object.assign(c, { phase, since: Date.now() }, res ? { res } : {});
  };
  /**
   * An error answered on the raw socket, where there is no response object (a request Node could
   * not parse, a connection turned away): the same JSON as every other error, then the
   * connection closes. A response already under way cannot be interrupted cleanly: cut it.
   */
  const answerRaw = (socket: net.Socket, status: number, message: string) => {
    const res = connections.get(socket)?.res;
    connections.delete(socket);
    if (!socket.writable || res?.headersSent) {
      socket.destroy();
      return;
    }
    if (answered.has(socket)) return;
    answered.add(socket);
    const body = JSON.stringify({ fault_message: message });
    const head = [`HTTP/1.1 ${status} ${http.STATUS_CODES[status] ?? ''}`, 'Content-Type: application/json', `Content-Length: ${Buffer.byteLength(body)}`, 'Connection: close'];
    socket.write(`${head.join('\r\n')}\r\n\r\n${body}`);
    linger(socket);
  };
  const warn = (message: string) => ctx.monitor.log.warn('api', message);

  const server = http.createServer({ requireHostHeader: false, connectionsCheckingInterval: Math.min(1000, limits.headersTimeoutMs) }, (req, res) => {
    const socket = req.socket;
    setPhase(socket, 'answering', res);
    res.on('finish', () => setPhase(socket, 'waiting'));
    const receiving = (on: boolean) => setPhase(socket, on ? 'receiving' : 'answering');
    route(ctx, req.method ?? 'GET', req.url ?? '/', req, receiving)
      .then(({ status, body }) => {
        ctx.monitor.countApiRequest(req.method ?? 'GET', req.url ?? '/', status < 400);
        if (res.headersSent || !socket.writable) return;
        if (body === undefined) {
          res.writeHead(status).end();
        } else {
          const text = JSON.stringify(body);
          res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) }).end(text);
        }
      })
      .catch((err: unknown) => {
        const status = err instanceof ApiError ? err.status : 500;
        ctx.monitor.countApiRequest(req.method ?? 'GET', req.url ?? '/', false);
        const message = err instanceof ApiError ? err.message : `internal error (a bug in fc-run): ${(err as Error)?.message ?? String(err)}`;
        warn(`${req.method} ${shown(req.url ?? '/')}: ${status} ${message}`);
        if (res.headersSent || !socket.writable) return;
        const text = JSON.stringify({ fault_message: message });
        const closing = status === 413 || !req.complete;
        res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text), ...(closing ? { Connection: 'close' } : {}) });
        res.end(text);
      });
  });
  // A client cannot hold the process's fds (which the VMM and vCPU threads share) or wait forever.
  server.headersTimeout = limits.headersTimeoutMs;
  server.requestTimeout = limits.requestTimeoutMs;
  server.keepAliveTimeout = limits.keepAliveTimeoutMs;
  server.timeout = limits.idleTimeoutMs;
  // A client that half-closes after its request (nc -N, socat) still gets the response; without
  // this Node drops requests still being answered when the client's FIN arrives.
  (server as unknown as { httpAllowHalfOpen: boolean }).httpAllowHalfOpen = true;
  server.on('connection', (socket: net.Socket) => {
    // Node closes a connection after a response with "Connection: close" through destroySoon:
    // linger instead, for the reason above.
    socket.destroySoon = () => linger(socket);
    // Errors reach 'clientError' while Node parses; after CONNECT or an upgrade they would be uncaught.
    socket.on('error', () => undefined);
    socket.on('close', () => connections.delete(socket));
    if (connections.size >= limits.maxConnections) {
      // Make room: the connection waiting or receiving the longest goes; one answering only when stuck.
      const now = Date.now();
      let victim: [net.Socket, Connection] | undefined;
      for (const entry of connections) {
        const [, c] = entry;
        if (c.phase === 'answering' && now - c.since < limits.stuckMs) continue;
        if (!victim || c.since < victim[1].since) victim = entry;
      }
      if (!victim) {
        warn(`a client was turned away: ${limits.maxConnections} connections are busy`);
        answerRaw(socket, 503, `the API is busy: ${limits.maxConnections} connections are open and all are being answered; try again`);
        return;
      }
      warn(`closed a connection ${victim[1].phase === 'answering' ? 'whose client does not read its response' : 'that was idle or slow'} to make room for a new one`);
      answerRaw(victim[0], 503, `this connection was closed to make room for a new one (at most ${limits.maxConnections} are kept); send each request at once`);
    }
    connections.set(socket, { phase: 'waiting', since: Date.now() });
  });
  server.on('clientError', (err: NodeJS.ErrnoException, socket: net.Socket) => {
    if (err.code === 'ECONNRESET' || err.code === 'EPIPE') {
      socket.destroy();
      return;
    }
    const { status, message } = parseFault(err);
    warn(`${status} ${message}`);
    answerRaw(socket, status, message);
  });
  // Without a listener Node answers an unknown Expect with an empty 417 of its own.
  server.on('checkExpectation', (req: http.IncomingMessage, res: http.ServerResponse) => {
    const text = JSON.stringify({ fault_message: `Expect: ${shown(String(req.headers.expect ?? ''), 40)} is not supported (only 100-continue is)` });
    res.writeHead(417, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text), Connection: 'close' }).end(text);
  });
  server.on('connect', (req: http.IncomingMessage, socket: net.Socket) => answerRaw(socket, 405, `${req.method} is not supported by this API`));
  server.on('upgrade', (req: http.IncomingMessage, socket: net.Socket) => answerRaw(socket, 400, `protocol upgrades are not supported (Upgrade: ${shown(String(req.headers.upgrade ?? ''), 40)}); send plain HTTP/1.1 requests`));
  server.unref();
  const old = process.umask(0o177); // the socket file: 0600
  let ino: number;
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) => reject(new FcRunError('api-sock', `cannot listen on --api-sock ${socketPath}: ${(err as NodeJS.ErrnoException).code ?? err.message}`)));
      server.listen(socketPath, () => resolve());
    });
  } finally {
    process.umask(old);
  }
  fs.chmodSync(socketPath, 0o600);
  ino = fs.statSync(socketPath).ino;
  return {
    close: () => {
      server.close();
      for (const socket of connections.keys()) socket.destroy();
      try {
        if (fs.statSync(socketPath).ino === ino) fs.unlinkSync(socketPath);
      } catch {
        // already gone
      }
    },
  };
}
