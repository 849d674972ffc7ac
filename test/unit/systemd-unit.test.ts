import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { escapePath, systemdUnit, templateUnit, unitFileName, UnitOptions, unitWord } from '../../src/deploy/systemd-unit';
import { defaultInstanceName } from '../../src/deploy/resources';
import { load, minimalSpec, Workspace } from '../helpers/specs';

const ROOT = path.resolve(__dirname, '..', '..');
const FC_RUN = path.join(ROOT, 'bin', 'fc-run');
const ANALYZE = '/usr/bin/systemd-analyze';
const haveAnalyze = fs.existsSync(ANALYZE);
const withAnalyze = haveAnalyze ? test : test.skip;
if (!haveAnalyze) console.warn('systemd-analyze is missing (Debian package "systemd"): unit verification tests skip');

let ws: Workspace;
let scratch: string;
beforeAll(() => {
  ws = new Workspace();
  scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'fc-run-units-'));
});
afterAll(() => {
  ws.remove();
  fs.rmSync(scratch, { recursive: true, force: true });
});

function opts(over: Partial<UnitOptions> = {}): UnitOptions {
  return { name: 'web', user: false, node: process.execPath, fcRun: FC_RUN, stopTimeoutSec: 15, restart: 'on-failure', ...over };
}

/** A spec with everything a sandbox has to let through: a TAP, a writable and a read-only drive, logs, metrics, vsock. */
function fullSpec(): Record<string, unknown> {
  for (const d of ['logs', 'vsock']) fs.mkdirSync(path.join(ws.dir, d), { recursive: true });
  return {
    ...minimalSpec(),
    drives: [
      { drive_id: 'rootfs', path_on_host: 'rootfs.ext4', is_root_device: true, is_read_only: true },
      { drive_id: 'data', path_on_host: 'data.ext4', is_root_device: false, is_read_only: false },
    ],
    'network-interfaces': [{ iface_id: 'eth0', host_dev_name: 'tap-web0' }],
    logger: { log_path: 'logs/vm.log', level: 'Info' },
    metrics: { metrics_path: 'logs/vm.metrics' },
    vsock: { guest_cid: 3, uds_path: 'vsock/v.sock' },
  };
}

/** Runs systemd-analyze verify on a copy of the unit; returns its exit code and everything it printed. */
function verify(unitName: string, text: string, user = false): { code: number | null; out: string } {
  const dir = fs.mkdtempSync(path.join(scratch, 'v-'));
  const file = path.join(dir, unitName);
  fs.writeFileSync(file, text);
  const env: NodeJS.ProcessEnv = { ...process.env, SYSTEMD_LOG_COLOR: '0' };
  // A user manager needs a runtime directory to exist even to verify.
  if (user) env.XDG_RUNTIME_DIR = dir;
  const r = spawnSync(ANALYZE, [...(user ? ['--user'] : []), 'verify', '--man=no', file], { encoding: 'utf8', env });
  return { code: r.status, out: `${r.stdout}${r.stderr}`.trim() };
}

function lines(unit: string, key: string): string[] {
  return unit.split('\n').filter((l) => l.startsWith(`${key}=`)).map((l) => l.slice(key.length + 1));
}

describe('the service unit for one spec', () => {
  test('Type=notify, absolute ExecStart with the API socket in the runtime directory, SIGTERM to stop', () => {
    const loaded = load(ws, minimalSpec());
    const unit = systemdUnit(loaded.spec, opts());
    expect(lines(unit, 'Type')).toEqual(['notify']);
    expect(lines(unit, 'ExecStart')).toEqual([`${process.execPath} ${FC_RUN} run ${loaded.spec.specFile} --id web --api-sock %t/fc-run/web/api.sock`]);
    expect(lines(unit, 'RuntimeDirectory')).toEqual(['fc-run/web']);
    expect(lines(unit, 'KillSignal')).toEqual(['SIGTERM']);
    expect(lines(unit, 'TimeoutStopSec')).toEqual(['15']);
    expect(lines(unit, 'RestartPreventExitStatus')).toEqual(['2']);
  });

  test('a spec without TAPs: no network, no capability, only /dev/kvm', () => {
    const unit = systemdUnit(load(ws, minimalSpec()).spec, opts());
    expect(lines(unit, 'PrivateNetwork')).toEqual(['yes']);
    expect(lines(unit, 'CapabilityBoundingSet')).toEqual(['']);
    expect(lines(unit, 'DeviceAllow')).toEqual(['/dev/kvm rw']);
    expect(lines(unit, 'DevicePolicy')).toEqual(['closed']);
    expect(lines(unit, 'RestrictAddressFamilies')).toEqual(['AF_UNIX']);
    // V8's JIT needs writable-executable memory.
    expect(unit).not.toContain('MemoryDenyWriteExecute');
  });

  test('a full spec: writable drive, log, metrics and vsock directories are writable; TAPs get /dev/net/tun and CAP_NET_ADMIN as root', () => {
    const spec = load(ws, fullSpec()).spec;
    const unit = systemdUnit(spec, opts());
    const rw = lines(unit, 'ReadWritePaths')[0].split(' ');
    expect(rw).toEqual([`-${path.join(ws.dir, 'data.ext4')}`, `-${path.join(ws.dir, 'logs')}`, `-${path.join(ws.dir, 'vsock')}`]);
    expect(rw).not.toContain(`-${path.join(ws.dir, 'rootfs.ext4')}`);
    expect(lines(unit, 'DeviceAllow')).toEqual(['/dev/kvm rw', '/dev/net/tun rw']);
    expect(lines(unit, 'CapabilityBoundingSet')).toEqual(['CAP_NET_ADMIN']);
    expect(lines(unit, 'PrivateNetwork')).toEqual([]);
    // The spec lives in /tmp: a private /tmp would hide it.
    expect(lines(unit, 'PrivateTmp')).toEqual([]);
    // With a user that owns its TAPs, no capability at all.
    const asUser = systemdUnit(spec, opts({ runAs: 'fcvm' }));
    expect(lines(asUser, 'User')).toEqual(['fcvm']);
    expect(lines(asUser, 'CapabilityBoundingSet')).toEqual(['']);
  });

  test('a user unit leaves out what needs privileges', () => {
    const unit = systemdUnit(load(ws, fullSpec()).spec, opts({ user: true }));
    for (const key of ['DeviceAllow', 'DevicePolicy', 'CapabilityBoundingSet', 'ProtectSystem', 'PrivateNetwork', 'User']) expect(lines(unit, key)).toEqual([]);
    expect(lines(unit, 'NoNewPrivileges')).toEqual(['yes']);
    expect(lines(unit, 'WantedBy')).toEqual(['default.target']);
  });

  test('paths with spaces, % and $ are quoted and escaped; control characters are refused', () => {
    expect(unitWord('/srv/my vm/%i$x.json')).toBe('"/srv/my vm/%%i$$x.json"');
    expect(unitWord('/srv/vm.json')).toBe('/srv/vm.json');
    expect(() => unitWord('/srv/a\nb')).toThrow(/control character/);
  });

  test('default names come from the spec file, in the --id alphabet', () => {
    expect(defaultInstanceName('/srv/vms/web_1.json')).toBe('web-1');
    expect(defaultInstanceName('/srv/vms/.json')).toBe('vm');
    expect(unitFileName('web-1')).toBe('fc-run-web-1.service');
  });

  withAnalyze('escapePath matches systemd-escape --path', () => {
    for (const p of ['/srv/fleet', '/srv/my fleet/', '//var//lib/.hidden', '/', '/srv/a-b/ü']) {
      const r = spawnSync('/usr/bin/systemd-escape', ['--path', p], { encoding: 'utf8' });
      expect(r.status).toBe(0);
      expect(escapePath(p)).toBe(r.stdout.trim());
    }
  });

  withAnalyze.each([
    ['minimal, system', () => minimalSpec(), {}],
    ['full, system', () => fullSpec(), {}],
    ['full, system, as a user', () => fullSpec(), { runAs: 'fcvm' }],
    ['full, user unit', () => fullSpec(), { user: true }],
    ['restart always', () => minimalSpec(), { restart: 'always' as const }],
  ])('systemd-analyze verify accepts the unit (%s) without a word', (_what, spec, over: Partial<UnitOptions>) => {
    const o = opts(over);
    const text = systemdUnit(load(ws, spec()).spec, o);
    const r = verify(unitFileName(o.name), text, o.user);
    expect(r.out).toBe('');
    expect(r.code).toBe(0);
  });

  withAnalyze('systemd-analyze verify does fail on a broken unit (the check is real)', () => {
    const text = systemdUnit(load(ws, minimalSpec()).spec, opts({ node: path.join(scratch, 'no-node') }));
    const r = verify('fc-run-broken.service', text);
    expect(r.code).not.toBe(0);
    expect(r.out).toMatch(/no-node is not executable/);
  });
});

describe('the fc-run@.service template', () => {
  const template = () => templateUnit({ user: false, node: process.execPath, fcRun: FC_RUN, stopTimeoutSec: 15, restart: 'on-failure' });

  test('runs `fc-run up` on the instance directory, which is writable', () => {
    const t = template();
    expect(lines(t, 'ExecStart')).toEqual([`${process.execPath} ${FC_RUN} up %f`]);
    expect(lines(t, 'ReadWritePaths')).toEqual(['%f']);
    expect(lines(t, 'Description')).toEqual(['fc-run microVMs of the specs in %f']);
  });

  withAnalyze('systemd-analyze verify accepts the template and an instance of it', () => {
    for (const name of ['fc-run@.service', `fc-run@${escapePath('/srv/my fleet')}.service`]) {
      const r = verify(name, template());
      expect(r.out).toBe('');
      expect(r.code).toBe(0);
    }
    const user = templateUnit({ user: true, node: process.execPath, fcRun: FC_RUN, stopTimeoutSec: 5, restart: 'no' });
    const r = verify('fc-run@srv-fleet.service', user, true);
    expect(r.out).toBe('');
    expect(r.code).toBe(0);
  });
});
