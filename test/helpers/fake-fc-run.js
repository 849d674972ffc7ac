#!/usr/bin/env node
'use strict';
// Stands in for bin/fc-run in supervisor tests on hosts without KVM: takes the same arguments
// (run <spec> --api-sock S --id ID --serial-out F --exit-record E, each also as --opt=value), serves PUT /actions on the
// API socket (SendCtrlAltDel ends it with status 0, as a guest power-off would), writes serial
// output, and writes the exit record fc-run writes. It stays up until stopped; a spec whose
// boot_args contain "fake.exit=N" makes it exit with N after a moment instead.
const fs = require('node:fs');
const http = require('node:http');

const argv = process.argv.slice(2);
const opt = (name) => {
  const joined = argv.find((a) => a.startsWith(`--${name}=`));
  if (joined) return joined.slice(name.length + 3);
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? argv[i + 1] : undefined;
};
const spec = JSON.parse(fs.readFileSync(argv[1], 'utf8'));
const args = (spec['boot-source'] && spec['boot-source'].boot_args) || '';
const serial = fs.openSync(opt('serial-out'), 'a');
let reason = 'exited';
process.on('exit', (code) => {
  fs.writeFileSync(opt('exit-record'), JSON.stringify({ code, reason, time: new Date().toISOString(), pid: process.pid }));
});
const bytes = /fake\.serial=(\d+)/.exec(args);
fs.writeSync(serial, `fake guest ${opt('id')} up\n`);
if (bytes) fs.writeSync(serial, 'x'.repeat(Number(bytes[1])) + '\n');
const exitWith = /fake\.exit=(\d+)/.exec(args);
if (/fake\.sigsys/.test(args)) {
  // As fc-run's SIGSYS handler (native/sigsys.c) ends it: its line on stderr, then death by SIGSYS.
  setTimeout(() => {
    process.stderr.write('fc-run: killed by SIGSYS (seccomp): syscall 110 (getppid) is not on the seccomp filter of thread 7 (api: the main thread); arguments 0x0, 0x0, 0x0, 0x0\n', () => process.kill(process.pid, 'SIGSYS'));
  }, 20);
} else if (exitWith) {
  reason = `fake exit ${exitWith[1]}`;
  setTimeout(() => process.exit(Number(exitWith[1])), 20);
} else {
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      res.writeHead(204).end();
      if (req.method === 'PUT' && req.url === '/actions' && /SendCtrlAltDel/.test(body) && !/fake\.ignore-cad/.test(args)) {
        reason = 'reset: ctrl-alt-del';
        fs.writeSync(serial, 'fake guest: ctrl-alt-del\n');
        setTimeout(() => process.exit(0), 10);
      }
    });
  });
  server.listen(opt('api-sock'));
  process.on('SIGTERM', () => {
    reason = 'SIGTERM';
    process.exit(0);
  });
}
