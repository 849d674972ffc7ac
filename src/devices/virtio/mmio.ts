import type { GuestMemory } from '../../kvm/memory';
import { QUEUE_MAX_SIZE, QueueError, VirtQueue } from './queue';

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
