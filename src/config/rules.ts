import * as fs from 'node:fs';
import * as path from 'node:path';
import { IssueList } from './issues';
import { closestMatch } from './suggest';
import { parseBitmap, parseRegisterNumber } from './cpu-template';
import { fileKind } from './regular-file';
import type { CpuConfig, RateLimiter, VmSpec } from './vm-spec.generated';

/** Linux's IFNAMSIZ is 16 including the terminating NUL. */
export const MAX_TAP_NAME_BYTES = 15;
/** sun_path holds 108 bytes including the NUL. */
export const MAX_UDS_PATH_BYTES = 107;
/** Longest "_<port>" suffix vsock appends for guest-initiated connections. */
const VSOCK_PORT_SUFFIX_BYTES = '_4294967295'.length;

/**
 * Guest RAM ends below 256 GiB: the layout keeps [3 GiB, 4 GiB) for 32-bit MMIO and reserves
 * 256 GiB upwards for 64-bit MMIO, so at most 255 GiB of RAM fits. Guest memory is mapped with
 * MAP_NORESERVE, so the host need not have it all.
 */
export const MAX_MEM_SIZE_MIB = 255 * 1024;

export interface RuleContext {
  /** Directory relative paths resolve against. */
  baseDir: string;
  /** Skip checks that need the referenced files (kernel, initrd, drives) to exist. */
  skipFiles: boolean;
}

export function resolvePath(baseDir: string, p: string): string {
  return path.resolve(baseDir, p);
}

/** The rules JSON Schema cannot express. Runs only on specs that passed the schema. */
export function checkRules(spec: VmSpec, issues: IssueList, ctx: RuleContext): void {
  checkMachine(spec, issues);
  checkDrives(spec, issues, ctx.baseDir);
  checkInterfaces(spec, issues);
  checkVsock(spec, issues);
  checkMmds(spec, issues);
  checkRateLimiters(spec, issues);
  if (spec['cpu-config'] && typeof spec['cpu-config'] === 'object') checkCpuConfig(spec['cpu-config'], ['cpu-config'], issues);
  checkControlCharacters(spec, issues);
  if (!ctx.skipFiles) checkFiles(spec, issues, ctx.baseDir);
}

function checkMachine(spec: VmSpec, issues: IssueList): void {
  const mc = spec['machine-config'];
  if (!mc) return;
  if (mc.smt && mc.vcpu_count > 1 && mc.vcpu_count % 2 === 1) {
    issues.error(
      'smt-odd-vcpus',
      ['machine-config', 'vcpu_count'],
      `with smt enabled vcpu_count must be 1 or even, got ${mc.vcpu_count}`,
      `use ${mc.vcpu_count - 1} or ${mc.vcpu_count + 1} vCPUs, or set "smt": false`,
    );
  }
  if (mc.mem_size_mib > MAX_MEM_SIZE_MIB) {
    issues.error(
      'memory-too-large',
      ['machine-config', 'mem_size_mib'],
      `${mc.mem_size_mib} MiB does not fit the guest physical layout (at most ${MAX_MEM_SIZE_MIB} MiB: RAM must end below the 64-bit MMIO region at 256 GiB)`,
      `use at most ${MAX_MEM_SIZE_MIB}`,
    );
  }
  if (mc.huge_pages && mc.huge_pages !== 'None' && mc.mem_size_mib % 2 !== 0) {
    issues.error(
      'memory-not-huge-page-aligned',
      ['machine-config', 'mem_size_mib'],
      `with huge_pages "${mc.huge_pages}" mem_size_mib must be a multiple of 2, got ${mc.mem_size_mib}`,
      `use ${mc.mem_size_mib + 1}`,
    );
  }
}

/** Reports every repeat of a value after its first occurrence. */
function checkUnique<T>(
  items: readonly T[],
  key: (item: T) => string | undefined,
  at: (index: number) => (string | number)[],
  issues: IssueList,
  code: string,
  what: string,
): void {
  const first = new Map<string, number>();
  items.forEach((item, i) => {
    const k = key(item);
    if (k === undefined) return;
    const j = first.get(k);
    if (j === undefined) {
      first.set(k, i);
      return;
    }
    const firstPath = at(j).map(String).join('.');
    issues.error(code, at(i), `${what} "${k}" is already used by ${firstPath}`, `give each one a different ${what}`);
  });
}

function checkDrives(spec: VmSpec, issues: IssueList, baseDir: string): void {
  const drives = spec.drives ?? [];
  checkUnique(drives, (d) => d.drive_id, (i) => ['drives', i, 'drive_id'], issues, 'duplicate-id', 'drive_id');

  const roots = drives.map((d, i) => (d.is_root_device ? i : -1)).filter((i) => i >= 0);
  const pmemRoots = (spec.pmem ?? []).map((p, i) => (p.root_device ? i : -1)).filter((i) => i >= 0);
  for (const i of roots.slice(1)) {
    issues.error(
      'multiple-root-devices',
      ['drives', i, 'is_root_device'],
      `drive "${drives[i].drive_id}" is a second root device (drives.${roots[0]} "${drives[roots[0]].drive_id}" is already root)`,
      'set "is_root_device": true on exactly one drive',
    );
  }
  if (roots.length > 0 && pmemRoots.length > 0) {
    issues.error('multiple-root-devices', ['pmem', pmemRoots[0], 'root_device'], 'a pmem device and a drive are both marked as the root device', 'mark only one device as root');
  }

  drives.forEach((d, i) => {
    if (d.socket === undefined) {
      if (d.path_on_host === undefined) {
        issues.error('required', ['drives', i, 'path_on_host'], `drive "${d.drive_id}" has no path_on_host`, 'add "path_on_host": the file backing the drive');
      }
      if (d.is_read_only === undefined) {
        // Firecracker takes a drive without it as writable (is_read_only.unwrap_or(false)); said, since a writable drive is the one a guest can change.
        issues.warning('read-only-unset', ['drives', i, 'is_read_only'], `drive "${d.drive_id}" has no is_read_only: the guest may write to it (Firecracker's default)`, 'add "is_read_only": true or false');
      }
    } else {
      for (const field of ['path_on_host', 'is_read_only', 'rate_limiter', 'io_engine'] as const) {
        if (d[field] !== undefined) {
          issues.error('vhost-user-conflict', ['drives', i, field], `drive "${d.drive_id}" has both "socket" (vhost-user) and "${field}"`, `remove "${field}": a vhost-user drive is served by its back end`);
        }
      }
    }
    if (d.partuuid !== undefined && !d.is_root_device) {
      issues.warning('partuuid-ignored', ['drives', i, 'partuuid'], `partuuid is used only for the root device; drive "${d.drive_id}" is not root`, 'remove partuuid or make this drive the root device');
    }
  });

  // Two writable drives on one file corrupt each other's data.
  const writers = new Map<string, number>();
  drives.forEach((d, i) => {
    if (!d.path_on_host || d.is_read_only) return;
    const file = resolvePath(baseDir, d.path_on_host);
    const j = writers.get(file);
    if (j !== undefined) {
      issues.warning('shared-writable-file', ['drives', i, 'path_on_host'], `drives "${drives[j].drive_id}" and "${d.drive_id}" both write to ${file}`, 'make one of them read-only or give each its own file');
    } else {
      writers.set(file, i);
    }
  });
}

export function tapNameProblem(name: string): string | undefined {
  const bytes = Buffer.byteLength(name, 'utf8');
  if (bytes > MAX_TAP_NAME_BYTES) return `is ${bytes} bytes long; Linux interface names hold at most ${MAX_TAP_NAME_BYTES}`;
  if (name === '.' || name === '..') return 'is not a valid interface name';
  if (/[/:\s]/.test(name)) return "contains '/', ':' or whitespace, which Linux interface names cannot";
  return undefined;
}

function checkInterfaces(spec: VmSpec, issues: IssueList): void {
  const ifaces = spec['network-interfaces'] ?? [];
  checkUnique(ifaces, (n) => n.iface_id, (i) => ['network-interfaces', i, 'iface_id'], issues, 'duplicate-id', 'iface_id');
  checkUnique(ifaces, (n) => n.host_dev_name, (i) => ['network-interfaces', i, 'host_dev_name'], issues, 'duplicate-tap', 'host_dev_name');
  checkUnique(ifaces, (n) => n.guest_mac?.toLowerCase(), (i) => ['network-interfaces', i, 'guest_mac'], issues, 'duplicate-mac', 'guest_mac');
  ifaces.forEach((n, i) => {
    const problem = tapNameProblem(n.host_dev_name);
    if (problem) {
      issues.error('tap-name', ['network-interfaces', i, 'host_dev_name'], `TAP name "${n.host_dev_name}" ${problem}`, 'choose a short name such as "tap0"');
    }
    if (n.guest_mac) {
      const first = parseInt(n.guest_mac.slice(0, 2), 16);
      if (first & 1) {
        issues.warning('multicast-mac', ['network-interfaces', i, 'guest_mac'], `guest_mac ${n.guest_mac} is a multicast address; the guest's interface will not work`, 'clear the lowest bit of the first byte, e.g. 06:00:…');
      }
    }
  });
}

function checkVsock(spec: VmSpec, issues: IssueList): void {
  const v = spec.vsock;
  if (!v) return;
  const bytes = Buffer.byteLength(v.uds_path, 'utf8');
  if (bytes > MAX_UDS_PATH_BYTES) {
    issues.error('uds-path-too-long', ['vsock', 'uds_path'], `uds_path is ${bytes} bytes; a Unix socket path holds at most ${MAX_UDS_PATH_BYTES}`, 'use a shorter path');
  } else if (bytes + VSOCK_PORT_SUFFIX_BYTES > MAX_UDS_PATH_BYTES) {
    issues.warning('uds-path-long', ['vsock', 'uds_path'], `uds_path is ${bytes} bytes; guest-initiated connections to high ports need "${v.uds_path}_<port>" which may exceed ${MAX_UDS_PATH_BYTES} bytes`, 'use a shorter path');
  }
}

function checkMmds(spec: VmSpec, issues: IssueList): void {
  const cfg = spec['mmds-config'];
  const ids = (spec['network-interfaces'] ?? []).map((n) => n.iface_id);
  if (cfg) {
    cfg.network_interfaces.forEach((id, i) => {
      if (ids.includes(id)) return;
      const guess = closestMatch(id, ids);
      issues.error(
        'unknown-interface',
        ['mmds-config', 'network_interfaces', i],
        `MMDS interface "${id}" is not one of the spec's network-interfaces${ids.length ? ` (${ids.join(', ')})` : ' (there are none)'}`,
        guess ? `did you mean "${guess}"?` : 'add a network interface with this iface_id, or list an existing one',
      );
    });
    checkUnique(cfg.network_interfaces, (s) => s, (i) => ['mmds-config', 'network_interfaces', i], issues, 'duplicate-id', 'interface');
  }
  if (spec.mmds !== undefined && !cfg) {
    issues.warning('mmds-unreachable', ['mmds'], 'the spec has MMDS contents but no mmds-config, so the guest cannot reach them', 'add "mmds-config": { "network_interfaces": ["eth0"] }');
  }
}

function eachRateLimiter(spec: VmSpec, fn: (rl: RateLimiter, at: (string | number)[]) => void): void {
  (spec.drives ?? []).forEach((d, i) => d.rate_limiter && fn(d.rate_limiter, ['drives', i, 'rate_limiter']));
  (spec['network-interfaces'] ?? []).forEach((n, i) => {
    if (n.rx_rate_limiter) fn(n.rx_rate_limiter, ['network-interfaces', i, 'rx_rate_limiter']);
    if (n.tx_rate_limiter) fn(n.tx_rate_limiter, ['network-interfaces', i, 'tx_rate_limiter']);
  });
  if (spec.entropy?.rate_limiter) fn(spec.entropy.rate_limiter, ['entropy', 'rate_limiter']);
  (spec.pmem ?? []).forEach((p, i) => p.rate_limiter && fn(p.rate_limiter, ['pmem', i, 'rate_limiter']));
}

function checkRateLimiters(spec: VmSpec, issues: IssueList): void {
  eachRateLimiter(spec, (rl, at) => {
    for (const kind of ['bandwidth', 'ops'] as const) {
      const bucket = rl[kind];
      if (!bucket) continue;
      for (const field of ['size', 'refill_time'] as const) {
        if (bucket[field] === 0) {
          // Firecracker silently treats a zero bucket as "no limit"; that surprise is refused here.
          issues.error('empty-bucket', [...at, kind, field], `${kind} bucket ${field} must be greater than 0`, `to disable the ${kind} limit, remove the "${kind}" bucket`);
        }
      }
    }
  });
}

export function checkCpuConfig(cfg: CpuConfig, at: (string | number)[], issues: IssueList): void {
  const seen = new Set<string>();
  (cfg.cpuid_modifiers ?? []).forEach((m, i) => {
    for (const field of ['leaf', 'subleaf'] as const) {
      if (parseRegisterNumber(m[field]) === undefined) {
        issues.error('register-number', [...at, 'cpuid_modifiers', i, field], `${field} ${m[field]} does not fit in 32 bits`);
      }
    }
    const key = `${m.leaf}/${m.subleaf}`.toLowerCase();
    if (seen.has(key)) {
      issues.warning('duplicate-leaf', [...at, 'cpuid_modifiers', i], `CPUID leaf ${m.leaf} subleaf ${m.subleaf} is modified twice; modifiers apply in order`);
    }
    seen.add(key);
    m.modifiers.forEach((r, j) => {
      const parsed = parseBitmap(r.bitmap, 32);
      if (typeof parsed === 'string') issues.error('bitmap', [...at, 'cpuid_modifiers', i, 'modifiers', j, 'bitmap'], `bitmap ${parsed}`);
    });
  });
  (cfg.msr_modifiers ?? []).forEach((m, i) => {
    if (parseRegisterNumber(m.addr) === undefined) issues.error('register-number', [...at, 'msr_modifiers', i, 'addr'], `MSR address ${m.addr} does not fit in 32 bits`);
    const parsed = parseBitmap(m.bitmap, 64);
    if (typeof parsed === 'string') issues.error('bitmap', [...at, 'msr_modifiers', i, 'bitmap'], `bitmap ${parsed}`);
  });
}

// eslint-disable-next-line no-control-regex
const CONTROL_CHARS = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/;

/**
 * Strings in a spec end up as C strings, file names, interface names or the kernel command line,
 * where a NUL cuts them short (a NUL in boot_args drops every virtio_mmio.device= entry after it)
 * and other control characters corrupt logs and terminals. None is accepted outside the MMDS
 * contents, which are data served to the guest as JSON.
 */
function checkControlCharacters(spec: VmSpec, issues: IssueList): void {
  // The kernel splits its command line at bytes it takes for white space, 0xa0 (the second byte
  // of a UTF-8 no-break space) among them: only printable ASCII says what it seems to, which is
  // also all Firecracker's command-line builder accepts.
  const bootArgs = spec['boot-source']?.boot_args;
  const odd = bootArgs !== undefined ? /[^\x20-\x7e]/.exec(bootArgs) : null;
  if (odd && !CONTROL_CHARS.test(odd[0])) {
    issues.error(
      'boot-args-not-ascii',
      ['boot-source', 'boot_args'],
      `contains U+${odd[0].codePointAt(0)!.toString(16).padStart(4, '0').toUpperCase()} at position ${odd.index}; the kernel command line takes printable ASCII only`,
      'write it with ASCII characters (a non-ASCII byte may split an argument in two)',
    );
  }
  const stack: { v: unknown; at: (string | number)[] }[] = [{ v: spec, at: [] }];
  while (stack.length > 0) {
    const { v, at } = stack.pop()!;
    if (typeof v === 'string') {
      const m = CONTROL_CHARS.exec(v);
      if (m) {
        const code = m[0].charCodeAt(0);
        issues.error(
          'control-character',
          at,
          `contains the control character U+${code.toString(16).padStart(4, '0').toUpperCase()}${code === 0 ? ' (NUL)' : ''} at position ${m.index}`,
          'remove it: names, paths and boot arguments are plain text',
        );
      }
    } else if (Array.isArray(v)) {
      v.forEach((item, i) => stack.push({ v: item, at: [...at, i] }));
    } else if (v !== null && typeof v === 'object') {
      for (const [k, item] of Object.entries(v)) {
        if (at.length === 0 && k === 'mmds') continue;
        if (CONTROL_CHARS.test(k)) issues.error('control-character', [...at, k], 'a key contains a control character', 'remove it');
        stack.push({ v: item, at: [...at, k] });
      }
    }
  }
}

function checkReadable(file: string, at: (string | number)[], what: string, issues: IssueList, baseDir: string, writable = false, blockDeviceOk = false): void {
  const abs = resolvePath(baseDir, file);
  const shown = abs === file ? abs : `${abs} (from "${file}", relative to ${baseDir})`;
  const skipHint = 'fix the path, or pass --skip-files to validate without the artifacts';
  let st: fs.Stats;
  try {
    st = fs.statSync(abs);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    issues.error('file-missing', at, `${what} ${code === 'ENOENT' ? 'does not exist' : `cannot be read (${code})`}: ${shown}`, skipHint);
    return;
  }
  if (!st.isFile() && !(blockDeviceOk && st.isBlockDevice())) {
    issues.error('file-not-regular', at, `${what} is not a regular file: ${shown}`, skipHint);
    return;
  }
  try {
    fs.accessSync(abs, writable ? fs.constants.R_OK | fs.constants.W_OK : fs.constants.R_OK);
  } catch {
    issues.error('file-permission', at, `${what} is not ${writable ? 'readable and writable' : 'readable'}: ${shown}`, writable ? 'fix its permissions, or set "is_read_only": true' : 'fix its permissions');
  }
}

/**
 * A log or metrics path fc-run will open for appending: a regular file or FIFO it can write (or a
 * character device such as /dev/null), or a new file in a directory that exists.
 */
function checkOutputFile(file: string, at: (string | number)[], what: string, issues: IssueList, baseDir: string): void {
  const abs = resolvePath(baseDir, file);
  let st: fs.Stats;
  try {
    st = fs.statSync(abs);
  } catch {
    checkParentDir(file, at, what, issues, baseDir);
    return;
  }
  if (!(st.isFile() || st.isFIFO() || st.isCharacterDevice())) {
    issues.error('output-not-file', at, `${what} path ${abs} is ${fileKind(st)}; fc-run appends lines to a regular file or a named pipe`, 'point it at a file (it is created if missing) or a FIFO');
    return;
  }
  try {
    fs.accessSync(abs, fs.constants.W_OK);
  } catch {
    issues.error('file-permission', at, `${what} file ${abs} is not writable`, 'fix its permissions or choose another path');
  }
}

function checkParentDir(file: string, at: (string | number)[], what: string, issues: IssueList, baseDir: string): void {
  const dir = path.dirname(resolvePath(baseDir, file));
  if (!fs.existsSync(dir)) issues.error('dir-missing', at, `the directory for ${what} does not exist: ${dir}`, 'create it, or pass --skip-files');
}

/**
 * fc-run creates its sockets, replacing a stale socket file from an earlier run; anything else at
 * that path is the user's and is left alone. (Whether a socket is live, another VM's, is checked
 * when the VM starts.)
 */
function checkSocketPath(file: string, at: (string | number)[], issues: IssueList, baseDir: string): void {
  const abs = resolvePath(baseDir, file);
  let st: fs.Stats;
  try {
    st = fs.lstatSync(abs);
  } catch {
    return;
  }
  if (!st.isSocket()) {
    issues.error('socket-path-taken', at, `${abs} already exists and is ${fileKind(st)}, not a socket; fc-run will not replace it`, 'choose another path for the socket, or remove that file yourself');
  }
}

function checkFiles(spec: VmSpec, issues: IssueList, baseDir: string): void {
  const boot = spec['boot-source'];
  checkReadable(boot.kernel_image_path, ['boot-source', 'kernel_image_path'], 'kernel image', issues, baseDir);
  if (boot.initrd_path) checkReadable(boot.initrd_path, ['boot-source', 'initrd_path'], 'initrd', issues, baseDir);
  (spec.drives ?? []).forEach((d, i) => {
    if (d.path_on_host) checkReadable(d.path_on_host, ['drives', i, 'path_on_host'], `drive "${d.drive_id}" file`, issues, baseDir, d.is_read_only !== true, true);
  });
  if (typeof spec['cpu-config'] === 'string') checkReadable(spec['cpu-config'], ['cpu-config'], 'CPU template file', issues, baseDir);
  if (spec.vsock) {
    checkParentDir(spec.vsock.uds_path, ['vsock', 'uds_path'], 'the vsock socket', issues, baseDir);
    checkSocketPath(spec.vsock.uds_path, ['vsock', 'uds_path'], issues, baseDir);
  }
  if (spec.logger?.log_path) checkOutputFile(spec.logger.log_path, ['logger', 'log_path'], 'the log', issues, baseDir);
  if (spec.metrics) checkOutputFile(spec.metrics.metrics_path, ['metrics', 'metrics_path'], 'the metrics', issues, baseDir);
}
