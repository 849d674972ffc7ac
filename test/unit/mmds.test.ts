import { MAX_REQUEST_BYTES, mergePatch, MmdsService, parseRequest, serializeResponse } from '../../src/devices/mmds/service';

const DATA = { latest: { 'meta-data': { 'ami-id': 'ami-87654321', 'reservation-id': 'r-1', tags: { team: 'blue' }, count: 3 } } };

function service(version: 'V1' | 'V2', imdsCompat = false) {
  let now = 1_000_000;
  const s = new MmdsService({ version, imdsCompat, clock: () => now, maxTokens: 4 });
  s.setData(DATA);
  return { s, advance: (ms: number) => (now += ms) };
}

function req(text: string) {
  const r = parseRequest(Buffer.from(text.replace(/\n/g, '\r\n') + '\r\n\r\n', 'latin1'));
  if (r.kind !== 'request') throw new Error(`unparsable: ${r.kind}`);
  return r.request;
}

describe('MMDS V1', () => {
  test('GET returns IMDS text: keys with "/" for objects, strings as they are', () => {
    const { s } = service('V1');
    expect(s.handle(req('GET /latest HTTP/1.1'))).toMatchObject({ status: 200, body: 'meta-data/' });
    expect(s.handle(req('GET /latest/meta-data/ HTTP/1.1')).body).toBe('ami-id\nreservation-id\ntags/\ncount');
    expect(s.handle(req('GET /latest/meta-data/ami-id HTTP/1.1')).body).toBe('ami-87654321');
  });

  test('Accept: application/json gives JSON; values with no IMDS form are 501 otherwise', () => {
    const { s } = service('V1');
    const r = s.handle(req('GET /latest/meta-data/tags HTTP/1.1\nAccept: application/json'));
    expect(r).toMatchObject({ status: 200, headers: { 'Content-Type': 'application/json' } });
    expect(JSON.parse(r.body)).toEqual({ team: 'blue' });
    expect(s.handle(req('GET /latest/meta-data/count HTTP/1.1')).status).toBe(501);
  });

  test('imds_compat answers in text whatever Accept says', () => {
    const { s } = service('V1', true);
    expect(s.handle(req('GET /latest/meta-data/ami-id HTTP/1.1\nAccept: application/json')).body).toBe('ami-87654321');
  });

  test('missing paths are 404; other methods 405 with Allow', () => {
    const { s } = service('V1');
    expect(s.handle(req('GET /latest/nope HTTP/1.1')).status).toBe(404);
    expect(s.handle(req('GET /latest/meta-data/ami-id/deeper HTTP/1.1')).status).toBe(404);
    expect(s.handle(req('GET /__proto__ HTTP/1.1')).status).toBe(404);
    const del = s.handle(req('DELETE /latest HTTP/1.1'));
    expect(del.status).toBe(405);
    expect(del.headers.Allow).toBe('GET, PUT');
  });

  test('V1 answers without a token, and counts missing and invalid tokens', () => {
    const { s } = service('V1');
    expect(s.handle(req('GET /latest HTTP/1.1')).status).toBe(200);
    expect(s.handle(req('GET /latest HTTP/1.1\nX-metadata-token: bogus')).status).toBe(200);
    expect(s.counters).toMatchObject({ noToken: 1, invalidToken: 1 });
  });
});

describe('MMDS V2 session tokens', () => {
  test('PUT /latest/api/token with a TTL issues a token that GET then needs', () => {
    const { s } = service('V2');
    expect(s.handle(req('GET /latest HTTP/1.1')).status).toBe(401);
    const token = s.handle(req('PUT /latest/api/token HTTP/1.1\nX-metadata-token-ttl-seconds: 60'));
    expect(token.status).toBe(200);
    expect(token.body).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(s.handle(req(`GET /latest HTTP/1.1\nX-metadata-token: ${token.body}`))).toMatchObject({ status: 200, body: 'meta-data/' });
    expect(s.handle(req('GET /latest HTTP/1.1\nX-metadata-token: not-a-token')).status).toBe(401);
  });

  test('the X-aws-ec2-… header aliases work', () => {
    const { s } = service('V2');
    const token = s.handle(req('PUT /latest/api/token HTTP/1.1\nX-aws-ec2-metadata-token-ttl-seconds: 5')).body;
    expect(s.handle(req(`GET /latest HTTP/1.1\nX-aws-ec2-metadata-token: ${token}`)).status).toBe(200);
  });

  test('tokens expire after their TTL', () => {
    const { s, advance } = service('V2');
    const token = s.handle(req('PUT /latest/api/token HTTP/1.1\nX-metadata-token-ttl-seconds: 2')).body;
    advance(1999);
    expect(s.handle(req(`GET /latest HTTP/1.1\nX-metadata-token: ${token}`)).status).toBe(200);
    advance(1);
    expect(s.handle(req(`GET /latest HTTP/1.1\nX-metadata-token: ${token}`)).status).toBe(401);
  });

  test('a TTL outside 1..21600, a missing TTL or X-Forwarded-For is 400', () => {
    const { s } = service('V2');
    for (const h of ['X-metadata-token-ttl-seconds: 0', 'X-metadata-token-ttl-seconds: 21601', 'X-metadata-token-ttl-seconds: ten', 'Accept: */*']) {
      expect(s.handle(req(`PUT /latest/api/token HTTP/1.1\n${h}`)).status).toBe(400);
    }
    expect(s.handle(req('PUT /latest/api/token HTTP/1.1\nX-metadata-token-ttl-seconds: 5\nX-Forwarded-For: 1.2.3.4')).status).toBe(400);
    expect(s.handle(req('PUT /latest/meta-data HTTP/1.1\nX-metadata-token-ttl-seconds: 5')).status).toBe(405);
  });

  test('a guest asking for endless tokens cannot grow memory: the oldest are forgotten', () => {
    const { s } = service('V2');
    const first = s.handle(req('PUT /latest/api/token HTTP/1.1\nX-metadata-token-ttl-seconds: 600')).body;
    for (let i = 0; i < 10; i++) s.handle(req('PUT /latest/api/token HTTP/1.1\nX-metadata-token-ttl-seconds: 600'));
    expect(s.handle(req(`GET /latest HTTP/1.1\nX-metadata-token: ${first}`)).status).toBe(401);
  });
});

describe('HTTP parsing', () => {
  test('an incomplete request waits for more; one past the size limit is refused', () => {
    expect(parseRequest(Buffer.from('GET /latest HTTP/1.1\r\nAcc')).kind).toBe('incomplete');
    expect(parseRequest(Buffer.alloc(MAX_REQUEST_BYTES + 1, 0x41))).toEqual({ kind: 'error', status: 413 });
  });

  test('garbage, bodies and chunked requests are 400', () => {
    for (const t of ['HELLO\r\n\r\n', 'GET /x HTTP/2\r\n\r\n', 'GET /x HTTP/1.1\r\nno-colon\r\n\r\n', 'PUT /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello', 'GET /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n']) {
      expect(parseRequest(Buffer.from(t))).toMatchObject({ kind: 'error', status: 400 });
    }
  });

  test('pipelined requests are parsed one at a time', () => {
    const both = Buffer.from('GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n');
    const first = parseRequest(both);
    expect(first).toMatchObject({ kind: 'request', request: { path: '/a' } });
    const second = parseRequest(both.subarray((first as { consumed: number }).consumed));
    expect(second).toMatchObject({ kind: 'request', request: { path: '/b' } });
  });

  test('responses carry status, type and length', () => {
    const text = serializeResponse({ status: 200, headers: { 'Content-Type': 'text/plain' }, body: 'héllo' }).toString('latin1');
    expect(text).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
    expect(text).toContain('Content-Length: 6\r\n');
    expect(text.endsWith('\r\n\r\nh\xc3\xa9llo')).toBe(true);
  });
});

describe('JSON merge patch (PATCH /mmds)', () => {
  test('objects merge, null deletes, other values replace (RFC 7396)', () => {
    expect(mergePatch({ a: { b: 1, c: 2 }, d: [1] }, { a: { c: null, e: 3 }, d: [2], f: 'x' })).toEqual({ a: { b: 1, e: 3 }, d: [2], f: 'x' });
    expect(mergePatch({ a: 1 }, 'text')).toBe('text');
    expect(mergePatch('text', { a: 1 })).toEqual({ a: 1 });
  });
  test('a "__proto__" key is data, never the prototype', () => {
    const out = mergePatch({}, JSON.parse('{"__proto__": {"polluted": true}}')) as Record<string, unknown>;
    expect(Object.keys(out)).toEqual(['__proto__']);
    expect(Object.getPrototypeOf(out)).toBe(Object.prototype);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });
});
