import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { FcRunError } from '../errors';
import type { ResolvedSpec } from '../config/resolved';
import { closeOnExecAll } from '../kvm/libc';
import { cgroupProcesses, CgroupPlan, createCgroups, parseCgroupMounts, parseCgroupSetting, planCgroups } from './cgroups';
import { effectiveLimits, jailedRunArgs, jailLayout, prlimitFlags, ResourceLimit } from './jailer-flags';
import { FC_RUN_BIN, PACKAGE_ROOT } from '../package-root';

/**
 * The jailer: runs `fc-run run` for one microVM in a jail, as Firecracker's jailer runs
 * firecracker. Two forms share the machinery here:
 *
 * - fc-run's (`fc-run jail vm.json --id …`): the spec's files stay where they are on the host and
 *   are bind-mounted into a jail built for the run at `<base>/fc-run/<id>/root`, removed after it;
 * - Firecracker's (`fc-run jail --exec-file … --id … -- --config-file /vm.json`): the jail root
 *   `<base>/<exec file name>/<id>/root` holds what the user put there (hard links or copies),
 *   every path after `--` and in the spec is seen from inside it, and it is left as it was.
 *
 * As root, it
 *
 * 1. refuses a jail or cgroup left behind by a run that did not finish, naming the commands that
 *    remove it, and claims the id (a second jailer with it fails);
 * 2. puts the new process in cgroups (`--cgroup memory.limit_in_bytes=…`, cgroup v1 or v2);
 * 3. gives it new mount, PID and IPC namespaces (and the network namespace `--netns`), mounts the
 *    runtime it needs read-only (/usr for Node and its libraries, fc-run itself at /opt/fc-run),
 *    a /dev of its own on tmpfs, a fresh /proc, and chroots;
 * 4. drops to `--uid`/`--gid` with no supplementary groups, no capabilities and no_new_privs;
 * 5. execs Node running `fc-run run` there, which installs its seccomp filter before the guest
 *    runs; its PID goes to `<root>/<exec file name>.pid`, as Firecracker's jailer writes it.
 *
 * The namespace, mount and privilege steps use util-linux (unshare, nsenter, mount, chroot,
 * setpriv, prlimit), which every Debian system has.
 */

export interface JailOptions {
  id: string;
  uid: number;
  gid: number;
  baseDir: string;
  netns?: string;
  /** "file=value" settings, e.g. "memory.limit_in_bytes=268435456" or "pids.max=64". */
  cgroups: string[];
  /** Extra arguments for the jailed `fc-run run` (e.g. --serial-out none). */
  runArgs: string[];
}

/** Firecracker's jailer form: the jail root holds the VM's files; paths are seen from inside it. */
export interface JailerOptions {
  id: string;
  uid: number;
  gid: number;
  baseDir: string;
  netns?: string;
  /** fc-run itself, or a link to it: its name names the jail directory and the parent cgroup. */
  execFile: string;
  cgroups: string[];
  cgroupVersion: 1 | 2;
  /** Default: the exec file's name. */
  parentCgroup?: string;
  resourceLimits: ResourceLimit[];
  /** The arguments after `--`, for the jailed `fc-run run`. */
  runArgs: string[];
  /** CLOCK_MONOTONIC when the jailer started, passed on as --start-time-us. */
  startTimeUs: bigint;
}

export interface PreparedJail {
  root: string;
  /** Host path of the vsock socket, when the VM has one (fc-run's form). */
  vsockHostPath?: string;
  cgroupDirs: string[];
  /** `<root>/<exec file name>.pid`, claimed by this jailer. */
  pidFile: string;
  /** The command that enters the jail (argv). */
  command: string[];
  /** Removes what this jailer made (cgroups; fc-run's form: the jail; Firecracker's: the pid file and mount points). */
  cleanup(): void;
}

const ID = /^[A-Za-z0-9-]{1,64}$/;
/** The fc-run the jail runs: this one, mounted read-only at /opt/fc-run. */
export { FC_RUN_BIN };
/** Where the pid of the jailed fc-run comes back from the jail (the lifeline socket). */
const LIFELINE_FD = 3;

function fail(code: string, message: string): never {
  throw new FcRunError(code, message);
}

/** A path as a shell word: bare when nothing in it needs quoting. */
export function shellWord(s: string): string {
  return /^[A-Za-z0-9_./@%+=:,-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

/** A directory of the jail's path that only root may change: no symlink, root-owned, not group/world-writable. */
function checkTrusted(dir: string): void {
  const st = fs.lstatSync(dir);
  if (st.isSymbolicLink() || !st.isDirectory()) fail('jail-base', `${dir} must be a directory, not a link`);
  if (st.uid !== 0 || (st.mode & 0o022) !== 0) fail('jail-base', `${dir} must be owned by root and writable by root only (it holds jails): chown root:root ${shellWord(dir)} && chmod go-w ${shellWord(dir)}`);
  // The jailer works by path as root (mounts, mknod, chown): a directory above the jail that
  // another user can write lets that user swap what the path leads to between check and use.
  // Sticky directories such as /tmp are fine: nobody else can rename what root made there.
  for (let up = path.dirname(fs.realpathSync(dir)); ; up = path.dirname(up)) {
    const a = fs.statSync(up);
    if (a.uid !== 0 || ((a.mode & 0o022) !== 0 && (a.mode & 0o1000) === 0)) {
      fail('jail-base', `${up}, above the jails in ${dir}, must be owned by root and writable by root only (or sticky, like /tmp): another user could otherwise replace the jail's path while the jailer works as root`);
    }
    if (up === '/') break;
  }
}

/** The real file behind a spec path: a regular file or a block device. */
function realFile(p: string): string {
  const real = fs.realpathSync(p);
  const st = fs.statSync(real);
  if (!st.isFile() && !st.isBlockDevice()) fail('jail-file', `${p} is not a regular file or a block device`);
  return real;
}

/**
 * A log or metrics file for the jailed user: created for it (mode 0600) when missing; an existing
 * one must be a regular file or a named pipe that user can write.
 */
function outputFile(p: string, what: string, owner: { uid: number; gid: number }): string {
  if (!fs.existsSync(p)) {
    fs.writeFileSync(p, '', { mode: 0o600, flag: 'wx' });
    fs.chownSync(p, owner.uid, owner.gid);
    return p;
  }
  const real = fs.realpathSync(p);
  const st = fs.statSync(real);
  if (!st.isFile() && !st.isFIFO()) fail('jail-file', `${what} ${p} must be a regular file or a named pipe`);
  const writable = (st.uid === owner.uid && st.mode & 0o200) || (st.gid === owner.gid && st.mode & 0o020) || st.mode & 0o002;
  if (!writable) fail('jail-file', `${what} ${p} cannot be written by uid ${owner.uid}: give it to that user, or remove it and fc-run jail creates it`);
  return real;
}

/** A device's numbers, from the host's node, or the fixed ones Linux gives it (KVM 10:232, TUN 10:200). */
function devNumbers(host: string, fixed: { major: number; minor: number }): { major: number; minor: number } {
  let rdev: number;
  try {
    rdev = fs.statSync(host).rdev;
  } catch {
    return fixed;
  }
  return { major: Math.floor(rdev / 256) & 0xfff, minor: (rdev & 0xff) | ((rdev >> 12) & 0xfff00) };
}

/** Root, an unprivileged user, a valid id, a runtime the jail can mount: checked before anything is made. */
function checkCommon(opts: { id: string; uid: number; gid: number; netns?: string }): void {
  if (process.getuid?.() !== 0) fail('jail-root', 'fc-run jail must run as root (it creates device nodes, cgroups and namespaces, then drops to --uid/--gid)');
  if (!ID.test(opts.id)) fail('jail-id', `--id ${JSON.stringify(opts.id)}: use 1 to 64 letters, digits or dashes`);
  for (const [name, v] of [['uid', opts.uid], ['gid', opts.gid]] as const) {
    if (!Number.isInteger(v) || v <= 0 || v > 0xfffffffe) fail('jail-user', `--${name} ${v}: give the unprivileged user the microVM runs as (not 0)`);
  }
  const node = process.execPath;
  if (!node.startsWith('/usr/')) fail('jail-runtime', `Node is at ${node}; the jail mounts /usr, so Node must live under /usr`);
  for (const top of ['lib', 'lib64', 'bin', 'sbin']) {
    const host = `/${top}`;
    if (fs.existsSync(host) && !fs.lstatSync(host).isSymbolicLink()) fail('jail-runtime', `${host} is not a link into /usr: this jailer supports merged-/usr hosts only`);
  }
  if (opts.netns !== undefined && !fs.existsSync(opts.netns)) fail('jail-netns', `--netns ${opts.netns} does not exist (create one with: ip netns add NAME, then --netns /var/run/netns/NAME)`);
}

/** The cgroup plan for the settings (and, for cgroup v2 without settings, the existing parent to join). */
function cgroupPlanFor(settings: string[], id: string, parent: string, version: 1 | 2 | 'auto', joinParent: boolean): CgroupPlan {
  const mounts = parseCgroupMounts(fs.readFileSync('/proc/mounts', 'utf8'));
  let v2Controllers = new Set<string>();
  if (mounts.v2 !== undefined) {
    try {
      v2Controllers = new Set(fs.readFileSync(path.join(mounts.v2, 'cgroup.controllers'), 'utf8').split(/\s+/).filter(Boolean));
    } catch {
      // no controllers to offer
    }
  }
  const parsed = settings.map((s) => {
    const r = parseCgroupSetting(s);
    if (typeof r === 'string') fail('jail-cgroup', `--cgroup ${s}: ${r}`);
    return r;
  });
  const plan = planCgroups(parsed, { id, parent, version, mounts, v2Controllers });
  // Firecracker's jailer with cgroup v2 and no --cgroup moves the process into the parent
  // cgroup when it exists (one set up beforehand), and into none otherwise.
  if (joinParent && parsed.length === 0 && version === 2) {
    if (mounts.v2 === undefined) fail('jail-cgroup', '--cgroup-version 2: no cgroup v2 hierarchy on this host');
    const dir = path.join(mounts.v2, parent);
    if (fs.existsSync(dir)) plan.join.push(dir);
  }
  return plan;
}

function readPid(pidFile: string): number | undefined {
  try {
    const pid = Number(fs.readFileSync(pidFile, 'utf8').trim());
    return Number.isInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

/** A live process of fc-run's (a jailer or a jailed VMM): not just any process that reused the PID. */
function isFcRun(pid: number): boolean {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('fc-run');
  } catch {
    return false;
  }
}

/**
 * Refuses to start over a jail that is in use, or one left behind by a run that did not finish
 * (a jailer killed by SIGKILL cannot clean up), naming exactly what removes the leftovers.
 */
function refuseLeftovers(id: string, claim: { path: string; isDir: boolean }, pidFile: string, plan: CgroupPlan): void {
  const claimed = fs.existsSync(claim.path);
  const cgroups = plan.create.map((c) => c.dir).filter((d) => fs.existsSync(d));
  if (!claimed && cgroups.length === 0) return;
  // fc-run's own leftovers only: a directory it did not make (no root/ in it) is the user's.
  if (claimed && claim.isDir && !fs.existsSync(path.join(claim.path, 'root'))) {
    fail('jail-exists', `${claim.path} exists, and fc-run jail did not make it (it has no root/); use another --id, or check what it is before you remove it`);
  }
  const pid = readPid(pidFile);
  const running = pid !== undefined && isFcRun(pid) ? pid : cgroups.flatMap(cgroupProcesses)[0];
  if (running !== undefined) {
    fail('jail-busy', `microVM "${id}" is running (pid ${running}): ${claimed ? claim.path : cgroups[0]} is in use; stop it first, or use another --id`);
  }
  const left = [...(claimed ? [claim.path] : []), ...cgroups];
  const commands = [...(claimed ? [`${claim.isDir ? 'rm -rf' : 'rm'} ${shellWord(claim.path)}`] : []), ...cgroups.map((d) => `rmdir ${shellWord(d)}`)];
  fail(
    'jail-exists',
    `${left.join(' and ')} already exist${left.length === 1 ? 's' : ''}, left behind by a run of microVM "${id}" that did not finish (a jailer killed by SIGKILL cannot clean up); nothing runs there now. ` +
      `Remove ${left.length === 1 ? 'it' : 'them'} with:\n  ${commands.join('\n  ')}\nor use another --id`,
  );
}

/** Creates the pid file only if it is not there, without following a link: the claim on the id. */
function claimPidFile(pidFile: string): void {
  const fd = fs.openSync(pidFile, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW, 0o644);
  try {
    // Until the jailed fc-run's PID is known, the jailer's own: a concurrent start sees a live owner.
    fs.writeSync(fd, `${process.pid}\n`);
  } finally {
    fs.closeSync(fd);
  }
}

function removeCgroups(dirs: string[]): void {
  for (const d of [...dirs].reverse()) {
    try {
      fs.rmdirSync(d);
    } catch {
      // still in use or already gone
    }
  }
}

interface Enter {
  root: string;
  uid: number;
  gid: number;
  netns?: string;
  /** Its own, empty network namespace (rather than the host's or --netns). */
  ownNet: boolean;
  tun: boolean;
  binds: { src: string; rel: string; readOnly: boolean }[];
  cgroupJoin: string[];
  limits: ResourceLimit[];
  /** The jailed fc-run's arguments (after /opt/fc-run/bin/fc-run). */
  args: string[];
}

/**
 * The command that enters the jail: joins the cgroups and the network namespace, then in new
 * mount, PID and IPC namespaces (still root) mounts the read-only runtime, the binds, a /dev of
 * its own on tmpfs and /proc; reports the PID the jailed fc-run will have (as the host sees it)
 * on the lifeline; then a new session (no controlling terminal to type into), chroot, and the
 * unprivileged user.
 */
function enterCommand(e: Enter): string[] {
  const q = shellWord;
  const R = (rel: string) => q(path.join(e.root, rel));
  const bind = (src: string, rel: string, readOnly: boolean) => [`mount --bind ${q(src)} ${R(rel)}`, ...(readOnly ? [`mount -o remount,bind,ro ${R(rel)}`] : [])];
  const kvm = devNumbers('/dev/kvm', { major: 10, minor: 232 });
  const tun = e.tun ? devNumbers('/dev/net/tun', { major: 10, minor: 200 }) : undefined;
  const owner = `${e.uid}:${e.gid}`;
  const limits = e.limits.length > 0 ? `/usr/bin/prlimit ${prlimitFlags(e.limits).join(' ')} -- ` : '';
  const inner = [
    'set -e',
    ...bind('/usr', 'usr', true),
    ...bind(PACKAGE_ROOT, 'opt/fc-run', true),
    ...bind('/etc/ld.so.cache', 'etc/ld.so.cache', true),
    ...e.binds.flatMap((b) => bind(b.src, b.rel, b.readOnly)),
    `mount -t tmpfs -o nosuid,noexec,mode=755,size=64k tmpfs ${R('dev')}`,
    `mknod -m 600 ${R('dev/kvm')} c ${kvm.major} ${kvm.minor}`,
    `chown ${owner} ${R('dev/kvm')}`,
    ...(tun ? [`mkdir ${R('dev/net')}`, `mknod -m 600 ${R('dev/net/tun')} c ${tun.major} ${tun.minor}`, `chown ${owner} ${R('dev/net/tun')}`] : []),
    `mknod -m 666 ${R('dev/null')} c 1 3`,
    `mknod -m 666 ${R('dev/urandom')} c 1 9`,
    `mount -o remount,ro ${R('dev')}`,
    `mount -t proc -o nosuid,nodev,noexec proc ${R('proc')}`,
    // /proc here is still the host's: its "self" is this shell's PID on the host, which the exec
    // chain below keeps for the jailed fc-run.
    'read fcpid rest < /proc/self/stat',
    `echo "$fcpid" >&${LIFELINE_FD}`,
    `exec setsid ${limits}chroot ${q(e.root)} /usr/bin/setpriv --reuid=${e.uid} --regid=${e.gid} --clear-groups --no-new-privs --inh-caps=-all --bounding-set=-all -- ` +
      `/usr/bin/env -i PATH=/usr/bin HOME=/tmp UV_USE_IO_URING=0 NO_COLOR=${q(process.env.NO_COLOR ?? '')} FC_RUN_VCPU_THREADS=${q(process.env.FC_RUN_VCPU_THREADS ?? '')} FC_RUN_SECCOMP_LOG=${q(process.env.FC_RUN_SECCOMP_LOG ?? '')} FC_RUN_HOT_EXITS=${q(process.env.FC_RUN_HOT_EXITS ?? '')} ${q(process.execPath)} /opt/fc-run/bin/fc-run ${e.args.map(q).join(' ')}`,
  ].join('\n');
  const enter = ['unshare', '--mount', '--propagation', 'private', '--pid', '--ipc', ...(e.ownNet ? ['--net'] : []), '--fork', '--kill-child=SIGTERM', '--', 'sh', '-c', inner];
  const joinCgroups = e.cgroupJoin.map((d) => `echo $$ > ${q(path.join(d, 'cgroup.procs'))}`).join('\n');
  const outer = ['set -e', joinCgroups, `exec ${e.netns ? `nsenter --net=${q(e.netns)} -- ` : ''}${enter.map(q).join(' ')}`].join('\n');
  return ['sh', '-c', outer];
}

/** fc-run's form: builds the jail (directories, spec, cgroups) and the command that enters it; on failure, nothing is left. */
export function prepareJail(spec: ResolvedSpec, opts: JailOptions): PreparedJail {
  checkCommon(opts);
  // The files the VM uses, resolved before anything is created.
  const files: { name: string; src: string; readOnly: boolean }[] = [{ name: 'kernel', src: realFile(spec.bootSource.kernel_image_path), readOnly: true }];
  if (spec.bootSource.initrd_path) files.push({ name: 'initrd', src: realFile(spec.bootSource.initrd_path), readOnly: true });
  spec.drives.forEach((d, i) => files.push({ name: `drive${i}`, src: realFile(d.path_on_host!), readOnly: d.is_read_only }));

  const layout = jailLayout(opts.baseDir, 'fc-run', opts.id);
  const base = path.resolve(opts.baseDir);
  const plan = cgroupPlanFor(opts.cgroups, opts.id, 'fc-run', 'auto', false);
  fs.mkdirSync(base, { recursive: true, mode: 0o755 });
  checkTrusted(base);
  const top = path.dirname(layout.jailDir);
  if (!fs.existsSync(top)) fs.mkdirSync(top, { mode: 0o700 });
  checkTrusted(top);
  refuseLeftovers(opts.id, { path: layout.jailDir, isDir: true }, layout.pidFile, plan);
  try {
    fs.mkdirSync(layout.jailDir, { mode: 0o700 }); // claims the id: a second jailer with it fails here
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') refuseLeftovers(opts.id, { path: layout.jailDir, isDir: true }, layout.pidFile, plan);
    throw err;
  }
  const cgroupDirs: string[] = [];
  const cleanup = () => {
    removeCgroups(cgroupDirs);
    // Nothing of the user's is in there: the bind mounts went with the jail's mount namespace.
    fs.rmSync(layout.jailDir, { recursive: true, force: true });
  };
  try {
    const root = layout.root;
    const owner = { uid: opts.uid, gid: opts.gid };
    fs.mkdirSync(root, { mode: 0o755 });
    claimPidFile(layout.pidFile);
    for (const d of ['files', 'dev', 'proc', 'usr', 'etc', 'opt/fc-run', 'run', 'tmp']) fs.mkdirSync(path.join(root, d), { recursive: true, mode: 0o755 });
    fs.chownSync(path.join(root, 'run'), owner.uid, owner.gid);
    fs.chmodSync(path.join(root, 'run'), 0o700);
    fs.chmodSync(path.join(root, 'tmp'), 0o1777);
    for (const t of ['lib', 'lib64', 'bin', 'sbin']) if (fs.existsSync(`/${t}`)) fs.symlinkSync(fs.readlinkSync(`/${t}`), path.join(root, t));
    // The log and metrics files (or pipes) go in too, written by the jailed user.
    if (spec.logger?.log_path) files.push({ name: 'log', src: outputFile(spec.logger.log_path, 'the log file', owner), readOnly: false });
    if (spec.metrics) files.push({ name: 'metrics', src: outputFile(spec.metrics.metrics_path, 'the metrics file', owner), readOnly: false });
    // Mount points: each file of the VM is bind-mounted onto one (read-only unless a writable drive).
    fs.writeFileSync(path.join(root, 'etc', 'ld.so.cache'), '');
    for (const f of files) fs.writeFileSync(path.join(root, 'files', f.name), '', { mode: 0o600 });
    const vsockHostPath = writeInsideSpec(spec, root, owner);
    createCgroups(plan, cgroupDirs);
    const command = enterCommand({
      root,
      uid: opts.uid,
      gid: opts.gid,
      netns: opts.netns,
      // Its own (empty) network namespace unless it needs the host's TAP devices or was given one.
      ownNet: !opts.netns && spec.networkInterfaces.length === 0,
      tun: spec.networkInterfaces.length > 0,
      binds: files.map((f) => ({ src: f.src, rel: `files/${f.name}`, readOnly: f.readOnly })),
      cgroupJoin: [...cgroupDirs, ...plan.join],
      limits: [],
      args: ['run', '/vm.json', '--exit-with-fd', String(LIFELINE_FD), ...opts.runArgs],
    });
    return { root, vsockHostPath, cgroupDirs, pidFile: layout.pidFile, command, cleanup };
  } catch (err) {
    cleanup();
    throw err;
  }
}

/** The spec as the jailed fc-run sees it, readable by the jailed user only (MMDS contents may be secret); returns the vsock's host path. */
function writeInsideSpec(spec: ResolvedSpec, root: string, owner: { uid: number; gid: number }): string | undefined {
  const s = JSON.parse(JSON.stringify(spec.raw)) as Record<string, any>;
  s['boot-source'] = { ...s['boot-source'], kernel_image_path: '/files/kernel' };
  if (spec.bootSource.initrd_path) s['boot-source'].initrd_path = '/files/initrd';
  s.drives = spec.drives.map((_, i) => ({ ...s.drives[i], path_on_host: `/files/drive${i}` }));
  let vsockHostPath: string | undefined;
  if (spec.vsock) {
    s.vsock = { ...s.vsock, uds_path: '/run/vsock.sock' };
    vsockHostPath = path.join(root, 'run', 'vsock.sock');
  }
  if (spec.mmds) s.mmds = spec.mmds.data;
  if (spec.logger?.log_path) s.logger = { ...s.logger, log_path: '/files/log' };
  if (spec.metrics) s.metrics = { ...s.metrics, metrics_path: '/files/metrics' };
  delete s.$schema;
  delete s['cpu-config'];
  // The template as validated on the host (not the file read again: it may have changed since, and
  // keys Firecracker ignores were dropped with a warning the jailed run need not repeat).
  if (spec.cpuConfig?.template) s['cpu-config'] = spec.cpuConfig.template;
  const specPath = path.join(root, 'vm.json');
  fs.writeFileSync(specPath, JSON.stringify(s, null, 2), { mode: 0o400 });
  fs.chownSync(specPath, owner.uid, owner.gid);
  return vsockHostPath;
}

/** The exec file must be this fc-run (or a link to it): that is what the jail runs. */
export function checkExecFile(execFile: string): void {
  let st: fs.Stats;
  try {
    st = fs.statSync(execFile);
  } catch (err) {
    return fail('jail-exec-file', `--exec-file ${execFile}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (err as NodeJS.ErrnoException).code}`);
  }
  if (!st.isFile()) fail('jail-exec-file', `--exec-file ${execFile} is not a file`);
  const self = fs.statSync(FC_RUN_BIN);
  if (st.dev !== self.dev || st.ino !== self.ino) {
    fail(
      'jail-exec-file',
      `--exec-file ${execFile} is not fc-run: fc-run jail runs fc-run (${FC_RUN_BIN}) in the jail, not another program; ` +
        `give its path, or a link to it named as your scripts expect (e.g. ln -s ${FC_RUN_BIN} /usr/local/bin/firecracker)`,
    );
  }
}

/** Firecracker's form: root, the runtime, the id and users, and the exec file, checked before any file is read. */
export function checkJailerHost(opts: JailerOptions): void {
  checkCommon(opts);
  checkExecFile(opts.execFile);
}

/** What the jail needs at its root in Firecracker's form, made when missing and removed afterwards. */
function jailerEntries(): { rel: string; kind: 'dir' | 'file' | 'link'; target?: string }[] {
  const links = ['lib', 'lib64', 'bin', 'sbin'].filter((t) => fs.existsSync(`/${t}`)).map((t) => ({ rel: t, kind: 'link' as const, target: fs.readlinkSync(`/${t}`) }));
  return [
    ...['dev', 'proc', 'usr', 'etc', 'opt', 'opt/fc-run', 'run', 'tmp'].map((rel) => ({ rel, kind: 'dir' as const })),
    { rel: 'etc/ld.so.cache', kind: 'file' as const },
    ...links,
  ];
}

/**
 * Firecracker's form: the jail root `<base>/<exec file name>/<id>/root` holds the VM's files (put
 * there beforehand), and the spec and every path after `--` are seen from inside it. Makes what
 * the jail needs besides (mount points, cgroups) and the command that enters it; the paths were
 * checked by the caller (see checkInsideSpec).
 */
export function prepareJailerJail(opts: JailerOptions): PreparedJail {
  checkJailerHost(opts);
  const execName = path.basename(opts.execFile);
  const layout = jailLayout(opts.baseDir, execName, opts.id);
  const plan = cgroupPlanFor(opts.cgroups, opts.id, opts.parentCgroup ?? execName, opts.cgroupVersion, true);
  const base = path.resolve(opts.baseDir);
  fs.mkdirSync(base, { recursive: true, mode: 0o755 });
  checkTrusted(base);
  for (const d of [path.dirname(layout.jailDir), layout.jailDir]) {
    if (!fs.existsSync(d)) fs.mkdirSync(d, { mode: 0o700 });
    checkTrusted(d);
  }
  if (!fs.existsSync(layout.root)) fs.mkdirSync(layout.root, { mode: 0o755 });
  checkTrusted(layout.root);
  const rootMode = fs.statSync(layout.root).mode;
  if ((rootMode & 0o005) !== 0o005) fail('jail-base', `the jail root ${layout.root} must be readable and searchable by the jailed user: chmod 755 ${shellWord(layout.root)}`);
  refuseLeftovers(opts.id, { path: layout.pidFile, isDir: false }, layout.pidFile, plan);
  try {
    claimPidFile(layout.pidFile);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') refuseLeftovers(opts.id, { path: layout.pidFile, isDir: false }, layout.pidFile, plan);
    throw err;
  }
  const made: { host: string; kind: 'dir' | 'file' | 'link' }[] = [];
  const cgroupDirs: string[] = [];
  const cleanup = () => {
    removeCgroups(cgroupDirs);
    fs.rmSync(layout.pidFile, { force: true });
    // The jail root is left as the user made it: only what this jailer added goes, if still empty.
    for (const m of [...made].reverse()) {
      try {
        if (m.kind === 'dir') fs.rmdirSync(m.host);
        else fs.unlinkSync(m.host);
      } catch {
        // not empty, or gone
      }
    }
  };
  try {
    for (const e of jailerEntries()) {
      const host = path.join(layout.root, e.rel);
      let st: fs.Stats | undefined;
      try {
        st = fs.lstatSync(host);
      } catch {
        st = undefined;
      }
      if (!st) {
        if (e.kind === 'dir') fs.mkdirSync(host, { mode: 0o755 });
        else if (e.kind === 'file') fs.writeFileSync(host, '', { flag: 'wx', mode: 0o644 });
        else fs.symlinkSync(e.target!, host);
        made.push({ host, kind: e.kind });
        if (e.rel === 'tmp') fs.chmodSync(host, 0o1777);
      } else {
        const ok = e.kind === 'dir' ? st.isDirectory() : e.kind === 'file' ? st.isFile() : st.isSymbolicLink() && fs.readlinkSync(host) === e.target;
        const want = e.kind === 'dir' ? 'a directory' : e.kind === 'file' ? 'a regular file' : `a link to ${e.target}`;
        if (!ok) fail('jail-root', `${host} is in the way: the jail needs ${want} there (it mounts the host's runtime); move it elsewhere in the jail`);
        if (e.kind === 'dir' && e.rel !== 'tmp' && st.uid !== 0) fail('jail-root', `${host} must be root's (the jailer mounts on it): chown root:root ${shellWord(host)}`);
      }
      if (e.rel === 'run') {
        // The jailed user's: Firecracker's default API socket, /run/firecracker.socket, goes here.
        fs.chownSync(host, opts.uid, opts.gid);
        fs.chmodSync(host, 0o700);
      }
    }
    createCgroups(plan, cgroupDirs);
    const command = enterCommand({
      root: layout.root,
      uid: opts.uid,
      gid: opts.gid,
      netns: opts.netns,
      ownNet: false, // as Firecracker's jailer: the host's network namespace unless --netns
      tun: true,
      binds: [],
      cgroupJoin: [...cgroupDirs, ...plan.join],
      limits: effectiveLimits(opts.resourceLimits),
      args: jailedRunArgs(opts.id, opts.startTimeUs, LIFELINE_FD, opts.runArgs),
    });
    return { root: layout.root, cgroupDirs, pidFile: layout.pidFile, command, cleanup };
  } catch (err) {
    cleanup();
    throw err;
  }
}

/** How long the jailer waits for the jailed process's "ready" after its PID before reporting it started anyway. */
const READY_FALLBACK_MS = 30_000;

export interface RunJailOptions {
  /** The jailed fc-run's stdio: this process's (default), or /dev/null (daemonized). */
  stdio?: 'inherit' | 'ignore';
  /** Where the jailer's own messages go (default stderr). */
  err?: { write(text: string): unknown };
  /** Called once the jailed fc-run's PID is known (and written to the pid file) and it handles SIGTERM. */
  onStarted?: (pid: number) => void;
}

/**
 * Runs the jailed fc-run; resolves to its exit code (0, 1 or 2 as fc-run gives them, 128 + n for
 * a signal, 1 when setting up the jail failed). What the jailer made is removed when it ends.
 */
export function runJail(jail: PreparedJail, opts: RunJailOptions = {}): Promise<number> {
  const err = opts.err ?? process.stderr;
  // Nothing this process was given leaks into the jail (a directory fd would lead out of it).
  closeOnExecAll();
  return new Promise((resolve) => {
    // fd 3 of the jailed fc-run is one end of a socket pair whose other end only this process
    // holds: if the jailer dies, even by SIGKILL, the jailed fc-run reads end of stream and stops
    // its VM (a parent-death signal cannot do this: changing user clears it, and PID 1 of a
    // namespace does not always get it). Before it starts, its PID comes back on it.
    const io = opts.stdio ?? 'inherit';
    const child = spawn(jail.command[0], jail.command.slice(1), { stdio: [io, io, io, 'pipe'] });
    const lifeline = child.stdio[LIFELINE_FD] as import('node:net').Socket | null;
    lifeline?.on('error', () => undefined);
    // The jail's shell sends "<pid>\n" before it starts fc-run, and fc-run "ready\n" once its
    // signal handlers are in place (bin/fc-run): only then is the VM reported started, so that a
    // SIGTERM sent to it from then on cannot be lost (PID 1 of a namespace ignores a signal that
    // comes before its handler exists).
    let reported = '';
    let pid: number | undefined;
    let announced = false;
    let fallback: NodeJS.Timeout | undefined;
    lifeline?.on('data', (chunk: Buffer) => {
      if (announced || reported.length > 64) return;
      reported += chunk.toString('latin1');
      const m = /^(\d+)\n/.exec(reported);
      if (!m) return;
      if (pid === undefined) {
        pid = Number(m[1]);
        try {
          const fd = fs.openSync(jail.pidFile, fs.constants.O_WRONLY | fs.constants.O_TRUNC | fs.constants.O_NOFOLLOW);
          fs.writeSync(fd, `${pid}\n`);
          fs.closeSync(fd);
        } catch {
          // the pid file is a convenience; the run goes on
        }
      }
      const announce = () => {
        if (announced || pid === undefined) return;
        announced = true;
        opts.onStarted?.(pid);
      };
      if (reported.slice(m[0].length).startsWith('ready\n')) announce();
      // An --exec-file that never says ready (not fc-run's bin/fc-run) is reported started anyway.
      else if (!fallback) fallback = setTimeout(announce, READY_FALLBACK_MS).unref();
    });
    // unshare (our child) ignores SIGTERM and SIGINT while it waits: the signal goes to the jailed
    // fc-run itself, its child (PID 1 of the new namespace), and the lifeline closes too, for a
    // fc-run still starting.
    const forward = (sig: NodeJS.Signals) => {
      let pids: number[] = [];
      try {
        pids = fs.readFileSync(`/proc/${child.pid}/task/${child.pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
      } catch {
        // not there yet, or gone
      }
      for (const pid of pids) {
        try {
          process.kill(pid, sig);
        } catch {
          // already gone
        }
      }
      lifeline?.destroy();
    };
    process.on('SIGTERM', forward);
    process.on('SIGINT', forward);
    const done = (code: number) => {
      if (fallback) clearTimeout(fallback);
      process.off('SIGTERM', forward);
      process.off('SIGINT', forward);
      lifeline?.destroy();
      // What this jailer made goes with the VM (a killed jailer leaves it; the next start says so).
      jail.cleanup();
      resolve(code);
    };
    child.on('error', (e) => {
      err.write(`fc-run: cannot start the jail: ${e.message}\n`);
      done(1);
    });
    child.on('exit', (code, signal) => {
      if (signal === 'SIGSYS' || code === 128 + os.constants.signals.SIGSYS) {
        // Its SIGSYS handler has written the call's name and number to the same stderr just before.
        err.write('fc-run: the jailed fc-run was killed by SIGSYS (seccomp): it made a system call its seccomp filter does not allow (the line above names it; see "seccomp" in the README)\n');
      }
      if (signal) return done(128 + os.constants.signals[signal]);
      if (code !== null && code > 2 && code < 128) {
        err.write(`fc-run: setting up the jail failed (exit ${code})\n`);
        return done(1);
      }
      done(code ?? 1);
    });
  });
}
