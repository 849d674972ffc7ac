import * as fs from 'node:fs';
import * as path from 'node:path';

/**
 * The fc-run package's root directory (where package.json, bin/, schemas/ and dist/ are), found
 * from this file's location upward. The compiled tree (dist/<folder>/x.js), the bundles
 * (dist/bundle/x.js) and the sources under ts-jest (src/x.ts) all sit at different depths.
 */
function findPackageRoot(from: string): { dir: string; version: string } {
  for (let dir = from; ; dir = path.dirname(dir)) {
    const file = path.join(dir, 'package.json');
    // existsSync first: a failed read throws, and an exception costs a start more than a stat.
    if (fs.existsSync(file)) {
      try {
        const pkg = JSON.parse(fs.readFileSync(file, 'utf8')) as { name?: unknown; version?: unknown };
        if (pkg.name === 'fc-run') return { dir, version: String(pkg.version) };
      } catch {
        // not fc-run's: look one level up
      }
    }
    if (path.dirname(dir) === dir) throw new Error(`fc-run: cannot find its package.json above ${from}`);
  }
}

const found = findPackageRoot(__dirname);
export const PACKAGE_ROOT = found.dir;

/** The package's version, from its package.json. */
export const PACKAGE_VERSION: string = found.version;

/** Paths inside the package. */
export const FC_RUN_BIN = path.join(PACKAGE_ROOT, 'bin', 'fc-run');
export const SCHEMA_PATH = path.join(PACKAGE_ROOT, 'schemas', 'vm.schema.json');
/** Thread entry points: bundled, each one file (scripts/bundle.js). */
export const VCPU_WORKER_SCRIPT = path.join(PACKAGE_ROOT, 'dist', 'bundle', 'vcpu-worker.js');
export const VMM_WORKER_SCRIPT = path.join(PACKAGE_ROOT, 'dist', 'bundle', 'vmm-worker.js');

/**
 * The environment of an fc-run that fc-run starts (a fleet's VMs, the jail's daemon): its own,
 * without NODE_EXTRA_CA_CERTS. Node parses that file's certificates at every start, before any of
 * fc-run's code runs (~30 ms of CPU for a 144-certificate bundle), and fc-run makes no TLS
 * connection. bin/fc-run's #! line drops it the same way.
 */
export function fcRunChildEnv(env: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  const { NODE_EXTRA_CA_CERTS: _unused, ...rest } = env;
  return rest;
}
