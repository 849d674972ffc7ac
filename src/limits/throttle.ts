import { snapshotInvalid } from '../state-check';
import { BucketConfig, Clock, monotonicClock, RateLimiter, RateLimiterConfig, RateLimiterState } from './token-bucket';

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
    clock: Clock = monotonicClock,
  ) {
    this.limiter = new RateLimiter(config, clock);
  }

  /** Tokens left in each bucket (and their configuration), for a snapshot. */
  saveState(): RateLimiterState {
    return this.limiter.saveState();
  }

  /**
   * Puts back saved buckets (validated: a bad field throws a 'snapshot-invalid' FcRunError). A
   * wait that was running when the snapshot was taken is not carried over, since its timer was in
   * the saving process: the device's first look at its queues after the restore asks the buckets
   * again and arms this process's timer if it must still wait.
   */
  restoreState(state: unknown, where: string): void {
    this.limiter.restoreState(state, where);
    this.waiting = false;
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

/**
 * Restores a device's saved rate limiter into the throttle it was built with: null (the device had
 * none) leaves the throttle unlimited; a saved limiter for a device built without a throttle is
 * refused (the VMM thread builds one whenever the saved state has one).
 */
export function restoreThrottle(throttle: Throttle | undefined, saved: unknown, where: string): void {
  if (saved === null) return throttle?.restoreState({ bandwidth: null, ops: null }, where);
  if (!throttle) throw snapshotInvalid(where, 'the device was built without a rate limiter to restore this one into');
  throttle.restoreState(saved, where);
}
