#!/usr/bin/env node
// What fc-run costs before any KVM work: wall time, CPU time (user+sys) and peak RSS of whole
// fc-run processes (plan, validate, --version), each against `node -e 0` measured alternately in
// the same run. Medians; the ratio is fc-run's median over node's. Needs no /dev/kvm.
// Usage: node bench/start-cost.js [runs=25] [--compare OTHER-CHECKOUT]
//   --compare also runs plan and validate through another built checkout of fc-run (an earlier
//   commit, say), alternating with the rest, so a change's before/after ratio comes from one run.
'use strict';
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { fcRun, nodeFloor, nodePlain, extraCas } = require('./node-floor.js');

const root = path.resolve(__dirname, '..');
const argv = process.argv.slice(2);
const at = argv.indexOf('--compare');
const other = at >= 0 ? argv.splice(at, 2)[1] : undefined;
const runs = Number(argv[0] ?? 25);
if (!Number.isInteger(runs) || runs < 1 || argv.length > 1 || (at >= 0 && !other)) {
  console.error('usage: node bench/start-cost.js [runs=25] [--compare OTHER-CHECKOUT]');
  process.exit(1);
}
const tool = path.join(os.tmpdir(), `fc-run-rusage-${process.getuid()}`);
execFileSync('cc', ['-O2', '-o', tool, path.join(__dirname, 'c', 'rusage.c')]);

const spec = path.join(root, 'examples', 'hello.json');
// fc-run as a user starts it (bin/fc-run's #! line); the baseline is Node started the same way
// (bench/node-floor.js), plus plain `node -e 0` where this environment makes that costlier.
const commands = {
  'node -e 0': nodeFloor(),
  ...(nodePlain() ? { 'node -e 0, NODE_EXTRA_CA_CERTS set': nodePlain() } : {}),
  'fc-run plan': fcRun('plan', spec),
  'fc-run validate': fcRun('validate', spec),
  'fc-run --version': fcRun('--version'),
};
if (other) {
  const otherBin = path.join(path.resolve(other), 'bin', 'fc-run');
  commands['other: plan'] = [otherBin, 'plan', spec];
  commands['other: validate'] = [otherBin, 'validate', spec];
}

function measure(cmd) {
  const [wall, user, sys, rss, code] = execFileSync(tool, cmd, { encoding: 'utf8' }).trim().split(' ').map(Number);
  if (code !== 0) throw new Error(`${cmd.slice(1).join(' ')} exited with ${code}`);
  return { wall: wall / 1000, cpu: (user + sys) / 1000, rss: rss / 1024 };
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const samples = Object.fromEntries(Object.keys(commands).map((k) => [k, []]));
for (const cmd of Object.values(commands)) measure(cmd); // warm the page cache
for (let i = 0; i < runs; i++) for (const [name, cmd] of Object.entries(commands)) samples[name].push(measure(cmd));

const m = (name, key) => median(samples[name].map((s) => s[key]));
console.log(`Start cost of whole processes (medians of ${runs} alternating runs; ratio against node -e 0 in the same run${extraCas ? ', both started without NODE_EXTRA_CA_CERTS as bin/fc-run starts Node' : ''})`);
if (other) console.log(`  other: ${path.resolve(other)}`);
console.log(`  ${'command'.padEnd(36)} ${'wall ms'.padStart(8)} ${'ratio'.padStart(6)} ${'CPU ms'.padStart(8)} ${'ratio'.padStart(6)} ${'RSS MiB'.padStart(8)} ${'ratio'.padStart(6)}`);
for (const name of Object.keys(commands)) {
  const cells = ['wall', 'cpu', 'rss'].map((k) => `${m(name, k).toFixed(1).padStart(8)} ${(m(name, k) / m('node -e 0', k)).toFixed(2).padStart(5)}x`);
  console.log(`  ${name.padEnd(36)} ${cells.join(' ')}`);
}
