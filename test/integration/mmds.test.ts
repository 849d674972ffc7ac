import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createSealedNetns, SealedNetns } from '../helpers/netns';
import { Workspace } from '../helpers/specs';

/**
 * MMDS end to end: the probe guest's TCP/HTTP client asks 169.254.169.254 through its virtio-net
 * device; fc-run's network stack answers from the spec's "mmds" contents. The interface is backed
 * by a real TAP device in a network namespace this test creates, and the TAP's counters show
 * that none of the MMDS traffic reached the host.
 */
const ROOT = path.resolve(__dirname, '..', '..');
const BIN = path.join(ROOT, 'bin', 'fc-run');
const PROBE = path.join(ROOT, 'guest', 'probe', 'build', 'probe.elf');
const canRun = fs.existsSync('/dev/kvm') && fs.existsSync('/dev/net/tun') && process.getuid?.() === 0;
const describeNet = canRun ? describe : describe.skip;
if (!canRun) console.warn('SKIPPED: the MMDS test needs /dev/kvm, /dev/net/tun and root (to create a network namespace)');


const CONTENTS = { latest: { 'meta-data': { 'ami-id': 'ami-0123456789', 'instance-id': 'i-fcrun', tags: { env: 'test' } } } };

let ws: Workspace;
let net: SealedNetns;
describeNet('MMDS through virtio-net', () => {
  beforeAll(() => {
    ws = new Workspace();
    // Sealed: the host sends nothing of its own to the guest, so the guest's TCP/IP sees only MMDS.
    net = createSealedNetns('mmds');
  });
  afterAll(() => {
    net?.remove();
    ws?.remove();
  });

  function boot(name: string, mmdsConfig: Record<string, unknown>, bootArgs: string, args: string[] = []) {
    const spec = ws.write(name, {
      'boot-source': { kernel_image_path: PROBE, boot_args: `console=ttyS0 probe.ip=10.202.0.2 ${bootArgs}` },
      'machine-config': { vcpu_count: 1, mem_size_mib: 64 },
      'network-interfaces': [{ iface_id: 'eth0', host_dev_name: net.tap, guest_mac: '06:00:0a:ca:00:02' }],
      'mmds-config': { network_interfaces: ['eth0'], ...mmdsConfig },
      ...(args.includes('--metadata') ? {} : { mmds: CONTENTS }),
    });
    const rxBefore = net.tapStat('rx_packets');
    const r = spawnSync('ip', ['netns', 'exec', net.ns, process.execPath, BIN, spec, ...args], { encoding: 'utf8', timeout: 120_000, env: { ...process.env, NO_COLOR: '1' } });
    return { out: r.stdout.replace(/\r/g, ''), status: r.status, stderr: r.stderr, tapFramesFromGuest: net.tapStat('rx_packets') - rxBefore };
  }

  test('V2: the guest gets a session token, then a value as JSON; without a token it gets 401', () => {
    const metrics = path.join(ws.dir, 'v2.metrics');
    const r = boot('v2.json', { version: 'V2' }, 'probe.mmds=169.254.169.254 probe.mmds_path=/latest/meta-data/ami-id', ['--metrics-path', metrics]);
    expect(r.out).toContain('# mmds-token-status: 200');
    expect(r.out).toContain('# mmds-status: 200');
    expect(r.out).toContain('# mmds-body: "ami-0123456789"');
    expect(r.out).toContain('# mmds-notoken-status: 401');
    expect(r.out).toContain('ok - mmds');
    expect(r.out).not.toContain('not ok');
    expect(r.status).toBe(0);
    // ARP, the handshake, the requests: none of it left through the TAP.
    expect(r.tapFramesFromGuest).toBe(0);
    // The metrics saw it: three requests (token, value, no token), one token issued, one refused.
    const last = JSON.parse(fs.readFileSync(metrics, 'utf8').trim().split('\n').pop()!);
    expect(last.fc_run.mmds).toMatchObject({ requests: 3, tokens_issued: 1, bad_requests: 0 });
    expect(last.mmds).toMatchObject({ rx_no_token: 1, connections_created: 1, rx_bad_eth: 0 });
    expect(last.net_eth0).toMatchObject({ tx_packets_count: 0 });
    expect(last.fc_run.net_eth0).toMatchObject({ mmds_arp_replies: 1 });
    expect(last.fc_run.net_eth0.local_frames).toBe(last.mmds.rx_accepted);
  });

  test('V1 at another address, contents from --metadata, IMDS text format: a directory lists its keys; no token needed', () => {
    const metadata = ws.write('meta.json', CONTENTS);
    const r = boot('v1.json', { version: 'V1', ipv4_address: '169.254.170.2', imds_compat: true }, 'probe.mmds=169.254.170.2 probe.mmds_path=/latest/meta-data/', ['--metadata', metadata]);
    expect(r.out).toContain('# mmds-status: 200');
    expect(r.out).toContain('# mmds-body: ami-id\\ninstance-id\\ntags/');
    expect(r.out).toContain('# mmds-notoken-status: 200');
    expect(r.out).toContain('ok - mmds');
    expect(r.status).toBe(0);
    expect(r.tapFramesFromGuest).toBe(0);
  });
});
