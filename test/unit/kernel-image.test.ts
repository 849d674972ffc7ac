import { inspectKernel, KernelImageError } from '../../src/boot/kernel-image';
import { buildBzImage, buildElf, tinyPvh, tinyVmlinux } from '../helpers/images';

const inspect = (buf: Buffer) => inspectKernel('k', buf.length, (off, len) => buf.subarray(off, Math.min(buf.length, off + len)));
const problem = (buf: Buffer) => {
  try {
    inspect(buf);
  } catch (err) {
    expect(err).toBeInstanceOf(KernelImageError);
    return (err as Error).message;
  }
  throw new Error('expected the image to be refused');
};

describe('ELF vmlinux', () => {
  test('segments load at their physical addresses and the entry is kept', () => {
    const img = inspect(tinyVmlinux());
    expect(img.format).toBe('elf');
    expect(img.entry).toBe(0x1000000);
    expect(img.segments).toEqual([{ fileOffset: expect.any(Number), fileSize: 4096, memSize: 0x10000, guestAddr: 0x1000000 }]);
  });

  test('segments are returned in address order', () => {
    const img = inspect(
      buildElf({ entry: 0x200000, segments: [{ paddr: 0x400000, data: Buffer.alloc(16) }, { paddr: 0x200000, data: Buffer.alloc(16) }] }),
    );
    expect(img.segments.map((s) => s.guestAddr)).toEqual([0x200000, 0x400000]);
  });

  test.each([
    ['32-bit', buildElf({ entry: 0x200000, elfClass: 1, segments: [{ paddr: 0x200000, data: Buffer.alloc(16) }] }), /32-bit ELF/],
    ['another machine', buildElf({ entry: 0x200000, machine: 183, segments: [{ paddr: 0x200000, data: Buffer.alloc(16) }] }), /not x86_64/],
    ['below 1 MiB', buildElf({ entry: 0x1000, segments: [{ paddr: 0x1000, data: Buffer.alloc(16) }] }), /below 1 MiB/],
    ['overlapping', buildElf({ entry: 0x200000, segments: [{ paddr: 0x200000, data: Buffer.alloc(16), memsz: 0x2000 }, { paddr: 0x201000, data: Buffer.alloc(16) }] }), /overlap/],
    ['entry outside', buildElf({ entry: 0xffffffff81000000, segments: [{ paddr: 0x200000, data: Buffer.alloc(16) }] }), /not inside any loadable segment/],
    ['filesz > memsz', buildElf({ entry: 0x200000, segments: [{ paddr: 0x200000, data: Buffer.alloc(64), memsz: 16 }] }), /larger than its memory size/],
  ])('refuses %s', (_name, buf, why) => {
    expect(problem(buf)).toMatch(why);
  });

  test('refuses a truncated file', () => {
    expect(problem(tinyVmlinux().subarray(0, 40))).toMatch(/truncated/);
    expect(problem(tinyVmlinux().subarray(0, 100))).toMatch(/past the end of the file/);
  });

  test('a segment whose file bytes lie past the end of the file is refused', () => {
    const buf = tinyVmlinux();
    buf.writeBigUInt64LE(BigInt(buf.length), 64 + 8); // p_offset of the only segment
    expect(problem(buf)).toMatch(/segment 0 extends past the end/);
  });
});

describe('PVH', () => {
  test('the Xen PHYS32_ENTRY note selects PVH boot and gives the entry', () => {
    const img = inspect(tinyPvh());
    expect(img.format).toBe('pvh');
    expect(img.entry).toBe(0x1000040);
  });

  test('a malformed note is ignored, leaving a plain ELF', () => {
    const buf = tinyPvh();
    // Make the first note claim a huge name so the walk stops.
    const noteOff = Number(buf.readBigUInt64LE(64 + 56 + 8));
    buf.writeUInt32LE(0xfffffff0, noteOff);
    expect(inspect(buf).format).toBe('elf');
  });
});

describe('bzImage', () => {
  test('the protected-mode part loads at the preferred address, entered at +0x200, occupying init_size', () => {
    const img = inspect(buildBzImage({ setupSects: 4, initSize: 0x800000, initrdAddrMax: 0x37ffffff, cmdlineSize: 2047 }));
    expect(img.format).toBe('bzimage');
    expect(img.entry).toBe(0x1000200);
    expect(img.segments).toEqual([{ fileOffset: 5 * 512, fileSize: 8192, memSize: 0x800000, guestAddr: 0x1000000 }]);
    expect(img.bzimage).toMatchObject({ protocolVersion: '2.15', setupSects: 4, initrdAddrMax: 0x37ffffff, cmdlineSize: 2047, canLoadInitrdAbove4G: true });
  });

  test('without a preferred address it loads at 1 MiB', () => {
    const buf = buildBzImage();
    buf.writeBigUInt64LE(0n, 0x258);
    expect(inspect(buf)).toMatchObject({ entry: 0x100200, segments: [expect.objectContaining({ guestAddr: 0x100000 })] });
  });

  test('setup_sects 0 means 4', () => {
    expect(inspect(buildBzImage({ setupSects: 0 })).segments[0].fileOffset).toBe(5 * 512);
  });

  test.each([
    ['an old protocol', buildBzImage({ version: 0x0206 }), /too old/],
    ['no 64-bit entry', buildBzImage({ xloadflags: 0 }), /no 64-bit entry/],
    ['a zImage', buildBzImage({ loadflags: 0 }), /loaded high/],
    ['a truncated image', buildBzImage({ payloadBytes: 0 }), /truncated/],
  ])('refuses %s', (_name, buf, why) => {
    expect(problem(buf)).toMatch(why);
  });
});

test('anything else is refused with a hint at what is expected', () => {
  expect(problem(Buffer.from('#!/bin/sh\necho hi\n'))).toMatch(/neither an ELF vmlinux nor a bzImage/);
  expect(problem(Buffer.from([0x1f, 0x8b, 8, 0, 0, 0]))).toMatch(/gzip-compressed/);
  expect(problem(Buffer.alloc(0))).toMatch(/neither/);
});
