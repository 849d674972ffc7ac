import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { minimalSpec, Workspace } from '../helpers/specs';
import { BIN, requireBuilt, runCli } from '../helpers/cli';

/**
 * Every class of bad input a user (or a script) can hand fc-run at its front door, through the
 * real binary: a clear message, exit 1 or 2, no stack trace, no hang, no file touched.
 */
function fcRun(args: string[], opts: { timeout?: number } = {}) {
  return runCli(args, { timeout: opts.timeout ?? 20_000, hostile: true });
}

let ws: Workspace;
beforeAll(() => {
  requireBuilt();
  ws = new Workspace();
});
afterAll(() => ws.remove());

const spec = (extra: Record<string, unknown> = {}) => ({ ...minimalSpec(), ...extra });

describe('depth', () => {
  const deep = (n: number) => '['.repeat(n) + ']'.repeat(n);

  test('a spec nested thousands of levels deep is refused with its position, not a stack overflow', () => {
    const file = ws.write('deep.json', `{\n  "boot-source": { "kernel_image_path": "vmlinux" },\n  "mmds": ${deep(20000)}\n}\n`);
    const r = fcRun(['validate', file]);
    expect(r.code).toBe(2);
    expect(r.out + r.err).toMatch(/deep\.json:3:\d+: error\[json-too-deep\]: JSON nests deeper than 128 levels/);
  });

  test('128 levels are fine, 129 are not', () => {
    const nest = (n: number) => '{"a":'.repeat(n - 1) + '1' + '}'.repeat(n - 1);
    // The spec object itself is the first level.
    const ok = ws.write('d128.json', `{"boot-source": {"kernel_image_path": "vmlinux"}, "mmds": ${nest(128)}}`);
    const over = ws.write('d129.json', `{"boot-source": {"kernel_image_path": "vmlinux"}, "mmds": ${nest(129)}}`);
    expect(fcRun(['validate', '--skip-files', ok]).code).toBe(0);
    expect(fcRun(['validate', '--skip-files', over]).code).toBe(2);
  });

  test('--metadata and CPU template files have the same limit', () => {
    const meta = ws.write('deep-meta.json', `{"x": ${deep(5000)}}`);
    const r = fcRun(['validate', ws.write('m.json', spec()), '--metadata', meta]);
    expect(r.code).toBe(2);
    expect(r.err).toContain('deep-meta.json:1:');
    expect(r.err).toContain('json-too-deep');
    ws.write('deep-tpl.json', `{"cpuid_modifiers": ${deep(5000)}}`);
    const t = fcRun(['validate', ws.write('t.json', spec({ 'cpu-config': 'deep-tpl.json' }))]);
    expect(t.code).toBe(2);
    expect(t.err).toContain('json-too-deep');
  });
});

describe('files that are not regular files, or too large', () => {
  test('a FIFO, /dev/zero, a directory and a socket as the spec: refused at once, nothing read', () => {
    const fifo = path.join(ws.dir, 'spec.fifo');
    spawnSync('mkfifo', [fifo]);
    for (const [file, kind] of [
      [fifo, 'named pipe'],
      ['/dev/zero', 'character device'],
      [ws.dir, 'directory'],
    ]) {
      // validate searches a directory for specs; plan takes exactly one spec file.
      const r = fcRun([kind === 'directory' ? 'plan' : 'validate', file], { timeout: 10_000 });
      expect(r.code).toBe(1);
      expect(r.out + r.err).toContain(kind);
    }
  });

  test('a Unix socket as the spec', async () => {
    const sock = path.join(ws.dir, 's.sock');
    const server = net.createServer().listen(sock);
    await new Promise((r) => server.once('listening', r));
    try {
      const r = await new Promise<{ code: number | null; out: string }>((resolve) => {
        const child = spawn(process.execPath, [BIN, 'validate', sock], { env: { ...process.env, NO_COLOR: '1' } });
        let out = '';
        child.stdout.on('data', (d) => (out += d));
        child.stderr.on('data', (d) => (out += d));
        child.on('close', (code) => resolve({ code, out }));
      });
      expect(r.code).toBe(1);
      expect(r.out).toMatch(/socket/);
      expect(r.out).not.toMatch(/internal error/);
    } finally {
      server.close();
    }
  });

  test('a spec over 1 MiB is refused naming the limit', () => {
    const big = ws.write('big.json', JSON.stringify(spec({ mmds: { pad: 'x'.repeat(1100 * 1024) } })));
    const r = fcRun(['validate', big]);
    expect(r.code).toBe(1);
    expect(r.out + r.err).toMatch(/limit is 1048576 bytes/);
  });

  test('--metadata /dev/zero and a FIFO template are refused without reading them', () => {
    const r = fcRun(['validate', ws.write('m2.json', spec()), '--metadata', '/dev/zero'], { timeout: 10_000 });
    expect(r.code).toBe(1);
    expect(r.out + r.err).toContain('character device');
    const fifo = path.join(ws.dir, 'tpl.fifo');
    spawnSync('mkfifo', [fifo]);
    const t = fcRun(['validate', ws.write('t2.json', spec({ 'cpu-config': 'tpl.fifo' }))], { timeout: 10_000 });
    expect(t.code).toBe(2);
    expect(t.err).toContain('not a regular file');
  });

  test('--skip-files reads no file the spec names: a FIFO kernel and template do not block it', () => {
    const fifo = path.join(ws.dir, 'kernel.fifo');
    spawnSync('mkfifo', [fifo]);
    const s = ws.write('skip.json', { 'boot-source': { kernel_image_path: 'kernel.fifo', initrd_path: 'kernel.fifo' }, 'cpu-config': 'tpl.fifo' });
    const r = fcRun(['validate', '--skip-files', s], { timeout: 10_000 });
    expect(r.code).toBe(0);
  });
});

describe('keys, characters and numbers', () => {
  test.each(['__proto__', 'constructor', 'prototype'])('"%s" is an unknown key like any other, at any level', (key) => {
    const text = `{"boot-source": {"kernel_image_path": "vmlinux"}, "machine-config": {"vcpu_count": 1, "mem_size_mib": 128, "${key}": {"vcpu_count": 4}}}`;
    const r = fcRun(['validate', ws.write(`proto-${key}.json`, text)]);
    expect(r.code).toBe(2);
    expect(r.err).toContain(`error[unknown-property]: /machine-config/${key}`);
    const top = fcRun(['validate', ws.write(`proto-top-${key}.json`, `{"boot-source": {"kernel_image_path": "vmlinux"}, "${key}": {"machine-config": {"vcpu_count": 4, "mem_size_mib": 128}}}`)]);
    expect(top.code).toBe(2);
    expect(top.err).toContain(`/${key}`);
  });

  test('a NUL in boot_args or host_dev_name, and control characters in names and paths, are refused', () => {
    const cases: [Record<string, unknown>, string][] = [
      [spec({ 'boot-source': { kernel_image_path: 'vmlinux', boot_args: 'console=ttyS0\u0000 init=/bin/sh' } }), '/boot-source/boot_args'],
      [spec({ 'network-interfaces': [{ iface_id: 'eth0', host_dev_name: 'tap0\u0000x' }] }), '/network-interfaces/0/host_dev_name'],
      [spec({ drives: [{ drive_id: 'root\u001b[31m', path_on_host: 'rootfs.ext4', is_root_device: true, is_read_only: true }] }), '/drives/0/drive_id'],
      [spec({ logger: { log_path: 'vm\n.log' } }), '/logger/log_path'],
    ];
    cases.forEach(([s, at], i) => {
      const r = fcRun(['validate', ws.write(`ctl${i}.json`, s)]);
      expect(r.code).toBe(2);
      expect(r.err).toContain(`error[control-character]: ${at}`);
    });
    // MMDS contents are data for the guest: control characters are fine there.
    expect(fcRun(['validate', ws.write('ctl-mmds.json', spec({ mmds: { s: 'a\u0000b' } }))]).code).toBe(0);
  });

  test.each(['2.0', '6.4e1', '1e21', '1e300', '-0.0'])('vcpu_count %s is not a whole number in whole-number notation', (n) => {
    const r = fcRun(['validate', ws.write(`num-${n}.json`, `{"boot-source": {"kernel_image_path": "vmlinux"}, "machine-config": {"vcpu_count": ${n}, "mem_size_mib": 128}}`)]);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/error\[not-whole-number\]: \/machine-config\/vcpu_count/);
  });

  test('fractions stay allowed inside MMDS contents', () => {
    expect(fcRun(['validate', ws.write('frac.json', spec({ mmds: { ratio: 0.5, big: 1e300 } }))]).code).toBe(0);
  });
});

describe('outputs never overwrite inputs', () => {
  test('metrics_path on a drive image: refused, the image untouched', () => {
    const before = fs.readFileSync(path.join(ws.dir, 'rootfs.ext4'));
    const s = ws.write('clobber.json', spec({ drives: [{ drive_id: 'rootfs', path_on_host: 'rootfs.ext4', is_root_device: true, is_read_only: false }], metrics: { metrics_path: 'rootfs.ext4' } }));
    for (const args of [['validate', s], [s], ['plan', s]]) {
      const r = fcRun(args);
      expect(r.code).toBe(2);
      expect(r.err).toContain('error[output-overwrites]');
    }
    expect(fs.readFileSync(path.join(ws.dir, 'rootfs.ext4')).equals(before)).toBe(true);
  });

  test('log_path on the kernel through a hard link, and a flag output on the spec file itself', () => {
    fs.linkSync(path.join(ws.dir, 'vmlinux'), path.join(ws.dir, 'kernel-link'));
    const s = ws.write('link.json', spec({ logger: { log_path: 'kernel-link' } }));
    const r = fcRun(['validate', s]);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/logger\.log_path .* is also kernel_image_path/);
    const plain = ws.write('plain.json', spec());
    for (const flag of ['--log-path', '--metrics-path', '--serial-out']) {
      const f = fcRun([plain, flag, plain]);
      expect(f.code).toBe(2);
      expect(f.err).toContain(`${flag} (`);
    }
  });

  test('two outputs on one file are refused; /dev/null may take both', () => {
    const same = fcRun(['validate', ws.write('same.json', spec({ logger: { log_path: 'out.txt' }, metrics: { metrics_path: 'out.txt' } }))]);
    expect(same.code).toBe(2);
    expect(same.err).toContain('are the same file');
    expect(fcRun(['validate', ws.write('null.json', spec({ logger: { log_path: '/dev/null' }, metrics: { metrics_path: '/dev/null' } }))]).code).toBe(0);
  });
});

describe('sockets', () => {
  test("a vsock uds_path another process listens on is refused; the listener's socket survives", async () => {
    const sock = path.join(ws.dir, 'live.sock');
    const server = net.createServer().listen(sock);
    await new Promise((r) => server.once('listening', r));
    try {
      const s = ws.write('live.json', spec({ vsock: { guest_cid: 3, uds_path: 'live.sock' } }));
      const r = await new Promise<{ code: number | null; err: string }>((resolve) => {
        const child = spawn(process.execPath, [BIN, 'validate', s], { env: { ...process.env, NO_COLOR: '1' } });
        let err = '';
        child.stderr.on('data', (d) => (err += d));
        child.on('close', (code) => resolve({ code, err }));
      });
      expect(r.code).toBe(2);
      expect(r.err).toContain('error[socket-in-use]: /vsock/uds_path');
      expect(fs.statSync(sock).isSocket()).toBe(true);
    } finally {
      server.close();
    }
  });

  test('a regular file at uds_path is left alone, exit 2', () => {
    const keep = ws.write('keep.txt', 'precious');
    const r = fcRun(['validate', ws.write('file-sock.json', spec({ vsock: { guest_cid: 3, uds_path: 'keep.txt' } }))]);
    expect(r.code).toBe(2);
    expect(r.err).toContain('error[socket-path-taken]');
    expect(r.err).toContain('already exists and is a regular file, not a socket');
    expect(fs.readFileSync(keep, 'utf8')).toBe('precious');
  });
});

describe('command-line values', () => {
  let good: string;
  beforeAll(() => {
    good = ws.write('good.json', spec());
  });

  test.each([
    [['validate', '--mmds-size-limit', 'abc', 'x.json'], /--mmds-size-limit must be a whole number, got "abc"/],
    [['validate', '--mmds-size-limit', '-5', 'x.json'], /--mmds-size-limit must be a whole number, got "-5"/],
    [['validate', '--mmds-size-limit=1.5', 'x.json'], /--mmds-size-limit must be a whole number/],
    [['validate', '--mmds-size-limit', '99999999999', 'x.json'], /--mmds-size-limit must be between/],
    [['validate', '--skipfiles', 'x.json'], /unknown option --skipfiles \(did you mean --skip-files\?\)/],
    [['validate', '--skip-files=yes', 'x.json'], /--skip-files takes no value/],
    [['validate', '--json', '--json', 'x.json'], /--json is given more than once/],
    [['validate'], /missing at least one <spec> argument/],
    [['x.json', '--log-path'], /--log-path needs a value/],
    [['x.json', '--level', 'Verbose'], /--level must be one of Error, Warning, Info, Debug, Trace, Off/],
    [['x.json', '--id', 'my vm'], /--id may contain only letters, digits and "-"/],
    [['x.json', '--config-file', 'y.json'], /give the spec once/],
    [['--api-sock', '/tmp/x.sock'], /needs a spec/],
    [['x.json', '--enable-pci'], /--enable-pci is not supported by fc-run: fc-run has virtio-mmio devices only/],
    [['x.json', '--describe-snapshot', 's'], /--describe-snapshot only prints and exits: leave out the spec/],
    [['plan', 'a.json', 'b.json'], /unexpected argument "b.json"/],
    [['jail', 'x.json', '--id', 'vm1', '--uid', 'root', '--gid', '0'], /--uid must be a whole number/],
  ])('%j is a usage error (exit 1) that names the problem', (args, message) => {
    const r = fcRun(args as string[]);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(message as RegExp);
    expect(r.err).toMatch(/Run "fc-run .*--help" for usage/);
  });

  test("Firecracker's command line reads the spec from --config-file (an invalid one exits 2 before KVM is touched)", () => {
    const bad = ws.write('fc-bad.json', { 'boot-source': { kernel_image_path: 'vmlinux' }, 'machine-config': { vcpu_count: 64, mem_size_mib: 128 } });
    const r = fcRun(['--no-api', '--config-file', bad, '--boot-timer', '--level', 'debug', '--show-level', '--show-log-origin', '--id', 'vm-1', '--http-api-max-payload-size', '51200', '--mmds-size-limit', '51200', '--start-time-us', '12345']);
    expect(r.code).toBe(2);
    expect(r.err).toContain('error[range]: /machine-config/vcpu_count');
  });

  test("Firecracker's spellings: --level warn is Warning; the MMDS limit is --http-api-max-payload-size when --mmds-size-limit is not given", () => {
    // An empty kernel file keeps every run here from reaching KVM (exit 2 once the MMDS contents passed).
    fs.writeFileSync(path.join(ws.dir, 'empty-kernel'), '');
    const bad = ws.write('fc-bad-mmds.json', { 'boot-source': { kernel_image_path: 'empty-kernel' }, 'machine-config': { vcpu_count: 1, mem_size_mib: 128 } });
    const big = ws.write('big-metadata.json', { blob: 'x'.repeat(100_000) });
    const base = ['--no-api', '--config-file', bad, '--metadata', big];
    for (const level of ['warn', 'WARN', 'Warning']) {
      const r = fcRun([...base, '--http-api-max-payload-size', '200000', '--level', level]);
      expect(r.code).toBe(2);
      expect(r.err).toContain('error[kernel-image]');
      expect(r.err).not.toContain('mmds-too-large');
    }
    // Without either limit, 100 KB is over the 51200-byte default; --mmds-size-limit wins over the payload size.
    expect(fcRun(base).err).toContain('error[mmds-too-large]');
    expect(fcRun([...base, '--http-api-max-payload-size', '200000', '--mmds-size-limit', '51200']).err).toContain('error[mmds-too-large]');
  });

  test('control characters from a spec never reach the terminal raw: escape sequences, NUL and C1 are shown escaped', () => {
    const f = ws.write('esc-path.json', spec({ drives: [{ drive_id: 'rootfs', path_on_host: 'x\u001b]0;pwned\u0007\u001b[2J\u0000\u0085.img', is_root_device: true, is_read_only: true }] }));
    const r = fcRun(['validate', f]);
    expect(r.code).toBe(2);
    expect(r.err).toContain('error[control-character]');
    // eslint-disable-next-line no-control-regex
    expect(r.err).not.toMatch(/[\x00-\x08\x0b-\x1f\x7f-\x9f]/);
    expect(r.err).toContain('x\\x1b]0;pwned\\x07\\x1b[2J');
    // A file name found in a directory: its result line shows it escaped; a C1 control in an argument is refused.
    const dir = path.join(ws.dir, 'named');
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, 'a\u001b]0;PWNED\u0007.json'), JSON.stringify(spec()));
    // (Its kernel path is relative to another directory: FAIL or ok, the line names the file.)
    const listed = fcRun(['validate', dir]);
    // eslint-disable-next-line no-control-regex
    expect(listed.out + listed.err).not.toMatch(/[\x00-\x08\x0b-\x1f\x7f-\x9f]/);
    expect(listed.out).toContain('a\\x1b]0;PWNED\\x07.json');
    expect(fcRun(['plan', 'c\u009b2J.json']).err).toMatch(/contains a control character/);
  });

  test('--level takes its choices and Firecracker\'s "warn", not an object\'s own names', () => {
    for (const name of ['constructor', '__proto__', 'toString']) {
      const r = fcRun(['x.json', '--level', name]);
      expect(r.code).toBe(1);
      expect(r.err).toMatch(/--level must be one of Error, Warning, Info, Debug, Trace, Off/);
    }
  });

  test('--strict makes warnings errors; --json-lines prints one record per line', () => {
    const warn = ws.write('warn.json', spec({ mmds: { a: 1 } })); // MMDS contents without mmds-config: a warning
    expect(fcRun(['validate', warn]).code).toBe(0);
    const strict = fcRun(['validate', '--strict', warn]);
    expect(strict.code).toBe(2);
    expect(strict.err).toContain('error[mmds-unreachable]');
    const lines = fcRun(['validate', '--json-lines', warn, good]);
    expect(lines.code).toBe(0);
    const records = lines.out.trim().split('\n').map((l) => JSON.parse(l));
    expect(records).toEqual([
      expect.objectContaining({ type: 'issue', severity: 'warning', code: 'mmds-unreachable', file: warn }),
      expect.objectContaining({ type: 'result', file: warn, valid: true, warnings: 1 }),
      expect.objectContaining({ type: 'result', file: good, valid: true, warnings: 0 }),
      { type: 'summary', valid: true, specs: 2, ok: 2, invalid: 0, unreadable: 0, problems: 0, errors: 0, warnings: 1 },
    ]);
  });

  test('keys Firecracker ignores (a token bucket\'s, a CPU modifier\'s) pass with a warning through the built CLI, plan the same as without them, and fail --strict', () => {
    const bucket = { size: 1000, refill_time: 100 };
    const clean = spec({ 'network-interfaces': [{ iface_id: 'eth0', host_dev_name: 'tap0', rx_rate_limiter: { ops: bucket } }], 'cpu-config': { msr_modifiers: [{ addr: '0x10a', bitmap: '0b0' }] } });
    const extra = spec({ 'network-interfaces': [{ iface_id: 'eth0', host_dev_name: 'tap0', rx_rate_limiter: { ops: { ...bucket, unit: 'ops' } } }], 'cpu-config': { msr_modifiers: [{ addr: '0x10a', bitmap: '0b0', comment: 'arch caps' }] } });
    // One file name for both: the plan names its spec file.
    const hash = (s: object) => JSON.parse(fcRun(['plan', '--json', ws.write('fc-extra.json', s)]).out).hash;
    const cleanHash = hash(clean);
    expect(hash(extra)).toBe(cleanHash);
    const b = ws.write('fc-extra.json', extra);
    const r = fcRun(['validate', b]);
    expect(r.code).toBe(0);
    expect(r.err.match(/warning\[unknown-property-ignored\]/g)).toHaveLength(2);
    const strict = fcRun(['validate', '--strict', b]);
    expect(strict.code).toBe(2);
    expect(strict.err).toContain('error[unknown-property-ignored]: /cpu-config/msr_modifiers/0/comment');
  });

  test('paths are printed as the user gave them', () => {
    const r = spawnSync(process.execPath, [BIN, 'validate', path.basename(ws.write('rel.json', { 'boot-source': {} }))], { cwd: ws.dir, encoding: 'utf8', env: { ...process.env, NO_COLOR: '1' } });
    expect(r.status).toBe(2);
    expect(r.stdout).toContain('FAIL  rel.json');
    expect(r.stderr).toMatch(/^rel\.json:\d+:\d+: error\[required\]/m);
  });
});

describe('what the review found', () => {
  test('a spec of 300,000 drives is refused at once, with one line, not a million', () => {
    const file = ws.write('many.json', `{"boot-source": {"kernel_image_path": "vmlinux"}, "drives": [${Array(300_000).fill('{}').join(',')}]}`);
    const r = fcRun(['validate', '--skip-files', file]);
    expect(r.code).toBe(2);
    expect(r.err).toContain('error[too-many-items]: /drives: this list has 300000 entries; fc-run reads at most 1024');
    expect(r.err.split('\n').length).toBeLessThan(10);
  });

  test('at most 200 problems are listed per spec, then how many more', () => {
    const drives = Array.from({ length: 300 }, () => ({ drive_id: 'x', path_on_host: 'data.ext4', is_root_device: false, is_read_only: true, bogus: 1 }));
    const r = fcRun(['validate', '--skip-files', ws.write('capped.json', spec({ drives }))]);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/error\[more-issues\]: and \d+ more problems like these \(only the first 200 are shown\)/);
  });

  test('a log path that is a directory, or not writable, is refused by validate as run would', () => {
    fs.mkdirSync(path.join(ws.dir, 'logdir'), { recursive: true });
    const r = fcRun(['validate', ws.write('logdir.json', spec({ logger: { log_path: 'logdir' } }))]);
    expect(r.code).toBe(2);
    expect(r.err).toContain('error[output-not-file]: /logger/log_path');
  });

  test('C1 controls and line separators count as control characters; boot_args must be printable ASCII', () => {
    const c1 = fcRun(['validate', ws.write('c1.json', spec({ drives: [{ drive_id: 'a\u0085b', path_on_host: 'data.ext4', is_root_device: false, is_read_only: true }] }))]);
    expect(c1.code).toBe(2);
    expect(c1.err).toContain('error[control-character]: /drives/0/drive_id');
    const nbsp = fcRun(['validate', ws.write('nbsp.json', spec({ 'boot-source': { kernel_image_path: 'vmlinux', boot_args: 'console=ttyS0\u00a0init=/x' } }))]);
    expect(nbsp.code).toBe(2);
    expect(nbsp.err).toContain('error[boot-args-not-ascii]: /boot-source/boot_args');
  });

  test('a number beyond a double in the MMDS contents is refused rather than served as null', () => {
    const r = fcRun(['validate', ws.write('inf.json', `{"boot-source": {"kernel_image_path": "vmlinux"}, "mmds": {"a": 1e400}}`)]);
    expect(r.code).toBe(2);
    expect(r.err).toContain('error[number-too-large]: /mmds/a');
  });

  test('a writable drive may not be the spec, the kernel or a template: the guest would rewrite them', () => {
    const s = path.join(ws.dir, 'self.json');
    fs.writeFileSync(s, JSON.stringify(spec({ drives: [{ drive_id: 'd', path_on_host: 'self.json', is_root_device: false, is_read_only: false }] })));
    const r = fcRun(['validate', s]);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/error\[output-overwrites\]: \/drives\/0\/path_on_host: drive "d" .* is also the spec file/);
    const ro = path.join(ws.dir, 'self-ro.json');
    fs.writeFileSync(ro, JSON.stringify(spec({ drives: [{ drive_id: 'd', path_on_host: 'self-ro.json', is_root_device: false, is_read_only: true }] })));
    expect(fcRun(['validate', ro]).code).toBe(0);
  });

  test('help takes one command name', () => {
    const r = fcRun(['help', 'validate', 'extra']);
    expect(r.code).toBe(1);
    expect(r.err).toContain('unexpected argument "extra"');
  });
});
