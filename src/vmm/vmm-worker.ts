import { parentPort, workerData } from 'node:worker_threads';
import { GuestMemory, RegionDescriptor } from '../kvm/memory';
import { BlockDevice } from '../devices/virtio/block';
import { EntropyDevice } from '../devices/virtio/rng';
import { NetDevice } from '../devices/virtio/net';
import { MmdsService } from '../devices/mmds/service';
import { controlHandler, LimiterName } from './control-handler';
import { ControlChannel, serveControl } from './control';
import { MmdsNetworkStack } from '../devices/mmds/stack';
import { Logger, MetricsRegistry } from '../monitor';
import type { MetricsLayout, SharedLoggerOptions } from '../monitor';
import { deviceGroup, shareCounters } from '../monitor/vm-metrics';
import { VsockDevice } from '../devices/virtio/vsock';
import { openTap } from '../kvm/tap';
import { TimerFd } from '../kvm/timerfd';
import { Throttle } from '../limits/throttle';
import type { RateLimiterConfig } from '../limits/token-bucket';
import { MMIO, VirtioBackend, VirtioMmio } from '../devices/virtio/mmio';
import { drainEventfd, EventLoop, signalEventfd } from './event-loop';
import { serveMailboxes } from './mmio-mailbox';
import { installThreadFilter } from '../kvm/seccomp';
import { loadSigsysLibrary, registerSigsysThread } from '../kvm/sigsys';
import { EPOLLIN } from '../kvm/libc';
import { FcRunError } from '../errors';
import { snapshotMismatch } from '../state-check';
import { DEVICES_STATE_FORMAT, DevicesState, planRestore, RestorePlan, SavedDevice, savedLimiter } from './devices-state';
import { SNAPSHOT_OP, SnapshotChannel } from './snapshot-channel';

/**
 * The VMM thread: owns every virtio device and runs the epoll loop over their fds (queue
 * ioeventfds), the MMIO mailbox eventfd and a stop eventfd. Node's main thread stays free for the
 * CLI, terminal input and (later) the API server.
 */
export type VirtioDeviceSetup = {
  index: number;
  id: string;
  irqFd: number;
  notifyFds: number[];
  interruptStatus: SharedArrayBuffer;
} & (
  | { kind: 'block'; path: string; readOnly: boolean; cacheType: 'Unsafe' | 'Writeback'; rateLimiter?: RateLimiterConfig }
  | { kind: 'net'; tap: string; mac?: string; mtu?: number; mmds: boolean; rxRateLimiter?: RateLimiterConfig; txRateLimiter?: RateLimiterConfig }
  | { kind: 'vsock'; guestCid: number; udsPath: string }
  | { kind: 'entropy'; rateLimiter?: RateLimiterConfig }
);

export interface VmmWorkerData {
  memory: RegionDescriptor[];
  devices: VirtioDeviceSetup[];
  mailbox: SharedArrayBuffer;
  mailboxFd: number;
  stopFd: number;
  /** The metadata service: one store for the VM, a network stack on each interface it serves. */
  mmds?: { version: 'V1' | 'V2'; ipv4Address: string; imdsCompat: boolean; data: unknown; sizeLimit: number };
  /** Requests from the API (MMDS contents, rate limiters). */
  control?: ControlChannel;
  /** Shared metrics memory (device groups and `mmds` are this thread's to write). */
  metrics: { buffer: SharedArrayBuffer; layout: MetricsLayout };
  logger: SharedLoggerOptions;
  /** This thread's own seccomp filter (--seccomp-filter's vmm category), installed when seccompFd is signalled. */
  seccompFilter?: Uint8Array;
  /** Signalled by the main thread once the process-wide filter is in place (see VmmThread.installFilter). */
  seccompFd?: number;
  /** Pause, save and resume requests (VmmThread.pause/saveDevices/resume); startVmmThread makes it. */
  snapshot?: SnapshotChannel;
  /**
   * Saved device state to restore (a snapshot's): the devices are built from `devices` as for a
   * boot, then given this state before anything is served. The thread then comes up paused, as a
   * restored Firecracker VM does: VmmThread.resume() starts the devices, and only then do they
   * raise interrupts (vsock's transport reset event, work the guest queued before the snapshot),
   * so call it once the guest's interrupt controller and vCPUs are restored. A state that is
   * malformed or does not fit `devices` fails the start with a 'snapshot-invalid' or
   * 'snapshot-mismatch' error (exit 2).
   */
  restore?: DevicesState;
}

export type SnapshotReply = { kind: 'snapshot'; seq: number; ok: true; state?: DevicesState } | { kind: 'snapshot'; seq: number; ok: false; message: string };

export type VmmMessage =
  | { kind: 'ready' }
  | { kind: 'filtered' }
  | { kind: 'error'; message: string; code?: string; exitCode?: number }
  | { kind: 'stopped'; counters: Record<string, unknown> }
  | SnapshotReply;

const data = workerData as VmmWorkerData;
const port = parentPort!;

const log = new Logger({ ...data.logger, thread: 'vmm' });

/** Rate limiters that can be changed while the VM runs, by "drive:<id>", "iface:<id>" and "entropy". */
const limiters = new Map<string, Partial<Record<LimiterName, Throttle>>>();

/** What a device model keeps for a snapshot (every back end has these). */
interface Snapshottable {
  saveState(): unknown;
  restoreState(state: unknown, where: string): void;
}

interface BuiltDevice {
  setup: VirtioDeviceSetup;
  transport: VirtioMmio;
  model: Snapshottable;
}

function build(): { transports: VirtioMmio[]; loop: EventLoop } {
  const mem = GuestMemory.attach(data.memory);
  const registry = MetricsRegistry.attach(data.metrics.buffer, data.metrics.layout);
  const loop = new EventLoop();
  loop.onError = (err) => port.postMessage({ kind: 'error', message: `VMM thread: ${err.stack ?? err.message}` } satisfies VmmMessage);
  const transports: VirtioMmio[] = [];
  const built: BuiltDevice[] = [];
  // The saved state is matched with the devices first: a snapshot of other devices fails before any is built.
  const restore: RestorePlan | undefined = data.restore === undefined ? undefined : planRestore(data.restore, data.devices);
  // A restored VM comes up paused: devices get their state before they serve anything, and what
  // they do on waking (interrupts) waits for resume().
  if (restore) loop.pause();
  let mmds: MmdsService | undefined;
  if (data.mmds) {
    mmds = new MmdsService({ version: data.mmds.version, imdsCompat: data.mmds.imdsCompat });
    mmds.setData(data.mmds.data ?? {});
    shareCounters(mmds, registry.group('mmds'));
  }
  /** A throttle whose timer is a timerfd in this loop, calling `resume` when it fires. */
  const throttle = (config: RateLimiterConfig | undefined, resume: () => void, group: Record<string, number>, field = 'throttled', events = 'rateLimiterEvents'): Throttle | undefined => {
    if (!config) return undefined;
    const timer = new TimerFd();
    loop.add(timer.fd, () => {
      timer.acknowledge();
      group[events]++;
      resume();
    });
    const t = new Throttle(config, timer);
    shareCounters(t.limiter, group, { throttled: field });
    return t;
  };
  for (const d of data.devices) {
    const metrics = registry.group(deviceGroup(d));
    const holder: { t?: VirtioMmio } = {};
    const malformed = () => holder.t?.countMalformedChain();
    const saved = restore?.devices.get(d.index);
    /** The limiter a device is built with: its setup's, or an empty one for saved limits to go into. */
    const limiter = (config: RateLimiterConfig | undefined, field: string) => config ?? (savedLimiter(saved, field) ? {} : undefined);
    let backend: VirtioBackend & Snapshottable;
    if (d.kind === 'block') {
      try {
        const t = throttle(limiter(d.rateLimiter, 'rateLimiter'), () => blk.resume(), metrics);
        const blk: BlockDevice = new BlockDevice(mem, {
          id: d.id,
          path: d.path,
          readOnly: d.readOnly,
          cacheType: d.cacheType,
          onMalformed: malformed,
          throttle: t,
        });
        limiters.set(`drive:${d.id}`, { rate_limiter: t });
        backend = blk;
      } catch (err) {
        throw new Error(`drive "${d.id}": cannot open ${d.path} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
      }
    } else if (d.kind === 'net') {
      let tapFd: number;
      try {
        tapFd = openTap(d.tap);
      } catch (err) {
        throw new Error(`network interface "${d.id}": ${(err as Error).message}`);
      }
      let watching = false;
      let rx: Throttle | undefined;
      let tx: Throttle | undefined;
      const net: NetDevice = new NetDevice(mem, {
        id: d.id,
        tapFd,
        mac: d.mac ? Uint8Array.from(d.mac.split(':').map((x) => parseInt(x, 16))) : undefined,
        mtu: d.mtu,
        onMalformed: malformed,
        rxThrottle: (rx = throttle(limiter(d.rxRateLimiter, 'rxRateLimiter'), () => net.resume('rx'), metrics, 'rxThrottled', 'rxRateLimiterEvents')),
        txThrottle: (tx = throttle(limiter(d.txRateLimiter, 'txRateLimiter'), () => net.resume('tx'), metrics, 'txThrottled', 'txRateLimiterEvents')),
        local: d.mmds && mmds ? mmdsStack(data.mmds!.ipv4Address, mmds, metrics) : undefined,
        watchTap: (on) => {
          if (on === watching) return;
          watching = on;
          if (on)
            loop.add(tapFd, () => {
              metrics.tapEvents++;
              net.onTapReadable();
            });
          else loop.remove(tapFd);
        },
      });
      limiters.set(`iface:${d.id}`, { rx_rate_limiter: rx, tx_rate_limiter: tx });
      backend = net;
    } else if (d.kind === 'vsock') {
      try {
        backend = new VsockDevice(mem, { guestCid: d.guestCid, udsPath: d.udsPath, poller: loop, onMalformed: malformed });
      } catch (err) {
        throw new Error(`vsock: ${(err as Error).message}`);
      }
    } else {
      const t = throttle(limiter(d.rateLimiter, 'rateLimiter'), () => rng.resume(), metrics);
      const rng: EntropyDevice = new EntropyDevice(mem, malformed, t);
      limiters.set('entropy', { rate_limiter: t });
      backend = rng;
    }
    const t = new VirtioMmio(mem, backend, () => signalEventfd(d.irqFd), new Int32Array(d.interruptStatus));
    shareCounters(t, metrics);
    shareCounters(backend as unknown as { counters: object }, metrics);
    t.onFailure = (why) => log.error(`devices/${d.kind}`, `${d.kind} device "${d.id}" failed and needs a reset: ${why}`);
    // The first malformed chain is worth a line; the rest are in the metrics.
    t.onMalformedChain = () => {
      if (t.counters.malformedChains === 1) log.warn(`devices/${d.kind}`, `${d.kind} device "${d.id}": the guest sent a malformed descriptor chain (counted in fc_run.${deviceGroup(d)}.malformed_chains in the metrics from now on)`);
    };
    holder.t = t;
    transports[d.index] = t;
    built.push({ setup: d, transport: t, model: backend });
    const queueEvents = d.notifyFds.map((_, q) => `queue${q}Events`);
    d.notifyFds.forEach((fd, q) =>
      loop.add(fd, () => {
        drainEventfd(fd);
        metrics[queueEvents[q]]++;
        t.queueNotified(q);
      }),
    );
  }
  if (restore) {
    for (const b of built) {
      const saved = restore.devices.get(b.setup.index)!;
      b.transport.restoreState(saved.transport, `${saved.where}.transport`);
      b.model.restoreState(saved.device, `${saved.where}.device`);
    }
    if (restore.mmds !== null) {
      if (!mmds || !data.mmds) throw snapshotMismatch('mmds', 'the snapshot has MMDS contents but this VM has no "mmds-config"');
      mmds.restoreState(restore.mmds, 'mmds', data.mmds.sizeLimit);
    }
    log.info('vmm', `restored the state of ${built.length} virtio device(s)${restore.mmds !== null ? ' and the MMDS' : ''}; they start on resume`);
  }
  const notifyFds = new Map(data.devices.map((d) => [d.index, d.notifyFds]));
  let pausedAccessLogged = false;
  loop.add(data.mailboxFd, () => {
    drainEventfd(data.mailboxFd);
    serveMailboxes(data.mailbox, (dev, offset, len, write, value) => {
      const t = transports[dev];
      if (!t) return 0xffffffff;
      if (loop.isPaused) {
        // vCPUs are paused before this thread, so nothing should come; whatever does is answered
        // (a vCPU never waits on a paused thread), and a queue notification is left pending in
        // the queue's ioeventfd, as KVM would have, for after resume().
        if (!pausedAccessLogged) log.warn('vmm', `an MMIO access to virtio device ${dev} arrived while the devices were paused (pause the vCPUs first); answered`);
        pausedAccessLogged = true;
        const fd = write && len === 4 && offset === MMIO.QUEUE_NOTIFY ? notifyFds.get(dev)?.[value >>> 0] : undefined;
        if (fd !== undefined) {
          signalEventfd(fd);
          return 0;
        }
      }
      if (write) {
        t.write(offset, len, value);
        return 0;
      }
      return t.read(offset, len);
    });
  }, EPOLLIN, true);
  const control = data.control;
  if (control) {
    const handle = controlHandler({ mmds: mmds && data.mmds ? { service: mmds, sizeLimit: data.mmds.sizeLimit } : undefined, limiters, log });
    // Served while paused too: MMDS contents and rate limiters may change then (a limiter's timer
    // armed meanwhile fires after resume).
    loop.add(control.fd, () => {
      drainEventfd(control.fd);
      serveControl(control, handle);
    }, EPOLLIN, true);
  }
  loop.add(data.stopFd, () => loop.stop(), EPOLLIN, true);
  if (data.snapshot) serveSnapshots(data.snapshot, loop, built, mmds, restore !== undefined);
  const { seccompFilter, seccompFd } = data;
  if (seccompFilter && seccompFd !== undefined) {
    // Every device is built and every file open: from here on this thread makes only its own filter's calls.
    loop.add(seccompFd, () => {
      drainEventfd(seccompFd);
      loop.remove(seccompFd);
      try {
        registerSigsysThread('vmm: the device thread');
        installThreadFilter(Buffer.from(seccompFilter.buffer, seccompFilter.byteOffset, seccompFilter.byteLength));
        port.postMessage({ kind: 'filtered' } satisfies VmmMessage);
      } catch (err) {
        port.postMessage({ kind: 'error', message: `VMM thread: cannot install its seccomp filter: ${(err as Error).message}` } satisfies VmmMessage);
        loop.stop();
      }
    }, EPOLLIN, true);
  }
  return { transports, loop };
}

/**
 * Pause, save and resume, asked for through the snapshot channel and answered with a 'snapshot'
 * message. Every device runs on this thread and serves a request to its end before the loop
 * looks for the next event (block I/O is synchronous), so once the pause request is being handled
 * no device is in the middle of anything: pausing is taking the device fds out of the loop.
 */
function serveSnapshots(channel: SnapshotChannel, loop: EventLoop, built: BuiltDevice[], mmds: MmdsService | undefined, restored: boolean): void {
  const command = new Int32Array(channel.command);
  /** Restored devices wake (interrupts, a look at every queue) on the first resume. */
  let wakePending = restored;
  const save = (): DevicesState => ({
    format: DEVICES_STATE_FORMAT,
    devices: built.map((b) => ({ index: b.setup.index, id: b.setup.id, kind: b.setup.kind, transport: b.transport.saveState(), device: b.model.saveState() }) as SavedDevice),
    mmds: mmds?.saveState() ?? null,
  });
  loop.add(channel.fd, () => {
    drainEventfd(channel.fd);
    const op = Atomics.load(command, 0);
    const seq = Atomics.load(command, 1);
    try {
      switch (op) {
        case SNAPSHOT_OP.PAUSE:
          loop.pause();
          port.postMessage({ kind: 'snapshot', seq, ok: true } satisfies VmmMessage);
          return;
        case SNAPSHOT_OP.SAVE:
          if (!loop.isPaused) throw new Error('the devices can be saved only while they are paused (pause() first)');
          port.postMessage({ kind: 'snapshot', seq, ok: true, state: save() } satisfies VmmMessage);
          return;
        case SNAPSHOT_OP.RESUME:
          loop.resume();
          if (wakePending) {
            wakePending = false;
            for (const b of built) b.transport.wakeAfterRestore();
          }
          port.postMessage({ kind: 'snapshot', seq, ok: true } satisfies VmmMessage);
          return;
        default:
          throw new Error(`unknown snapshot request ${op}`);
      }
    } catch (err) {
      port.postMessage({ kind: 'snapshot', seq, ok: false, message: (err as Error).message } satisfies VmmMessage);
    }
  }, EPOLLIN, true);
}

/** An MMDS network stack whose counters live in its interface's metrics group. */
function mmdsStack(ipv4: string, service: MmdsService, metrics: Record<string, number>): MmdsNetworkStack {
  const stack = new MmdsNetworkStack({ ipv4, service });
  const names = Object.fromEntries(Object.keys(stack.counters).map((k) => [k, `mmds${k[0].toUpperCase()}${k.slice(1)}`]));
  shareCounters(stack, metrics, names);
  return stack;
}

let built: ReturnType<typeof build>;
try {
  built = build();
  // Loaded before 'ready', so before any filter (loading opens and maps the file).
  loadSigsysLibrary();
  port.postMessage({ kind: 'ready' } satisfies VmmMessage);
} catch (err) {
  const e = err as Error;
  port.postMessage({ kind: 'error', message: e.message, ...(e instanceof FcRunError ? { code: e.code, exitCode: e.exitCode } : {}) } satisfies VmmMessage);
  process.exit(0);
}
built!.loop.run();
port.postMessage({
  kind: 'stopped',
  counters: Object.fromEntries(built!.transports.map((t, i) => [i, { transport: t.counters, device: (t.backend as unknown as { counters?: unknown }).counters }])),
} satisfies VmmMessage);
