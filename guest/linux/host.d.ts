/** Types of host.js (plain JavaScript so that benches use it without a build). */
export interface LinuxHost {
  /** hardware: KVM runs guest code on the CPU; emulating: an instruction-emulating KVM. */
  kind: 'hardware' | 'emulating';
  /** What the ring-3 probe printed (or the override that chose the kind). */
  why: string;
}
export function detectHost(opts?: { bin?: string; probe?: string }): LinuxHost;
export function bootArgs(host: LinuxHost, extra?: string[]): string;
export function cpuConfig(host: LinuxHost): string | undefined;
export function hostTscKhz(): number;
