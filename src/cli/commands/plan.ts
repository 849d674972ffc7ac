import { loadSpecFile } from '../../config/validate';
import { SpecInvalidError } from '../../config/issues';
import { canonicalJson, planSpec } from '../../boot';
import { EXIT_OK } from '../../errors';
import { CommandSpec, ParsedArgs, UsageError } from '../args';
import { applyStrict, Io, reportIssues, write, writeRecord } from '../io';
import { painterFor } from '../format';
import { renderPlan } from '../plan-view';
import { loadOptionsOf, REPORT_OPTIONS, reportingOf, SPEC_OPTIONS } from './common';

export const PLAN_SPEC: CommandSpec = {
  name: 'plan',
  usage: 'fc-run plan [options] <spec>',
  summary: 'Print the boot plan: memory map, boot structures, kernel placement, devices with MMIO window and IRQ, kernel command line, plan hash.',
  positionals: [{ name: 'spec', describe: 'Path to the VM spec (JSON)' }],
  options: [{ name: 'json', kind: 'flag', describe: 'Print the plan as JSON (the exact form that is hashed)' }, ...SPEC_OPTIONS, ...REPORT_OPTIONS],
  examples: [
    ['fc-run plan examples/hello.json', 'tables for humans'],
    ['fc-run plan --json vm.json | jq .plan.cmdline', 'the command line the guest will get'],
  ],
};

export function planCommand(io: Io, args: ParsedArgs): number {
  const rep = reportingOf(args);
  const json = args.options.json === true;
  if (json && rep.jsonLines) throw new UsageError('--json and --json-lines are alternatives: choose one', 'plan');
  const loaded = loadSpecFile(args.positionals[0], loadOptionsOf(args));
  const planned = planSpec(loaded);
  const warnings = applyStrict(planned.allWarnings.filter((w) => w.severity === 'warning'), rep.strict);
  if (rep.strict && warnings.length > 0) throw new SpecInvalidError(loaded.displayFile, warnings);
  reportIssues(io, warnings, rep);
  // Canonical key order, so the printed JSON hashes to the printed hash.
  if (json) write(io.out, JSON.stringify({ hash: planned.hash, plan: JSON.parse(canonicalJson(planned.plan)) }, null, 2));
  else if (rep.jsonLines) writeRecord(io.out, { type: 'plan', hash: planned.hash, plan: JSON.parse(canonicalJson(planned.plan)) });
  else write(io.out, renderPlan(planned.plan, planned.hash, painterFor(io.out)));
  return EXIT_OK;
}
