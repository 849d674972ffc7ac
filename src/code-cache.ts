import * as fs from 'node:fs';
import * as path from 'node:path';
import * as vm from 'node:vm';

/**
 * Loads a bundle (dist/bundle/*.js: one CommonJS module written by scripts/bundle.js as a bare
 * function expression, the wrapper Node's own loader would add) compiled with V8's code cache
 * stored beside it (FILE.cache, written by scripts/bundle.js: the CLI's after a warm-up, each
 * thread's after loading), so a start parses and compiles almost nothing. A cache V8 rejects (another Node.js version, a rebuilt
 * bundle) is ignored: the bundle is then compiled as usual.
 */
export interface LoadedBundle {
  exports: Record<string, unknown>;
  /** Whether a code cache was found and V8 accepted it. */
  cacheUsed: boolean;
  /** The code cache V8 would write now (what ran so far included). */
  createCache(): Buffer;
}

/** What the bundle file starts with: the parameters Node's CommonJS wrapper passes. */
export const BUNDLE_PREFIX = '(function (exports, require, module, __filename, __dirname) {';
export const BUNDLE_SUFFIX = '\n})';

/** A bundle compiled (with its code cache when V8 accepts it), not yet run. */
export interface CompiledBundle {
  script: vm.Script;
  cacheUsed: boolean;
}

/**
 * A file's bytes (its size by fstat, or fewer if it shrank meanwhile), read into `into` when that
 * is large enough, else into a new buffer.
 */
function readFile(file: string, into?: Buffer): Buffer {
  const fd = fs.openSync(file, 'r');
  try {
    const size = fs.fstatSync(fd).size;
    const buf = into !== undefined && into.length >= size ? into : Buffer.allocUnsafeSlow(size);
    let got = 0;
    for (let n = -1; got < size && n !== 0; got += n) n = fs.readSync(fd, buf, got, size - got, got);
    return buf.subarray(0, got);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * A bundle's source and its code cache, read through one buffer: the source is copied out of it
 * into a string, then the cache is read into the same memory. Every page a read touches for the
 * first time costs a page fault (~3 µs on a nested-virtualization host), and the cache is ~600 KB.
 */
export function readBundle(file: string, cacheFile = `${file}.cache`): { source: string; cachedData: Buffer | undefined } {
  const bytes = readFile(file);
  // esbuild writes ASCII only (scripts/bundle.js checks), so Latin-1 decoding is exact and cheap.
  const source = bytes.toString('latin1');
  let cachedData: Buffer | undefined;
  try {
    cachedData = readFile(cacheFile, Buffer.from(bytes.buffer, bytes.byteOffset));
  } catch {
    cachedData = undefined; // a missing cache is no error: V8 compiles what runs
  }
  return { source, cachedData };
}

/**
 * `cacheFile`: the code cache to hand to V8 (default FILE.cache); a missing one is no error.
 */
export function compileBundle(file: string, cacheFile = `${file}.cache`): CompiledBundle {
  const { source, cachedData } = readBundle(file, cacheFile);
  if (!source.startsWith(BUNDLE_PREFIX)) throw new Error(`${file} is not an fc-run bundle (rebuild with npm run build)`);
  const script = new vm.Script(source, { filename: file, cachedData });
  return { script, cacheUsed: cachedData !== undefined && !script.cachedDataRejected };
}

/** Runs a compiled bundle as a CommonJS module; `requireFn` resolves its requires (node: built-ins). */
export function runBundle(compiled: CompiledBundle, file: string, requireFn: NodeJS.Require): Record<string, unknown> {
  const module = { exports: {} as Record<string, unknown> };
  const run = compiled.script.runInThisContext() as (...args: unknown[]) => void;
  run.call(module.exports, module.exports, requireFn, module, file, path.dirname(file));
  return module.exports;
}

export function loadBundle(file: string, requireFn: NodeJS.Require, cacheFile?: string): LoadedBundle {
  const compiled = compileBundle(file, cacheFile);
  const exports = runBundle(compiled, file, requireFn);
  return { exports, cacheUsed: compiled.cacheUsed, createCache: () => compiled.script.createCachedData() };
}
