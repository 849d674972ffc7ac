import { MMDS_MAC } from '../../src/devices/mmds/stack';

/**
 * Ethernet frames as a guest's kernel sends them (ARP, IPv4/TCP with correct checksums), shared
 * by the MMDS stack's tests and its fuzzer.
 */

export const GUEST_MAC = Buffer.from([0x06, 0, 0, 0, 0, 0x02]);
export const F = { FIN: 1, SYN: 2, RST: 4, PSH: 8, ACK: 16, URG: 32 } as const;

export function ip(text: string): number {
  return text.split('.').reduce((n, p) => n * 256 + Number(p), 0) >>> 0;
}

export const GUEST_IP = ip('10.0.0.2');
export const MMDS_IP = ip('169.254.169.254');

/** The ones'-complement sum of 16-bit words, folded. */
export function sum16(b: Buffer, start: number, end: number, initial = 0): number {
  let s = initial;
  let i = start;
  for (; i + 1 < end; i += 2) s += b.readUInt16BE(i);
  if (i < end) s += b[i] << 8;
  while (s > 0xffff) s = (s & 0xffff) + Math.floor(s / 0x10000);
  return s;
}

export function arpFrame(op: number, mac: Buffer, senderIp: number, targetIp: number): Buffer {
  const f = Buffer.alloc(42);
  f.fill(0xff, 0, 6);
  mac.copy(f, 6);
  f.writeUInt16BE(0x0806, 12);
  f.writeUInt16BE(1, 14);
  f.writeUInt16BE(0x0800, 16);
  f[18] = 6;
  f[19] = 4;
  f.writeUInt16BE(op, 20);
  mac.copy(f, 22);
  f.writeUInt32BE(senderIp >>> 0, 28);
  f.writeUInt32BE(targetIp >>> 0, 38);
  return f;
}

export interface Seg {
  mac?: Buffer;
  src?: number;
  dst?: number;
  /** IPv4 protocol number (default 6, TCP). */
  protocol?: number;
  srcPort: number;
  dstPort?: number;
  seq: number;
  ack?: number;
  flags: number;
  window?: number;
  options?: Buffer;
  ipOptions?: Buffer;
  payload?: Buffer;
}

/** A TCP segment from the guest to the MMDS address (by default), with valid checksums. */
export function tcpFrame(s: Seg): Buffer {
  const opts = s.options ?? Buffer.alloc(0);
  const ipOpts = s.ipOptions ?? Buffer.alloc(0);
  const payload = s.payload ?? Buffer.alloc(0);
  const ihl = 20 + ipOpts.length;
  const tcpLen = 20 + opts.length + payload.length;
  const f = Buffer.alloc(14 + ihl + tcpLen);
  MMDS_MAC.copy(f, 0);
  (s.mac ?? GUEST_MAC).copy(f, 6);
  f.writeUInt16BE(0x0800, 12);
  f[14] = 0x40 | (ihl / 4);
  f.writeUInt16BE(ihl + tcpLen, 16);
  f[22] = 64;
  f[23] = s.protocol ?? 6;
  f.writeUInt32BE((s.src ?? GUEST_IP) >>> 0, 26);
  f.writeUInt32BE((s.dst ?? MMDS_IP) >>> 0, 30);
  ipOpts.copy(f, 34);
  const t = 14 + ihl;
  f.writeUInt16BE(s.srcPort & 0xffff, t);
  f.writeUInt16BE((s.dstPort ?? 80) & 0xffff, t + 2);
  f.writeUInt32BE(s.seq >>> 0, t + 4);
  f.writeUInt32BE((s.ack ?? 0) >>> 0, t + 8);
  f[t + 12] = ((20 + opts.length) / 4) << 4;
  f[t + 13] = s.flags;
  f.writeUInt16BE((s.window ?? 65535) & 0xffff, t + 14);
  opts.copy(f, t + 20);
  payload.copy(f, t + 20 + opts.length);
  fixChecksums(f);
  return f;
}

/** Recomputes the IPv4 and TCP checksums where the headers allow, so a mutation reaches past them. */
export function fixChecksums(f: Buffer): void {
  if (f.length < 34 || f.readUInt16BE(12) !== 0x0800) return;
  const ihl = (f[14] & 15) * 4;
  if (ihl < 20 || 14 + ihl > f.length) return;
  f.writeUInt16BE(0, 24);
  f.writeUInt16BE(~sum16(f, 14, 14 + ihl) & 0xffff, 24);
  const total = f.readUInt16BE(16);
  const t = 14 + ihl;
  const tcpLen = total - ihl;
  if (tcpLen < 20 || 14 + total > f.length) return;
  const src = f.readUInt32BE(26);
  const dst = f.readUInt32BE(30);
  f.writeUInt16BE(0, t + 16);
  const pseudo = (src >>> 16) + (src & 0xffff) + (dst >>> 16) + (dst & 0xffff) + 6 + tcpLen;
  f.writeUInt16BE(~sum16(f, t, t + tcpLen, pseudo) & 0xffff, t + 16);
}
