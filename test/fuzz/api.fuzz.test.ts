import { ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Workspace } from '../helpers/specs';
import { tinyGuestElf } from '../helpers/images';
import { exchange, requestBytes } from '../helpers/http-raw';
import { startStandIn, StandIn } from '../helpers/api-standin';
import { fuzzCases, fuzzSeed, Rng } from './rng';

/**
 * Hostile requests to the HTTP API: random methods, paths, headers and bodies, mutations of valid
 * requests (fields of the wrong type, deep nesting, conflicting framing headers, flipped,
 * inserted and cut bytes), pipelined requests, and raw garbage, each written on a fresh
 * connection in random pieces and half-closed. Invariants, for every case:
 *
 *   - what comes back is a sequence of complete HTTP/1.1 responses, and the server closes the
 *     connection within a generous bound (no hang);
 *   - every connection that carried anything but blank lines gets at least one response (the
 *     server answers before it closes, even when the client is still writing);
 *   - every status is 2xx, 4xx or 503 (never a 500: that would be a bug), and every error body
 *     is exactly {"fault_message": "<string>"};
 *   - the server is still there: every few cases, and at the end, GET / answers "Running".
 *
 * Two targets: a live fc-run (`--api-sock`, a guest that spins; with root and /dev/net/tun also a
 * TAP and MMDS) where /dev/kvm exists, and everywhere the same server code in front of a stand-in
 * VMM thread (test/helpers/api-standin.ts). FUZZ_CASES sets the number of cases per target (the
 * short run in `npm test` uses 300), FUZZ_SEED the sequence.
 */
const ROOT = path.resolve(__dirname, '..', '..');
const BIN = path.join(ROOT, 'bin', 'fc-run');
const hasKvm = fs.existsSync('/dev/kvm');
const canNet = hasKvm && fs.existsSync('/dev/net/tun') && process.getuid?.() === 0;
const CASES = fuzzCases(300);
const SEED = fuzzSeed(0x5eed_a91);
/** Per case: the server must have answered and closed by then. Generous, for a loaded machine. */
const CASE_LIMIT_MS = 15_000;
const MMDS_LIMIT = 4000;

// ---- building blocks -------------------------------------------------------------------------

const METHODS = ['GET', 'PUT', 'PATCH', 'POST', 'DELETE', 'HEAD', 'OPTIONS', 'TRACE', 'CONNECT', 'PROPFIND', 'SEARCH', 'get', 'Put', 'FOO', 'G T', 'GET\x00', '', 'PATCHPATCHPATCH', 'M-SEARCH', 'PRI'];
const PATHS = ['/', '/mmds', '/mmds/', '/actions', '/drives/limited', '/drives/free', '/drives/nope', '/network-interfaces/eth0', '/network-interfaces/', '/drives/', '/drives/%ZZ', '/drives/%00', '/drives/a%2Fb', '/drives/limited/extra', '//', '/./mmds', '/../mmds', '*', 'http://localhost/mmds', '/mmds?x=1', '/mmds#frag', '/%', '/\u00e9', '/' + 'a'.repeat(3000), '', ' ', '/mmds HTTP/1.1', '/boot-source', '/machine-config', '/snapshot/create', '/vm'];
const HEADERS = [
  'Content-Length: 0',
  'Content-Length: 5',
  'Content-Length: -1',
  'Content-Length: 99999999999999999999',
  'Content-Length: 1, 1',
  'Content-Length: 0x10',
  'Transfer-Encoding: chunked',
  'Transfer-Encoding: gzip',
  'Transfer-Encoding: chunked, identity',
  'Expect: 100-continue',
  'Expect: something-else',
  'Connection: close',
  'Connection: keep-alive',
  'Connection: Upgrade\r\nUpgrade: websocket',
  'Upgrade: h2c',
  'Content-Type: text/plain',
  'Accept: */*',
  'Host: a\r\nHost: b',
  'X-Long: ' + 'x'.repeat(9000),
  'X-Null: a\x00b',
  'X-Fold: a\r\n folded',
  'Bad Header: x',
  ': empty-name',
  'X-Utf8: \u00e9\u4e2d',
  'Trailer: X',
];

/** A random JSON value of bounded depth, favouring the types and edges a parser or checker trips on. */
function randomValue(rng: Rng, depth = 0): unknown {
  const k = rng.int(depth > 3 ? 8 : 11);
  switch (k) {
    case 0:
      return null;
    case 1:
      return rng.bool();
    case 2:
      return rng.pick([0, -1, 1.5, 2 ** 53, 2 ** 64, -0, 1e308, Number.MAX_SAFE_INTEGER, 10, 1000]);
    case 3:
      return rng.pick(['', 'FlushMetrics', 'SendCtrlAltDel', 'limited', 'eth0', '__proto__', '\u0000', '\ud800', 'x'.repeat(rng.int(200))]);
    case 4:
      return rng.int(1 << 20);
    case 5:
      return 'str';
    case 6:
      return [];
    case 7:
      return {};
    case 8:
      return Array.from({ length: rng.int(4) }, () => randomValue(rng, depth + 1));
    default: {
      const o: Record<string, unknown> = {};
      for (let i = rng.int(4); i > 0; i--) {
        const key = rng.pick(['size', 'refill_time', 'one_time_burst', 'bandwidth', 'ops', 'rate_limiter', 'drive_id', 'iface_id', 'action_type', 'latest', '__proto__', 'constructor', '', 'x']);
        Object.defineProperty(o, key, { value: randomValue(rng, depth + 1), enumerable: true, writable: true, configurable: true });
      }
      return o;
    }
  }
}

/** Valid requests, the starting points of mutation. */
function validBody(rng: Rng, route: string): unknown {
  const bucket = () => ({ size: 1 + rng.int(1 << 20), refill_time: 1 + rng.int(10_000), ...(rng.bool() ? { one_time_burst: rng.int(1000) } : {}) });
  const limiter = () => (rng.bool() ? { bandwidth: rng.bool(0.8) ? bucket() : null } : { ops: bucket() });
  switch (route) {
    case 'PUT /mmds':
    case 'PATCH /mmds':
      return { latest: { 'meta-data': { 'ami-id': `ami-${rng.int(1000)}`, ...(rng.bool() ? { zone: null } : {}) } } };
    case 'PATCH /drives/limited':
      return { drive_id: 'limited', rate_limiter: limiter() };
    case 'PATCH /network-interfaces/eth0':
      return { iface_id: 'eth0', tx_rate_limiter: limiter() };
    case 'PUT /actions':
      return { action_type: rng.pick(['FlushMetrics', 'SendCtrlAltDel']) };
    default:
      return undefined;
  }
}

const ROUTES = ['GET /', 'GET /mmds', 'PUT /mmds', 'PATCH /mmds', 'PATCH /drives/limited', 'PATCH /network-interfaces/eth0', 'PUT /actions'];

/** Replaces one value somewhere in a JSON value by a random one (the wrong type, usually). */
function mutateValue(rng: Rng, v: unknown): unknown {
  if (v === null || typeof v !== 'object' || rng.bool(0.25)) return randomValue(rng);
  const keys = Object.keys(v as object);
  if (keys.length === 0) return randomValue(rng);
  const copy: Record<string, unknown> = Array.isArray(v) ? ([...v] as unknown as Record<string, unknown>) : { ...(v as Record<string, unknown>) };
  const key = rng.pick(keys);
  if (rng.bool(0.15)) delete copy[key];
  else copy[key] = mutateValue(rng, copy[key]);
  return copy;
}

function deepText(rng: Rng): string {
  const depth = rng.pick([127, 128, 129, 130, 200, 1000, 3000]);
  if (rng.bool()) return '['.repeat(depth) + ']'.repeat(depth);
  const inner = '{"a":'.repeat(depth - 1) + '{}' + '}'.repeat(depth - 1);
  return rng.bool() ? inner : `{"latest":${inner}}`;
}

function bodyText(rng: Rng, route: string): string | undefined {
  const valid = validBody(rng, route);
  switch (rng.int(8)) {
    case 0:
      return deepText(rng);
    case 1:
      return JSON.stringify(randomValue(rng));
    case 2:
      return rng.pick(['{', '{"a":}', 'nul', '1e400', '[1,]', '{"a":1,"a":2}', '\ufeff{}', '{"x":"\\ud800"}', '"\\u0000"', ' ', '{}'.repeat(3), '{"latest":1e999999}']);
    case 3:
      return '{"blob":"' + 'x'.repeat(rng.pick([MMDS_LIMIT - 20, MMDS_LIMIT + 10, MMDS_LIMIT + 5000, 20_000])) + '"}';
    default: {
      const v = valid === undefined ? randomValue(rng) : rng.bool(0.3) ? valid : mutateValue(rng, valid);
      return v === undefined ? undefined : JSON.stringify(v);
    }
  }
}

/** Byte-level damage to a serialized request. */
function mutateBytes(rng: Rng, b: Buffer): Buffer {
  if (b.length === 0) return rng.bytes(1 + rng.int(40));
  const at = rng.int(b.length);
  switch (rng.int(6)) {
    case 0: {
      const c = Buffer.from(b);
      c[at] ^= 1 << rng.int(8);
      return c;
    }
    case 1:
      return Buffer.concat([b.subarray(0, at), rng.bytes(1 + rng.int(8)), b.subarray(at)]);
    case 2:
      return Buffer.concat([b.subarray(0, at), b.subarray(Math.min(b.length, at + 1 + rng.int(16)))]);
    case 3:
      return b.subarray(0, at); // truncated
    case 4:
      return Buffer.concat([b.subarray(0, at), b.subarray(at, at + rng.int(32)), b.subarray(at)]);
    default:
      return Buffer.concat([b.subarray(0, at), Buffer.from(rng.pick(['\r\n', '\r\n\r\n', '\n', '\r', ':', ' ', '\x00', '\x7f', '%']), 'latin1'), b.subarray(at)]);
  }
}

interface Case {
  what: string;
  bytes: Buffer;
  /** Pieces written with a short pause between them. */
  pieces: number;
}

function makeCase(rng: Rng): Case {
  const kind = rng.int(10);
  if (kind === 0) return { what: 'garbage', bytes: rng.bytes(rng.int(300)), pieces: 1 + rng.int(3) };
  const [m0, p0] = rng.pick(ROUTES).split(' ');
  let method = m0;
  let url = p0;
  let what = `${m0} ${p0}`;
  if (kind === 1) {
    method = rng.pick(METHODS);
    what = `method ${JSON.stringify(method)} ${p0}`;
  } else if (kind === 2) {
    url = rng.pick(PATHS);
    what = `${m0} path ${JSON.stringify(url.slice(0, 40))}`;
  }
  const body = bodyText(rng, `${m0} ${p0}`);
  const extra: string[] = [];
  if (kind === 3 || rng.bool(0.1)) for (let i = 1 + rng.int(2); i > 0; i--) extra.push(rng.pick(HEADERS));
  const head = [`${method} ${url} ${rng.bool(0.9) ? 'HTTP/1.1' : rng.pick(['HTTP/1.0', 'HTTP/2', 'HTTP/1.1x', ''])}`, ...extra];
  const bodyBuf = body === undefined ? undefined : Buffer.from(body);
  if (bodyBuf && !extra.some((h) => /^(content-length|transfer-encoding)/i.test(h))) head.push(`Content-Length: ${bodyBuf.length}`);
  let bytes: Buffer = Buffer.concat([Buffer.from(head.join('\r\n') + '\r\n\r\n', 'latin1'), bodyBuf ?? Buffer.alloc(0)]);
  if (extra.length) what += ` +${extra.map((h) => JSON.stringify(h.slice(0, 30))).join(',')}`;
  if (kind === 4 || kind === 5) {
    for (let i = 1 + rng.int(3); i > 0; i--) bytes = mutateBytes(rng, bytes);
    what += ' (bytes mutated)';
  }
  if (kind === 6) {
    // Pipelined: valid requests after this one on the same connection.
    const more = Array.from({ length: 1 + rng.int(3) }, () => {
      const [m, p] = rng.pick(ROUTES).split(' ');
      const b = validBody(rng, `${m} ${p}`);
      return requestBytes(m, p, b === undefined ? undefined : JSON.stringify(b));
    });
    bytes = Buffer.concat([bytes, ...more]);
    what += ` + ${more.length} pipelined`;
  }
  return { what, bytes, pieces: rng.bool(0.3) ? 2 + rng.int(6) : 1 };
}

function split(rng: Rng, b: Buffer, pieces: number): Buffer[] {
  if (pieces <= 1 || b.length < 2) return [b];
  const cuts = Array.from({ length: pieces - 1 }, () => 1 + rng.int(b.length - 1)).sort((x, y) => x - y);
  const out: Buffer[] = [];
  let prev = 0;
  for (const c of [...cuts, b.length]) {
    if (c > prev) out.push(b.subarray(prev, c));
    prev = c;
  }
  return out;
}

// ---- checking --------------------------------------------------------------------------------

interface Tally {
  cases: number;
  byStatus: Record<string, number>;
  unanswered: number;
  violations: string[];
}

async function runCase(sock: string, rng: Rng, i: number, tally: Tally): Promise<void> {
  const c = makeCase(rng);
  const pieces = split(rng, c.bytes, c.pieces);
  const started = Date.now();
  const r = await exchange(sock, pieces, { timeoutMs: CASE_LIMIT_MS, gapMs: c.pieces > 1 ? 1 : 0, firstIsHead: c.bytes.subarray(0, 5).toString('latin1') === 'HEAD ' });
  const label = `case ${i} (${c.what}; bytes ${JSON.stringify(c.bytes.toString('latin1').slice(0, 160))})`;
  tally.cases++;
  const fail = (why: string) => tally.violations.push(`${label}: ${why}`);
  if (!r.closed) fail(`no close within ${CASE_LIMIT_MS} ms (${Date.now() - started} ms)`);
  if (r.malformed) fail(`not HTTP: ${r.malformed}; got ${JSON.stringify(r.raw.toString('latin1').slice(0, 200))}`);
  if (r.responses.length === 0) {
    tally.unanswered++;
    // Only an empty request (Node skips blank lines before one) may go unanswered.
    if (!r.malformed && /[^\r\n]/.test(c.bytes.toString('latin1'))) fail(`closed without a response`);
  }
  for (const res of r.responses) {
    tally.byStatus[res.status] = (tally.byStatus[res.status] ?? 0) + 1;
    const ok = res.status === 200 || res.status === 204 || (res.status >= 400 && res.status < 500) || res.status === 503;
    if (!ok) fail(`status ${res.status}: ${res.body.slice(0, 300)}`);
    if (res.status >= 400 && !res.head) {
      let body: unknown;
      try {
        body = JSON.parse(res.body);
      } catch {
        fail(`status ${res.status} with a body that is not JSON: ${JSON.stringify(res.body.slice(0, 100))}`);
        continue;
      }
      const keys = body !== null && typeof body === 'object' ? Object.keys(body) : [];
      if (keys.length !== 1 || keys[0] !== 'fault_message' || typeof (body as { fault_message: unknown }).fault_message !== 'string') fail(`status ${res.status} with body ${res.body.slice(0, 200)}`);
      if (res.headers['content-type'] !== 'application/json') fail(`status ${res.status} with Content-Type ${res.headers['content-type']}`);
    }
  }
}

async function stillServing(sock: string): Promise<string | undefined> {
  const r = await exchange(sock, [requestBytes('GET', '/')], { timeoutMs: CASE_LIMIT_MS });
  const res = r.responses[0];
  if (res?.status !== 200) return `GET / answered ${res ? `${res.status} ${res.body}` : 'nothing'}`;
  const state = (JSON.parse(res.body) as { state?: string }).state;
  return state === 'Running' ? undefined : `GET / says state ${state}`;
}

async function fuzz(sock: string, alive: () => string | undefined): Promise<Tally> {
  const rng = new Rng(SEED);
  const tally: Tally = { cases: 0, byStatus: {}, unanswered: 0, violations: [] };
  for (let i = 0; i < CASES; i++) {
    await runCase(sock, rng, i, tally);
    if (i % 50 === 49 || i === CASES - 1) {
      const dead = alive() ?? (await stillServing(sock));
      if (dead) {
        tally.violations.push(`after case ${i}: ${dead}`);
        break;
      }
    }
    if (tally.violations.length >= 20) break;
  }
  console.log(`API fuzz (seed ${SEED}): ${tally.cases} cases, statuses ${JSON.stringify(tally.byStatus)}, ${tally.unanswered} closed without a response, ${tally.violations.length} violations`);
  return tally;
}

// ---- targets ---------------------------------------------------------------------------------

describe('API fuzz: the server in front of a stand-in VMM thread', () => {
  let ws: Workspace;
  let api: StandIn;
  beforeAll(async () => {
    ws = new Workspace();
    api = await startStandIn(path.join(ws.dir, 'api.sock'), { mmds: { latest: { 'meta-data': { 'ami-id': 'ami-1' } } }, mmdsSizeLimit: MMDS_LIMIT });
  });
  afterAll(async () => {
    await api?.close();
    ws?.remove();
  });

  test(`${CASES} hostile requests: every answer is HTTP with a JSON fault and a 2xx/4xx/503 status, no hang, still serving`, async () => {
    const tally = await fuzz(path.join(ws.dir, 'api.sock'), () => undefined);
    expect(tally.violations).toEqual([]);
    expect(api.warnings.filter((w) => / 500 /.test(w))).toEqual([]);
  }, 30_000 + CASES * 200);
});

const describeLive = hasKvm ? describe : describe.skip;
if (!hasKvm) console.warn('SKIPPED: the live API fuzz target needs /dev/kvm (the stand-in target ran)');

describeLive('API fuzz: a running fc-run', () => {
  const NS = `fcrun-fz-${process.pid}`;
  const TAP = `fz${process.pid % 1_000_000}`;
  let ws: Workspace;
  let child: ChildProcess | undefined;
  let stderr = '';

  beforeAll(async () => {
    ws = new Workspace();
    if (canNet) {
      execFileSync('ip', ['netns', 'add', NS]);
      execFileSync('ip', ['netns', 'exec', NS, 'ip', 'tuntap', 'add', 'dev', TAP, 'mode', 'tap']);
      execFileSync('ip', ['netns', 'exec', NS, 'ip', 'link', 'set', TAP, 'up']);
    }
    const limit = { ops: { size: 10, refill_time: 1000 } };
    const spec = ws.write('vm.json', {
      'boot-source': { kernel_image_path: ws.write('spin.elf', tinyGuestElf([0xeb, 0xfe])) }, // jmp $
      'machine-config': { vcpu_count: 1, mem_size_mib: 16 },
      drives: [
        { drive_id: 'limited', path_on_host: ws.write('a.img', Buffer.alloc(4096)), is_root_device: false, is_read_only: false, rate_limiter: limit },
        { drive_id: 'free', path_on_host: ws.write('b.img', Buffer.alloc(4096)), is_root_device: false, is_read_only: false },
      ],
      ...(canNet
        ? {
            'network-interfaces': [{ iface_id: 'eth0', host_dev_name: TAP, tx_rate_limiter: limit }],
            'mmds-config': { version: 'V2', network_interfaces: ['eth0'] },
            mmds: { latest: { 'meta-data': { 'ami-id': 'ami-1' } } },
          }
        : {}),
    });
    const sock = path.join(ws.dir, 'api.sock');
    const args = [BIN, spec, '--api-sock', sock, '--mmds-size-limit', String(MMDS_LIMIT), '--metrics-path', path.join(ws.dir, 'vm.metrics'), '--serial-out', 'none', '--id', 'vm-fuzz'];
    child = canNet ? spawn('ip', ['netns', 'exec', NS, process.execPath, ...args]) : spawn(process.execPath, args);
    child.stderr!.on('data', (d) => (stderr = (stderr + d).slice(-20_000)));
    child.stdout!.resume();
    const until = Date.now() + 60_000;
    while ((fs.existsSync(sock) ? await stillServing(sock).catch((e: Error) => e.message) : 'no socket yet') !== undefined) {
      if (child.exitCode !== null || Date.now() > until) throw new Error(`fc-run did not start: ${stderr}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }, 90_000);

  afterAll(() => {
    child?.kill('SIGKILL');
    if (canNet) spawnSync('ip', ['netns', 'del', NS]);
    ws?.remove();
  });

  test(`${CASES} hostile requests: every answer is HTTP with a JSON fault and a 2xx/4xx/503 status, no hang, fc-run still running and serving`, async () => {
    const sock = path.join(ws.dir, 'api.sock');
    const tally = await fuzz(sock, () => (child!.exitCode !== null || child!.signalCode !== null ? `fc-run exited (${child!.exitCode ?? child!.signalCode}): ${stderr.slice(-2000)}` : undefined));
    expect(tally.violations).toEqual([]);
    expect(stderr).not.toMatch(/crashed| 500 /);
    const exited = new Promise((resolve) => child!.once('exit', resolve));
    child!.kill('SIGTERM');
    expect(await exited).toBe(0);
  }, 30_000 + CASES * 300);
});
