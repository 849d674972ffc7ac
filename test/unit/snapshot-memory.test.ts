import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { GuestMemory, PAGE_SIZE } from '../../src/kvm/memory';
import { dataExtents, mergeMemoryFiles, openMemoryFile, writeMemoryFile } from '../../src/vmm/snapshot-memory';
import { DirtyPages } from '../../src/vmm/dirty-pages';

const MiB = 1 << 20;
const regions = [
  { start: 0, size: 8 * MiB },
  { start: 16 * MiB, size: 4 * MiB },
];

describe('the snapshot memory file', () => {
  let dir: string;
  beforeEach(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fc-run-memfile-'))));
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  test('holds every region back to back, sparse, and maps back private: the guest writing never changes the file', () => {
    const mem = GuestMemory.allocate(regions);
    const pattern = (n: number) => Uint8Array.from({ length: PAGE_SIZE }, (_, i) => (i * 7 + n) & 0xff);
    mem.write(0x1000, pattern(1));
    mem.write(3 * MiB + 5 * PAGE_SIZE, pattern(2));
    mem.write(16 * MiB + 4 * MiB - PAGE_SIZE, pattern(3)); // last page of the second region
    mem.fill(0x8000, PAGE_SIZE, 0); // touched but zero: left out
    const file = path.join(dir, 'mem');
    const report = writeMemoryFile(mem, file);
    expect(report.size).toBe(12 * MiB);
    expect(report.written).toBe(3 * PAGE_SIZE);
    const st = fs.statSync(file);
    expect(st.size).toBe(12 * MiB);
    expect(st.blocks * 512).toBeLessThan(1 * MiB); // holes, not 12 MiB of zeros
    const bytes = fs.readFileSync(file);
    expect(bytes.subarray(0x1000, 0x2000)).toEqual(Buffer.from(pattern(1)));
    expect(bytes.subarray(3 * MiB + 5 * PAGE_SIZE, 3 * MiB + 6 * PAGE_SIZE)).toEqual(Buffer.from(pattern(2)));
    expect(bytes.subarray(12 * MiB - PAGE_SIZE)).toEqual(Buffer.from(pattern(3)));
    mem.release();

    const fd = openMemoryFile(file, regions);
    const restored = GuestMemory.mapFile(regions, fd);
    fs.closeSync(fd);
    const page = new Uint8Array(PAGE_SIZE);
    restored.read(16 * MiB + 4 * MiB - PAGE_SIZE, page);
    expect(page).toEqual(pattern(3));
    restored.fill(0x1000, PAGE_SIZE, 0xee);
    restored.read(0x1000, page);
    expect(page[0]).toBe(0xee);
    expect(fs.readFileSync(file).equals(bytes)).toBe(true); // copy on write: the file is untouched
    restored.release();
  });

  test('a memory file of the wrong size, or not a file, is refused with exit 2 before anything is mapped', () => {
    const file = path.join(dir, 'short');
    fs.writeFileSync(file, Buffer.alloc(PAGE_SIZE));
    expect(() => openMemoryFile(file, regions)).toThrow(expect.objectContaining({ exitCode: 2, message: expect.stringMatching(/needs 12582912 bytes .* has 4096 bytes/) }));
    expect(() => openMemoryFile(dir, regions)).toThrow(expect.objectContaining({ exitCode: 2, message: expect.stringMatching(/not a regular file/) }));
    expect(() => openMemoryFile(path.join(dir, 'missing'), regions)).toThrow(expect.objectContaining({ exitCode: 2, message: expect.stringMatching(/ENOENT/) }));
  });

  test('writing over an existing file replaces it whole; a directory in the way is refused and nothing is left behind', () => {
    const mem = GuestMemory.allocate([{ start: 0, size: MiB }]);
    mem.write(0, Uint8Array.of(1, 2, 3));
    const file = path.join(dir, 'mem');
    fs.writeFileSync(file, 'old contents that are longer than nothing');
    writeMemoryFile(mem, file);
    expect(fs.statSync(file).size).toBe(MiB);
    expect([...fs.readFileSync(file).subarray(0, 4)]).toEqual([1, 2, 3, 0]);
    const blocked = path.join(dir, 'sub');
    fs.mkdirSync(blocked);
    expect(() => writeMemoryFile(mem, blocked)).toThrow(/exists and is not a regular file/);
    expect(fs.readdirSync(dir).sort()).toEqual(['mem', 'sub']);
    mem.release();
  });

  const pattern = (n: number) => Uint8Array.from({ length: PAGE_SIZE }, (_, i) => (i * 13 + n) & 0xff);
  const changedList = (pages: Uint8Array[]) => pages.flatMap((bits, r) => [...bits].flatMap((b, p) => (b ? [`${r}:${p}`] : [])));

  test('Diff: exactly the pages that changed since the last snapshot (one rewritten to zeros included), written as data among holes; merged over the Full it gives memory as it is now', () => {
    const mem = GuestMemory.allocate(regions);
    for (let p = 0; p < 16; p++) mem.write(p * PAGE_SIZE, pattern(p));
    mem.write(16 * MiB, pattern(99));
    const dirty = new DirtyPages();
    // Before any snapshot the baseline is zeroed memory: every page with data.
    expect(dirty.changed(mem).count).toBe(17);
    writeMemoryFile(mem, path.join(dir, 'full.mem'));
    dirty.snapshotWritten(mem);
    expect(dirty.changed(mem).count).toBe(0);

    mem.write(3 * PAGE_SIZE, pattern(50)); // rewritten
    mem.fill(5 * PAGE_SIZE, PAGE_SIZE, 0); // now zero: the Diff must carry the zeros
    mem.write(16 * MiB + 2 * MiB, pattern(51)); // a page never written before, in region 1
    mem.write(7 * PAGE_SIZE, pattern(7)); // written with what it already held: not a change
    const ch = dirty.changed(mem);
    expect(ch.method).toBe('compared with the last snapshot');
    expect(changedList(ch.pages)).toEqual(['0:3', '0:5', `1:${(2 * MiB) / PAGE_SIZE}`]);
    const diffFile = path.join(dir, 'diff.mem');
    const report = writeMemoryFile(mem, diffFile, { only: ch.pages });
    expect(report.written).toBe(3 * PAGE_SIZE);
    const fd = fs.openSync(diffFile, 'r');
    expect(dataExtents(fd, 12 * MiB)).toEqual([
      [3 * PAGE_SIZE, 4 * PAGE_SIZE],
      [5 * PAGE_SIZE, 6 * PAGE_SIZE],
      [8 * MiB + 2 * MiB, 8 * MiB + 2 * MiB + PAGE_SIZE],
    ]);
    fs.closeSync(fd);
    dirty.snapshotWritten(mem, ch);

    const merged = path.join(dir, 'merged.mem');
    const m = mergeMemoryFiles(path.join(dir, 'full.mem'), [diffFile], merged);
    expect(m.fromEach[1]).toBe(3 * PAGE_SIZE);
    writeMemoryFile(mem, path.join(dir, 'now.mem'));
    expect(fs.readFileSync(merged).equals(fs.readFileSync(path.join(dir, 'now.mem')))).toBe(true);
    mem.release();
  });

  test('a restored VM: the first Diff compares with the memory file it was restored from, whether or not a page was read in', () => {
    const mem = GuestMemory.allocate(regions);
    for (let p = 0; p < 8; p++) mem.write(p * PAGE_SIZE, pattern(p));
    const file = path.join(dir, 'base.mem');
    writeMemoryFile(mem, file);
    mem.release();
    const fd = openMemoryFile(file, regions);
    const restored = GuestMemory.mapFile(regions, fd);
    expect(restored.fileBacked).toBe(true);
    const dirty = new DirtyPages(fd); // takes the descriptor
    restored.write(2 * PAGE_SIZE, pattern(70));
    restored.write(9 * PAGE_SIZE, pattern(71));
    const probe = new Uint8Array(PAGE_SIZE);
    restored.read(4 * PAGE_SIZE, probe); // read only: no change
    const ch = dirty.changed(restored);
    expect(ch.method).toBe('compared with the restored memory file');
    expect(changedList(ch.pages)).toEqual(['0:2', '0:9']);
    // A Full of a restored VM keeps every page of the file, even those never read in.
    writeMemoryFile(restored, path.join(dir, 'again.mem'));
    const again = fs.readFileSync(path.join(dir, 'again.mem'));
    expect(Buffer.from(again.subarray(6 * PAGE_SIZE, 7 * PAGE_SIZE))).toEqual(Buffer.from(pattern(6)));
    expect(Buffer.from(again.subarray(9 * PAGE_SIZE, 10 * PAGE_SIZE))).toEqual(Buffer.from(pattern(71)));
    dirty.snapshotWritten(restored, ch);
    restored.release();
  });

  test('a Diff carries a bitmap of its pages: merged right even when copied without holes; restore refuses it unmerged and says to merge', () => {
    const mem = GuestMemory.allocate(regions);
    for (let p = 0; p < 8; p++) mem.write(p * PAGE_SIZE, pattern(p));
    const full = path.join(dir, 'full.mem');
    writeMemoryFile(mem, full);
    const dirty = new DirtyPages();
    dirty.snapshotWritten(mem);
    mem.fill(2 * PAGE_SIZE, PAGE_SIZE, 0);
    mem.write(6 * PAGE_SIZE, pattern(60));
    const diff = path.join(dir, 'diff.mem');
    writeMemoryFile(mem, diff, { only: dirty.changed(mem).pages });
    expect(fs.statSync(diff).size).toBeGreaterThan(12 * MiB);
    expect(() => openMemoryFile(diff, regions)).toThrow(expect.objectContaining({ exitCode: 2, message: expect.stringMatching(/is a Diff snapshot's: merge it onto its base first/) }));
    // Copied with every hole filled in (cp --sparse=never): still exactly its two pages.
    const dense = path.join(dir, 'dense.mem');
    fs.writeFileSync(dense, fs.readFileSync(diff));
    const m = mergeMemoryFiles(full, [dense], path.join(dir, 'merged.mem'));
    expect(m.fromEach[1]).toBe(2 * PAGE_SIZE);
    writeMemoryFile(mem, path.join(dir, 'now.mem'));
    expect(fs.readFileSync(path.join(dir, 'merged.mem')).equals(fs.readFileSync(path.join(dir, 'now.mem')))).toBe(true);
    mem.release();
  });

  test('merge refuses a Diff of another memory size, a damaged bitmap, a base that is a Diff, an output that is an input, and what is not a file (exit 2); nothing is left behind', () => {
    const mk = (name: string, rs: { start: number; size: number }[]) => {
      const m = GuestMemory.allocate(rs);
      m.write(0, pattern(1));
      const base = path.join(dir, `${name}.base`);
      writeMemoryFile(m, base);
      const d = new DirtyPages();
      d.snapshotWritten(m);
      m.write(PAGE_SIZE, pattern(2));
      const diff = path.join(dir, `${name}.diff`);
      writeMemoryFile(m, diff, { only: d.changed(m).pages });
      m.release();
      return { base, diff };
    };
    const a = mk('a', regions);
    const b = mk('b', [{ start: 0, size: 4 * MiB }]);
    const out = path.join(dir, 'o.mem');
    const refused = (f: () => unknown, message: RegExp) => expect(f).toThrow(expect.objectContaining({ exitCode: 2, message: expect.stringMatching(message) }));
    refused(() => mergeMemoryFiles(a.base, [b.diff], out), /is a Diff of 4194304 bytes of guest memory but .*a\.base holds 12582912/);
    refused(() => mergeMemoryFiles(a.diff, [a.diff], out), /a\.diff is a Diff memory file: the base is a Full/);
    refused(() => mergeMemoryFiles(a.base, [a.base], out), /a\.base is not a Diff memory file/);
    refused(() => mergeMemoryFiles(a.base, [a.diff], a.diff), /is the input/);
    refused(() => mergeMemoryFiles(a.base, [dir], out), /not a regular file/);
    refused(() => mergeMemoryFiles(a.base, [path.join(dir, 'missing')], out), /ENOENT/);
    const bytes = fs.readFileSync(a.diff);
    bytes[12 * MiB] ^= 0x80; // one more page marked than the footer counts
    const damaged = path.join(dir, 'damaged.diff');
    fs.writeFileSync(damaged, bytes);
    refused(() => mergeMemoryFiles(a.base, [damaged], out), /damaged: its bitmap marks 2 pages, its footer says 1/);
    expect(fs.readdirSync(dir).sort()).toEqual(['a.base', 'a.diff', 'b.base', 'b.diff', 'damaged.diff']);
  });
});
