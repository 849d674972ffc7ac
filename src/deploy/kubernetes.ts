import * as path from 'node:path';
import type { ResolvedSpec } from '../config/resolved';
import { EXIT_INVALID_SPEC, FcRunError } from '../errors';
import { hostPathsOf, vmmOverheadMib } from './resources';

/**
 * Kubernetes objects that run one spec: a ConfigMap holding the spec, and a Pod running
 * `fc-run run` on it.
 *
 * A Pod, not a Deployment: fc-run's exit status is the VM's fate (0 when the guest powers off or
 * resets, 1 on failure, 2 for an invalid spec) and restartPolicy OnFailure maps onto it directly,
 * while a Deployment allows only restartPolicy Always (a guest that powers off would be booted
 * again forever) and its rolling updates can run two pods at once against the same writable drive.
 *
 * /dev/kvm: a hostPath mount alone does not work, since the container runtime's device cgroup still
 * refuses to open a device it was not told about unless the container is privileged. So either a
 * device plugin advertises it as a resource (KubeVirt's devices.kubevirt.io/kvm and
 * devices.kubevirt.io/tun, or any generic device plugin) and the container stays unprivileged with
 * every capability dropped, or (--kvm privileged) the device comes in by hostPath and the
 * container is privileged.
 */

export interface KubernetesOptions {
  name: string;
  image: string;
  namespace?: string;
  kvm: 'device-plugin' | 'privileged';
  kvmResource: string;
  tunResource: string;
  stopTimeoutSec: number;
}

/** Where the ConfigMap's spec appears in the container. */
export const SPEC_DIR = '/etc/fc-run';
const SPEC_KEY = 'vm.json';
/** Where the API socket goes in the container (an emptyDir). */
const RUN_DIR = '/run/fc-run';

type Json = Record<string, unknown>;

/**
 * The spec as stored in the ConfigMap: the same JSON with every path made absolute, since in the
 * container it lives in SPEC_DIR, far from the files its relative paths named.
 */
export function portableSpec(spec: ResolvedSpec): Json {
  const raw = JSON.parse(JSON.stringify(spec.raw)) as Json;
  const section = (k: string) => raw[k] as Json | undefined;
  const boot = section('boot-source');
  if (boot) {
    boot.kernel_image_path = spec.bootSource.kernel_image_path;
    if (spec.bootSource.initrd_path !== undefined) boot.initrd_path = spec.bootSource.initrd_path;
  }
  const drives = raw.drives as Json[] | undefined;
  drives?.forEach((d, i) => {
    const r = spec.drives[i];
    if (r.path_on_host !== undefined) d.path_on_host = r.path_on_host;
    if (r.socket !== undefined) d.socket = r.socket;
  });
  if (section('vsock') && spec.vsock) section('vsock')!.uds_path = spec.vsock.uds_path;
  if (section('logger')?.log_path !== undefined) section('logger')!.log_path = spec.logger!.log_path;
  if (section('metrics') && spec.metrics) section('metrics')!.metrics_path = spec.metrics.metrics_path;
  if (typeof raw['cpu-config'] === 'string' && spec.cpuConfig) raw['cpu-config'] = spec.cpuConfig.source;
  return raw;
}

/** A volume name for a host path: DNS-1123 label, unique by index. */
function volumeName(i: number, what: string): string {
  return `host-${i}-${what.toLowerCase().replace(/[^a-z0-9]+/g, '-')}`.slice(0, 63).replace(/-+$/, '');
}

/** cpu and memory for the pod: the guest's plus fc-run's own (one CPU for the VMM thread). */
export function podResources(spec: ResolvedSpec): { cpu: string; memory: string } {
  const vcpus = spec.machine.vcpu_count;
  return { cpu: String(vcpus + 1), memory: `${spec.machine.mem_size_mib + vmmOverheadMib(vcpus)}Mi` };
}

export function kubernetesObjects(spec: ResolvedSpec, opts: KubernetesOptions): { configMap: Json; pod: Json } {
  const taps = spec.networkInterfaces.length > 0;
  const objName = `fc-run-${opts.name.toLowerCase()}`;
  const labels = { 'app.kubernetes.io/name': 'fc-run', 'app.kubernetes.io/instance': opts.name.toLowerCase() };
  const metadata = (name: string) => ({ name, ...(opts.namespace ? { namespace: opts.namespace } : {}), labels });

  const configMap = {
    apiVersion: 'v1',
    kind: 'ConfigMap',
    metadata: metadata(`${objName}-spec`),
    data: { [SPEC_KEY]: `${JSON.stringify(portableSpec(spec), null, 2)}\n` },
  };

  // Each file or directory the spec names is mounted from the node at the same path, so the spec's
  // absolute paths hold inside the container as they do on the node.
  const volumes: Json[] = [{ name: 'spec', configMap: { name: `${objName}-spec` } }, { name: 'run', emptyDir: { medium: 'Memory' } }];
  const mounts: Json[] = [
    { name: 'spec', mountPath: SPEC_DIR, readOnly: true },
    { name: 'run', mountPath: RUN_DIR },
  ];
  hostPathsOf(spec).forEach((p, i) => {
    // The spec's and the API socket's own mounts would be shadowed by (or shadow) a host path there.
    for (const own of [SPEC_DIR, RUN_DIR]) {
      if (p.path === own || p.path.startsWith(`${own}/`)) {
        throw new FcRunError('deploy-mount-conflict', `the ${p.what} ${p.path} collides with ${own}, which the Pod mounts for fc-run itself; move it elsewhere`, EXIT_INVALID_SPEC);
      }
    }
    const name = volumeName(i, p.what);
    volumes.push({ name, hostPath: { path: p.path, type: p.kind === 'directory' ? 'DirectoryOrCreate' : p.path.startsWith('/dev/') ? 'BlockDevice' : 'File' } });
    mounts.push({ name, mountPath: p.path, readOnly: !p.writable });
  });

  const resources = podResources(spec);
  const limits: Record<string, string> = { cpu: resources.cpu, memory: resources.memory };
  let securityContext: Json;
  if (opts.kvm === 'device-plugin') {
    limits[opts.kvmResource] = '1';
    if (taps) limits[opts.tunResource] = '1';
    securityContext = {
      allowPrivilegeEscalation: false,
      readOnlyRootFilesystem: true,
      // TUNSETIFF on a TAP the container's root does not own (or creating one in the pod's network
      // namespace) needs CAP_NET_ADMIN; nothing else fc-run does needs a capability.
      capabilities: { drop: ['ALL'], ...(taps ? { add: ['NET_ADMIN'] } : {}) },
      seccompProfile: { type: 'RuntimeDefault' },
    };
  } else {
    volumes.push({ name: 'dev-kvm', hostPath: { path: '/dev/kvm', type: 'CharDevice' } });
    mounts.push({ name: 'dev-kvm', mountPath: '/dev/kvm' });
    if (taps) {
      volumes.push({ name: 'dev-net-tun', hostPath: { path: '/dev/net/tun', type: 'CharDevice' } });
      mounts.push({ name: 'dev-net-tun', mountPath: '/dev/net/tun' });
    }
    securityContext = { privileged: true, readOnlyRootFilesystem: true };
  }

  const pod = {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: metadata(objName),
    spec: {
      restartPolicy: 'OnFailure',
      terminationGracePeriodSeconds: opts.stopTimeoutSec,
      automountServiceAccountToken: false,
      enableServiceLinks: false,
      containers: [
        {
          name: 'vm',
          image: opts.image,
          command: ['fc-run'],
          args: ['run', path.posix.join(SPEC_DIR, SPEC_KEY), '--id', opts.name, '--api-sock', path.posix.join(RUN_DIR, 'api.sock')],
          // Requests equal limits: the Guaranteed QoS class, so the node evicts the VM last.
          resources: { requests: { ...limits }, limits },
          securityContext,
          volumeMounts: mounts,
        },
      ],
      volumes,
    },
  };
  return { configMap, pod };
}

/** Both objects as one List, which `kubectl apply -f` takes as it is. */
export function kubernetesManifest(spec: ResolvedSpec, opts: KubernetesOptions): string {
  const { configMap, pod } = kubernetesObjects(spec, opts);
  return `${JSON.stringify({ apiVersion: 'v1', kind: 'List', items: [configMap, pod] }, null, 2)}\n`;
}
