import { createHash } from 'node:crypto';
import { sha256Hex } from '../../src/sha256';
import { Rng } from '../fuzz/rng';

const reference = (data: string | Uint8Array) => createHash('sha256').update(data).digest('hex');

describe('sha256Hex', () => {
  it('gives the FIPS 180-4 digests of the standard test messages', () => {
    expect(sha256Hex('')).toBe('e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
    expect(sha256Hex('abc')).toBe('ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
    expect(sha256Hex('abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq')).toBe('248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1');
  });

  it('agrees with node:crypto at every length around the block and padding boundaries', () => {
    for (let n = 0; n <= 300; n++) {
      const bytes = Uint8Array.from({ length: n }, (_, i) => (i * 37 + n) & 0xff);
      expect(sha256Hex(bytes)).toBe(reference(bytes));
    }
  });

  it('hashes strings as UTF-8, and random texts as node:crypto does', () => {
    expect(sha256Hex('vCPU → 32 · ünïcode 𝔘')).toBe(reference('vCPU → 32 · ünïcode 𝔘'));
    const r = new Rng(7);
    for (let i = 0; i < 200; i++) {
      const text = Array.from({ length: r.int(3000) }, () => String.fromCodePoint(r.bool() ? 32 + r.int(95) : 0xa0 + r.int(0x2f00))).join('');
      expect(sha256Hex(text)).toBe(reference(text));
    }
  });
});
