import type { GuestMemory } from '../../kvm/memory';
import { QUEUE_MAX_SIZE, QueueError, QueuePositions, VirtQueue } from './queue';
import { bigText, bool, int, list, record, snapshotInvalid, U32_MAX, U64_MAX } from '../../state-check';

/** virtio-mmio register offsets (virtio 1.x, section 4.2.2). */
export const MMIO = {
  MAGIC: 0x000,
  VERSION: 0x004,
  DEVICE_ID: 0x008,
  VENDOR_ID: 0x00c,
  DEVICE_FEATURES: 0x010,
  DEVICE_FEATURES_SEL: 0x014,
  DRIVER_FEATURES: 0x020,
  DRIVER_FEATURES_SEL: 0x024,
  QUEUE_SEL: 0x030,
  QUEUE_NUM_MAX: 0x034,
  QUEUE_NUM: 0x038,
  QUEUE_READY: 0x044,
  QUEUE_NOTIFY: 0x050,
  INTERRUPT_STATUS: 0x060,
  INTERRUPT_ACK: 0x064,
  STATUS: 0x070,
  QUEUE_DESC_LOW: 0x080,
  QUEUE_DESC_HIGH: 0x084,
  QUEUE_DRIVER_LOW: 0x090,
  QUEUE_DRIVER_HIGH: 0x094,
  QUEUE_DEVICE_LOW: 0x0a0,
  QUEUE_DEVICE_HIGH: 0x0a4,
  CONFIG_GENERATION: 0x0fc,
  CONFIG: 0x100,
} as const;

export const VIRTIO_MMIO_MAGIC = 0x74726976; // "virt"
export const STATUS = { ACKNOWLEDGE: 1, DRIVER: 2, DRIVER_OK: 4, FEATURES_OK: 8, NEEDS_RESET: 64, FAILED: 128 } as const;
export const INT_VRING = 1;
export const INT_CONFIG = 2;
export const VIRTIO_F_VERSION_1 = 1n << 32n;
export const VIRTIO_RING_F_INDIRECT_DESC = 1n << 28n;
export const VIRTIO_RING_F_EVENT_IDX = 1n << 29n;
const TRANSPORT_FEATURES = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_INDIRECT_DESC | VIRTIO_RING_F_EVENT_IDX;

/** What a device model (block, net, vsock, rng) provides to the transport. */
export interface VirtioBackend {
  readonly deviceId: number;
  readonly queueCount: number;
  /** Device-specific feature bits; the transport adds VERSION_1, INDIRECT_DESC and EVENT_IDX. */
  readonly features: bigint;
  /** Config space bytes (the transport serves reads of them). */
  config(): Uint8Array;
  writeConfig?(offset: number, data: Uint8Array): void;
  /** The driver set DRIVER_OK: queues are configured. */
  activate(queues: VirtQueue[], io: DeviceIo): void;
  /** The driver notified queue `index` (through ioeventfd or an MMIO write). */
  notify(index: number): void;
  /** The driver reset the device: drop queues and in-flight state. */
  reset(): void;
  /**
   * The VM runs again after a restore (the transport is about to look at every queue once):
   * anything the device must tell the guest about the restore happens here (vsock's transport
   * reset event), not while the state is put back, since the guest's interrupt controller may
   * not be restored yet then.
   */
  restored?(): void;
}

/** How a device reaches the outside: raise its interrupt, and report malformed guest input. */
export interface DeviceIo {
  /** Feature bits the driver accepted. */
  readonly features: bigint;
  /** Signals used buffers on the given queues, if the driver wants interrupts for them. */
  usedBuffers(queues: VirtQueue[]): void;
  /** The driver broke the queue protocol: the device stops until reset. */
  fail(reason: string): void;
}

interface QueueRegs {
  size: number;
  ready: boolean;
  desc: bigint;
  driver: bigint;
  device: bigint;
}

/** One queue's registers, and where the device is in it when the device is active. */
export interface QueueRegsState {
  size: number;
  ready: boolean;
  /** Guest addresses (64-bit, as decimal text). */
  desc: string;
  driver: string;
  device: string;
  /** Present exactly when the device is active (DRIVER_OK and not NEEDS_RESET). */
  positions: QueuePositions | null;
}

/**
 * The transport as a snapshot keeps it: what the driver wrote to the registers and where the
 * device is in each ring. Whether the device is active follows from `status`.
 */
export interface MmioTransportState {
  deviceId: number;
  status: number;
  deviceFeaturesSel: number;
  driverFeaturesSel: number;
  /** The features the driver wrote (64-bit, as decimal text). */
  driverFeatures: string;
  queueSel: number;
  configGeneration: number;
  /** The shared interrupt status word (bit 0: used buffers, bit 1: configuration change). */
  interruptStatus: number;
  queues: QueueRegsState[];
}

const STATUS_BITS = STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.DRIVER_OK | STATUS.FEATURES_OK | STATUS.NEEDS_RESET | STATUS.FAILED;

/** Counters a transport keeps (metrics read them). */
export interface TransportCounters {
  interrupts: number;
  malformedChains: number;
  deviceFailures: number;
  invalidRegisterAccesses: number;
}

/**
 * The virtio-mmio transport, version 2 (modern only). Owns feature negotiation, the status state
 * machine, queue configuration and reset, and turns DRIVER_OK into an activated backend.
 * InterruptStatus lives in a shared Int32Array so a vCPU thread can serve the hot read/ACK of it
 * without a round trip to the thread that owns the device.
 */
export class VirtioMmio {
  private status = 0;
  private deviceFeaturesSel = 0;
  private driverFeaturesSel = 0;
  private driverFeatures = 0n;
  private queueSel = 0;
  private configGeneration = 0;
  private queues: QueueRegs[];
  private active: VirtQueue[] | undefined;
  readonly counters: TransportCounters = { interrupts: 0, malformedChains: 0, deviceFailures: 0, invalidRegisterAccesses: 0 };
  lastFailure: string | undefined;

  constructor(
    private readonly mem: GuestMemory,
    readonly backend: VirtioBackend,
    /** Raise the device's interrupt line (an irqfd write). */
    private readonly raiseIrq: () => void,
    /** Shared interrupt status word (bit 0: used buffers, bit 1: config change). */
    readonly interruptStatus: Int32Array = new Int32Array(new SharedArrayBuffer(4)),
  ) {
    this.queues = Array.from({ length: backend.queueCount }, () => this.freshQueue());
  }

  private freshQueue(): QueueRegs {
    return { size: QUEUE_MAX_SIZE, ready: false, desc: 0n, driver: 0n, device: 0n };
  }

  get deviceFeatures(): bigint {
    return this.backend.features | TRANSPORT_FEATURES;
  }

  get isActive(): boolean {
    return this.active !== undefined;
  }

  private interrupt(bits: number): void {
    Atomics.or(this.interruptStatus, 0, bits);
    this.counters.interrupts++;
    this.raiseIrq();
  }

  private readonly io: DeviceIo = {
    features: 0n,
    usedBuffers: (queues) => {
      let signal = false;
      for (const q of queues) if (q.needsInterrupt()) signal = true;
      if (signal) this.interrupt(INT_VRING);
    },
    fail: (reason) => this.fail(reason),
  };

  /** The driver broke the protocol: NEEDS_RESET, a config interrupt, and no more processing. */
  fail(reason: string): void {
    this.counters.deviceFailures++;
    this.lastFailure = reason;
    this.onFailure?.(reason);
    this.active = undefined;
    // Quiesce the back end (stop watching its TAP or sockets) until the driver resets the device.
    try {
      this.backend.reset();
    } catch {
      // a back end failing to stop must not take the VMM thread with it
    }
    if (this.status & STATUS.DRIVER_OK) {
      this.status |= STATUS.NEEDS_RESET;
      this.interrupt(INT_CONFIG);
    }
  }

  /** Told when the device fails (for the log). */
  onFailure?: (reason: string) => void;
  /** Told when a malformed chain is counted (for the log). */
  onMalformedChain?: () => void;

  /** Malformed chains are counted by devices through this. */
  countMalformedChain(): void {
    this.counters.malformedChains++;
    this.onMalformedChain?.();
  }

  read(offset: number, len: number): number {
    if (offset >= MMIO.CONFIG) {
      const cfg = this.backend.config();
      const at = offset - MMIO.CONFIG;
      if (at + len > cfg.length || ![1, 2, 4].includes(len)) return this.invalid(0);
      let v = 0;
      for (let i = len - 1; i >= 0; i--) v = v * 256 + cfg[at + i];
      return v;
    }
    if (len !== 4) return this.invalid(0);
    const q = this.queues[this.queueSel];
    switch (offset) {
      case MMIO.MAGIC:
        return VIRTIO_MMIO_MAGIC;
      case MMIO.VERSION:
        return 2;
      case MMIO.DEVICE_ID:
        return this.backend.deviceId;
      case MMIO.VENDOR_ID:
        return 0;
      case MMIO.DEVICE_FEATURES:
        return this.deviceFeaturesSel > 1 ? 0 : Number((this.deviceFeatures >> BigInt(32 * this.deviceFeaturesSel)) & 0xffffffffn);
      case MMIO.QUEUE_NUM_MAX:
        return q ? QUEUE_MAX_SIZE : 0;
      case MMIO.QUEUE_READY:
        return q?.ready ? 1 : 0;
      case MMIO.INTERRUPT_STATUS:
        return Atomics.load(this.interruptStatus, 0);
      case MMIO.STATUS:
        return this.status;
      case MMIO.CONFIG_GENERATION:
        return this.configGeneration;
      default:
        return this.invalid(0);
    }
  }

  write(offset: number, len: number, value: number): void {
    if (offset >= MMIO.CONFIG) {
      const at = offset - MMIO.CONFIG;
      const bytes = new Uint8Array(len);
      for (let i = 0; i < len; i++) bytes[i] = (value >>> (8 * i)) & 0xff;
      if (this.backend.writeConfig && at + len <= this.backend.config().length) this.backend.writeConfig(at, bytes);
      else this.invalid(undefined);
      return;
    }
    if (len !== 4) return void this.invalid(undefined);
    const v = value >>> 0;
    const q = this.queues[this.queueSel];
    // Queue registers may change only before the queue is ready and the driver is not done.
    const queueWritable = q !== undefined && !q.ready && !(this.status & STATUS.DRIVER_OK);
    switch (offset) {
      case MMIO.DEVICE_FEATURES_SEL:
        this.deviceFeaturesSel = v;
        return;
      case MMIO.DRIVER_FEATURES_SEL:
        this.driverFeaturesSel = v;
        return;
      case MMIO.DRIVER_FEATURES:
        if (this.status & STATUS.FEATURES_OK || this.driverFeaturesSel > 1) return void this.invalid(undefined);
        {
          const shift = BigInt(32 * this.driverFeaturesSel);
          this.driverFeatures = (this.driverFeatures & ~(0xffffffffn << shift)) | (BigInt(v) << shift);
        }
        return;
      case MMIO.QUEUE_SEL:
        this.queueSel = v;
        return;
      case MMIO.QUEUE_NUM:
        if (queueWritable) q.size = v;
        else this.invalid(undefined);
        return;
      case MMIO.QUEUE_READY:
        if (q && !(this.status & STATUS.DRIVER_OK)) q.ready = v === 1;
        else this.invalid(undefined);
        return;
      case MMIO.QUEUE_DESC_LOW:
      case MMIO.QUEUE_DESC_HIGH:
      case MMIO.QUEUE_DRIVER_LOW:
      case MMIO.QUEUE_DRIVER_HIGH:
      case MMIO.QUEUE_DEVICE_LOW:
      case MMIO.QUEUE_DEVICE_HIGH: {
        if (!queueWritable) return void this.invalid(undefined);
        const field = offset < MMIO.QUEUE_DRIVER_LOW ? 'desc' : offset < MMIO.QUEUE_DEVICE_LOW ? 'driver' : 'device';
        const high = (offset & 4) !== 0;
        q[field] = high ? (q[field] & 0xffffffffn) | (BigInt(v) << 32n) : (q[field] & ~0xffffffffn) | BigInt(v);
        return;
      }
      case MMIO.QUEUE_NOTIFY:
        if (this.active && v < this.active.length) this.guarded(() => this.backend.notify(v));
        else this.invalid(undefined);
        return;
      case MMIO.INTERRUPT_ACK:
        Atomics.and(this.interruptStatus, 0, ~v);
        return;
      case MMIO.STATUS:
        this.setStatus(v);
        return;
      default:
        this.invalid(undefined);
    }
  }

  private invalid<T>(value: T): T {
    this.counters.invalidRegisterAccesses++;
    return value;
  }

  private setStatus(v: number): void {
    if (v === 0) return this.reset();
    // The driver may only add bits, in order (virtio 1.x, 3.1.1).
    if ((v & this.status) !== this.status) return void this.invalid(undefined);
    const added = v & ~this.status;
    if (added & STATUS.FEATURES_OK) {
      const unsupported = this.driverFeatures & ~this.deviceFeatures;
      if (unsupported !== 0n || !(this.driverFeatures & VIRTIO_F_VERSION_1)) {
        // Leave FEATURES_OK clear: the driver reads it back and gives up (legacy drivers included).
        this.status = v & ~STATUS.FEATURES_OK;
        return;
      }
    }
    if (added & STATUS.DRIVER_OK) {
      if (!(this.status & STATUS.FEATURES_OK)) return void this.invalid(undefined);
      this.status = v;
      this.activate();
      return;
    }
    this.status = v;
  }

  private activate(): void {
    const eventIdx = (this.driverFeatures & VIRTIO_RING_F_EVENT_IDX) !== 0n;
    try {
      const queues = this.queues.map((q, i) => {
        if (!q.ready) throw new QueueError(`queue ${i} is not ready`);
        const toNum = (x: bigint) => (x > BigInt(Number.MAX_SAFE_INTEGER) ? -1 : Number(x));
        return new VirtQueue(this.mem, { size: q.size, descTable: toNum(q.desc), availRing: toNum(q.driver), usedRing: toNum(q.device) }, eventIdx);
      });
      this.active = queues;
      (this.io as { features: bigint }).features = this.driverFeatures;
      this.backend.activate(queues, this.io);
    } catch (err) {
      this.fail(`cannot activate: ${err instanceof QueueError ? err.message : (err as Error).message}`);
    }
  }

  /** Notification that arrived through the queue's ioeventfd. */
  queueNotified(index: number): void {
    if (this.active && index < this.active.length) this.guarded(() => this.backend.notify(index));
  }

  /**
   * Runs back-end work so that anything it throws (a broken ring, a host I/O error) fails this
   * device, never the VMM thread.
   */
  guarded(work: () => void): void {
    try {
      work();
    } catch (err) {
      this.fail((err as Error).message);
    }
  }

  /** The registers, and the device's place in each ring when it is active (for a snapshot). */
  saveState(): MmioTransportState {
    return {
      deviceId: this.backend.deviceId,
      status: this.status,
      deviceFeaturesSel: this.deviceFeaturesSel,
      driverFeaturesSel: this.driverFeaturesSel,
      driverFeatures: String(this.driverFeatures),
      queueSel: this.queueSel,
      configGeneration: this.configGeneration,
      interruptStatus: Atomics.load(this.interruptStatus, 0),
      queues: this.queues.map((q, i) => ({
        size: q.size,
        ready: q.ready,
        desc: String(q.desc),
        driver: String(q.driver),
        device: String(q.device),
        positions: this.active ? this.active[i].saveState() : null,
      })),
    };
  }

  /**
   * Puts the transport back as saved, on a device fresh from its constructor: the registers, and,
   * when the device was active, its queues (checked as activation checks them: sizes, alignment,
   * guest RAM) with the device's place in each, and the back end activated on them. The back end
   * restores its own state after this. Everything is checked before anything changes; a bad field
   * throws a 'snapshot-invalid' FcRunError.
   */
  restoreState(state: unknown, where: string): void {
    const s = record(state, where, ['deviceId', 'status', 'deviceFeaturesSel', 'driverFeaturesSel', 'driverFeatures', 'queueSel', 'configGeneration', 'interruptStatus', 'queues']);
    const deviceId = int(s.deviceId, `${where}.deviceId`, 0, U32_MAX);
    if (deviceId !== this.backend.deviceId) throw snapshotInvalid(`${where}.deviceId`, `the saved device is virtio device type ${deviceId}, this one is type ${this.backend.deviceId}`);
    const status = int(s.status, `${where}.status`, 0, 0xff);
    if (status & ~STATUS_BITS) throw snapshotInvalid(`${where}.status`, `0x${status.toString(16)} has bits no virtio status has`);
    const deviceFeaturesSel = int(s.deviceFeaturesSel, `${where}.deviceFeaturesSel`, 0, U32_MAX);
    const driverFeaturesSel = int(s.driverFeaturesSel, `${where}.driverFeaturesSel`, 0, U32_MAX);
    const driverFeatures = bigText(s.driverFeatures, `${where}.driverFeatures`, 0n, U64_MAX);
    const queueSel = int(s.queueSel, `${where}.queueSel`, 0, U32_MAX);
    const configGeneration = int(s.configGeneration, `${where}.configGeneration`, 0, Number.MAX_SAFE_INTEGER);
    const interruptStatus = int(s.interruptStatus, `${where}.interruptStatus`, 0, INT_VRING | INT_CONFIG);
    if (status & STATUS.FEATURES_OK) {
      // What setStatus enforces: FEATURES_OK only for offered features, VERSION_1 among them.
      const unsupported = driverFeatures & ~this.deviceFeatures;
      if (unsupported) throw snapshotInvalid(`${where}.driverFeatures`, `the driver accepted features 0x${unsupported.toString(16)} this device does not offer`);
      if (!(driverFeatures & VIRTIO_F_VERSION_1)) throw snapshotInvalid(`${where}.driverFeatures`, 'FEATURES_OK without VIRTIO_F_VERSION_1');
    }
    if (status & STATUS.DRIVER_OK && !(status & STATUS.FEATURES_OK)) throw snapshotInvalid(`${where}.status`, 'DRIVER_OK without FEATURES_OK');
    const activated = (status & STATUS.DRIVER_OK) !== 0 && (status & STATUS.NEEDS_RESET) === 0;
    const savedQueues = list(s.queues, `${where}.queues`, this.backend.queueCount);
    if (savedQueues.length !== this.backend.queueCount) throw snapshotInvalid(`${where}.queues`, `expected ${this.backend.queueCount} queues, got ${savedQueues.length}`);
    const regs: QueueRegs[] = [];
    const positions: unknown[] = [];
    savedQueues.forEach((raw, i) => {
      const at = `${where}.queues[${i}]`;
      const q = record(raw, at, ['size', 'ready', 'desc', 'driver', 'device', 'positions']);
      const r: QueueRegs = {
        size: int(q.size, `${at}.size`, 0, U32_MAX),
        ready: bool(q.ready, `${at}.ready`),
        desc: bigText(q.desc, `${at}.desc`, 0n, U64_MAX),
        driver: bigText(q.driver, `${at}.driver`, 0n, U64_MAX),
        device: bigText(q.device, `${at}.device`, 0n, U64_MAX),
      };
      if (activated) {
        if (!r.ready) throw snapshotInvalid(`${at}.ready`, 'the device is active but this queue is not ready');
        if (q.positions === null) throw snapshotInvalid(`${at}.positions`, 'the device is active but its place in this queue is missing');
      } else if (q.positions !== null) {
        throw snapshotInvalid(`${at}.positions`, 'the device is not active, so it has no place in its queues');
      }
      regs.push(r);
      positions.push(q.positions);
    });
    const eventIdx = (driverFeatures & VIRTIO_RING_F_EVENT_IDX) !== 0n;
    let queues: VirtQueue[] | undefined;
    if (activated) {
      queues = regs.map((r, i) => {
        const at = `${where}.queues[${i}]`;
        for (const f of ['desc', 'driver', 'device'] as const) {
          if (r[f] > BigInt(Number.MAX_SAFE_INTEGER)) throw snapshotInvalid(`${at}.${f}`, `0x${r[f].toString(16)} is beyond any guest RAM`);
        }
        let q: VirtQueue;
        try {
          // The queue checks size, alignment and that each area lies in guest RAM, as at activation.
          q = new VirtQueue(this.mem, { size: r.size, descTable: Number(r.desc), availRing: Number(r.driver), usedRing: Number(r.device) }, eventIdx);
        } catch (err) {
          if (err instanceof QueueError) throw snapshotInvalid(at, err.message);
          throw err;
        }
        q.restoreState(positions[i], `${at}.positions`);
        return q;
      });
    }
    // Checked: now change the transport.
    this.status = status;
    this.deviceFeaturesSel = deviceFeaturesSel;
    this.driverFeaturesSel = driverFeaturesSel;
    this.driverFeatures = driverFeatures;
    this.queueSel = queueSel;
    this.configGeneration = configGeneration;
    this.queues = regs;
    Atomics.store(this.interruptStatus, 0, interruptStatus);
    this.active = undefined;
    if (queues) {
      this.active = queues;
      (this.io as { features: bigint }).features = driverFeatures;
      try {
        this.backend.activate(queues, this.io);
      } catch (err) {
        // As at DRIVER_OK: a host-side failure (a TAP refusing its offloads) fails the device,
        // which the driver then resets; the snapshot itself was fine.
        this.fail(`cannot activate after the restore: ${(err as Error).message}`);
      }
    }
  }

  /**
   * The VM runs again after a restore: the back end finishes its restore, then every queue is
   * looked at once, as if the driver had just notified it. Notifications the driver sent before
   * the snapshot may not have been seen, and with VIRTIO_F_EVENT_IDX it will not send them again;
   * a notification with nothing new is harmless.
   */
  wakeAfterRestore(): void {
    if (!this.active) return;
    this.guarded(() => this.backend.restored?.());
    for (let q = 0; q < this.backend.queueCount && this.active; q++) this.queueNotified(q);
  }

  private reset(): void {
    this.backend.reset();
    this.active = undefined;
    this.status = 0;
    this.driverFeatures = 0n;
    this.deviceFeaturesSel = 0;
    this.driverFeaturesSel = 0;
    this.queueSel = 0;
    this.queues = Array.from({ length: this.backend.queueCount }, () => this.freshQueue());
    Atomics.store(this.interruptStatus, 0, 0);
    this.configGeneration++;
  }

}
