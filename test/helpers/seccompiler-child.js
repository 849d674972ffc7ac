// Installs a BPF program (argv[2], hex) on this process's main thread with fc-run's
// installThreadFilter (from dist: run `npm run build` first), runs the probes of argv[3] (JSON) in
// order, prints their results as one JSON line and exits (exit_group). A probe is one of:
//   {"call": [nr, a0, a1, a2]}  syscall(nr, a0, a1, a2) with 64-bit arguments given as decimal
//                               strings: "ok" or the errno's name
//   {"mkdir": path}             fs.mkdirSync on the main thread: "ok" or the error's code
//   {"asyncMkdir": path}        fs.mkdir, run by libuv's thread pool (started before the filter)
//   {"workerMkdir": path}       fs.mkdirSync in a worker thread started after the filter
'use strict';
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { Worker } = require('node:worker_threads');
const dist = path.join(__dirname, '..', '..', 'dist', 'kvm');
const { installThreadFilter } = require(path.join(dist, 'seccomp'));
const { sys, errno } = require(path.join(dist, 'libc'));

const program = Buffer.from(process.argv[2], 'hex');
const probes = JSON.parse(process.argv[3]);
const errnoName = (n) => Object.entries(os.constants.errno).find(([, v]) => v === n)?.[0] ?? `errno ${n}`;
const settle = (run) => new Promise((resolve) => run((err) => resolve(err ? err.code : 'ok')));

async function main() {
  // Start the thread pool before the filter, so its threads do not inherit it.
  await settle((done) => fs.stat(__filename, done));
  sys.syscall3(39, 0, 0, 0); // bind libc now: binding makes system calls of its own
  installThreadFilter(program);
  const results = [];
  for (const p of probes) {
    if (p.call) {
      const [nr, ...args] = p.call.map((v) => BigInt(v));
      const r = Number(sys.syscall3(nr, ...args));
      results.push(r >= 0 ? 'ok' : errnoName(errno()));
    } else if (p.mkdir) {
      results.push(await settle((done) => done(tryOr(() => fs.mkdirSync(p.mkdir)))));
    } else if (p.asyncMkdir) {
      results.push(await settle((done) => fs.mkdir(p.asyncMkdir, done)));
    } else if (p.workerMkdir) {
      const code = `const fs = require('node:fs'); const { parentPort, workerData } = require('node:worker_threads');
        try { fs.mkdirSync(workerData); parentPort.postMessage('ok'); } catch (e) { parentPort.postMessage(e.code); }`;
      results.push(await new Promise((resolve) => new Worker(code, { eval: true, workerData: p.workerMkdir }).once('message', resolve)));
    }
  }
  // Straight to write(2) and exit_group(2): Node's own output and exit paths make system calls
  // that an allow list written for this test would refuse.
  const out = Buffer.from(`${JSON.stringify(results)}\n`);
  sys.write(1, out, out.length);
  sys.syscall3(231, 0, 0, 0);
}

function tryOr(fn) {
  try {
    fn();
    return undefined;
  } catch (e) {
    return e;
  }
}

main();
