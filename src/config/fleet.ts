import { fileIdentity } from './collisions';
import { pointer, SpecIssue } from './issues';
import type { LoadedSpec } from './validate';

/**
 * Checks across specs meant to run side by side on one host (a "fleet"): what one VM takes for
 * itself no other VM may take too.
 *
 *   - TAP devices (host_dev_name): one TAP carries one VM's traffic.
 *   - Guest MACs (compared case-insensitively): two guests with one MAC on a network break both.
 *   - Files VMs write (logger.log_path, metrics.metrics_path, vsock.uds_path, writable drives):
 *     another VM may neither write nor read them; read-only inputs (kernels, initrds, read-only
 *     drives, CPU templates) may be shared freely. A drive written by one VM and read by another
 *     is refused as well: the reader sees a file system change under it. Character devices
 *     (/dev/null, a terminal) may take any number of log and metrics writers.
 *
 * Within one spec the same conflicts are the rules' business (duplicate-tap, output-overwrites,
 * shared-writable-file); here only uses by different specs count. Every use involved gets an
 * error at its own position naming the others, so each spec's report is complete on its own.
 */

export interface FleetOptions {
  /** Compare existing files by device and inode (links, other spellings); false for --skip-files. */
  readFiles: boolean;
}

type Access = 'read' | 'write' | 'output';

interface Use {
  member: number;
  /** What the spec calls it, for messages. */
  what: string;
  at: (string | number)[];
  access: Access;
  /** The value as shown in messages. */
  shown: string;
  charDevice?: boolean;
}

/** Up to this many other uses are listed in one message; the rest are counted. */
const MAX_LISTED = 3;

/**
 * Returns, for each spec (same order as given), the errors it has because of the others.
 * Specs are compared as loaded: pass only specs that loaded (their resources are known).
 */
export function checkFleet(specs: readonly LoadedSpec[], opts: FleetOptions): SpecIssue[][] {
  const out: SpecIssue[][] = specs.map(() => []);
  const taps = new Map<string, Use[]>();
  const macs = new Map<string, Use[]>();
  const files = new Map<string, Use[]>();
  const add = (map: Map<string, Use[]>, key: string, use: Use) => {
    const list = map.get(key);
    if (list) list.push(use);
    else map.set(key, [use]);
  };
  const file = (member: number, abs: string | undefined, what: string, at: (string | number)[], access: Access) => {
    if (abs === undefined) return;
    const id = fileIdentity(abs, opts.readFiles);
    add(files, id.key, { member, what, at, access, shown: abs, charDevice: id.charDevice });
  };

  specs.forEach((loaded, m) => {
    const s = loaded.spec;
    s.networkInterfaces.forEach((n, i) => {
      add(taps, n.host_dev_name, { member: m, what: 'host_dev_name', at: ['network-interfaces', i, 'host_dev_name'], access: 'write', shown: n.host_dev_name });
      if (n.guest_mac) add(macs, n.guest_mac.toLowerCase(), { member: m, what: 'guest_mac', at: ['network-interfaces', i, 'guest_mac'], access: 'write', shown: n.guest_mac });
    });
    if (s.specFile !== '<inline>') file(m, s.specFile, 'the spec file', [], 'read');
    file(m, s.bootSource.kernel_image_path, 'kernel_image_path', ['boot-source', 'kernel_image_path'], 'read');
    file(m, s.bootSource.initrd_path, 'initrd_path', ['boot-source', 'initrd_path'], 'read');
    s.drives.forEach((d, i) => file(m, d.path_on_host, `drive "${d.drive_id}"`, ['drives', i, 'path_on_host'], d.is_read_only ? 'read' : 'write'));
    if (s.cpuConfig && s.cpuConfig.source !== 'inline') file(m, s.cpuConfig.source, 'the cpu-config template', ['cpu-config'], 'read');
    file(m, s.logger?.log_path, 'logger.log_path', ['logger', 'log_path'], 'output');
    file(m, s.metrics?.metrics_path, 'metrics.metrics_path', ['metrics', 'metrics_path'], 'output');
    file(m, s.vsock?.uds_path, 'vsock.uds_path', ['vsock', 'uds_path'], 'output');
  });

  const where = (u: Use) => {
    const d = specs[u.member];
    if (u.at.length === 0) return `${d.displayFile} (the spec file itself)`;
    const loc = d.locate({ severity: 'error', code: '', path: u.at, message: '' });
    return `${loc.file}:${loc.line}:${loc.column} (${pointer(u.at)})`;
  };
  const list = (others: Use[]) => {
    const shown = others.slice(0, MAX_LISTED).map(where);
    const more = others.length - shown.length;
    return shown.join(', ') + (more > 0 ? ` and ${more} more` : '');
  };
  const report = (u: Use, code: string, message: string, hint: string) => {
    out[u.member].push(specs[u.member].locate({ severity: 'error', code, path: u.at, message, hint }));
  };

  for (const [tap, uses] of taps) {
    for (const u of uses) {
      const others = uses.filter((o) => o.member !== u.member);
      if (others.length === 0) continue;
      report(u, 'fleet-duplicate-tap', `TAP device "${tap}" is also used by ${list(others)}`, 'give each VM its own TAP device (host_dev_name)');
    }
  }
  for (const uses of macs.values()) {
    for (const u of uses) {
      const others = uses.filter((o) => o.member !== u.member);
      if (others.length === 0) continue;
      report(u, 'fleet-duplicate-mac', `guest MAC ${u.shown} is also used by ${list(others)}`, 'give each VM a guest_mac of its own');
    }
  }
  for (const uses of files.values()) {
    for (const u of uses) {
      const others = uses.filter((o) => o.member !== u.member && conflicts(u, o));
      if (others.length === 0) continue;
      if (u.access === 'output' || others.some((o) => o.access === 'output')) {
        const mine = u.access === 'output';
        report(
          u,
          'fleet-shared-output',
          mine
            ? `${u.what} ${u.shown} is also used by ${list(others)}: two VMs would write one file`
            : `${u.shown} (${u.what}) is written by another VM: ${list(others)}`,
          mine ? `give each VM its own ${u.what}` : `point the other VM's ${others.find((o) => o.access === 'output')?.what} elsewhere`,
        );
      } else {
        report(
          u,
          'fleet-shared-writable-drive',
          u.access === 'write'
            ? `${u.what} writes to ${u.shown}, which is also used by ${list(others)}`
            : `${u.shown} (${u.what}) is written by another VM: ${list(others)}`,
          'give each VM its own copy of a writable image; only read-only files may be shared between VMs',
        );
      }
    }
  }
  for (const list of out) list.sort((a, b) => (a.line ?? 0) - (b.line ?? 0) || (a.column ?? 0) - (b.column ?? 0));
  return out;
}

/** Two uses of one file by different VMs conflict unless both only read it. */
function conflicts(a: Use, b: Use): boolean {
  if (a.access === 'read' && b.access === 'read') return false;
  // /dev/null, a terminal: any number of log/metrics writers.
  if (a.access === 'output' && b.access === 'output' && a.charDevice) return false;
  return true;
}
