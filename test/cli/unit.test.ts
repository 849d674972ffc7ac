import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { minimalSpec, Workspace } from '../helpers/specs';

/** `fc-run unit` and `fc-run manifest` through the built binary, as a user runs them. */
const ROOT = path.resolve(__dirname, '..', '..');
const BIN = path.join(ROOT, 'bin', 'fc-run');
const ANALYZE = '/usr/bin/systemd-analyze';

function fcRun(args: string[]) {
  const r = spawnSync(process.execPath, [BIN, ...args], { cwd: ROOT, encoding: 'utf8', env: { ...process.env, NO_COLOR: '1', FORCE_COLOR: undefined } });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

let ws: Workspace;
let good: string;
beforeAll(() => {
  if (!fs.existsSync(path.join(ROOT, 'dist', 'cli', 'main.js'))) throw new Error('dist/ is missing: run `npm run build` (npm test does) before these tests');
  ws = new Workspace();
  good = ws.write('web_1.json', minimalSpec());
});
afterAll(() => ws.remove());

describe('fc-run unit', () => {
  test('prints the unit on stdout (named after the spec) and where to install it on stderr; systemd-analyze verify accepts it', () => {
    const r = fcRun(['unit', good]);
    expect(r.code).toBe(0);
    expect(r.out).toContain(`ExecStart=${process.execPath} ${BIN} run ${good} --id web-1 --api-sock %t/fc-run/web-1/api.sock`);
    expect(r.err).toContain('save as /etc/systemd/system/fc-run-web-1.service');
    if (!fs.existsSync(ANALYZE)) return console.warn('systemd-analyze is missing: verification skipped');
    const file = ws.write('units/fc-run-web-1.service', r.out);
    const v = spawnSync(ANALYZE, ['verify', '--man=no', file], { encoding: 'utf8' });
    expect(`${v.stdout}${v.stderr}`).toBe('');
    expect(v.status).toBe(0);
  });

  test('--template prints fc-run@.service; --user --name picks a user unit', () => {
    const t = fcRun(['unit', '--template']);
    expect(t.code).toBe(0);
    expect(t.out).toMatch(/^ExecStart=.* up %f$/m);
    expect(t.err).toContain('fc-run@srv-fleet.service');
    const u = fcRun(['unit', '--user', '--name', 'db', good]);
    expect(u.code).toBe(0);
    expect(u.out).toContain('--id db');
    expect(u.out).toContain('WantedBy=default.target');
    expect(u.err).toContain('~/.config/systemd/user/fc-run-db.service');
  });

  test('usage errors exit 1 and an invalid spec exits 2, with nothing on stdout', () => {
    expect(fcRun(['unit', '--user', '--run-as', 'vm', good])).toMatchObject({ code: 1, out: '' });
    expect(fcRun(['unit'])).toMatchObject({ code: 1, out: '' });
    expect(fcRun(['unit', '--name', 'no spaces', good]).code).toBe(1);
    expect(fcRun(['unit', '--template', good]).code).toBe(1);
    const bad = ws.write('bad.json', { 'boot-source': { kernel_image_path: 'missing-kernel' } });
    const r = fcRun(['unit', bad]);
    expect(r.code).toBe(2);
    expect(r.out).toBe('');
    expect(r.err).toContain('kernel image does not exist');
  });
});

describe('fc-run manifest kubernetes', () => {
  test('prints a List with the ConfigMap and the Pod', () => {
    const r = fcRun(['manifest', 'kubernetes', '--image', 'fc-run:test', good]);
    expect(r.code).toBe(0);
    const list = JSON.parse(r.out);
    expect(list.items.map((i: { kind: string }) => i.kind)).toEqual(['ConfigMap', 'Pod']);
    expect(list.items[1].metadata.name).toBe('fc-run-web-1');
    expect(list.items[1].spec.containers[0].image).toBe('fc-run:test');
  });

  test('--image is required, the target must be known, names must be DNS labels', () => {
    expect(fcRun(['manifest', 'kubernetes', good])).toMatchObject({ code: 1, out: '' });
    expect(fcRun(['manifest', 'kubernetes', '--image', 'x', good]).code).toBe(0);
    expect(fcRun(['manifest', 'nomad', '--image', 'x', good]).err).toContain('unknown target "nomad"');
    expect(fcRun(['manifest', 'kubernetes', '--image', 'x', '--name', 'Web_1', good]).code).toBe(1);
  });
});
