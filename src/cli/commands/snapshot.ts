import * as path from 'node:path';
import { EXIT_OK } from '../../errors';
import { mergeMemoryFiles } from '../../vmm/snapshot-memory';
import { CommandSpec, ParsedArgs, UsageError } from '../args';
import { Io, write } from '../io';

export const SNAPSHOT_SPEC: CommandSpec = {
  name: 'snapshot',
  usage: 'fc-run snapshot merge <base-mem> <diff-mem>... -o <out-mem>',
  summary: "Work with snapshot files: merge lays Diff snapshots' memory files over their base's, giving a memory file to restore with the last Diff's state file.",
  positionals: [
    { name: 'action', describe: 'merge' },
    { name: 'files', describe: 'The base memory file (a Full snapshot, or an earlier merge), then each Diff memory file, oldest first', variadic: true },
  ],
  options: [
    { name: 'output', short: 'o', kind: 'string', valueName: 'FILE', describe: 'Where the merged memory file goes (written beside it, then renamed into place; never one of the inputs)' },
    { name: 'json', kind: 'flag', describe: 'Print the result as JSON' },
  ],
  examples: [
    ['fc-run snapshot merge vm.mem vm.diff1.mem vm.diff2.mem -o vm.merged.mem', 'then: fc-run restore vm.diff2.snap --mem vm.merged.mem --resume'],
  ],
  notes: 'Exit status: 0 merged, 2 a file that is not a usable memory file, 1 any other failure.',
};

export function snapshotCommand(io: Io, args: ParsedArgs): number {
  const [action, ...files] = args.positionals;
  if (action !== 'merge') throw new UsageError(`unknown action "${action}" (snapshot has: merge)`, 'snapshot');
  if (files.length < 2) throw new UsageError('merge needs a base memory file and at least one Diff memory file', 'snapshot');
  const out = args.options.output as string | undefined;
  if (out === undefined) throw new UsageError('-o/--output is required: where the merged memory file goes', 'snapshot');
  const [base, ...diffs] = files.map((f) => path.resolve(f));
  const r = mergeMemoryFiles(base, diffs, path.resolve(out));
  if (args.options.json === true) write(io.out, JSON.stringify({ output: out, size: r.size, bytes_from: files.map((f, i) => ({ file: f, bytes: r.fromEach[i] })) }));
  else write(io.out, `${out}: ${r.size} bytes of guest memory; ${files.map((f, i) => `${r.fromEach[i]} bytes from ${f}`).join(', ')}`);
  return EXIT_OK;
}
