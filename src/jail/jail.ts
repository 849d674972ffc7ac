import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { FcRunError } from '../errors';
import type { ResolvedSpec } from '../config/resolved';
import { closeOnExecAll } from '../kvm/libc';

/**
 * The jailer: runs `fc-run run` for one microVM in a jail, as Firecracker's jailer runs
 * firecracker. As root, it
 *
 * 1. builds a chroot at `<base>/fc-run/<id>/root` holding the VM's files (hard links to the
 *    kernel, initrd and drives, so the guest's writes land in the originals), its own device
 *    nodes (/dev/kvm, /dev/net/tun, /dev/null, /dev/urandom, owned by the jailed user) and a copy
 *    of the spec with the paths as they are inside;
 * 2. puts the new process in cgroups (`--cgroup memory.limit_in_bytes=…`, cgroup v1 or v2);
 * 3. gives it new mount and PID namespaces (and the network namespace `--netns`), mounts the
 *    runtime it needs read-only (/usr for Node and its libraries, fc-run itself at /opt/fc-run),
 *    a fresh /proc, and chroots;
 * 4. drops to `--uid`/`--gid` with no supplementary groups, no capabilities and no_new_privs;
 * 5. execs Node running `fc-run run /vm.json` there, which installs its seccomp filter before the
 *    guest runs.
 *
 * The namespace, mount and privilege steps use util-linux (unshare, nsenter, mount, chroot,
 * setpriv), which every Debian system has.
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

export interface PreparedJail {
  root: string;
  /** Host path of the vsock socket, when the VM has one. */
  vsockHostPath?: string;
  cgroupDirs: string[];
  /** The command that enters the jail (argv). */
  command: string[];
}

const ID = /^[A-Za-z0-9-]{1,64}$/;
const PACKAGE_ROOT = path.resolve(__dirname, '..', '..');

function fail(code: string, message: string): never {
  throw new FcRunError(code, message);
}

/** A directory of the jail's path that only root may change: no symlink, root-owned, not group/world-writable. */
function checkTrusted(dir: string): void {
  const st = fs.lstatSync(dir);
  if (st.isSymbolicLink() || !st.isDirectory()) fail('jail-base', `${dir} must be a directory, not a link`);
  if (st.uid !== 0 || (st.mode & 0o022) !== 0) fail('jail-base', `${dir} must be owned by root and writable by root only (it holds jails)`);
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

function devNumbers(host: string): { major: number; minor: number } {
  const rdev = fs.statSync(host).rdev;
  return { major: Math.floor(rdev / 256) & 0xfff, minor: (rdev & 0xff) | ((rdev >> 12) & 0xfff00) };
}

/** Where a cgroup setting lives: v1 (/sys/fs/cgroup/<controller>/…) or v2 (/sys/fs/cgroup/…). */
function cgroupFor(setting: string, id: string): { controller: string; dir: string; file: string; value: string; v2: boolean } {
  const m = /^([a-z_]+)\.([a-z_.]+)=(.*)$/.exec(setting);
  if (!m) fail('jail-cgroup', `--cgroup ${setting}: expected <controller>.<file>=<value>, e.g. memory.limit_in_bytes=268435456`);
  const [, controller, , value] = m;
  const file = setting.slice(0, setting.indexOf('='));
  if (fs.existsSync(path.join('/sys/fs/cgroup', controller, 'cgroup.procs'))) return { controller, dir: path.join('/sys/fs/cgroup', controller, 'fc-run', id), file, value, v2: false };
  if (fs.existsSync('/sys/fs/cgroup/cgroup.controllers')) return { controller, dir: path.join('/sys/fs/cgroup', 'fc-run', id), file, value, v2: true };
  return fail('jail-cgroup', `--cgroup ${setting}: no cgroup controller "${controller}" on this host`);
}

function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** Builds the jail (directories, spec, cgroups) and the command that enters it; on failure, nothing is left. */
export function prepareJail(spec: ResolvedSpec, opts: JailOptions): PreparedJail {
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
  // The files the VM uses, resolved before anything is created.
  const files: { name: string; src: string; readOnly: boolean }[] = [{ name: 'kernel', src: realFile(spec.bootSource.kernel_image_path), readOnly: true }];
  if (spec.bootSource.initrd_path) files.push({ name: 'initrd', src: realFile(spec.bootSource.initrd_path), readOnly: true });
  spec.drives.forEach((d, i) => files.push({ name: `drive${i}`, src: realFile(d.path_on_host!), readOnly: d.is_read_only }));

  const base = path.resolve(opts.baseDir);
  fs.mkdirSync(base, { recursive: true, mode: 0o755 });
  checkTrusted(base);
  const top = path.join(base, 'fc-run');
  if (!fs.existsSync(top)) fs.mkdirSync(top, { mode: 0o700 });
  checkTrusted(top);
  const jailDir = path.join(top, opts.id);
  try {
    fs.mkdirSync(jailDir, { mode: 0o700 }); // claims the id: a second jailer with it fails here
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') fail('jail-exists', `${jailDir} already exists: remove it, or use another --id`);
    throw err;
  }
  const cgroupDirs: string[] = [];
  try {
    return build(spec, opts, jailDir, files, cgroupDirs, node);
  } catch (err) {
    for (const d of cgroupDirs.reverse()) spawnSync('rmdir', [d]);
    fs.rmSync(jailDir, { recursive: true, force: true });
    throw err;
  }
}

function build(spec: ResolvedSpec, opts: JailOptions, jailDir: string, files: { name: string; src: string; readOnly: boolean }[], cgroupDirs: string[], node: string): PreparedJail {
  const root = path.join(jailDir, 'root');
  const owner = { uid: opts.uid, gid: opts.gid };
  fs.mkdirSync(root, { mode: 0o755 });
  for (const d of ['files', 'dev', 'proc', 'usr', 'etc', 'opt/fc-run', 'run', 'tmp']) fs.mkdirSync(path.join(root, d), { recursive: true, mode: 0o755 });
  fs.chownSync(path.join(root, 'run'), owner.uid, owner.gid);
  fs.chmodSync(path.join(root, 'run'), 0o700);
  fs.chmodSync(path.join(root, 'tmp'), 0o1777);
  for (const top of ['lib', 'lib64', 'bin', 'sbin']) if (fs.existsSync(`/${top}`)) fs.symlinkSync(fs.readlinkSync(`/${top}`), path.join(root, top));
  // The log and metrics files (or pipes) go in too, written by the jailed user.
  if (spec.logger?.log_path) files.push({ name: 'log', src: outputFile(spec.logger.log_path, 'the log file', owner), readOnly: false });
  if (spec.metrics) files.push({ name: 'metrics', src: outputFile(spec.metrics.metrics_path, 'the metrics file', owner), readOnly: false });
  // Mount points: each file of the VM is bind-mounted onto one (read-only unless a writable drive).
  fs.writeFileSync(path.join(root, 'etc', 'ld.so.cache'), '');
  for (const f of files) fs.writeFileSync(path.join(root, 'files', f.name), '', { mode: 0o600 });

  // The spec as the jailed fc-run sees it: readable by the jailed user only (MMDS contents may be secret).
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
  if (spec.cpuConfig) {
    if (spec.cpuConfig.source !== 'inline') s['cpu-config'] = JSON.parse(fs.readFileSync(spec.cpuConfig.source, 'utf8'));
    else s['cpu-config'] = (spec.raw as unknown as Record<string, unknown>)['cpu-config'];
  }
  const specPath = path.join(root, 'vm.json');
  fs.writeFileSync(specPath, JSON.stringify(s, null, 2), { mode: 0o400 });
  fs.chownSync(specPath, owner.uid, owner.gid);

  // cgroups: created and set now; the new process joins them before it does anything else.
  for (const setting of opts.cgroups) {
    const { controller, dir, file, value, v2 } = cgroupFor(setting, opts.id);
    const parent = path.dirname(dir);
    for (const d of [parent, dir]) {
      if (fs.existsSync(d)) continue;
      if (v2) {
        // A v2 controller must be enabled in each parent for the child to have its files.
        try {
          fs.writeFileSync(path.join(path.dirname(d), 'cgroup.subtree_control'), `+${controller}`);
        } catch {
          // already enabled, or not delegable: the write of the setting below says so
        }
      }
      fs.mkdirSync(d);
      if (d === dir) cgroupDirs.push(d);
      if (!v2 && controller === 'cpuset') {
        // A v1 cpuset starts empty; it needs CPUs and memory nodes before a process can join.
        for (const f of ['cpuset.cpus', 'cpuset.mems']) fs.writeFileSync(path.join(d, f), fs.readFileSync(path.join(path.dirname(d), f), 'utf8'));
      }
    }
    try {
      fs.writeFileSync(path.join(dir, file), value);
    } catch (err) {
      fail('jail-cgroup', `--cgroup ${setting}: cannot write ${path.join(dir, file)} (${(err as NodeJS.ErrnoException).code})`);
    }
  }

  // Inside the new namespaces (still root): the read-only runtime, the VM's files, a /dev of its
  // own on tmpfs, /proc; then a new session (no controlling terminal to type into), chroot, and
  // the unprivileged user.
  const q = shellQuote;
  const R = (rel: string) => q(path.join(root, rel));
  const bind = (src: string, rel: string, readOnly: boolean) => [`mount --bind ${q(src)} ${R(rel)}`, ...(readOnly ? [`mount -o remount,bind,ro ${R(rel)}`] : [])];
  const kvm = devNumbers('/dev/kvm');
  const tun = spec.networkInterfaces.length > 0 ? devNumbers('/dev/net/tun') : undefined;
  const inner = [
    'set -e',
    ...bind('/usr', 'usr', true),
    ...bind(PACKAGE_ROOT, 'opt/fc-run', true),
    ...bind('/etc/ld.so.cache', 'etc/ld.so.cache', true),
    ...files.flatMap((f) => bind(f.src, `files/${f.name}`, f.readOnly)),
    `mount -t tmpfs -o nosuid,noexec,mode=755,size=64k tmpfs ${R('dev')}`,
    `mknod -m 600 ${R('dev/kvm')} c ${kvm.major} ${kvm.minor}`,
    `chown ${owner.uid}:${owner.gid} ${R('dev/kvm')}`,
    ...(tun ? [`mkdir ${R('dev/net')}`, `mknod -m 600 ${R('dev/net/tun')} c ${tun.major} ${tun.minor}`, `chown ${owner.uid}:${owner.gid} ${R('dev/net/tun')}`] : []),
    `mknod -m 666 ${R('dev/null')} c 1 3`,
    `mknod -m 666 ${R('dev/urandom')} c 1 9`,
    `mount -o remount,ro ${R('dev')}`,
    `mount -t proc -o nosuid,nodev,noexec proc ${R('proc')}`,
    `exec setsid chroot ${q(root)} /usr/bin/setpriv --reuid=${opts.uid} --regid=${opts.gid} --clear-groups --no-new-privs --inh-caps=-all --bounding-set=-all -- ` +
      `/usr/bin/env -i PATH=/usr/bin HOME=/tmp UV_USE_IO_URING=0 NO_COLOR=${q(process.env.NO_COLOR ?? '')} ${q(node)} /opt/fc-run/bin/fc-run run /vm.json --exit-with-fd 3 ${opts.runArgs.map(q).join(' ')}`,
  ].join('\n');
  // Its own IPC namespace always; its own (empty) network namespace unless it needs the host's
  // TAP devices or was given one.
  const ownNet = !opts.netns && spec.networkInterfaces.length === 0;
  const enter = ['unshare', '--mount', '--propagation', 'private', '--pid', '--ipc', ...(ownNet ? ['--net'] : []), '--fork', '--kill-child=SIGTERM', '--', 'sh', '-c', inner];
  const joinCgroups = cgroupDirs.map((d) => `echo $$ > ${q(path.join(d, 'cgroup.procs'))}`).join('\n');
  const outer = ['set -e', joinCgroups, `exec ${opts.netns ? `nsenter --net=${q(opts.netns)} -- ` : ''}${enter.map(q).join(' ')}`].join('\n');
  return { root, vsockHostPath, cgroupDirs, command: ['sh', '-c', outer] };
}

/**
 * Runs the jailed fc-run with this process's stdio; resolves to its exit code (0, 1 or 2 as fc-run
 * gives them, 128 + n for a signal, 1 when setting up the jail failed).
 */
export function runJail(jail: PreparedJail): Promise<number> {
  // Nothing this process was given leaks into the jail (a directory fd would lead out of it).
  closeOnExecAll();
  return new Promise((resolve) => {
    // fd 3 of the jailed fc-run is one end of a socket pair whose other end only this process
    // holds: if the jailer dies, even by SIGKILL, the jailed fc-run reads end of stream and stops
    // its VM (a parent-death signal cannot do this: changing user clears it, and PID 1 of a
    // namespace does not always get it).
    const child = spawn(jail.command[0], jail.command.slice(1), { stdio: ['inherit', 'inherit', 'inherit', 'pipe'] });
    const lifeline = child.stdio[3] as import('node:net').Socket | null;
    lifeline?.on('error', () => undefined);
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
      process.off('SIGTERM', forward);
      process.off('SIGINT', forward);
      lifeline?.destroy();
      // The cgroups go with the VM (the jail directory stays, as Firecracker's does).
      for (const d of jail.cgroupDirs) {
        try {
          fs.rmdirSync(d);
        } catch {
          // still in use or already gone
        }
      }
      resolve(code);
    };
    child.on('error', (err) => {
      process.stderr.write(`fc-run: cannot start the jail: ${err.message}\n`);
      done(1);
    });
    child.on('exit', (code, signal) => {
      if (signal) return done(128 + os.constants.signals[signal]);
      if (code !== null && code > 2 && code < 128) {
        process.stderr.write(`fc-run: setting up the jail failed (exit ${code})\n`);
        return done(1);
      }
      done(code ?? 1);
    });
  });
}
