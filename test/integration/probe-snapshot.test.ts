import * as fs from 'node:fs';
import * as path from 'node:path';
import { createSealedNetns } from '../helpers/netns';
import { Workspace } from '../helpers/specs';
import {
  EchoListener,
  expectedPrepareChecks,
  expectedSnapshotChecks,
  FcRunProcess,
  parseSnapshotOutput,
  PROBE,
  PROBE_LINUX64,
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
 * The probe guest's snapshot mode without a snapshot: it prepares (memory pattern, counter,
 * kvm-clock, a block sector), says it is ready, waits halted for Ctrl-Alt-Del (sent through the
 * API socket), then checks that everything is as it left it and that every device still works
 * (new block write, entropy, a new vsock connection to a host echo listener). What a snapshot test
 * does in between (pause, snapshot, restore elsewhere) must leave the same checks passing.
 */
const hasKvm = fs.existsSync('/dev/kvm');
const describeKvm = hasKvm ? describe : describe.skip;
if (!hasKvm) console.warn('SKIPPED: the probe snapshot-mode tests need /dev/kvm, which this host does not have');
const canTap = hasKvm && fs.existsSync('/dev/net/tun') && process.getuid?.() === 0;
const testTap = canTap ? test : test.skip;
if (hasKvm && !canTap) console.warn('SKIPPED: the probe snapshot-mode test with a TAP needs /dev/net/tun and root');

const BOOT_CHECKS = ['boot-info', 'cmdline', 'e820', 'memory', 'cpuid-hypervisor', 'kvm-clock', 'serial-irq', 'mptable', 'smp'];
const VSOCK_PORT = 7000;

let ws: Workspace;
const runs: FcRunProcess[] = [];
const listeners: EchoListener[] = [];
beforeAll(() => {
  if (hasKvm && !fs.existsSync(PROBE)) throw new Error(`${PROBE} is missing: run \`npm run build:probe\``);
  ws = new Workspace();
});
afterEach(async () => {
  // A failed expectation must not leave a VM running (it would keep the test run alive).
  for (const r of runs.splice(0)) if (r.child.exitCode === null && r.child.signalCode === null) r.child.kill('SIGKILL');
  for (const l of listeners.splice(0)) await l.close();
});
afterAll(() => ws?.remove());

/** A 64 KiB drive file (128 sectors). */
function disk(name: string): string {
  return ws.write(name, Buffer.alloc(64 * 1024));
}

/** Boots the spec with an API socket; resolves once the socket answers. */
async function boot(name: string, spec: object, prefix?: string[]): Promise<{ run: FcRunProcess; api: string }> {
  const api = path.join(ws.dir, `${name}.api.sock`);
  const run = startFcRun([ws.write(`${name}.json`, spec), '--api-sock', api], { prefix });
  runs.push(run);
  await waitForApi(api);
  return { run, api };
}

describeKvm('probe.snapshot=1 without a snapshot (wait, Ctrl-Alt-Del, checks)', () => {
  test('block, entropy and vsock: every snapshot- check passes and the guest resets (exit 0)', async () => {
    const drive = disk('one.img');
    const uds = path.join(ws.dir, 'one.vsock');
    const echo = await startEchoListener(uds, VSOCK_PORT);
    listeners.push(echo);
    const { run, api } = await boot('one', snapshotProbeSpec({ disk: drive, entropy: true, vsock: { cid: 7, uds }, vsockPort: VSOCK_PORT, vcpus: 2 }));

    await run.waitForReady();
    // Prepared and flushed before the line: the last sector (127) holds the guest's tag.
    expect(sectorTag(drive, 127)).toBe(SECTOR_TAG_BEFORE);
    expect(sectorTag(drive, 126)).toBe('\0'.repeat(28));
    // Waiting, halted: nothing more arrives until the key.
    await new Promise((r) => setTimeout(r, 500));
    expect(run.output()).not.toContain('# probe: ctrl-alt-del');
    expect(await sendCtrlAltDel(api)).toBe(204);
    const code = await run.exited;

    const out = parseSnapshotOutput(run.output());
    expect(out.notOk).toEqual([]);
    // The usual checks ran first (devices in the order of the command line), vsock only brought up.
    expect([...out.bootOk].sort()).toEqual([...BOOT_CHECKS, 'blk-id', 'blk-read', 'blk-flush', 'blk-write', 'blk-bounds', 'rng', 'vsock-init'].sort());
    expect(out.ready).toBe(1);
    expect(out.rounds).toHaveLength(1);
    const [round] = out.rounds;
    expect(round.prepareOk).toEqual(expectedPrepareChecks({ blk: true }));
    expect(round.ok).toEqual(expectedSnapshotChecks({ blk: true, rng: true, vsockConnect: true }));
    expect(round.vsockReset).toBe('none'); // no snapshot, no transport reset
    expect(round.restoredFailed).toBe(0);
    expect(round.facts['snapshot-blk-sectors']).toEqual(['127 126']);
    expect(round.facts['snapshot-memory']?.[0]).toMatch(/^0x800000 0x400000 seed 0x[0-9a-f]+ all pages$/);
    expect(round.facts['snapshot-vsock-cid']).toEqual(['7']);
    expect(round.facts['snapshot-vsock-reply']).toEqual(['probe snapshot round 1\\n']);
    expect(Number(round.facts['snapshot-waited-ms']?.[0])).toBeGreaterThanOrEqual(400);
    expect(run.output()).toContain('\n# probe restored: 0 failed\n');
    // The host side: the echo listener got the guest's line.
    expect(echo.received).toEqual(['probe snapshot round 1\n']);
    // The write after the wait reached the file; the sector before it is intact.
    expect(sectorTag(drive, 126)).toBe(SECTOR_TAG_AFTER);
    expect(sectorTag(drive, 127)).toBe(SECTOR_TAG_BEFORE);
    expect(run.stderr()).toMatch(/the guest reset the machine/);
    expect(code).toBe(0);
  }, 300_000);

  test('probe.snapshot_rounds=2 (Linux 64-bit entry, a given sector): two waits, the second rewrites half the pattern, then reset', async () => {
    const drive = disk('two.img');
    const uds = path.join(ws.dir, 'two.vsock');
    const echo = await startEchoListener(uds, VSOCK_PORT);
    listeners.push(echo);
    const { run, api } = await boot(
      'two',
      snapshotProbeSpec({ kernel: PROBE_LINUX64, disk: drive, vsock: { cid: 9, uds }, vsockPort: VSOCK_PORT, rounds: 2, sector: 10, mib: 2 }),
    );
    await run.waitForReady(1);
    expect(await sendCtrlAltDel(api)).toBe(204);
    await run.waitForReady(2);
    expect(run.output()).toContain('\n# probe restored: 0 failed\n');
    expect(await sendCtrlAltDel(api)).toBe(204);
    const code = await run.exited;

    const out = parseSnapshotOutput(run.output());
    expect(out.notOk).toEqual([]);
    expect(out.ready).toBe(2);
    expect(out.rounds.map((r) => r.facts['snapshot-round'])).toEqual([['1'], ['2']]);
    for (const r of out.rounds) {
      expect(r.prepareOk).toEqual(expectedPrepareChecks({ blk: true }));
      expect(r.ok).toEqual(expectedSnapshotChecks({ blk: true, vsockConnect: true }));
      expect(r.restoredFailed).toBe(0);
      expect(r.vsockReset).toBe('none');
      expect(r.facts['snapshot-blk-sectors']).toEqual(['10 9']);
    }
    expect(out.rounds[0].facts['snapshot-memory']?.[0]).toMatch(/^0x800000 0x200000 seed 0x[0-9a-f]+ all pages$/);
    expect(out.rounds[1].facts['snapshot-memory']?.[0]).toMatch(/^0x800000 0x200000 seed 0x[0-9a-f]+ odd pages$/);
    // The counter counts pages written: 512 in round 1, the 256 odd ones in round 2.
    expect(out.rounds[0].facts['snapshot-counter']).toEqual(['512 register 512 expected 512']);
    expect(out.rounds[1].facts['snapshot-counter']).toEqual(['768 register 768 expected 768']);
    expect(out.rounds[1].facts['snapshot-vsock-local-port']).toEqual(['3002']);
    expect(echo.received).toEqual(['probe snapshot round 1\n', 'probe snapshot round 2\n']);
    expect(sectorTag(drive, 10)).toBe(SECTOR_TAG_BEFORE);
    expect(sectorTag(drive, 9)).toBe(SECTOR_TAG_AFTER);
    expect(code).toBe(0);
  }, 300_000);

  test('probe.snapshot_loop=1: ready again after the checks, until the VM is stopped', async () => {
    const { run, api } = await boot('loop', snapshotProbeSpec({ loop: true, memMib: 32 }));
    await run.waitForReady(1);
    expect(await sendCtrlAltDel(api)).toBe(204);
    await run.waitForReady(2);
    run.child.kill('SIGTERM');
    await run.exited;
    const out = parseSnapshotOutput(run.output());
    expect(out.notOk).toEqual([]);
    expect(out.rounds).toHaveLength(2);
    expect(out.rounds[0].ok).toEqual(expectedSnapshotChecks({}));
    expect(out.rounds[0].restoredFailed).toBe(0);
    expect(out.rounds[1].restoredFailed).toBeUndefined(); // still waiting when stopped
    expect(run.stderr()).not.toMatch(/the guest reset the machine/);
  }, 300_000);

  test('the checks fail when state changes during the wait: a sector overwritten on the host, nobody listening on the vsock port', async () => {
    const drive = disk('tamper.img');
    const uds = path.join(ws.dir, 'tamper.vsock');
    const { run, api } = await boot('tamper', snapshotProbeSpec({ disk: drive, vsock: { cid: 5, uds }, vsockPort: VSOCK_PORT }));
    await run.waitForReady();
    expect(sectorTag(drive, 127)).toBe(SECTOR_TAG_BEFORE);
    const fd = fs.openSync(drive, 'r+');
    fs.writeSync(fd, Buffer.alloc(512, 0x55), 0, 512, 127 * 512);
    fs.closeSync(fd);
    expect(await sendCtrlAltDel(api)).toBe(204);
    const code = await run.exited;
    const [round] = parseSnapshotOutput(run.output()).rounds;
    expect(round.notOk).toEqual([
      'not ok - snapshot-blk-persisted: the sector written before the wait does not hold what was written',
      'not ok - snapshot-vsock-connect: the host refused the connection (RST)',
    ]);
    expect(round.ok).toEqual(['snapshot-memory', 'snapshot-counter', 'snapshot-kvm-clock', 'snapshot-blk-write']);
    expect(round.restoredFailed).toBe(2);
    expect(code).toBe(0);
  }, 300_000);

  testTap('a NIC on a TAP: the guest ARPs the host end again after the wait', async () => {
    const netns = createSealedNetns('psnap', { addresses: ['10.201.0.1/24'] });
    try {
      const { run, api } = await boot(
        'net',
        snapshotProbeSpec({ ip: '10.201.0.2', peer: '10.201.0.1', networkInterfaces: [{ iface_id: 'eth0', host_dev_name: netns.tap, guest_mac: '06:00:0a:c9:00:02' }] }),
        ['ip', 'netns', 'exec', netns.ns],
      );
      await run.waitForReady();
      expect(await sendCtrlAltDel(api)).toBe(204);
      const code = await run.exited;
      const out = parseSnapshotOutput(run.output());
      expect(out.notOk).toEqual([]);
      expect(out.bootOk).toEqual(expect.arrayContaining(['net-tx', 'net-arp']));
      expect(out.rounds[0].ok).toEqual(expectedSnapshotChecks({ netArp: true }));
      expect(out.rounds[0].facts['snapshot-net-peer-mac']).toEqual([netns.tapSysfs('address')]);
      expect(code).toBe(0);
    } finally {
      netns.remove();
    }
  }, 300_000);
});
