'use strict';
// How the benches start fc-run and Node's own start they compare it with.
//
// fc-run is started as a user starts it, bin/fc-run itself, whose #! line runs Node without
// NODE_EXTRA_CA_CERTS (Node parses that file's certificates at every start, ~30 ms of CPU here,
// and fc-run makes no TLS connection). The baseline, "Node's floor", is `node -e 0` started the
// same way. Where this environment sets NODE_EXTRA_CA_CERTS, `node -e 0` with it is measured too,
// as a row of its own: what any Node program started plainly pays here.
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const bin = path.join(root, 'bin', 'fc-run');
const extraCas = process.env.NODE_EXTRA_CA_CERTS !== undefined && process.env.NODE_EXTRA_CA_CERTS !== '';

/** argv of an fc-run command, started through bin/fc-run's #! line. */
const fcRun = (...args) => [bin, ...args];

/** argv of Node's floor: `node -e 0` started as bin/fc-run starts Node. */
const nodeFloor = () => (extraCas ? ['/usr/bin/env', '-u', 'NODE_EXTRA_CA_CERTS', process.execPath, '-e', '0'] : [process.execPath, '-e', '0']);

/** argv of `node -e 0` in this environment as it is, when that differs from the floor; else undefined. */
const nodePlain = () => (extraCas ? [process.execPath, '-e', '0'] : undefined);

module.exports = { bin, fcRun, nodeFloor, nodePlain, extraCas };
