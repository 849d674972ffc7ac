import { sha256Hex } from '../sha256';

/**
 * A VM's id under `fc-run up` is its spec's path relative to the directory, without ".json",
 * made to fit Firecracker's --id rule (letters, digits and '-', at most 64): every other character
 * becomes '-'. Long paths keep a readable head and end in a hash of the whole path, so the
 * mapping stays deterministic and one-way collisions stay as unlikely as sha256 makes them.
 */
export const MAX_ID = 64;

/** The --id rule, which is also what makes an id safe as a file name in the run directory. */
export function isValidId(id: unknown): id is string {
  return typeof id === 'string' && id.length > 0 && id.length <= MAX_ID && /^[A-Za-z0-9-]+$/.test(id);
}

export function idForSpec(relPath: string): string {
  const bare = relPath.replace(/\\/g, '/').replace(/\.json$/i, '');
  const id = bare.replace(/[^A-Za-z0-9-]/g, '-');
  if (id.length <= MAX_ID) return id;
  const tag = sha256Hex(bare).slice(0, 12);
  return `${id.slice(0, MAX_ID - tag.length - 1)}-${tag}`;
}

export interface IdAssignment {
  /** id → relative spec path, for specs whose id is theirs alone. */
  ids: Map<string, string>;
  /** Specs refused because another spec maps to the same id: id → every path that wants it. */
  conflicts: Map<string, string[]>;
}

/** Gives each spec its id; two specs that would share one are both refused (neither wins by order). */
export function assignIds(relPaths: readonly string[]): IdAssignment {
  const wanted = new Map<string, string[]>();
  for (const rel of [...relPaths].sort()) {
    const id = idForSpec(rel);
    wanted.set(id, [...(wanted.get(id) ?? []), rel]);
  }
  const ids = new Map<string, string>();
  const conflicts = new Map<string, string[]>();
  for (const [id, paths] of wanted) {
    if (paths.length === 1) ids.set(id, paths[0]);
    else conflicts.set(id, paths);
  }
  return { ids, conflicts };
}
