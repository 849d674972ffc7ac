/**
 * State the VMM thread and the vCPU threads share, in SharedArrayBuffers, so hot exits are handled
 * on the vCPU thread without a round trip: device register state, counters, and a control word.
 */

export interface SharedState {
  serial: SharedArrayBuffer;
  i8042: SharedArrayBuffer;
  /** [0]: 0 running, 1 stop requested. */
  control: SharedArrayBuffer;
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
