import * as fs from 'node:fs';
import * as path from 'node:path';
import { EXIT_OK } from '../../errors';
import { assertGitWorkTree, FleetError, FleetEvent, Supervisor } from '../../fleet';
import { CommandSpec, ParsedArgs, UsageError } from '../args';
import { Io, write, writeRecord } from '../io';
import { FLEET_OPTIONS, runDirOf } from './fleet-common';

export const UP_SPEC: CommandSpec = {
  name: 'up',
  usage: 'fc-run up <dir> [options]',
  summary: 'Make the host match a directory of specs: one VM per spec, restarted when it changes or exits, stopped when its spec goes. Runs until SIGINT or SIGTERM; the VMs keep running.',
  positionals: [{ name: 'dir', describe: 'Directory of specs (every *.json below it; a VM\'s id is the path without .json)' }],
  options: [
    ...FLEET_OPTIONS,
    { name: 'check-interval', kind: 'integer', min: 100, max: 86_400_000, valueName: 'MS', describe: 'Re-read the whole directory this often, besides watching it (default 5000)' },
    { name: 'git-pull-interval', kind: 'integer', min: 1000, max: 86_400_000, valueName: 'MS', describe: 'Run "git pull --ff-only" in the directory (a git work tree) this often' },
  ],
  examples: [
    ['fc-run up /etc/fc-run/vms', 'run every spec in the directory and keep them running'],
    ['fc-run up ./fleet --git-pull-interval 60000', 'follow a git repository of specs'],
  ],
  notes:
    'Per spec, the optional "fc-run" section sets the restart policy (never, on-failure, always), the restart backoff, the stop grace period and the serial log size.\n' +
    'Stopping fc-run up leaves the VMs running; started again, it adopts them. See also: fc-run ps, fc-run logs, fc-run stop.',
};

export async function upCommand(io: Io, args: ParsedArgs): Promise<number> {
  const dir = path.resolve(args.positionals[0]);
  let st: fs.Stats;
  try {
    st = fs.statSync(dir);
  } catch (err) {
    throw new FleetError(`cannot read the spec directory ${dir}: ${(err as NodeJS.ErrnoException).code}`);
  }
  if (!st.isDirectory()) throw new FleetError(`${dir} is not a directory: fc-run up takes a directory of specs (run a single spec with fc-run run)`);
  const runDir = runDirOf(args);
  // Every state write would wake the directory watch and look like a change.
  if (runDir === dir || runDir.startsWith(`${dir}${path.sep}`)) throw new UsageError(`--run-dir ${runDir} is inside the spec directory ${dir}: put it elsewhere`, 'up');
  const gitPull = args.options['git-pull-interval'] as number | undefined;
  if (gitPull !== undefined) await assertGitWorkTree(dir);
  const json = args.options.json === true;
  const report = (e: FleetEvent) => {
    if (json) writeRecord(io.out, { type: 'fleet', time: new Date().toISOString(), ...e });
    else write(io.out, `fc-run up: ${e.message}`);
  };
  const sup = new Supervisor({
    dir,
    runDir,
    checkIntervalMs: (args.options['check-interval'] as number | undefined) ?? 5000,
    gitPullIntervalMs: gitPull,
    report,
  });
  sup.start();
  await new Promise<void>((resolve) => {
    // The supervisor's timers are unref'd (a test can drop one); this keeps `up` itself alive.
    const keep = setInterval(() => undefined, 1 << 30);
    const done = (sig: NodeJS.Signals) => {
      report({ event: 'warning', message: `${sig}: fc-run up stops; the VMs keep running (start fc-run up again to look after them)` });
      process.off('SIGINT', done);
      process.off('SIGTERM', done);
      clearInterval(keep);
      resolve();
    };
    process.on('SIGINT', done);
    process.on('SIGTERM', done);
  });
  sup.close();
  return EXIT_OK;
}
