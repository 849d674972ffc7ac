import { signalEventfd } from './event-loop';

/**
 * How a vCPU thread hands a virtio-mmio register access to the VMM thread that owns the device:
 * one slot per vCPU in a SharedArrayBuffer, an eventfd in the VMM thread's epoll set, and
 * Atomics.wait for the answer. Register accesses are rare (driver setup, config reads); the hot
 * paths avoid this: queue notifications go through ioeventfds, interrupt status through shared
 * memory.
 */
const SLOT_WORDS = 8;
const F = { STATE: 0, DEVICE: 1, OFFSET: 2, LEN: 3, WRITE: 4, VALUE: 5 } as const;
const IDLE = 0;
const REQUEST = 1;
const DONE = 2;

export function createMailboxes(vcpus: number): SharedArrayBuffer {
  return new SharedArrayBuffer(vcpus * SLOT_WORDS * 4);
}

export class MailboxClient {
  private readonly slot: Int32Array;

  constructor(
    buf: SharedArrayBuffer,
    vcpu: number,
    private readonly eventFd: number,
    /** Returns true when the VM is stopping: a wait that will never be answered ends. */
    private readonly stopping: () => boolean,
  ) {
    this.slot = new Int32Array(buf, vcpu * SLOT_WORDS * 4, SLOT_WORDS);
  }

  /** Performs the access on the VMM thread and returns the value read (0 for writes). */
  access(device: number, offset: number, len: number, write: boolean, value: number): number {
    const s = this.slot;
    s[F.DEVICE] = device;
    s[F.OFFSET] = offset;
    s[F.LEN] = len;
    s[F.WRITE] = write ? 1 : 0;
    s[F.VALUE] = value | 0;
    Atomics.store(s, F.STATE, REQUEST);
    signalEventfd(this.eventFd);
    while (Atomics.load(s, F.STATE) !== DONE) {
      Atomics.wait(s, F.STATE, REQUEST, 100);
      if (this.stopping()) return 0;
    }
    const result = s[F.VALUE] >>> 0;
    Atomics.store(s, F.STATE, IDLE);
    return result;
  }
}

export type MmioHandler = (device: number, offset: number, len: number, write: boolean, value: number) => number;

/** Answers every pending request (called on the VMM thread when the mailbox eventfd fires). */
export function serveMailboxes(buf: SharedArrayBuffer, handle: MmioHandler): void {
  const all = new Int32Array(buf);
  for (let base = 0; base < all.length; base += SLOT_WORDS) {
    if (Atomics.load(all, base + F.STATE) !== REQUEST) continue;
    let result = 0;
    try {
      result = handle(all[base + F.DEVICE], all[base + F.OFFSET], all[base + F.LEN], all[base + F.WRITE] === 1, all[base + F.VALUE] >>> 0);
    } catch {
      result = 0xffffffff; // a device model failing must not leave the vCPU waiting
    }
    all[base + F.VALUE] = result | 0;
    Atomics.store(all, base + F.STATE, DONE);
    Atomics.notify(all, base + F.STATE);
  }
}
