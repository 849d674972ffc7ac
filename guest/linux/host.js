'use strict';
// Which guest profile this host needs, and the command line and CPU template that follow from it.
// Used by the real-Linux tests and `npm run bench:linux`; the data is in boot-args.json (every
// host) and emulating-host.json (instruction-emulating KVMs only).
//
// The host is told apart by running, not by guessing from names: the probe guest in its
// probe.ring3=1 mode drops to ring 3 and makes a system call. Where KVM runs guest code on the
// CPU, the call enters the guest kernel in ring 0 ("ok - ring3-syscall"): a real /init can run
// there, and the kernel needs no boot option of the emulating profile. Where it does not
// ("not ok - ring3-syscall"), user space can make no system call at all and the emulating
// profile is needed. FC_RUN_GUEST_PROFILE=hardware|emulating overrides the detection.
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const here = __dirname;
const root = path.resolve(here, '..', '..');
const read = (name) => JSON.parse(fs.readFileSync(path.join(here, name), 'utf8'));

/**
 * Runs the ring-3 probe through fc-run and says which kind of KVM this is:
 * { kind: 'hardware' | 'emulating', why: string }. Throws when the probe gives no verdict.
 */
function detectHost(opts = {}) {
  const forced = process.env.FC_RUN_GUEST_PROFILE;
  if (forced !== undefined && forced !== '') {
    if (forced !== 'hardware' && forced !== 'emulating') throw new Error(`FC_RUN_GUEST_PROFILE must be hardware or emulating, not ${JSON.stringify(forced)}`);
    return { kind: forced, why: 'FC_RUN_GUEST_PROFILE' };
  }
  const bin = opts.bin ?? path.join(root, 'bin', 'fc-run');
  const probe = opts.probe ?? path.join(root, 'guest', 'probe', 'build', 'probe.elf');
  if (!fs.existsSync(probe)) throw new Error(`${probe} is missing: run \`npm run build:probe\``);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fc-run-ring3-'));
  try {
    const spec = path.join(dir, 'ring3.json');
    fs.writeFileSync(spec, JSON.stringify({
      'boot-source': { kernel_image_path: probe, boot_args: 'console=ttyS0 reboot=k panic=1 probe.ring3=1' },
      'machine-config': { vcpu_count: 1, mem_size_mib: 64 },
    }));
    const r = spawnSync(process.execPath, [bin, spec], { encoding: 'utf8', timeout: 120_000, env: { ...process.env, NO_COLOR: '1' } });
    const out = `${r.stdout ?? ''}${r.stderr ?? ''}`.replace(/\r/g, '');
    const said = [...out.matchAll(/^# ring3-syscall: (.*)$/gm)].map((m) => m[1]).pop() ?? '';
    if (/^ok - ring3-syscall$/m.test(out)) return { kind: 'hardware', why: said };
    const refused = out.match(/^not ok - ring3-syscall: (.*)$/m);
    if (refused) return { kind: 'emulating', why: `${said}: ${refused[1]}` };
    throw new Error(`the ring-3 probe gave no verdict (exit ${r.status}, signal ${r.signal}${r.error ? `, ${r.error.message}` : ''}):\n${out.slice(-2000)}`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** The TSC rate KVM gives a vCPU here (KVM_GET_TSC_KHZ), for the emulating profile's tsc_early_khz. */
function hostTscKhz() {
  const { Kvm } = require(path.join(root, 'dist', 'kvm', 'kvm.js'));
  const { KVM } = require(path.join(root, 'dist', 'kvm', 'ioctls.js'));
  const { sys } = require(path.join(root, 'dist', 'kvm', 'libc.js'));
  const kvm = new Kvm();
  const vm = kvm.createVm();
  const vcpu = vm.createVcpu(0);
  try {
    const khz = sys.ioctlInt(vcpu.fd, KVM.GET_TSC_KHZ, 0);
    if (!(khz > 0)) throw new Error('KVM_GET_TSC_KHZ failed: the emulating profile needs the host TSC rate');
    return khz;
  } finally {
    sys.close(vcpu.fd);
    sys.close(vm.fd);
    kvm.close();
  }
}

/** The kernel command line for `host`: the common options, the host's profile, then `extra`. */
function bootArgs(host, extra = []) {
  const args = read('boot-args.json').bootArgs.map((a) => a.arg);
  if (host.kind === 'emulating') {
    const profile = read('emulating-host.json');
    let khz;
    for (const { arg } of profile.bootArgs) {
      if (arg.includes('{hostTscKhz}')) khz ??= hostTscKhz();
      args.push(arg.replace('{hostTscKhz}', String(khz)));
    }
  }
  return [...args, ...extra].join(' ');
}

/** The spec's cpu-config for `host` (a file path), or undefined where none is needed. */
function cpuConfig(host) {
  return host.kind === 'emulating' ? path.join(here, read('emulating-host.json').cpuConfig) : undefined;
}

module.exports = { detectHost, bootArgs, cpuConfig, hostTscKhz };
