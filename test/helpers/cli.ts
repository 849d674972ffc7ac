import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

/** Running the built fc-run binary as a user would, for the tests that go through the CLI. */
export const ROOT = path.resolve(__dirname, '..', '..');
export const BIN = path.join(ROOT, 'bin', 'fc-run');

/** Fails the test file early, with what to do, when `npm run build` has not run. */
export function requireBuilt(): void {
  if (!fs.existsSync(path.join(ROOT, 'dist', 'cli', 'main.js'))) throw new Error('dist/ is missing: run `npm run build` (npm test does) before these tests');
}

export interface CliResult {
  code: number | null;
  out: string;
  err: string;
}

/**
 * Runs `fc-run args...` without colors. A run that outlives `timeout` is a hang and fails the test
 * (never a silent null exit code); `hostile` also fails it on any sign of a crash in stderr.
 */
export function runCli(args: readonly string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv; timeout?: number; hostile?: boolean } = {}): CliResult {
  const r = spawnSync(process.execPath, [BIN, ...args], {
    cwd: opts.cwd ?? ROOT,
    encoding: 'utf8',
    timeout: opts.timeout ?? 60_000,
    maxBuffer: 256 * 1024 * 1024,
    env: { ...process.env, NO_COLOR: '1', FORCE_COLOR: undefined, ...opts.env },
  });
  if (r.error) throw r.error;
  if (opts.hostile) expect(r.stderr).not.toMatch(/internal error|    at .*\.js:\d+|Maximum call stack/);
  return { code: r.status, out: r.stdout, err: r.stderr };
}

/** The stand-in launcher the fleet tests use where there is no KVM. */
export const FAKE_FC_RUN = path.join(ROOT, 'test', 'helpers', 'fake-fc-run.js');

/** Polls `probe` every 25 ms until it gives a value; fails after `ms` saying what it waited for. */
export async function waitFor<T>(what: string, probe: () => T | undefined | false, ms = 30000): Promise<T> {
  const until = Date.now() + ms;
  for (;;) {
    const v = probe();
    if (v) return v;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}
