import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import type { RunningVm } from '../boot/launch';
import type { VmMonitor } from '../monitor/vm-monitor';
import { FcRunError } from '../errors';

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
 * Errors are `{"fault_message": "…"}` with 400 (bad request), 404 (no such path), 405, 413 or
 * 503 (the VM is not running yet). Everything else about a VM is its spec.
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
    for (const k of Object.keys(bucket)) if (!['size', 'one_time_burst', 'refill_time'].includes(k)) throw new ApiError(400, `${where}.${key}: unknown field "${k}"`);
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

function readBody(req: http.IncomingMessage, max: number): Promise<unknown> {
  const declared = Number(req.headers['content-length']);
  if (declared > max) return Promise.reject(new ApiError(413, `the request body is larger than ${max} bytes`));
  return new Promise((resolve, reject) => {
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
      try {
        resolve(JSON.parse(text));
      } catch (err) {
        reject(new ApiError(400, `the body is not valid JSON: ${(err as Error).message}`));
      }
    });
    req.on('error', reject);
  });
}

/** The devices whose rate limiters PATCH can change, by path prefix. */
const PATCHABLE: Record<string, { idKey: string; limiters: string[]; what: string; control: 'drive' | 'iface' }> = {
  drives: { idKey: 'drive_id', limiters: ['rate_limiter'], what: 'drive', control: 'drive' },
  'network-interfaces': { idKey: 'iface_id', limiters: ['rx_rate_limiter', 'tx_rate_limiter'], what: 'interface', control: 'iface' },
};

async function route(ctx: ApiContext, method: string, url: string, req: http.IncomingMessage): Promise<{ status: number; body?: unknown }> {
  const path = url.split('?')[0].replace(/\/+$/, '') || '/';
  const allow = (methods: string[]) => {
    if (!methods.includes(method)) throw new ApiError(405, `${method} is not allowed on ${path} (allowed: ${methods.join(', ')})`);
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
      throw new ApiError(400, `malformed percent-encoding in ${path}`);
    }
  };
  const control = async (request: unknown) => {
    const c = running().control;
    if (!c) throw new ApiError(400, 'this microVM has no virtio devices');
    const reply = await c.request(request);
    if (!reply.ok) throw new ApiError(reply.status, reply.message);
    return reply.value;
  };
  if (path === '/') {
    allow(['GET']);
    return { status: 200, body: { id: ctx.id, state: ctx.vm ? 'Running' : 'Not started', vmm_version: ctx.version, app_name: 'fc-run' } };
  }
  if (path === '/actions') {
    allow(['PUT']);
    const body = (await readBody(req, ctx.maxBody)) as { action_type?: unknown } | undefined;
    const action = body?.action_type;
    if (action === 'FlushMetrics') {
      if (!ctx.monitor.flush()) throw new ApiError(400, 'no metrics are configured (metrics_path or --metrics-path), or the line could not be written');
      return { status: 204 };
    }
    if (action === 'SendCtrlAltDel') {
      running().sendCtrlAltDel();
      return { status: 204 };
    }
    if (action === 'InstanceStart') throw new ApiError(400, 'the microVM starts from its spec; InstanceStart is not needed');
    throw new ApiError(400, `action_type must be "FlushMetrics" or "SendCtrlAltDel", got ${JSON.stringify(action)}`);
  }
  if (path === '/mmds') {
    allow(['GET', 'PUT', 'PATCH']);
    if (method === 'GET') return { status: 200, body: await control({ op: 'mmds-get' }) };
    const body = await readBody(req, ctx.maxBody);
    await control({ op: method === 'PUT' ? 'mmds-put' : 'mmds-patch', data: body });
    return { status: 204 };
  }
  for (const [prefix, kind] of Object.entries(PATCHABLE)) {
    const m = new RegExp(`^/${prefix}/([^/]+)$`).exec(path);
    if (!m) continue;
    allow(['PATCH']);
    const id = param(m[1]);
    const body = (await readBody(req, ctx.maxBody)) as Record<string, unknown> | undefined;
    if (!body || typeof body !== 'object') throw new ApiError(400, 'expected a JSON object');
    if (body[kind.idKey] !== undefined && body[kind.idKey] !== id) throw new ApiError(400, `${kind.idKey} "${String(body[kind.idKey])}" does not match the path ("${id}")`);
    const unknown = Object.keys(body).filter((k) => k !== kind.idKey && !kind.limiters.includes(k));
    if (unknown.length > 0) throw new ApiError(400, `only ${kind.limiters.join(' and ')} can change on a running ${kind.what} (got ${unknown.join(', ')})`);
    const limiters: Record<string, LimiterChange> = {};
    for (const k of kind.limiters) if (body[k] !== undefined) limiters[k] = limiterChange(k, body[k]);
    if (Object.keys(limiters).length === 0) throw new ApiError(400, `nothing to change: give ${kind.limiters.join(' and/or ')}`);
    await control({ op: 'limiters', kind: kind.control, id, limiters });
    return { status: 204 };
  }
  throw new ApiError(404, `no such path: ${path}`);
}

/** Whether something listens on a Unix socket path. */
function inUse(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.connect(socketPath);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
}

export interface ApiServer {
  /** Stops listening and removes the socket file (if it is still the one this server made). */
  close(): void;
}

/**
 * Starts listening on `socketPath`, readable and writable by the owner only. A stale socket file
 * (nobody listening) is replaced; a live one is refused.
 */
export async function startApi(socketPath: string, ctx: ApiContext): Promise<ApiServer> {
  let existing: fs.Stats | undefined;
  try {
    existing = fs.lstatSync(socketPath);
  } catch {
    existing = undefined;
  }
  if (existing) {
    if (!existing.isSocket()) throw new FcRunError('api-sock', `--api-sock ${socketPath} exists and is not a socket`);
    if (await inUse(socketPath)) throw new FcRunError('api-sock', `--api-sock ${socketPath} is in use by another process`);
    fs.unlinkSync(socketPath);
  }
  const server = http.createServer((req, res) => {
    route(ctx, req.method ?? 'GET', req.url ?? '/', req)
      .then(({ status, body }) => {
        if (body === undefined) {
          res.writeHead(status).end();
        } else {
          const text = JSON.stringify(body);
          res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) }).end(text);
        }
      })
      .catch((err: unknown) => {
        const status = err instanceof ApiError ? err.status : 500;
        const text = JSON.stringify({ fault_message: (err as Error).message });
        ctx.monitor.log.warn('api', `${req.method} ${req.url}: ${status} ${(err as Error).message}`);
        if (!res.headersSent) res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text), ...(status === 413 ? { Connection: 'close' } : {}) });
        res.end(text, () => {
          if (status === 413) req.destroy();
        });
      });
  });
  // A client cannot hold the process's fds (which the VMM and vCPU threads share) or wait forever.
  server.maxConnections = 16;
  server.headersTimeout = 10_000;
  server.requestTimeout = 30_000;
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
      try {
        if (fs.statSync(socketPath).ino === ino) fs.unlinkSync(socketPath);
      } catch {
        // already gone
      }
    },
  };
}
