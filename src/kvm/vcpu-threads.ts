import * as fs from 'node:fs';
import { FcRunError } from '../errors';
import { errno, NATIVE_ADDON, nativeAddon, NativeFunction, Pointer, sys, SyscallError } from './libc';

/**
 * Native vCPU threads (native/vcpu-threads.c, linked into fc-run's native addon, dist/native/
 * fcrun.node): a plain pthread per vCPU that only runs KVM_RUN, while one JavaScript thread
 * handles every vCPU's exits. A vCPU then costs a thread stack, not a V8 isolate. See the C file
 * for the handshake.
 */

/** A native vCPU thread's state word (native/vcpu-threads.c). */
export const VCPU_THREAD = { STARTING: 0, IDLE: 1, RUNNING: 2, QUIT: 3, DONE: 4 } as const;

interface Library {
  groupNew: NativeFunction;
  groupRearm: NativeFunction;
  groupFree: NativeFunction;
  groupSeq: NativeFunction;
  groupPoke: NativeFunction;
  groupWait: NativeFunction;
  start: NativeFunction;
  state: NativeFunction;
  tid: NativeFunction;
  result: NativeFunction;
  filterError: NativeFunction;
  run: NativeFunction;
  quit: NativeFunction;
  join: NativeFunction;
  kvmRun: NativeFunction;
  loopStart: NativeFunction;
  loopVisited: NativeFunction;
  loopRun: NativeFunction;
  loopStop: NativeFunction;
  kickHandler: NativeFunction;
  fastNew: NativeFunction;
  fastFree: NativeFunction;
  fastExit: NativeFunction;
}

let library: Library | undefined;

function lib(): Library {
  if (library) return library;
  if (!fs.existsSync(NATIVE_ADDON)) {
    throw new FcRunError('native-vcpu-missing', `${NATIVE_ADDON} does not exist: build fc-run with "npm run build" (it compiles native/*.c with cc)`);
  }
  const n = nativeAddon();
  library = {
    groupNew: n.fcv_group_new, // (notifyFd) -> group
    groupRearm: n.fcv_group_rearm,
    groupFree: n.fcv_group_free,
    groupSeq: n.fcv_group_seq,
    groupPoke: n.fcv_group_poke,
    groupWait: n.fcv_group_wait, // (group, seen, timeoutUs) -> seq
    // (group, id, fd, kickSignal, filter, filterLen, stackKib, nice, runNs, fast) -> vcpu
    start: n.fcv_vcpu_start,
    // (fd, runNs address, fast): the counter's address as a number, ~1 µs less per exit than a typed array.
    kvmRun: n.fcv_kvm_run,
    state: n.fcv_vcpu_state,
    tid: n.fcv_vcpu_tid,
    result: n.fcv_vcpu_result,
    filterError: n.fcv_vcpu_filter_error,
    run: n.fcv_vcpu_run,
    quit: n.fcv_vcpu_quit,
    join: n.fcv_vcpu_join,
    loopStart: n.fcv_loop_vcpu_start, // (kickSignal, kvm_run address) -> runner
    loopVisited: n.fcv_loop_visited,
    loopRun: n.fcv_loop_run, // (runner, fd, runNs address, fast)
    loopStop: n.fcv_loop_vcpu_stop,
    kickHandler: n.fcv_kick_handler_install,
    // (run, runSize, serial, com1, outFd, counts, slotIoIn, slotIoOut, slotTxBytes) -> fast
    fastNew: n.fcv_fast_new,
    fastFree: n.fcv_fast_free,
    fastExit: n.fcv_fast_exit,
  };
  return library;
}

/**
 * The futex word a group's vCPU threads bump on every event, with the notification fd written
 * once per round; the main thread pokes it too (pause, resume, requests, stop) so that its
 * handling of the exits looks again.
 */
export class VcpuThreadGroup {
  private constructor(readonly ptr: Pointer) {}

  /** `notifyFd`: written one byte when something happened since {@link rearm} (-1: none). */
  static create(notifyFd = -1): VcpuThreadGroup {
    const ptr = lib().groupNew(notifyFd);
    if (ptr === null) throw new FcRunError('native-vcpu', 'cannot allocate a vCPU thread group');
    return new VcpuThreadGroup(ptr);
  }

  seq(): number {
    return lib().groupSeq(this.ptr) as number;
  }

  /** Waits until the sequence is no longer `seen` (or `timeoutUs` microseconds pass) and returns it. */
  wait(seen: number, timeoutUs: number): number {
    return lib().groupWait(this.ptr, seen, timeoutUs) as number;
  }

  /** Lets the next event write to the notification fd again; call it before looking at the vCPUs. */
  rearm(): void {
    lib().groupRearm(this.ptr);
  }

  /** Wakes the thread waiting in {@link wait}. */
  poke(): void {
    lib().groupPoke(this.ptr);
  }

  /** Only once no thread uses it any more. */
  free(): void {
    lib().groupFree(this.ptr);
  }
}

/**
 * One vCPU's CPU time inside KVM_RUN, in nanoseconds: a one-element view of shared memory that the
 * thread entering the guest adds to (native/vcpu-threads.c) and any thread reads. On hardware KVM
 * that is the guest's own run time plus KVM's exit handling; on an emulating KVM, the emulation.
 */
export type RunTime = BigUint64Array;

/** Whether the native library is built: native vCPU threads, KVM_RUN time counted and hot exits ({@link nativeKvmRun}). */
export function nativeVcpuLibraryBuilt(): boolean {
  return fs.existsSync(NATIVE_ADDON);
}

/**
 * Makes `signal` (the vCPU kick) a signal whose handler does nothing, for the whole process: it
 * still gets a thread out of KVM_RUN, without waking the event loop as a process.on listener
 * does. False without the native library (a process.on listener must then keep the signal from
 * ending the process). Never undone: a kick that comes late is harmless.
 */
export function installKickHandler(signal: number): boolean {
  if (!nativeVcpuLibraryBuilt()) return false;
  const r = lib().kickHandler(signal) as number;
  if (r < 0) throw new SyscallError('sigaction', -r);
  return true;
}

/** Loads the native library now if it is built: a vCPU worker does so before the seccomp filters. */
export function preloadNativeVcpuLibrary(): void {
  if (nativeVcpuLibraryBuilt()) lib();
}

/**
 * KVM_RUN through the native library (fcv_kvm_run), for a vCPU worker: adds the calling thread's
 * CPU time inside it to the counter at `runNsAddress` ({@link runTimeAddress}; 0: not counted)
 * and, with `hot` ({@link HotExits}), handles those exits and enters the guest again. Only where
 * the library is built.
 */
export function nativeKvmRun(): (fd: number, runNsAddress: number, hot: Pointer | null) => number {
  return lib().kvmRun as (fd: number, runNsAddress: number, hot: Pointer | null) => number;
}

/** The address of `runNs[0]`, for {@link nativeKvmRun} (shared memory does not move). */
export function runTimeAddress(runNs: RunTime): number {
  return Number(sys.addressOf(runNs));
}

/** One native vCPU thread. */
export class NativeVcpuThread {
  private readonly ptr: Pointer;

  /**
   * Starts the thread of vCPU `id` (KVM vCPU fd `fd`), named "fc_vcpu <id>". It blocks every
   * signal but `kickSignal`, takes nice value `nice` (0: as it is), installs `filter` (a seccomp
   * BPF program) if given, then waits idle.
   */
  constructor(group: VcpuThreadGroup, id: number, fd: number, kickSignal: number, filter?: Buffer, nice = 0, runNs?: RunTime, hot?: HotExits, stackKib = 256) {
    const count = filter ? filter.length / 8 : 0;
    if (!Number.isInteger(count) || count > 4096) throw new FcRunError('native-vcpu', `a seccomp filter is whole 8-byte instructions, at most 4096, not ${filter!.length} bytes`);
    const ptr = lib().start(group.ptr, id, fd, kickSignal, filter ?? null, count, stackKib, nice, runNs ?? null, hot?.ptr ?? null);
    if (ptr === null) throw new FcRunError('native-vcpu', `cannot start the thread of vCPU ${id} (errno ${errno()})`);
    this.ptr = ptr;
  }

  state(): number {
    return lib().state(this.ptr) as number;
  }

  /** The thread's kernel id (once it has left STARTING). */
  tid(): number {
    return lib().tid(this.ptr) as number;
  }

  /** What the last KVM_RUN returned: its value, or minus its errno. */
  result(): number {
    return Number(lib().result(this.ptr));
  }

  /** The errno of a seccomp filter the thread could not install (it has then ended). */
  filterError(): number {
    return lib().filterError(this.ptr) as number;
  }

  /** Enters the guest once; false if the thread was not idle. */
  run(): boolean {
    return lib().run(this.ptr) === 0;
  }

  /** Tells the thread to end once out of KVM_RUN. */
  quit(): void {
    lib().quit(this.ptr);
  }

  /** Waits for the thread to end (after quit, out of KVM_RUN) and frees it. */
  join(): void {
    lib().join(this.ptr);
  }
}

/**
 * A vCPU whose guest entries the main thread makes itself, between its event loop's callbacks
 * (native/vcpu-threads.c, fcv_loop_run): no thread of its own and no hand-off per exit. A
 * watcher thread gets it out of the guest whenever the event loop has something to do (an event
 * on any of its handles, or a timer due); {@link run} then returns -EINTR, the caller returns to
 * the event loop, and calls {@link visited} from the loop's next callback before entering again.
 */
export class LoopVcpuRunner {
  private readonly ptr: Pointer;

  /** `runPageAddress`: the vCPU's kvm_run page as mapped on this thread; `kickSignal` gets it out of the guest. */
  constructor(kickSignal: number, runPageAddress: number) {
    const ptr = lib().loopStart(kickSignal, runPageAddress);
    if (ptr === null) throw new FcRunError('native-vcpu', `cannot watch the event loop for a vCPU on the main thread (errno ${errno()})`);
    this.ptr = ptr;
  }

  /** The event loop has run since the last -EINTR: the guest may be entered again. */
  visited(): void {
    lib().loopVisited(this.ptr);
  }

  /**
   * Enters the guest (vCPU fd `fd`), adding the time inside to the counter at `runNsAddress` (0:
   * none), and again after each exit `hot` handles; KVM_RUN's value or -errno.
   */
  run(fd: number, runNsAddress: number, hot?: HotExits): number {
    return Number(lib().loopRun(this.ptr, fd, runNsAddress, hot?.ptr ?? null));
  }

  /** Tells the watcher to end, without waiting for it; once, after the last {@link run}. */
  stop(): void {
    lib().loopStop(this.ptr);
  }
}

/** Where the serial console's hot exits find the device and its counters (see {@link HotExits}). */
export interface HotExitsSetup {
  /** The vCPU's kvm_run mapping (Vcpu.runPageAddress) and its size (Vcpu.mmapSize). */
  runPageAddress: number;
  runSize: number;
  /** The UART's shared state words (Serial8250's state: the C code knows its layout). */
  serialWords: Int32Array;
  /** The UART's first port. */
  com1: number;
  /** Where transmitted bytes go (-1: discarded). */
  outFd: number;
  /** The metrics values, and the slots in them this vCPU's exits count in. */
  counts: Float64Array;
  slots: { ioIn: number; ioOut: number; txBytes: number };
}

/**
 * The serial console's hot exits (the line status read and the transmit write a printing guest
 * makes for every byte) handled in C on the thread that entered the guest, which then enters it
 * again with no return to JavaScript (native/vcpu-threads.c, fcv_fast_exit and fcv_kvm_run). Only the plain case
 * is handled there, with the result the JavaScript model (src/devices/legacy/serial.ts) gives, on
 * the same shared state; every other exit, and any other state, is left to JavaScript.
 */
export class HotExits {
  private constructor(readonly ptr: Pointer) {}

  /** Where the native library is built (the caller checks). The memory it names must outlive it. */
  static create(s: HotExitsSetup): HotExits {
    const { ioIn, ioOut, txBytes } = s.slots;
    for (const slot of [ioIn, ioOut, txBytes]) if (!Number.isInteger(slot) || slot < 0 || slot >= s.counts.length) throw new RangeError(`metrics slot ${slot} is outside the values`);
    if (s.serialWords.length < 16) throw new RangeError('the UART state has 16 words');
    const address = (a: Int32Array | Float64Array) => Number(sys.addressOf(a));
    const ptr = lib().fastNew(s.runPageAddress, s.runSize, address(s.serialWords), s.com1, s.outFd, address(s.counts), ioIn, ioOut, txBytes);
    if (ptr === null) throw new FcRunError('native-vcpu', 'cannot allocate the hot exits state');
    return new HotExits(ptr);
  }

  /** Handles the exit in the kvm_run page now if it is a hot one; true if it did (tests call it). */
  handle(): boolean {
    return lib().fastExit(this.ptr) === 1;
  }

  /** Once no thread uses it any more. */
  free(): void {
    lib().fastFree(this.ptr);
  }
}
