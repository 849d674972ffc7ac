import * as fs from 'node:fs';
import * as path from 'node:path';
import { systemdUnit, unitWord } from '../../src/deploy/systemd-unit';
import { load, minimalSpec, Workspace } from '../helpers/specs';

/** Regressions for findings of the second review, in-process. */

let ws: Workspace;
beforeAll(() => {
  ws = new Workspace();
});
afterAll(() => ws.remove());

describe('systemd units: "$" is written "$$" only where systemd expands variables (command lines)', () => {
  test('unitWord: $$ in ExecStart words, a literal $ in path lists', () => {
    expect(unitWord('/srv/a$b.json')).toBe('/srv/a$$b.json');
    expect(unitWord('/srv/a$b', { exec: false })).toBe('"/srv/a$b"');
    expect(unitWord('/srv/my vm/%i', { exec: false })).toBe('"/srv/my vm/%%i"');
    expect(unitWord('/srv/plain', { exec: false })).toBe('/srv/plain');
  });

  test('a writable drive under a directory with "$" in its name is the path ReadWritePaths= names', () => {
    const dir = path.join(ws.dir, 'd$HOME');
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, 'data.ext4'), Buffer.alloc(4096));
    const loaded = load(ws, { ...minimalSpec(), drives: [{ drive_id: 'data', path_on_host: 'd$HOME/data.ext4', is_root_device: false, is_read_only: false }] });
    const unit = systemdUnit(loaded.spec, { name: 'web', user: false, node: process.execPath, fcRun: '/opt/fc-run/bin/fc-run', stopTimeoutSec: 15, restart: 'on-failure' });
    const rw = unit.split('\n').find((l) => l.startsWith('ReadWritePaths='))!;
    expect(rw).toContain(`-"${dir}/data.ext4"`);
    expect(rw).not.toContain('$$');
    // In ExecStart the spec path is still protected from variable expansion.
    expect(unit).toMatch(/^ExecStart=.* run \S+vm\.json --id web/m);
  });
});
