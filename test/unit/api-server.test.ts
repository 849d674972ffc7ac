import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { exchange, parseResponses, requestBytes, RawResponse } from '../helpers/http-raw';
import { startStandIn, StandIn } from '../helpers/api-standin';
import type { ControlReply } from '../../src/vmm/control';

/**
 * The HTTP API server against a stand-in VMM thread (test/helpers/api-standin.ts): every error is
 * JSON with a 4xx status (503 for overload), whatever Node's parser or the body makes of the
 * request; slow clients cannot lock others out.
 */
let dir: string;
let n = 0;
const sockPath = () => path.join(dir, `api-${++n}.sock`);
beforeAll(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fc-run-api-'))));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function fault(r: RawResponse | undefined, status: number, pattern?: RegExp) {
  expect(r).toBeDefined();
  expect(r!.status).toBe(status);
  expect(r!.headers['content-type']).toBe('application/json');
  const body = JSON.parse(r!.body);
  expect(Object.keys(body)).toEqual(['fault_message']);
  expect(typeof body.fault_message).toBe('string');
  if (pattern) expect(body.fault_message).toMatch(pattern);
}

async function one(sock: string, bytes: Buffer | string) {
  const r = await exchange(sock, [bytes]);
  expect(r.malformed).toBeUndefined();
  expect(r.responses.length).toBeGreaterThanOrEqual(1);
  return r.responses[0];
}

const nested = (depth: number) => '{"a":'.repeat(depth) + '1' + '}'.repeat(depth);

describe('the API server', () => {
  let api: StandIn;
  let sock: string;
  beforeAll(async () => {
    sock = sockPath();
    api = await startStandIn(sock, { mmds: { latest: { 'meta-data': { 'ami-id': 'ami-1' } } }, mmdsSizeLimit: 4000 });
  });
  afterAll(() => api.close());

  test.each([
    ['duplicate Content-Length', 'PUT /mmds HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}', 400, /Content-Length/],
    ['Transfer-Encoding with Content-Length', 'PUT /mmds HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n', 400, /Transfer-Encoding/],
    ['a method token Node does not know', 'FROB / HTTP/1.1\r\n\r\n', 400, /method/],
    ['a method token with bad characters', 'G(T / HTTP/1.1\r\n\r\n', 400, /method/],
    ['oversized headers', `GET / HTTP/1.1\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`, 431, /too large/],
    ['a malformed request line', 'GET / HTTX/1.1\r\n\r\n', 400, /malformed/],
    ['garbage', '\x00\x01\x02\xff\r\n\r\n', 400, /malformed/],
    ['an invalid Content-Length', 'PUT /mmds HTTP/1.1\r\nContent-Length: -1\r\n\r\n', 400, /Content-Length/],
    ['a bad chunk size', 'PUT /mmds HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n', 400, /malformed/],
    ['an HTTP/2 preface', 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 400, /HTTP\/2/],
    ['CONNECT', 'CONNECT host:80 HTTP/1.1\r\n\r\n', 405, /CONNECT/],
    ['an upgrade', 'GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n', 400, /upgrade/],
  ])('%s: a JSON fault, then the connection closes', async (_name, bytes, status, pattern) => {
    const r = await exchange(sock, [Buffer.from(bytes, 'latin1')], { keepOpen: true });
    expect(r.malformed).toBeUndefined();
    expect(r.closed).toBe(true);
    expect(r.responses).toHaveLength(1);
    fault(r.responses[0], status, pattern);
  });

  test('a request without Host (it means nothing on a Unix socket) is answered', async () => {
    const r = await one(sock, 'GET / HTTP/1.1\r\n\r\n');
    expect(r.status).toBe(200);
    expect(JSON.parse(r.body)).toMatchObject({ id: 'vm-standin', state: 'Running' });
  });

  test('bodies nesting deeper than 128 levels are refused before parsing, naming the limit; 128 levels are accepted and read back', async () => {
    fault(await one(sock, requestBytes('PUT', '/mmds', nested(129))), 400, /deeper than 128 levels/);
    fault(await one(sock, requestBytes('PATCH', '/mmds', '['.repeat(5000))), 400, /128/);
    fault(await one(sock, requestBytes('PATCH', '/drives/limited', `{"rate_limiter":${nested(200)}}`)), 400, /128/);
    expect((await one(sock, requestBytes('PUT', '/mmds', nested(128)))).status).toBe(204);
    const back = await one(sock, requestBytes('GET', '/mmds'));
    expect(back.body).toBe(nested(128));
    expect((await one(sock, requestBytes('PATCH', '/mmds', nested(128)))).status).toBe(204);
  });

  test.each([
    ['PUT', '/actions', '[]', /JSON object body/],
    ['PUT', '/actions', '"FlushMetrics"', /JSON object body.*got a string/],
    ['PUT', '/actions', 'null', /got null/],
    ['PUT', '/actions', '', /needs a JSON object body/],
    ['PUT', '/actions', '{"action_type": 5}', /got a number/],
    ['PUT', '/actions', '{"action_type": ["FlushMetrics"]}', /got an array/],
    ['PUT', '/actions', '{"action_type": "FlushMetrics", "extra": 1}', /unknown field "extra"/],
    ['PUT', '/mmds', '[1,2]', /got an array/],
    ['PUT', '/mmds', '5', /got a number/],
    ['PUT', '/mmds', 'null', /got null/],
    ['PATCH', '/mmds', '', /needs a JSON object body/],
    ['PATCH', '/mmds', '"x"', /got a string/],
    ['PATCH', '/drives/limited', '[]', /got an array/],
    ['PATCH', '/drives/limited', '{"drive_id": 5, "rate_limiter": {}}', /drive_id must be a string, got a number/],
    ['PATCH', '/drives/limited', '{"drive_id": null, "rate_limiter": {}}', /drive_id must be a string, got null/],
    ['PATCH', '/drives/limited', '{"drive_id": {"toString": 1}, "rate_limiter": {}}', /drive_id must be a string, got an object/],
    ['PATCH', '/drives/limited', '{"rate_limiter": "fast"}', /expected an object/],
    ['PATCH', '/drives/limited', '{"rate_limiter": {"ops": []}}', /expected an object or null/],
    ['PATCH', '/drives/limited', '{"rate_limiter": {"ops": {"size": "10", "refill_time": 1}}}', /size: expected an integer/],
    ['PATCH', '/drives/limited', '{"rate_limiter": {"ops": {"size": 10, "refill_time": 1e400}}}', /a number beyond the range of a double/],
    ['PATCH', '/drives/limited', '{"rate_limiter": {"ops": {"size": 10, "refill_time": 1, "one_time_burst": true}}}', /one_time_burst: expected an integer/],
    ['PATCH', '/drives/limited', '{"rate_limiter": {"__proto__": {}}}', /unknown field "__proto__"/],
    ['PATCH', '/network-interfaces/eth0', '{"iface_id": ["eth0"], "tx_rate_limiter": {}}', /iface_id must be a string, got an array/],
    ['PATCH', '/network-interfaces/eth0', '{"tx_rate_limiter": 1}', /expected an object/],
    ['PATCH', '/vm', '{"state": "Stopped"}', /state must be "Paused" or "Resumed", got "Stopped"/],
    ['PATCH', '/vm', '{"state": 1}', /state must be "Paused" or "Resumed", got a number/],
    ['PATCH', '/vm', '{"state": "Paused", "x": 1}', /unknown field "x"/],
    ['PATCH', '/vm', '[]', /needs a JSON object body/],
  ])('%s %s %s: 400 with a message saying what is wrong', async (method, url, body, pattern) => {
    fault(await one(sock, requestBytes(method, url, body)), 400, pattern);
  });

  test('the routes still work', async () => {
    expect((await one(sock, requestBytes('PUT', '/mmds', '{"latest":{"meta-data":{"ami-id":"ami-2"}}}'))).status).toBe(204);
    expect((await one(sock, requestBytes('PATCH', '/drives/limited', '{"drive_id":"limited","rate_limiter":{"ops":{"size":5,"refill_time":100}}}'))).status).toBe(204);
    // Firecracker's token buckets ignore unknown keys (no deny_unknown_fields); so does the API.
    expect((await one(sock, requestBytes('PATCH', '/drives/limited', '{"rate_limiter":{"ops":{"size":5,"refill_time":100,"note":"x"}}}'))).status).toBe(204);
    fault(await one(sock, requestBytes('PATCH', '/drives/free', '{"rate_limiter":{"ops":{"size":5,"refill_time":100}}}')), 400, /no rate_limiter configured at start/);
    expect((await one(sock, requestBytes('PUT', '/actions', '{"action_type":"SendCtrlAltDel"}'))).status).toBe(204);
    expect(api.ctrlAltDel).toBeGreaterThanOrEqual(1);
    expect((await one(sock, requestBytes('PATCH', '/vm', '{"state":"Paused"}'))).status).toBe(204);
    expect(JSON.parse((await one(sock, requestBytes('GET', '/'))).body).state).toBe('Paused');
    expect((await one(sock, requestBytes('PATCH', '/vm', '{"state":"Resumed"}'))).status).toBe(204);
    expect(JSON.parse((await one(sock, requestBytes('GET', '/'))).body).state).toBe('Running');
    fault(await one(sock, requestBytes('PUT', '/vm', '{"state":"Paused"}')), 405);
    fault(await one(sock, requestBytes('DELETE', '/mmds')), 405);
    fault(await one(sock, requestBytes('GET', '/nowhere')), 404);
    fault(await one(sock, requestBytes('PUT', '/mmds', `{"blob":"${'x'.repeat(10_000)}"}`)), 413);
  });
});

describe('slow clients', () => {
  /** Sends one request and waits for its whole response, leaving the connection open. */
  function keepAlive(sock: string, bytes: Buffer): Promise<{ socket: net.Socket; got: Buffer }> {
    return new Promise((resolve, reject) => {
      const socket = net.connect(sock, () => socket.write(bytes));
      let got = Buffer.alloc(0);
      socket.on('data', (d) => {
        got = Buffer.concat([got, d]);
        const p = parseResponses(got);
        if (!p.partial && p.responses.length > 0) resolve({ socket, got });
      });
      socket.on('error', reject);
      socket.on('close', () => reject(new Error(`closed after ${JSON.stringify(got.toString())}`)));
    });
  }

  /** Opens a connection that sends `bytes` one byte every `gapMs` and never finishes; resolves with everything it got when the server closes it. */
  function slowloris(sock: string, bytes: string, gapMs: number) {
    const c = net.connect(sock);
    const got: Buffer[] = [];
    let i = 0;
    const tick = setInterval(() => {
      if (i < bytes.length && c.writable) c.write(bytes[i++]);
    }, gapMs);
    c.on('data', (d) => got.push(d));
    c.on('error', () => undefined);
    const closed = new Promise<string>((resolve) => c.on('close', () => (clearInterval(tick), resolve(Buffer.concat(got).toString()))));
    const connected = new Promise<void>((resolve) => c.once('connect', () => resolve()));
    return { c, closed, connected, stop: () => (clearInterval(tick), c.destroy()) };
  }

  test('16 connections trickling headers or never finishing a body do not lock others out: each new client takes the place of the slowest', async () => {
    const sock = sockPath();
    const api = await startStandIn(sock);
    const slow = [
      ...Array.from({ length: 8 }, () => slowloris(sock, 'GET / HTTP/1.1\r\nX-Slow: ' + 'z'.repeat(1000), 200)),
      ...Array.from({ length: 8 }, () => slowloris(sock, 'PUT /mmds HTTP/1.1\r\nContent-Length: 100\r\n\r\n{"a":' + ' '.repeat(1000), 200)),
    ];
    const kept: net.Socket[] = [];
    try {
      for (const s of slow) await s.connected;
      // Let every slow client have sent something (the body ones their complete headers, too).
      await new Promise((r) => setTimeout(r, 100));
      // Five new clients, each keeping its connection: each takes the place of the slow one idle the longest.
      for (let i = 0; i < 5; i++) {
        const k = await keepAlive(sock, requestBytes('GET', '/'));
        kept.push(k.socket);
        expect(parseResponses(k.got).responses.map((x) => x.status)).toEqual([200]);
      }
      // The five oldest slow connections made room, each told why in a JSON 503.
      const evicted = await Promise.all(slow.slice(0, 5).map((s) => s.closed));
      for (const text of evicted) {
        expect(text).toMatch(/^HTTP\/1\.1 503 /);
        expect(JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4)).fault_message).toMatch(/closed to make room/);
      }
    } finally {
      slow.forEach((s) => s.stop());
      kept.forEach((s) => s.destroy());
      await api.close();
    }
  });

  test('a request that takes too long gets a JSON 408 when its time is up', async () => {
    const sock = sockPath();
    const api = await startStandIn(sock, { limits: { headersTimeoutMs: 300, requestTimeoutMs: 600 } });
    const head = slowloris(sock, 'GET / HTTP/1.1\r\nX-Slow: ' + 'z'.repeat(10_000), 50);
    const body = slowloris(sock, 'PUT /mmds HTTP/1.1\r\nContent-Length: 100\r\n\r\n{"a":' + ' '.repeat(10_000), 50);
    try {
      for (const text of await Promise.all([head.closed, body.closed])) {
        expect(text).toMatch(/^HTTP\/1\.1 408 /);
        expect(JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4)).fault_message).toMatch(/not complete in time/);
      }
    } finally {
      head.stop();
      body.stop();
      await api.close();
    }
  });

  test('when every connection is being answered, a new client gets a JSON 503 instead of a dropped connection', async () => {
    const sock = sockPath();
    const held: ((r: ControlReply) => void)[] = [];
    const api = await startStandIn(sock, { limits: { maxConnections: 4 }, control: () => new Promise<ControlReply>((resolve) => held.push(resolve)) });
    try {
      const busy = Array.from({ length: 4 }, () => exchange(sock, [requestBytes('GET', '/mmds')], { timeoutMs: 20_000 }));
      while (held.length < 4) await new Promise((r) => setTimeout(r, 10));
      const turned = await exchange(sock, [requestBytes('GET', '/')]);
      expect(turned.closed).toBe(true);
      fault(turned.responses[0], 503, /busy/);
      held.forEach((resolve) => resolve({ ok: true, value: { x: 1 } }));
      for (const r of await Promise.all(busy)) expect(r.responses.map((x) => x.status)).toEqual([200]);
      // With room again, new clients are served.
      expect((await exchange(sock, [requestBytes('GET', '/')])).responses[0].status).toBe(200);
    } finally {
      await api.close();
    }
  });
});
