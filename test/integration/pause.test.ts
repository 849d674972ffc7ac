import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { Workspace } from '../helpers/specs';
import { tinyGuestElf } from '../helpers/images';

/**
 * Pause and resume through the API (Firecracker's PATCH /vm), and SIGQUIT's register dump, on a
 * guest that writes to the serial port without end: while paused its output must not grow at all,
 * after resuming it must.
 */
const ROOT = path.resolve(__dirname, '..', '..');
const BIN = path.join(ROOT, 'bin', 'fc-run');
const hasKvm = fs.existsSync('/dev/kvm');
const describeKvm = hasKvm ? describe : describe.skip;
if (!hasKvm) console.warn('SKIPPED: pause/resume tests need /dev/kvm');

// mov dx, 0x3f8; mov al, 'x'; 1: out dx, al; jmp 1b
const CHATTY = [0x66, 0xba, 0xf8, 0x03, 0xb0, 0x78, 0xee, 0xeb, 0xfd];
const ENTRY = 0x200000;

function call(sock: string, method: string, url: string, body?: unknown): Promise<{ status: number; body: any }> {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : JSON.stringify(body);
    const req = http.request({ socketPath: sock, method, path: url, headers: data ? { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(data) } : {} }, (res) => {
      let text = '';
      res.on('data', (d) => (text += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text ? JSON.parse(text) : undefined }));
    });
    req.on('error', reject);
    req.end(data);
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until<T>(what: string, probe: () => T | undefined | Promise<T | undefined>, ms = 60_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v !== undefined && v !== false) return v as T;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

let ws: Workspace;
describeKvm('pause and resume', () => {
  beforeAll(() => (ws = new Workspace()));
  afterAll(() => ws?.remove());

  test('a paused VM runs no guest code until resumed; SIGQUIT shows where each vCPU is without stopping it', async () => {
    const spec = ws.write('vm.json', {
      'boot-source': { kernel_image_path: ws.write('chatty.elf', tinyGuestElf(CHATTY)) },
      'machine-config': { vcpu_count: 2, mem_size_mib: 16 },
      logger: { level: 'Info' },
    });
    const sock = path.join(ws.dir, 'api.sock');
    const out = path.join(ws.dir, 'serial.out');
    const child = spawn(process.execPath, [BIN, spec, '--api-sock', sock, '--serial-out', out], { env: { ...process.env, NO_COLOR: '1' } });
    let err = '';
    child.stderr.on('data', (d) => (err += d));
    const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
    const size = () => (fs.existsSync(out) ? fs.statSync(out).size : 0);
    try {
      await until('the VM to run', async () => (fs.existsSync(sock) ? (await call(sock, 'GET', '/').catch(() => undefined))?.body?.state === 'Running' : false));
      await until('serial output', () => size() > 0);

      expect((await call(sock, 'PATCH', '/vm', { state: 'Paused' })).status).toBe(204);
      expect((await call(sock, 'GET', '/')).body.state).toBe('Paused');
      const frozen = size();
      await sleep(1500);
      expect(size()).toBe(frozen); // not one byte while paused
      expect((await call(sock, 'PATCH', '/vm', { state: 'Paused' })).status).toBe(204); // already paused: fine

      expect((await call(sock, 'PATCH', '/vm', { state: 'Resumed' })).status).toBe(204);
      expect((await call(sock, 'GET', '/')).body.state).toBe('Running');
      await until('output after resuming', () => size() > frozen);

      // SIGQUIT: every vCPU's registers in the log; the guest goes on.
      child.kill('SIGQUIT');
      await until('the register dump', () => /vCPU 1 registers \(SIGQUIT\)/.test(err));
      const rips = [...err.matchAll(/rip=0x([0-9a-f]{16})/g)].map((m) => parseInt(m[1], 16));
      expect(rips.length).toBeGreaterThanOrEqual(1);
      // vCPU 0 runs the loop; the other waits for a start-up IPI that never comes (rip 0 in real mode is fine too).
      expect(rips.some((rip) => rip >= ENTRY && rip < ENTRY + CHATTY.length)).toBe(true);
      const after = size();
      await until('output after the dump', () => size() > after);
      expect((await call(sock, 'GET', '/')).body.state).toBe('Running');

      // Stopping a paused VM works: SIGTERM ends it with exit 0.
      expect((await call(sock, 'PATCH', '/vm', { state: 'Paused' })).status).toBe(204);
      child.kill('SIGTERM');
      expect(await Promise.race([exited, sleep(30_000).then(() => 'hung')])).toBe(0);
    } finally {
      child.kill('SIGKILL');
      await exited;
    }
  }, 180_000);
});
