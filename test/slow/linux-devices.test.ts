import { ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';
import { createSealedNetns, SealedNetns } from '../helpers/netns';
import { Workspace } from '../helpers/specs';
import { bootArgs, cpuConfig, detectHost, LinuxHost } from '../../guest/linux/host';

/**
 * Linux's own drivers meet fc-run's devices. The guest kernel (guest/linux/build.sh: Debian's
 * linux-source-6.1 with microvm.config and patches/) boots with the command line and CPU template
 * this host needs (guest/linux/host.js, data beside the kernel), 2 vCPUs, root on an ext4
 * virtio-blk disk.
 *
 * Every host: /init makes no system call (guest/linux/spin-init.S: an instruction-emulating KVM
 * cannot take one from ring 3), and the kernel itself shows every device working:
 * - root ext4 on virtio-blk, mounted read-write (the host reads the mount count afterwards);
 * - virtio-net configured by ip= with the spec's MAC, pinged from the host through a TAP in a
 *   network namespace the test makes;
 * - virtio-rng read by the kernel's hwrng thread (fc-run's entropy metrics);
 * - a host vsock CONNECT to a port nobody listens on, refused by the guest;
 * - serial input through a pty, echoed by the guest's tty;
 * - 2 vCPUs up; Ctrl-Alt-Del through the API restarts the kernel, and reboot=k ends fc-run (exit 0).
 * Where KVM runs guest code on the CPU (the ring-3 probe says so), a second boot runs a real /init
 * (busybox, guest/linux/disk-init) that writes a file to the disk, pings the host, reads
 * /dev/hwrng, echoes over vsock and restarts.
 */
const ROOT = path.resolve(__dirname, '..', '..');
const BIN = path.join(ROOT, 'bin', 'fc-run');
const BUILD = path.join(ROOT, 'guest', 'linux', 'build');
const hasKvm = fs.existsSync('/dev/kvm');
const canNet = hasKvm && process.getuid?.() === 0 && fs.existsSync('/dev/net/tun');
const describeKvm = canNet ? describe : describe.skip;
if (!canNet) console.warn('SKIPPED: the Linux device test needs /dev/kvm, root and /dev/net/tun');

const GUEST_IP = '172.30.0.2';
const HOST_IP = '172.30.0.1';
const MAC = '06:00:ac:1e:00:02';
const ECHO = 'fcrun-tty-echo';
// One vCPU runs on fc-run's main thread ('main' mode, the default for one), two in 'mixed' mode.
const VCPU_COUNTS = process.env.LINUX_VCPUS ? [Number(process.env.LINUX_VCPUS)] : [1, 2];
const BUSYBOX_APPLETS = ['sh', 'mount', 'echo', 'sed', 'grep', 'uname', 'sync', 'ping', 'head', 'wc', 'reboot'];

// Which KVM this is decides the profile and whether the busybox /init can run (guest/linux/host.js).
const host: LinuxHost | undefined = canNet ? detectHost() : undefined;
if (host) console.log(`Linux device test on ${host.kind === 'hardware' ? 'a KVM that runs guest code on the CPU: the busybox /init runs too' : 'an instruction-emulating KVM: the kernel drives the devices, no user space (the busybox /init test is skipped)'} (${host.why})`);
const testOnHardware = host?.kind === 'hardware' ? test : test.skip;

let ws: Workspace;
const children: ChildProcess[] = [];
const namespaces: SealedNetns[] = [];
beforeAll(() => {
  if (!canNet) return;
  if (!fs.existsSync(path.join(BUILD, 'spin-init'))) throw new Error(`${BUILD}/spin-init is missing: run \`npm run build:linux\` (npm test does)`);
  ws = new Workspace();
});
afterAll(() => {
  for (const c of children) c.kill('SIGKILL');
  for (const n of namespaces) n.remove();
  ws?.remove();
});

/** A root disk: ext4 holding /init, the directories the kernel mounts on and, for busybox, its programs. */
function rootDisk(name: string, init: 'spin' | 'busybox'): string {
  const dir = path.join(ws.dir, `rootfs-${name}`);
  for (const d of ['dev', 'proc', 'sys', 'bin']) fs.mkdirSync(path.join(dir, d), { recursive: true });
  if (init === 'spin') {
    fs.copyFileSync(path.join(BUILD, 'spin-init'), path.join(dir, 'init'));
  } else {
    fs.copyFileSync(path.join(BUILD, 'disk-init'), path.join(dir, 'init'));
    fs.copyFileSync(path.join(BUILD, 'busybox'), path.join(dir, 'bin', 'busybox'));
    fs.copyFileSync(path.join(BUILD, 'vsock-echo'), path.join(dir, 'bin', 'vsock-echo'));
    for (const f of ['busybox', 'vsock-echo']) fs.chmodSync(path.join(dir, 'bin', f), 0o755);
    for (const a of BUSYBOX_APPLETS) fs.symlinkSync('busybox', path.join(dir, 'bin', a));
  }
  fs.chmodSync(path.join(dir, 'init'), 0o755);
  const img = path.join(ws.dir, `root-${name}.ext4`);
  execFileSync('mkfs.ext4', ['-q', '-F', '-b', '4096', '-d', dir, img, '16M']);
  return img;
}

/** `dumpe2fs -h` fields of an ext4 image. */
function superblock(img: string): Record<string, string> {
  const out = execFileSync('dumpe2fs', ['-h', img], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  return Object.fromEntries([...out.matchAll(/^([^:\n]+):\s*(.*)$/gm)].map((m) => [m[1].trim(), m[2].trim()]));
}

interface Guest {
  img: string;
  api: string;
  uds: string;
  metrics: string;
  netns: SealedNetns;
  /** Everything fc-run printed so far (console and its own lines), without carriage returns. */
  text: () => string;
  /** Waits until ok() holds; fails with the output's tail if fc-run ends first or time runs out. */
  until: (what: string, ok: () => boolean, ms: number) => Promise<void>;
  exited: Promise<number | null>;
}

/** Boots the guest kernel on `img` through fc-run on a pty, in a network namespace with a TAP. */
function boot(name: string, img: string, extraArgs: string[], vcpus: number): Guest {
  const netns = createSealedNetns(name.slice(0, 4), { addresses: [`${HOST_IP}/24`] });
  namespaces.push(netns);
  const api = path.join(ws.dir, `${name}-api.sock`);
  const uds = path.join(ws.dir, `${name}-v.sock`);
  const metrics = path.join(ws.dir, `${name}-metrics.json`);
  const cpu = cpuConfig(host!);
  const spec = ws.write(`${name}.json`, {
    'boot-source': {
      kernel_image_path: path.join(BUILD, 'vmlinux'),
      boot_args: bootArgs(host!, ['init=/init', `ip=${GUEST_IP}::${HOST_IP}:255.255.255.0::eth0:off`, ...extraArgs]),
    },
    'machine-config': { vcpu_count: vcpus, mem_size_mib: 128 },
    ...(cpu ? { 'cpu-config': cpu } : {}),
    drives: [{ drive_id: 'rootfs', path_on_host: img, is_root_device: true, is_read_only: false }],
    'network-interfaces': [{ iface_id: 'eth0', host_dev_name: netns.tap, guest_mac: MAC }],
    vsock: { guest_cid: 3, uds_path: uds },
    entropy: {},
    metrics: { metrics_path: metrics },
  });
  let out = '';
  const child = spawn('python3', [path.join(__dirname, '..', 'helpers', 'pty-drive.py'), 'Run /init as init process', `${ECHO}\\r`, 'ip', 'netns', 'exec', netns.ns, process.execPath, BIN, spec, '--api-sock', api], {
    env: { ...process.env, NO_COLOR: '1', PTY_DEADLINE: '840' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.push(child);
  // FC_RUN_LINUX_LOG=FILE: the console as it comes, for watching a boot.
  const log = process.env.FC_RUN_LINUX_LOG ? fs.openSync(`${process.env.FC_RUN_LINUX_LOG}.${name}`, 'w') : undefined;
  const take = (d: Buffer) => {
    out += d.toString('latin1');
    if (log !== undefined) fs.writeSync(log, d);
  };
  child.stdout!.on('data', take);
  child.stderr!.on('data', take);
  const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
  const text = () => out.replace(/\r/g, '');
  const until = async (what: string, ok: () => boolean, ms: number) => {
    const end = Date.now() + ms;
    while (!ok()) {
      if (child.exitCode !== null) throw new Error(`fc-run ended (${child.exitCode}) before ${what}:\n${text().slice(-3000)}`);
      if (Date.now() > end) throw new Error(`no ${what} within ${ms} ms:\n${text().slice(-3000)}`);
      await new Promise((r) => setTimeout(r, 250));
    }
  };
  return { img, api, uds, metrics, netns, text, until, exited };
}

/** What the guest side of a host vsock CONNECT answered, sending `payload` once connected. */
function vsockConnect(uds: string, port: number, payload = ''): Promise<string> {
  return new Promise<string>((resolve) => {
    const s = net.connect(uds, () => s.write(`CONNECT ${port}\n`));
    let got = '';
    let sent = false;
    s.on('data', (d) => {
      got += d.toString('latin1');
      if (!sent && payload && got.startsWith('OK ') && got.includes('\n')) {
        sent = true;
        s.write(payload);
      }
      if (sent && got.endsWith(payload)) s.end();
    });
    s.on('close', () => resolve(got));
    s.on('error', () => resolve(got));
    setTimeout(() => s.destroy(), 120_000).unref();
  });
}

/** Sums one group of fc-run's metrics lines (each line counts what happened since the last). */
function totals(metrics: string, group: string): Record<string, number> {
  const sum: Record<string, number> = {};
  for (const line of fs.readFileSync(metrics, 'utf8').trim().split('\n')) {
    const g = (JSON.parse(line) as Record<string, Record<string, unknown>>)[group] ?? {};
    for (const [k, v] of Object.entries(g)) if (typeof v === 'number') sum[k] = (sum[k] ?? 0) + v;
  }
  return sum;
}

function action(api: string, type: string): Promise<number | undefined> {
  return new Promise<number | undefined>((resolve) => {
    const body = JSON.stringify({ action_type: type });
    const req = http.request({ socketPath: api, method: 'PUT', path: '/actions', headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) } }, (res) => {
      res.resume();
      resolve(res.statusCode);
    });
    req.on('error', () => resolve(undefined));
    req.end(body);
  });
}

describeKvm('Linux drives fc-run devices with its own drivers', () => {
  describe.each(VCPU_COUNTS)('%i vCPU(s)', (VCPUS) => {
    test(`ELF vmlinux, ${VCPUS} vCPUs: root ext4 on virtio-blk read-write, virtio-net by ip= and pinged, virtio-rng, vsock refused, tty echo, Ctrl-Alt-Del resets (exit 0)`, async () => {
      const img = rootDisk(`kern${VCPUS}`, 'spin');
      const before = superblock(img);
      const g = boot(`kern${VCPUS}`, img, [], VCPUS);
      // Boots take 15-60 s on this project's emulating KVM, longer under load.
      await g.until('Run /init', () => g.text().includes('Run /init as init process'), 600_000);
      expect(g.text()).toMatch(new RegExp(`smp: Brought up 1 node, ${VCPUS} CPUs?`));
      expect(g.text()).toMatch(/EXT4-fs \(vda\): mounted filesystem/);
      expect(g.text()).toMatch(/VFS: Mounted root \(ext4 filesystem\) on device 254:0/);
      expect(g.text()).toContain(`device=eth0, hwaddr=${MAC}, ipaddr=${GUEST_IP}`);

      // The guest's tty echoes what the pty typed (fc-run's terminal is raw: no local echo).
      await g.until('the tty echo', () => g.text().includes(ECHO), 120_000);

      // virtio-net: the host pings the guest through the TAP.
      // -w: until three replies or 100 s, however slow the guest (without it ping gives up on a
      // reply after twice the first round trip, which an emulated guest on a busy host outlasts).
      const ping = spawnSync('ip', ['netns', 'exec', g.netns.ns, 'ping', '-c', '3', '-w', '100', GUEST_IP], { encoding: 'utf8', timeout: 120_000 });
      if (ping.error) throw new Error(`ping did not run (iputils-ping; .ci/run installs it): ${ping.error.message}`);
      expect(ping.stdout).toMatch(/\d+ packets transmitted, 3 received/);

      // vsock: a CONNECT to a guest port nobody listens on is refused (the connection closes).
      expect(await vsockConnect(g.uds, 4444)).not.toMatch(/^OK/);

      // Ctrl-Alt-Del: the kernel restarts, reboot=k resets through the i8042, fc-run exits 0.
      expect(await action(g.api, 'SendCtrlAltDel')).toBe(204);
      const code = await g.exited;
      expect(g.text()).toMatch(/the guest reset the machine/);
      expect(code).toBe(0);

      // virtio-rng: the kernel's hwrng thread read entropy (the metrics lines count it).
      const lines = fs.readFileSync(g.metrics, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, Record<string, number>>);
      expect(lines.reduce((n, l) => n + (l.entropy?.entropy_bytes ?? 0), 0)).toBeGreaterThan(0);
      // The root file system was mounted read-write by the guest: its superblock says so.
      const after = superblock(img);
      expect(Number(after['Mount count'])).toBe(Number(before['Mount count']) + 1);
      expect(after['Last mount time']).not.toBe(before['Last mount time']);
      expect(after['Last write time']).not.toBe(before['Last write time']);
    }, 900_000);

    testOnHardware(`busybox /init, ${VCPUS} vCPUs: writes the disk, pings the host, reads /dev/hwrng, echoes over vsock, restarts (exit 0)`, async () => {
      const img = rootDisk(`busy${VCPUS}`, 'busybox');
      const g = boot(`busy${VCPUS}`, img, [`fcrun.host=${HOST_IP}`], VCPUS);
      await g.until('the busybox /init', () => g.text().includes('fc-run-guest: busybox init'), 600_000);
      expect(g.text()).toContain(`${VCPUS} cpus`);
      await g.until('the vsock echo server', () => g.text().includes('vsock-echo: listening on port 5000'), 300_000);
      const payload = `echo through vsock ${Date.now()}`;
      const got = await vsockConnect(g.uds, 5000, payload);
      if (got !== `${got.split('\n')[0]}\n${payload}` || !/^OK \d+$/.test(got.split('\n')[0])) {
        // What fc-run's vsock device saw, for whoever reads the failure.
        await action(g.api, 'FlushMetrics');
        throw new Error(`vsock echo: got ${JSON.stringify(got)}; vsock metrics: ${JSON.stringify(totals(g.metrics, 'vsock'))}\n${g.text().slice(-1500)}`);
      }
      const code = await g.exited;
      const text = g.text();
      expect(text).toContain('fc-run-guest: disk written');
      expect(text).toMatch(/fc-run-guest: ping: 3 packets transmitted, 3 packets received/);
      expect(text).toContain('fc-run-guest: hwrng read 64 bytes');
      expect(text).toContain(`fc-run-guest: vsock-echo: echoed ${payload.length} bytes`);
      expect(text).toContain('fc-run-guest: done');
      expect(text).toMatch(/the guest reset the machine/);
      expect(code).toBe(0);
      // What the guest wrote is on the disk image after the VM is gone.
      const file = execFileSync('debugfs', ['-R', 'cat /guest-wrote.txt', img], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
      expect(file).toBe('written by the guest\n');
    }, 900_000);
  });
});
