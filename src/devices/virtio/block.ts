import * as fs from 'node:fs';
import type { GuestMemory } from '../../kvm/memory';
import { Chain, scatter, VirtQueue } from './queue';
import type { DeviceIo, VirtioBackend } from './mmio';
import { restoreThrottle, Throttle } from '../../limits/throttle';
import type { RateLimiterState } from '../../limits/token-bucket';
import { bool, int, record, snapshotMismatch } from '../../state-check';

export const VIRTIO_ID_BLOCK = 2;
export const VIRTIO_BLK_F_RO = 1n << 5n;
export const VIRTIO_BLK_F_FLUSH = 1n << 9n;
export const BLK = { IN: 0, OUT: 1, FLUSH: 4, GET_ID: 8 } as const;
export const BLK_S = { OK: 0, IOERR: 1, UNSUPP: 2 } as const;
export const SECTOR = 512;
export const VIRTIO_BLK_ID_BYTES = 20;
/** Largest request served; larger ones fail with IOERR (no Linux guest sends them, a hostile one could stall the VMM). */
export const MAX_REQUEST_BYTES = 16 << 20;

export interface BlockCounters {
  reads: number;
  writes: number;
  flushes: number;
  readBytes: number;
  writeBytes: number;
  errors: number;
  invalidRequests: number;
}

export interface BlockOptions {
  id: string;
  path: string;
  readOnly: boolean;
  /** Writeback: a flush fsyncs the file. Unsafe: a flush is acknowledged without syncing. */
  cacheType: 'Unsafe' | 'Writeback';
  /** Called for each malformed chain (the transport counts it). */
  onMalformed?: () => void;
  /** The drive's rate limiter: bandwidth counts data bytes, ops counts requests. */
  throttle?: Throttle;
}

/**
 * A drive as a snapshot keeps it. The backing file's path is not in it: the restore opens whatever
 * file its caller names (a clone needs a copy of its own), and only checks that the guest, which
 * read the capacity and read-only flag at boot, would see the same ones.
 */
export interface BlockState {
  capacityBytes: number;
  readOnly: boolean;
  /** The drive's rate limiter; null: none. */
  rateLimiter: RateLimiterState | null;
}

/** Bytes a request moves: its buffers between the header and the status byte. */
function dataBytes(chain: Chain): number {
  return chain.segments.slice(1, -1).reduce((n, s) => n + s.len, 0);
}

/**
 * virtio-blk over a host file, synchronous I/O. Requests are checked against the capacity fixed
 * at open; if the file later shrinks or vanishes, the guest gets I/O errors, never fc-run a crash.
 */
export class BlockDevice implements VirtioBackend {
  readonly deviceId = VIRTIO_ID_BLOCK;
  readonly queueCount = 1;
  readonly features: bigint;
  readonly counters: BlockCounters = { reads: 0, writes: 0, flushes: 0, readBytes: 0, writeBytes: 0, errors: 0, invalidRequests: 0 };
  private readonly fd: number;
  private readonly capacityBytes: number;
  private readonly configSpace: Uint8Array;
  private queue: VirtQueue | undefined;
  private io: DeviceIo | undefined;

  constructor(
    private readonly mem: GuestMemory,
    private readonly opts: BlockOptions,
  ) {
    this.fd = fs.openSync(opts.path, opts.readOnly ? 'r' : 'r+');
    this.capacityBytes = fs.fstatSync(this.fd).size;
    this.features = VIRTIO_BLK_F_FLUSH | (opts.readOnly ? VIRTIO_BLK_F_RO : 0n);
    const cfg = Buffer.alloc(8);
    cfg.writeBigUInt64LE(BigInt(Math.floor(this.capacityBytes / SECTOR)));
    this.configSpace = cfg;
  }

  config(): Uint8Array {
    return this.configSpace;
  }

  activate(queues: VirtQueue[], io: DeviceIo): void {
    this.queue = queues[0];
    this.io = io;
  }

  reset(): void {
    this.queue = undefined;
    this.io = undefined;
  }

  close(): void {
    fs.closeSync(this.fd);
  }

  notify(): void {
    const q = this.queue;
    const throttle = this.opts.throttle;
    if (!q || !this.io || throttle?.blocked) return; // a throttled device resumes from its timer
    try {
      for (let chain = q.pop(); chain; chain = q.pop()) {
        if (throttle && !chain.error && !throttle.admit(dataBytes(chain))) {
          q.unpop(); // stays queued; resume() picks it up
          break;
        }
        q.push(chain.head, this.handle(chain));
      }
    } catch (err) {
      this.io.fail((err as Error).message);
      return;
    }
    this.io.usedBuffers([q]);
  }

  /**
   * Requests are served synchronously on the VMM thread, so between two events nothing is in
   * flight: the state is the capacity the guest saw and the rate limiter's buckets.
   */
  saveState(): BlockState {
    return { capacityBytes: this.capacityBytes, readOnly: this.opts.readOnly, rateLimiter: this.opts.throttle?.saveState() ?? null };
  }

  /** Checks the saved drive against this one and puts back its rate limiter (after the transport's restore). */
  restoreState(state: unknown, where: string): void {
    const s = record(state, where, ['capacityBytes', 'readOnly', 'rateLimiter']);
    const capacity = int(s.capacityBytes, `${where}.capacityBytes`, 0, Number.MAX_SAFE_INTEGER);
    const readOnly = bool(s.readOnly, `${where}.readOnly`);
    if (capacity !== this.capacityBytes) throw snapshotMismatch(`${where}.capacityBytes`, `the guest saw a disk of ${capacity} bytes; ${this.opts.path} has ${this.capacityBytes} (restore with a copy of the disk the snapshot was taken with)`);
    if (readOnly !== this.opts.readOnly) throw snapshotMismatch(`${where}.readOnly`, `the guest saw a ${readOnly ? 'read-only' : 'writable'} disk; this drive is ${this.opts.readOnly ? 'read-only' : 'writable'}`);
    restoreThrottle(this.opts.throttle, s.rateLimiter, `${where}.rateLimiter`);
  }

  /** The rate limiter's timer fired. */
  resume(): void {
    this.opts.throttle?.expired();
    this.notify();
  }

  /** Executes one request; returns the bytes written into guest buffers (data and status). */
  private handle(chain: Chain): number {
    const invalid = () => {
      this.counters.invalidRequests++;
      this.opts.onMalformed?.();
      return 0;
    };
    if (chain.error) return invalid();
    const segs = chain.segments;
    const header = segs[0];
    const status = segs[segs.length - 1];
    // A request is a 16-byte readable header, data buffers, and a writable 1-byte status last.
    if (segs.length < 2 || header.writable || header.len < 16 || !status.writable || status.len < 1) return invalid();
    const hdr = Buffer.alloc(16);
    this.mem.read(header.addr, hdr);
    const type = hdr.readUInt32LE(0);
    const sector = Number(hdr.readBigUInt64LE(8));
    const data = segs.slice(1, -1);
    let written = 0;
    let result: number;
    try {
      switch (type) {
        case BLK.IN:
          if (data.some((d) => !d.writable)) return invalid();
          written = this.transfer(sector, data, 'read');
          result = BLK_S.OK;
          break;
        case BLK.OUT:
          if (data.some((d) => d.writable)) return invalid();
          if (this.opts.readOnly) {
            result = BLK_S.IOERR;
            break;
          }
          this.transfer(sector, data, 'write');
          result = BLK_S.OK;
          break;
        case BLK.FLUSH:
          this.counters.flushes++;
          if (this.opts.cacheType === 'Writeback') fs.fsyncSync(this.fd);
          result = BLK_S.OK;
          break;
        case BLK.GET_ID: {
          const id = Buffer.alloc(VIRTIO_BLK_ID_BYTES);
          id.write(this.opts.id.slice(0, VIRTIO_BLK_ID_BYTES), 'utf8');
          written = scatter(this.mem, data, id);
          result = BLK_S.OK;
          break;
        }
        default:
          result = BLK_S.UNSUPP;
      }
    } catch {
      result = BLK_S.IOERR;
    }
    if (result === BLK_S.IOERR) this.counters.errors++;
    this.mem.write(status.addr, Uint8Array.of(result));
    return written + 1;
  }

  /** Moves data between the file and guest buffers; throws on anything but a complete transfer. */
  private transfer(sector: number, segs: Chain['segments'], dir: 'read' | 'write'): number {
    const total = segs.reduce((n, s) => n + s.len, 0);
    if (total > MAX_REQUEST_BYTES) throw new Error(`request of ${total} bytes is over the ${MAX_REQUEST_BYTES}-byte limit`);
    const start = sector * SECTOR;
    if (!Number.isSafeInteger(start) || start + total > this.capacityBytes) throw new Error('request beyond the end of the disk');
    let pos = start;
    for (const s of segs) {
      const view = this.mem.view(s.addr, s.len);
      const buf = view ?? Buffer.alloc(s.len);
      if (dir === 'read') {
        const n = fs.readSync(this.fd, buf, 0, s.len, pos);
        if (n !== s.len) throw new Error('short read: the backing file shrank');
        if (!view) this.mem.write(s.addr, buf);
      } else {
        if (!view) this.mem.read(s.addr, buf);
        const n = fs.writeSync(this.fd, buf, 0, s.len, pos);
        if (n !== s.len) throw new Error('short write');
      }
      pos += s.len;
    }
    if (dir === 'read') {
      this.counters.reads++;
      this.counters.readBytes += total;
    } else {
      this.counters.writes++;
      this.counters.writeBytes += total;
    }
    return dir === 'read' ? total : 0;
  }
}
