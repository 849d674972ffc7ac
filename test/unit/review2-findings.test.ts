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

describe('API: connections pushed out to make room do not pile up', () => {
  test('a client opening connections in a loop keeps at most a bounded number of server sockets open', async () => {
    const { spawn } = await import('node:child_process');
    const { startApi } = await import('../../src/api/server');
    const sock = path.join(ws.dir, `flood-${process.pid}.sock`);
    const ctx = {
      id: 'flood',
      version: 'test',
      maxBody: 4096,
      monitor: { log: { warn: () => undefined, info: () => undefined }, flush: () => true, countApiRequest: () => undefined },
    } as unknown as import('../../src/api/server').ApiContext;
    const server = await startApi(sock, ctx);
    const fds = () => {
      try {
        return fs.readdirSync('/proc/self/fd').length;
      } catch {
        return Infinity;
      }
    };
    const base = fds();
    let most = 0;
    const sampler = setInterval(() => (most = Math.max(most, fds() - base)), 5);
    try {
      // 1500 connections that each send half a request head and never finish or read: each pushes
      // an older one out. The clients live in another process, so every fd counted here is the server's.
      const flood = `const net=require('net');let n=0;const go=()=>{for(let i=0;i<100;i++){const c=net.connect(${JSON.stringify(sock)});c.on('error',()=>{});c.write('GET / HTTP/1.1\\r\\nX: ');n++}if(n<1500)setTimeout(go,10);else setTimeout(()=>process.exit(0),300)};go();`;
      await new Promise<void>((resolve) => spawn(process.execPath, ['-e', flood], { stdio: 'ignore' }).on('exit', () => resolve()));
    } finally {
      clearInterval(sampler);
      server.close();
    }
    // 16 connections and at most 16 lingering ones, plus slack for accepts not yet handled.
    expect(most).toBeLessThan(80);
  }, 60_000);
});

describe('jail cgroups: mount flags of a v1 hierarchy are not controllers', () => {
  test('"rw" and "relatime" name no hierarchy; "cpu" does', async () => {
    const { parseCgroupMounts, planCgroups, parseCgroupSetting } = await import('../../src/jail/cgroups');
    const mounts = parseCgroupMounts('cgroup /sys/fs/cgroup/cpu cgroup rw,nosuid,relatime,cpu 0 0\ncgroup /sys/fs/cgroup/systemd cgroup rw,relatime,xattr,name=systemd 0 0\n');
    expect([...mounts.v1.keys()]).toEqual(['cpu']);
    const setting = parseCgroupSetting('rw.x=1');
    if (typeof setting === 'string') throw new Error(setting);
    expect(() => planCgroups([setting], { id: 'vm1', parent: 'fc-run', version: 1, mounts, v2Controllers: new Set() })).toThrow(/no cgroup v1 hierarchy for the "rw" controller/);
  });
});
