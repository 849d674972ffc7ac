/**
 * State the VMM thread and the vCPU threads share, in SharedArrayBuffers, so hot exits are handled
 * on the vCPU thread without a round trip: device register state, counters, and a control word.
 */

export interface SharedState {
  serial: SharedArrayBuffer;
  i8042: SharedArrayBuffer;
  /** Int32 words indexed by CONTROL. */
  control: SharedArrayBuffer;
  /**
   * One BigUint64 per vCPU (by id): the CPU time its thread spent inside KVM_RUN, in nanoseconds
   * (src/kvm/vcpu-threads.ts, RunTime), so the VMM's own CPU time can be told from the guest's.
   */
  runTime: SharedArrayBuffer;
}

/** vCPU `id`'s slot of SharedState.runTime. */
export function runTimeOf(shared: SharedState, id: number): BigUint64Array {
  return new BigUint64Array(shared.runTime, id * 8, 1);
}

/**
 * The words of SharedState.control. STOP: 1 once the VM must stop. BOOT_TIMER: 1 once the boot time
 * was reported. PAUSE: 1 while the VM is to be paused. PARKED: how many vCPU threads are parked
 * (out of KVM_RUN with any pending I/O completed, waiting). WAKE: bumped (and notified) on every
 * change a parked thread must look at. REQUEST_GEN / REQUEST_KIND: a request to every parked
 * thread (REQUEST_KIND, see VcpuRequest), answered once per generation.
 */
export const CONTROL = { STOP: 0, BOOT_TIMER: 1, PAUSE: 2, PARKED: 3, WAKE: 4, REQUEST_GEN: 5, REQUEST_KIND: 6 } as const;
export const CONTROL_WORDS = 8;

/** What a parked vCPU thread can be asked for. */
export const VcpuRequest = { SAVE_STATE: 1, REGISTERS: 2 } as const;

/** A parked vCPU's answer to a request (VcpuRequest), for the request generation `gen`. */
export interface VcpuAnswer {
  kind: 'answer';
  vcpu: number;
  gen: number;
  /** SAVE_STATE: the vCPU's state (src/kvm/vcpu-state). REGISTERS: its registers, formatted. */
  value?: unknown;
  error?: string;
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

/**
 * Sent by a vCPU worker as soon as it has loaded its bundle (src/vmm/threads.ts waits for it before
 * the seccomp filters): it can also reach the VM's handler, when the VM took the thread before it
 * had loaded (--no-seccomp does not wait), and means nothing there.
 */
export interface LoadedReport {
  kind: 'loaded';
}

/**
 * Serial output waits in the UART's transmit buffer (its output did not take it at once): the
 * main thread writes it on (Serial8250.flush) until none is left.
 */
export interface SerialBacklogReport {
  kind: 'serial-backlog';
  vcpu: number;
}

export type VcpuMessage = StopReport | BootTimeReport | ReadyReport | VcpuAnswer | LoadedReport | SerialBacklogReport;

/** The signal that kicks a vCPU thread out of KVM_RUN (Node installs a no-op handler for it). */
export const VCPU_KICK_SIGNAL = 'SIGUSR2';
