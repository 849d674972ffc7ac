import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { FcRunError } from '../errors';
import type { VmmMessage, VmmWorkerData } from './vmm-worker';
import { signalEventfd } from './event-loop';

const SCRIPT = path.resolve(__dirname, '..', '..', 'dist', 'vmm', 'vmm-worker.js');

export interface VmmThread {
  /** Ends the VMM thread's loop. */
  stop(): void;
  /** Device counters, once the thread has stopped. */
  stopped: Promise<Record<string, unknown>>;
}

/** Starts the VMM thread and resolves once every device model is built (files opened). */
export function startVmmThread(data: VmmWorkerData): Promise<VmmThread> {
  return new Promise((resolve, reject) => {
    const w = new Worker(SCRIPT, { workerData: data, name: 'vmm' });
    let resolveStopped: (c: Record<string, unknown>) => void = () => undefined;
    const stopped = new Promise<Record<string, unknown>>((r) => (resolveStopped = r));
    w.on('message', (m: VmmMessage) => {
      if (m.kind === 'ready') resolve({ stop: () => signalEventfd(data.stopFd), stopped });
      else if (m.kind === 'error') reject(new FcRunError('device-setup', m.message));
      else resolveStopped(m.counters);
    });
    w.on('error', (err) => reject(new FcRunError('vmm-thread', `the VMM thread failed: ${err.stack ?? err}`)));
    w.on('exit', () => resolveStopped({}));
  });
}
