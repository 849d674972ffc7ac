import { parentPort } from 'node:worker_threads';
import { gettid } from '../kvm/libc';
import { KVM_RUN_OFFSETS } from '../kvm/structs';
import { installThreadFilter } from '../kvm/seccomp';
import { CONTROL } from './shared';
import { vcpuContext, VcpuWorkerData } from './vcpu-exits';

export type { VcpuWorkerData, VirtioWindows } from './vcpu-exits';

const port = parentPort!;

/**
 * One vCPU on this thread (a worker per vCPU): KVM_RUN is called right here, in a loop. The
 * thread starts idle (see threads.ts) and runs its vCPU once told which.
 */
function start(data: VcpuWorkerData): void {
  const c = vcpuContext(data, (m) => port.postMessage(m));
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
    c.ready(gettid());
    loop();
  } catch (err) {
    c.stop({ reason: 'vmm-error', detail: `vCPU ${data.id} thread failed: ${(err as Error).stack ?? err}` });
  }
  port.close();
}


port.once('message', (m: { kind: 'start'; data: VcpuWorkerData }) => start(m.data));
