import { EXIT_INVALID_SPEC, FcRunError } from '../errors';
import * as L from './layout';
import { BootPlan, canonicalJson, DevicePlan, PLAN_VERSION } from './plan';

/**
 * A snapshot carries the plan of the VM it was taken from, and restore builds the machine from it.
 * A snapshot file can come from anywhere, and its checksum only catches accidents, so the plan is
 * checked here before anything uses it: every field restore reads has the type and range a plan
 * compiled by this fc-run has, and everything that follows from the layout (memory slots, device
 * windows, IRQs, legacy ports) must be exactly what the planner gives for that shape.
 */
export function checkSnapshotPlan(raw: unknown, source: string): BootPlan {
  const fail = (where: string, what: string): never => {
    throw new FcRunError('snapshot-invalid', `${source}: the snapshot's plan is not usable: ${where} ${what}`, EXIT_INVALID_SPEC);
  };
  const obj = (v: unknown, where: string): Record<string, unknown> => (typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : fail(where, 'must be an object'));
  const int = (v: unknown, where: string, min: number, max: number): number => (Number.isSafeInteger(v) && (v as number) >= min && (v as number) <= max ? (v as number) : fail(where, `must be an integer from ${min} to ${max}`));
  const str = (v: unknown, where: string, pattern: RegExp, max = 4096): string =>
    typeof v === 'string' && v.length > 0 && v.length <= max && pattern.test(v) && !v.includes('\0') ? v : fail(where, `must be a string matching ${pattern}`);
  const bool = (v: unknown, where: string): boolean => (typeof v === 'boolean' ? v : fail(where, 'must be true or false'));
  const oneOf = <T extends string>(v: unknown, where: string, values: readonly T[]): T => (values.includes(v as T) ? (v as T) : fail(where, `must be one of ${values.join(', ')}`));
  const same = (v: unknown, want: unknown, where: string) => {
    if (canonicalJson(v) !== canonicalJson(want)) fail(where, `must be ${JSON.stringify(want)} for this layout`);
  };
  const bucket = (v: unknown, where: string) => {
    if (v === undefined) return;
    const b = obj(v, where);
    // As the spec's rules have them: a bucket that exists limits something.
    int(b.size, `${where}.size`, 1, Number.MAX_SAFE_INTEGER);
    int(b.one_time_burst, `${where}.one_time_burst`, 0, Number.MAX_SAFE_INTEGER);
    int(b.refill_time_ms, `${where}.refill_time_ms`, 1, Number.MAX_SAFE_INTEGER);
  };
  const limiter = (v: unknown, where: string) => {
    if (v === undefined) return;
    const l = obj(v, where);
    bucket(l.bandwidth, `${where}.bandwidth`);
    bucket(l.ops, `${where}.ops`);
  };

  const p = obj(raw, 'plan');
  if (p.planVersion !== PLAN_VERSION) fail('planVersion', `is ${JSON.stringify(p.planVersion)}; this fc-run restores plans of version ${PLAN_VERSION}`);
  same(p.arch, 'x86_64', 'arch');
  const vcpus = obj(p.vcpus, 'vcpus');
  int(vcpus.count, 'vcpus.count', 1, 32);
  bool(vcpus.smt, 'vcpus.smt');
  const memory = obj(p.memory, 'memory');
  const sizeMib = int(memory.sizeMib, 'memory.sizeMib', 1, 1024 * 1024);
  same(memory.regions, L.guestRamRegions(sizeMib), 'memory.regions');
  if (memory.trackDirtyPages !== undefined) same(memory.trackDirtyPages, true, 'memory.trackDirtyPages');
  const template = obj(p.cpuTemplate, 'cpuTemplate');
  const kind = oneOf(template.kind, 'cpuTemplate.kind', ['none', 'custom', 'static'] as const);
  if (kind === 'static') {
    str(template.name, 'cpuTemplate.name', /^[A-Za-z0-9]+$/, 16);
    oneOf(template.vendor, 'cpuTemplate.vendor', ['Intel', 'AMD'] as const);
    if (!Array.isArray(template.models)) fail('cpuTemplate.models', 'must be a list');
  }
  const devices = Array.isArray(p.devices) ? p.devices : fail('devices', 'must be a list');
  if (devices.length > L.VIRTIO_IRQ_LAST - L.VIRTIO_IRQ_FIRST + 1) fail('devices', 'has more devices than there are IRQs for');
  const ids = new Set<string>();
  devices.forEach((raw: unknown, i) => {
    const at = `devices[${i}]`;
    const d = obj(raw, at);
    same(d.index, i, `${at}.index`);
    same(d.mmio, { start: L.VIRTIO_MMIO_BASE + i * L.VIRTIO_MMIO_SIZE, size: L.VIRTIO_MMIO_SIZE }, `${at}.mmio`);
    same(d.irq, L.VIRTIO_IRQ_FIRST + i, `${at}.irq`);
    const id = str(d.id, `${at}.id`, /^[A-Za-z0-9_-]+$/, 64);
    const k = oneOf(d.kind, `${at}.kind`, ['block', 'net', 'vsock', 'entropy'] as const);
    if (ids.has(`${k}:${id}`)) fail(`${at}.id`, `repeats ${id}`);
    if ((k === 'vsock' || k === 'entropy') && [...ids].some((x) => x.startsWith(`${k}:`))) fail(`${at}.kind`, `is a second ${k} device; a VM has at most one`);
    ids.add(`${k}:${id}`);
    if (k === 'block') {
      str(d.path, `${at}.path`, /^\//);
      bool(d.readOnly, `${at}.readOnly`);
      bool(d.root, `${at}.root`);
      oneOf(d.cacheType, `${at}.cacheType`, ['Unsafe', 'Writeback'] as const);
      limiter(d.rateLimiter, `${at}.rateLimiter`);
    } else if (k === 'net') {
      str(d.tap, `${at}.tap`, /^[^/\s]+$/, 15);
      if (d.guestMac !== undefined) str(d.guestMac, `${at}.guestMac`, /^([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}$/);
      if (d.mtu !== undefined) int(d.mtu, `${at}.mtu`, 68, 65535);
      bool(d.mmds, `${at}.mmds`);
      limiter(d.rxRateLimiter, `${at}.rxRateLimiter`);
      limiter(d.txRateLimiter, `${at}.txRateLimiter`);
    } else if (k === 'vsock') {
      int(d.guestCid, `${at}.guestCid`, 3, 0xffffffff);
      str(d.udsPath, `${at}.udsPath`, /^\//);
    } else {
      limiter(d.rateLimiter, `${at}.rateLimiter`);
    }
  });
  same(p.legacy, { serial: L.SERIAL_COM1, i8042: L.I8042, bootTimerPort: L.BOOT_TIMER_PORT }, 'legacy');
  if (p.mmds !== undefined) {
    const m = obj(p.mmds, 'mmds');
    oneOf(m.version, 'mmds.version', ['V1', 'V2'] as const);
    str(m.ipv4Address, 'mmds.ipv4Address', /^\d{1,3}(\.\d{1,3}){3}$/, 15);
    bool(m.imdsCompat, 'mmds.imdsCompat');
  }
  // Logs and metrics of the restored VM are restore's own flags, not the original's files.
  return { ...(p as unknown as BootPlan), logger: undefined, metrics: undefined, devices: devices as DevicePlan[] };
}

/** Back ends a restore can point elsewhere, so that clones of one snapshot run side by side. */
export interface BackendOverrides {
  /** Interface id → TAP name. */
  taps: Map<string, string>;
  /** Drive id → file. */
  drives: Map<string, string>;
  vsockUds?: string;
}

/** The plan with the overrides applied; an override naming no device of the snapshot is refused. */
export function applyOverrides(plan: BootPlan, o: BackendOverrides): BootPlan {
  const unknown = (what: string, id: string, have: string[]): never => {
    throw new FcRunError('restore-override', `the snapshot has no ${what} "${id}" (it has: ${have.length > 0 ? have.join(', ') : 'none'})`, EXIT_INVALID_SPEC);
  };
  const ids = (k: DevicePlan['kind']) => plan.devices.filter((d) => d.kind === k).map((d) => d.id);
  for (const id of o.taps.keys()) if (!ids('net').includes(id)) unknown('network interface', id, ids('net'));
  for (const id of o.drives.keys()) if (!ids('block').includes(id)) unknown('drive', id, ids('block'));
  if (o.vsockUds !== undefined && ids('vsock').length === 0) throw new FcRunError('restore-override', 'the snapshot has no vsock device to give a uds_path', EXIT_INVALID_SPEC);
  const devices = plan.devices.map((d): DevicePlan => {
    if (d.kind === 'net' && o.taps.has(d.id)) return { ...d, tap: o.taps.get(d.id)! };
    if (d.kind === 'block' && o.drives.has(d.id)) return { ...d, path: o.drives.get(d.id)! };
    if (d.kind === 'vsock' && o.vsockUds !== undefined) return { ...d, udsPath: o.vsockUds };
    return d;
  });
  return { ...plan, devices };
}

/**
 * The plan without its back ends (TAP names, drive files, the vsock socket path): what must match
 * between a snapshot and a spec said to describe it, whatever the clone's back ends are.
 */
export function planWithoutBackends(plan: BootPlan): unknown {
  return {
    ...plan,
    spec: undefined,
    logger: undefined,
    metrics: undefined,
    devices: plan.devices.map((d) => (d.kind === 'net' ? { ...d, tap: '' } : d.kind === 'block' ? { ...d, path: '' } : d.kind === 'vsock' ? { ...d, udsPath: '' } : d)),
  };
}

/** What checkSnapshot needs of a snapshot file (vmm/snapshot-file.ts's VmSnapshot). */
interface SnapshotLike {
  header: { vcpuCount: number; memory: { regions: { start: number; size: number }[] }; cpuTemplate: string; devices: { kind: string; id: string }[]; plan: unknown };
  vcpus: unknown[];
}

/**
 * A snapshot's plan, checked (checkSnapshotPlan), and its header's summary checked against it: a
 * header that says something the plan does not is a damaged or forged file, refused (exit 2)
 * rather than described or restored.
 */
export function checkSnapshot(snapshot: SnapshotLike, source: string): BootPlan {
  const plan = checkSnapshotPlan(snapshot.header.plan, source);
  const fail = (what: string): never => {
    throw new FcRunError('snapshot-invalid', `${source}: the snapshot's header does not match its plan: ${what}`, EXIT_INVALID_SPEC);
  };
  const h = snapshot.header;
  if (h.vcpuCount !== plan.vcpus.count) fail(`${h.vcpuCount} vCPUs in the header, ${plan.vcpus.count} in the plan`);
  if (snapshot.vcpus.length !== plan.vcpus.count) fail(`the plan has ${plan.vcpus.count} vCPUs but the file holds the state of ${snapshot.vcpus.length}`);
  if (canonicalJson(h.memory.regions) !== canonicalJson(plan.memory.regions)) fail('the memory regions differ');
  const template = plan.cpuTemplate.kind === 'static' ? plan.cpuTemplate.name : plan.cpuTemplate.kind;
  if (h.cpuTemplate !== template) fail(`CPU template ${h.cpuTemplate} in the header, ${template} in the plan`);
  const devices = plan.devices.map((d) => ({ kind: d.kind, id: d.id }));
  if (canonicalJson(h.devices) !== canonicalJson(devices)) fail('the devices differ');
  return plan;
}
