import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DEFAULT_BOOT_ARGS } from '../../src/config/resolved';
import { MAX_MEM_SIZE_MIB } from '../../src/config/rules';
import { errorsOf, issuesOf, load, minimalSpec, Workspace } from '../helpers/specs';

let ws: Workspace;
beforeAll(() => (ws = new Workspace()));
afterAll(() => ws.remove());

const drive = (id: string, extra: Record<string, unknown> = {}) => ({ drive_id: id, path_on_host: 'rootfs.ext4', is_root_device: false, is_read_only: true, ...extra });
const iface = (id: string, tap: string, extra: Record<string, unknown> = {}) => ({ iface_id: id, host_dev_name: tap, ...extra });
const withSpec = (extra: Record<string, unknown>) => ({ ...minimalSpec(), ...extra });

describe('a valid spec', () => {
  test('gets defaults and absolute paths', () => {
    const { spec, warnings } = load(ws, withSpec({ drives: [drive('root', { is_root_device: true, is_read_only: false })] }));
    expect(warnings).toEqual([]);
    expect(spec.machine).toEqual({ vcpu_count: 1, mem_size_mib: 128, smt: false, cpu_template: 'None', track_dirty_pages: false, huge_pages: 'None' });
    expect(spec.bootSource.kernel_image_path).toBe(path.join(ws.dir, 'vmlinux'));
    expect(spec.drives[0]).toMatchObject({ path_on_host: path.join(ws.dir, 'rootfs.ext4'), cache_type: 'Unsafe', io_engine: 'Sync' });
  });

  test('without boot_args gets Firecracker\'s default command line', () => {
    const { spec } = load(ws, { 'boot-source': { kernel_image_path: 'vmlinux' } });
    expect(spec.bootSource).toMatchObject({ boot_args: DEFAULT_BOOT_ARGS, bootArgsDefaulted: true });
  });

  test('logger level is case-insensitive and accepts Warn', () => {
    expect(load(ws, withSpec({ logger: { level: 'warn' } })).spec.logger?.level).toBe('Warning');
    expect(load(ws, withSpec({ logger: { level: 'DEBUG' } })).spec.logger?.level).toBe('Debug');
  });

  test('relative paths resolve against the spec file, not the working directory', () => {
    ws.write('sub/k', fs.readFileSync(path.join(ws.dir, 'vmlinux')));
    const { spec } = load(ws, { 'boot-source': { kernel_image_path: 'k' } }, {}, 'sub/vm.json');
    expect(spec.bootSource.kernel_image_path).toBe(path.join(ws.dir, 'sub', 'k'));
  });
});

describe('semantic rules', () => {
  test('drive ids are unique', () => {
    expect(errorsOf(ws, withSpec({ drives: [drive('a'), drive('b'), drive('a')] }))).toEqual(['duplicate-id @ /drives/2/drive_id']);
  });

  test('at most one root device', () => {
    const spec = withSpec({ drives: [drive('a', { is_root_device: true }), drive('b', { is_root_device: true })] });
    expect(errorsOf(ws, spec)).toEqual(['multiple-root-devices @ /drives/1/is_root_device']);
  });

  test('vcpu_count must be within 1..32', () => {
    expect(errorsOf(ws, withSpec({ 'machine-config': { vcpu_count: 0, mem_size_mib: 128 } }))).toEqual(['range @ /machine-config/vcpu_count']);
    expect(errorsOf(ws, withSpec({ 'machine-config': { vcpu_count: 33, mem_size_mib: 128 } }))).toEqual(['range @ /machine-config/vcpu_count']);
    expect(load(ws, withSpec({ 'machine-config': { vcpu_count: 32, mem_size_mib: 128 } })).spec.machine.vcpu_count).toBe(32);
  });

  test('with smt, vcpu_count is 1 or even', () => {
    expect(errorsOf(ws, withSpec({ 'machine-config': { vcpu_count: 3, mem_size_mib: 128, smt: true } }))).toEqual(['smt-odd-vcpus @ /machine-config/vcpu_count']);
    expect(load(ws, withSpec({ 'machine-config': { vcpu_count: 1, mem_size_mib: 128, smt: true } })).spec.machine.smt).toBe(true);
  });

  test('memory must fit the layout', () => {
    expect(errorsOf(ws, withSpec({ 'machine-config': { vcpu_count: 1, mem_size_mib: MAX_MEM_SIZE_MIB + 1 } }))).toEqual(['memory-too-large @ /machine-config/mem_size_mib']);
    expect(errorsOf(ws, withSpec({ 'machine-config': { vcpu_count: 1, mem_size_mib: 0 } }))).toEqual(['range @ /machine-config/mem_size_mib']);
    expect(errorsOf(ws, withSpec({ 'machine-config': { vcpu_count: 1, mem_size_mib: 129, huge_pages: '2M' } }))).toEqual(['memory-not-huge-page-aligned @ /machine-config/mem_size_mib']);
  });

  test('TAP names are at most 15 bytes and valid interface names', () => {
    expect(errorsOf(ws, withSpec({ 'network-interfaces': [iface('eth0', 'tap-0123456789ab')] }))).toEqual(['tap-name @ /network-interfaces/0/host_dev_name']);
    // 8 characters but 16 bytes in UTF-8: the limit is in bytes.
    expect(errorsOf(ws, withSpec({ 'network-interfaces': [iface('eth0', 'tapéééééééé')] }))).toEqual(['tap-name @ /network-interfaces/0/host_dev_name']);
    expect(errorsOf(ws, withSpec({ 'network-interfaces': [iface('eth0', 'tap/0')] }))).toEqual(['tap-name @ /network-interfaces/0/host_dev_name']);
    expect(load(ws, withSpec({ 'network-interfaces': [iface('eth0', 'tap-0123456789a')] })).spec.networkInterfaces).toHaveLength(1);
  });

  test('interface ids, TAP devices and MACs are unique', () => {
    const spec = withSpec({
      'network-interfaces': [iface('eth0', 'tap0', { guest_mac: '06:00:00:00:00:01' }), iface('eth0', 'tap0', { guest_mac: '06:00:00:00:00:01' })],
    });
    expect(errorsOf(ws, spec)).toEqual([
      'duplicate-id @ /network-interfaces/1/iface_id',
      'duplicate-tap @ /network-interfaces/1/host_dev_name',
      'duplicate-mac @ /network-interfaces/1/guest_mac',
    ]);
  });

  test('MAC syntax is checked, and a multicast MAC is warned about', () => {
    expect(errorsOf(ws, withSpec({ 'network-interfaces': [iface('eth0', 'tap0', { guest_mac: '06:00:00:00:00' })] }))).toEqual(['format @ /network-interfaces/0/guest_mac']);
    const { warnings } = load(ws, withSpec({ 'network-interfaces': [iface('eth0', 'tap0', { guest_mac: '01:00:5e:00:00:01' })] }));
    expect(warnings.map((w) => w.code)).toEqual(['multicast-mac']);
  });

  test('guest_cid is at least 3', () => {
    expect(errorsOf(ws, withSpec({ vsock: { guest_cid: 2, uds_path: 'v.sock' } }))).toEqual(['range @ /vsock/guest_cid']);
    expect(load(ws, withSpec({ vsock: { guest_cid: 3, uds_path: 'v.sock' } })).spec.vsock).toEqual({ guest_cid: 3, uds_path: path.join(ws.dir, 'v.sock') });
  });

  test('vsock uds_path fits a Unix socket address', () => {
    expect(errorsOf(ws, withSpec({ vsock: { guest_cid: 3, uds_path: '/tmp/' + 'x'.repeat(110) } }))).toEqual(['uds-path-too-long @ /vsock/uds_path']);
  });

  test('MMDS interfaces must exist', () => {
    const spec = withSpec({ 'network-interfaces': [iface('eth0', 'tap0')], 'mmds-config': { network_interfaces: ['eth1'] } });
    const issues = issuesOf(ws, spec);
    expect(issues.map((i) => `${i.code} ${i.hint}`)).toEqual(['unknown-interface did you mean "eth0"?']);
    expect(errorsOf(ws, withSpec({ 'mmds-config': { network_interfaces: [] } }))).toEqual(['length @ /mmds-config/network_interfaces']);
  });

  test('MMDS address must be link-local', () => {
    const spec = withSpec({ 'network-interfaces': [iface('eth0', 'tap0')], 'mmds-config': { network_interfaces: ['eth0'], ipv4_address: '10.0.0.1' } });
    expect(errorsOf(ws, spec)).toEqual(['format @ /mmds-config/ipv4_address']);
  });

  test('rate limiter buckets need size > 0 and refill_time > 0', () => {
    const spec = withSpec({
      drives: [drive('a', { rate_limiter: { bandwidth: { size: 0, refill_time: 100 } } })],
      'network-interfaces': [iface('eth0', 'tap0', { tx_rate_limiter: { ops: { size: 10, refill_time: 0 } } })],
      entropy: { rate_limiter: { ops: { size: 0, refill_time: 0, one_time_burst: 10 } } },
    });
    expect(errorsOf(ws, spec)).toEqual([
      'empty-bucket @ /drives/0/rate_limiter/bandwidth/size',
      'empty-bucket @ /network-interfaces/0/tx_rate_limiter/ops/refill_time',
      'empty-bucket @ /entropy/rate_limiter/ops/size',
      'empty-bucket @ /entropy/rate_limiter/ops/refill_time',
    ]);
    expect(errorsOf(ws, withSpec({ entropy: { rate_limiter: { bandwidth: { size: 100 } } } }))).toEqual(['required @ /entropy/rate_limiter/bandwidth/refill_time']);
  });

  test('referenced files must exist, unless --skip-files', () => {
    const spec = { 'boot-source': { kernel_image_path: 'nope', initrd_path: 'nope.img' }, drives: [drive('a', { path_on_host: 'nope.ext4' })] };
    expect(errorsOf(ws, spec)).toEqual([
      'file-missing @ /boot-source/kernel_image_path',
      'file-missing @ /boot-source/initrd_path',
      'file-missing @ /drives/0/path_on_host',
    ]);
    expect(load(ws, spec, { skipFiles: true }).spec.drives).toHaveLength(1);
  });

  test('a directory is not a kernel', () => {
    ws.write('adir/x', 'x');
    expect(errorsOf(ws, { 'boot-source': { kernel_image_path: 'adir' } })).toEqual(['file-not-regular @ /boot-source/kernel_image_path']);
  });

  test('virtio-blk drives need path_on_host; without is_read_only they are writable, with a warning (as Firecracker takes them); vhost-user drives must not have them', () => {
    expect(errorsOf(ws, withSpec({ drives: [{ drive_id: 'a', is_root_device: false }] }))).toEqual(['required @ /drives/0/path_on_host']);
    ws.write('disk.img', Buffer.alloc(4096));
    const { spec, warnings } = load(ws, withSpec({ drives: [{ drive_id: 'a', is_root_device: false, path_on_host: 'disk.img' }] }));
    expect(spec.drives[0].is_read_only).toBe(false);
    expect(warnings.map((w) => `${w.code} @ /${w.path.join('/')}`)).toEqual(['read-only-unset @ /drives/0/is_read_only']);
    // Writable, so its file must be writable too: an immutable file (chattr +i, which even root
    // cannot write) is refused as it is with "is_read_only": false.
    const imm = ws.write('immutable.img', Buffer.alloc(4096));
    if (spawnSync('chattr', ['+i', imm]).status === 0) {
      try {
        for (const ro of [undefined, false]) {
          expect(errorsOf(ws, withSpec({ drives: [{ drive_id: 'a', is_root_device: false, path_on_host: 'immutable.img', ...(ro === undefined ? {} : { is_read_only: ro }) }] }))).toEqual(['file-permission @ /drives/0/path_on_host']);
        }
      } finally {
        spawnSync('chattr', ['-i', imm]);
      }
    } else console.warn('SKIPPED: chattr +i is not supported here');
    expect(errorsOf(ws, withSpec({ drives: [drive('a', { socket: '/run/vu.sock' })] }))).toEqual(['vhost-user-conflict @ /drives/0/path_on_host', 'vhost-user-conflict @ /drives/0/is_read_only']);
  });

  test('"mmds": null is absent, as null is for every section; nulls inside the contents are data', () => {
    expect(load(ws, withSpec({ mmds: null })).spec.mmds).toBeUndefined();
    expect(load(ws, withSpec({ mmds: { a: null, b: [null] } })).spec.mmds?.data).toEqual({ a: null, b: [null] });
  });

  test('MMDS contents: from the spec or --metadata, not both, and within the size limit', () => {
    const meta = ws.write('meta.json', { latest: { 'meta-data': { id: 'i-1' } } });
    const withMmds = withSpec({ mmds: { a: 1 } });
    expect(errorsOf(ws, withMmds, { metadataFile: meta })).toEqual(['mmds-conflict @ /mmds']);
    expect(load(ws, minimalSpec(), { metadataFile: meta }).spec.mmds?.data).toEqual({ latest: { 'meta-data': { id: 'i-1' } } });
    expect(errorsOf(ws, withSpec({ mmds: { blob: 'x'.repeat(100) } }), { mmdsSizeLimit: 50 })).toEqual(['mmds-too-large @ /mmds']);
    const bad = ws.write('bad-meta.json', '[1, 2');
    const issues = issuesOf(ws, minimalSpec(), { metadataFile: bad });
    expect(issues[0]).toMatchObject({ code: 'json-syntax', file: bad, line: 1 });
  });

  test('MMDS contents without mmds-config are reachable by nobody: a warning', () => {
    expect(load(ws, withSpec({ mmds: { a: 1 } })).warnings.map((w) => w.code)).toEqual(['mmds-unreachable']);
  });

  test('custom CPU template numbers and bitmaps are checked', () => {
    const spec = withSpec({
      'cpu-config': {
        cpuid_modifiers: [{ leaf: '0x100000000', subleaf: '0', flags: 0, modifiers: [{ register: 'ecx', bitmap: '0b' + '1'.repeat(33) }] }],
        msr_modifiers: [{ addr: '0x10a', bitmap: '0b' + 'x'.repeat(64) }],
      },
    });
    expect(errorsOf(ws, spec)).toEqual(['register-number @ /cpu-config/cpuid_modifiers/0/leaf', 'bitmap @ /cpu-config/cpuid_modifiers/0/modifiers/0/bitmap']);
  });

  test('a CPU template file is validated with positions in that file', () => {
    ws.write('tpl.json', '{\n  "msr_modifiers": [{ "addr": "0x10a", "bitmap": "0b2" }]\n}\n');
    const issues = issuesOf(ws, withSpec({ 'cpu-config': 'tpl.json' }));
    expect(issues).toEqual([expect.objectContaining({ code: 'format', file: path.join(ws.dir, 'tpl.json'), line: 2, path: ['msr_modifiers', 0, 'bitmap'] })]);
    ws.write('tpl-ok.json', { cpuid_modifiers: [{ leaf: '0x1', subleaf: '0x0', flags: 0, modifiers: [{ register: 'ecx', bitmap: '0bxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx0' }] }] });
    const { spec } = load(ws, withSpec({ 'cpu-config': 'tpl-ok.json' }));
    expect(spec.cpuConfig?.cpuid).toEqual([{ leaf: 1, subleaf: 0, flags: 0, register: 'ecx', filter: { mask: '0x00000001', value: '0x00000000' } }]);
  });

  test('where Firecracker ignores unknown keys (token buckets, metrics, CPUID and MSR modifiers), fc-run warns and drops them', () => {
    ws.write('m.jsonl', '');
    const bucket = { size: 100, refill_time: 10, comment: 'burst for boot' };
    const spec = withSpec({
      drives: [drive('a', { rate_limiter: { bandwidth: bucket, ops: { ...bucket, refil_time: 5 } } })],
      metrics: { metrics_path: 'm.jsonl', flush_interval: 5 },
      'cpu-config': {
        cpuid_modifiers: [{ leaf: '0x1', subleaf: '0x0', flags: 0, note: 'x', modifiers: [{ register: 'ecx', bitmap: '0bx0', why: 'y' }] }],
        msr_modifiers: [{ addr: '0x10a', bitmap: '0b0', owner: 'z' }],
      },
    });
    const { spec: resolved, warnings } = load(ws, spec);
    expect(warnings.map((w) => `${w.code} @ ${w.path.join('/')}`)).toEqual([
      'unknown-property-ignored @ drives/0/rate_limiter/bandwidth/comment',
      'unknown-property-ignored @ drives/0/rate_limiter/ops/comment',
      'unknown-property-ignored @ drives/0/rate_limiter/ops/refil_time',
      'unknown-property-ignored @ metrics/flush_interval',
      'unknown-property-ignored @ cpu-config/cpuid_modifiers/0/note',
      'unknown-property-ignored @ cpu-config/cpuid_modifiers/0/modifiers/0/why',
      'unknown-property-ignored @ cpu-config/msr_modifiers/0/owner',
    ]);
    const typo = warnings.find((w) => w.path.includes('refil_time'))!;
    expect(typo).toMatchObject({ severity: 'warning', message: 'unknown property "refil_time" is ignored (as Firecracker ignores it)', hint: 'did you mean "refill_time"?' });
    // Located at the key, as an unknown property is.
    expect(typo.line).toBe(JSON.stringify(spec, null, 2).split('\n').findIndex((l) => l.includes('"refil_time"')) + 1);
    // Dropped: nothing of them reaches the resolved spec.
    expect(resolved.drives[0].rate_limiter).toEqual({ bandwidth: { size: 100, refill_time: 10 }, ops: { size: 100, refill_time: 10 } });
    expect(Object.keys(resolved.metrics!)).not.toContain('flush_interval');
    expect(JSON.stringify(resolved.cpuConfig)).not.toMatch(/note|why|owner/);
    // The objects around them keep refusing unknown keys, as Firecracker's deny_unknown_fields does.
    expect(errorsOf(ws, withSpec({ drives: [drive('a', { rate_limiter: { bandwidth: { size: 1, refill_time: 1 }, burst: 1 } })] }))).toEqual(['unknown-property @ /drives/0/rate_limiter/burst']);
    expect(errorsOf(ws, withSpec({ 'cpu-config': { cpuid_modifiers: [], extra: 1 } }))).toEqual(['unknown-property @ /cpu-config/extra']);
    // A misspelt required key is still an error: the required one is missing.
    expect(errorsOf(ws, withSpec({ metrics: { metrics_pth: 'm.jsonl' } }))).toEqual(['required @ /metrics/metrics_path']);
  });

  test('a null is "absent" for a key the schema knows; an unknown key given as null is still unknown (serde refuses it)', () => {
    const spec = withSpec({
      'machine-config': { vcpu_count: 1, mem_size_mib: 128, vcpu_cnt: null, cpu_template: null },
      machine_config: null,
      drives: [drive('a', { partuuid: null, rate_limiter: { ops: { size: 1, refill_time: 1, one_time_burst: null, note: null } } })],
      metrics: null,
    });
    const issues = issuesOf(ws, spec);
    expect(issues.map((i) => `${i.severity} ${i.code} @ ${i.path.join('/')}`)).toEqual([
      'error unknown-property @ machine-config/vcpu_cnt',
      'error unknown-section @ machine_config',
      'warning unknown-property-ignored @ drives/0/rate_limiter/ops/note',
    ]);
    expect(issues[0].hint).toBe('did you mean "vcpu_count"?');
    // Members given as null count toward the size guard: thousands of null keys are refused at once,
    // not each checked and located (that took a minute for 75,000).
    const many = Object.fromEntries(Array.from({ length: 5000 }, (_, i) => [`k${i}`, null]));
    expect(errorsOf(ws, withSpec({ metrics: { metrics_path: 'm', ...many } }))).toEqual(['too-many-items @ /metrics']);
    expect(errorsOf(ws, withSpec(many))).toEqual(['too-many-items @ /']);
    // Known keys set to null, and nothing else: valid, as before.
    expect(load(ws, withSpec({ 'machine-config': { vcpu_count: 1, mem_size_mib: 128, cpu_template: null }, metrics: null })).warnings).toEqual([]);
  });

  test('null inside a CPU template is refused, inline as in a file (serde refuses it there); "cpu-config": null is absent', () => {
    ws.write('tpl-null.json', { cpuid_modifiers: null });
    expect(errorsOf(ws, withSpec({ 'cpu-config': { cpuid_modifiers: null, msr_modifiers: [{ addr: '0x10a', bitmap: null }] } }))).toEqual([
      'type @ /cpu-config/cpuid_modifiers',
      'type @ /cpu-config/msr_modifiers/0/bitmap',
    ]);
    expect(issuesOf(ws, withSpec({ 'cpu-config': 'tpl-null.json' })).map((i) => `${i.code} @ ${i.path.join('/')}`)).toEqual(['type @ cpuid_modifiers']);
    expect(load(ws, withSpec({ 'cpu-config': null })).spec.cpuConfig).toBeUndefined();
  });

  test('a CPU template file may carry keys Firecracker ignores: warnings located in that file', () => {
    ws.write('tpl-extra.json', '{\n  "msr_modifiers": [{ "addr": "0x10a", "bitmap": "0b0",\n    "comment": "x" }]\n}\n');
    const { spec, warnings } = load(ws, withSpec({ 'cpu-config': 'tpl-extra.json' }));
    expect(warnings).toEqual([expect.objectContaining({ code: 'unknown-property-ignored', severity: 'warning', file: path.join(ws.dir, 'tpl-extra.json'), line: 3, column: 5 })]);
    expect(JSON.stringify(spec.cpuConfig)).not.toContain('comment');
  });

  test('partuuid on a non-root drive is warned about', () => {
    expect(load(ws, withSpec({ drives: [drive('a', { partuuid: 'abcd-01' })] })).warnings.map((w) => w.code)).toEqual(['partuuid-ignored']);
  });

  test('two writable drives on one file are warned about', () => {
    const spec = withSpec({ drives: [drive('a', { is_read_only: false }), drive('b', { is_read_only: false })] });
    expect(load(ws, spec).warnings.map((w) => w.code)).toEqual(['shared-writable-file']);
  });
});
