export { Kvm, Vm, Vcpu } from './kvm';
export type { CpuidEntry, Regs, Sregs, Segment, Fpu } from './kvm';
export { GuestMemory, GuestMemoryError } from './memory';
export type { RegionDescriptor } from './memory';
export { SyscallError } from './libc';
export * from './ioctls';
