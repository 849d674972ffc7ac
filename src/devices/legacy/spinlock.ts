/**
 * A spinlock in one word of a SharedArrayBuffer, for device state several vCPU threads touch.
 * Critical sections are a few instructions long, so spinning beats sleeping.
 */
export function spinLock(words: Int32Array, index: number): void {
  while (Atomics.compareExchange(words, index, 0, 1) !== 0) {
    // another vCPU holds it for a moment
  }
}

export function spinUnlock(words: Int32Array, index: number): void {
  Atomics.store(words, index, 0);
}
