import { Worker } from 'node:worker_threads';
import { FcRunError } from '../errors';
import type { VmmMessage, VmmWorkerData } from './vmm-worker';
import { signalEventfd } from './event-loop';
import { threadLoaderCode } from './threads';
import { VMM_WORKER_SCRIPT } from '../package-root';

const VMM_THREAD_CODE = threadLoaderCode(VMM_WORKER_SCRIPT);

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
}

/** Starts the VMM thread and resolves once every device model is built (files opened). */
export function startVmmThread(data: VmmWorkerData): Promise<VmmThread> {
  return new Promise((resolve, reject) => {
    const w = new Worker(VMM_THREAD_CODE, { eval: true, workerData: data, name: 'vmm' });
    let resolveStopped: (c: Record<string, unknown>) => void = () => undefined;
    const stopped = new Promise<Record<string, unknown>>((r) => (resolveStopped = r));
    let ready = false;
    let stopping = false;
    let filtered: ((error?: string) => void) | undefined;
    const listeners: ((message: string) => void)[] = [];
    const failed = (message: string) => {
      if (!ready) reject(new FcRunError('device-setup', message));
      else if (!stopping) for (const l of listeners) l(message);
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
        });
      } else if (m.kind === 'filtered') {
        filtered?.();
        filtered = undefined;
      }
      else if (m.kind === 'error') {
        // A thread that could not take its filter fails the launch (which is waiting for it).
        if (filtered) filtered(m.message);
        else failed(m.message);
        filtered = undefined;
      }
      else resolveStopped(m.counters);
    });
    w.on('error', (err) => failed(`the VMM thread failed: ${err.stack ?? err}`));
    w.on('exit', () => {
      failed('the VMM thread ended unexpectedly');
      resolveStopped({});
    });
  });
}
