import { BucketConfig, RateLimiter, RateLimiterConfig } from './token-bucket';

/** Something that calls back once after a delay; a timerfd in the VMM thread, setTimeout in tests. */
export interface Timer {
  arm(ms: number): void;
}

/**
 * A rate limiter bound to a device's resume timer: when a request must wait, the timer is armed
 * for exactly as long as it needs, and the device is called back then. No polling, no busy loop.
 */
export class Throttle {
  readonly limiter: RateLimiter;
  private waiting = false;

  constructor(
    config: RateLimiterConfig,
    private readonly timer: Timer,
  ) {
    this.limiter = new RateLimiter(config);
  }

  /** True when a request of `bytes` may go now (and is charged); otherwise the timer is armed. */
  admit(bytes: number): boolean {
    if (this.limiter.consume(bytes)) return true;
    if (!this.waiting) {
      this.waiting = true;
      this.timer.arm(Math.max(0.001, this.limiter.blockedForMs(bytes)));
    }
    return false;
  }

  /** Whether the device is waiting for the timer (new notifications can wait for it too). */
  get blocked(): boolean {
    return this.waiting;
  }

  /** The timer fired: the device may try again. */
  expired(): void {
    this.waiting = false;
  }

  /** A run-time change of the limits; takes effect now, queued requests are kept. */
  update(config: RateLimiterConfig): void {
    this.limiter.update(config);
    if (this.waiting) this.timer.arm(0.001);
  }

  /** A run-time change of the buckets named (null removes one); the others stay as they are. */
  patch(change: { bandwidth?: BucketConfig | null; ops?: BucketConfig | null }): void {
    this.limiter.patch(change);
    if (this.waiting) this.timer.arm(0.001);
  }
}
