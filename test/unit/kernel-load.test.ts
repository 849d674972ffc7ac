import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { planSpec } from '../../src/boot';
import type { BootPlan } from '../../src/boot/plan';
import { prepareGuestMemory } from '../../src/boot/structures';
import { FileError, openRegularFile, readRegularFile } from '../../src/config/regular-file';
import { FcRunError } from '../../src/errors';
import { GuestMemory } from '../../src/kvm/memory';
import { buildBzImage, buildElf } from '../helpers/images';
import { load, Workspace } from '../helpers/specs';

/**
 * The loader that copies kernel and initrd into guest memory (no /dev/kvm needed: guest memory is
 * an anonymous mapping) re-checks the files the plan names, since they may change between `plan`
 * and launch.
 */
let ws: Workspace;
beforeAll(() => {
  ws = new Workspace();
});
afterAll(() => ws.remove());

function planFor(kernel: string, initrd?: string): BootPlan {
  const spec = { 'boot-source': { kernel_image_path: kernel, boot_args: 'console=ttyS0', ...(initrd ? { initrd_path: initrd } : {}) }, 'machine-config': { vcpu_count: 1, mem_size_mib: 64 } };
  return planSpec(load(ws, spec)).plan;
}

function loadError(plan: BootPlan): FcRunError {
  const mem = GuestMemory.allocate(plan.memory.regions);
  try {
    prepareGuestMemory(mem, plan, true);
  } catch (err) {
    expect(err).toBeInstanceOf(FcRunError);
    return err as FcRunError;
  } finally {
    mem.release();
  }
  throw new Error('expected loading to fail');
}

test('a kernel replaced by a FIFO after planning is refused, not waited on', () => {
  ws.write('k-fifo', fs.readFileSync(path.join(ws.dir, 'vmlinux')));
  const plan = planFor('k-fifo');
  fs.rmSync(path.join(ws.dir, 'k-fifo'));
  execFileSync('mkfifo', [path.join(ws.dir, 'k-fifo')]);
  // A writer keeps a regression from blocking the test forever in open().
  const writer = fs.openSync(path.join(ws.dir, 'k-fifo'), fs.constants.O_RDWR | fs.constants.O_NONBLOCK);
  try {
    const err = loadError(plan);
    expect(err.code).toBe('file-type');
    expect(err.message).toMatch(/kernel image .*k-fifo is a FIFO/);
  } finally {
    fs.closeSync(writer);
  }
});

test('an initrd replaced by a link to /dev/zero, or shrunk, after planning is refused and named', () => {
  ws.write('i-swap', Buffer.alloc(8192, 7));
  const plan = planFor('vmlinux', 'i-swap');
  fs.truncateSync(path.join(ws.dir, 'i-swap'), 4096);
  expect(loadError(plan).message).toMatch(/^initrd .*i-swap changed size since it was planned \(8192 bytes then, 4096 now\)/);
  fs.rmSync(path.join(ws.dir, 'i-swap'));
  fs.symlinkSync('/dev/zero', path.join(ws.dir, 'i-swap'));
  expect(loadError(plan)).toMatchObject({ code: 'file-type', message: expect.stringMatching(/^initrd .*i-swap is a character device/) });
});

test("a bzImage's own ramdisk and setup_data fields never reach the zero page", () => {
  const image = buildBzImage({ initSize: 0x200000 });
  image.writeUInt32LE(0x2000000, 0x218); // ramdisk_image
  image.writeUInt32LE(0x100000, 0x21c); // ramdisk_size
  image.writeBigUInt64LE(0x3000000n, 0x250); // setup_data
  ws.write('bz-fields', image);
  const plan = planFor('bz-fields');
  const mem = GuestMemory.allocate(plan.memory.regions);
  try {
    prepareGuestMemory(mem, plan, true);
    const zp = Buffer.alloc(4096);
    mem.read(plan.boot.zeroPage, zp);
    expect([zp.readUInt32LE(0x218), zp.readUInt32LE(0x21c), zp.readBigUInt64LE(0x250)]).toEqual([0, 0, 0n]);
    expect(zp.readUInt32LE(0x228)).toBe(plan.boot.cmdline.start);
  } finally {
    mem.release();
  }
});

test("a kernel segment's bss is zeroed unless guest memory is known to be fresh; its file bytes are loaded either way", () => {
  const text = Buffer.alloc(4096, 0x90);
  ws.write('k-bss', buildElf({ entry: 0x1000000, segments: [{ paddr: 0x1000000, data: text, memsz: 0x4000 }, { paddr: 0x1004000, data: Buffer.alloc(0), memsz: 0x3000 }] }));
  const plan = planFor('k-bss');
  const segs = plan.kernel.segments;
  expect(segs.map((s) => [s.fileSize, s.memSize])).toEqual([[4096, 0x4000], [0, 0x3000]]);
  const loaded = (dirty: boolean) => {
    const mem = GuestMemory.allocate(plan.memory.regions);
    try {
      if (dirty) for (const s of segs) mem.fill(s.guestAddr, s.memSize, 0xa5);
      prepareGuestMemory(mem, plan, !dirty);
      return segs.map((s) => {
        const got = Buffer.alloc(s.memSize);
        mem.read(s.guestAddr, got);
        return got;
      });
    } finally {
      mem.release();
    }
  };
  const want = [Buffer.concat([text, Buffer.alloc(0x4000 - 4096)]), Buffer.alloc(0x3000)];
  // Junk where the kernel goes, and memoryIsZero false: the tails are zeroed, the file bytes loaded.
  expect(loaded(true)).toEqual(want);
  // A fresh mapping, memoryIsZero true: nothing is zeroed, and the tails are zero all the same.
  expect(loaded(false)).toEqual(want);
});

describe('openRegularFile / readRegularFile', () => {
  test('a file over the limit is refused with its size, the limit and where the limit comes from', () => {
    const file = ws.write('big.json', Buffer.alloc(2048, 0x20));
    expect(() => openRegularFile(file, 'spec file', 1024, 'specs are at most 1 KiB')).toThrow(`spec file ${file} is 2048 bytes; the limit is 1024 bytes (specs are at most 1 KiB)`);
    expect(() => readRegularFile(file, 'spec file', 1024)).toThrow(expect.objectContaining({ code: 'file-too-large', exitCode: 2 }));
    expect(readRegularFile(file, 'spec file', 2048).length).toBe(2048);
  });

  test('reads to the end of file, so a file whose size fstat under-reports is read whole (and still capped)', () => {
    // /proc files report size 0 but have content.
    const text = readRegularFile('/proc/self/status', 'status', 1 << 20).toString();
    expect(text).toMatch(/^Name:/);
    expect(() => readRegularFile('/proc/self/status', 'status', 16)).toThrow(expect.objectContaining({ code: 'file-too-large' }));
  });

  test('errors are FileErrors with stable codes and exit statuses', () => {
    let missing: unknown;
    try {
      openRegularFile(path.join(ws.dir, 'missing'), 'kernel image');
    } catch (err) {
      missing = err;
    }
    expect(missing).toBeInstanceOf(FileError);
    expect(missing).toMatchObject({ code: 'file-unreadable', exitCode: 1, file: path.join(ws.dir, 'missing') });
    expect(() => openRegularFile('/dev/null', 'initrd')).toThrow(expect.objectContaining({ code: 'file-type', exitCode: 2 }));
  });
});
