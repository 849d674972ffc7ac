import type { GuestMemory } from '../../kvm/memory';
import { int, record, U16_MAX } from '../../state-check';

/**
 * A split virtqueue (virtio 1.x, section 2.7) read and written in guest memory. Every index,
 * address and length comes from the guest, so every one is checked: a malformed chain raises
 * QueueError for the device to fail the request (or mark itself broken), never touching memory
 * outside guest RAM and never looping forever.
 */

export const VIRTQ_DESC_F_NEXT = 1;
export const VIRTQ_DESC_F_WRITE = 2;
export const VIRTQ_DESC_F_INDIRECT = 4;
export const VIRTQ_USED_F_NO_NOTIFY = 1;
export const VIRTQ_AVAIL_F_NO_INTERRUPT = 1;
/** The largest queue the transport offers. */
export const QUEUE_MAX_SIZE = 256;

const fenceWord = new Int32Array(new SharedArrayBuffer(4));
/** A full memory barrier: V8 compiles Atomics read-modify-writes to locked instructions. */
function fence(): void {
  Atomics.add(fenceWord, 0, 0);
}

export class QueueError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'QueueError';
  }
}

/** One buffer of a chain: guest address and length, and whether the device may write it. */
export interface Segment {
  addr: number;
  len: number;
  writable: boolean;
}

/** A descriptor chain popped from the available ring. */
export interface Chain {
  /** Head index, returned with the used element. */
  head: number;
  segments: Segment[];
  /** Set when the chain is malformed: the device returns it unused and counts the error. */
  error?: string;
}

export interface QueueConfig {
  size: number;
  descTable: number;
  availRing: number;
  usedRing: number;
}

/**
 * Where the device is in a queue, for a snapshot: the rings themselves are in guest memory, which
 * the snapshot keeps whole. Each is a free-running 16-bit index.
 */
export interface QueuePositions {
  /** The next available-ring entry the device will take. */
  nextAvail: number;
  /** The next used-ring entry the device will fill (the used index it last published). */
  nextUsed: number;
  /** The used index at the last interrupt decision (VIRTIO_F_EVENT_IDX suppression). */
  signalledUsed: number;
}

export class VirtQueue {
  private lastAvail = 0;
  private usedIdx = 0;
  /** Used index at the last interrupt decision, for VIRTIO_F_EVENT_IDX. */
  private signalledUsed = 0;

  /** Zero-copy views of the three areas, fixed for the queue's life (checked at construction). */
  private readonly descView: DataView | undefined;
  private readonly availView: DataView | undefined;
  private readonly usedView: DataView | undefined;

  constructor(
    private readonly mem: GuestMemory,
    readonly cfg: QueueConfig,
    private readonly eventIdx: boolean,
  ) {
    const { size } = cfg;
    if (size === 0 || size > QUEUE_MAX_SIZE || (size & (size - 1)) !== 0) throw new QueueError(`queue size ${size} is not a power of two up to ${QUEUE_MAX_SIZE}`);
    if (cfg.descTable % 16 || cfg.availRing % 2 || cfg.usedRing % 4) throw new QueueError('queue areas are misaligned');
    for (const [what, addr, len] of [
      ['descriptor table', cfg.descTable, 16 * size],
      ['available ring', cfg.availRing, 6 + 2 * size],
      ['used ring', cfg.usedRing, 6 + 8 * size],
    ] as const) {
      if (!mem.contains(addr, len)) throw new QueueError(`${what} [0x${addr.toString(16)}, +${len}) is outside guest RAM`);
    }
    const dv = (addr: number, len: number) => {
      const v = mem.view(addr, len);
      return v ? new DataView(v.buffer, v.byteOffset, len) : undefined;
    };
    this.descView = dv(cfg.descTable, 16 * size);
    this.availView = dv(cfg.availRing, 6 + 2 * size);
    this.usedView = dv(cfg.usedRing, 6 + 8 * size);
  }

  /** Little-endian accessors: through the cached view when there is one, else piecewise. */
  private u16(addr: number): number {
    const view = this.viewFor(addr, 2);
    if (view) return view.dv.getUint16(view.at, true);
    const b = new Uint8Array(2);
    this.mem.read(addr, b);
    return b[0] | (b[1] << 8);
  }

  private setU16(addr: number, value: number): void {
    this.mem.markDirty(addr, 2);
    const view = this.viewFor(addr, 2);
    if (view) view.dv.setUint16(view.at, value, true);
    else this.mem.write(addr, Uint8Array.of(value & 0xff, (value >> 8) & 0xff));
  }

  private setU32(addr: number, value: number): void {
    this.mem.markDirty(addr, 4);
    const view = this.viewFor(addr, 4);
    if (view) view.dv.setUint32(view.at, value >>> 0, true);
    else this.mem.write(addr, Uint8Array.of(value & 0xff, (value >>> 8) & 0xff, (value >>> 16) & 0xff, (value >>> 24) & 0xff));
  }

  private viewFor(addr: number, len: number): { dv: DataView; at: number } | undefined {
    for (const [dv, base] of [
      [this.availView, this.cfg.availRing],
      [this.usedView, this.cfg.usedRing],
    ] as const) {
      if (dv && addr >= base && addr + len <= base + dv.byteLength) return { dv, at: addr - base };
    }
    return undefined;
  }

  saveState(): QueuePositions {
    return { nextAvail: this.lastAvail, nextUsed: this.usedIdx, signalledUsed: this.signalledUsed };
  }

  /**
   * Puts the device back where it was in the rings. Any 16-bit values are accepted: they are
   * compared with what the guest wrote in its rings only through pop(), which already treats a
   * driver's index that moved by more than the queue size as a broken ring (the device fails).
   */
  restoreState(state: unknown, where: string): void {
    const s = record(state, where, ['nextAvail', 'nextUsed', 'signalledUsed']);
    const nextAvail = int(s.nextAvail, `${where}.nextAvail`, 0, U16_MAX);
    const nextUsed = int(s.nextUsed, `${where}.nextUsed`, 0, U16_MAX);
    const signalledUsed = int(s.signalledUsed, `${where}.signalledUsed`, 0, U16_MAX);
    this.lastAvail = nextAvail;
    this.usedIdx = nextUsed;
    this.signalledUsed = signalledUsed;
  }

  /**
   * Asks the driver to notify the device when it adds the next chain. With VIRTIO_F_EVENT_IDX the
   * driver notifies only when its available index passes avail_event, which pop() sets to the
   * device's own position: a device that takes one chain and then waits for more (vsock's event
   * queue) must move avail_event up to the driver's index, or the next addition goes unnoticed.
   */
  armNotification(): void {
    if (!this.eventIdx) return; // without event index the driver notifies unless told not to, and fc-run never tells it
    this.setU16(this.cfg.usedRing + 4 + 8 * this.cfg.size, this.availIndex());
    fence();
  }

  /** The driver's available index (how many chains it has published, modulo 2^16). */
  availIndex(): number {
    return this.u16(this.cfg.availRing + 2);
  }

  /** Number of chains the driver has made available and the device has not taken. */
  pending(): number {
    return (this.availIndex() - this.lastAvail) & 0xffff;
  }

  /**
   * Takes the next available chain, or undefined when there is none. A malformed chain comes back
   * with `error` set. Throws QueueError when the ring itself is broken (more chains published
   * than the queue holds, a head index out of range): the device must then be reset.
   */
  pop(): Chain | undefined {
    const pending = this.pending();
    if (pending === 0) return undefined;
    if (pending > this.cfg.size) throw new QueueError(`available index moved by ${pending}, more than the queue size ${this.cfg.size}`);
    const head = this.u16(this.cfg.availRing + 4 + 2 * (this.lastAvail % this.cfg.size));
    if (head >= this.cfg.size) throw new QueueError(`available ring names descriptor ${head}, beyond the queue size ${this.cfg.size}`);
    this.lastAvail = (this.lastAvail + 1) & 0xffff;
    if (this.eventIdx) {
      this.setU16(this.cfg.usedRing + 4 + 8 * this.cfg.size, this.lastAvail); // avail_event
      fence(); // publish avail_event before the next look at avail.idx (a driver's kick depends on it)
    }
    try {
      return { head, segments: this.walk(head) };
    } catch (err) {
      if (err instanceof QueueError) return { head, segments: [], error: err.message };
      throw err;
    }
  }

  /** The buffers of the chain starting at `head`, following NEXT links and indirect tables. */
  private walk(head: number): Segment[] {
    const desc = (table: number, count: number, i: number) => {
      if (i >= count) throw new QueueError(`descriptor index ${i} is out of range (table of ${count})`);
      let dv: DataView;
      let at: number;
      if (table === this.cfg.descTable && this.descView) {
        dv = this.descView;
        at = 16 * i;
      } else {
        // A descriptor of an unaligned indirect table may straddle two views of guest memory: copied.
        const v = this.mem.bytes(table + 16 * i, 16);
        dv = new DataView(v.buffer, v.byteOffset, 16);
        at = 0;
      }
      const lo = dv.getUint32(at, true);
      const hi = dv.getUint32(at + 4, true);
      return { addr: hi * 2 ** 32 + lo, len: dv.getUint32(at + 8, true), flags: dv.getUint16(at + 12, true), next: dv.getUint16(at + 14, true) };
    };
    const segments: Segment[] = [];
    let table = this.cfg.descTable;
    let count = this.cfg.size;
    let i = head;
    let steps = 0;
    let indirect = false;
    for (;;) {
      const d = desc(table, count, i);
      if (++steps > count) throw new QueueError('descriptor chain loops');
      if (d.flags & VIRTQ_DESC_F_INDIRECT) {
        if (indirect) throw new QueueError('nested indirect descriptor table');
        if (d.flags & VIRTQ_DESC_F_NEXT) throw new QueueError('indirect descriptor with NEXT set');
        if (d.len === 0 || d.len % 16 !== 0) throw new QueueError(`indirect table length ${d.len} is not a multiple of 16`);
        // A chain may not be longer than the queue (virtio 1.x, 2.7.5.3): this bounds the walk.
        if (d.len / 16 > QUEUE_MAX_SIZE) throw new QueueError(`indirect table of ${d.len / 16} descriptors is longer than the queue allows`);
        if (!this.mem.contains(d.addr, d.len)) throw new QueueError('indirect descriptor table is outside guest RAM');
        table = d.addr;
        count = d.len / 16;
        i = 0;
        steps = 0;
        indirect = true;
        continue;
      }
      if (!this.mem.contains(d.addr, d.len)) throw new QueueError(`buffer [0x${d.addr.toString(16)}, +${d.len}) is outside guest RAM`);
      const writable = (d.flags & VIRTQ_DESC_F_WRITE) !== 0;
      // A buffer the device may write: counted as written for Diff snapshots (KVM's dirty log
      // sees only the guest's own writes).
      if (writable) this.mem.markDirty(d.addr, d.len);
      segments.push({ addr: d.addr, len: d.len, writable });
      if (segments.length > QUEUE_MAX_SIZE) throw new QueueError('descriptor chain is longer than the queue allows');
      if (!(d.flags & VIRTQ_DESC_F_NEXT)) return segments;
      i = d.next;
    }
  }

  /** Gives back the chain just popped, untouched (the device could not use it yet). */
  unpop(): void {
    this.lastAvail = (this.lastAvail - 1) & 0xffff;
  }

  /** Puts a chain on the used ring with the number of bytes written into its buffers. */
  push(head: number, written: number): void {
    const slot = this.cfg.usedRing + 4 + 8 * (this.usedIdx % this.cfg.size);
    this.setU32(slot, head);
    this.setU32(slot + 4, written);
    this.usedIdx = (this.usedIdx + 1) & 0xffff;
    this.setU16(this.cfg.usedRing + 2, this.usedIdx);
  }

  /**
   * Whether the driver wants an interrupt for what was pushed since the last call: with event
   * index, when used_event falls in the newly used range; otherwise unless NO_INTERRUPT is set.
   */
  needsInterrupt(): boolean {
    const old = this.signalledUsed;
    const now = this.usedIdx;
    this.signalledUsed = now;
    if (old === now) return false;
    fence(); // used.idx must be visible before used_event / flags are read (x86 reorders store→load)
    if (this.eventIdx) {
      const usedEvent = this.u16(this.cfg.availRing + 4 + 2 * this.cfg.size);
      return ((now - usedEvent - 1) & 0xffff) < ((now - old) & 0xffff);
    }
    return (this.u16(this.cfg.availRing) & VIRTQ_AVAIL_F_NO_INTERRUPT) === 0;
  }
}

/**
 * A chain's readable bytes (up to `max`) as one buffer: a zero-copy view of guest memory when
 * they lie in one buffer (use it before returning the chain to the guest), a copy otherwise.
 */
export function gather(mem: GuestMemory, segments: Segment[], max = Infinity): Buffer {
  const readable = segments.filter((s) => !s.writable);
  if (readable.length === 1) {
    const n = Math.min(readable[0].len, max);
    const v = mem.view(readable[0].addr, n);
    if (v) return Buffer.from(v.buffer, v.byteOffset, n);
  }
  const parts: Buffer[] = [];
  let total = 0;
  for (const s of segments) {
    if (s.writable || total >= max) continue;
    const n = Math.min(s.len, max - total);
    const b = Buffer.alloc(n);
    mem.read(s.addr, b);
    parts.push(b);
    total += n;
  }
  return Buffer.concat(parts, total);
}

/** Copies `data` into a chain's writable buffers; returns the number of bytes written. */
export function scatter(mem: GuestMemory, segments: Segment[], data: Uint8Array): number {
  let off = 0;
  for (const s of segments) {
    if (!s.writable || off >= data.length) continue;
    const n = Math.min(s.len, data.length - off);
    mem.write(s.addr, data.subarray(off, off + n));
    off += n;
  }
  return off;
}
