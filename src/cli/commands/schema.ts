import { loadSchema } from '../../config/schema';
import { EXIT_OK } from '../../errors';
import type { CommandSpec } from '../args';
import { Io, write } from '../io';

export const SCHEMA_SPEC: CommandSpec = {
  name: 'schema',
  usage: 'fc-run schema',
  summary: 'Print the JSON Schema of the spec (for editors and other tools).',
  positionals: [],
  options: [],
  examples: [['fc-run schema > vm.schema.json', 'save the schema']],
};

export function schemaCommand(io: Io): number {
  write(io.out, JSON.stringify(loadSchema(), null, 2));
  return EXIT_OK;
}
