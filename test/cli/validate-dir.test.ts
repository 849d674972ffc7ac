import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Workspace } from '../helpers/specs';
import { ROOT, requireBuilt, runCli } from '../helpers/cli';

/** `fc-run validate` on directories of specs, through the built binary. */
let ws: Workspace;
beforeAll(() => {
  requireBuilt();
  ws = new Workspace();
});
afterAll(() => ws.remove());

/** Runs in the workspace, so the names printed are the relative ones given. */
function fcRun(args: string[]) {
  const r = runCli(args, { cwd: ws.dir });
  return { ...r, lines: r.out.trim().split('\n') };
}

/** A runnable spec whose files live at the workspace root, wherever the spec itself is written. */
function vm(extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { 'boot-source': { kernel_image_path: path.join(ws.dir, 'vmlinux'), boot_args: 'console=ttyS0' }, ...extra };
}

/** Writes `name` under the workspace (objects as pretty-printed JSON). */
function write(name: string, content: string | object): void {
  ws.write(name, content);
}

/** "file:line:col" where `needle` (its nth occurrence) starts in the file. */
function posOf(name: string, needle: string, nth = 0): string {
  const text = fs.readFileSync(path.join(ws.dir, name), 'utf8');
  let at = -1;
  for (let i = 0; i <= nth; i++) at = text.indexOf(needle, at + 1);
  if (at < 0) throw new Error(`${needle} not in ${name}`);
  const before = text.slice(0, at).split('\n');
  return `${name}:${before.length}:${before[before.length - 1].length + 1}`;
}

const net = (tap: string, mac?: string) => ({ iface_id: 'eth0', host_dev_name: tap, ...(mac ? { guest_mac: mac } : {}) });

describe('fc-run validate DIR', () => {
  test('walks nested directories, skips .git and node_modules, CPU templates and the --metadata file', () => {
    write('tree/a.json', vm({ 'cpu-config': 'templates/mine.json' }));
    write('tree/templates/mine.json', fs.readFileSync(path.join(ROOT, 'examples', 'cpu-templates', 'no-avx512.json'), 'utf8'));
    write('tree/templates/unreferenced.json', { cpuid_modifiers: [] });
    write('tree/deep/er/b.json', vm());
    write('tree/.git/config.json', '{ not a spec');
    write('tree/node_modules/pkg/package.json', '{"name": "x"}');
    write('tree/.hidden.json', '{ not a spec');
    write('tree/deep/meta.json', { latest: { id: 1 } });
    write('tree/notes.txt', 'not json');
    const r = fcRun(['validate', '--metadata', 'tree/deep/meta.json', 'tree']);
    expect(r.err).toBe('');
    expect(r.lines).toEqual(['ok    tree/a.json', 'ok    tree/deep/er/b.json', '2 specs: 2 ok']);
    expect(r.code).toBe(0);
    // Without --metadata the metadata file is just a JSON file, so it is taken for a spec and fails.
    const without = fcRun(['validate', 'tree']);
    expect(without.code).toBe(2);
    expect(without.out).toContain('FAIL  tree/deep/meta.json');
    expect(without.lines[without.lines.length - 1]).toMatch(/^3 specs: 2 ok, 1 invalid \(\d+ errors?, 0 warnings\)$/);
  });

  test('a CPU template file named on the command line is checked as a template: what run refuses in one, validate refuses', () => {
    write('tpl/ok.json', fs.readFileSync(path.join(ROOT, 'examples', 'cpu-templates', 'no-avx512.json'), 'utf8'));
    write('tpl/arm.json', { reg_modifiers: [{ addr: '0x0030000000000011', bitmap: '0b1' }] });
    write('tpl/caps.json', '{\n  "kvm_capabilities": ["171"],\n  "msr_modifiers": [{ "addr": "0x10a", "bitmap": "0b1", "note": "x" }]\n}\n');
    write('tpl/bad.json', { cpuid_modifiers: [{ leaf: '0x1', subleaf: '0x0', flags: 0, modifiers: [{ register: 'exx', bitmap: '0b1' }] }] });
    const r = fcRun(['validate', 'tpl/ok.json', 'tpl/arm.json', 'tpl/caps.json', 'tpl/bad.json']);
    expect(r.code).toBe(2);
    expect(r.lines).toEqual([
      'ok    tpl/ok.json (CPU template)',
      'FAIL  tpl/arm.json (CPU template, 1 error)',
      'FAIL  tpl/caps.json (CPU template, 1 error)',
      'FAIL  tpl/bad.json (CPU template, 1 error)',
      '4 specs: 1 ok, 3 invalid (3 errors, 1 warning)',
    ]);
    expect(r.err).toContain(`${posOf('tpl/arm.json', '[')}: error[wrong-architecture]: /reg_modifiers:`);
    expect(r.err).toContain(`${posOf('tpl/caps.json', '["171"]')}: error[not-supported]: /kvm_capabilities:`);
    expect(r.err).toContain(`${posOf('tpl/caps.json', '"note"')}: warning[unknown-property-ignored]: /msr_modifiers/0/note:`);
    expect(r.err).toContain(`${posOf('tpl/bad.json', '"exx"')}: error[enum]: /cpuid_modifiers/0/modifiers/0/register:`);
    // The same template through a spec's cpu-config is refused by run's plan the same way.
    write('tpl/spec.json', vm({ 'cpu-config': 'arm.json' }));
    expect(fcRun(['validate', 'tpl/spec.json']).err).toContain('error[wrong-architecture]: /cpu-config:');
    const lines = fcRun(['validate', '--json-lines', 'tpl/ok.json']).lines.map((l) => JSON.parse(l));
    expect(lines[0]).toEqual({ type: 'result', file: 'tpl/ok.json', valid: true, errors: 0, warnings: 0, kind: 'cpu-template' });
    // In a directory a template no spec names is still skipped, not checked as a spec.
    const dir = fcRun(['validate', 'tpl']);
    expect(dir.lines.filter((l) => /^(ok|FAIL) /.test(l))).toEqual(['FAIL  tpl/spec.json (1 error)']);
    expect(dir.lines[dir.lines.length - 1]).toBe('1 spec: 0 ok, 1 invalid (1 error, 0 warnings)');
  });

  test('files and directories mix; a spec reached twice is checked once', () => {
    write('mix/d/one.json', vm());
    write('mix/two.json', vm());
    const r = fcRun(['validate', 'mix/two.json', 'mix', 'mix/d/one.json']);
    expect(r.lines).toEqual(['ok    mix/two.json', 'ok    mix/d/one.json', '2 specs: 2 ok']);
    expect(r.code).toBe(0);
  });

  test('a symbolic link loop neither hangs nor repeats a spec; a looping *.json link is reported unreadable (exit 1)', () => {
    write('loop/sub/x.json', vm());
    fs.symlinkSync('..', path.join(ws.dir, 'loop/sub/up'));
    fs.symlinkSync('self', path.join(ws.dir, 'loop/self'));
    const ok = fcRun(['validate', 'loop']);
    expect(ok.lines).toEqual(['ok    loop/sub/x.json', '1 spec: 1 ok']);
    expect(ok.code).toBe(0);
    fs.symlinkSync('me.json', path.join(ws.dir, 'loop/me.json'));
    const bad = fcRun(['validate', 'loop']);
    expect(bad.out).toMatch(/^FAIL  loop\/me\.json: spec file \S*loop\/me\.json is a symbolic link loop$/m);
    expect(bad.lines[bad.lines.length - 1]).toBe('2 specs: 1 ok, 1 unreadable (1 error, 0 warnings)');
    expect(bad.code).toBe(1);
  });

  test('a FIFO named *.json in a directory is refused at once, not waited on', () => {
    write('fifo/ok.json', vm());
    expect(spawnSync('mkfifo', [path.join(ws.dir, 'fifo', 'pipe.json')]).status).toBe(0);
    const r = fcRun(['validate', 'fifo']);
    expect(r.out).toMatch(/^FAIL  fifo\/pipe\.json: spec file \S*pipe\.json is a FIFO \(named pipe\); give a regular file$/m);
    expect(r.lines[r.lines.length - 1]).toBe('2 specs: 1 ok, 1 unreadable (1 error, 0 warnings)');
    expect(r.code).toBe(1);
  });

  test('a directory without specs is an error (exit 1) that says what a spec is', () => {
    write('nothing/.git/HEAD.json', '{}');
    write('nothing/templates/t.json', { msr_modifiers: [] });
    const r = fcRun(['validate', 'nothing']);
    expect(r.code).toBe(1);
    expect(r.out).toContain('FAIL  no spec files under nothing: a spec is a *.json file that is not a CPU template or the --metadata file (hidden files and directories and node_modules are skipped)');
    expect(r.lines[r.lines.length - 1]).toBe('no specs checked; 1 directory problem');
    // The other arguments are still checked.
    write('some/s.json', vm());
    const mixed = fcRun(['validate', 'nothing', 'some']);
    expect(mixed.out).toContain('ok    some/s.json');
    expect(mixed.code).toBe(1);
  });

  describe('collisions between specs', () => {
    test('a TAP name: both specs fail, each naming the other\'s file:line:col and JSON path', () => {
      write('tap/a.json', vm({ 'network-interfaces': [net('fleet-tap0')] }));
      write('tap/b.json', vm({ 'network-interfaces': [net('fleet-tap1'), { iface_id: 'eth1', host_dev_name: 'fleet-tap0' }] }));
      const r = fcRun(['validate', 'tap']);
      expect(r.code).toBe(2);
      expect(r.lines).toEqual(['FAIL  tap/a.json (1 error)', 'FAIL  tap/b.json (1 error)', '2 specs: 0 ok, 2 invalid (2 errors, 0 warnings)']);
      const a = posOf('tap/a.json', '"fleet-tap0"');
      const b = posOf('tap/b.json', '"fleet-tap0"');
      expect(r.err).toContain(`${a}: error[fleet-duplicate-tap]: /network-interfaces/0/host_dev_name: TAP device "fleet-tap0" is also used by ${b} (/network-interfaces/1/host_dev_name)`);
      expect(r.err).toContain(`${b}: error[fleet-duplicate-tap]: /network-interfaces/1/host_dev_name: TAP device "fleet-tap0" is also used by ${a} (/network-interfaces/0/host_dev_name)`);
    });

    test('a guest MAC, whatever its case', () => {
      write('mac/a.json', vm({ 'network-interfaces': [net('ma0', '06:00:AC:10:00:09')] }));
      write('mac/b.json', vm({ 'network-interfaces': [net('mb0', '06:00:ac:10:00:09')] }));
      const r = fcRun(['validate', 'mac']);
      expect(r.code).toBe(2);
      expect(r.err).toContain(`${posOf('mac/a.json', '"06:00')}: error[fleet-duplicate-mac]: /network-interfaces/0/guest_mac: guest MAC 06:00:ac:10:00:09 is also used by ${posOf('mac/b.json', '"06:00')} (/network-interfaces/0/guest_mac)`);
    });

    test('the vsock socket, the log and the metrics file, spelled differently', () => {
      write('out/a.json', vm({ vsock: { guest_cid: 3, uds_path: '../shared.sock' }, logger: { log_path: '../fleet.log' }, metrics: { metrics_path: path.join(ws.dir, 'fleet.metrics') } }));
      write('out/sub/b.json', vm({ vsock: { guest_cid: 3, uds_path: path.join(ws.dir, 'shared.sock') }, logger: { log_path: '../../fleet.metrics' }, metrics: { metrics_path: '../../fleet.log' } }));
      const r = fcRun(['validate', 'out']);
      expect(r.code).toBe(2);
      expect(r.lines).toEqual(['FAIL  out/a.json (3 errors)', 'FAIL  out/sub/b.json (3 errors)', '2 specs: 0 ok, 2 invalid (6 errors, 0 warnings)']);
      expect(r.err).toContain(`${posOf('out/a.json', '"../shared.sock"')}: error[fleet-shared-output]: /vsock/uds_path: vsock.uds_path ${path.join(ws.dir, 'shared.sock')} is also used by ${posOf('out/sub/b.json', `"${path.join(ws.dir, 'shared.sock')}"`)} (/vsock/uds_path): two VMs would write one file`);
      expect(r.err).toContain(`${posOf('out/a.json', '"../fleet.log"')}: error[fleet-shared-output]: /logger/log_path: logger.log_path ${path.join(ws.dir, 'fleet.log')} is also used by ${posOf('out/sub/b.json', '"../../fleet.log"')} (/metrics/metrics_path)`);
      expect(r.err).toContain(`error[fleet-shared-output]: /metrics/metrics_path: metrics.metrics_path ${path.join(ws.dir, 'fleet.metrics')} is also used by ${posOf('out/sub/b.json', '"../../fleet.metrics"')} (/logger/log_path)`);
    });

    test('a writable drive is refused, also through a hard link; read-only sharing is fine', () => {
      fs.linkSync(path.join(ws.dir, 'rootfs.ext4'), path.join(ws.dir, 'rootfs-link.ext4'));
      const drive = (file: string, ro: boolean) => ({ drives: [{ drive_id: 'rootfs', path_on_host: path.join(ws.dir, file), is_root_device: true, is_read_only: ro }] });
      write('rw/a.json', vm(drive('rootfs.ext4', false)));
      write('rw/b.json', vm(drive('rootfs-link.ext4', false)));
      const r = fcRun(['validate', 'rw']);
      expect(r.code).toBe(2);
      expect(r.err).toContain(`${posOf('rw/a.json', `"${path.join(ws.dir, 'rootfs.ext4')}"`)}: error[fleet-shared-writable-drive]: /drives/0/path_on_host: drive "rootfs" writes to ${path.join(ws.dir, 'rootfs.ext4')}, which is also used by ${posOf('rw/b.json', `"${path.join(ws.dir, 'rootfs-link.ext4')}"`)} (/drives/0/path_on_host)`);
      // --skip-files reads nothing: the link is not seen through, only resolved paths compare.
      expect(fcRun(['validate', '--skip-files', 'rw']).code).toBe(0);

      write('ro/a.json', vm(drive('data.ext4', true)));
      write('ro/b.json', vm(drive('data.ext4', true)));
      expect(fcRun(['validate', 'ro']).code).toBe(0);
      write('ro/c.json', vm(drive('data.ext4', false)));
      const mixed = fcRun(['validate', 'ro']);
      expect(mixed.code).toBe(2);
      expect(mixed.lines).toEqual(['FAIL  ro/a.json (1 error)', 'FAIL  ro/b.json (1 error)', 'FAIL  ro/c.json (1 error)', '3 specs: 0 ok, 3 invalid (3 errors, 0 warnings)']);
      expect(mixed.err).toMatch(/ro\/a\.json:\d+:\d+: error\[fleet-shared-writable-drive\]: \/drives\/0\/path_on_host: \S+data\.ext4 \(drive "rootfs"\) is written by another VM: ro\/c\.json:\d+:\d+ \(\/drives\/0\/path_on_host\)/);
    });

    test('--independent skips the checks across specs', () => {
      write('alt/a.json', vm({ 'network-interfaces': [net('alt0')] }));
      write('alt/b.json', vm({ 'network-interfaces': [net('alt0')] }));
      expect(fcRun(['validate', 'alt']).code).toBe(2);
      const r = fcRun(['validate', '--independent', 'alt']);
      expect(r.lines).toEqual(['ok    alt/a.json', 'ok    alt/b.json', '2 specs: 2 ok']);
      expect(r.code).toBe(0);
    });

    test('a spec that fails the rules is left out of the checks; one that fails later (the plan) is kept in', () => {
      write('partial/bad.json', vm({ 'network-interfaces': [net('part0')], 'machine-config': { vcpu_count: 99, mem_size_mib: 128 } }));
      write('partial/good.json', vm({ 'network-interfaces': [net('part0')] }));
      const r = fcRun(['validate', 'partial']);
      expect(r.lines).toEqual(['FAIL  partial/bad.json (1 error)', 'ok    partial/good.json', '2 specs: 1 ok, 1 invalid (1 error, 0 warnings)']);
      expect(r.err).not.toContain('fleet-');
      expect(r.code).toBe(2);
      write('partial/bad.json', vm({ 'network-interfaces': [net('part0')], balloon: { amount_mib: 1, deflate_on_oom: false } }));
      const planned = fcRun(['validate', 'partial']);
      expect(planned.err).toContain('error[not-supported]');
      expect(planned.err).toContain('partial/good.json');
      expect(planned.lines.slice(0, 2)).toEqual(['FAIL  partial/bad.json (2 errors)', 'FAIL  partial/good.json (1 error)']);
    });
  });

  describe('machine-readable output', () => {
    beforeAll(() => {
      write('machine/a.json', vm({ 'network-interfaces': [net('mach0')] }));
      write('machine/b.json', vm({ 'network-interfaces': [net('mach0')] }));
      write('machine/c.json', vm());
    });

    test('--json-lines: issue and result records per file, then one summary record', () => {
      const r = fcRun(['validate', '--json-lines', 'machine']);
      expect(r.code).toBe(2);
      expect(r.err).toBe('');
      const records = r.lines.map((l) => JSON.parse(l));
      expect(records.map((x) => x.type)).toEqual(['issue', 'result', 'issue', 'result', 'result', 'summary']);
      expect(records[0]).toMatchObject({ severity: 'error', code: 'fleet-duplicate-tap', file: 'machine/a.json', path: '/network-interfaces/0/host_dev_name' });
      expect(records[0].message).toContain(`is also used by ${posOf('machine/b.json', '"mach0"')}`);
      expect(records[4]).toEqual({ type: 'result', file: 'machine/c.json', valid: true, errors: 0, warnings: 0 });
      expect(records[5]).toEqual({ type: 'summary', valid: false, specs: 3, ok: 1, invalid: 2, unreadable: 0, problems: 0, errors: 2, warnings: 0 });
    });

    test('--json: the files and a summary object', () => {
      const r = fcRun(['validate', '--json', 'machine']);
      expect(r.code).toBe(2);
      const doc = JSON.parse(r.out);
      expect(doc.valid).toBe(false);
      expect(doc.files.map((f: { file: string; valid: boolean }) => [f.file, f.valid])).toEqual([
        ['machine/a.json', false],
        ['machine/b.json', false],
        ['machine/c.json', true],
      ]);
      expect(doc.files[1].errors[0]).toMatchObject({ code: 'fleet-duplicate-tap', file: 'machine/b.json' });
      expect(doc.summary).toEqual({ valid: false, specs: 3, ok: 1, invalid: 2, unreadable: 0, problems: 0, errors: 2, warnings: 0 });
    });
  });
});
