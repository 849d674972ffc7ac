import * as fs from 'node:fs';
import { parentPort } from 'node:worker_threads';
import { Vcpu } from '../kvm/kvm';
import { errnoText, gettid } from '../kvm/libc';
import { NativeVcpuThread, VCPU_THREAD, VcpuThreadGroup } from '../kvm/vcpu-threads';
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
import { CONTROL, SharedState, StopReport, VcpuMessage, VcpuRequest } from './shared';
import { Logger, MetricsRegistry } from '../monitor';
import type { MetricsLayout, SharedLoggerOptions } from '../monitor';
import { exitField, VCPU_FIELDS } from '../monitor/vm-metrics';
import { describeInternalError, formatRegisters } from './registers';
import { MailboxClient } from './mmio-mailbox';
import { MMIO } from '../devices/virtio/mmio';
import { installThreadFilter } from '../kvm/seccomp';
import { saveVcpuState, VcpuStateSupport } from '../kvm/snapshot-state';

/**
 * One vCPU thread: runs KVM_RUN in a loop and handles port and MMIO exits right here, with device
 * state shared through SharedArrayBuffers. It reports to the VMM thread only to stop the VM or to
 * note the boot time.
 */
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

const port = parentPort!;


/** One vCPU's exit handling: the same whichever thread enters the guest (see the two drivers below). */
interface VcpuContext {
  readonly data: VcpuWorkerData;
  readonly vcpu: Vcpu;
  /** The vCPU's kvm_run page. */
  readonly bytes: Uint8Array;
  readonly control: Int32Array;
  /** Handles the exit KVM_RUN just returned with (read from the kvm_run page). */
  handleExit(): void;
  /** Reports why the VM stops (once) and tells every vCPU to stop. */
  stop(report: Omit<StopReport, 'kind' | 'vcpu'>): void;
  readonly stopped: boolean;
  /** Answers the request made to every parked vCPU, if it has not yet (CONTROL.REQUEST_GEN). */
  answerRequest(): void;
}

function vcpuContext(data: VcpuWorkerData): VcpuContext {
  const vcpu = new Vcpu(data.id, data.fd, data.mmapSize);
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
  const sleeper = new Int32Array(new SharedArrayBuffer(4));

  function signal(fd: number): void {
    try {
      fs.writeSync(fd, one);
    } catch {
      // The eventfd counter cannot overflow at this rate; a closed fd means the VM is stopping.
    }
  }

  /** Writes all of `buf`, waiting out EAGAIN on a non-blocking pipe rather than losing output. */
  function writeAll(fd: number, buf: Buffer): void {
    let off = 0;
    while (off < buf.length) {
      try {
        off += fs.writeSync(fd, buf, off);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code !== 'EAGAIN') {
          m.serialLostBytes += buf.length - off;
          return; // reader gone (EPIPE): output is dropped, the guest runs on
        }
        Atomics.wait(sleeper, 0, 0, 1);
      }
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
    port.postMessage({ kind: 'stop', vcpu: data.id, ...report } satisfies VcpuMessage);
  }

  const serial = new Serial8250(data.shared.serial, {
    out: (b) => {
      counts[slot.serialTxBytes]++;
      if (data.serialOutFd >= 0) writeAll(data.serialOutFd, Buffer.of(b));
    },
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
      port.postMessage({ kind: 'boot-time', vcpu: data.id, ns: ns.toString() } satisfies VcpuMessage);
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
      if (kind === VcpuRequest.REGISTERS) port.postMessage({ kind: 'answer', vcpu: data.id, gen, value: registers() } satisfies VcpuMessage);
      else if (kind === VcpuRequest.SAVE_STATE) port.postMessage({ kind: 'answer', vcpu: data.id, gen, value: saveState() } satisfies VcpuMessage);
      else port.postMessage({ kind: 'answer', vcpu: data.id, gen, error: `unknown request ${kind}` } satisfies VcpuMessage);
    } catch (err) {
      port.postMessage({ kind: 'answer', vcpu: data.id, gen, error: (err as Error).message } satisfies VcpuMessage);
    }
  }

  const page = vcpu.mapRun();
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

  return {
    data,
    vcpu,
    bytes,
    control,
    handleExit,
    stop,
    get stopped() {
      return stopped;
    },
    answerRequest,
  };
}

/**
 * One vCPU on this thread (a worker per vCPU): KVM_RUN is called right here, in a loop. The
 * thread starts idle (see threads.ts) and runs its vCPU once told which.
 */
function start(data: VcpuWorkerData): void {
  const c = vcpuContext(data);
  const { vcpu, bytes, control } = c;

  /** Pause: the thread waits until resumed (or stopped), answering requests meanwhile. */
  function park(): void {
    Atomics.add(control, CONTROL.PARKED, 1);
    Atomics.notify(control, CONTROL.PARKED);
    try {
      for (;;) {
        const wake = Atomics.load(control, CONTROL.WAKE);
        c.answerRequest();
        if (Atomics.load(control, CONTROL.STOP) !== 0 || Atomics.load(control, CONTROL.PAUSE) === 0) break;
        Atomics.wait(control, CONTROL.WAKE, wake, 1000);
      }
    } finally {
      Atomics.sub(control, CONTROL.PARKED, 1);
      Atomics.notify(control, CONTROL.PARKED);
    }
    bytes[KVM_RUN_OFFSETS.immediate_exit] = 0;
  }

  function loop(): void {
    while (!c.stopped) {
      if (Atomics.load(control, CONTROL.STOP) !== 0) return;
      if (Atomics.load(control, CONTROL.PAUSE) !== 0) {
        // KVM_RUN with immediate_exit set completes the I/O or MMIO exit just handled (the guest's
        // register gets the value read) without running guest code, so a parked vCPU's state is
        // whole. It can end in one more exit (the next round of a string I/O instruction): that
        // is handled first, and the next turn parks.
        bytes[KVM_RUN_OFFSETS.immediate_exit] = 1;
        if (!vcpu.run()) {
          park();
          continue;
        }
      } else if (!vcpu.run()) continue; // EINTR: check the control words again
      c.handleExit();
    }
  }

  try {
    // Right before the guest runs, as Firecracker does: the thread's own filter, if one was given.
    if (data.seccompFilter) installThreadFilter(Buffer.from(data.seccompFilter.buffer, data.seccompFilter.byteOffset, data.seccompFilter.byteLength));
    port.postMessage({ kind: 'ready', vcpu: data.id, tid: gettid() } satisfies VcpuMessage);
    loop();
  } catch (err) {
    c.stop({ reason: 'vmm-error', detail: `vCPU ${data.id} thread failed: ${(err as Error).stack ?? err}` });
  }
  port.close();
}

/** Where a vCPU run by a native thread is, as the thread handling its exits sees it. */
type NativePhase = 'starting' | 'decide' | 'running' | 'pausing' | 'parked' | 'quitting' | 'done';

/**
 * Every vCPU of the VM on native threads (native/vcpu-threads.c), their exits handled here, one
 * at a time, in this one thread: no V8 isolate per vCPU. A native thread enters the guest when
 * told (`run()`), and this thread sleeps on the group's futex until one of them is back, or the
 * main thread pokes it (pause, resume, a request, stop). The control words mean what they mean
 * to a vCPU on a thread of its own (see start above).
 */
function startAll(datas: VcpuWorkerData[], groupAddress: bigint, kickSignal: number): void {
  const group = VcpuThreadGroup.at(groupAddress);
  const vcpus: { c: VcpuContext; thread?: NativeVcpuThread; phase: NativePhase }[] = [];
  let control: Int32Array | undefined;
  try {
    for (const data of datas) {
      const c = vcpuContext(data);
      control = c.control;
      const filter = data.seccompFilter && Buffer.from(data.seccompFilter.buffer, data.seccompFilter.byteOffset, data.seccompFilter.byteLength);
      vcpus.push({ c, thread: new NativeVcpuThread(group, data.id, data.fd, kickSignal, filter), phase: 'starting' });
    }
  } catch (err) {
    const first = vcpus[0]?.c;
    const detail = `vCPU threads could not start: ${(err as Error).stack ?? err}`;
    if (first) first.stop({ reason: 'vmm-error', detail });
    else port.postMessage({ kind: 'stop', vcpu: -1, reason: 'vmm-error', detail } satisfies VcpuMessage);
  }
  // This thread runs what a vCPU worker runs but KVM_RUN: it takes the same filter (after the
  // native threads were made, which install their own and must not inherit this one on top).
  const own = datas[0]?.seccompFilter;
  if (own && vcpus.length === datas.length) {
    try {
      installThreadFilter(Buffer.from(own.buffer, own.byteOffset, own.byteLength));
    } catch (err) {
      vcpus[0].c.stop({ reason: 'vmm-error', detail: `the vCPU exit thread could not install its seccomp filter: ${(err as Error).message}` });
    }
  }
  const ctl = control;
  const stopWord = () => ctl === undefined || Atomics.load(ctl, CONTROL.STOP) !== 0;
  const fail = (v: (typeof vcpus)[number], err: unknown) => v.c.stop({ reason: 'vmm-error', detail: `vCPU ${v.c.data.id} failed: ${(err as Error).stack ?? err}` });

  /** Moves one vCPU on as far as it can go now; true if it changed phase. */
  function advance(v: (typeof vcpus)[number]): boolean {
    const t = v.thread;
    if (!t) {
      v.phase = 'done';
      return true;
    }
    const state = t.state();
    if (state === VCPU_THREAD.DONE && v.phase !== 'done') {
      if (v.phase !== 'quitting') {
        const e = t.filterError();
        v.c.stop({ reason: 'vmm-error', detail: e !== 0 ? `vCPU ${v.c.data.id} thread could not install its seccomp filter: ${errnoText(e)}` : `vCPU ${v.c.data.id} thread ended` });
      }
      t.join();
      v.phase = 'done';
      return true;
    }
    if (state !== VCPU_THREAD.IDLE) return false; // starting, or inside KVM_RUN
    switch (v.phase) {
      case 'starting':
        port.postMessage({ kind: 'ready', vcpu: v.c.data.id, tid: t.tid() } satisfies VcpuMessage);
        v.phase = 'decide';
        return true;
      case 'running':
      case 'pausing': {
        const r = t.result();
        if (r >= 0) {
          try {
            v.c.handleExit();
          } catch (err) {
            fail(v, err);
          }
          v.phase = 'decide';
        } else if (r === -4 || r === -11) {
          // EINTR (a kick, or immediate_exit): parks if pausing, else looks at the control words.
          if (v.phase === 'pausing') {
            Atomics.add(ctl!, CONTROL.PARKED, 1);
            Atomics.notify(ctl!, CONTROL.PARKED);
            v.phase = 'parked';
          } else v.phase = 'decide';
        } else {
          v.c.stop({ reason: 'vmm-error', detail: `ioctl(KVM_RUN) failed on vCPU ${v.c.data.id}: ${errnoText(-r)}`, registers: undefined });
          v.phase = 'decide';
        }
        return true;
      }
      case 'parked': {
        v.c.answerRequest();
        if (!stopWord() && Atomics.load(ctl!, CONTROL.PAUSE) !== 0) return false;
        Atomics.sub(ctl!, CONTROL.PARKED, 1);
        Atomics.notify(ctl!, CONTROL.PARKED);
        v.c.bytes[KVM_RUN_OFFSETS.immediate_exit] = 0;
        v.phase = 'decide';
        return true;
      }
      case 'decide': {
        if (v.c.stopped || stopWord()) {
          t.quit();
          v.phase = 'quitting';
        } else if (Atomics.load(ctl!, CONTROL.PAUSE) !== 0) {
          // As on a thread of its own: immediate_exit completes the exit just handled first.
          v.c.bytes[KVM_RUN_OFFSETS.immediate_exit] = 1;
          v.phase = t.run() ? 'pausing' : 'decide';
        } else v.phase = t.run() ? 'running' : 'decide';
        return v.phase !== 'decide';
      }
      default:
        return false;
    }
  }

  try {
    for (;;) {
      const seen = group.seq();
      let live = 0;
      for (const v of vcpus) {
        while (advance(v) && v.phase !== 'done');
        if (v.phase !== 'done') live++;
      }
      if (live === 0) break;
      group.wait(seen, 1000);
    }
  } catch (err) {
    // Nothing left to handle exits: every thread is told to end (a kick gets it out of the guest).
    if (vcpus[0]) fail(vcpus[0], err);
    for (const v of vcpus) v.thread?.quit();
  }
  port.close();
}

port.once('message', (m: { kind: 'start'; data: VcpuWorkerData } | { kind: 'start-all'; data: VcpuWorkerData[]; group: bigint; kickSignal: number }) => {
  if (m.kind === 'start-all') startAll(m.data, m.group, m.kickSignal);
  else start(m.data);
});
