import { FcRunError } from '../errors';
import type { Vcpu, Vm } from '../kvm/kvm';
import { installKickHandler, nativeVcpuLibraryBuilt, VcpuThreadGroup } from '../kvm/vcpu-threads';
import * as os from 'node:os';
import { fstatSync } from 'node:fs';
import { LogLevel } from '../monitor/logger';
import { EFD_CLOEXEC, EFD_NONBLOCK, errno, gettid, O_CLOEXEC, O_NONBLOCK, sys, SyscallError, tgkill } from '../kvm/libc';
import { KVM_RUN_OFFSETS } from '../kvm/structs';
import { Serial8250 } from '../devices/legacy/serial';
import { I8042 } from '../devices/legacy/i8042';
import { CONTROL, CONTROL_WORDS, SharedState, StopReport, VCPU_KICK_SIGNAL, VcpuAnswer, VcpuMessage, VcpuRequest } from './shared';
import type { VmMonitor } from '../monitor/vm-monitor';
import { NativeVcpus, vcpuThreadNice } from './vcpu-exits';
import type { VcpuWorkerData, VirtioWindows } from './vcpu-exits';
import type * as Net from 'node:net';
import { closeSync } from 'node:fs';
import { hotExitsWanted, takeVcpuThread, workerVcpus } from './threads';
import { serialOutputSink } from './serial-output';
import { writeOnce } from '../monitor/sink';
import { nonBlockingDescription } from '../nonblocking';
import type { VcpuThreadsMode } from './threads';
import type { VcpuStateSupport } from '../kvm/snapshot-state';

/**
 * Native vCPU threads' exits, handled by the main thread: after each, it waits up to
 * NATIVE_FAST_WAIT_US for the next one on the group's futex, for at most NATIVE_FAST_EXITS exits
 * in a row, before it goes back to the event loop (which hears of the next exit through the pipe).
 */
const NATIVE_FAST_WAIT_US = 50;
const NATIVE_FAST_EXITS = 64;

/**
 * The signal the main thread sends itself to come back to its vCPU after a pass of the event loop
 * ('main' mode with no native vCPU thread). Its default action is to ignore it, so one that comes
 * after the VM has stopped (or from elsewhere) does nothing.
 */
const WAKE_SIGNAL = 'SIGURG';

/** How often serial output that waits for its reader is offered to it again. */
const SERIAL_DRAIN_MS = 10;
/** Once the VM has stopped, how long fc-run waits for a reader that takes none of the rest... */
const SERIAL_STALL_MS = 2000;
/** ...and for one that takes it slowly. */
const SERIAL_FINISH_MS = 10_000;

export interface MicroVmOptions {
  /** virtio-mmio windows, and the VMM thread that owns their devices. */
  virtio: VirtioWindows;
  vmmThread?: {
    stop(): void;
    onFailure(listener: (message: string) => void): void;
    stopped: Promise<unknown>;
    pause?(): Promise<void>;
    resume?(): Promise<void>;
  };
  /** A terminal to read guest serial input from (raw mode); Ctrl-A x stops the VM. */
  serialIn?: NodeJS.ReadStream;
  /** fd guest serial output is written to; -1 discards it. */
  serialOutFd: number;
  ports: { serial: number; serialIrq: number; i8042: number; i8042Irq: number; bootTimer: number };
  launchStartNs: bigint;
  monitor: VmMonitor;
  /** Each vCPU thread's own seccomp filter (--seccomp-filter's vcpu category). */
  vcpuSeccompFilter?: Buffer;
  /** Serial and i8042 register state to start from (a restored snapshot's). */
  legacy?: LegacyState;
  /** Every vCPU parks before running guest code, until resume(). */
  startPaused?: boolean;
  /** What this host's KVM can save of a vCPU (for snapshots). */
  snapshotSupport?: VcpuStateSupport;
  /** How vCPUs run (see VcpuThreadsMode); default 'worker' (fc-run's launch passes vcpuThreadsMode()). */
  vcpuThreads?: VcpuThreadsMode;
  /**
   * Whether the vCPU threads count their CPU time inside KVM_RUN (RunResult.vcpuRunNs); default
   * true. Off under a vcpu seccomp filter from --seccomp-filter, which need not allow clock_gettime.
   */
  countRunTime?: boolean;
}

/** The legacy devices' register state (checked when it is loaded: it may come from a file). */
export interface LegacyState {
  serial: unknown;
  i8042: unknown;
}

export interface RunResult {
  stop: StopReport;
  /** Nanoseconds from launch start to the guest's boot-complete signal, if it sent one. */
  bootTimeNs?: bigint;
  /**
   * CPU time the vCPU threads spent inside KVM_RUN, all vCPUs together, in nanoseconds: the
   * guest's share of the process's CPU time. Undefined when it was not counted (no native library).
   */
  vcpuRunNs?: bigint;
}

function eventfd(): number {
  const fd = sys.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (fd < 0) throw new SyscallError('eventfd', errno());
  return fd;
}

/**
 * The running microVM on the VMM thread: owns the vCPU threads and the interrupt eventfds, and
 * waits until a vCPU reports that the VM stopped.
 */
export class MicroVm {
  private readonly shared: SharedState;
  readonly serial: Serial8250;
  readonly i8042: I8042;
  private readonly serialIrqFd: number;
  private readonly keyboardIrqFd: number;
  /** Each running vCPU thread's id, for the kick signal. */
  private readonly tids = new Map<number, number>();
  private readonly control: Int32Array;
  private stopping = false;
  /** The last of the serialized operations (pause, resume, register dump, snapshot): see exclusive(). */
  private pausing: Promise<void> | undefined;
  private paused = false;
  private answers = new Map<number, (a: VcpuAnswer) => void>();
  /**
   * 'native' mode: the vCPU threads' group (poked whenever the control words change) and the pipe
   * they notify the main thread through; gone once the threads have ended.
   */
  private native: { group: VcpuThreadGroup; pipe?: { read: number; write: number }; wake: () => void } | undefined;
  /** vCPUs 0 to workerCount - 1 run on workers of their own, the others on native threads. */
  private readonly workerCount: number;
  /** 'main' mode: vCPU 0 runs on the main thread (the others on native threads). */
  private readonly mainThreadVcpu: boolean;
  private readonly ownTid = gettid();
  /** Whether the vCPU threads count their time inside KVM_RUN: decided before any seccomp filter. */
  private readonly runTimeCounted: boolean;
  /** Whether vCPU threads handle the serial console's hot exits natively (hotExitsWanted). */
  private readonly hotExits: boolean;
  /** Whether the kick signal has the native no-op handler (else run() gives it a Node listener). */
  private readonly quietKicks: boolean;
  /** stderr, non-blocking (see stderr()); -1 if closed. Opened before the seccomp filters. */
  private readonly stderrFd: number;
  /** Whether stderr is the serial output's file (a message there would wait behind the output). */
  private readonly stderrIsSerial: boolean;
  /** Writes serial output that waited for its reader, while some waits. */
  private outputTimer: NodeJS.Timeout | undefined;
  /** The vCPU threads' nice value (vcpuThreadNice), when some vCPU runs on a native thread. */
  private readonly vcpuNice: number | undefined;

  constructor(
    vm: Vm,
    private readonly vcpus: Vcpu[],
    private readonly opts: MicroVmOptions,
  ) {
    this.shared = {
      serial: Serial8250.createState(),
      i8042: I8042.createState(),
      control: new SharedArrayBuffer(4 * CONTROL_WORDS),
      runTime: new SharedArrayBuffer(8 * Math.max(1, ...vcpus.map((v) => v.id + 1))),
    };
    this.control = new Int32Array(this.shared.control);
    if (opts.legacy) {
      Serial8250.restoreState(this.shared.serial, opts.legacy.serial, 'legacy.serial');
      I8042.restoreState(this.shared.i8042, opts.legacy.i8042, 'legacy.i8042');
    }
    if (opts.startPaused) {
      Atomics.store(this.control, CONTROL.PAUSE, 1);
      this.paused = true;
    }
    this.serialIrqFd = eventfd();
    this.keyboardIrqFd = eventfd();
    vm.registerIrqfd(this.serialIrqFd, opts.ports.serialIrq);
    vm.registerIrqfd(this.keyboardIrqFd, opts.ports.i8042Irq);
    const one = Buffer.alloc(8);
    one.writeBigUInt64LE(1n);
    const raise = (fd: number) => () => void sys.write(fd, one, 8);
    // The main thread's side of the UART: terminal input in, and output that waited for its reader out.
    const vmmCounts = opts.monitor.vmm;
    this.serial = new Serial8250(this.shared.serial, {
      out: serialOutputSink(opts.serialOutFd, (n) => (vmmCounts.serialTxBytes += n)),
      lost: (n) => (vmmCounts.serialLostBytes += n),
      interrupt: raise(this.serialIrqFd),
    });
    this.i8042 = new I8042(this.shared.i8042, { reset: () => undefined, interrupt: raise(this.keyboardIrqFd) });
    // Restored (the interrupt controllers too): a guest waiting on the UART's empty interrupt gets it.
    if (opts.legacy) this.serial.raiseTransmitterInterrupt();
    this.workerCount = workerVcpus(opts.vcpuThreads ?? 'worker', vcpus.length);
    this.mainThreadVcpu = opts.vcpuThreads === 'main';
    const native = nativeVcpuLibraryBuilt();
    this.runTimeCounted = (opts.countRunTime ?? true) && native;
    this.hotExits = hotExitsWanted() && native;
    // Here, before the seccomp filters: it looks for the native library (access) and sets a handler.
    this.quietKicks = installKickHandler(os.constants.signals[VCPU_KICK_SIGNAL]);
    this.stderrFd = nonBlockingDescription(2);
    this.stderrIsSerial = ((): boolean => {
      try {
        const err = fstatSync(2);
        const out = opts.serialOutFd >= 0 ? fstatSync(opts.serialOutFd) : undefined;
        return out !== undefined && err.dev === out.dev && err.ino === out.ino;
      } catch {
        return false;
      }
    })();
    const nativeThreads = vcpus.length - this.workerCount - (this.mainThreadVcpu ? 1 : 0);
    if (this.workerCount < vcpus.length && nativeThreads === 0) {
      // Only the vCPU on the main thread: no native thread to hear from, so no pipe (nor node:net
      // to read it); the main thread goes back to its vCPU on a signal it sends itself (wake, set by run).
      const group = VcpuThreadGroup.create();
      this.native = { group, wake: () => group.poke() };
    } else if (this.workerCount < vcpus.length) {
      // The native vCPU threads write a byte to this pipe when they have news; the main thread's
      // event loop reads it and handles their exits (NativeVcpus). Made last, before any filter.
      const fds = Buffer.alloc(8);
      if (sys.pipe2(fds, O_CLOEXEC | O_NONBLOCK) < 0) throw new SyscallError('pipe2', errno());
      const [read, write] = [fds.readInt32LE(0), fds.readInt32LE(4)];
      try {
        const group = VcpuThreadGroup.create(write);
        this.native = { group, pipe: { read, write }, wake: () => group.poke() };
      } catch (err) {
        closeSync(read);
        closeSync(write);
        throw err;
      }
    }
    // Here too, before any filter: the CPUs fc-run may run on (sched_getaffinity).
    this.vcpuNice = this.native ? vcpuThreadNice(vcpus.length, os.availableParallelism()) : undefined;
  }

  /**
   * Gets every vCPU out of the guest: sets immediate_exit in each kvm_run page (a thread about to
   * enter KVM_RUN returns at once), signals each thread (one inside KVM_RUN returns EINTR) and
   * wakes parked threads. The control words say what they do next (stop or park).
   */
  private kick(): void {
    for (const v of this.vcpus) {
      new Uint8Array(v.mapRun())[KVM_RUN_OFFSETS.immediate_exit] = 1;
      const tid = this.tids.get(v.id);
      // Not this thread (a vCPU on the main thread is out of the guest while this runs).
      if (tid !== undefined && tid !== this.ownTid) tgkill(tid, os.constants.signals[VCPU_KICK_SIGNAL]);
    }
    this.wakeParked();
  }

  private wakeParked(): void {
    Atomics.add(this.control, CONTROL.WAKE, 1);
    Atomics.notify(this.control, CONTROL.WAKE);
    this.native?.wake();
  }

  /** Serial output waits for its reader: write it on as the reader takes it (a vCPU said so). */
  private drainSerialOutput(): void {
    if (this.outputTimer) return;
    this.outputTimer = setInterval(() => {
      // Not while paused: an interrupt raised now could miss a snapshot of the interrupt
      // controllers and be in the UART's saved state, and the restored guest would never see it.
      if (this.paused) return;
      if (this.serial.flush() !== 0) return;
      clearInterval(this.outputTimer);
      this.outputTimer = undefined;
    }, SERIAL_DRAIN_MS);
  }

  /**
   * The VM has stopped: the serial output still waiting is written as its reader takes it, while
   * it takes some at least every SERIAL_STALL_MS and for SERIAL_FINISH_MS at most; a SIGTERM,
   * SIGINT or SIGHUP meanwhile ends the wait. What is left then is dropped, counted and reported.
   */
  private finishSerialOutput(): Promise<void> {
    if (this.outputTimer) clearInterval(this.outputTimer);
    this.outputTimer = undefined;
    return new Promise((resolve) => {
      let left = 1;
      const pending = (): number => {
        const n = this.serial.flush();
        return n < 0 ? left : n; // -1: another thread is writing (a vCPU thread just ending)
      };
      left = pending();
      if (left === 0) return resolve();
      const start = Date.now();
      let progress = start;
      let timer: NodeJS.Timeout | undefined;
      let why: string | undefined;
      const SIGNALS = ['SIGTERM', 'SIGINT', 'SIGHUP'] as const;
      const onSignal = (sig: NodeJS.Signals) => {
        why = `${sig} came while it was written`;
        if (timer) clearTimeout(timer);
        done();
      };
      const done = () => {
        for (const sig of SIGNALS) process.off(sig, onSignal);
        if (left > 0) this.dropSerialOutput(why ?? 'the output took too little');
        resolve();
      };
      for (const sig of SIGNALS) process.on(sig, onSignal);
      const step = () => {
        timer = undefined;
        const now = pending();
        if (now < left) progress = Date.now();
        left = now;
        if (left === 0) return done();
        if (Date.now() - progress >= SERIAL_STALL_MS) why = `the output took none for ${SERIAL_STALL_MS} ms`;
        else if (Date.now() - start >= SERIAL_FINISH_MS) why = `the output was still taking it after ${SERIAL_FINISH_MS} ms`;
        if (why) return done();
        timer = setTimeout(step, SERIAL_DRAIN_MS);
      };
      timer = setTimeout(step, SERIAL_DRAIN_MS);
    });
  }

  /**
   * Drops the serial output still waiting, counts it and says so: in the log, else on stderr,
   * unless stderr is the serial output itself (the message would wait behind what was dropped).
   */
  private dropSerialOutput(why: string): void {
    const dropped = this.serial.discardOutput();
    if (dropped === 0) return;
    this.opts.monitor.vmm.serialLostBytes += dropped;
    const text = `${dropped} bytes of guest serial output dropped: ${why}`;
    const log = this.opts.monitor.log;
    if (log.enabled(LogLevel.Warning)) return log.warn('vmm', text);
    if (!this.stderrIsSerial) this.stderr(`fc-run: ${text}\n`);
  }

  /**
   * One message on stderr, written without blocking (a reader that stopped, or a full pipe, must
   * not hold the main thread, which may also be vCPU 0's): what does not fit is lost.
   */
  private stderr(text: string): void {
    if (this.stderrFd >= 0) writeOnce(this.stderrFd, Buffer.from(text));
  }

  /** The legacy devices' register state (the VM must be paused). */
  saveLegacyState(): LegacyState {
    return { serial: Serial8250.saveState(this.shared.serial), i8042: I8042.saveState(this.shared.i8042) };
  }

  /** Whether the VM is paused (every vCPU parked, the devices quiet). */
  get isPaused(): boolean {
    return this.paused;
  }

  /**
   * Runs `op` after every pause, resume, register dump or snapshot asked for before it has
   * finished, and before any asked for after it starts: they never interleave (a resume asked for
   * during a snapshot waits for it; two snapshots are taken one after the other).
   */
  private exclusive<T>(op: () => Promise<T>): Promise<T> {
    const next = (this.pausing ?? Promise.resolve()).then(op);
    this.pausing = next.then(
      () => undefined,
      () => undefined,
    );
    return next;
  }

  /**
   * Pauses the VM: every vCPU out of KVM_RUN and parked, then the device threads quiesced. Resolves
   * once all of that holds; rejects if the VM stops first.
   */
  pause(): Promise<void> {
    return this.exclusive(() => this.pauseNow());
  }

  /** Resumes a paused VM: devices first, then the vCPUs. */
  resume(): Promise<void> {
    return this.exclusive(() => this.resumeNow());
  }

  /** Runs `op` while the VM stays paused (nothing resumes it meanwhile): taking a snapshot. */
  whilePaused<T>(op: () => Promise<T>): Promise<T> {
    return this.exclusive(async () => {
      if (!this.paused) throw new FcRunError('vm-not-paused', 'the microVM must be paused before a snapshot is taken: PATCH /vm {"state": "Paused"} first');
      return op();
    });
  }

  private async pauseNow(): Promise<void> {
    if (this.paused) return;
    if (this.stopping) throw new FcRunError('vm-stopped', 'the microVM is stopping');
    Atomics.store(this.control, CONTROL.PAUSE, 1);
    await this.untilParked();
    await this.opts.vmmThread?.pause?.();
    this.paused = true;
    this.opts.monitor.log.info('vmm', 'paused');
  }

  private async resumeNow(): Promise<void> {
    if (!this.paused) return;
    if (this.stopping) throw new FcRunError('vm-stopped', 'the microVM is stopping');
    await this.opts.vmmThread?.resume?.();
    Atomics.store(this.control, CONTROL.PAUSE, 0);
    this.wakeParked();
    this.paused = false;
    this.opts.monitor.log.info('vmm', 'resumed');
  }

  /**
   * Every vCPU's registers, formatted, without stopping the VM: a running VM is paused for the
   * moment it takes to read them (each vCPU thread reads its own), then resumed.
   */
  dumpRegisters(): Promise<string[]> {
    return this.exclusive(async () => {
      const wasPaused = this.paused;
      await this.pauseNow();
      try {
        return (await this.requestFromVcpus(VcpuRequest.REGISTERS)) as string[];
      } finally {
        if (!wasPaused && !this.stopping) await this.resumeNow();
      }
    });
  }

  /** Resolves when every vCPU thread is parked, kicking until then (a signal can land just before a thread blocks). */
  private untilParked(): Promise<void> {
    return new Promise((resolve, reject) => {
      const check = () => {
        if (this.stopping) return reject(new FcRunError('vm-stopped', 'the microVM stopped while pausing'));
        if (Atomics.load(this.control, CONTROL.PARKED) >= this.vcpus.length) return resolve();
        this.kick();
        setTimeout(check, 2);
      };
      check();
    });
  }

  /**
   * Asks every parked vCPU thread for something (its registers, its saved state) and resolves with
   * the answers in vCPU order. The VM must be paused.
   */
  requestFromVcpus(kind: (typeof VcpuRequest)[keyof typeof VcpuRequest]): Promise<unknown[]> {
    if (this.stopping) return Promise.reject(new FcRunError('vm-stopped', 'the microVM has stopped'));
    if (!this.paused) return Promise.reject(new FcRunError('vm-not-paused', 'the microVM must be paused first'));
    Atomics.store(this.control, CONTROL.REQUEST_KIND, kind);
    const gen = Atomics.add(this.control, CONTROL.REQUEST_GEN, 1) + 1;
    const pending = this.vcpus.map(
      (v) =>
        new Promise<unknown>((resolve, reject) => {
          this.answers.set(v.id, (a) => {
            if (a.gen !== gen) return;
            this.answers.delete(v.id);
            if (a.error !== undefined) reject(new FcRunError('vcpu-request', `vCPU ${v.id}: ${a.error}`));
            else resolve(a.value);
          });
        }),
    );
    this.wakeParked();
    return Promise.all(pending);
  }

  /** Every vCPU's CPU time inside KVM_RUN so far, added up (RunResult.vcpuRunNs). */
  vcpuRunNs(): bigint | undefined {
    if (!this.runTimeCounted) return undefined;
    return new BigUint64Array(this.shared.runTime).reduce((a, b) => a + b, 0n);
  }

  /** Starts every vCPU and resolves when the VM has stopped and every vCPU thread has ended. */
  run(): Promise<RunResult> {
    // The kick signal needs a handler (its default ends the process): one that does nothing, or
    // without the native library a listener of Node's (which wakes the event loop at each kick).
    const ignoreKick = () => undefined;
    const quietKicks = this.quietKicks;
    if (!quietKicks) process.on(VCPU_KICK_SIGNAL, ignoreKick);
    return new Promise((resolve, reject) => {
      let bootTimeNs: bigint | undefined;
      let stop: StopReport | undefined;
      let running = this.vcpus.length;
      const tids = this.tids;
      let kickTimer: NodeJS.Timeout | undefined;
      this.opts.vmmThread?.onFailure((message) => finish({ kind: 'stop', vcpu: -1, reason: 'vmm-error', detail: message }));
      const detachInput = this.attachSerialInput(() =>
        finish({ kind: 'stop', vcpu: -1, reason: 'stopped', detail: 'stopped from the console (Ctrl-A x)' }),
      );
      // SIGTERM (and SIGINT, which a raw terminal sends to the guest instead) stop the VM the same
      // way Ctrl-A x does, so logs and metrics get their last lines.
      const onSignal = (sig: NodeJS.Signals) => finish({ kind: 'stop', vcpu: -1, reason: 'stopped', detail: `stopped by ${sig}` });
      process.on('SIGTERM', onSignal);
      process.on('SIGINT', onSignal);
      // SIGHUP (the terminal or session went away) would end the process with no last lines.
      process.on('SIGHUP', onSignal);
      // SIGQUIT: where is the guest? Every vCPU's registers, to the log (or stderr without one).
      const onQuit = () => {
        this.dumpRegisters().then(
          (dumps) => {
            const text = dumps.map((d, i) => `vCPU ${i} registers (SIGQUIT):\n${d}`).join('\n');
            const log = this.opts.monitor.log;
            if (log.enabled(LogLevel.Warning)) log.warn('vmm', text);
            else this.stderr(`fc-run: ${text}\n`);
          },
          (err: Error) => this.opts.monitor.log.warn('vmm', `SIGQUIT: cannot read the registers: ${err.message}`),
        );
      };
      process.on('SIGQUIT', onQuit);
      // SIGUSR1: Node's own answer is to start its inspector (a TCP port that runs the code of
      // whoever connects), which the seccomp filters refuse by killing fc-run. A listener of our
      // own keeps Node's away: the signal is logged and the VM runs on.
      const onUsr1 = () => this.opts.monitor.log.warn('vmm', 'SIGUSR1 ignored (it would start Node\'s inspector)');
      process.on('SIGUSR1', onUsr1);
      const cleanup = () => {
        process.off('SIGUSR1', onUsr1);
        process.off('SIGTERM', onSignal);
        process.off('SIGINT', onSignal);
        process.off('SIGHUP', onSignal);
        process.off('SIGQUIT', onQuit);
        this.opts.vmmThread?.stop();
        detachInput();
        if (kickTimer) clearInterval(kickTimer);
        if (!quietKicks) process.off(VCPU_KICK_SIGNAL, ignoreKick);
      };
      const settle = () => {
        cleanup();
        // The VMM thread finishes what it was doing (and its last counts and log lines) before
        // the caller writes the final metrics; a thread that died does not hold this up for long.
        const vmm = this.opts.vmmThread;
        const result = (): RunResult => ({ stop: stop!, bootTimeNs, vcpuRunNs: this.vcpuRunNs() });
        let timer: NodeJS.Timeout | undefined;
        const vmmDone = vmm && Promise.race([vmm.stopped, new Promise((r) => (timer = setTimeout(r, 1000)))]);
        void Promise.all([vmmDone, this.finishSerialOutput()]).then(() => {
          clearTimeout(timer);
          resolve(result());
        });
      };
      const finish = (report: StopReport) => {
        if (stop) return;
        stop = report;
        this.stopping = true;
        Atomics.store(this.control, CONTROL.STOP, 1);
        const gen = Atomics.load(this.control, CONTROL.REQUEST_GEN);
        for (const [vcpu, answered] of this.answers) answered({ kind: 'answer', vcpu, gen, error: 'the microVM stopped' });
        this.kick();
        // A signal can land just before a thread blocks; kicking again until all threads end is cheap.
        kickTimer = setInterval(() => this.kick(), 20);
      };
      const dataOf = (vcpu: Vcpu): VcpuWorkerData => ({
        id: vcpu.id,
        fd: vcpu.fd,
        mmapSize: vcpu.mmapSize,
        shared: this.shared,
        serialOutFd: this.opts.serialOutFd,
        serialIrqFd: this.serialIrqFd,
        keyboardIrqFd: this.keyboardIrqFd,
        launchStartNs: this.opts.launchStartNs.toString(),
        ports: { serial: this.opts.ports.serial, i8042: this.opts.ports.i8042, bootTimer: this.opts.ports.bootTimer },
        virtio: this.opts.virtio,
        seccompFilter: this.opts.vcpuSeccompFilter,
        snapshotSupport: this.opts.snapshotSupport,
        // With more vCPUs than host CPUs, native vCPU threads run below the main thread, which
        // handles their exits; a worker beside them (mixed) takes the same priority: a guest's
        // vCPUs wait on each other (IPIs, locks), and an AP at nice 10 beside a BSP at 0 on a busy
        // host ran a 3-vCPU Linux boot at a tenth of its speed while the BSP spun waiting for it.
        nice: this.vcpuNice,
        countRunTime: this.runTimeCounted,
        hotExits: this.hotExits,
        ...this.opts.monitor.shared(),
      });
      const onMessage = (m: VcpuMessage) => {
        if (m.kind === 'ready') {
          tids.set(m.vcpu, m.tid);
          if (stop || Atomics.load(this.control, CONTROL.PAUSE) !== 0) this.kick();
        } else if (m.kind === 'answer') {
          this.answers.get(m.vcpu)?.(m);
        } else if (m.kind === 'boot-time') {
          if (bootTimeNs === undefined) {
            bootTimeNs = BigInt(m.ns);
            const us = Number(bootTimeNs / 1000n);
            this.opts.monitor.vmm.bootTimeUs = us;
            this.opts.monitor.log.info('vmm', `Guest-boot-time = ${us} us ${Math.floor(us / 1000)} ms (written by vCPU ${m.vcpu})`);
          }
        } else if (m.kind === 'serial-backlog') {
          this.drainSerialOutput();
        } else if (m.kind !== 'loaded') finish(m);
      };
      /** One of the things running vCPUs (a worker, or the native threads together) has ended. */
      const ended = () => {
        running--;
        if (running === 0) {
          if (stop) settle();
          else {
            cleanup();
            reject(new FcRunError('vcpu-threads', 'every vCPU thread ended without reporting why the VM stopped'));
          }
        }
      };
      const onWorkers = this.vcpus.slice(0, this.workerCount);
      const onNative = this.vcpus.slice(this.workerCount);
      running = onWorkers.length + (this.native ? 1 : 0);
      if (this.native) {
        // The vCPUs on native threads of their own, their exits handled here, on the main thread,
        // whenever the threads' pipe says there is news (and at once, for the first time).
        const { group, pipe: fds } = this.native;
        const native = new NativeVcpus(onNative, onNative.map(dataOf), group, os.constants.signals[VCPU_KICK_SIGNAL], onMessage, this.mainThreadVcpu ? onNative[0].id : undefined);
        // eslint-disable-next-line @typescript-eslint/no-require-imports
        const pipe = fds && new (require('node:net') as typeof Net).Socket({ fd: fds.read, readable: true, writable: false });
        let done = false;
        // Without a pipe (only the vCPU on this thread): a signal this thread sends itself brings
        // the event loop back here after its next pass, from its poll phase as the pipe would.
        // (Not setImmediate: while an immediate runs, libuv counts the loop as having work, so the
        // watcher would get the vCPU out again at once.) One signal outstanding at a time: each
        // return to the loop then scans once.
        let soon = false;
        const scanSoon = () => {
          if (soon) return;
          soon = true;
          tgkill(this.ownTid, os.constants.signals[WAKE_SIGNAL]);
        };
        const onWake = () => {
          if (!soon) return; // sent by someone else: nothing to do
          soon = false;
          scan();
        };
        // What keeps the event loop alive while the vCPU runs (the pipe does, when there is one; a signal listener does not).
        let alive: NodeJS.Timeout | undefined;
        if (!pipe) {
          this.native.wake = scanSoon;
          process.on(WAKE_SIGNAL, onWake);
          alive = setInterval(() => undefined, 1 << 30);
        }
        const wake = this.native.wake;
        const scan = () => {
          if (done) return;
          group.rearm();
          let live: number;
          try {
            let seq = group.seq();
            live = native.scan();
            if (native.yielded) {
              // The vCPU on this thread left the guest for the event loop: back here after it.
              wake();
              return;
            }
            // While exits come quickly, wait for the next one here (a futex, woken by the vCPU
            // thread) instead of through the notification pipe and the event loop; a short,
            // bounded stretch, so the event loop's other work waits no longer than that. (Not
            // with a vCPU on this thread: scan enters the guest itself until the loop has work.)
            for (let n = 0; live > 0 && n < NATIVE_FAST_EXITS && !native.hasMainThreadVcpu; n++) {
              const next = group.wait(seq, NATIVE_FAST_WAIT_US);
              if (next === seq) break;
              seq = next;
              live = native.scan();
            }
          } catch (err) {
            if (!stop) finish({ kind: 'stop', vcpu: onNative[0].id, reason: 'vmm-error', detail: `handling vCPU exits failed: ${(err as Error).stack ?? err}` });
            native.quitAll();
            wake();
            return;
          }
          if (live > 0) return;
          done = true;
          if (!pipe) process.off(WAKE_SIGNAL, onWake);
          clearInterval(alive);
          pipe?.destroy();
          if (fds) closeSync(fds.write);
          // No poke may reach the group once freed (a request after the VM stopped).
          this.native = undefined;
          group.free();
          ended();
        };
        pipe?.on('data', scan);
        pipe?.on('error', (err) => {
          if (!stop) finish({ kind: 'stop', vcpu: onNative[0].id, reason: 'vmm-error', detail: `the vCPU threads' notification pipe failed: ${err.message}` });
        });
        setImmediate(scan);
      }
      // The vCPUs on workers of their own: each handles its exits itself.
      for (const vcpu of onWorkers) {
        const w = takeVcpuThread();
        w.on('message', onMessage);
        w.on('error', (err) => {
          if (!stop) finish({ kind: 'stop', vcpu: vcpu.id, reason: 'vmm-error', detail: `vCPU ${vcpu.id} thread crashed: ${err.stack ?? err}` });
        });
        w.on('exit', ended);
        w.postMessage({ kind: 'start', data: dataOf(vcpu) });
      }
    });
  }

  /**
   * Feeds terminal input to the UART. Bytes that do not fit the receive FIFO wait (stdin is
   * paused) until the guest drains it, so nothing typed is lost. Ctrl-A x quits, Ctrl-A Ctrl-A
   * sends a literal Ctrl-A.
   */
  private attachSerialInput(quit: () => void): () => void {
    const input = this.opts.serialIn;
    if (!input || !input.isTTY) return () => undefined;
    input.setRawMode(true);
    let pending = Buffer.alloc(0);
    let escape = false;
    let retry: NodeJS.Timeout | undefined;
    const pump = () => {
      retry = undefined;
      const n = this.serial.enqueue(pending);
      this.opts.monitor.vmm.serialRxBytes += n;
      pending = pending.subarray(n);
      if (pending.length > 0) {
        input.pause();
        retry = setTimeout(pump, 5);
      } else {
        input.resume();
      }
    };
    const onData = (chunk: Buffer) => {
      const keep: number[] = [];
      for (const b of chunk) {
        if (escape) {
          escape = false;
          if (b === 0x78 /* x */) return quit();
          if (b === 0x01) keep.push(b);
        } else if (b === 0x01) {
          escape = true;
        } else {
          keep.push(b);
        }
      }
      pending = Buffer.concat([pending, Buffer.from(keep)]);
      if (!retry) pump();
    };
    input.on('data', onData);
    input.resume();
    return () => {
      if (retry) clearTimeout(retry);
      input.off('data', onData);
      input.setRawMode(false);
      input.pause();
    };
  }
}
