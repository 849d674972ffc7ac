import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Workspace } from '../helpers/specs';
import { tinyGuestElf } from '../helpers/images';

/**
 * The jailer, for real: the jailed fc-run is found through /proc and checked from outside —
 * its root, user, capabilities, no_new_privs, seccomp, PID namespace and cgroups.
 */
const ROOT = path.resolve(__dirname, '..', '..');
const BIN = path.join(ROOT, 'bin', 'fc-run');
const PROBE = path.join(ROOT, 'guest', 'probe', 'build', 'probe.elf');
const canRun = fs.existsSync('/dev/kvm') && process.getuid?.() === 0 && fs.existsSync('/sys/fs/cgroup/pids/cgroup.procs') && fs.existsSync('/usr/bin/setpriv');
const describeJail = canRun ? describe : describe.skip;
if (!canRun) console.warn('SKIPPED: the jail test needs root, /dev/kvm, cgroup v1 pids and util-linux setpriv');

const UID = 1000;
const GID = 1000;
let ws: Workspace;
let base: string;
const ids: string[] = [];
/** Jail ids name cgroups, which the whole machine shares: unique to this process. */
const jid = (name: string) => `${name}-${process.pid}`;

/** The pid of the process running chrooted in `root`, once there is one (undefined after `ms`). */
async function jailedPid(root: string, ms: number): Promise<number | undefined> {
  const until = Date.now() + ms;
  let pid: number | undefined;
  while (!(pid = processIn(root)) && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
  return pid;
}

/** Waits up to `ms` for a process to be gone. */
async function exited(pid: number | undefined, ms: number): Promise<void> {
  const until = Date.now() + ms;
  while (pid !== undefined && fs.existsSync(`/proc/${pid}`) && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
}
beforeAll(() => {
  ws = new Workspace();
  base = path.join(ws.dir, 'jails');
  fs.mkdirSync(base);
});
afterAll(() => {
  for (const id of ids) for (const c of ['memory', 'pids']) spawnSync('rmdir', [`/sys/fs/cgroup/${c}/fc-run/${id}`]);
  ws?.remove();
});

function jailArgs(spec: string, id: string, extra: string[] = []): string[] {
  ids.push(id);
  return [BIN, 'jail', spec, '--id', id, '--uid', String(UID), '--gid', String(GID), '--chroot-base-dir', base, ...extra];
}

function statusOf(pid: number): Record<string, string> {
  return Object.fromEntries(
    fs
      .readFileSync(`/proc/${pid}/status`, 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => [l.slice(0, l.indexOf(':')), l.slice(l.indexOf(':') + 1).trim()]),
  );
}

/** The process whose root directory is `root`. */
function processIn(root: string): number | undefined {
  for (const p of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    try {
      // (Seen from outside its mount namespace the path may carry " (deleted)".)
      if (fs.readlinkSync(`/proc/${p}/root`).startsWith(root) && fs.readlinkSync(`/proc/${p}/exe`).endsWith('/node')) return Number(p);
    } catch {
      // gone, or not ours to read
    }
  }
  return undefined;
}

describeJail('fc-run jail', () => {
  test('the jailed VMM runs chrooted as the given user, without capabilities, under seccomp, in its own PID namespace and cgroups', async () => {
    const kernel = ws.write('spin.elf', tinyGuestElf([0xeb, 0xfe])); // jmp $
    const spec = ws.write('spin.json', { 'boot-source': { kernel_image_path: kernel }, 'machine-config': { vcpu_count: 1, mem_size_mib: 16 } });
    const child = spawn(process.execPath, jailArgs(spec, jid('spin'), ['--cgroup', 'memory.limit_in_bytes=536870912', '--cgroup', 'pids.max=64']), { env: { ...process.env, NO_COLOR: '1' } });
    let err = '';
    child.stderr.on('data', (d) => (err += d));
    const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
    const root = path.join(base, 'fc-run', jid('spin'), 'root');
    try {
      let pid: number | undefined;
      const until = Date.now() + 30_000;
      while (!(pid = processIn(root))) {
        if (Date.now() > until) throw new Error(`no process in the jail; stderr: ${err}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      // Seccomp goes on right before the vCPUs run: wait for that moment, however slow the machine.
      while (statusOf(pid).Seccomp !== '2') {
        if (Date.now() > until) throw new Error(`the jailed fc-run never reached its guest; stderr: ${err}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      const st = statusOf(pid);
      expect(st.Uid.split(/\s+/)).toEqual([String(UID), String(UID), String(UID), String(UID)]);
      expect(st.Gid.split(/\s+/)).toEqual([String(GID), String(GID), String(GID), String(GID)]);
      expect(st.Groups).toBe('');
      expect(st.CapEff).toBe('0000000000000000');
      expect(st.CapBnd).toBe('0000000000000000');
      expect(st.NoNewPrivs).toBe('1');
      expect(st.Seccomp).toBe('2');
      expect(st.NSpid.split(/\s+/)).toEqual([String(pid), '1']); // PID 1 of a namespace of its own
      expect(fs.readlinkSync(`/proc/${pid}/ns/mnt`)).not.toBe(fs.readlinkSync('/proc/self/ns/mnt'));
      const cgroups = fs.readFileSync(`/proc/${pid}/cgroup`, 'utf8');
      expect(cgroups).toContain(`:memory:/fc-run/${jid('spin')}\n`);
      expect(cgroups).toContain(`:pids:/fc-run/${jid('spin')}\n`);
      expect(fs.readFileSync(`/sys/fs/cgroup/memory/fc-run/${jid('spin')}/memory.limit_in_bytes`, 'utf8').trim()).toBe('536870912');
      expect(fs.readFileSync(`/sys/fs/cgroup/pids/fc-run/${jid('spin')}/pids.max`, 'utf8').trim()).toBe('64');
      expect(fs.readlinkSync(`/proc/${pid}/ns/ipc`)).not.toBe(fs.readlinkSync('/proc/self/ns/ipc'));
      expect(fs.readlinkSync(`/proc/${pid}/ns/net`)).not.toBe(fs.readlinkSync('/proc/self/ns/net')); // no TAP: an empty one
      // A session of its own without a controlling terminal: nothing to type commands into.
      const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').slice(fs.readFileSync(`/proc/${pid}/stat`, 'utf8').lastIndexOf(')') + 2).split(' ');
      expect(Number(stat[3])).toBe(pid); // session id
      expect(Number(stat[4])).toBe(0); // tty_nr
      // Its own /dev, on a tmpfs that exists only in its mount namespace, owned by the jailed user.
      expect(fs.readdirSync(`/proc/${pid}/root/dev`).sort()).toEqual(['kvm', 'null', 'urandom']);
      expect(fs.statSync(`/proc/${pid}/root/dev/kvm`).uid).toBe(UID);
      expect(fs.readdirSync(path.join(root, 'dev'))).toEqual([]); // nothing left on the host's disk
      // The spec (MMDS contents may be secret) is for the jailed user only; the jail directory for root.
      expect(fs.statSync(path.join(root, 'vm.json')).mode & 0o777).toBe(0o400);
      expect(fs.statSync(path.dirname(root)).mode & 0o777).toBe(0o700);
      child.kill('SIGTERM');
      expect([await exited, err]).toEqual([0, err]);
    } finally {
      // Even a jailer killed outright takes its VM with it (parent-death signal).
      child.kill('SIGKILL');
    }
    expect(err).toMatch(/stopped by SIGTERM/);
    // The cgroups and the jail directory went with the VM.
    expect(fs.existsSync(`/sys/fs/cgroup/memory/fc-run/${jid('spin')}`)).toBe(false);
    expect(fs.existsSync(path.dirname(root))).toBe(false);
  }, 60_000);

  test('a jailer killed outright (SIGKILL) still stops its VM', async () => {
    const spec = ws.write('spin2.json', { 'boot-source': { kernel_image_path: path.join(ws.dir, 'spin.elf') }, 'machine-config': { vcpu_count: 1, mem_size_mib: 16 } });
    const child = spawn(process.execPath, jailArgs(spec, jid('spin2')), { stdio: 'ignore' });
    const root = path.join(base, 'fc-run', jid('spin2'), 'root');
    const pid = await jailedPid(root, 30_000);
    expect(pid).toBeDefined();
    child.kill('SIGKILL');
    await exited(pid, 10_000);
    expect(fs.existsSync(`/proc/${pid}`)).toBe(false);
  }, 60_000);

  test('the probe guest runs jailed; its writes land in the original drive file', () => {
    const disk = ws.write('disk.img', Buffer.alloc(64 * 1024));
    fs.chownSync(disk, UID, GID);
    const spec = ws.write('probe.json', {
      'boot-source': { kernel_image_path: PROBE, boot_args: 'console=ttyS0' },
      'machine-config': { vcpu_count: 2, mem_size_mib: 64 },
      drives: [{ drive_id: 'disk0', path_on_host: disk, is_root_device: false, is_read_only: false }],
    });
    const r = spawnSync(process.execPath, jailArgs(spec, jid('probe')), { encoding: 'utf8', timeout: 60_000, env: { ...process.env, NO_COLOR: '1' } });
    const out = r.stdout.replace(/\r/g, '');
    expect(out).toContain('# probe done: 0 failed');
    expect(out).toContain('ok - blk-write');
    expect(r.status).toBe(0);
    expect(fs.readFileSync(disk).toString('latin1', 512, 545)).toBe('written by the fc-run probe guest');
  });

  test("the jailed run gets the host's FC_RUN_HOT_EXITS (a bad value is refused inside, as by run)", () => {
    const spec = ws.write('probe-hot.json', { 'boot-source': { kernel_image_path: PROBE, boot_args: 'console=ttyS0' }, 'machine-config': { vcpu_count: 1, mem_size_mib: 64 } });
    const run = (value: string, n: number) => spawnSync(process.execPath, jailArgs(spec, jid(`hot${n}`)), { encoding: 'utf8', timeout: 60_000, env: { ...process.env, NO_COLOR: '1', FC_RUN_HOT_EXITS: value } });
    const bad = run('bogus', 1);
    expect(bad.status).toBe(1);
    expect(bad.stderr).toContain('FC_RUN_HOT_EXITS is "bogus"');
    const js = run('js', 2);
    expect(js.status).toBe(0);
    expect(js.stdout).toContain('# probe done: 0 failed');
  });

  test('--metadata over the default MMDS limit, allowed by --mmds-size-limit, is allowed inside the jail too', () => {
    const meta = ws.write('big-meta.json', { blob: 'm'.repeat(60_000) });
    const spec = ws.write('meta.json', { 'boot-source': { kernel_image_path: PROBE, boot_args: 'console=ttyS0' }, 'machine-config': { vcpu_count: 1, mem_size_mib: 32 } });
    const run = (extra: string[]) => spawnSync(process.execPath, jailArgs(spec, jid(`meta${extra.length}`), ['--metadata', meta, '--serial-out', 'none', ...extra]), { encoding: 'utf8', timeout: 60_000, env: { ...process.env, NO_COLOR: '1' } });
    const refused = run([]);
    expect(refused.status).toBe(2);
    expect(refused.stderr).toMatch(/MMDS contents are 60011 bytes \(compact JSON\); the limit is 51200/);
    const r = run(['--mmds-size-limit', '100000']);
    expect(r.stderr).not.toMatch(/error/);
    expect(r.status).toBe(0);
  });

  test('a template with keys Firecracker ignores: the host warns once (and --strict refuses); the jail gets the template as validated', () => {
    const tpl = JSON.parse(fs.readFileSync(path.join(ROOT, 'examples', 'cpu-templates', 'no-avx512.json'), 'utf8')) as { cpuid_modifiers: Record<string, unknown>[] };
    tpl.cpuid_modifiers[0].note = 'kept out of the jail';
    const tplFile = ws.write('tpl-note.json', tpl);
    // And a drive without is_read_only: a warning of the spec's own (the jailed run must not repeat it for its copy).
    const disk = ws.write('tpl-disk.img', Buffer.alloc(64 * 1024));
    fs.chownSync(disk, UID, GID);
    const spec = ws.write('tpl-jail.json', {
      'boot-source': { kernel_image_path: PROBE, boot_args: 'console=ttyS0' },
      'machine-config': { vcpu_count: 1, mem_size_mib: 32 },
      'cpu-config': tplFile,
      drives: [{ drive_id: 'd', path_on_host: disk, is_root_device: false }],
    });
    let runs = 0;
    const run = (extra: string[]) => spawnSync(process.execPath, jailArgs(spec, jid(`tpl${runs++}`), ['--serial-out', 'none', ...extra]), { encoding: 'utf8', timeout: 60_000, env: { ...process.env, NO_COLOR: '1' } });
    const strict = run(['--strict']);
    expect(strict.status).toBe(2);
    expect(strict.stderr).toContain(`${tplFile}:`);
    expect(strict.stderr).toContain('error[unknown-property-ignored]: /cpuid_modifiers/0/note');
    const r = run([]);
    expect(r.status).toBe(0);
    expect(r.stderr.match(/unknown-property-ignored/g)).toHaveLength(1);
    expect(r.stderr.match(/read-only-unset/g)).toHaveLength(1);
    expect(r.stderr).not.toContain('vm.json');
    // --json-lines reaches the jailed run: every line of the whole output is a record.
    const lines = run(['--json-lines']);
    expect(lines.status).toBe(0);
    const records = lines.stderr.trim().split('\n').map((l) => JSON.parse(l) as { type: string; code?: string });
    expect(records.filter((x) => x.type === 'issue').map((x) => x.code).sort()).toEqual(['read-only-unset', 'unknown-property-ignored']);
  });

  test('fds the jailer was given do not reach the jail', async () => {
    const spec = ws.write('fds.json', { 'boot-source': { kernel_image_path: path.join(ws.dir, 'spin.elf') }, 'machine-config': { vcpu_count: 1, mem_size_mib: 16 } });
    const dirFd = fs.openSync('/', 'r');
    const child = spawn(process.execPath, jailArgs(spec, jid('fds')), { stdio: ['ignore', 'ignore', 'pipe', dirFd] });
    let err = '';
    child.stderr!.on('data', (d) => (err += d));
    fs.closeSync(dirFd);
    const root = path.join(base, 'fc-run', jid('fds'), 'root');
    const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
    try {
      const pid = await jailedPid(root, 30_000);
      expect(pid).toBeDefined();
      const targets = fs.readdirSync(`/proc/${pid}/fd`).map((fd) => {
        try {
          return fs.readlinkSync(`/proc/${pid}/fd/${fd}`);
        } catch {
          return '';
        }
      });
      expect(targets).not.toContain('/');
      child.kill('SIGTERM');
      expect([await exited, err]).toEqual([0, err]);
    } finally {
      child.kill('SIGKILL');
    }
  }, 60_000);

  test('a jailer stopped while the jailed fc-run is still starting stops it too', async () => {
    const spec = ws.write('early.json', { 'boot-source': { kernel_image_path: path.join(ws.dir, 'spin.elf') }, 'machine-config': { vcpu_count: 1, mem_size_mib: 16 }, entropy: {} });
    for (const [id, sig] of [[jid('early-term'), 'SIGTERM'], [jid('early-kill'), 'SIGKILL']] as const) {
      const child = spawn(process.execPath, jailArgs(spec, id), { stdio: 'ignore' });
      const root = path.join(base, 'fc-run', id, 'root');
      let pid: number | undefined;
      const until = Date.now() + 30_000;
      while (!(pid = processIn(root)) && Date.now() < until) await new Promise((r) => setTimeout(r, 5));
      expect(pid).toBeDefined();
      child.kill(sig); // at once: fc-run is still loading
      await exited(pid, 20_000);
      expect([id, fs.existsSync(`/proc/${pid}`)]).toEqual([id, false]);
    }
  }, 90_000);

  test('logs and metrics from the spec are written inside the jail to the host files, which belong to the jailed user', () => {
    const logPath = path.join(ws.dir, 'jailed.log');
    const metricsPath = path.join(ws.dir, 'jailed.metrics');
    const spec = ws.write('monitored.json', {
      'boot-source': { kernel_image_path: PROBE, boot_args: 'console=ttyS0' },
      'machine-config': { vcpu_count: 1, mem_size_mib: 64 },
      logger: { log_path: logPath, level: 'Info' },
      metrics: { metrics_path: metricsPath },
    });
    const r = spawnSync(process.execPath, jailArgs(spec, jid('monitored'), ['--serial-out', 'none']), { encoding: 'utf8', timeout: 60_000 });
    expect(r.status).toBe(0);
    expect(fs.readFileSync(logPath, 'utf8')).toMatch(/Guest-boot-time = \d+ us/);
    const lines = fs.readFileSync(metricsPath, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { fc_run: { reason: string } });
    expect(lines.map((l) => l.fc_run.reason)).toEqual(['start', 'exit']);
    for (const f of [logPath, metricsPath]) expect([fs.statSync(f).uid, fs.statSync(f).mode & 0o777]).toEqual([UID, 0o600]);
  });

  test('refusals: a jail left behind, a bad id, a log file the jailed user cannot write', () => {
    const spec = ws.write('small.json', { 'boot-source': { kernel_image_path: PROBE }, 'machine-config': { vcpu_count: 1, mem_size_mib: 64 } });
    // spin2's jailer was killed by SIGKILL (above): its jail directory is left, and named with its removal.
    const again = spawnSync(process.execPath, jailArgs(spec, jid('spin2')), { encoding: 'utf8' });
    expect(again.status).toBe(1);
    expect(again.stderr).toContain(`${path.join(base, 'fc-run', jid('spin2'))} already exists, left behind by a run of microVM "${jid('spin2')}" that did not finish`);
    expect(again.stderr).toContain(`rm -rf ${path.join(base, 'fc-run', jid('spin2'))}`);
    const badId = spawnSync(process.execPath, jailArgs(spec, '../x'), { encoding: 'utf8' });
    expect(badId.status).toBe(1);
    expect(badId.stderr).toMatch(/option --id may contain only letters, digits and "-"/);
    const rootLog = ws.write('root.log', '');
    fs.chmodSync(rootLog, 0o600);
    const logged = ws.write('logged.json', { 'boot-source': { kernel_image_path: PROBE }, logger: { log_path: rootLog } });
    const withLog = spawnSync(process.execPath, jailArgs(logged, jid('logged')), { encoding: 'utf8' });
    expect(withLog.status).toBe(1);
    expect(withLog.stderr).toMatch(/the log file .*root\.log cannot be written by uid 1000/);
    expect(fs.existsSync(path.join(base, 'fc-run', jid('logged')))).toBe(false); // nothing left behind
  });
  describe("Firecracker's jailer form", () => {
    /** A jail root populated as Firecracker users do: the spec and its files copied in, paths as seen inside. */
    function populate(id: string, spec: object, files: Record<string, Buffer>): string {
      ids.push(id);
      const root = path.join(base, 'fc-run', id, 'root');
      fs.mkdirSync(root, { recursive: true, mode: 0o755 });
      for (const [name, content] of Object.entries(files)) {
        fs.mkdirSync(path.dirname(path.join(root, name)), { recursive: true });
        fs.writeFileSync(path.join(root, name), content);
      }
      fs.writeFileSync(path.join(root, 'vm.json'), JSON.stringify(spec));
      return root;
    }
    const jailer = (id: string, extra: string[], after: string[]) => [BIN, 'jail', '--id', id, '--exec-file', BIN, '--uid', String(UID), '--gid', String(GID), '--chroot-base-dir', base, ...extra, '--', ...after];
    const spinSpec = { 'boot-source': { kernel_image_path: '/spin.elf' }, 'machine-config': { vcpu_count: 1, mem_size_mib: 16 } };
    const spinFiles = () => ({ 'spin.elf': tinyGuestElf([0xeb, 0xfe]) });

    test('the VMM runs chrooted in the jail root the user populated; its PID is in <root>/fc-run.pid; the root is left as it was', async () => {
      // The log (a file the user put in the root) says when the VM runs: a SIGTERM before that
      // is a stop before the VM ran (exit 1, by design), after it a clean stop (exit 0).
      const id = jid('fcj-spin');
      const root = populate(id, spinSpec, { ...spinFiles(), 'fc-run.log': Buffer.alloc(0) });
      fs.chownSync(path.join(root, 'fc-run.log'), UID, GID);
      const before = fs.readdirSync(root).sort();
      const child = spawn(process.execPath, jailer(id, ['--cgroup', 'pids.max=64', '--resource-limit', 'no-file=512'], ['--config-file', '/vm.json', '--no-api', '--log-path', '/fc-run.log', '--level', 'Info']), { env: { ...process.env, NO_COLOR: '1' } });
      let err = '';
      child.stderr.on('data', (d) => (err += d));
      const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
      try {
        let pid: number | undefined;
        const until = Date.now() + 30_000;
        while (!(pid = processIn(root))) {
          if (Date.now() > until) throw new Error(`no process in the jail; stderr: ${err}`);
          await new Promise((r) => setTimeout(r, 50));
        }
        const pidFile = path.join(root, 'fc-run.pid');
        const pidUntil = Date.now() + 10_000;
        while (fs.readFileSync(pidFile, 'utf8').trim() !== String(pid) && Date.now() < pidUntil) await new Promise((r) => setTimeout(r, 50));
        expect(fs.readFileSync(pidFile, 'utf8').trim()).toBe(String(pid));
        const st = statusOf(pid);
        expect(st.Uid.split(/\s+/)).toEqual([String(UID), String(UID), String(UID), String(UID)]);
        expect(st.CapEff).toBe('0000000000000000');
        expect(st.NSpid.split(/\s+/)).toEqual([String(pid), '1']);
        expect(fs.readFileSync(`/proc/${pid}/cgroup`, 'utf8')).toMatch(new RegExp(`:pids:/fc-run/${id}$`, 'm'));
        expect(fs.readFileSync(`/proc/${pid}/limits`, 'utf8')).toMatch(/^Max open files\s+512\s+512/m);
        // Firecracker's jailer keeps the host's network namespace unless --netns.
        expect(fs.readlinkSync(`/proc/${pid}/ns/net`)).toBe(fs.readlinkSync('/proc/self/ns/net'));
        expect(fs.readdirSync(`/proc/${pid}/root/dev`).sort()).toEqual(['kvm', 'net', 'null', 'urandom']);
        // The jailer passed the id and start time, then the user's arguments.
        const argv = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
        expect(argv.slice(argv.indexOf('run'), argv.indexOf('run') + 3)).toEqual(['run', '--id', id]);
        expect(argv).toContain('--config-file');
        const runUntil = Date.now() + 30_000;
        while (!/running 1 vCPU/.test(fs.readFileSync(path.join(root, 'fc-run.log'), 'utf8'))) {
          if (Date.now() > runUntil) throw new Error(`the jailed VM never ran; stderr: ${err}; log: ${fs.readFileSync(path.join(root, 'fc-run.log'), 'utf8')}`);
          await new Promise((r) => setTimeout(r, 50));
        }
        child.kill('SIGTERM');
        const code = await exited;
        if (code !== 0) throw new Error(`the jailer ended with ${code}, not 0; stderr:\n${err}`);
      } finally {
        child.kill('SIGKILL');
      }
      expect(fs.readdirSync(root).sort()).toEqual(before);
      expect(fs.existsSync(`/sys/fs/cgroup/pids/fc-run/${id}`)).toBe(false);
    }, 60_000);

    test('the probe guest runs from the jail; its writes land in the drive file in the jail', () => {
      const id = jid('fcj-probe');
      const root = populate(
        id,
        { 'boot-source': { kernel_image_path: '/probe.elf', boot_args: 'console=ttyS0' }, 'machine-config': { vcpu_count: 1, mem_size_mib: 64 }, drives: [{ drive_id: 'disk0', path_on_host: 'disk.img', is_root_device: false, is_read_only: false }] },
        { 'probe.elf': fs.readFileSync(PROBE), 'disk.img': Buffer.alloc(64 * 1024) },
      );
      fs.chownSync(path.join(root, 'disk.img'), UID, GID);
      const r = spawnSync(process.execPath, jailer(id, [], ['--config-file', '/vm.json']), { encoding: 'utf8', timeout: 60_000, env: { ...process.env, NO_COLOR: '1' } });
      const out = r.stdout.replace(/\r/g, '');
      expect(out).toContain('# probe done: 0 failed');
      expect(r.status).toBe(0);
      expect(fs.readFileSync(path.join(root, 'disk.img')).toString('latin1', 512, 545)).toBe('written by the fc-run probe guest');
    });

    test('--daemonize returns once the VMM runs, in a session of its own with stdio on /dev/null; stopping it cleans up', async () => {
      const id = jid('fcj-daemon');
      const root = populate(id, spinSpec, spinFiles());
      const r = spawnSync(process.execPath, jailer(id, ['--daemonize'], ['--config-file', '/vm.json']), { encoding: 'utf8', timeout: 30_000 });
      expect(r.status).toBe(0);
      const pidFile = path.join(root, 'fc-run.pid');
      const pid = Number(fs.readFileSync(pidFile, 'utf8'));
      try {
        // The PID is known once the process is started; it enters the chroot a moment later.
        const until = Date.now() + 20_000;
        while (processIn(root) !== pid && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
        expect(processIn(root)).toBe(pid);
        const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
        const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
        expect(Number(fields[3])).toBe(pid); // its own session
        expect(Number(fields[4])).toBe(0); // no terminal
        for (const fd of [0, 1, 2]) expect(fs.readlinkSync(`/proc/${pid}/fd/${fd}`)).toBe('/dev/null');
      } finally {
        // At once, as a user's script would: the jailer returned only once fc-run handles SIGTERM
        // (as PID 1 of its namespace, a signal that came before its handler would be lost).
        process.kill(pid, 'SIGTERM');
      }
      // The background jailer removes what it made when the VM ends (a bound for a hang, not a speed:
      // in a nested, emulated KVM on a loaded host this took over 20 s).
      const until = Date.now() + 60_000;
      while (fs.existsSync(pidFile) && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
      expect(fs.existsSync(pidFile)).toBe(false);
    }, 120_000);

    test('a jailer killed by SIGKILL leaves its pid file and cgroup; the next start says how to remove them', async () => {
      const id = jid('fcj-killed');
      const root = populate(id, spinSpec, spinFiles());
      const args = jailer(id, ['--cgroup', 'pids.max=64'], ['--config-file', '/vm.json']);
      const child = spawn(process.execPath, args, { stdio: 'ignore' });
      const pid = await jailedPid(root, 30_000);
      expect(pid).toBeDefined();
      child.kill('SIGKILL');
      await exited(pid, 20_000);
      const again = spawnSync(process.execPath, args, { encoding: 'utf8' });
      expect(again.status).toBe(1);
      expect(again.stderr).toContain(`Remove them with:\n  rm ${path.join(root, 'fc-run.pid')}\n  rmdir /sys/fs/cgroup/pids/fc-run/${id}\nor use another --id`);
    }, 90_000);
  });
});
