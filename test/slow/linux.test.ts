import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Workspace } from '../helpers/specs';
import { bootArgs, cpuConfig, detectHost, LinuxHost } from '../../guest/linux/host';

/**
 * Boots the guest kernel built by guest/linux/build.sh (Debian's linux-source-6.1 with
 * guest/linux/microvm.config and patches/) through fc-run with 2 vCPUs, as an ELF vmlinux (PVH
 * entry) and as a bzImage (64-bit boot protocol), with the command line and CPU template this host
 * needs (guest/linux/host.js: the probe guest's ring-3 system call tells the two kinds of KVM
 * apart), and checks what the kernel itself prints against the plan, up to its /init:
 * - where KVM runs guests on the CPU, the initramfs /init (busybox) prints a line and restarts;
 * - on an instruction-emulating KVM (this project's machines), /init's first system call cannot
 *   enter the kernel (SYSCALL from ring 3 stays at user privilege there): init dies, the kernel
 *   panics and panic=-1 restarts at once.
 * Either way the restart goes through the i8042 and fc-run exits 0. On an emulating KVM a third
 * case boots without the profile and checks how fc-run reports the emulation failure that stops it.
 */
const ROOT = path.resolve(__dirname, '..', '..');
const BIN = path.join(ROOT, 'bin', 'fc-run');
const BUILD = path.join(ROOT, 'guest', 'linux', 'build');
const hasKvm = fs.existsSync('/dev/kvm');
const describeKvm = hasKvm ? describe : describe.skip;
if (!hasKvm) console.warn('SKIPPED: the Linux boot test needs /dev/kvm, which this host does not have');

// Which KVM this is decides the profile and what /init can do (guest/linux/host.js).
const host: LinuxHost = hasKvm ? detectHost() : { kind: 'hardware', why: 'no /dev/kvm: nothing runs' };
if (hasKvm) console.log(`Linux boot test on ${host.kind === 'hardware' ? 'a KVM that runs guest code on the CPU' : 'an instruction-emulating KVM'} (${host.why})`);
const testOnEmulating = host.kind === 'emulating' ? test : test.skip;

let ws: Workspace;
beforeAll(() => {
  if (!hasKvm) return;
  if (!fs.existsSync(path.join(BUILD, 'vmlinux'))) throw new Error(`${BUILD}/vmlinux is missing: run \`npm run build:linux\` (npm test does)`);
  ws = new Workspace();
});
afterAll(() => ws?.remove());

interface Plan {
  cmdline: string;
  vcpus: { count: number };
  memory: { e820: { start: number; size: number; type: 'ram' | 'reserved' }[] };
}

function spec(name: string, image: string, args: string, cpu: string | undefined): string {
  const disk = ws.write(`disk-${name}.img`, Buffer.alloc(8 << 20));
  return ws.write(`linux-${name}.json`, {
    'boot-source': { kernel_image_path: path.join(BUILD, image), initrd_path: path.join(BUILD, 'initramfs.cpio.gz'), boot_args: args },
    'machine-config': { vcpu_count: 2, mem_size_mib: 256 },
    ...(cpu ? { 'cpu-config': cpu } : {}),
    drives: [{ drive_id: 'data', path_on_host: disk, is_root_device: false, is_read_only: true }],
    vsock: { guest_cid: 3, uds_path: path.join(ws.dir, `linux-${name}.vsock`) },
    entropy: {},
  });
}

describeKvm('a real Linux kernel boots through fc-run', () => {
  test.each([
    ['ELF vmlinux (PVH entry)', 'vmlinux', 'pvh'],
    ['bzImage (64-bit boot protocol)', 'bzImage', 'bzimage'],
  ])('%s, 2 vCPUs: the kernel reports the planned memory map, command line, CPUs and devices, and runs /init', (_name, image, format) => {
    const file = spec(image, image, bootArgs(host, ['earlyprintk=serial,ttyS0', 'panic=-1']), cpuConfig(host));
    const planned = spawnSync(process.execPath, [BIN, 'plan', '--json', file], { encoding: 'utf8' });
    expect(planned.status).toBe(0);
    const { plan } = JSON.parse(planned.stdout) as { plan: Plan & { kernel: { format: string } } };
    expect(plan.kernel.format).toBe(format);

    // An emulated bzImage decompressor takes minutes under load.
    const r = spawnSync(process.execPath, [BIN, file], { encoding: 'utf8', timeout: 780_000, env: { ...process.env, NO_COLOR: '1' } });
    const out = r.stdout.replace(/\r/g, '');
    const tail = `\n--- output ---\n${out.slice(-3000)}\n--- stderr ---\n${r.stderr.slice(-2000)}`;
    if (!out.includes('Run /init as init process')) throw new Error(`the kernel did not reach /init (exit ${r.status}, signal ${r.signal})${tail}`);

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
    // The emulating profile turns kvm-clock off (no-kvmclock).
    if (host.kind === 'hardware') expect(out).toMatch(/kvm-clock: Using msrs/);
    expect(out).toContain(`Processors: ${plan.vcpus.count}`);
    expect(out).toContain(`nr_cpu_ids:${plan.vcpus.count}`);
    expect(out).toContain(`smp: Brought up 1 node, ${plan.vcpus.count} CPUs`);
    // "Memory: 240648K/261752K available": the total is the usable RAM of the map, less page 0
    // and the partial page below the EBDA.
    const total = Number(/^Memory: \d+K\/(\d+)K available/m.exec(out)?.[1]) * 1024;
    const usable = plan.memory.e820.filter((e) => e.type === 'ram').reduce((n, e) => n + e.size, 0);
    expect(usable - total).toBeGreaterThanOrEqual(0);
    expect(usable - total).toBeLessThan(8192);
    // virtio-blk probed the drive: 8 MiB is 16384 sectors.
    expect(out).toMatch(/virtio_blk virtio\d+: \[vda\] 16384 512-byte logical blocks/);

    if (host.kind === 'hardware') {
      expect(out).toContain(`fc-run-guest: init running`);
      expect(out).toContain(`${plan.vcpus.count} cpus`);
    } else {
      // /init's first system call: SYSCALL from ring 3 does not enter the kernel here.
      expect(out).toMatch(/Kernel panic - not syncing: Attempted to kill init!/);
    }
    expect(r.stderr).toMatch(/the guest reset the machine/);
    expect(r.status).toBe(0);
  }, 800_000);

  testOnEmulating('without the emulating profile, an instruction-emulating KVM stops the kernel and fc-run reports the instruction bytes and registers', () => {
    const file = spec('no-profile', 'vmlinux', bootArgs({ kind: 'hardware', why: 'no profile' }, ['earlyprintk=serial,ttyS0']), undefined);
    const r = spawnSync(process.execPath, [BIN, file], { encoding: 'utf8', timeout: 600_000, env: { ...process.env, NO_COLOR: '1' } });
    const out = r.stdout.replace(/\r/g, '');
    if (!/^Memory: /m.test(out)) throw new Error(`the kernel did not get to "Memory:" (exit ${r.status}, signal ${r.signal})\n${out.slice(-2000)}\n${r.stderr.slice(-2000)}`);
    // The first instruction its emulator lacks (lock cmpxchg16b in SLUB, right after "Memory:").
    expect(out).toMatch(/^Memory: /m);
    expect(r.stderr).toMatch(/the microVM failed: KVM internal error: emulation failure \(1\); instruction bytes: ([0-9a-f]{2} ){3,}/);
    expect(r.stderr).toMatch(/rip=0xffffffff8/);
    expect(r.status).toBe(1);
  }, 660_000);
});
