#!/usr/bin/env node
// CPU per launch of the 1-vCPU probe guest, A/B: this checkout with the serial console's hot exits
// handled in C (the default), the same with every exit handled in JavaScript (FC_RUN_HOT_EXITS=js),
// optionally another built checkout (--compare DIR), and Node's floor (`node -e 0` started as
// bin/fc-run starts Node, bench/node-floor.js). As bench/rate.js launches them: two at once on
// this 2-core machine, output on a pipe, the variants alternating round by round. Prints the
// median whole-process CPU (bench/c/rusage.c) and the VMM's own (less the vCPU time inside
// KVM_RUN that fc-run reports), and the VMM's own against the floor. Needs /dev/kvm.
// Usage: node bench/launch-cost.js [rounds=15] [--compare DIR]
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const { fcRun, nodeFloor } = require('./node-floor.js');
const { alternatingRounds, launchMeasured, needKvm, probeSpecs, rusageTool } = require('./launch.js');

const args = process.argv.slice(2);
const at = args.indexOf('--compare');
const compare = at >= 0 ? path.resolve(args[at + 1] ?? '') : undefined;
if (at >= 0) args.splice(at, 2);
const rounds = Number(args[0] ?? 15);
if (!Number.isInteger(rounds) || rounds < 1 || args.length > 1 || (compare !== undefined && !fs.existsSync(path.join(compare, 'bin', 'fc-run')))) {
  console.error('usage: node bench/launch-cost.js [rounds=15] [--compare DIR (a built fc-run checkout)]');
  process.exit(1);
}
needKvm('bench/launch-cost.js');
const tool = rusageTool();
const { dir, spec: specFile } = probeSpecs('launch');
const spec = specFile(1);

const variants = {
  "node -e 0 (Node's floor)": { argv: nodeFloor() },
  'fc-run (hot exits in C)': { argv: fcRun(spec) },
  'fc-run, FC_RUN_HOT_EXITS=js': { argv: fcRun(spec), env: { FC_RUN_HOT_EXITS: 'js' } },
  ...(compare ? { [`--compare ${compare}`]: { argv: [path.join(compare, 'bin', 'fc-run'), spec] } } : {}),
};

const launch = ({ argv, env }) => launchMeasured(tool, argv, env);

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

(async () => {
  const runs = await alternatingRounds(rounds, 2, Object.fromEntries(Object.entries(variants).map(([name, v]) => [name, () => launch(v)])));
  fs.rmSync(dir, { recursive: true, force: true });
  const failed = Object.entries(runs).flatMap(([name, rs]) => rs.filter((r) => r.code !== 0).map(() => name));
  const floor = median(runs["node -e 0 (Node's floor)"].map((r) => r.cpuMs));
  console.log(`1-vCPU probe, ${rounds} rounds of two launches at once, variants alternating (medians of ${rounds * 2})`);
  for (const [name, rs] of Object.entries(runs)) {
    const cpu = median(rs.map((r) => r.cpuMs));
    const own = median(rs.map((r) => r.cpuMs - r.guestMs));
    console.log(`  ${name.padEnd(34)} CPU ${cpu.toFixed(1).padStart(6)} ms   the VMM's own ${own.toFixed(1).padStart(6)} ms   ${(own / floor).toFixed(2)}x of node -e 0 (target <= 2x)`);
  }
  if (failed.length > 0) {
    console.error(`launches failed: ${failed.join(', ')}`);
    process.exit(1);
  }
})().catch((err) => {
  console.error(err.stack || err.message);
  process.exit(1);
});
