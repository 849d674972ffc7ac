import type { ResolvedSpec } from '../config/resolved';
import { assertPrintablePath, hostPathsOf } from './resources';

/**
 * systemd service units for fc-run: one per spec (Type=notify: fc-run reports READY=1 once the
 * guest runs), and a template for `fc-run up DIR`. Pure text generation; nothing here touches the
 * system.
 */

export interface UnitOptions {
  /** The instance name: fc-run's --id, the unit's name (fc-run-NAME.service), the API socket's directory. */
  name: string;
  /** A user unit (systemctl --user): no device, capability or mount namespace settings, which need privileges. */
  user: boolean;
  /** Absolute path of the node binary. */
  node: string;
  /** Absolute path of fc-run's bin/fc-run. */
  fcRun: string;
  /** User= for a system unit; without it the service runs as root, with a minimal capability set. */
  runAs?: string;
  /** Seconds between SIGTERM and SIGKILL when the service stops. */
  stopTimeoutSec: number;
  restart: 'no' | 'on-failure' | 'always';
}

export function unitFileName(name: string): string {
  return `fc-run-${name}.service`;
}

/**
 * Writes one ExecStart argument (exec: true) or path-list entry: specifiers (%) escaped, quoted when
 * needed. Only command lines expand variables, so only there is `$` written `$$`; in
 * ReadWritePaths= or DeviceAllow= a `$$` would stay two dollar signs and name another path.
 */
export function unitWord(word: string, opts: { exec: boolean } = { exec: true }): string {
  assertPrintablePath(word, 'path');
  const specifiersEscaped = word.replace(/%/g, '%%');
  const escaped = opts.exec ? specifiersEscaped.replace(/\$/g, '$$$$') : specifiersEscaped;
  if (/^[A-Za-z0-9_@%+=:,./-]+$/.test(escaped) || (opts.exec && /^[A-Za-z0-9_@%+=:,./$-]+$/.test(escaped))) return escaped;
  return `"${escaped.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`;
}

/**
 * systemd-escape --path: the instance name of a template unit for a directory. Slashes become
 * "-", anything outside [A-Za-z0-9:_.] (and a leading ".") becomes \xNN.
 */
export function escapePath(p: string): string {
  const trimmed = p.replace(/\/+/g, '/').replace(/^\/|\/$/g, '');
  if (trimmed === '') return '-';
  const bytes = Buffer.from(trimmed, 'utf8');
  let out = '';
  bytes.forEach((b, i) => {
    const c = String.fromCharCode(b);
    if (c === '/') out += '-';
    else if (/[A-Za-z0-9:_]/.test(c) || (c === '.' && i > 0)) out += c;
    else out += `\\x${b.toString(16).padStart(2, '0')}`;
  });
  return out;
}

/** Paths a spec keeps in places the sandbox would hide (PrivateTmp, ProtectHome). */
function under(paths: string[], roots: string[]): boolean {
  return paths.some((p) => roots.some((r) => p === r || p.startsWith(`${r}/`)));
}

const HOME_ROOTS = ['/home', '/root', '/run/user'];
const TMP_ROOTS = ['/tmp', '/var/tmp'];

interface Sandbox {
  /** Every path fc-run reads from: ProtectHome and PrivateTmp must leave them visible. */
  reads: string[];
  writes: string[];
  devices: { path: string; access: 'r' | 'rw' }[];
  taps: boolean;
}

/** The [Service] hardening lines: what a VMM needs and nothing else. */
function hardening(box: Sandbox, opts: Pick<UnitOptions, 'user' | 'runAs'>): string[] {
  // These filter system calls (seccomp) and need no privilege, so they hold in user units too.
  // MemoryDenyWriteExecute is left out on purpose: V8's JIT needs writable-executable memory.
  const common = [
    'NoNewPrivileges=yes',
    'LockPersonality=yes',
    'RestrictRealtime=yes',
    'RestrictSUIDSGID=yes',
    'RestrictNamespaces=yes',
    'SystemCallArchitectures=native',
    // Unix sockets only: the API, vsock and sd_notify sockets. A TAP is opened through
    // /dev/net/tun and configured by ioctl, which needs no socket at all.
    'RestrictAddressFamilies=AF_UNIX',
  ];
  if (opts.user) return common;
  const lines = [...common];
  // Spec files under /home or /tmp stay usable: read-only home, and no private /tmp.
  lines.push(`ProtectHome=${under(box.reads, HOME_ROOTS) ? 'read-only' : 'yes'}`);
  if (!under(box.reads, TMP_ROOTS)) lines.push('PrivateTmp=yes');
  lines.push('ProtectSystem=strict');
  if (box.writes.length > 0) lines.push(`ReadWritePaths=${box.writes.map((p) => `-${unitWord(p, { exec: false })}`).join(' ')}`);
  lines.push(
    'ProtectKernelTunables=yes',
    'ProtectKernelModules=yes',
    'ProtectKernelLogs=yes',
    'ProtectControlGroups=yes',
    'ProtectClock=yes',
    'ProtectHostname=yes',
    'ProtectProc=invisible',
    'DevicePolicy=closed',
  );
  for (const d of box.devices) lines.push(`DeviceAllow=${unitWord(d.path, { exec: false })} ${d.access}`);
  // A TAP lives in the host's network namespace; without one the VM needs no network at all.
  if (!box.taps) lines.push('PrivateNetwork=yes');
  // Attaching to a TAP that is owned by the service's user needs no capability; as root, an
  // ownerless TAP (ip tuntap add NAME mode tap) needs CAP_NET_ADMIN for TUNSETIFF.
  const caps = box.taps && opts.runAs === undefined ? 'CAP_NET_ADMIN' : '';
  lines.push(`CapabilityBoundingSet=${caps}`);
  return lines;
}

function restartLines(restart: UnitOptions['restart']): string[] {
  if (restart === 'no') return ['Restart=no'];
  // Exit 2 is an invalid spec: starting again cannot fix it.
  return [`Restart=${restart}`, 'RestartSec=2', 'RestartPreventExitStatus=2'];
}

function header(description: string, taps: boolean, user: boolean): string[] {
  return [
    '[Unit]',
    `Description=${description.replace(/%/g, '%%')}`,
    ...(taps && !user ? ['# The TAP devices must exist before the VM starts (networkd .netdev, or ip tuntap add).', 'After=network.target'] : []),
    '',
  ];
}

function install(user: boolean): string[] {
  return ['', '[Install]', `WantedBy=${user ? 'default.target' : 'multi-user.target'}`, ''];
}

/** The service unit that runs one spec. */
export function systemdUnit(spec: ResolvedSpec, opts: UnitOptions): string {
  const paths = hostPathsOf(spec);
  const taps = spec.networkInterfaces.length > 0;
  const devices: Sandbox['devices'] = [{ path: '/dev/kvm', access: 'rw' }];
  if (taps) devices.push({ path: '/dev/net/tun', access: 'rw' });
  // A drive may be a block device: the device policy must let it through too.
  for (const p of paths) if (p.kind === 'file' && p.path.startsWith('/dev/')) devices.push({ path: p.path, access: p.writable ? 'rw' : 'r' });
  const box: Sandbox = {
    reads: [spec.specFile, opts.fcRun, opts.node, ...paths.map((p) => p.path)],
    writes: paths.filter((p) => p.writable && !p.path.startsWith('/dev/')).map((p) => p.path),
    devices,
    taps,
  };
  const exec = [opts.node, opts.fcRun, 'run', spec.specFile, '--id', opts.name, '--api-sock', `%t/fc-run/${opts.name}/api.sock`];
  return [
    ...header(`fc-run microVM ${opts.name} (${spec.specFile})`, taps, opts.user),
    '[Service]',
    // fc-run sends READY=1 over $NOTIFY_SOCKET once the guest runs, STOPPING=1 when it stops.
    'Type=notify',
    'NotifyAccess=main',
    // %t is /run for system units and $XDG_RUNTIME_DIR for user units; the innermost directory is
    // the service's own, removed when it stops (a shared /run/fc-run would lose other VMs' sockets).
    `RuntimeDirectory=fc-run/${opts.name}`,
    'RuntimeDirectoryMode=0700',
    `ExecStart=${exec.map((w) => (w.startsWith('%t/') ? w : unitWord(w))).join(' ')}`,
    // SIGTERM stops the VM at once and cleanly (last log and metrics lines, exit 0); the guest
    // gets no shutdown request, as with Firecracker's own process.
    'KillSignal=SIGTERM',
    'KillMode=mixed',
    `TimeoutStopSec=${opts.stopTimeoutSec}`,
    ...restartLines(opts.restart),
    ...(opts.runAs !== undefined && !opts.user ? [`User=${opts.runAs}`] : []),
    ...hardening(box, opts),
    ...install(opts.user),
  ].join('\n');
}

export interface TemplateOptions {
  user: boolean;
  node: string;
  fcRun: string;
  runAs?: string;
  stopTimeoutSec: number;
  restart: UnitOptions['restart'];
}

/**
 * fc-run@.service: the instance is a directory of specs (escaped like systemd-escape --path), run
 * with `fc-run up`. What the specs in it touch is not known here, so the sandbox is wider than a
 * per-spec unit's: the directory is writable, TAPs are allowed, and no private /tmp.
 */
export function templateUnit(opts: TemplateOptions): string {
  const box: Sandbox = {
    reads: ['/home', '/tmp'],
    writes: ['%f'],
    devices: [
      { path: '/dev/kvm', access: 'rw' },
      { path: '/dev/net/tun', access: 'rw' },
    ],
    taps: true,
  };
  const lines = hardening(box, opts).map((l) => (l.startsWith('ReadWritePaths=') ? 'ReadWritePaths=%f' : l));
  return [
    ...header('fc-run microVMs of the specs in %f', false, opts.user).map((l) => l.replace('%%f', '%f')),
    '[Service]',
    // `up` runs many VMs and sends no readiness notification: started means started.
    'Type=exec',
    `ExecStart=${unitWord(opts.node)} ${unitWord(opts.fcRun)} up %f`,
    // The run directory (`fc-run up`'s default, /run/fc-run) outlives a restart of the unit, so a
    // restarted `up` adopts the VMs it finds there.
    ...(opts.user ? [] : ['RuntimeDirectory=fc-run', 'RuntimeDirectoryPreserve=yes']),
    'KillSignal=SIGTERM',
    // Stopping the unit stops the fleet: every fc-run gets SIGTERM and stops its VM cleanly.
    'KillMode=control-group',
    `TimeoutStopSec=${opts.stopTimeoutSec}`,
    ...restartLines(opts.restart),
    ...(opts.runAs !== undefined && !opts.user ? [`User=${opts.runAs}`] : []),
    ...lines,
    ...install(opts.user),
  ].join('\n');
}
