#!/usr/bin/env node
// Replaces the whole CLI bundle's eager code cache (dist/bundle/cli.js.cache, written by
// scripts/bundle.js: every function compiled) with the cache of a real launch: the probe guest
// (guest/probe) booted once, on this host's KVM, by a child Node that loaded the bundle without a
// cache. That cache holds what a launch runs and little else, so V8 reads and deserializes half as
// much at every launch; a function it lacks (a device the warm-up VM did not have) is compiled
// when first called, as without a cache. Run by `npm run setup` after the probe is built.
//
// Without /dev/kvm, without the probe, or if the warm-up launch fails for any reason, the eager
// cache stays and this says why: the cache only makes starts cheaper, it never changes what runs.
'use strict';
const { spawnSync } = require('node:child_process');
const { cacheAccepted } = require('./cache-accepted.js');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const bundle = path.join(root, 'dist', 'bundle', 'cli.js');
const cacheFile = `${bundle}.cache`;
const probe = path.join(root, 'guest', 'probe', 'build', 'probe.elf');

/** Why the eager cache stays (not an error: `npm run setup` goes on). */
class Keep extends Error {}
const keep = (why) => {
  throw new Keep(why);
};

function warm(dir) {
  if (!fs.existsSync(bundle)) keep('the bundle is not built: run npm run build');
  if (!fs.existsSync(probe)) keep('the probe guest is not built: run npm run build:probe');
  try {
    fs.closeSync(fs.openSync('/dev/kvm', 'r+'));
  } catch (err) {
    keep(`/dev/kvm cannot be opened: ${err.code}`);
  }
  // The launch most starts are: one vCPU (the vCPU loop on the main thread) and one drive, which
  // the probe writes to. --no-seccomp: the child writes the cache after the VM stopped, which its
  // own filter would forbid; the few functions that install filters compile when a launch calls them.
  const disk = path.join(dir, 'disk.img');
  fs.writeFileSync(disk, Buffer.alloc(64 * 1024));
  const spec = path.join(dir, 'warm.json');
  fs.writeFileSync(
    spec,
    JSON.stringify({
      'boot-source': { kernel_image_path: probe, boot_args: 'console=ttyS0' },
      'machine-config': { vcpu_count: 1, mem_size_mib: 64 },
      drives: [{ drive_id: 'disk0', path_on_host: disk, is_root_device: false, is_read_only: false }],
    }),
  );
  const out = path.join(dir, 'cli.js.cache');
  const child = `
    const { compileBundle, runBundle } = require(${JSON.stringify(path.join(root, 'dist', 'code-cache.js'))});
    const fs = require('node:fs');
    const compiled = compileBundle(${JSON.stringify(bundle)}, ${JSON.stringify(path.join(dir, 'no-cache'))});
    const cli = runBundle(compiled, ${JSON.stringify(bundle)}, require);
    const sink = { write: () => true, isTTY: false };
    cli.main([${JSON.stringify(spec)}, '--serial-out', 'none', '--no-seccomp'], { out: sink, err: { write: (t) => process.stderr.write(t), isTTY: false } }).then((code) => {
      if (code !== 0) process.exit(10 + code);
      fs.writeFileSync(${JSON.stringify(out)}, compiled.script.createCachedData());
      process.exit(0);
    });`;
  // From the package root, with Node's default flags (a cache is stamped with them), and the
  // default vCPU threads: the environment a user's launch has.
  const env = { ...process.env };
  delete env.FC_RUN_VCPU_THREADS;
  delete env.NODE_OPTIONS;
  const r = spawnSync(process.execPath, ['-e', child], { cwd: root, env, encoding: 'utf8', timeout: 120_000 });
  if (r.status !== 0 || !fs.existsSync(out)) keep(`the warm-up launch failed (exit ${r.status ?? r.signal}): ${(r.stderr || '').trim().split('\n').slice(-3).join(' | ')}`);
  if (!cacheAccepted(bundle, out)) keep('V8 rejects the warm-up cache');
  const before = fs.statSync(cacheFile, { throwIfNoEntry: false })?.size;
  // Renamed into place: a start reading the cache meanwhile sees the old file or the new, whole
  // (the temporary name is this process's, so two runs at once do not take each other's).
  const tmp = `${cacheFile}.${process.pid}.tmp`;
  fs.copyFileSync(out, tmp);
  fs.renameSync(tmp, cacheFile);
  console.log(`warm-cache: dist/bundle/cli.js.cache is now a launch's (${(fs.statSync(cacheFile).size / 1024).toFixed(0)} KiB${before ? `; the one it replaced was ${(before / 1024).toFixed(0)} KiB` : ''})`);
}

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fc-run-warm-'));
try {
  warm(dir);
} catch (err) {
  if (!(err instanceof Keep)) throw err;
  console.log(`warm-cache: keeping the eager code cache of dist/bundle/cli.js (${err.message})`);
} finally {
  fs.rmSync(dir, { recursive: true, force: true });
}
