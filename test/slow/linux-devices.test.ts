import { ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';
import { createSealedNetns, SealedNetns } from '../helpers/netns';
import { KVM } from '../../src/kvm/ioctls';
import { Kvm } from '../../src/kvm/kvm';
import { sys } from '../../src/kvm/libc';
import { Workspace } from '../helpers/specs';

/**
 * Linux's own drivers meet fc-run's devices. The guest kernel (guest/linux/build.sh: Debian's
 * linux-source-6.1 with microvm.config and patches/) boots with the emulating-host profile
 * (guest/linux/emulating-host.json: boot options and a CPU template, data beside the kernel) to
 * its /init, which makes no system call (guest/linux/spin-init.S: this host's KVM cannot take one
 * from ring 3), and the kernel itself shows every device working:
 * - root ext4 on virtio-blk, mounted read-write (the host reads the mount count afterwards);
 * - virtio-net configured by ip= with the spec's MAC, pinged from the host through a TAP in a
 *   network namespace the test makes;
 * - virtio-rng read by the kernel's hwrng thread (fc-run's entropy metrics);
 * - a host vsock CONNECT to a port nobody listens on, refused by the guest;
 * - serial input through a pty, echoed by the guest's tty;
 * - 2 vCPUs up; Ctrl-Alt-Del through the API restarts the kernel, and reboot=k ends fc-run (exit 0).
 */
const ROOT = path.resolve(__dirname, '..', '..');
const BIN = path.join(ROOT, 'bin', 'fc-run');
const LINUX = path.join(ROOT, 'guest', 'linux');
const BUILD = path.join(LINUX, 'build');
const hasKvm = fs.existsSync('/dev/kvm');
const canNet = hasKvm && process.getuid?.() === 0 && fs.existsSync('/dev/net/tun');
// Work in progress (issue 11): on this project's emulating KVM the guest still stalls after
// virtio_blk has probed (1 vCPU), and with 2 vCPUs an RCU stall ends in an emulation failure
// (LSL in the NMI path). Run it with FC_RUN_LINUX_DEVICES=1 (LINUX_VCPUS=2 for SMP).
const wanted = process.env.FC_RUN_LINUX_DEVICES === '1';
const describeKvm = canNet && wanted ? describe : describe.skip;
if (!wanted) console.warn('SKIPPED: the Linux device test is work in progress (issue 11): FC_RUN_LINUX_DEVICES=1 runs it');
else if (!canNet) console.warn('SKIPPED: the Linux device test needs /dev/kvm, root and /dev/net/tun');

interface Profile {
  bootArgs: { arg: string; why: string }[];
  cpuConfig: string;
}

const GUEST_IP = '172.30.0.2';
const HOST_IP = '172.30.0.1';
const MAC = '06:00:ac:1e:00:02';
const ECHO = 'fcrun-tty-echo';
const VCPUS = Number(process.env.LINUX_VCPUS ?? 1);

let ws: Workspace;
let netns: SealedNetns | undefined;
let child: ChildProcess | undefined;
beforeAll(() => {
  if (canNet && !fs.existsSync(path.join(BUILD, 'spin-init'))) throw new Error(`${BUILD}/spin-init is missing: run \`npm run build:linux\` (npm test does)`);
  ws = new Workspace();
});
afterAll(() => {
  child?.kill('SIGKILL');
  netns?.remove();
  ws?.remove();
});

/** The TSC rate KVM gives a vCPU on this host (KVM_GET_TSC_KHZ), for the profile's tsc_early_khz. */
function hostTscKhz(): number {
  const kvm = new Kvm();
  const vm = kvm.createVm();
  const vcpu = vm.createVcpu(0);
  try {
    const khz = sys.ioctlInt(vcpu.fd, KVM.GET_TSC_KHZ, 0);
    if (khz <= 0) throw new Error('KVM_GET_TSC_KHZ failed: the profile needs the host TSC rate');
    return khz;
  } finally {
    sys.close(vcpu.fd);
    sys.close(vm.fd);
    kvm.close();
  }
}

/** A root disk: ext4 holding /init (and the directories the kernel mounts on). */
function rootDisk(): string {
  const dir = path.join(ws.dir, 'rootfs');
  for (const d of ['dev', 'proc', 'sys']) fs.mkdirSync(path.join(dir, d), { recursive: true });
  fs.copyFileSync(path.join(BUILD, 'spin-init'), path.join(dir, 'init'));
  fs.chmodSync(path.join(dir, 'init'), 0o755);
  const img = path.join(ws.dir, 'root.ext4');
  execFileSync('mkfs.ext4', ['-q', '-F', '-b', '4096', '-d', dir, img, '16M']);
  return img;
}

/** `dumpe2fs -h` fields of an ext4 image. */
function superblock(img: string): Record<string, string> {
  const out = execFileSync('dumpe2fs', ['-h', img], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  return Object.fromEntries([...out.matchAll(/^([^:\n]+):\s*(.*)$/gm)].map((m) => [m[1].trim(), m[2].trim()]));
}

describeKvm('Linux drives fc-run devices with its own drivers', () => {
  test('ELF vmlinux, 2 vCPUs: root ext4 on virtio-blk read-write, virtio-net by ip= and pinged, virtio-rng, vsock refused, tty echo, Ctrl-Alt-Del resets (exit 0)', async () => {
    const profile = JSON.parse(fs.readFileSync(path.join(LINUX, 'emulating-host.json'), 'utf8')) as Profile;
    const img = rootDisk();
    const before = superblock(img);
    netns = createSealedNetns('lnx', { addresses: [`${HOST_IP}/24`] });
    const api = path.join(ws.dir, 'api.sock');
    const uds = path.join(ws.dir, 'v.sock');
    const metrics = path.join(ws.dir, 'metrics.json');
    const spec = ws.write('linux-devices.json', {
      'boot-source': {
        kernel_image_path: path.join(BUILD, 'vmlinux'),
        boot_args: ['console=ttyS0', 'reboot=k', 'panic=1', 'init=/init', `ip=${GUEST_IP}::${HOST_IP}:255.255.255.0::eth0:off`, ...profile.bootArgs.map((a) => a.arg.replace('{hostTscKhz}', String(hostTscKhz())))].join(' '),
      },
      'machine-config': { vcpu_count: VCPUS, mem_size_mib: 128 },
      'cpu-config': path.join(LINUX, profile.cpuConfig),
      drives: [{ drive_id: 'rootfs', path_on_host: img, is_root_device: true, is_read_only: false }],
      'network-interfaces': [{ iface_id: 'eth0', host_dev_name: netns.tap, guest_mac: MAC }],
      vsock: { guest_cid: 3, uds_path: uds },
      entropy: {},
      metrics: { metrics_path: metrics },
    });
    let out = '';
    child = spawn('python3', [path.join(__dirname, '..', 'helpers', 'pty-drive.py'), 'Run /init as init process', `${ECHO}\\r`, 'ip', 'netns', 'exec', netns.ns, process.execPath, BIN, spec, '--api-sock', api], {
      env: { ...process.env, NO_COLOR: '1', PTY_DEADLINE: '600' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const log = process.env.FC_RUN_LINUX_LOG ? fs.openSync(process.env.FC_RUN_LINUX_LOG, 'w') : undefined;
    const take = (d: Buffer) => {
      out += d.toString('latin1');
      if (log !== undefined) fs.writeSync(log, d);
    };
    child.stdout!.on('data', take);
    child.stderr!.on('data', take);
    const exited = new Promise<number | null>((resolve) => child!.on('exit', resolve));
    const until = async (what: string, ok: () => boolean, ms: number) => {
      const end = Date.now() + ms;
      while (!ok()) {
        if (child!.exitCode !== null) throw new Error(`fc-run ended before ${what}:\n${out.slice(-3000)}`);
        if (Date.now() > end) throw new Error(`no ${what} within ${ms} ms:\n${out.slice(-3000)}`);
        await new Promise((r) => setTimeout(r, 250));
      }
    };
    // Boots take 20-30 s on this host's emulating KVM, longer under load.
    await until('Run /init', () => out.includes('Run /init as init process'), 400_000);
    const text = () => out.replace(/\r/g, '');
    expect(text()).toMatch(new RegExp(`smp: Brought up 1 node, ${VCPUS} CPUs?`));
    expect(text()).toMatch(/EXT4-fs \(vda\): mounted filesystem/);
    expect(text()).toMatch(/VFS: Mounted root \(ext4 filesystem\) on device 254:0/);
    expect(text()).toContain(`device=eth0, hwaddr=${MAC}, ipaddr=${GUEST_IP}`);

    // The guest's tty echoes what the pty typed (fc-run's terminal is raw: no local echo).
    await until('the tty echo', () => out.includes(ECHO), 120_000);

    // virtio-net: the host pings the guest through the TAP.
    const ping = spawnSync('ip', ['netns', 'exec', netns.ns, 'ping', '-c', '3', '-W', '20', GUEST_IP], { encoding: 'utf8', timeout: 120_000 });
    if (ping.error) throw new Error(`ping did not run (iputils-ping; .ci/run installs it): ${ping.error.message}`);
    expect(ping.stdout).toMatch(/3 packets transmitted, 3 received/);

    // vsock: a CONNECT to a guest port nobody listens on is refused (the connection closes).
    const refused = await new Promise<string>((resolve) => {
      const s = net.connect(uds, () => s.write('CONNECT 4444\n'));
      let got = '';
      s.on('data', (d) => (got += d));
      s.on('close', () => resolve(got));
      s.on('error', () => resolve(got));
      setTimeout(() => s.destroy(), 120_000).unref();
    });
    expect(refused).not.toMatch(/^OK/);

    // Ctrl-Alt-Del: the kernel restarts, reboot=k resets through the i8042, fc-run exits 0.
    const status = await new Promise<number | undefined>((resolve) => {
      const body = JSON.stringify({ action_type: 'SendCtrlAltDel' });
      const req = http.request({ socketPath: api, method: 'PUT', path: '/actions', headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) } }, (res) => {
        res.resume();
        resolve(res.statusCode);
      });
      req.on('error', () => resolve(undefined));
      req.end(body);
    });
    expect(status).toBe(204);
    const code = await exited;
    expect(text()).toMatch(/the guest reset the machine/);
    expect(code).toBe(0);

    // virtio-rng: the kernel's hwrng thread read entropy (the last metrics line counts it).
    const lines = fs.readFileSync(metrics, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, Record<string, number>>);
    const last = lines[lines.length - 1];
    expect(last.entropy.entropy_bytes).toBeGreaterThan(0);
    // The root file system was mounted read-write by the guest: its superblock says so.
    const after = superblock(img);
    expect(Number(after['Mount count'])).toBe(Number(before['Mount count']) + 1);
    expect(after['Last mounted on']).toBe('/');
  }, 900_000);
});
