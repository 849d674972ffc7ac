import type { MmioTransportState } from '../devices/virtio/mmio';
import type { BlockState } from '../devices/virtio/block';
import type { NetState } from '../devices/virtio/net';
import type { VsockState } from '../devices/virtio/vsock';
import type { EntropyState } from '../devices/virtio/rng';
import type { MmdsState } from '../devices/mmds/service';
import { int, list, oneOf, record, snapshotInvalid, snapshotMismatch, text } from '../state-check';

/**
 * The virtio devices' half of a snapshot, as the VMM thread saves it (VmmThread.saveDevices) and
 * restores it (VmmWorkerData.restore): plain JSON-able data, 64-bit values as decimal text. Host
 * resources (file paths, TAP names, socket paths) are not in it: the restore takes them from its
 * own device setups, so a clone can have its own disk copy, TAP and socket.
 *
 * The legacy devices (serial, i8042) keep their state in shared memory the vCPU threads own; their
 * save and restore are Serial8250.saveState/restoreState and I8042.saveState/restoreState.
 */
export const DEVICES_STATE_FORMAT = 1;

export type DeviceKind = 'block' | 'net' | 'vsock' | 'entropy';

interface SavedDeviceBase {
  /** The device's place among the virtio devices: its MMIO window and IRQ, which the guest found at boot. */
  index: number;
  /** The drive or interface id ("vsock" and "entropy" for those). */
  id: string;
  transport: MmioTransportState;
}

export type SavedDevice =
  | (SavedDeviceBase & { kind: 'block'; device: BlockState })
  | (SavedDeviceBase & { kind: 'net'; device: NetState })
  | (SavedDeviceBase & { kind: 'vsock'; device: VsockState })
  | (SavedDeviceBase & { kind: 'entropy'; device: EntropyState });

export interface DevicesState {
  format: typeof DEVICES_STATE_FORMAT;
  /** One per virtio device, in index order. */
  devices: SavedDevice[];
  /** The metadata service's contents and settings; null when the VM has none. */
  mmds: MmdsState | null;
}

/** A saved device, matched with the device set up for the restore; its inner fields are checked by the device itself. */
export interface MatchedDevice {
  transport: unknown;
  device: unknown;
  /** Where it is in the saved state, for error messages: `devices[1] (block "rootfs")`. */
  where: string;
}

export interface RestorePlan {
  /** By device index. */
  devices: Map<number, MatchedDevice>;
  mmds: unknown;
}

/**
 * Checks the saved state's envelope and that it describes exactly the devices being set up: the
 * same indices, ids and kinds, none missing, none extra. The fields inside each device are
 * checked when the device restores them.
 */
export function planRestore(state: unknown, setups: readonly { index: number; id: string; kind: DeviceKind }[]): RestorePlan {
  const s = record(state, 'the top level', ['format', 'devices', 'mmds']);
  if (s.format !== DEVICES_STATE_FORMAT) throw snapshotInvalid('format', `expected ${DEVICES_STATE_FORMAT}, got ${JSON.stringify(s.format) ?? 'nothing'} (a snapshot from another version of fc-run?)`);
  const saved = list(s.devices, 'devices', 256);
  const devices = new Map<number, MatchedDevice>();
  saved.forEach((raw, i) => {
    const at = `devices[${i}]`;
    const d = record(raw, at, ['index', 'id', 'kind', 'transport', 'device']);
    const index = int(d.index, `${at}.index`, 0, 255);
    const id = text(d.id, `${at}.id`, 256);
    const kind = oneOf(d.kind, `${at}.kind`, ['block', 'net', 'vsock', 'entropy'] as const);
    if (devices.has(index)) throw snapshotInvalid(`${at}.index`, `device index ${index} appears twice`);
    const where = `${at} (${kind} ${JSON.stringify(id)})`;
    const setup = setups.find((x) => x.index === index);
    if (!setup) throw snapshotMismatch(where, `this VM has no virtio device ${index}: restore with the devices the snapshot was taken with`);
    if (setup.kind !== kind || setup.id !== id) throw snapshotMismatch(where, `virtio device ${index} of this VM is ${setup.kind} ${JSON.stringify(setup.id)}: restore with the devices the snapshot was taken with, in the same order`);
    devices.set(index, { transport: d.transport, device: d.device, where });
  });
  const missing = setups.filter((x) => !devices.has(x.index));
  if (missing.length > 0) throw snapshotMismatch('devices', `the snapshot has no state for ${missing.map((x) => `${x.kind} ${JSON.stringify(x.id)}`).join(', ')}: a restored VM has the devices the snapshot was taken with, no more`);
  return { devices, mmds: s.mmds };
}

/**
 * Whether a saved device has a rate limiter in `field` (the VMM thread then builds the device with
 * a throttle to restore it into, even if the restore's setup has none: the saved limits win).
 */
export function savedLimiter(saved: MatchedDevice | undefined, field: string): boolean {
  const d = saved?.device;
  return d !== null && typeof d === 'object' && (d as Record<string, unknown>)[field] !== null && (d as Record<string, unknown>)[field] !== undefined;
}
