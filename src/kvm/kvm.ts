import {
  addressOf,
  Pointer,
  errno,
  MAP_ANONYMOUS,
  MAP_PRIVATE,
  MAP_SHARED,
  O_CLOEXEC,
  O_RDWR,
  PROT_READ,
  PROT_WRITE,
  sys,
  SyscallError,
  viewOf,
} from './libc';
import { HotExits, nativeKvmRun, RunTime, runTimeAddress } from './vcpu-threads';
import { KVM, KVM_CAP, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY, KvmIoctl } from './ioctls';
import {
  kvm_cpuid2,
  kvm_cpuid_entry2,
  kvm_fpu,
  kvm_ioeventfd,
  kvm_irqfd,
  kvm_lapic_state,
  kvm_msr_entry,
  kvm_msrs,
  kvm_pit_config,
  kvm_regs,
  kvm_sregs,
  kvm_userspace_memory_region,
  sizeOf,
  StructType,
  encode as encodeStruct,
  decode,
} from './structs';


export interface CpuidEntry {
  function: number;
  index: number;
  flags: number;
  eax: number;
  ebx: number;
  ecx: number;
  edx: number;
}

export type Regs = Record<'rax' | 'rbx' | 'rcx' | 'rdx' | 'rsi' | 'rdi' | 'rsp' | 'rbp' | 'r8' | 'r9' | 'r10' | 'r11' | 'r12' | 'r13' | 'r14' | 'r15' | 'rip' | 'rflags', bigint>;

/** A 64-bit field as decoded (structs.ts): a number when it fits 2^53, a bigint otherwise. */
export type U64 = number | bigint;

export interface Segment {
  base: U64;
  limit: number;
  selector: number;
  type: number;
  present: number;
  dpl: number;
  db: number;
  s: number;
  l: number;
  g: number;
  avl: number;
  unusable: number;
  padding: number;
}

export interface Sregs {
  cs: Segment; ds: Segment; es: Segment; fs: Segment; gs: Segment; ss: Segment; tr: Segment; ldt: Segment;
  gdt: { base: U64; limit: number; padding: number[] };
  idt: { base: U64; limit: number; padding: number[] };
  cr0: U64; cr2: U64; cr3: U64; cr4: U64; cr8: U64; efer: U64; apic_base: U64;
  interrupt_bitmap: U64[];
}

export interface Fpu {
  fpr: number[]; fcw: number; fsw: number; ftwx: number; pad1: number; last_opcode: number;
  last_ip: U64; last_dp: U64; xmm: number[]; mxcsr: number; pad2: number;
}

/** 64-bit fields decode as numbers when they fit; normalize so callers always get bigint. */
function big<T>(v: T): T {
  if (typeof v === 'number') return BigInt(v) as T;
  if (Array.isArray(v)) return v as T;
  if (v && typeof v === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) out[k] = typeof x === 'number' && /^(base|cr\d|efer|apic_base|last_ip|last_dp|r[a-z0-9]+)$/.test(k) ? BigInt(x) : x;
    return out as T;
  }
  return v;
}

function encode(type: StructType, value: unknown): Buffer {
  const buf = Buffer.alloc(sizeOf(type));
  encodeStruct(buf, type, value);
  return buf;
}

/**
 * ioctl with the request's name in any error. A request interrupted by a signal (EINTR: a profiler's
 * SIGPROF, a SIGCHLD, the vCPU kick) did nothing and is made again; KVM_RUN has its own path
 * (Vcpu.run), where EINTR means "look at the control words".
 */
export function ioctl(fd: number, name: KvmIoctl, arg: number | Buffer, context?: string): number {
  for (let attempt = 0; ; attempt++) {
    const r = typeof arg === 'number' ? sys.ioctlInt(fd, KVM[name], arg) : sys.ioctlPtr(fd, KVM[name], arg);
    if (r >= 0) return r;
    const e = errno();
    if (e !== 4 || attempt >= 1000) throw new SyscallError(`ioctl(KVM_${name})`, e, context);
  }
}

/** /dev/kvm: the system-wide handle. */
export class Kvm {
  readonly fd: number;

  constructor(path = '/dev/kvm') {
    const fd = sys.open(path, O_RDWR | O_CLOEXEC, 0);
    if (fd < 0) {
      const e = errno();
      throw new SyscallError(`open(${path})`, e, e === 2 ? 'this host has no KVM; fc-run needs /dev/kvm' : e === 13 ? 'run as a user with access to /dev/kvm' : undefined);
    }
    this.fd = fd;
    const api = ioctl(fd, 'GET_API_VERSION', 0);
    if (api !== 12) throw new SyscallError('KVM_GET_API_VERSION', 22, `KVM API ${api}, expected 12`);
  }

  checkExtension(cap: number): number {
    return ioctl(this.fd, 'CHECK_EXTENSION', cap);
  }

  vcpuMmapSize(): number {
    return ioctl(this.fd, 'GET_VCPU_MMAP_SIZE', 0);
  }

  /** Most vCPUs a VM may have on this host. */
  maxVcpus(): number {
    return this.checkExtension(KVM_CAP.MAX_VCPUS) || this.checkExtension(KVM_CAP.NR_VCPUS) || 4;
  }

  supportedCpuid(): CpuidEntry[] {
    const entrySize = sizeOf(kvm_cpuid_entry2);
    const buf = Buffer.alloc(sizeOf(kvm_cpuid2) + KVM_MAX_CPUID_ENTRIES * entrySize);
    buf.writeUInt32LE(KVM_MAX_CPUID_ENTRIES, 0);
    ioctl(this.fd, 'GET_SUPPORTED_CPUID', buf);
    return decodeCpuid(buf);
  }

  createVm(): Vm {
    return new Vm(this, ioctl(this.fd, 'CREATE_VM', 0));
  }

  close(): void {
    sys.close(this.fd);
  }
}

function decodeCpuid(buf: Buffer): CpuidEntry[] {
  const n = buf.readUInt32LE(0);
  const entrySize = sizeOf(kvm_cpuid_entry2);
  const out: CpuidEntry[] = [];
  for (let i = 0; i < n; i++) {
    const o = sizeOf(kvm_cpuid2) + i * entrySize;
    out.push({
      function: buf.readUInt32LE(o),
      index: buf.readUInt32LE(o + 4),
      flags: buf.readUInt32LE(o + 8),
      eax: buf.readUInt32LE(o + 12),
      ebx: buf.readUInt32LE(o + 16),
      ecx: buf.readUInt32LE(o + 20),
      edx: buf.readUInt32LE(o + 24),
    });
  }
  return out;
}

export class Vm {
  constructor(
    readonly kvm: Kvm,
    readonly fd: number,
  ) {}

  /** `flags`: KVM_MEM_LOG_DIRTY_PAGES to have KVM log the guest's writes to the slot. */
  setUserMemoryRegion(slot: number, guestPhysAddr: number, size: number, hostAddr: bigint, flags = 0): void {
    ioctl(this.fd, 'SET_USER_MEMORY_REGION', encode(kvm_userspace_memory_region, { slot, flags, guest_phys_addr: guestPhysAddr, memory_size: size, userspace_addr: hostAddr }), `slot ${slot} at 0x${guestPhysAddr.toString(16)}, ${size} bytes`);
  }

  /**
   * KVM_GET_DIRTY_LOG: the pages of slot `slot` (of `size` bytes) the guest wrote since the last
   * call, one byte per page (1 = written); KVM clears its log as it answers.
   */
  dirtyLog(slot: number, size: number): Uint8Array {
    const pages = Math.ceil(size / 4096);
    // KVM writes the bitmap through a pointer: native memory, not a movable JavaScript buffer.
    const bytes = Math.ceil(Math.ceil(pages / 64) * 8 / 4096) * 4096;
    const ptr = sys.mmap(null, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    const addr = addressOf(ptr);
    if (addr === 0xffffffffffffffffn) throw new SyscallError('mmap(dirty bitmap)', errno());
    try {
      const arg = Buffer.alloc(16);
      arg.writeUInt32LE(slot, 0);
      arg.writeBigUInt64LE(addr, 8);
      ioctl(this.fd, 'GET_DIRTY_LOG', arg, `slot ${slot}`);
      const bitmap = new Uint8Array(viewOf(ptr, bytes));
      const out = new Uint8Array(pages);
      for (let p = 0; p < pages; p++) if (bitmap[p >> 3] & (1 << (p & 7))) out[p] = 1;
      return out;
    } finally {
      sys.munmap(ptr, bytes);
    }
  }

  setTssAddr(addr: number): void {
    ioctl(this.fd, 'SET_TSS_ADDR', addr);
  }

  /** In-kernel PIC, IOAPIC and LAPICs. */
  createIrqchip(): void {
    ioctl(this.fd, 'CREATE_IRQCHIP', 0);
  }

  createPit2(): void {
    ioctl(this.fd, 'CREATE_PIT2', encode(kvm_pit_config, { flags: KVM_PIT_SPEAKER_DUMMY, pad: new Array(15).fill(0) }));
  }

  /** Injects interrupts on `gsi` whenever `eventFd` is written. */
  registerIrqfd(eventFd: number, gsi: number): void {
    ioctl(this.fd, 'IRQFD', encode(kvm_irqfd, { fd: eventFd, gsi, flags: 0, resamplefd: 0, pad: new Array(16).fill(0) }), `gsi ${gsi}`);
  }

  /** Signals `eventFd` on a guest write to `addr` instead of exiting to user space. */
  registerIoeventfd(eventFd: number, addr: number, len: number, flags: number, datamatch = 0): void {
    ioctl(this.fd, 'IOEVENTFD', encode(kvm_ioeventfd, { datamatch, addr, len, fd: eventFd, flags, pad: new Array(36).fill(0) }), `at 0x${addr.toString(16)}`);
  }


  createVcpu(id: number): Vcpu {
    const fd = ioctl(this.fd, 'CREATE_VCPU', id, `vCPU ${id}`);
    return new Vcpu(id, fd, this.kvm.vcpuMmapSize());
  }
}

export class Vcpu {
  /** The shared kvm_run page, mapped by whoever runs this vCPU (see mapRun), and its address. */
  private runPage: ArrayBuffer | undefined;
  private runPageAt = 0;

  constructor(
    readonly id: number,
    readonly fd: number,
    readonly mmapSize: number,
  ) {}

  /** Maps kvm_run; call it on the thread that runs the vCPU. */
  mapRun(): ArrayBuffer {
    if (this.runPage) return this.runPage;
    const ptr = sys.mmap(null, this.mmapSize, PROT_READ | PROT_WRITE, MAP_SHARED, this.fd, 0);
    if (addressOf(ptr) === 0xffffffffffffffffn) throw new SyscallError('mmap(kvm_run)', errno(), `vCPU ${this.id}`);
    this.runPage = viewOf(ptr, this.mmapSize);
    this.runPageAt = Number(addressOf(ptr));
    return this.runPage;
  }

  /** The address of this thread's mapping of kvm_run (mapped now if it was not). */
  runPageAddress(): number {
    this.mapRun();
    return this.runPageAt;
  }

  /**
   * KVM_RUN through the native library (once {@link countRunTime} or {@link useHotExits} asked for
   * it): the address of the counter it adds to (0: none) and the exits it handles itself.
   */
  private native?: { run: (fd: number, runNsAddress: number, hot: Pointer | null) => number; runNsAddress: number; hot: Pointer | null };

  /**
   * From now on {@link run} adds this thread's CPU time inside KVM_RUN to `into[0]` (the guest's
   * share of fc-run's CPU time). Only where the native library is built.
   */
  countRunTime(into: RunTime): void {
    this.native = { run: nativeKvmRun(), hot: null, ...this.native, runNsAddress: runTimeAddress(into) };
  }

  /** From now on {@link run} lets `hot` handle its exits (and enters the guest again after them). */
  useHotExits(hot: HotExits): void {
    this.native = { run: nativeKvmRun(), runNsAddress: 0, ...this.native, hot: hot.ptr };
  }

  /** KVM_RUN; returns false when interrupted by a signal (EINTR), throws on any other failure. */
  run(): boolean {
    const n = this.native;
    const r = n ? n.run(this.fd, n.runNsAddress, n.hot) : sys.ioctlInt(this.fd, KVM.RUN, 0);
    if (r < 0) {
      const e = errno();
      if (e === 4 || e === 11) return false;
      throw new SyscallError('ioctl(KVM_RUN)', e, `vCPU ${this.id}`);
    }
    return true;
  }

  getRegs(): Regs {
    const buf = Buffer.alloc(sizeOf(kvm_regs));
    ioctl(this.fd, 'GET_REGS', buf);
    return big(decode(buf, kvm_regs) as unknown as Regs);
  }

  setRegs(regs: Regs): void {
    ioctl(this.fd, 'SET_REGS', encode(kvm_regs, regs));
  }

  getSregs(): Sregs {
    const buf = Buffer.alloc(sizeOf(kvm_sregs));
    ioctl(this.fd, 'GET_SREGS', buf);
    return decode(buf, kvm_sregs) as unknown as Sregs;
  }

  setSregs(sregs: Sregs): void {
    ioctl(this.fd, 'SET_SREGS', encode(kvm_sregs, sregs));
  }

  getFpu(): Fpu {
    const buf = Buffer.alloc(sizeOf(kvm_fpu));
    ioctl(this.fd, 'GET_FPU', buf);
    return decode(buf, kvm_fpu) as unknown as Fpu;
  }

  setFpu(fpu: Fpu): void {
    ioctl(this.fd, 'SET_FPU', encode(kvm_fpu, fpu));
  }

  /** Reads MSRs; an MSR KVM does not know is an error naming it. */
  getMsrs(indices: number[]): bigint[] {
    const entrySize = sizeOf(kvm_msr_entry);
    const buf = Buffer.alloc(sizeOf(kvm_msrs) + indices.length * entrySize);
    buf.writeUInt32LE(indices.length, 0);
    indices.forEach((index, i) => buf.writeUInt32LE(index, sizeOf(kvm_msrs) + i * entrySize));
    const got = ioctl(this.fd, 'GET_MSRS', buf);
    if (got !== indices.length) throw new SyscallError('ioctl(KVM_GET_MSRS)', 22, `read ${got} of ${indices.length} MSRs; MSR 0x${indices[got].toString(16)} is not supported by KVM`);
    return indices.map((_, i) => buf.readBigUInt64LE(sizeOf(kvm_msrs) + i * entrySize + 8));
  }

  setMsrs(entries: { index: number; data: bigint }[]): void {
    const entrySize = sizeOf(kvm_msr_entry);
    const buf = Buffer.alloc(sizeOf(kvm_msrs) + entries.length * entrySize);
    buf.writeUInt32LE(entries.length, 0);
    entries.forEach((e, i) => {
      const o = sizeOf(kvm_msrs) + i * entrySize;
      buf.writeUInt32LE(e.index, o);
      buf.writeBigUInt64LE(e.data, o + 8);
    });
    const set = ioctl(this.fd, 'SET_MSRS', buf);
    if (set !== entries.length) {
      const failed = entries[set];
      throw new SyscallError('ioctl(KVM_SET_MSRS)', 22, `set ${set} of ${entries.length} MSRs; MSR 0x${failed.index.toString(16)} was refused`);
    }
  }

  setCpuid(entries: CpuidEntry[]): void {
    const entrySize = sizeOf(kvm_cpuid_entry2);
    const buf = Buffer.alloc(sizeOf(kvm_cpuid2) + entries.length * entrySize);
    buf.writeUInt32LE(entries.length, 0);
    entries.forEach((e, i) => {
      const o = sizeOf(kvm_cpuid2) + i * entrySize;
      buf.writeUInt32LE(e.function, o);
      buf.writeUInt32LE(e.index, o + 4);
      buf.writeUInt32LE(e.flags, o + 8);
      buf.writeUInt32LE(e.eax >>> 0, o + 12);
      buf.writeUInt32LE(e.ebx >>> 0, o + 16);
      buf.writeUInt32LE(e.ecx >>> 0, o + 20);
      buf.writeUInt32LE(e.edx >>> 0, o + 24);
    });
    ioctl(this.fd, 'SET_CPUID2', buf);
  }

  /** The CPUID this vCPU was given (KVM_GET_CPUID2), to check what KVM kept of a template. */
  getCpuid(): CpuidEntry[] {
    const buf = Buffer.alloc(sizeOf(kvm_cpuid2) + KVM_MAX_CPUID_ENTRIES * sizeOf(kvm_cpuid_entry2));
    buf.writeUInt32LE(KVM_MAX_CPUID_ENTRIES, 0);
    ioctl(this.fd, 'GET_CPUID2', buf);
    return decodeCpuid(buf);
  }

  getLapic(): Buffer {
    const buf = Buffer.alloc(sizeOf(kvm_lapic_state));
    ioctl(this.fd, 'GET_LAPIC', buf);
    return buf;
  }

  setLapic(state: Buffer): void {
    ioctl(this.fd, 'SET_LAPIC', state);
  }
}
