import { createHash } from 'node:crypto';
import { IRQCHIP_IDS, MP_STATE_MAX, STATE_SIZES, VCPU_FIXED_PARTS, XSAVE_MAX, XSAVE_MIN } from '../../src/kvm/state-abi';
import { decodeSnapshotFile, encodeSnapshotFile, SNAPSHOT_FORMAT, SNAPSHOT_MAGIC, SnapshotFileError, VmSnapshot } from '../../src/vmm/snapshot-file';
import { fuzzCases, fuzzSeed, Rng } from './rng';

/**
 * Damaged and hostile VM state files through the reader. Two kinds of case: byte damage to a
 * whole encoded file (which the checksum or the envelope must catch), and structural damage to
 * the JSON body re-wrapped with a correct checksum (which only the body checks can catch). Each
 * case must decode or end in a SnapshotFileError; anything else (TypeError, RangeError, a stack
 * overflow) is a bug. What decodes must hold what the reader promises (every KVM part at its
 * exact size, the irqchips in order, a real creation time): no wrong accept.
 */

const CASES = fuzzCases(600);
const SEED = fuzzSeed(0x5a95f11e);
/** No case's input grows past this: the work per case is bounded by its size, not by a clock. */
const MAX_CASE_BYTES = 4 * 1024 * 1024;

function baseSnapshot(rng: Rng, vcpuCount: number): VmSnapshot {
  const u8 = (n: number) => new Uint8Array(rng.bytes(n));
  const chip = (id: number) => {
    const b = rng.bytes(STATE_SIZES.irqchip);
    b.writeUInt32LE(id, 0);
    return new Uint8Array(b);
  };
  return {
    header: {
      fcRunVersion: '0.4.0',
      planHash: 'sha256:' + rng.bytes(32).toString('hex'),
      createdAt: '2024-05-17T09:41:07.123Z',
      snapshotType: 'Full',
      vcpuCount,
      memory: { regions: [{ start: 0, size: 128 << 20 }] },
      cpuTemplate: 'none',
      devices: [{ kind: 'block', id: 'rootfs' }],
      plan: { kernel: { path: '/srv/vmlinux' }, cmdline: 'console=ttyS0', devices: [{ kind: 'block', id: 'rootfs' }] },
    },
    vcpus: Array.from({ length: vcpuCount }, (_, i) => ({
      regs: u8(STATE_SIZES.regs),
      sregs: u8(STATE_SIZES.sregs),
      xsave: u8(XSAVE_MIN + 64 * rng.int(3)),
      xcrs: u8(STATE_SIZES.xcrs),
      debugregs: u8(STATE_SIZES.debugregs),
      lapic: u8(STATE_SIZES.lapic),
      vcpuEvents: u8(STATE_SIZES.vcpuEvents),
      msrs: u8(STATE_SIZES.msrEntry * (1 + rng.int(6))),
      cpuid: u8(STATE_SIZES.cpuidEntry * (1 + rng.int(6))),
      mpState: i === 0 ? 0 : 3,
      tscKhz: 2_995_200,
    })),
    vm: { irqchips: IRQCHIP_IDS.map(chip), pit2: u8(STATE_SIZES.pit2), clock: u8(STATE_SIZES.clock) },
    devices: { format: 1, devices: [{ kind: 'block', id: 'rootfs', queues: [{ size: 256, ready: true }] }], mmds: null },
    legacy: { serial: { ier: 0, lcr: 3 }, i8042: { status: 0 } },
  };
}

/** A file around `body` with a correct prefix and checksum, as the encoder computes them. */
function wrap(body: Buffer): Buffer {
  const prefix = Buffer.alloc(24);
  prefix.write(SNAPSHOT_MAGIC, 0, 'latin1');
  prefix.writeUInt32LE(SNAPSHOT_FORMAT, 8);
  prefix.writeBigUInt64LE(BigInt(body.length), 16);
  return Buffer.concat([prefix, body, createHash('sha256').update(prefix).update(body).digest()]);
}

const bodyOf = (file: Buffer): Buffer => file.subarray(24, file.length - 32);

// ---- byte damage -------------------------------------------------------------------------------

function mutateBytes(rng: Rng, input: Buffer): { out: Buffer; what: string } {
  let b = Buffer.from(input);
  const at = () => rng.int(b.length + 1);
  switch (rng.int(9)) {
    case 0: {
      const n = 1 + rng.int(rng.bool(0.7) ? 1 : 16);
      for (let i = 0; i < n && b.length > 0; i++) b[rng.int(b.length)] ^= 1 << rng.int(8);
      return { out: b, what: `${n} bit flips` };
    }
    case 1: {
      const i = at();
      const ins = rng.bytes(1 + rng.int(rng.bool() ? 4 : 300));
      return { out: Buffer.concat([b.subarray(0, i), ins, b.subarray(i)]), what: `insert ${ins.length} bytes at ${i}` };
    }
    case 2: {
      const i = at();
      const n = rng.int(rng.bool() ? 8 : 4000);
      return { out: Buffer.concat([b.subarray(0, i), b.subarray(i + n)]), what: `delete ${n} bytes at ${i}` };
    }
    case 3: {
      const i = at();
      const src = rng.int(b.length + 1);
      const n = rng.int(200);
      b = Buffer.concat([b.subarray(0, i), b.subarray(src, src + n), b.subarray(i + n)]);
      return { out: b, what: `splice ${n} bytes from ${src} over ${i}` };
    }
    case 4: {
      const n = rng.bool(0.3) ? rng.int(64) : rng.int(b.length + 1);
      return { out: b.subarray(0, n), what: `truncate to ${n}` };
    }
    case 5: {
      const tail = rng.pick([Buffer.from('\n'), Buffer.alloc(1 + rng.int(100)), rng.bytes(1 + rng.int(100)), input]);
      return { out: Buffer.concat([b, tail]), what: `extend by ${tail.length}` };
    }
    case 6: {
      // The prefix fields, set to nearby and extreme values.
      const field = rng.pick([8, 12, 16]);
      const v = rng.pick([0n, 1n, 2n, 0xffffffffn, BigInt(b.length), BigInt(b.length - 56 + 1), BigInt(b.length - 56 - 1), 0xffffffffffffffffn]);
      if (b.length >= 24) field === 16 ? b.writeBigUInt64LE(v, 16) : b.writeUInt32LE(Number(v & 0xffffffffn), field);
      return { out: b, what: `prefix field ${field} = ${v}` };
    }
    case 7: {
      const i = at();
      const n = rng.int(64);
      b.fill(rng.pick([0, 0xff, 0x5b, 0x22]), i, Math.min(b.length, i + n));
      return { out: b, what: `fill ${n} bytes at ${i}` };
    }
    default: {
      const other = rng.pick([Buffer.alloc(4096), Buffer.from([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0]), Buffer.from('FCRUNSNP'), Buffer.from('FCRUNSNP\x01\x00\x00\x00\x00\x00\x00\x00')]);
      return { out: Buffer.concat([other, b.subarray(other.length)]), what: 'foreign header' };
    }
  }
}

// ---- structural damage to the body ------------------------------------------------------------

const STRINGS = ['', 'A', 'AA==', 'AAA=', 'AAAA', '====', 'A===', 'not base64!', '-_-_', 'Full', 'Diff', 'none', '2024-05-17T09:41:07Z', '2024-13-45T99:99:99Z', '9999-99-99T::Z', 'yesterday', '0.4.0', 'é', '\u0000', '\ud800', '__proto__', 'constructor', '[[[[', '{"a":1}'];
const NUMBERS = [0, -0, 1, 2, 3, 8, 9, -1, 31, 32, 33, 0.5, 4095, 4096, 2 ** 31, 2 ** 32, 2 ** 52, 2 ** 53, 2 ** 53 + 2, 1e21, 1e300, -1e300, Number.MAX_SAFE_INTEGER, Number.MIN_SAFE_INTEGER];
const KEYS = ['__proto__', 'constructor', 'prototype', 'toString', 'hasOwnProperty', 'regs', 'header', 'vcpuCount', 'x', ''];
const PART_SIZES = [0, 1, 2, 3, 39, 40, 63, 64, 111, 112, 143, 144, 145, 311, 312, 520, 1023, 1024, 4032, 4096, 4097, 4160, XSAVE_MAX, XSAVE_MAX + 64];

function randomValue(rng: Rng, depth = 0): unknown {
  switch (rng.int(depth > 2 ? 6 : 10)) {
    case 0:
      return rng.pick(STRINGS);
    case 1:
      return rng.pick(NUMBERS);
    case 2:
      return rng.bool();
    case 3:
      return null;
    case 4:
      // Valid base64 of a size that is right for some part and wrong for most.
      return rng.bytes(rng.pick(PART_SIZES)).toString('base64');
    case 5:
      return rng.pick(['x', 'A', '[', '\u00e9', '\ud83d\ude00']).repeat(rng.pick([41, 65, 257, 5000, 100_000]));
    case 6:
      return Array.from({ length: rng.int(4) }, () => randomValue(rng, depth + 1));
    case 7: {
      // Nesting around the limit (128 + 4 for the body).
      let v: unknown = rng.int(10);
      for (let n = rng.pick([5, 120, 126, 127, 128, 129, 131, 140]); n > 0; n--) v = rng.bool() ? [v] : { a: v };
      return v;
    }
    case 8: {
      const o: Record<string, unknown> = {};
      for (let i = rng.int(3); i > 0; i--) Object.defineProperty(o, rng.pick(KEYS), { value: randomValue(rng, depth + 1), enumerable: true, writable: true, configurable: true });
      return o;
    }
    default:
      return Array.from({ length: rng.pick([0, 1, 3, 33, 1000]) }, () => rng.int(3));
  }
}

type Place = { parent: Record<string, unknown> | unknown[]; key: string | number };

function places(v: unknown, out: Place[] = []): Place[] {
  if (Array.isArray(v)) v.forEach((item, i) => (out.push({ parent: v, key: i }), places(item, out)));
  else if (v && typeof v === 'object') for (const [k, item] of Object.entries(v)) (out.push({ parent: v as Record<string, unknown>, key: k }), places(item, out));
  return out;
}

function mutateStructure(rng: Rng, body: Record<string, unknown>): string[] {
  const done: string[] = [];
  for (let n = 1 + rng.int(rng.bool(0.8) ? 1 : 4); n > 0; n--) {
    const all = places(body);
    const { parent, key } = all.length > 0 && rng.bool(0.95) ? rng.pick(all) : { parent: body, key: rng.pick(['header', 'vcpus', 'vm', 'devices', 'legacy']) };
    const target = parent as Record<string | number, unknown>;
    const current = target[key];
    const op = rng.int(8);
    if (typeof current === 'string' && /^[A-Za-z0-9+/]+=*$/.test(current) && current.length >= 8 && rng.bool(0.5)) {
      // A base64 part: one byte more or less, a different size, a bad character, or a rotated copy.
      const bytes = Buffer.from(current, 'base64');
      const choice = rng.int(5);
      target[key] = [
        () => Buffer.concat([bytes, rng.bytes(1 + rng.int(64))]).toString('base64'),
        () => bytes.subarray(0, rng.int(bytes.length)).toString('base64'),
        () => current.slice(0, -1 - rng.int(3)),
        () => current.slice(0, rng.int(current.length)) + rng.pick(['!', '-', '_', ' ', '=', '\n', 'é']) + current.slice(rng.int(current.length)),
        () => Buffer.concat([bytes.subarray(4), bytes.subarray(0, 4)]).toString('base64'), // the chip id moves
      ][choice]();
      done.push(`base64 ${String(key)} op ${choice}`);
    } else if (typeof current === 'string' && /\d/.test(current) && rng.bool(0.5)) {
      // Small damage to a real value: one digit changed (a version, a hash, a time).
      const digits = [...current.matchAll(/\d/g)].map((m) => m.index as number);
      const at = rng.pick(digits);
      target[key] = current.slice(0, at) + String(rng.int(10)) + current.slice(at + 1);
      done.push(`digit ${at} of ${String(key)}`);
    } else if (typeof current === 'number' && rng.bool(0.5)) {
      target[key] = rng.pick([current + 1, current - 1, current * 2, -current, current + 0.5, current * 2 ** 40, rng.pick(NUMBERS)]);
      done.push(`number ${String(key)}`);
    } else if (op === 0) {
      if (Array.isArray(parent)) parent.splice(key as number, 1);
      else delete target[key];
      done.push(`drop ${String(key)}`);
    } else if (op === 1 && Array.isArray(parent)) {
      parent.splice(rng.int(parent.length + 1), 0, JSON.parse(JSON.stringify(parent[key as number] ?? null)));
      done.push(`duplicate [${String(key)}]`);
    } else if (op === 2 && !Array.isArray(parent)) {
      const k = rng.pick(KEYS);
      Object.defineProperty(parent, k, { value: randomValue(rng), enumerable: true, writable: true, configurable: true });
      done.push(`add key ${k}`);
    } else if (op === 3) {
      // Swap in a value from another place (right type, wrong place).
      const other = rng.pick(all);
      target[key] = JSON.parse(JSON.stringify((other.parent as Record<string | number, unknown>)[other.key] ?? null));
      done.push(`copy ${String(other.key)} over ${String(key)}`);
    } else {
      target[key] = randomValue(rng);
      done.push(`replace ${String(key)}`);
    }
  }
  return done;
}

/** Text-level damage to the body, still re-wrapped with a good checksum. */
function mutateText(rng: Rng, text: string): { text: string; what: string } {
  switch (rng.int(7)) {
    case 0:
      return { text: '['.repeat(rng.pick([133, 1000, 100_000])) + text, what: 'deep prefix' };
    case 1: {
      const i = rng.int(text.length);
      return { text: text.slice(0, i) + '{"a":'.repeat(rng.pick([10, 200, 20_000])) + text.slice(i), what: `deep objects at ${i}` };
    }
    case 2: {
      const i = rng.int(text.length);
      return { text: text.slice(0, i) + String.fromCharCode(rng.int(0x80)) + text.slice(i), what: `char at ${i}` };
    }
    case 3:
      return { text: text.slice(0, rng.int(text.length)), what: 'cut' };
    case 4:
      // A duplicate key: the last one wins in JSON.parse.
      return { text: text.replace(/"(vcpuCount|mpState|createdAt|regs)":/, (m) => `${m}${JSON.stringify(randomValue(rng))},${m}`), what: 'duplicate key' };
    case 5:
      return { text: `\ufeff${text}`, what: 'BOM' };
    default:
      return { text: text.replace(/"([a-zA-Z]+)":/, (_m, k: string) => `"${k}\\u0000":`), what: 'NUL in a key' };
  }
}

// ---- what an accepted file must hold ------------------------------------------------------------

function brokenPromise(s: VmSnapshot): string | undefined {
  const h = s.header;
  if (!(Number.isSafeInteger(h.vcpuCount) && h.vcpuCount >= 1 && h.vcpuCount <= 32)) return `vcpuCount ${h.vcpuCount}`;
  if (s.vcpus.length !== h.vcpuCount) return `${s.vcpus.length} vCPUs for vcpuCount ${h.vcpuCount}`;
  if (h.snapshotType !== 'Full' && h.snapshotType !== 'Diff') return `snapshotType ${h.snapshotType}`;
  if (Number.isNaN(Date.parse(h.createdAt))) return `createdAt ${JSON.stringify(h.createdAt)} is no time`;
  for (const [i, v] of s.vcpus.entries()) {
    for (const [k, size] of Object.entries(VCPU_FIXED_PARTS)) {
      const part = v[k as keyof typeof VCPU_FIXED_PARTS];
      if (!(part instanceof Uint8Array) || part.length !== size) return `vcpus[${i}].${k} is ${part?.length} bytes`;
    }
    if (v.xsave.length % 64 !== 0 || v.xsave.length < XSAVE_MIN || v.xsave.length > XSAVE_MAX) return `vcpus[${i}].xsave is ${v.xsave.length} bytes`;
    if (v.msrs.length % STATE_SIZES.msrEntry !== 0) return `vcpus[${i}].msrs is ${v.msrs.length} bytes`;
    if (v.cpuid.length % STATE_SIZES.cpuidEntry !== 0 || v.cpuid.length === 0) return `vcpus[${i}].cpuid is ${v.cpuid.length} bytes`;
    if (!(Number.isInteger(v.mpState) && v.mpState >= 0 && v.mpState <= MP_STATE_MAX)) return `vcpus[${i}].mpState ${v.mpState}`;
    if (!(Number.isInteger(v.tscKhz) && v.tscKhz >= 0)) return `vcpus[${i}].tscKhz ${v.tscKhz}`;
  }
  if (s.vm.irqchips.length !== IRQCHIP_IDS.length) return `${s.vm.irqchips.length} irqchips`;
  for (const [i, c] of s.vm.irqchips.entries()) {
    if (c.length !== STATE_SIZES.irqchip) return `irqchip ${i} is ${c.length} bytes`;
    if (Buffer.from(c.buffer, c.byteOffset, c.length).readUInt32LE(0) !== IRQCHIP_IDS[i]) return `irqchip ${i} has the wrong id`;
  }
  if (s.vm.pit2.length !== STATE_SIZES.pit2 || s.vm.clock.length !== STATE_SIZES.clock) return 'pit2 or clock size';
  for (const r of h.memory.regions) if (!(Number.isSafeInteger(r.start) && Number.isSafeInteger(r.size) && r.start >= 0 && r.size >= 4096)) return `region ${JSON.stringify(r)}`;
  return undefined;
}

test(`${CASES} damaged state files: refused with a SnapshotFileError or decoded whole (seed ${SEED})`, () => {
  const setup = new Rng(SEED);
  const bases = [1, 2, 4].map((n) => encodeSnapshotFile(baseSnapshot(setup, n)));
  const outcomes = { decoded: 0, refused: 0, bytes: 0, structure: 0, text: 0 };
  const messages = new Map<string, number>();
  for (let i = 0; i < CASES; i++) {
    // Each case has its own seed, so a failure names everything needed to replay it.
    const caseSeed = (SEED ^ Math.imul(i + 1, 0x9e3779b1)) >>> 0;
    const rng = new Rng(caseSeed);
    const base = rng.pick(bases);
    let file: Buffer;
    const what: string[] = [];
    const kind = rng.int(10);
    if (kind < 3) {
      // Byte damage to the whole file, sometimes several rounds.
      file = base;
      for (let n = 1 + (rng.bool(0.2) ? rng.int(3) : 0); n > 0; n--) {
        const m = mutateBytes(rng, file);
        file = m.out;
        what.push(m.what);
      }
      outcomes.bytes++;
    } else if (kind < 4) {
      // Byte damage to the body only, with a good checksum: UTF-8 and JSON errors.
      const m = mutateBytes(rng, Buffer.from(bodyOf(base)));
      file = wrap(m.out);
      what.push(`body: ${m.what}`);
      outcomes.text++;
    } else {
      const body = JSON.parse(bodyOf(base).toString('utf8')) as Record<string, unknown>;
      what.push(...mutateStructure(rng, body));
      let text = JSON.stringify(body);
      if (rng.bool(0.1)) {
        const m = mutateText(rng, text);
        text = m.text;
        what.push(m.what);
      }
      file = wrap(Buffer.from(text, 'utf8'));
      outcomes.structure++;
    }
    if (file.length > MAX_CASE_BYTES) file = file.subarray(0, MAX_CASE_BYTES);
    const replay = `case ${i} (case seed 0x${caseSeed.toString(16)}; replay with FUZZ_SEED=${SEED} FUZZ_CASES=${i + 1}): ${what.join('; ')}`;
    let decoded: VmSnapshot;
    try {
      decoded = decodeSnapshotFile(file, 'fuzz.snap');
    } catch (err) {
      if (!(err instanceof SnapshotFileError) || err.code !== 'snapshot-invalid' || err.exitCode !== 2 || !err.message.startsWith('fuzz.snap: ')) {
        throw new Error(`${replay}\nthrew ${err instanceof Error ? err.stack : String(err)}`);
      }
      const kindOfMessage = err.message.replace(/[0-9]+/g, 'N').replace(/"[^"]*"/g, '"…"').slice(0, 80);
      messages.set(kindOfMessage, (messages.get(kindOfMessage) ?? 0) + 1);
      outcomes.refused++;
      continue;
    }
    const broken = brokenPromise(decoded);
    if (broken) throw new Error(`${replay}\naccepted a file that breaks the reader's promise: ${broken}`);
    // What was accepted writes back to a file that reads back the same.
    const again = encodeSnapshotFile(decoded);
    expect(decodeSnapshotFile(again, 'again').header).toEqual(decoded.header);
    outcomes.decoded++;
  }
  // Every case ran to an outcome (a hang would never get here; jest's timeout bounds the run).
  expect(outcomes.decoded + outcomes.refused).toBe(CASES);
  // The mix must exercise both sides and many distinct checks, or the fuzzer tests nothing.
  expect(outcomes.refused).toBeGreaterThan(CASES / 4);
  expect(outcomes.decoded).toBeGreaterThan(CASES / 50);
  expect(messages.size).toBeGreaterThan(Math.min(25, CASES / 20));
  if (process.env.FUZZ_CASES) console.log(JSON.stringify({ seed: SEED, ...outcomes, distinctRefusals: messages.size }));
});
