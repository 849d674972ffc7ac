import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { assignIds, idForSpec } from '../../src/fleet/ids';
import { isSameProcess, processStartTime } from '../../src/fleet/proc';
import { Desired, Known, reconcile } from '../../src/fleet/reconcile';
import { readStates, vmFiles, writeState } from '../../src/fleet/rundir';
import { DEFAULT_SETTINGS, restartDelay } from '../../src/fleet/settings';
import { FleetEvent, Supervisor } from '../../src/fleet/supervisor';
import { LogFollower } from '../../src/fleet/serial-log';
import { errorsOf, load, minimalSpec, Workspace } from '../helpers/specs';
import { BIN, FAKE_FC_RUN, ROOT, waitFor } from '../helpers/cli';
import { planSpec } from '../../src/boot';

const run = promisify(execFile);
const FAKE = FAKE_FC_RUN;

describe('VM ids from spec paths', () => {
  test('paths map to --id-safe ids, deterministically', () => {
    expect(idForSpec('web.json')).toBe('web');
    expect(idForSpec('eu/web_1.json')).toBe('eu-web-1');
    expect(idForSpec('a.b c.json')).toBe('a-b-c');
    const long = `${'deep/'.repeat(20)}vm.json`;
    const id = idForSpec(long);
    expect(id).toMatch(/^[A-Za-z0-9-]{1,64}$/);
    expect(idForSpec(long)).toBe(id);
    expect(idForSpec(`${'deep/'.repeat(20)}vm2.json`)).not.toBe(id);
  });

  test('two specs that would share an id are both refused, the rest keep theirs', () => {
    const { ids, conflicts } = assignIds(['web/a.json', 'web-a.json', 'db.json']);
    expect([...ids]).toEqual([['db', 'db.json']]);
    expect([...conflicts]).toEqual([['web-a', ['web-a.json', 'web/a.json']]]);
  });
});

test('the "fc-run" section is fc-run\'s own: validated, but no part of the plan (fc-run run ignores it)', () => {
  const ws = new Workspace();
  try {
    const plain = planSpec(load(ws, minimalSpec()));
    const withSection = planSpec(load(ws, { ...minimalSpec(), 'fc-run': { restart: 'always', restart_delay_ms: 100, stop_grace_ms: 0, serial_log_max_bytes: 4096 } }));
    expect(withSection.hash).toBe(plain.hash);
    expect(errorsOf(ws, { ...minimalSpec(), 'fc-run': { restart: 'sometimes', stop_grace: 1 } })).toEqual(['enum @ /fc-run/restart', 'unknown-property @ /fc-run/stop_grace']);
  } finally {
    ws.remove();
  }
});

test('restart backoff: 1 s doubling to a 60 s cap by default, both settable', () => {
  expect([1, 2, 3, 4, 5, 6, 7, 8, 50].map((n) => restartDelay(n, DEFAULT_SETTINGS))).toEqual([1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000]);
  expect([1, 2, 3, 4].map((n) => restartDelay(n, { restartDelayMs: 100, restartDelayMaxMs: 250 }))).toEqual([100, 200, 250, 250]);
});

describe('reconcile', () => {
  const valid = (id: string, planHash = 'h1', restart: 'never' | 'on-failure' | 'always' = 'on-failure'): Desired => ({
    kind: 'valid',
    id,
    spec: `/d/${id}.json`,
    planHash,
    vcpus: 1,
    memMib: 128,
    settings: { ...DEFAULT_SETTINGS, restart },
  });
  const vm = (id: string, over: Partial<Known> = {}): Known => ({ id, spec: `/d/${id}.json`, dir: '/d', state: 'running', planHash: 'h1', vcpus: 1, memMib: 128, restarts: 0, consecutive: 0, ...over });
  const decide = (desired: Desired[], known: Known[], holds: [string, string][] = [], now = 1000) =>
    reconcile(new Map(desired.map((d) => [d.id, d])), new Map(known.map((k) => [k.id, k])), new Map(holds), now).map((a) => `${a.kind} ${a.id}${'why' in a ? ` ${a.why}` : ''}`);

  test('new specs start, unchanged VMs are left alone, changed ones stop (to start again), removed ones stop', () => {
    expect(decide([valid('a'), valid('b'), valid('c', 'h2')], [vm('b'), vm('c'), vm('d')])).toEqual(['start a new', 'stop c changed', 'stop d removed']);
  });

  test('an invalid spec is skipped and never stops its running VM', () => {
    const actions = reconcile(new Map([['a', { kind: 'invalid', id: 'a', spec: '/d/a.json', problem: 'bad' } as Desired]]), new Map([['a', vm('a')]]), new Map(), 0);
    expect(actions).toEqual([{ kind: 'skip', id: 'a', spec: '/d/a.json', problem: 'bad', running: true }]);
  });

  test('after a stop by the supervisor: a changed spec starts at once, a removed one is forgotten', () => {
    expect(decide([valid('a', 'h2'), valid('b')], [vm('a', { state: 'exited', stoppedBy: 'supervisor' }), vm('b', { state: 'exited', stoppedBy: 'supervisor' }), vm('c', { state: 'exited' })])).toEqual([
      'start a changed',
      'start b replaced',
      'forget c',
    ]);
  });

  test('restart policies and backoff', () => {
    const exited = (code: number | null, nextStartAt?: number) => ({ state: 'waiting' as const, lastExit: { code, reason: '', time: '' }, nextStartAt });
    expect(decide([valid('a', 'h1', 'never')], [vm('a', exited(1))])).toEqual([]);
    expect(decide([valid('a', 'h1', 'on-failure')], [vm('a', exited(0))])).toEqual([]);
    expect(decide([valid('a', 'h1', 'on-failure')], [vm('a', exited(1, 900))])).toEqual(['start a restart']);
    expect(decide([valid('a', 'h1', 'on-failure')], [vm('a', exited(null, 900))])).toEqual(['start a restart']);
    expect(decide([valid('a', 'h1', 'on-failure')], [vm('a', exited(1, 1500))])).toEqual([]);
    expect(decide([valid('a', 'h1', 'always')], [vm('a', exited(0, 1000))])).toEqual(['start a restart']);
  });

  test('a VM stopped with fc-run stop stays down until its spec changes', () => {
    expect(decide([valid('a')], [vm('a', { state: 'held', stoppedBy: 'user' })], [['a', 'h1']])).toEqual([]);
    expect(decide([valid('a')], [], [['a', 'h1']])).toEqual([]);
    expect(decide([valid('a', 'h2')], [vm('a', { state: 'held', stoppedBy: 'user' })], [['a', 'h1']])).toEqual(['start a changed']);
  });
});

test('a process is identified by pid and start time, so a reused pid is not taken for it', async () => {
  const start = processStartTime(process.pid);
  expect(start).toMatch(/^\d+$/);
  expect(isSameProcess(process.pid, start)).toBe(true);
  expect(isSameProcess(process.pid, String(Number(start) + 1))).toBe(false);
  const child = execFile(process.execPath, ['-e', 'setTimeout(() => {}, 60000)']);
  const childStart = await waitFor('the child', () => processStartTime(child.pid!));
  expect(isSameProcess(child.pid, childStart)).toBe(true);
  const gone = new Promise((r) => child.on('exit', r));
  child.kill('SIGKILL');
  await gone;
  expect(isSameProcess(child.pid, childStart)).toBe(false);
});

test('LogFollower reads on across a copy-and-truncate rotation', () => {
  const ws = new Workspace();
  try {
    const file = path.join(ws.dir, 's.log');
    fs.writeFileSync(file, 'one\n');
    const f = new LogFollower(file, `${file}.1`, 0);
    expect(f.poll().toString()).toBe('one\n');
    fs.appendFileSync(file, 'two\n');
    fs.copyFileSync(file, `${file}.1`);
    fs.truncateSync(file, 0);
    fs.appendFileSync(file, 'three\n');
    expect(f.poll().toString()).toBe('two\nthree\n');
  } finally {
    ws.remove();
  }
});

describe('the supervisor, with a stand-in for fc-run (no KVM needed)', () => {
  let ws: Workspace;
  let specs: string;
  let runDir: string;
  let events: FleetEvent[];
  let sup: Supervisor | undefined;
  const spec = (name: string, extra: Record<string, unknown> = {}, bootArgs = 'console=ttyS0') =>
    fs.writeFileSync(path.join(specs, name), JSON.stringify({ ...minimalSpec(), 'boot-source': { kernel_image_path: path.join(ws.dir, 'vmlinux'), boot_args: bootArgs }, ...extra }));
  const newSupervisor = () => {
    const mine = events;
    sup = new Supervisor({ dir: specs, runDir, checkIntervalMs: 60000, pollMs: 50, fcRunBin: FAKE, report: (e) => mine.push(e) });
    sup.start();
    return sup;
  };
  const states = () => new Map(readStates(runDir).map((s) => [s.id, s]));
  const fcRun = async (...args: string[]) => (await run(process.execPath, [BIN, ...args, '--run-dir', runDir], { env: { ...process.env, NO_COLOR: '1' } })).stdout;
  const grace = { 'fc-run': { stop_grace_ms: 2000 } };

  beforeAll(() => {
    if (!fs.existsSync(path.join(ROOT, 'dist', 'cli', 'main.js'))) throw new Error('dist/ is missing: run `npm run build` first');
  });
  beforeEach(() => {
    ws = new Workspace();
    specs = path.join(ws.dir, 'specs');
    runDir = path.join(ws.dir, 'run');
    fs.mkdirSync(path.join(specs, 'eu'), { recursive: true });
    events = [];
  });
  afterEach(async () => {
    sup?.close();
    sup = undefined;
    for (const s of readStates(runDir)) if (s.pid && isSameProcess(s.pid, s.pidStart)) process.kill(s.pid, 'SIGKILL');
    ws.remove();
  });

  test('converges, restarts exactly a changed spec, keeps a VM whose spec turned invalid, stops a removed one', async () => {
    spec('a.json', grace);
    spec('eu/b.json', grace);
    spec('c.json', grace);
    fs.writeFileSync(path.join(specs, 'broken.json'), '{ "boot-source": { } }');
    spec('eu-x.json');
    spec('eu/x.json');
    newSupervisor();
    const running = await waitFor('three VMs', () => {
      const s = states();
      return ['a', 'eu-b', 'c'].every((id) => s.get(id)?.state === 'running' && fs.existsSync(vmFiles(runDir, id).sock)) && s;
    });
    expect([...running.keys()].sort()).toEqual(['a', 'c', 'eu-b']);
    const skipped = events.filter((e) => e.event === 'skipped').map((e) => e.message);
    expect(skipped.join('\n')).toMatch(/broken\.json: invalid spec/);
    expect(skipped.join('\n')).toMatch(/would all get the id "eu-x"/);

    const before = new Map([...running].map(([id, s]) => [id, s.pid]));
    spec('a.json', { ...grace, 'machine-config': { vcpu_count: 1, mem_size_mib: 64 } });
    fs.writeFileSync(path.join(specs, 'c.json'), '{ "boot-source": ');
    sup!.rescan();
    const after = await waitFor('a restarted', () => {
      const s = states().get('a');
      return s?.state === 'running' && s.pid !== before.get('a') && s;
    });
    expect(after.memMib).toBe(64);
    expect(states().get('eu-b')!.pid).toBe(before.get('eu-b'));
    expect(states().get('c')!.pid).toBe(before.get('c'));
    expect(isSameProcess(before.get('c'), running.get('c')!.pidStart)).toBe(true);
    // The stand-in exits on Ctrl-Alt-Del, so the old VM of "a" went the graceful way.
    await waitFor('the old "a" reported stopped', () => events.find((e) => e.event === 'stopped'));
    expect(events.filter((e) => e.event === 'stopped').map((e) => [e.id, e.how])).toEqual([['a', 'ctrl-alt-del']]);

    fs.rmSync(path.join(specs, 'eu', 'b.json'));
    sup!.rescan();
    await waitFor('eu-b forgotten', () => !fs.existsSync(vmFiles(runDir, 'eu-b').state));
    expect(isSameProcess(before.get('eu-b'), running.get('eu-b')!.pidStart)).toBe(false);
    expect(fs.readFileSync(vmFiles(runDir, 'eu-b').serial, 'utf8')).toMatch(/ctrl-alt-del/);
  });

  test('a VM that ignores Ctrl-Alt-Del gets SIGTERM after its grace period', async () => {
    spec('a.json', { 'fc-run': { stop_grace_ms: 200 } }, 'fake.ignore-cad');
    newSupervisor();
    await waitFor('a running', () => states().get('a')?.state === 'running' && fs.existsSync(vmFiles(runDir, 'a').sock));
    fs.rmSync(path.join(specs, 'a.json'));
    sup!.rescan();
    await waitFor('a stopped', () => events.find((e) => e.event === 'stopped' && e.id === 'a'));
    expect(events.find((e) => e.event === 'stopped')!.how).toBe('SIGTERM');
    expect(fs.readFileSync(vmFiles(runDir, 'a').serial, 'utf8')).not.toMatch(/ctrl-alt-del/);
  });

  test('a restarted supervisor adopts running VMs by pid and start time, and not a reused pid', async () => {
    spec('a.json', grace);
    spec('b.json', grace);
    newSupervisor();
    const first = await waitFor('two VMs', () => {
      const s = states();
      return s.get('a')?.state === 'running' && s.get('b')?.state === 'running' && s;
    });
    sup!.close();
    // "b" ends while no supervisor watches; then its pid is "reused" by this very test process.
    process.kill(first.get('b')!.pid!, 'SIGKILL');
    await waitFor('b gone', () => !isSameProcess(first.get('b')!.pid, first.get('b')!.pidStart));
    writeState(runDir, { ...first.get('b')!, pid: process.pid });
    events = [];
    newSupervisor();
    expect(events.filter((e) => e.event === 'adopted').map((e) => e.id)).toEqual(['a']);
    // "b" died unwatched (no exit record: status unknown), so its restart policy applies, after its backoff.
    expect(events.find((e) => e.event === 'exited' && e.id === 'b')!.reason).toMatch(/without an exit record/);
    await waitFor('b started again', () => events.find((e) => e.event === 'started' && e.id === 'b'));
    expect(states().get('a')!.pid).toBe(first.get('a')!.pid);
    expect(states().get('b')!.pid).not.toBe(process.pid);
    // An adopted VM cannot be waited on: its end is noticed by polling, and its exit record read.
    process.kill(first.get('a')!.pid!, 'SIGTERM');
    const exit = await waitFor('a exit noticed', () => events.find((e) => e.event === 'exited' && e.id === 'a'));
    expect(exit.reason).toBe('SIGTERM');
  });

  test('a VM killed by its seccomp filter: the exit reason names the call, though the restart empties its log', async () => {
    spec('a.json', { 'fc-run': { restart_delay_ms: 100 } }, 'fake.sigsys');
    newSupervisor();
    const exit = await waitFor('a exited', () => events.find((e) => e.event === 'exited' && e.id === 'a'));
    // Started again (on-failure): its fc-run log is a new, empty file by then.
    await waitFor('a started again', () => events.filter((e) => e.event === 'started' && e.id === 'a').length === 2);
    expect(exit.reason).toMatch(/SIGSYS \(seccomp\).*syscall 110 \(getppid\) is not on the seccomp filter of thread 7 \(api: the main thread\)/);
    expect(states().get('a')!.lastExit!.reason).toBe(exit.reason);
    expect(JSON.parse(await fcRun('ps', '--json')).vms[0].last_exit.reason).toBe(exit.reason);
  });

  test('ps, logs and stop read the same run directory; a stopped VM stays stopped', async () => {
    spec('a.json', { 'fc-run': { stop_grace_ms: 2000, serial_log_max_bytes: 4096 } }, 'fake.serial=6000');
    spec('b.json', grace);
    newSupervisor();
    await waitFor('a rotated', () => fs.existsSync(vmFiles(runDir, 'a').serialOld) && fs.existsSync(vmFiles(runDir, 'b').sock) && fs.existsSync(vmFiles(runDir, 'a').sock));
    const ps = JSON.parse(await fcRun('ps', specs, '--json'));
    expect(ps.vms.map((v: { id: string; state: string; vcpus: number; mem_mib: number }) => [v.id, v.state, v.vcpus, v.mem_mib])).toEqual([
      ['a', 'running', 1, 128],
      ['b', 'running', 1, 128],
    ]);
    expect(ps.supervisor.alive).toBe(true);
    expect(await fcRun('ps')).toMatch(/^ID\s+PID\s+STATE\s+UPTIME\s+RESTARTS\s+VCPUS\s+MEM\s+PLAN\s+LAST EXIT\n/);
    const logs = await fcRun('logs', 'a');
    expect(logs).toMatch(/^fake guest a up\nx{6000}\n$/);
    expect(fs.statSync(vmFiles(runDir, 'a').serial).size).toBeLessThan(4096);

    const stopped = JSON.parse(await fcRun('stop', 'b', '--json'));
    expect(stopped).toEqual({ id: 'b', stopped: true, how: 'ctrl-alt-del' });
    await waitFor('b held', () => states().get('b')?.state === 'held');
    sup!.rescan();
    expect(states().get('b')!.state).toBe('held');
    await expect(fcRun('logs', 'nope')).rejects.toMatchObject({ stderr: expect.stringMatching(/no VM "nope"/) });
    await expect(fcRun('logs', '../x')).rejects.toMatchObject({ stderr: expect.stringMatching(/may contain only letters/) });
  });
});

describe('the supervisor with the real fc-run, failing at launch (no KVM needed)', () => {
  let ws: Workspace;
  let server: net.Server;
  let sup: Supervisor | undefined;
  afterEach(() => {
    sup?.close();
    server?.close();
    ws.remove();
  });

  test('restarts by policy with a doubling, capped backoff; "never" does not restart', async () => {
    ws = new Workspace();
    // A live socket at the vsock path: valid when the directory is read, refused by fc-run at launch
    // (exit 2) on every host, with or without KVM.
    const busy = path.join(ws.dir, `v${process.pid}.sock`);
    server = net.createServer().listen(busy);
    await new Promise((r) => server.once('listening', r));
    const specs = path.join(ws.dir, 'specs');
    fs.mkdirSync(specs);
    const write = (name: string, restart: string) =>
      fs.writeFileSync(
        path.join(specs, name),
        JSON.stringify({ 'boot-source': { kernel_image_path: path.join(ws.dir, 'vmlinux') }, vsock: { guest_cid: 3, uds_path: busy }, 'fc-run': { restart, restart_delay_ms: 100, restart_delay_max_ms: 400 } }),
      );
    write('always.json', 'always');
    write('never.json', 'never');
    const events: FleetEvent[] = [];
    sup = new Supervisor({ dir: specs, runDir: path.join(ws.dir, 'run'), checkIntervalMs: 60000, fcRunBin: BIN, report: (e) => events.push(e) });
    sup.start();
    const exits = (id: string) => events.filter((e) => e.event === 'exited' && e.id === id);
    await waitFor('five exits', () => exits('always').length >= 5, 120000);
    expect(exits('always').slice(0, 5).map((e) => e.next_start_ms)).toEqual([100, 200, 400, 400, 400]);
    expect(exits('always')[0].code).toBe(2);
    expect(exits('always')[0].reason).toMatch(/invalid spec: .*live socket/);
    expect(exits('never')).toHaveLength(1);
    expect(exits('never')[0].next_start_ms).toBeUndefined();
    expect(readStates(path.join(ws.dir, 'run')).find((s) => s.id === 'always')!.restarts).toBeGreaterThanOrEqual(4);
  }, 180000);
});
