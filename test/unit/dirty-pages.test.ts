import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { GuestMemory, PAGE_SIZE } from '../../src/kvm/memory';
import { DirtyPages } from '../../src/vmm/dirty-pages';
import { commitPair, prepareFile, writeAll } from '../../src/vmm/snapshot-memory';
import { VirtQueue, VIRTQ_DESC_F_WRITE } from '../../src/devices/virtio/queue';

const MiB = 1 << 20;
const VIRTQ_DESC_F_NEXT = 1;
const pagesOf = (bits: Uint8Array) => [...bits].flatMap((b, p) => (b ? [p] : []));

describe("the VMM's own writes into guest memory, for Diff snapshots with KVM's dirty log", () => {
  test('markDirty records pages in each region (the gap between them ignored); takeDirty returns them once', () => {
    const mem = GuestMemory.allocate([
      { start: 0, size: MiB },
      { start: 4 * MiB, size: MiB },
    ]);
    mem.enableDirtyTracking();
    mem.markDirty(PAGE_SIZE - 1, 2); // straddles pages 0 and 1
    mem.markDirty(MiB - 10, 3 * MiB + 20); // the last page of region 0, the gap, the first of region 1
    mem.markDirty(4 * MiB + 5 * PAGE_SIZE, 1);
    expect(pagesOf(mem.takeDirty(0))).toEqual([0, 1, 255]);
    expect(pagesOf(mem.takeDirty(1))).toEqual([0, 5]);
    expect(pagesOf(mem.takeDirty(0))).toEqual([]);
    // A thread that attaches (the device thread) records into the same bitmaps.
    const other = GuestMemory.attach(mem.describe());
    other.markDirty(4 * MiB + 9 * PAGE_SIZE, PAGE_SIZE);
    expect(pagesOf(mem.takeDirty(1))).toEqual([9]);
    mem.release();
  });

  test('without tracking nothing is recorded', () => {
    const mem = GuestMemory.allocate([{ start: 0, size: MiB }]);
    mem.markDirty(0, MiB);
    expect(pagesOf(mem.takeDirty(0))).toEqual([]);
    mem.release();
  });

  test('a virtqueue marks every buffer the device may write and its used ring, not the buffers it only reads', () => {
    const mem = GuestMemory.allocate([{ start: 0, size: MiB }]);
    mem.enableDirtyTracking();
    const desc = (i: number, addr: number, len: number, flags: number, next: number) => {
      const b = Buffer.alloc(16);
      b.writeBigUInt64LE(BigInt(addr), 0);
      b.writeUInt32LE(len, 8);
      b.writeUInt16LE(flags, 12);
      b.writeUInt16LE(next, 14);
      mem.write(0x1000 + 16 * i, b);
    };
    desc(0, 0x10000, 100, VIRTQ_DESC_F_NEXT, 1); // read by the device
    desc(1, 0x20000 + 100, 2 * PAGE_SIZE, VIRTQ_DESC_F_WRITE, 0); // written by the device: pages 0x20..0x22
    mem.write(0x2000, Uint8Array.of(0, 0, 1, 0, 0, 0)); // avail: flags 0, idx 1, ring[0] = 0
    mem.takeDirty(0); // the test's own setup does not count
    const q = new VirtQueue(mem, { size: 4, descTable: 0x1000, availRing: 0x2000, usedRing: 0x3000 }, false);
    const chain = q.pop()!;
    expect(chain.segments.map((s) => s.writable)).toEqual([false, true]);
    expect(pagesOf(mem.takeDirty(0))).toEqual([0x20, 0x21, 0x22]);
    q.push(chain.head, 10);
    expect(pagesOf(mem.takeDirty(0))).toEqual([0x3]);
    mem.release();
  });
});

describe('Diff snapshots that fail lose nothing', () => {
  test("with KVM's dirty log: pages read from the log stay pending until a snapshot holding them is written", () => {
    const mem = GuestMemory.allocate([{ start: 0, size: MiB }]);
    mem.enableDirtyTracking();
    const pages = MiB / PAGE_SIZE;
    // KVM's log as KVM_GET_DIRTY_LOG behaves: each read returns what was written since, and clears it.
    let written = new Uint8Array(pages);
    const vm = { dirtyLog: () => {
      const out = written;
      written = new Uint8Array(pages);
      return out;
    } };
    const dirty = new DirtyPages(undefined, { vm: vm as never, slots: [{ slot: 0, size: MiB }] });
    dirty.snapshotWritten(mem); // a Full: the baseline
    written[3] = 1;
    mem.markDirty(7 * PAGE_SIZE, 1);
    expect(pagesOf(dirty.changed(mem).pages[0])).toEqual([3, 7]);
    // That Diff was never written (a bad path, a full disk): the next one still holds its pages.
    written[9] = 1;
    const again = dirty.changed(mem);
    expect(again.method).toBe("KVM's dirty log and the VMM's own writes");
    expect(pagesOf(again.pages[0])).toEqual([3, 7, 9]);
    dirty.snapshotWritten(mem, again);
    expect(pagesOf(dirty.changed(mem).pages[0])).toEqual([]);
    mem.release();
  });
});

describe('the memory and state files of a snapshot go in place together', () => {
  let dir: string;
  beforeEach(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fc-run-pair-'))));
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  test('when the state file cannot be renamed into place, the old memory file comes back and nothing is left behind', () => {
    const mem = path.join(dir, 'vm.mem');
    const snap = path.join(dir, 'vm.snap');
    fs.writeFileSync(mem, 'old memory');
    const m = prepareFile(mem, 'memory file');
    const st = prepareFile(snap, 'snapshot file');
    writeAll(m, Buffer.from('new memory'));
    writeAll(st, Buffer.from('new state'));
    fs.mkdirSync(snap); // the state file's rename now fails (a directory is in the way)
    fs.writeFileSync(path.join(snap, 'x'), '');
    try {
      expect(() => commitPair(m, st)).toThrow(/cannot write the snapshot file/);
    } finally {
      m.abort();
      st.abort();
    }
    expect(fs.readFileSync(mem, 'utf8')).toBe('old memory');
    expect(fs.readdirSync(dir).sort()).toEqual(['vm.mem', 'vm.snap']);
  });

  test('both written: both in place', () => {
    const m = prepareFile(path.join(dir, 'vm.mem'), 'memory file');
    const st = prepareFile(path.join(dir, 'vm.snap'), 'snapshot file');
    writeAll(m, Buffer.from('memory'));
    writeAll(st, Buffer.from('state'));
    commitPair(m, st);
    m.abort();
    st.abort();
    expect(fs.readdirSync(dir).sort()).toEqual(['vm.mem', 'vm.snap']);
    expect(fs.readFileSync(path.join(dir, 'vm.snap'), 'utf8')).toBe('state');
  });
});
