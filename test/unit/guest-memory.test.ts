import { Worker } from 'node:worker_threads';
import * as path from 'node:path';
import { GuestMemory, GuestMemoryError } from '../../src/kvm/memory';

const MiB = 1 << 20;

describe('guest memory', () => {
  let mem: GuestMemory;
  beforeAll(() => {
    // Two regions with a hole between them, like RAM around the MMIO gap.
    mem = GuestMemory.allocate([{ start: 0, size: 4 * MiB }, { start: 16 * MiB, size: 2 * MiB }]);
  });
  afterAll(() => mem.release());

  test('starts zeroed; writes read back; views are zero-copy', () => {
    const b = Buffer.alloc(16);
    mem.read(0x1000, b);
    expect(b.every((x) => x === 0)).toBe(true);
    mem.write(0x1000, Buffer.from('hello'));
    expect(Buffer.from(mem.view(0x1000, 5)!).toString()).toBe('hello');
    mem.view(0x2000, 4)!.set([1, 2, 3, 4]);
    mem.read(0x2000, b.subarray(0, 4));
    expect([...b.subarray(0, 4)]).toEqual([1, 2, 3, 4]);
  });

  test.each([
    ['past the end of a region', 4 * MiB - 2, 4],
    ['in the hole between regions', 8 * MiB, 1],
    ['straddling two regions', 4 * MiB - 1, 12 * MiB + 2],
    ['beyond all memory', 2 ** 40, 8],
    ['at a negative address', -8, 8],
    ['with a non-integer address', 1.5, 8],
    ['with an absurd length', 0, Number.MAX_SAFE_INTEGER],
  ])('refuses an access %s', (_what, gpa, len) => {
    expect(() => mem.view(gpa, len)).toThrow(GuestMemoryError);
    if (len <= 64) {
      expect(() => mem.read(gpa, Buffer.alloc(len))).toThrow(GuestMemoryError);
      expect(() => mem.write(gpa, Buffer.alloc(len))).toThrow(GuestMemoryError);
    }
    expect(mem.contains(gpa, len)).toBe(false);
  });

  test('populate faults a range in at once: touching it afterwards takes no page fault, and it reads zero', () => {
    const pages = 1024; // 4 MiB
    /** Page faults taken writing one byte per page of [2 MiB, 6 MiB) (one view: the loop allocates nothing). */
    const touch = (m: GuestMemory) => {
      const v = m.view(2 * MiB, pages * 4096)!;
      let sum = 0;
      const before = process.resourceUsage().minorPageFault;
      for (let p = 0; p < pages; p++) {
        sum += v[p * 4096];
        v[p * 4096] = 1;
      }
      return { faults: process.resourceUsage().minorPageFault - before, sum };
    };
    const plain = GuestMemory.allocate([{ start: 0, size: 8 * MiB }]);
    const populated = GuestMemory.allocate([{ start: 0, size: 8 * MiB }]);
    try {
      // The control: pages nothing populated fault one by one.
      expect(touch(plain)).toEqual({ faults: expect.any(Number), sum: 0 });
      expect(touch(plain).faults).toBeLessThan(pages / 16); // (now in)
      const fresh = GuestMemory.allocate([{ start: 0, size: 8 * MiB }]);
      try {
        expect(touch(fresh).faults).toBeGreaterThanOrEqual(pages);
      } finally {
        fresh.release();
      }
      expect(populated.populate(2 * MiB + 1, pages * 4096 - 2)).toBe(true); // rounded out to whole pages
      const after = touch(populated);
      expect(after.sum).toBe(0); // still zero
      expect(after.faults).toBeLessThan(pages / 16);
      expect(populated.populate(7 * MiB, 2 * MiB)).toBe(false); // past the region's end: nothing done
      expect(populated.populate(0, 0)).toBe(false);
    } finally {
      plain.release();
      populated.release();
    }
  });

  test('the last byte of each region is reachable', () => {
    mem.write(4 * MiB - 1, Buffer.of(7));
    mem.write(18 * MiB - 1, Buffer.of(9));
    expect(mem.view(4 * MiB - 1, 1)![0]).toBe(7);
    expect(mem.view(18 * MiB - 1, 1)![0]).toBe(9);
  });

  test('another thread attached to the same memory sees and makes the same bytes', async () => {
    mem.write(0x3000, Buffer.from('from main'));
    const script = `
      const { parentPort, workerData } = require('node:worker_threads');
      const { GuestMemory } = require(${JSON.stringify(path.resolve(__dirname, '..', '..', 'dist', 'kvm', 'memory.js'))});
      const mem = GuestMemory.attach(workerData);
      const seen = Buffer.from(mem.view(0x3000, 9)).toString();
      mem.write(0x4000, Buffer.from('from worker'));
      parentPort.postMessage(seen);`;
    const seen = await new Promise((resolve, reject) => {
      const w = new Worker(script, { eval: true, workerData: mem.describe() });
      w.once('message', resolve);
      w.once('error', reject);
    });
    expect(seen).toBe('from main');
    expect(Buffer.from(mem.view(0x4000, 11)!).toString()).toBe('from worker');
  });
});
