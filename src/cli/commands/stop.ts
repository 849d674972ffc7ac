import { EXIT_OK } from '../../errors';
import { assertRunDirTrusted, isAlive, stopVmProcess, vmFiles, writeJsonAtomic, DEFAULT_SETTINGS } from '../../fleet';
import type { CommandSpec, ParsedArgs } from '../args';
import { Io, write } from '../io';
import { FLEET_OPTIONS, runDirOf, stateOf } from './fleet-common';

export const STOP_SPEC: CommandSpec = {
  name: 'stop',
  usage: 'fc-run stop <id> [options]',
  summary: 'Stop a VM that fc-run up runs (Ctrl-Alt-Del, then SIGTERM after the grace period); fc-run up leaves it stopped until its spec changes.',
  positionals: [{ name: 'id', describe: 'The VM id (see fc-run ps)' }],
  options: [{ name: 'grace', kind: 'integer', min: 0, max: 3_600_000, valueName: 'MS', describe: 'Wait this long after Ctrl-Alt-Del before SIGTERM (default: the spec\'s "fc-run".stop_grace_ms)' }, ...FLEET_OPTIONS],
  examples: [['fc-run stop web-1', 'stop it; start it again by changing its spec, or remove and restore the spec']],
};

export async function stopCommand(io: Io, args: ParsedArgs): Promise<number> {
  const runDir = runDirOf(args);
  const id = args.positionals[0];
  const s = stateOf(runDir, id, 'stop');
  // Its files decide what gets signalled: only a directory no one else can write is believed.
  assertRunDirTrusted(runDir);
  const f = vmFiles(runDir, id);
  // Written first: fc-run up, seeing the VM exit, must already know it was meant to stay down.
  writeJsonAtomic(f.hold, { planHash: s.planHash, time: new Date().toISOString() });
  const grace = (args.options.grace as number | undefined) ?? s.stopGraceMs ?? DEFAULT_SETTINGS.stopGraceMs;
  const how = isAlive(s) ? await stopVmProcess(s.pid!, s.pidStart!, f.sock, grace) : 'not running';
  if (args.options.json === true) write(io.out, JSON.stringify({ id, stopped: true, how }));
  else write(io.out, `${id}: ${how === 'not running' || how === 'gone' ? 'was not running' : `stopped (${how})`}; fc-run up leaves it stopped until its spec changes`);
  return EXIT_OK;
}
