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

module.exports = { qemuOrExit };
