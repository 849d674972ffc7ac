import * as fs from 'node:fs';
import * as path from 'node:path';
import { loadSpecText } from '../../src/config/validate';
import { SpecInvalidError } from '../../src/config/issues';
import { checkRunnable, planSpec } from '../../src/boot';
import { buildBzImage, buildElf } from '../helpers/images';
import { minimalSpec, Workspace } from '../helpers/specs';

/**
 * `fc-run validate` promises that a spec it passes will plan and launch. This enumerates every
 * refusal the planner can give (the list is checked against the planner's source, so a new
 * refusal without a case here fails this test) and proves `validate` gives each one too: the
 * spec-only ones even with --skip-files.
 */

let ws: Workspace;
beforeAll(() => {
  ws = new Workspace();
  // A kernel whose segment reaches past 64 MiB and one past the first GiB (headers only: the
  // planner never reads the payload).
  ws.write('big-kernel', buildElf({ entry: 0x1000000, segments: [{ paddr: 0x1000000, data: Buffer.alloc(16), memsz: 80 * 1024 * 1024 }] }));
  ws.write('high-kernel', buildElf({ entry: 0x40000000, segments: [{ paddr: 0x40000000, data: Buffer.alloc(16), memsz: 4096 }] }));
  ws.write('short-cmdline.bz', buildBzImage({ cmdlineSize: 255 }));
  ws.write('text-kernel', 'this is not a kernel\n');
  ws.write('empty-initrd', '');
  ws.write('big-initrd', Buffer.alloc(0)); // sized below with truncate
  fs.truncateSync(path.join(ws.dir, 'big-initrd'), 200 * 1024 * 1024);
});
afterAll(() => ws.remove());

interface Case {
  what: string;
  spec: Record<string, unknown>;
  code: string;
  /** Needs no file: --skip-files still refuses it. */
  specOnly: boolean;
}

const m = (over: Record<string, unknown>) => ({ ...minimalSpec(), ...over });
const mc = (over: Record<string, unknown>) => m({ 'machine-config': { vcpu_count: 1, mem_size_mib: 128, ...over } });
const drive = (over: Record<string, unknown>) => ({ drive_id: 'd', path_on_host: 'data.ext4', is_root_device: false, is_read_only: true, ...over });

const CASES: Case[] = [
  { what: 'balloon', spec: m({ balloon: { amount_mib: 16, deflate_on_oom: true } }), code: 'not-supported', specOnly: true },
  { what: 'pmem', spec: m({ pmem: [{ id: 'p', path_on_host: 'data.ext4' }] }), code: 'not-supported', specOnly: true },
  { what: 'memory hot-plug', spec: m({ 'memory-hotplug': { total_size_mib: 1024 } }), code: 'not-supported', specOnly: true },
  { what: 'huge pages', spec: mc({ huge_pages: '2M' }), code: 'not-supported', specOnly: true },
  { what: 'kvm_capabilities', spec: m({ 'cpu-config': { kvm_capabilities: ['171'] } }), code: 'not-supported', specOnly: true },
  { what: 'vhost-user drive', spec: m({ drives: [{ drive_id: 'v', socket: 'v.sock', is_root_device: false }] }), code: 'not-supported', specOnly: true },
  { what: 'io_engine Async', spec: m({ drives: [drive({ io_engine: 'Async' })] }), code: 'not-supported', specOnly: true },
  { what: 'the aarch64 static template', spec: mc({ cpu_template: 'V1N1' }), code: 'wrong-architecture', specOnly: true },
  { what: 'aarch64 template entries', spec: m({ 'cpu-config': { reg_modifiers: [{ addr: '0x1', bitmap: '0b1' }] } }), code: 'wrong-architecture', specOnly: true },
  {
    what: 'more devices than interrupts',
    spec: m({ drives: Array.from({ length: 20 }, (_, i) => drive({ drive_id: `d${i}` })) }),
    code: 'too-many-devices',
    specOnly: true,
  },
  { what: 'a command line past any kernel', spec: m({ 'boot-source': { kernel_image_path: 'vmlinux', boot_args: 'x'.repeat(2100) } }), code: 'cmdline-too-long', specOnly: true },
  { what: "a command line past this bzImage's limit", spec: m({ 'boot-source': { kernel_image_path: 'short-cmdline.bz', boot_args: 'x'.repeat(300) } }), code: 'cmdline-too-long', specOnly: false },
  { what: 'a kernel larger than RAM', spec: { 'boot-source': { kernel_image_path: 'big-kernel' }, 'machine-config': { vcpu_count: 1, mem_size_mib: 64 } }, code: 'kernel-does-not-fit', specOnly: false },
  { what: 'a kernel beyond the identity map', spec: { 'boot-source': { kernel_image_path: 'high-kernel' }, 'machine-config': { vcpu_count: 1, mem_size_mib: 2048 } }, code: 'kernel-above-identity-map', specOnly: false },
  { what: 'an initrd larger than RAM', spec: { 'boot-source': { kernel_image_path: 'vmlinux', initrd_path: 'big-initrd' }, 'machine-config': { vcpu_count: 1, mem_size_mib: 128 } }, code: 'initrd-does-not-fit', specOnly: false },
  { what: 'an empty initrd', spec: { 'boot-source': { kernel_image_path: 'vmlinux', initrd_path: 'empty-initrd' } }, code: 'initrd-empty', specOnly: false },
  { what: 'a text file as kernel', spec: { 'boot-source': { kernel_image_path: 'text-kernel' } }, code: 'kernel-image', specOnly: false },
];

function refusalCodes(fn: () => unknown): string[] {
  try {
    fn();
  } catch (err) {
    if (err instanceof SpecInvalidError) return err.issues.filter((i) => i.severity === 'error').map((i) => i.code);
    throw err;
  }
  return [];
}

describe.each(CASES)('$what ($code)', (c) => {
  const load = (skipFiles: boolean) => loadSpecText(path.join(ws.dir, 'vm.json'), JSON.stringify(c.spec), { skipFiles });

  test('plan refuses it', () => {
    expect(refusalCodes(() => planSpec(load(false)))).toContain(c.code);
  });

  test('validate refuses it, with the files', () => {
    expect(refusalCodes(() => checkRunnable(load(false), true))).toContain(c.code);
  });

  test(c.specOnly ? 'validate --skip-files refuses it too' : 'validate --skip-files cannot know (it needs the file)', () => {
    const codes = refusalCodes(() => checkRunnable(load(true), false));
    if (c.specOnly) expect(codes).toContain(c.code);
    else expect(codes).not.toContain(c.code);
  });
});

test("every refusal in the planner's source has a case here", () => {
  const sources = ['plan.ts', 'index.ts'].map((f) => fs.readFileSync(path.join(__dirname, '..', '..', 'src', 'boot', f), 'utf8')).join('\n');
  const codes = new Set<string>();
  for (const match of sources.matchAll(/error\(\s*'([a-z0-9-]+)'/g)) codes.add(match[1]);
  for (const match of sources.matchAll(/severity: 'error', code: '([a-z0-9-]+)'/g)) codes.add(match[1]);
  // Host checks (the CPU vendor, live sockets) and unreadable files are tested where they live.
  for (const elsewhere of ['file-missing', 'socket-in-use']) codes.delete(elsewhere);
  const covered = new Set(CASES.map((c) => c.code));
  expect([...codes].filter((c) => !covered.has(c))).toEqual([]);
  // Each "not supported" site is its own case.
  const notYetSites = [...sources.matchAll(/notYet\(\[/g)].length + [...sources.matchAll(/error\('not-supported', where\(/g)].length;
  expect(CASES.filter((c) => c.code === 'not-supported').length).toBe(notYetSites);
});
