import { RateLimiter, TokenBucket } from '../../src/limits/token-bucket';

/** A clock the test moves by hand, in nanoseconds. */
function fakeClock(start = 1_000_000_000n) {
  let now = start;
  const clock = () => now;
  return { clock, advanceMs: (ms: number) => (now += BigInt(Math.round(ms * 1e6))), advanceNs: (ns: bigint) => (now += ns) };
}

describe('token bucket', () => {
  test('starts full and refuses what it does not have', () => {
    const { clock } = fakeClock();
    const b = new TokenBucket({ size: 1000, refill_time: 1000 }, clock);
    expect(b.canTake(1000n)).toBe(true);
    b.take(1000n);
    expect(b.canTake(1n)).toBe(false);
  });

  test('refills linearly: half the refill time gives half the bucket, never more than full', () => {
    const t = fakeClock();
    const b = new TokenBucket({ size: 1000, refill_time: 1000 }, t.clock);
    b.take(1000n);
    t.advanceMs(500);
    expect(b.available()).toBe(500n);
    t.advanceMs(5000);
    expect(b.available()).toBe(1000n);
  });

  test('fractions of a token carry over: many small steps add up exactly', () => {
    const t = fakeClock();
    const b = new TokenBucket({ size: 3, refill_time: 1000 }, t.clock); // one token per 333.33 ms
    b.take(3n);
    for (let i = 0; i < 10; i++) {
      t.advanceMs(100);
      b.available();
    }
    expect(b.available()).toBe(3n); // 1000 ms: exactly 3 tokens, none lost to rounding
  });

  test('the one-time burst is spent first and never comes back', () => {
    const t = fakeClock();
    const b = new TokenBucket({ size: 100, one_time_burst: 50, refill_time: 100 }, t.clock);
    expect(b.available()).toBe(150n);
    expect(b.canTake(150n)).toBe(true);
    b.take(150n);
    t.advanceMs(1000);
    expect(b.available()).toBe(100n);
  });

  test('an oversized request waits for a full bucket, then goes and leaves a debt', () => {
    const t = fakeClock();
    const b = new TokenBucket({ size: 100, refill_time: 100 }, t.clock);
    b.take(50n);
    expect(b.canTake(250n)).toBe(false); // not full: wait
    expect(b.waitFor(250n)).toBe(50_000_000n); // 50 tokens at 1 per ms
    t.advanceMs(50);
    expect(b.canTake(250n)).toBe(true); // full: it may go rather than wait forever
    b.take(250n);
    expect(b.available()).toBe(-150n);
    // The debt is paid back at the normal rate before anything else goes.
    expect(b.waitFor(1n)).toBe(151_000_000n);
  });

  test('waitFor is exact: after waiting that long, the tokens are there', () => {
    const t = fakeClock();
    const b = new TokenBucket({ size: 7, refill_time: 3 }, t.clock);
    b.take(7n);
    for (const want of [1n, 3n, 7n]) {
      const wait = b.waitFor(want);
      t.advanceNs(wait - 1n);
      expect(b.canTake(want)).toBe(false);
      t.advanceNs(1n);
      expect(b.canTake(want)).toBe(true);
      b.take(want);
    }
  });

  test('zero-size or zero-refill buckets are refused (validation refuses them first)', () => {
    expect(() => new TokenBucket({ size: 0, refill_time: 100 })).toThrow(RangeError);
    expect(() => new TokenBucket({ size: 10, refill_time: 0 })).toThrow(RangeError);
  });
});

describe('rate limiter', () => {
  test('the long-run rate equals size / refill_time exactly', () => {
    const t = fakeClock();
    const rl = new RateLimiter({ bandwidth: { size: 1_000_000, refill_time: 1000 } }, t.clock);
    let sent = 0;
    const start = t.clock();
    while (sent < 10_000_000) {
      if (rl.consume(4096)) sent += 4096;
      else t.advanceNs(BigInt(Math.ceil(rl.blockedForMs(4096) * 1e6)));
    }
    const seconds = Number(t.clock() - start) / 1e9;
    // The first second's full bucket is the only excess over 1 MB/s.
    expect(sent / seconds).toBeGreaterThan(1_000_000 * 0.99);
    expect((sent - 1_000_000) / seconds).toBeLessThanOrEqual(1_000_000 * 1.001);
  });

  test('a request goes only when both buckets allow it, and takes from both', () => {
    const t = fakeClock();
    const rl = new RateLimiter({ bandwidth: { size: 1000, refill_time: 1000 }, ops: { size: 2, refill_time: 1000 } }, t.clock);
    expect(rl.consume(100)).toBe(true);
    expect(rl.consume(100)).toBe(true);
    expect(rl.consume(100)).toBe(false); // ops bucket empty, bandwidth not
    expect(rl.counters.throttled).toBe(1);
    expect(rl.blockedForMs(100)).toBe(500); // one op per 500 ms
    t.advanceMs(500); // one more op; bandwidth is back to full (800 + 500)
    expect(rl.consume(900)).toBe(true);
    expect(rl.consume(1)).toBe(false); // ops empty again
    expect(rl.blockedForMs(1)).toBe(500);
  });

  test('a refused request takes nothing from the bucket that would have allowed it', () => {
    const t = fakeClock();
    const rl = new RateLimiter({ bandwidth: { size: 1000, refill_time: 1000 }, ops: { size: 1, refill_time: 1000 } }, t.clock);
    expect(rl.consume(10)).toBe(true);
    expect(rl.consume(10)).toBe(false);
    t.advanceMs(1000);
    expect(rl.consume(1000)).toBe(true); // bandwidth was not charged by the refused request
  });

  test('update replaces the buckets at run time; no buckets means unlimited', () => {
    const t = fakeClock();
    const rl = new RateLimiter({ ops: { size: 1, refill_time: 1000 } }, t.clock);
    expect(rl.consume(1)).toBe(true);
    expect(rl.consume(1)).toBe(false);
    rl.update({ ops: { size: 10, refill_time: 1000 } });
    expect(rl.consume(1)).toBe(true);
    rl.update({});
    expect(rl.unlimited).toBe(true);
    for (let i = 0; i < 1000; i++) expect(rl.consume(1 << 20)).toBe(true);
  });

  test('patch changes only the buckets it names: left out stays, null removes', () => {
    const t = fakeClock();
    const rl = new RateLimiter({ bandwidth: { size: 100, refill_time: 1000 }, ops: { size: 1, refill_time: 1000 } }, t.clock);
    expect(rl.consume(10)).toBe(true);
    rl.patch({ bandwidth: { size: 1000, refill_time: 1000 } }); // ops (1 per second) still applies
    expect(rl.consume(10)).toBe(false);
    t.advanceMs(1000);
    expect(rl.consume(500)).toBe(true); // the new, larger bandwidth bucket
    rl.patch({ ops: null });
    t.advanceMs(1000);
    expect(rl.consume(10)).toBe(true);
    expect(rl.consume(10)).toBe(true); // no ops limit any more
    rl.patch({ bandwidth: null });
    expect(rl.unlimited).toBe(true);
  });
});
