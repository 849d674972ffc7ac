/**
 * vCPU 0 on the main thread and the others on native threads (FC_RUN_VCPU_THREADS=main: the main
 * thread enters the guest itself between its event loop's callbacks, and a watcher thread gets it
 * out when the loop has work). Unset, fc-run runs one-vCPU VMs this way (every other suite's
 * one-vCPU cases) and VMs with more in 'mixed' mode; here the probe suite (every vCPU count up to
 * 32, both boot protocols) and the pause/resume/SIGQUIT suite run with vCPU 0 on the main thread
 * whatever the count.
 */
process.env.FC_RUN_VCPU_THREADS = 'main';

describe('with vCPU 0 on the main thread', () => {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  require('./probe.test');
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  require('./pause.test');
});
