import * as fs from 'node:fs';
import * as path from 'node:path';
import { planSpec } from '../../src/boot';
import type { BootPlan } from '../../src/boot/plan';
import * as L from '../../src/boot/layout';
import { prepareGuestMemory } from '../../src/boot/structures';
import { SpecInvalidError } from '../../src/config/issues';
import type { LoadedSpec } from '../../src/config/validate';
import { FcRunError } from '../../src/errors';
import { GuestMemory } from '../../src/kvm/memory';
import { buildBzImage, buildElf, tinyGuestElf, tinyPvh, tinyVmlinux } from '../helpers/images';
import { load, Workspace } from '../helpers/specs';
import { fuzzCases, fuzzSeed, Rng } from './rng';

/**
 * Kernel and initrd images with corrupt headers, run through the planner and then through the
 * loader that copies them into guest memory (an anonymous mapping: no /dev/kvm needed). Every case
 * must end in a refusal that names a code, or in a plan whose kernel lies in RAM above the boot
 * structures, entered inside a loaded segment, and whose load leaves exactly the file's bytes there.
 *
 * Long run: FUZZ_CASES=20000 [FUZZ_SEED=n] [FUZZ_BZIMAGE=/path/to/a/real/bzImage] npx jest test/fuzz/kernel.fuzz.test.ts
 */
const CASES = fuzzCases(400);
const SEED = fuzzSeed(0x6b65726e);
const ROOT = path.resolve(__dirname, '..', '..');

/**
 * Cases whose kernel and initrd would touch more guest memory than this, or whose guest memory is
 * larger than LOAD_MEM_LIMIT_MIB, are planned but not loaded: page faults dominate a loaded
 * case's time on a busy machine, and the planner's checks are what keeps large cases in bounds.
 */
const LOAD_LIMIT = 12 * L.MiB;
const LOAD_MEM_LIMIT_MIB = 1024;

type Field = { off: number; width: 1 | 2 | 4 | 8 };

const ELF_FIELDS: Field[] = [
  { off: 4, width: 1 }, // class
  { off: 5, width: 1 }, // data
  { off: 16, width: 2 }, // type
  { off: 18, width: 2 }, // machine
  { off: 24, width: 8 }, // entry
  { off: 32, width: 8 }, // phoff
  { off: 54, width: 2 }, // phentsize
  { off: 56, width: 2 }, // phnum
];
const PHDR_FIELDS: Field[] = [
  { off: 0, width: 4 }, // type
  { off: 8, width: 8 }, // offset
  { off: 24, width: 8 }, // paddr
  { off: 32, width: 8 }, // filesz
  { off: 40, width: 8 }, // memsz
];
const BZ_FIELDS: Field[] = [
  { off: 0x1f1, width: 1 }, // setup_sects
  { off: 0x1f4, width: 4 }, // syssize
  { off: 0x1fe, width: 2 }, // boot_flag
  { off: 0x201, width: 1 }, // jump offset: the setup header's length
  { off: 0x206, width: 2 }, // version
  { off: 0x211, width: 1 }, // loadflags
  { off: 0x22c, width: 4 }, // initrd_addr_max
  { off: 0x230, width: 4 }, // kernel_alignment
  { off: 0x236, width: 2 }, // xloadflags
  { off: 0x238, width: 4 }, // cmdline_size
  { off: 0x258, width: 8 }, // pref_address
  { off: 0x260, width: 4 }, // init_size
];

interface Seed {
  name: string;
  image: Buffer;
  fields: Field[];
}

function seeds(): Seed[] {
  const elfFields = (img: Buffer): Field[] => {
    const phoff = Number(img.readBigUInt64LE(32));
    const phnum = img.readUInt16LE(56);
    const fields = [...ELF_FIELDS];
    for (let i = 0; i < phnum; i++) {
      const ph = phoff + i * 56;
      for (const f of PHDR_FIELDS) fields.push({ off: ph + f.off, width: f.width });
      // Notes: the first one's sizes and type, and the Xen note after it (images.ts writes two).
      if (img.readUInt32LE(ph) === 4) {
        const note = Number(img.readBigUInt64LE(ph + 8));
        for (const off of [0, 4, 8, 20, 24, 28, 36]) fields.push({ off: note + off, width: 4 });
      }
    }
    return fields;
  };
  const elf = (name: string, image: Buffer): Seed => ({ name, image, fields: elfFields(image) });
  const list: Seed[] = [
    elf('vmlinux', tinyVmlinux()),
    elf('pvh', tinyPvh()),
    elf('tiny', tinyGuestElf([0xeb, 0xfe])),
    elf('two-segments', buildElf({ entry: 0x200000, segments: [{ paddr: 0x200000, data: Buffer.alloc(256, 0x90) }, { paddr: 0x400000, data: Buffer.alloc(64, 1), memsz: 0x3000 }] })),
    elf('pvh-two-segments', buildElf({ entry: 0x200000, pvhEntry: 0x400010, segments: [{ paddr: 0x200000, data: Buffer.alloc(128) }, { paddr: 0x400000, data: Buffer.alloc(64) }] })),
    { name: 'bzImage', image: buildBzImage({ initSize: 0x200000 }), fields: BZ_FIELDS },
    { name: 'bzImage-setup0', image: buildBzImage({ setupSects: 0, initSize: 0x100000, payloadBytes: 4096 }), fields: BZ_FIELDS },
  ];
  for (const probe of ['probe.elf', 'probe-linux64.elf']) {
    const file = path.join(ROOT, 'guest', 'probe', 'build', probe);
    if (fs.existsSync(file)) list.push(elf(probe, fs.readFileSync(file)));
  }
  // A real bzImage's setup header (the one `npm run build:linux` makes, or FUZZ_BZIMAGE), its
  // payload cut to 64 KiB with syssize to match, so each case writes a small file.
  for (const file of [path.join(ROOT, 'guest', 'linux', 'build', 'bzImage'), process.env.FUZZ_BZIMAGE]) {
    if (!file || !fs.existsSync(file)) continue;
    const whole = fs.readFileSync(file);
    const setupBytes = ((whole[0x1f1] || 4) + 1) * 512;
    const image = Buffer.from(whole.subarray(0, setupBytes + 0x10000));
    image.writeUInt32LE(0x10000 / 16, 0x1f4);
    list.push({ name: path.basename(file), image, fields: BZ_FIELDS });
  }
  return list;
}

/** Values that sit on or next to a boundary the loader must respect. */
function extreme(rng: Rng, width: number, fileSize: number): bigint {
  const max = (1n << BigInt(width * 8)) - 1n;
  const candidates = [
    0n, 1n, 2n, 55n, 56n, 57n, 64n, 0x1ffn, 0x200n, 0x201n, 0x7fn, 0x80n, 0xffn, 0x100n,
    BigInt(fileSize), BigInt(fileSize) - 1n, BigInt(fileSize) + 1n,
    0xfffffn, 0x100000n, 0x1000000n, 0x3fffffffn, 0x40000000n, 0xbfffffffn, 0xc0000000n, 0xfec00000n,
    0x7fffffffn, 0x80000000n, 0xffffffffn, 0x100000000n, 0x1fffffffffffffn, 0x20000000000000n,
    0x8000000000000000n, 0xffffffff80000000n, max, max - 1n, BigInt(rng.int(2 ** 31)), BigInt(rng.int(0x10000)),
  ];
  return rng.pick(candidates) & max;
}

function writeField(buf: Buffer, f: Field, v: bigint): void {
  if (f.off + f.width > buf.length) return;
  if (f.width === 1) buf[f.off] = Number(v);
  else if (f.width === 2) buf.writeUInt16LE(Number(v), f.off);
  else if (f.width === 4) buf.writeUInt32LE(Number(v), f.off);
  else buf.writeBigUInt64LE(v, f.off);
}

function mutate(rng: Rng, seed: Seed): { image: Buffer; did: string[] } {
  let image = Buffer.from(seed.image);
  const did: string[] = [];
  const n = 1 + rng.int(3);
  for (let i = 0; i < n; i++) {
    const kind = rng.int(10);
    if (kind < 5) {
      const f = rng.pick(seed.fields);
      const v = extreme(rng, f.width, image.length);
      writeField(image, f, v);
      did.push(`field@0x${f.off.toString(16)}=0x${v.toString(16)}`);
    } else if (kind < 7) {
      // Most cuts land in or just past a header field, where every read must still be bounds-checked.
      const f = rng.pick(seed.fields);
      const at = Math.min(image.length, rng.bool(0.6) ? f.off + rng.int(f.width + 1) : rng.int(image.length + 1));
      image = image.subarray(0, at);
      did.push(`truncate@${at}`);
    } else if (kind < 9) {
      const at = rng.int(Math.min(image.length, 0x300) + 1);
      if (at < image.length) image[at] ^= 1 << rng.int(8);
      did.push(`flip@0x${at.toString(16)}`);
    } else {
      const extra = rng.bool() ? Buffer.alloc(rng.int(8192)) : rng.bytes(rng.int(1024));
      image = Buffer.concat([image, extra]);
      did.push(`append ${extra.length}`);
    }
  }
  return { image, did };
}

const MEM_SIZES = [16, 24, 32, 64, 128, 1024, 3072, 4096];
const INITRD_SIZES = [-1, -1, 0, 1, 4095, 4096, 0x10000, 4 << 20, 40 << 20, 3 * 2 ** 30, 5 * 2 ** 30];

interface Outcome {
  planned: number;
  loaded: number;
  refused: Map<string, number>;
}

/** Every address the plan puts the kernel and initrd at, checked against the layout's rules. */
function checkPlan(p: BootPlan, kernelFile: Buffer, initrdSize: number): void {
  const lowEnd = Math.min(p.memory.sizeMib * L.MiB, L.MMIO_GAP_START);
  const segs = p.kernel.segments;
  expect(segs.length).toBeGreaterThan(0);
  for (const s of segs) {
    for (const v of [s.guestAddr, s.memSize, s.fileOffset, s.fileSize]) expect(Number.isSafeInteger(v) && v >= 0).toBe(true);
    expect(s.fileSize).toBeLessThanOrEqual(s.memSize);
    expect(s.fileOffset + s.fileSize).toBeLessThanOrEqual(kernelFile.length);
    // Above the boot structures (all below 1 MiB) and inside RAM below the MMIO gap.
    expect(s.guestAddr).toBeGreaterThanOrEqual(L.HIMEM_START);
    expect(s.guestAddr + s.memSize).toBeLessThanOrEqual(lowEnd);
  }
  const sorted = [...segs].sort((a, b) => a.guestAddr - b.guestAddr);
  for (let i = 1; i < sorted.length; i++) expect(sorted[i - 1].guestAddr + sorted[i - 1].memSize).toBeLessThanOrEqual(sorted[i].guestAddr);
  expect(segs.some((s) => p.kernel.entry >= s.guestAddr && p.kernel.entry < s.guestAddr + s.memSize)).toBe(true);
  if (p.kernel.entryMode === 'long64') expect(p.kernel.end).toBeLessThanOrEqual(p.boot.identityMapped);
  else expect(p.kernel.entry).toBeLessThan(2 ** 32);
  const structures = [p.boot.gdt, p.boot.idt, p.boot.pml4, p.boot.pdpt, p.boot.pd, p.boot.zeroPage, p.boot.pvhStartInfo, p.boot.cmdline.start + p.boot.cmdline.size, p.boot.mptable.start + p.boot.mptable.size];
  for (const a of structures) expect(a).toBeLessThanOrEqual(L.HIMEM_START);
  expect(Buffer.byteLength(p.cmdline) + 1).toBeLessThanOrEqual(p.boot.cmdline.size);
  if (p.initrd) {
    expect(p.initrd.size).toBe(initrdSize);
    expect(p.initrd.guestAddr % L.PAGE_SIZE).toBe(0);
    expect(p.initrd.guestAddr).toBeGreaterThanOrEqual(L.HIMEM_START);
    expect(p.initrd.guestAddr + p.initrd.size).toBeLessThanOrEqual(lowEnd);
    for (const s of segs) expect(p.initrd.guestAddr >= s.guestAddr + s.memSize || p.initrd.guestAddr + p.initrd.size <= s.guestAddr).toBe(true);
  }
}

/**
 * Loads the plan into guest memory and checks each segment holds the file's bytes, then zeros.
 * Fresh memory (all zeros, as a launch has it) is loaded without zeroing the segments' tails; and
 * memory whose segment ranges hold junk first is loaded with `memoryIsZero` false: their tails
 * must be zeroed.
 */
function checkLoad(p: BootPlan, kernelFile: Buffer, initrd: Buffer | undefined, dirty: boolean): void {
  const mem = GuestMemory.allocate(p.memory.regions);
  try {
    if (dirty) for (const s of p.kernel.segments) mem.fill(s.guestAddr, s.memSize, 0xa5);
    prepareGuestMemory(mem, p, !dirty);
    for (const s of p.kernel.segments) {
      const got = Buffer.alloc(s.memSize);
      mem.read(s.guestAddr, got);
      const want = Buffer.alloc(s.memSize);
      kernelFile.copy(want, 0, s.fileOffset, s.fileOffset + s.fileSize);
      // Equal bytes after every boot structure was written: nothing the loader wrote later landed on the kernel.
      expect(got.equals(want)).toBe(true);
    }
    if (p.initrd && initrd) {
      const got = Buffer.alloc(p.initrd.size);
      mem.read(p.initrd.guestAddr, got);
      expect(got.equals(initrd)).toBe(true);
    }
  } finally {
    mem.release();
  }
}

/** Files and loaded specs the cases share: one kernel file and one initrd, rewritten per case. */
class Bench {
  readonly kernelPath: string;
  readonly initrdPath: string;
  private readonly specs = new Map<string, LoadedSpec>();
  readonly outcome: Outcome = { planned: 0, loaded: 0, refused: new Map() };
  slowestMs = 0;

  constructor(private readonly ws: Workspace) {
    this.kernelPath = path.join(ws.dir, 'fuzz-kernel');
    this.initrdPath = path.join(ws.dir, 'fuzz-initrd');
  }

  /** Validation runs once per machine shape; planning re-reads the kernel and initrd every time. */
  spec(mem: number, withInitrd: boolean, vcpus: number): LoadedSpec {
    const key = `${mem}/${withInitrd}/${vcpus}`;
    let loaded = this.specs.get(key);
    if (!loaded) {
      loaded = load(this.ws, {
        'boot-source': { kernel_image_path: 'fuzz-kernel', boot_args: 'console=ttyS0 reboot=k panic=1', ...(withInitrd ? { initrd_path: 'fuzz-initrd' } : {}) },
        'machine-config': { vcpu_count: vcpus, mem_size_mib: mem },
      });
      this.specs.set(key, loaded);
    }
    return loaded;
  }

  /** Large initrds are sparse: their size is what the planner sees, their bytes stay unread. */
  writeInitrd(rng: Rng, size: number): Buffer | undefined {
    if (size > LOAD_LIMIT) {
      fs.writeFileSync(this.initrdPath, '');
      fs.truncateSync(this.initrdPath, size);
      return undefined;
    }
    const initrd = Buffer.alloc(size, 0x5a);
    rng.bytes(Math.min(size, 64)).copy(initrd);
    fs.writeFileSync(this.initrdPath, initrd);
    return initrd;
  }

  /** One case; throws an Error naming the case when an invariant breaks. */
  run(rng: Rng, c: number, all: Seed[]): void {
    const seed = rng.pick(all);
    const { image, did } = rng.bool(0.1) ? { image: seed.image, did: ['unchanged'] } : mutate(rng, seed);
    const mem = rng.pick(MEM_SIZES);
    const initrdSize = rng.pick(INITRD_SIZES);
    const vcpus = 1 + rng.int(4);
    const label = `case ${c} (${seed.name}: ${did.join(', ')}; ${mem} MiB, initrd ${initrdSize})`;
    fs.writeFileSync(this.kernelPath, image);
    const initrd = initrdSize >= 0 ? this.writeInitrd(rng, initrdSize) : undefined;
    const loaded = this.spec(mem, initrdSize >= 0, vcpus);

    const started = process.hrtime.bigint();
    let p: BootPlan | undefined;
    try {
      p = planSpec(loaded).plan;
    } catch (err) {
      if (!(err instanceof SpecInvalidError)) throw new Error(`${label}: planning threw ${(err as Error)?.stack ?? err}`);
      const errors = err.issues.filter((i) => i.severity === 'error');
      if (errors.length === 0) throw new Error(`${label}: refused without an error issue`);
      for (const e of errors) {
        if (!/^[a-z0-9-]+$/.test(e.code) || e.message.length === 0 || /NaN|undefined|Infinity/.test(e.message + (e.hint ?? ''))) {
          throw new Error(`${label}: unclear refusal ${JSON.stringify(e)}`);
        }
        this.outcome.refused.set(e.code, (this.outcome.refused.get(e.code) ?? 0) + 1);
      }
    }
    if (p) {
      this.outcome.planned++;
      try {
        checkPlan(p, image, initrdSize);
      } catch (err) {
        throw new Error(`${label}: plan breaks a rule: ${(err as Error).message}\n${JSON.stringify(p.kernel)} ${JSON.stringify(p.initrd)}`);
      }
      const touched = p.kernel.segments.reduce((n, s) => n + s.memSize, 0) + (p.initrd?.size ?? 0);
      if (touched <= LOAD_LIMIT && p.memory.sizeMib <= LOAD_MEM_LIMIT_MIB) {
        try {
          checkLoad(p, image, initrd, this.outcome.loaded % 2 === 1);
        } catch (err) {
          const detail = err instanceof FcRunError ? `${err.code}: ${err.message}` : (err as Error).message;
          throw new Error(`${label}: loading the plan failed: ${detail}\n${JSON.stringify(p.kernel)} ${JSON.stringify(p.initrd)}`);
        }
        this.outcome.loaded++;
      }
    }
    this.slowestMs = Math.max(this.slowestMs, Number(process.hrtime.bigint() - started) / 1e6);
  }
}

describe(`kernel header fuzzer (${CASES} cases, seed ${SEED})`, () => {
  let ws: Workspace;
  beforeAll(() => {
    ws = new Workspace();
  });
  afterAll(() => ws.remove());

  test('every corrupt kernel or initrd is refused with a code, or planned and loaded inside the rules', () => {
    const rng = new Rng(SEED);
    const all = seeds();
    const bench = new Bench(ws);
    const failures: string[] = [];
    for (let c = 0; c < CASES; c++) {
      try {
        bench.run(rng, c, all);
      } catch (err) {
        failures.push((err as Error).message);
      }
    }
    const { outcome } = bench;
    // A summary for long runs (FUZZ_CASES=...): how the cases ended.
    console.log(
      `kernel fuzzer: ${CASES} cases, ${failures.length} failed, ${outcome.planned} planned, ${outcome.loaded} loaded into guest memory; ` +
        `slowest case ${bench.slowestMs.toFixed(1)} ms; refusals ${JSON.stringify(Object.fromEntries([...outcome.refused].sort()))}`,
    );
    expect(failures.slice(0, 20)).toEqual([]);
    // The seeds are valid and mutations often leave the headers intact: both outcomes must occur.
    expect(outcome.planned).toBeGreaterThan(0);
    expect(outcome.refused.size).toBeGreaterThan(0);
  }, 600_000);
});
