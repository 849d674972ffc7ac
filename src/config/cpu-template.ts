import type { BitFilter } from './resolved';

/** Parses "0x1f", "0b101" or "31" into a number, or undefined when it does not fit in `bits`. */
export function parseRegisterNumber(text: string, bits: 32 | 64 = 32): bigint | undefined {
  let value: bigint;
  try {
    value = BigInt(text.replace(/^0X/, '0x').replace(/^0B/, '0b'));
  } catch {
    return undefined;
  }
  return value >= 0n && value < 1n << BigInt(bits) ? value : undefined;
}

/**
 * Parses a Firecracker bitmap ("0b" optional, then '0', '1', 'x', '_', most significant first;
 * missing high bits are kept) into a mask and value. Returns an error string when malformed.
 */
export function parseBitmap(text: string, bits: 32 | 64): BitFilter | string {
  const body = text.startsWith('0b') ? text.slice(2) : text;
  const digits = body.replace(/_/g, '');
  if (digits.length === 0) return 'has no bits';
  if (/[^01x]/.test(digits)) return `has a character other than 0, 1, x or _`;
  if (digits.length > bits) return `has ${digits.length} bits, at most ${bits} fit the register`;
  let mask = 0n;
  let value = 0n;
  for (let i = 0; i < digits.length; i++) {
    const bit = 1n << BigInt(digits.length - 1 - i);
    const c = digits[i];
    if (c !== 'x') mask |= bit;
    if (c === '1') value |= bit;
  }
  const hex = (n: bigint) => '0x' + n.toString(16).padStart(bits / 4, '0');
  return { mask: hex(mask), value: hex(value) };
}
