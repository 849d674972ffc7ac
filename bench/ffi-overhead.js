#!/usr/bin/env node
// The cost of one KVM exit round trip, by FFI: a real-mode guest executes `out` N times and the
// host runs the KVM_RUN loop (1) in C, (2) in Node through fc-run's native addon (native/addon.c,
// the calls fc-run's KVM layer makes), (3) in Node through ffi-rs, a general FFI,
// (4) in fc-run's own vCPU thread (a long-mode guest doing the same loop, timed against N = 0) and
// (5) in fc-run with native vCPU threads (FC_RUN_VCPU_THREADS=native: each exit handed to the exit thread).
// All in the same run, alternating; prints µs per exit and the ratio to C.
// Usage: node bench/ffi-overhead.js [exits=20000] [rounds=3]
'use strict';
const { execFileSync, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const N = Number(process.argv[2] ?? 20000);
const rounds = Number(process.argv[3] ?? 3);
const { Kvm, GuestMemory } = require(path.join(root, 'dist', 'kvm'));
const { sys } = require(path.join(root, 'dist', 'kvm', 'libc'));
const { KVM } = require(path.join(root, 'dist', 'kvm', 'ioctls'));

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fc-run-ffi-'));
const cBin = path.join(dir, 'pio-loop');
execFileSync('gcc', ['-O2', '-o', cBin, path.join(__dirname, 'c', 'pio-loop.c')]);

/** mov ecx, N; 1: out 0x99, al; dec ecx; jnz 1b; hlt (real mode, 32-bit operands). */
function realModeLoop(n) {
  const code = Buffer.from([0x66, 0xb9, 0, 0, 0, 0, 0xe6, 0x99, 0x66, 0x49, 0x75, 0xfa, 0xf4]);
  code.writeUInt32LE(n, 2);
  return code;
}

/** A VM with no in-kernel irqchip (so HLT exits to user space), set up through fc-run's KVM layer. */
function setupVm(kvm, n) {
  const vm = kvm.createVm();
  const mem = GuestMemory.allocate([{ start: 0, size: 0x10000 }]);
  const [r] = mem.describe();
  vm.setUserMemoryRegion(0, r.guestAddr, r.size, r.hostAddr);
  mem.write(0x1000, realModeLoop(n));
  const vcpu = vm.createVcpu(0);
  const sregs = vcpu.getSregs();
  sregs.cs.base = 0;
  sregs.cs.selector = 0;
  vcpu.setSregs(sregs);
  const regs = vcpu.getRegs();
  vcpu.setRegs({ ...regs, rip: 0x1000n, rflags: 2n });
  return { vcpu, run: new DataView(vcpu.mapRun()) };
}

function timeLoop(kvm, n, runOnce) {
  const { vcpu, run } = setupVm(kvm, n);
  let exits = 0;
  const t0 = process.hrtime.bigint();
  for (;;) {
    if (runOnce(vcpu) < 0) throw new Error('KVM_RUN failed');
    const reason = run.getUint32(8, true);
    if (reason === 2) exits++;
    else if (reason === 5) break;
    else throw new Error(`unexpected exit ${reason}`);
  }
  const ns = Number(process.hrtime.bigint() - t0);
  if (exits !== n) throw new Error(`expected ${n} exits, saw ${exits}`);
  return ns / n / 1000;
}

function cLoop(n) {
  const out = JSON.parse(execFileSync(cBin, [String(n)], { encoding: 'utf8' }));
  return out.ns / out.exits / 1000;
}

const ffiRs = require('ffi-rs');
ffiRs.open({ library: 'libc', path: '' });
const ffiRsRun = (vcpu) =>
  ffiRs.load({ library: 'libc', funcName: 'ioctl', retType: ffiRs.DataType.I32, paramsType: [ffiRs.DataType.I32, ffiRs.DataType.I64, ffiRs.DataType.I64], paramsValue: [vcpu.fd, KVM.RUN, 0] });
const addonRun = (vcpu) => sys.ioctlInt(vcpu.fd, KVM.RUN, 0);

/** fc-run end to end: a long-mode guest doing the loop then resetting; (t(N) - t(0)) / N. */
function fcRunLoop(n, mode = 'worker') {
  const time = (count) => {
    const kernel = path.join(dir, `loop-${count}.elf`);
    fs.writeFileSync(kernel, elfWithCode(longModeLoop(count)));
    const spec = path.join(dir, `loop-${count}.json`);
    fs.writeFileSync(spec, JSON.stringify({ 'boot-source': { kernel_image_path: kernel }, 'machine-config': { vcpu_count: 1, mem_size_mib: 16 } }));
    const t0 = process.hrtime.bigint();
    const r = spawnSync(process.execPath, [path.join(root, 'bin', 'fc-run'), spec], { encoding: 'utf8', env: { ...process.env, FC_RUN_VCPU_THREADS: mode } });
    if (r.status !== 0) throw new Error(`fc-run failed: ${r.stderr}`);
    return Number(process.hrtime.bigint() - t0);
  };
  const base = Math.min(time(0), time(0));
  const loaded = Math.min(time(n), time(n));
  return (loaded - base) / n / 1000;
}

/** mov ecx, N; test ecx, ecx; jz 2f; 1: out 0x99, al; dec ecx; jnz 1b; 2: mov al, 0xfe; out 0x64, al */
function longModeLoop(n) {
  const code = Buffer.from([0xb9, 0, 0, 0, 0, 0x85, 0xc9, 0x74, 0x06, 0xe6, 0x99, 0xff, 0xc9, 0x75, 0xfa, 0xb0, 0xfe, 0xe6, 0x64, 0xf4]);
  code.writeUInt32LE(n, 1);
  return code;
}

/** Minimal ELF64 with one PT_LOAD at 2 MiB holding `code`, entered at its start. */
function elfWithCode(code) {
  const file = Buffer.alloc(0x1000 + code.length);
  file.writeUInt32LE(0x464c457f, 0);
  file[4] = 2;
  file[5] = 1;
  file[6] = 1;
  file.writeUInt16LE(2, 16);
  file.writeUInt16LE(62, 18);
  file.writeUInt32LE(1, 20);
  file.writeBigUInt64LE(0x200000n, 24);
  file.writeBigUInt64LE(64n, 32);
  file.writeUInt16LE(64, 52);
  file.writeUInt16LE(56, 54);
  file.writeUInt16LE(1, 56);
  file.writeUInt32LE(1, 64);
  file.writeUInt32LE(5, 68);
  file.writeBigUInt64LE(0x1000n, 72);
  file.writeBigUInt64LE(0x200000n, 80);
  file.writeBigUInt64LE(0x200000n, 88);
  file.writeBigUInt64LE(BigInt(code.length), 96);
  file.writeBigUInt64LE(BigInt(code.length), 104);
  code.copy(file, 0x1000);
  return file;
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const kvm = new Kvm();
const results = { C: [], 'native addon': [], 'ffi-rs': [], 'fc-run vCPU loop': [], 'fc-run native vCPU': [] };
for (let i = 0; i < rounds; i++) {
  results.C.push(cLoop(N));
  results['native addon'].push(timeLoop(kvm, N, addonRun));
  results['ffi-rs'].push(timeLoop(kvm, N, ffiRsRun));
  results['fc-run vCPU loop'].push(fcRunLoop(N));
  results['fc-run native vCPU'].push(fcRunLoop(N, 'native'));
}
fs.rmSync(dir, { recursive: true, force: true });
const c = median(results.C);
console.log(`KVM exit round trip, guest \`out\` loop of ${N} exits (median of ${rounds} alternating rounds)`);
for (const [name, xs] of Object.entries(results)) {
  const m = median(xs);
  const note = name.startsWith('fc-run') ? '   target <= 1.5x' : '';
  console.log(`  ${name.padEnd(18)} ${m.toFixed(2).padStart(7)} µs/exit   ${(m / c).toFixed(2)}x of C${note}`);
}
