import { EXIT_INVALID_SPEC, FcRunError } from './errors';

/**
 * Readers for device state that comes back from a snapshot file. The file may be damaged or
 * written by someone hostile, so every field is checked (type, range, no unknown or missing
 * keys) before a device uses it, and anything wrong is a FcRunError naming the field, never a
 * crash or a device left half restored.
 *
 * `where` is the path of the value in the saved state, e.g. `devices[1] (block "rootfs").transport.queues[0].size`.
 */

/** The snapshot's device state is malformed: a damaged or forged file. */
export function snapshotInvalid(where: string, what: string): FcRunError {
  return new FcRunError('snapshot-invalid', `the snapshot's device state is invalid at ${where}: ${what}`, EXIT_INVALID_SPEC);
}

/** The snapshot is well-formed but does not fit the devices it is restored into (another disk size, MAC, device set). */
export function snapshotMismatch(where: string, what: string): FcRunError {
  return new FcRunError('snapshot-mismatch', `the snapshot does not fit this VM's devices at ${where}: ${what}`, EXIT_INVALID_SPEC);
}

/** A value as an error message shows it (short: long strings by their length). */
export function describeValue(v: unknown): string {
  if (v === undefined) return 'nothing';
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'string') return v.length > 40 ? `a string of ${v.length} characters` : JSON.stringify(v);
  if (typeof v === 'object') return 'an object';
  return `${typeof v} ${String(v)}`;
}

/**
 * A plain object with exactly the `required` keys (and any of `optional`); returns it for reading.
 */
export function record(v: unknown, where: string, required: readonly string[], optional: readonly string[] = []): Record<string, unknown> {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw snapshotInvalid(where, `expected an object, got ${describeValue(v)}`);
  const o = v as Record<string, unknown>;
  for (const k of Object.keys(o)) {
    if (!required.includes(k) && !optional.includes(k)) throw snapshotInvalid(where, `unknown field ${JSON.stringify(k)}`);
  }
  for (const k of required) {
    if (!Object.prototype.hasOwnProperty.call(o, k)) throw snapshotInvalid(where, `missing field ${JSON.stringify(k)}`);
  }
  return o;
}

/** An integer in [min, max]. */
export function int(v: unknown, where: string, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw snapshotInvalid(where, `expected an integer from ${min} to ${max}, got ${describeValue(v)}`);
  return v;
}

export const U16_MAX = 0xffff;
export const U32_MAX = 0xffffffff;

export function bool(v: unknown, where: string): boolean {
  if (typeof v !== 'boolean') throw snapshotInvalid(where, `expected true or false, got ${describeValue(v)}`);
  return v;
}

export function oneOf<T extends string>(v: unknown, where: string, allowed: readonly T[]): T {
  if (typeof v !== 'string' || !(allowed as readonly string[]).includes(v)) throw snapshotInvalid(where, `expected one of ${allowed.map((a) => JSON.stringify(a)).join(', ')}, got ${describeValue(v)}`);
  return v as T;
}

/** A string of at most `maxLength` characters. */
export function text(v: unknown, where: string, maxLength: number): string {
  if (typeof v !== 'string' || v.length > maxLength) throw snapshotInvalid(where, `expected a string of at most ${maxLength} characters, got ${describeValue(v)}`);
  return v;
}

/** A bigint saved as decimal text (JSON has no 64-bit integers), in [min, max]. */
export function bigText(v: unknown, where: string, min: bigint, max: bigint): bigint {
  // Bounded length before BigInt(): a megabyte of digits is refused, not parsed.
  if (typeof v !== 'string' || !/^-?\d{1,20}$/.test(v)) throw snapshotInvalid(where, `expected an integer as decimal text, got ${describeValue(v)}`);
  const b = BigInt(v);
  if (b < min || b > max) throw snapshotInvalid(where, `${v} is outside ${min}..${max}`);
  return b;
}

export const U64_MAX = (1n << 64n) - 1n;
export const I64_MIN = -(1n << 63n);
export const I64_MAX = (1n << 63n) - 1n;

/** An array of at most `maxLength` elements. */
export function list(v: unknown, where: string, maxLength: number): unknown[] {
  if (!Array.isArray(v)) throw snapshotInvalid(where, `expected an array, got ${describeValue(v)}`);
  if (v.length > maxLength) throw snapshotInvalid(where, `expected at most ${maxLength} elements, got ${v.length}`);
  return v;
}

/** Bytes saved as an array of numbers 0..255, at most `maxLength` of them. */
export function bytes(v: unknown, where: string, maxLength: number): Uint8Array {
  const a = list(v, where, maxLength);
  return Uint8Array.from(a, (b, i) => int(b, `${where}[${i}]`, 0, 255));
}
