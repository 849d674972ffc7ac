#!/usr/bin/env node
// Bundles the compiled tree (dist/) into one file per entry point: the CLI and the two thread
// entries. A start then reads one file instead of resolving and reading dozens of modules. After
// bundling, the CLI is warmed up in this process (plan and validate on an example, whose outcome
// does not matter) and V8's code cache for what ran is written beside the bundle
// (dist/bundle/cli.js.cache), which bin/fc-run hands to V8 for the commands that launch nothing;
// the launching commands get an eager cache of the whole bundle (cli.js.full-cache), and each
// thread bundle an eager cache of its own (src/vmm/threads.ts loads them).
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const esbuild = require('esbuild');

const root = path.resolve(__dirname, '..');
const outdir = path.join(root, 'dist', 'bundle');
const ENTRIES = { cli: 'dist/cli/main.js', 'vcpu-worker': 'dist/vmm/vcpu-worker.js', 'vmm-worker': 'dist/vmm/vmm-worker.js' };

// The spec validator is precompiled (scripts/gen-validator.js); the schema compiler `ajv` is only
// the fallback for sources run under ts-jest, so it stays out of the bundles (ajv/dist/runtime/*,
// which the precompiled code uses, is bundled). koffi is a native addon: loaded from node_modules.
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

async function bundle() {
  fs.rmSync(outdir, { recursive: true, force: true });
  await esbuild.build({
    entryPoints: Object.fromEntries(Object.entries(ENTRIES).map(([name, file]) => [name, path.join(root, file)])),
    outdir,
    bundle: true,
    platform: 'node',
    target: 'node20',
    format: 'cjs',
    // jsonc-parser's CommonJS build loads its parts with require calls a bundler cannot follow.
    mainFields: ['module', 'main'],
    external: ['koffi'],
    plugins: [ajvCompilerOutside, jsoncParserParts],
    // Whitespace and syntax only: identifiers stay, so an internal error's stack still names the function.
    minifyWhitespace: true,
    minifySyntax: true,
    charset: 'ascii',
    legalComments: 'none',
    logLevel: 'warning',
  });
}

async function warmUpAndCache() {
  const { loadBundle } = require(path.join(root, 'dist', 'code-cache.js'));
  const file = path.join(outdir, 'cli.js');
  const loaded = loadBundle(file, require);
  const sink = { write: () => true, isTTY: false };
  const io = { out: sink, err: sink };
  // The hot paths only: a bigger cache costs more to read and deserialize at every start than the
  // rarer paths cost to compile when they run.
  const example = path.join(root, 'examples', 'hello.json');
  for (const argv of [['plan', example], ['validate', example]]) await loaded.exports.main(argv, io);
  fs.writeFileSync(`${file}.cache`, loaded.createCache());
}

/**
 * An eager code cache of `file`: every function of the bundle compiled, which a warm-up cannot
 * reach without KVM. The CLI's second cache (cli.js.full-cache, which bin/fc-run hands to V8 for
 * the commands that launch a VM: a launch runs most of the bundle and would otherwise compile it
 * at every start) and the thread bundles' caches (they run only in launches). Made in a child
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
  const check = `process.stdout.write(String(require(${JSON.stringify(path.join(root, 'dist', 'code-cache.js'))}).compileBundle(${JSON.stringify(file)}, ${JSON.stringify(out)}).cacheUsed))`;
  if (execFileSync(process.execPath, ['-e', check], { encoding: 'utf8' }) !== 'true') {
    fs.rmSync(out, { force: true });
    console.warn(`bundle: V8 rejects the eager code cache of ${path.relative(root, file)}; launches compile what they run`);
  }
}

(async () => {
  await bundle();
  for (const name of Object.keys(ENTRIES)) {
    const text = fs.readFileSync(path.join(outdir, `${name}.js`));
    if (text.some((b) => b > 0x7f)) throw new Error(`bundle: dist/bundle/${name}.js is not ASCII (bin/fc-run reads it as Latin-1)`);
  }
  // Each bundle is stored already wrapped as Node's loader would wrap it, so V8 compiles the
  // file's own text (no 600 KB concatenation at every start); src/code-cache.ts loads it.
  const { BUNDLE_PREFIX, BUNDLE_SUFFIX } = require(path.join(root, 'dist', 'code-cache.js'));
  for (const name of Object.keys(ENTRIES)) {
    const file = path.join(outdir, `${name}.js`);
    fs.writeFileSync(file, BUNDLE_PREFIX + fs.readFileSync(file, 'latin1') + BUNDLE_SUFFIX, 'latin1');
  }
  await warmUpAndCache();
  eagerCache(path.join(outdir, 'cli.js'), path.join(outdir, 'cli.js.full-cache'));
  for (const name of ['vcpu-worker', 'vmm-worker']) eagerCache(path.join(outdir, `${name}.js`), path.join(outdir, `${name}.js.cache`));
  const sizes = fs.readdirSync(outdir).map((f) => `${f} ${(fs.statSync(path.join(outdir, f)).size / 1024).toFixed(0)} KiB`);
  console.log(`bundled: ${sizes.join(', ')}`);
})().catch((err) => {
  console.error(`bundle: ${err.stack || err}`);
  process.exit(1);
});
