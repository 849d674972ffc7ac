import { loadSpecFile } from '../../config/validate';
import { EXIT_OK } from '../../errors';
import { defaultInstanceName } from '../../deploy/resources';
import { kubernetesManifest, KubernetesOptions } from '../../deploy/kubernetes';
import { CommandSpec, ParsedArgs, UsageError } from '../args';
import { Io, reportIssues, write } from '../io';
import { REPORT_OPTIONS, reportingOf } from './common';

const TARGETS = ['kubernetes'] as const;
/** A DNS-1123 label: Kubernetes object names and label values built from the name must be one. */
const LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

export const MANIFEST_SPEC: CommandSpec = {
  name: 'manifest',
  usage: 'fc-run manifest kubernetes [options] <spec>',
  summary: 'Print what runs the spec on another platform: for kubernetes, a ConfigMap with the spec and a Pod running fc-run (JSON).',
  positionals: [
    { name: 'target', describe: `Where the VM will run: ${TARGETS.join(', ')}` },
    { name: 'spec', describe: 'Path to the VM spec (JSON)' },
  ],
  options: [
    { name: 'image', kind: 'string', valueName: 'IMAGE', describe: 'Container image with node and fc-run on its PATH (required)' },
    { name: 'name', kind: 'string', valueName: 'NAME', describe: 'Instance name: lower-case letters, digits and "-" (default: the spec file name)' },
    { name: 'namespace', kind: 'string', valueName: 'NS', describe: 'metadata.namespace of both objects (default: none, kubectl\'s current one)' },
    { name: 'kvm', kind: 'string', valueName: 'HOW', choices: ['device-plugin', 'privileged'], describe: 'How /dev/kvm reaches the container: a device plugin resource (default; unprivileged) or hostPath in a privileged container' },
    { name: 'kvm-resource', kind: 'string', valueName: 'RESOURCE', describe: 'The device plugin resource for /dev/kvm (default devices.kubevirt.io/kvm)' },
    { name: 'tun-resource', kind: 'string', valueName: 'RESOURCE', describe: 'The device plugin resource for /dev/net/tun, when the spec has TAPs (default devices.kubevirt.io/tun)' },
    { name: 'stop-timeout', kind: 'integer', min: 1, max: 3600, valueName: 'SECONDS', describe: 'terminationGracePeriodSeconds (default 15)' },
    ...REPORT_OPTIONS,
  ],
  examples: [
    ['fc-run manifest kubernetes --image registry.example/fc-run:0.1.0 vm.json | kubectl apply -f -', 'run vm.json in a cluster'],
    ['fc-run manifest kubernetes --image fc-run --kvm privileged vm.json', 'without a device plugin'],
  ],
  notes:
    'The kernel, initrd and drives are mounted from the node at the paths the spec names (hostPath): they must be there on the node.\n' +
    'The spec is not checked against files on this machine (they live on the nodes), only for validity.',
};

export function manifestCommand(io: Io, args: ParsedArgs): number {
  const o = args.options;
  const [target, file] = args.positionals;
  if (!(TARGETS as readonly string[]).includes(target)) throw new UsageError(`unknown target "${target}" (targets: ${TARGETS.join(', ')})`, 'manifest');
  const image = o.image as string | undefined;
  if (image === undefined) throw new UsageError('--image is required: the container image that has fc-run (and node) on its PATH', 'manifest');
  const loaded = loadSpecFile(file, { skipFiles: true });
  reportIssues(io, loaded.warnings.filter((w) => w.severity === 'warning'), reportingOf(args));
  const name = (o.name as string | undefined) ?? defaultInstanceName(loaded.spec.specFile).toLowerCase();
  if (!LABEL.test(name)) throw new UsageError(`--name ${name}: must be 1 to 63 lower-case letters, digits and "-", starting and ending with a letter or digit`, 'manifest');
  const opts: KubernetesOptions = {
    name,
    image,
    namespace: o.namespace as string | undefined,
    kvm: ((o.kvm as string | undefined) ?? 'device-plugin') as KubernetesOptions['kvm'],
    kvmResource: (o['kvm-resource'] as string | undefined) ?? 'devices.kubevirt.io/kvm',
    tunResource: (o['tun-resource'] as string | undefined) ?? 'devices.kubevirt.io/tun',
    stopTimeoutSec: (o['stop-timeout'] as number | undefined) ?? 15,
  };
  if (opts.namespace !== undefined && !LABEL.test(opts.namespace)) throw new UsageError(`--namespace ${opts.namespace}: not a valid namespace name`, 'manifest');
  write(io.out, kubernetesManifest(loaded.spec, opts).trimEnd());
  return EXIT_OK;
}
