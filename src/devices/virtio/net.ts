import type { GuestMemory } from '../../kvm/memory';
import { setTapOffload, tapRead, tapWrite, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, VNET_HDR_BYTES } from '../../kvm/tap';
import { gather, scatter, VirtQueue } from './queue';
import type { DeviceIo, VirtioBackend } from './mmio';
import { restoreThrottle, Throttle } from '../../limits/throttle';
import type { RateLimiterState } from '../../limits/token-bucket';
import { int, record, snapshotInvalid, snapshotMismatch, text } from '../../state-check';

/**
 * An interface as a snapshot keeps it. The TAP is not in it: the restore opens the TAP its caller
 * names (a clone gets one of its own). The MAC and MTU are, since the guest read them at boot and
 * keeps using them: a restore must offer the same ones.
 */
export interface NetState {
  /** "aa:bb:cc:dd:ee:ff", or null when the device offers none. */
  mac: string | null;
  mtu: number | null;
  rxRateLimiter: RateLimiterState | null;
  txRateLimiter: RateLimiterState | null;
}

function macText(mac: Uint8Array | undefined): string | null {
  return mac ? Array.from(mac, (b) => b.toString(16).padStart(2, '0')).join(':') : null;
}

export const VIRTIO_ID_NET = 1;
export const NET_F = {
  CSUM: 1n << 0n,
  GUEST_CSUM: 1n << 1n,
  MTU: 1n << 3n,
  MAC: 1n << 5n,
  GUEST_TSO4: 1n << 7n,
  GUEST_TSO6: 1n << 8n,
  HOST_TSO4: 1n << 11n,
  HOST_TSO6: 1n << 12n,
} as const;
const RX = 0;
const TX = 1;
/** Largest frame with a GSO payload: 64 KiB plus Ethernet and virtio-net headers. */
const MAX_FRAME = 65562;

export interface NetCounters {
  rxFrames: number;
  rxBytes: number;
  rxDropped: number;
  /** A frame waited because the guest had no receive buffer. */
  noRxBuffer: number;
  txFrames: number;
  txBytes: number;
  /** Every frame from the guest dropped: too large, or the TAP refused it. */
  txDropped: number;
  /** Of `txDropped`: larger than any frame can be. */
  txOversized: number;
  /** Of `txDropped`: the TAP refused it (full, or the interface is down). */
  tapWriteFails: number;
  /** Frames the guest sent to the local endpoint (MMDS) rather than the TAP. */
  localFrames: number;
  invalidRequests: number;
}

export interface LocalEndpoint {
  /** A frame from the guest, without the virtio-net header; true when the endpoint took it. */
  handleFrame(frame: Buffer, checksumPartial: boolean): boolean;
  /** The next frame for the guest; the endpoint counts it as delivered. */
  nextFrame(): Buffer | undefined;
  hasOutput(): boolean;
}

/** virtio_net_hdr.flags: the checksum is only partial (the guest asked for checksum offload). */
const VIRTIO_NET_HDR_F_NEEDS_CSUM = 1;

export interface NetOptions {
  id: string;
  tapFd: number;
  mac?: Uint8Array;
  mtu?: number;
  onMalformed?: () => void;
  /** Start or stop watching the TAP for frames (stopped while the guest has no receive buffers). */
  watchTap(on: boolean): void;
  /**
   * A network endpoint inside fc-run (the MMDS network stack): it sees every frame the guest
   * sends first and keeps those addressed to it, which never reach the TAP; its replies go to the
   * guest ahead of frames from the TAP.
   */
  local?: LocalEndpoint;
  /** Limits on what the guest receives and sends (frame bytes; one op per frame). */
  rxThrottle?: Throttle;
  txThrottle?: Throttle;
}

/**
 * virtio-net over a TAP device opened with IFF_VNET_HDR, so the virtio-net header (checksum and
 * segmentation offloads) passes through unchanged. A frame that arrives while the guest has no
 * receive buffers waits (the TAP stops being read) rather than being dropped; frames are dropped,
 * and counted, only when they cannot fit the guest's buffers or the TAP refuses them.
 */
export class NetDevice implements VirtioBackend {
  readonly deviceId = VIRTIO_ID_NET;
  readonly queueCount = 2;
  readonly features: bigint;
  readonly counters: NetCounters = { rxFrames: 0, rxBytes: 0, rxDropped: 0, noRxBuffer: 0, txFrames: 0, txBytes: 0, txDropped: 0, txOversized: 0, tapWriteFails: 0, localFrames: 0, invalidRequests: 0 };
  private readonly configSpace = Buffer.alloc(12);
  private queues: VirtQueue[] | undefined;
  private io: DeviceIo | undefined;
  private readonly staging = Buffer.alloc(MAX_FRAME);
  /** Length of a frame read from the TAP and not yet delivered (0: none). */
  private pendingLen = 0;
  /** Whether the rate limiter already charged the pending frame. */
  private pendingCharged = false;

  constructor(
    private readonly mem: GuestMemory,
    private readonly opts: NetOptions,
  ) {
    let f = NET_F.CSUM | NET_F.GUEST_CSUM | NET_F.GUEST_TSO4 | NET_F.GUEST_TSO6 | NET_F.HOST_TSO4 | NET_F.HOST_TSO6;
    if (opts.mac) {
      f |= NET_F.MAC;
      Buffer.from(opts.mac).copy(this.configSpace, 0);
    }
    if (opts.mtu) {
      f |= NET_F.MTU;
      this.configSpace.writeUInt16LE(opts.mtu, 10);
    }
    this.configSpace.writeUInt16LE(1, 8); // max_virtqueue_pairs
    this.features = f;
  }

  config(): Uint8Array {
    return this.configSpace;
  }

  activate(queues: VirtQueue[], io: DeviceIo): void {
    this.queues = queues;
    this.io = io;
    let offload = 0;
    if (io.features & NET_F.GUEST_CSUM) offload |= TUN_F_CSUM;
    if (io.features & NET_F.GUEST_TSO4) offload |= TUN_F_TSO4;
    if (io.features & NET_F.GUEST_TSO6) offload |= TUN_F_TSO6;
    setTapOffload(this.opts.tapFd, offload);
    this.opts.watchTap(true);
  }

  reset(): void {
    this.queues = undefined;
    this.io = undefined;
    this.pendingLen = 0;
    this.opts.watchTap(false);
  }

  /**
   * A frame read from the TAP and not yet delivered is not kept: a snapshot may drop a frame in
   * flight, as a real network may, and TCP sends it again.
   */
  saveState(): NetState {
    return { mac: macText(this.opts.mac), mtu: this.opts.mtu ?? null, rxRateLimiter: this.opts.rxThrottle?.saveState() ?? null, txRateLimiter: this.opts.txThrottle?.saveState() ?? null };
  }

  /** Checks the saved interface against this one and puts back its rate limiters (after the transport's restore). */
  restoreState(state: unknown, where: string): void {
    const s = record(state, where, ['mac', 'mtu', 'rxRateLimiter', 'txRateLimiter']);
    const mac = s.mac === null ? null : text(s.mac, `${where}.mac`, 17);
    if (mac !== null && !/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/.test(mac)) throw snapshotInvalid(`${where}.mac`, `${JSON.stringify(mac)} is not a MAC address in the form aa:bb:cc:dd:ee:ff`);
    const mtu = s.mtu === null ? null : int(s.mtu, `${where}.mtu`, 1, 0xffff);
    const mine = macText(this.opts.mac);
    if (mac !== mine) throw snapshotMismatch(`${where}.mac`, `the guest saw ${mac === null ? 'no MAC address' : `MAC ${mac}`}; this interface has ${mine === null ? 'none' : mine} (a restored guest keeps the MAC it read at boot: give the restore the same guest_mac)`);
    if (mtu !== (this.opts.mtu ?? null)) throw snapshotMismatch(`${where}.mtu`, `the guest saw MTU ${mtu ?? 'none'}; this interface has ${this.opts.mtu ?? 'none'}`);
    restoreThrottle(this.opts.rxThrottle, s.rxRateLimiter, `${where}.rxRateLimiter`);
    restoreThrottle(this.opts.txThrottle, s.txRateLimiter, `${where}.txRateLimiter`);
  }

  notify(index: number): void {
    if (!this.queues || !this.io) return;
    if (index === TX) {
      if (!this.opts.txThrottle?.blocked) this.transmit();
    } else if (index === RX && !this.opts.rxThrottle?.blocked) {
      // New receive buffers: deliver what waited, then take frames from the TAP again.
      if (this.deliver()) this.opts.watchTap(true);
    }
  }

  /** A rate limiter's timer fired. */
  resume(direction: 'rx' | 'tx'): void {
    if (direction === 'tx') {
      this.opts.txThrottle?.expired();
      this.notify(TX);
    } else {
      this.opts.rxThrottle?.expired();
      this.notify(RX);
    }
  }

  /** The TAP has frames: move as many as the guest has buffers for. */
  onTapReadable(): void {
    if (!this.queues) return;
    this.deliver();
  }

  /** Delivers frames until the TAP is empty or the guest runs out of buffers; true if it may read on. */
  private deliver(): boolean {
    const rx = this.queues![RX];
    let delivered = false;
    let canRead = true;
    try {
      for (;;) {
        if (this.pendingLen === 0) {
          const local = this.opts.local?.nextFrame();
          if (local) {
            this.staging.fill(0, 0, VNET_HDR_BYTES);
            local.copy(this.staging, VNET_HDR_BYTES);
            this.pendingLen = VNET_HDR_BYTES + local.length;
          } else {
            this.pendingLen = tapRead(this.opts.tapFd, this.staging);
          }
          this.pendingCharged = false;
          if (this.pendingLen === 0) break;
        }
        if (this.opts.rxThrottle && !this.pendingCharged) {
          if (!this.opts.rxThrottle.admit(this.pendingLen - VNET_HDR_BYTES)) {
            canRead = false; // keep the frame; the rate limiter's timer resumes delivery
            this.opts.watchTap(false);
            break;
          }
          this.pendingCharged = true;
        }
        const chain = rx.pop();
        if (!chain) {
          this.counters.noRxBuffer++;
          canRead = false; // keep the frame; stop reading until the guest adds buffers
          this.opts.watchTap(false);
          break;
        }
        if (chain.error) {
          this.counters.invalidRequests++;
          this.opts.onMalformed?.();
          rx.push(chain.head, 0);
          delivered = true;
          continue;
        }
        const frame = this.staging.subarray(0, this.pendingLen);
        const room = chain.segments.reduce((n, s) => n + (s.writable ? s.len : 0), 0);
        if (room < frame.length) {
          // The guest's buffers are too small for this frame: drop it, keep the buffers.
          rx.unpop();
          this.counters.rxDropped++;
          this.pendingLen = 0;
          continue;
        }
        frame.writeUInt16LE(1, 10); // num_buffers
        rx.push(chain.head, scatter(this.mem, chain.segments, frame));
        this.counters.rxFrames++;
        this.counters.rxBytes += frame.length - VNET_HDR_BYTES;
        this.pendingLen = 0;
        delivered = true;
      }
    } catch (err) {
      this.io!.fail((err as Error).message);
      return false;
    }
    if (delivered) this.io!.usedBuffers([rx]);
    return canRead;
  }

  /** Hands a frame to the TAP; false when it would not take it (full, or the interface is down). */
  private send(frame: Buffer): boolean {
    try {
      return tapWrite(this.opts.tapFd, frame);
    } catch {
      return false;
    }
  }

  private transmit(): void {
    const tx = this.queues![TX];
    try {
      for (let chain = tx.pop(); chain; chain = tx.pop()) {
        const bytes = chain.segments.reduce((n, s) => n + s.len, 0) - VNET_HDR_BYTES;
        if (this.opts.txThrottle && !chain.error && !this.opts.txThrottle.admit(Math.max(0, bytes))) {
          tx.unpop();
          break;
        }
        if (chain.error || chain.segments.some((s) => s.writable)) {
          this.counters.invalidRequests++;
          this.opts.onMalformed?.();
          tx.push(chain.head, 0);
          continue;
        }
        if (bytes + VNET_HDR_BYTES > MAX_FRAME) {
          // Larger than any frame with a 64 KiB GSO payload: dropped and counted, never truncated.
          this.counters.txDropped++;
          this.counters.txOversized++;
          tx.push(chain.head, 0);
          continue;
        }
        const frame = gather(this.mem, chain.segments, MAX_FRAME);
        if (frame.length <= VNET_HDR_BYTES) {
          this.counters.invalidRequests++;
        } else if (this.opts.local?.handleFrame(frame.subarray(VNET_HDR_BYTES), (frame[0] & VIRTIO_NET_HDR_F_NEEDS_CSUM) !== 0)) {
          this.counters.localFrames++;
        } else if (this.send(frame)) {
          this.counters.txFrames++;
          this.counters.txBytes += frame.length - VNET_HDR_BYTES;
        } else {
          this.counters.txDropped++;
          this.counters.tapWriteFails++;
        }
        tx.push(chain.head, 0);
      }
    } catch (err) {
      this.io!.fail((err as Error).message);
      return;
    }
    this.io!.usedBuffers([tx]);
    // Replies from the local endpoint go out now, unless receiving is held back.
    if (this.opts.local?.hasOutput() && !this.opts.rxThrottle?.blocked) this.deliver();
  }
}
