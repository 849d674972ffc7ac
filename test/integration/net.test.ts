import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createSealedNetns, SealedNetns } from '../helpers/netns';
import { Workspace } from '../helpers/specs';

/**
 * virtio-net against a real TAP device, in a sealed network namespace this test creates and removes:
 * the probe guest sends an ARP request through the NIC and must get the host kernel's reply.
 */
const ROOT = path.resolve(__dirname, '..', '..');
const BIN = path.join(ROOT, 'bin', 'fc-run');
const PROBE = path.join(ROOT, 'guest', 'probe', 'build', 'probe.elf');
const canTap = fs.existsSync('/dev/net/tun') && process.getuid?.() === 0;
const canBoot = canTap && fs.existsSync('/dev/kvm');
const testTap = canTap ? test : test.skip;
const testBoot = canBoot ? test : test.skip;
if (!canTap) console.warn('SKIPPED: the TAP tests need /dev/net/tun and root (to create a network namespace)');
else if (!canBoot) console.warn('SKIPPED: the TAP tests that boot a guest need /dev/kvm, which this host does not have');

/** What net-rate.js reports (see there). */
interface RateRun {
  configured: number;
  seconds: number;
  idealSeconds: number;
  immediate: number;
  own: number;
  ownBytes: number;
  foreign: number;
  samples: number;
  worstExcess: number;
  timedOut: boolean;
  dropped: number;
  throttled: number;
}

let ws: Workspace;
let net: SealedNetns;
let NS: string;
let TAP: string;
const sysfs = (file: string) => net.tapSysfs(file);

/** 20 KB per 100 ms = 200 KB/s; 120 frames of 1000 bytes; the first 20 go at once (full bucket). */
function rateRun(direction: 'tx' | 'rx'): RateRun {
  const r = spawnSync('ip', ['netns', 'exec', NS, process.execPath, path.join(__dirname, '..', 'helpers', 'net-rate.js'), TAP, '20000', '100', '120', direction], { encoding: 'utf8', timeout: 90_000 });
  expect(r.stderr).toBe('');
  const m = JSON.parse(r.stdout) as RateRun;
  console.log(`net ${direction} limit: configured ${(m.configured / 1000).toFixed(1)} KB/s, took ${m.seconds.toFixed(3)} s (ideal ${m.idealSeconds.toFixed(3)} s), ` +
    `${m.samples} samples, smallest margin below the bound: ${-m.worstExcess} bytes, ${m.foreign} foreign frames`);
  return m;
}

/**
 * What the limiter guarantees whatever the load: never more than the bucket plus the rate since it
 * was made (checked at every sample), and progress: a loaded machine may be slow, but not by more
 * than a generous factor (a limiter that stalls, or waits many times too long, fails).
 */
function expectLimited(m: RateRun): void {
  expect(m.timedOut).toBe(false);
  expect(m.samples).toBeGreaterThan(0);
  expect(m.worstExcess).toBeLessThanOrEqual(0);
  expect(m.seconds).toBeLessThan(m.idealSeconds * 4 + 3);
}

(canTap ? describe : describe.skip)('virtio-net through a TAP device', () => {
  beforeAll(() => {
    ws = new Workspace();
    // A neighbour on the TAP's subnet: what the host kernel sends it leaves through the TAP.
    net = createSealedNetns('net', { addresses: ['10.200.0.1/24'], neighbours: [['10.200.0.9', '06:00:00:00:00:09']] });
    NS = net.ns;
    TAP = net.tap;
  });
  afterAll(() => {
    net?.remove();
    ws?.remove();
  });

  testBoot('the guest ARPs the host end of the TAP and receives the host kernel\'s reply', () => {
    const spec = ws.write('net.json', {
      'boot-source': { kernel_image_path: PROBE, boot_args: 'console=ttyS0 probe.ip=10.200.0.2 probe.peer=10.200.0.1' },
      'machine-config': { vcpu_count: 1, mem_size_mib: 64 },
      'network-interfaces': [{ iface_id: 'eth0', host_dev_name: TAP, guest_mac: '06:00:0a:c8:00:02' }],
    });
    const rxBefore = Number(sysfs('statistics/rx_packets'));
    const r = spawnSync('ip', ['netns', 'exec', NS, process.execPath, BIN, spec], { encoding: 'utf8', timeout: 120_000, env: { ...process.env, NO_COLOR: '1' } });
    const out = r.stdout.replace(/\r/g, '');
    expect(out).toContain('# net-mac: 06:00:0a:c8:00:02');
    expect(out).toContain('ok - net-tx');
    expect(out).toContain('ok - net-arp');
    expect(out).toContain(`# net-peer-mac: ${sysfs('address')}`);
    expect(r.status).toBe(0);
    // The host kernel saw the guest's frame arrive on its TAP.
    expect(Number(sysfs('statistics/rx_packets'))).toBeGreaterThan(rxBefore);
  });

  testTap('a tx rate limit on the interface holds: never above size + rate x time, and it keeps going', () => {
    const m = rateRun('tx');
    expectLimited(m);
    expect(m.immediate).toBeGreaterThanOrEqual(20); // the bucket starts full
    expect(m.own).toBe(120);
    expect(m.ownBytes).toBe(120 * 1000);
    expect(m.dropped).toBe(0);
  });

  testTap('an rx rate limit on the interface holds: the host\'s frames reach the guest, never above size + rate x time', () => {
    const m = rateRun('rx');
    expectLimited(m);
    // Only this run's datagrams count; the namespace is sealed, so nothing else should come.
    expect(m.own).toBe(120);
    expect(m.ownBytes).toBe(120 * 1000);
    expect(m.dropped).toBe(0);
  });

  testBoot('a TAP name that cannot be opened is a clear error before the guest starts', () => {
    const spec = ws.write('bad-tap.json', {
      'boot-source': { kernel_image_path: PROBE },
      'network-interfaces': [{ iface_id: 'eth0', host_dev_name: 'lo' }],
    });
    const r = spawnSync('ip', ['netns', 'exec', NS, process.execPath, BIN, spec], { encoding: 'utf8', env: { ...process.env, NO_COLOR: '1' } });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/network interface "eth0": ioctl\(TUNSETIFF\) failed/);
    expect(r.stdout).toBe('');
  });
});
