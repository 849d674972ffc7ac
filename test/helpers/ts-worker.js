// Entry point of a worker_thread that runs a TypeScript module straight from the sources (tests run
// under ts-jest, which does not reach into worker threads, and dist/ may be stale). Usage:
//   new Worker(require.resolve('../helpers/ts-worker.js'), { workerData: { script: '/abs/x.ts', ... } })
// Every .ts file the script requires is transpiled on load with typescript.transpileModule.
'use strict';
const fs = require('node:fs');
const ts = require('typescript');
const { workerData } = require('node:worker_threads');

require.extensions['.ts'] = (module, filename) => {
  const { outputText } = ts.transpileModule(fs.readFileSync(filename, 'utf8'), {
    fileName: filename,
    compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022, esModuleInterop: true },
  });
  module._compile(outputText, filename);
};

require(workerData.script);
