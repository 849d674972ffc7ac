import { errno, sys, SyscallError } from './libc';

const CLOCK_MONOTONIC = 1;
const TFD_NONBLOCK = 0o4000;
const TFD_CLOEXEC = 0o2000000;

/** A one-shot monotonic timer as an fd, for the VMM thread's epoll loop. */
export class TimerFd {
  readonly fd: number;
  private readonly spec = Buffer.alloc(32);
  private readonly drain = Buffer.alloc(8);

  constructor() {
    this.fd = sys.timerfdCreate(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (this.fd < 0) throw new SyscallError('timerfd_create', errno());
  }

  /** Fires once after `ms` milliseconds (fractions kept to the nanosecond); 0 disarms. */
  arm(ms: number): void {
    const ns = BigInt(Math.max(0, Math.ceil(ms * 1e6)));
    this.spec.fill(0);
    this.spec.writeBigInt64LE(ns / 1_000_000_000n, 16);
    this.spec.writeBigInt64LE(ns % 1_000_000_000n, 24);
    if (sys.timerfdSettime(this.fd, 0, this.spec, null) < 0) throw new SyscallError('timerfd_settime', errno());
  }

  /** Clears the expiry count (call from the readiness handler). */
  acknowledge(): void {
    sys.read(this.fd, this.drain, 8);
  }
}
