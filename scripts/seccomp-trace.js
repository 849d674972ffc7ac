#!/usr/bin/env node
// Which system calls fc-run's threads make once its seccomp filters are in place: the tool the
// allow-lists in src/kvm/seccomp-lists.ts were made with.
//
//   node scripts/seccomp-trace.js run DIR -- fc-run-args...   run fc-run under strace -f -ff into DIR
//   node scripts/seccomp-trace.js report DIR...               per thread category, what was called
//
// Run fc-run in the trial mode (FC_RUN_SECCOMP_LOG=1, set by `run`): the filters are installed
// but let everything through, so the traces show every call, and each thread's own seccomp()
// call marks its category: the main thread installs the process-wide filter (TSYNC) and then the
// api one; a thread whose later trace has KVM_RUN is a vCPU thread, another one with a filter of
// its own the VMM thread; threads without one are Node's helpers (libuv's pool, V8's platform),
// whose calls count from the moment the process-wide filter was installed.
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const [, , mode, ...rest] = process.argv;

function run(dir, args) {
  fs.mkdirSync(dir, { recursive: true });
  const r = spawnSync('strace', ['-f', '-ff', '-qq', '-tt', '-s', '64', '-o', path.join(dir, 't'), process.execPath, path.join(__dirname, '..', 'bin', 'fc-run'), ...args], {
    stdio: 'inherit',
    env: { ...process.env, FC_RUN_SECCOMP_LOG: '1' },
  });
  process.exit(r.status ?? 1);
}

const LINE = /^(\d\d:\d\d:\d\d\.\d+) (?:<\.\.\. )?([a-z0-9_]+)(?:\(| resumed>)(.*)$/;

function detail(call, args) {
  // The argument that the lists restrict, to see which values occur.
  const a = args.split(', ');
  if (call === 'ioctl') return (a[1] || '').replace(/\).*$/, '');
  if (call === 'socket') return a[0];
  if (call === 'clone') return (args.match(/flags=([A-Z_|]+)/) || [])[1];
  if (call === 'prctl') return a[0];
  if (call === 'openat') return `${(a[1] || '').slice(0, 60)} ${a[2] || ''}`;
  if (call === 'kill' || call === 'tgkill' || call === 'tkill') return a.slice(0, 3).join(',');
  return undefined;
}

function report(dirs) {
  const byCategory = new Map(); // category -> Map(call -> Set(detail))
  const add = (cat, call, d) => {
    if (!byCategory.has(cat)) byCategory.set(cat, new Map());
    const m = byCategory.get(cat);
    if (!m.has(call)) m.set(call, new Set());
    if (d !== undefined) m.get(call).add(d);
  };
  for (const dir of dirs) {
    const threads = fs.readdirSync(dir).filter((f) => f.startsWith('t.')).map((f) => ({ tid: f.slice(2), lines: fs.readFileSync(path.join(dir, f), 'utf8').split('\n') }));
    let t0;
    for (const t of threads) {
      const i = t.lines.findIndex((l) => l.includes('seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC'));
      if (i >= 0) {
        t.main = true;
        t0 = t.lines[i].slice(0, 15);
      }
    }
    if (!t0) {
      process.stderr.write(`${dir}: no process-wide filter was installed\n`);
      continue;
    }
    for (const t of threads) {
      const own = t.lines.findIndex((l) => /seccomp\(SECCOMP_SET_MODE_FILTER, 0,/.test(l));
      let category;
      let from;
      if (own >= 0) {
        from = own + 1;
        category = t.main ? 'api' : t.lines.slice(from).some((l) => l.includes('KVM_RUN')) ? 'vcpu' : 'vmm';
      } else {
        category = 'helpers';
        from = t.lines.findIndex((l) => l.slice(0, 15) > t0);
        if (from < 0) continue;
      }
      for (const l of t.lines.slice(from)) {
        const m = LINE.exec(l);
        if (!m || l.includes(' resumed>')) {
          if (m && l.includes('<... ') && !byCategory.get(category)?.has(m[2])) add(category, m[2]);
          continue;
        }
        add(category, m[2], detail(m[2], m[3]));
        add('process', m[2], detail(m[2], m[3]));
      }
    }
  }
  for (const [cat, calls] of [...byCategory].sort()) {
    const names = [...calls.keys()].sort();
    process.stdout.write(`${cat} (${names.length}): ${names.join(' ')}\n`);
    for (const n of names) if (calls.get(n).size) process.stdout.write(`    ${n}: ${[...calls.get(n)].sort().join(' | ')}\n`);
  }
}

if (mode === 'run') {
  const sep = rest.indexOf('--');
  run(rest[0], rest.slice(sep + 1));
} else if (mode === 'report') {
  report(rest);
} else {
  process.stderr.write('usage: seccomp-trace.js run DIR -- fc-run-args... | report DIR...\n');
  process.exit(2);
}
