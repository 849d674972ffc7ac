#!/usr/bin/env node
// Bundles the compiled tree (dist/) into one file per entry point: the CLI and the two thread
// entries. A start then reads one file instead of resolving and reading dozens of modules. The
// CLI is bundled twice: whole (cli.js), and light (cli-light.js: without the commands that launch
// a VM and what only they reach), for the commands in bin/fc-run's LIGHT_COMMANDS. The
// light bundle is warmed up in this process (plan and validate on an example, whose outcome does
// not matter) and V8's code cache for what ran is written beside it (cli-light.js.cache); the
// whole bundle and each thread bundle get an eager cache of every function in them (cli.js.cache,
// vcpu-worker.js.cache, vmm-worker.js.cache). bin/fc-run and src/vmm/threads.ts load them.
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const esbuild = require('esbuild');

const root = path.resolve(__dirname, '..');
const outdir = path.join(root, 'dist', 'bundle');
const ENTRIES = { cli: 'dist/cli/main.js', 'vcpu-worker': 'dist/vmm/vcpu-worker.js', 'vmm-worker': 'dist/vmm/vmm-worker.js' };

// The spec validator is precompiled (scripts/gen-validator.js); the schema compiler `ajv` is only
// the fallback for sources run under ts-jest, so it stays out of the bundles (ajv/dist/runtime/*,
// which the precompiled code uses, is bundled). fc-run's native addon (dist/native/fcrun.node) is
// loaded by its path with process.dlopen (src/kvm/libc.ts).
const ajvCompilerOutside = {
  name: 'ajv-compiler-outside',
  setup(build) {
    build.onResolve({ filter: /^ajv$/ }, () => ({ path: 'ajv', external: true }));
  },
};

// jsonc-parser's entry loads its formatter and editor too, which fc-run never calls.
const jsoncParserParts = {
  name: 'jsonc-parser-parts',
  setup(build) {
    build.onResolve({ filter: /^jsonc-parser$/ }, () => ({ path: path.join(__dirname, 'jsonc-parser-entry.mjs') }));
  },
};

/**
 * For the light CLI bundle: the launching commands' modules, required by dist/cli/main.js only
 * when one of them runs, are replaced by a module that says so (bin/fc-run never starts those
 * commands from this bundle; a test runs each light command through it).
 */
function launchingCommandsOut(names) {
  const filter = new RegExp(`^\\./commands/(${names.join('|')})$`);
  return {
    name: 'launching-commands-out',
    setup(build) {
      build.onResolve({ filter }, (args) => ({ path: args.path, namespace: 'not-in-light-bundle' }));
      build.onLoad({ filter: /.*/, namespace: 'not-in-light-bundle' }, (args) => ({
        contents: `throw new Error(${JSON.stringify(`${args.path} is not in the light CLI bundle (dist/bundle/cli-light.js): bin/fc-run starts this command from dist/bundle/cli.js`)});`,
        loader: 'js',
      }));
    },
  };
}

/** bin/fc-run's LIGHT_COMMANDS: the commands it starts from the light bundle. */
function lightCommands() {
  const m = /^const LIGHT_COMMANDS = (\[.*\]);$/m.exec(fs.readFileSync(path.join(root, 'bin', 'fc-run'), 'utf8'));
  if (!m) throw new Error('bundle: bin/fc-run has no "const LIGHT_COMMANDS = [...];" line');
  return JSON.parse(m[1]);
}

const COMMON = {
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'cjs',
  // jsonc-parser's CommonJS build loads its parts with require calls a bundler cannot follow.
  mainFields: ['module', 'main'],
  // Whitespace and syntax only: identifiers stay, so an internal error's stack still names the function.
  minifyWhitespace: true,
  minifySyntax: true,
  charset: 'ascii',
  legalComments: 'none',
  logLevel: 'warning',
};

async function bundle() {
  fs.rmSync(outdir, { recursive: true, force: true });
  await esbuild.build({
    ...COMMON,
    entryPoints: Object.fromEntries(Object.entries(ENTRIES).map(([name, file]) => [name, path.join(root, file)])),
    outdir,
    plugins: [ajvCompilerOutside, jsoncParserParts],
  });
  const LIGHT_COMMANDS = lightCommands();
  const { COMMAND_NAMES } = require(path.join(root, 'dist', 'cli', 'main.js'));
  const launching = COMMAND_NAMES.filter((n) => !LIGHT_COMMANDS.includes(n));
  await esbuild.build({
    ...COMMON,
    entryPoints: { 'cli-light': path.join(root, ENTRIES.cli) },
    outdir,
    plugins: [ajvCompilerOutside, jsoncParserParts, launchingCommandsOut(launching)],
  });
}

async function warmUpAndCache() {
  const { loadBundle } = require(path.join(root, 'dist', 'code-cache.js'));
  const file = path.join(outdir, 'cli-light.js');
  const loaded = loadBundle(file, require);
  const sink = { write: () => true, isTTY: false };
  const io = { out: sink, err: sink };
  // The hot paths only: a bigger cache costs more to read and deserialize at every start than the
  // rarer paths cost to compile when they run.
  const example = path.join(root, 'examples', 'hello.json');
  // The example's kernel is the probe guest (npm run setup builds it first): without it the plan
  // stops at the missing file, and the cache lacks what a plan that succeeds runs.
  for (const argv of [['plan', example], ['validate', example]]) {
    const code = await loaded.exports.main(argv, io);
    if (code !== 0) console.warn(`bundle: the warm-up "fc-run ${argv[0]} examples/hello.json" exited ${code} (is the probe guest built? npm run build:probe): the light bundle's code cache lacks what a successful ${argv[0]} runs`);
  }
  fs.writeFileSync(`${file}.cache`, loaded.createCache());
}

/**
 * An eager code cache of `file`: every function of the bundle compiled, which a warm-up cannot
 * reach without KVM. The whole CLI bundle's cache (bin/fc-run starts the commands that launch a VM
 * from it: a launch runs most of the bundle and would otherwise compile it at every start) and the
 * thread bundles' caches (they run only in launches). Made in a child
 * Node: V8 compiles eagerly there (--no-lazy, set for the compilation only, so that the cache is
 * stamped with the default flags a start has), and another child checks that V8 takes it.
 */
function eagerCache(file, out) {
  const { execFileSync } = require('node:child_process');
  const make = `
    const v8 = require('node:v8'), vm = require('node:vm'), fs = require('node:fs');
    const source = fs.readFileSync(${JSON.stringify(file)}, 'latin1');
    v8.setFlagsFromString('--no-lazy');
    const script = new vm.Script(source, { filename: ${JSON.stringify(file)} });
    v8.setFlagsFromString('--lazy');
    fs.writeFileSync(${JSON.stringify(out)}, script.createCachedData());`;
  execFileSync(process.execPath, ['-e', make], { stdio: 'inherit' });
  if (!require('./cache-accepted.js').cacheAccepted(file, out)) {
    fs.rmSync(out, { force: true });
    console.warn(`bundle: V8 rejects the eager code cache of ${path.relative(root, file)}; launches compile what they run`);
  }
}

(async () => {
  await bundle();
  const names = [...Object.keys(ENTRIES), 'cli-light'];
  for (const name of names) {
    const text = fs.readFileSync(path.join(outdir, `${name}.js`));
    if (text.some((b) => b > 0x7f)) throw new Error(`bundle: dist/bundle/${name}.js is not ASCII (bin/fc-run reads it as Latin-1)`);
  }
  // Each bundle is stored already wrapped as Node's loader would wrap it, so V8 compiles the
  // file's own text (no 600 KB concatenation at every start); src/code-cache.ts loads it.
  const { BUNDLE_PREFIX, BUNDLE_SUFFIX } = require(path.join(root, 'dist', 'code-cache.js'));
  for (const name of names) {
    const file = path.join(outdir, `${name}.js`);
    fs.writeFileSync(file, BUNDLE_PREFIX + fs.readFileSync(file, 'latin1') + BUNDLE_SUFFIX, 'latin1');
  }
  await warmUpAndCache();
  for (const name of ['cli', 'vcpu-worker', 'vmm-worker']) eagerCache(path.join(outdir, `${name}.js`), path.join(outdir, `${name}.js.cache`));
  const sizes = fs.readdirSync(outdir).map((f) => `${f} ${(fs.statSync(path.join(outdir, f)).size / 1024).toFixed(0)} KiB`);
  console.log(`bundled: ${sizes.join(', ')}`);
})().catch((err) => {
  console.error(`bundle: ${err.stack || err}`);
  process.exit(1);
});
