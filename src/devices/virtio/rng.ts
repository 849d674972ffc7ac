import { randomFillSync } from 'node:crypto';
import type { GuestMemory } from '../../kvm/memory';
import type { VirtQueue } from './queue';
import type { DeviceIo, VirtioBackend } from './mmio';
import { restoreThrottle, Throttle } from '../../limits/throttle';
import type { RateLimiterState } from '../../limits/token-bucket';
import { record } from '../../state-check';

/** The entropy device as a snapshot keeps it: only its rate limiter has state. */
export interface EntropyState {
  rateLimiter: RateLimiterState | null;
}

export const VIRTIO_ID_ENTROPY = 4;
/** Most bytes handed out per request; a larger buffer is filled up to this. */
const MAX_REQUEST = 64 * 1024;

/** virtio-rng: fills each writable buffer the guest offers with bytes from the host's CSPRNG. */
export class EntropyDevice implements VirtioBackend {
  readonly deviceId = VIRTIO_ID_ENTROPY;
  readonly queueCount = 1;
  readonly features = 0n;
  readonly counters = { requests: 0, bytes: 0, invalidRequests: 0 };
  private queue: VirtQueue | undefined;
  private io: DeviceIo | undefined;

  constructor(
    private readonly mem: GuestMemory,
    private readonly onMalformed?: () => void,
    private readonly throttle?: Throttle,
  ) {}

  saveState(): EntropyState {
    return { rateLimiter: this.throttle?.saveState() ?? null };
  }

  /** Puts back the rate limiter's buckets (after the transport's restore). */
  restoreState(state: unknown, where: string): void {
    const s = record(state, where, ['rateLimiter']);
    restoreThrottle(this.throttle, s.rateLimiter, `${where}.rateLimiter`);
  }

  /** The rate limiter's timer fired. */
  resume(): void {
    this.throttle?.expired();
    this.notify();
  }

  config(): Uint8Array {
    return new Uint8Array(0);
  }

  activate(queues: VirtQueue[], io: DeviceIo): void {
    this.queue = queues[0];
    this.io = io;
  }

  reset(): void {
    this.queue = undefined;
    this.io = undefined;
  }

  notify(): void {
    const q = this.queue;
    if (!q || !this.io || this.throttle?.blocked) return;
    try {
      for (let chain = q.pop(); chain; chain = q.pop()) {
        const want = Math.min(MAX_REQUEST, chain.segments.reduce((n, s) => n + (s.writable ? s.len : 0), 0));
        if (this.throttle && !chain.error && !this.throttle.admit(want)) {
          q.unpop();
          break;
        }
        if (chain.error) {
          this.counters.invalidRequests++;
          this.onMalformed?.();
          q.push(chain.head, 0);
          continue;
        }
        let written = 0;
        for (const s of chain.segments) {
          if (!s.writable || written >= MAX_REQUEST) continue;
          const n = Math.min(s.len, MAX_REQUEST - written);
          const view = this.mem.view(s.addr, n);
          if (view) randomFillSync(view);
          else this.mem.write(s.addr, randomFillSync(Buffer.alloc(n)));
          written += n;
        }
        this.counters.requests++;
        this.counters.bytes += written;
        q.push(chain.head, written);
      }
    } catch (err) {
      this.io.fail((err as Error).message);
      return;
    }
    this.io.usedBuffers([q]);
  }
}
