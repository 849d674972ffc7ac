import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Workspace } from '../helpers/specs';

/**
 * Boots the guest kernel built by guest/linux/build.sh (Debian's linux-source-6.1 with
 * guest/linux/microvm.config) through fc-run, as an ELF vmlinux (PVH entry, CONFIG_PVH=y) and
 * as a bzImage (64-bit boot protocol), and checks what the kernel itself prints against the plan.
 *
 * Where KVM runs guests on hardware, the kernel boots to the initramfs /init, which prints a line
 * and resets the VM (exit 0). On machines whose KVM emulates guest code in software (this
 * project's), the kernel stops at the documented point: right after mm_init prints "Memory:",
 * the emulator meets an instruction it cannot emulate and KVM reports an internal error, which
 * fc-run reports (exit 1, with registers). Everything before that point is asserted either way;
 * device probing (the "[vda]" line) happens after it, so it is asserted only where the kernel gets
 * there.
 */
const ROOT = path.resolve(__dirname, '..', '..');
const BIN = path.join(ROOT, 'bin', 'fc-run');
const BUILD = path.join(ROOT, 'guest', 'linux', 'build');
const hasKvm = fs.existsSync('/dev/kvm');
const describeKvm = hasKvm ? describe : describe.skip;
if (!hasKvm) console.warn('SKIPPED: the Linux boot test needs /dev/kvm, which this host does not have');

let ws: Workspace;
beforeAll(() => {
  if (hasKvm && !fs.existsSync(path.join(BUILD, 'vmlinux'))) throw new Error(`${BUILD}/vmlinux is missing: run \`npm run build:linux\` (npm test does)`);
  ws = new Workspace();
});
afterAll(() => ws.remove());

interface Plan {
  cmdline: string;
  vcpus: { count: number };
  memory: { e820: { start: number; size: number; type: 'ram' | 'reserved' }[] };
}

describeKvm('a real Linux kernel boots through fc-run', () => {
  test.each([
    ['ELF vmlinux (PVH entry)', 'vmlinux', 'pvh'],
    ['bzImage (64-bit boot protocol)', 'bzImage', 'bzimage'],
  ])('%s: the kernel reports the planned memory map, command line, CPUs and console', (_name, image, format) => {
    const disk = ws.write(`disk-${image}.img`, Buffer.alloc(8 << 20));
    const spec = ws.write(`linux-${image}.json`, {
      'boot-source': {
        kernel_image_path: path.join(BUILD, image),
        initrd_path: path.join(BUILD, 'initramfs.cpio.gz'),
        boot_args: 'console=ttyS0 earlyprintk=serial,ttyS0 reboot=k panic=1',
      },
      'machine-config': { vcpu_count: 2, mem_size_mib: 256 },
      drives: [{ drive_id: 'data', path_on_host: disk, is_root_device: false, is_read_only: true }],
      vsock: { guest_cid: 3, uds_path: path.join(ws.dir, `linux-${image}.vsock`) },
      entropy: {},
    });
    const planned = spawnSync(process.execPath, [BIN, 'plan', '--json', spec], { encoding: 'utf8' });
    expect(planned.status).toBe(0);
    const { plan } = JSON.parse(planned.stdout) as { plan: Plan & { kernel: { format: string } } };
    expect(plan.kernel.format).toBe(format);

    const r = spawnSync(process.execPath, [BIN, spec], { encoding: 'utf8', timeout: 600_000, env: { ...process.env, NO_COLOR: '1' } });
    const out = r.stdout.replace(/\r/g, '');

    expect(out).toMatch(/^Linux version 6\.1\./m);
    expect(out).toContain(`Command line: ${plan.cmdline}`);
    // The kernel received one virtio_mmio.device= entry per device (block, vsock, entropy).
    expect(plan.cmdline.match(/virtio_mmio\.device=4K@0x[0-9a-f]+:\d+/g)).toHaveLength(3);
    const e820 = [...out.matchAll(/^BIOS-e820: \[mem 0x([0-9a-f]+)-0x([0-9a-f]+)\] (\w+)/gm)].map((m) => ({
      start: parseInt(m[1], 16),
      size: parseInt(m[2], 16) - parseInt(m[1], 16) + 1,
      type: m[3] === 'usable' ? 'ram' : m[3],
    }));
    expect(e820).toEqual(plan.memory.e820);
    expect(out).toContain('printk: bootconsole [earlyser0] enabled');
    expect(out).toContain('Hypervisor detected: KVM');
    expect(out).toMatch(/kvm-clock: Using msrs/);
    expect(out).toContain(`Processors: ${plan.vcpus.count}`);
    expect(out).toContain(`nr_cpu_ids:${plan.vcpus.count}`);
    // "Memory: 240648K/261752K available": the total is the usable RAM of the map, less page 0
    // and the partial page below the EBDA.
    const total = Number(/^Memory: \d+K\/(\d+)K available/m.exec(out)?.[1]) * 1024;
    const usable = plan.memory.e820.filter((e) => e.type === 'ram').reduce((n, e) => n + e.size, 0);
    expect(usable - total).toBeGreaterThanOrEqual(0);
    expect(usable - total).toBeLessThan(8192);

    if (out.includes('fc-run-guest: init running')) {
      expect(out).toContain(`${plan.vcpus.count} cpus`);
      // virtio-blk probed the drive: 8 MiB is 16384 sectors.
      expect(out).toMatch(/virtio_blk virtio\d+: \[vda\] 16384 512-byte logical blocks/);
      expect(r.stderr).toMatch(/the guest reset the machine/);
      expect(r.status).toBe(0);
    } else {
      // The emulated-KVM stop point (an instruction its emulator lacks, e.g. lock cmpxchg16b),
      // reported as a failure with the instruction's bytes and the vCPU's registers.
      expect(r.stderr).toMatch(/the microVM failed: KVM internal error: emulation failure \(1\); instruction bytes: ([0-9a-f]{2} ){3,}/);
      expect(r.stderr).toMatch(/rip=0xffffffff8/);
      expect(r.status).toBe(1);
    }
  }, 660_000);
});
