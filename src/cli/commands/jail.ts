import { loadSpecFile } from '../../config/validate';
import { assertSpecFitsHost, planSpec } from '../../boot';
import { prepareJail, runJail } from '../../jail/jail';
import { CommandSpec, ParsedArgs, UsageError } from '../args';
import { Io, reportStatus } from '../io';
import { loadOptionsOf, REPORT_OPTIONS, reportingOf, SPEC_OPTIONS } from './common';
import { instanceIdProblem } from './run';

export const JAIL_SPEC: CommandSpec = {
  name: 'jail',
  usage: 'fc-run jail <spec> --id ID --uid N --gid N [options]',
  summary: 'Launch the microVM inside a jail: chroot, cgroups, mount/PID (and network) namespaces, an unprivileged user (needs root).',
  positionals: [{ name: 'spec', describe: 'Path to the VM spec (JSON)' }],
  options: [
    { name: 'id', kind: 'string', valueName: 'ID', check: instanceIdProblem, describe: 'The microVM id: names the jail directory and the cgroups (required)' },
    { name: 'uid', kind: 'integer', min: 0, max: 4294967294, valueName: 'N', describe: 'User the microVM runs as (required)' },
    { name: 'gid', kind: 'integer', min: 0, max: 4294967294, valueName: 'N', describe: 'Group the microVM runs as (required)' },
    { name: 'chroot-base-dir', kind: 'string', valueName: 'DIR', describe: 'Where jails are made: <dir>/fc-run/<id>/root (default /srv/jailer)' },
    { name: 'netns', kind: 'string', valueName: 'PATH', describe: 'Network namespace to run in (e.g. /var/run/netns/vm1)' },
    { name: 'cgroup', kind: 'string', repeatable: true, valueName: 'SETTING', describe: 'A cgroup setting, <controller>.<file>=<value> (repeatable)' },
    { name: 'serial-out', kind: 'string', valueName: 'none', describe: 'Passed to the jailed fc-run: "none" to discard guest output' },
    ...SPEC_OPTIONS,
    ...REPORT_OPTIONS,
  ],
  examples: [['fc-run jail vm.json --id vm1 --uid 1000 --gid 1000 --cgroup memory.limit_in_bytes=536870912', 'a jailed microVM with a memory limit']],
};

export async function jailCommand(io: Io, args: ParsedArgs): Promise<number> {
  const o = args.options;
  const rep = reportingOf(args);
  for (const required of ['id', 'uid', 'gid']) {
    if (o[required] === undefined) {
      throw new UsageError(`missing required option --${required}`, 'jail');
    }
  }
  const loaded = loadSpecFile(args.positionals[0], loadOptionsOf(args));
  planSpec(loaded); // refuse what cannot run before building anything
  assertSpecFitsHost(loaded);
  const jail = prepareJail(loaded.spec, {
    id: o.id as string,
    uid: o.uid as number,
    gid: o.gid as number,
    baseDir: (o['chroot-base-dir'] as string | undefined) ?? '/srv/jailer',
    netns: o.netns as string | undefined,
    cgroups: (o.cgroup as string[] | undefined) ?? [],
    runArgs: o['serial-out'] !== undefined ? ['--serial-out', o['serial-out'] as string] : [],
  });
  reportStatus(io, rep, 'jail', `jail ${jail.root}${jail.vsockHostPath ? `, vsock at ${jail.vsockHostPath}` : ''}`, { root: jail.root, vsock: jail.vsockHostPath });
  return runJail(jail);
}
