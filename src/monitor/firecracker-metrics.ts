import { FLUSH_REASON, LOST_LOG_SLOT, LOST_METRICS_SLOT, MetricSum } from './metrics';
import type { MetricKind, MetricsRegistry, MetricTree } from './metrics';
import { API_FIELDS, deviceGroup } from './vm-metrics';
import type { MeteredDevice } from './vm-metrics';

/**
 * The metrics line in Firecracker's shape, so that dashboards and parsers written for
 * Firecracker's metrics file read fc-run's: the same top-level groups in the same order, the same
 * field names, counters reported as the growth since the previous line (Firecracker's
 * `SharedIncMetric`) and stored values as they are (`SharedStoreMetric`), per-device groups
 * `block_<drive_id>` / `net_<iface_id>` followed by their aggregate `block` / `net`.
 *
 * The group and field names follow Firecracker's `src/vmm/src/logger/metrics.rs` and the device
 * metrics modules at {@link FIRECRACKER_METRICS_COMMIT} (main after v1.16.1, which adds the
 * optional `id` and `properties`). v1.16.1 also has `net.mac_address_updates`, emitted here too.
 * x86_64 Firecracker has no `rtc` group (the PL031 is aarch64-only), and neither has fc-run.
 *
 * Every Firecracker field is present; the ones fc-run does not count (see the README) are always 0.
 * What fc-run counts beyond Firecracker's names is in a last group, `fc_run`: per vCPU, per device,
 * the main thread (`vmm`) and the MMDS service, in snake_case, with the line's `reason`.
 */
export const FIRECRACKER_METRICS_COMMIT = '81b38b9dad6056d7a48073e95ac5a9aed51cb2ab';

/** A Firecracker field: a counter (SharedIncMetric), a stored value, or a latency aggregate. */
type FcField = string | { store: string } | { agg: string };
const store = (name: string): FcField => ({ store: name });
const agg = (name: string): FcField => ({ agg: name });

/** Firecracker's groups and fields, in its serialization order. */
export const FC_GROUPS = {
  api_server: [store('process_startup_time_us'), store('process_startup_time_cpu_us')],
  balloon: ['activate_fails', 'inflate_count', 'stats_updates_count', 'stats_update_fails', 'deflate_count', 'event_fails', 'free_page_report_count', 'free_page_report_freed', 'free_page_report_fails', 'free_page_hint_count', 'free_page_hint_freed', 'free_page_hint_fails'],
  block: ['activate_fails', 'cfg_fails', 'no_avail_buffer', 'event_fails', 'execute_fails', 'invalid_reqs_count', 'flush_count', 'queue_event_count', 'rate_limiter_event_count', 'update_count', 'update_fails', 'read_bytes', 'write_bytes', 'read_count', 'write_count', agg('read_agg'), agg('write_agg'), 'rate_limiter_throttled_events', 'io_engine_throttled_events', 'remaining_reqs_count'],
  deprecated_api: ['deprecated_http_api_calls'],
  get_api_requests: ['instance_info_count', 'machine_cfg_count', 'mmds_count', 'vmm_version_count', 'hotplug_memory_count'],
  i8042: ['error_count', 'missed_read_count', 'missed_write_count', 'read_count', 'reset_count', 'write_count'],
  uart: ['error_count', 'flush_count', 'missed_read_count', 'missed_write_count', 'read_count', 'write_count', 'rate_limiter_dropped_bytes'],
  latencies_us: ['full_create_snapshot', 'diff_create_snapshot', 'load_snapshot', 'pause_vm', 'resume_vm', 'vmm_full_create_snapshot', 'vmm_diff_create_snapshot', 'vmm_load_snapshot', 'vmm_pause_vm', 'vmm_resume_vm'].map(store),
  logger: ['missed_metrics_count', 'metrics_fails', 'missed_log_count', 'rate_limited_log_count'],
  mmds: ['rx_accepted', 'rx_accepted_err', 'rx_accepted_unusual', 'rx_bad_eth', 'rx_invalid_token', 'rx_no_token', 'rx_count', 'tx_bytes', 'tx_count', 'tx_errors', 'tx_frames', 'connections_created', 'connections_destroyed'],
  net: ['activate_fails', 'cfg_fails', 'no_rx_avail_buffer', 'no_tx_avail_buffer', 'event_fails', 'rx_queue_event_count', 'rx_event_rate_limiter_count', 'rx_rate_limiter_throttled', 'rx_tap_event_count', 'rx_bytes_count', 'rx_packets_count', 'rx_fails', 'rx_count', 'tap_read_fails', 'tap_write_fails', agg('tap_write_agg'), 'tx_bytes_count', 'tx_malformed_frames', 'tx_fails', 'tx_count', 'tx_packets_count', 'tx_queue_event_count', 'tx_rate_limiter_event_count', 'tx_rate_limiter_throttled', 'tx_spoofed_mac_count', 'tx_remaining_reqs_count', 'mac_address_updates'],
  patch_api_requests: ['drive_count', 'drive_fails', 'network_count', 'network_fails', 'machine_cfg_count', 'machine_cfg_fails', 'mmds_count', 'mmds_fails', 'hotplug_memory_count', 'hotplug_memory_fails', 'pmem_count', 'pmem_fails'],
  put_api_requests: ['actions_count', 'actions_fails', 'boot_source_count', 'boot_source_fails', 'drive_count', 'drive_fails', 'logger_count', 'logger_fails', 'machine_cfg_count', 'machine_cfg_fails', 'cpu_cfg_count', 'cpu_cfg_fails', 'metrics_count', 'metrics_fails', 'network_count', 'network_fails', 'mmds_count', 'mmds_fails', 'vsock_count', 'vsock_fails', 'pmem_count', 'pmem_fails', 'serial_count', 'serial_fails', 'hotplug_memory_count', 'hotplug_memory_fails'],
  seccomp: [store('num_faults')],
  vcpu: ['exit_io_in', 'exit_io_out', 'exit_mmio_read', 'exit_mmio_write', 'failures', 'kvmclock_ctrl_fails', agg('exit_io_in_agg'), agg('exit_io_out_agg'), agg('exit_mmio_read_agg'), agg('exit_mmio_write_agg')],
  vmm: [store('panic_count')],
  signals: [store('sigbus'), store('sigsegv'), store('sigxfsz'), store('sigxcpu'), 'sigpipe', store('sighup'), store('sigill')],
  vsock: ['activate_fails', 'cfg_fails', 'rx_queue_event_fails', 'tx_queue_event_fails', 'ev_queue_event_fails', 'muxer_event_fails', 'conn_event_fails', 'rx_queue_event_count', 'tx_queue_event_count', 'rx_bytes_count', 'tx_bytes_count', 'rx_packets_count', 'tx_packets_count', 'conns_added', 'conns_killed', 'conns_removed', 'killq_resync', 'tx_flush_fails', 'tx_write_fails', 'rx_read_fails'],
  entropy: ['activate_fails', 'entropy_event_fails', 'entropy_event_count', 'entropy_bytes', 'host_rng_fails', 'entropy_rate_limiter_throttled', 'rate_limiter_event_count'],
  pmem: ['activate_fails', 'cfg_fails', 'event_fails', 'queue_event_count', 'rate_limiter_throttled_events', 'rate_limiter_event_count'],
  interrupts: ['triggers', 'config_updates'],
  memory_hotplug: ['activate_fails', 'queue_event_fails', 'queue_event_count', agg('plug_agg'), 'plug_count', 'plug_bytes', 'plug_fails', agg('unplug_agg'), 'unplug_count', 'unplug_bytes', 'unplug_fails', 'unplug_discard_fails', agg('unplug_all_agg'), 'unplug_all_count', 'unplug_all_fails', agg('state_agg'), 'state_count', 'state_fails'],
} satisfies Record<string, FcField[]>;
export type FcGroup = keyof typeof FC_GROUPS;

/**
 * Where each Firecracker field comes from: `<fc group>.<fc field>` → fc-run counters summed, each
 * `<source>.<field>` where the source is `vcpu` (every vCPU's group), `device` (the device's own
 * group, for the per-device groups), `net` (every interface's group), `vmm`, `api`, `mmds` (the
 * MMDS service) or `lost` (the writer's dropped-line counters). Fields absent here are always 0.
 */
const SOURCES: Record<string, string[]> = {
  'api_server.process_startup_time_us': ['vmm.processStartupTimeUs'],
  'api_server.process_startup_time_cpu_us': ['vmm.processStartupTimeCpuUs'],
  // A block device's counters, then an interface's, then vsock's and entropy's.
  'block.execute_fails': ['device.errors'],
  'block.invalid_reqs_count': ['device.invalidRequests'],
  'block.flush_count': ['device.flushes'],
  'block.queue_event_count': ['device.queue0Events'],
  'block.rate_limiter_event_count': ['device.rateLimiterEvents'],
  'block.read_bytes': ['device.readBytes'],
  'block.write_bytes': ['device.writeBytes'],
  'block.read_count': ['device.reads'],
  'block.write_count': ['device.writes'],
  'block.rate_limiter_throttled_events': ['device.throttled'],
  'net.no_rx_avail_buffer': ['device.noRxBuffer'],
  'net.rx_queue_event_count': ['device.queue0Events'],
  'net.rx_event_rate_limiter_count': ['device.rxRateLimiterEvents'],
  'net.rx_rate_limiter_throttled': ['device.rxThrottled'],
  'net.rx_tap_event_count': ['device.tapEvents'],
  'net.rx_bytes_count': ['device.rxBytes'],
  'net.rx_packets_count': ['device.rxFrames'],
  'net.rx_count': ['device.rxFrames'],
  'net.tap_write_fails': ['device.tapWriteFails'],
  'net.tx_bytes_count': ['device.txBytes'],
  'net.tx_malformed_frames': ['device.txOversized'],
  'net.tx_count': ['device.txFrames'],
  'net.tx_packets_count': ['device.txFrames'],
  'net.tx_queue_event_count': ['device.queue1Events'],
  'net.tx_rate_limiter_event_count': ['device.txRateLimiterEvents'],
  'net.tx_rate_limiter_throttled': ['device.txThrottled'],
  'vsock.rx_queue_event_count': ['device.queue0Events'],
  'vsock.tx_queue_event_count': ['device.queue1Events'],
  'vsock.rx_bytes_count': ['device.rxBytes'],
  'vsock.tx_bytes_count': ['device.txBytes'],
  'vsock.rx_packets_count': ['device.rxPackets'],
  'vsock.tx_packets_count': ['device.txPackets'],
  'vsock.conns_added': ['device.connectionsOpened'],
  'vsock.conns_killed': ['device.resets'],
  'entropy.entropy_event_count': ['device.queue0Events'],
  'entropy.entropy_bytes': ['device.bytes'],
  'entropy.entropy_rate_limiter_throttled': ['device.throttled'],
  'entropy.rate_limiter_event_count': ['device.rateLimiterEvents'],
  'i8042.missed_read_count': ['vcpu.i8042BadReads'],
  'i8042.missed_write_count': ['vcpu.i8042BadWrites'],
  'i8042.read_count': ['vcpu.i8042Reads'],
  'i8042.reset_count': ['vcpu.i8042Resets'],
  'i8042.write_count': ['vcpu.i8042Writes'],
  'uart.error_count': ['vcpu.serialLostBytes', 'vmm.serialLostBytes'],
  'uart.missed_read_count': ['vcpu.serialBadReads'],
  'uart.missed_write_count': ['vcpu.serialBadWrites', 'vcpu.serialLostBytes', 'vmm.serialLostBytes'],
  'uart.read_count': ['vcpu.serialRxReads'],
  'uart.write_count': ['vcpu.serialTxBytes', 'vmm.serialTxBytes'],
  'logger.missed_metrics_count': ['lost.metrics'],
  'logger.missed_log_count': ['lost.log'],
  'mmds.rx_accepted': ['net.mmdsFramesIn'],
  'mmds.rx_accepted_unusual': ['net.mmdsUnsupported'],
  'mmds.rx_bad_eth': ['net.mmdsBadFrames'],
  'mmds.rx_invalid_token': ['mmds.invalidToken'],
  'mmds.rx_no_token': ['mmds.noToken'],
  'mmds.tx_bytes': ['net.mmdsBytesOut'],
  'mmds.tx_count': ['net.mmdsFramesOut'],
  'mmds.tx_errors': ['net.mmdsRepliesDropped'],
  'mmds.tx_frames': ['net.mmdsFramesOut'],
  'mmds.connections_created': ['net.mmdsConnectionsOpened'],
  'mmds.connections_destroyed': ['net.mmdsConnectionsEvicted'],
  'vcpu.exit_io_in': ['vcpu.exitsIoIn'],
  'vcpu.exit_io_out': ['vcpu.exitsIoOut'],
  'vcpu.exit_mmio_read': ['vcpu.exitsMmioRead'],
  'vcpu.exit_mmio_write': ['vcpu.exitsMmioWrite'],
  'vcpu.failures': ['vcpu.failures'],
  'vmm.panic_count': ['vmm.panicCount'],
  'interrupts.triggers': ['alldevices.interrupts'],
};
/** The API counters are named after their Firecracker field already. */
for (const f of API_FIELDS) SOURCES[f] = [`api.${f}`];

/** The groups whose every field also appears under `fc_run` (Firecracker only has their sum). */
const ALWAYS_DETAILED = /^vcpu\d+$/;

const snake = (name: string) => name.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);

/**
 * The Firecracker-shaped line for a microVM's registry (built by `vmMetricsLayout` from the same
 * `devices`). Every fc-run counter ends up in the line exactly once under a Firecracker name or in
 * `fc_run`, except vCPU counters, which are summed into Firecracker's groups and kept per vCPU in
 * `fc_run` too.
 */
export function firecrackerMetricsTree(registry: MetricsRegistry, devices: readonly MeteredDevice[]): MetricTree {
  const used = new Set<number>();
  const slot = (group: string, field: string): number | undefined => {
    const g = registry.groups.find((x) => x.name === group);
    const i = g ? g.fields.indexOf(field) : -1;
    return g && i >= 0 ? g.offset + i : undefined;
  };
  const vcpuGroups = registry.groups.filter((g) => ALWAYS_DETAILED.test(g.name)).map((g) => g.name);
  const netGroups = devices.filter((d) => d.kind === 'net').map(deviceGroup);
  const allDeviceGroups = devices.map(deviceGroup);
  /** The slots a source list names, for the device group `device` (if any). */
  const resolve = (sources: readonly string[], device?: string): number[] => {
    const slots: number[] = [];
    for (const src of sources) {
      const [where, field] = src.split(/\.(.*)/s);
      if (where === 'lost') {
        slots.push(field === 'metrics' ? LOST_METRICS_SLOT : LOST_LOG_SLOT);
        continue;
      }
      const groups = where === 'vcpu' ? vcpuGroups : where === 'net' ? netGroups : where === 'alldevices' ? allDeviceGroups : where === 'device' ? (device ? [device] : []) : [where];
      for (const g of groups) {
        const s = slot(g, field);
        if (s !== undefined) slots.push(s);
      }
    }
    // A per-device count summed across devices stays in the device's own detail too.
    if (!sources.every((x) => x.startsWith('alldevices.'))) for (const s of slots) used.add(s);
    return slots;
  };
  const kindOf = (slots: readonly number[], fallback: MetricKind): MetricKind => {
    const g = registry.groups.find((x) => slots[0] >= x.offset && slots[0] < x.offset + x.fields.length);
    return g ? g.kinds[slots[0] - g.offset] : fallback;
  };
  /** One Firecracker group: each field summed from its sources (0 without), for `device` if given. */
  const group = (name: FcGroup, device?: string): MetricTree => {
    const out: MetricTree = {};
    for (const f of FC_GROUPS[name] as FcField[]) {
      if (typeof f === 'object' && 'agg' in f) {
        out[f.agg] = { min_us: new MetricSum([], 'gauge'), max_us: new MetricSum([], 'gauge'), sum_us: new MetricSum([]) };
        continue;
      }
      const field = typeof f === 'string' ? f : f.store;
      const slots = resolve(SOURCES[`${name}.${field}`] ?? [], device);
      out[field] = new MetricSum(slots, kindOf(slots, typeof f === 'string' ? 'counter' : 'gauge'));
    }
    return out;
  };
  /** `block_<id>`... then the aggregate, whose fields sum the devices' (latency min/max stay 0, as in Firecracker). */
  const perDevice = (kind: 'block' | 'net', tree: MetricTree): void => {
    const mine = devices.filter((d) => d.kind === kind).map(deviceGroup);
    for (const g of mine) tree[g] = group(kind, g);
    const total = group(kind);
    for (const [field, node] of Object.entries(total)) {
      if (!(node instanceof MetricSum)) {
        // latency aggregate: the sum of the devices' sums
        const sums = mine.flatMap((g) => ((tree[g] as MetricTree)[field] as MetricTree).sum_us as MetricSum).flatMap((s) => s.slots);
        (node as MetricTree).sum_us = new MetricSum(sums);
        continue;
      }
      const slots = mine.flatMap((g) => ((tree[g] as MetricTree)[field] as MetricSum).slots);
      total[field] = new MetricSum(slots, node.kind);
    }
    tree[kind] = total;
  };
  const single = (kind: 'vsock' | 'entropy') => {
    const d = devices.find((x) => x.kind === kind);
    return group(kind, d ? deviceGroup(d) : undefined);
  };

  const tree: MetricTree = {};
  tree.api_server = group('api_server');
  tree.balloon = group('balloon');
  perDevice('block', tree);
  for (const name of ['deprecated_api', 'get_api_requests', 'i8042', 'uart', 'latencies_us', 'logger', 'mmds'] as const) tree[name] = group(name);
  perDevice('net', tree);
  for (const name of ['patch_api_requests', 'put_api_requests', 'seccomp', 'vcpu', 'vmm', 'signals'] as const) tree[name] = group(name);
  tree.vsock = single('vsock');
  tree.entropy = single('entropy');
  tree.pmem = group('pmem');
  tree.interrupts = group('interrupts');
  tree.memory_hotplug = group('memory_hotplug');

  // fc-run's own counters: everything not shown above under a Firecracker name.
  const extra: MetricTree = { reason: FLUSH_REASON };
  for (const g of registry.groups) {
    const o: MetricTree = {};
    g.fields.forEach((f, i) => {
      if (!ALWAYS_DETAILED.test(g.name) && used.has(g.offset + i)) return;
      o[snake(f)] = new MetricSum([g.offset + i], g.kinds[i]);
    });
    if (Object.keys(o).length > 0) extra[g.name] = o;
  }
  tree.fc_run = extra;
  return tree;
}
