#!/usr/bin/env node
// Snapshot restore against a cold boot of the same guest, measured in the same run: the probe guest
// in its snapshot mode (probe.snapshot=1, guest/probe/probe.c), 64 MiB and 2048 MiB of memory.
//
// Each round, for each size: cold boot (`fc-run SPEC --api-sock`) timed from the spawn to the first
// byte of the probe's "# probe snapshot-ready" line on the serial console (and to its first serial
// byte); then PATCH /vm Paused, PUT /snapshot/create (Full; timed), SIGKILL; then
// `fc-run restore SNAP --mem MEM --resume --api-sock` timed from the spawn to the first serial byte
// the restored guest prints: while it waits, the probe wakes every 1 ms (LAPIC timer) and prints
// "# probe woke: kvm-clock rewritten" once KVM has rewritten its kvm-clock page, which a restore
// does before the vCPU first runs (so at most one timer period after the guest runs again). Then
// Ctrl-Alt-Del: the restored guest checks its memory pattern, registers and clock and must report
// "# probe restored: 0 failed" and reset (exit 0), so every timed restore is a working one.
// Times are taken by this process (host clock); figures are medians over the rounds. The snapshot
// files are restored straight after being written (in the page cache).
// Targets: restore / cold boot <= 0.7 for each size; the two sizes' restore medians within 20 %.
//
// Diff snapshots, each round and size, once for each way fc-run finds changed pages: its default
// (KVM's dirty log where its launch self-test passes, page digests otherwise) and page digests
// forced (FC_RUN_DIRTY_PAGES=compare in fc-run's environment). A separate boot of the same guest
// with machine-config track_dirty_pages and probe.snapshot_rounds=2 (the Full figures above stay
// those of a VM without tracking): first ready line, Paused, PUT /snapshot/create Full (timed),
// Resumed, Ctrl-Alt-Del (round 1's checks must pass; round 2 rewrites half the pattern's pages),
// second ready line, Paused, PUT /snapshot/create Diff (timed), SIGKILL; then
// `fc-run snapshot merge FULL.mem DIFF.mem -o MERGED.mem` (timed, spawn to exit) and
// `fc-run restore DIFF.snap --mem MERGED.mem --resume`, Ctrl-Alt-Del: round 2's checks must pass
// ("# probe restored: 0 failed", exit 0). The method each run used and the pages each Diff held
// come from fc-run's log (--log-path, --level Info).
// Usage: node bench/snapshot.js [rounds=5] [pattern-mib=1]
//   pattern-mib: probe.snapshot_mib=, the RAM the probe fills with a pattern before it is ready (1-512)
'use strict';
const { spawn, execFileSync } = require('node:child_process');
const fs = require('node:fs');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const bin = path.join(root, 'bin', 'fc-run');
const probe = path.join(root, 'guest', 'probe', 'build', 'probe.elf');
const rounds = Number(process.argv[2] ?? 5);
const patternMib = Number(process.argv[3] ?? 1);
const SIZES = [64, 2048];
const READY = '# probe snapshot-ready';
const WOKE = '# probe woke: kvm-clock rewritten';
const TIMEOUT_MS = 600_000; // the probe's pattern is slow to write on an instruction-emulating KVM

if (!Number.isInteger(rounds) || rounds < 1 || !Number.isInteger(patternMib) || patternMib < 1 || patternMib > 512) {
  console.error('usage: node bench/snapshot.js [rounds=5] [pattern-mib=1]');
  process.exit(2);
}
if (!fs.existsSync('/dev/kvm')) {
  console.error('bench/snapshot.js needs /dev/kvm');
  process.exit(1);
}
if (!fs.existsSync(probe)) execFileSync('make', ['-s', '-C', path.join(root, 'guest', 'probe')], { stdio: 'inherit' });

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fc-run-bench-snapshot-'));
const children = new Set();
let cleaned = false;
function cleanup() {
  if (cleaned) return;
  cleaned = true;
  for (const c of children) {
    try {
      c.kill('SIGKILL');
    } catch {}
  }
  fs.rmSync(dir, { recursive: true, force: true });
}
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    cleanup();
    process.exit(128 + (sig === 'SIGINT' ? 2 : sig === 'SIGTERM' ? 15 : 1));
  });
}
process.on('exit', cleanup);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const now = () => process.hrtime.bigint();
const msSince = (t0, t = now()) => Number(t - t0) / 1e6;
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

/**
 * Starts `fc-run ARGS`, timed from just before the spawn. Serial output (stdout) is kept with the
 * arrival time of every chunk, so the time of any byte of it can be looked up.
 */
function startFcRun(args, extraEnv = {}) {
  const env = { ...process.env, NO_COLOR: '1', ...extraEnv };
  for (const [k, v] of Object.entries(env)) if (v === undefined) delete env[k];
  const t0 = now();
  const child = spawn(process.execPath, [bin, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  const chunks = []; // { end, t }: the bytes before `end` had arrived by `t`
  let out = '';
  let err = '';
  let code;
  child.stdout.on('data', (d) => {
    out += d.toString('latin1');
    chunks.push({ end: out.length, t: now() });
  });
  child.stderr.on('data', (d) => {
    if (err === '') child.firstStderr = now();
    err += d.toString();
  });
  const exited = new Promise((resolve) =>
    child.once('exit', (c, s) => {
      code = c ?? s;
      children.delete(child);
      resolve(code);
    }),
  );
  child.once('error', () => undefined);
  /** ms from the spawn to the arrival of byte `offset` of the serial output. */
  const byteMs = (offset) => msSince(t0, chunks.find((c) => c.end > offset).t);
  /** Resolves with the offset where `text` starts in the serial output (at or after `from`), once it is there. */
  const waitFor = async (text, timeoutMs = TIMEOUT_MS, from = 0) => {
    const until = Date.now() + timeoutMs;
    for (;;) {
      const i = out.indexOf(text, from);
      if (i >= 0) return i;
      if (code !== undefined) throw new Error(`fc-run ${args[0]} exited (${code}) before printing ${JSON.stringify(text)}\nstderr:\n${err}\nserial:\n${out.slice(-2000)}`);
      if (Date.now() > until) throw new Error(`fc-run ${args[0]}: no ${JSON.stringify(text)} within ${timeoutMs} ms\nstderr:\n${err}\nserial:\n${out.slice(-2000)}`);
      await sleep(2);
    }
  };
  const kill = async () => {
    if (code === undefined) child.kill('SIGKILL');
    await exited;
  };
  return { t0, child, exited, byteMs, waitFor, kill, output: () => out, stderr: () => err };
}

function apiCall(sock, method, url, body) {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : JSON.stringify(body);
    const req = http.request(
      { socketPath: sock, method, path: url, headers: data ? { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(data) } : {} },
      (res) => {
        let text = '';
        res.on('data', (d) => (text += d));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }));
      },
    );
    req.on('error', reject);
    req.end(data);
  });
}

/** Waits until the API socket answers GET / (with `started`: until the VM is no longer "Not started"). */
async function waitForApi(sock, started = false, timeoutMs = 120_000) {
  const until = Date.now() + timeoutMs;
  for (;;) {
    if (fs.existsSync(sock)) {
      const r = await apiCall(sock, 'GET', '/').catch(() => undefined);
      if (r?.status === 200 && (!started || JSON.parse(r.body).state !== 'Not started')) return;
    }
    if (Date.now() > until) throw new Error(`the API socket ${sock} did not answer within ${timeoutMs} ms`);
    await sleep(10);
  }
}

async function expectStatus(sock, method, url, body, status) {
  const r = await apiCall(sock, method, url, body);
  if (r.status !== status) throw new Error(`${method} ${url}: ${r.status} ${r.body} (expected ${status})`);
  return r;
}

const fileSizes = (f) => {
  const st = fs.statSync(f);
  return { bytes: st.size, allocated: st.blocks * 512 };
};

/** One round for one memory size: cold boot, snapshot, restore, check. */
async function round(mib, i) {
  const base = path.join(dir, `${mib}-${i}`);
  const spec = `${base}.json`;
  fs.writeFileSync(
    spec,
    JSON.stringify({
      // What test/helpers/probe-snapshot.ts snapshotProbeSpec({ memMib, mib }) builds: no devices.
      'boot-source': { kernel_image_path: probe, boot_args: `console=ttyS0 reboot=k panic=1 probe.snapshot=1 probe.snapshot_mib=${patternMib} probe.vsock=init` },
      'machine-config': { vcpu_count: 1, mem_size_mib: mib },
    }),
  );
  const snap = `${base}.snap`;
  const mem = `${base}.mem`;
  const r = {};

  // Cold boot to the ready line; snapshot.
  const coldApi = `${base}.api`;
  const cold = startFcRun([spec, '--api-sock', coldApi]);
  try {
    const at = await cold.waitFor(`${READY}\r\n`);
    r.coldFirstByteMs = cold.byteMs(0);
    r.coldReadyMs = cold.byteMs(at);
    await waitForApi(coldApi);
    await expectStatus(coldApi, 'PATCH', '/vm', { state: 'Paused' }, 204);
    const t = now();
    await expectStatus(coldApi, 'PUT', '/snapshot/create', { snapshot_type: 'Full', snapshot_path: snap, mem_file_path: mem }, 204);
    r.createMs = msSince(t);
  } finally {
    await cold.kill();
  }
  r.state = fileSizes(snap);
  r.mem = fileSizes(mem);

  // Restore, resumed at once, to the first serial byte; then Ctrl-Alt-Del and the guest's checks.
  const restApi = `${base}.restored.api`;
  const rest = startFcRun(['restore', snap, '--mem', mem, '--resume', '--api-sock', restApi]);
  try {
    await rest.waitFor('\n');
    r.restoreMs = rest.byteMs(0);
    if (rest.child.firstStderr) r.restoreStatusLineMs = msSince(rest.t0, rest.child.firstStderr);
    const first = rest.output().split('\r\n')[0];
    if (first !== WOKE) throw new Error(`the restored guest's first line is ${JSON.stringify(first)}, not ${JSON.stringify(WOKE)} (a probe without the wake-up: make -C guest/probe)`);
    await waitForApi(restApi, true);
    await expectStatus(restApi, 'PUT', '/actions', { action_type: 'SendCtrlAltDel' }, 204);
    await rest.waitFor('# probe restored: ');
    let timer;
    const code = await Promise.race([rest.exited, new Promise((r) => (timer = setTimeout(r, TIMEOUT_MS, 'timeout')))]);
    clearTimeout(timer);
    const out = rest.output().replace(/\r/g, '');
    r.verified = code === 0 && out.includes('\n# probe restored: 0 failed\n') && !/^not ok/m.test(out);
    if (!r.verified) console.error(`round ${i + 1}, ${mib} MiB: the restored guest's checks failed (exit ${code}):\n${out}\n${rest.stderr()}`);
  } finally {
    await rest.kill();
  }
  for (const f of [spec, snap, mem, coldApi, restApi]) fs.rmSync(f, { force: true });
  return r;
}

/** The two ways fc-run finds a Diff's pages, as this bench runs them: fc-run's environment for each. */
const DIFF_HOWS = {
  default: { label: 'default', env: { FC_RUN_DIRTY_PAGES: undefined } },
  compare: { label: 'FC_RUN_DIRTY_PAGES=compare', env: { FC_RUN_DIRTY_PAGES: 'compare' } },
};

/** What fc-run's log says about track_dirty_pages and the snapshots it wrote. */
function parseSnapshotLog(text) {
  const r = {};
  const setup = /track_dirty_pages: (.*)/.exec(text);
  if (setup) {
    r.trackingLine = setup[1].trim();
    r.tracking = /^KVM's dirty log \(its self-test passed\)/.test(r.trackingLine) ? 'dirty log' : /comparing page digests/.test(r.trackingLine) ? 'page digests' : 'unknown';
  }
  const full = /Full snapshot written: .* in ([\d.]+) ms/.exec(text);
  if (full) r.fullInternalMs = Number(full[1]);
  const diff = /Diff snapshot written: .*; Diff: (\d+) changed page\(s\), (.*)\) in ([\d.]+) ms/.exec(text);
  if (diff) {
    r.diffPages = Number(diff[1]);
    r.diffMethod = diff[2];
    r.diffInternalMs = Number(diff[3]);
  }
  return r;
}

/**
 * One Diff round for one memory size and one way of finding changed pages (a key of DIFF_HOWS):
 * boot with track_dirty_pages, Full at the first ready line, Diff at the second, merge, restore the
 * Diff with the merged memory, check.
 */
async function diffRound(mib, i, how) {
  const env = DIFF_HOWS[how].env;
  const base = path.join(dir, `${mib}-${i}-diff-${how}`);
  const spec = `${base}.json`;
  fs.writeFileSync(
    spec,
    JSON.stringify({
      // snapshotProbeSpec({ memMib, mib, rounds: 2, trackDirtyPages: true }): no devices.
      'boot-source': { kernel_image_path: probe, boot_args: `console=ttyS0 reboot=k panic=1 probe.snapshot=1 probe.snapshot_rounds=2 probe.snapshot_mib=${patternMib} probe.vsock=init` },
      'machine-config': { vcpu_count: 1, mem_size_mib: mib, track_dirty_pages: true },
    }),
  );
  const f = (n) => `${base}.${n}`;
  const [fullSnap, fullMem, diffSnap, diffMem, merged, api, log, restApi, restLog] = ['full.snap', 'full.mem', 'diff.snap', 'diff.mem', 'merged.mem', 'api', 'log', 'restored.api', 'restored.log'].map(f);
  const r = { how };

  const run = startFcRun([spec, '--api-sock', api, '--log-path', log, '--level', 'Info'], env);
  try {
    const at1 = await run.waitFor(`${READY}\r\n`);
    await waitForApi(api);
    await expectStatus(api, 'PATCH', '/vm', { state: 'Paused' }, 204);
    let t = now();
    await expectStatus(api, 'PUT', '/snapshot/create', { snapshot_type: 'Full', snapshot_path: fullSnap, mem_file_path: fullMem }, 204);
    r.fullCreateMs = msSince(t);
    await expectStatus(api, 'PATCH', '/vm', { state: 'Resumed' }, 204);
    await expectStatus(api, 'PUT', '/actions', { action_type: 'SendCtrlAltDel' }, 204);
    const at2 = await run.waitFor(`${READY}\r\n`, TIMEOUT_MS, at1 + READY.length);
    // Round 1's checks, between the two ready lines, ran on a VM that was paused, snapshotted and resumed.
    r.round1Ok = run.output().slice(at1, at2).replace(/\r/g, '').includes('\n# probe restored: 0 failed\n');
    await expectStatus(api, 'PATCH', '/vm', { state: 'Paused' }, 204);
    t = now();
    await expectStatus(api, 'PUT', '/snapshot/create', { snapshot_type: 'Diff', snapshot_path: diffSnap, mem_file_path: diffMem }, 204);
    r.diffCreateMs = msSince(t);
  } finally {
    await run.kill();
  }
  Object.assign(r, parseSnapshotLog(fs.readFileSync(log, 'utf8')));
  r.fullMem = fileSizes(fullMem);
  r.diffMem = fileSizes(diffMem);

  // Merge (spawn to exit, Node's start included, as a user pays it).
  const m = startFcRun(['snapshot', 'merge', fullMem, diffMem, '-o', merged, '--json']);
  const mergeCode = await m.exited;
  r.mergeMs = msSince(m.t0);
  if (mergeCode !== 0) throw new Error(`fc-run snapshot merge exited ${mergeCode}:\n${m.stderr()}`);
  r.mergedMem = fileSizes(merged);

  // Restore the Diff's state with the merged memory; Ctrl-Alt-Del: round 2's checks must pass.
  const rest = startFcRun(['restore', diffSnap, '--mem', merged, '--resume', '--api-sock', restApi, '--log-path', restLog, '--level', 'Info'], env);
  try {
    await rest.waitFor('\n');
    r.restoreMs = rest.byteMs(0);
    await waitForApi(restApi, true);
    await expectStatus(restApi, 'PUT', '/actions', { action_type: 'SendCtrlAltDel' }, 204);
    await rest.waitFor('# probe restored: ');
    let timer;
    const code = await Promise.race([rest.exited, new Promise((res) => (timer = setTimeout(res, TIMEOUT_MS, 'timeout')))]);
    clearTimeout(timer);
    const out = rest.output().replace(/\r/g, '');
    r.restoreExit = code;
    r.verified = r.round1Ok && code === 0 && out.includes('\n# probe restored: 0 failed\n') && !/^not ok/m.test(out);
    if (!r.verified) console.error(`round ${i + 1}, ${mib} MiB, Diff (${DIFF_HOWS[how].label}): checks failed (round 1 ${r.round1Ok ? 'ok' : 'FAILED'}, restored guest exit ${code}):\n${out}\n${rest.stderr()}`);
  } finally {
    await rest.kill();
  }
  for (const x of [spec, fullSnap, fullMem, diffSnap, diffMem, merged, api, log, restApi, restLog]) fs.rmSync(x, { force: true });
  return r;
}

/** `fc-run --version`: spawn to exit, the floor any fc-run command pays (Node start, the bundle). */
async function versionMs() {
  const p = startFcRun(['--version']);
  await p.exited;
  return msSince(p.t0);
}

const MiB = 1024 * 1024;
const fmtMs = (x) => (x === undefined ? '-' : `${x.toFixed(1)} ms`);
const fmtBytes = (b) => (b >= 10 * MiB ? `${(b / MiB).toFixed(0)} MiB` : b >= MiB ? `${(b / MiB).toFixed(1)} MiB` : `${(b / 1024).toFixed(1)} KiB`);
const verdict = (ok) => (ok ? 'PASS' : 'MISS');

(async () => {
  const runs = Object.fromEntries(SIZES.map((s) => [s, []]));
  const diffRuns = Object.fromEntries(SIZES.map((s) => [s, Object.fromEntries(Object.keys(DIFF_HOWS).map((h) => [h, []]))]));
  const floor = [];
  console.log(`fc-run snapshot restore vs cold boot: probe guest (probe.snapshot=1, ${patternMib} MiB pattern, 1 vCPU), ${rounds} round(s)`);
  for (let i = 0; i < rounds; i++) {
    floor.push(await versionMs());
    // Sizes alternate, and which goes first alternates too.
    for (const mib of i % 2 ? [...SIZES].reverse() : SIZES) {
      const r = await round(mib, i);
      runs[mib].push(r);
      console.log(
        `  round ${i + 1} ${String(mib).padStart(4)} MiB: cold first byte ${fmtMs(r.coldFirstByteMs)}, cold ready ${fmtMs(r.coldReadyMs)}, ` +
          `create ${fmtMs(r.createMs)}, restore ${fmtMs(r.restoreMs)}${r.verified ? '' : ' (CHECKS FAILED)'}`,
      );
      // Then the Diff runs; which method goes first alternates too.
      for (const how of i % 2 ? Object.keys(DIFF_HOWS).reverse() : Object.keys(DIFF_HOWS)) {
        const d = await diffRound(mib, i, how);
        diffRuns[mib][how].push(d);
        console.log(
          `  round ${i + 1} ${String(mib).padStart(4)} MiB Diff (${DIFF_HOWS[how].label}): ${d.tracking ?? 'tracking ?'}, Full create ${fmtMs(d.fullCreateMs)}, ` +
            `Diff create ${fmtMs(d.diffCreateMs)} (${d.diffPages ?? '?'} pages, ${d.diffMethod ?? '?'}), merge ${fmtMs(d.mergeMs)}, ` +
            `Diff mem ${fmtBytes(d.diffMem.bytes)} / ${fmtBytes(d.diffMem.allocated)}, restore ${d.verified ? 'ok' : 'CHECKS FAILED'}`,
        );
      }
    }
  }

  const res = {};
  for (const mib of SIZES) {
    const rs = runs[mib];
    const m = (k) => median(rs.map((r) => r[k]).filter((x) => x !== undefined));
    const last = rs[rs.length - 1];
    res[mib] = {
      coldFirstByteMs: m('coldFirstByteMs'),
      coldReadyMs: m('coldReadyMs'),
      restoreMs: m('restoreMs'),
      restoreStatusLineMs: m('restoreStatusLineMs'),
      createMs: m('createMs'),
      stateBytes: last.state.bytes,
      stateAllocatedBytes: median(rs.map((r) => r.state.allocated)),
      memBytes: last.mem.bytes,
      memAllocatedBytes: median(rs.map((r) => r.mem.allocated)),
      verified: rs.filter((r) => r.verified).length,
      runs: rs.map((r) => ({ coldFirstByteMs: r.coldFirstByteMs, coldReadyMs: r.coldReadyMs, createMs: r.createMs, restoreMs: r.restoreMs })),
    };
    res[mib].diff = {};
    for (const how of Object.keys(DIFF_HOWS)) {
      const ds = diffRuns[mib][how];
      const dm = (g) => median(ds.map(g).filter((x) => x !== undefined));
      const seen = (k) => [...new Set(ds.map((d) => d[k] ?? '?'))];
      res[mib].diff[how] = {
        env: Object.fromEntries(Object.entries(DIFF_HOWS[how].env).filter(([, v]) => v !== undefined)),
        tracking: seen('tracking'),
        trackingLine: seen('trackingLine'),
        diffMethod: seen('diffMethod'),
        fullCreateMs: dm((d) => d.fullCreateMs),
        diffCreateMs: dm((d) => d.diffCreateMs),
        fullCreateInternalMs: dm((d) => d.fullInternalMs),
        diffCreateInternalMs: dm((d) => d.diffInternalMs),
        mergeMs: dm((d) => d.mergeMs),
        fullMemBytes: dm((d) => d.fullMem.bytes),
        fullMemAllocatedBytes: dm((d) => d.fullMem.allocated),
        diffMemBytes: dm((d) => d.diffMem.bytes),
        diffMemAllocatedBytes: dm((d) => d.diffMem.allocated),
        mergedMemAllocatedBytes: dm((d) => d.mergedMem.allocated),
        diffPages: dm((d) => d.diffPages),
        diffRestoreMs: dm((d) => d.restoreMs),
        verified: ds.filter((d) => d.verified).length,
        runs: ds.map((d) => ({
          tracking: d.tracking,
          diffMethod: d.diffMethod,
          fullCreateMs: d.fullCreateMs,
          diffCreateMs: d.diffCreateMs,
          mergeMs: d.mergeMs,
          diffPages: d.diffPages,
          fullMemAllocatedBytes: d.fullMem.allocated,
          diffMemAllocatedBytes: d.diffMem.allocated,
          verified: d.verified,
        })),
      };
    }
    res[mib].ratio = res[mib].restoreMs / res[mib].coldReadyMs;
    res[mib].ratioFirstByte = res[mib].restoreMs / res[mib].coldFirstByteMs;
  }
  const [small, big] = SIZES.map((s) => res[s]);
  const sizeSpread = Math.max(small.restoreMs, big.restoreMs) / Math.min(small.restoreMs, big.restoreMs) - 1;

  const col = (s) => String(s).padStart(22);
  const row = (label, f) => console.log(`  ${label.padEnd(44)}${SIZES.map((s) => col(f(res[s]))).join('')}`);
  console.log(`\nMedians of ${rounds} round(s); times from the spawn of fc-run, taken by this process`);
  row('guest memory', (r) => `${r.memBytes / MiB} MiB`);
  row('cold boot: spawn -> first serial byte', (r) => fmtMs(r.coldFirstByteMs));
  row('cold boot: spawn -> "snapshot-ready" line', (r) => fmtMs(r.coldReadyMs));
  row('restore --resume: spawn -> first serial byte', (r) => fmtMs(r.restoreMs));
  row('  of which spawn -> "restoring" status line', (r) => fmtMs(r.restoreStatusLineMs));
  row('restore / cold boot (ready line)', (r) => `${r.ratio.toFixed(3)} ${verdict(r.ratio <= 0.7)}`);
  row('restore / cold boot to first byte (stricter)', (r) => `${r.ratioFirstByte.toFixed(3)} ${verdict(r.ratioFirstByte <= 0.7)}`);
  row('PUT /snapshot/create', (r) => fmtMs(r.createMs));
  row('state file: size / allocated', (r) => `${fmtBytes(r.stateBytes)} / ${fmtBytes(r.stateAllocatedBytes)}`);
  row('memory file: size / allocated', (r) => `${fmtBytes(r.memBytes)} / ${fmtBytes(r.memAllocatedBytes)}`);
  row('restored guest checks passed', (r) => `${r.verified}/${rounds}`);
  for (const how of Object.keys(DIFF_HOWS)) {
    const d = (f) => (r) => f(r.diff[how]);
    console.log(`  Diff snapshots, ${DIFF_HOWS[how].label} (track_dirty_pages):`);
    row('  method used (fc-run log)', d((x) => x.tracking.join(' + ')));
    row('  PUT /snapshot/create Full', d((x) => fmtMs(x.fullCreateMs)));
    row('  PUT /snapshot/create Diff', d((x) => fmtMs(x.diffCreateMs)));
    row('    of which fc-run\'s own (Full / Diff)', d((x) => `${x.fullCreateInternalMs.toFixed(1)} / ${x.diffCreateInternalMs.toFixed(1)} ms`));
    row('  snapshot merge (spawn -> exit)', d((x) => fmtMs(x.mergeMs)));
    row('  Full memory file: size / allocated', d((x) => `${fmtBytes(x.fullMemBytes)} / ${fmtBytes(x.fullMemAllocatedBytes)}`));
    row('  Diff memory file: size / allocated', d((x) => `${fmtBytes(x.diffMemBytes)} / ${fmtBytes(x.diffMemAllocatedBytes)}`));
    row('  pages in the Diff', d((x) => String(x.diffPages)));
    row('  merged Diff restored, checks passed', d((x) => `${x.verified}/${rounds}`));
  }
  console.log(`  ${'fc-run --version (spawn -> exit)'.padEnd(44)}${col(fmtMs(median(floor)))}`);
  console.log(
    `\nTargets: restore / cold boot <= 0.70: ${SIZES.map((s) => `${s} MiB ${res[s].ratio.toFixed(3)} ${verdict(res[s].ratio <= 0.7)}`).join(', ')}` +
      `; restore ${SIZES[1]} MiB vs ${SIZES[0]} MiB within 20 %: ${(100 * (big.restoreMs / small.restoreMs - 1)).toFixed(1)} % ${verdict(sizeSpread <= 0.2)}`,
  );
  const json = {
    bench: 'snapshot',
    rounds,
    patternMib,
    fcRunVersionMs: median(floor),
    sizes: Object.fromEntries(SIZES.map((s) => [`${s}MiB`, res[s]])),
    restoreSizeDiffPct: 100 * (big.restoreMs / small.restoreMs - 1),
    targets: {
      restoreOverColdMax: 0.7,
      sizeSpreadMaxPct: 20,
      pass: SIZES.every((s) => res[s].ratio <= 0.7) && sizeSpread <= 0.2,
    },
    diffRestoresVerified: SIZES.every((s) => Object.values(res[s].diff).every((x) => x.verified === rounds)),
  };
  console.log(JSON.stringify(json));
  cleanup();
})().catch((err) => {
  console.error(err.stack || String(err));
  cleanup();
  process.exit(1);
});
