import type { Worker } from 'node:worker_threads';
import { FcRunError } from '../errors';
import type { Vcpu, Vm } from '../kvm/kvm';
import * as os from 'node:os';
import { EFD_CLOEXEC, EFD_NONBLOCK, errno, sys, SyscallError, tgkill } from '../kvm/libc';
import { KVM_RUN_OFFSETS } from '../kvm/structs';
import { Serial8250 } from '../devices/legacy/serial';
import { I8042 } from '../devices/legacy/i8042';
import { SharedState, StopReport, VCPU_KICK_SIGNAL, VcpuMessage } from './shared';
import type { VmMonitor } from '../monitor/vm-monitor';
import type { VcpuWorkerData, VirtioWindows } from './vcpu-worker';
import { takeVcpuThread } from './threads';

export interface MicroVmOptions {
  /** virtio-mmio windows, and the VMM thread that owns their devices. */
  virtio: VirtioWindows;
  vmmThread?: { stop(): void; onFailure(listener: (message: string) => void): void; stopped: Promise<unknown> };
  /** A terminal to read guest serial input from (raw mode); Ctrl-A x stops the VM. */
  serialIn?: NodeJS.ReadStream;
  /** fd guest serial output is written to; -1 discards it. */
  serialOutFd: number;
  ports: { serial: number; serialIrq: number; i8042: number; i8042Irq: number; bootTimer: number };
  launchStartNs: bigint;
  monitor: VmMonitor;
  /** Each vCPU thread's own seccomp filter (--seccomp-filter's vcpu category). */
  vcpuSeccompFilter?: Buffer;
}

export interface RunResult {
  stop: StopReport;
  /** Nanoseconds from launch start to the guest's boot-complete signal, if it sent one. */
  bootTimeNs?: bigint;
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
  private workers: Worker[] = [];

  constructor(
    vm: Vm,
    private readonly vcpus: Vcpu[],
    private readonly opts: MicroVmOptions,
  ) {
    this.shared = {
      serial: Serial8250.createState(),
      i8042: I8042.createState(),
      control: new SharedArrayBuffer(8),
    };
    this.serialIrqFd = eventfd();
    this.keyboardIrqFd = eventfd();
    vm.registerIrqfd(this.serialIrqFd, opts.ports.serialIrq);
    vm.registerIrqfd(this.keyboardIrqFd, opts.ports.i8042Irq);
    const one = Buffer.alloc(8);
    one.writeBigUInt64LE(1n);
    const raise = (fd: number) => () => void sys.write(fd, one, 8);
    this.serial = new Serial8250(this.shared.serial, { out: () => undefined, interrupt: raise(this.serialIrqFd) });
    this.i8042 = new I8042(this.shared.i8042, { reset: () => undefined, interrupt: raise(this.keyboardIrqFd) });
  }

  /**
   * Stops every vCPU: sets the stop word, sets immediate_exit in each kvm_run page (a thread about
   * to enter KVM_RUN returns at once) and signals each thread (one inside KVM_RUN returns EINTR).
   */
  private kick(tids: Map<number, number>): void {
    Atomics.store(new Int32Array(this.shared.control), 0, 1);
    for (const v of this.vcpus) {
      new Uint8Array(v.mapRun())[KVM_RUN_OFFSETS.immediate_exit] = 1;
      const tid = tids.get(v.id);
      if (tid !== undefined) tgkill(tid, os.constants.signals[VCPU_KICK_SIGNAL]);
    }
  }

  /** Starts every vCPU and resolves when the VM has stopped and every vCPU thread has ended. */
  run(): Promise<RunResult> {
    const ignoreKick = () => undefined;
    process.on(VCPU_KICK_SIGNAL, ignoreKick);
    return new Promise((resolve, reject) => {
      let bootTimeNs: bigint | undefined;
      let stop: StopReport | undefined;
      let running = this.vcpus.length;
      const tids = new Map<number, number>();
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
      const cleanup = () => {
        process.off('SIGTERM', onSignal);
        process.off('SIGINT', onSignal);
        this.opts.vmmThread?.stop();
        detachInput();
        if (kickTimer) clearInterval(kickTimer);
        process.off(VCPU_KICK_SIGNAL, ignoreKick);
      };
      const settle = () => {
        cleanup();
        // The VMM thread finishes what it was doing (and its last counts and log lines) before
        // the caller writes the final metrics; a thread that died does not hold this up for long.
        const vmm = this.opts.vmmThread;
        if (!vmm) return resolve({ stop: stop!, bootTimeNs });
        const timer = setTimeout(() => resolve({ stop: stop!, bootTimeNs }), 1000);
        void vmm.stopped.then(() => {
          clearTimeout(timer);
          resolve({ stop: stop!, bootTimeNs });
        });
      };
      const finish = (report: StopReport) => {
        if (stop) return;
        stop = report;
        this.kick(tids);
        // A signal can land just before a thread blocks; kicking again until all threads end is cheap.
        kickTimer = setInterval(() => this.kick(tids), 20);
      };
      for (const vcpu of this.vcpus) {
        const data: VcpuWorkerData = {
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
          ...this.opts.monitor.shared(),
        };
        const w = takeVcpuThread();
        w.on('message', (m: VcpuMessage) => {
          if (m.kind === 'ready') {
            tids.set(m.vcpu, m.tid);
            if (stop) this.kick(tids);
          } else if (m.kind === 'boot-time') {
            if (bootTimeNs === undefined) {
              bootTimeNs = BigInt(m.ns);
              const us = Number(bootTimeNs / 1000n);
              this.opts.monitor.vmm.bootTimeUs = us;
              this.opts.monitor.log.info('vmm', `Guest-boot-time = ${us} us ${Math.floor(us / 1000)} ms (written by vCPU ${m.vcpu})`);
            }
          } else finish(m);
        });
        w.on('error', (err) => {
          if (!stop) finish({ kind: 'stop', vcpu: vcpu.id, reason: 'vmm-error', detail: `vCPU ${vcpu.id} thread crashed: ${err.stack ?? err}` });
        });
        w.on('exit', () => {
          running--;
          if (running === 0) {
            if (stop) settle();
            else {
              cleanup();
              reject(new FcRunError('vcpu-threads', 'every vCPU thread ended without reporting why the VM stopped'));
            }
          }
        });
        this.workers.push(w);
        w.postMessage({ kind: 'start', data });
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
