import * as path from 'node:path';
import { EXIT_OK } from '../../errors';
import { isAlive, readStates, readSupervisor, VmState } from '../../fleet';
import type { CommandSpec, ParsedArgs } from '../args';
import { Io, write } from '../io';
import { FLEET_OPTIONS, formatDuration, runDirOf } from './fleet-common';

export const PS_SPEC: CommandSpec = {
  name: 'ps',
  usage: 'fc-run ps [dir] [options]',
  summary: 'List the VMs fc-run up runs: id, pid, state, uptime, restarts, vCPUs, memory, plan hash, last exit.',
  positionals: [{ name: 'dir', describe: 'Only the VMs of this spec directory', optional: true }],
  options: [...FLEET_OPTIONS],
  examples: [
    ['fc-run ps', 'every VM in the run directory'],
    ['fc-run ps --json', 'the same as JSON'],
  ],
};

interface Row {
  id: string;
  pid: number | null;
  state: string;
  uptime_ms: number | null;
  restarts: number;
  vcpus: number;
  mem_mib: number;
  plan_hash: string;
  last_exit: VmState['lastExit'] | null;
  spec: string;
}

function rowOf(s: VmState, now: number): Row {
  const alive = (s.state === 'running' || s.state === 'starting' || s.state === 'stopping') && isAlive(s);
  // A VM recorded as running whose process is gone died while nobody watched (or is about to be noticed).
  const state = alive ? s.state : s.state === 'running' || s.state === 'starting' || s.state === 'stopping' ? 'dead' : s.state;
  return {
    id: s.id,
    pid: alive ? (s.pid ?? null) : null,
    state,
    uptime_ms: alive && s.startedAt !== undefined ? now - s.startedAt : null,
    restarts: s.restarts,
    vcpus: s.vcpus,
    mem_mib: s.memMib,
    plan_hash: s.planHash,
    last_exit: s.lastExit ?? null,
    spec: s.spec,
  };
}

export function psCommand(io: Io, args: ParsedArgs): number {
  const runDir = runDirOf(args);
  const only = args.positionals[0] !== undefined ? path.resolve(args.positionals[0]) : undefined;
  const now = Date.now();
  const rows = readStates(runDir)
    .filter((s) => only === undefined || s.dir === only)
    .map((s) => rowOf(s, now));
  const sup = readSupervisor(runDir);
  const problems = sup && (only === undefined || sup.dir === only) ? sup.problems : {};
  if (args.options.json === true) {
    write(io.out, JSON.stringify({ run_dir: runDir, supervisor: sup ? { pid: sup.pid, alive: sup.alive, dir: sup.dir } : null, vms: rows, skipped: problems }, null, 2));
    return EXIT_OK;
  }
  const table = [['ID', 'PID', 'STATE', 'UPTIME', 'RESTARTS', 'VCPUS', 'MEM', 'PLAN', 'LAST EXIT']];
  for (const r of rows) {
    const last = r.last_exit ? `${r.last_exit.code ?? r.last_exit.signal ?? '?'} ${r.last_exit.reason}` : '-';
    table.push([r.id, r.pid === null ? '-' : String(r.pid), r.state, r.uptime_ms === null ? '-' : formatDuration(r.uptime_ms), String(r.restarts), String(r.vcpus), `${r.mem_mib}M`, r.plan_hash.slice(0, 12), last.length > 60 ? `${last.slice(0, 57)}...` : last]);
  }
  const widths = table[0].map((_, i) => Math.max(...table.map((row) => row[i].length)));
  for (const row of table) write(io.out, row.map((c, i) => (i === row.length - 1 ? c : c.padEnd(widths[i]))).join('  '));
  if (!sup?.alive) write(io.out, `(fc-run up is not running for ${runDir}: nothing restarts these VMs)`);
  for (const [spec, problem] of Object.entries(problems)) write(io.out, `skipped ${spec}: ${problem}`);
  return EXIT_OK;
}
