import type { MetricsLayout } from './metrics';

/**
 * What fc-run counts for one microVM, and where: the layout of its metrics registry, computed
 * the same way on every thread from the plan's device list and vCPU count. Each group is written
 * by one thread only: `vcpuN` by vCPU N's thread, `vmm` by the main thread, the device groups and
 * `mmds` by the VMM thread.
 */

/** KVM exit reasons fc-run counts by name (others count as `exitsOther`). */
const EXIT_FIELDS: Record<number, string> = {
  2: 'exitsIo',
  5: 'exitsHlt',
  6: 'exitsMmio',
  8: 'exitsShutdown',
  9: 'exitsFailEntry',
  10: 'exitsIntr',
  17: 'exitsInternalError',
  24: 'exitsSystemEvent',
};

export const VCPU_FIELDS = [
  ...Object.values(EXIT_FIELDS),
  'exitsOther',
  /** Bytes this vCPU wrote to the UART's transmit register. */
  'serialTxBytes',
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

export function exitField(reason: number): VcpuField {
  return (EXIT_FIELDS[reason] ?? 'exitsOther') as VcpuField;
}

export const VMM_FIELDS = ['serialRxBytes', 'bootTimeUs'] as const;

export const TRANSPORT_FIELDS = ['interrupts', 'malformedChains', 'deviceFailures', 'invalidRegisterAccesses'] as const;
export const DEVICE_FIELDS = {
  block: ['reads', 'writes', 'flushes', 'readBytes', 'writeBytes', 'errors', 'invalidRequests', 'throttled'],
  net: ['rxFrames', 'rxBytes', 'rxDropped', 'txFrames', 'txBytes', 'txDropped', 'localFrames', 'invalidRequests', 'rxThrottled', 'txThrottled'],
  vsock: ['connectionsOpened', 'connectionsRefused', 'resets', 'txPackets', 'rxPackets', 'txBytes', 'rxBytes', 'invalidPackets'],
  entropy: ['requests', 'bytes', 'invalidRequests', 'throttled'],
} as const;
/** The MMDS network stack's counters, in the group of each interface that serves MMDS. */
export const MMDS_STACK_FIELDS = ['mmdsFramesIn', 'mmdsFramesOut', 'mmdsArpReplies', 'mmdsBadFrames', 'mmdsUnsupported', 'mmdsOutOfOrder', 'mmdsConnectionsOpened', 'mmdsConnectionsEvicted', 'mmdsResetsSent', 'mmdsRepliesDropped'] as const;
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
    { name: 'vmm', fields: VMM_FIELDS, kind: { bootTimeUs: 'gauge' } },
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
