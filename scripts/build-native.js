#!/usr/bin/env node
// Compiles fc-run's native code: the native vCPU threads (native/vcpu-threads.c)
// into dist/native/libfcrun-vcpu.so, which src/kvm/vcpu-threads.ts loads, and the SIGSYS handler
// of the seccomp filters (native/sigsys.c) into dist/native/libfcrun-sigsys.so, which
// src/kvm/sigsys.ts loads. Needs a C compiler (cc, as the probe guest does).
'use strict';
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const cc = process.env.CC || 'cc';
for (const [source, library] of [['vcpu-threads.c', 'libfcrun-vcpu.so'], ['sigsys.c', 'libfcrun-sigsys.so']]) {
  const out = path.join(root, 'dist', 'native', library);
  fs.mkdirSync(path.dirname(out), { recursive: true });
  try {
    execFileSync(cc, ['-O2', '-Wall', '-Wextra', '-Werror', '-std=gnu11', '-shared', '-fPIC', '-pthread', '-o', `${out}.tmp`, path.join(root, 'native', source)], { stdio: 'inherit' });
  } catch (err) {
    process.stderr.write(`build-native: cannot compile native/${source} with ${cc} (${err.message}); install gcc\n`);
    process.exit(1);
  }
  fs.renameSync(`${out}.tmp`, out);
}
