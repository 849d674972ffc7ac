import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { loadSpecText, LoadOptions } from '../../src/config/validate';
import { SpecInvalidError, SpecIssue } from '../../src/config/issues';
import { pointer } from '../../src/config/issues';
import { tinyVmlinux } from './images';

/** A scratch directory holding a kernel, an initrd and two drive files, removed after the test file. */
export class Workspace {
  readonly dir: string;

  constructor() {
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fc-run-test-'));
    this.write('vmlinux', tinyVmlinux());
    this.write('initrd.img', Buffer.alloc(64 * 1024, 1));
    this.write('rootfs.ext4', Buffer.alloc(1024 * 1024));
    this.write('data.ext4', Buffer.alloc(1024 * 1024));
  }

  write(name: string, content: Buffer | string | object): string {
    const file = path.join(this.dir, name);
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, Buffer.isBuffer(content) || typeof content === 'string' ? content : JSON.stringify(content, null, 2));
    return file;
  }

  remove(): void {
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/** The smallest spec that runs: a kernel and nothing else. */
export function minimalSpec(): Record<string, any> {
  return { 'boot-source': { kernel_image_path: 'vmlinux', boot_args: 'console=ttyS0 reboot=k panic=1' } };
}

export function load(ws: Workspace, spec: unknown, opts: LoadOptions = {}, name = 'vm.json') {
  const text = typeof spec === 'string' ? spec : JSON.stringify(spec, null, 2);
  return loadSpecText(path.join(ws.dir, name), text, opts);
}

/** Validates and returns the issues; fails the test if the spec was valid. */
export function issuesOf(ws: Workspace, spec: unknown, opts: LoadOptions = {}): SpecIssue[] {
  try {
    load(ws, spec, opts);
  } catch (err) {
    if (err instanceof SpecInvalidError) return err.issues;
    throw err;
  }
  throw new Error('expected the spec to be invalid, but it validated');
}

/** "code @ /json/pointer" for each error, the compact form tests assert on. */
export function errorsOf(ws: Workspace, spec: unknown, opts: LoadOptions = {}): string[] {
  return issuesOf(ws, spec, opts)
    .filter((i) => i.severity === 'error')
    .map((i) => `${i.code} @ ${pointer(i.path)}`);
}
