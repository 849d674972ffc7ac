import * as fs from 'node:fs';
import { MonitorConfig, VmMonitor } from '../monitor/vm-monitor';
import { EXIT_INVALID_SPEC, FcRunError } from '../errors';
import { buildFilter, installProcessFilter, installThreadFilter, SECCOMP_RET_KILL_PROCESS } from '../kvm/seccomp';
import { builtinFilters, listsFitThisNode, SECCOMP_RET_LOG, SECCOMP_RET_TRAP } from '../kvm/seccomp-builtin';
import { X86_64_SYSCALLS } from '../kvm/syscall-table';
import { installSigsysHandler, loadSigsysLibrary, registerSigsysThread, reportFdFromEnvironment } from '../kvm/sigsys';
import { SECCOMP_LISTS_NODE_MAJORS } from '../kvm/seccomp-lists';
import { ControlClient, createControlChannel } from '../vmm/control';
import { DEFAULT_MMDS_SIZE_LIMIT } from '../config/resolved';
import { Kvm } from '../kvm/kvm';
import { GuestMemory } from '../kvm/memory';
import { MicroVm, RunResult } from '../vmm/microvm';
import type { Vm } from '../kvm/kvm';
import { EFD_CLOEXEC, EFD_NONBLOCK, errno, sys, SyscallError } from '../kvm/libc';
import { KVM_CAP, KVM_IOEVENTFD_FLAG_DATAMATCH, KVM_MEM_LOG_DIRTY_PAGES } from '../kvm/ioctls';
import { createMailboxes } from '../vmm/mmio-mailbox';
import { startVmmThread, VmmThread } from '../vmm/vmm-thread';
import type { VirtioDeviceSetup } from '../vmm/vmm-worker';
import type { DevicesState } from '../vmm/devices-state';
import type { VirtioWindows } from '../vmm/vcpu-exits';
import { MMIO } from '../devices/virtio/mmio';
export { prewarmVcpuThreads } from '../vmm/threads';
import { vcpuThreadsLoaded, vcpuThreadsMode, workerVcpus } from '../vmm/threads';
import type { BootPlan, RateLimiterPlan } from './plan';
import type { RateLimiterConfig } from '../limits/token-bucket';
import { prepareGuestMemory } from './structures';
import { configureVcpu, withTscDeadline } from './vcpu-setup';
import { assertCpuTemplateFitsHost, vendorFromCpuid } from './host-cpu';
import type { Vcpu } from '../kvm/kvm';
import { createSnapshot, SnapshotReport, SnapshotRequest } from '../vmm/snapshot';
import { DirtyLogChoice, DirtyPages } from '../vmm/dirty-pages';
import { dirtyLogProblem } from '../kvm/dirty-log';
import { planRestore } from '../vmm/devices-state';
import { openMemoryFile } from '../vmm/snapshot-memory';
import type { VmSnapshot } from '../vmm/snapshot-file';
import type { LegacyState } from '../vmm/microvm';
import { restoreVcpuState, restoreVmState, vcpuStateSupport, VcpuStateSupport } from '../kvm/snapshot-state';

/** Where KVM keeps the TSS for real-mode emulation: three pages just below the BIOS area at 4 GiB. */
const KVM_TSS_ADDRESS = 0xfffbd000;

export interface LaunchOptions {
  /** Guest serial output: an fd to write to, or -1 to discard it. */
  serialOutFd: number;
  /** process.hrtime.bigint() when fc-run started, for the boot time. */
  startNs: bigint;
  /** Terminal whose keystrokes go to the guest's serial port. */
  serialIn?: NodeJS.ReadStream;
  /** The MMDS contents at start (the spec's "mmds" key or --metadata); empty when absent. */
  mmdsData?: unknown;
  /** Logs and metrics (made from the plan by the caller; launch starts it). */
  monitor?: VmMonitor;
  /** Install the seccomp filter before the guest runs (default true). */
  seccomp?: boolean;
  /**
   * Per-thread filters (--seccomp-filter), each installed by its thread on top of the process-wide
   * one. They replace the built-in allow-lists; the process-wide filter is then the deny list.
   */
  threadFilters?: ThreadFilters;
  /** Called when the VM starts running (its stop handlers, SIGTERM included, are in place). */
  onRunning?: (vm: RunningVm) => void;
  /** Largest MMDS contents the API may set (bytes). */
  mmdsSizeLimit?: number;
  /** Files this process writes (log, metrics, serial output, API socket): never a snapshot's target. */
  outputPaths?: string[];
  /** The plan's hash (recorded in snapshots), taken when a snapshot needs it. */
  planHash?: () => string;
}

/**
 * BPF programs for Firecracker's thread categories: `api` for the main thread (CLI, API server),
 * `vmm` for the VMM thread (device models), `vcpu` for every vCPU thread. Node's own helper
 * threads (libuv's pool, V8's) keep the process-wide filter only.
 */
export interface ThreadFilters {
  api?: Buffer;
  vmm?: Buffer;
  vcpu?: Buffer;
}

/** What the API can do to a running VM. */
export interface RunningVm {
  sendCtrlAltDel(): void;
  /** Requests to the VMM thread (MMDS contents, rate limiters); absent without virtio devices. */
  control?: ControlClient;
  /** Every vCPU out of the guest and the devices quiet; resolves once that holds. */
  pause(): Promise<void>;
  resume(): Promise<void>;
  readonly paused: boolean;
  /** Every vCPU's registers, formatted (the VM is paused for the moment it takes). */
  dumpRegisters(): Promise<string[]>;
  /** Writes a snapshot of the paused VM (PUT /snapshot/create). */
  createSnapshot(req: SnapshotRequest): Promise<SnapshotReport>;
}

/** The logs and metrics of a VM with this plan. */
export function monitorFor(plan: BootPlan, config: MonitorConfig): VmMonitor {
  return new VmMonitor(config, plan.vcpus.count, plan.devices, plan.mmds !== undefined);
}

/** The plan's bucket settings in the rate limiter's terms. */
function limiterConfig(rl: RateLimiterPlan | undefined): RateLimiterConfig | undefined {
  if (!rl) return undefined;
  const bucket = (b: RateLimiterPlan['bandwidth']) => b && { size: b.size, one_time_burst: b.one_time_burst, refill_time: b.refill_time_ms };
  return { bandwidth: bucket(rl.bandwidth), ops: bucket(rl.ops) };
}

function eventfd(): number {
  const fd = sys.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (fd < 0) throw new SyscallError('eventfd', errno());
  return fd;
}

const QUEUES: Record<string, number> = { block: 1, entropy: 1, net: 2, vsock: 3 };

/**
 * Wires the plan's virtio devices: an irqfd per device (its IRQ), an ioeventfd per queue (a
 * write of the queue index to QueueNotify signals it without a VM exit), then the VMM thread that
 * owns the device models. With `restore` (a snapshot's device state) the devices get that state
 * and the VMM thread starts paused: the caller resumes it (VmmThread.resume) once the vCPUs and
 * interrupt controllers are restored.
 */
export async function startDevices(
  vm: Vm,
  mem: GuestMemory,
  plan: BootPlan,
  mmdsData: unknown,
  monitor: VmMonitor,
  mmdsSizeLimit: number,
  vmmFilter: Buffer | undefined,
  restore: DevicesState | undefined,
): Promise<{ windows: VirtioWindows; thread?: VmmThread; control?: ControlClient }> {
  const mailbox = createMailboxes(plan.vcpus.count);
  const mailboxFd = eventfd();
  const setups: VirtioDeviceSetup[] = [];
  for (const d of plan.devices) {
    const irqFd = eventfd();
    vm.registerIrqfd(irqFd, d.irq);
    const notifyFds = Array.from({ length: QUEUES[d.kind] }, (_, q) => {
      const fd = eventfd();
      vm.registerIoeventfd(fd, d.mmio.start + MMIO.QUEUE_NOTIFY, 4, KVM_IOEVENTFD_FLAG_DATAMATCH, q);
      return fd;
    });
    const common = { index: d.index, id: d.id, irqFd, notifyFds, interruptStatus: new SharedArrayBuffer(4) };
    if (d.kind === 'block') setups.push({ ...common, kind: 'block', path: d.path, readOnly: d.readOnly, cacheType: d.cacheType, rateLimiter: limiterConfig(d.rateLimiter) });
    else if (d.kind === 'net') setups.push({ ...common, kind: 'net', tap: d.tap, mac: d.guestMac, mtu: d.mtu, mmds: d.mmds, rxRateLimiter: limiterConfig(d.rxRateLimiter), txRateLimiter: limiterConfig(d.txRateLimiter) });
    else if (d.kind === 'vsock') setups.push({ ...common, kind: 'vsock', guestCid: d.guestCid, udsPath: d.udsPath });
    else setups.push({ ...common, kind: 'entropy', rateLimiter: limiterConfig(d.rateLimiter) });
  }
  const windows: VirtioWindows = {
    windows: setups.map((s) => ({ base: plan.devices[s.index].mmio.start, size: plan.devices[s.index].mmio.size, index: s.index, interruptStatus: s.interruptStatus })),
    mailbox,
    mailboxFd,
  };
  if (setups.length === 0) {
    // No device thread to check a snapshot's device state: it must say there are no devices.
    if (restore !== undefined) planRestore(restore, []);
    return { windows };
  }
  const mmds = plan.mmds && { version: plan.mmds.version, ipv4Address: plan.mmds.ipv4Address, imdsCompat: plan.mmds.imdsCompat, data: mmdsData ?? {}, sizeLimit: mmdsSizeLimit };
  const control = createControlChannel(mmdsSizeLimit + 64 * 1024, eventfd());
  const thread = await startVmmThread({ memory: mem.describe(), devices: setups, mailbox, mailboxFd, stopFd: eventfd(), mmds, control, seccompFilter: vmmFilter, seccompFd: vmmFilter ? eventfd() : undefined, restore, ...monitor.shared() });
  // process.exit waits for every worker thread to end, and this one sits in epoll_wait until told
  // to stop: whatever path exits the process (a signal before the VM runs, a crash handler) tells it.
  const stopOnExit = () => thread.stop();
  process.on('exit', stopOnExit);
  void thread.stopped.then(() => process.off('exit', stopOnExit));
  return { windows, thread, control: new ControlClient(control) };
}

/** KVM's VM with its in-kernel interrupt controllers and PIT, as boot and restore both make it. */
function createMachine(plan: BootPlan): { kvm: Kvm; vm: Vm } {
  // Before KVM is touched: a template for another CPU is a spec problem, whatever KVM offers.
  assertCpuTemplateFitsHost(plan.cpuTemplate);
  if (!fs.existsSync('/dev/kvm')) throw new FcRunError('no-kvm', '/dev/kvm does not exist: fc-run needs a Linux host with KVM');
  const kvm = new Kvm();
  const max = kvm.maxVcpus();
  if (plan.vcpus.count > max) throw new FcRunError('too-many-vcpus', `the plan has ${plan.vcpus.count} vCPUs but this host's KVM allows ${max}`);
  const vm = kvm.createVm();
  vm.setTssAddr(KVM_TSS_ADDRESS);
  vm.createIrqchip();
  vm.createPit2();
  return { kvm, vm };
}

/**
 * Executes a boot plan on KVM: creates the VM and its in-kernel interrupt controllers and PIT,
 * maps guest memory, loads the kernel and boot structures, configures each vCPU, and runs until
 * the guest stops.
 */
export async function launch(plan: BootPlan, opts: LaunchOptions): Promise<RunResult> {
  const { kvm, vm } = createMachine(plan);
  const mem = GuestMemory.allocate(plan.memory.regions);
  const dirtyLog = registerMemory(kvm, vm, mem, plan);
  try {
    prepareGuestMemory(mem, plan, true); // a fresh mapping: all zeros
  } catch (err) {
    if (err instanceof FcRunError) throw err;
    const e = err as NodeJS.ErrnoException;
    throw new FcRunError('kernel-load', `cannot load the kernel or initrd: ${e.code ? `${e.code} on ${e.path ?? 'a file'}` : e.message}`);
  }

  const cpuid = withTscDeadline(kvm.supportedCpuid(), kvm.checkExtension(KVM_CAP.TSC_DEADLINE_TIMER) > 0);
  if (plan.cpuTemplate.kind === 'static') {
    // The vendor the guest will be shown must be the one the template was written for, too.
    const kvmVendor = vendorFromCpuid(cpuid);
    if (kvmVendor !== plan.cpuTemplate.vendor) {
      throw new FcRunError('cpu-template-vendor', `cpu_template ${plan.cpuTemplate.name} needs a ${plan.cpuTemplate.vendor} CPU, but KVM_GET_SUPPORTED_CPUID reports ${kvmVendor ?? 'no vendor'}`, EXIT_INVALID_SPEC);
    }
  }
  const vcpus = Array.from({ length: plan.vcpus.count }, (_, i) => vm.createVcpu(i));
  for (const v of vcpus) configureVcpu(v, plan, cpuid);
  return runMachine({ kvm, vm, mem, vcpus, plan, dirtyLog }, opts);
}

/**
 * Registers guest memory with KVM. With `track_dirty_pages`, KVM logs the guest's writes when its
 * dirty log passes a self-test on this host (and FC_RUN_DIRTY_PAGES is not "compare"), and the
 * VMM records its own writes; otherwise Diff snapshots find changed pages by comparison.
 */
function registerMemory(kvm: Kvm, vm: Vm, mem: GuestMemory, plan: BootPlan): DirtyLogChoice | undefined {
  let choice: DirtyLogChoice | undefined;
  if (plan.memory.trackDirtyPages) {
    const problem = process.env.FC_RUN_DIRTY_PAGES === 'compare' ? 'FC_RUN_DIRTY_PAGES=compare' : dirtyLogProblem(kvm);
    choice = problem === undefined ? { vm, slots: mem.describe().map((r, slot) => ({ slot, size: r.size })) } : { problem };
    if (problem === undefined) mem.enableDirtyTracking();
  }
  const flags = choice && 'vm' in choice ? KVM_MEM_LOG_DIRTY_PAGES : 0;
  mem.describe().forEach((r, slot) => vm.setUserMemoryRegion(slot, r.guestAddr, r.size, r.hostAddr, flags));
  return choice;
}

/** Files a snapshot may not be written over: the VM's drives and this process's own output files. */
function protectedPaths(plan: BootPlan, opts: LaunchOptions): { path: string; what: string }[] {
  return [
    ...plan.devices.flatMap((d) => (d.kind === 'block' ? [{ path: d.path, what: `the VM's drive ${d.id}` }] : [])),
    ...(opts.outputPaths ?? []).map((p) => ({ path: p, what: "one of this fc-run's own files (log, metrics, serial output, API socket)" })),
  ];
}

/**
 * What this KVM can save of a vCPU, read while /dev/kvm may still be asked anything (before the
 * seccomp filters). A KVM that cannot snapshot still runs the VM; taking a snapshot then says why not.
 */
function snapshotsOf(kvm: Kvm): { support?: VcpuStateSupport; problem?: string } {
  try {
    return { support: vcpuStateSupport(kvm) };
  } catch (err) {
    return { problem: (err as Error).message };
  }
}

/** What restoring a snapshot hands to the machine start on top of what a boot does. */
export interface RestoredParts {
  /** Device states (the VMM thread applies them before serving anything). */
  devices: unknown;
  /** Serial and i8042 register state. */
  legacy: LegacyState;
  /** Start with every vCPU parked (resumed through the API). */
  paused: boolean;
  /** The memory file, kept open when the plan tracks dirty pages (the first Diff compares with it). */
  memFd?: number;
}

interface Machine {
  kvm: Kvm;
  vm: Vm;
  mem: GuestMemory;
  vcpus: Vcpu[];
  plan: BootPlan;
  restored?: RestoredParts;
  /** With track_dirty_pages: KVM's dirty log to use, or why it is not used. */
  dirtyLog?: DirtyLogChoice;
  /** snapshotsOf(kvm), when the caller has it already (a restore). */
  snapshots?: { support?: VcpuStateSupport; problem?: string };
}

/**
 * Starts a machine whose memory and vCPUs are ready (booted or restored): the device threads,
 * the seccomp filters, then the vCPUs; resolves when the guest stops.
 */
async function runMachine(m: Machine, opts: LaunchOptions): Promise<RunResult> {
  const { vm, mem, vcpus, plan } = m;
  const monitor = opts.monitor ?? monitorFor(plan, {});
  const seccomp = seccompPolicy(opts, (w) => monitor.log.warn('vmm', w));
  const vmmFilter = seccomp?.threads?.vmm;
  const { support: snapshotSupport, problem: noSnapshots } = m.snapshots ?? snapshotsOf(m.kvm);
  // track_dirty_pages: what each snapshot held, so that a Diff holds only what changed since.
  const dirty = plan.memory.trackDirtyPages ? new DirtyPages(m.restored?.memFd, m.dirtyLog && 'vm' in m.dirtyLog ? m.dirtyLog : undefined) : undefined;
  if (m.dirtyLog) {
    monitor.log.info('vmm', 'vm' in m.dirtyLog ? "track_dirty_pages: KVM's dirty log (its self-test passed) and the VMM's own writes" : `track_dirty_pages: changed pages are found by comparing page digests (KVM's dirty log is not used: ${m.dirtyLog.problem})`);
  }
  const mode = vcpuThreadsMode(plan.vcpus.count, opts.threadFilters !== undefined);
  const virtio = await startDevices(vm, mem, plan, opts.mmdsData, monitor, opts.mmdsSizeLimit ?? DEFAULT_MMDS_SIZE_LIMIT, vmmFilter, m.restored?.devices as DevicesState | undefined);
  // Anything that fails from here until the vCPUs run (a restored snapshot's legacy device state,
  // a seccomp filter) stops the device thread first: a thread left in epoll_wait would keep the
  // process from exiting.
  let micro: MicroVm;
  try {
    micro = new MicroVm(vm, vcpus, {
      virtio: virtio.windows,
      vmmThread: virtio.thread,
      serialOutFd: opts.serialOutFd,
      serialIn: opts.serialIn,
      ports: {
        serial: plan.legacy.serial.port,
        serialIrq: plan.legacy.serial.irq,
        i8042: plan.legacy.i8042.port,
        i8042Irq: plan.legacy.i8042.irq,
        bootTimer: plan.legacy.bootTimerPort,
      },
      launchStartNs: opts.startNs,
      monitor,
      vcpuSeccompFilter: seccomp?.threads?.vcpu,
      legacy: m.restored?.legacy,
      startPaused: m.restored?.paused,
      snapshotSupport,
      vcpuThreads: mode,
      // A vcpu filter of the user's (--seccomp-filter) need not allow the clock reads that count it.
      countRunTime: !opts.threadFilters?.vcpu,
    });
    // A restored VMM thread starts paused; one that is to run is resumed before any vCPU is.
    if (m.restored && !m.restored.paused) await virtio.thread?.resume();
    // Every vCPU worker started and loaded before the filters: none starts under them.
    const workers = workerVcpus(mode, plan.vcpus.count);
    if (seccomp && workers > 0) await vcpuThreadsLoaded(workers);
    // Everything is open and every thread that exists is set up: from here on the process may not
    // start programs, create processes, open network sockets or change the system (src/kvm/seccomp.ts).
    if (seccomp) {
      installProcessFilter(seccomp.process);
      const custom = seccomp.threads;
      if (custom) {
        if (custom.api) {
          registerSigsysThread('api: the main thread');
          installThreadFilter(custom.api);
        }
        await virtio.thread?.installFilter();
      }
      monitor.log.info('vmm', `seccomp filter installed: ${seccomp.describe}`);
    } else {
      monitor.log.warn('vmm', 'running without a seccomp filter (--no-seccomp)');
    }
    monitor.log.info('vmm', `${m.restored ? 'restored' : 'running'} ${plan.vcpus.count} vCPU(s), ${plan.devices.length} virtio device(s)${m.restored?.paused ? ', paused' : ''}`);
  } catch (err) {
    virtio.thread?.stop();
    if (virtio.thread) await Promise.race([virtio.thread.stopped, new Promise((r) => setTimeout(r, 2000).unref())]);
    throw err;
  }
  monitor.start();
  const done = micro.run();
  opts.onRunning?.({
    sendCtrlAltDel: () => micro.i8042.sendCtrlAltDel(),
    control: virtio.control,
    pause: () => micro.pause(),
    resume: () => micro.resume(),
    get paused() {
      return micro.isPaused;
    },
    dumpRegisters: () => micro.dumpRegisters(),
    createSnapshot: (req) =>
      noSnapshots !== undefined
        ? Promise.reject(new FcRunError('kvm-snapshot-unsupported', noSnapshots))
        : micro.whilePaused(() => createSnapshot({ micro, vm, mem, vmmThread: virtio.thread, plan, planHash: opts.planHash?.() ?? '', protectedPaths: protectedPaths(plan, opts), dirty }, req)),
  });
  return done;
}

interface SeccompPolicy {
  process: Buffer;
  threads?: ThreadFilters;
  describe: string;
}

/**
 * Which filters this run installs (src/kvm/seccomp.ts):
 * - --no-seccomp: none;
 * - --seccomp-filter FILE: the file's per-thread filters, which replace the built-in ones (as in
 *   Firecracker), on top of the deny list for the whole process (Node's helper threads have no
 *   category of Firecracker's, and the deny list leaves a file free to allow what Node needs);
 * - otherwise, on a Node major the lists were made for: the built-in allow-lists, process-wide
 *   and per thread; on another major, a warning and the deny list.
 * Unlisted calls trap into fc-run's SIGSYS handler, which names the call and ends fc-run by
 * SIGSYS; without that handler (fc-run built without a C compiler) they kill the process outright.
 * FC_RUN_SECCOMP_LOG=1 is a trial mode: unlisted calls are let through and logged by the kernel.
 */
function seccompPolicy(opts: LaunchOptions, warn: (message: string) => void): SeccompPolicy | undefined {
  if (opts.seccomp === false) return undefined;
  const trial = process.env.FC_RUN_SECCOMP_LOG === '1';
  const trapping = installSigsysHandler(X86_64_SYSCALLS, reportFdFromEnvironment());
  loadSigsysLibrary(); // and what this thread would otherwise load lazily under the filters
  if (!trapping) warn('seccomp: the SIGSYS handler (in dist/native/fcrun.node) is missing: a refused system call kills fc-run without naming it');
  const action = trapping ? SECCOMP_RET_TRAP : SECCOMP_RET_KILL_PROCESS;
  const custom = opts.threadFilters;
  if (custom) {
    const has = (k: keyof ThreadFilters) => (custom[k] ? k : `${k} (none)`);
    return { process: buildFilter(action), threads: custom, describe: `the deny list for the process, and per-thread seccomp filters from --seccomp-filter: ${[has('api'), has('vmm'), has('vcpu')].join(', ')}` };
  }
  if (!listsFitThisNode()) {
    warn(
      `seccomp: the built-in allow-lists are made for Node ${SECCOMP_LISTS_NODE_MAJORS.join(', ')}, not Node ${process.versions.node}: using the deny list instead (give --seccomp-filter FILE for allow-lists of your own)`,
    );
    return { process: buildFilter(action), describe: 'the deny list (no allow-lists for this Node)' };
  }
  if (trial) warn('seccomp: trial mode (FC_RUN_SECCOMP_LOG=1): calls off the allow-lists are let through and logged by the kernel, not refused');
  const f = builtinFilters(process.pid, trial ? SECCOMP_RET_LOG : action);
  return { process: f.process, threads: { api: f.api, vmm: f.vmm, vcpu: f.vcpu }, describe: `the built-in allow-lists (process-wide, api, vmm, vcpu)${trial ? ', trial mode: unlisted calls logged, not refused' : ''}` };
}

/**
 * Restores a snapshot on KVM: the plan it was taken from (with the caller's back-end overrides),
 * guest memory mapped copy-on-write from the memory file, the VM's and every vCPU's state, and the
 * devices' state; runs it (or leaves it paused) until the guest stops.
 */
export async function restoreSnapshot(snapshot: VmSnapshot, memFile: string, plan: BootPlan, paused: boolean, opts: LaunchOptions): Promise<RunResult> {
  // The memory file first: a wrong one is refused before KVM is touched.
  const fd = openMemoryFile(memFile, plan.memory.regions);
  const keepFd = plan.memory.trackDirtyPages === true;
  let mem: GuestMemory;
  let machine: { kvm: Kvm; vm: Vm };
  try {
    machine = createMachine(plan);
    mem = GuestMemory.mapFile(plan.memory.regions, fd);
  } catch (err) {
    fs.closeSync(fd);
    throw err;
  }
  if (!keepFd) fs.closeSync(fd);
  const { kvm, vm } = machine;
  const dirtyLog = registerMemory(kvm, vm, mem, plan);
  // Restoring needs none of it (a KVM without it refuses the parts itself); snapshots of the restored VM do.
  const snapshots = snapshotsOf(kvm);
  const vcpus = Array.from({ length: plan.vcpus.count }, (_, i) => vm.createVcpu(i));
  vcpus.forEach((v, i) => restoreVcpuState(v, snapshot.vcpus[i], snapshots.support));
  // After the vCPUs: setting kvm-clock updates each vCPU's clock page, which their state would overwrite.
  restoreVmState(vm, snapshot.vm);
  return runMachine({ kvm, vm, mem, vcpus, plan, restored: { devices: snapshot.devices, legacy: snapshot.legacy, paused, memFd: keepFd ? fd : undefined }, dirtyLog, snapshots }, opts);
}
