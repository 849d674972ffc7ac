import * as net from 'node:net';

/**
 * Raw HTTP/1.1 on a Unix socket, for tests that send what no HTTP client would (broken request
 * lines, conflicting headers, bytes one at a time) and check every byte that comes back.
 */
export interface RawResponse {
  status: number;
  headers: Record<string, string>;
  body: string;
  /** The answer to HEAD: headers only. */
  head?: boolean;
}

/**
 * Splits what a server sent into responses. `malformed` says why the bytes are not a sequence of
 * complete HTTP/1.1 responses with a Content-Length (the only framing fc-run's API uses);
 * `partial` is a response cut off by the connection closing. A response to HEAD has no body
 * whatever its Content-Length says (`firstIsHead`: the first request was one).
 */
export function parseResponses(data: Buffer, opts: { firstIsHead?: boolean } = {}): { responses: RawResponse[]; malformed?: string; partial?: boolean } {
  const responses: RawResponse[] = [];
  let at = 0;
  while (at < data.length) {
    const end = data.indexOf('\r\n\r\n', at);
    if (end < 0) return { responses, partial: true, malformed: `a response head without its end: ${JSON.stringify(data.toString('latin1', at, at + 80))}` };
    const lines = data.toString('latin1', at, end).split('\r\n');
    const m = /^HTTP\/1\.1 (\d{3}) [ -~]*$/.exec(lines[0]);
    if (!m) return { responses, malformed: `not a status line: ${JSON.stringify(lines[0].slice(0, 80))}` };
    const headers: Record<string, string> = {};
    for (const line of lines.slice(1)) {
      const i = line.indexOf(':');
      if (i <= 0) return { responses, malformed: `not a header line: ${JSON.stringify(line.slice(0, 80))}` };
      headers[line.slice(0, i).toLowerCase()] = line.slice(i + 1).trim();
    }
    const status = Number(m[1]);
    if (status >= 100 && status < 200) {
      // An interim response (100 Continue): no body, the real one follows.
      at = end + 4;
      continue;
    }
    if (headers['transfer-encoding']) return { responses, malformed: `unexpected Transfer-Encoding: ${headers['transfer-encoding']}` };
    // The answer to HEAD has no body, unless it is a raw error written before the method was known.
    const headless = opts.firstIsHead && responses.length === 0 && (end + 4 === data.length || data.toString('latin1', end + 4, end + 9) === 'HTTP/');
    const length = status === 204 || status === 304 || headless ? 0 : Number(headers['content-length'] ?? NaN);
    if (!Number.isSafeInteger(length) || length < 0) return { responses, malformed: `status ${status} without a Content-Length` };
    if (end + 4 + length > data.length) return { responses, partial: true, malformed: `a body cut short (${data.length - end - 4} of ${length} bytes)` };
    responses.push({ status, headers, body: data.toString('utf8', end + 4, end + 4 + length), ...(headless ? { head: true } : {}) });
    at = end + 4 + length;
  }
  return { responses };
}

export interface Exchange {
  responses: RawResponse[];
  malformed?: string;
  /** The server closed the connection (rather than the wait ending). */
  closed: boolean;
  raw: Buffer;
}

/**
 * Connects, writes `chunks` (a gap of `gapMs` between them), half-closes unless `keepOpen`, and
 * collects what comes back until the server closes, `expect` responses are complete, or
 * `timeoutMs` passes.
 */
export function exchange(sock: string, chunks: (Buffer | string)[], opts: { timeoutMs?: number; gapMs?: number; keepOpen?: boolean; expect?: number; firstIsHead?: boolean } = {}): Promise<Exchange> {
  return new Promise((resolve) => {
    const c = net.connect(sock);
    const got: Buffer[] = [];
    let done = false;
    const finish = (closed: boolean) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      c.destroy();
      const raw = Buffer.concat(got);
      resolve({ ...parseResponses(raw, opts), closed, raw });
    };
    const timer = setTimeout(() => finish(false), opts.timeoutMs ?? 10_000);
    c.on('data', (d) => {
      got.push(d);
      if (opts.expect !== undefined) {
        const p = parseResponses(Buffer.concat(got), opts);
        if (!p.partial && p.responses.length >= opts.expect) finish(false);
      }
    });
    c.on('close', () => finish(true));
    c.on('error', () => undefined);
    c.on('connect', async () => {
      for (let i = 0; i < chunks.length && !c.destroyed; i++) {
        if (i > 0 && opts.gapMs) await new Promise((r) => setTimeout(r, opts.gapMs));
        if (!c.destroyed) c.write(chunks[i]);
      }
      if (!opts.keepOpen && !c.destroyed) c.end();
    });
  });
}

/** One request as bytes. */
export function requestBytes(method: string, url: string, body?: string | Buffer, headers: Record<string, string> = {}): Buffer {
  const b = body === undefined ? undefined : Buffer.isBuffer(body) ? body : Buffer.from(body);
  const head = [`${method} ${url} HTTP/1.1`, 'Host: localhost', ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`)];
  if (b && !Object.keys(headers).some((k) => k.toLowerCase() === 'content-length')) head.push(`Content-Length: ${b.length}`);
  return Buffer.concat([Buffer.from(head.join('\r\n') + '\r\n\r\n', 'latin1'), b ?? Buffer.alloc(0)]);
}
