import { sha256Hex } from '../sha256';
import type { CpuConfig, RateLimiter } from '../config/vm-spec.generated';
import type { CustomCpuTemplate, LogLevel, ResolvedSpec } from '../config/resolved';
import type { KernelImage, KernelSegment } from './kernel-image';
import * as L from './layout';
import { CpuModel, CpuVendor, isX86StaticTemplate, staticCpuTemplate, templateModels, templateVendor, X86StaticTemplate } from './static-cpu-templates';

/** Version of the BootPlan format; bump when its shape changes. */
export const PLAN_VERSION = 1;

export interface MemoryRange {
  start: number;
  size: number;
}

export type E820Type = 'ram' | 'reserved';

export interface BucketPlan {
  size: number;
  one_time_burst: number;
  refill_time_ms: number;
}

export interface RateLimiterPlan {
  bandwidth?: BucketPlan;
  ops?: BucketPlan;
}

interface DeviceBase {
  /** Position in the boot device order (root drive, drives, net, vsock, entropy). */
  index: number;
  mmio: MemoryRange;
  irq: number;
}

export type DevicePlan =
  | (DeviceBase & {
      kind: 'block';
      id: string;
      path: string;
      readOnly: boolean;
      root: boolean;
      partuuid?: string;
      cacheType: 'Unsafe' | 'Writeback';
      rateLimiter?: RateLimiterPlan;
    })
  | (DeviceBase & {
      kind: 'net';
      id: string;
      tap: string;
      guestMac?: string;
      mtu?: number;
      mmds: boolean;
      rxRateLimiter?: RateLimiterPlan;
      txRateLimiter?: RateLimiterPlan;
    })
  | (DeviceBase & { kind: 'vsock'; id: 'vsock'; guestCid: number; udsPath: string })
  | (DeviceBase & { kind: 'entropy'; id: 'rng'; rateLimiter?: RateLimiterPlan });

export type CpuTemplatePlan =
  | { kind: 'none' }
  | { kind: 'custom'; source: string; cpuid: CustomCpuTemplate['cpuid']; msr: CustomCpuTemplate['msr'] }
  | {
      /** A static template (cpu_template), already expanded into the custom template it equals. */
      kind: 'static';
      name: X86StaticTemplate;
      /** The host it may run on, checked before any vCPU exists (Firecracker refuses others too). */
      vendor: CpuVendor;
      models: CpuModel[];
      source: string;
      cpuid: CustomCpuTemplate['cpuid'];
      msr: CustomCpuTemplate['msr'];
    };

/**
 * Everything launch needs, decided ahead of time: plain data, printable, hashable. The same spec
 * and kernel always give the same plan; launch executes it and decides nothing about layout.
 */
export interface BootPlan {
  planVersion: number;
  arch: 'x86_64';
  spec: string;
  vcpus: { count: number; smt: boolean };
  cpuTemplate: CpuTemplatePlan;
  memory: {
    sizeMib: number;
    /** Guest RAM as KVM memory slots, split around the 32-bit MMIO gap. */
    regions: MemoryRange[];
    /** The memory map the guest is told about (zero page e820 or PVH memmap). */
    e820: (MemoryRange & { type: E820Type })[];
    mmioGap: MemoryRange;
    /** `track_dirty_pages`: the VM can take Diff snapshots (present only when true). */
    trackDirtyPages?: true;
  };
  boot: {
    gdt: number;
    idt: number;
    pml4: number;
    pdpt: number;
    pd: number;
    identityMapped: number;
    stackPointer: number;
    zeroPage: number;
    pvhStartInfo: number;
    pvhModlist: number;
    pvhMemmap: number;
    mptable: MemoryRange;
    cmdline: MemoryRange;
  };
  kernel: {
    path: string;
    format: KernelImage['format'];
    fileSize: number;
    entry: number;
    /** long64: long mode, RSI = zero page. pvh32: 32-bit protected mode, EBX = hvm_start_info. */
    entryMode: 'long64' | 'pvh32';
    segments: KernelSegment[];
    end: number;
  };
  initrd?: { path: string; size: number; guestAddr: number };
  cmdline: string;
  devices: DevicePlan[];
  legacy: {
    serial: { port: number; irq: number };
    i8042: { port: number; irq: number };
    bootTimerPort: number;
  };
  mmds?: {
    version: 'V1' | 'V2';
    ipv4Address: string;
    interfaces: string[];
    imdsCompat: boolean;
    contents?: { source: string; sizeBytes: number };
  };
  logger?: { path?: string; level: LogLevel; showLevel: boolean; showOrigin: boolean; module?: string };
  metrics?: { path: string; emitId: boolean; properties: Record<string, string> };
}

/** One reason a spec cannot be planned, pointing into the spec. */
export interface PlanIssue {
  severity: 'error' | 'warning';
  code: string;
  path: (string | number)[];
  message: string;
  hint?: string;
}

export interface CompiledPlan {
  plan: BootPlan;
  /** The plan's SHA-256 (hex), taken on first use. */
  readonly hash: string;
  warnings: PlanIssue[];
}

export class PlanError extends Error {
  constructor(readonly issues: PlanIssue[]) {
    super(issues.filter((i) => i.severity === 'error').map((i) => i.message).join('; '));
    this.name = 'PlanError';
  }
}

const hex = (n: number) => `0x${n.toString(16)}`;

/**
 * Compiles a resolved spec and its kernel's headers into a BootPlan. Pure: no I/O, no clock, no
 * randomness. Throws PlanError listing every reason the spec cannot run.
 */
export function compilePlan(spec: ResolvedSpec, kernel: KernelImage, initrd?: { size: number }): CompiledPlan {
  const issues: PlanIssue[] = [];
  const error = (code: string, path: (string | number)[], message: string, hint?: string) =>
    issues.push({ severity: 'error', code, path, message, hint });

  const memBytes = spec.machine.mem_size_mib * L.MiB;
  const lowEnd = Math.min(memBytes, L.MMIO_GAP_START);
  const regions = L.guestRamRegions(spec.machine.mem_size_mib);
  const e820: BootPlan['memory']['e820'] = [
    { start: 0, size: L.RESERVED_LOW_START, type: 'ram' },
    { start: L.RESERVED_LOW_START, size: L.HIMEM_START - L.RESERVED_LOW_START, type: 'reserved' },
  ];
  if (lowEnd > L.HIMEM_START) e820.push({ start: L.HIMEM_START, size: lowEnd - L.HIMEM_START, type: 'ram' });
  if (regions[1]) e820.push({ start: regions[1].start, size: regions[1].size, type: 'ram' });

  // The kernel must sit in RAM below the MMIO gap, where the boot page tables can reach it. A
  // limit that no memory size lifts is the image's fault and is reported on the image.
  const kernelEnd = kernel.segments.reduce((end, s) => Math.max(end, s.guestAddr + s.memSize), 0);
  const what = kernel.bzimage ? `the kernel (with the ${kernel.bzimage.initSize} bytes its header's init_size asks for to decompress)` : 'the kernel';
  if (kernelEnd > L.IDENTITY_MAPPED_BYTES && kernel.format !== 'pvh') {
    error(
      'kernel-above-identity-map',
      ['boot-source', 'kernel_image_path'],
      `${what} extends to ${hex(kernelEnd)}, beyond the first GiB that the boot page tables map`,
      'use a kernel that loads and decompresses below 1 GiB, or a PVH kernel',
    );
  } else if (kernelEnd > L.MMIO_GAP_START) {
    error('kernel-does-not-fit', ['boot-source', 'kernel_image_path'], `${what} extends to ${hex(kernelEnd)}, past 3 GiB where the MMIO gap starts; no memory size can hold it`);
  } else if (kernelEnd > lowEnd) {
    error(
      'kernel-does-not-fit',
      ['machine-config', 'mem_size_mib'],
      `${what} occupies guest memory up to ${hex(kernelEnd)} (${mib(kernelEnd)} MiB) but guest RAM ends at ${hex(lowEnd)} (mem_size_mib ${spec.machine.mem_size_mib})`,
      `raise mem_size_mib to at least ${Math.ceil(kernelEnd / L.MiB) + 1}`,
    );
  }

  let initrdPlan: BootPlan['initrd'];
  if (spec.bootSource.initrd_path !== undefined && initrd) {
    // The initrd goes at the top of RAM below the MMIO gap, or below the highest address a
    // bzImage says it can reach (initrd_addr_max), whichever is lower.
    const cap = kernel.bzimage ? kernel.bzimage.initrdAddrMax + 1 : Infinity;
    const top = Math.min(lowEnd, cap);
    const limit =
      cap < lowEnd ? `the kernel's initrd_addr_max (${hex(cap - 1)})`
      : lowEnd === L.MMIO_GAP_START ? 'the MMIO gap at 3 GiB'
      : `the end of guest RAM (mem_size_mib ${spec.machine.mem_size_mib})`;
    const bottom = L.alignUp(kernelEnd, L.PAGE_SIZE);
    const guestAddr = L.alignDown(top - initrd.size, L.PAGE_SIZE);
    if (initrd.size === 0) {
      error('initrd-empty', ['boot-source', 'initrd_path'], 'the initrd file is empty', 'point initrd_path at a cpio archive, or remove initrd_path');
    } else if (guestAddr < bottom) {
      const room = Math.max(0, L.alignDown(top, L.PAGE_SIZE) - bottom);
      const canGrow = cap >= lowEnd && lowEnd < L.MMIO_GAP_START && bottom + initrd.size <= Math.min(cap, L.MMIO_GAP_START);
      error(
        'initrd-does-not-fit',
        ['boot-source', 'initrd_path'],
        `the initrd (${initrd.size} bytes, ${mib(initrd.size)} MiB) does not fit: it must lie between the kernel's end (${hex(kernelEnd)}) and ${limit}, which leaves ${room} bytes`,
        canGrow ? `raise mem_size_mib to at least ${Math.ceil((bottom + initrd.size) / L.MiB) + 1}` : 'use a smaller initrd',
      );
    } else {
      initrdPlan = { path: spec.bootSource.initrd_path, size: initrd.size, guestAddr };
    }
  }

  const cmdlineLimit = kernel.bzimage ? Math.min(kernel.bzimage.cmdlineSize + 1, L.CMDLINE_MAX_BYTES) : L.CMDLINE_MAX_BYTES;
  const { devices, cmdline } = specChecks(spec, cmdlineLimit, issues);

  if (issues.some((i) => i.severity === 'error')) throw new PlanError(issues);

  const plan: BootPlan = {
    planVersion: PLAN_VERSION,
    arch: 'x86_64',
    spec: spec.specFile,
    vcpus: { count: spec.machine.vcpu_count, smt: spec.machine.smt },
    cpuTemplate: cpuTemplatePlan(spec),
    memory: {
      sizeMib: spec.machine.mem_size_mib,
      regions,
      e820,
      mmioGap: { start: L.MMIO_GAP_START, size: L.MMIO_GAP_END - L.MMIO_GAP_START },
      ...(spec.machine.track_dirty_pages ? { trackDirtyPages: true as const } : {}),
    },
    boot: {
      gdt: L.GDT_START,
      idt: L.IDT_START,
      pml4: L.PML4_START,
      pdpt: L.PDPT_START,
      pd: L.PD_START,
      identityMapped: L.IDENTITY_MAPPED_BYTES,
      stackPointer: L.BOOT_STACK_POINTER,
      zeroPage: L.ZERO_PAGE_START,
      pvhStartInfo: L.PVH_INFO_START,
      pvhModlist: L.PVH_MODLIST_START,
      pvhMemmap: L.PVH_MEMMAP_START,
      mptable: { start: L.MPTABLE_START, size: L.mptableSize(spec.machine.vcpu_count) },
      cmdline: { start: L.CMDLINE_START, size: cmdlineLimit },
    },
    kernel: {
      path: kernel.path,
      format: kernel.format,
      fileSize: kernel.fileSize,
      entry: kernel.entry,
      entryMode: kernel.format === 'pvh' ? 'pvh32' : 'long64',
      segments: kernel.segments,
      end: kernelEnd,
    },
    initrd: initrdPlan,
    cmdline,
    devices,
    legacy: { serial: { ...L.SERIAL_COM1 }, i8042: { ...L.I8042 }, bootTimerPort: L.BOOT_TIMER_PORT },
    mmds: spec.mmdsConfig && {
      version: spec.mmdsConfig.version,
      ipv4Address: spec.mmdsConfig.ipv4_address,
      interfaces: spec.mmdsConfig.network_interfaces,
      imdsCompat: spec.mmdsConfig.imds_compat,
      contents: spec.mmds && { source: spec.mmds.source, sizeBytes: spec.mmds.sizeBytes },
    },
    logger: spec.logger && {
      path: spec.logger.log_path,
      level: spec.logger.level,
      showLevel: spec.logger.show_level,
      showOrigin: spec.logger.show_log_origin,
      module: spec.logger.module,
    },
    metrics: spec.metrics && { path: spec.metrics.metrics_path, emitId: spec.metrics.emit_id, properties: spec.metrics.properties },
  };
  const stable = canonicalJson(plan);
  // The hash is taken when asked for (plan prints it, snapshots record it): a launch that takes no
  // snapshot never hashes.
  let hash: string | undefined;
  return {
    plan: JSON.parse(stable) as BootPlan,
    get hash() {
      return (hash ??= sha256Hex(stable));
    },
    warnings: issues,
  };
}

/** As Firecracker: a custom template (cpu-config) wins over cpu_template, which is then unused. */
function cpuTemplatePlan(spec: ResolvedSpec): CpuTemplatePlan {
  if (spec.cpuConfig) return { kind: 'custom', source: spec.cpuConfig.source, cpuid: spec.cpuConfig.cpuid, msr: spec.cpuConfig.msr };
  const name = spec.machine.cpu_template;
  if (!isX86StaticTemplate(name)) return { kind: 'none' };
  const t = staticCpuTemplate(name);
  return { kind: 'static', name, vendor: templateVendor(name), models: templateModels(name), source: t.source, cpuid: t.cpuid, msr: t.msr };
}

type Report = (code: string, path: (string | number)[], message: string, hint?: string) => void;

/**
 * Every check of the plan that needs only the spec, not the kernel file: what `fc-run validate
 * --skip-files` can still promise. compilePlan runs the same checks, so the two never disagree.
 */
export function specChecks(spec: ResolvedSpec, cmdlineLimit: number, issues: PlanIssue[]): { devices: DevicePlan[]; cmdline: string } {
  const error: Report = (code, path, message, hint) => issues.push({ severity: 'error', code, path, message, hint });
  const warning: Report = (code, path, message, hint) => issues.push({ severity: 'warning', code, path, message, hint });
  refuseUnsupported(spec, error);
  const devices = planDevices(spec, error);
  const cmdline = buildCmdline(spec, devices, warning);
  const cmdlineBytes = Buffer.byteLength(cmdline) + 1;
  if (cmdlineBytes > cmdlineLimit) {
    error(
      'cmdline-too-long',
      ['boot-source', 'boot_args'],
      `the kernel command line is ${cmdlineBytes} bytes with its NUL (boot_args plus ${devices.length} virtio_mmio.device entries); the kernel accepts ${cmdlineLimit}`,
      'shorten boot_args',
    );
  }
  if (hasCustomTemplate(spec) && spec.machine.cpu_template !== 'None') {
    warning('cpu-template-overridden', ['machine-config', 'cpu_template'], `cpu_template "${spec.machine.cpu_template}" is replaced by the custom template in cpu-config`, 'remove one of them');
  }
  return { devices, cmdline };
}

/** The spec-only checks with the longest command line any kernel accepts: no file is read. */
export function checkSpecOnly(spec: ResolvedSpec): PlanIssue[] {
  const issues: PlanIssue[] = [];
  specChecks(spec, L.CMDLINE_MAX_BYTES, issues);
  return issues;
}

/**
 * Whether a custom template replaces cpu_template. Asked of the spec, not of the loaded template:
 * under --skip-files a template file is not read, and the answer must not change with that.
 */
function hasCustomTemplate(spec: ResolvedSpec): boolean {
  return spec.cpuConfig !== undefined || (spec.raw['cpu-config'] !== undefined && spec.raw['cpu-config'] !== null);
}

/** Features the schema accepts for Firecracker compatibility but fc-run cannot run. */
function refuseUnsupported(spec: ResolvedSpec, error: Report): void {
  const notYet = (path: (string | number)[], what: string, hint: string) =>
    error('not-supported', path, `${what} is not supported by fc-run yet`, hint);
  if (spec.unsupported.balloon) notYet(['balloon'], 'the balloon device', 'remove the "balloon" section');
  if (spec.unsupported.pmem.length > 0) notYet(['pmem'], 'virtio-pmem', 'remove the "pmem" section; use a drive instead');
  if (spec.unsupported.memoryHotplug) notYet(['memory-hotplug'], 'memory hot-plug', 'remove the "memory-hotplug" section and size mem_size_mib instead');
  if (spec.machine.huge_pages !== 'None') notYet(['machine-config', 'huge_pages'], `huge_pages "${spec.machine.huge_pages}"`, 'set "huge_pages": "None"');
  if (spec.machine.cpu_template === 'V1N1' && !hasCustomTemplate(spec)) {
    // Which x86 template suits depends on the host, which a plan does not know: name none.
    error('wrong-architecture', ['machine-config', 'cpu_template'], 'cpu_template "V1N1" is an aarch64 template; fc-run runs x86_64 guests', 'use "None", an x86_64 static template made for the host\'s CPU, or a custom template in "cpu-config"');
  }
  if (spec.cpuConfig?.template) refuseTemplateParts(spec.cpuConfig.template, () => ['cpu-config'], error);
  spec.drives.forEach((d, i) => {
    if (d.socket !== undefined) notYet(['drives', i, 'socket'], `vhost-user block (drive "${d.drive_id}")`, 'give the drive a path_on_host instead of a socket');
    if (d.io_engine === 'Async') notYet(['drives', i, 'io_engine'], `io_engine "Async" (drive "${d.drive_id}")`, 'use "Sync" or remove io_engine');
  });
}

/**
 * What fc-run refuses in a custom CPU template, in a spec or in a template file checked on its own
 * (`where` names the template's key, or the spec's "cpu-config").
 */
export function refuseTemplateParts(t: Pick<CpuConfig, 'kvm_capabilities' | 'reg_modifiers' | 'vcpu_features'>, where: (key: 'kvm_capabilities' | 'reg_modifiers' | 'vcpu_features') => (string | number)[], error: Report): void {
  if (t.kvm_capabilities?.length) error('not-supported', where('kvm_capabilities'), 'cpu-config kvm_capabilities is not supported by fc-run yet', 'remove kvm_capabilities from the CPU template');
  const aarch64 = t.reg_modifiers?.length ? 'reg_modifiers' : t.vcpu_features?.length ? 'vcpu_features' : undefined;
  if (aarch64) error('wrong-architecture', where(aarch64), 'the CPU template has aarch64 reg_modifiers or vcpu_features; fc-run runs x86_64 guests', 'remove them');
}

function bucket(b: { size: number; one_time_burst?: number; refill_time: number } | undefined): BucketPlan | undefined {
  return b && { size: b.size, one_time_burst: b.one_time_burst ?? 0, refill_time_ms: b.refill_time };
}

function limiter(rl: RateLimiter | undefined): RateLimiterPlan | undefined {
  if (!rl || (!rl.bandwidth && !rl.ops)) return undefined;
  return { bandwidth: bucket(rl.bandwidth), ops: bucket(rl.ops) };
}

/** Boot device order follows Firecracker: root drive first, then drives, net, vsock, entropy. */
function planDevices(spec: ResolvedSpec, error: Report): DevicePlan[] {
  const drives = [...spec.drives.filter((d) => d.is_root_device), ...spec.drives.filter((d) => !d.is_root_device)];
  const out: DevicePlan[] = [];
  const slot = () => {
    const index = out.length;
    return { index, mmio: { start: L.VIRTIO_MMIO_BASE + index * L.VIRTIO_MMIO_SIZE, size: L.VIRTIO_MMIO_SIZE }, irq: L.VIRTIO_IRQ_FIRST + index };
  };
  for (const d of drives) {
    if (d.path_on_host === undefined) continue; // vhost-user, refused above
    out.push({ ...slot(), kind: 'block', id: d.drive_id, path: d.path_on_host, readOnly: d.is_read_only, root: d.is_root_device, partuuid: d.is_root_device ? d.partuuid : undefined, cacheType: d.cache_type, rateLimiter: limiter(d.rate_limiter) });
  }
  const mmdsIfaces = new Set(spec.mmdsConfig?.network_interfaces ?? []);
  for (const n of spec.networkInterfaces) {
    out.push({ ...slot(), kind: 'net', id: n.iface_id, tap: n.host_dev_name, guestMac: n.guest_mac, mtu: n.mtu, mmds: mmdsIfaces.has(n.iface_id), rxRateLimiter: limiter(n.rx_rate_limiter), txRateLimiter: limiter(n.tx_rate_limiter) });
  }
  if (spec.vsock) out.push({ ...slot(), kind: 'vsock', id: 'vsock', guestCid: spec.vsock.guest_cid, udsPath: spec.vsock.uds_path });
  if (spec.entropy) out.push({ ...slot(), kind: 'entropy', id: 'rng', rateLimiter: limiter(spec.entropy.rate_limiter) });

  const maxDevices = L.VIRTIO_IRQ_LAST - L.VIRTIO_IRQ_FIRST + 1;
  if (out.length > maxDevices) {
    error('too-many-devices', [], `the spec has ${out.length} virtio devices; x86 legacy interrupts allow at most ${maxDevices} (IRQ ${L.VIRTIO_IRQ_FIRST}-${L.VIRTIO_IRQ_LAST})`, 'remove some drives or interfaces');
  }
  return out;
}

function buildCmdline(spec: ResolvedSpec, devices: DevicePlan[], warning: Report): string {
  const parts = [spec.bootSource.boot_args.trim()];
  const root = devices.find((d) => d.kind === 'block' && d.root);
  if (root && root.kind === 'block') {
    if (/(^|\s)root=/.test(spec.bootSource.boot_args)) {
      warning('root-overridden', ['boot-source', 'boot_args'], `boot_args sets root=, but drive "${root.id}" is the root device and fc-run's root= comes later, so it wins`, 'remove root= from boot_args, or unset is_root_device');
    }
    parts.push(`${root.partuuid ? `root=PARTUUID=${root.partuuid}` : 'root=/dev/vda'} ${root.readOnly ? 'ro' : 'rw'}`);
  }
  for (const d of devices) parts.push(`virtio_mmio.device=4K@${hex(d.mmio.start)}:${d.irq}`);
  return parts.filter((p) => p.length > 0).join(' ');
}

function mib(bytes: number): string {
  return (bytes / L.MiB).toFixed(1);
}

/** JSON with object keys sorted and undefined members dropped, so equal plans are equal bytes. */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) => {
    if (v === null || typeof v !== 'object' || Array.isArray(v)) return v;
    const sorted: Record<string, unknown> = {};
    for (const k of Object.keys(v).sort()) {
      const item = (v as Record<string, unknown>)[k];
      if (item !== undefined) sorted[k] = item;
    }
    return sorted;
  });
}
