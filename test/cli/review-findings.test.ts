import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { minimalSpec, Workspace } from '../helpers/specs';

/** Regressions for bad input found by reviewing fc-run's front door, through the real binary. */
const ROOT = path.resolve(__dirname, '..', '..');
const BIN = path.join(ROOT, 'bin', 'fc-run');

function fcRun(args: string[], opts: { timeout?: number } = {}) {
  const r = spawnSync(process.execPath, [BIN, ...args], {
    cwd: ROOT,
    encoding: 'utf8',
    timeout: opts.timeout ?? 20_000,
    maxBuffer: 256 * 1024 * 1024,
    env: { ...process.env, NO_COLOR: '1', FORCE_COLOR: undefined },
  });
  if (r.error) throw r.error; // a timeout is a hang: fail loudly
  expect(r.stderr).not.toMatch(/internal error|    at .*\.js:\d+|Maximum call stack/);
  return { code: r.status, out: r.stdout, err: r.stderr };
}

let ws: Workspace;
beforeAll(() => {
  if (!fs.existsSync(path.join(ROOT, 'dist', 'cli', 'main.js'))) throw new Error('dist/ is missing: run `npm run build` before these tests');
  ws = new Workspace();
});
afterAll(() => ws.remove());

describe('many errors in one spec', () => {
  // Each failing drive used to cost time proportional to every error found before it (ajv's
  // error concatenation, and matching every anyOf against every error): a 1 MiB spec of ~7000
  // such drives took over two minutes. Now it takes seconds; the limit leaves a wide margin.
  test('a spec of a thousand failing drives is answered in seconds, its problems capped', () => {
    const drive = { drive_id: 'd', path_on_host: 'x', is_root_device: false, is_read_only: 1, rate_limiter: { bandwidth: { size: 'x', refill_time: 'y' }, ops: 7 } };
    const drives = Array.from({ length: 1000 }, () => drive);
    const file = ws.write('many.json', JSON.stringify({ ...minimalSpec(), drives }));
    const r = fcRun(['validate', '--skip-files', '--json', file], { timeout: 60_000 });
    expect(r.code).toBe(2);
    const result = JSON.parse(r.out) as { files: { errors: { path: string; code: string; message: string }[] }[] };
    const errors = result.files[0].errors;
    expect(errors.length).toBe(201);
    expect(errors[200]).toMatchObject({ code: 'more-issues' });
    // 1000 drives with 4 errors each (is_read_only, size, refill_time, ops): the rest are counted.
    expect(errors[200].message).toMatch(/^and 3800 more problems/);
  }, 90_000);
});
