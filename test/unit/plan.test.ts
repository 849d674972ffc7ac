import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { canonicalJson, compilePlan, PlanError, planSpec } from '../../src/boot';
import { inspectKernelFile } from '../../src/boot/kernel-image';
import { SpecInvalidError } from '../../src/config/issues';
import { buildBzImage, tinyPvh } from '../helpers/images';
import { load, minimalSpec, Workspace } from '../helpers/specs';

let ws: Workspace;
beforeAll(() => {
  ws = new Workspace();
  ws.write('bzImage', buildBzImage({ initSize: 0x1000000, initrdAddrMax: 0x37ffffff }));
  ws.write('pvh.elf', tinyPvh());
});
afterAll(() => ws.remove());

const GiB = 1024 * 1024 * 1024;
const plan = (spec: unknown) => planSpec(load(ws, spec));
const withSpec = (extra: Record<string, unknown>) => ({ ...minimalSpec(), ...extra });
const drive = (id: string, extra: Record<string, unknown> = {}) => ({ drive_id: id, path_on_host: 'data.ext4', is_root_device: false, is_read_only: true, ...extra });
const planErrors = (spec: unknown): string[] => {
  try {
    plan(spec);
  } catch (err) {
    if (err instanceof SpecInvalidError) return err.issues.filter((i) => i.severity === 'error').map((i) => `${i.code} @ /${i.path.join('/')}`);
    throw err;
  }
  throw new Error('expected the plan to be refused');
};

/** The full example of a spec: every device kind, limits, MMDS, observability, > 3 GiB of memory. */
function fullSpec(): Record<string, unknown> {
  return {
    'boot-source': { kernel_image_path: 'vmlinux', initrd_path: 'initrd.img', boot_args: 'console=ttyS0 reboot=k panic=1' },
    'machine-config': { vcpu_count: 4, mem_size_mib: 4096, smt: true },
    'cpu-config': { cpuid_modifiers: [{ leaf: '0x1', subleaf: '0x0', flags: 0, modifiers: [{ register: 'ecx', bitmap: '0bxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx0x' }] }] },
    drives: [
      { drive_id: 'data', path_on_host: 'data.ext4', is_root_device: false, is_read_only: true, rate_limiter: { bandwidth: { size: 1048576, refill_time: 100 }, ops: { size: 100, one_time_burst: 1000, refill_time: 1000 } } },
      { drive_id: 'rootfs', path_on_host: 'rootfs.ext4', is_root_device: true, is_read_only: false, partuuid: '0eaa91a0-01', cache_type: 'Writeback' },
    ],
    'network-interfaces': [
      { iface_id: 'eth0', host_dev_name: 'tap0', guest_mac: '06:00:AC:10:00:02', mtu: 1500, rx_rate_limiter: { bandwidth: { size: 10000000, refill_time: 1000 } } },
      { iface_id: 'eth1', host_dev_name: 'tap1' },
    ],
    vsock: { guest_cid: 3, uds_path: 'vm.vsock' },
    'mmds-config': { version: 'V2', network_interfaces: ['eth0'] },
    mmds: { latest: { 'meta-data': { 'instance-id': 'i-1' } } },
    logger: { log_path: 'vm.log', level: 'Debug' },
    metrics: { metrics_path: 'vm.metrics' },
    entropy: {},
  };
}

describe('memory layout', () => {
  test('small guests get one RAM region; e820 reserves the EBDA and BIOS area', () => {
    const { plan: p } = plan(minimalSpec());
    expect(p.memory.regions).toEqual([{ start: 0, size: 128 << 20 }]);
    expect(p.memory.e820).toEqual([
      { start: 0, size: 0x9fc00, type: 'ram' },
      { start: 0x9fc00, size: 0x100000 - 0x9fc00, type: 'reserved' },
      { start: 0x100000, size: (128 << 20) - 0x100000, type: 'ram' },
    ]);
  });

  test('memory above 3 GiB continues at 4 GiB, past the MMIO gap', () => {
    const { plan: p } = plan(withSpec({ 'machine-config': { vcpu_count: 1, mem_size_mib: 5 * 1024 } }));
    expect(p.memory.regions).toEqual([{ start: 0, size: 3 * GiB }, { start: 4 * GiB, size: 2 * GiB }]);
    expect(p.memory.e820.at(-1)).toEqual({ start: 4 * GiB, size: 2 * GiB, type: 'ram' });
    expect(p.memory.mmioGap).toEqual({ start: 3 * GiB, size: GiB });
  });

  test('exactly 3 GiB fills the low region and adds no high one', () => {
    expect(plan(withSpec({ 'machine-config': { vcpu_count: 1, mem_size_mib: 3072 } })).plan.memory.regions).toEqual([{ start: 0, size: 3 * GiB }]);
  });

  test('a kernel that does not fit in memory is refused with the size needed', () => {
    const spec = withSpec({ 'machine-config': { vcpu_count: 1, mem_size_mib: 16 } });
    expect(planErrors(spec)).toEqual(['kernel-does-not-fit @ /machine-config/mem_size_mib']);
  });

  test('the MP table grows with the vCPU count and stays inside the reserved KiB', () => {
    const p = plan(withSpec({ 'machine-config': { vcpu_count: 32, mem_size_mib: 128 } })).plan;
    expect(p.boot.mptable.start).toBe(0x9fc00);
    expect(p.boot.mptable.start + p.boot.mptable.size).toBeLessThanOrEqual(0xa0000);
  });
});

describe('kernel and initrd placement', () => {
  test('an ELF vmlinux enters in long mode at its ELF entry', () => {
    expect(plan(minimalSpec()).plan.kernel).toMatchObject({ format: 'elf', entry: 0x1000000, entryMode: 'long64', end: 0x1010000 });
  });

  test('a PVH kernel enters in 32-bit mode at the note entry', () => {
    expect(plan({ 'boot-source': { kernel_image_path: 'pvh.elf' } }).plan.kernel).toMatchObject({ format: 'pvh', entry: 0x1000040, entryMode: 'pvh32' });
  });

  test('the initrd goes page-aligned at the top of low memory', () => {
    const p = plan(withSpec({ 'boot-source': { kernel_image_path: 'vmlinux', initrd_path: 'initrd.img' } })).plan;
    expect(p.initrd).toEqual({ path: path.join(ws.dir, 'initrd.img'), size: 65536, guestAddr: (128 << 20) - 65536 });
  });

  test("a bzImage's initrd stays below initrd_addr_max", () => {
    const p = plan({ 'boot-source': { kernel_image_path: 'bzImage', initrd_path: 'initrd.img' }, 'machine-config': { vcpu_count: 1, mem_size_mib: 2048 } }).plan;
    expect(p.kernel).toMatchObject({ format: 'bzimage', entry: 0x1000200, end: 0x2000000 });
    expect(p.initrd!.guestAddr + p.initrd!.size).toBeLessThanOrEqual(0x38000000);
    expect(p.initrd!.guestAddr % 4096).toBe(0);
  });

  test("a bzImage's decompression area counts: too little memory is refused at plan time, not a triple fault", () => {
    ws.write('big-bzImage', buildBzImage({ initSize: 0x11f8000 }));
    const spec = { 'boot-source': { kernel_image_path: 'big-bzImage' }, 'machine-config': { vcpu_count: 1, mem_size_mib: 24 } };
    expect(planErrors(spec)).toEqual(['kernel-does-not-fit @ /machine-config/mem_size_mib']);
  });

  test('an initrd is never placed inside the area the bzImage decompresses into', () => {
    ws.write('initrd-35m.img', Buffer.alloc(35 << 20));
    const spec = { 'boot-source': { kernel_image_path: 'bzImage', initrd_path: 'initrd-35m.img' }, 'machine-config': { vcpu_count: 1, mem_size_mib: 64 } };
    expect(planErrors(spec)).toEqual(['initrd-does-not-fit @ /boot-source/initrd_path']);
  });

  test('an initrd that does not fit is refused', () => {
    ws.write('big-initrd.img', Buffer.alloc(9 << 20));
    const spec = { 'boot-source': { kernel_image_path: 'vmlinux', initrd_path: 'big-initrd.img' }, 'machine-config': { vcpu_count: 1, mem_size_mib: 24 } };
    expect(planErrors(spec)).toEqual(['initrd-does-not-fit @ /boot-source/initrd_path']);
  });

  test('a file that is no kernel is refused at plan time, located at kernel_image_path', () => {
    ws.write('notakernel', 'hello');
    expect(planErrors({ 'boot-source': { kernel_image_path: 'notakernel' } })).toEqual(['kernel-image @ /boot-source/kernel_image_path']);
  });
});

describe('devices and the command line', () => {
  test('the root drive comes first (vda), then drives, net, vsock, entropy; windows and IRQs in order', () => {
    const p = plan(fullSpec()).plan;
    expect(p.devices.map((d) => [d.kind, d.id, d.mmio.start, d.irq])).toEqual([
      ['block', 'rootfs', 0xc0001000, 5],
      ['block', 'data', 0xc0002000, 6],
      ['net', 'eth0', 0xc0003000, 7],
      ['net', 'eth1', 0xc0004000, 8],
      ['vsock', 'vsock', 0xc0005000, 9],
      ['entropy', 'rng', 0xc0006000, 10],
    ]);
    expect(p.cmdline).toBe(
      'console=ttyS0 reboot=k panic=1 root=PARTUUID=0eaa91a0-01 rw ' +
        'virtio_mmio.device=4K@0xc0001000:5 virtio_mmio.device=4K@0xc0002000:6 virtio_mmio.device=4K@0xc0003000:7 ' +
        'virtio_mmio.device=4K@0xc0004000:8 virtio_mmio.device=4K@0xc0005000:9 virtio_mmio.device=4K@0xc0006000:10',
    );
  });

  test('a read-only root without partuuid is root=/dev/vda ro', () => {
    const p = plan(withSpec({ drives: [drive('r', { is_root_device: true })] })).plan;
    expect(p.cmdline).toBe('console=ttyS0 reboot=k panic=1 root=/dev/vda ro virtio_mmio.device=4K@0xc0001000:5');
  });

  test('root= in boot_args with a root drive is warned about', () => {
    const planned = plan({ 'boot-source': { kernel_image_path: 'vmlinux', boot_args: 'root=/dev/sda' }, drives: [drive('r', { is_root_device: true })] });
    expect(planned.allWarnings.map((w) => w.code)).toEqual(['root-overridden']);
  });

  test('rate limiters are carried per device with defaults filled in', () => {
    const p = plan(fullSpec()).plan;
    const data = p.devices.find((d) => d.id === 'data');
    expect(data).toMatchObject({ rateLimiter: { bandwidth: { size: 1048576, one_time_burst: 0, refill_time_ms: 100 }, ops: { size: 100, one_time_burst: 1000, refill_time_ms: 1000 } } });
    const eth0 = p.devices.find((d) => d.id === 'eth0');
    expect(eth0).toMatchObject({ mmds: true, guestMac: '06:00:ac:10:00:02', rxRateLimiter: { bandwidth: { size: 10000000, refill_time_ms: 1000 } } });
    expect(eth0 && 'txRateLimiter' in eth0 ? eth0.txRateLimiter : undefined).toBeUndefined();
  });

  test('a command line longer than the kernel accepts is refused', () => {
    expect(planErrors({ 'boot-source': { kernel_image_path: 'vmlinux', boot_args: 'x'.repeat(2040) }, drives: [drive('a')] })).toEqual(['cmdline-too-long @ /boot-source/boot_args']);
  });

  test('more virtio devices than legacy IRQs is refused', () => {
    const drives = Array.from({ length: 20 }, (_, i) => drive(`d${i}`));
    expect(planErrors(withSpec({ drives }))).toEqual(['too-many-devices @ /']);
    expect(plan(withSpec({ drives: drives.slice(0, 19) })).plan.devices.at(-1)?.irq).toBe(23);
  });
});

describe('features fc-run does not run yet are refused at plan time, never ignored', () => {
  test.each([
    ['balloon', { balloon: { amount_mib: 0, deflate_on_oom: false } }, 'not-supported @ /balloon'],
    ['pmem', { pmem: [{ id: 'p', path_on_host: 'data.ext4' }] }, 'not-supported @ /pmem'],
    ['memory hot-plug', { 'memory-hotplug': { total_size_mib: 1024 } }, 'not-supported @ /memory-hotplug'],
    ['huge pages', { 'machine-config': { vcpu_count: 1, mem_size_mib: 128, huge_pages: '2M' } }, 'not-supported @ /machine-config/huge_pages'],
    ['an aarch64 template', { 'machine-config': { vcpu_count: 1, mem_size_mib: 128, cpu_template: 'V1N1' } }, 'wrong-architecture @ /machine-config/cpu_template'],
    ['vhost-user', { drives: [{ drive_id: 'v', is_root_device: false, socket: '/run/vhost.sock' }] }, 'not-supported @ /drives/0/socket'],
    ['the Async io engine', { drives: [drive('a', { io_engine: 'Async' })] }, 'not-supported @ /drives/0/io_engine'],
    ['KVM capability edits', { 'cpu-config': { kvm_capabilities: ['!121'] } }, 'not-supported @ /cpu-config'],
  ])('%s', (_name, extra, expected) => {
    expect(planErrors(withSpec(extra))).toEqual([expected]);
  });

  test('the refusal message says "not supported by fc-run yet"', () => {
    try {
      plan(withSpec({ balloon: { amount_mib: 0, deflate_on_oom: false } }));
    } catch (err) {
      expect((err as SpecInvalidError).issues[0].message).toBe('the balloon device is not supported by fc-run yet');
      return;
    }
    throw new Error('expected a refusal');
  });
});

describe('determinism', () => {
  test('the same spec gives a byte-identical plan and the same hash', () => {
    const a = plan(fullSpec());
    const b = plan(fullSpec());
    expect(canonicalJson(a.plan)).toBe(canonicalJson(b.plan));
    expect(a.hash).toBe(b.hash);
    expect(a.hash).toMatch(/^[0-9a-f]{64}$/);
  });

  test('key order and whitespace in the spec file do not change the plan', () => {
    const spec = fullSpec();
    const reordered = Object.fromEntries(Object.entries(spec).reverse());
    const a = planSpec(load(ws, JSON.stringify(spec)));
    const b = planSpec(load(ws, JSON.stringify(reordered, null, 8)));
    expect(b.hash).toBe(a.hash);
  });

  test('any change in the spec changes the hash', () => {
    const a = plan(fullSpec()).hash;
    const spec = fullSpec();
    (spec['machine-config'] as { vcpu_count: number }).vcpu_count = 2;
    expect(plan(spec).hash).not.toBe(a);
  });

  test('compilePlan is pure: it does not mutate its inputs', () => {
    const loaded = load(ws, fullSpec());
    const kernel = inspectKernelFile(loaded.spec.bootSource.kernel_image_path);
    const before = JSON.stringify([loaded.spec, kernel]);
    compilePlan(loaded.spec, kernel, { size: 65536 });
    expect(JSON.stringify([loaded.spec, kernel])).toBe(before);
  });

  test('PlanError lists every problem at once', () => {
    const loaded = load(ws, withSpec({ balloon: { amount_mib: 1, deflate_on_oom: true }, pmem: [{ id: 'p', path_on_host: 'x' }] }), { skipFiles: true });
    const kernel = inspectKernelFile(loaded.spec.bootSource.kernel_image_path);
    expect(() => compilePlan(loaded.spec, kernel)).toThrow(PlanError);
    try {
      compilePlan(loaded.spec, kernel);
    } catch (err) {
      expect((err as PlanError).issues.map((i) => i.path[0])).toEqual(['balloon', 'pmem']);
    }
  });
});

describe('golden plans', () => {
  const goldenDir = path.join(__dirname, '..', 'golden');
  test.each([
    ['minimal', () => minimalSpec()],
    ['full', () => fullSpec()],
  ])('%s', (name, make) => {
    const planned = plan(make());
    const text = JSON.stringify(JSON.parse(canonicalJson(planned.plan)), null, 2).split(ws.dir).join('<workspace>') + '\n';
    const file = path.join(goldenDir, `${name}.plan.json`);
    if (process.env.UPDATE_GOLDEN === '1') fs.writeFileSync(file, text);
    expect(text).toBe(fs.readFileSync(file, 'utf8'));
  });
});

describe('hostile kernel and initrd files are refused at plan time, located in the spec', () => {
  // skipFiles leaves the validator's stat() checks out, so these reach the loader's own checks
  // (which also guard the window between validation and planning).
  const planErrorsRaw = (spec: unknown): { at: string; message: string; hint?: string }[] => {
    try {
      planSpec(load(ws, spec, { skipFiles: true }));
    } catch (err) {
      if (err instanceof SpecInvalidError) return err.issues.filter((i) => i.severity === 'error').map((i) => ({ at: `${i.code} @ /${i.path.join('/')}`, message: i.message, hint: i.hint }));
      throw err;
    }
    throw new Error('expected the plan to be refused');
  };

  test('a FIFO as kernel or initrd (with a writer attached, so a regression cannot hang the test)', () => {
    const fifo = path.join(ws.dir, `fifo-${process.pid}`);
    execFileSync('mkfifo', [fifo]);
    const writer = fs.openSync(fifo, fs.constants.O_RDWR | fs.constants.O_NONBLOCK);
    try {
      expect(planErrorsRaw({ 'boot-source': { kernel_image_path: fifo } })).toEqual([
        { at: 'file-type @ /boot-source/kernel_image_path', message: `kernel image ${fifo} is a FIFO (named pipe); give a regular file`, hint: expect.any(String) },
      ]);
      expect(planErrorsRaw({ 'boot-source': { kernel_image_path: 'vmlinux', initrd_path: fifo } }).map((e) => e.at)).toEqual(['file-type @ /boot-source/initrd_path']);
    } finally {
      fs.closeSync(writer);
    }
  });

  test('/dev/zero and a directory as kernel or initrd', () => {
    expect(planErrorsRaw({ 'boot-source': { kernel_image_path: '/dev/zero' } }).map((e) => e.at)).toEqual(['file-type @ /boot-source/kernel_image_path']);
    expect(planErrorsRaw({ 'boot-source': { kernel_image_path: ws.dir } })[0].message).toMatch(/is a directory/);
    expect(planErrorsRaw({ 'boot-source': { kernel_image_path: 'vmlinux', initrd_path: '/dev/zero' } })[0]).toMatchObject({ at: 'file-type @ /boot-source/initrd_path', message: 'initrd /dev/zero is a character device; give a regular file' });
  });

  test('an empty initrd', () => {
    ws.write('empty-initrd', '');
    expect(planErrors({ 'boot-source': { kernel_image_path: 'vmlinux', initrd_path: 'empty-initrd' } })).toEqual(['initrd-empty @ /boot-source/initrd_path']);
  });

  test("an initrd above the bzImage's initrd_addr_max says that is the limit, and no memory size helps", () => {
    ws.write('bz-low-max', buildBzImage({ initSize: 0x200000, initrdAddrMax: 0x01ffffff }));
    fs.truncateSync(ws.write('initrd-15m.img', ''), 15 << 20);
    const [e] = planErrorsRaw({ 'boot-source': { kernel_image_path: 'bz-low-max', initrd_path: 'initrd-15m.img' }, 'machine-config': { vcpu_count: 1, mem_size_mib: 1024 } });
    expect(e.at).toBe('initrd-does-not-fit @ /boot-source/initrd_path');
    expect(e.message).toMatch(/between the kernel's end \(0x1200000\) and the kernel's initrd_addr_max \(0x1ffffff\), which leaves 14680064 bytes/);
    expect(e.hint).toBe('use a smaller initrd');
  });

  test('an initrd bigger than RAM below the MMIO gap names the gap, not mem_size_mib', () => {
    const big = ws.write('initrd-3g.img', '');
    fs.truncateSync(big, 3 * GiB);
    const [e] = planErrorsRaw({ 'boot-source': { kernel_image_path: 'vmlinux', initrd_path: 'initrd-3g.img' }, 'machine-config': { vcpu_count: 1, mem_size_mib: 8192 } });
    expect(e.message).toMatch(/and the MMIO gap at 3 GiB/);
    expect(e.hint).toBe('use a smaller initrd');
    ws.write('initrd-1m.img', Buffer.alloc(1 << 20, 1));
    const [small] = planErrorsRaw({ 'boot-source': { kernel_image_path: 'vmlinux', initrd_path: 'initrd-1m.img' }, 'machine-config': { vcpu_count: 1, mem_size_mib: 17 } });
    expect(small.message).toMatch(/and the end of guest RAM \(mem_size_mib 17\)/);
    expect(small.hint).toMatch(/raise mem_size_mib to at least 19/);
  });

  test('a bzImage whose init_size reaches past the first GiB is refused on the image, naming init_size', () => {
    ws.write('bz-huge-init', buildBzImage({ initSize: 0xfff00000 }));
    const [e] = planErrorsRaw({ 'boot-source': { kernel_image_path: 'bz-huge-init' }, 'machine-config': { vcpu_count: 1, mem_size_mib: 8192 } });
    expect(e.at).toBe('kernel-above-identity-map @ /boot-source/kernel_image_path');
    expect(e.message).toMatch(/with the 4293918720 bytes its header's init_size asks for/);
  });
});
