#!/usr/bin/env node
// Time from process start to the probe guest's first serial byte: fc-run against QEMU's microvm
// machine booting the same probe binary (PVH entry), measured alternately in the same run.
// Usage: node bench/boot-time.js [runs=7]
'use strict';
const { spawn, execFileSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { microvmArgs, qemuOrExit, workingCpu } = require('./qemu.js');
const { bin } = require('./node-floor.js');

const root = path.resolve(__dirname, '..');
const probe = path.join(root, 'guest', 'probe', 'build', 'probe.elf');
const runs = Number(process.argv[2] ?? 7);
if (!fs.existsSync(probe)) execFileSync('make', ['-s', '-C', path.join(root, 'guest', 'probe')], { stdio: 'inherit' });
const qemu = qemuOrExit();

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fc-run-bench-'));
const spec = path.join(dir, 'probe.json');
fs.writeFileSync(spec, JSON.stringify({ 'boot-source': { kernel_image_path: probe, boot_args: 'console=ttyS0' }, 'machine-config': { vcpu_count: 1, mem_size_mib: 64 } }));

const commands = {
  // As a user starts it: bin/fc-run's #! line (bench/node-floor.js).
  'fc-run': [bin, [spec]],
  'qemu microvm': [qemu, microvmArgs({ kernel: probe, append: 'console=ttyS0', memMib: 64, cpu: workingCpu(qemu) })],
};

function firstByte(cmd, args) {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'ignore'] });
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${cmd}: no serial output within 60 s`));
    }, 60000);
    child.stdout.once('data', () => {
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      clearTimeout(timer);
      child.kill('SIGKILL');
      child.once('exit', () => resolve(ms));
    });
    child.once('error', reject);
  });
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

(async () => {
  const times = Object.fromEntries(Object.keys(commands).map((k) => [k, []]));
  for (let i = 0; i < runs; i++) {
    for (const [name, [cmd, args]] of Object.entries(commands)) times[name].push(await firstByte(cmd, args));
  }
  fs.rmSync(dir, { recursive: true, force: true });
  const base = median(times['qemu microvm']);
  console.log(`Process start to the probe guest's first serial byte (median of ${runs}, alternating runs)`);
  for (const [name, t] of Object.entries(times)) {
    console.log(`  ${name.padEnd(14)} ${median(t).toFixed(1).padStart(8)} ms   ${(median(t) / base).toFixed(2)}x of QEMU microvm   (runs: ${t.map((x) => x.toFixed(0)).join(' ')})`);
  }
})().catch((err) => {
  console.error(err.message);
  process.exit(1);
});
