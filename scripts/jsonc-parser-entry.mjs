// What the bundles take of jsonc-parser: its scanner and tree parser. The package's entry also
// loads its formatter and editor, whose module set-up (tables of cached strings) every start paid
// for; scripts/bundle.js points `jsonc-parser` here. A name fc-run starts to import from
// jsonc-parser must be added here: the bundle would build without it and the name be undefined at
// run time (test/unit/bundle.test.ts compares the imports in src/ with this list).
export { createScanner } from 'jsonc-parser/lib/esm/impl/scanner.js';
export { parseTree, findNodeAtLocation } from 'jsonc-parser/lib/esm/impl/parser.js';
