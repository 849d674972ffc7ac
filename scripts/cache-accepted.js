'use strict';
// Whether V8 takes `cache` as the code cache of the bundle `file`, asked of a fresh Node with the
// default flags a start has (a cache is stamped with the flags it was made under). Used by
// scripts/bundle.js and scripts/warm-cache.js before they keep a cache.
const { execFileSync } = require('node:child_process');
const path = require('node:path');

function cacheAccepted(file, cache) {
  const loader = path.join(__dirname, '..', 'dist', 'code-cache.js');
  const check = `process.stdout.write(String(require(${JSON.stringify(loader)}).compileBundle(${JSON.stringify(file)}, ${JSON.stringify(cache)}).cacheUsed))`;
  return execFileSync(process.execPath, ['-e', check], { encoding: 'utf8' }) === 'true';
}

module.exports = { cacheAccepted };
