'use strict';
// What the launch benches (rate.js, launch-cost.js) share: /dev/kvm's check, the probe guest and
// its specs, the rusage tool (bench/c/rusage.c), one measured process and alternating rounds.
const { execFileSync, spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const root = path.resolve(__dirname, '..');

/** The probe guest's ELF, built first if it is not. */
function probeElf() {
  const probe = path.join(root, 'guest', 'probe', 'build', 'probe.elf');
  if (!fs.existsSync(probe)) execFileSync('make', ['-s', '-C', path.join(root, 'guest', 'probe')], { stdio: 'inherit' });
  return probe;
}

/** bench/c/rusage.c, compiled: it runs a command and prints its wall, user, system, RSS, exit and guest time. */
function rusageTool() {
  const tool = path.join(os.tmpdir(), `fc-run-rusage-${process.getuid()}`);
  execFileSync('cc', ['-O2', '-o', tool, path.join(__dirname, 'c', 'rusage.c')]);
  return tool;
}

/**
 * One process under the rusage tool, with `env` added to this environment: its first stdout byte
 * (ms after spawn), its cost, its exit, and the guest's share of its CPU.
 */
function launchMeasured(tool, argv, env) {
  return new Promise((resolve) => {
    const t0 = process.hrtime.bigint();
    const child = spawn(tool, ['--keep-stdout', ...argv], { stdio: ['ignore', 'pipe', 'pipe'], env: env === undefined ? process.env : { ...process.env, ...env } });
    let firstByte;
    let report = '';
    child.stdout.once('data', () => (firstByte = Number(process.hrtime.bigint() - t0) / 1e6));
    child.stdout.resume();
    child.stderr.on('data', (d) => (report += d));
    child.on('close', () => {
      const [wall, user, sys, rss, code, guest] = report.trim().split('\n').pop().split(' ').map(Number);
      // fc-run's own count of its vCPU threads' CPU time inside KVM_RUN (the guest's share, with
      // KVM's handling of its exits); Linux's guest_time (a part of it, 0 on an emulating KVM) otherwise.
      const kvmRun = /([0-9.]+) ms of vCPU time in KVM_RUN/.exec(report);
      const guestMs = kvmRun ? Number(kvmRun[1]) : guest / 1000;
      resolve({ firstByte, wallMs: wall / 1000, cpuMs: (user + sys) / 1000, guestMs, rssMiB: rss / 1024, code });
    });
  });
}

/** Ends the bench, saying why, where this host has no /dev/kvm. */
function needKvm(bench) {
  if (fs.existsSync('/dev/kvm')) return;
  console.error(`${bench} launches microVMs and needs /dev/kvm, which this host does not have`);
  process.exit(1);
}

/**
 * A temporary directory (named after `bench`) of probe specs: `spec(vcpus)` writes the probe guest
 * with that many vCPUs and 64 MiB there and returns the file.
 */
function probeSpecs(bench) {
  const probe = probeElf();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `fc-run-bench-${bench}-`));
  const spec = (vcpus) => {
    const file = path.join(dir, `probe-${vcpus}.json`);
    fs.writeFileSync(file, JSON.stringify({ 'boot-source': { kernel_image_path: probe, boot_args: 'console=ttyS0 reboot=k panic=1' }, 'machine-config': { vcpu_count: vcpus, mem_size_mib: 64 } }));
    return file;
  };
  return { probe, dir, spec };
}

/**
 * `rounds` rounds, each launching `width` at once of every variant in turn (`variants`: name →
 * a function starting one measured launch): this host's speed drifts over a run, so what is
 * compared is measured alternately. The results, by variant.
 */
async function alternatingRounds(rounds, width, variants) {
  const runs = Object.fromEntries(Object.keys(variants).map((k) => [k, []]));
  for (let i = 0; i < rounds; i++) {
    for (const [name, start] of Object.entries(variants)) runs[name].push(...(await Promise.all(Array.from({ length: width }, start))));
  }
  return runs;
}

module.exports = { probeElf, probeSpecs, rusageTool, launchMeasured, needKvm, alternatingRounds };
