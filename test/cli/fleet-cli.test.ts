import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Workspace } from '../helpers/specs';

/** The fleet commands' usage errors, through the built binary: each names what is wrong. */
const ROOT = path.resolve(__dirname, '..', '..');
const BIN = path.join(ROOT, 'bin', 'fc-run');

function fcRun(...args: string[]) {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', env: { ...process.env, NO_COLOR: '1' }, timeout: 60_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

let ws: Workspace;
beforeAll(() => {
  ws = new Workspace();
  fs.mkdirSync(path.join(ws.dir, 'specs'));
});
afterAll(() => ws.remove());

test.each([
  [['up'], /missing <dir> argument/],
  [['up', '/nonexistent-fc-run-dir'], /cannot read the spec directory \/nonexistent-fc-run-dir: ENOENT/],
  [['up', '--check-interval', '5'], /--check-interval must be between 100 and/],
  [['ps', '--bogus'], /unknown option --bogus/],
  [['logs'], /missing <id> argument/],
  [['logs', 'a', 'b'], /unexpected argument "b"/],
  [['stop', 'x/../y'], /VM id "x\/..\/y" may contain only letters/],
])('fc-run %j is refused', (args, message) => {
  const r = fcRun(...(args as string[]));
  expect(r.code).toBe(1);
  expect(r.err).toMatch(message as RegExp);
});

test('up refuses a file, a run directory inside the spec directory, and --git-pull-interval outside a git work tree', () => {
  expect(fcRun('up', path.join(ws.dir, 'vmlinux')).err).toMatch(/is not a directory/);
  const specs = path.join(ws.dir, 'specs');
  expect(fcRun('up', specs, '--run-dir', path.join(specs, 'run')).err).toMatch(/is inside the spec directory/);
  const r = fcRun('up', specs, '--run-dir', path.join(ws.dir, 'run'), '--git-pull-interval', '1000');
  expect(r.code).toBe(1);
  expect(r.err).toMatch(/is not a git work tree/);
});

test('ps, logs and stop on an empty run directory', () => {
  const runDir = path.join(ws.dir, 'empty-run');
  expect(JSON.parse(fcRun('ps', '--run-dir', runDir, '--json').out)).toMatchObject({ vms: [], supervisor: null });
  const r = fcRun('stop', 'web', '--run-dir', runDir);
  expect(r.code).toBe(1);
  expect(r.err).toMatch(/no VM "web" in .*empty-run/);
});

test('two fc-run up started at the same moment on one run directory: exactly one runs', async () => {
  const runDir = path.join(ws.dir, 'race-run');
  const specs = path.join(ws.dir, 'race-specs');
  fs.mkdirSync(specs, { recursive: true });
  const start = () => spawn(process.execPath, [BIN, 'up', specs, '--run-dir', runDir], { env: { ...process.env, NO_COLOR: '1' }, stdio: ['ignore', 'ignore', 'pipe'] });
  const procs = [start(), start()];
  const errs = procs.map((p) => {
    let e = '';
    p.stderr!.on('data', (d) => (e += d));
    return () => e;
  });
  try {
    // The loser exits at once; give both time to get that far even on a loaded machine.
    const loser = await Promise.race(procs.map((p, i) => new Promise<number>((resolve) => p.on('exit', () => resolve(i)))));
    expect(errs[loser]()).toMatch(/another fc-run up .*is using the run directory/);
    expect(procs[1 - loser].exitCode).toBeNull();
  } finally {
    for (const p of procs) p.kill('SIGKILL');
  }
}, 60_000);
