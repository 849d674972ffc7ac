/**
 * C structures laid out as a C compiler lays them out on x86_64 and arm64 (each field at the next
 * multiple of its alignment, the size rounded up to the largest alignment): enough for the fixed
 * KVM structures below, whose layouts test/unit/kvm-abi.test.ts checks against <linux/kvm.h>.
 */
type Scalar = 'uint8_t' | 'uint16_t' | 'uint32_t' | 'int32_t' | 'uint64_t';
const SCALAR_SIZE: Record<Scalar, number> = { uint8_t: 1, uint16_t: 2, uint32_t: 4, int32_t: 4, uint64_t: 8 };

interface ArrayType {
  kind: 'array';
  of: Scalar;
  length: number;
}

export interface StructType {
  kind: 'struct';
  name: string;
  size: number;
  align: number;
  fields: readonly { name: string; type: FieldType; offset: number }[];
}

type FieldType = Scalar | ArrayType | StructType;

const array = (of: Scalar, length: number): ArrayType => ({ kind: 'array', of, length });

function sizeAndAlign(t: FieldType): { size: number; align: number } {
  if (typeof t === 'string') return { size: SCALAR_SIZE[t], align: SCALAR_SIZE[t] };
  if (t.kind === 'array') return { size: SCALAR_SIZE[t.of] * t.length, align: SCALAR_SIZE[t.of] };
  return { size: t.size, align: t.align };
}

function struct(name: string, fields: Record<string, FieldType>): StructType {
  let offset = 0;
  let align = 1;
  const laid = Object.entries(fields).map(([field, type]) => {
    const f = sizeAndAlign(type);
    offset = Math.ceil(offset / f.align) * f.align;
    const at = offset;
    offset += f.size;
    align = Math.max(align, f.align);
    return { name: field, type, offset: at };
  });
  return { kind: 'struct', name, size: Math.ceil(offset / align) * align, align, fields: laid };
}

/**
 * The KVM structures fc-run exchanges with the kernel, with the layouts of
 * <linux/kvm.h> and <asm/kvm.h> on x86_64 (test/unit/kvm-abi.test.ts checks every size and offset
 * against the C headers). Hot paths read kvm_run through a DataView instead of decoding it.
 */
export const kvm_userspace_memory_region = struct('kvm_userspace_memory_region', {
  slot: 'uint32_t',
  flags: 'uint32_t',
  guest_phys_addr: 'uint64_t',
  memory_size: 'uint64_t',
  userspace_addr: 'uint64_t',
});

export const kvm_regs = struct('kvm_regs', {
  rax: 'uint64_t', rbx: 'uint64_t', rcx: 'uint64_t', rdx: 'uint64_t',
  rsi: 'uint64_t', rdi: 'uint64_t', rsp: 'uint64_t', rbp: 'uint64_t',
  r8: 'uint64_t', r9: 'uint64_t', r10: 'uint64_t', r11: 'uint64_t',
  r12: 'uint64_t', r13: 'uint64_t', r14: 'uint64_t', r15: 'uint64_t',
  rip: 'uint64_t', rflags: 'uint64_t',
});

export const kvm_segment = struct('kvm_segment', {
  base: 'uint64_t',
  limit: 'uint32_t',
  selector: 'uint16_t',
  type: 'uint8_t',
  present: 'uint8_t',
  dpl: 'uint8_t',
  db: 'uint8_t',
  s: 'uint8_t',
  l: 'uint8_t',
  g: 'uint8_t',
  avl: 'uint8_t',
  unusable: 'uint8_t',
  padding: 'uint8_t',
});

export const kvm_dtable = struct('kvm_dtable', {
  base: 'uint64_t',
  limit: 'uint16_t',
  padding: array('uint16_t', 3),
});

export const kvm_sregs = struct('kvm_sregs', {
  cs: kvm_segment, ds: kvm_segment, es: kvm_segment, fs: kvm_segment,
  gs: kvm_segment, ss: kvm_segment, tr: kvm_segment, ldt: kvm_segment,
  gdt: kvm_dtable, idt: kvm_dtable,
  cr0: 'uint64_t', cr2: 'uint64_t', cr3: 'uint64_t', cr4: 'uint64_t', cr8: 'uint64_t',
  efer: 'uint64_t',
  apic_base: 'uint64_t',
  interrupt_bitmap: array('uint64_t', 4),
});

export const kvm_fpu = struct('kvm_fpu', {
  fpr: array('uint8_t', 128),
  fcw: 'uint16_t',
  fsw: 'uint16_t',
  ftwx: 'uint8_t',
  pad1: 'uint8_t',
  last_opcode: 'uint16_t',
  last_ip: 'uint64_t',
  last_dp: 'uint64_t',
  xmm: array('uint8_t', 256),
  mxcsr: 'uint32_t',
  pad2: 'uint32_t',
});

export const kvm_msr_entry = struct('kvm_msr_entry', {
  index: 'uint32_t',
  reserved: 'uint32_t',
  data: 'uint64_t',
});

/** Header of struct kvm_msrs; the entries follow it in the same buffer. */
export const kvm_msrs = struct('kvm_msrs', { nmsrs: 'uint32_t', pad: 'uint32_t' });

export const kvm_cpuid_entry2 = struct('kvm_cpuid_entry2', {
  function: 'uint32_t',
  index: 'uint32_t',
  flags: 'uint32_t',
  eax: 'uint32_t',
  ebx: 'uint32_t',
  ecx: 'uint32_t',
  edx: 'uint32_t',
  padding: array('uint32_t', 3),
});

/** Header of struct kvm_cpuid2; the entries follow it in the same buffer. */
export const kvm_cpuid2 = struct('kvm_cpuid2', { nent: 'uint32_t', padding: 'uint32_t' });

export const kvm_lapic_state = struct('kvm_lapic_state', { regs: array('uint8_t', 1024) });

export const kvm_pit_config = struct('kvm_pit_config', {
  flags: 'uint32_t',
  pad: array('uint32_t', 15),
});

export const kvm_irqfd = struct('kvm_irqfd', {
  fd: 'uint32_t',
  gsi: 'uint32_t',
  flags: 'uint32_t',
  resamplefd: 'uint32_t',
  pad: array('uint8_t', 16),
});

export const kvm_ioeventfd = struct('kvm_ioeventfd', {
  datamatch: 'uint64_t',
  addr: 'uint64_t',
  len: 'uint32_t',
  fd: 'int32_t',
  flags: 'uint32_t',
  pad: array('uint8_t', 36),
});

export const kvm_irq_level = struct('kvm_irq_level', { irq: 'uint32_t', level: 'uint32_t' });

export const kvm_mp_state = struct('kvm_mp_state', { mp_state: 'uint32_t' });

/** Offsets into struct kvm_run (the vCPU's shared page) that the exit loop reads. */
export const KVM_RUN_OFFSETS = {
  request_interrupt_window: 0,
  immediate_exit: 1,
  exit_reason: 8,
  ready_for_interrupt_injection: 12,
  if_flag: 13,
  /** The exit-specific union. */
  exit: 32,
} as const;

export const sizeOf = (t: StructType): number => t.size;

export function offsetOf(t: StructType, field: string): number {
  const f = t.fields.find((x) => x.name === field);
  if (!f) throw new Error(`struct ${t.name} has no field ${field}`);
  return f.offset;
}

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

function readScalar(v: DataView, at: number, t: Scalar): number | bigint {
  switch (t) {
    case 'uint8_t':
      return v.getUint8(at);
    case 'uint16_t':
      return v.getUint16(at, true);
    case 'uint32_t':
      return v.getUint32(at, true);
    case 'int32_t':
      return v.getInt32(at, true);
    default: {
      const x = v.getBigUint64(at, true);
      return x <= MAX_SAFE ? Number(x) : x;
    }
  }
}

/** `parent`, `field` and `index` (an array's element) name the value in an error, built only then. */
function writeScalar(v: DataView, at: number, t: Scalar, x: unknown, parent: string, field: string, index = -1): void {
  if (x === undefined || x === null) return; // a field not given stays as it is
  if (typeof x !== 'number' && typeof x !== 'bigint') throw new TypeError(`${parent}.${field}${index >= 0 ? `[${index}]` : ''}: expected a number or bigint, got ${typeof x}`);
  if (t === 'uint64_t') v.setBigUint64(at, BigInt.asUintN(64, BigInt(x)), true);
  else {
    const n = Number(x);
    if (t === 'uint8_t') v.setUint8(at, n & 0xff);
    else if (t === 'uint16_t') v.setUint16(at, n & 0xffff, true);
    else if (t === 'uint32_t') v.setUint32(at, n >>> 0, true);
    else v.setInt32(at, n | 0, true);
  }
}

const TYPED: Partial<Record<Scalar, { new (b: ArrayBuffer, off: number, len: number): ArrayLike<number> }>> = { uint8_t: Uint8Array, uint16_t: Uint16Array, uint32_t: Uint32Array };

function decodeAt(v: DataView, at: number, t: FieldType): unknown {
  if (typeof t === 'string') return readScalar(v, at, t);
  if (t.kind === 'array') {
    const size = SCALAR_SIZE[t.of];
    const Typed = TYPED[t.of];
    if (Typed) {
      // A copy (the buffer decoded may be reused), as its own typed array.
      const copy = new ArrayBuffer(size * t.length);
      new Uint8Array(copy).set(new Uint8Array(v.buffer, v.byteOffset + at, size * t.length));
      return new Typed(copy, 0, t.length);
    }
    return Array.from({ length: t.length }, (_, i) => readScalar(v, at + i * size, t.of));
  }
  const out: Record<string, unknown> = {};
  for (const f of t.fields) out[f.name] = decodeAt(v, at + f.offset, f.type);
  return out;
}

function encodeAt(v: DataView, at: number, t: FieldType, x: unknown, parent: string, field: string): void {
  if (typeof t === 'string') return writeScalar(v, at, t, x, parent, field);
  if (x === undefined || x === null) return;
  if (typeof x !== 'object') throw new TypeError(`${parent}.${field}: expected ${t.kind === 'array' ? 'an array' : 'an object'}, got ${typeof x}`);
  if (t.kind === 'array') {
    const items = x as ArrayLike<unknown>;
    if (typeof items.length !== 'number' || items.length > t.length) throw new TypeError(`${parent}.${field}: expected at most ${t.length} elements`);
    if (t.of === 'uint8_t' && items instanceof Uint8Array) new Uint8Array(v.buffer, v.byteOffset + at, items.length).set(items);
    else for (let i = 0; i < items.length; i++) writeScalar(v, at + i * SCALAR_SIZE[t.of], t.of, items[i], parent, field, i);
    return;
  }
  const where = `${parent}.${field}`;
  const obj = x as Record<string, unknown>;
  for (const f of t.fields) encodeAt(v, at + f.offset, f.type, obj[f.name], where, f.name);
}

/**
 * The structure in `buf` as an object: 64-bit fields as numbers, or bigints beyond 2^53; arrays of
 * 8-, 16- and 32-bit values as typed arrays, of 64-bit values as arrays.
 */
export function decode(buf: Uint8Array, t: StructType): Record<string, unknown> {
  if (buf.length < t.size) throw new RangeError(`struct ${t.name} is ${t.size} bytes, the buffer ${buf.length}`);
  return decodeAt(new DataView(buf.buffer, buf.byteOffset, t.size), 0, t) as Record<string, unknown>;
}

/** `value` written into `buf` (at least the structure's size) with `t`'s layout; fields not given are left as they are. */
export function encode(buf: Uint8Array, t: StructType, value: unknown): void {
  if (buf.length < t.size) throw new RangeError(`struct ${t.name} is ${t.size} bytes, the buffer ${buf.length}`);
  const v = new DataView(buf.buffer, buf.byteOffset, t.size);
  if (value === null || typeof value !== 'object') throw new TypeError(`struct ${t.name}: expected an object, got ${value === null ? 'null' : typeof value}`);
  for (const f of t.fields) encodeAt(v, f.offset, f.type, (value as Record<string, unknown>)[f.name], t.name, f.name);
}
