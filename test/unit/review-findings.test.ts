import { SpecSource } from '../../src/config/source';
import { findDeepNesting } from '../../src/config/json-depth';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { errorsOf, load, minimalSpec, Workspace } from '../helpers/specs';
import { checkRunnable } from '../../src/boot';

let ws: Workspace;
beforeAll(() => (ws = new Workspace()));
afterAll(() => ws.remove());

/** Regressions for bad input found by reviewing fc-run's front door, checked in process. */

describe('the depth check sees what the parser sees', () => {
  // jsonc-parser ends a string at a raw line break and goes on parsing what follows; a depth scan
  // that kept treating the rest as string content let the parser recurse 200000 levels deep.
  test.each([
    ['an array', '["x\n,'],
    ['an object', '{"a":"x\n,"b":'],
    ['a carriage return', '["x\r,'],
  ])('brackets after a string cut by a raw line break (%s) count', (_what, head) => {
    const text = head + '['.repeat(200_000);
    expect(findDeepNesting(text)).toBeDefined();
    const parsed = SpecSource.parse('deep.json', text, { wholeNumbers: true });
    expect(parsed.source).toBeUndefined();
    expect(parsed.issues.map((i) => i.code)).toEqual(['json-too-deep']);
  });

  test('an escaped line break and brackets inside a string still do not count', () => {
    expect(findDeepNesting(`{"a": "\\n${'['.repeat(500)}"}`)).toBeUndefined();
  });
});

describe('the depth check and comments', () => {
  test('a quote inside a block comment does not hide the brackets after it', () => {
    const text = `[/* " */${'['.repeat(200_000)}`;
    expect(findDeepNesting(text)).toBeDefined();
    expect(SpecSource.parse('deep.json', text).issues.map((i) => i.code)).toEqual(['json-too-deep']);
  });

  test('the limit is exact whatever the bracket counts: 128 levels pass, 129 do not, mixed or beside brackets in strings', () => {
    const nest = (n: number) => Array.from({ length: n }, (_, i) => (i % 2 ? '[' : '{"k":')).join('') + '0' + Array.from({ length: n }, (_, i) => (n - 1 - i) % 2 ? ']' : '}').join('');
    expect(findDeepNesting(nest(128))).toBeUndefined();
    expect(findDeepNesting(nest(129))).toMatchObject({ depth: 129 });
    // Fewer than 129 opening brackets in all (the quick count says no), or more of them but in strings (the scan says no).
    expect(findDeepNesting(`[${'"{",'.repeat(120)}0]`)).toBeUndefined();
    expect(findDeepNesting(`[${'"[{",'.repeat(120)}0]`)).toBeUndefined();
    expect(findDeepNesting(`{"s": "${'{'.repeat(100)}", "t": ${'['.repeat(129)}${']'.repeat(129)}}`)).toMatchObject({ depth: 129 });
  });

  test('brackets inside comments do not count', () => {
    expect(findDeepNesting(`/* ${'['.repeat(500)} */ // ${'{'.repeat(500)}\n[]`)).toBeUndefined();
  });
});

describe('outputs named through a dangling symbolic link', () => {
  test('a log through a dangling link and metrics at the link\'s target are one file', () => {
    fs.symlinkSync('metrics.out', path.join(ws.dir, 'log-link'));
    fs.mkdirSync(path.join(ws.dir, 'real'));
    fs.symlinkSync('real', path.join(ws.dir, 'alias'));
    fs.symlinkSync('alias/chained.out', path.join(ws.dir, 'chain-link'));
    expect(errorsOf(ws, { ...minimalSpec(), logger: { log_path: 'log-link' }, metrics: { metrics_path: 'metrics.out' } })).toEqual(['output-overwrites @ /metrics/metrics_path']);
    expect(errorsOf(ws, minimalSpec(), { flagOutputs: { logPath: path.join(ws.dir, 'chain-link'), metricsPath: path.join(ws.dir, 'real', 'chained.out') } })).toEqual(['output-overwrites @ /']);
    expect(fs.existsSync(path.join(ws.dir, 'metrics.out'))).toBe(false);
  });
});

describe('--skip-files is never stricter than reading the files', () => {
  test('cpu_template "V1N1" replaced by a cpu-config template file passes both ways, with the same warning', () => {
    ws.write('tpl.json', { cpuid_modifiers: [] });
    const spec = { ...minimalSpec(), 'machine-config': { vcpu_count: 1, mem_size_mib: 128, cpu_template: 'V1N1' }, 'cpu-config': 'tpl.json' };
    const codes = (skipFiles: boolean) => checkRunnable(load(ws, spec, { skipFiles }), !skipFiles).map((i) => `${i.severity} ${i.code}`);
    expect(codes(false)).toEqual(['warning cpu-template-overridden']);
    expect(codes(true)).toEqual(['warning cpu-template-overridden']);
  });
});
