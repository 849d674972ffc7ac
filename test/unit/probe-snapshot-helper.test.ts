import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseSnapshotOutput, snapshotBootArgs, snapshotProbeSpec, startEchoListener } from '../helpers/probe-snapshot';
import * as net from 'node:net';

/** The test helper for the probe's snapshot mode, on text shaped like the probe's output. */
describe('probe snapshot-mode helper', () => {
  test('the command line carries each option once, vsock limited to bringing the device up unless asked', () => {
    expect(snapshotBootArgs()).toBe('console=ttyS0 reboot=k panic=1 probe.snapshot=1 probe.vsock=init');
    expect(snapshotBootArgs({ sector: 10, vsockPort: 7000, rounds: 2, loop: true, mib: 8, ip: '10.0.0.2', peer: '10.0.0.1', bootVsockExchange: true, extra: ['probe.marker=1'] })).toBe(
      'console=ttyS0 reboot=k panic=1 probe.snapshot=1 probe.snapshot_sector=10 probe.snapshot_vsock_port=7000 probe.snapshot_rounds=2 probe.snapshot_loop=1 probe.snapshot_mib=8 probe.ip=10.0.0.2 probe.peer=10.0.0.1 probe.marker=1',
    );
    expect(snapshotProbeSpec({ disk: '/d.img', entropy: true, vsock: { cid: 3, uds: '/v.sock' } })).toMatchObject({
      drives: [{ path_on_host: '/d.img', is_read_only: false }],
      entropy: {},
      vsock: { guest_cid: 3, uds_path: '/v.sock' },
    });
  });

  const booted = [
    '# fc-run probe guest',
    'ok - boot-info',
    'ok - rng',
    '# probe done: 0 failed',
    '# snapshot-round: 1',
    '# snapshot-memory: 0x800000 0x400000 seed 0x1 all pages',
    'ok - snapshot-prepare-memory',
    '# probe snapshot-ready',
  ];
  const after = ['# probe: ctrl-alt-del', 'ok - snapshot-memory', 'not ok - snapshot-counter: the counter differs', '# snapshot-vsock-reset seen', '# probe restored: 1 failed'];

  test('a whole run: boot checks, preparation, the checks after the wait', () => {
    const out = parseSnapshotOutput([...booted, ...after, ''].join('\r\n'));
    expect(out.bootOk).toEqual(['boot-info', 'rng']);
    expect(out.ready).toBe(1);
    expect(out.notOk).toEqual(['not ok - snapshot-counter: the counter differs']);
    expect(out.rounds).toEqual([
      {
        prepareOk: ['snapshot-prepare-memory'],
        ok: ['snapshot-memory'],
        notOk: ['not ok - snapshot-counter: the counter differs'],
        facts: { 'snapshot-round': ['1'], 'snapshot-memory': ['0x800000 0x400000 seed 0x1 all pages'] },
        vsockReset: 'seen',
        restoredFailed: 1,
      },
    ]);
  });

  test("a restored VM's output (it starts after the wait) is one round of checks", () => {
    const out = parseSnapshotOutput([...after, '# snapshot-round: 2', '# probe snapshot-ready', ''].join('\n'));
    expect(out.bootOk).toEqual([]);
    expect(out.ready).toBe(1);
    expect(out.rounds.map((r) => [r.ok, r.restoredFailed, r.facts['snapshot-round']])).toEqual([
      [['snapshot-memory'], 1, undefined],
      [[], undefined, ['2']],
    ]);
  });

  test('the echo listener echoes and records what each connection sent', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fc-run-echo-'));
    const echo = await startEchoListener(path.join(dir, 'v.sock'), 7000);
    try {
      const got = await new Promise<string>((resolve, reject) => {
        const c = net.connect(path.join(dir, 'v.sock_7000'), () => c.write('hello\n'));
        c.on('data', (d) => {
          resolve(d.toString());
          c.destroy();
        });
        c.on('error', reject);
      });
      expect(got).toBe('hello\n');
      expect(echo.received).toEqual(['hello\n']);
    } finally {
      await echo.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
