/**
 * Seeded randomness for the fuzzers: a fixed seed gives the same cases on every machine, so a
 * loaded machine runs the same cases, only slower. FUZZ_CASES scales a run (the short run inside
 * `npm test` uses each fuzzer's default; `npm run fuzz` sets a large number), FUZZ_SEED picks
 * another sequence.
 */
export class Rng {
  private state: number;

  constructor(seed: number) {
    this.state = seed >>> 0 || 0x9e3779b9;
  }

  /** mulberry32: small, fast, good enough to pick mutations. */
  next(): number {
    let t = (this.state = (this.state + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** An integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }

  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)];
  }

  bool(p = 0.5): boolean {
    return this.next() < p;
  }

  bytes(n: number): Buffer {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = this.int(256);
    return b;
  }
}

/** How many cases a fuzzer runs: FUZZ_CASES when set, else its short-run default. */
export function fuzzCases(shortRun: number): number {
  const n = Number(process.env.FUZZ_CASES);
  return Number.isInteger(n) && n > 0 ? n : shortRun;
}

/** The seed: FUZZ_SEED when set, else the fuzzer's fixed one. */
export function fuzzSeed(fixed: number): number {
  const n = Number(process.env.FUZZ_SEED);
  return Number.isInteger(n) ? n : fixed;
}
