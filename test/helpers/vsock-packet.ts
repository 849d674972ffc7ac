/** virtio-vsock packets as a guest's driver writes them, for the device tests. */

export const GUEST_CID = 7;

export interface PacketFields {
  srcCid?: number;
  dstCid?: number;
  src?: number;
  dst?: number;
  op: number;
  type?: number;
  /** The header's length field; by default the payload's length. */
  len?: number;
  flags?: number;
  fwdCnt?: number;
  payload?: Buffer | string;
}

/** A 44-byte header (buf_alloc 64 KiB) and the payload. */
export function vsockPacket(f: PacketFields): Buffer {
  const payload = typeof f.payload === 'string' ? Buffer.from(f.payload) : (f.payload ?? Buffer.alloc(0));
  const b = Buffer.alloc(44 + payload.length);
  b.writeBigUInt64LE(BigInt(f.srcCid ?? GUEST_CID), 0);
  b.writeBigUInt64LE(BigInt(f.dstCid ?? 2), 8);
  b.writeUInt32LE(f.src ?? 1000, 16);
  b.writeUInt32LE(f.dst ?? 2000, 20);
  b.writeUInt32LE(f.len ?? payload.length, 24);
  b.writeUInt16LE(f.type ?? 1, 28);
  b.writeUInt16LE(f.op, 30);
  b.writeUInt32LE(f.flags ?? 0, 32);
  b.writeUInt32LE(65536, 36);
  b.writeUInt32LE(f.fwdCnt ?? 0, 40);
  payload.copy(b, 44);
  return b;
}
