import { errno, O_CLOEXEC, O_NONBLOCK, O_RDWR, sys, SyscallError } from './libc';

const TUNSETIFF = 0x400454ca;
const TUNSETOFFLOAD = 0x400454d0;
const TUNSETVNETHDRSZ = 0x400454d8;
const IFF_TAP = 0x0002;
const IFF_NO_PI = 0x1000;
const IFF_VNET_HDR = 0x4000;
export const TUN_F_CSUM = 0x01;
export const TUN_F_TSO4 = 0x02;
export const TUN_F_TSO6 = 0x04;
export const TUN_F_UFO = 0x10;
/** virtio_net_hdr_v1: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers. */
export const VNET_HDR_BYTES = 12;

/**
 * Opens (or attaches to) the TAP device `name` with a virtio-net header on every frame, so
 * checksum and segmentation offloads pass between guest and host untouched. Non-blocking.
 */
export function openTap(name: string): number {
  const fd = sys.open('/dev/net/tun', O_RDWR | O_NONBLOCK | O_CLOEXEC, 0);
  if (fd < 0) throw new SyscallError('open(/dev/net/tun)', errno(), 'is the tun module loaded?');
  const ifr = Buffer.alloc(40);
  ifr.write(name, 0, 15, 'utf8');
  ifr.writeUInt16LE(IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, 16);
  if (sys.ioctlPtr(fd, TUNSETIFF, ifr) < 0) {
    const e = errno();
    sys.close(fd);
    throw new SyscallError('ioctl(TUNSETIFF)', e, `TAP device "${name}"${e === 16 ? ' is in use by another process' : e === 1 ? ': not permitted (needs CAP_NET_ADMIN or a TAP owned by this user)' : ''}`);
  }
  const size = Buffer.alloc(4);
  size.writeInt32LE(VNET_HDR_BYTES);
  if (sys.ioctlPtr(fd, TUNSETVNETHDRSZ, size) < 0) {
    const e = errno();
    sys.close(fd);
    throw new SyscallError('ioctl(TUNSETVNETHDRSZ)', e, name);
  }
  return fd;
}

/** Tells the TAP which offloads the guest accepts on frames it receives. */
export function setTapOffload(fd: number, flags: number): void {
  if (sys.ioctlInt(fd, TUNSETOFFLOAD, flags) < 0) throw new SyscallError('ioctl(TUNSETOFFLOAD)', errno());
}

/** Reads one frame (with its virtio-net header); 0 when none is waiting. */
export function tapRead(fd: number, buf: Buffer): number {
  const n = Number(sys.read(fd, buf, buf.length));
  if (n >= 0) return n;
  const e = errno();
  if (e === 11) return 0; // EAGAIN
  throw new SyscallError('read(tap)', e);
}

/** Writes one frame (with its virtio-net header); false when the TAP cannot take it now. */
export function tapWrite(fd: number, frame: Uint8Array): boolean {
  const n = Number(sys.write(fd, frame, frame.length));
  if (n >= 0) return true;
  const e = errno();
  if (e === 11) return false;
  throw new SyscallError('write(tap)', e);
}
