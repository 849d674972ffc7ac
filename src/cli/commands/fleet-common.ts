import * as fs from 'node:fs';
import * as path from 'node:path';
import { defaultRunDir, FleetError, readStates, VmState } from '../../fleet';
import type { OptionSpec, ParsedArgs } from '../args';
import { UsageError } from '../args';
import { instanceIdProblem } from './common';

/** Options every fleet command takes. */
export const FLEET_OPTIONS: OptionSpec[] = [
  { name: 'run-dir', kind: 'string', valueName: 'DIR', describe: 'Where the VMs\' sockets, serial logs, exit records and state live (default /run/fc-run as root, else $XDG_RUNTIME_DIR/fc-run)' },
  { name: 'json', kind: 'flag', describe: 'Print JSON (one record per line where output streams)' },
];

export function runDirOf(args: ParsedArgs): string {
  return path.resolve((args.options['run-dir'] as string | undefined) ?? defaultRunDir());
}

/** The VM an ID argument names; the id becomes a file name, so it must satisfy the --id rule. */
export function stateOf(runDir: string, id: string, command: string): VmState {
  const problem = instanceIdProblem(id);
  if (problem) throw new UsageError(`VM id "${id}" ${problem}`, command);
  const found = readStates(runDir).find((s) => s.id === id);
  if (!found) {
    const known = fs.existsSync(runDir) ? readStates(runDir).map((s) => s.id) : [];
    throw new FleetError(`no VM "${id}" in ${runDir}${known.length ? ` (there are: ${known.join(', ')})` : ' (no VMs there: is fc-run up using another --run-dir?)'}`);
  }
  return found;
}

export function formatDuration(ms: number): string {
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d${Math.floor((s % 86400) / 3600)}h`;
}
