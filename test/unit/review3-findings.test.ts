import { ChildProcess, execFile, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { isSameProcess, processStartTime } from '../../src/fleet/proc';
import { ensureRunDir, readStates, vmFiles } from '../../src/fleet/rundir';
import { LogFollower, rotateIfLarge, streamWholeLog } from '../../src/fleet/serial-log';
import { FleetEvent, Supervisor } from '../../src/fleet/supervisor';
import { minimalSpec, Workspace } from '../helpers/specs';
import { BIN, FAKE_FC_RUN, ROOT, waitFor } from '../helpers/cli';

// Regression tests for the review of the fleet supervisor (review3): hostile or corrupt run
// directory contents, and spec names that look like options.

const run = promisify(execFile);
const FAKE = FAKE_FC_RUN;

let ws: Workspace;
let specs: string;
let runDir: string;
let events: FleetEvent[];
let sup: Supervisor | undefined;
let bystander: ChildProcess | undefined;

beforeAll(() => {
  if (!fs.existsSync(path.join(ROOT, 'dist', 'cli', 'main.js'))) throw new Error('dist/ is missing: run `npm run build` first');
});
beforeEach(() => {
  ws = new Workspace();
  specs = path.join(ws.dir, 'specs');
  runDir = path.join(ws.dir, 'run');
  fs.mkdirSync(specs);
  fs.mkdirSync(runDir, { mode: 0o700 });
  events = [];
});
afterEach(() => {
  sup?.close();
  sup = undefined;
  bystander?.kill('SIGKILL');
  bystander = undefined;
  for (const s of readStates(runDir)) if (s.pid && isSameProcess(s.pid, s.pidStart)) process.kill(s.pid, 'SIGKILL');
  ws.remove();
});

const newSupervisor = (fcRunBin = FAKE) => {
  sup = new Supervisor({ dir: specs, runDir, checkIntervalMs: 60000, pollMs: 50, fcRunBin, report: (e) => events.push(e) });
  sup.start();
  return sup;
};
const fcRun = (...args: string[]) => run(process.execPath, [BIN, ...args, '--run-dir', runDir], { env: { ...process.env, NO_COLOR: '1' } });
const stateOf = (over: Record<string, unknown>) => JSON.stringify({ spec: '/x.json', dir: specs, state: 'running', planHash: 'h', vcpus: 1, memMib: 128, restarts: 0, consecutive: 0, stopGraceMs: 100, ...over });

async function startBystander(): Promise<{ pid: number; start: string }> {
  bystander = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 120000)'], { stdio: 'ignore' });
  const pid = bystander.pid!;
  const start = await waitFor('the bystander', () => processStartTime(pid));
  return { pid, start };
}

test('a state file naming an unrelated live process (right pid and start time) never gets it signalled', async () => {
  const { pid, start } = await startBystander();
  fs.writeFileSync(vmFiles(runDir, 'web').state, stateOf({ id: 'web', pid, pidStart: start }));
  // fc-run stop believes the state only as far as the process looks like that VM's fc-run.
  const stopped = JSON.parse((await fcRun('stop', 'web', '--json', '--grace', '0')).stdout);
  expect(stopped.how).toBe('not running');
  // fc-run up: no spec "web" exists, so a VM "web" would be stopped; the bystander is not one.
  newSupervisor();
  await waitFor('the stale entry forgotten', () => !fs.existsSync(vmFiles(runDir, 'web').state));
  expect(events.some((e) => e.event === 'adopted' || e.event === 'stopping')).toBe(false);
  expect(isSameProcess(pid, start)).toBe(true);
  const ps = JSON.parse((await fcRun('ps', '--json')).stdout);
  expect(ps.vms).toEqual([]);
});

test('a state file whose id reaches outside the run directory is ignored: nothing outside is removed or written', async () => {
  const outside = path.join(ws.dir, 'outside');
  fs.mkdirSync(outside);
  const victims = ['victim.state.json', 'victim.sock', 'victim.exit.json', 'victim.hold'].map((n) => path.join(outside, n));
  for (const v of victims) fs.writeFileSync(v, 'keep');
  fs.writeFileSync(path.join(runDir, 't.state.json'), stateOf({ id: '../outside/victim', state: 'exited' }));
  fs.writeFileSync(path.join(runDir, 'u.state.json'), stateOf({ id: '../outside/victim', state: 'running', pid: 1, pidStart: '1' }));
  // Another file's id under a different name is not believed either.
  fs.writeFileSync(path.join(runDir, 'v.state.json'), stateOf({ id: 'w', state: 'exited' }));
  newSupervisor();
  sup!.rescan();
  await new Promise((r) => setTimeout(r, 300));
  for (const v of victims) expect(fs.readFileSync(v, 'utf8')).toBe('keep');
  expect(events.filter((e) => e.id !== undefined)).toEqual([]);
  expect(readStates(runDir)).toEqual([]);
});

test('ps, logs and stop survive truncated, hand-edited and oversized state files', async () => {
  fs.writeFileSync(vmFiles(runDir, 'x').state, '{"id":"x"}');
  fs.writeFileSync(vmFiles(runDir, 'y').state, '{"id":"y","planHash":5,');
  fs.writeFileSync(vmFiles(runDir, 'z').state, `{"id":"z","pad":"${'p'.repeat(2 << 20)}"}`);
  fs.symlinkSync('/dev/zero', vmFiles(runDir, 'zero').state);
  const ps = await fcRun('ps');
  expect(ps.stderr).toBe('');
  expect(ps.stdout).toMatch(/^ID\s+PID/);
  await expect(fcRun('stop', 'x')).rejects.toMatchObject({ code: 1, stderr: expect.stringMatching(/no VM "x"/) });
  await expect(fcRun('logs', 'zero')).rejects.toMatchObject({ code: 1, stderr: expect.stringMatching(/no VM "zero"/) });
  expect(fs.existsSync(vmFiles(runDir, 'x').hold)).toBe(false);
});

test('a run directory other users can write to is refused by fc-run up and fc-run stop', async () => {
  fs.chmodSync(runDir, 0o777);
  expect(() => ensureRunDir(runDir)).toThrow(/writable by others.*chmod go-w/);
  fs.writeFileSync(vmFiles(runDir, 'web').state, stateOf({ id: 'web', state: 'exited' }));
  await expect(fcRun('stop', 'web')).rejects.toMatchObject({ code: 1, stderr: expect.stringMatching(/writable by others/) });
  fs.chmodSync(runDir, 0o700);
  if (process.getuid?.() === 0) {
    // Squatted: owned by someone else (a /tmp/fc-run-<uid> created by another user).
    fs.chownSync(runDir, 65534, 65534);
    expect(() => ensureRunDir(runDir)).toThrow(/belongs to uid 65534/);
  }
});

test('symlinks planted at a VM\'s log names are replaced, never written or truncated through', async () => {
  const outside = path.join(ws.dir, 'outside');
  fs.mkdirSync(outside);
  const target = (n: string, content: string | Buffer) => {
    fs.writeFileSync(path.join(outside, n), content);
    return path.join(outside, n);
  };
  const f = vmFiles(runDir, 'a');
  fs.symlinkSync(target('output', 'precious'), f.output);
  fs.symlinkSync(target('old', 'precious'), f.serialOld);
  fs.writeFileSync(path.join(specs, 'a.json'), JSON.stringify({ ...minimalSpec(), 'boot-source': { kernel_image_path: path.join(ws.dir, 'vmlinux'), boot_args: 'fake.serial=6000' }, 'fc-run': { serial_log_max_bytes: 4096 } }));
  newSupervisor();
  await waitFor('a started', () => events.find((e) => e.event === 'started'));
  await waitFor('a rotated', () => fs.existsSync(f.serialOld) && fs.lstatSync(f.serialOld).isFile());
  expect(fs.readFileSync(path.join(outside, 'output'), 'utf8')).toBe('precious');
  expect(fs.readFileSync(path.join(outside, 'old'), 'utf8')).toBe('precious');
  // The live log itself: a symlink there is left alone rather than cut.
  const big = target('big', Buffer.alloc(10000, 7));
  const link = path.join(runDir, 'b.serial.log');
  fs.symlinkSync(big, link);
  expect(rotateIfLarge(link, `${link}.1`, 4096)).toBe(false);
  expect(fs.statSync(big).size).toBe(10000);
});

describe('spec names that look like options', () => {
  let server: net.Server;
  afterEach(() => server?.close());

  test('"-x.json" and "--help.json" reach fc-run as the ids "-x" and "--help", not as options', async () => {
    // A live socket at the vsock path: fc-run refuses it at launch on every host (exit 2), after
    // it has parsed its arguments; an id taken for an option fails earlier, as a usage error.
    const busy = path.join(ws.dir, `v${process.pid}.sock`);
    server = net.createServer().listen(busy);
    await new Promise((r) => server.once('listening', r));
    for (const name of ['-x', '--help']) {
      fs.writeFileSync(path.join(specs, `${name}.json`), JSON.stringify({ 'boot-source': { kernel_image_path: path.join(ws.dir, 'vmlinux') }, vsock: { guest_cid: 3, uds_path: busy }, 'fc-run': { restart: 'never' } }));
    }
    newSupervisor(BIN);
    const exits = await waitFor('both exits', () => {
      const e = events.filter((x) => x.event === 'exited');
      return e.length === 2 && e;
    });
    for (const e of exits) {
      expect(e.code).toBe(2);
      expect(e.reason).toMatch(/live socket/);
    }
  }, 60000);
});

test('a spec symlinked to /dev/zero is reported on every scan, without exhausting memory', () => {
  fs.symlinkSync('/dev/zero', path.join(specs, 'z.json'));
  newSupervisor();
  // The first scan validates in full; later ones read the text for the cache first.
  for (let i = 0; i < 3; i++) sup!.rescan();
  expect(events.filter((e) => e.event === 'skipped').map((e) => e.message)).toEqual([expect.stringMatching(/z\.json: .*character device/)]);
});

test('a run directory removed under fc-run up is recreated; file errors are reported, not thrown', async () => {
  fs.writeFileSync(path.join(specs, 'a.json'), JSON.stringify({ ...minimalSpec(), 'boot-source': { kernel_image_path: path.join(ws.dir, 'vmlinux'), boot_args: 'fake.exit=1' }, 'fc-run': { restart_delay_ms: 100 } }));
  newSupervisor();
  await waitFor('a started', () => events.find((e) => e.event === 'started'));
  fs.rmSync(runDir, { recursive: true, force: true });
  // Exits and restarts go on (each of them writes to the run directory); nothing is thrown.
  const before = events.filter((e) => e.event === 'started').length;
  sup!.rescan();
  await waitFor('restarts after the removal', () => events.filter((e) => e.event === 'started').length >= before + 2);
  expect(fs.existsSync(vmFiles(runDir, 'a').state)).toBe(true);
});

describe('fc-run logs streams the log', () => {
  test('the whole log, rotated part first, in pieces of at most 64 KiB; the follower starts where it stopped', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fc-run-logs-'));
    try {
      const file = path.join(dir, 'a.serial.log');
      const old = `${file}.1`;
      const a = Buffer.alloc(3 * 1024 * 1024 + 17, 'a');
      const b = Buffer.alloc(2 * 1024 * 1024 + 5, 'b');
      fs.writeFileSync(old, a);
      fs.writeFileSync(file, b);
      const pieces: Buffer[] = [];
      const end = streamWholeLog(file, old, (c) => pieces.push(c));
      expect(Math.max(...pieces.map((p) => p.length))).toBeLessThanOrEqual(64 * 1024);
      expect(Buffer.concat(pieces).equals(Buffer.concat([a, b]))).toBe(true);
      expect(end).toBe(b.length);
      fs.appendFileSync(file, 'tail');
      expect(new LogFollower(file, old, end).poll().toString()).toBe('tail');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
