import { Worker } from 'node:worker_threads';
import * as path from 'node:path';
import { PACKAGE_ROOT, VCPU_WORKER_SCRIPT } from '../package-root';

/**
 * What a thread runs (`new Worker(code, { eval: true })`) to load its bundle (dist/bundle/, one
 * file) compiled from V8's code cache, as bin/fc-run loads the CLI's; the bundle's own requires
 * (node: built-ins, koffi) resolve from the package. Tests running TypeScript sources start the
 * built bundles too.
 */
export function threadLoaderCode(bundle: string): string {
  const loader = JSON.stringify(path.join(PACKAGE_ROOT, 'dist', 'code-cache.js'));
  const file = JSON.stringify(bundle);
  return `require(${loader}).loadBundle(${file}, require('node:module').createRequire(${file}));`;
}

const VCPU_THREAD_CODE = threadLoaderCode(VCPU_WORKER_SCRIPT);

/**
 * vCPU threads started ahead of need. A new worker takes tens of milliseconds to load its
 * modules; starting it while the spec is validated and planned takes that off the boot path.
 * Idle threads are unref'd so they never keep fc-run alive.
 */
const idle: Worker[] = [];

function spawn(): Worker {
  const w = new Worker(VCPU_THREAD_CODE, { eval: true, name: 'vcpu' });
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
