import { EXIT_OK } from '../../errors';
import { LogFollower, readWholeLog, vmFiles } from '../../fleet';
import type { CommandSpec, ParsedArgs } from '../args';
import { Io, writeRecord } from '../io';
import { FLEET_OPTIONS, runDirOf, stateOf } from './fleet-common';

export const LOGS_SPEC: CommandSpec = {
  name: 'logs',
  usage: 'fc-run logs <id> [-f] [options]',
  summary: "Print a VM's serial console output (what the guest wrote), kept by fc-run up in the run directory.",
  positionals: [{ name: 'id', describe: 'The VM id (see fc-run ps)' }],
  options: [{ name: 'follow', short: 'f', kind: 'flag', describe: 'Keep printing what the guest writes, across log rotations, until Ctrl-C' }, ...FLEET_OPTIONS],
  examples: [
    ['fc-run logs web-1', 'what the guest wrote so far (the rotated older part first)'],
    ['fc-run logs web-1 -f', 'and follow it'],
  ],
};

export async function logsCommand(io: Io, args: ParsedArgs): Promise<number> {
  const runDir = runDirOf(args);
  const id = args.positionals[0];
  stateOf(runDir, id, 'logs');
  const f = vmFiles(runDir, id);
  const json = args.options.json === true;
  const emit = (b: Buffer) => {
    if (b.length === 0) return;
    if (json) writeRecord(io.out, { id, data: b.toString('utf8') });
    else io.out.write(b);
  };
  emit(readWholeLog(f.serial, f.serialOld));
  if (args.options.follow !== true) return EXIT_OK;
  const follower = new LogFollower(f.serial, f.serialOld);
  await new Promise<void>((resolve) => {
    const timer = setInterval(() => emit(follower.poll()), 200);
    const done = () => {
      clearInterval(timer);
      process.off('SIGINT', done);
      process.off('SIGTERM', done);
      emit(follower.poll());
      resolve();
    };
    process.on('SIGINT', done);
    process.on('SIGTERM', done);
  });
  return EXIT_OK;
}
