import { EXIT_FAILURE, EXIT_OK } from '../errors';
import { CommandSpec, helpText, ParsedArgs, parseArgs, UsageError } from './args';
import { handleFailure, Io, Reporting, write } from './io';
import { FdOutput } from './output';

interface Command {
  spec: CommandSpec;
  run(io: Io, args: ParsedArgs, startNs: bigint): number | Promise<number>;
}

/* eslint-disable @typescript-eslint/no-require-imports */
/**
 * Each command's module is loaded only when that command runs (or its help is shown), so
 * `fc-run vm.json` does not load the fleet supervisor, the jail or the unit generator.
 */
const COMMANDS: Record<string, () => Command> = {
  run: () => ((m: typeof import('./commands/run')) => ({ spec: m.RUN_SPEC, run: m.runCommand }))(require('./commands/run')),
  validate: () => ((m: typeof import('./commands/validate')) => ({ spec: m.VALIDATE_SPEC, run: m.validateCommand }))(require('./commands/validate')),
  plan: () => ((m: typeof import('./commands/plan')) => ({ spec: m.PLAN_SPEC, run: m.planCommand }))(require('./commands/plan')),
  jail: () => ((m: typeof import('./commands/jail')) => ({ spec: m.JAIL_SPEC, run: m.jailCommand }))(require('./commands/jail')),
  schema: () => ((m: typeof import('./commands/schema')) => ({ spec: m.SCHEMA_SPEC, run: (io: Io) => m.schemaCommand(io) }))(require('./commands/schema')),
  unit: () => ((m: typeof import('./commands/unit')) => ({ spec: m.UNIT_SPEC, run: m.unitCommand }))(require('./commands/unit')),
  manifest: () => ((m: typeof import('./commands/manifest')) => ({ spec: m.MANIFEST_SPEC, run: m.manifestCommand }))(require('./commands/manifest')),
  up: () => ((m: typeof import('./commands/up')) => ({ spec: m.UP_SPEC, run: m.upCommand }))(require('./commands/up')),
  ps: () => ((m: typeof import('./commands/ps')) => ({ spec: m.PS_SPEC, run: m.psCommand }))(require('./commands/ps')),
  logs: () => ((m: typeof import('./commands/logs')) => ({ spec: m.LOGS_SPEC, run: m.logsCommand }))(require('./commands/logs')),
  stop: () => ((m: typeof import('./commands/stop')) => ({ spec: m.STOP_SPEC, run: m.stopCommand }))(require('./commands/stop')),
  restore: () => ((m: typeof import('./commands/restore')) => ({ spec: m.RESTORE_SPEC, run: m.restoreCommand }))(require('./commands/restore')),
  snapshot: () => ((m: typeof import('./commands/snapshot')) => ({ spec: m.SNAPSHOT_SPEC, run: m.snapshotCommand }))(require('./commands/snapshot')),
};
/* eslint-enable @typescript-eslint/no-require-imports */

/** Every command's name (scripts/bundle.js leaves the launching ones out of the light bundle, bin/fc-run's LIGHT_COMMANDS). */
export const COMMAND_NAMES: readonly string[] = Object.keys(COMMANDS);

const command = (name: string): Command | undefined => (Object.hasOwn(COMMANDS, name) ? COMMANDS[name]() : undefined);

function overview(): string {
  return `Usage: fc-run <spec> [options]         launch the microVM a spec describes
       fc-run <command> [options]

fc-run launches one microVM from a JSON spec: validated against schemas/vm.schema.json, compiled
into a boot plan, run on KVM. Firecracker's command line works too:
       fc-run --no-api --config-file vm.json

Commands:
${Object.keys(COMMANDS)
  .map((name) => {
    const spec = command(name)!.spec;
    return `  ${spec.name.padEnd(10)} ${spec.summary.split('. ')[0].replace(/\.$/, '')}`;
  })
  .join('\n')}

Run "fc-run <command> --help" for a command's options.
Exit status: 0 success (a guest reset or power-off included), 2 invalid spec, 1 any other failure.`;
}
/** Arguments before a `--` (after it, nothing is an option of fc-run's). */
function optionArgs(argv: readonly string[]): readonly string[] {
  const end = argv.indexOf('--');
  return end >= 0 ? argv.slice(0, end) : argv;
}

/** Runs the CLI and resolves to the process exit code. */
export async function main(argv: string[], io: Io = { out: new FdOutput(1), err: new FdOutput(2) }, startNs = process.hrtime.bigint()): Promise<number> {
  const early: Reporting = { jsonLines: optionArgs(argv).includes('--json-lines'), strict: false };
  try {
    if (argv.length === 0) throw new UsageError('missing <spec> argument: which microVM should run?');
    const named = command(argv[0]);
    if (argv[0] === 'help') {
      const about = argv[1] !== undefined ? command(argv[1]) : undefined;
      if (argv[1] !== undefined && !about) throw new UsageError(`no command "${argv[1]}" (commands: ${Object.keys(COMMANDS).join(', ')})`);
      if (argv.length > 2) throw new UsageError(`unexpected argument "${argv[2]}" (help takes one command name)`);
      write(io.out, about ? helpText(about.spec) : overview());
      return EXIT_OK;
    }
    const rest = named ? argv.slice(1) : argv;
    const flags = optionArgs(rest);
    const help = flags.includes('--help') || flags.includes('-h');
    if (!help && (flags.includes('--version') || flags.includes('-V'))) {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      write(io.out, `fc-run v${(require('./version') as typeof import('./version')).VERSION}`);
      return EXIT_OK;
    }
    const chosen = named ?? command('run')!;
    if (help) {
      write(io.out, named ? helpText(chosen.spec) : `${overview()}\n\n${helpText(chosen.spec)}`);
      return EXIT_OK;
    }
    return await chosen.run(io, parseArgs(rest, chosen.spec, { passThrough: chosen.spec.passThrough }), startNs);
  } catch (err) {
    const code = handleFailure(io, err, early);
    return code === EXIT_OK ? EXIT_FAILURE : code;
  }
}
