'use strict';
// The QEMU the benches compare against (Debian's qemu-system-x86), or an exit with how to get it.
const { execFileSync } = require('node:child_process');

function qemuOrExit() {
  const qemu = ['qemu-system-x86_64', '/usr/bin/qemu-system-x86_64'].find((q) => {
    try {
      execFileSync(q, ['--version'], { stdio: 'ignore' });
      return true;
    } catch {
      return false;
    }
  });
  if (!qemu) {
    console.error('qemu-system-x86_64 is not installed: apt-get install qemu-system-x86');
    process.exit(1);
  }
  return qemu;
}

/**
 * QEMU microvm's arguments for a direct kernel boot with the console on standard output, as the
 * benches run it: no firmware, option ROMs, RTC or ACPI, one machine that ends on a reset
 * (-no-reboot). `i8042`: a keyboard controller, so that a guest's reset through it (Linux
 * reboot=k, the probe) ends QEMU too.
 */
function microvmArgs({ kernel, append, memMib, vcpus = 1, cpu = 'host', initrd, i8042 = false }) {
  return [
    '-M', 'microvm,x-option-roms=off,rtc=off,acpi=off', '-enable-kvm', '-cpu', cpu, '-m', String(memMib), '-smp', String(vcpus),
    '-nodefaults', '-no-user-config', '-nographic', '-serial', 'stdio', ...(i8042 ? ['-device', 'i8042'] : []),
    '-kernel', kernel, ...(initrd ? ['-initrd', initrd] : []), '-append', append, '-no-reboot',
  ];
}

/**
 * The `-cpu` to give QEMU here: `base` if QEMU boots the probe guest with it, else `base` without
 * the arch-capabilities MSR, which some hosts' KVM refuses to set (QEMU then aborts with "failed to
 * set MSR 0x10a" before the guest runs, and a bench would time and measure a crash). Exits with
 * the reason when neither boots.
 */
const working = new Map();
function workingCpu(qemu, base = 'host') {
  if (!working.has(base)) working.set(base, findWorkingCpu(qemu, base));
  return working.get(base);
}

function findWorkingCpu(qemu, base) {
  const { spawnSync } = require('node:child_process');
  const probe = require('node:path').join(__dirname, '..', 'guest', 'probe', 'build', 'probe.elf');
  let last = '';
  for (const cpu of [base, `${base},-arch-capabilities`]) {
    const r = spawnSync(qemu, microvmArgs({ kernel: probe, append: 'console=ttyS0 reboot=k panic=1', memMib: 64, cpu, i8042: true }), { encoding: 'utf8', timeout: 60_000 });
    if (r.status === 0 && r.stdout.includes('# probe done')) {
      if (cpu !== base) console.log(`(QEMU runs with -cpu ${cpu}: with -cpu ${base} it fails on this host: ${last})`);
      return cpu;
    }
    last = (r.stderr || '').trim().split('\n')[0] || `exit ${r.status ?? r.signal}`;
  }
  console.error(`QEMU does not boot the probe guest on this host (${last}): no comparison`);
  process.exit(1);
}

module.exports = { qemuOrExit, microvmArgs, workingCpu };
