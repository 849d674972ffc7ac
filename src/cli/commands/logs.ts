import { EXIT_OK } from '../../errors';
import { FdOutput } from '../output';
import { LogFollower, streamWholeLog, vmFiles } from '../../fleet';
import type { CommandSpec, ParsedArgs } from '../args';
import type { Io } from '../io';
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
  let readerGone = false;
  const emit = (b: Buffer) => {
    if (b.length === 0 || readerGone) return;
    // Written synchronously: a slow reader of gigabytes of log must not make them pile up here.
    const out = json ? Buffer.from(`${JSON.stringify({ id, data: b.toString('utf8') })}\n`) : b;
    if (io.out instanceof FdOutput) readerGone = !io.out.write(out);
    else io.out.write(out);
  };
  const readTo = streamWholeLog(f.serial, f.serialOld, emit);
  if (args.options.follow !== true) return EXIT_OK;
  // From exactly where the full read stopped: nothing written in between is lost.
  const follower = new LogFollower(f.serial, f.serialOld, readTo);
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
