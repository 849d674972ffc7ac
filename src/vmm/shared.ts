/**
 * State the VMM thread and the vCPU threads share, in SharedArrayBuffers, so hot exits are handled
 * on the vCPU thread without a round trip: device register state, counters, and a control word.
 */

/** VM-wide counters, updated with Atomics from any thread. */
export const VM_COUNTERS = [
  'pio_unknown_reads',
  'pio_unknown_writes',
  'mmio_unknown_reads',
  'mmio_unknown_writes',
  'serial_tx_bytes',
  'serial_rx_bytes',
  'i8042_resets',
  'boot_timer_writes',
] as const;
export type VmCounter = (typeof VM_COUNTERS)[number];

/** Per-vCPU exit counters, indexed by KVM exit reason (0..31). */
export const EXIT_REASON_SLOTS = 32;

export interface SharedState {
  counters: SharedArrayBuffer;
  exits: SharedArrayBuffer;
  serial: SharedArrayBuffer;
  i8042: SharedArrayBuffer;
  /** [0]: 0 running, 1 stop requested. */
  control: SharedArrayBuffer;
}

export function createCounters(): SharedArrayBuffer {
  return new SharedArrayBuffer(VM_COUNTERS.length * 8);
}

export class Counters {
  private readonly a: BigInt64Array;
  constructor(buf: SharedArrayBuffer) {
    this.a = new BigInt64Array(buf);
  }
  add(name: VmCounter, n = 1): void {
    Atomics.add(this.a, VM_COUNTERS.indexOf(name), BigInt(n));
  }
  get(name: VmCounter): number {
    return Number(Atomics.load(this.a, VM_COUNTERS.indexOf(name)));
  }
  snapshot(): Record<VmCounter, number> {
    return Object.fromEntries(VM_COUNTERS.map((n, i) => [n, Number(Atomics.load(this.a, i))])) as Record<VmCounter, number>;
  }
}

/** What a vCPU thread reports when the VM must stop. */
export interface StopReport {
  kind: 'stop';
  vcpu: number;
  /** reset, shutdown and halt are the guest's own doing, stopped the user's; the rest are failures. */
  reason: 'reset' | 'shutdown' | 'halt' | 'stopped' | 'triple-fault' | 'internal-error' | 'fail-entry' | 'unexpected-exit' | 'vmm-error';
  detail: string;
  registers?: string;
}

export interface BootTimeReport {
  kind: 'boot-time';
  vcpu: number;
  /** Nanoseconds from launch start to the guest's boot-complete write. */
  ns: string;
}

/** Sent once, before the first KVM_RUN: the thread to signal when the VM must stop. */
export interface ReadyReport {
  kind: 'ready';
  vcpu: number;
  tid: number;
}

export type VcpuMessage = StopReport | BootTimeReport | ReadyReport;

/** The signal that kicks a vCPU thread out of KVM_RUN (Node installs a no-op handler for it). */
export const VCPU_KICK_SIGNAL = 'SIGUSR2';
