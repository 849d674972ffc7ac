/**
 * Token buckets and the dual (bandwidth + ops) rate limiter of Firecracker's design, as pure
 * state machines: time comes from an injected clock (nanoseconds), so tests are exact and a
 * device asks "how long until this request may go?" instead of polling.
 */

/** Monotonic time in nanoseconds. */
export type Clock = () => bigint;

export const monotonicClock: Clock = () => process.hrtime.bigint();

export interface BucketConfig {
  /** Capacity in tokens (bytes or operations); greater than 0. */
  size: number;
  /** Extra tokens spent before the budget, once; they never refill. */
  one_time_burst?: number;
  /** Milliseconds to refill the whole bucket from empty; greater than 0. */
  refill_time: number;
}

export class TokenBucket {
  readonly size: bigint;
  private readonly refillNs: bigint;
  /** Tokens available; negative while an oversized request is being paid back. */
  private budget: bigint;
  private burst: bigint;
  /** When refill was last computed. */
  private last: bigint;
  /** Earned fraction of a token, in token-nanoseconds (always below refillNs): nothing is lost to rounding. */
  private carry = 0n;

  constructor(
    readonly config: BucketConfig,
    private readonly clock: Clock = monotonicClock,
  ) {
    if (!(config.size > 0) || !(config.refill_time > 0)) throw new RangeError('a token bucket needs size > 0 and refill_time > 0');
    this.size = BigInt(config.size);
    this.refillNs = BigInt(config.refill_time) * 1_000_000n;
    this.budget = this.size;
    this.burst = BigInt(config.one_time_burst ?? 0);
    this.last = clock();
  }

  /** Adds the tokens earned since the last refill: size tokens per refill_time, exactly. */
  private refill(): void {
    const now = this.clock();
    const elapsed = now - this.last;
    if (elapsed <= 0n) return;
    this.last = now;
    if (this.budget >= this.size) {
      this.carry = 0n;
      return;
    }
    const units = this.carry + elapsed * this.size;
    this.budget += units / this.refillNs;
    this.carry = units % this.refillNs;
    if (this.budget >= this.size) {
      this.budget = this.size;
      this.carry = 0n;
    }
  }

  /** Tokens available right now (the one-time burst included). */
  available(): bigint {
    this.refill();
    return this.burst + this.budget;
  }

  /**
   * Whether `tokens` may be taken now. A request larger than the bucket may go when the bucket is
   * full: it drains it and leaves a debt the refill pays back, so it never waits forever and the
   * long-run rate still holds.
   */
  canTake(tokens: bigint): boolean {
    this.refill();
    const need = tokens - this.burst;
    if (need <= 0n) return true;
    return need > this.size ? this.budget >= this.size : this.budget >= need;
  }

  /** Takes `tokens` (call only after canTake said yes). */
  take(tokens: bigint): void {
    const fromBurst = tokens < this.burst ? tokens : this.burst;
    this.burst -= fromBurst;
    this.budget -= tokens - fromBurst;
  }

  /** Nanoseconds until `tokens` may be taken (0 when now). */
  waitFor(tokens: bigint): bigint {
    this.refill();
    const need = tokens - this.burst;
    if (need <= 0n) return 0n;
    const target = need > this.size ? this.size : need;
    if (this.budget >= target) return 0n;
    const missing = target - this.budget;
    // Smallest wait after which carry + wait * size covers `missing` tokens.
    const wait = (missing * this.refillNs - this.carry + this.size - 1n) / this.size;
    return wait > 0n ? wait : 1n;
  }
}

export interface RateLimiterConfig {
  bandwidth?: BucketConfig;
  ops?: BucketConfig;
}

export interface LimiterCounters {
  /** Requests that had to wait. */
  throttled: number;
}

/**
 * A bandwidth bucket (bytes) and an ops bucket (requests). A request goes only when both allow it,
 * and then takes from both — never from one alone.
 */
export class RateLimiter {
  private bandwidth: TokenBucket | undefined;
  private ops: TokenBucket | undefined;
  readonly counters: LimiterCounters = { throttled: 0 };

  constructor(
    config: RateLimiterConfig,
    private readonly clock: Clock = monotonicClock,
  ) {
    this.update(config);
  }

  /** Replaces the buckets (a run-time change): each new bucket starts full. */
  update(config: RateLimiterConfig): void {
    this.bandwidth = config.bandwidth ? new TokenBucket(config.bandwidth, this.clock) : undefined;
    this.ops = config.ops ? new TokenBucket(config.ops, this.clock) : undefined;
  }

  /**
   * Changes the buckets a run-time request names, as Firecracker's API does: a bucket left out
   * stays as it is, `null` removes it, a new configuration replaces it (starting full).
   */
  patch(change: { bandwidth?: BucketConfig | null; ops?: BucketConfig | null }): void {
    if (change.bandwidth !== undefined) this.bandwidth = change.bandwidth ? new TokenBucket(change.bandwidth, this.clock) : undefined;
    if (change.ops !== undefined) this.ops = change.ops ? new TokenBucket(change.ops, this.clock) : undefined;
  }

  get unlimited(): boolean {
    return !this.bandwidth && !this.ops;
  }

  /** Takes one request of `bytes` if both buckets allow it; false means wait blockedFor(). */
  consume(bytes: number): boolean {
    const b = BigInt(bytes);
    if ((this.bandwidth && !this.bandwidth.canTake(b)) || (this.ops && !this.ops.canTake(1n))) {
      this.counters.throttled++;
      return false;
    }
    this.bandwidth?.take(b);
    this.ops?.take(1n);
    return true;
  }

  /** Milliseconds (fractional, nanosecond-exact) until a request of `bytes` could go; 0 when now. */
  blockedForMs(bytes: number): number {
    const a = this.bandwidth?.waitFor(BigInt(bytes)) ?? 0n;
    const o = this.ops?.waitFor(1n) ?? 0n;
    const ns = a > o ? a : o;
    return Number(ns) / 1e6;
  }
}
