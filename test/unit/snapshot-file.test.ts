import { createHash, randomBytes } from 'node:crypto';
import { FcRunError } from '../../src/errors';
import { IRQCHIP_IDS, STATE_SIZES, VcpuState, XSAVE_MAX, XSAVE_MIN } from '../../src/kvm/state-abi';
import { decodeSnapshotFile, encodeSnapshotFile, SNAPSHOT_FORMAT, SNAPSHOT_MAGIC, SnapshotFileError, VmSnapshot } from '../../src/vmm/snapshot-file';

const SOURCE = 'vm.snap';

function vcpu(i: number): VcpuState {
  const bytes = (n: number) => new Uint8Array(randomBytes(n));
  return {
    regs: bytes(STATE_SIZES.regs),
    sregs: bytes(STATE_SIZES.sregs),
    xsave: bytes(XSAVE_MIN),
    xcrs: bytes(STATE_SIZES.xcrs),
    debugregs: bytes(STATE_SIZES.debugregs),
    lapic: bytes(STATE_SIZES.lapic),
    vcpuEvents: bytes(STATE_SIZES.vcpuEvents),
    msrs: bytes(5 * STATE_SIZES.msrEntry),
    cpuid: bytes(7 * STATE_SIZES.cpuidEntry),
    mpState: i === 0 ? 0 : 3,
    tscKhz: 2_995_200,
  };
}

function irqchip(id: number): Uint8Array {
  const b = randomBytes(STATE_SIZES.irqchip);
  b.writeUInt32LE(id, 0);
  return new Uint8Array(b);
}

/** A snapshot as the writer makes one: 2 vCPUs, every part at its real size, random contents. */
function sampleSnapshot(vcpuCount = 2): VmSnapshot {
  return {
    header: {
      fcRunVersion: '0.4.0-dev+g40df05f',
      planHash: 'sha256:' + 'ab12'.repeat(16),
      createdAt: '2024-05-17T09:41:07.123Z',
      snapshotType: 'Full',
      vcpuCount,
      memory: { regions: [{ start: 0, size: 256 * 1024 * 1024 }] },
      cpuTemplate: 'T2',
      devices: [
        { kind: 'block', id: 'rootfs' },
        { kind: 'net', id: 'eth0' },
      ],
      plan: { kernel: { path: '/srv/vmlinux', entry: 0x1000000 }, cmdline: 'console=ttyS0 reboot=k panic=1', devices: [{ kind: 'block', id: 'rootfs', mmio: [0xd0000000, 4096, 5] }] },
    },
    vcpus: Array.from({ length: vcpuCount }, (_, i) => vcpu(i)),
    vm: { irqchips: IRQCHIP_IDS.map(irqchip), pit2: new Uint8Array(randomBytes(STATE_SIZES.pit2)), clock: new Uint8Array(randomBytes(STATE_SIZES.clock)) },
    devices: { format: 1, devices: [], mmds: null },
    legacy: { serial: {}, i8042: {} },
  };
}

/** A file around `body` with a correct prefix and checksum (the way the encoder computes them). */
function wrapBody(body: string | Buffer, opts: { format?: number; reserved?: number } = {}): Buffer {
  const b = typeof body === 'string' ? Buffer.from(body, 'utf8') : body;
  const prefix = Buffer.alloc(24);
  prefix.write(SNAPSHOT_MAGIC, 0, 'latin1');
  prefix.writeUInt32LE(opts.format ?? SNAPSHOT_FORMAT, 8);
  prefix.writeUInt32LE(opts.reserved ?? 0, 12);
  prefix.writeBigUInt64LE(BigInt(b.length), 16);
  return Buffer.concat([prefix, b, createHash('sha256').update(prefix).update(b).digest()]);
}

/** The body of an encoded file, parsed. */
function bodyOf(file: Buffer): Record<string, any> {
  return JSON.parse(file.subarray(24, file.length - 32).toString('utf8'));
}

/** Encodes a sample, lets `edit` change its parsed body, and re-wraps it with a good checksum. */
function edited(edit: (body: Record<string, any>) => void): Buffer {
  const body = bodyOf(encodeSnapshotFile(sampleSnapshot()));
  edit(body);
  return wrapBody(JSON.stringify(body));
}

/** Asserts decoding refuses `file` with a SnapshotFileError whose message matches `message`. */
function refused(file: Uint8Array, message: RegExp): SnapshotFileError {
  let caught: unknown;
  try {
    decodeSnapshotFile(file, SOURCE);
  } catch (err) {
    caught = err;
  }
  if (caught === undefined) throw new Error(`accepted a file that should fail with ${message}`);
  expect(caught).toBeInstanceOf(SnapshotFileError);
  const err = caught as SnapshotFileError;
  expect(err).toBeInstanceOf(FcRunError);
  expect(err.code).toBe('snapshot-invalid');
  expect(err.exitCode).toBe(2);
  expect(err.message.startsWith(`${SOURCE}: `)).toBe(true);
  expect(err.message).toMatch(message);
  return err;
}

const b64 = (b: Uint8Array) => Buffer.from(b).toString('base64');

describe('the snapshot state file', () => {
  test('round trip keeps every byte and field', () => {
    const s = sampleSnapshot();
    const file = encodeSnapshotFile(s);
    expect(file.subarray(0, 8).toString('latin1')).toBe(SNAPSHOT_MAGIC);
    expect(file.readUInt32LE(8)).toBe(SNAPSHOT_FORMAT);
    expect(file.readUInt32LE(12)).toBe(0);
    expect(Number(file.readBigUInt64LE(16))).toBe(file.length - 24 - 32);
    const back = decodeSnapshotFile(file, SOURCE);
    expect(back.header).toEqual(s.header);
    expect(back.devices).toEqual(s.devices);
    expect(back.legacy).toEqual(s.legacy);
    expect(back.vcpus).toHaveLength(2);
    back.vcpus.forEach((v, i) => {
      const want = s.vcpus[i];
      for (const k of ['regs', 'sregs', 'xsave', 'xcrs', 'debugregs', 'lapic', 'vcpuEvents', 'msrs', 'cpuid'] as const) {
        expect(v[k]).toBeInstanceOf(Uint8Array);
        expect(Buffer.from(v[k]).equals(Buffer.from(want[k]))).toBe(true);
      }
      expect(v.mpState).toBe(want.mpState);
      expect(v.tscKhz).toBe(want.tscKhz);
    });
    back.vm.irqchips.forEach((c, i) => expect(Buffer.from(c).equals(Buffer.from(s.vm.irqchips[i]))).toBe(true));
    expect(Buffer.from(back.vm.pit2).equals(Buffer.from(s.vm.pit2))).toBe(true);
    expect(Buffer.from(back.vm.clock).equals(Buffer.from(s.vm.clock))).toBe(true);
    // Decoded parts are views into their own bytes: writing the result again gives the same file.
    expect(encodeSnapshotFile(back).equals(file)).toBe(true);
  });

  test('round trip at the edges: 1 and 32 vCPUs, the largest xsave, no MSRs, a Uint8Array view into a bigger buffer', () => {
    for (const n of [1, 32]) {
      const s = sampleSnapshot(n);
      s.vcpus[0].xsave = new Uint8Array(randomBytes(XSAVE_MAX));
      s.vcpus[0].msrs = new Uint8Array(0);
      const file = encodeSnapshotFile(s);
      const padded = Buffer.concat([Buffer.alloc(13), file, Buffer.alloc(7)]);
      const view = new Uint8Array(padded.buffer, padded.byteOffset + 13, file.length);
      const back = decodeSnapshotFile(view, SOURCE);
      expect(back.vcpus).toHaveLength(n);
      expect(back.vcpus[0].xsave.length).toBe(XSAVE_MAX);
      expect(back.vcpus[0].msrs.length).toBe(0);
      expect(encodeSnapshotFile(back).equals(file)).toBe(true);
    }
  });

  describe('the envelope', () => {
    test('an empty or short file', () => {
      refused(new Uint8Array(0), /is 0 bytes, too short for a snapshot/);
      refused(Buffer.from(SNAPSHOT_MAGIC), /is 8 bytes, too short/);
      refused(encodeSnapshotFile(sampleSnapshot()).subarray(0, 55), /is 55 bytes, too short/);
    });

    test('wrong magic: an ELF file, a memory file of zeros, text', () => {
      const elf = Buffer.alloc(4096);
      Buffer.from([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]).copy(elf);
      refused(elf, /not an fc-run snapshot .*memory file.*\(this is an ELF file\)/);
      const zeros = refused(Buffer.alloc(64 * 1024), /not an fc-run snapshot.*does not start with "FCRUNSNP"/);
      expect(zeros.message).not.toMatch(/ELF/);
      refused(Buffer.from('{"header": {}, "vcpus": [], "vm": {}, "devices": null, "legacy": {}}'), /not an fc-run snapshot/);
      const lower = encodeSnapshotFile(sampleSnapshot());
      lower.write('fcrunsnp', 0, 'latin1');
      refused(lower, /not an fc-run snapshot/);
    });

    test('another format version', () => {
      const body = bodyOf(encodeSnapshotFile(sampleSnapshot()));
      refused(wrapBody(JSON.stringify(body), { format: 2 }), /is snapshot format 2; this fc-run reads format 1/);
      refused(wrapBody(JSON.stringify(body), { format: 0 }), /is snapshot format 0/);
      refused(wrapBody(JSON.stringify(body), { format: 0xffffffff }), /is snapshot format 4294967295/);
    });

    test('reserved bits set', () => {
      refused(wrapBody(JSON.stringify(bodyOf(encodeSnapshotFile(sampleSnapshot()))), { reserved: 0x100 }), /reserved header bits set/);
    });

    test('a body length that does not match the file: truncated, bytes appended, a huge length', () => {
      const file = encodeSnapshotFile(sampleSnapshot());
      const n = file.length - 56;
      refused(file.subarray(0, file.length - 1), new RegExp(`says its body is ${n} bytes but the file holds ${n - 1}: the file is truncated or has bytes appended`));
      refused(file.subarray(0, file.length - 1000), /truncated or has bytes appended/);
      refused(Buffer.concat([file, Buffer.from('\n')]), new RegExp(`body is ${n} bytes but the file holds ${n + 1}`));
      refused(Buffer.concat([file, file]), /truncated or has bytes appended/);
      const huge = Buffer.from(file);
      huge.writeBigUInt64LE(0xffffffffffffffffn, 16);
      refused(huge, /says its body is 18446744073709551615 bytes/);
    });

    test('one flipped bit anywhere after the prefix fails the checksum', () => {
      const file = encodeSnapshotFile(sampleSnapshot());
      // Every bit of a stretch of the body, a spread of positions, and the digest itself.
      const positions = [24, 25, 100, 5000, file.length >> 1, file.length - 33, file.length - 32, file.length - 1];
      for (let i = 0; i < 200; i++) positions.push(24 + Math.floor(Math.random() * (file.length - 24)));
      for (const at of positions) {
        for (let bit = 0; bit < 8; bit++) {
          const bad = Buffer.from(file);
          bad[at] ^= 1 << bit;
          refused(bad, /fails its checksum: the file is damaged/);
        }
      }
    });

    test('a flipped bit in the prefix is named for what it breaks', () => {
      const file = encodeSnapshotFile(sampleSnapshot());
      const flip = (at: number, bit: number) => {
        const bad = Buffer.from(file);
        bad[at] ^= 1 << bit;
        return bad;
      };
      refused(flip(3, 0), /not an fc-run snapshot/);
      refused(flip(8, 1), /is snapshot format 3/);
      refused(flip(14, 7), /reserved header bits set/);
      refused(flip(16, 0), /truncated or has bytes appended/);
    });

    test('a file larger than any state file is refused before it is hashed', () => {
      const big = Buffer.alloc(64 * 1024 * 1024 + 1);
      big.write(SNAPSHOT_MAGIC, 0, 'latin1');
      refused(big, /more than any VM state file .*memory file/);
    });
  });

  describe('the body, with a valid checksum', () => {
    test('not UTF-8', () => {
      refused(wrapBody(Buffer.from([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x3a, 0x31, 0x7d])), /the body is not UTF-8/);
      refused(wrapBody(Buffer.from([0x22, 0xc3, 0x22])), /the body is not UTF-8/); // truncated sequence
      refused(wrapBody(Buffer.from([0x22, 0xed, 0xa0, 0x80, 0x22])), /the body is not UTF-8/); // encoded surrogate
    });

    test('not JSON', () => {
      refused(wrapBody(''), /the body is not JSON/);
      refused(wrapBody('{"header": '), /the body is not JSON/);
      refused(wrapBody("{'header': 1}"), /the body is not JSON/);
      refused(wrapBody('{"a": 1} trailing'), /the body is not JSON/);
      refused(wrapBody('{"a": 1, /* comment */ "b": 2}'), /the body is not JSON/);
    });

    test('deep nesting is refused quickly, without a stack overflow', () => {
      const started = Date.now();
      refused(wrapBody('['.repeat(100_000)), /the body nests deeper than 132 levels \(at byte 132\)/);
      refused(wrapBody('{"a":'.repeat(100_000) + '1' + '}'.repeat(100_000)), /nests deeper than 132 levels/);
      // Deep inside a part the reader passes on unchecked (the plan): still refused.
      refused(edited((b) => (b.header.plan = JSON.parse('['.repeat(135) + ']'.repeat(135)))), /nests deeper than 132 levels/);
      // A bracket inside a string is not nesting.
      const inString = bodyOf(encodeSnapshotFile(sampleSnapshot()));
      inString.header.plan = { note: '['.repeat(10_000) };
      expect(decodeSnapshotFile(wrapBody(JSON.stringify(inString)), SOURCE).header.plan).toEqual({ note: '['.repeat(10_000) });
      expect(Date.now() - started).toBeLessThan(10_000);
    });

    test('top level: not an object, unknown fields, missing fields', () => {
      refused(wrapBody('[]'), /the body must be an object, not an array/);
      refused(wrapBody('null'), /the body must be an object, not null/);
      refused(wrapBody('"FCRUNSNP"'), /the body must be an object, not "FCRUNSNP"/);
      refused(edited((b) => (b.extra = 1)), /the body has an unknown field "extra"/);
      refused(wrapBody(JSON.stringify(bodyOf(encodeSnapshotFile(sampleSnapshot()))).replace(/^\{/, '{"__proto__": {"polluted": true}, ')), /the body has an unknown field "__proto__"/);
      expect(({} as Record<string, unknown>).polluted).toBeUndefined();
      for (const k of ['header', 'vcpus', 'vm', 'devices', 'legacy']) refused(edited((b) => delete b[k]), new RegExp(`the body lacks the field "${k}"`));
    });

    test('header: unknown and missing fields, bad values', () => {
      refused(edited((b) => (b.header.extra = true)), /header has an unknown field "extra"/);
      for (const k of ['fcRunVersion', 'planHash', 'createdAt', 'snapshotType', 'vcpuCount', 'memory', 'cpuTemplate', 'devices', 'plan']) {
        refused(edited((b) => delete b.header[k]), new RegExp(`header lacks the field "${k}"`));
      }
      refused(edited((b) => (b.header = [])), /header must be an object, not an array/);
      refused(edited((b) => (b.header.snapshotType = 'Partial')), /header.snapshotType must be "Full" or "Diff", not "Partial"/);
      refused(edited((b) => (b.header.fcRunVersion = '1.0 beta')), /header.fcRunVersion must be a string/);
      refused(edited((b) => (b.header.planHash = 'SHA256:AB')), /header.planHash must be a string/);
      refused(edited((b) => (b.header.memory.regions = [])), /header.memory.regions must be a list of 1 to 8 entries, not 0 entries/);
      refused(edited((b) => (b.header.memory.regions[0].size = 100)), /header.memory.regions\[0\].size must be an integer from 4096/);
      refused(edited((b) => (b.header.memory.regions[0].start = -1)), /header.memory.regions\[0\].start must be an integer/);
      refused(edited((b) => (b.header.devices[1].id = 'x'.repeat(300))), /header.devices\[1\].id must be a string of at most 256 characters matching .*, not a string of 300 characters/);
      refused(edited((b) => (b.header.devices[0].extra = 1)), /header.devices\[0\] has an unknown field "extra"/);
      refused(edited((b) => (b.header.cpuTemplate = 7)), /header.cpuTemplate must be a string .*not number 7/);
    });

    test('createdAt must be an ISO 8601 UTC time', () => {
      refused(edited((b) => (b.header.createdAt = 'yesterday')), /header.createdAt must be a string .* matching/);
      refused(edited((b) => (b.header.createdAt = '2024-05-17 09:41:07')), /header.createdAt must be a string/);
      refused(edited((b) => (b.header.createdAt = 1715938867123)), /header.createdAt must be a string .*not number 1715938867123/);
      refused(edited((b) => (b.header.createdAt = '2024-05-17T09:41:07+02:00')), /header.createdAt must be/);
      // The right shape, but no time at all.
      refused(edited((b) => (b.header.createdAt = '2024-13-45T99:99:99Z')), /header.createdAt is not a valid time/);
      refused(edited((b) => (b.header.createdAt = '2024-05-17T::Z')), /header.createdAt is not a valid time/);
      expect(decodeSnapshotFile(edited((b) => (b.header.createdAt = '2024-05-17T09:41:07Z')), SOURCE).header.createdAt).toBe('2024-05-17T09:41:07Z');
    });

    test('vcpuCount 0 or 33, or a count the vcpus list does not match', () => {
      refused(edited((b) => (b.header.vcpuCount = 0)), /header.vcpuCount must be an integer from 1 to 32, not number 0/);
      refused(edited((b) => (b.header.vcpuCount = 33)), /header.vcpuCount must be an integer from 1 to 32, not number 33/);
      refused(edited((b) => (b.header.vcpuCount = 1.5)), /header.vcpuCount must be an integer/);
      refused(edited((b) => (b.header.vcpuCount = '2')), /header.vcpuCount must be an integer from 1 to 32, not "2"/);
      refused(edited((b) => (b.header.vcpuCount = 3)), /vcpus must be a list of 3 to 3 entries, not 2 entries/);
      refused(edited((b) => b.vcpus.pop()), /vcpus must be a list of 2 to 2 entries, not 1 entries/);
      refused(edited((b) => b.vcpus.push(b.vcpus[0])), /vcpus must be a list of 2 to 2 entries, not 3 entries/);
      refused(edited((b) => (b.vcpus = {})), /vcpus must be a list of 2 to 2 entries, not an object/);
    });

    test('a vCPU: unknown and missing fields', () => {
      refused(edited((b) => (b.vcpus[1].fpu = 'AAAA')), /vcpus\[1\] has an unknown field "fpu"/);
      for (const k of ['regs', 'sregs', 'xsave', 'xcrs', 'debugregs', 'lapic', 'vcpuEvents', 'msrs', 'cpuid', 'mpState', 'tscKhz']) {
        refused(edited((b) => delete b.vcpus[0][k]), new RegExp(`vcpus\\[0\\] lacks the field "${k}"`));
      }
      refused(edited((b) => (b.vcpus[0] = null)), /vcpus\[0\] must be an object, not null/);
    });

    test('a vCPU part of the wrong length', () => {
      refused(edited((b) => (b.vcpus[0].regs = b64(new Uint8Array(143)))), /vcpus\[0\].regs must be 144 bytes, not 143/);
      refused(edited((b) => (b.vcpus[0].regs = b64(new Uint8Array(145)))), /vcpus\[0\].regs must be base64 of at most 144 bytes/);
      refused(edited((b) => (b.vcpus[0].regs = b64(new Uint8Array(142)))), /vcpus\[0\].regs must be 144 bytes, not 142/);
      refused(edited((b) => (b.vcpus[1].lapic = b64(new Uint8Array(4096)))), /vcpus\[1\].lapic must be base64 of at most 1024 bytes, not a string of 5464 characters/);
      refused(edited((b) => (b.vcpus[0].sregs = '')), /vcpus\[0\].sregs must be 312 bytes, not 0/);
      refused(edited((b) => (b.vcpus[0].xsave = b64(new Uint8Array(XSAVE_MIN + 1)))), /vcpus\[0\].xsave must be a multiple of 64 bytes from 4096 to 65536, not 4097/);
      refused(edited((b) => (b.vcpus[0].xsave = b64(new Uint8Array(XSAVE_MIN + 32)))), /xsave must be a multiple of 64 bytes .*not 4128/);
      refused(edited((b) => (b.vcpus[0].xsave = b64(new Uint8Array(XSAVE_MIN - 64)))), /xsave must be a multiple of 64 bytes from 4096 .*not 4032/);
      refused(edited((b) => (b.vcpus[0].xsave = b64(new Uint8Array(XSAVE_MAX + 64)))), /vcpus\[0\].xsave must be base64 of at most 65536 bytes/);
      refused(edited((b) => (b.vcpus[0].msrs = b64(new Uint8Array(17)))), /vcpus\[0\].msrs must be a multiple of 16 bytes .*not 17/);
      refused(edited((b) => (b.vcpus[0].cpuid = '')), /vcpus\[0\].cpuid must be a multiple of 40 bytes from 40 to 10240, not 0/);
      refused(edited((b) => (b.vcpus[0].cpuid = b64(new Uint8Array(41)))), /cpuid must be a multiple of 40 bytes .*not 41/);
    });

    test('a vCPU part that is not base64', () => {
      refused(edited((b) => (b.vcpus[0].regs = 'not base64!')), /vcpus\[0\].regs must be base64 of at most 144 bytes, not "not base64!"/);
      refused(edited((b) => (b.vcpus[0].regs = b64(new Uint8Array(144)).replace(/^A/, '-'))), /vcpus\[0\].regs must be base64/); // base64url
      refused(edited((b) => (b.vcpus[0].vcpuEvents = b64(new Uint8Array(64)).slice(1))), /vcpuEvents must be base64/); // length not a multiple of 4
      refused(edited((b) => (b.vcpus[0].debugregs = `${b64(new Uint8Array(126))}\n`)), /debugregs must be base64/);
      refused(edited((b) => (b.vcpus[0].xcrs = Array.from(new Uint8Array(392)))), /xcrs must be base64 .*not an array/);
      refused(edited((b) => (b.vcpus[0].regs = null)), /regs must be base64 .*not null/);
    });

    test('mpState and tscKhz out of range', () => {
      refused(edited((b) => (b.vcpus[0].mpState = 9)), /vcpus\[0\].mpState must be an integer from 0 to 8, not number 9/);
      refused(edited((b) => (b.vcpus[1].mpState = -1)), /vcpus\[1\].mpState must be an integer from 0 to 8, not number -1/);
      refused(edited((b) => (b.vcpus[0].mpState = 'HALTED')), /mpState must be an integer/);
      refused(edited((b) => (b.vcpus[0].tscKhz = 1e300)), /vcpus\[0\].tscKhz must be an integer from 0 to 100000000/);
      refused(wrapBody(JSON.stringify(bodyOf(encodeSnapshotFile(sampleSnapshot()))).replace('"tscKhz":2995200', '"tscKhz":1e400')), /tscKhz must be an integer .*not number Infinity/);
    });

    test('the VM state: irqchips in the wrong order or of the wrong size, pit2 and clock', () => {
      const chip = (id: number, size: number = STATE_SIZES.irqchip) => {
        const b = Buffer.alloc(size);
        b.writeUInt32LE(id, 0);
        return b.toString('base64');
      };
      refused(edited((b) => (b.vm.irqchips[2] = chip(0))), /vm.irqchips\[2\] is the state of chip 0, expected chip 2/);
      refused(edited((b) => b.vm.irqchips.reverse()), /vm.irqchips\[0\] is the state of chip 2, expected chip 0/);
      refused(edited((b) => (b.vm.irqchips[1] = chip(0x01000000))), /vm.irqchips\[1\] is the state of chip 16777216, expected chip 1/);
      refused(edited((b) => (b.vm.irqchips[1] = chip(1, 512))), /vm.irqchips\[1\] must be 520 bytes, not 512/);
      refused(edited((b) => b.vm.irqchips.pop()), /vm.irqchips must be a list of 3 to 3 entries, not 2 entries/);
      refused(edited((b) => (b.vm.pit2 = b64(new Uint8Array(111)))), /vm.pit2 must be 112 bytes, not 111/);
      refused(edited((b) => delete b.vm.clock), /vm lacks the field "clock"/);
      refused(edited((b) => (b.vm.ioapic = '')), /vm has an unknown field "ioapic"/);
    });

    test('legacy: unknown and missing fields; the device parts pass through unchecked', () => {
      refused(edited((b) => delete b.legacy.i8042), /legacy lacks the field "i8042"/);
      refused(edited((b) => (b.legacy.rtc = {})), /legacy has an unknown field "rtc"/);
      refused(edited((b) => (b.legacy = 'serial')), /legacy must be an object, not "serial"/);
      const s = decodeSnapshotFile(edited((b) => ((b.devices = { anything: [1, 'two'] }), (b.legacy.serial = { ier: 3 }))), SOURCE);
      expect(s.devices).toEqual({ anything: [1, 'two'] });
      expect(s.legacy.serial).toEqual({ ier: 3 });
    });

    test('never throws anything but a SnapshotFileError for the values JSON can hold', () => {
      const values: unknown[] = [null, true, false, 0, -0, 1.5, 2 ** 53, -(2 ** 60), '', 'x'.repeat(100_000), [], [[[]]], {}, JSON.parse('{"__proto__": {"x": 1}}'), { constructor: 'x' }];
      const spots: ((b: Record<string, any>, v: unknown) => void)[] = [
        (b, v) => (b.header = v),
        (b, v) => (b.header.memory = v),
        (b, v) => (b.header.memory.regions = v),
        (b, v) => (b.header.memory.regions[0] = v),
        (b, v) => (b.header.devices = v),
        (b, v) => (b.header.devices[0] = v),
        (b, v) => (b.vcpus = v),
        (b, v) => (b.vcpus[0] = v),
        (b, v) => (b.vcpus[0].xsave = v),
        (b, v) => (b.vm = v),
        (b, v) => (b.vm.irqchips = v),
        (b, v) => (b.vm.irqchips[0] = v),
        (b, v) => (b.legacy = v),
      ];
      for (const spot of spots) {
        for (const v of values) {
          const file = edited((b) => spot(b, JSON.parse(JSON.stringify(v))));
          try {
            decodeSnapshotFile(file, SOURCE);
          } catch (err) {
            expect(err).toBeInstanceOf(SnapshotFileError);
          }
        }
      }
    });
  });
});
