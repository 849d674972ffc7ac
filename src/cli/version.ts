import * as fs from 'node:fs';
import * as path from 'node:path';

/** fc-run's version, from package.json (two levels above both src/cli and dist/cli). */
export const VERSION: string = (JSON.parse(fs.readFileSync(path.resolve(__dirname, '..', '..', 'package.json'), 'utf8')) as { version: string }).version;
