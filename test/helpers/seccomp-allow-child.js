// Installs fc-run's built-in seccomp allow-lists in this process as fc-run does (the SIGSYS
// handler, the process-wide filter on every thread, the api filter on the main thread, the vcpu
// filter on a worker), checks that ordinary work goes on, then tries what argv[2] names:
//   none      nothing forbidden
//   unlisted  a call on no list (getppid)
//   argument  a listed call with a forbidden argument (socket(AF_INET))
//   ioctl     ioctl with a request off the list (TIOCSTI)
//   clone     clone without CLONE_THREAD (a new process)
//   thread    a call the process-wide list allows but the vcpu list does not (socket(AF_UNIX) on a vCPU thread)
'use strict';
const path = require('node:path');
const fs = require('node:fs');
const { Worker, isMainThread, workerData } = require('node:worker_threads');
const dist = path.join(__dirname, '..', '..', 'dist', 'kvm');
const { installProcessFilter, installThreadFilter } = require(path.join(dist, 'seccomp'));
const { builtinFilters } = require(path.join(dist, 'seccomp-builtin'));
const { installSigsysHandler, loadSigsysLibrary, registerSigsysThread } = require(path.join(dist, 'sigsys'));
const { X86_64_SYSCALLS } = require(path.join(dist, 'syscall-table'));
const { sys } = require(path.join(dist, 'libc'));

if (!isMainThread) {
  loadSigsysLibrary();
  const { vcpu } = workerData;
  require('node:worker_threads').parentPort.once('message', () => {
    registerSigsysThread('vcpu 0: a vCPU worker');
    installThreadFilter(Buffer.from(vcpu));
    process._rawDebug('vcpu thread filtered');
    sys.socket(1, 1, 0);
    process._rawDebug('vcpu thread survived');
  });
  require('node:worker_threads').parentPort.postMessage('loaded');
  return;
}

const attempt = process.argv[2];
const filters = builtinFilters(process.pid);
installSigsysHandler(X86_64_SYSCALLS);
loadSigsysLibrary();
const worker = new Worker(__filename, { workerData: { vcpu: new Uint8Array(filters.vcpu) } });
worker.once('message', () => {
  installProcessFilter(filters.process);
  registerSigsysThread('api: the main thread');
  installThreadFilter(filters.api);
  const text = fs.readFileSync(__filename, 'utf8').slice(0, 2); // an open file, mapped code: fine
  setTimeout(() => {
    console.log(`ok: ${text}`);
    if (attempt === 'unlisted') sys.syscall3(110, 0, 0, 0);
    if (attempt === 'argument') sys.socket(2, 1, 0);
    if (attempt === 'ioctl') sys.ioctlInt(0, 0x5412, 0);
    if (attempt === 'clone') sys.syscall3(56, 17 /* SIGCHLD: fork */, 0, 0);
    if (attempt === 'thread') return worker.postMessage('go');
    setTimeout(() => {
      console.log('survived');
      process.exit(0);
    }, 50);
  }, 10);
});
