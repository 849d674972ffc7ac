import { execFileSync, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';
import { Workspace } from '../helpers/specs';
import { tinyGuestElf } from '../helpers/images';
import { exchange, requestBytes } from '../helpers/http-raw';

/**
 * The HTTP API on a running microVM (a guest that spins, with a rate-limited drive, a TAP-backed
 * interface in a network namespace this test creates, and MMDS): every change goes through the
 * real Unix socket and reaches the VMM thread.
 */
const ROOT = path.resolve(__dirname, '..', '..');
const BIN = path.join(ROOT, 'bin', 'fc-run');
const canRun = fs.existsSync('/dev/kvm') && fs.existsSync('/dev/net/tun') && process.getuid?.() === 0;
const describeApi = canRun ? describe : describe.skip;
if (!canRun) console.warn('SKIPPED: the API test needs /dev/kvm, /dev/net/tun and root (to create a network namespace)');

const NS = `fcrun-api-${process.pid}`;
const TAP = `fcapi${process.pid}`; // unique: other test runs may share the machine

function call(sock: string, method: string, url: string, body?: unknown): Promise<{ status: number; body: any }> {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body);
    const req = http.request({ socketPath: sock, method, path: url, headers: data ? { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(data) } : {} }, (res) => {
      let text = '';
      res.on('data', (d) => (text += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text ? JSON.parse(text) : undefined }));
    });
    req.on('error', reject);
    req.end(data);
  });
}

let ws: Workspace;
describeApi('the HTTP API on a running microVM', () => {
  beforeAll(() => {
    ws = new Workspace();
    execFileSync('ip', ['netns', 'add', NS]);
    execFileSync('ip', ['netns', 'exec', NS, 'ip', 'tuntap', 'add', 'dev', TAP, 'mode', 'tap']);
    execFileSync('ip', ['netns', 'exec', NS, 'ip', 'link', 'set', TAP, 'up']);
  });
  afterAll(() => {
    spawnSync('ip', ['netns', 'del', NS]);
    ws?.remove();
  });

  test('MMDS contents, rate limiters and actions change on the running VM; bad requests get clear errors', async () => {
    const kernel = ws.write('spin.elf', tinyGuestElf([0xeb, 0xfe])); // jmp $
    const limit = { ops: { size: 10, refill_time: 1000 } };
    const spec = ws.write('vm.json', {
      'boot-source': { kernel_image_path: kernel },
      'machine-config': { vcpu_count: 1, mem_size_mib: 16 },
      drives: [
        { drive_id: 'limited', path_on_host: ws.write('a.img', Buffer.alloc(4096)), is_root_device: false, is_read_only: false, rate_limiter: limit },
        { drive_id: 'free', path_on_host: ws.write('b.img', Buffer.alloc(4096)), is_root_device: false, is_read_only: false },
      ],
      'network-interfaces': [{ iface_id: 'eth0', host_dev_name: TAP, tx_rate_limiter: limit }],
      'mmds-config': { version: 'V2', network_interfaces: ['eth0'] },
      mmds: { latest: { 'meta-data': { 'ami-id': 'ami-1' } } },
    });
    const sock = path.join(ws.dir, 'api.sock');
    const metrics = path.join(ws.dir, 'vm.metrics');
    const child = spawn('ip', ['netns', 'exec', NS, process.execPath, BIN, spec, '--api-sock', sock, '--metrics-path', metrics, '--mmds-size-limit', '1000', '--id', 'vm-api'], { env: { ...process.env, NO_COLOR: '1' } });
    let err = '';
    child.stderr.on('data', (d) => (err += d));
    const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
    try {
      const until = Date.now() + 30_000;
      for (;;) {
        const info = fs.existsSync(sock) ? await call(sock, 'GET', '/').catch(() => undefined) : undefined;
        if (info?.body?.state === 'Running') {
          expect(info.body).toMatchObject({ id: 'vm-api', app_name: 'fc-run' });
          break;
        }
        if (Date.now() > until) throw new Error(`the VM did not start: ${err}`);
        await new Promise((r) => setTimeout(r, 50));
      }

      // MMDS: read, replace, merge-patch (null deletes), and a refused oversize replacement.
      expect(await call(sock, 'GET', '/mmds')).toEqual({ status: 200, body: { latest: { 'meta-data': { 'ami-id': 'ami-1' } } } });
      expect((await call(sock, 'PUT', '/mmds', { latest: { 'meta-data': { 'ami-id': 'ami-2', zone: 'a' } } })).status).toBe(204);
      expect((await call(sock, 'PATCH', '/mmds', { latest: { 'meta-data': { zone: null, rack: 7 } } })).status).toBe(204);
      expect((await call(sock, 'GET', '/mmds')).body).toEqual({ latest: { 'meta-data': { 'ami-id': 'ami-2', rack: 7 } } });
      const big = await call(sock, 'PUT', '/mmds', { blob: 'x'.repeat(2000) });
      // Over the MMDS size limit: 413, as Firecracker answers (its data store's limit error).
      expect(big.status).toBe(413);
      expect(big.body.fault_message).toMatch(/limit is 1000/);
      expect((await call(sock, 'PUT', '/mmds', [1, 2])).status).toBe(400);
      expect((await call(sock, 'GET', '/mmds')).body.latest['meta-data']['ami-id']).toBe('ami-2');

      // Rate limiters: changed where configured; a device without one is refused, as is bad input.
      expect((await call(sock, 'PATCH', '/drives/limited', { drive_id: 'limited', rate_limiter: { bandwidth: { size: 1048576, refill_time: 100 } } })).status).toBe(204);
      const free = await call(sock, 'PATCH', '/drives/free', { rate_limiter: limit });
      expect(free.status).toBe(400);
      expect(free.body.fault_message).toMatch(/has no rate_limiter configured at start/);
      expect((await call(sock, 'PATCH', '/drives/nope', { rate_limiter: limit })).body.fault_message).toBe('no drive "nope"');
      expect((await call(sock, 'PATCH', '/drives/limited', { rate_limiter: { ops: { size: -1, refill_time: 10 } } })).status).toBe(400);
      expect((await call(sock, 'PATCH', '/drives/limited', { path_on_host: '/etc/shadow' })).body.fault_message).toMatch(/only rate_limiter can change/);
      expect((await call(sock, 'PATCH', '/network-interfaces/eth0', { iface_id: 'eth0', tx_rate_limiter: { ops: { size: 100, refill_time: 1000 } } })).status).toBe(204);
      expect((await call(sock, 'PATCH', '/network-interfaces/eth0', { rx_rate_limiter: limit })).status).toBe(400);

      // Actions.
      expect((await call(sock, 'PUT', '/actions', { action_type: 'FlushMetrics' })).status).toBe(204);
      expect(fs.readFileSync(metrics, 'utf8')).toMatch(/"fc_run":\{"reason":"request"/);
      expect((await call(sock, 'PUT', '/actions', { action_type: 'SendCtrlAltDel' })).status).toBe(204);
      expect((await call(sock, 'PUT', '/actions', { action_type: 'Reboot' })).status).toBe(400);

      // Only the owner may connect; a second fc-run on the same socket is refused.
      expect(fs.statSync(sock).mode & 0o777).toBe(0o600);
      const second = spawnSync(process.execPath, [BIN, spec, '--api-sock', sock], { encoding: 'utf8' });
      expect(second.status).toBe(1);
      expect(second.stderr).toMatch(/api\.sock is in use by another process/);
      expect((await call(sock, 'GET', '/')).body.id).toBe('vm-api');

      // Errors.
      expect((await call(sock, 'PATCH', '/drives/%ZZ', { rate_limiter: limit })).status).toBe(400);
      // Far over the MMDS limit but within the API's body limit (51200 bytes): the store refuses it.
      const huge = await call(sock, 'PUT', '/mmds', { blob: 'y'.repeat(20_000) });
      expect(huge.status).toBe(413);
      expect(huge.body.fault_message).toMatch(/limit is 1000/);
      expect((await call(sock, 'GET', '/nowhere')).status).toBe(404);
      expect((await call(sock, 'DELETE', '/mmds')).status).toBe(405);
      const bad = await call(sock, 'PUT', '/mmds', '{not json');
      expect(bad.status).toBe(400);
      expect(bad.body.fault_message).toMatch(/not valid JSON/);

      // Malformed HTTP, deep JSON and fields of the wrong type: JSON faults with a 4xx, never a 500.
      for (const [bytes, status] of [
        ['PUT /mmds HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}', 400],
        ['PUT /mmds HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n', 400],
        ['FROB / HTTP/1.1\r\n\r\n', 400],
        [`GET / HTTP/1.1\r\nX: ${'a'.repeat(20_000)}\r\n\r\n`, 431],
        [requestBytes('PUT', '/mmds', '{"a":'.repeat(129) + '1' + '}'.repeat(129)).toString('latin1'), 400],
        [requestBytes('PATCH', '/drives/limited', '{"drive_id": 7, "rate_limiter": {}}').toString('latin1'), 400],
        [requestBytes('PUT', '/actions', '["FlushMetrics"]').toString('latin1'), 400],
      ] as const) {
        const r = await exchange(sock, [Buffer.from(bytes, 'latin1')]);
        expect(r.malformed).toBeUndefined();
        expect(r.responses[0].status).toBe(status);
        expect(Object.keys(JSON.parse(r.responses[0].body))).toEqual(['fault_message']);
      }

      // Sixteen slow clients (headers a byte at a time, or a body never finished) do not lock others out.
      const slow = Array.from({ length: 16 }, (_, i) => {
        const c = net.connect(sock);
        c.on('error', () => undefined);
        c.write(i % 2 ? 'GET / HTTP/1.1\r\nX-Slow: ' : 'PUT /mmds HTTP/1.1\r\nContent-Length: 100\r\n\r\n{');
        return c;
      });
      try {
        // All connected (so queued ahead of the client below) before it connects.
        await Promise.all(slow.map((c) => new Promise((r) => (c.connecting ? c.once('connect', r) : r(undefined)))));
        // Fresh connections (an HTTP agent's kept-alive one may be the one closed to make room).
        for (let i = 0; i < 3; i++) {
          const r = await exchange(sock, [requestBytes('GET', '/')]);
          expect(r.responses.map((x) => x.status)).toEqual([200]);
          expect(JSON.parse(r.responses[0].body).state).toBe('Running');
        }
      } finally {
        slow.forEach((c) => c.destroy());
      }

      child.kill('SIGTERM');
      expect(await exited).toBe(0);
    } finally {
      child.kill('SIGKILL');
    }
    expect(fs.existsSync(sock)).toBe(false);
    expect(fs.readFileSync(path.join(ws.dir, 'a.img')).length).toBe(4096);
  }, 60_000);
});
