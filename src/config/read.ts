import * as fs from 'node:fs';
import { EXIT_FAILURE, FcRunError } from '../errors';

/** Reads a text file, turning the errno into a sentence that names the file and what it is for. */
export function readText(file: string, what: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const why = e.code === 'ENOENT' ? 'does not exist' : e.code === 'EISDIR' ? 'is a directory' : `cannot be read (${e.code ?? e.message})`;
    throw new FcRunError('file-unreadable', `${what} ${file} ${why}`, EXIT_FAILURE);
  }
}
