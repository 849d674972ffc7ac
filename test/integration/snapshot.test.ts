import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Workspace } from '../helpers/specs';
import { Kvm } from '../../src/kvm/kvm';
import { dirtyLogProblem } from '../../src/kvm/dirty-log';
import {
  apiCall,
  EchoListener,
  expectedSnapshotChecks,
  FcRunProcess,
  parseSnapshotOutput,
  PROBE,
  SECTOR_TAG_AFTER,
  SECTOR_TAG_BEFORE,
  sectorTag,
  sendCtrlAltDel,
  snapshotProbeSpec,
  startEchoListener,
  startFcRun,
  waitForApi,
} from '../helpers/probe-snapshot';

/**
 * Snapshots on KVM with the probe guest in its snapshot mode: it prepares (memory pattern,
 * counter, kvm-clock, a disk sector), says it is ready and waits halted. The test pauses it, takes
 * a snapshot, kills it, restores the snapshot in a new fc-run process (or two, side by side, with
 * their own disk copies and vsock paths) and presses Ctrl-Alt-Del: the restored guest checks that
 * memory, registers, time, the disk, entropy and vsock (after the transport reset) all carry on.
 */
const hasKvm = fs.existsSync('/dev/kvm');
const describeKvm = hasKvm ? describe : describe.skip;
if (!hasKvm) console.warn('SKIPPED: the snapshot tests need /dev/kvm, which this host does not have');
const canTap = hasKvm && fs.existsSync('/dev/net/tun') && process.getuid?.() === 0;

const VSOCK_PORT = 7000;
let ws: Workspace;
const runs: FcRunProcess[] = [];
const listeners: EchoListener[] = [];
beforeAll(() => {
  if (hasKvm && !fs.existsSync(PROBE)) throw new Error(`${PROBE} is missing: run \`npm run build:probe\``);
  ws = new Workspace();
});
afterEach(async () => {
  for (const r of runs.splice(0)) if (r.child.exitCode === null && r.child.signalCode === null) r.child.kill('SIGKILL');
  for (const l of listeners.splice(0)) await l.close();
});
afterAll(() => ws?.remove());

function started(run: FcRunProcess): FcRunProcess {
  runs.push(run);
  return run;
}

async function echo(uds: string): Promise<EchoListener> {
  const l = await startEchoListener(uds, VSOCK_PORT);
  listeners.push(l);
  return l;
}

/** Boots the probe in snapshot mode, waits until it is ready, pauses it and writes a snapshot. */
async function bootAndSnapshot(name: string, opts: { networkInterfaces?: object[]; prefix?: string[]; createChecks?: boolean } = {}) {
  const drive = ws.write(`${name}.img`, Buffer.alloc(64 * 1024));
  const uds = path.join(ws.dir, `${name}.vsock`);
  await echo(uds);
  const api = path.join(ws.dir, `${name}.api`);
  const spec = ws.write(`${name}.json`, snapshotProbeSpec({ disk: drive, entropy: true, vsock: { cid: 7, uds }, vsockPort: VSOCK_PORT, vcpus: 2, networkInterfaces: opts.networkInterfaces }));
  const run = started(startFcRun([spec, '--api-sock', api], { prefix: opts.prefix }));
  await waitForApi(api);
  await run.waitForReady();
  expect((await apiCall(api, 'PUT', '/snapshot/create', { snapshot_path: 'x', mem_file_path: 'y' })).body).toMatch(/must be paused/);
  expect((await apiCall(api, 'PATCH', '/vm', { state: 'Paused' })).status).toBe(204);
  const snap = path.join(ws.dir, `${name}.snap`);
  const mem = path.join(ws.dir, `${name}.mem`);
  if (opts.createChecks) {
    // A snapshot_path that cannot be written: refused, and the memory file it came with not written either.
    const blocked = path.join(ws.dir, `${name}.blocked`);
    fs.mkdirSync(blocked);
    const before = fs.readdirSync(ws.dir).sort();
    const refused = await apiCall(api, 'PUT', '/snapshot/create', { snapshot_type: 'Full', snapshot_path: blocked, mem_file_path: mem });
    expect(refused.status).toBe(400);
    expect(refused.body).toMatch(/exists and is not a regular file/);
    expect(fs.readdirSync(ws.dir).sort()).toEqual(before);
    // Two at once: both are written, one after the other.
    const two = await Promise.all(['x', 'y'].map((t) => apiCall(api, 'PUT', '/snapshot/create', { snapshot_type: 'Full', snapshot_path: `${snap}.${t}`, mem_file_path: `${mem}.${t}` })));
    expect(two).toEqual([{ status: 204, body: '' }, { status: 204, body: '' }]);
    // Over an existing pair: the old memory file is kept (a hard link) until both new files are in place.
    const again = await apiCall(api, 'PUT', '/snapshot/create', { snapshot_type: 'Full', snapshot_path: `${snap}.x`, mem_file_path: `${mem}.x` });
    expect(again).toEqual({ status: 204, body: '' });
    expect(fs.readdirSync(ws.dir).filter((f) => f.startsWith('.fcrun'))).toEqual([]);
  }
  const created = await apiCall(api, 'PUT', '/snapshot/create', { snapshot_type: 'Full', snapshot_path: snap, mem_file_path: mem });
  expect(created).toEqual({ status: 204, body: '' });
  run.child.kill('SIGKILL');
  await run.exited;
  return { drive, snap, mem, spec, bootOutput: run.output() };
}

/** Restored output: the checks after the wait, as parseSnapshotOutput reads them. */
function expectRestoredChecks(output: string, opts: { netArp?: boolean } = {}) {
  const out = parseSnapshotOutput(output);
  expect(out.notOk).toEqual([]);
  expect(out.rounds).toHaveLength(1);
  const [round] = out.rounds;
  expect(round.ok).toEqual(expectedSnapshotChecks({ blk: true, rng: true, vsockConnect: true, netArp: opts.netArp }));
  expect(round.vsockReset).toBe('seen');
  expect(round.restoredFailed).toBe(0);
}

describeKvm('snapshots', () => {
  test('pause, snapshot, restore in a new process: the guest carries on where it stopped (memory, registers, time, disk, entropy, vsock)', async () => {
    const { drive, snap, mem, bootOutput } = await bootAndSnapshot('one');
    expect(bootOutput).not.toContain('# probe: ctrl-alt-del');
    // The memory file is sparse: 64 MiB of guest memory, a few MiB written.
    const st = fs.statSync(mem);
    expect(st.size).toBe(64 * 1024 * 1024);
    expect(st.blocks * 512).toBeLessThan(24 * 1024 * 1024);
    const memBefore = fs.readFileSync(mem);

    // --describe-snapshot: what the file holds.
    const described = spawnSync(process.execPath, [path.join(__dirname, '..', '..', 'bin', 'fc-run'), '--describe-snapshot', snap], { encoding: 'utf8' });
    expect(described.status).toBe(0);
    expect(described.stdout).toMatch(/vCPUs: +2/);

    const uds = path.join(ws.dir, 'one-restored.vsock');
    const l = await echo(uds);
    const api = path.join(ws.dir, 'one-restored.api');
    const run = started(startFcRun(['restore', snap, '--mem', mem, '--resume', '--api-sock', api, '--vsock-uds', uds]));
    await waitForApi(api, 120_000, { started: true });
    expect(JSON.parse((await apiCall(api, 'GET', '/')).body).state).toBe('Running');
    expect(await sendCtrlAltDel(api)).toBe(204);
    const code = await run.exited;
    expectRestoredChecks(run.output());
    expect(run.output()).toContain('\n# probe restored: 0 failed\n');
    expect(code).toBe(0);
    expect(l.received).toEqual(['probe snapshot round 1\n']);
    expect(sectorTag(drive, 127)).toBe(SECTOR_TAG_BEFORE);
    expect(sectorTag(drive, 126)).toBe(SECTOR_TAG_AFTER);
    // Copy on write: the restored guest wrote memory, the memory file is as it was.
    expect(fs.readFileSync(mem).equals(memBefore)).toBe(true);
  }, 600_000);

  test('two clones of one snapshot at once, each with its own disk copy, vsock path (and TAP): both pass; a paused restore waits for PATCH /vm', async () => {
    // The TAPs live in a namespace of the test's own (the guest sends nothing on them here).
    let netns: { name: string; remove: () => void } | undefined;
    const taps = ['fcsa', 'fcsb'].map((t) => `${t}${process.pid % 100000}`);
    if (canTap) {
      const name = `fcrun-snap-${process.pid}`;
      spawnSync('ip', ['netns', 'del', name]);
      execFileSync('ip', ['netns', 'add', name]);
      netns = { name, remove: () => void spawnSync('ip', ['netns', 'del', name]) };
      for (const t of [...taps, `fcso${process.pid % 100000}`]) {
        execFileSync('ip', ['netns', 'exec', name, 'ip', 'tuntap', 'add', 'dev', t, 'mode', 'tap']);
        execFileSync('ip', ['netns', 'exec', name, 'ip', 'link', 'set', t, 'up']);
      }
    }
    try {
      const prefix = netns ? ['ip', 'netns', 'exec', netns.name] : undefined;
      const nics = netns ? [{ iface_id: 'eth0', host_dev_name: `fcso${process.pid % 100000}`, guest_mac: '06:00:ac:10:00:02' }] : undefined;
      const { drive, snap, mem } = await bootAndSnapshot('base', { networkInterfaces: nics, prefix });
      const clones = await Promise.all(
        ['a', 'b'].map(async (c, i) => {
          const disk = ws.write(`clone-${c}.img`, fs.readFileSync(drive));
          const uds = path.join(ws.dir, `clone-${c}.vsock`);
          const l = await echo(uds);
          const api = path.join(ws.dir, `clone-${c}.api`);
          const args = ['restore', snap, '--mem', mem, '--api-sock', api, '--vsock-uds', uds, '--drive', `snapdisk=${disk}`];
          if (netns) args.push('--tap', `eth0=${taps[i]}`);
          // Clone a starts paused and is resumed through the API; clone b starts running.
          if (c === 'b') args.push('--resume');
          const run = started(startFcRun(args, { prefix }));
          await waitForApi(api, 120_000, { started: true });
          return { c, disk, api, run, l };
        }),
      );
      const a = clones[0];
      expect(JSON.parse((await apiCall(a.api, 'GET', '/')).body).state).toBe('Paused');
      expect((await apiCall(a.api, 'PATCH', '/vm', { state: 'Resumed' })).status).toBe(204);
      for (const k of clones) expect(await sendCtrlAltDel(k.api)).toBe(204);
      for (const k of clones) {
        const code = await k.run.exited;
        expectRestoredChecks(k.run.output());
        expect(code).toBe(0);
        expect(k.l.received).toEqual(['probe snapshot round 1\n']);
        expect(sectorTag(k.disk, 126)).toBe(SECTOR_TAG_AFTER);
      }
      // The original disk was not written by either clone.
      expect(sectorTag(drive, 126)).toBe('\0'.repeat(28));
    } finally {
      netns?.remove();
    }
  }, 900_000);

  // Both ways of finding changed pages: KVM's dirty log (where its self-test passes, as here) and
  // page digests (forced with FC_RUN_DIRTY_PAGES=compare; what a host whose log fails gets).
  test.each([
    ['log', "KVM's dirty log and the VMM's own writes", "KVM's dirty log and the VMM's own writes"],
    ['compare', 'compared with the last snapshot', 'compared with the restored memory file'],
  ])('Diff snapshots (track_dirty_pages, %s): Full, run on, Diff of what changed, merge, restore: the guest carries on; a Diff of a restored VM too', async (how, firstMethod, restoredMethod) => {
    const logWorks = (() => {
      const kvm = new Kvm();
      try {
        return dirtyLogProblem(kvm) === undefined;
      } finally {
        kvm.close();
      }
    })();
    if (how === 'log' && !logWorks) {
      console.warn("SKIPPED: KVM's dirty log fails its self-test on this host: fc-run compares pages instead (the other case)");
      return;
    }
    if (how === 'compare') process.env.FC_RUN_DIRTY_PAGES = 'compare';
    else delete process.env.FC_RUN_DIRTY_PAGES;
    try {
      await diffRounds(how, firstMethod, restoredMethod);
    } finally {
      delete process.env.FC_RUN_DIRTY_PAGES;
    }
  }, 900_000);

  async function diffRounds(how: string, firstMethod: string, restoredMethod: string) {
    const file = (n: string) => path.join(ws.dir, `${how}-${n}`);
    const drive = ws.write(`${how}-diff.img`, Buffer.alloc(64 * 1024));
    const uds = file('diff.vsock');
    await echo(uds);
    const api = file('diff.api');
    const spec = ws.write(`${how}-diff.json`, snapshotProbeSpec({ disk: drive, vsock: { cid: 7, uds }, vsockPort: VSOCK_PORT, rounds: 3, mib: 2, trackDirtyPages: true, memMib: 64 }));
    const logFile = file('diff.log');
    const run = started(startFcRun([spec, '--api-sock', api, '--log-path', logFile, '--level', 'Info']));
    await waitForApi(api);
    const snapshot = async (type: 'Full' | 'Diff', snap: string, mem: string) => {
      expect((await apiCall(api, 'PATCH', '/vm', { state: 'Paused' })).status).toBe(204);
      expect(await apiCall(api, 'PUT', '/snapshot/create', { snapshot_type: type, snapshot_path: file(snap), mem_file_path: file(mem) })).toEqual({ status: 204, body: '' });
    };
    const allocated = (f: string) => fs.statSync(file(f)).blocks * 512;
    // Round 1 ready: a Full snapshot; the guest goes on (round 1's checks, round 2's preparation: half the pattern rewritten).
    await run.waitForReady(1);
    await snapshot('Full', 'full.snap', 'full.mem');
    expect((await apiCall(api, 'PATCH', '/vm', { state: 'Resumed' })).status).toBe(204);
    expect(await sendCtrlAltDel(api)).toBe(204);
    await run.waitForReady(2);
    await snapshot('Diff', 'diff1.snap', 'diff1.mem');
    run.child.kill('SIGKILL');
    await run.exited;
    // The Diff holds what changed: the rewritten half of the 2 MiB pattern and a little more, far less than the Full.
    expect(fs.statSync(file('diff1.mem')).size).toBeGreaterThan(64 * 1024 * 1024); // memory, then the page bitmap and footer
    expect(allocated('diff1.mem')).toBeGreaterThanOrEqual(1024 * 1024);
    // "A little more": the guest's stack, page tables and counters, a few dozen pages whose number
    // depends on the host's KVM (a nested KVM's dirty log reports a few more), not half a Full.
    expect(allocated('diff1.mem')).toBeLessThan(1024 * 1024 + 256 * 1024);
    expect(allocated('diff1.mem')).toBeLessThan(allocated('full.mem'));
    const log1 = fs.readFileSync(logFile, 'utf8');
    expect(log1).toContain(how === 'log' ? "track_dirty_pages: KVM's dirty log (its self-test passed)" : 'track_dirty_pages: changed pages are found by comparing page digests');
    expect(log1).toMatch(/Diff snapshot written: .*diff1\.snap /);
    expect(log1).toContain(`changed page(s), ${firstMethod}`);
    const described = spawnSync(process.execPath, [path.join(__dirname, '..', '..', 'bin', 'fc-run'), '--describe-snapshot', file('diff1.snap')], { encoding: 'utf8' });
    expect(described.stdout).toMatch(/type: +Diff/);

    // Merge and restore the Diff: round 2's checks pass, then round 3 is prepared and waits.
    const merged = spawnSync(process.execPath, [path.join(__dirname, '..', '..', 'bin', 'fc-run'), 'snapshot', 'merge', file('full.mem'), file('diff1.mem'), '-o', file('merged1.mem')], { encoding: 'utf8' });
    expect(merged.status).toBe(0);
    // The Diff's own memory file is not a memory image: restore refuses it and says to merge.
    const unmerged = spawnSync(process.execPath, [path.join(__dirname, '..', '..', 'bin', 'fc-run'), 'restore', file('diff1.snap'), '--mem', file('diff1.mem'), '--resume'], { encoding: 'utf8' });
    expect(unmerged.status).toBe(2);
    expect(unmerged.stderr).toMatch(/is a Diff snapshot's: merge it onto its base first/);
    const api2 = file('diff2.api');
    const log2 = file('diff2.log');
    const uds2 = file('diff2.vsock');
    await echo(uds2);
    const r2 = started(startFcRun(['restore', file('diff1.snap'), '--mem', file('merged1.mem'), '--resume', '--api-sock', api2, '--vsock-uds', uds2, '--log-path', log2, '--level', 'Info']));
    await waitForApi(api2, 120_000, { started: true });
    expect(await sendCtrlAltDel(api2)).toBe(204);
    await r2.waitForOutput(/# probe restored: 0 failed\n[\s\S]*# probe snapshot-ready\n/);
    // A Diff of the restored VM: compared with the memory file it was restored from.
    expect((await apiCall(api2, 'PATCH', '/vm', { state: 'Paused' })).status).toBe(204);
    expect(await apiCall(api2, 'PUT', '/snapshot/create', { snapshot_type: 'Diff', snapshot_path: file('diff2.snap'), mem_file_path: file('diff2.mem') })).toEqual({ status: 204, body: '' });
    r2.child.kill('SIGKILL');
    await r2.exited;
    expect(fs.readFileSync(log2, 'utf8')).toContain(`changed page(s), ${restoredMethod}`);
    expect(allocated('diff2.mem')).toBeLessThan(1024 * 1024 + 256 * 1024); // as diff1: half the pattern and a little more
    expect(allocated('diff2.mem')).toBeLessThan(allocated('full.mem'));

    // Both Diffs over the Full, and the last state: round 3's checks pass and the guest resets.
    expect(spawnSync(process.execPath, [path.join(__dirname, '..', '..', 'bin', 'fc-run'), 'snapshot', 'merge', file('full.mem'), file('diff1.mem'), file('diff2.mem'), '-o', file('merged2.mem')]).status).toBe(0);
    const api3 = file('diff3.api');
    const uds3 = file('diff3.vsock');
    await echo(uds3);
    const r3 = started(startFcRun(['restore', file('diff2.snap'), '--mem', file('merged2.mem'), '--resume', '--api-sock', api3, '--vsock-uds', uds3]));
    await waitForApi(api3, 120_000, { started: true });
    expect(await sendCtrlAltDel(api3)).toBe(204);
    const code = await r3.exited;
    const out = parseSnapshotOutput(r3.output());
    expect(out.notOk).toEqual([]);
    expect(r3.output()).toContain('\n# probe restored: 0 failed\n');
    expect(code).toBe(0);
  }

  test('a snapshot restored with a memory file of another size, a corrupted or truncated state file, another VM\'s spec or an unknown override is refused with exit 2 before the guest runs; a failed or concurrent create leaves nothing wrong', async () => {
    const { snap, mem, spec } = await bootAndSnapshot('bad', { createChecks: true });
    const short = ws.write('short.mem', Buffer.alloc(4096));
    const r1 = spawnSync(process.execPath, [path.join(__dirname, '..', '..', 'bin', 'fc-run'), 'restore', snap, '--mem', short, '--resume'], { encoding: 'utf8' });
    expect(r1.status).toBe(2);
    expect(r1.stderr).toMatch(/does not fit the snapshot/);
    const bytes = fs.readFileSync(snap);
    bytes[bytes.length >> 1] ^= 0x40;
    const flipped = ws.write('flipped.snap', bytes);
    const r2 = spawnSync(process.execPath, [path.join(__dirname, '..', '..', 'bin', 'fc-run'), 'restore', flipped, '--mem', mem, '--resume'], { encoding: 'utf8' });
    expect(r2.status).toBe(2);
    expect(r2.stderr).toMatch(/checksum/);
    const fcRun = (args: string[]) => spawnSync(process.execPath, [path.join(__dirname, '..', '..', 'bin', 'fc-run'), ...args], { encoding: 'utf8' });
    // Truncated: the length in its header says so.
    const truncated = ws.write('truncated.snap', fs.readFileSync(snap).subarray(0, 1000));
    const r3 = fcRun(['restore', truncated, '--mem', mem, '--resume']);
    expect(r3.status).toBe(2);
    expect(r3.stderr).toMatch(/truncated|too short/);
    // --spec: another VM's spec (here one vCPU fewer) is refused before anything runs.
    const specObj = JSON.parse(fs.readFileSync(spec, 'utf8'));
    const other = ws.write('bad-other.json', { ...specObj, 'machine-config': { ...specObj['machine-config'], vcpu_count: 1 } });
    const r4 = fcRun(['restore', snap, '--mem', mem, '--resume', '--spec', other]);
    expect(r4.status).toBe(2);
    expect(r4.stderr).toMatch(/does not describe the VM of/);
    // An override for a drive the snapshot does not have is refused.
    const r6 = fcRun(['restore', snap, '--mem', mem, '--resume', '--drive', 'nosuch=/tmp/x.img']);
    expect(r6.status).toBe(2);
    expect(r6.stderr).toMatch(/the snapshot has no drive "nosuch" \(it has: snapdisk\)/);
  }, 600_000);
});
