import type { Balloon, CpuConfig, MemoryHotplug, Pmem, RateLimiter, VmSpec } from './vm-spec.generated';

/** Firecracker's command line when boot_args is absent. */
export const DEFAULT_BOOT_ARGS =
  'reboot=k panic=1 nomodule 8250.nr_uarts=0 i8042.noaux i8042.nomux i8042.dumbkbd swiotlb=noforce';
export const DEFAULT_VCPU_COUNT = 1;
export const DEFAULT_MEM_SIZE_MIB = 128;
export const DEFAULT_MMDS_IPV4 = '169.254.169.254';
/** Firecracker's default MMDS data store limit (its --mmds-size-limit), in bytes. */
export const DEFAULT_MMDS_SIZE_LIMIT = 51200;

export type StaticCpuTemplate = 'None' | 'C3' | 'T2' | 'T2S' | 'T2CL' | 'T2A' | 'V1N1';
export type LogLevel = 'Error' | 'Warning' | 'Info' | 'Debug' | 'Trace' | 'Off';

/** A 32- or 64-bit register filter: bits in `mask` are forced to the matching bits of `value`. */
export interface BitFilter {
  /** Hex string, so 64-bit values survive JSON and stay readable in plans. */
  mask: string;
  value: string;
}

export interface CustomCpuTemplate {
  /** Where it came from: "inline" or the template file's absolute path. */
  source: string;
  kvm_capabilities: string[];
  cpuid: { leaf: number; subleaf: number; flags: number; register: 'eax' | 'ebx' | 'ecx' | 'edx'; filter: BitFilter }[];
  msr: { addr: number; filter: BitFilter }[];
  /** A spec's template as validated (keys Firecracker ignores dropped): what the jail's vm.json holds. Absent for a static template. */
  template?: CpuConfig;
}

export interface ResolvedDrive {
  drive_id: string;
  /** Absolute path (undefined only for vhost-user drives, which the planner refuses). */
  path_on_host?: string;
  is_root_device: boolean;
  is_read_only: boolean;
  partuuid?: string;
  cache_type: 'Unsafe' | 'Writeback';
  io_engine: 'Sync' | 'Async';
  rate_limiter?: RateLimiter;
  socket?: string;
}

export interface ResolvedNetworkInterface {
  iface_id: string;
  host_dev_name: string;
  guest_mac?: string;
  mtu?: number;
  rx_rate_limiter?: RateLimiter;
  tx_rate_limiter?: RateLimiter;
}

/**
 * A validated spec with every default applied and every path absolute. The planner consumes only
 * this, never the raw file, so nothing downstream re-derives defaults.
 */
export interface ResolvedSpec {
  /** Absolute path of the spec file ("<inline>" for specs not read from disk). */
  specFile: string;
  bootSource: { kernel_image_path: string; initrd_path?: string; boot_args: string; bootArgsDefaulted: boolean };
  machine: {
    vcpu_count: number;
    mem_size_mib: number;
    smt: boolean;
    cpu_template: StaticCpuTemplate;
    track_dirty_pages: boolean;
    huge_pages: 'None' | 'Transparent' | '2M';
  };
  cpuConfig?: CustomCpuTemplate;
  drives: ResolvedDrive[];
  networkInterfaces: ResolvedNetworkInterface[];
  vsock?: { guest_cid: number; uds_path: string };
  mmdsConfig?: { version: 'V1' | 'V2'; network_interfaces: string[]; ipv4_address: string; imds_compat: boolean };
  /** Initial MMDS contents, from the spec's `mmds` key or --metadata. */
  mmds?: { source: string; data: Record<string, unknown>; sizeBytes: number };
  logger?: { log_path?: string; level: LogLevel; show_level: boolean; show_log_origin: boolean; module?: string };
  metrics?: { metrics_path: string; emit_id: boolean; properties: Record<string, string> };
  entropy?: { rate_limiter?: RateLimiter };
  /** Sections accepted for Firecracker compatibility that fc-run cannot run yet. */
  unsupported: { balloon?: Balloon; pmem: Pmem[]; memoryHotplug?: MemoryHotplug };
  raw: VmSpec;
}
