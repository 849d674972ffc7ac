import * as fs from 'node:fs';
import * as http from 'node:http';
import type { RunningVm } from '../boot/launch';
import type { RateLimiterConfig } from '../limits/token-bucket';
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
  /** Set once the VM runs. */
  vm?: RunningVm;
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

/** A rate limiter body as Firecracker takes it, checked like the spec's. */
function limiterConfig(where: string, value: unknown): RateLimiterConfig {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new ApiError(400, `${where}: expected an object with "bandwidth" and/or "ops"`);
  const out: RateLimiterConfig = {};
  for (const [key, b] of Object.entries(value as Record<string, unknown>)) {
    if (key !== 'bandwidth' && key !== 'ops') throw new ApiError(400, `${where}: unknown field "${key}" (expected "bandwidth" or "ops")`);
    if (b === null) continue;
    const bucket = b as Bucket;
    const int = (name: string, v: unknown, min: number) => {
      if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) throw new ApiError(400, `${where}.${key}.${name}: expected an integer >= ${min}`);
      return v;
    };
    if (typeof b !== 'object' || Array.isArray(b)) throw new ApiError(400, `${where}.${key}: expected an object`);
    for (const k of Object.keys(bucket)) if (!['size', 'one_time_burst', 'refill_time'].includes(k)) throw new ApiError(400, `${where}.${key}: unknown field "${k}"`);
    out[key] = {
      size: int('size', bucket.size, 1),
      refill_time: int('refill_time', bucket.refill_time, 1),
      ...(bucket.one_time_burst !== undefined && bucket.one_time_burst !== null ? { one_time_burst: int('one_time_burst', bucket.one_time_burst, 0) } : {}),
    };
  }
  return out;
}

function readBody(req: http.IncomingMessage, max: number): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > max) {
        reject(new ApiError(413, `the request body is larger than ${max} bytes`));
        req.destroy();
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

async function route(ctx: ApiContext, method: string, url: string, req: http.IncomingMessage): Promise<{ status: number; body?: unknown }> {
  const path = url.split('?')[0].replace(/\/+$/, '') || '/';
  const allow = (methods: string[]) => {
    if (!methods.includes(method)) throw new ApiError(405, `${method} is not allowed on ${path} (allowed: ${methods.join(', ')})`);
  };
  const running = () => {
    if (!ctx.vm) throw new ApiError(503, 'the microVM is not running yet');
    return ctx.vm;
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
  let m = /^\/drives\/([^/]+)$/.exec(path);
  if (m) {
    allow(['PATCH']);
    const id = decodeURIComponent(m[1]);
    const body = (await readBody(req, ctx.maxBody)) as Record<string, unknown> | undefined;
    if (!body || typeof body !== 'object') throw new ApiError(400, 'expected a JSON object');
    if (body.drive_id !== undefined && body.drive_id !== id) throw new ApiError(400, `drive_id "${String(body.drive_id)}" does not match the path ("${id}")`);
    const unknown = Object.keys(body).filter((k) => k !== 'drive_id' && k !== 'rate_limiter');
    if (unknown.length > 0) throw new ApiError(400, `only rate_limiter can change on a running drive (got ${unknown.join(', ')})`);
    if (body.rate_limiter === undefined) throw new ApiError(400, 'nothing to change: give rate_limiter');
    await control({ op: 'limiters', kind: 'drive', id, limiters: { rate_limiter: limiterConfig('rate_limiter', body.rate_limiter) } });
    return { status: 204 };
  }
  m = /^\/network-interfaces\/([^/]+)$/.exec(path);
  if (m) {
    allow(['PATCH']);
    const id = decodeURIComponent(m[1]);
    const body = (await readBody(req, ctx.maxBody)) as Record<string, unknown> | undefined;
    if (!body || typeof body !== 'object') throw new ApiError(400, 'expected a JSON object');
    if (body.iface_id !== undefined && body.iface_id !== id) throw new ApiError(400, `iface_id "${String(body.iface_id)}" does not match the path ("${id}")`);
    const unknown = Object.keys(body).filter((k) => !['iface_id', 'rx_rate_limiter', 'tx_rate_limiter'].includes(k));
    if (unknown.length > 0) throw new ApiError(400, `only rx_rate_limiter and tx_rate_limiter can change on a running interface (got ${unknown.join(', ')})`);
    const limiters: Record<string, RateLimiterConfig> = {};
    for (const k of ['rx_rate_limiter', 'tx_rate_limiter']) if (body[k] !== undefined) limiters[k] = limiterConfig(k, body[k]);
    if (Object.keys(limiters).length === 0) throw new ApiError(400, 'nothing to change: give rx_rate_limiter and/or tx_rate_limiter');
    await control({ op: 'limiters', kind: 'iface', id, limiters });
    return { status: 204 };
  }
  throw new ApiError(404, `no such path: ${path}`);
}

/** Starts listening on `socketPath` (a stale socket file is replaced). */
export function startApi(socketPath: string, ctx: ApiContext): Promise<http.Server> {
  try {
    if (fs.statSync(socketPath).isSocket()) fs.unlinkSync(socketPath);
  } catch {
    // nothing there
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
        if (!res.headersSent) res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) });
        res.end(text);
      });
  });
  server.unref();
  return new Promise((resolve, reject) => {
    server.once('error', (err) => reject(new FcRunError('api-sock', `cannot listen on --api-sock ${socketPath}: ${(err as NodeJS.ErrnoException).code ?? err.message}`)));
    server.listen(socketPath, () => resolve(server));
  });
}
