import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createSealedNetns, SealedNetns } from '../helpers/netns';
import { Workspace } from '../helpers/specs';

/**
 * The probe guest's TCP + HTTP/1.1 client (probe.mmds=) against Linux's own TCP stack: in a
 * network namespace this test creates and removes, a small HTTP server (test/helpers/mmds-server.py)
 * plays an IMDSv2-style metadata service on the host end of a TAP; the guest fetches a token and
 * metadata over one keep-alive connection and closes it. One run adds duplicated, out-of-order and
 * bad-checksum segments on the wire (test/helpers/tap-meddle.py).
 */
const ROOT = path.resolve(__dirname, '..', '..');
const BIN = path.join(ROOT, 'bin', 'fc-run');
const PROBE = path.join(ROOT, 'guest', 'probe', 'build', 'probe.elf');
const HELPERS = path.join(__dirname, '..', 'helpers');
const canRun = fs.existsSync('/dev/kvm') && fs.existsSync('/dev/net/tun') && process.getuid?.() === 0;
const describeNet = canRun ? describe : describe.skip;
if (!canRun) console.warn('SKIPPED: the TCP test needs /dev/kvm, /dev/net/tun and root (to create a network namespace)');

let net: SealedNetns;
const HOST_IP = '10.201.0.1';
/** Also on the TAP, but nothing listens there: connections to it are refused. */
const CLOSED_IP = '10.201.0.3';
const GUEST_IP = '10.201.0.2';

/** A helper process inside the namespace; `lines` collects its stdout, line by line. */
interface Helper {
  proc: ChildProcess;
  lines: string[];
  stderr: string[];
}

/** Starts a python helper in the namespace and waits for the line saying it is ready. */
function startHelper(script: string, args: string[], readyLine: string): Promise<Helper> {
  const proc = spawn('ip', ['netns', 'exec', net.ns, 'python3', path.join(HELPERS, script), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const h: Helper = { proc, lines: [], stderr: [] };
  let partial = '';
  return new Promise((resolve, reject) => {
    // Python's start-up on a loaded machine can take seconds: a generous limit, left as soon as ready.
    const timer = setTimeout(() => reject(new Error(`${script} did not start: ${h.stderr.join('')}`)), 30_000);
    proc.stderr!.on('data', (d: Buffer) => h.stderr.push(d.toString()));
    proc.stdout!.on('data', (d: Buffer) => {
      const text = partial + d.toString();
      const parts = text.split('\n');
      partial = parts.pop()!;
      h.lines.push(...parts);
      if (parts.includes(readyLine)) {
        clearTimeout(timer);
        resolve(h);
      }
    });
    proc.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${script} exited (${code}) before it was ready: ${h.stderr.join('')}`));
    });
  });
}

function stopHelper(h: Helper | undefined): void {
  if (h && h.proc.exitCode === null && h.proc.signalCode === null) h.proc.kill('SIGKILL');
}

/**
 * Boots the probe with these extra command-line words on the namespace's TAP. Asynchronous, so
 * the helpers' output keeps being read while the guest runs; killed after `limitMs`.
 */
function bootProbe(ws: Workspace, name: string, args: string, limitMs = 80_000): Promise<{ status: number | null; out: string; err: string }> {
  const spec = ws.write(`${name}.json`, {
    'boot-source': { kernel_image_path: PROBE, boot_args: `console=ttyS0 probe.ip=${GUEST_IP} ${args}` },
    'machine-config': { vcpu_count: 1, mem_size_mib: 64 },
    'network-interfaces': [{ iface_id: 'eth0', host_dev_name: net.tap, guest_mac: '06:00:0a:c9:00:02' }],
  });
  const proc = spawn('ip', ['netns', 'exec', net.ns, process.execPath, BIN, spec], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NO_COLOR: '1' } });
  let out = '';
  let err = '';
  proc.stdout.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const timer = setTimeout(() => proc.kill('SIGKILL'), limitMs);
  return new Promise((resolve) => {
    proc.on('close', (status) => {
      clearTimeout(timer);
      resolve({ status, out: out.replace(/\r/g, ''), err });
    });
  });
}

/**
 * Waits until the helper has printed JSON lines since line `from` that satisfy `enough` (at most
 * `ms`: a limit for a helper that never prints, not a guess at how long printing takes).
 */
async function jsonLines(h: Helper, from: number, enough: number | ((lines: string[]) => boolean), ms = 30_000): Promise<string[]> {
  const end = Date.now() + ms;
  const get = () => h.lines.slice(from).filter((l) => l.startsWith('{'));
  const done = typeof enough === 'number' ? (l: string[]) => l.length >= enough : enough;
  while (!done(get()) && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
  return get();
}

/** The value of a `# key: value` line the probe printed (undefined if it printed none). */
function fact(out: string, key: string): string | undefined {
  return new RegExp(`^# ${key}: (.*)$`, 'm').exec(out)?.[1];
}

interface RequestLog {
  method: string;
  path: string;
  client_port: number;
  token: string;
  accept: string | null;
  status: number;
}

/** The requests the server logged since line `from` (one JSON line per request), once it has logged `count`. */
async function requests(server: Helper, from: number, count: number): Promise<RequestLog[]> {
  return (await jsonLines(server, from, count)).map((l) => JSON.parse(l) as RequestLog);
}

let ws: Workspace | undefined;
let server: Helper | undefined;

describeNet('TCP and HTTP/1.1 from the probe guest to a metadata server on Linux', () => {
  beforeAll(async () => {
    if (!fs.existsSync(PROBE)) throw new Error(`${PROBE} is missing: run \`npm run build:probe\``);
    ws = new Workspace();
    // Sealed: nothing of the host's own (IPv6 autoconfiguration, MLD) reaches the guest's TCP/IP.
    net = createSealedNetns('tcp', { addresses: [`${HOST_IP}/24`, `${CLOSED_IP}/24`] });
    server = await startHelper('mmds-server.py', [HOST_IP, '80'], 'listening');
  }, 30_000);
  afterAll(() => {
    stopHelper(server);
    net?.remove();
    ws?.remove();
  });

  test('token, then metadata as JSON, then a refused GET without the token, all on one connection', async () => {
    const from = server!.lines.length;
    const r = await bootProbe(ws!, 'json', `probe.mmds=${HOST_IP} probe.mmds_path=/latest/meta-data/ami-id`);
    expect(r.out).toContain('# mmds-token-status: 200');
    expect(r.out).toContain('# mmds-status: 200');
    expect(r.out).toContain('# mmds-body: "ami-0a1b2c3d4e5f60718"');
    expect(r.out).toContain('# mmds-body-length: 23');
    expect(r.out).toContain('# mmds-notoken-status: 401');
    expect(r.out).toContain('# mmds-peer-mss: 1460');
    expect(r.out).toContain('ok - mmds');
    expect(r.out).not.toContain('not ok');
    expect(r.status).toBe(0);
    // What the server saw: three requests on one connection (keep-alive), from the guest's port.
    const reqs = await requests(server!, from, 3);
    expect(reqs.map((q) => [q.method, q.path, q.token, q.status])).toEqual([
      ['PUT', '/latest/api/token', 'issued', 200],
      ['GET', '/latest/meta-data/ami-id', 'valid', 200],
      ['GET', '/latest/meta-data/ami-id', 'missing', 401],
    ]);
    expect(new Set(reqs.map((q) => q.client_port))).toEqual(new Set([Number(fact(r.out, 'mmds-local-port'))]));
    expect(reqs[1].accept).toBe('application/json');
  }, 90_000);

  test('without probe.mmds_path the default path is fetched; probe.mmds_accept=text sends no Accept', async () => {
    const from = server!.lines.length;
    const r = await bootProbe(ws!, 'text', `probe.mmds=${HOST_IP} probe.mmds_accept=text`);
    // The IMDS text listing has newlines: the probe prints them as two-character escapes.
    expect(r.out).toContain('# mmds-body: ami-id\\ninstance-id\\nlocal-ipv4\\nplacement/\n');
    expect(r.out).toContain('# mmds-status: 200');
    expect(r.out).toContain('# mmds-notoken-status: 401');
    expect(r.out).toContain('ok - mmds');
    expect(r.status).toBe(0);
    const reqs = await requests(server!, from, 3);
    expect(reqs.map((q) => [q.method, q.path, q.accept])).toEqual([
      ['PUT', '/latest/api/token', null],
      ['GET', '/latest/meta-data/', null],
      ['GET', '/latest/meta-data/', null],
    ]);
  }, 90_000);

  test('duplicated, out-of-order and bad-checksum segments: re-ACKed or dropped, the stream stays intact', async () => {
    const meddler = await startHelper('tap-meddle.py', [net.tap, '80'], 'ready');
    try {
      const from = server!.lines.length;
      const r = await bootProbe(ws!, 'meddled', `probe.mmds=${HOST_IP} probe.mmds_path=/latest/meta-data/ami-id`);
      expect(await requests(server!, from, 3)).toHaveLength(3);
      // The meddler may print behind what it did (a loaded machine): wait for the injections the
      // checks below need, not for a fixed time. Lines that come later only make them stricter.
      const kinds = (lines: string[]) => lines.map((l) => (JSON.parse(l) as { kind: string }).kind);
      const injected = kinds(await jsonLines(meddler, 0, (l) => kinds(l).filter((k) => k === 'ooo').length >= 6));
      const count = (kind: string) => injected.filter((k) => k === kind).length;
      console.log(`injected: ${count('dup')} duplicates, ${count('ooo')} out-of-order, ${count('badsum')} bad checksums; ` +
        `the guest saw ${fact(r.out, 'mmds-dup-segments')}, ${fact(r.out, 'mmds-ooo-segments')}, ${fact(r.out, 'mmds-bad-checksums')}`);
      expect(r.out).toContain('# mmds-token-status: 200');
      expect(r.out).toContain('# mmds-status: 200');
      expect(r.out).toContain('# mmds-body: "ami-0a1b2c3d4e5f60718"');
      expect(r.out).toContain('# mmds-body-length: 23');
      expect(r.out).toContain('# mmds-notoken-status: 401');
      expect(r.out).toContain('ok - mmds');
      expect(r.status).toBe(0);
      // The server writes each response in three pieces: the guest put responses together from
      // several segments. Every forgery was counted by the guest, except perhaps those behind the
      // last response's segments (up to 3 of a kind), which may arrive after the guest is done.
      const dataSegments = count('ooo');
      expect(dataSegments).toBeGreaterThanOrEqual(6);
      expect(Number(fact(r.out, 'mmds-dup-segments'))).toBeGreaterThanOrEqual(dataSegments - 3);
      expect(Number(fact(r.out, 'mmds-ooo-segments'))).toBeGreaterThanOrEqual(dataSegments - 3);
      expect(Number(fact(r.out, 'mmds-bad-checksums'))).toBeGreaterThanOrEqual(count('badsum') - 3);
    } finally {
      stopHelper(meddler);
    }
  }, 90_000);

  test('a refused connection (RST) is reported, not waited on', async () => {
    const r = await bootProbe(ws!, 'refused', `probe.mmds=${CLOSED_IP}`);
    expect(r.out).toContain('not ok - mmds: connect: connection refused');
    expect(r.out).toContain('# probe done: 1 failed');
    expect(r.status).toBe(0);
  }, 90_000);

  test('an MMDS address nobody answers ends in a bounded time with a clear failure', async () => {
    const started = Date.now();
    const r = await bootProbe(ws!, 'silent', 'probe.mmds=10.201.0.77');
    expect(r.out).toContain('not ok - mmds: ARP: no ARP reply for the MMDS address');
    expect(r.status).toBe(0);
    expect(Date.now() - started).toBeLessThan(60_000);
  }, 90_000);
});
