import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { Workspace } from '../helpers/specs';
import { tinyGuestElf } from '../helpers/images';
import { sys } from '../../src/kvm/libc';

/**
 * Guest serial output on a pipe whose reader is slow, stopped or never there. fc-run writes it
 * without blocking: what the pipe does not take waits in the UART's transmit buffer, and while
 * that is full the guest sees a busy transmitter. So a reader that is merely slow loses nothing,
 * and one that stops reading never stops fc-run from answering its API and its signals (with
 * vCPU 0 on the main thread, a blocking write would stop all of it).
 */
const ROOT = path.resolve(__dirname, '..', '..');
const BIN = path.join(ROOT, 'bin', 'fc-run');
const PROBE = path.join(ROOT, 'guest', 'probe', 'build', 'probe.elf');
const hasKvm = fs.existsSync('/dev/kvm');
const describeKvm = hasKvm ? describe : describe.skip;
if (!hasKvm) console.warn('SKIPPED: serial output tests need /dev/kvm');

// mov dx, 0x3f8; mov al, 'x'; 1: out dx, al; jmp 1b  (never looks at the line status)
const CHATTY = [0x66, 0xba, 0xf8, 0x03, 0xb0, 0x78, 0xee, 0xeb, 0xfd];
const F_SETPIPE_SZ = 1031;
const FLOOD_LINES = 1200; // 64 bytes each: more than the pipe (4 KiB here) and the UART's 64 KiB buffer hold

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function getRoot(sock: string, timeoutMs: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath: sock, method: 'GET', path: '/', timeout: timeoutMs }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('timeout', () => req.destroy(new Error(`no answer from the API within ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end();
  });
}

/** A pipe (a FIFO in the workspace) of 4 KiB: the read end non-blocking, for the test; the write end for fc-run's stdout. */
function smallPipe(ws: Workspace, name: string): { read: number; write: number } {
  const fifo = path.join(ws.dir, name);
  expect(spawnSync('mkfifo', [fifo]).status).toBe(0);
  const read = fs.openSync(fifo, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  const write = fs.openSync(fifo, fs.constants.O_WRONLY);
  expect(sys.fcntl(write, F_SETPIPE_SZ, 4096)).toBeGreaterThanOrEqual(4096);
  return { read, write };
}

/** Whatever the pipe holds now; null at end of file (every writer gone). */
function readSome(fd: number): Buffer | null {
  const buf = Buffer.alloc(4096);
  try {
    const n = fs.readSync(fd, buf);
    return n === 0 ? null : buf.subarray(0, n);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EAGAIN') return Buffer.alloc(0);
    throw err;
  }
}

/** The uart group's counters over the whole run (each metrics line counts since the one before). */
function uartTotals(file: string): Record<string, number> {
  const total: Record<string, number> = {};
  for (const line of fs.readFileSync(file, 'utf8').trim().split('\n')) {
    for (const [k, v] of Object.entries(JSON.parse(line).uart as Record<string, number>)) total[k] = (total[k] ?? 0) + v;
  }
  return total;
}

let ws: Workspace;
beforeAll(() => (ws = new Workspace()));
afterAll(() => ws?.remove());

describeKvm.each(['main', 'mixed'])('serial output to a pipe (vCPU 0 in %s mode)', (mode) => {
  const env = { ...process.env, NO_COLOR: '1', FC_RUN_VCPU_THREADS: mode };

  test('a reader that stops for a while, then reads slowly, gets every byte in order; the API answers meanwhile', async () => {
    const spec = ws.write(`flood-${mode}.json`, {
      'boot-source': { kernel_image_path: PROBE, boot_args: `console=ttyS0 reboot=k panic=1 probe.flood=${FLOOD_LINES}` },
      'machine-config': { vcpu_count: 1, mem_size_mib: 32 },
    });
    const sock = path.join(ws.dir, `flood-${mode}.sock`);
    const metrics = path.join(ws.dir, `flood-${mode}.metrics`);
    const pipe = smallPipe(ws, `flood-${mode}.fifo`);
    // Metrics every 100 ms: each line's counters are what happened since the one before.
    const child = spawn(process.execPath, [BIN, spec, '--api-sock', sock, '--metrics-path', metrics], {
      stdio: ['ignore', pipe.write, 'pipe'],
      env: { ...env, FC_RUN_METRICS_INTERVAL_MS: '100' },
    });
    fs.closeSync(pipe.write);
    let stderr = '';
    child.stderr!.on('data', (d) => (stderr += d));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    const chunks: Buffer[] = [];
    try {
      // Nobody reads until the pipe and then the UART's buffer are full and the guest waits for
      // room: a metrics line with line status reads (IN) and no byte sent (OUT).
      const end = Date.now() + 120_000;
      const waiting = () =>
        fs.existsSync(metrics) &&
        fs.readFileSync(metrics, 'utf8').trim().split('\n').slice(1).some((l) => {
          const v = JSON.parse(l).vcpu;
          return v.exit_io_in > 0 && v.exit_io_out === 0;
        });
      while (!waiting()) {
        if (Date.now() > end) throw new Error('the guest never waited for the transmitter');
        if (fs.existsSync(sock)) expect(await getRoot(sock, 5000)).toBe(200);
        await sleep(200);
      }
      expect(await getRoot(sock, 5000)).toBe(200);
      // Then a slow reader: 4 KiB every 20 ms.
      for (;;) {
        const b = readSome(pipe.read);
        if (b === null) break;
        chunks.push(b);
        await sleep(20);
      }
    } finally {
      fs.closeSync(pipe.read);
    }
    expect(await exited).toBe(0);
    const text = Buffer.concat(chunks).toString('latin1');
    const numbers = [...text.matchAll(/^# flood (\d{12}) [a-z]+\r$/gm)].map((m) => Number(m[1]));
    expect(numbers.length).toBe(FLOOD_LINES);
    expect(numbers.every((n, i) => n === i)).toBe(true);
    const busy = /^# flood done, busy transmitter seen: (\d+) times\r$/m.exec(text);
    expect(busy).not.toBeNull();
    expect(Number(busy![1])).toBeGreaterThan(0);
    const uart = uartTotals(metrics);
    expect(uart.error_count).toBe(0);
    expect(uart.missed_write_count).toBe(0);
    expect(uart.write_count).toBe(Buffer.concat(chunks).length);
    expect(stderr).not.toMatch(/dropped/);
  }, 180_000);

  test('a reader that never reads: fc-run answers its API, stops on SIGTERM and counts the output it dropped', async () => {
    const spec = ws.write(`chatty-${mode}.json`, {
      'boot-source': { kernel_image_path: ws.write('chatty.elf', tinyGuestElf(CHATTY)) },
      'machine-config': { vcpu_count: 1, mem_size_mib: 16 },
    });
    const sock = path.join(ws.dir, `chatty-${mode}.sock`);
    const metrics = path.join(ws.dir, `chatty-${mode}.metrics`);
    const pipe = smallPipe(ws, `chatty-${mode}.fifo`);
    const child = spawn(process.execPath, [BIN, spec, '--api-sock', sock, '--metrics-path', metrics], { stdio: ['ignore', pipe.write, 'pipe'], env });
    fs.closeSync(pipe.write);
    let stderr = '';
    child.stderr!.on('data', (d) => (stderr += d));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    try {
      const end = Date.now() + 60_000;
      while (!fs.existsSync(sock) && Date.now() < end) await sleep(50);
      // The guest has filled the pipe and the buffer long before these answers.
      for (let i = 0; i < 5; i++) {
        expect(await getRoot(sock, 5000)).toBe(200);
        await sleep(300);
      }
      child.kill('SIGTERM');
      const code = await Promise.race([exited, sleep(30_000).then(() => 'still running')]);
      expect(code).toBe(0);
    } finally {
      child.kill('SIGKILL');
      fs.closeSync(pipe.read);
    }
    expect(stderr).toMatch(/stopped by SIGTERM/);
    expect(stderr).toMatch(/\d+ bytes of guest serial output dropped: the output took none for 2000 ms/);
    const uart = uartTotals(metrics);
    expect(uart.error_count).toBeGreaterThan(0);
    expect(uart.missed_write_count).toBe(uart.error_count);
  }, 180_000);
});
