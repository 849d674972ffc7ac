import { EPOLL_CLOEXEC, EPOLL_CTL_ADD, EPOLL_CTL_DEL, EPOLLIN, errno, sys, SyscallError } from '../kvm/libc';

/** struct epoll_event is packed on x86_64: u32 events, u64 data. */
const EVENT_BYTES = 12;
const MAX_EVENTS = 64;

/**
 * One epoll set that every device back end's fd joins (ioeventfds, TAP devices, sockets,
 * timers), waited on by the VMM thread, as Firecracker's event manager does. Handlers run on the
 * thread that calls run(); they must not block.
 */
export class EventLoop {
  private readonly epfd: number;
  private readonly handlers = new Map<number, () => void>();
  private readonly events = Buffer.alloc(EVENT_BYTES * MAX_EVENTS);
  private stopped = false;

  constructor() {
    this.epfd = sys.epollCreate1(EPOLL_CLOEXEC);
    if (this.epfd < 0) throw new SyscallError('epoll_create1', errno());
  }

  /** Calls `handler` whenever `fd` is readable (level-triggered). */
  add(fd: number, handler: () => void): void {
    const ev = Buffer.alloc(EVENT_BYTES);
    ev.writeUInt32LE(EPOLLIN, 0);
    ev.writeBigUInt64LE(BigInt(fd), 4);
    if (sys.epollCtl(this.epfd, EPOLL_CTL_ADD, fd, ev) < 0) throw new SyscallError('epoll_ctl(ADD)', errno(), `fd ${fd}`);
    this.handlers.set(fd, handler);
  }

  remove(fd: number): void {
    sys.epollCtl(this.epfd, EPOLL_CTL_DEL, fd, Buffer.alloc(EVENT_BYTES));
    this.handlers.delete(fd);
  }

  stop(): void {
    this.stopped = true;
  }

  /** Waits and dispatches until stop() is called from a handler. */
  run(): void {
    while (!this.stopped) {
      const n = sys.epollWait(this.epfd, this.events, MAX_EVENTS, -1);
      if (n < 0) {
        const e = errno();
        if (e === 4) continue; // EINTR
        throw new SyscallError('epoll_wait', e);
      }
      for (let i = 0; i < n && !this.stopped; i++) {
        const fd = Number(this.events.readBigUInt64LE(i * EVENT_BYTES + 4));
        this.handlers.get(fd)?.();
      }
    }
  }
}

const counter = Buffer.alloc(8);

/** Drains an eventfd's counter (non-blocking fds: EAGAIN just means nothing was pending). */
export function drainEventfd(fd: number): void {
  sys.read(fd, counter, 8);
}

const one = Buffer.alloc(8);
one.writeBigUInt64LE(1n);

export function signalEventfd(fd: number): void {
  sys.write(fd, one, 8);
}
