import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

/** `fc-run jail` from the command line: both forms' usage errors (no root or KVM needed), and as root the jailer form up to the jailed fc-run. */
const ROOT = path.resolve(__dirname, '..', '..');
const BIN = path.join(ROOT, 'bin', 'fc-run');

function fcRun(args: string[]) {
  const r = spawnSync(process.execPath, [BIN, ...args], { cwd: ROOT, encoding: 'utf8', env: { ...process.env, NO_COLOR: '1', FORCE_COLOR: undefined }, timeout: 60_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

beforeAll(() => {
  if (!fs.existsSync(path.join(ROOT, 'dist', 'cli', 'main.js'))) throw new Error('dist/ is missing: run `npm run build` (npm test does) before these tests');
});

const JAILER = ['jail', '--id', 'vm1', '--exec-file', BIN, '--uid', '1000', '--gid', '1000'];

describe('fc-run jail: usage errors (exit 1, before anything is read)', () => {
  const cases: [string, string[], RegExp][] = [
    ['both forms at once', ['jail', 'vm.json', '--id', 'vm1', '--exec-file', BIN, '--uid', '1', '--gid', '1'], /give either a <spec> \(fc-run's form\) or --exec-file with the spec after -- \(Firecracker's jailer form\), not both/],
    ['neither form', ['jail', '--id', 'vm1', '--uid', '1', '--gid', '1'], /missing <spec> argument \(fc-run's form\), or --exec-file with the spec after --/],
    ['a jailer flag in fc-run form', ['jail', 'vm.json', '--id', 'vm1', '--uid', '1', '--gid', '1', '--daemonize'], /--daemonize belongs to Firecracker's jailer form/],
    ['arguments after -- in fc-run form', ['jail', 'vm.json', '--id', 'vm1', '--uid', '1', '--gid', '1', '--', '--no-api'], /arguments after -- belong to Firecracker's jailer form/],
    ['no spec after --', [...JAILER, '--', '--no-api'], /the microVM's spec is missing: give it after --, e.g. -- --config-file \/vm.json \(a path inside the jail\)/],
    ['nothing after --', [...JAILER], /the microVM's spec is missing/],
    ['an unknown run flag after --', [...JAILER, '--', '--config-file', '/vm.json', '--bogus'], /after --: unknown option --bogus/],
    ['a Firecracker flag fc-run refuses', [...JAILER, '--', '--config-file', '/vm.json', '--enable-pci'], /after --: option --enable-pci is not supported by fc-run: fc-run has virtio-mmio devices only/],
    ['--id after --', [...JAILER, '--', '--config-file', '/vm.json', '--id', 'other'], /after --: --id is given by the jailer itself/],
    ['a run flag before --', [...JAILER, '--serial-out', 'none', '--', '--config-file', '/vm.json'], /--serial-out is the jailed fc-run's option: in Firecracker's jailer form give it after --/],
    ['a malformed --cgroup', [...JAILER, '--cgroup', 'memory.max', '--', '/vm.json'], /option --cgroup expected <controller>.<file>=<value>/],
    ['a --cgroup walking the hierarchy', [...JAILER, '--cgroup', '../cpu.shares=1', '--', '/vm.json'], /option --cgroup "..\/cpu.shares" is not a cgroup file name/],
    ['--cgroup-version 3', [...JAILER, '--cgroup-version', '3', '--', '/vm.json'], /option --cgroup-version must be one of 1, 2, got "3"/],
    ['an absolute --parent-cgroup', [...JAILER, '--parent-cgroup', '/uvms', '--', '/vm.json'], /option --parent-cgroup must be a path relative to the cgroup hierarchy/],
    ['an unknown resource', [...JAILER, '--resource-limit', 'nproc=5', '--', '/vm.json'], /option --resource-limit "nproc" is not a resource the jailer limits/],
    ['a bad id', ['jail', '--id', 'a_b', '--exec-file', BIN, '--uid', '1', '--gid', '1', '--', '/vm.json'], /option --id may contain only letters, digits and "-"/],
    ['--daemonize twice', [...JAILER, '--daemonize', '--daemonize', '--', '/vm.json'], /option --daemonize is given more than once/],
    ['a missing --uid', ['jail', '--id', 'vm1', '--exec-file', BIN, '--gid', '1', '--', '/vm.json'], /missing required option --uid/],
  ];
  test.each(cases)('%s', (_, args, message) => {
    const r = fcRun(args);
    expect(r.err).toMatch(message);
    expect(r.err).toContain('Run "fc-run jail --help" for usage.');
    expect(r.code).toBe(1);
  });

  test('--help shows both forms', () => {
    const r = fcRun(['jail', '--help']);
    expect(r.code).toBe(0);
    expect(r.out).toContain('fc-run jail --id ID --exec-file PATH --uid N --gid N [jailer options] -- --config-file /vm.json');
    for (const flag of ['--exec-file', '--cgroup-version', '--parent-cgroup', '--resource-limit', '--daemonize', '--new-pid-ns']) expect(r.out).toContain(flag);
    expect(r.out).not.toContain('--daemonized');
  });
});

// As root, without KVM: everything up to the jailed fc-run, which reads the spec inside the jail.
const asRoot = process.getuid?.() === 0 && fs.existsSync('/usr/bin/setpriv') && process.execPath.startsWith('/usr/');
const describeRoot = asRoot ? describe : describe.skip;
if (!asRoot) console.warn('SKIPPED: the jailer form up to the jailed fc-run needs root and Node under /usr');

describeRoot("fc-run jail, Firecracker's form (root)", () => {
  let dir: string;
  let base: string;
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fc-run-jailcli-'));
    fs.chmodSync(dir, 0o755);
    base = path.join(dir, 'base');
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  const id = (n: string) => `${n}-${process.pid}`;
  const rootOf = (i: string, name = 'fc-run') => path.join(base, name, i, 'root');
  const jailer = (i: string, extra: string[], after: string[]) => fcRun(['jail', '--id', i, '--exec-file', BIN, '--uid', '1000', '--gid', '1000', '--chroot-base-dir', base, ...extra, '--', ...after]);

  test('a spec that is not in the jail is named with where it was looked for', () => {
    const r = jailer(id('nospec'), [], ['--config-file', '/vm.json']);
    expect(r.err).toContain(`the spec /vm.json is not in the jail: ${path.join(rootOf(id('nospec')), 'vm.json')} does not exist`);
    expect(r.code).toBe(1);
  });

  test("the spec's paths are inside the jail: a kernel given as a host path is not found there (exit 2)", () => {
    const i = id('hostpath');
    const root = rootOf(i);
    fs.mkdirSync(root, { recursive: true, mode: 0o755 });
    const hostKernel = path.join(dir, 'vmlinux');
    fs.writeFileSync(hostKernel, 'not in the jail');
    fs.writeFileSync(path.join(root, 'vm.json'), JSON.stringify({ 'boot-source': { kernel_image_path: hostKernel } }));
    const r = jailer(i, [], ['--config-file', 'vm.json']);
    expect(r.err).toContain(`error[file-missing]: /boot-source/kernel_image_path: the kernel image ${hostKernel} is not in the jail: ${path.join(root, hostKernel)} does not exist`);
    expect(r.code).toBe(2);
    expect(fs.readdirSync(root)).toEqual(['vm.json']); // nothing made
  });

  test('the jailed fc-run reads the spec inside the jail and its verdict comes back; the jail root is left as it was', () => {
    const i = id('inside');
    const root = rootOf(i);
    fs.mkdirSync(path.join(root, 'images'), { recursive: true, mode: 0o755 });
    fs.writeFileSync(path.join(root, 'images', 'vmlinux'), 'not a kernel');
    // Relative paths in the spec are from the spec's directory, inside.
    fs.writeFileSync(path.join(root, 'vm.json'), JSON.stringify({ 'boot-source': { kernel_image_path: 'images/vmlinux' } }));
    fs.chmodSync(path.join(root, 'vm.json'), 0o644);
    const r = jailer(i, ['--resource-limit', 'no-file=256', '--new-pid-ns'], ['--config-file', '/vm.json', '--no-api']);
    // The message is the jailed fc-run's: it names the path as the jail sees it.
    expect(r.err).toMatch(/kernel image \/images\/vmlinux: is neither an ELF vmlinux nor a bzImage/);
    expect(r.code).toBe(2);
    expect(fs.readdirSync(root).sort()).toEqual(['images', 'vm.json']);
  });

  test('a pid file left by a killed jailer is refused with the command that removes it', () => {
    const i = id('left');
    const root = rootOf(i);
    fs.mkdirSync(root, { recursive: true, mode: 0o755 });
    fs.writeFileSync(path.join(root, 'vm.json'), JSON.stringify({ 'boot-source': { kernel_image_path: '/vmlinux' } }));
    fs.writeFileSync(path.join(root, 'vmlinux'), 'x');
    fs.writeFileSync(path.join(root, 'fc-run.pid'), '999999999\n');
    for (const daemonize of [[], ['--daemonize']]) {
      const r = jailer(i, daemonize, ['--config-file', '/vm.json']);
      expect(r.err).toContain(`${path.join(root, 'fc-run.pid')} already exists, left behind by a run of microVM "${i}" that did not finish`);
      expect(r.err).toContain(`Remove it with:\n  rm ${path.join(root, 'fc-run.pid')}\nor use another --id`);
      expect(r.code).toBe(1);
    }
  });

  test('the exec file must be fc-run; a link to it names the jail', () => {
    const other = path.join(dir, 'firecracker');
    fs.writeFileSync(other, '#!/bin/sh\n', { mode: 0o755 });
    const r = fcRun(['jail', '--id', 'x', '--exec-file', other, '--uid', '1000', '--gid', '1000', '--chroot-base-dir', base, '--', '/vm.json']);
    expect(r.err).toMatch(/--exec-file .*\/firecracker is not fc-run/);
    expect(r.code).toBe(1);
    const link = path.join(dir, 'bin', 'firecracker');
    fs.mkdirSync(path.dirname(link));
    fs.symlinkSync(BIN, link);
    const i = id('linked');
    const viaLink = fcRun(['jail', '--id', i, '--exec-file', link, '--uid', '1000', '--gid', '1000', '--chroot-base-dir', base, '--', '/vm.json']);
    expect(viaLink.err).toContain(`the spec /vm.json is not in the jail: ${path.join(rootOf(i, 'firecracker'), 'vm.json')} does not exist`);
  });
});
