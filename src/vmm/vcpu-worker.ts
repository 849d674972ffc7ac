import { parentPort } from 'node:worker_threads';
import { gettid, setOwnNice } from '../kvm/libc';
import { installThreadFilter } from '../kvm/seccomp';
import { loadSigsysLibrary, registerSigsysThread } from '../kvm/sigsys';
import { preloadNativeVcpuLibrary } from '../kvm/vcpu-threads';
import { CONTROL, runTimeOf } from './shared';
import { vcpuContext, VcpuWorkerData } from './vcpu-exits';

export type { VcpuWorkerData, VirtioWindows } from './vcpu-exits';

const port = parentPort!;

/**
 * One vCPU on this thread (a worker per vCPU): KVM_RUN is called right here, in a loop. The
 * thread starts idle (see threads.ts) and runs its vCPU once told which.
 */
function start(data: VcpuWorkerData): void {
  const c = vcpuContext(data, (m) => port.postMessage(m));
  // Its time inside KVM_RUN, counted apart from the VMM's own (the native library, loaded below).
  if (data.countRunTime) c.vcpu.countRunTime(runTimeOf(data.shared, data.id));
  if (c.hotExits) c.vcpu.useHotExits(c.hotExits);
  const control = new Int32Array(data.shared.control);

  /** Pause: the thread waits until resumed (or stopped), answering requests meanwhile. */
  function park(): void {
    c.parked();
    try {
      for (;;) {
        const wake = Atomics.load(control, CONTROL.WAKE);
        if (!c.stayParked()) break;
        Atomics.wait(control, CONTROL.WAKE, wake, 1000);
      }
    } finally {
      c.unparked();
    }
  }

  function loop(): void {
    for (;;) {
      const next = c.next();
      if (next === 'stop') return;
      if (!c.vcpu.run()) {
        if (next === 'pause') park();
        continue; // EINTR: check the control words again
      }
      c.handleExit();
    }
  }

  try {
    // The native vCPU threads' priority, when the VM has some (before this thread's own filter).
    if (data.nice) setOwnNice(data.nice);
    // Right before the guest runs, as Firecracker does: the thread's own filter, if one was given.
    if (data.seccompFilter) {
      registerSigsysThread(`vcpu ${data.id}: a vCPU worker`);
      installThreadFilter(Buffer.from(data.seccompFilter.buffer, data.seccompFilter.byteOffset, data.seccompFilter.byteLength));
    }
    c.ready(gettid());
    loop();
  } catch (err) {
    c.stop({ reason: 'vmm-error', detail: `vCPU ${data.id} thread failed: ${(err as Error).stack ?? err}` });
  }
  c.release();
  port.close();
}


port.once('message', (m: { kind: 'start'; data: VcpuWorkerData }) => start(m.data));
// Everything this thread loads is loaded: the seccomp filters, installed once every vCPU thread
// says so (threads.ts), need not allow opening or mapping files.
loadSigsysLibrary();
preloadNativeVcpuLibrary(); // for the timed KVM_RUN
port.postMessage({ kind: 'loaded' });
