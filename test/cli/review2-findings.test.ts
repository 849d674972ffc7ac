import * as path from 'node:path';
import { Workspace } from '../helpers/specs';
import { requireBuilt, runCli } from '../helpers/cli';

/** Regressions for findings of the second review, through the built binary. */
let ws: Workspace;
beforeAll(() => {
  requireBuilt();
  ws = new Workspace();
});
afterAll(() => ws.remove());

function fcRun(args: string[], env: Record<string, string | undefined> = {}) {
  return runCli(args, { cwd: ws.dir, env });
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

describe('unit and manifest: host paths a sandbox or a Pod cannot take as they are', () => {
  test('a log file directly in / is refused (ReadWritePaths=/, a read-write hostPath of the node\'s root)', () => {
    ws.write('rootlog.json', { 'boot-source': { kernel_image_path: kernel() }, logger: { log_path: '/vm.log' } });
    for (const args of [['unit', 'rootlog.json'], ['manifest', 'kubernetes', '--image', 'x/y:1', 'rootlog.json']]) {
      const r = fcRun(args);
      expect(r.err).toContain('the log directory is / (the file is directly in /)');
      expect(r.out).not.toContain('ReadWritePaths=-/\n');
      expect(r.code).toBe(2);
    }
  });

  test("a vsock socket in /run/fc-run or a log in /etc/fc-run would collide with the Pod's own mounts", () => {
    ws.write('clash1.json', { 'boot-source': { kernel_image_path: kernel() }, vsock: { guest_cid: 3, uds_path: '/run/fc-run/v.sock' } });
    ws.write('clash2.json', { 'boot-source': { kernel_image_path: kernel() }, logger: { log_path: '/etc/fc-run/vm.log' } });
    for (const [file, dir] of [['clash1.json', '/run/fc-run'], ['clash2.json', '/etc/fc-run']]) {
      const r = fcRun(['manifest', 'kubernetes', '--image', 'x/y:1', file]);
      expect(r.err).toContain(`collides with ${dir}, which the Pod mounts for fc-run itself`);
      expect(r.code).toBe(2);
    }
    // A socket elsewhere under /run is fine.
    ws.write('noclash.json', { 'boot-source': { kernel_image_path: kernel() }, vsock: { guest_cid: 3, uds_path: '/run/vm1/v.sock' } });
    expect(fcRun(['manifest', 'kubernetes', '--image', 'x/y:1', 'noclash.json']).code).toBe(0);
  });
});
