import { FcRunError } from '../errors';
import { AF_UNIX, errno, errnoText, SOCK_CLOEXEC, sys } from './libc';

/**
 * The sd_notify protocol: one datagram of newline-separated KEY=VALUE lines sent to the
 * AF_UNIX socket named by $NOTIFY_SOCKET, which is how a Type=notify service tells systemd it is
 * ready or stopping. Node has no Unix datagram sockets, so the send is made here, by FFI.
 */

const SOCK_DGRAM = 2;
/** Never block Node's event loop: a full receive queue is a failed notification, not a stall. */
const MSG_DONTWAIT = 0x40;
const MSG_NOSIGNAL = 0x4000;
/** sizeof(sockaddr_un.sun_path). */
const SUN_PATH_MAX = 108;

export class NotifySocketError extends FcRunError {
  constructor(message: string) {
    super('sd-notify', message);
  }
}

/**
 * The sockaddr_un for a NOTIFY_SOCKET value and its length: "@name" is an abstract address
 * (a leading NUL byte, no terminator, the length counts exactly the name), anything else must
 * be an absolute path.
 */
export function notifySocketAddress(value: string): { addr: Buffer; len: number } {
  if (value.length === 0) throw new NotifySocketError('NOTIFY_SOCKET is empty');
  const abstract = value.startsWith('@');
  if (!abstract && !value.startsWith('/')) {
    throw new NotifySocketError(`NOTIFY_SOCKET=${value}: fc-run supports a path ("/run/...") or an abstract address ("@name"), not this form`);
  }
  const name = Buffer.from(abstract ? value.slice(1) : value, 'utf8');
  // A path needs room for its terminating NUL; an abstract name, for the NUL the '@' stands for.
  const room = SUN_PATH_MAX - 1;
  if (name.length > room) throw new NotifySocketError(`NOTIFY_SOCKET is ${name.length} bytes long, at most ${room} fit in a socket address`);
  const addr = Buffer.alloc(2 + SUN_PATH_MAX);
  addr.writeUInt16LE(AF_UNIX, 0);
  name.copy(addr, abstract ? 3 : 2);
  return { addr, len: abstract ? 3 + name.length : 2 + name.length + 1 };
}

/** Builds a notification datagram; keys and values may not hold newlines (they end a line). */
export function notifyMessage(fields: Readonly<Record<string, string | number>>): Buffer {
  const lines = Object.entries(fields).map(([k, v]) => `${k}=${String(v).replace(/[\r\n]+/g, ' ')}`);
  return Buffer.from(lines.join('\n') + '\n', 'utf8');
}

/** A datagram socket aimed at the service manager's notification socket. */
export class SdNotifier {
  private fd: number;

  private constructor(
    private readonly addr: Buffer,
    private readonly addrLen: number,
    readonly socketName: string,
  ) {
    this.fd = sys.socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (this.fd < 0) throw new NotifySocketError(`socket(AF_UNIX, SOCK_DGRAM) failed: ${errnoText(errno())}`);
  }

  /**
   * The notifier for $NOTIFY_SOCKET, or undefined when fc-run was not started by a service
   * manager that asked for notifications. Takes the variable out of the environment, as
   * sd_notify's unset_environment does: programs fc-run starts are not the service's main
   * process, and systemd would only log their notifications as refused.
   */
  static fromEnv(env: NodeJS.ProcessEnv = process.env): SdNotifier | undefined {
    const value = env.NOTIFY_SOCKET;
    if (value === undefined) return undefined;
    delete env.NOTIFY_SOCKET;
    const { addr, len } = notifySocketAddress(value);
    return new SdNotifier(addr, len, value);
  }

  /** Sends one notification. Throws NotifySocketError when it could not be sent. */
  send(fields: Readonly<Record<string, string | number>>): void {
    if (this.fd < 0) throw new NotifySocketError('the notification socket is closed');
    const msg = notifyMessage(fields);
    const n = Number(sys.sendto(this.fd, msg, msg.length, MSG_DONTWAIT | MSG_NOSIGNAL, this.addr, this.addrLen));
    if (n < 0) throw new NotifySocketError(`sendto(NOTIFY_SOCKET=${this.socketName}) failed: ${errnoText(errno())}`);
  }

  close(): void {
    if (this.fd >= 0) sys.close(this.fd);
    this.fd = -1;
  }
}
