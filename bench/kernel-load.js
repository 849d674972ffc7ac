#!/usr/bin/env node
// The VMM's CPU and page faults to load a kernel into guest memory (prepareGuestMemory), as a launch
// does it (fresh guest memory: each segment's pages are faulted in by one madvise, read into, and
// the bss left as it is, zero) against the way every launch did it before (each page faulted in
// as it was read or zeroed: memoryIsZero false zeroes each segment's tail). Either way every page
// of every segment is in place before the guest runs, so the guest's own cost is the same (it
// writes its bss, and a bzImage decompresses into its init_size: a page it touched first would
// cost a fault inside KVM_RUN instead). Each load runs in a fresh Node process, the two ways
// alternating; medians. (The kernel counts the pages madvise faults in as page faults too: the
// counts match, the cost per page differs.) Needs no /dev/kvm (guest memory is an anonymous mapping); needs `npm run build`.
// Usage: node bench/kernel-load.js [rounds=9] [KERNEL ...]
//   default kernels: guest/linux/build/{bzImage,vmlinux} if built (npm run build:linux), and the probe.
'use strict';
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const args = process.argv.slice(2);
const rounds = Number(args[0] ?? 9);
if (!Number.isInteger(rounds) || rounds < 1) {
  console.error('usage: node bench/kernel-load.js [rounds=9] [KERNEL ...]');
  process.exit(1);
}
if (!fs.existsSync(path.join(root, 'dist', 'boot', 'structures.js'))) {
  console.error('bench/kernel-load.js needs the compiled tree: run npm run build');
  process.exit(1);
}
const given = args.slice(1).map((k) => path.resolve(k));
const defaults = [path.join(root, 'guest', 'linux', 'build', 'bzImage'), path.join(root, 'guest', 'linux', 'build', 'vmlinux'), path.join(root, 'guest', 'probe', 'build', 'probe.elf')].filter((k) => fs.existsSync(k));
const kernels = given.length > 0 ? given : defaults;
if (kernels.length === 0) {
  console.error('no kernel to load: build one (npm run build:probe, npm run build:linux) or name it');
  process.exit(1);
}

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fc-run-bench-kernel-'));
// One child: plans the spec, maps fresh guest memory, loads the kernel one way, prints its cost.
const child = `
  const [spec, fresh] = process.argv.slice(1);
  const { planRunnable } = require(${JSON.stringify(path.join(root, 'dist', 'boot'))});
  const { loadSpecFile } = require(${JSON.stringify(path.join(root, 'dist', 'config', 'validate.js'))});
  const { prepareGuestMemory } = require(${JSON.stringify(path.join(root, 'dist', 'boot', 'structures.js'))});
  const { GuestMemory } = require(${JSON.stringify(path.join(root, 'dist', 'kvm', 'memory.js'))});
  const plan = planRunnable(loadSpecFile(spec)).plan;
  const mem = GuestMemory.allocate(plan.memory.regions);
  const cpu0 = process.cpuUsage();
  const faults0 = process.resourceUsage().minorPageFault;
  prepareGuestMemory(mem, plan, fresh === 'fresh');
  const cpu = process.cpuUsage(cpu0);
  process.stdout.write(JSON.stringify({ cpuMs: (cpu.user + cpu.system) / 1000, faults: process.resourceUsage().minorPageFault - faults0 }));`;
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

try {
  console.log(`the VMM loading a kernel into fresh guest memory, ${rounds} rounds, the two ways alternating (medians)`);
  for (const kernel of kernels) {
    const spec = path.join(dir, 'spec.json');
    fs.writeFileSync(spec, JSON.stringify({ 'boot-source': { kernel_image_path: kernel, boot_args: 'console=ttyS0' }, 'machine-config': { vcpu_count: 1, mem_size_mib: 256 } }));
    const runs = { fresh: [], zeroing: [] };
    for (let i = 0; i < rounds; i++) {
      for (const way of ['fresh', 'zeroing']) runs[way].push(JSON.parse(execFileSync(process.execPath, ['-e', child, spec, way], { encoding: 'utf8' })));
    }
    const row = (way) => ({ cpu: median(runs[way].map((r) => r.cpuMs)), faults: median(runs[way].map((r) => r.faults)) });
    const fresh = row('fresh');
    const zeroing = row('zeroing');
    console.log(`  ${path.relative(process.cwd(), kernel) || kernel} (${(fs.statSync(kernel).size / 1048576).toFixed(1)} MiB)`);
    console.log(`    faulted in at once (now)    ${fresh.cpu.toFixed(1).padStart(6)} ms CPU  ${String(fresh.faults).padStart(6)} page faults   ${(fresh.cpu / zeroing.cpu).toFixed(2)}x of page by page`);
    console.log(`    page by page (before)       ${zeroing.cpu.toFixed(1).padStart(6)} ms CPU  ${String(zeroing.faults).padStart(6)} page faults`);
  }
} finally {
  fs.rmSync(dir, { recursive: true, force: true });
}
