import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { loadSpecFile } from '../../config/validate';
import { planRunnable } from '../../boot';
import { checkJailerHost, FC_RUN_BIN, JailerOptions, prepareJail, prepareJailerJail, runJail } from '../../jail/jail';
import { fcRunChildEnv } from '../../package-root';
import { parseCgroupSetting, parentCgroupProblem } from '../../jail/cgroups';
import { JAILER_SUPPLIED_FLAGS, jailLayout, parseResourceLimit, ResourceLimit } from '../../jail/jailer-flags';
import { checkInsideSpec } from '../../jail/inside-spec';
import { CommandSpec, OptionValue, ParsedArgs, parseArgs, UsageError } from '../args';
import { handleFailure, Io, reportStatus, Reporting, showSpecWarnings } from '../io';
import { instanceIdProblem, loadOptionsOf, mmdsSizeLimitOf, REPORT_OPTIONS, reportingOf, SPEC_OPTIONS } from './common';
import { RUN_SPEC } from './run';

const problemOf = (parse: (s: string) => unknown) => (s: string) => {
  const r = parse(s);
  return typeof r === 'string' ? r : undefined;
};

/** Flags of Firecracker's jailer form only. */
const JAILER_ONLY = ['cgroup-version', 'parent-cgroup', 'resource-limit', 'daemonize', 'new-pid-ns'];
/** Flags of fc-run's form only: in the jailer form they are the jailed fc-run's, after `--`. */
const FC_RUN_FORM_ONLY = ['serial-out', 'metadata', 'mmds-size-limit'];

export const JAIL_SPEC: CommandSpec = {
  name: 'jail',
  usage: 'fc-run jail <spec> --id ID --uid N --gid N [options]\n       fc-run jail --id ID --exec-file PATH --uid N --gid N [jailer options] -- --config-file /vm.json [run options]',
  summary: 'Launch the microVM inside a jail: chroot, cgroups, mount/PID (and network) namespaces, an unprivileged user (needs root). Takes Firecracker\'s jailer command line too.',
  positionals: [{ name: 'spec', describe: "Path to the VM spec (JSON), on the host (fc-run's form)", optional: true }],
  options: [
    { name: 'id', kind: 'string', valueName: 'ID', check: instanceIdProblem, describe: 'The microVM id: names the jail directory and the cgroups (required)' },
    { name: 'exec-file', kind: 'string', valueName: 'PATH', describe: "Firecracker's jailer form: fc-run, or a link to it; its name names the jail, <base>/<name>/<id>/root, where the spec and its files are (paths after -- are inside it)" },
    { name: 'uid', kind: 'integer', min: 0, max: 4294967294, valueName: 'N', describe: 'User the microVM runs as (required)' },
    { name: 'gid', kind: 'integer', min: 0, max: 4294967294, valueName: 'N', describe: 'Group the microVM runs as (required)' },
    { name: 'chroot-base-dir', kind: 'string', valueName: 'DIR', describe: 'Where jails are made: <dir>/fc-run/<id>/root, or <dir>/<exec file name>/<id>/root (default /srv/jailer)' },
    { name: 'netns', kind: 'string', valueName: 'PATH', describe: 'Network namespace to run in (e.g. /var/run/netns/vm1)' },
    { name: 'cgroup', kind: 'string', repeatable: true, valueName: 'FILE=VALUE', check: problemOf(parseCgroupSetting), describe: 'A cgroup setting, <controller>.<file>=<value>, e.g. pids.max=64 (repeatable)' },
    { name: 'cgroup-version', kind: 'string', choices: ['1', '2'], valueName: 'V', describe: 'Jailer form: the cgroup hierarchy for --cgroup (default 1, as Firecracker\'s jailer; fc-run\'s form picks per controller)' },
    { name: 'parent-cgroup', kind: 'string', valueName: 'PATH', check: parentCgroupProblem, describe: "Jailer form: the cgroups go in <hierarchy>/<PATH>/<id> (default: the exec file's name); with --cgroup-version 2 and no --cgroup, the VM joins <PATH> if it exists" },
    { name: 'resource-limit', kind: 'string', repeatable: true, valueName: 'RES=VALUE', check: problemOf(parseResourceLimit), describe: 'Jailer form: fsize=<bytes> or no-file=<count> (default no-file=2048), soft and hard (repeatable)' },
    { name: 'daemonize', kind: 'flag', describe: 'Jailer form: run in the background in a new session, stdio on /dev/null, once the jail is set up' },
    { name: 'new-pid-ns', kind: 'flag', describe: 'Jailer form: accepted; the microVM always gets a PID namespace of its own (it is PID 1 there)' },
    { name: 'serial-out', kind: 'string', valueName: 'none', describe: 'Passed to the jailed fc-run: "none" to discard guest output (fc-run\'s form; in the jailer form, give it after --)' },
    { name: 'daemonized', kind: 'flag', hidden: true, describe: 'The background half of --daemonize: messages on fd 3, the PID on fd 4 when started' },
    ...SPEC_OPTIONS,
    ...REPORT_OPTIONS,
  ],
  examples: [
    ['fc-run jail vm.json --id vm1 --uid 1000 --gid 1000 --cgroup memory.limit_in_bytes=536870912', 'a jailed microVM with a memory limit'],
    [
      'fc-run jail --id vm1 --exec-file /usr/local/bin/firecracker --uid 1000 --gid 1000 --daemonize -- --config-file /vm.json',
      "Firecracker's jailer command line (/usr/local/bin/firecracker a link to fc-run): the jail is /srv/jailer/firecracker/vm1/root, holding vm.json and its files",
    ],
  ],
  notes:
    "In Firecracker's jailer form, the arguments after -- are the jailed fc-run's (fc-run run's options), and their paths, like those in the spec, are seen from inside the jail.\n" +
    'A jail left behind by a jailer killed with SIGKILL is refused on the next start, with the commands that remove it.',
  passThrough: true,
};

export async function jailCommand(io: Io, args: ParsedArgs, startNs: bigint = process.hrtime.bigint()): Promise<number> {
  const o = args.options;
  const jailerForm = o['exec-file'] !== undefined;
  if (jailerForm && args.positionals.length > 0) {
    throw new UsageError(`give either a <spec> (fc-run's form) or --exec-file with the spec after -- (Firecracker's jailer form), not both`, 'jail');
  }
  if (!jailerForm && args.positionals.length === 0) {
    throw new UsageError("missing <spec> argument (fc-run's form), or --exec-file with the spec after -- (Firecracker's jailer form)", 'jail');
  }
  for (const required of ['id', 'uid', 'gid']) {
    if (o[required] === undefined) throw new UsageError(`missing required option --${required}`, 'jail');
  }
  return jailerForm ? jailerFormCommand(io, args, startNs) : fcRunFormCommand(io, args);
}

async function fcRunFormCommand(io: Io, args: ParsedArgs): Promise<number> {
  const o = args.options;
  const stray = JAILER_ONLY.find((n) => o[n] !== undefined);
  if (stray) throw new UsageError(`--${stray} belongs to Firecracker's jailer form (with --exec-file and the spec after --); fc-run's form takes the spec as an argument`, 'jail');
  if (args.rest.length > 0) throw new UsageError(`arguments after -- belong to Firecracker's jailer form (with --exec-file); in fc-run's form give the options before it`, 'jail');
  const rep = reportingOf(args);
  const loaded = loadSpecFile(args.positionals[0], loadOptionsOf(args));
  // Refuse what cannot run before building anything; the jail makes the sockets inside itself.
  // Warnings are reported (and refused under --strict) here, as `run` does: the jailed run sees
  // the spec as rewritten for the jail, not the user's file.
  const planned = planRunnable(loaded, { sockets: false });
  showSpecWarnings(io, rep, loaded.displayFile, planned.allWarnings);
  const jail = prepareJail(loaded.spec, {
    id: o.id as string,
    uid: o.uid as number,
    gid: o.gid as number,
    baseDir: (o['chroot-base-dir'] as string | undefined) ?? '/srv/jailer',
    netns: o.netns as string | undefined,
    cgroups: (o.cgroup as string[] | undefined) ?? [],
    runArgs: fcRunFormRunArgs(o, rep),
  });
  reportStatus(io, rep, 'jail', `jail ${jail.root}${jail.vsockHostPath ? `, vsock at ${jail.vsockHostPath}` : ''}`, { root: jail.root, vsock: jail.vsockHostPath });
  return runJail(jail);
}

/**
 * What the jailed `fc-run run /vm.json` must be told of this command line: --serial-out, the MMDS
 * size limit the contents (inlined into vm.json, --metadata's included) were checked against, how
 * to report (--json-lines), and that the spec's warnings were shown here, for the user's file.
 */
function fcRunFormRunArgs(o: Readonly<Record<string, unknown>>, rep: Reporting): string[] {
  const limit = mmdsSizeLimitOf(o);
  return [
    ...(o['serial-out'] !== undefined ? ['--serial-out', o['serial-out'] as string] : []),
    ...(limit !== undefined ? ['--mmds-size-limit', String(limit)] : []),
    ...(rep.jsonLines ? ['--json-lines'] : []),
    '--spec-warnings-shown',
  ];
}

/** The jailer's options and the jailed fc-run's arguments, checked as far as the command line allows. */
export function jailerOptionsOf(args: ParsedArgs, startNs: bigint): { jailer: JailerOptions; run: ParsedArgs } {
  const o = args.options;
  const stray = FC_RUN_FORM_ONLY.find((n) => o[n] !== undefined);
  if (stray) throw new UsageError(`--${stray} is the jailed fc-run's option: in Firecracker's jailer form give it after -- (... -- --config-file /vm.json --${stray} ...)`, 'jail');
  let run: ParsedArgs;
  try {
    run = parseArgs(args.rest, RUN_SPEC);
  } catch (err) {
    if (err instanceof UsageError) throw new UsageError(`after --: ${err.message}`, 'jail');
    throw err;
  }
  const supplied = JAILER_SUPPLIED_FLAGS.find((f) => run.options[f] !== undefined);
  if (supplied) throw new UsageError(`after --: --${supplied} is given by the jailer itself (as Firecracker's jailer gives it); remove it`, 'jail');
  const configFile = run.options['config-file'] as string | undefined;
  if (configFile !== undefined && run.positionals.length > 0) throw new UsageError(`after --: give the spec once, either --config-file ${configFile} or the argument ${run.positionals[0]}`, 'jail');
  if (configFile === undefined && run.positionals.length === 0) {
    throw new UsageError("the microVM's spec is missing: give it after --, e.g. -- --config-file /vm.json (a path inside the jail); fc-run is not configured through the API", 'jail');
  }
  const limits = ((o['resource-limit'] as string[] | undefined) ?? []).map((s) => parseResourceLimit(s) as ResourceLimit);
  return {
    jailer: {
      id: o.id as string,
      uid: o.uid as number,
      gid: o.gid as number,
      baseDir: (o['chroot-base-dir'] as string | undefined) ?? '/srv/jailer',
      netns: o.netns as string | undefined,
      execFile: o['exec-file'] as string,
      cgroups: (o.cgroup as string[] | undefined) ?? [],
      cgroupVersion: o['cgroup-version'] === '2' ? 2 : 1,
      parentCgroup: o['parent-cgroup'] as string | undefined,
      resourceLimits: limits,
      runArgs: args.rest,
      startTimeUs: startNs / 1000n,
    },
    run,
  };
}

/** The command line of the background half of --daemonize: the same options, told where to report. */
export function daemonArgv(args: ParsedArgs): string[] {
  const out = ['jail'];
  for (const opt of JAIL_SPEC.options) {
    const v: OptionValue | undefined = args.options[opt.name];
    if (v === undefined || opt.name === 'daemonize' || opt.name === 'daemonized') continue;
    if (v === true) out.push(`--${opt.name}`);
    else for (const one of Array.isArray(v) ? v : [v]) out.push(`--${opt.name}=${one}`);
  }
  return [...out, '--daemonized', '--', ...args.rest];
}

async function jailerFormCommand(io: Io, args: ParsedArgs, startNs: bigint): Promise<number> {
  const { jailer, run } = jailerOptionsOf(args, startNs);
  if (args.options.daemonize === true) return daemonize(io, args);
  const daemonized = args.options.daemonized === true;
  // The background half reports to the foreground on fd 3 until the VM has started.
  let messagesOpen = daemonized;
  const messages = {
    write: (text: string) => {
      try {
        if (messagesOpen) fs.writeSync(3, text);
      } catch {
        messagesOpen = false; // the foreground is gone: nobody to tell
      }
      return true;
    },
  };
  const err = daemonized ? ({ ...messages, isTTY: false } as unknown as NodeJS.WriteStream) : io.err;
  const rep: Reporting = reportingOf(args);
  try {
    checkJailerHost(jailer);
    const layout = jailLayout(jailer.baseDir, path.basename(jailer.execFile), jailer.id);
    checkInsideSpec(layout.root, {
      configFile: (run.options['config-file'] as string | undefined) ?? run.positionals[0],
      metadataFile: run.options.metadata as string | undefined,
      mmdsSizeLimit: mmdsSizeLimitOf(run.options),
    });
    const jail = prepareJailerJail(jailer);
    reportStatus({ out: io.out, err }, rep, 'jail', `jail ${jail.root}`, { root: jail.root });
    return await runJail(jail, {
      stdio: daemonized ? 'ignore' : 'inherit',
      err: { write: (t: string) => err.write(t) },
      onStarted: (pid) => {
        if (!daemonized) return;
        messagesOpen = false;
        fs.closeSync(3);
        fs.writeSync(4, `${pid}\n`);
        fs.closeSync(4);
      },
    });
  } catch (e) {
    if (!daemonized) throw e;
    return handleFailure({ out: io.out, err }, e, rep);
  }
}

/**
 * --daemonize: the jail is set up by a copy of this command in a new session with its stdio on
 * /dev/null (it stays, to clean up when the VM ends); this one relays its messages and returns
 * once the VM's process has started (0), or with the failure's exit code.
 */
function daemonize(io: Io, args: ParsedArgs): Promise<number> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [FC_RUN_BIN, ...daemonArgv(args)], { detached: true, stdio: ['ignore', 'ignore', 'ignore', 'pipe', 'pipe'], env: fcRunChildEnv() });
    const messages = child.stdio[3] as import('node:net').Socket;
    const ready = child.stdio[4] as import('node:net').Socket;
    let messagesDone = false;
    let started = false;
    let exitCode: number | undefined;
    const finish = () => {
      if (!messagesDone) return;
      if (started) {
        child.unref();
        ready.destroy();
        resolve(0);
      } else if (exitCode !== undefined) resolve(exitCode);
    };
    messages.on('data', (d: Buffer) => io.err.write(d));
    messages.on('close', () => {
      messagesDone = true;
      finish();
    });
    let pidText = '';
    ready.on('data', (d: Buffer) => {
      pidText += d.toString('latin1');
      if (/^\d+\n/.test(pidText)) {
        started = true;
        finish();
      }
    });
    messages.on('error', () => undefined);
    ready.on('error', () => undefined);
    child.on('error', (e) => {
      io.err.write(`fc-run: cannot start the jailer in the background: ${e.message}\n`);
      resolve(1);
    });
    child.on('exit', (code, signal) => {
      exitCode = signal ? 1 : (code ?? 1);
      finish();
    });
  });
}
