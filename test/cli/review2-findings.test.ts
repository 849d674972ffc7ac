import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Workspace } from '../helpers/specs';

/** Regressions for findings of the second review, through the built binary. */
const ROOT = path.resolve(__dirname, '..', '..');
const BIN = path.join(ROOT, 'bin', 'fc-run');

let ws: Workspace;
beforeAll(() => {
  if (!fs.existsSync(path.join(ROOT, 'dist', 'cli', 'main.js'))) throw new Error('dist/ is missing: run `npm run build` before these tests');
  ws = new Workspace();
});
afterAll(() => ws.remove());

function fcRun(args: string[], env: Record<string, string | undefined> = {}) {
  const r = spawnSync(process.execPath, [BIN, ...args], { cwd: ws.dir, encoding: 'utf8', timeout: 60_000, env: { ...process.env, NO_COLOR: '1', FORCE_COLOR: undefined, ...env } });
  if (r.error) throw r.error;
  return { code: r.status, out: r.stdout, err: r.stderr };
}

const kernel = () => path.join(ws.dir, 'vmlinux');

describe('validate --skip-files: /dev/null takes any number of outputs, as without --skip-files', () => {
  test('one spec with its log and metrics on /dev/null', () => {
    ws.write('devnull/one.json', { 'boot-source': { kernel_image_path: kernel() }, logger: { log_path: '/dev/null' }, metrics: { metrics_path: '/dev/null' } });
    for (const flags of [[], ['--skip-files']]) {
      const r = fcRun(['validate', ...flags, 'devnull/one.json']);
      expect(r.out + r.err).not.toContain('output-overwrites');
      expect(r.code).toBe(0);
    }
  });

  test('two specs logging to /dev/null are no fleet conflict', () => {
    ws.write('devnull2/a.json', { 'boot-source': { kernel_image_path: kernel() }, logger: { log_path: '/dev/null' } });
    ws.write('devnull2/b.json', { 'boot-source': { kernel_image_path: kernel() }, logger: { log_path: '/dev/null' } });
    for (const flags of [[], ['--skip-files']]) {
      const r = fcRun(['validate', ...flags, 'devnull2']);
      expect(r.out + r.err).not.toContain('fleet-shared-output');
      expect(r.code).toBe(0);
    }
  });

  test('a real shared log file is still refused under --skip-files', () => {
    ws.write('shared/a.json', { 'boot-source': { kernel_image_path: kernel() }, logger: { log_path: '/tmp/x.log' } });
    ws.write('shared/b.json', { 'boot-source': { kernel_image_path: kernel() }, logger: { log_path: '/tmp/x.log' } });
    const r = fcRun(['validate', '--skip-files', 'shared']);
    expect(r.err).toContain('fleet-shared-output');
    expect(r.code).toBe(2);
  });
});
