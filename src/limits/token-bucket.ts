/**
 * Token buckets and the dual (bandwidth + ops) rate limiter of Firecracker's design, as pure
 * state machines: time comes from an injected clock (nanoseconds), so tests are exact and a
 * device asks "how long until this request may go?" instead of polling.
 */

import { bigText, I64_MAX, int, record, snapshotInvalid } from '../state-check';

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

/**
 * A bucket as a snapshot keeps it. Counts are bigints as decimal text. Time is kept as a duration
 * (since the last refill), never as a clock reading: the restoring process's monotonic clock has
 * another origin, so an absolute time from the saving one would mean nothing there.
 */
export interface BucketState {
  /** The bucket's configuration (it may have been changed through the API since the VM started). */
  size: number;
  one_time_burst: number;
  refill_time: number;
  /** Tokens available; negative while an oversized request is being paid back. */
  budget: string;
  /** One-time burst tokens not spent yet. */
  burstLeft: string;
  /** Earned fraction of a token, in token-nanoseconds (below refill_time in ns). */
  carry: string;
  /** Nanoseconds between the last refill and the save. */
  sinceRefillNs: string;
}

/** The most debt a bucket may be restored with (an oversized request is at most a few MiB). */
const MAX_DEBT = 1n << 53n;

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

  saveState(): BucketState {
    return {
      size: this.config.size,
      one_time_burst: this.config.one_time_burst ?? 0,
      refill_time: this.config.refill_time,
      budget: String(this.budget),
      burstLeft: String(this.burst),
      carry: String(this.carry),
      sinceRefillNs: String(this.clock() - this.last),
    };
  }

  /** A bucket as it was saved, its last refill as long ago (by `clock`) as it was then. */
  static fromState(state: unknown, where: string, clock: Clock = monotonicClock): TokenBucket {
    const s = record(state, where, ['size', 'one_time_burst', 'refill_time', 'budget', 'burstLeft', 'carry', 'sinceRefillNs']);
    const config: BucketConfig = {
      size: int(s.size, `${where}.size`, 1, Number.MAX_SAFE_INTEGER),
      one_time_burst: int(s.one_time_burst, `${where}.one_time_burst`, 0, Number.MAX_SAFE_INTEGER),
      refill_time: int(s.refill_time, `${where}.refill_time`, 1, Number.MAX_SAFE_INTEGER),
    };
    const b = new TokenBucket(config, clock);
    b.budget = bigText(s.budget, `${where}.budget`, -MAX_DEBT, b.size);
    b.burst = bigText(s.burstLeft, `${where}.burstLeft`, 0n, BigInt(config.one_time_burst!));
    b.carry = bigText(s.carry, `${where}.carry`, 0n, I64_MAX);
    if (b.carry >= b.refillNs) throw snapshotInvalid(`${where}.carry`, `must be below refill_time in nanoseconds (${b.refillNs})`);
    b.last = clock() - bigText(s.sinceRefillNs, `${where}.sinceRefillNs`, 0n, I64_MAX);
    return b;
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

/** A rate limiter as a snapshot keeps it; null: no such bucket. */
export interface RateLimiterState {
  bandwidth: BucketState | null;
  ops: BucketState | null;
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

  saveState(): RateLimiterState {
    return { bandwidth: this.bandwidth?.saveState() ?? null, ops: this.ops?.saveState() ?? null };
  }

  /**
   * Puts back saved buckets, configuration included: the limits in force when the snapshot was
   * taken (API changes included) win over the ones the limiter was made with, as in Firecracker.
   * Checks everything before changing anything.
   */
  restoreState(state: unknown, where: string): void {
    const s = record(state, where, ['bandwidth', 'ops']);
    const bandwidth = s.bandwidth === null ? undefined : TokenBucket.fromState(s.bandwidth, `${where}.bandwidth`, this.clock);
    const ops = s.ops === null ? undefined : TokenBucket.fromState(s.ops, `${where}.ops`, this.clock);
    this.bandwidth = bandwidth;
    this.ops = ops;
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
