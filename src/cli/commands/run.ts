import * as fs from 'node:fs';
import type * as Net from 'node:net';
import { isTerminal } from '../../terminal';
import * as path from 'node:path';
import { describeSnapshot, readSnapshotFile, snapshotSummary, snapshotVersionText } from '../../vmm/snapshot-file';
import { checkSnapshot } from '../../boot/snapshot-plan';
import { loadSpecFile } from '../../config/validate';
import { DEFAULT_MMDS_SIZE_LIMIT } from '../../config/resolved';
import { planRunnable, prewarmVcpuThreads } from '../../boot';
import type { BootPlan } from '../../boot';
import type { MonitorConfig } from '../../monitor/vm-monitor';
import type { ApiContext } from '../../api/server';
import { EXIT_FAILURE, EXIT_OK, FcRunError } from '../../errors';
import { CommandSpec, OptionSpec, ParsedArgs, UsageError } from '../args';
import { Io, reportStatus, Reporting, showSpecWarnings, write } from '../io';
import { painterFor } from '../format';
import { VERSION } from '../version';
import { SpecInvalidError } from '../../config/issues';
import type { LogLevel } from '../../config/resolved';
import { instanceIdProblem, loadOptionsOf, mmdsSizeLimitOf, REPORT_OPTIONS, reportingOf, SPEC_OPTIONS } from './common';
import { serviceNotify } from '../service-notify';
import { compileSeccompilerJson } from '../../kvm/seccompiler';
import type { LaunchOptions, ThreadFilters } from '../../boot/launch';
import type { RunResult } from '../../vmm/microvm';
import { readText } from '../../config/read';

/** Firecracker's limit on an API request body (its --http-api-max-payload-size default). */
export const DEFAULT_API_MAX_PAYLOAD = 51200;


export const LOG_LEVELS = ['Error', 'Warning', 'Info', 'Debug', 'Trace', 'Off'] as const;

/** Logging and metrics flags, shared by `run` and Firecracker's command line. */
export const MONITOR_OPTIONS: OptionSpec[] = [
  { name: 'id', kind: 'string', valueName: 'ID', check: instanceIdProblem, describe: 'The microVM id in log lines, metrics and the API (default: anonymous-instance)' },
  { name: 'log-path', kind: 'string', valueName: 'PATH', describe: 'Log to this file or named pipe (overrides logger.log_path)' },
  { name: 'level', kind: 'string', valueName: 'LEVEL', choices: LOG_LEVELS, caseInsensitive: true, aliases: { warn: 'Warning' }, describe: 'Log level (overrides logger.level; "warn" is Warning, as in Firecracker)' },
  { name: 'module', kind: 'string', valueName: 'MODULE', describe: 'Log only lines whose origin starts with this module, e.g. devices/virtio (overrides logger.module)' },
  { name: 'show-level', kind: 'flag', describe: 'Show the level in log lines (overrides logger.show_level)' },
  { name: 'show-log-origin', kind: 'flag', describe: 'Show the source of log lines (overrides logger.show_log_origin)' },
  { name: 'metrics-path', kind: 'string', valueName: 'PATH', describe: 'Write metrics (JSON lines) to this file or named pipe (overrides metrics.metrics_path)' },
];

/** Firecracker's flags that fc-run does not implement: refused by name, with what to do instead. */
const REFUSED_FIRECRACKER_FLAGS: OptionSpec[] = [
  { name: 'enable-pci', kind: 'refused', takesValue: false, describe: '', hidden: true, why: 'fc-run has virtio-mmio devices only; remove the flag' },
];

export const RUN_SPEC: CommandSpec = {
  name: 'run',
  usage: 'fc-run [run] <spec> [options]   or   fc-run --no-api --config-file <spec> [options]',
  summary: 'Launch the microVM the spec describes, on KVM, until the guest stops.',
  positionals: [{ name: 'spec', describe: 'Path to the VM spec (JSON); or give it with --config-file', optional: true }],
  options: [
    { name: 'config-file', kind: 'string', valueName: 'PATH', describe: "The spec, Firecracker's way (instead of the <spec> argument)" },
    { name: 'no-api', kind: 'flag', describe: 'Accepted for Firecracker compatibility: fc-run serves no API unless --api-sock is given' },
    { name: 'api-sock', kind: 'string', valueName: 'PATH', describe: 'Serve the HTTP API for changing the running VM (MMDS, rate limiters, actions) on this Unix socket' },
    { name: 'http-api-max-payload-size', kind: 'integer', min: 1, max: 64 * 1024 * 1024, valueName: 'BYTES', describe: `Largest API request body (default ${DEFAULT_API_MAX_PAYLOAD}, or the MMDS size limit plus 4 KiB when that is larger)` },
    ...SPEC_OPTIONS,
    ...MONITOR_OPTIONS,
    { name: 'serial-out', kind: 'string', valueName: 'PATH', describe: 'Where guest serial output goes: a file or named pipe, "none" to discard it (default: stdout)' },
    { name: 'boot-timer', kind: 'flag', describe: "Accepted for Firecracker compatibility: fc-run always has the boot timer device (port 0x3f0) and logs the guest's boot time" },
    { name: 'start-time-us', kind: 'integer', min: 0, max: Number.MAX_SAFE_INTEGER, valueName: 'US', describe: "When the process was started (CLOCK_MONOTONIC, microseconds; the jailer's value), for the boot time" },
    { name: 'start-time-cpu-us', kind: 'integer', min: 0, max: Number.MAX_SAFE_INTEGER, valueName: 'US', describe: 'Accepted for Firecracker compatibility (the process CPU time at start)' },
    { name: 'parent-cpu-time-us', kind: 'integer', min: 0, max: Number.MAX_SAFE_INTEGER, valueName: 'US', describe: "Accepted for Firecracker compatibility (the parent's CPU time)" },
    { name: 'no-seccomp', kind: 'flag', describe: 'Leave out the seccomp filter (for debugging; not recommended)' },
    {
      name: 'seccomp-filter',
      kind: 'string',
      valueName: 'FILE',
      describe:
        "Per-thread seccomp filters in the JSON form of Firecracker's seccompiler (categories vmm, api, vcpu), installed on top of fc-run's own filter (not seccompiler-bin's compiled output)",
    },
    { name: 'describe-snapshot', kind: 'string', valueName: 'FILE', describe: "Print what a snapshot's state file holds (format version first, as Firecracker does) and exit; exit 2 if it is not a usable snapshot" },
    { name: 'snapshot-version', kind: 'flag', describe: 'Print the snapshot format version this fc-run writes and reads, and exit' },
    { name: 'exit-with-fd', kind: 'integer', min: 3, max: 65535, hidden: true, describe: 'Stop the VM when this inherited socket or pipe reaches end of stream (the jailer uses it)' },
    { name: 'spec-warnings-shown', kind: 'flag', hidden: true, describe: "The spec's warnings were shown already (by `fc-run jail`, for the user's spec rather than the jail's copy): do not show them again" },
    { name: 'exit-record', kind: 'string', valueName: 'FILE', hidden: true, describe: 'When fc-run exits, write {code, reason, time} as JSON to this file (fc-run up reads it for VMs it cannot wait on)' },
    ...REPORT_OPTIONS,
    ...REFUSED_FIRECRACKER_FLAGS,
  ],
  examples: [
    ['fc-run examples/hello.json', 'boot the bundled probe guest'],
    ['fc-run --no-api --config-file vm.json', "the same, with Firecracker's flags"],
    ['fc-run vm.json --serial-out /tmp/vm.console', 'guest console to a file'],
    ['fc-run run vm.json --metadata meta.json', 'boot with MMDS contents from a file'],
    ['fc-run vm.json --log-path vm.log --level Debug --metrics-path vm.metrics', 'logs and metrics to files (or named pipes)'],
  ],
  notes: 'Exit status: 0 when the guest resets or powers off, 2 invalid spec, 1 any other failure.\nIn a terminal, keystrokes go to the guest console; Ctrl-A x stops the VM.',
};

/** The spec file: the <spec> argument or --config-file, exactly one of them. */
export function specArgument(args: ParsedArgs): string {
  const configFile = args.options['config-file'] as string | undefined;
  const positional = args.positionals[0];
  if (configFile !== undefined && positional !== undefined) throw new UsageError(`give the spec once: either --config-file ${configFile} or the argument ${positional}, not both`, 'run');
  const spec = configFile ?? positional;
  if (spec === undefined) {
    if (args.options['api-sock'] !== undefined) {
      throw new UsageError('fc-run needs a spec (--config-file or a spec argument): a VM is described by its spec, and the API only changes a running one (configuring through PUT /boot-source and friends is not supported)', 'run');
    }
    throw new UsageError('missing <spec> argument (or --config-file)', 'run');
  }
  return spec;
}

const STOP_WORDS: Record<string, string> = {
  reset: 'the guest reset the machine',
  shutdown: 'the guest powered off',
  halt: 'the guest halted',
  stopped: 'stopped from the console',
};

/** Logs and metrics: the spec's sections, each setting overridden by its command-line flag. */
function monitorConfig(plan: BootPlan, o: Record<string, unknown>): MonitorConfig {
  const spec = plan.logger;
  const logPath = o['log-path'] as string | undefined;
  const level = o.level as string | undefined;
  const moduleFilter = o.module as string | undefined;
  const wantLog = spec !== undefined || logPath !== undefined || level !== undefined || moduleFilter !== undefined;
  const metricsPath = o['metrics-path'] as string | undefined;
  const interval = Number(process.env.FC_RUN_METRICS_INTERVAL_MS);
  return {
    instanceId: o.id as string | undefined,
    log: wantLog
      ? {
          path: logPath !== undefined ? path.resolve(logPath) : spec?.path,
          level: (level as LogLevel | undefined) ?? spec?.level ?? 'Info',
          showLevel: o['show-level'] === true ? true : (spec?.showLevel ?? false),
          showOrigin: o['show-log-origin'] === true ? true : (spec?.showOrigin ?? false),
          module: moduleFilter ?? spec?.module,
        }
      : undefined,
    metrics:
      metricsPath !== undefined || plan.metrics
        ? { path: metricsPath !== undefined ? path.resolve(metricsPath) : plan.metrics!.path, emitId: plan.metrics?.emitId ?? false, properties: plan.metrics?.properties }
        : undefined,
    // For tests of the periodic line; Firecracker's period (60 s) otherwise.
    metricsIntervalMs: interval > 0 ? interval : undefined,
  };
}

export function watchLifeline(fd: number): void {
  let kind: fs.Stats | undefined;
  try {
    kind = fs.fstatSync(fd);
  } catch {
    kind = undefined;
  }
  if (!kind || !(kind.isSocket() || kind.isFIFO())) throw new UsageError(`--exit-with-fd ${fd}: not an open socket or pipe`, 'run');
  // The supervisor (the jailer) went away: stop the VM as SIGTERM would.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const lifeline = new (require('node:net') as typeof Net).Socket({ fd, readable: true, writable: false });
  lifeline.on('error', () => undefined);
  lifeline.on('close', () => process.kill(process.pid, 'SIGTERM'));
  lifeline.unref();
}

// --- exit record (for `fc-run up`) ---------------------------------------------------------
// A supervisor that restarted cannot wait() on the VMs it adopted, so fc-run says itself how it
// ended. Written on the 'exit' event so every path out (return, process.exit in a signal handler
// or crash handler) leaves one; only SIGKILL leaves none, which the supervisor reports as such.
let exitReason = 'exited';

function recordExitTo(file: string): void {
  const target = path.resolve(file);
  try {
    fs.rmSync(target, { force: true });
  } catch {
    // An unwritable place fails again at exit; nothing to add here.
  }
  process.once('exit', (code) => {
    const record = { code, reason: exitReason, time: new Date().toISOString(), pid: process.pid };
    try {
      fs.writeFileSync(`${target}.tmp`, `${JSON.stringify(record)}\n`);
      fs.renameSync(`${target}.tmp`, target);
    } catch {
      // Nowhere to report it at exit; the supervisor then falls back to the process status.
    }
  });
}

export async function runCommand(io: Io, args: ParsedArgs, startNs: bigint): Promise<number> {
  if (args.options['exit-record'] !== undefined) {
    recordExitTo(args.options['exit-record'] as string);
    try {
      const code = await runCommandInner(io, args, startNs);
      if (code !== EXIT_OK && exitReason === 'exited') exitReason = 'failed';
      return code;
    } catch (err) {
      const firstIssue = err instanceof SpecInvalidError ? err.issues.find((i) => i.severity === 'error') : undefined;
      exitReason = firstIssue ? `invalid spec: ${firstIssue.message}` : err instanceof FcRunError ? `${err.code}: ${err.message}` : `error: ${(err as Error).message}`;
      throw err;
    }
  }
  return runCommandInner(io, args, startNs);
}
// --- end exit record ---------------------------------------------------------------------------

/**
 * --seccomp-filter FILE: Firecracker's seccompiler JSON, compiled to one BPF program per thread
 * category before anything is launched (a bad file is refused with exit 2, naming the JSON path).
 */
export function threadFiltersOf(o: Record<string, unknown>): ThreadFilters | undefined {
  const file = o['seccomp-filter'] as string | undefined;
  if (file === undefined) return undefined;
  if (o['no-seccomp'] === true) throw new UsageError('--seccomp-filter and --no-seccomp cannot be combined: give one of them', 'run');
  const programs = compileSeccompilerJson(readText(path.resolve(file), 'seccomp filter file'), file);
  return { api: programs.get('api'), vmm: programs.get('vmm'), vcpu: programs.get('vcpu') };
}

/** --describe-snapshot FILE and --snapshot-version: answered without a spec, nothing launched. */
function snapshotQuery(io: Io, args: ParsedArgs): number | undefined {
  const o = args.options;
  const describe = o['describe-snapshot'] as string | undefined;
  if (describe === undefined && o['snapshot-version'] !== true) return undefined;
  if (describe !== undefined && o['snapshot-version'] === true) throw new UsageError('give --describe-snapshot or --snapshot-version, not both', 'run');
  if (args.positionals.length > 0 || o['config-file'] !== undefined) throw new UsageError(`--${describe !== undefined ? 'describe-snapshot' : 'snapshot-version'} only prints and exits: leave out the spec`, 'run');
  if (describe === undefined) {
    io.out.write(`${snapshotVersionText()}\n`);
    return EXIT_OK;
  }
  const snap = readSnapshotFile(path.resolve(describe));
  checkSnapshot(snap, describe);
  if (reportingOf(args).jsonLines) io.out.write(`${JSON.stringify({ event: 'snapshot', file: describe, ...snapshotSummary(snap) })}\n`);
  else io.out.write(`${snapshotVersionText()}\n${describeSnapshot(snap)}`);
  return EXIT_OK;
}

async function runCommandInner(io: Io, args: ParsedArgs, startNs: bigint): Promise<number> {
  const o = args.options;
  const rep: Reporting = reportingOf(args);
  const query = snapshotQuery(io, args);
  if (query !== undefined) return query;
  const file = specArgument(args);
  if (o['start-time-us'] !== undefined) startNs = BigInt(o['start-time-us'] as number) * 1000n;
  // Until the VM runs (and MicroVm handles them), SIGTERM and SIGINT end fc-run here; as PID 1 of
  // a jail's namespace it would otherwise ignore them.
  let running = false;
  let closeApi = () => undefined as void;
  const early = (sig: NodeJS.Signals) => {
    if (running) return;
    exitReason = `${sig} before the VM ran`;
    reportStatus(io, rep, 'signal', `${sig} before the VM ran`);
    closeApi();
    process.exit(EXIT_FAILURE);
  };
  process.on('SIGTERM', early);
  process.on('SIGINT', early);
  // bin/fc-run's stand-in for these (as PID 1 of a jail, see there) is no longer needed.
  for (const sig of ['SIGTERM', 'SIGINT'] as const) for (const l of process.listeners(sig)) if (l.name === 'fcRunStartingSignal') process.off(sig, l);
  try {
    if (o['exit-with-fd'] !== undefined) watchLifeline(o['exit-with-fd'] as number);
    const threadFilters = threadFiltersOf(o);
    const loaded = loadSpecFile(file, {
      ...loadOptionsOf(args),
      flagOutputs: {
        logPath: o['log-path'] as string | undefined,
        metricsPath: o['metrics-path'] as string | undefined,
        serialOut: o['serial-out'] as string | undefined,
        apiSock: o['api-sock'] as string | undefined,
      },
    });
    const planned = planRunnable(loaded);
    // The worker threads its vCPUs will take (if any: see vcpuThreadsMode) load while KVM and
    // guest memory are set up.
    if (fs.existsSync('/dev/kvm')) prewarmVcpuThreads(planned.plan.vcpus.count, threadFilters !== undefined);
    showSpecWarnings(io, rep, loaded.displayFile, planned.allWarnings, o['spec-warnings-shown'] !== true);
    return await launchPlanned(io, rep, o, planned.plan, loaded.spec.mmds?.data, threadFilters, startNs, {
      running: () => (running = true),
      apiOpened: (close) => (closeApi = close),
      planHash: () => planned.hash,
    });
  } finally {
    process.off('SIGTERM', early);
    process.off('SIGINT', early);
  }
}

/** How the machine starts: a boot of the plan (run), or a snapshot restored onto it (restore). */
export type MachineStart = (opts: LaunchOptions) => Promise<RunResult>;

/**
 * Starts the planned VM with everything around it (serial output, logs and metrics, the API,
 * sd_notify, crash handling) and reports how it ended.
 */
export async function launchPlanned(
  io: Io,
  rep: Reporting,
  o: Record<string, unknown>,
  plan: BootPlan,
  mmdsData: unknown,
  threadFilters: ThreadFilters | undefined,
  startNs: bigint,
  hooks: { running: () => void; apiOpened: (close: () => void) => void; planHash: () => string; start?: MachineStart },
): Promise<number> {
  // Loaded only now: KVM, the device models and the API are not needed to refuse a spec.
  /* eslint-disable @typescript-eslint/no-require-imports */
  const { launch, monitorFor } = require('../../boot/launch') as typeof import('../../boot/launch');
  const { openSerialOutput } = require('../../vmm/serial-output') as typeof import('../../vmm/serial-output');
  /* eslint-enable @typescript-eslint/no-require-imports */
  const serialOutArg = o['serial-out'] as string | undefined;
  const serialOutFd = openSerialOutput(serialOutArg).fd;
  // fc-run's own lines from here on (the VM's end, errors) never wait on a reader that stopped.
  io.out.nonBlocking?.();
  io.err.nonBlocking?.();
  // Keystrokes reach the guest only when fc-run runs in a terminal and its console is shown there.
  // (isTerminal, not process.stdin.isTTY: process.stdin builds a stream, ~1.5 ms, that a launch without a terminal never uses.)
  const serialIn = isTerminal(0) && (serialOutArg === undefined || serialOutArg === '-') && serialOutFd >= 0 ? process.stdin : undefined;
  const monitorCfg = monitorConfig(plan, o);
  const monitor = monitorFor(plan, monitorCfg);
  const mmdsSizeLimit = mmdsSizeLimitOf(o) ?? DEFAULT_MMDS_SIZE_LIMIT;
  const maxBody = (o['http-api-max-payload-size'] as number | undefined) ?? Math.max(DEFAULT_API_MAX_PAYLOAD, mmdsSizeLimit + 4096);
  const apiSock = o['api-sock'] as string | undefined;
  const api: ApiContext | undefined = apiSock !== undefined ? { id: (o.id as string | undefined) ?? 'anonymous-instance', version: VERSION, monitor, maxBody } : undefined;
  // The API (node:http, node:net) is loaded only when asked for.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const apiServer = api ? await (require('../../api/server') as typeof import('../../api/server')).startApi(path.resolve(apiSock!), api) : undefined;
  const closeApi = () => apiServer?.close();
  hooks.apiOpened(closeApi);
  // A bug that escapes every handler still leaves a log line and a last metrics line.
  const onCrash = (err: Error) => {
    exitReason = `crashed: ${err.message}`;
    monitor.fatal(`fc-run crashed: ${err.stack ?? err.message}`);
    closeApi();
    process.stderr.write(`fc-run crashed: ${err.stack ?? err.message}\n`);
    process.exit(EXIT_FAILURE);
  };
  process.on('uncaughtException', onCrash);
  // sd_notify (systemd Type=notify, `fc-run unit`): READY=1 once the guest runs, STOPPING=1 when it stops.
  const notify = serviceNotify(io, rep, (m) => monitor.log.warn('vmm', m));
  let result;
  try {
    const start: MachineStart = hooks.start ?? ((opts) => launch(plan, opts));
    result = await start({
      planHash: hooks.planHash,
      // Files this fc-run writes: a snapshot is never written over one of them.
      outputPaths: [monitorCfg.log?.path, monitorCfg.metrics?.path, o['serial-out'] as string | undefined, apiSock, o['exit-record'] as string | undefined]
        .filter((f): f is string => f !== undefined && f !== 'none' && f !== '-')
        .map((f) => path.resolve(f)),
      serialOutFd,
      startNs,
      serialIn,
      mmdsData,
      monitor,
      seccomp: o['no-seccomp'] !== true,
      threadFilters,
      mmdsSizeLimit,
      onRunning: (vm) => {
        hooks.running();
        if (api) api.vm = vm;
        notify.ready(`running: ${plan.vcpus.count} vCPU(s), ${plan.memory.sizeMib} MiB`); // sd_notify
      },
    });
    notify.stopping(`stopped: ${result.stop.detail}`); // sd_notify
  } catch (err) {
    notify.stopping(`failed: ${(err as Error).message}`); // sd_notify
    // Whatever failed, the metrics so far are flushed (reason "fatal") before fc-run exits.
    monitor.fatal(`launch failed: ${(err as Error).message}`);
    throw err;
  } finally {
    process.off('uncaughtException', onCrash);
    notify.close(); // sd_notify
    if (api) {
      api.vm = undefined;
      api.stopped = true;
    }
    closeApi();
  }
  const boot = result.bootTimeNs !== undefined ? `, guest boot time ${(Number(result.bootTimeNs) / 1e6).toFixed(1)} ms` : '';
  const bootMs = result.bootTimeNs !== undefined ? Number(result.bootTimeNs) / 1e6 : undefined;
  // The guest's share of fc-run's CPU time (the vCPU threads inside KVM_RUN); the rest is the VMM's.
  const runMs = result.vcpuRunNs !== undefined ? Number(result.vcpuRunNs) / 1e6 : undefined;
  if (runMs !== undefined) monitor.log.info('vmm', `the vCPUs spent ${runMs.toFixed(1)} ms of CPU time inside KVM_RUN`);
  const runText = runMs !== undefined ? `, ${runMs.toFixed(1)} ms of vCPU time in KVM_RUN` : '';
  exitReason = `${result.stop.reason}: ${result.stop.detail}`;
  if (result.stop.reason in STOP_WORDS) {
    monitor.log.info('vmm', `the VM stopped: ${result.stop.detail}`);
    monitor.stop();
    const what = result.stop.reason === 'stopped' ? result.stop.detail : STOP_WORDS[result.stop.reason];
    reportStatus(io, rep, 'stopped', `${what}${boot}${runText}`, { reason: result.stop.reason, boot_time_ms: bootMs, vcpu_run_ms: runMs, exit: EXIT_OK });
    return EXIT_OK;
  }
  monitor.fatal(`the microVM failed: ${result.stop.detail}`);
  if (rep.jsonLines) {
    reportStatus(io, rep, 'failed', `the microVM failed: ${result.stop.detail}`, { reason: result.stop.reason, registers: result.stop.registers, exit: EXIT_FAILURE });
  } else {
    write(io.err, `${painterFor(io.err).red.bold('fc-run: the microVM failed:')} ${result.stop.detail}`);
    if (result.stop.registers) write(io.err, result.stop.registers);
  }
  return EXIT_FAILURE;
}
