import { execFileSync, spawnSync } from 'node:child_process';

/**
 * A network namespace with one TAP device in it, sealed from the host: the kernel sends nothing of
 * its own through the TAP, so a test sees only the frames it caused.
 *
 * Left alone, a TAP that comes up gets an IPv6 link-local address, and the kernel then sends
 * neighbour solicitations for duplicate address detection, MLD reports and router solicitations
 * out of it for seconds afterwards; a test that counts frames or bytes would count those too. So
 * IPv6 is turned off in the namespace (all, default, and the TAP itself) before the TAP exists and
 * before it comes up, and the IPv4 side is told not to announce or probe.
 *
 * Several test runs may share a machine: the namespace and TAP names carry the process id, so two
 * runs never meet.
 */
export interface SealedNetns {
  readonly ns: string;
  readonly tap: string;
  /** Runs a program inside the namespace; returns its stdout. */
  exec(program: string, ...args: string[]): string;
  ip(...args: string[]): string;
  /** A counter from /sys/class/net/<tap>/statistics (rx_packets, tx_packets, ...). */
  tapStat(name: string): number;
  /** A file under /sys/class/net/<tap>/, trimmed. */
  tapSysfs(file: string): string;
  remove(): void;
}

/** TAP names are at most 15 bytes (IFNAMSIZ - 1). */
const IFNAME_MAX = 15;

/** A TAP name unique to this process: `fc<tag><pid>`. */
export function tapName(tag: string): string {
  const name = `fc${tag}${process.pid}`;
  if (Buffer.byteLength(name) > IFNAME_MAX) throw new Error(`TAP name ${name} is longer than ${IFNAME_MAX} bytes: use a shorter tag than "${tag}"`);
  return name;
}

export interface SealedNetnsOptions {
  /** IPv4 addresses with prefix for the TAP, e.g. "10.200.0.1/24". */
  addresses?: string[];
  /** Static neighbours on the TAP: [IPv4 address, MAC]. */
  neighbours?: [string, string][];
}

export function createSealedNetns(tag: string, opts: SealedNetnsOptions = {}): SealedNetns {
  const ns = `fcrun-${tag}-${process.pid}`;
  const tap = tapName(tag);
  const exec = (program: string, ...args: string[]) => execFileSync('ip', ['netns', 'exec', ns, program, ...args], { encoding: 'utf8' });
  const sysctl = (key: string, value: number) => exec('sysctl', '-q', '-w', `${key}=${value}`);
  const ip = (...args: string[]) => exec('ip', ...args);
  const tapSysfs = (file: string) => exec('cat', `/sys/class/net/${tap}/${file}`).trim();
  spawnSync('ip', ['netns', 'del', ns]); // a leftover of a crashed run with a recycled pid
  execFileSync('ip', ['netns', 'add', ns]);
  try {
    // Before the TAP exists: it inherits "default".
    sysctl('net.ipv6.conf.all.disable_ipv6', 1);
    sysctl('net.ipv6.conf.default.disable_ipv6', 1);
    ip('link', 'set', 'lo', 'up');
    ip('tuntap', 'add', 'dev', tap, 'mode', 'tap');
    // Before it comes up: no link-local address, so no DAD, MLD or router solicitations.
    sysctl(`net.ipv6.conf.${tap}.disable_ipv6`, 1);
    // No gratuitous ARP when it comes up or an address changes; ARP only for its own addresses.
    sysctl(`net.ipv4.conf.${tap}.arp_notify`, 0);
    sysctl(`net.ipv4.conf.${tap}.arp_announce`, 2);
    sysctl(`net.ipv4.conf.${tap}.arp_ignore`, 1);
    for (const a of opts.addresses ?? []) ip('addr', 'add', a, 'dev', tap);
    ip('link', 'set', tap, 'up');
    for (const [addr, mac] of opts.neighbours ?? []) ip('neigh', 'add', addr, 'lladdr', mac, 'dev', tap, 'nud', 'permanent');
    if (exec('cat', `/proc/sys/net/ipv6/conf/${tap}/disable_ipv6`).trim() !== '1' || ip('-6', 'addr', 'show', 'dev', tap).trim() !== '') {
      throw new Error(`IPv6 is still on for ${tap} in ${ns}: the test would see the host's own traffic`);
    }
  } catch (err) {
    spawnSync('ip', ['netns', 'del', ns]);
    throw err;
  }
  return {
    ns,
    tap,
    exec,
    ip,
    tapSysfs,
    tapStat: (name) => Number(tapSysfs(`statistics/${name}`)),
    remove: () => void spawnSync('ip', ['netns', 'del', ns]),
  };
}
