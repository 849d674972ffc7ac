// Installs fc-run's seccomp filter in this process, shows that what fc-run does after launch
// still works (files, a worker thread, a Unix socket, async fs, timers), then tries what argv[2]
// names: "exec" (start a program), "tcp" (an Internet socket) or nothing.
'use strict';
const path = require('node:path');
const fs = require('node:fs');
const net = require('node:net');
const { Worker } = require('node:worker_threads');
const { installSeccomp } = require(path.join(__dirname, '..', '..', 'dist', 'kvm', 'seccomp'));

const [, , attempt, dir] = process.argv;
installSeccomp();
const file = path.join(dir, 'f.txt');
fs.writeFileSync(file, 'data');
const w = new Worker('require("node:worker_threads").parentPort.postMessage(42)', { eval: true });
w.on('message', () => {
  const srv = net.createServer().listen(path.join(dir, 's.sock'), () => {
    srv.close();
    fs.readFile(file, 'utf8', (err, text) => {
      console.log(`ok: ${text}`);
      if (attempt === 'exec') require('node:child_process').spawnSync('true');
      if (attempt === 'tcp') net.connect(9, '127.0.0.1').on('error', () => undefined);
      setTimeout(() => console.log('survived'), 50);
    });
  });
});
