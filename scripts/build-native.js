#!/usr/bin/env node
// Compiles fc-run's native addon, dist/native/fcrun.node (src/kvm/libc.ts loads it): the libc
// calls (native/addon.c), the native vCPU threads (native/vcpu-threads.c) and the SIGSYS handler
// of the seccomp filters (native/sigsys.c). Needs a C compiler (cc, as the probe guest does) and
// Node's headers (node_api.h: in the Node package, <prefix>/include/node).
'use strict';
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const cc = process.env.CC || 'cc';
const out = path.join(root, 'dist', 'native', 'fcrun.node');

/** Where node_api.h is: beside this Node first (its own prefix), then the usual system places. */
function nodeHeaders() {
  const candidates = [path.join(path.dirname(process.execPath), '..', 'include', 'node'), '/usr/include/node', '/usr/local/include/node'];
  const found = candidates.find((dir) => fs.existsSync(path.join(dir, 'node_api.h')));
  if (!found) {
    process.stderr.write(`build-native: node_api.h is in none of ${candidates.join(', ')}: install Node.js with its headers (the nodejs package has them)\n`);
    process.exit(1);
  }
  return found;
}

fs.mkdirSync(path.dirname(out), { recursive: true });
const sources = ['addon.c', 'vcpu-threads.c', 'sigsys.c'].map((f) => path.join(root, 'native', f));
try {
  execFileSync(cc, ['-O2', '-Wall', '-Wextra', '-Werror', '-std=gnu11', '-shared', '-fPIC', '-pthread', '-fvisibility=hidden', `-I${nodeHeaders()}`, '-o', `${out}.tmp`, ...sources], { stdio: 'inherit' });
} catch (err) {
  process.stderr.write(`build-native: cannot compile native/*.c with ${cc} (${err.message}); install gcc\n`);
  process.exit(1);
}
fs.renameSync(`${out}.tmp`, out);
// The libraries earlier builds made (loaded through koffi then), so that nothing stale is left.
for (const old of ['libfcrun-vcpu.so', 'libfcrun-sigsys.so']) fs.rmSync(path.join(root, 'dist', 'native', old), { force: true });
