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

module.exports = { qemuOrExit, microvmArgs };
