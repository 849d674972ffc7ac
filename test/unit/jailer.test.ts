import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { hostToInside, insideComponents, insideToHost, resolveInRoot } from '../../src/jail/inside';
import { parentCgroupProblem, parseCgroupMounts, parseCgroupSetting, planCgroups, CgroupSetting } from '../../src/jail/cgroups';
import { effectiveLimits, jailedRunArgs, jailLayout, parseResourceLimit, prlimitFlags } from '../../src/jail/jailer-flags';
import { FC_RUN_BIN, JailerOptions, prepareJail, prepareJailerJail } from '../../src/jail/jail';
import { parseArgs } from '../../src/cli/args';
import { daemonArgv, JAIL_SPEC, jailerOptionsOf } from '../../src/cli/commands/jail';
import { load, minimalSpec, Workspace } from '../helpers/specs';

const setting = (s: string) => parseCgroupSetting(s) as CgroupSetting;

describe('paths inside the jail', () => {
  test('an inside path maps under the jail root, and ".." never climbs out of it', () => {
    expect(insideToHost('/srv/jailer/fc-run/vm1/root', '/vm.json')).toBe('/srv/jailer/fc-run/vm1/root/vm.json');
    expect(insideToHost('/j/root', 'vm.json')).toBe('/j/root/vm.json'); // relative: from the jail's /
    expect(insideToHost('/j/root', '../../etc/shadow')).toBe('/j/root/etc/shadow');
    expect(insideToHost('/j/root', '/images/../../../etc//passwd')).toBe('/j/root/etc/passwd');
    expect(insideToHost('/j/root', 'rootfs.ext4', '/images')).toBe('/j/root/images/rootfs.ext4');
    expect(insideToHost('/j/root', '/')).toBe('/j/root');
    expect(insideComponents('./a/./b/', '/c')).toEqual(['c', 'a', 'b']);
  });

  test('host paths map back to inside paths, and nothing outside the root does', () => {
    expect(hostToInside('/j/root', '/j/root/run/firecracker.socket')).toBe('/run/firecracker.socket');
    expect(hostToInside('/j/root', '/j/root')).toBe('/');
    expect(hostToInside('/j/root', '/j/rootfs')).toBeUndefined();
    expect(hostToInside('/j/root', '/etc/passwd')).toBeUndefined();
  });

  describe('following links as the jailed process would', () => {
    let dir: string;
    let root: string;
    beforeAll(() => {
      dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fc-run-inside-'));
      root = path.join(dir, 'root');
      fs.mkdirSync(path.join(root, 'images'), { recursive: true });
      fs.writeFileSync(path.join(root, 'images', 'vmlinux'), 'kernel');
      fs.writeFileSync(path.join(dir, 'outside'), 'secret');
      fs.symlinkSync('/images/vmlinux', path.join(root, 'abs-link'));
      fs.symlinkSync('images/vmlinux', path.join(root, 'rel-link'));
      fs.symlinkSync('../../outside', path.join(root, 'images', 'climb'));
      fs.symlinkSync('/images', path.join(root, 'imgdir'));
      fs.symlinkSync('loop-b', path.join(root, 'loop-a'));
      fs.symlinkSync('loop-a', path.join(root, 'loop-b'));
    });
    afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

    test('an absolute link target starts from the jail root, not the host /', () => {
      expect(resolveInRoot(root, '/abs-link')).toBe(path.join(root, 'images', 'vmlinux'));
      expect(resolveInRoot(root, '/imgdir/vmlinux')).toBe(path.join(root, 'images', 'vmlinux'));
      expect(resolveInRoot(root, 'rel-link')).toBe(path.join(root, 'images', 'vmlinux'));
    });

    test('a link climbing with ".." stops at the jail root', () => {
      expect(resolveInRoot(root, '/images/climb')).toBe(path.join(root, 'outside'));
      expect(fs.existsSync(resolveInRoot(root, '/images/climb'))).toBe(false); // not the host file next to the root
    });

    test('missing components are kept, and a link loop is an error', () => {
      expect(resolveInRoot(root, '/nope/x')).toBe(path.join(root, 'nope', 'x'));
      expect(() => resolveInRoot(root, '/loop-a')).toThrow(/too many levels of symbolic links/);
    });
  });
});

describe('jailer flags', () => {
  test('--cgroup: <controller>.<file>=<value>, nothing that walks the hierarchy, a value', () => {
    expect(parseCgroupSetting('cpuset.cpus=0-3')).toEqual({ text: 'cpuset.cpus=0-3', controller: 'cpuset', file: 'cpuset.cpus', value: '0-3' });
    expect(parseCgroupSetting('io.max=8:0 rbps=1048576')).toMatchObject({ file: 'io.max', value: '8:0 rbps=1048576' });
    expect(parseCgroupSetting('memory.limit_in_bytes')).toMatch(/expected <controller>.<file>=<value>/);
    expect(parseCgroupSetting('memory.max=')).toMatch(/gives no value for memory.max/);
    expect(parseCgroupSetting('cpu=1')).toMatch(/"cpu" is not a cgroup file name/);
    expect(parseCgroupSetting('../memory.max=1')).toMatch(/not a cgroup file name/);
    expect(parseCgroupSetting('memory/../pids.max=1')).toMatch(/not a cgroup file name/);
    expect(parseCgroupSetting('/memory.max=1')).toMatch(/not a cgroup file name/);
  });

  test('--parent-cgroup: relative, without "." or ".." (as Firecracker requires)', () => {
    expect(parentCgroupProblem('all_uvms/external_uvms')).toBeUndefined();
    expect(parentCgroupProblem('/abs')).toMatch(/relative/);
    expect(parentCgroupProblem('a/../b')).toMatch(/"\." or "\.\."/);
    expect(parentCgroupProblem('./a')).toMatch(/"\." or "\.\."/);
    expect(parentCgroupProblem('a//b')).toMatch(/empty components/);
  });

  test('--resource-limit: fsize and no-file, whole numbers up to 2^64-1; no-file defaults to 2048', () => {
    expect(parseResourceLimit('no-file=1024')).toEqual({ resource: 'no-file', value: 1024n });
    expect(parseResourceLimit('fsize=18446744073709551615')).toEqual({ resource: 'fsize', value: 18446744073709551615n });
    expect(parseResourceLimit('fsize=18446744073709551616')).toMatch(/whole number/);
    expect(parseResourceLimit('nofile=1')).toMatch(/"nofile" is not a resource the jailer limits/);
    expect(parseResourceLimit('fsize=-1')).toMatch(/whole number/);
    expect(parseResourceLimit('fsize')).toMatch(/expected <resource>=<value>/);
    expect(effectiveLimits([])).toEqual([{ resource: 'no-file', value: 2048n }]);
    const limits = effectiveLimits([{ resource: 'fsize', value: 10n }, { resource: 'no-file', value: 64n }, { resource: 'fsize', value: 20n }]);
    expect(prlimitFlags(limits)).toEqual(['--nofile=64:64', '--fsize=20:20']);
  });

  test("the jail layout is Firecracker's: <base>/<exec file name>/<id>/root, the pid file in the root", () => {
    expect(jailLayout('/srv/jailer', 'firecracker', 'vm1')).toEqual({
      jailDir: '/srv/jailer/firecracker/vm1',
      root: '/srv/jailer/firecracker/vm1/root',
      pidFile: '/srv/jailer/firecracker/vm1/root/firecracker.pid',
    });
  });

  test('the jailed fc-run gets the id, the start time and the lifeline before the user arguments', () => {
    expect(jailedRunArgs('vm1', 123n, 3, ['--config-file', '/vm.json', '--no-api'])).toEqual(['run', '--id', 'vm1', '--start-time-us', '123', '--exit-with-fd', '3', '--config-file', '/vm.json', '--no-api']);
  });
});

describe('cgroups from /proc/mounts', () => {
  const hybrid = [
    'tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0',
    'cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,relatime,cpu,cpuacct 0 0',
    'cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0',
    'cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0',
    'cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0',
    'cgroup /sys/fs/cgroup/with\\040space cgroup rw,cpuset 0 0',
  ].join('\n');
  const v2only = 'cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0\n';
  const mounts = parseCgroupMounts(hybrid);

  test('v1 controllers (co-mounted ones too) and the v2 mount are found', () => {
    expect(mounts.v1.get('cpu')).toBe('/sys/fs/cgroup/cpu,cpuacct');
    expect(mounts.v1.get('cpuacct')).toBe('/sys/fs/cgroup/cpu,cpuacct');
    expect(mounts.v1.get('memory')).toBe('/sys/fs/cgroup/memory');
    expect(mounts.v1.get('cpuset')).toBe('/sys/fs/cgroup/with space');
    expect(mounts.v2).toBe('/sys/fs/cgroup/unified');
    expect(parseCgroupMounts(v2only)).toEqual({ v1: new Map(), v2: '/sys/fs/cgroup' });
  });

  test('v1 (the jailer default): <controller mount>/<parent>/<id>, one directory per hierarchy', () => {
    const plan = planCgroups([setting('cpu.shares=10'), setting('cpuacct.usage=0'), setting('memory.limit_in_bytes=1')], { id: 'vm1', parent: 'firecracker', version: 1, mounts, v2Controllers: new Set() });
    expect(plan.create.map((c) => [c.dir, c.v2, c.controllers])).toEqual([
      ['/sys/fs/cgroup/cpu,cpuacct/firecracker/vm1', false, ['cpu', 'cpuacct']],
      ['/sys/fs/cgroup/memory/firecracker/vm1', false, ['memory']],
    ]);
  });

  test('v2: <v2 mount>/<parent>/<id>, for the controllers it offers', () => {
    const plan = planCgroups([setting('memory.max=1'), setting('pids.max=5')], { id: 'vm1', parent: 'all/uvms', version: 2, mounts: parseCgroupMounts(v2only), v2Controllers: new Set(['memory', 'pids']) });
    expect(plan.create).toHaveLength(1);
    expect(plan.create[0]).toMatchObject({ dir: '/sys/fs/cgroup/all/uvms/vm1', v2: true, controllers: ['memory', 'pids'] });
    expect(() => planCgroups([setting('hugetlb.max=1')], { id: 'vm1', parent: 'p', version: 2, mounts: parseCgroupMounts(v2only), v2Controllers: new Set(['memory']) })).toThrow(/has no "hugetlb" controller/);
  });

  test('the wrong version is refused with what to pass instead', () => {
    expect(() => planCgroups([setting('memory.max=1')], { id: 'vm1', parent: 'p', version: 1, mounts: parseCgroupMounts(v2only), v2Controllers: new Set(['memory']) })).toThrow(/no cgroup v1 hierarchy for the "memory" controller on this host \(this host has cgroup v2: add --cgroup-version 2\)/);
  });

  test("fc-run's form picks v1 where the controller has it, else v2", () => {
    const plan = planCgroups([setting('pids.max=5'), setting('io.weight=50')], { id: 'vm1', parent: 'fc-run', version: 'auto', mounts, v2Controllers: new Set(['io']) });
    expect(plan.create.map((c) => c.dir)).toEqual(['/sys/fs/cgroup/pids/fc-run/vm1', '/sys/fs/cgroup/unified/fc-run/vm1']);
  });
});

describe('the jailer command line', () => {
  const parse = (argv: string[]) => parseArgs(argv, JAIL_SPEC, { passThrough: true });
  const base = ['--id', 'vm1', '--exec-file', '/usr/bin/firecracker', '--uid', '1000', '--gid', '1000'];

  test("Firecracker's flags and the run arguments after --", () => {
    const args = parse([...base, '--cgroup', 'cpuset.cpus=0', '--cgroup', 'cpuset.mems=0', '--cgroup-version', '2', '--parent-cgroup', 'uvms', '--resource-limit', 'no-file=1024', '--netns', '/var/run/netns/x', '--daemonize', '--new-pid-ns', '--', '--config-file', '/vm.json', '--no-api', '--level', 'Debug']);
    const { jailer, run } = jailerOptionsOf(args, 5_000_000n);
    expect(jailer).toMatchObject({ id: 'vm1', execFile: '/usr/bin/firecracker', uid: 1000, gid: 1000, baseDir: '/srv/jailer', cgroups: ['cpuset.cpus=0', 'cpuset.mems=0'], cgroupVersion: 2, parentCgroup: 'uvms', netns: '/var/run/netns/x', startTimeUs: 5000n });
    expect(jailer.resourceLimits).toEqual([{ resource: 'no-file', value: 1024n }]);
    expect(jailer.runArgs).toEqual(['--config-file', '/vm.json', '--no-api', '--level', 'Debug']);
    expect(run.options['config-file']).toBe('/vm.json');
  });

  test('the run arguments are checked by the run command parser, and what the jailer passes itself is refused', () => {
    const opts = (rest: string[]) => () => jailerOptionsOf(parse([...base, '--', ...rest]), 0n);
    expect(opts(['--config-file', '/vm.json', '--bogus'])).toThrow(/^after --: unknown option --bogus/);
    expect(opts(['--config-file', '/vm.json', '--enable-pci'])).toThrow(/after --: option --enable-pci is not supported by fc-run/);
    expect(opts(['--config-file', '/vm.json', '--id', 'x'])).toThrow(/after --: --id is given by the jailer itself/);
    expect(opts(['--config-file', '/vm.json', '--start-time-us', '1'])).toThrow(/--start-time-us is given by the jailer itself/);
    expect(opts(['--no-api'])).toThrow(/spec is missing: give it after --, e.g. -- --config-file \/vm.json/);
    expect(opts(['--config-file', '/a.json', '/b.json'])).toThrow(/give the spec once/);
    expect(() => jailerOptionsOf(parse([...base, '--serial-out', 'none', '--', '/vm.json']), 0n)).toThrow(/--serial-out is the jailed fc-run's option: in Firecracker's jailer form give it after --/);
  });

  test('the background half of --daemonize gets the same options back', () => {
    const args = parse([...base, '--cgroup', 'pids.max=5', '--cgroup', 'memory.max=1', '--daemonize', '--new-pid-ns', '--json-lines', '--', '--config-file', '/vm.json', '--api-sock', '/run/firecracker.socket']);
    const argv = daemonArgv(args);
    expect(argv[0]).toBe('jail');
    const again = parse(argv.slice(1));
    const { daemonize, ...rest } = args.options;
    expect(daemonize).toBe(true);
    expect(again.options).toEqual({ ...rest, daemonized: true });
    expect(again.rest).toEqual(args.rest);
  });
});

// As root (no KVM needed): what the jailer makes on the host, and what a killed one leaves.
const asRoot = process.getuid?.() === 0 && fs.existsSync('/usr/bin/setpriv') && process.execPath.startsWith('/usr/');
const describeRoot = asRoot ? describe : describe.skip;
if (!asRoot) console.warn('SKIPPED: preparing jails needs root and Node under /usr');

describeRoot('preparing a jail (root)', () => {
  const UID = 1000;
  let dir: string;
  let base: string;
  const cgroupsMade: string[] = [];
  const pidsV1 = parseCgroupMounts(fs.readFileSync('/proc/mounts', 'utf8')).v1.get('pids');
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fc-run-jailer-'));
    fs.chmodSync(dir, 0o755);
    base = path.join(dir, 'base');
  });
  afterAll(() => {
    for (const d of cgroupsMade) {
      try {
        fs.rmdirSync(d);
      } catch {
        // gone
      }
    }
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const jailerOpts = (id: string, extra: Partial<JailerOptions> = {}): JailerOptions => ({
    id,
    uid: UID,
    gid: UID,
    baseDir: base,
    execFile: FC_RUN_BIN,
    cgroups: [],
    cgroupVersion: 1,
    resourceLimits: [],
    runArgs: ['--config-file', '/vm.json'],
    startTimeUs: 1n,
    ...extra,
  });

  test("Firecracker's form: mount points, the claimed pid file and cgroups are made, and removed again, leaving the user's jail root as it was", () => {
    const id = `fcj-${process.pid}`;
    const root = path.join(base, 'fc-run', id, 'root');
    fs.mkdirSync(root, { recursive: true, mode: 0o755 });
    fs.writeFileSync(path.join(root, 'vm.json'), '{}');
    fs.mkdirSync(path.join(root, 'etc'));
    fs.writeFileSync(path.join(root, 'etc', 'hosts'), 'mine');
    const before = fs.readdirSync(root).sort();
    const cg = pidsV1 ? [`pids.max=16`] : [];
    const jail = prepareJailerJail(jailerOpts(id, { cgroups: cg, resourceLimits: [{ resource: 'fsize', value: 4096n }] }));
    if (pidsV1) cgroupsMade.push(path.join(pidsV1, 'fc-run', id));
    try {
      expect(jail.root).toBe(root);
      expect(jail.pidFile).toBe(path.join(root, 'fc-run.pid'));
      expect(fs.readFileSync(jail.pidFile, 'utf8').trim()).toBe(String(process.pid)); // the claim names a live jailer
      for (const d of ['dev', 'proc', 'usr', 'opt/fc-run', 'run', 'tmp']) expect([d, fs.lstatSync(path.join(root, d)).isDirectory()]).toEqual([d, true]);
      expect(fs.statSync(path.join(root, 'run')).uid).toBe(UID);
      expect(fs.statSync(path.join(root, 'run')).mode & 0o777).toBe(0o700);
      expect(fs.statSync(root).uid).toBe(0); // the root stays root's: the jailed user cannot swap what the jailer mounts on
      if (pidsV1) {
        expect(jail.cgroupDirs).toEqual([path.join(pidsV1, 'fc-run', id)]);
        expect(fs.readFileSync(path.join(pidsV1, 'fc-run', id, 'pids.max'), 'utf8').trim()).toBe('16');
      }
      const script = jail.command.join(' ');
      expect(script).toContain('/usr/bin/prlimit --nofile=2048:2048 --fsize=4096:4096 -- chroot');
      expect(script.replace(/['\\]/g, '')).toContain(`/opt/fc-run/bin/fc-run run --id ${id} --start-time-us 1 --exit-with-fd 3 --config-file /vm.json`);
      expect(script).not.toContain("'--net'"); // the host's network namespace, as Firecracker's jailer
      expect(script).toContain('dev/net/tun');
    } finally {
      jail.cleanup();
    }
    expect(fs.readdirSync(root).sort()).toEqual(before);
    expect(fs.readFileSync(path.join(root, 'etc', 'hosts'), 'utf8')).toBe('mine');
    if (pidsV1) expect(fs.existsSync(path.join(pidsV1, 'fc-run', id))).toBe(false);
  });

  test('a pid file and cgroup left by a killed jailer are refused with the commands that remove them', () => {
    const id = `fcl-${process.pid}`;
    const root = path.join(base, 'fc-run', id, 'root');
    fs.mkdirSync(root, { recursive: true, mode: 0o755 });
    fs.writeFileSync(path.join(root, 'fc-run.pid'), '999999999\n');
    const cgroup = pidsV1 ? path.join(pidsV1, 'fc-run', id) : undefined;
    if (cgroup) {
      fs.mkdirSync(path.dirname(cgroup), { recursive: true });
      fs.mkdirSync(cgroup);
      cgroupsMade.push(cgroup);
    }
    const expected = [`rm ${path.join(root, 'fc-run.pid')}`, ...(cgroup ? [`rmdir ${cgroup}`] : [])].join('\n  ');
    expect(() => prepareJailerJail(jailerOpts(id, { cgroups: cgroup ? ['pids.max=8'] : [] }))).toThrow(`Remove ${cgroup ? 'them' : 'it'} with:\n  ${expected}\nor use another --id`);
    expect(fs.readFileSync(path.join(root, 'fc-run.pid'), 'utf8')).toBe('999999999\n'); // not touched
    expect(fs.readdirSync(root)).toEqual(['fc-run.pid']);
  });

  (pidsV1 ? test : test.skip)('a cgroup with a process in it is a running microVM, not a leftover', async () => {
    const id = `fcb-${process.pid}`;
    const cgroup = path.join(pidsV1!, 'fc-run', id);
    fs.mkdirSync(path.dirname(cgroup), { recursive: true });
    fs.mkdirSync(cgroup);
    cgroupsMade.push(cgroup);
    const sleeper = spawn('sleep', ['30'], { stdio: 'ignore' });
    try {
      fs.writeFileSync(path.join(cgroup, 'cgroup.procs'), String(sleeper.pid));
      expect(() => prepareJailerJail(jailerOpts(id, { cgroups: ['pids.max=8'] }))).toThrow(`microVM "${id}" is running (pid ${sleeper.pid})`);
    } finally {
      sleeper.kill('SIGKILL');
      await new Promise((r) => sleeper.on('exit', r));
    }
  });

  test('the exec file must be fc-run (or a link to it)', () => {
    const other = path.join(dir, 'firecracker');
    fs.writeFileSync(other, '#!/bin/sh\n', { mode: 0o755 });
    expect(() => prepareJailerJail(jailerOpts('x1', { execFile: other }))).toThrow(/--exec-file .*firecracker is not fc-run: fc-run jail runs fc-run \(.*bin\/fc-run\) in the jail/);
    const link = path.join(dir, 'fc-link', 'firecracker');
    fs.mkdirSync(path.dirname(link));
    fs.symlinkSync(FC_RUN_BIN, link);
    const jail = prepareJailerJail(jailerOpts(`fcx-${process.pid}`, { execFile: link }));
    try {
      // Named after the link, as the user's scripts name it.
      expect(jail.root).toBe(path.join(base, 'firecracker', `fcx-${process.pid}`, 'root'));
      expect(jail.pidFile).toBe(path.join(jail.root, 'firecracker.pid'));
    } finally {
      jail.cleanup();
    }
    expect(() => prepareJailerJail(jailerOpts('x2', { execFile: path.join(dir, 'nope') }))).toThrow(/--exec-file .*nope: no such file/);
  });

  test("fc-run's form: the jail directory goes when the run ends; one left behind is refused with rm -rf", () => {
    const ws = new Workspace();
    try {
      const spec = load(ws, minimalSpec()).spec;
      const id = `fcr-${process.pid}`;
      const opts = { id, uid: UID, gid: UID, baseDir: base, cgroups: [], runArgs: [] };
      const jail = prepareJail(spec, opts);
      const jailDir = path.join(base, 'fc-run', id);
      expect(jail.root).toBe(path.join(jailDir, 'root'));
      expect(fs.existsSync(path.join(jail.root, 'vm.json'))).toBe(true);
      expect(fs.readFileSync(jail.pidFile, 'utf8').trim()).toBe(String(process.pid));
      jail.cleanup();
      expect(fs.existsSync(jailDir)).toBe(false);
      // As a jailer killed by SIGKILL leaves it: the directory, a pid file naming a dead process.
      fs.mkdirSync(path.join(jailDir, 'root'), { recursive: true });
      fs.writeFileSync(path.join(jailDir, 'root', 'fc-run.pid'), '999999999\n');
      expect(() => prepareJail(spec, opts)).toThrow(`${jailDir} already exists, left behind by a run of microVM "${id}" that did not finish`);
      expect(() => prepareJail(spec, opts)).toThrow(`Remove it with:\n  rm -rf ${jailDir}\nor use another --id`);
      expect(fs.existsSync(path.join(jailDir, 'root', 'fc-run.pid'))).toBe(true);
    } finally {
      ws.remove();
    }
  });

  test('a directory at the jail path that fc-run did not make is not called a leftover (no rm -rf suggested)', () => {
    const ws = new Workspace();
    try {
      const spec = load(ws, minimalSpec()).spec;
      const id = `fcu-${process.pid}`;
      const jailDir = path.join(base, 'fc-run', id);
      fs.mkdirSync(jailDir, { recursive: true });
      fs.writeFileSync(path.join(jailDir, 'precious.txt'), 'x');
      const opts = { id, uid: UID, gid: UID, baseDir: base, cgroups: [], runArgs: [] };
      expect(() => prepareJail(spec, opts)).toThrow(`${jailDir} exists, and fc-run jail did not make it`);
      expect(() => prepareJail(spec, opts)).not.toThrow(/rm -rf/);
      expect(fs.readFileSync(path.join(jailDir, 'precious.txt'), 'utf8')).toBe('x');
      fs.rmSync(jailDir, { recursive: true });
    } finally {
      ws.remove();
    }
  });

  test('a base directory below one another user can write is refused', () => {
    const ws = new Workspace();
    const open = fs.mkdtempSync(path.join(os.tmpdir(), 'fc-run-open-'));
    try {
      fs.chmodSync(open, 0o777); // world-writable, not sticky
      const unsafeBase = path.join(open, 'base');
      fs.mkdirSync(unsafeBase, { mode: 0o755 });
      const spec = load(ws, minimalSpec()).spec;
      expect(() => prepareJail(spec, { id: `fcb-${process.pid}`, uid: UID, gid: UID, baseDir: unsafeBase, cgroups: [], runArgs: [] })).toThrow(`${open}, above the jails in ${unsafeBase}, must be owned by root and writable by root only`);
    } finally {
      fs.rmSync(open, { recursive: true, force: true });
      ws.remove();
    }
  });
});
