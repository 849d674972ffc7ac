import { SpecSource } from '../../src/config/source';
import { findDeepNesting } from '../../src/config/json-depth';

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

  test('brackets inside comments do not count', () => {
    expect(findDeepNesting(`/* ${'['.repeat(500)} */ // ${'{'.repeat(500)}\n[]`)).toBeUndefined();
  });
});
