import type { MetricsLayout } from './metrics';

/**
 * What fc-run counts for one microVM, and where: the layout of its metrics registry, computed
 * the same way on every thread from the plan's device list and vCPU count. Each group is written
 * by one thread only: `vcpuN` by vCPU N's thread, `vmm` and `api` by the main thread, the device
 * groups and `mmds` by the VMM thread. These are fc-run's own counters; the metrics file shows them
 * in Firecracker's groups and names (`firecracker-metrics.ts`).
 */

/**
 * KVM exit reasons fc-run counts by name (others count as `exitsOther`). I/O and MMIO exits are
 * counted by direction instead (`exitsIoIn`...), as Firecracker's `vcpu` group counts them.
 */
const EXIT_FIELDS: Record<number, string> = {
  5: 'exitsHlt',
  8: 'exitsShutdown',
  9: 'exitsFailEntry',
  10: 'exitsIntr',
  17: 'exitsInternalError',
  24: 'exitsSystemEvent',
};
/** KVM_EXIT_IO and KVM_EXIT_MMIO: counted where the direction is known. */
const EXITS_BY_DIRECTION = new Set([2, 6]);

export const VCPU_FIELDS = [
  'exitsIoIn',
  'exitsIoOut',
  'exitsMmioRead',
  'exitsMmioWrite',
  ...Object.values(EXIT_FIELDS),
  'exitsOther',
  /** The vCPU stopped the VM for a failure (triple fault, failed entry, internal error...). */
  'failures',
  /** Guest serial output this vCPU's thread wrote to the output (or discarded, with no output). */
  'serialTxBytes',
  /** Bytes this vCPU took from the UART's receive FIFO. */
  'serialRxReads',
  /** UART register accesses of a size other than one byte (ignored). */
  'serialBadReads',
  'serialBadWrites',
  /** Transmitted bytes dropped: the output is gone, or the guest sent them while the transmitter was full. */
  'serialLostBytes',
  'i8042Reads',
  'i8042Writes',
  'i8042BadReads',
  'i8042BadWrites',
  'i8042Resets',
  'pioUnknownReads',
  'pioUnknownWrites',
  'mmioUnknownReads',
  'mmioUnknownWrites',
  'bootTimerWrites',
  /** Virtio register accesses handed to the VMM thread. */
  'virtioRegisterAccesses',
] as const;
export type VcpuField = (typeof VCPU_FIELDS)[number];

/** The field counting exits of `reason`, or undefined for the exits counted by direction. */
export function exitField(reason: number): VcpuField | undefined {
  if (EXITS_BY_DIRECTION.has(reason)) return undefined;
  return (EXIT_FIELDS[reason] ?? 'exitsOther') as VcpuField;
}

/**
 * The main thread's counters. `serialTxBytes` and `serialLostBytes`: guest serial output that
 * waited for its reader, written (or dropped) by the main thread. `panicCount` is Firecracker's `vmm.panic_count` (1 once fc-run
 * failed fatally); the startup times are its `api_server` fields.
 */
export const VMM_FIELDS = ['serialRxBytes', 'serialTxBytes', 'serialLostBytes', 'bootTimeUs', 'panicCount', 'processStartupTimeUs', 'processStartupTimeCpuUs'] as const;
export const VMM_GAUGES = { bootTimeUs: 'gauge', panicCount: 'gauge', processStartupTimeUs: 'gauge', processStartupTimeCpuUs: 'gauge' } as const;

/**
 * The API server's counters (main thread), named `<Firecracker group>.<field>` so that they map
 * one to one onto Firecracker's request groups.
 */
export const API_FIELDS = [
  'get_api_requests.instance_info_count',
  'get_api_requests.machine_cfg_count',
  'get_api_requests.mmds_count',
  'get_api_requests.vmm_version_count',
  'put_api_requests.actions_count',
  'put_api_requests.actions_fails',
  'put_api_requests.mmds_count',
  'put_api_requests.mmds_fails',
  'patch_api_requests.drive_count',
  'patch_api_requests.drive_fails',
  'patch_api_requests.network_count',
  'patch_api_requests.network_fails',
  'patch_api_requests.mmds_count',
  'patch_api_requests.mmds_fails',
] as const;
export type ApiField = (typeof API_FIELDS)[number];

/**
 * Which of {@link API_FIELDS} a request counts in: `<group>.<x>_count` always and
 * `<group>.<x>_fails` when it failed, as Firecracker counts; undefined for requests Firecracker
 * has no counter for.
 */
export function apiRequestFields(method: string, path: string, ok: boolean): ApiField[] {
  const p = path.split('?')[0].replace(/\/+$/, '') || '/';
  const base = ((): string | undefined => {
    if (method === 'GET') {
      if (p === '/') return 'get_api_requests.instance_info_count';
      if (p === '/machine-config') return 'get_api_requests.machine_cfg_count';
      if (p === '/mmds') return 'get_api_requests.mmds_count';
      if (p === '/version') return 'get_api_requests.vmm_version_count';
      return undefined;
    }
    const group = method === 'PUT' ? 'put_api_requests' : method === 'PATCH' ? 'patch_api_requests' : undefined;
    if (!group) return undefined;
    const what = p === '/actions' ? 'actions' : p === '/mmds' ? 'mmds' : p.startsWith('/drives/') ? 'drive' : p.startsWith('/network-interfaces/') ? 'network' : undefined;
    return what ? `${group}.${what}_count` : undefined;
  })();
  if (!base || !(API_FIELDS as readonly string[]).includes(base)) return [];
  const fails = base.replace(/_count$/, '_fails');
  return ok || !(API_FIELDS as readonly string[]).includes(fails) ? [base as ApiField] : [base as ApiField, fails as ApiField];
}

export const TRANSPORT_FIELDS = ['interrupts', 'malformedChains', 'deviceFailures', 'invalidRegisterAccesses'] as const;
/** What each kind of device counts, then what the VMM thread counts for it (queue and timer events). */
export const DEVICE_FIELDS = {
  block: ['reads', 'writes', 'flushes', 'readBytes', 'writeBytes', 'errors', 'invalidRequests', 'throttled', 'queue0Events', 'rateLimiterEvents'],
  net: ['rxFrames', 'rxBytes', 'rxDropped', 'noRxBuffer', 'txFrames', 'txBytes', 'txDropped', 'txOversized', 'tapWriteFails', 'localFrames', 'invalidRequests', 'rxThrottled', 'txThrottled', 'queue0Events', 'queue1Events', 'tapEvents', 'rxRateLimiterEvents', 'txRateLimiterEvents'],
  vsock: ['connectionsOpened', 'connectionsRefused', 'resets', 'txPackets', 'rxPackets', 'txBytes', 'rxBytes', 'invalidPackets', 'queue0Events', 'queue1Events', 'queue2Events'],
  entropy: ['requests', 'bytes', 'invalidRequests', 'throttled', 'queue0Events', 'rateLimiterEvents'],
} as const;
/** The MMDS network stack's counters, in the group of each interface that serves MMDS. */
export const MMDS_STACK_FIELDS = ['mmdsFramesIn', 'mmdsFramesOut', 'mmdsBytesOut', 'mmdsArpReplies', 'mmdsBadFrames', 'mmdsUnsupported', 'mmdsOutOfOrder', 'mmdsConnectionsOpened', 'mmdsConnectionsEvicted', 'mmdsResetsSent', 'mmdsRepliesDropped'] as const;
export const MMDS_FIELDS = ['requests', 'badRequests', 'tokensIssued', 'noToken', 'invalidToken', 'notFound'] as const;

export interface MeteredDevice {
  kind: 'block' | 'net' | 'vsock' | 'entropy';
  id: string;
  mmds?: boolean;
}

/** The metrics group of a device: `block_<drive_id>`, `net_<iface_id>`, `vsock`, `entropy`. */
export function deviceGroup(d: MeteredDevice): string {
  return d.kind === 'block' || d.kind === 'net' ? `${d.kind}_${d.id}` : d.kind;
}

export function vmMetricsLayout(vcpus: number, devices: readonly MeteredDevice[], mmds: boolean): MetricsLayout {
  return [
    { name: 'vmm', fields: VMM_FIELDS, kind: VMM_GAUGES },
    { name: 'api', fields: API_FIELDS },
    ...Array.from({ length: vcpus }, (_, i) => ({ name: `vcpu${i}`, fields: VCPU_FIELDS })),
    ...devices.map((d) => ({ name: deviceGroup(d), fields: [...TRANSPORT_FIELDS, ...DEVICE_FIELDS[d.kind], ...(d.kind === 'net' && d.mmds ? MMDS_STACK_FIELDS : [])] })),
    ...(mmds ? [{ name: 'mmds', fields: MMDS_FIELDS }] : []),
  ];
}

/**
 * Points a component's `counters` object at shared metrics memory, keeping what it counted so
 * far; the component goes on writing `counters.x++`. `names` maps the component's field names to
 * the group's where they differ (a limiter's `throttled` becomes `rxThrottled`, say).
 */
export function shareCounters(owner: { readonly counters: object }, group: Record<string, number>, names: Record<string, string> = {}): void {
  const own = owner.counters as Record<string, number>;
  if (Object.keys(names).length === 0) {
    // Same names: the component writes straight into the group's view.
    for (const field of Object.keys(own)) {
      if (!(field in group)) throw new Error(`metrics: no field "${field}" for counter "${field}"`);
      group[field] += own[field];
    }
    Object.defineProperty(owner, 'counters', { value: group, enumerable: true });
    return;
  }
  const view: Record<string, number> = {};
  for (const field of Object.keys(own)) {
    const target = names[field] ?? field;
    if (!(target in group)) throw new Error(`metrics: no field "${target}" for counter "${field}"`);
    group[target] += own[field];
    Object.defineProperty(view, field, { enumerable: true, get: () => group[target], set: (v: number) => (group[target] = v) });
  }
  Object.seal(view);
  Object.defineProperty(owner, 'counters', { value: view, enumerable: true });
}
