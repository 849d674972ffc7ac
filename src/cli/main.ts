import { EXIT_FAILURE, EXIT_OK } from '../errors';
import { CommandSpec, helpText, ParsedArgs, parseArgs, UsageError } from './args';
import { handleFailure, Io, Reporting, write } from './io';
import { JAIL_SPEC, jailCommand } from './commands/jail';
import { MANIFEST_SPEC, manifestCommand } from './commands/manifest';
import { LOGS_SPEC, logsCommand } from './commands/logs';
import { PS_SPEC, psCommand } from './commands/ps';
import { STOP_SPEC, stopCommand } from './commands/stop';
import { UP_SPEC, upCommand } from './commands/up';
import { PLAN_SPEC, planCommand } from './commands/plan';
import { RUN_SPEC, runCommand } from './commands/run';
import { SCHEMA_SPEC, schemaCommand } from './commands/schema';
import { UNIT_SPEC, unitCommand } from './commands/unit';
import { VALIDATE_SPEC, validateCommand } from './commands/validate';
import { VERSION } from './version';

interface Command {
  spec: CommandSpec;
  run(io: Io, args: ParsedArgs, startNs: bigint): number | Promise<number>;
}

const COMMANDS: Record<string, Command> = {
  run: { spec: RUN_SPEC, run: runCommand },
  validate: { spec: VALIDATE_SPEC, run: validateCommand },
  plan: { spec: PLAN_SPEC, run: planCommand },
  jail: { spec: JAIL_SPEC, run: jailCommand },
  schema: { spec: SCHEMA_SPEC, run: (io) => schemaCommand(io) },
  unit: { spec: UNIT_SPEC, run: unitCommand },
  manifest: { spec: MANIFEST_SPEC, run: manifestCommand },
  up: { spec: UP_SPEC, run: upCommand },
  ps: { spec: PS_SPEC, run: psCommand },
  logs: { spec: LOGS_SPEC, run: logsCommand },
  stop: { spec: STOP_SPEC, run: stopCommand },
};

const OVERVIEW = `Usage: fc-run <spec> [options]         launch the microVM a spec describes
       fc-run <command> [options]

fc-run launches one microVM from a JSON spec: validated against schemas/vm.schema.json, compiled
into a boot plan, run on KVM. Firecracker's command line works too:
       fc-run --no-api --config-file vm.json

Commands:
${Object.values(COMMANDS)
  .map((c) => `  ${c.spec.name.padEnd(10)} ${c.spec.summary.split('. ')[0].replace(/\.$/, '')}`)
  .join('\n')}

Run "fc-run <command> --help" for a command's options.
Exit status: 0 success (a guest reset or power-off included), 2 invalid spec, 1 any other failure.`;

/** Arguments before a `--` (after it, nothing is an option of fc-run's). */
function optionArgs(argv: readonly string[]): readonly string[] {
  const end = argv.indexOf('--');
  return end >= 0 ? argv.slice(0, end) : argv;
}

/** Runs the CLI and resolves to the process exit code. */
export async function main(argv: string[], io: Io = { out: process.stdout, err: process.stderr }, startNs = process.hrtime.bigint()): Promise<number> {
  const early: Reporting = { jsonLines: optionArgs(argv).includes('--json-lines'), strict: false };
  try {
    if (argv.length === 0) throw new UsageError('missing <spec> argument: which microVM should run?');
    const named = COMMANDS[argv[0]];
    if (argv[0] === 'help') {
      const about = argv[1] !== undefined ? COMMANDS[argv[1]] : undefined;
      if (argv[1] !== undefined && !about) throw new UsageError(`no command "${argv[1]}" (commands: ${Object.keys(COMMANDS).join(', ')})`);
      if (argv.length > 2) throw new UsageError(`unexpected argument "${argv[2]}" (help takes one command name)`);
      write(io.out, about ? helpText(about.spec) : OVERVIEW);
      return EXIT_OK;
    }
    const command = named ?? COMMANDS.run;
    const rest = named ? argv.slice(1) : argv;
    const flags = optionArgs(rest);
    if (flags.includes('--help') || flags.includes('-h')) {
      write(io.out, named ? helpText(command.spec) : `${OVERVIEW}\n\n${helpText(RUN_SPEC)}`);
      return EXIT_OK;
    }
    if (flags.includes('--version') || flags.includes('-V')) {
      write(io.out, `fc-run v${VERSION}`);
      return EXIT_OK;
    }
    return await command.run(io, parseArgs(rest, command.spec, { passThrough: command.spec.passThrough }), startNs);
  } catch (err) {
    const code = handleFailure(io, err, early);
    return code === EXIT_OK ? EXIT_FAILURE : code;
  }
}
