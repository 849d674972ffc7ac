import { FcRunError } from '../errors';
import { KVM, KVM_CAP } from './ioctls';
import { ioctl, Kvm, Vcpu, Vm } from './kvm';
import { errno, sys, SyscallError } from './libc';
import { CPUID_MAX_ENTRIES, IRQCHIP_IDS, STATE_SIZES, VcpuState, VmState, XSAVE_MIN } from './state-abi';

/**
 * Saving and restoring the KVM half of a snapshot: every vCPU's registers, FPU/XSAVE state, local
 * APIC, MSRs, pending events and CPUID, and the VM's PIC, IOAPIC, PIT and kvm-clock.
 *
 * Order matters to KVM (the same constraints Firecracker documents): saving reads the MP state
 * first (reading it can accept pending APIC events) and the pending events last; restoring sets
 * CPUID first (it decides which MSRs and XSAVE components exist), special registers before the
 * local APIC (the APIC base lives in them), MSRs after the local APIC (the TSC deadline needs it)
 * and the pending events last.
 */

/** What this host's KVM can save of a vCPU, read once from /dev/kvm (structured-clonable: it goes to the vCPU threads). */
export interface VcpuStateSupport {
  /** MSRs KVM lists as saveable (KVM_GET_MSR_INDEX_LIST), TSC deadline last. */
  msrIndices: number[];
  /** Bytes of struct kvm_xsave (4096, more with AMX). */
  xsaveSize: number;
  /** KVM_GET_XSAVE2 is the call for an XSAVE area larger than 4 KiB. */
  xsave2: boolean;
  /** KVM_GET_TSC_KHZ works. */
  tscKhz: boolean;
}

const MSR_IA32_TSC = 0x10;
const MSR_IA32_TSC_DEADLINE = 0x6e0;

function need(kvm: Kvm, cap: number, name: string): void {
  if (kvm.checkExtension(cap) <= 0) throw new FcRunError('kvm-snapshot-unsupported', `this host's KVM lacks KVM_CAP_${name}, which saving a vCPU's state needs`);
}

/** Reads what this KVM can save; throws (kvm-snapshot-unsupported) when it cannot snapshot at all. */
export function vcpuStateSupport(kvm: Kvm): VcpuStateSupport {
  need(kvm, KVM_CAP.VCPU_EVENTS, 'VCPU_EVENTS');
  need(kvm, KVM_CAP.DEBUGREGS, 'DEBUGREGS');
  need(kvm, KVM_CAP.XSAVE, 'XSAVE');
  need(kvm, KVM_CAP.XCRS, 'XCRS');
  need(kvm, KVM_CAP.ADJUST_CLOCK, 'ADJUST_CLOCK');
  const xsave2Size = kvm.checkExtension(KVM_CAP.XSAVE2);
  const xsaveSize = Math.max(XSAVE_MIN, xsave2Size);
  // The list's length first (E2BIG with the count filled in), then the list.
  const head = Buffer.alloc(4);
  if (sys.ioctlPtr(kvm.fd, KVM.GET_MSR_INDEX_LIST, head) < 0 && errno() !== 7) throw new SyscallError('ioctl(KVM_GET_MSR_INDEX_LIST)', errno());
  const n = head.readUInt32LE(0);
  const buf = Buffer.alloc(4 + 4 * n);
  buf.writeUInt32LE(n, 0);
  ioctl(kvm.fd, 'GET_MSR_INDEX_LIST', buf);
  const got = Math.min(n, buf.readUInt32LE(0));
  const indices: number[] = [];
  for (let i = 0; i < got; i++) indices.push(buf.readUInt32LE(4 + 4 * i));
  // The TSC deadline is relative to the TSC: restored after it (and after the local APIC).
  const msrIndices = [...indices.filter((x) => x !== MSR_IA32_TSC_DEADLINE), ...(indices.includes(MSR_IA32_TSC_DEADLINE) ? [MSR_IA32_TSC_DEADLINE] : [])];
  if (!msrIndices.includes(MSR_IA32_TSC)) msrIndices.unshift(MSR_IA32_TSC);
  return { msrIndices, xsaveSize, xsave2: xsave2Size > XSAVE_MIN, tscKhz: kvm.checkExtension(KVM_CAP.GET_TSC_KHZ) > 0 };
}

function get(fd: number, name: 'GET_REGS' | 'GET_SREGS' | 'GET_XCRS' | 'GET_DEBUGREGS' | 'GET_LAPIC' | 'GET_VCPU_EVENTS' | 'GET_PIT2' | 'GET_CLOCK', size: number, what: string): Uint8Array {
  const buf = Buffer.alloc(size);
  ioctl(fd, name, buf, what);
  return new Uint8Array(buf.buffer, buf.byteOffset, buf.length);
}

/** A Buffer over saved bytes (a Uint8Array after structured clone), for an ioctl. */
function asBuffer(b: Uint8Array): Buffer {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength);
}

/**
 * Reads the MSRs in `indices`, skipping any this vCPU refuses (KVM lists some that depend on the
 * CPUID it was given); returns kvm_msr_entry × n.
 */
function readMsrs(vcpu: Vcpu, indices: number[]): Uint8Array {
  const entries: Buffer[] = [];
  let rest = indices;
  while (rest.length > 0) {
    const buf = Buffer.alloc(8 + 16 * rest.length);
    buf.writeUInt32LE(rest.length, 0);
    rest.forEach((idx, i) => buf.writeUInt32LE(idx, 8 + 16 * i));
    const got = ioctl(vcpu.fd, 'GET_MSRS', buf, `vCPU ${vcpu.id}`);
    for (let i = 0; i < got; i++) entries.push(buf.subarray(8 + 16 * i, 8 + 16 * (i + 1)));
    rest = rest.slice(got + 1); // the one at `got` could not be read
  }
  const out = Buffer.concat(entries);
  return new Uint8Array(out.buffer, out.byteOffset, out.length);
}

/** Saves a vCPU's state; call it on the vCPU's own thread while it is out of KVM_RUN (paused). */
export function saveVcpuState(vcpu: Vcpu, support: VcpuStateSupport): VcpuState {
  const what = `vCPU ${vcpu.id}`;
  const mp = Buffer.alloc(4);
  ioctl(vcpu.fd, 'GET_MP_STATE', mp, what);
  const regs = get(vcpu.fd, 'GET_REGS', STATE_SIZES.regs, what);
  const sregs = get(vcpu.fd, 'GET_SREGS', STATE_SIZES.sregs, what);
  const xsaveBuf = Buffer.alloc(support.xsaveSize);
  ioctl(vcpu.fd, support.xsave2 ? 'GET_XSAVE2' : 'GET_XSAVE', xsaveBuf, what);
  const xcrs = get(vcpu.fd, 'GET_XCRS', STATE_SIZES.xcrs, what);
  const debugregs = get(vcpu.fd, 'GET_DEBUGREGS', STATE_SIZES.debugregs, what);
  const lapic = get(vcpu.fd, 'GET_LAPIC', STATE_SIZES.lapic, what);
  const msrs = readMsrs(vcpu, support.msrIndices);
  const vcpuEvents = get(vcpu.fd, 'GET_VCPU_EVENTS', STATE_SIZES.vcpuEvents, what);
  const cpuidBuf = Buffer.alloc(8 + STATE_SIZES.cpuidEntry * CPUID_MAX_ENTRIES);
  cpuidBuf.writeUInt32LE(CPUID_MAX_ENTRIES, 0);
  ioctl(vcpu.fd, 'GET_CPUID2', cpuidBuf, what);
  const nent = Math.min(CPUID_MAX_ENTRIES, cpuidBuf.readUInt32LE(0));
  const cpuid = Uint8Array.prototype.slice.call(cpuidBuf, 8, 8 + nent * STATE_SIZES.cpuidEntry);
  let tscKhz = 0;
  if (support.tscKhz) {
    const r = sys.ioctlInt(vcpu.fd, KVM.GET_TSC_KHZ, 0);
    if (r > 0) tscKhz = r;
  }
  return {
    regs,
    sregs,
    xsave: new Uint8Array(xsaveBuf.buffer, xsaveBuf.byteOffset, xsaveBuf.length),
    xcrs,
    debugregs,
    lapic,
    vcpuEvents,
    msrs,
    cpuid,
    mpState: mp.readUInt32LE(0),
    tscKhz,
  };
}

function restoreError(what: string, part: string, err: unknown): FcRunError {
  const e = err as Error;
  return new FcRunError('snapshot-restore', `${what}: KVM refused the saved ${part} (${e.message}); the snapshot does not fit this host's KVM or is damaged`);
}

/**
 * Restores a saved vCPU state into a vCPU that has just been created (not booted). The parts'
 * sizes were checked when the file was read; KVM checks their contents.
 */
export function restoreVcpuState(vcpu: Vcpu, s: VcpuState, support?: VcpuStateSupport): void {
  const what = `vCPU ${vcpu.id}`;
  const step = (part: string, f: () => void) => {
    try {
      f();
    } catch (err) {
      throw restoreError(what, part, err);
    }
  };
  step('CPUID', () => {
    const n = s.cpuid.length / STATE_SIZES.cpuidEntry;
    const buf = Buffer.alloc(8 + s.cpuid.length);
    buf.writeUInt32LE(n, 0);
    buf.set(s.cpuid, 8);
    ioctl(vcpu.fd, 'SET_CPUID2', buf, what);
  });
  if (s.tscKhz > 0 && support?.tscKhz) {
    const here = sys.ioctlInt(vcpu.fd, KVM.GET_TSC_KHZ, 0);
    if (here > 0 && here !== s.tscKhz) {
      // A guest keeps the TSC rate it calibrated at boot: scale it (TSC scaling), or say why not.
      if (sys.ioctlInt(vcpu.fd, KVM.SET_TSC_KHZ, s.tscKhz) < 0) {
        throw new FcRunError('snapshot-restore', `${what}: the snapshot's guest TSC runs at ${s.tscKhz} kHz, this host's at ${here} kHz, and KVM cannot scale it (${new SyscallError('ioctl(KVM_SET_TSC_KHZ)', errno()).message})`);
      }
    }
  }
  step('MP state', () => {
    const mp = Buffer.alloc(4);
    mp.writeUInt32LE(s.mpState, 0);
    ioctl(vcpu.fd, 'SET_MP_STATE', mp, what);
  });
  step('registers', () => ioctl(vcpu.fd, 'SET_REGS', asBuffer(s.regs), what));
  step('special registers', () => ioctl(vcpu.fd, 'SET_SREGS', asBuffer(s.sregs), what));
  step('XSAVE area', () => {
    // KVM copies as many bytes as its own XSAVE area has: never fewer than the buffer holds.
    const size = Math.max(s.xsave.length, support?.xsaveSize ?? XSAVE_MIN);
    const buf = Buffer.alloc(size);
    buf.set(s.xsave, 0);
    ioctl(vcpu.fd, 'SET_XSAVE', buf, what);
  });
  step('XCRs', () => ioctl(vcpu.fd, 'SET_XCRS', asBuffer(s.xcrs), what));
  step('debug registers', () => ioctl(vcpu.fd, 'SET_DEBUGREGS', asBuffer(s.debugregs), what));
  step('local APIC', () => ioctl(vcpu.fd, 'SET_LAPIC', asBuffer(s.lapic), what));
  const n = s.msrs.length / STATE_SIZES.msrEntry;
  if (n > 0) {
    const buf = Buffer.alloc(8 + s.msrs.length);
    buf.writeUInt32LE(n, 0);
    buf.set(s.msrs, 8);
    let set: number;
    try {
      set = ioctl(vcpu.fd, 'SET_MSRS', buf, what);
    } catch (err) {
      throw restoreError(what, 'MSRs', err);
    }
    if (set !== n) {
      const idx = buf.readUInt32LE(8 + 16 * set);
      throw new FcRunError('snapshot-restore', `${what}: KVM refused the saved value of MSR 0x${idx.toString(16)} (${set} of ${n} MSRs set); the snapshot does not fit this host's KVM or is damaged`);
    }
  }
  step('pending events', () => ioctl(vcpu.fd, 'SET_VCPU_EVENTS', asBuffer(s.vcpuEvents), what));
}

/** Saves the VM's interrupt controllers, PIT and kvm-clock (the vCPUs paused). */
export function saveVmState(vm: Vm): VmState {
  const irqchips = IRQCHIP_IDS.map((id) => {
    const buf = Buffer.alloc(STATE_SIZES.irqchip);
    buf.writeUInt32LE(id, 0);
    ioctl(vm.fd, 'GET_IRQCHIP', buf, `irqchip ${id}`);
    return new Uint8Array(buf.buffer, buf.byteOffset, buf.length);
  });
  return { irqchips, pit2: get(vm.fd, 'GET_PIT2', STATE_SIZES.pit2, 'PIT'), clock: get(vm.fd, 'GET_CLOCK', STATE_SIZES.clock, 'kvm-clock') };
}


/**
 * Restores the VM's interrupt controllers, PIT and kvm-clock. The guest's clock continues from the
 * saved value (the time the VM spent saved does not pass for it), as in Firecracker.
 */
export function restoreVmState(vm: Vm, s: VmState): void {
  const step = (part: string, f: () => void) => {
    try {
      f();
    } catch (err) {
      throw restoreError('the VM', part, err);
    }
  };
  s.irqchips.forEach((chip, i) => step(`interrupt controller ${i}`, () => ioctl(vm.fd, 'SET_IRQCHIP', asBuffer(chip), `irqchip ${i}`)));
  step('PIT', () => ioctl(vm.fd, 'SET_PIT2', asBuffer(s.pit2), 'PIT'));
  step('kvm-clock', () => {
    const buf = Buffer.from(asBuffer(s.clock));
    buf.writeUInt32LE(0, 8); // no KVM_CLOCK_REALTIME: the clock is not advanced by wall time
    ioctl(vm.fd, 'SET_CLOCK', buf, 'kvm-clock');
  });
}
