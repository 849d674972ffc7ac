#!/usr/bin/env node
// Real Linux boot time: fc-run against QEMU's microvm machine booting the same guest kernel
// (guest/linux/build: ELF vmlinux through PVH, and bzImage) with the same initramfs, command line
// and CPUID, alternately in the same run, for 1 and 2 vCPUs. Reports wall time from process start
// to the kernel's "Run /init as init process" and to the process's exit (the guest restarts:
// reboot=k through the i8042, fc-run's own and the one QEMU's microvm gets with -device i8042,
// with -no-reboot), and the ratio of fc-run to QEMU. Both use
// the same KVM, so the ratio is fc-run's own share.
//
// The command line is the one the tests use for this host (guest/linux/host.js: the ring-3 probe
// tells an instruction-emulating KVM from one that runs guests on the CPU), plus panic=-1: on an
// emulating KVM /init cannot make a system call, so the kernel panics when init dies and restarts
// at once; on hardware KVM the initramfs /init reports and restarts by itself. QEMU gets
// `-cpu host,-kvm-pv-ipi,-kvm-pv-sched-yield`, the CPUID that fc-run's emulating-host CPU template
// gives (on hardware KVM both keep the defaults).
// Usage: node bench/linux.js [runs=1] [--busy N] [--case vmlinux-2]
//   --busy N: N busy loops (nice 0, one process each) run beside every boot, for fc-run and QEMU
//     alike: the boot on a loaded host (fc-run's vCPU threads must get their fair share);
//   --case IMAGE-VCPUS: that case only (vmlinux-1, vmlinux-2, bzImage-1, bzImage-2).
//   (needs /dev/kvm, qemu-system-x86 and `npm run build:linux`)
'use strict';
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { microvmArgs, qemuOrExit, workingCpu } = require('./qemu.js');
const host = require('../guest/linux/host.js');

const root = path.resolve(__dirname, '..');
const build = path.join(root, 'guest', 'linux', 'build');
const USAGE = 'usage: node bench/linux.js [runs=1] [--busy N] [--case vmlinux-1|vmlinux-2|bzImage-1|bzImage-2]';
const argv = process.argv.slice(2);
const option = (name) => {
  const i = argv.indexOf(name);
  if (i < 0) return undefined;
  const v = argv[i + 1];
  argv.splice(i, 2);
  if (v === undefined) {
    console.error(USAGE);
    process.exit(1);
  }
  return v;
};
const busy = Number(option('--busy') ?? 0);
const only = option('--case');
const runs = Number(argv[0] ?? 1);
if (!Number.isInteger(runs) || runs < 1 || argv.length > 1 || !Number.isInteger(busy) || busy < 0 || busy > 64 || (only !== undefined && !/^(vmlinux|bzImage)-[12]$/.test(only))) {
  console.error(USAGE);
  process.exit(1);
}
if (!fs.existsSync('/dev/kvm')) {
  console.error('bench:linux boots real microVMs and needs /dev/kvm, which this host does not have');
  process.exit(1);
}
for (const f of ['vmlinux', 'bzImage', 'initramfs.cpio.gz']) {
  if (!fs.existsSync(path.join(build, f))) {
    console.error(`${path.join(build, f)} is missing: run \`npm run build:linux\``);
    process.exit(1);
  }
}
const qemu = qemuOrExit();

const kind = host.detectHost();
const cmdline = host.bootArgs(kind, ['panic=-1']);
const cpuConfig = host.cpuConfig(kind);
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fc-run-bench-linux-'));
const initrd = path.join(build, 'initramfs.cpio.gz');
const TIMEOUT_MS = 900_000;

function fcRun(image, vcpus) {
  const spec = path.join(dir, `${image}-${vcpus}.json`);
  fs.writeFileSync(spec, JSON.stringify({
    'boot-source': { kernel_image_path: path.join(build, image), initrd_path: initrd, boot_args: cmdline },
    'machine-config': { vcpu_count: vcpus, mem_size_mib: 256 },
    ...(cpuConfig ? { 'cpu-config': cpuConfig } : {}),
  }));
  return [process.execPath, [path.join(root, 'bin', 'fc-run'), spec]];
}

function qemuMicrovm(image, vcpus) {
  const cpu = workingCpu(qemu, kind.kind === 'emulating' ? 'host,-kvm-pv-ipi,-kvm-pv-sched-yield' : 'host');
  return [qemu, microvmArgs({ kernel: path.join(build, image), initrd, append: cmdline, memMib: 256, vcpus, cpu, i8042: true })];
}

/** Spawns one boot: ms from spawn to "Run /init" and to the process's exit, and its status. */
function boot(cmd, args) {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const ms = () => Number(process.hrtime.bigint() - t0) / 1e6;
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let init;
    const timer = setTimeout(() => child.kill('SIGKILL'), TIMEOUT_MS);
    const take = (d) => {
      out += d.toString('latin1');
      if (init === undefined && out.includes('Run /init as init process')) init = ms();
      if (out.length > 1 << 20) out = out.slice(-65536);
    };
    child.stdout.on('data', take);
    child.stderr.on('data', take);
    child.once('error', reject);
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      const exit = ms();
      if (init === undefined) reject(new Error(`${path.basename(cmd)} ${args.join(' ')}: no "Run /init" (exit ${code}, signal ${signal}):\n${out.slice(-3000)}`));
      else resolve({ init, exit, code, signal });
    });
  });
}

/** Starts `busy` busy loops (each its own process at nice 0); returns what stops them. */
function busyLoops() {
  const loops = Array.from({ length: busy }, () => spawn(process.execPath, ['-e', 'for (;;);'], { stdio: 'ignore' }));
  return () => loops.forEach((p) => p.kill('SIGKILL'));
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const s = (v) => `${(v / 1000).toFixed(1).padStart(6)} s`;

(async () => {
  console.log(`Real Linux (guest/linux/build) from process start to "Run /init" and to exit, fc-run vs QEMU microvm, same KVM, alternating (median of ${runs})`);
  console.log(`  host: ${kind.kind} KVM (${kind.why})`);
  console.log(`  command line: ${cmdline}`);
  if (busy > 0) console.log(`  beside every boot: ${busy} busy loop${busy > 1 ? 's' : ''} at nice 0 on ${os.availableParallelism()} CPUs`);
  console.log('  case                   fc-run: /init     exit   QEMU: /init     exit   ratio /init  exit');
  const cases = [];
  for (const image of ['vmlinux', 'bzImage']) for (const vcpus of [1, 2]) if (only === undefined || only === `${image}-${vcpus}`) cases.push({ image, vcpus });
  const stopBusy = busyLoops();
  process.once('exit', stopBusy);
  for (const c of cases) {
    const t = { fc: [], q: [] };
    for (let i = 0; i < runs; i++) {
      t.fc.push(await boot(...fcRun(c.image, c.vcpus)));
      t.q.push(await boot(...qemuMicrovm(c.image, c.vcpus)));
    }
    const m = (xs, k) => median(xs.map((x) => x[k]));
    const [fi, fe, qi, qe] = [m(t.fc, 'init'), m(t.fc, 'exit'), m(t.q, 'init'), m(t.q, 'exit')];
    const codes = t.fc.map((x) => x.code ?? x.signal).join(',');
    console.log(`  ${`${c.image === 'vmlinux' ? 'ELF vmlinux' : 'bzImage'}, ${c.vcpus} vCPU${c.vcpus > 1 ? 's' : ''}`.padEnd(22)} ${s(fi)} ${s(fe)}     ${s(qi)} ${s(qe)}   ${(fi / qi).toFixed(2).padStart(5)}x ${(fe / qe).toFixed(2).padStart(5)}x   (fc-run exit ${codes})`);
  }
  fs.rmSync(dir, { recursive: true, force: true });
})().catch((err) => {
  console.error(err.message);
  fs.rmSync(dir, { recursive: true, force: true });
  process.exit(1);
});
