import { GuestMemory } from '../../src/kvm/memory';
import { MMIO, STATUS, VIRTIO_F_VERSION_1, VirtioMmio } from '../../src/devices/virtio/mmio';
import { VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '../../src/devices/virtio/queue';

/**
 * A minimal virtio driver for tests: it lays out split queues in guest memory, negotiates
 * features through the MMIO registers and submits descriptor chains — what a guest's driver does,
 * without a guest. Tests can also write raw (hostile) descriptors.
 */
export const MEM_SIZE = 4 << 20;
const QUEUE_BASE = 0x10000;
const BUFFER_BASE = 0x100000;

export interface Buf {
  addr: number;
  len: number;
  write?: boolean;
}

export class TestDriver {
  readonly queueSize: number;
  private avail: number[] = [];
  private nextBuf = BUFFER_BASE;
  private lastUsed: number[] = [];

  constructor(
    readonly mem: GuestMemory,
    readonly dev: VirtioMmio,
    queueSize = 16,
  ) {
    this.queueSize = queueSize;
  }

  /**
   * This driver, carrying on with another device (one restored from a snapshot of this one): the
   * same rings, the same place in them, as a guest's driver after a restore.
   */
  withDevice(dev: VirtioMmio): TestDriver {
    const d = new TestDriver(this.mem, dev, this.queueSize);
    d.avail = [...this.avail];
    d.lastUsed = [...this.lastUsed];
    d.nextBuf = this.nextBuf;
    return d;
  }

  static memory(): GuestMemory {
    return GuestMemory.allocate([{ start: 0, size: MEM_SIZE }]);
  }

  reg(offset: number): number {
    return this.dev.read(offset, 4);
  }

  set(offset: number, value: number): void {
    this.dev.write(offset, 4, value);
  }

  /** Queue areas: descriptors, then available ring, then used ring, 4 KiB apart per queue. */
  desc(q: number): number {
    return QUEUE_BASE + q * 0x3000;
  }
  availRing(q: number): number {
    return this.desc(q) + 0x1000;
  }
  usedRing(q: number): number {
    return this.desc(q) + 0x2000;
  }

  /** The standard initialization sequence (virtio 1.x, 3.1.1). */
  init(features: bigint = VIRTIO_F_VERSION_1, opts: { queueSize?: number } = {}): number {
    this.set(MMIO.STATUS, 0);
    this.set(MMIO.STATUS, STATUS.ACKNOWLEDGE);
    this.set(MMIO.STATUS, STATUS.ACKNOWLEDGE | STATUS.DRIVER);
    this.set(MMIO.DRIVER_FEATURES_SEL, 0);
    this.set(MMIO.DRIVER_FEATURES, Number(features & 0xffffffffn));
    this.set(MMIO.DRIVER_FEATURES_SEL, 1);
    this.set(MMIO.DRIVER_FEATURES, Number(features >> 32n));
    this.set(MMIO.STATUS, STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK);
    if (!(this.reg(MMIO.STATUS) & STATUS.FEATURES_OK)) return this.reg(MMIO.STATUS);
    for (let q = 0; q < this.dev.backend.queueCount; q++) {
      this.set(MMIO.QUEUE_SEL, q);
      this.set(MMIO.QUEUE_NUM, opts.queueSize ?? this.queueSize);
      this.set(MMIO.QUEUE_DESC_LOW, this.desc(q));
      this.set(MMIO.QUEUE_DESC_HIGH, 0);
      this.set(MMIO.QUEUE_DRIVER_LOW, this.availRing(q));
      this.set(MMIO.QUEUE_DRIVER_HIGH, 0);
      this.set(MMIO.QUEUE_DEVICE_LOW, this.usedRing(q));
      this.set(MMIO.QUEUE_DEVICE_HIGH, 0);
      this.set(MMIO.QUEUE_READY, 1);
      this.avail[q] = 0;
      this.lastUsed[q] = 0;
    }
    this.set(MMIO.STATUS, STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK | STATUS.DRIVER_OK);
    return this.reg(MMIO.STATUS);
  }

  /** A fresh buffer in guest memory, optionally holding `data`. */
  buffer(len: number, data?: Uint8Array): number {
    const addr = this.nextBuf;
    this.nextBuf += Math.ceil(len / 16) * 16 + 16;
    this.mem.fill(addr, len);
    if (data) this.mem.write(addr, data);
    return addr;
  }

  /** Writes one raw descriptor. */
  writeDesc(table: number, i: number, addr: number, len: number, flags: number, next: number): void {
    const b = Buffer.alloc(16);
    b.writeBigUInt64LE(BigInt(addr), 0);
    b.writeUInt32LE(len, 8);
    b.writeUInt16LE(flags, 12);
    b.writeUInt16LE(next, 14);
    this.mem.write(table + 16 * i, b);
  }

  /** Publishes a head index on the available ring. */
  publish(q: number, head: number): void {
    const slot = Buffer.alloc(2);
    slot.writeUInt16LE(head);
    this.mem.write(this.availRing(q) + 4 + 2 * (this.avail[q] % this.queueSize), slot);
    this.avail[q] = (this.avail[q] + 1) & 0xffff;
    slot.writeUInt16LE(this.avail[q]);
    this.mem.write(this.availRing(q) + 2, slot);
  }

  /** Submits a chain starting at descriptor `first` and notifies the device. */
  submit(q: number, bufs: Buf[], first = 0, opts: { indirect?: boolean } = {}): void {
    if (opts.indirect) {
      const table = this.buffer(16 * bufs.length);
      bufs.forEach((b, i) => this.writeDesc(table, i, b.addr, b.len, (b.write ? VIRTQ_DESC_F_WRITE : 0) | (i < bufs.length - 1 ? VIRTQ_DESC_F_NEXT : 0), i + 1));
      this.writeDesc(this.desc(q), first, table, 16 * bufs.length, VIRTQ_DESC_F_INDIRECT, 0);
    } else {
      bufs.forEach((b, i) => this.writeDesc(this.desc(q), first + i, b.addr, b.len, (b.write ? VIRTQ_DESC_F_WRITE : 0) | (i < bufs.length - 1 ? VIRTQ_DESC_F_NEXT : 0), first + i + 1));
    }
    this.publish(q, first);
    this.set(MMIO.QUEUE_NOTIFY, q);
  }

  /** Used elements not seen yet: [head, length]. */
  used(q: number): [number, number][] {
    const out: [number, number][] = [];
    const idx = Buffer.alloc(2);
    this.mem.read(this.usedRing(q) + 2, idx);
    const now = idx.readUInt16LE();
    while (this.lastUsed[q] !== now) {
      const e = Buffer.alloc(8);
      this.mem.read(this.usedRing(q) + 4 + 8 * (this.lastUsed[q] % this.queueSize), e);
      out.push([e.readUInt32LE(0), e.readUInt32LE(4)]);
      this.lastUsed[q] = (this.lastUsed[q] + 1) & 0xffff;
    }
    return out;
  }
}
