import { FcRunError } from '../errors';
import type { SnapshotReply, VmmMessage, VmmWorkerData } from './vmm-worker';
import type { DevicesState } from './devices-state';
import { signalEventfd } from './event-loop';
import { startThread } from './threads';
import { VMM_WORKER_SCRIPT } from '../package-root';
import { EFD_CLOEXEC, EFD_NONBLOCK, errno, sys, SyscallError } from '../kvm/libc';
import { createSnapshotChannel, SNAPSHOT_OP } from './snapshot-channel';

export interface VmmThread {
  /** Ends the VMM thread's loop. */
  stop(): void;
  /** Called if the VMM thread fails or ends while the VM runs. */
  onFailure(listener: (message: string) => void): void;
  /** Device counters, once the thread has stopped. */
  stopped: Promise<Record<string, unknown>>;
  /**
   * Has the thread install its own seccomp filter (VmmWorkerData.seccompFilter) and resolves once
   * it has. Called after the process-wide filter: a thread with a filter of its own would make
   * that one (SECCOMP_FILTER_FLAG_TSYNC) fail.
   */
  installFilter(): Promise<void>;
  /**
   * Stops serving device events (queue notifications, TAP and socket readiness, rate limiter
   * timers) and resolves once no device is doing anything: from then on guest memory and device
   * state stay as they are until resume(). Pause the vCPUs first: an MMIO access that still
   * arrives is answered (a queue notification among them is kept for after resume). Stop requests,
   * API control requests (MMDS, rate limiters) and these requests are still served. Pausing a
   * paused thread does nothing.
   */
  pause(): Promise<void>;
  /** Every virtio device's state, and the MMDS's; only while paused (rejected otherwise). */
  saveDevices(): Promise<DevicesState>;
  /**
   * Serves device events again. After a restore (VmmWorkerData.restore) the thread starts paused,
   * and the first resume also wakes the restored devices: vsock sends its transport reset event,
   * and every queue is looked at once. Resuming a running thread does nothing.
   */
  resume(): Promise<void>;
}

function eventfd(): number {
  const fd = sys.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (fd < 0) throw new SyscallError('eventfd', errno());
  return fd;
}

/**
 * Starts the VMM thread and resolves once every device model is built (files opened) and, with
 * `restore`, given its saved state. A snapshot channel is made when `data` has none.
 */
export function startVmmThread(data: VmmWorkerData): Promise<VmmThread> {
  const snapshot = data.snapshot ?? createSnapshotChannel(eventfd());
  const command = new Int32Array(snapshot.command);
  return new Promise((resolve, reject) => {
    const w = startThread(VMM_WORKER_SCRIPT, 'vmm', { ...data, snapshot } satisfies VmmWorkerData);
    let resolveStopped: (c: Record<string, unknown>) => void = () => undefined;
    const stopped = new Promise<Record<string, unknown>>((r) => (resolveStopped = r));
    let ready = false;
    let stopping = false;
    let ended = false;
    let filtered: ((error?: string) => void) | undefined;
    const listeners: ((message: string) => void)[] = [];
    /** The snapshot request waiting for its answer (one at a time: `requests` chains them). */
    let waiting: { seq: number; done: (reply: SnapshotReply | { ok: false; message: string }) => void } | undefined;
    let requests: Promise<unknown> = Promise.resolve();
    let seq = 0;
    const failed = (message: string, code = 'device-setup', exitCode?: number) => {
      if (!ready) reject(new FcRunError(code, message, exitCode));
      else if (!stopping) for (const l of listeners) l(message);
    };
    const ask = (op: number, what: string): Promise<SnapshotReply & { ok: true }> => {
      const send = () =>
        new Promise<SnapshotReply & { ok: true }>((res, rej) => {
          if (ended) return rej(new FcRunError('snapshot-failed', `cannot ${what}: the VMM thread is not running`));
          const mine = (seq = (seq + 1) | 0);
          waiting = { seq: mine, done: (r) => (r.ok ? res(r as SnapshotReply & { ok: true }) : rej(new FcRunError('snapshot-failed', `cannot ${what}: ${r.message}`))) };
          Atomics.store(command, 0, op);
          Atomics.store(command, 1, mine);
          signalEventfd(snapshot.fd);
        });
      const p = requests.then(send);
      requests = p.catch(() => undefined);
      return p;
    };
    const answer = (r: SnapshotReply | { ok: false; message: string }) => {
      const w0 = waiting;
      waiting = undefined;
      w0?.done(r);
    };
    w.on('message', (m: VmmMessage) => {
      if (m.kind === 'ready') {
        ready = true;
        resolve({
          stop: () => {
            stopping = true;
            signalEventfd(data.stopFd);
          },
          onFailure: (l) => listeners.push(l),
          stopped,
          installFilter: () => {
            if (!data.seccompFilter || data.seccompFd === undefined) return Promise.resolve();
            const done = new Promise<void>((res, rej) => (filtered = (error) => (error ? rej(new FcRunError('seccomp', error)) : res())));
            signalEventfd(data.seccompFd);
            return done;
          },
          pause: () => ask(SNAPSHOT_OP.PAUSE, 'pause the devices').then(() => undefined),
          saveDevices: () =>
            ask(SNAPSHOT_OP.SAVE, 'save the devices').then((r) => {
              if (!r.state) throw new FcRunError('snapshot-failed', 'the VMM thread answered a save without the devices\' state');
              return r.state;
            }),
          resume: () => ask(SNAPSHOT_OP.RESUME, 'resume the devices').then(() => undefined),
        });
      } else if (m.kind === 'filtered') {
        filtered?.();
        filtered = undefined;
      } else if (m.kind === 'snapshot') {
        if (waiting?.seq === m.seq) answer(m);
      } else if (m.kind === 'error') {
        // A thread that could not take its filter fails the launch (which is waiting for it).
        if (filtered) filtered(m.message);
        else failed(m.message, m.code, m.exitCode);
        filtered = undefined;
      } else resolveStopped(m.counters);
    });
    w.on('error', (err) => failed(`the VMM thread failed: ${err.stack ?? err}`));
    w.on('exit', () => {
      ended = true;
      answer({ ok: false, message: 'the VMM thread ended' });
      failed('the VMM thread ended unexpectedly');
      resolveStopped({});
    });
  });
}
