#!/usr/bin/env node
// fc-run up: (1) time for 20 specs to converge from empty (20 probe guests up), as a ratio of one
// guest's boot through the same path; (2) CPU used by the idle supervisor over 10 s (target: under
// 1 % of a core). (1) needs /dev/kvm and is skipped without it; (2) then runs with 20 valid specs
// whose VMs failed at launch (restart "never"), so the supervisor idles re-reading 20 specs.
// Usage: node bench/fleet.js [idle-seconds=10]
'use strict';
const { spawn, execFileSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const bin = path.join(root, 'bin', 'fc-run');
const probe = path.join(root, 'guest', 'probe', 'build', 'probe.elf');
const idleSeconds = Number(process.argv[2] ?? 10);
const hasKvm = fs.existsSync('/dev/kvm');
if (!fs.existsSync(probe)) execFileSync('make', ['-s', '-C', path.join(root, 'guest', 'probe')], { stdio: 'inherit' });
const ticksPerSecond = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100;

const base = fs.mkdtempSync(path.join(os.tmpdir(), 'fc-run-bench-fleet-'));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function writeSpecs(dir, n, restart) {
  fs.mkdirSync(dir, { recursive: true });
  for (let i = 0; i < n; i++) {
    fs.writeFileSync(
      path.join(dir, `vm${i}.json`),
      JSON.stringify({
        'boot-source': { kernel_image_path: probe, boot_args: 'console=ttyS0 probe.wait=1' },
        'machine-config': { vcpu_count: 1, mem_size_mib: 32 },
        'fc-run': { restart, stop_grace_ms: 2000 },
      }),
    );
  }
}

function ps(runDir) {
  try {
    return JSON.parse(execFileSync(process.execPath, [bin, 'ps', '--run-dir', runDir, '--json']).toString()).vms;
  } catch {
    return [];
  }
}

const guestUp = (runDir, id) => {
  try {
    return fs.readFileSync(path.join(runDir, `${id}.serial.log`), 'utf8').includes('# probe waiting');
  } catch {
    return false;
  }
};

/** Starts fc-run up on `dir`; resolves when `n` guests are up; returns the supervisor and the time. */
async function converge(dir, runDir, n) {
  const t0 = process.hrtime.bigint();
  const up = spawn(process.execPath, [bin, 'up', dir, '--run-dir', runDir], { stdio: 'ignore' });
  for (;;) {
    const rows = ps(runDir);
    if (rows.length === n && rows.every((r) => r.state === 'running' && guestUp(runDir, r.id))) break;
    if (Number(process.hrtime.bigint() - t0) > 600e9) throw new Error('no convergence within 10 minutes');
    await sleep(100);
  }
  return { up, ms: Number(process.hrtime.bigint() - t0) / 1e6 };
}

function cpuTicks(pid) {
  const f = fs.readFileSync(`/proc/${pid}/stat`, 'latin1');
  const fields = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return Number(fields[14 - 3]) + Number(fields[15 - 3]);
}

/** Percent of one core each process used over the same window. */
async function idleCpu(pids) {
  // Past start-up's tail (lazy compilation, the first full garbage collections).
  await sleep(10000);
  const t0 = process.hrtime.bigint();
  const c0 = pids.map(cpuTicks);
  await sleep(idleSeconds * 1000);
  const wallS = Number(process.hrtime.bigint() - t0) / 1e9;
  return pids.map((pid, i) => (100 * (cpuTicks(pid) - c0[i])) / ticksPerSecond / wallS);
}

/**
 * The baseline, in the same run and window: a bare Node process with what an idle supervisor
 * cannot do without (a recursive watch of the directory, a 1 s and a 5 s timer), doing nothing.
 */
function nodeFloor(dir) {
  const code = `require('fs').watch(${JSON.stringify(dir)}, { recursive: true }, () => {}); setInterval(() => {}, 1000); setInterval(() => {}, 5000);`;
  return spawn(process.execPath, ['-e', code], { stdio: 'ignore' });
}

async function shutdown(up, runDir) {
  up.kill('SIGTERM');
  for (const r of ps(runDir)) if (r.pid) try { process.kill(r.pid, 'SIGKILL'); } catch {}
}

(async () => {
  let idleUp;
  let idleRunDir;
  let idleWhat;
  let idleDir;
  if (hasKvm) {
    const one = await converge(path.join(base, 'one'), path.join(base, 'run-one'), (writeSpecs(path.join(base, 'one'), 1, 'on-failure'), 1));
    await shutdown(one.up, path.join(base, 'run-one'));
    writeSpecs(path.join(base, 'twenty'), 20, 'on-failure');
    idleRunDir = path.join(base, 'run-twenty');
    const twenty = await converge(path.join(base, 'twenty'), idleRunDir, 20);
    console.log('fc-run up: 20 specs from empty to 20 probe guests up');
    console.log(`  one guest      ${one.ms.toFixed(0).padStart(8)} ms`);
    console.log(`  twenty guests  ${twenty.ms.toFixed(0).padStart(8)} ms   ${(twenty.ms / one.ms).toFixed(2)}x of one guest (20x would be fully serial)`);
    idleUp = twenty.up;
    idleDir = path.join(base, 'twenty');
    idleWhat = 'with 20 probe guests running (halted)';
  } else {
    console.log('fc-run up convergence: SKIPPED (needs /dev/kvm, which this host does not have)');
    const dir = path.join(base, 'failing');
    idleDir = dir;
    writeSpecs(dir, 20, 'never');
    idleRunDir = path.join(base, 'run-failing');
    idleUp = spawn(process.execPath, [bin, 'up', dir, '--run-dir', idleRunDir], { stdio: 'ignore' });
    // Every VM fails at launch (no /dev/kvm) and is not restarted: then nothing changes.
    for (;;) {
      const rows = ps(idleRunDir);
      if (rows.length === 20 && rows.every((r) => r.state === 'exited')) break;
      await sleep(200);
    }
    idleWhat = 'with 20 valid specs whose VMs failed at launch (no KVM), re-read every 5 s';
  }
  const floor = nodeFloor(idleDir);
  const [pct, floorPct] = await idleCpu([idleUp.pid, floor.pid]);
  floor.kill('SIGKILL');
  console.log(`fc-run up idle CPU over ${idleSeconds} s ${idleWhat}:`);
  console.log(`  fc-run up        ${pct.toFixed(3)} % of one core   ${(pct / 1).toFixed(2)}x of the 1 % target`);
  console.log(`  Node's floor     ${floorPct.toFixed(3)} % of one core   (node -e with the same watch and timers, same window)`);
  console.log(`  ratio            ${floorPct > 0 ? (pct / floorPct).toFixed(2) + 'x' : 'n/a (the floor used no measurable CPU: ticks are 10 ms)'} of Node's floor`);
  console.log(JSON.stringify({ bench: 'fleet-idle', seconds: idleSeconds, upPct: pct, nodeFloorPct: floorPct }));
  await shutdown(idleUp, idleRunDir);
  fs.rmSync(base, { recursive: true, force: true });
})().catch((err) => {
  console.error(err);
  process.exit(1);
});
