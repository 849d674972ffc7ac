import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { GuestMemory, PAGE_SIZE } from '../../src/kvm/memory';
import { openMemoryFile, writeMemoryFile } from '../../src/vmm/snapshot-memory';

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
});
