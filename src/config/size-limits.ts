/** Size limits on what fc-run reads from a spec or template, so no input costs unbounded time or memory. */

/** Longest array, and most keys in one object, fc-run reads in a spec (outside the MMDS contents). */
export const MAX_ITEMS = 1024;
/** Most values in a whole spec or template (outside the MMDS contents); real ones have hundreds. */
export const MAX_VALUES = 50_000;
/** Issues reported for one spec: past this, one line says how many more there are. */
export const MAX_REPORTED_ISSUES = 200;

/**
 * The first array or object (outside free-form data) larger than MAX_ITEMS, or the whole value
 * when it holds more than MAX_VALUES values; found without recursion. Checked before the schema:
 * every value of a huge spec could bring errors of its own, gigabytes of them.
 */
export function findOversized(value: unknown, freeForm: ReadonlySet<string> = new Set()): { at: (string | number)[]; what: string; count: number } | undefined {
  const stack: { v: unknown; at: (string | number)[] }[] = [{ v: value, at: [] }];
  let values = 0;
  while (stack.length > 0) {
    const { v, at } = stack.pop()!;
    if (++values > MAX_VALUES) return { at: [], what: 'the document', count: values };
    if (Array.isArray(v)) {
      if (v.length > MAX_ITEMS) return { at, what: 'this list', count: v.length };
      v.forEach((item, i) => stack.push({ v: item, at: [...at, i] }));
    } else if (v !== null && typeof v === 'object') {
      const keys = Object.keys(v);
      if (keys.length > MAX_ITEMS) return { at, what: 'this object', count: keys.length };
      for (const k of keys) if (!(at.length === 0 && freeForm.has(k))) stack.push({ v: (v as Record<string, unknown>)[k], at: [...at, k] });
    }
  }
  return undefined;
}


/** What findOversized found, in words: `doc` names the document ("spec", "template"). */
export function oversizedMessage(o: { what: string; count: number }, doc: string): string {
  return o.what === 'the document' ? `the ${doc} holds more than ${MAX_VALUES} values; fc-run reads at most that many` : `${o.what} has ${o.count} entries; fc-run reads at most ${MAX_ITEMS}`;
}
