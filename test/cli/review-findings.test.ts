import { minimalSpec, Workspace } from '../helpers/specs';
import { requireBuilt, runCli } from '../helpers/cli';

/** Regressions for bad input found by reviewing fc-run's front door, through the real binary. */
function fcRun(args: string[], opts: { timeout?: number } = {}) {
  return runCli(args, { timeout: opts.timeout ?? 20_000, hostile: true });
}

let ws: Workspace;
beforeAll(() => {
  requireBuilt();
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
