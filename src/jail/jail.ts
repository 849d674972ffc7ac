import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { FcRunError } from '../errors';
import type { ResolvedSpec } from '../config/resolved';

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
  /** The spec as written inside the jail. */
  spec: Record<string, unknown>;
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

/** Links `src` into the jail as `name`; the jail and the file must share a filesystem. */
function linkInto(root: string, src: string, name: string): string {
  const dst = path.join(root, 'files', name);
  try {
    fs.linkSync(src, dst);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EXDEV') fail('jail-file', `${src} is on another filesystem than the jail (${root}): put the VM's files on the jail's filesystem, or the jail on theirs`);
    fail('jail-file', `cannot link ${src} into the jail: ${code}`);
  }
  return `/files/${name}`;
}

function mknod(root: string, rel: string, host: string, mode: number, owner?: { uid: number; gid: number }): void {
  const st = fs.statSync(host);
  const major = Math.floor(st.rdev / 256) & 0xfff;
  const minor = (st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00);
  const dst = path.join(root, rel);
  run('mknod', ['-m', mode.toString(8), dst, 'c', String(major), String(minor)]);
  if (owner) fs.chownSync(dst, owner.uid, owner.gid);
}

function run(cmd: string, args: string[]): void {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0) fail('jail-setup', `${cmd} ${args.join(' ')} failed: ${(r.stderr || r.error?.message || '').trim()}`);
}

/** Where a cgroup setting lives: v1 (/sys/fs/cgroup/<controller>/…) or v2 (/sys/fs/cgroup/…). */
function cgroupDir(setting: string, id: string): { dir: string; file: string; value: string } {
  const m = /^([a-z_]+)\.([a-z_.]+)=(.*)$/.exec(setting);
  if (!m) fail('jail-cgroup', `--cgroup ${setting}: expected <controller>.<file>=<value>, e.g. memory.limit_in_bytes=268435456`);
  const [, controller, , value] = m;
  const file = setting.slice(0, setting.indexOf('='));
  if (fs.existsSync(path.join('/sys/fs/cgroup', controller, 'cgroup.procs'))) return { dir: path.join('/sys/fs/cgroup', controller, 'fc-run', id), file, value };
  if (fs.existsSync('/sys/fs/cgroup/cgroup.controllers')) return { dir: path.join('/sys/fs/cgroup', 'fc-run', id), file, value };
  return fail('jail-cgroup', `--cgroup ${setting}: no cgroup controller "${controller}" on this host`);
}

function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** Builds the jail (files, devices, spec, cgroups) and the command that enters it. */
export function prepareJail(spec: ResolvedSpec, opts: JailOptions): PreparedJail {
  if (process.getuid?.() !== 0) fail('jail-root', 'fc-run jail must run as root (it creates device nodes, cgroups and namespaces, then drops to --uid/--gid)');
  if (!ID.test(opts.id)) fail('jail-id', `--id ${JSON.stringify(opts.id)}: use 1 to 64 letters, digits or dashes`);
  for (const [name, v] of [['uid', opts.uid], ['gid', opts.gid]] as const) {
    if (!Number.isInteger(v) || v <= 0 || v > 0xfffffffe) fail('jail-user', `--${name} ${v}: give the unprivileged user the microVM runs as (not 0)`);
  }
  if (spec.logger?.log_path || spec.metrics) fail('jail-monitor', 'logs and metrics to files are not supported in the jail yet: leave out "logger.log_path" and "metrics"');
  const jailDir = path.join(path.resolve(opts.baseDir), 'fc-run', opts.id);
  const root = path.join(jailDir, 'root');
  if (fs.existsSync(jailDir)) fail('jail-exists', `${jailDir} already exists: remove it, or use another --id`);
  const owner = { uid: opts.uid, gid: opts.gid };
  for (const d of ['files', 'dev/net', 'proc', 'usr', 'etc', 'opt/fc-run', 'run', 'tmp']) fs.mkdirSync(path.join(root, d), { recursive: true });
  fs.chownSync(path.join(root, 'run'), owner.uid, owner.gid);
  fs.chmodSync(path.join(root, 'tmp'), 0o1777);
  // Merged-/usr hosts: /lib, /lib64, /bin, /sbin are links into /usr.
  for (const top of ['lib', 'lib64', 'bin', 'sbin']) {
    const host = `/${top}`;
    if (fs.existsSync(host) && fs.lstatSync(host).isSymbolicLink()) fs.symlinkSync(fs.readlinkSync(host), path.join(root, top));
    else if (fs.existsSync(host)) fail('jail-runtime', `${host} is not a link into /usr: this jailer supports merged-/usr hosts only`);
  }
  fs.writeFileSync(path.join(root, 'etc', 'ld.so.cache'), '');

  // The VM's files, as the jailed fc-run will see them.
  const s = JSON.parse(JSON.stringify(spec.raw)) as Record<string, any>;
  s['boot-source'] = { ...s['boot-source'], kernel_image_path: linkInto(root, spec.bootSource.kernel_image_path, 'kernel') };
  if (spec.bootSource.initrd_path) s['boot-source'].initrd_path = linkInto(root, spec.bootSource.initrd_path, 'initrd');
  s.drives = spec.drives.map((d, i) => ({ ...s.drives[i], path_on_host: linkInto(root, d.path_on_host!, `drive-${d.drive_id}`) }));
  let vsockHostPath: string | undefined;
  if (spec.vsock) {
    s.vsock = { ...s.vsock, uds_path: '/run/vsock.sock' };
    vsockHostPath = path.join(root, 'run', 'vsock.sock');
  }
  if (spec.mmds) s.mmds = spec.mmds.data;
  delete s.$schema;
  delete s['cpu-config'];
  if (spec.cpuConfig) {
    if (spec.cpuConfig.source !== 'inline') s['cpu-config'] = JSON.parse(fs.readFileSync(spec.cpuConfig.source, 'utf8'));
    else s['cpu-config'] = (spec.raw as unknown as Record<string, unknown>)['cpu-config'];
  }
  fs.writeFileSync(path.join(root, 'vm.json'), JSON.stringify(s, null, 2));

  // Device nodes of its own, owned by the jailed user (the host's stay as they are).
  mknod(root, 'dev/kvm', '/dev/kvm', 0o600, owner);
  if (spec.networkInterfaces.length > 0) mknod(root, 'dev/net/tun', '/dev/net/tun', 0o600, owner);
  mknod(root, 'dev/null', '/dev/null', 0o666);
  mknod(root, 'dev/urandom', '/dev/urandom', 0o666);

  // cgroups: created and set now; the new process joins them before it does anything else.
  const cgroupDirs: string[] = [];
  for (const setting of opts.cgroups) {
    const { dir, file, value } = cgroupDir(setting, opts.id);
    fs.mkdirSync(dir, { recursive: true });
    if (file.startsWith('cpuset.')) {
      // A v1 cpuset starts empty; it needs CPUs and memory nodes before a process can join.
      for (const f of ['cpuset.cpus', 'cpuset.mems']) if (fs.readFileSync(path.join(dir, f), 'utf8').trim() === '') fs.writeFileSync(path.join(dir, f), fs.readFileSync(path.join(dir, '..', '..', f), 'utf8'));
    }
    try {
      fs.writeFileSync(path.join(dir, file), value);
    } catch (err) {
      fail('jail-cgroup', `--cgroup ${setting}: cannot write ${path.join(dir, file)} (${(err as NodeJS.ErrnoException).code})`);
    }
    if (!cgroupDirs.includes(dir)) cgroupDirs.push(dir);
  }

  // Inside the new namespaces: the read-only runtime, /proc, then chroot and drop privileges.
  const node = process.execPath;
  if (!node.startsWith('/usr/')) fail('jail-runtime', `Node is at ${node}; the jail mounts /usr, so Node must live under /usr`);
  const q = shellQuote;
  const inner = [
    'set -e',
    `mount --bind /usr ${q(path.join(root, 'usr'))}`,
    `mount -o remount,bind,ro ${q(path.join(root, 'usr'))}`,
    `mount --bind ${q(PACKAGE_ROOT)} ${q(path.join(root, 'opt/fc-run'))}`,
    `mount -o remount,bind,ro ${q(path.join(root, 'opt/fc-run'))}`,
    `mount --bind /etc/ld.so.cache ${q(path.join(root, 'etc/ld.so.cache'))}`,
    `mount -t proc -o nosuid,nodev,noexec proc ${q(path.join(root, 'proc'))}`,
    `exec chroot ${q(root)} /usr/bin/setpriv --reuid=${opts.uid} --regid=${opts.gid} --clear-groups --no-new-privs --inh-caps=-all --bounding-set=-all -- ` +
      `/usr/bin/env -i PATH=/usr/bin HOME=/tmp NO_COLOR=${q(process.env.NO_COLOR ?? '')} ${q(node)} /opt/fc-run/bin/fc-run run /vm.json --exit-with-fd 3 ${opts.runArgs.map(q).join(' ')}`,
  ].join('\n');
  const enter = ['unshare', '--mount', '--propagation', 'private', '--pid', '--fork', '--kill-child=SIGTERM', '--', 'sh', '-c', inner];
  const joinCgroups = cgroupDirs.map((d) => `echo $$ > ${q(path.join(d, 'cgroup.procs'))}`).join('\n');
  const outer = [
    'set -e',
    joinCgroups,
    `exec ${opts.netns ? `nsenter --net=${q(opts.netns)} -- ` : ''}${enter.map(q).join(' ')}`,
  ].join('\n');
  return { root, spec: s, vsockHostPath, cgroupDirs, command: ['sh', '-c', outer] };
}

/** Runs the jailed fc-run with this process's stdio; resolves to its exit code. */
export function runJail(jail: PreparedJail): Promise<number> {
  return new Promise((resolve) => {
    // fd 3 of the jailed fc-run is one end of a socket pair whose other end only this process
    // holds: if the jailer dies, even by SIGKILL, the jailed fc-run reads end of stream and stops
    // its VM (a parent-death signal cannot do this: changing user clears it, and PID 1 of a
    // namespace does not always get it).
    const child = spawn(jail.command[0], jail.command.slice(1), { stdio: ['inherit', 'inherit', 'inherit', 'pipe'] });
    // unshare (our child) ignores SIGTERM and SIGINT while it waits: signals go to the jailed
    // fc-run itself, its child (PID 1 of the new namespace).
    const forward = (sig: NodeJS.Signals) => {
      let pids: number[] = [];
      try {
        pids = fs.readFileSync(`/proc/${child.pid}/task/${child.pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
      } catch {
        // not there yet, or gone
      }
      if (pids.length === 0) child.kill(sig);
      for (const pid of pids) {
        try {
          process.kill(pid, sig);
        } catch {
          // already gone
        }
      }
    };
    process.on('SIGTERM', forward);
    process.on('SIGINT', forward);
    child.on('exit', (code, signal) => {
      process.off('SIGTERM', forward);
      process.off('SIGINT', forward);
      // The cgroups go with the VM (the jail directory stays, as Firecracker's does).
      for (const d of jail.cgroupDirs) {
        try {
          fs.rmdirSync(d);
        } catch {
          // still in use or already gone
        }
      }
      resolve(code ?? (signal ? 128 + os.constants.signals[signal] : 1));
    });
  });
}
