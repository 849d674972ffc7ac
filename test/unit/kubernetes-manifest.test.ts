import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { kubernetesManifest, kubernetesObjects, KubernetesOptions, podResources, portableSpec } from '../../src/deploy/kubernetes';
import { vmmOverheadMib } from '../../src/deploy/resources';
import { load, minimalSpec, Workspace } from '../helpers/specs';

const VALIDATOR = path.join(__dirname, '..', 'helpers', 'k8s-validate.mjs');

let ws: Workspace;
beforeAll(() => {
  ws = new Workspace();
  for (const d of ['logs', 'vsock']) fs.mkdirSync(path.join(ws.dir, d));
});
afterAll(() => ws.remove());

function opts(over: Partial<KubernetesOptions> = {}): KubernetesOptions {
  return { name: 'web', image: 'registry.example/fc-run:0.1.0', kvm: 'device-plugin', kvmResource: 'devices.kubevirt.io/kvm', tunResource: 'devices.kubevirt.io/tun', stopTimeoutSec: 15, ...over };
}

function fullSpec(): Record<string, unknown> {
  return {
    ...minimalSpec(),
    'machine-config': { vcpu_count: 2, mem_size_mib: 256 },
    drives: [
      { drive_id: 'rootfs', path_on_host: 'rootfs.ext4', is_root_device: true, is_read_only: true },
      { drive_id: 'data', path_on_host: 'data.ext4', is_root_device: false, is_read_only: false },
    ],
    'network-interfaces': [{ iface_id: 'eth0', host_dev_name: 'tap-web0' }],
    logger: { log_path: 'logs/vm.log', level: 'Info' },
    vsock: { guest_cid: 3, uds_path: 'vsock/v.sock' },
  };
}

/** Validates objects against Kubernetes' published schema (kubernetes-models) in a separate node. */
function validate(objects: unknown[]): { kind: string; ok: boolean; error?: string }[] {
  const file = path.join(ws.dir, `objects-${process.pid}.json`);
  fs.writeFileSync(file, JSON.stringify(objects));
  const r = spawnSync(process.execPath, [VALIDATOR, file], { encoding: 'utf8', cwd: path.resolve(__dirname, '..', '..') });
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
  return r.stdout.trim().split('\n').map((l) => JSON.parse(l));
}

describe('fc-run manifest kubernetes', () => {
  test.each([
    ['minimal spec, device plugin', () => minimalSpec(), {}],
    ['full spec, device plugin', () => fullSpec(), { namespace: 'vms' }],
    ['full spec, privileged', () => fullSpec(), { kvm: 'privileged' as const }],
  ])('the ConfigMap and Pod validate against the Kubernetes schema (%s)', (_what, spec, over: Partial<KubernetesOptions>) => {
    const list = JSON.parse(kubernetesManifest(load(ws, spec()).spec, opts(over)));
    expect(list.kind).toBe('List');
    expect(validate(list.items)).toEqual([
      { kind: 'ConfigMap', ok: true },
      { kind: 'Pod', ok: true },
    ]);
  });

  test('the validator is real: a Pod with a malformed quantity fails', () => {
    const { pod } = kubernetesObjects(load(ws, minimalSpec()).spec, opts());
    ((pod.spec as any).containers[0].resources.limits as Record<string, string>).cpu = 'two';
    const [r] = validate([pod]);
    expect(r.ok).toBe(false);
    expect(r.error).toMatch(/cpu/);
  });

  test('resources: vCPUs plus one for the VMM thread; guest memory plus fc-run overhead; requests equal limits', () => {
    const spec = load(ws, fullSpec()).spec;
    expect(podResources(spec)).toEqual({ cpu: '3', memory: `${256 + vmmOverheadMib(2)}Mi` });
    const { pod } = kubernetesObjects(spec, opts());
    const c = (pod.spec as any).containers[0];
    expect(c.resources.requests).toEqual(c.resources.limits);
    expect(c.resources.limits).toMatchObject({ 'devices.kubevirt.io/kvm': '1', 'devices.kubevirt.io/tun': '1' });
    expect(c.securityContext).toMatchObject({ allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'], add: ['NET_ADMIN'] } });
    expect((pod.spec as any).restartPolicy).toBe('OnFailure');
  });

  test('without TAPs the container keeps no capability and asks for no tun device', () => {
    const { pod } = kubernetesObjects(load(ws, minimalSpec()).spec, opts());
    const c = (pod.spec as any).containers[0];
    expect(c.securityContext.capabilities).toEqual({ drop: ['ALL'] });
    expect(Object.keys(c.resources.limits).sort()).toEqual(['cpu', 'devices.kubevirt.io/kvm', 'memory']);
  });

  test('the stored spec has absolute paths, each mounted from the node at the same path, writable only where fc-run writes', () => {
    const spec = load(ws, fullSpec()).spec;
    const stored = portableSpec(spec) as any;
    expect(stored['boot-source'].kernel_image_path).toBe(path.join(ws.dir, 'vmlinux'));
    expect(stored.drives.map((d: any) => d.path_on_host)).toEqual([path.join(ws.dir, 'rootfs.ext4'), path.join(ws.dir, 'data.ext4')]);
    expect(stored.vsock.uds_path).toBe(path.join(ws.dir, 'vsock', 'v.sock'));
    const { pod, configMap } = kubernetesObjects(spec, opts());
    expect(JSON.parse((configMap as any).data['vm.json'])).toEqual(stored);
    const mounts = (pod.spec as any).containers[0].volumeMounts as { mountPath: string; readOnly?: boolean }[];
    const ro = (p: string) => mounts.find((m) => m.mountPath === p)?.readOnly;
    expect(ro(path.join(ws.dir, 'vmlinux'))).toBe(true);
    expect(ro(path.join(ws.dir, 'rootfs.ext4'))).toBe(true);
    expect(ro(path.join(ws.dir, 'data.ext4'))).toBe(false);
    expect(ro(path.join(ws.dir, 'logs'))).toBe(false);
    expect(ro('/etc/fc-run')).toBe(true);
  });
});
