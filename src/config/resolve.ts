import * as path from 'node:path';
import { SpecIssue } from './issues';
import { parseBitmap, parseRegisterNumber } from './cpu-template';
import { checkCpuConfigFile } from './template-file';
import {
  CustomCpuTemplate,
  DEFAULT_BOOT_ARGS,
  DEFAULT_MEM_SIZE_MIB,
  DEFAULT_MMDS_IPV4,
  DEFAULT_VCPU_COUNT,
  LogLevel,
  ResolvedSpec,
} from './resolved';
import type { CpuConfig, VmSpec } from './vm-spec.generated';

export interface ResolveOptions {
  baseDir: string;
  specFile: string;
  /** Contents for MMDS from --metadata, already parsed; conflicts with the spec's `mmds` key. */
  metadata?: { source: string; data: Record<string, unknown> };
  /** --skip-files: read no file at all (a cpu-config template is then not checked). */
  skipFiles?: boolean;
  /** The spec's directory as the user named it, for naming files the spec names in messages. */
  displayDir?: string;
}

const LEVELS: Record<string, LogLevel> = {
  error: 'Error',
  warn: 'Warning',
  warning: 'Warning',
  info: 'Info',
  debug: 'Debug',
  trace: 'Trace',
  off: 'Off',
};

/**
 * Applies defaults and makes paths absolute. Runs on a spec that passed the schema and the rules;
 * the only new issues it can raise come from files it has to read (a cpu-config template).
 */
export function resolveSpec(spec: VmSpec, opts: ResolveOptions, extra: SpecIssue[]): ResolvedSpec {
  const abs = (p: string) => path.resolve(opts.baseDir, p);
  const boot = spec['boot-source'];
  const mc = spec['machine-config'];
  const mmdsCfg = spec['mmds-config'];

  let mmds: ResolvedSpec['mmds'];
  if (spec.mmds !== undefined) {
    mmds = { source: `${opts.specFile}#/mmds`, data: spec.mmds, sizeBytes: Buffer.byteLength(JSON.stringify(spec.mmds)) };
  } else if (opts.metadata) {
    mmds = { ...opts.metadata, sizeBytes: Buffer.byteLength(JSON.stringify(opts.metadata.data)) };
  }

  let cpuConfig: CustomCpuTemplate | undefined;
  const cc = spec['cpu-config'];
  if (typeof cc === 'string') {
    const file = abs(cc);
    // --skip-files reads no file: the template's contents are checked where the files are.
    if (!opts.skipFiles) {
      const loaded = checkCpuConfigFile(file, opts.displayDir !== undefined && !path.isAbsolute(cc) ? path.join(opts.displayDir, cc) : cc, extra);
      if (loaded) cpuConfig = toTemplate(loaded, file);
    }
  } else if (cc) {
    cpuConfig = toTemplate(cc, 'inline');
  }

  return {
    specFile: opts.specFile,
    bootSource: {
      kernel_image_path: abs(boot.kernel_image_path),
      initrd_path: boot.initrd_path === undefined ? undefined : abs(boot.initrd_path),
      boot_args: boot.boot_args ?? DEFAULT_BOOT_ARGS,
      bootArgsDefaulted: boot.boot_args === undefined,
    },
    machine: {
      vcpu_count: mc?.vcpu_count ?? DEFAULT_VCPU_COUNT,
      mem_size_mib: mc?.mem_size_mib ?? DEFAULT_MEM_SIZE_MIB,
      smt: mc?.smt ?? false,
      cpu_template: mc?.cpu_template ?? 'None',
      track_dirty_pages: mc?.track_dirty_pages ?? false,
      huge_pages: mc?.huge_pages ?? 'None',
    },
    cpuConfig,
    drives: (spec.drives ?? []).map((d) => ({
      drive_id: d.drive_id,
      path_on_host: d.path_on_host === undefined ? undefined : abs(d.path_on_host),
      is_root_device: d.is_root_device,
      is_read_only: d.is_read_only ?? false,
      partuuid: d.partuuid,
      cache_type: d.cache_type ?? 'Unsafe',
      io_engine: d.io_engine ?? 'Sync',
      rate_limiter: d.rate_limiter,
      socket: d.socket === undefined ? undefined : abs(d.socket),
    })),
    networkInterfaces: (spec['network-interfaces'] ?? []).map((n) => ({
      iface_id: n.iface_id,
      host_dev_name: n.host_dev_name,
      guest_mac: n.guest_mac?.toLowerCase(),
      mtu: n.mtu,
      rx_rate_limiter: n.rx_rate_limiter,
      tx_rate_limiter: n.tx_rate_limiter,
    })),
    vsock: spec.vsock && { guest_cid: spec.vsock.guest_cid, uds_path: abs(spec.vsock.uds_path) },
    mmdsConfig: mmdsCfg && {
      version: mmdsCfg.version ?? 'V1',
      network_interfaces: [...mmdsCfg.network_interfaces],
      ipv4_address: mmdsCfg.ipv4_address ?? DEFAULT_MMDS_IPV4,
      imds_compat: mmdsCfg.imds_compat ?? false,
    },
    mmds,
    logger: spec.logger && {
      log_path: spec.logger.log_path === undefined ? undefined : abs(spec.logger.log_path),
      level: LEVELS[(spec.logger.level ?? 'Info').toLowerCase()],
      show_level: spec.logger.show_level ?? false,
      show_log_origin: spec.logger.show_log_origin ?? false,
      module: spec.logger.module,
    },
    metrics: spec.metrics && {
      metrics_path: abs(spec.metrics.metrics_path),
      emit_id: spec.metrics.emit_id ?? false,
      properties: { ...(spec.metrics.properties ?? {}) },
    },
    entropy: spec.entropy && { rate_limiter: spec.entropy.rate_limiter },
    unsupported: { balloon: spec.balloon, pmem: spec.pmem ?? [], memoryHotplug: spec['memory-hotplug'] },
    raw: spec,
  };
}

function toTemplate(cfg: CpuConfig, source: string): CustomCpuTemplate {
  const num = (s: string) => Number(parseRegisterNumber(s) ?? 0n);
  const filter = (bitmap: string, bits: 32 | 64) => {
    const f = parseBitmap(bitmap, bits);
    if (typeof f === 'string') throw new Error(`unvalidated bitmap reached the resolver: ${bitmap}`);
    return f;
  };
  return {
    source,
    kvm_capabilities: [...(cfg.kvm_capabilities ?? [])],
    cpuid: (cfg.cpuid_modifiers ?? []).flatMap((m) =>
      m.modifiers.map((r) => ({ leaf: num(m.leaf), subleaf: num(m.subleaf), flags: m.flags, register: r.register, filter: filter(r.bitmap, 32) })),
    ),
    msr: (cfg.msr_modifiers ?? []).map((m) => ({ addr: num(m.addr), filter: filter(m.bitmap, 64) })),
    template: cfg,
  };
}
