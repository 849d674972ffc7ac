import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Listener } from '../helpers/notify-listener';
import { Workspace } from '../helpers/specs';

/**
 * systemd's Type=notify end to end: fc-run, started with NOTIFY_SOCKET as systemd starts it, sends
 * READY=1 once the guest runs and STOPPING=1 when SIGTERM (systemctl stop) stops it. Needs /dev/kvm.
 */
const ROOT = path.resolve(__dirname, '..', '..');
const BIN = path.join(ROOT, 'bin', 'fc-run');
const PROBE = path.join(ROOT, 'guest', 'probe', 'build', 'probe.elf');
const hasKvm = fs.existsSync('/dev/kvm');
const describeKvm = hasKvm ? describe : describe.skip;
if (!hasKvm) console.warn('SKIPPED: the sd_notify end-to-end test needs /dev/kvm, which this host does not have');

let ws: Workspace;
beforeAll(() => {
  if (hasKvm && !fs.existsSync(PROBE)) throw new Error(`${PROBE} is missing: run \`npm run build:probe\` (npm test does)`);
  ws = new Workspace();
});
afterAll(() => ws.remove());

describeKvm('fc-run under a service manager', () => {
  test.each([
    ['an abstract', () => `@fc-run-e2e-${process.pid}`],
    ['a path', () => path.join(ws.dir, `notify-${process.pid}.sock`)],
  ])('READY=1 (with MAINPID) once the guest runs, STOPPING=1 after SIGTERM, exit 0, at %s address', async (_kind, address) => {
    // probe.echo waits (for a very long time) for a console line that never comes: the guest keeps running.
    const spec = ws.write(`notify-${process.pid}.json`, {
      'boot-source': { kernel_image_path: PROBE, boot_args: 'console=ttyS0 probe.echo' },
      'machine-config': { vcpu_count: 1, mem_size_mib: 32 },
    });
    const addr = address();
    const listener = new Listener(addr, 2);
    try {
      await listener.ready;
      const child = spawn(process.execPath, [BIN, spec, '--serial-out', 'none'], { env: { ...process.env, NOTIFY_SOCKET: addr }, stdio: ['ignore', 'pipe', 'pipe'] });
      let err = '';
      child.stderr.on('data', (d: Buffer) => (err += d.toString()));
      const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
      const [ready] = await listener.received(1);
      expect(ready.split('\n')).toEqual(['READY=1', `MAINPID=${child.pid}`, 'STATUS=running: 1 vCPU(s), 32 MiB', '']);
      child.kill('SIGTERM');
      const [, stopping] = await listener.received(2);
      expect(stopping).toBe('STOPPING=1\nSTATUS=stopped: stopped by SIGTERM\n');
      expect(await exited).toBe(0);
      expect(err).not.toContain('could not notify');
    } finally {
      listener.stop();
    }
  }, 120_000);
});
