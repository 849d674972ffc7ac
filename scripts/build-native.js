#!/usr/bin/env node
// Compiles fc-run's native vCPU threads (native/vcpu-threads.c) into dist/native/libfcrun-vcpu.so,
// which src/kvm/vcpu-threads.ts loads with koffi. Needs a C compiler (cc, as the probe guest does).
'use strict';
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const out = path.join(root, 'dist', 'native', 'libfcrun-vcpu.so');
fs.mkdirSync(path.dirname(out), { recursive: true });
const cc = process.env.CC || 'cc';
try {
  execFileSync(cc, ['-O2', '-Wall', '-Wextra', '-Werror', '-std=gnu11', '-shared', '-fPIC', '-pthread', '-o', `${out}.tmp`, path.join(root, 'native', 'vcpu-threads.c')], { stdio: 'inherit' });
} catch (err) {
  process.stderr.write(`build-native: cannot compile native/vcpu-threads.c with ${cc} (${err.message}); install gcc\n`);
  process.exit(1);
}
fs.renameSync(`${out}.tmp`, out);
