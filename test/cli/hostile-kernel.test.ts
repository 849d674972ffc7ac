import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { buildBzImage, buildElf, tinyVmlinux } from '../helpers/images';
import { Workspace } from '../helpers/specs';

/**
 * `fc-run plan` with kernel and initrd paths that name something other than a kernel: each ends
 * with exit 2 and one clear line, never a stack trace, a hang or a read of an endless stream.
 * Runs the built binary (npm test builds first).
 */
const ROOT = path.resolve(__dirname, '..', '..');
const BIN = path.join(ROOT, 'bin', 'fc-run');

let ws: Workspace;
beforeAll(() => {
  if (!fs.existsSync(path.join(ROOT, 'dist', 'cli', 'main.js'))) throw new Error('dist/ is missing: run `npm run build` (npm test does) before these tests');
  ws = new Workspace();
  execFileSync('mkfifo', [path.join(ws.dir, 'fifo')]);
  fs.mkdirSync(path.join(ws.dir, 'a-directory'));
});
afterAll(() => ws.remove());

function plan(bootSource: Record<string, string>) {
  const spec = ws.write(`vm-${Object.values(bootSource).join('-').replace(/\W/g, '_')}.json`, { 'boot-source': { boot_args: 'console=ttyS0', ...bootSource }, 'machine-config': { vcpu_count: 1, mem_size_mib: 128 } });
  // The timeout only turns a regression (a read that never returns) into a failure instead of a stuck run.
  const r = spawnSync(process.execPath, [BIN, 'plan', spec], { encoding: 'utf8', timeout: 60_000, killSignal: 'SIGKILL', env: { ...process.env, NO_COLOR: '1', FORCE_COLOR: undefined } });
  expect(r.signal).toBeNull();
  expect(r.stderr).not.toMatch(/\n\s+at .*:\d+:\d+/); // no stack trace
  return { code: r.status, err: r.stderr };
}

test.each([
  ['a FIFO with no writer', 'fifo', /kernel image is not a regular file: .*fifo/],
  ['/dev/zero', '/dev/zero', /kernel image is not a regular file: \/dev\/zero/],
  ['a directory', 'a-directory', /kernel image is not a regular file: .*a-directory/],
])('kernel_image_path naming %s: exit 2 at once', (_name, kernel, why) => {
  const r = plan({ kernel_image_path: kernel });
  expect(r.code).toBe(2);
  expect(r.err).toMatch(/error\[file-not-regular\]: \/boot-source\/kernel_image_path: /);
  expect(r.err).toMatch(why);
});

test('an initrd that is a FIFO or /dev/zero: exit 2, located at initrd_path', () => {
  for (const initrd of ['fifo', '/dev/zero']) {
    const r = plan({ kernel_image_path: 'vmlinux', initrd_path: initrd });
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/error\[file-not-regular\]: \/boot-source\/initrd_path: initrd is not a regular file/);
  }
});

test.each([
  ['a text file', () => Buffer.from('console=ttyS0\n'), /neither an ELF vmlinux nor a bzImage/],
  ['a truncated vmlinux', () => tinyVmlinux().subarray(0, 100), /ELF program headers .* extend past the end of the file/],
  ['a PVH kernel whose entry lies outside its segments', () => buildElf({ entry: 0x1000000, pvhEntry: 0x5000000, segments: [{ paddr: 0x1000000, data: Buffer.alloc(4096) }] }), /PVH entry point 0x5000000 .* is not inside any loadable segment/],
  ['a bzImage cut short of its syssize', () => buildBzImage().subarray(0, 5 * 512 + 1024), /bzImage is truncated: its header \(syssize\) says 8192 bytes/],
])('a kernel image that is %s: exit 2 with what is wrong, at kernel_image_path', (name, image, why) => {
  const file = `bad-kernel-${name.replace(/\W/g, '_')}`;
  ws.write(file, image());
  const r = plan({ kernel_image_path: file });
  expect(r.code).toBe(2);
  expect(r.err).toMatch(/error\[kernel-image\]: \/boot-source\/kernel_image_path: kernel image /);
  expect(r.err).toMatch(why);
});
