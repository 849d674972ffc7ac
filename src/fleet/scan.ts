import * as fs from 'node:fs';
import * as path from 'node:path';
import { planRunnable, readHostCpu } from '../boot';
import type { HostCpu } from '../boot';
import { SpecInvalidError } from '../config/issues';
import { loadSpecFile } from '../config/validate';
import { readRegularFile } from '../config/regular-file';
import { FcRunError } from '../errors';
import { assignIds } from './ids';
import type { Desired } from './reconcile';
import { vmFiles } from './rundir';
import { fleetSettings } from './settings';

/** Every *.json under `dir` (relative paths, '/'-separated), leaving out hidden entries such as .git. */
export function listSpecFiles(dir: string): string[] {
  const out: string[] = [];
  const walk = (rel: string, depth: number) => {
    // A symlink loop or an absurdly deep tree must not hang or exhaust the supervisor.
    if (depth > 16) return;
    let entries: fs.Dirent[];
    try {
      entries = fs.readdirSync(path.join(dir, rel), { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      if (e.name.startsWith('.')) continue;
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) walk(r, depth + 1);
      else if ((e.isFile() || e.isSymbolicLink()) && e.name.endsWith('.json')) out.push(r);
    }
  };
  walk('', 0);
  return out.sort();
}

function problemText(err: unknown): string {
  if (err instanceof SpecInvalidError) {
    const errors = err.issues.filter((i) => i.severity === 'error');
    const first = errors[0];
    const where = first ? `${first.line !== undefined ? ` (line ${first.line}:${first.column})` : ''} ${first.message}` : '';
    return `invalid spec (${errors.length} error${errors.length === 1 ? '' : 's'})${where ? `; first:${where}` : ''}`;
  }
  if (err instanceof FcRunError) return err.message;
  return `cannot read it: ${(err as Error).message}`;
}

/** A spec's last result, reused while neither its text nor the files its plan read have changed. */
interface CacheEntry {
  text: string;
  inputs: [string, string][];
  result: Desired;
}
export type ScanCache = Map<string, CacheEntry>;

function statSignature(file: string): string {
  try {
    const st = fs.statSync(file, { bigint: true });
    return `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
  } catch {
    return 'missing';
  }
}

function readSpecText(file: string): string | undefined {
  try {
    // Not readFileSync: a spec symlinked to /dev/zero or a FIFO (say, from a pulled repository)
    // would exhaust memory or block the supervisor forever. Undefined sends it to full validation,
    // which reports it.
    return readRegularFile(file, 'spec file').toString('utf8');
  } catch {
    return undefined;
  }
}

/**
 * Reads the directory: each spec is validated and planned exactly as `fc-run run` would with the
 * flags the supervisor gives it, so a spec that would fail at launch is reported here instead.
 * With a cache, a spec whose text and inputs (kernel, initrd, CPU template) are unchanged is not
 * validated again: an idle supervisor then costs a read and a few stat calls per spec.
 */
export function scanDir(dir: string, runDir: string, host: HostCpu = readHostCpu(), cache?: ScanCache): Map<string, Desired> {
  const files = listSpecFiles(dir);
  const { ids, conflicts } = assignIds(files);
  const out = new Map<string, Desired>();
  for (const [id, rels] of conflicts) {
    out.set(id, { kind: 'invalid', id, spec: path.join(dir, rels[0]), problem: `specs ${rels.join(', ')} would all get the id "${id}": rename all but one` });
  }
  for (const [id, rel] of ids) {
    const spec = path.join(dir, rel);
    const files = vmFiles(runDir, id);
    const text = cache ? readSpecText(spec) : undefined;
    const hit = text !== undefined ? cache?.get(spec) : undefined;
    if (hit && hit.text === text && hit.result.id === id && hit.inputs.every(([f, sig]) => statSignature(f) === sig)) {
      out.set(id, hit.result);
      continue;
    }
    let inputs: string[] = [];
    try {
      const loaded = loadSpecFile(spec, { displayFile: spec, flagOutputs: { serialOut: files.serial, apiSock: files.sock } });
      const s = loaded.spec;
      const template = s.raw['cpu-config'];
      inputs = [s.bootSource.kernel_image_path, s.bootSource.initrd_path, typeof template === 'string' ? path.resolve(path.dirname(spec), template) : undefined].filter((f): f is string => f !== undefined);
      const planned = planRunnable(loaded, { host, sockets: false });
      out.set(id, {
        kind: 'valid',
        id,
        spec,
        planHash: planned.hash,
        vcpus: planned.plan.vcpus.count,
        memMib: planned.plan.memory.sizeMib,
        settings: fleetSettings(loaded.spec.raw['fc-run']),
      });
    } catch (err) {
      out.set(id, { kind: 'invalid', id, spec, problem: problemText(err) });
    }
    // An invalid spec's inputs are unknown (it may not even parse): only its text keys the cache.
    if (cache && text !== undefined) cache.set(spec, { text, inputs: inputs.map((f) => [f, statSignature(f)]), result: out.get(id)! });
  }
  if (cache) for (const key of cache.keys()) if (!files.includes(path.relative(dir, key).split(path.sep).join('/'))) cache.delete(key);
  return out;
}
