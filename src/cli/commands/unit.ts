import { loadSpecFile } from '../../config/validate';
import { planSpec } from '../../boot';
import { EXIT_OK } from '../../errors';
import { defaultInstanceName } from '../../deploy/resources';
import { escapePath, systemdUnit, templateUnit, unitFileName, UnitOptions } from '../../deploy/systemd-unit';
import { CommandSpec, ParsedArgs, UsageError } from '../args';
import { Io, reportIssues, reportStatus, write } from '../io';
import { instanceIdProblem, REPORT_OPTIONS, reportingOf } from './common';
import { FC_RUN_BIN } from '../../package-root';

/** bin/fc-run of this installation (the same from src/ under ts-jest and from dist/). */
export { FC_RUN_BIN };

const RESTART = ['no', 'on-failure', 'always'] as const;

export const UNIT_SPEC: CommandSpec = {
  name: 'unit',
  usage: 'fc-run unit [options] <spec>   or   fc-run unit --template [options]',
  summary: 'Print a systemd service unit that runs the spec (Type=notify, sandboxed), or the fc-run@.service template for `fc-run up DIR`.',
  positionals: [{ name: 'spec', describe: 'Path to the VM spec (JSON)', optional: true }],
  options: [
    { name: 'name', kind: 'string', valueName: 'NAME', check: instanceIdProblem, describe: 'Instance name: the unit is fc-run-NAME.service and the VM id NAME (default: the spec file name)' },
    { name: 'user', kind: 'flag', describe: 'A user unit (systemctl --user): without the device, capability and mount sandbox, which need privileges' },
    { name: 'run-as', kind: 'string', valueName: 'USER', check: (v) => (/^[A-Za-z0-9_][A-Za-z0-9_.-]*$/.test(v) ? undefined : 'must be a user name or uid'), describe: 'Run the service as this user (User=); its TAPs must be owned by it (ip tuntap add NAME mode tap user USER)' },
    { name: 'template', kind: 'flag', describe: 'Print the fc-run@.service template instead: the instance is a directory of specs for `fc-run up`' },
    { name: 'stop-timeout', kind: 'integer', min: 1, max: 3600, valueName: 'SECONDS', describe: 'Seconds from SIGTERM to SIGKILL when the service stops (default 15)' },
    { name: 'restart', kind: 'string', valueName: 'WHEN', choices: RESTART, describe: 'Restart= policy: on-failure (default; a guest power-off or reset ends the service), always (a guest reset boots it again), no' },
    ...REPORT_OPTIONS,
  ],
  examples: [
    ['fc-run unit vm.json > /etc/systemd/system/fc-run-vm.service', 'install a system service for vm.json'],
    ['fc-run unit --user --name web vm.json > ~/.config/systemd/user/fc-run-web.service', 'a user service'],
    ['fc-run unit --template > /etc/systemd/system/fc-run@.service', 'then: systemctl start fc-run@$(systemd-escape --path /srv/fleet)'],
  ],
  notes:
    'The service runs `fc-run run SPEC --id NAME --api-sock %t/fc-run/NAME/api.sock` with absolute paths (this node and this fc-run).\n' +
    'fc-run tells systemd READY=1 once the guest runs; systemctl stop sends SIGTERM, which stops the VM at once (exit 0).',
};

export function unitCommand(io: Io, args: ParsedArgs): number {
  const o = args.options;
  const rep = reportingOf(args);
  const user = o.user === true;
  const runAs = o['run-as'] as string | undefined;
  if (user && runAs !== undefined) throw new UsageError('--run-as is for system units; a user unit runs as its user', 'unit');
  const common = {
    user,
    node: process.execPath,
    fcRun: FC_RUN_BIN,
    runAs,
    stopTimeoutSec: (o['stop-timeout'] as number | undefined) ?? 15,
    restart: ((o.restart as string | undefined) ?? 'on-failure') as UnitOptions['restart'],
  };
  const dir = user ? '~/.config/systemd/user' : '/etc/systemd/system';
  const ctl = user ? 'systemctl --user' : 'systemctl';
  if (o.template === true) {
    if (args.positionals.length > 0) throw new UsageError('--template takes no spec: the instance names a directory of specs', 'unit');
    if (o.name !== undefined) throw new UsageError('--name is for a spec\'s unit; a template\'s instance is the directory', 'unit');
    write(io.out, templateUnit(common));
    reportStatus(io, rep, 'hint', `save as ${dir}/fc-run@.service, then: ${ctl} daemon-reload && ${ctl} enable --now fc-run@${escapePath('/srv/fleet')}.service (for /srv/fleet)`);
    return EXIT_OK;
  }
  const file = args.positionals[0];
  if (file === undefined) throw new UsageError('missing <spec> argument (or --template)', 'unit');
  const loaded = loadSpecFile(file);
  // The unit runs this spec on this host: everything `run` checks from the files is checked now.
  const planned = planSpec(loaded);
  reportIssues(io, planned.allWarnings.filter((w) => w.severity === 'warning'), rep);
  const name = (o.name as string | undefined) ?? defaultInstanceName(loaded.spec.specFile);
  write(io.out, systemdUnit(loaded.spec, { ...common, name }));
  const unit = unitFileName(name);
  reportStatus(io, rep, 'hint', `save as ${dir}/${unit}, then: ${ctl} daemon-reload && ${ctl} enable --now ${unit}`);
  return EXIT_OK;
}
