/**
 * A worker thread per vCPU (FC_RUN_VCPU_THREADS=worker: each vCPU's own V8 isolate runs KVM_RUN and
 * handles its exits). The default is mixed (vCPU 0 on a worker, the others native: every other
 * suite runs that way), and native-vcpus.test.ts runs the same suites with native threads only; here
 * the probe suite (every vCPU count up to 32, both boot protocols) and the pause/resume/SIGQUIT
 * suite run with workers only.
 */
process.env.FC_RUN_VCPU_THREADS = 'worker';

describe('with a worker thread per vCPU', () => {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  require('./probe.test');
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  require('./pause.test');
});
