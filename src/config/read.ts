import { EXIT_FAILURE, FcRunError } from '../errors';
import { readRegularFile } from './regular-file';

/** Specs, CPU templates and metadata files: larger than this is a mistake, not a config. */
export const MAX_CONFIG_FILE_BYTES = 1024 * 1024;

/**
 * Reads a UTF-8 text file fc-run is told to read (the spec, --metadata, a CPU template): a regular
 * file of at most `maxBytes`, never a FIFO or device, which are refused without reading a byte.
 * Failures name the file and what it is for; they exit 1 (the file cannot be used), as the caller
 * has no spec to point into.
 */
export function readText(file: string, what: string, maxBytes = MAX_CONFIG_FILE_BYTES): string {
  let bytes: Buffer;
  try {
    bytes = readRegularFile(file, what, maxBytes);
  } catch (err) {
    if (err instanceof FcRunError) throw new FcRunError(err.code, err.message, EXIT_FAILURE);
    throw err;
  }
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw new FcRunError('file-encoding', `${what} ${file} is not UTF-8 text`, EXIT_FAILURE);
  }
}
