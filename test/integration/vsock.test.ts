import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { Workspace } from '../helpers/specs';

/**
 * vsock with real Unix sockets, both directions, against the probe guest: the guest connects to
 * host port 6000 (fc-run connects to <uds_path>_6000, where this test listens), and this test
 * connects to guest port 5000 through uds_path with "CONNECT 5000\n".
 */
const ROOT = path.resolve(__dirname, '..', '..');
const BIN = path.join(ROOT, 'bin', 'fc-run');
const PROBE = path.join(ROOT, 'guest', 'probe', 'build', 'probe.elf');
const hasKvm = fs.existsSync('/dev/kvm');
const describeKvm = hasKvm ? describe : describe.skip;
if (!hasKvm) console.warn('SKIPPED: the vsock test needs /dev/kvm');

function readUntil(sock: net.Socket, pattern: RegExp, timeoutMs = 60_000): Promise<string> {
  return new Promise((resolve, reject) => {
    let got = '';
    const timer = setTimeout(() => reject(new Error(`timed out waiting for ${pattern}; got ${JSON.stringify(got)}`)), timeoutMs);
    const onData = (d: Buffer) => {
      got += d.toString('latin1');
      if (pattern.test(got)) {
        clearTimeout(timer);
        sock.off('data', onData);
        resolve(got);
      }
    };
    sock.on('data', onData);
  });
}

async function waitFor(cond: () => boolean, timeoutMs = 30_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > until) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 10));
  }
}

let ws: Workspace;
const children: ReturnType<typeof spawn>[] = [];
beforeAll(() => (ws = new Workspace()));
afterEach(() => {
  // A failed expectation must not leave a VM running (it would keep the test run alive).
  for (const c of children.splice(0)) if (c.exitCode === null) c.kill('SIGKILL');
});
afterAll(() => ws.remove());

/** Boots the probe with a vsock device at `uds`; its serial output collects in `output()`. */
function bootWithVsock(name: string, uds: string, guestCid: number) {
  const spec = ws.write(name, {
    'boot-source': { kernel_image_path: PROBE, boot_args: 'console=ttyS0' },
    'machine-config': { vcpu_count: 1, mem_size_mib: 64 },
    vsock: { guest_cid: guestCid, uds_path: uds },
  });
  const child = spawn(process.execPath, [BIN, spec], { env: { ...process.env, NO_COLOR: '1' } });
  children.push(child);
  let out = '';
  child.stdout.on('data', (d) => (out += d.toString()));
  const exited = new Promise<number | null>((r) => child.on('exit', r));
  return { exited, output: () => out.replace(/\r/g, '') };
}

describeKvm('vsock through Unix sockets', () => {
  test('guest-initiated and host-initiated connections carry data both ways', async () => {
    const uds = path.join(ws.dir, 'v.sock');
    let guestSaid = '';
    const server = net.createServer((s) => {
      s.once('data', (d) => {
        guestSaid = d.toString();
        s.write('hello guest');
      });
    });
    await new Promise<void>((r) => server.listen(`${uds}_6000`, r));
    const { exited, output } = bootWithVsock('vsock.json', uds, 42);

    await waitFor(() => fs.existsSync(uds));
    const host = net.connect(uds);
    let exchange: string;
    try {
      // "ping" travels in the same write as the CONNECT line: it must still reach the guest.
      host.write('CONNECT 5000\nping');
      // "OK <port>\n" and the guest's reply may arrive in one chunk or two: read the whole exchange.
      exchange = await readUntil(host, /^OK \d+\n[\s\S]*pong:ping/).catch((err: Error) => {
        throw new Error(`${err.message}\nguest serial output:\n${output()}`);
      });
    } finally {
      host.destroy();
      server.close();
    }
    const code = await exited;

    const text = output();
    expect(text).toContain('# vsock-cid: 42');
    expect(text).toContain('ok - vsock-guest-connect');
    expect(guestSaid).toBe('hello host');
    expect(text).toContain('# vsock-host-replied: hello guest');
    expect(text).toContain('ok - vsock-host-connect');
    expect(exchange).toMatch(/^OK \d+\npong:ping$/);
    expect(text).toContain('# vsock-host-said: ping');
    expect(text).not.toContain('not ok');
    expect(code).toBe(0);
  }, 120_000);

  test('a guest connecting to a port nobody listens on is reset, and a bad CONNECT line is closed', async () => {
    const uds = path.join(ws.dir, 'v2.sock');
    const { exited, output } = bootWithVsock('vsock2.json', uds, 3);
    await waitFor(() => fs.existsSync(uds));
    const bad = net.connect(uds);
    bad.write('HELLO\n');
    const t0 = Date.now();
    const closed = await new Promise<boolean>((r) => {
      const timer = setTimeout(() => r(false), 30_000);
      const done = () => {
        clearTimeout(timer);
        r(true);
      };
      bad.on('close', done);
      bad.on('error', done);
    });
    bad.destroy();
    console.log(`bad CONNECT closed after ${Date.now() - t0} ms`);
    expect(closed).toBe(true);
    // Nothing listens on <uds>_6000, so the guest's REQUEST is answered with RST.
    await exited;
    expect(output()).toContain('not ok - vsock-guest-connect');
  }, 120_000);
});
