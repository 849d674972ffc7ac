import * as fs from 'node:fs';
import * as path from 'node:path';
import { canonicalJson, planRunnable, prewarmVcpuThreads } from '../../boot';
import { applyOverrides, BackendOverrides, checkSnapshot, planWithoutBackends } from '../../boot/snapshot-plan';
import { loadSpecFile } from '../../config/validate';
import { EXIT_FAILURE, EXIT_INVALID_SPEC, FcRunError } from '../../errors';
import { readSnapshotFile } from '../../vmm/snapshot-file';
import { CommandSpec, ParsedArgs, UsageError } from '../args';
import { Io, reportStatus, Reporting } from '../io';
import { loadOptionsOf, REPORT_OPTIONS, reportingOf } from './common';
import { launchPlanned, MONITOR_OPTIONS, threadFiltersOf, watchLifeline } from './run';

/** The largest VM state file read (the state of 32 vCPUs and every device is far smaller). */

export const RESTORE_SPEC: CommandSpec = {
  name: 'restore',
  usage: 'fc-run restore <snapshot> --mem <file> [--resume] [--api-sock <path>] [options]',
  summary: 'Restore a microVM from a snapshot (PUT /snapshot/create) and run it until the guest stops.',
  positionals: [{ name: 'snapshot', describe: 'The VM state file (snapshot_path of PUT /snapshot/create)' }],
  options: [
    { name: 'mem', kind: 'string', valueName: 'FILE', describe: 'The memory file written with the snapshot (mem_file_path); mapped copy-on-write, never modified' },
    { name: 'resume', kind: 'flag', describe: 'Run the guest at once (without it the VM stays paused until PATCH /vm {"state": "Resumed"})' },
    { name: 'api-sock', kind: 'string', valueName: 'PATH', describe: 'Serve the HTTP API on this Unix socket (needed without --resume)' },
    { name: 'http-api-max-payload-size', kind: 'integer', min: 1, max: 64 * 1024 * 1024, valueName: 'BYTES', describe: 'Largest API request body (default 51200)' },
    { name: 'spec', kind: 'string', valueName: 'FILE', describe: "Check that this spec describes the snapshot's VM (back ends aside); exit 2 if not" },
    { name: 'tap', kind: 'string', repeatable: true, valueName: 'IFACE=TAP', describe: 'Give network interface IFACE this TAP device (repeatable)' },
    { name: 'drive', kind: 'string', repeatable: true, valueName: 'ID=FILE', describe: 'Give drive ID this file (repeatable; clones must not share a writable disk)' },
    { name: 'vsock-uds', kind: 'string', valueName: 'PATH', describe: "The vsock device's Unix socket path" },
    ...MONITOR_OPTIONS,
    { name: 'serial-out', kind: 'string', valueName: 'PATH', describe: 'Where guest serial output goes: a file or named pipe, "none" to discard it (default: stdout)' },
    { name: 'no-seccomp', kind: 'flag', describe: 'Leave out the seccomp filter (for debugging; not recommended)' },
    { name: 'seccomp-filter', kind: 'string', valueName: 'FILE', describe: "Per-thread seccomp filters in the JSON form of Firecracker's seccompiler (as for run)" },
    { name: 'exit-with-fd', kind: 'integer', min: 3, max: 65535, hidden: true, describe: 'Stop the VM when this inherited socket or pipe reaches end of stream' },
    ...REPORT_OPTIONS,
  ],
  examples: [
    ['fc-run restore vm.snap --mem vm.mem --resume', 'restore and run'],
    ['fc-run restore vm.snap --mem vm.mem --api-sock /tmp/vm.sock', 'restore paused; resume with PATCH /vm'],
    ['fc-run restore vm.snap --mem vm.mem --resume --tap eth0=tap1 --drive rootfs=clone1.ext4 --vsock-uds /tmp/clone1.vsock', 'a clone beside the original'],
  ],
  notes: 'Exit status: 0 when the guest resets or powers off, 2 for a snapshot or memory file that is not usable, 1 any other failure.',
};

/** "ID=VALUE" pairs of a repeatable option, each id once. */
function pairs(values: unknown, option: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const v of (values as string[] | undefined) ?? []) {
    const eq = v.indexOf('=');
    if (eq <= 0 || eq === v.length - 1) throw new UsageError(`--${option} ${v}: expected ID=VALUE`, 'restore');
    const id = v.slice(0, eq);
    if (out.has(id)) throw new UsageError(`--${option}: ${id} is given twice`, 'restore');
    out.set(id, v.slice(eq + 1));
  }
  return out;
}

export async function restoreCommand(io: Io, args: ParsedArgs, startNs: bigint): Promise<number> {
  const o = args.options;
  const rep: Reporting = reportingOf(args);
  const file = args.positionals[0];
  const memFile = o.mem as string | undefined;
  if (memFile === undefined) throw new UsageError('--mem is required: the memory file written with the snapshot', 'restore');
  const resume = o.resume === true;
  if (!resume && o['api-sock'] === undefined) throw new UsageError('without --resume the VM stays paused: give --api-sock to resume it (PATCH /vm {"state": "Resumed"}), or --resume', 'restore');
  const overrides: BackendOverrides = { taps: pairs(o.tap, 'tap'), drives: pairs(o.drive, 'drive'), vsockUds: o['vsock-uds'] as string | undefined };
  for (const [id, f] of overrides.drives) overrides.drives.set(id, path.resolve(f));
  if (overrides.vsockUds !== undefined) overrides.vsockUds = path.resolve(overrides.vsockUds);
  let running = false;
  let closeApi = () => undefined as void;
  const early = (sig: NodeJS.Signals) => {
    if (running) return;
    reportStatus(io, rep, 'signal', `${sig} before the VM ran`);
    closeApi();
    process.exit(EXIT_FAILURE);
  };
  process.on('SIGTERM', early);
  process.on('SIGINT', early);
  // bin/fc-run's stand-in for these (as PID 1 of a jail) is no longer needed, as in run.
  for (const sig of ['SIGTERM', 'SIGINT'] as const) for (const l of process.listeners(sig)) if (l.name === 'fcRunStartingSignal') process.off(sig, l);
  try {
    if (o['exit-with-fd'] !== undefined) watchLifeline(o['exit-with-fd'] as number);
    const threadFilters = threadFiltersOf(o);
    const snapshot = readSnapshotFile(path.resolve(file));
    const stored = checkSnapshot(snapshot, file);
    if (o.spec !== undefined) {
      const planned = planRunnable(loadSpecFile(o.spec as string, loadOptionsOf(args)));
      if (canonicalJson(planWithoutBackends(planned.plan)) !== canonicalJson(planWithoutBackends(stored))) {
        throw new FcRunError('snapshot-spec-mismatch', `${o.spec} does not describe the VM of ${file}: the spec's plan is ${planned.hash}, the snapshot was taken from ${snapshot.header.planHash} (TAP names, drive files and the vsock path aside)`, EXIT_INVALID_SPEC);
      }
    }
    const plan = applyOverrides(stored, overrides);
    // Only once nothing is left to refuse: no vCPU thread is starting while fc-run exits 2.
    if (fs.existsSync('/dev/kvm')) prewarmVcpuThreads(plan.vcpus.count, threadFilters !== undefined);
    reportStatus(io, rep, 'restoring', `${file}: taken ${snapshot.header.createdAt} from plan ${snapshot.header.planHash}, ${plan.vcpus.count} vCPU(s), ${plan.memory.sizeMib} MiB${resume ? '' : ', paused'}`, {
      plan_hash: snapshot.header.planHash,
      created_at: snapshot.header.createdAt,
    });
    // Loaded only now: KVM and the device models are not needed to refuse a snapshot.
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { restoreSnapshot } = require('../../boot/launch') as typeof import('../../boot/launch');
    return await launchPlanned(io, rep, o, plan, undefined, threadFilters, startNs, {
      running: () => (running = true),
      apiOpened: (close) => (closeApi = close),
      planHash: () => snapshot.header.planHash,
      start: (opts) => restoreSnapshot(snapshot, path.resolve(memFile), plan, !resume, opts),
    });
  } finally {
    process.off('SIGTERM', early);
    process.off('SIGINT', early);
  }
}
