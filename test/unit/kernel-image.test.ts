import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { inspectKernel, inspectKernelFile, KernelImageError } from '../../src/boot/kernel-image';
import { FileError } from '../../src/config/regular-file';
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

  // Found by test/fuzz/kernel.fuzz.test.ts or the header review that came with it.
  test.each([
    ['a program header size other than 56', 54, 2, 64, /e_phentsize\) is 64; ELF64 program headers are 56 bytes/],
    ['65535 program headers', 56, 2, 0xffff, /65535 program headers/],
    ['program headers past the end of the file', 32, 8, 0x7fffffffffffffffn, /program headers .* extend past the end of the file/],
  ])('refuses %s', (_name, off, width, value, why) => {
    const buf = tinyVmlinux();
    if (width === 2) buf.writeUInt16LE(Number(value), off);
    else buf.writeBigUInt64LE(BigInt(value), off);
    expect(problem(buf)).toMatch(why);
  });

  test('a segment that reaches into the 3 GiB MMIO gap is refused on the image: no memory size would hold it', () => {
    const buf = buildElf({ entry: 0xbff00000, segments: [{ paddr: 0xbff00000, data: Buffer.alloc(16), memsz: 0x200000 }] });
    expect(problem(buf)).toMatch(/segment 0 occupies 0xbff00000\.\.0xc0100000, past 3 GiB/);
  });

  test('a segment with an absurd memory size is refused without overflow', () => {
    const buf = tinyVmlinux();
    buf.writeBigUInt64LE(0xffffffffffffffffn, 64 + 40); // p_memsz
    expect(problem(buf)).toMatch(/past 3 GiB/);
  });
});

describe('PVH', () => {
  test('the Xen PHYS32_ENTRY note selects PVH boot and gives the entry', () => {
    const img = inspect(tinyPvh());
    expect(img.format).toBe('pvh');
    expect(img.entry).toBe(0x1000040);
  });

  test('a PVH entry point outside every loadable segment is refused (the vCPU would start in zeroed memory)', () => {
    const buf = buildElf({ entry: 0x1000000, pvhEntry: 0x2000000, segments: [{ paddr: 0x1000000, data: Buffer.alloc(4096) }] });
    expect(problem(buf)).toMatch(/PVH entry point 0x2000000 .* is not inside any loadable segment/);
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
    ['setup sectors past the end of the file', buildBzImage({ setupSects: 200 }).subarray(0, 4096), /its 200 setup sectors end at 102912 bytes, and the file has 4096/],
    ['kernel code too short to hold the 64-bit entry', buildBzImage({ payloadBytes: 0x200 }), /512 bytes of kernel follow the setup sectors, too few/],
    ['init_size 0', buildBzImage({ initSize: 0 }), /init_size 0/],
  ])('refuses %s', (_name, buf, why) => {
    expect(problem(buf)).toMatch(why);
  });

  test('an image cut inside its setup header is refused as truncated, not a RangeError (found by the fuzzer)', () => {
    for (const end of [0x206, 0x220, 0x237, 0x263]) expect(problem(buildBzImage().subarray(0, end))).toMatch(new RegExp(`the file ends at ${end} bytes, inside its setup header`));
  });

  test('an image cut short of what syssize says is refused as truncated', () => {
    const buf = buildBzImage({ payloadBytes: 8192 }).subarray(0, 5 * 512 + 4096);
    expect(problem(buf)).toMatch(/says 8192 bytes of kernel follow the setup sectors, and the file has 4096/);
  });
});

describe('kernel files that are not regular files are refused before any read', () => {
  let dir: string;
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fc-run-kimg-'));
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  const refusal = (file: string) => {
    try {
      inspectKernelFile(file);
    } catch (err) {
      expect(err).toBeInstanceOf(FileError);
      return `${(err as FileError).code}: ${(err as Error).message}`;
    }
    throw new Error('expected the file to be refused');
  };

  test('a FIFO, even one with a writer attached (so a blocking open would return and read nothing)', () => {
    const fifo = path.join(dir, 'fifo');
    execFileSync('mkfifo', [fifo]);
    // Holding the FIFO open for writing keeps a regression from hanging this test: the old loader
    // would have opened it and reported "neither ELF nor bzImage" instead.
    const writer = fs.openSync(fifo, fs.constants.O_RDWR | fs.constants.O_NONBLOCK);
    try {
      expect(refusal(fifo)).toBe(`file-type: kernel image ${fifo} is a FIFO (named pipe); give a regular file`);
    } finally {
      fs.closeSync(writer);
    }
  });

  test('/dev/zero, a directory, a socket, a symlink to a device', () => {
    expect(refusal('/dev/zero')).toMatch(/^file-type: kernel image \/dev\/zero is a character device/);
    expect(refusal(dir)).toMatch(/^file-type: .* is a directory/);
    const link = path.join(dir, 'link');
    fs.symlinkSync('/dev/null', link);
    expect(refusal(link)).toMatch(/^file-type: .*link is a character device/);
  });

  test('a Unix socket', async () => {
    const sock = path.join(dir, `s${process.pid}.sock`);
    const server = net.createServer().listen(sock);
    await new Promise((r) => server.once('listening', r));
    try {
      expect(refusal(sock)).toMatch(/^file-type: .* is a socket/);
    } finally {
      await new Promise((r) => server.close(r));
    }
  });

  test('a missing file or a symlink loop', () => {
    expect(refusal(path.join(dir, 'nope'))).toMatch(/^file-unreadable: .*nope does not exist/);
    fs.symlinkSync('loop', path.join(dir, 'loop'));
    expect(refusal(path.join(dir, 'loop'))).toMatch(/^file-unreadable: .*loop is a symbolic link loop/);
  });
});

test('anything else is refused with a hint at what is expected', () => {
  expect(problem(Buffer.from('#!/bin/sh\necho hi\n'))).toMatch(/neither an ELF vmlinux nor a bzImage/);
  expect(problem(Buffer.from([0x1f, 0x8b, 8, 0, 0, 0]))).toMatch(/gzip-compressed/);
  expect(problem(Buffer.alloc(0))).toMatch(/neither/);
});
