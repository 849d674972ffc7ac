import * as fs from 'node:fs';
import { Vcpu } from '../kvm/kvm';
import { errnoText, gettid } from '../kvm/libc';
import { HotExits, LoopVcpuRunner, NativeVcpuThread, RunTime, runTimeAddress, VCPU_THREAD, VcpuThreadGroup } from '../kvm/vcpu-threads';
import {
  KVM_EXIT,
  KVM_EXIT_IO_OUT,
  KVM_EXIT_NAMES,
  KVM_SYSTEM_EVENT_CRASH,
  KVM_SYSTEM_EVENT_RESET,
  KVM_SYSTEM_EVENT_SHUTDOWN,
} from '../kvm/ioctls';
import { KVM_RUN_OFFSETS } from '../kvm/structs';
import { Serial8250 } from '../devices/legacy/serial';
import { I8042 } from '../devices/legacy/i8042';
import { CONTROL, runTimeOf, SharedState, StopReport, VcpuMessage, VcpuRequest } from './shared';
import { Logger, MetricsRegistry } from '../monitor';
import type { MetricsLayout, SharedLoggerOptions } from '../monitor';
import { exitField, VCPU_FIELDS } from '../monitor/vm-metrics';
import { describeInternalError, formatRegisters } from './registers';
import { MailboxClient } from './mmio-mailbox';
import { serialOutputSink } from './serial-output';
import { MMIO } from '../devices/virtio/mmio';
import { saveVcpuState, VcpuStateSupport } from '../kvm/snapshot-state';

// A vCPU's exits, handled the same way whoever calls KVM_RUN: a worker thread of its own
// (vcpu-worker.ts, the default) or a native thread whose exits the main thread handles
// (NativeVcpus below, FC_RUN_VCPU_THREADS=native). Port and MMIO exits are handled with device
// state shared through SharedArrayBuffers; the main thread hears only of stops, the boot time,
// readiness and answers to its requests.

/** What a vCPU's exit handling needs (structured-cloneable: it crosses to a worker). */
export interface VcpuWorkerData {
  id: number;
  fd: number;
  mmapSize: number;
  shared: SharedState;
  /** Where guest serial output goes (-1: discarded). */
  serialOutFd: number;
  serialIrqFd: number;
  keyboardIrqFd: number;
  /** process.hrtime.bigint() at launch start, as a string. */
  launchStartNs: string;
  ports: { serial: number; i8042: number; bootTimer: number };
  virtio: VirtioWindows;
  metrics: { buffer: SharedArrayBuffer; layout: MetricsLayout };
  logger: SharedLoggerOptions;
  /**
   * The nice value the vCPU's thread takes before it enters the guest (absent: as it is):
   * vcpuThreadNice for every vCPU of a VM with native vCPU threads (MicroVm decides).
   */
  nice?: number;
  /**
   * Whether the thread counts its CPU time inside KVM_RUN into shared.runTime (two
   * clock_gettime(CLOCK_THREAD_CPUTIME_ID) calls per exit): not under a vcpu filter from
   * --seccomp-filter, which need not allow that call.
   */
  countRunTime?: boolean;
  /** Whether the serial console's hot exits are handled natively (HotExits; where the library is built). */
  hotExits?: boolean;
  /** This thread's own seccomp filter (--seccomp-filter's vcpu category), installed before KVM_RUN. */
  seccompFilter?: Uint8Array;
  /** What this host's KVM can save (read by the main thread); absent when it cannot snapshot. */
  snapshotSupport?: VcpuStateSupport;
}

/** The virtio-mmio windows a vCPU dispatches to, and how it reaches their device models. */
export interface VirtioWindows {
  windows: { base: number; size: number; index: number; interruptStatus: SharedArrayBuffer }[];
  mailbox: SharedArrayBuffer;
  mailboxFd: number;
}


/**
 * One vCPU's exit handling: the same whichever thread enters the guest, a worker of its own
 * (vcpu-worker.ts) or a native thread ({@link NativeVcpus}, exits handled on the main thread).
 */
export interface VcpuContext {
  readonly data: VcpuWorkerData;
  readonly vcpu: Vcpu;
  /**
   * What to do before entering the guest again, from the control words: 'stop'; 'pause' (with
   * immediate_exit set: KVM_RUN completes the I/O or MMIO exit just handled, so the guest's
   * register gets the value read, without running guest code; an EINTR then means parked, and
   * another exit, the next round of a string I/O instruction, is handled first); or 'run'.
   */
  next(): 'stop' | 'pause' | 'run';
  /** Counts this vCPU parked (the main thread waits for every vCPU to be). */
  parked(): void;
  /** While parked: answers any request, and says whether to stay parked. */
  stayParked(): boolean;
  /** Counts this vCPU no longer parked; the guest may run again. */
  unparked(): void;
  /** Handles the exit KVM_RUN just returned with (read from the kvm_run page). */
  handleExit(): void;
  /** Reports why the VM stops (once) and tells every vCPU to stop. */
  stop(report: Omit<StopReport, 'kind' | 'vcpu'>): void;
  readonly stopped: boolean;
  /** Says the vCPU's thread (kernel id `tid`, for the kick signal) is about to enter the guest. */
  ready(tid: number): void;
  /** The exits the thread entering the guest handles itself, if any (see HotExits). */
  readonly hotExits?: HotExits;
  /** Frees {@link hotExits} (once no thread enters the guest for this vCPU any more). */
  release(): void;
}

/** `vcpu`: the vCPU when this thread has it already (the main thread does), else opened from `data`. */
export function vcpuContext(data: VcpuWorkerData, post: (m: VcpuMessage) => void, vcpu = new Vcpu(data.id, data.fd, data.mmapSize)): VcpuContext {
  // This vCPU's metrics group: only this thread writes it.
  const registry = MetricsRegistry.attach(data.metrics.buffer, data.metrics.layout);
  const m = registry.group(`vcpu${data.id}`, VCPU_FIELDS);
  // The exit count is bumped on every exit: straight into its shared slot, found once per reason.
  const group = registry.groups.find((g) => g.name === `vcpu${data.id}`)!;
  const slotOf = (field: string) => {
    const i = group.fields.indexOf(field);
    if (i < 0) throw new Error(`vCPU metrics have no field ${field}`);
    return group.offset + i;
  };
  // -1: an I/O or MMIO exit, counted by direction where it is handled.
  const exitSlots = Int32Array.from({ length: 64 }, (_, reason) => {
    const field = exitField(reason);
    return field === undefined ? -1 : slotOf(field);
  });
  const otherExitSlot = slotOf('exitsOther');
  const [ioInSlot, ioOutSlot, mmioReadSlot, mmioWriteSlot] = ['exitsIoIn', 'exitsIoOut', 'exitsMmioRead', 'exitsMmioWrite'].map(slotOf);
  // Counters bumped on port and MMIO exits, as slots too: no accessor call on the exit path.
  const slot = {
    serialTxBytes: slotOf('serialTxBytes'),
    serialRxReads: slotOf('serialRxReads'),
    virtioRegisterAccesses: slotOf('virtioRegisterAccesses'),
    serialBadReads: slotOf('serialBadReads'),
    i8042Reads: slotOf('i8042Reads'),
    i8042BadReads: slotOf('i8042BadReads'),
    pioUnknownReads: slotOf('pioUnknownReads'),
    serialBadWrites: slotOf('serialBadWrites'),
    i8042BadWrites: slotOf('i8042BadWrites'),
    i8042Writes: slotOf('i8042Writes'),
    bootTimerWrites: slotOf('bootTimerWrites'),
    pioUnknownWrites: slotOf('pioUnknownWrites'),
    mmioUnknownWrites: slotOf('mmioUnknownWrites'),
    mmioUnknownReads: slotOf('mmioUnknownReads'),
  };
  const counts = registry.values;
  const log = new Logger({ ...data.logger, thread: `vcpu ${data.id}` });
  const control = new Int32Array(data.shared.control);
  const one = Buffer.alloc(8);
  one.writeBigUInt64LE(1n);

  function signal(fd: number): void {
    try {
      fs.writeSync(fd, one);
    } catch {
      // The eventfd counter cannot overflow at this rate; a closed fd means the VM is stopping.
    }
  }

  let stopped = false;
  function stop(report: Omit<StopReport, 'kind' | 'vcpu'>): void {
    if (stopped) return;
    stopped = true;
    Atomics.store(control, CONTROL.STOP, 1);
    const failed = report.reason !== 'reset' && report.reason !== 'shutdown' && report.reason !== 'halt' && report.reason !== 'stopped';
    if (failed) m.failures++;
    if (failed) log.error('vmm/vcpu', `${report.detail}${report.registers ? `\n${report.registers}` : ''}`);
    else log.info('vmm/vcpu', `vCPU ${data.id} stops the VM: ${report.reason}`);
    post({ kind: 'stop', vcpu: data.id, ...report } satisfies VcpuMessage);
  }

  const serial = new Serial8250(data.shared.serial, {
    out: serialOutputSink(data.serialOutFd, (n) => (counts[slot.serialTxBytes] += n)),
    lost: (n) => (m.serialLostBytes += n),
    // The main thread writes what waits, and tells the guest when the transmitter has room again.
    backlog: () => post({ kind: 'serial-backlog', vcpu: data.id } satisfies VcpuMessage),
    interrupt: () => signal(data.serialIrqFd),
    received: () => counts[slot.serialRxReads]++,
  });
  const i8042 = new I8042(data.shared.i8042, {
    reset: () => {
      m.i8042Resets++;
      stop({ reason: 'reset', detail: 'the guest reset the machine through the i8042 controller' });
    },
    interrupt: () => signal(data.keyboardIrqFd),
  });

  const ALL_ONES = [0, 0xff, 0xffff, 0, 0xffffffff];
  const mailbox = new MailboxClient(data.virtio.mailbox, data.id, data.virtio.mailboxFd, () => stopped || Atomics.load(control, CONTROL.STOP) !== 0);
  const windows = data.virtio.windows.map((w) => ({ ...w, status: new Int32Array(w.interruptStatus) }));

  /**
   * A virtio-mmio register access. The interrupt status is shared memory, served here (it is
   * read and acknowledged on every interrupt); everything else goes to the VMM thread.
   */
  function virtioAccess(addr: number, len: number, write: boolean, value: number): number | undefined {
    for (const w of windows) {
      if (addr < w.base || addr >= w.base + w.size) continue;
      const offset = addr - w.base;
      if (len > 4) return write ? 0 : 0xffffffff;
      if (offset === MMIO.INTERRUPT_STATUS && !write && len === 4) return Atomics.load(w.status, 0);
      if (offset === MMIO.INTERRUPT_ACK && write && len === 4) {
        Atomics.and(w.status, 0, ~value);
        return 0;
      }
      counts[slot.virtioRegisterAccesses]++;
      return mailbox.access(w.index, offset, len, write, value);
    }
    return undefined;
  }

  function pioIn(portNum: number, size: number): number {
    const { serial: com1, i8042: kbd } = data.ports;
    if (portNum >= com1 && portNum < com1 + 8) {
      if (size === 1) return serial.read(portNum - com1);
      counts[slot.serialBadReads]++;
      return ALL_ONES[size] ?? 0xff;
    }
    if (portNum === kbd || portNum === kbd + 4) {
      if (size === 1) {
        counts[slot.i8042Reads]++;
        return i8042.read(portNum - kbd);
      }
      counts[slot.i8042BadReads]++;
      return ALL_ONES[size] ?? 0xff;
    }
    counts[slot.pioUnknownReads]++;
    return ALL_ONES[size] ?? 0xff;
  }

  function pioOut(portNum: number, size: number, value: number): void {
    const { serial: com1, i8042: kbd, bootTimer } = data.ports;
    if (portNum >= com1 && portNum < com1 + 8) {
      if (size === 1) return serial.write(portNum - com1, value);
      counts[slot.serialBadWrites]++;
      return;
    }
    if (portNum === kbd || portNum === kbd + 4) {
      if (size !== 1) {
        counts[slot.i8042BadWrites]++;
        return;
      }
      counts[slot.i8042Writes]++;
      return i8042.write(portNum - kbd, value);
    }
    if (portNum === bootTimer && value === 123) {
      counts[slot.bootTimerWrites]++;
      // Report the first write only: a guest hammering the port must not flood the VMM thread.
      if (Atomics.compareExchange(control, CONTROL.BOOT_TIMER, 0, 1) !== 0) return;
      const ns = process.hrtime.bigint() - BigInt(data.launchStartNs);
      post({ kind: 'boot-time', vcpu: data.id, ns: ns.toString() } satisfies VcpuMessage);
      return;
    }
    if (portNum === 0x80) return; // POST code / I/O delay port: writes are expected and meaningless
    counts[slot.pioUnknownWrites]++;
  }

  function registers(): string {
    try {
      return formatRegisters(vcpu.getRegs(), vcpu.getSregs());
    } catch (err) {
      return `(registers unavailable: ${(err as Error).message})`;
    }
  }

  function saveState(): unknown {
    if (!data.snapshotSupport) throw new Error("this host's KVM cannot save a vCPU's state");
    return saveVcpuState(vcpu, data.snapshotSupport);
  }

  /** The last request generation this vCPU answered (a request can come before it first parks). */
  let answeredGen = 0;

  /** Answers a request made to every parked vCPU (CONTROL.REQUEST_KIND). */
  function answerRequest(): void {
    const gen = Atomics.load(control, CONTROL.REQUEST_GEN);
    if (gen === answeredGen) return;
    answeredGen = gen;
    const kind = Atomics.load(control, CONTROL.REQUEST_KIND);
    try {
      if (kind === VcpuRequest.REGISTERS) post({ kind: 'answer', vcpu: data.id, gen, value: registers() } satisfies VcpuMessage);
      else if (kind === VcpuRequest.SAVE_STATE) post({ kind: 'answer', vcpu: data.id, gen, value: saveState() } satisfies VcpuMessage);
      else post({ kind: 'answer', vcpu: data.id, gen, error: `unknown request ${kind}` } satisfies VcpuMessage);
    } catch (err) {
      post({ kind: 'answer', vcpu: data.id, gen, error: (err as Error).message } satisfies VcpuMessage);
    }
  }

  const page = vcpu.mapRun();
  // The serial console's line status reads and transmit writes, handled in C on the thread that
  // entered the guest, on the same shared state and counters as serial below.
  let hotExits = data.hotExits
    ? HotExits.create({
        runPageAddress: vcpu.runPageAddress(),
        runSize: page.byteLength,
        serialWords: new Int32Array(data.shared.serial, 0, 16),
        com1: data.ports.serial,
        outFd: data.serialOutFd,
        counts,
        slots: { ioIn: ioInSlot, ioOut: ioOutSlot, txBytes: slot.serialTxBytes },
      })
    : undefined;
  const run = new DataView(page);
  const bytes = new Uint8Array(page);
  const X = KVM_RUN_OFFSETS.exit;

  function handleExit(): void {
    const reason = run.getUint32(KVM_RUN_OFFSETS.exit_reason, true);
    const exitSlot = reason < 64 ? exitSlots[reason] : otherExitSlot;
    if (exitSlot >= 0) counts[exitSlot]++;
    switch (reason) {
      case KVM_EXIT.IO: {
        const direction = run.getUint8(X);
        const size = run.getUint8(X + 1);
        const portNum = run.getUint16(X + 2, true);
        const count = run.getUint32(X + 4, true);
        counts[direction === KVM_EXIT_IO_OUT ? ioOutSlot : ioInSlot]++;
        let off = Number(run.getBigUint64(X + 8, true));
        if (off + size * count > page.byteLength || size === 0 || size > 4) {
          stop({ reason: 'internal-error', detail: `malformed I/O exit from KVM (port 0x${portNum.toString(16)}, size ${size}, count ${count})`, registers: registers() });
          break;
        }
        for (let i = 0; i < count; i++, off += size) {
          if (direction === KVM_EXIT_IO_OUT) {
            const v = size === 1 ? bytes[off] : size === 2 ? run.getUint16(off, true) : run.getUint32(off, true);
            pioOut(portNum, size, v);
          } else {
            const v = pioIn(portNum, size);
            if (size === 1) bytes[off] = v;
            else if (size === 2) run.setUint16(off, v, true);
            else run.setUint32(off, v >>> 0, true);
          }
        }
        break;
      }
      case KVM_EXIT.MMIO: {
        const addr = Number(run.getBigUint64(X, true));
        const len = Math.min(run.getUint32(X + 16, true), 8);
        const isWrite = run.getUint8(X + 20) !== 0;
        counts[isWrite ? mmioWriteSlot : mmioReadSlot]++;
        let value = 0;
        if (isWrite) for (let i = Math.min(len, 4) - 1; i >= 0; i--) value = value * 256 + bytes[X + 8 + i];
        const result = virtioAccess(addr, len, isWrite, value);
        if (result === undefined) {
          if (isWrite) counts[slot.mmioUnknownWrites]++;
          else counts[slot.mmioUnknownReads]++;
          if (!isWrite) bytes.fill(0xff, X + 8, X + 8 + len);
        } else if (!isWrite) {
          for (let i = 0; i < len; i++) bytes[X + 8 + i] = i < 4 ? (result >>> (8 * i)) & 0xff : 0;
        }
        break;
      }
      case KVM_EXIT.HLT:
        stop({ reason: 'halt', detail: `vCPU ${data.id} halted with interrupts it can never receive` });
        break;
      case KVM_EXIT.SHUTDOWN:
        stop({ reason: 'triple-fault', detail: `vCPU ${data.id} triple-faulted (KVM_EXIT_SHUTDOWN)`, registers: registers() });
        break;
      case KVM_EXIT.SYSTEM_EVENT: {
        const type = run.getUint32(X, true);
        if (type === KVM_SYSTEM_EVENT_RESET) stop({ reason: 'reset', detail: 'the guest requested a reset' });
        else if (type === KVM_SYSTEM_EVENT_SHUTDOWN) stop({ reason: 'shutdown', detail: 'the guest powered off' });
        else stop({ reason: 'internal-error', detail: type === KVM_SYSTEM_EVENT_CRASH ? 'the guest reported a crash' : `system event ${type}`, registers: registers() });
        break;
      }
      case KVM_EXIT.INTERNAL_ERROR:
        stop({ reason: 'internal-error', detail: `${describeInternalError(run, X)} on vCPU ${data.id}`, registers: registers() });
        break;
      case KVM_EXIT.FAIL_ENTRY: {
        const why = run.getBigUint64(X, true);
        stop({ reason: 'fail-entry', detail: `KVM could not enter the guest on vCPU ${data.id} (hardware reason 0x${why.toString(16)})`, registers: registers() });
        break;
      }
      case KVM_EXIT.INTR:
      case KVM_EXIT.IRQ_WINDOW_OPEN:
        break;
      default:
        stop({ reason: 'unexpected-exit', detail: `unexpected KVM exit ${KVM_EXIT_NAMES[reason] ?? reason} on vCPU ${data.id}`, registers: registers() });
    }
  }

  const stopWord = () => stopped || Atomics.load(control, CONTROL.STOP) !== 0;

  return {
    data,
    vcpu,
    next() {
      if (stopWord()) return 'stop';
      if (Atomics.load(control, CONTROL.PAUSE) === 0) return 'run';
      bytes[KVM_RUN_OFFSETS.immediate_exit] = 1;
      return 'pause';
    },
    parked() {
      Atomics.add(control, CONTROL.PARKED, 1);
      Atomics.notify(control, CONTROL.PARKED);
    },
    stayParked() {
      answerRequest();
      return !stopWord() && Atomics.load(control, CONTROL.PAUSE) !== 0;
    },
    unparked() {
      Atomics.sub(control, CONTROL.PARKED, 1);
      Atomics.notify(control, CONTROL.PARKED);
      bytes[KVM_RUN_OFFSETS.immediate_exit] = 0;
    },
    handleExit,
    stop,
    get stopped() {
      return stopped;
    },
    ready: (tid) => post({ kind: 'ready', vcpu: data.id, tid }),
    get hotExits() {
      return hotExits;
    },
    release() {
      hotExits?.free();
      hotExits = undefined;
    },
  };
}


/**
 * The nice value of native vCPU threads when the VM has more vCPUs than the CPUs fc-run may run
 * on. Their exits wait for the main thread; with more vCPUs than host cores, guests spinning on a
 * lock whose holder waits on an exit would otherwise leave the main thread a 1/N share of a core
 * (seen: the probe's 32 vCPUs on 2 cores, spinning on its print lock, stalled for minutes). Below
 * the main thread, the vCPUs still share the CPU fairly among themselves, and a runnable main
 * thread gets a core at once.
 */
const VCPU_THREAD_NICE = 10;

/**
 * The nice value for the vCPU threads of a VM with `vcpus` of them on a host where fc-run may run
 * on `hostCpus` CPUs (its affinity): VCPU_THREAD_NICE when the VM alone overcommits them, else 0.
 * Not lower when it fits: a nice of 10 gives a thread a tenth of the weight of a nice-0 process,
 * so beside two busy processes on two cores a 2-vCPU Linux boot ran at a tenth of its speed
 * (CI: still initialising devices after 13 minutes, where it takes 2 idle).
 */
export function vcpuThreadNice(vcpus: number, hostCpus: number): number {
  return vcpus > hostCpus ? VCPU_THREAD_NICE : 0;
}

/** Where a vCPU run by a native thread is, as the thread handling its exits sees it. */
type NativePhase = 'starting' | 'decide' | 'running' | 'pausing' | 'parked' | 'quitting' | 'done';

/** What enters the guest for a vCPU whose exits the main thread handles. */
interface GuestEntrant {
  state(): number;
  tid(): number;
  result(): number;
  filterError(): number;
  /** Enters the guest once (a native thread: starts to; the main thread: there and back); false if not idle. */
  run(): boolean;
  quit(): void;
  join(): void;
}

/**
 * The vCPU on the main thread itself (LoopVcpuRunner): {@link run} enters the guest and returns
 * with the result, so the vCPU is always idle when looked at. A result of -EINTR may mean the
 * event loop has work: the caller returns to it (see NativeVcpus.scan).
 */
class OnMainThread implements GuestEntrant {
  private last = 0;
  private ended = false;
  private readonly runNsAddress: number;

  constructor(
    private readonly runner: LoopVcpuRunner,
    private readonly fd: number,
    runNs: RunTime | undefined,
    private readonly hot: HotExits | undefined,
  ) {
    this.runNsAddress = runNs ? runTimeAddress(runNs) : 0;
  }

  state(): number {
    return this.ended ? VCPU_THREAD.DONE : VCPU_THREAD.IDLE;
  }
  tid(): number {
    return gettid();
  }
  result(): number {
    return this.last;
  }
  filterError(): number {
    return 0;
  }
  run(): boolean {
    this.last = this.runner.run(this.fd, this.runNsAddress, this.hot);
    return true;
  }
  /** The loop has run since the last -EINTR. */
  visited(): void {
    this.runner.visited();
  }
  quit(): void {
    this.ended = true;
  }
  join(): void {
    this.runner.stop();
  }
}

/**
 * A vCPU on the main thread goes back to the event loop at least this often (ms of handling
 * exits in a row), so that what its handlers queued (promise callbacks) is not held up.
 */
const ON_MAIN_SLICE_MS = 4;

/**
 * The vCPUs whose exits the main thread handles: each on a native thread of its own
 * (native/vcpu-threads.c) and, in 'main' mode, vCPU 0 on the main thread itself. No V8 isolate
 * per vCPU. Whoever calls {@link scan} (the main thread, when the group's notification fd is
 * readable) handles their exits. A native thread enters the guest when told, and bumps the group
 * (which makes the notification fd readable) when it is back. The control words mean what they
 * mean to a vCPU on a worker of its own (vcpu-worker.ts).
 */
type NativeEntry = { c: VcpuContext; thread?: GuestEntrant; phase: NativePhase };

export class NativeVcpus {
  private readonly vcpus: NativeEntry[] = [];
  /** The vCPU on the main thread, if any (also in `vcpus`, last: the native threads' exits go first). */
  private onMain: (NativeEntry & { thread: OnMainThread }) | undefined;
  /** Set by scan when the vCPU on the main thread left the guest for the event loop: call scan again from the loop. */
  yielded = false;

  /**
   * `vcpus`: the main thread's own, with `datas` in the same order. `onMainThread`: the id of the
   * vCPU the main thread runs itself (the first of `vcpus`), if any.
   */
  constructor(vcpus: Vcpu[], datas: VcpuWorkerData[], group: VcpuThreadGroup, kickSignal: number, post: (m: VcpuMessage) => void, onMainThread?: number) {
    try {
      datas.forEach((data, i) => {
        const entry: NativeEntry = { c: vcpuContext(data, post, vcpus[i]), phase: 'starting' };
        const runNs = data.countRunTime ? runTimeOf(data.shared, data.id) : undefined;
        if (data.id === onMainThread) {
          // No filter or nice value of its own: it is the main thread's (whose filter allows KVM_RUN).
          let runner: LoopVcpuRunner;
          try {
            runner = new LoopVcpuRunner(kickSignal, vcpus[i].runPageAddress());
          } catch (err) {
            entry.c.release(); // no thread will enter the guest for it
            throw err;
          }
          this.onMain = { ...entry, thread: new OnMainThread(runner, data.fd, runNs, entry.c.hotExits) };
          return;
        }
        this.vcpus.push(entry);
        const filter = data.seccompFilter && Buffer.from(data.seccompFilter.buffer, data.seccompFilter.byteOffset, data.seccompFilter.byteLength);
        // A thread that cannot start leaves the entry without one: advance() then releases it.
        entry.thread = new NativeVcpuThread(group, data.id, data.fd, kickSignal, filter, data.nice ?? 0, runNs, entry.c.hotExits);
      });
    } catch (err) {
      const detail = `vCPU threads could not start: ${(err as Error).stack ?? err}`;
      const first = this.onMain?.c ?? this.vcpus[0]?.c;
      if (first) first.stop({ reason: 'vmm-error', detail });
      else post({ kind: 'stop', vcpu: -1, reason: 'vmm-error', detail });
    }
    if (this.onMain) this.vcpus.push(this.onMain);
  }

  /** Whether a vCPU runs on the main thread (scan then enters the guest itself). */
  get hasMainThreadVcpu(): boolean {
    return this.onMain !== undefined;
  }

  /** Moves every vCPU on as far as it can go now; returns how many have not ended. */
  scan(): number {
    let live = 0;
    this.yielded = false;
    for (const v of this.vcpus) {
      if (v === this.onMain) {
        this.onMain.thread.visited();
        const until = process.uptime() * 1000 + ON_MAIN_SLICE_MS;
        while (v.phase !== 'done' && this.advance(v)) {
          if (v.phase === 'decide' && process.uptime() * 1000 > until) {
            this.yielded = true;
            break;
          }
        }
      } else while (v.phase !== 'done' && this.advance(v));
      if (v.phase !== 'done') live++;
    }
    return live;
  }

  /** Tells every thread to end once out of the guest (the caller kicks them). */
  quitAll(): void {
    for (const v of this.vcpus) {
      if (v.phase === 'done' || v.phase === 'quitting') continue;
      v.thread?.quit();
      v.phase = 'quitting';
    }
  }

  /** Moves one vCPU on by one step; true if it changed phase. */
  private advance(v: NativeEntry): boolean {
    const t = v.thread;
    if (!t) {
      v.c.release();
      v.phase = 'done';
      return true;
    }
    const state = t.state();
    if (state === VCPU_THREAD.DONE) {
      if (v.phase !== 'quitting') {
        const e = t.filterError();
        v.c.stop({ reason: 'vmm-error', detail: e !== 0 ? `vCPU ${v.c.data.id} thread could not install its seccomp filter: ${errnoText(e)}` : `vCPU ${v.c.data.id} thread ended` });
      }
      t.join();
      v.c.release();
      v.phase = 'done';
      return true;
    }
    if (state !== VCPU_THREAD.IDLE) return false; // starting, or inside KVM_RUN
    switch (v.phase) {
      case 'starting':
        v.phase = 'decide';
        v.c.ready(t.tid());
        return true;
      case 'running':
      case 'pausing': {
        const r = t.result();
        if (r >= 0) {
          v.phase = 'decide';
          try {
            v.c.handleExit();
          } catch (err) {
            v.c.stop({ reason: 'vmm-error', detail: `vCPU ${v.c.data.id} failed: ${(err as Error).stack ?? err}` });
          }
        } else if (r === -4 || r === -11) {
          // EINTR (a kick, or immediate_exit): parks if pausing, else looks at the control words;
          // on the main thread, only after the event loop has run (it may be why).
          if (v.phase === 'pausing') {
            v.c.parked();
            v.phase = 'parked';
          } else {
            v.phase = 'decide';
            if (v === this.onMain) {
              this.yielded = true;
              return false;
            }
          }
        } else {
          v.phase = 'decide';
          v.c.stop({ reason: 'vmm-error', detail: `ioctl(KVM_RUN) failed on vCPU ${v.c.data.id}: ${errnoText(-r)}` });
        }
        return true;
      }
      case 'parked':
        if (v.c.stayParked()) return false;
        v.c.unparked();
        v.phase = 'decide';
        return true;
      case 'decide': {
        const next = v.c.next();
        if (next === 'stop') {
          t.quit();
          v.phase = 'quitting';
        } else if (t.run()) v.phase = next === 'pause' ? 'pausing' : 'running';
        return v.phase !== 'decide';
      }
      default:
        return false;
    }
  }
}
