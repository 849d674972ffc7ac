import { randomBytes } from 'node:crypto';
import { MAX_JSON_DEPTH, valueDepthExceeds } from '../../config/json-depth';
import { bool, oneOf, record, snapshotInvalid } from '../../state-check';

/**
 * The microVM metadata service above the network: a JSON document, V2 session tokens, and the
 * HTTP/1.1 requests a guest sends to 169.254.169.254. Pure and clock-injected; the network stack
 * that carries these bytes over TCP sits below it.
 */

export type Clock = () => number; // milliseconds

export interface MmdsOptions {
  version: 'V1' | 'V2';
  /** Answer in IMDS text format whatever the Accept header says. */
  imdsCompat: boolean;
  clock?: Clock;
  /** Live tokens kept at most (the oldest is forgotten first), bounding memory a guest can use. */
  maxTokens?: number;
}

export interface MmdsCounters {
  requests: number;
  badRequests: number;
  tokensIssued: number;
  noToken: number;
  invalidToken: number;
  notFound: number;
}

export const MAX_TTL_SECONDS = 21600;
/** Largest request head (request line and headers) accepted. */
export const MAX_REQUEST_BYTES = 4096;

export interface HttpResponse {
  status: number;
  headers: Record<string, string>;
  body: string;
}

const REASONS: Record<number, string> = {
  200: 'OK',
  400: 'Bad Request',
  401: 'Unauthorized',
  404: 'Not Found',
  405: 'Method Not Allowed',
  413: 'Payload Too Large',
  501: 'Not Implemented',
};

export function serializeResponse(r: HttpResponse): Buffer {
  const body = Buffer.from(r.body, 'utf8');
  const head = [`HTTP/1.1 ${r.status} ${REASONS[r.status] ?? ''}`.trimEnd()];
  for (const [k, v] of Object.entries({ Server: 'fc-run-mmds', ...r.headers, 'Content-Length': String(body.length) })) head.push(`${k}: ${v}`);
  return Buffer.concat([Buffer.from(head.join('\r\n') + '\r\n\r\n', 'latin1'), body]);
}

export interface HttpRequest {
  method: string;
  path: string;
  headers: Map<string, string>;
}

export type ParseResult = { kind: 'incomplete' } | { kind: 'request'; request: HttpRequest; consumed: number } | { kind: 'error'; status: 400 | 413 };

/** Parses one request from the start of `data`; bodies are not expected (Content-Length must be 0). */
export function parseRequest(data: Buffer): ParseResult {
  const end = data.indexOf('\r\n\r\n');
  if (end < 0) return data.length > MAX_REQUEST_BYTES ? { kind: 'error', status: 413 } : { kind: 'incomplete' };
  if (end > MAX_REQUEST_BYTES) return { kind: 'error', status: 413 };
  const lines = data.toString('latin1', 0, end).split('\r\n');
  const m = /^([A-Z]+) (\S+) HTTP\/1\.[01]$/.exec(lines[0]);
  if (!m) return { kind: 'error', status: 400 };
  const headers = new Map<string, string>();
  for (const line of lines.slice(1)) {
    const i = line.indexOf(':');
    if (i <= 0) return { kind: 'error', status: 400 };
    headers.set(line.slice(0, i).trim().toLowerCase(), line.slice(i + 1).trim());
  }
  const length = headers.get('content-length');
  if (length !== undefined && !/^0+$/.test(length)) return { kind: 'error', status: 400 };
  if (headers.has('transfer-encoding')) return { kind: 'error', status: 400 };
  return { kind: 'request', request: { method: m[1], path: m[2].split('?')[0], headers }, consumed: end + 4 };
}

/**
 * The metadata service as a snapshot keeps it: its contents and settings. Session tokens are not
 * kept. A token's expiry is a reading of the saving process's clock and the tokens themselves are
 * secrets better left out of a file that clones share; a restored guest's next request with an
 * old token gets 401 (V2) and it asks for a new one, as every IMDSv2 client does when a token
 * expires. Firecracker keeps even less: only the version and the IMDS-compat setting, not the
 * contents, and its token key is new in each process, so its old tokens stop working too.
 */
export interface MmdsState {
  version: 'V1' | 'V2';
  imdsCompat: boolean;
  /** The JSON document (an object). */
  data: unknown;
}

export class MmdsService {
  private data: unknown = {};
  private version: 'V1' | 'V2';
  private imdsCompat: boolean;
  private readonly tokens = new Map<string, number>();
  readonly counters: MmdsCounters = { requests: 0, badRequests: 0, tokensIssued: 0, noToken: 0, invalidToken: 0, notFound: 0 };
  private readonly clock: Clock;

  constructor(private readonly opts: MmdsOptions) {
    this.clock = opts.clock ?? Date.now;
    this.version = opts.version;
    this.imdsCompat = opts.imdsCompat;
  }

  saveState(): MmdsState {
    return { version: this.version, imdsCompat: this.imdsCompat, data: this.data };
  }

  /**
   * Puts back saved contents and settings (they win over the ones the service was made with: the
   * guest goes on seeing what it saw). The contents obey the limits the API applies: a JSON
   * object, at most MAX_JSON_DEPTH levels deep and `sizeLimit` bytes as JSON. Tokens issued before
   * are forgotten (see MmdsState).
   */
  restoreState(state: unknown, where: string, sizeLimit: number): void {
    const s = record(state, where, ['version', 'imdsCompat', 'data']);
    const version = oneOf(s.version, `${where}.version`, ['V1', 'V2'] as const);
    const imdsCompat = bool(s.imdsCompat, `${where}.imdsCompat`);
    const data = s.data;
    if (data === null || typeof data !== 'object' || Array.isArray(data)) throw snapshotInvalid(`${where}.data`, 'the MMDS contents must be a JSON object');
    // Depth first: JSON.stringify below recurses.
    if (valueDepthExceeds(data)) throw snapshotInvalid(`${where}.data`, `the MMDS contents nest deeper than ${MAX_JSON_DEPTH} levels`);
    const size = Buffer.byteLength(JSON.stringify(data));
    if (size > sizeLimit) throw snapshotInvalid(`${where}.data`, `the MMDS contents are ${size} bytes; the limit is ${sizeLimit}`);
    this.version = version;
    this.imdsCompat = imdsCompat;
    this.data = data;
    this.tokens.clear();
  }

  /** Replaces the document (from the spec, --metadata, or the API). */
  setData(data: unknown): void {
    this.data = data;
  }

  getData(): unknown {
    return this.data;
  }

  private issueToken(ttlSeconds: number): string {
    const max = this.opts.maxTokens ?? 1024;
    const now = this.clock();
    for (const [t, exp] of this.tokens) if (exp <= now) this.tokens.delete(t);
    while (this.tokens.size >= max) this.tokens.delete(this.tokens.keys().next().value!);
    const token = randomBytes(32).toString('base64url');
    this.tokens.set(token, now + ttlSeconds * 1000);
    this.counters.tokensIssued++;
    return token;
  }

  private tokenValid(token: string): boolean {
    const exp = this.tokens.get(token);
    if (exp === undefined) return false;
    if (exp <= this.clock()) {
      this.tokens.delete(token);
      return false;
    }
    return true;
  }

  handle(req: HttpRequest): HttpResponse {
    this.counters.requests++;
    const allow = 'GET, PUT';
    const text = (status: number, body = '') => ({ status, headers: { 'Content-Type': 'text/plain' }, body });
    if (req.method === 'PUT') {
      if (req.path !== '/latest/api/token') return { ...text(405), headers: { 'Content-Type': 'text/plain', Allow: 'GET' } };
      if (req.headers.has('x-forwarded-for')) return this.bad('X-Forwarded-For is not allowed');
      const ttlText = req.headers.get('x-metadata-token-ttl-seconds') ?? req.headers.get('x-aws-ec2-metadata-token-ttl-seconds');
      const ttl = ttlText !== undefined && /^\d{1,6}$/.test(ttlText) ? Number(ttlText) : NaN;
      if (!(ttl >= 1 && ttl <= MAX_TTL_SECONDS)) return this.bad(`the token TTL must be between 1 and ${MAX_TTL_SECONDS} seconds`);
      return text(200, this.issueToken(ttl));
    }
    if (req.method !== 'GET') return { ...text(405), headers: { 'Content-Type': 'text/plain', Allow: allow } };
    const token = req.headers.get('x-metadata-token') ?? req.headers.get('x-aws-ec2-metadata-token');
    if (token === undefined) {
      this.counters.noToken++;
      if (this.version === 'V2') return text(401, 'a session token is required: PUT /latest/api/token first');
    } else if (!this.tokenValid(token)) {
      this.counters.invalidToken++;
      if (this.version === 'V2') return text(401, 'the session token is invalid or expired');
    }
    const value = this.lookup(req.path);
    if (value === undefined) {
      this.counters.notFound++;
      return text(404, 'not found');
    }
    const json = !this.imdsCompat && /application\/json/i.test(req.headers.get('accept') ?? '');
    if (json) return { status: 200, headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(value) };
    if (typeof value === 'string') return text(200, value);
    if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
      const lines = Object.entries(value).map(([k, v]) => (v !== null && typeof v === 'object' && !Array.isArray(v) ? `${k}/` : k));
      return text(200, lines.join('\n'));
    }
    return text(501, 'this value has no IMDS text form; ask with Accept: application/json');
  }

  private bad(why: string): HttpResponse {
    this.counters.badRequests++;
    return { status: 400, headers: { 'Content-Type': 'text/plain' }, body: why };
  }

  /** The value at a URL path: "/latest/meta-data/ami-id"; a trailing slash is allowed. */
  private lookup(urlPath: string): unknown {
    let decoded: string;
    try {
      decoded = decodeURIComponent(urlPath);
    } catch {
      return undefined;
    }
    let v: unknown = this.data;
    for (const part of decoded.split('/').filter((p) => p.length > 0)) {
      if (v === null || typeof v !== 'object' || Array.isArray(v) || !Object.prototype.hasOwnProperty.call(v, part)) return undefined;
      v = (v as Record<string, unknown>)[part];
    }
    return v;
  }
}

/** RFC 7396 JSON merge patch: objects merge key by key, null deletes, anything else replaces. */
export function mergePatch(target: unknown, patch: unknown): unknown {
  if (patch === null || typeof patch !== 'object' || Array.isArray(patch)) return patch;
  const out: Record<string, unknown> = target !== null && typeof target === 'object' && !Array.isArray(target) ? { ...(target as Record<string, unknown>) } : {};
  for (const [k, v] of Object.entries(patch as Record<string, unknown>)) {
    if (v === null) delete out[k];
    // defineProperty: a key such as "__proto__" is data here, as in the JSON it came from.
    else Object.defineProperty(out, k, { value: mergePatch(Object.prototype.hasOwnProperty.call(out, k) ? out[k] : undefined, v), enumerable: true, writable: true, configurable: true });
  }
  return out;
}
