#!/usr/bin/env node
// Creation rate: launches the 1-vCPU probe guest back to back on every core, a fixed number of
// times, and reports VMs per core per second (the design's reference: 5), failures (must be 0),
// spawn → first serial byte (p50, p99), CPU per launch against `node -e 0` (Node's floor: started
// as bin/fc-run starts Node, bench/node-floor.js) in a pass of alternating rounds, the guest's share of
// that CPU (the vCPU threads' CPU time inside KVM_RUN, which fc-run counts and prints when the VM
// stops), and peak RSS with 1 vCPU (against QEMU microvm booting the same probe, in the same run)
// and with 32 vCPUs (the cost of each further vCPU thread). Every measure is taken for each way of
// running vCPUs (FC_RUN_VCPU_THREADS): the default ('main' for one vCPU, 'mixed' for more), vCPU 0
// on the main thread, vCPU 0 on a worker, a worker per vCPU, and native threads whose exits the
// main thread handles. Needs /dev/kvm and qemu-system-x86.
// Usage: node bench/rate.js [launches=100]
'use strict';
const { microvmArgs, qemuOrExit, workingCpu } = require('./qemu.js');
const { fcRun, nodeFloor, nodePlain, extraCas } = require('./node-floor.js');
const { alternatingRounds, launchMeasured, needKvm, probeSpecs, rusageTool } = require('./launch.js');
const fs = require('node:fs');
const os = require('node:os');

const launches = Number(process.argv[2] ?? 100);
if (!Number.isInteger(launches) || launches < 1 || process.argv.length > 3) {
  console.error('usage: node bench/rate.js [launches=100]');
  process.exit(1);
}
needKvm('bench:rate');
const tool = rusageTool();
const { probe, dir, spec: specFile } = probeSpecs('rate');

/** One process under the rusage tool (bench/launch.js), with FC_RUN_VCPU_THREADS=`mode` if given. */
const launch = (argv, mode) => launchMeasured(tool, argv, mode === undefined ? undefined : { FC_RUN_VCPU_THREADS: mode });

const pct = (xs, p) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((xs.length * p) / 100))];
const sum = (xs) => xs.reduce((a, b) => a + b, 0);

(async () => {
  const cores = os.availableParallelism();
  const one = specFile(1);
  await launch(fcRun(one)); // warm the page cache

  /** `argv` launched `launches` times, as many at once as there are cores; and how long that took. */
  const many = async (argv, mode) => {
    const runs = [];
    let next = 0;
    const t0 = process.hrtime.bigint();
    await Promise.all(Array.from({ length: cores }, async () => {
      while (next++ < launches) runs.push(await launch(argv, mode));
    }));
    return { runs, seconds: Number(process.hrtime.bigint() - t0) / 1e9 };
  };
  // The baseline, in the same run: node -e 0 started as bin/fc-run starts Node (bench/node-floor.js),
  // as many times as there are launches, as many at once; and plain, where that costs more here.
  const { runs: baseline } = await many(nodeFloor());
  const nodeCpu = pct(baseline.map((r) => r.cpuMs), 50);
  // Rounds of the alternating CPU pass of each mode (at least 10: medians of >= 20 at two cores).
  const cpuRounds = Math.max(10, Math.ceil(launches / cores / 2));
  if (extraCas) {
    const { runs: plain } = await many(nodePlain());
    console.log(`Node's floor: node -e 0 without NODE_EXTRA_CA_CERTS (as bin/fc-run starts Node): CPU ${nodeCpu.toFixed(1)} ms, peak RSS ${pct(baseline.map((r) => r.rssMiB), 50).toFixed(1)} MiB;`);
    console.log(`  with this environment's NODE_EXTRA_CA_CERTS: CPU ${pct(plain.map((r) => r.cpuMs), 50).toFixed(1)} ms, peak RSS ${pct(plain.map((r) => r.rssMiB), 50).toFixed(1)} MiB`);
  }
  // QEMU microvm booting the same probe to the same reset, one at a time: its peak RSS and CPU.
  const qemu = qemuOrExit();
  const qemuArgs = microvmArgs({ kernel: probe, append: 'console=ttyS0 reboot=k panic=1', memMib: 64, i8042: true, cpu: workingCpu(qemu) });
  const qemuRuns = [];
  for (let i = 0; i < 5; i++) qemuRuns.push(await launch([qemu, ...qemuArgs]));
  const qemuRss = pct(qemuRuns.map((r) => r.rssMiB), 50);
  const qemuCpu = pct(qemuRuns.map((r) => r.cpuMs), 50);
  const spec32 = specFile(32);
  let failed = [];
  const modes = {
    '': "the default: 'main' for 1 vCPU, 'mixed' for more (FC_RUN_VCPU_THREADS unset)",
    main: 'main: vCPU 0 on the main thread, the others native (FC_RUN_VCPU_THREADS=main)',
    mixed: 'mixed: vCPU 0 on a worker, the others native (FC_RUN_VCPU_THREADS=mixed)',
    worker: 'a worker per vCPU (FC_RUN_VCPU_THREADS=worker)',
    native: "native, every vCPU's exits on the main thread (FC_RUN_VCPU_THREADS=native)",
  };
  for (const [mode, title] of Object.entries(modes)) {
    const { runs, seconds } = await many(fcRun(one), mode);
    const ok = runs.filter((r) => r.code === 0 && r.firstByte !== undefined);
    failed = failed.concat(runs.filter((r) => r.code !== 0 || r.firstByte === undefined).map((r) => `${mode || 'default'}:${r.code}`));
    // CPU against Node's floor: this host's speed drifts over a run, so the ratio comes from a pass
    // of its own, alternating: `cores` launches at once, then `cores` of node -e 0, round by round.
    const alternating = await alternatingRounds(cpuRounds, cores, { fc: () => launch(fcRun(one), mode), floor: () => launch(nodeFloor()) });
    const fcOk = alternating.fc.filter((r) => r.code === 0);
    failed = failed.concat(alternating.fc.filter((r) => r.code !== 0).map((r) => `${mode || 'default'}:${r.code}`));
    const floorCpu = pct(alternating.floor.map((r) => r.cpuMs), 50);
    const cpu = pct(fcOk.map((r) => r.cpuMs), 50);
    const guestShare = sum(fcOk.map((r) => r.guestMs)) / sum(fcOk.map((r) => r.cpuMs));
    const vmmCpu = pct(fcOk.map((r) => r.cpuMs - r.guestMs), 50);
    console.log(`vCPU threads: ${title}`);
    console.log(`  Probe guest (1 vCPU, 64 MiB) launched ${launches} times, ${cores} at a time on ${cores} cores`);
    console.log(`  rate                  ${(launches / seconds / cores).toFixed(2)} VMs per core per second   (target >= 5)   ${(launches / seconds).toFixed(1)} VMs/s in all`);
    console.log(`  failures              ${runs.length - ok.length}`);
    if (ok.length > 0) {
      console.log(`  spawn -> first byte   p50 ${pct(ok.map((r) => r.firstByte), 50).toFixed(1)} ms   p99 ${pct(ok.map((r) => r.firstByte), 99).toFixed(1)} ms`);
      console.log(`  CPU per launch        ${cpu.toFixed(1)} ms   ${(cpu / floorCpu).toFixed(2)}x of node -e 0 (${floorCpu.toFixed(1)} ms)   target <= 2x   (${cpuRounds} rounds of ${cores} at once, alternating with node -e 0)`);
      console.log(`    of which the guest  ${(guestShare * 100).toFixed(1)} % (vCPU time in KVM_RUN)   the VMM's own: ${vmmCpu.toFixed(1)} ms per launch, ${(vmmCpu / floorCpu).toFixed(2)}x of node -e 0   (QEMU microvm, whole: ${qemuCpu.toFixed(1)} ms)`);
      const rss = pct(ok.map((r) => r.rssMiB), 50);
      console.log(`  peak RSS              ${rss.toFixed(1)} MiB   ${(rss / qemuRss).toFixed(2)}x of QEMU microvm (${qemuRss.toFixed(1)} MiB)   target <= 1.5x   node -e 0: ${pct(baseline.map((r) => r.rssMiB), 50).toFixed(1)} MiB`);
    }
    // Memory per vCPU thread: 32 vCPUs against 1, one at a time.
    const rss1 = [];
    const rss32 = [];
    for (let i = 0; i < 5; i++) {
      rss1.push((await launch(fcRun(one), mode)).rssMiB);
      rss32.push((await launch(fcRun(spec32), mode)).rssMiB);
    }
    const perVcpu = (pct(rss32, 50) - pct(rss1, 50)) / 31;
    console.log(`  peak RSS, 32 vCPUs    ${pct(rss32, 50).toFixed(1)} MiB   ${perVcpu.toFixed(2)} MiB per further vCPU   (target <= 5)`);
  }
  fs.rmSync(dir, { recursive: true, force: true });
  if (failed.length > 0) {
    console.error(`launches failed (mode:exit code): ${failed.join(' ')}`);
    process.exit(1);
  }
})().catch((err) => {
  console.error(err.stack || err.message);
  process.exit(1);
});
