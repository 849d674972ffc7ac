import { Worker } from 'node:worker_threads';
import { VCPU_WORKER_SCRIPT } from '../package-root';

/** The bundled worker script; tests running TypeScript sources still start the built worker. */
const WORKER_SCRIPT = VCPU_WORKER_SCRIPT;

/**
 * vCPU threads started ahead of need. A new worker takes tens of milliseconds to load its
 * modules; starting it while the spec is validated and planned takes that off the boot path.
 * Idle threads are unref'd so they never keep fc-run alive.
 */
const idle: Worker[] = [];

function spawn(): Worker {
  const w = new Worker(WORKER_SCRIPT, { name: 'vcpu' });
  w.unref();
  return w;
}

export function prewarmVcpuThreads(count: number): void {
  while (idle.length < count) idle.push(spawn());
}

/** A vCPU thread waiting for its 'start' message. */
export function takeVcpuThread(): Worker {
  const w = idle.shift() ?? spawn();
  w.ref();
  return w;
}
