import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Workspace } from '../helpers/specs';

/**
 * virtio-net against a real TAP device, in a network namespace this test creates and removes:
 * the probe guest sends an ARP request through the NIC and must get the host kernel's reply.
 */
const ROOT = path.resolve(__dirname, '..', '..');
const BIN = path.join(ROOT, 'bin', 'fc-run');
const PROBE = path.join(ROOT, 'guest', 'probe', 'build', 'probe.elf');
const canRun = fs.existsSync('/dev/kvm') && fs.existsSync('/dev/net/tun') && process.getuid?.() === 0;
const describeNet = canRun ? describe : describe.skip;
if (!canRun) console.warn('SKIPPED: the TAP test needs /dev/kvm, /dev/net/tun and root (to create a network namespace)');

const NS = `fcrun-test-${process.pid}`;
const TAP = 'fctap0';
const ip = (...args: string[]) => execFileSync('ip', ['netns', 'exec', NS, 'ip', ...args], { encoding: 'utf8' });
const sysfs = (file: string) => execFileSync('ip', ['netns', 'exec', NS, 'cat', `/sys/class/net/${TAP}/${file}`], { encoding: 'utf8' }).trim();

let ws: Workspace;
describeNet('virtio-net through a TAP device', () => {
  beforeAll(() => {
    ws = new Workspace();
    execFileSync('ip', ['netns', 'add', NS]);
    ip('link', 'set', 'lo', 'up');
    ip('tuntap', 'add', 'dev', TAP, 'mode', 'tap');
    ip('addr', 'add', '10.200.0.1/24', 'dev', TAP);
    ip('link', 'set', TAP, 'up');
    // A neighbour on the TAP's subnet: what the host kernel sends it leaves through the TAP.
    ip('neigh', 'add', '10.200.0.9', 'lladdr', '06:00:00:00:00:09', 'dev', TAP);
  });
  afterAll(() => {
    spawnSync('ip', ['netns', 'del', NS]);
    ws?.remove();
  });

  test('the guest ARPs the host end of the TAP and receives the host kernel\'s reply', () => {
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

  test('a tx rate limit on the interface holds: achieved rate within 5 % of the configured one', () => {
    // 20 KB per 100 ms = 200 KB/s; 1000-byte frames; the first 20 go at once (full bucket).
    const r = spawnSync('ip', ['netns', 'exec', NS, process.execPath, path.join(__dirname, '..', 'helpers', 'net-rate.js'), TAP, '20000', '100', '120'], { encoding: 'utf8', timeout: 60_000 });
    expect(r.stderr).toBe('');
    const m = JSON.parse(r.stdout) as { configured: number; achieved: number; immediate: number; sent: number; dropped: number; throttled: number };
    console.log(`net tx limit: configured ${(m.configured / 1000).toFixed(1)} KB/s, achieved ${(m.achieved / 1000).toFixed(1)} KB/s`);
    expect(m.immediate).toBe(20);
    expect(m.sent).toBe(120);
    expect(m.dropped).toBe(0);
    expect(m.throttled).toBeGreaterThan(0);
    expect(m.achieved / m.configured).toBeGreaterThan(0.95);
    expect(m.achieved / m.configured).toBeLessThan(1.05);
  });

  test('an rx rate limit on the interface holds: frames from the host reach the guest within 5 % of the rate', () => {
    const r = spawnSync('ip', ['netns', 'exec', NS, process.execPath, path.join(__dirname, '..', 'helpers', 'net-rate.js'), TAP, '20000', '100', '120', 'rx'], { encoding: 'utf8', timeout: 60_000 });
    expect(r.stderr).toBe('');
    const m = JSON.parse(r.stdout) as { configured: number; achieved: number; received: number; rxBytes: number; dropped: number; throttled: number };
    console.log(`net rx limit: configured ${(m.configured / 1000).toFixed(1)} KB/s, achieved ${(m.achieved / 1000).toFixed(1)} KB/s`);
    expect(m.received).toBe(120);
    expect(m.rxBytes).toBe(120 * 1000);
    expect(m.dropped).toBe(0);
    expect(m.throttled).toBeGreaterThan(0);
    expect(m.achieved / m.configured).toBeGreaterThan(0.95);
    expect(m.achieved / m.configured).toBeLessThan(1.05);
  });

  test('a TAP name that cannot be opened is a clear error before the guest starts', () => {
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
