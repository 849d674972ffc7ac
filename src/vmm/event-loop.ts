import { EPOLL_CLOEXEC, EPOLL_CTL_ADD, EPOLL_CTL_DEL, EPOLL_CTL_MOD, EPOLLIN, errno, sys, SyscallError } from '../kvm/libc';

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
  private readonly handlers = new Map<number, (events: number) => void>();
  /** The events each fd is watched for (kept so that a paused fd can be put back as it was). */
  private readonly interest = new Map<number, number>();
  /** Fds served while the loop is paused (stop, control, snapshot requests, the MMIO mailbox). */
  private readonly always = new Set<number>();
  private readonly events = Buffer.alloc(EVENT_BYTES * MAX_EVENTS);
  private stopped = false;
  private paused = false;
  /** Told about errors that escaped a handler. */
  onError?: (err: Error) => void;

  constructor() {
    this.epfd = sys.epollCreate1(EPOLL_CLOEXEC);
    if (this.epfd < 0) throw new SyscallError('epoll_create1', errno());
  }

  /**
   * Calls `handler` with the ready events whenever `fd` has one of `events` (level-triggered).
   * `always`: the fd is served while the loop is paused too.
   */
  add(fd: number, handler: (events: number) => void, events = EPOLLIN, always = false): void {
    if (always) this.always.add(fd);
    if (this.watched(fd) && sys.epollCtl(this.epfd, EPOLL_CTL_ADD, fd, this.event(fd, events)) < 0) {
      this.always.delete(fd);
      throw new SyscallError('epoll_ctl(ADD)', errno(), `fd ${fd}`);
    }
    this.handlers.set(fd, handler);
    this.interest.set(fd, events);
  }

  /** Changes which events of a watched fd matter. */
  modify(fd: number, events: number): void {
    if (this.watched(fd) && sys.epollCtl(this.epfd, EPOLL_CTL_MOD, fd, this.event(fd, events)) < 0) throw new SyscallError('epoll_ctl(MOD)', errno(), `fd ${fd}`);
    this.interest.set(fd, events);
  }

  /** Whether `fd` is in the epoll set now (every fd is, except device fds while paused). */
  private watched(fd: number): boolean {
    return !this.paused || this.always.has(fd);
  }

  private event(fd: number, events: number): Buffer {
    const ev = Buffer.alloc(EVENT_BYTES);
    ev.writeUInt32LE(events, 0);
    ev.writeBigUInt64LE(BigInt(fd), 4);
    return ev;
  }

  remove(fd: number): void {
    if (this.watched(fd)) sys.epollCtl(this.epfd, EPOLL_CTL_DEL, fd, Buffer.alloc(EVENT_BYTES));
    this.handlers.delete(fd);
    this.interest.delete(fd);
    this.always.delete(fd);
  }

  /**
   * Stops serving every fd but the `always` ones: they leave the epoll set (a level-triggered fd
   * left in it would wake the loop again and again), and what they have pending (an eventfd's
   * count, a TAP's frames, an expired timer) stays pending until resume(). Adds, changes and
   * removals made meanwhile are remembered and applied then.
   */
  pause(): void {
    if (this.paused) return;
    for (const fd of this.handlers.keys()) if (!this.always.has(fd)) sys.epollCtl(this.epfd, EPOLL_CTL_DEL, fd, Buffer.alloc(EVENT_BYTES));
    this.paused = true;
  }

  /** Serves every fd again, each watched for the events it was last given. */
  resume(): void {
    if (!this.paused) return;
    this.paused = false;
    for (const [fd, events] of this.interest) {
      if (this.always.has(fd)) continue;
      // One fd that cannot go back (a bug: closed without remove()) must not keep the others out.
      if (sys.epollCtl(this.epfd, EPOLL_CTL_ADD, fd, this.event(fd, events)) < 0) this.onError?.(new SyscallError('epoll_ctl(ADD)', errno(), `fd ${fd} (resuming)`));
    }
  }

  get isPaused(): boolean {
    return this.paused;
  }

  stop(): void {
    this.stopped = true;
  }

  /** Waits and dispatches until stop() is called from a handler. */
  run(): void {
    while (!this.stopped) this.runOnce(-1);
  }

  /** One wait (up to `timeoutMs`, -1: no limit) and the dispatch of what it returned. */
  runOnce(timeoutMs: number): void {
    const n = sys.epollWait(this.epfd, this.events, MAX_EVENTS, timeoutMs);
    if (n < 0) {
      const e = errno();
      if (e === 4) return; // EINTR
      throw new SyscallError('epoll_wait', e);
    }
    for (let i = 0; i < n && !this.stopped; i++) {
      const fd = Number(this.events.readBigUInt64LE(i * EVENT_BYTES + 4));
      // A handler earlier in this batch paused the loop: the rest of the batch waits (still
      // pending, level-triggered, it is reported again after resume()).
      if (!this.watched(fd)) continue;
      try {
        this.handlers.get(fd)?.(this.events.readUInt32LE(i * EVENT_BYTES));
      } catch (err) {
        // Device entry points fail their device on error; anything that still escapes is a bug,
        // reported without stopping the devices that are fine.
        this.onError?.(err as Error);
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
