import * as fs from 'node:fs';
import * as path from 'node:path';
import { checkFleet } from '../../src/config/fleet';
import { pointer } from '../../src/config/issues';
import { load, minimalSpec, Workspace } from '../helpers/specs';
import type { LoadedSpec } from '../../src/config/validate';

let ws: Workspace;
beforeAll(() => {
  ws = new Workspace();
});
afterAll(() => ws.remove());

let n = 0;
/** Loads a spec written to its own file in the workspace (positions come from the pretty-printed text). */
function spec(extra: Record<string, unknown>, opts: { skipFiles?: boolean } = {}): LoadedSpec {
  const name = `vm${n++}.json`;
  const s = { ...minimalSpec(), ...extra };
  ws.write(name, s);
  return load(ws, s, opts, name);
}

const net = (tap: string, mac?: string, id = 'eth0') => ({ iface_id: id, host_dev_name: tap, ...(mac ? { guest_mac: mac } : {}) });
const drive = (file: string, readOnly: boolean, id = 'rootfs') => ({ drive_id: id, path_on_host: file, is_root_device: id === 'rootfs', is_read_only: readOnly });

/** "code @ pointer" of each spec's fleet errors. */
function codes(specs: LoadedSpec[], readFiles = true): string[][] {
  return checkFleet(specs, { readFiles }).map((list) => list.map((i) => `${i.code} @ ${pointer(i.path)}`));
}

describe('checks across specs', () => {
  test('specs that share nothing they write pass, sharing a kernel and read-only drives', () => {
    const a = spec({ 'network-interfaces': [net('fa0', '06:00:00:00:00:01')], drives: [drive('data.ext4', true, 'data')], logger: { log_path: 'a.log' } });
    const b = spec({ 'network-interfaces': [net('fb0', '06:00:00:00:00:02')], drives: [drive('data.ext4', true, 'data')], logger: { log_path: 'b.log' } });
    expect(codes([a, b])).toEqual([[], []]);
  });

  test('a TAP name used by two specs is an error in each, naming the other file, line, column and path', () => {
    const a = spec({ 'network-interfaces': [net('tap0')] });
    const b = spec({ 'network-interfaces': [net('other0', undefined, 'e0'), net('tap0', undefined, 'e1')] });
    const [ia, ib] = checkFleet([a, b], { readFiles: true });
    expect(ia).toHaveLength(1);
    expect(ib).toHaveLength(1);
    const bPos = b.locate({ severity: 'error', code: '', path: ['network-interfaces', 1, 'host_dev_name'], message: '' });
    expect(ia[0]).toMatchObject({ severity: 'error', code: 'fleet-duplicate-tap', file: a.displayFile, path: ['network-interfaces', 0, 'host_dev_name'] });
    expect(ia[0].message).toBe(`TAP device "tap0" is also used by ${b.displayFile}:${bPos.line}:${bPos.column} (/network-interfaces/1/host_dev_name)`);
    expect(ia[0].line).toBe(a.locate({ severity: 'error', code: '', path: ['network-interfaces', 0, 'host_dev_name'], message: '' }).line);
    expect(ib[0]).toMatchObject({ code: 'fleet-duplicate-tap', file: b.displayFile, line: bPos.line, column: bPos.column });
    expect(ib[0].message).toContain(`is also used by ${a.displayFile}:`);
    expect(ia[0].hint).toMatch(/own TAP/);
  });

  test('guest MACs collide whatever their letter case', () => {
    const a = spec({ 'network-interfaces': [net('ta0', '06:00:AC:10:00:02')] });
    const b = spec({ 'network-interfaces': [net('tb0', '06:00:ac:10:00:02')] });
    expect(codes([a, b])).toEqual([['fleet-duplicate-mac @ /network-interfaces/0/guest_mac'], ['fleet-duplicate-mac @ /network-interfaces/0/guest_mac']]);
  });

  test('log, metrics and vsock paths must be each VM\'s own, in any combination', () => {
    const a = spec({ logger: { log_path: 'shared.log' }, metrics: { metrics_path: 'm.out' }, vsock: { guest_cid: 3, uds_path: 'v.sock' } });
    const b = spec({ logger: { log_path: 'm.out' }, metrics: { metrics_path: 'shared.log' }, vsock: { guest_cid: 3, uds_path: path.join(ws.dir, 'v.sock') } });
    expect(codes([a, b])).toEqual([
      ['fleet-shared-output @ /logger/log_path', 'fleet-shared-output @ /metrics/metrics_path', 'fleet-shared-output @ /vsock/uds_path'],
      ['fleet-shared-output @ /logger/log_path', 'fleet-shared-output @ /metrics/metrics_path', 'fleet-shared-output @ /vsock/uds_path'],
    ]);
    const msg = checkFleet([a, b], { readFiles: true })[0][0].message;
    expect(msg).toMatch(new RegExp(`^logger\\.log_path .*shared\\.log is also used by .*vm\\d+\\.json:\\d+:\\d+ \\(/metrics/metrics_path\\): two VMs would write one file$`));
  });

  test('a writable drive shared between VMs is refused; read-only sharing is fine; written by one and read by another is refused', () => {
    const rw1 = spec({ drives: [drive('rootfs.ext4', false)] });
    const rw2 = spec({ drives: [drive('rootfs.ext4', false)] });
    expect(codes([rw1, rw2])).toEqual([['fleet-shared-writable-drive @ /drives/0/path_on_host'], ['fleet-shared-writable-drive @ /drives/0/path_on_host']]);
    const ro1 = spec({ drives: [drive('rootfs.ext4', true)] });
    const ro2 = spec({ drives: [drive('rootfs.ext4', true)] });
    expect(codes([ro1, ro2])).toEqual([[], []]);
    const [w, r] = checkFleet([rw1, ro1], { readFiles: true });
    expect(w.map((i) => i.code)).toEqual(['fleet-shared-writable-drive']);
    expect(w[0].message).toMatch(/^drive "rootfs" writes to .*rootfs\.ext4, which is also used by /);
    expect(r[0].message).toMatch(/rootfs\.ext4 \(drive "rootfs"\) is written by another VM: /);
  });

  test('two writable drives on one file inside one spec are the rules\' warning, not a fleet error', () => {
    const a = spec({ drives: [drive('rootfs.ext4', false), drive('rootfs.ext4', false, 'again')] });
    const b = spec({});
    expect(codes([a, b])).toEqual([[], []]);
  });

  test('with the files read, a link to a drive is the same drive; with --skip-files only the resolved path counts', () => {
    fs.linkSync(path.join(ws.dir, 'data.ext4'), path.join(ws.dir, 'hard.ext4'));
    fs.mkdirSync(path.join(ws.dir, 'sub'));
    fs.symlinkSync('..', path.join(ws.dir, 'sub', 'up'));
    const a = spec({ drives: [drive('data.ext4', false)] });
    const b = spec({ drives: [drive('hard.ext4', false)] });
    const c = spec({ drives: [drive('sub/up/data.ext4', false)] });
    const d = spec({ drives: [drive('sub/../data.ext4', false)] }, { skipFiles: true });
    expect(codes([a, b]).map((l) => l.length)).toEqual([1, 1]);
    expect(codes([a, c]).map((l) => l.length)).toEqual([1, 1]);
    expect(codes([a, b], false)).toEqual([[], []]);
    expect(codes([a, c], false)).toEqual([[], []]);
    // Spelled differently but the same absolute path: caught without reading anything.
    expect(codes([a, d], false).map((l) => l.length)).toEqual([1, 1]);
  });

  test('an output that another VM reads (its kernel) is refused in both', () => {
    fs.copyFileSync(path.join(ws.dir, 'vmlinux'), path.join(ws.dir, 'vmlinux-b'));
    const a = spec({ logger: { log_path: 'vmlinux-b' } });
    const b = spec({ 'boot-source': { kernel_image_path: 'vmlinux-b' } });
    const [ia, ib] = checkFleet([a, b], { readFiles: true });
    expect(ia.map((i) => i.code)).toEqual(['fleet-shared-output']);
    expect(ib.map((i) => `${i.code} @ ${pointer(i.path)}`)).toEqual(['fleet-shared-output @ /boot-source/kernel_image_path']);
    expect(ib[0].message).toMatch(/vmlinux-b \(kernel_image_path\) is written by another VM: .*\(\/logger\/log_path\)$/);
  });

  test('any number of VMs may log to /dev/null', () => {
    const a = spec({ logger: { log_path: '/dev/null' }, metrics: { metrics_path: '/dev/null' } });
    const b = spec({ logger: { log_path: '/dev/null' } });
    expect(codes([a, b])).toEqual([[], []]);
  });

  test('many users of one TAP: each error lists three others and counts the rest', () => {
    const specs = [0, 1, 2, 3, 4].map(() => spec({ 'network-interfaces': [net('tapX')] }));
    const issues = checkFleet(specs, { readFiles: true });
    expect(issues.map((l) => l.length)).toEqual([1, 1, 1, 1, 1]);
    expect(issues[0][0].message).toMatch(/is also used by (\S+json:\d+:\d+ \(\/network-interfaces\/0\/host_dev_name\), ){2}\S+json:\d+:\d+ \(\/network-interfaces\/0\/host_dev_name\) and 1 more$/);
  });
});
