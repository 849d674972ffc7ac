import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import yargs, { Argv } from 'yargs';
import { loadSpecFile, LoadOptions } from '../config/validate';
import { SpecInvalidError, SpecIssue } from '../config/issues';
import { loadSchema } from '../config/schema';
import { DEFAULT_MMDS_SIZE_LIMIT } from '../config/resolved';
import { canonicalJson, planSpec } from '../boot';
import { launch, monitorFor, prewarmVcpuThreads } from '../boot/launch';
import type { BootPlan } from '../boot';
import type { MonitorConfig } from '../monitor/vm-monitor';
import { prepareJail, runJail } from '../jail/jail';
import { ApiContext, startApi } from '../api/server';
import { EXIT_FAILURE, EXIT_INVALID_SPEC, EXIT_OK, FcRunError } from '../errors';
import { displayPath, formatIssue, issueJson, painterFor } from './format';
import { renderPlan } from './plan-view';

const VERSION: string = (JSON.parse(fs.readFileSync(path.resolve(__dirname, '..', '..', 'package.json'), 'utf8')) as { version: string }).version;

interface Io {
  out: NodeJS.WriteStream;
  err: NodeJS.WriteStream;
}

function write(stream: NodeJS.WriteStream, text: string): void {
  stream.write(text.endsWith('\n') ? text : `${text}\n`);
}

/** Prints issues (warnings included) for a spec, to stderr. */
function reportIssues(io: Io, issues: SpecIssue[]): void {
  const c = painterFor(io.err);
  for (const i of issues) write(io.err, formatIssue(i, c));
}

/** Turns a failure into its exit code after telling the user what happened. */
function handleFailure(io: Io, err: unknown): number {
  const c = painterFor(io.err);
  if (err instanceof SpecInvalidError) {
    reportIssues(io, err.issues);
    const n = err.issues.filter((i) => i.severity === 'error').length;
    write(io.err, c.red(`${displayPath(err.file)}: invalid spec (${n} error${n === 1 ? '' : 's'})`));
    return err.exitCode;
  }
  if (err instanceof FcRunError) {
    write(io.err, `${c.red.bold('fc-run:')} ${err.message}`);
    return err.exitCode;
  }
  write(io.err, `${c.red.bold('fc-run: internal error:')} ${(err as Error)?.stack ?? String(err)}`);
  return EXIT_FAILURE;
}

function loadOptions(argv: { 'skip-files'?: boolean; metadata?: string; 'mmds-size-limit'?: number }): LoadOptions {
  return { skipFiles: argv['skip-files'], metadataFile: argv.metadata, mmdsSizeLimit: argv['mmds-size-limit'] };
}

function validateCommand(io: Io, files: string[], json: boolean, opts: LoadOptions): number {
  const c = painterFor(io.out);
  const results: Record<string, unknown>[] = [];
  let invalid = false;
  let failed = false;
  for (const file of files) {
    try {
      const loaded = loadSpecFile(file, opts);
      const warnings = loaded.warnings.filter((w) => w.severity === 'warning');
      if (json) results.push({ file, valid: true, errors: [], warnings: warnings.map(issueJson) });
      else {
        write(io.out, `${c.green('ok')}    ${file}${warnings.length ? c.yellow(` (${warnings.length} warning${warnings.length === 1 ? '' : 's'})`) : ''}`);
        reportIssues(io, warnings);
      }
    } catch (err) {
      if (err instanceof SpecInvalidError) {
        invalid = true;
        const errors = err.issues.filter((i) => i.severity === 'error');
        if (json) {
          results.push({ file, valid: false, errors: errors.map(issueJson), warnings: err.issues.filter((i) => i.severity === 'warning').map(issueJson) });
        } else {
          write(io.out, `${c.red('FAIL')}  ${file} (${errors.length} error${errors.length === 1 ? '' : 's'})`);
          reportIssues(io, err.issues);
        }
      } else if (err instanceof FcRunError) {
        failed = true;
        if (json) results.push({ file, valid: false, errors: [{ severity: 'error', code: err.code, file, message: err.message }], warnings: [] });
        else write(io.out, `${c.red('FAIL')}  ${file}: ${err.message}`);
      } else {
        throw err;
      }
    }
  }
  if (json) write(io.out, JSON.stringify({ valid: !invalid && !failed, files: results }, null, 2));
  return invalid ? EXIT_INVALID_SPEC : failed ? EXIT_FAILURE : EXIT_OK;
}

function planCommand(io: Io, file: string, json: boolean, opts: LoadOptions): number {
  const planned = planSpec(loadSpecFile(file, opts));
  reportIssues(io, planned.allWarnings.filter((w) => w.severity === 'warning'));
  if (json) {
    // Canonical key order, so the printed JSON hashes to the printed hash.
    write(io.out, JSON.stringify({ hash: planned.hash, plan: JSON.parse(canonicalJson(planned.plan)) }, null, 2));
  } else {
    write(io.out, renderPlan(planned.plan, planned.hash, painterFor(io.out)));
  }
  return EXIT_OK;
}

/** Opens where guest serial output goes: stdout, a file or FIFO, or nowhere. */
function serialTarget(arg: string | undefined): number {
  if (arg === undefined || arg === '-') return 1;
  if (arg === 'none') return -1;
  try {
    return fs.openSync(arg, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_APPEND);
  } catch (err) {
    throw new FcRunError('serial-out', `cannot open --serial-out ${arg}: ${(err as NodeJS.ErrnoException).code}`);
  }
}

const STOP_WORDS: Record<string, string> = {
  reset: 'the guest reset the machine',
  shutdown: 'the guest powered off',
  halt: 'the guest halted',
  stopped: 'stopped from the console',
};

interface MonitorFlags {
  id?: string;
  logPath?: string;
  level?: string;
  showLevel?: boolean;
  showLogOrigin?: boolean;
  metricsPath?: string;
}

/** Logs and metrics: the spec's sections, each setting overridden by its command-line flag. */
function monitorConfig(plan: BootPlan, flags: MonitorFlags): MonitorConfig {
  const spec = plan.logger;
  const wantLog = spec !== undefined || flags.logPath !== undefined || flags.level !== undefined;
  const interval = Number(process.env.FC_RUN_METRICS_INTERVAL_MS);
  return {
    instanceId: flags.id,
    log: wantLog
      ? {
          path: flags.logPath !== undefined ? path.resolve(flags.logPath) : spec?.path,
          level: flags.level ?? spec?.level ?? 'Info',
          showLevel: flags.showLevel ?? spec?.showLevel ?? false,
          showOrigin: flags.showLogOrigin ?? spec?.showOrigin ?? false,
          module: spec?.module,
        }
      : undefined,
    metrics:
      flags.metricsPath !== undefined || plan.metrics
        ? { path: flags.metricsPath !== undefined ? path.resolve(flags.metricsPath) : plan.metrics!.path, emitId: plan.metrics?.emitId ?? false, properties: plan.metrics?.properties }
        : undefined,
    // For tests of the periodic line; Firecracker's period (60 s) otherwise.
    metricsIntervalMs: interval > 0 ? interval : undefined,
  };
}

async function runCommand(io: Io, file: string, opts: LoadOptions & MonitorFlags & { serialOut?: string; startNs: bigint; seccomp?: boolean; exitWithFd?: number; apiSock?: string }): Promise<number> {
  // Until the VM runs (and MicroVm handles them), SIGTERM and SIGINT end fc-run here; as PID 1 of
  // a jail's namespace it would otherwise ignore them.
  let running = false;
  let closeApi = () => undefined as void;
  const early = (sig: NodeJS.Signals) => {
    if (running) return;
    write(io.err, `fc-run: ${sig} before the VM ran`);
    closeApi();
    process.exit(EXIT_FAILURE);
  };
  process.on('SIGTERM', early);
  process.on('SIGINT', early);
  if (opts.exitWithFd !== undefined) {
    const fd = opts.exitWithFd;
    let kind: fs.Stats | undefined;
    try {
      kind = Number.isInteger(fd) && fd > 2 ? fs.fstatSync(fd) : undefined;
    } catch {
      kind = undefined;
    }
    if (!kind || !(kind.isSocket() || kind.isFIFO())) throw new FcRunError('usage', `--exit-with-fd ${fd}: not an open socket or pipe above 2`);
    // The supervisor (the jailer) went away: stop the VM as SIGTERM would.
    const lifeline = new net.Socket({ fd, readable: true, writable: false });
    lifeline.on('error', () => undefined);
    lifeline.on('close', () => process.kill(process.pid, 'SIGTERM'));
    lifeline.unref();
  }
  // Every VM has a vCPU 0: its thread loads while the spec is validated and planned.
  if (fs.existsSync('/dev/kvm')) prewarmVcpuThreads(1);
  const loaded = loadSpecFile(file, opts);
  const planned = planSpec(loaded);
  reportIssues(io, planned.allWarnings.filter((w) => w.severity === 'warning'));
  const serialOutFd = serialTarget(opts.serialOut);
  // Keystrokes reach the guest only when fc-run runs in a terminal and its console is shown there.
  const serialIn = process.stdin.isTTY && serialOutFd === 1 ? process.stdin : undefined;
  const monitor = monitorFor(planned.plan, monitorConfig(planned.plan, opts));
  const api: ApiContext | undefined = opts.apiSock !== undefined ? { id: opts.id ?? 'anonymous-instance', version: VERSION, monitor, maxBody: (opts.mmdsSizeLimit ?? DEFAULT_MMDS_SIZE_LIMIT) + 4096 } : undefined;
  const apiServer = api ? await startApi(path.resolve(opts.apiSock!), api) : undefined;
  if (apiServer) closeApi = () => apiServer.close();
  // A bug that escapes every handler still leaves a log line and a last metrics line.
  const onCrash = (err: Error) => {
    monitor.fatal(`fc-run crashed: ${err.stack ?? err.message}`);
    closeApi();
    process.stderr.write(`fc-run crashed: ${err.stack ?? err.message}\n`);
    process.exit(EXIT_FAILURE);
  };
  process.on('uncaughtException', onCrash);
  let result;
  try {
    result = await launch(planned.plan, { serialOutFd, startNs: opts.startNs, serialIn, mmdsData: loaded.spec.mmds?.data, monitor, seccomp: opts.seccomp, mmdsSizeLimit: opts.mmdsSizeLimit, onRunning: (vm) => {
      running = true;
      if (api) api.vm = vm;
    } });
  } catch (err) {
    // Whatever failed, the metrics so far are flushed (reason "fatal") before fc-run exits.
    monitor.fatal(`launch failed: ${(err as Error).message}`);
    throw err;
  } finally {
    process.off('uncaughtException', onCrash);
    process.off('SIGTERM', early);
    process.off('SIGINT', early);
    if (api) {
      api.vm = undefined;
      api.stopped = true;
    }
    apiServer?.close();
  }
  if (result.stop.reason in STOP_WORDS) {
    monitor.log.info('vmm', `the VM stopped: ${result.stop.detail}`);
    monitor.stop();
  } else {
    monitor.fatal(`the microVM failed: ${result.stop.detail}`);
  }
  const c = painterFor(io.err);
  const boot = result.bootTimeNs !== undefined ? `, guest boot time ${(Number(result.bootTimeNs) / 1e6).toFixed(1)} ms` : '';
  if (result.stop.reason in STOP_WORDS) {
    const what = result.stop.reason === 'stopped' ? result.stop.detail : STOP_WORDS[result.stop.reason];
    write(io.err, c.dim(`fc-run: ${what}${boot}`));
    return EXIT_OK;
  }
  write(io.err, `${c.red.bold('fc-run: the microVM failed:')} ${result.stop.detail}`);
  if (result.stop.registers) write(io.err, result.stop.registers);
  return EXIT_FAILURE;
}

const runOptions = <T>(y: Argv<T>) =>
  y
    .option('serial-out', { type: 'string', describe: 'Where guest serial output goes: a file or named pipe, "none" to discard it (default: stdout)', requiresArg: true })
    .option('id', { type: 'string', describe: 'The microVM id in log lines and metrics (default: anonymous-instance)', requiresArg: true })
    .option('log-path', { type: 'string', describe: 'Log to this file or named pipe (overrides logger.log_path)', requiresArg: true })
    .option('level', { type: 'string', describe: 'Log level: Error, Warning, Info, Debug, Trace or Off (overrides logger.level)', requiresArg: true })
    .option('show-level', { type: 'boolean', describe: 'Show the level in log lines (overrides logger.show_level)' })
    .option('show-log-origin', { type: 'boolean', describe: 'Show the source of log lines (overrides logger.show_log_origin)' })
    .option('metrics-path', { type: 'string', describe: 'Write metrics (JSON lines) to this file or named pipe (overrides metrics.metrics_path)', requiresArg: true })
    .option('api-sock', { type: 'string', describe: 'Serve the HTTP API for changing the running VM (MMDS, rate limiters, actions) on this Unix socket', requiresArg: true })
    .option('exit-with-fd', { type: 'number', hidden: true, describe: 'Stop the VM when this inherited socket or pipe reaches end of stream (the jailer uses it)', requiresArg: true })
    .option('seccomp', { type: 'boolean', default: true, describe: 'Install the seccomp filter before the guest runs (--no-seccomp to leave it out, for debugging)' });

const specOptions = <T>(y: Argv<T>) =>
  y
    .option('metadata', { type: 'string', describe: 'JSON file with the initial MMDS contents (instead of the spec\'s "mmds" key)', requiresArg: true })
    .option('mmds-size-limit', { type: 'number', describe: 'Largest MMDS contents accepted, in bytes', default: DEFAULT_MMDS_SIZE_LIMIT, requiresArg: true });

/** Runs the CLI and resolves to the process exit code. */
export async function main(argv: string[], io: Io = { out: process.stdout, err: process.stderr }, startNs = process.hrtime.bigint()): Promise<number> {
  let code = EXIT_OK;
  let usageError = false;
  const guard = async (fn: () => number | Promise<number>) => {
    // With exitProcess(false) yargs may still call the handler after reporting a usage error.
    if (usageError) return;
    try {
      code = await fn();
    } catch (err) {
      code = handleFailure(io, err);
    }
  };
  const parser = yargs(argv)
    .scriptName('fc-run')
    .usage('Usage: $0 <spec>  or  $0 <command> [options]\n\nfc-run launches one microVM from a JSON spec: validated against schemas/vm.schema.json, compiled into a boot plan, run on KVM.')
    .command(
      ['run <spec>', '$0 <spec>'],
      'Launch the microVM the spec describes',
      (y) =>
        runOptions(specOptions(y))
          .positional('spec', { type: 'string', describe: 'Path to the VM spec (JSON)' })
          .example('$0 examples/hello.json', 'boot the bundled probe guest')
          .example('$0 vm.json --serial-out /tmp/vm.console', 'guest console to a file')
          .example('$0 run vm.json --metadata meta.json', 'boot with MMDS contents from a file')
          .example('$0 vm.json --log-path vm.log --level Debug --metrics-path vm.metrics', 'logs and metrics to files (or named pipes)'),
      (a) =>
        guard(() =>
          runCommand(io, a.spec as string, {
            ...loadOptions(a),
            serialOut: a['serial-out'],
            startNs,
            id: a.id,
            logPath: a['log-path'],
            level: a.level,
            showLevel: a['show-level'],
            showLogOrigin: a['show-log-origin'],
            metricsPath: a['metrics-path'],
            seccomp: a.seccomp,
            exitWithFd: a['exit-with-fd'],
            apiSock: a['api-sock'],
          }),
        ),
    )
    .command(
      'jail <spec>',
      'Launch the microVM inside a jail: chroot, cgroups, mount/PID (and network) namespaces, an unprivileged user (needs root)',
      (y) =>
        specOptions(y)
          .positional('spec', { type: 'string', describe: 'Path to the VM spec (JSON)' })
          .option('id', { type: 'string', demandOption: true, describe: 'The microVM id: names the jail directory and the cgroups', requiresArg: true })
          .option('uid', { type: 'number', demandOption: true, describe: 'User the microVM runs as', requiresArg: true })
          .option('gid', { type: 'number', demandOption: true, describe: 'Group the microVM runs as', requiresArg: true })
          .option('chroot-base-dir', { type: 'string', default: '/srv/jailer', describe: 'Where jails are made: <dir>/fc-run/<id>/root', requiresArg: true })
          .option('netns', { type: 'string', describe: 'Network namespace to run in (e.g. /var/run/netns/vm1)', requiresArg: true })
          .option('cgroup', { type: 'string', array: true, default: [], describe: 'A cgroup setting, <controller>.<file>=<value> (repeatable)', requiresArg: true })
          .option('serial-out', { type: 'string', describe: 'Passed to the jailed fc-run: "none" to discard guest output', requiresArg: true })
          .example('$0 jail vm.json --id vm1 --uid 1000 --gid 1000 --cgroup memory.limit_in_bytes=536870912', 'a jailed microVM with a memory limit'),
      (a) =>
        guard(async () => {
          const loaded = loadSpecFile(a.spec as string, loadOptions(a));
          planSpec(loaded); // refuse what cannot run before building anything
          const jail = prepareJail(loaded.spec, {
            id: a.id as string,
            uid: a.uid as number,
            gid: a.gid as number,
            baseDir: a['chroot-base-dir'] as string,
            netns: a.netns as string | undefined,
            cgroups: (a.cgroup as string[]).map(String),
            runArgs: a['serial-out'] !== undefined ? ['--serial-out', a['serial-out'] as string] : [],
          });
          write(io.err, painterFor(io.err).dim(`fc-run: jail ${jail.root}${jail.vsockHostPath ? `, vsock at ${jail.vsockHostPath}` : ''}`));
          return runJail(jail);
        }),
    )
    .command(
      'validate <specs..>',
      'Check specs against the schema and the semantic rules; one line per file',
      (y) =>
        specOptions(y)
          .positional('specs', { type: 'string', array: true, describe: 'Spec files' })
          .option('json', { type: 'boolean', default: false, describe: 'Machine-readable output' })
          .option('skip-files', { type: 'boolean', default: false, describe: 'Do not require kernel, initrd and drive files to exist' })
          .example('$0 validate examples/*.json', 'validate every example')
          .example('$0 validate --skip-files --json specs/*.json', 'CI check of stored specs whose artifacts live elsewhere'),
      (a) => guard(() => validateCommand(io, a.specs as string[], a.json, loadOptions(a))),
    )
    .command(
      'plan <spec>',
      'Print the boot plan: memory map, devices with MMIO/IRQ, kernel command line, plan hash',
      (y) =>
        specOptions(y)
          .positional('spec', { type: 'string', describe: 'Path to the VM spec (JSON)' })
          .option('json', { type: 'boolean', default: false, describe: 'Print the plan as JSON' })
          .example('$0 plan examples/hello.json', 'tables for humans')
          .example('$0 plan --json vm.json | jq .plan.cmdline', 'the command line the guest will get'),
      (a) => guard(() => planCommand(io, a.spec as string, a.json, loadOptions(a))),
    )
    .command(
      'schema',
      'Print the JSON Schema of the spec (for editors and other tools)',
      (y) => y.example('$0 schema > vm.schema.json', 'save the schema'),
      () => guard(() => (write(io.out, JSON.stringify(loadSchema(), null, 2)), EXIT_OK)),
    )
    .epilogue(
      'Exit status: 0 success, 2 invalid spec, 1 any other failure. Guest reboot or power-off also exits 0.\n' +
        'In a terminal, keystrokes go to the guest console; Ctrl-A x stops the VM.',
    )
    .strict()
    .help()
    .alias('h', 'help')
    .version(VERSION)
    .alias('V', 'version')
    .wrap(Math.min(110, process.stdout.columns || 100))
    .exitProcess(false)
    .fail((msg, err) => {
      if (err) throw err;
      // yargs can report a second, derived failure after the first; the first is the real one.
      if (usageError) return;
      write(io.err, `fc-run: ${msg}\nRun "fc-run --help" for usage.`);
      usageError = true;
    });
  await parser.parseAsync();
  return usageError ? EXIT_FAILURE : code;
}
