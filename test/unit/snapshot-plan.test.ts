import { canonicalJson, planSpec } from '../../src/boot';
import { applyOverrides, checkSnapshotPlan, planWithoutBackends } from '../../src/boot/snapshot-plan';
import { load, Workspace } from '../helpers/specs';

let ws: Workspace;
beforeAll(() => (ws = new Workspace()));
afterAll(() => ws.remove());

function fullPlan(overrides: Record<string, unknown> = {}) {
  return planSpec(
    load(ws, {
      'boot-source': { kernel_image_path: 'vmlinux' },
      'machine-config': { vcpu_count: 2, mem_size_mib: 4096 + 128 },
      drives: [
        { drive_id: 'rootfs', path_on_host: 'rootfs.ext4', is_root_device: true, is_read_only: false, rate_limiter: { bandwidth: { size: 1000, refill_time: 100 } } },
        { drive_id: 'data', path_on_host: 'data.ext4', is_root_device: false, is_read_only: true },
      ],
      'network-interfaces': [{ iface_id: 'eth0', host_dev_name: 'tap0', guest_mac: '06:00:ac:10:00:02' }],
      vsock: { guest_cid: 3, uds_path: 'v.sock' },
      entropy: {},
      'mmds-config': { version: 'V2', network_interfaces: ['eth0'] },
      ...overrides,
    }),
  );
}

/** The plan as it comes back out of a snapshot file: JSON. */
const stored = (p: unknown) => JSON.parse(JSON.stringify(p));

describe("a snapshot's plan", () => {
  test('a plan this fc-run compiled passes, whole; logs and metrics are left to the restoring command', () => {
    const { plan } = fullPlan({ logger: { log_path: 'vm.log' } });
    const checked = checkSnapshotPlan(stored(plan), 'vm.snap');
    expect(checked.devices).toEqual(stored(plan).devices);
    expect(checked.memory).toEqual(plan.memory);
    expect(checked.logger).toBeUndefined();
  });

  test('track_dirty_pages: the plan says so only when it is on (other plans keep their hash); a snapshot plan with any other value is refused', () => {
    const off = fullPlan();
    const on = fullPlan({ 'machine-config': { vcpu_count: 2, mem_size_mib: 4096 + 128, track_dirty_pages: true } });
    const explicitOff = fullPlan({ 'machine-config': { vcpu_count: 2, mem_size_mib: 4096 + 128, track_dirty_pages: false } });
    expect(off.plan.memory.trackDirtyPages).toBeUndefined();
    expect(explicitOff.hash).toBe(off.hash);
    expect(on.plan.memory.trackDirtyPages).toBe(true);
    expect(on.hash).not.toBe(off.hash);
    expect(checkSnapshotPlan(stored(on.plan), 'vm.snap').memory.trackDirtyPages).toBe(true);
    const bad = stored(on.plan);
    bad.memory.trackDirtyPages = 'yes';
    expect(() => checkSnapshotPlan(bad, 'vm.snap')).toThrow(/memory.trackDirtyPages must be true/);
  });

  test.each([
    ['another plan version', (p: any) => (p.planVersion = 99), /planVersion is 99; this fc-run restores plans of version 1/],
    ['memory slots that do not follow from the size', (p: any) => (p.memory.regions[0].size += 4096), /memory.regions must be/],
    ['a huge memory size', (p: any) => (p.memory.sizeMib = 1e12), /memory.sizeMib must be an integer/],
    ['0 vCPUs', (p: any) => (p.vcpus.count = 0), /vcpus.count must be an integer from 1 to 32/],
    ['a device window moved', (p: any) => (p.devices[1].mmio.start += 0x1000), /devices\[1\].mmio must be/],
    ['an IRQ moved', (p: any) => (p.devices[0].irq = 4), /devices\[0\].irq must be 5/],
    ['an unknown device kind', (p: any) => (p.devices[2].kind = 'gpu'), /devices\[2\].kind must be one of/],
    ['a relative drive path', (p: any) => (p.devices[0].path = 'disk.img'), /devices\[0\].path must be a string matching/],
    ['a TAP name too long for Linux', (p: any) => (p.devices[2].tap = 'x'.repeat(16)), /devices\[2\].tap/],
    ['a rate limiter of the wrong type', (p: any) => (p.devices[0].rateLimiter.bandwidth.size = '1000'), /rateLimiter.bandwidth.size must be an integer/],
    ['legacy ports moved', (p: any) => (p.legacy.serial.port = 0x2f8), /legacy must be/],
    ['not an object', (p: any) => (p.devices = 'all'), /devices must be a list/],
  ])('%s is refused with exit 2, naming the field', (_what, spoil, message) => {
    const p = stored(fullPlan().plan);
    spoil(p);
    expect(() => checkSnapshotPlan(p, 'vm.snap')).toThrow(expect.objectContaining({ exitCode: 2, code: 'snapshot-invalid', message: expect.stringMatching(message) }));
  });

  test('back-end overrides change exactly the named back ends; an unknown id is refused', () => {
    const plan = checkSnapshotPlan(stored(fullPlan().plan), 'vm.snap');
    const clone = applyOverrides(plan, { taps: new Map([['eth0', 'tap7']]), drives: new Map([['rootfs', '/tmp/clone.ext4']]), vsockUds: '/tmp/clone.sock' });
    expect(clone.devices.map((d) => (d.kind === 'net' ? d.tap : d.kind === 'block' ? d.path : d.kind === 'vsock' ? d.udsPath : d.id))).toEqual([
      '/tmp/clone.ext4',
      plan.devices[1].kind === 'block' ? plan.devices[1].path : '',
      'tap7',
      '/tmp/clone.sock',
      'rng',
    ]);
    expect(canonicalJson(planWithoutBackends(clone))).toBe(canonicalJson(planWithoutBackends(plan)));
    expect(() => applyOverrides(plan, { taps: new Map([['eth9', 'x']]), drives: new Map() })).toThrow(/no network interface "eth9" \(it has: eth0\)/);
    expect(() => applyOverrides(plan, { taps: new Map(), drives: new Map([['nope', '/x']]) })).toThrow(/no drive "nope" \(it has: rootfs, data\)/);
  });

  test('a spec that differs in more than its back ends does not match', () => {
    const a = fullPlan().plan;
    const b = fullPlan({ 'machine-config': { vcpu_count: 1, mem_size_mib: 4096 + 128 } }).plan;
    expect(canonicalJson(planWithoutBackends(a))).not.toBe(canonicalJson(planWithoutBackends(b)));
  });
});
