import type { GuestMemory } from '../../kvm/memory';
import { EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT } from '../../kvm/libc';
import { acceptUnix, claimSocketPath, closeFd, connectUnix, listenUnix, readSome, shutdownWrite, writeSome } from '../../kvm/unix-socket';
import { gather, scatter, VirtQueue } from './queue';
import type { DeviceIo, VirtioBackend } from './mmio';
import { int, record, U32_MAX } from '../../state-check';

export const VIRTIO_ID_VSOCK = 19;
const RX = 0;
const TX = 1;
const EVENT = 2;
const HDR = 44;
/** virtio_vsock_event.id: the device lost its connections; the driver resets its sockets and reads the guest CID again. */
export const VIRTIO_VSOCK_EVENT_TRANSPORT_RESET = 0;
/** struct virtio_vsock_event is one le32; Linux's driver ignores an event whose used length is not exactly this. */
const EVENT_BYTES = 4;
export const VSOCK_OP = { REQUEST: 1, RESPONSE: 2, RST: 3, SHUTDOWN: 4, RW: 5, CREDIT_UPDATE: 6, CREDIT_REQUEST: 7 } as const;
const TYPE_STREAM = 1;
const HOST_CID = 2;
/** Receive buffer space fc-run advertises per connection (the guest may have this much in flight). */
const BUF_ALLOC = 256 * 1024;
const MAX_PAYLOAD = 64 * 1024;
const CONNECT_LINE_MAX = 32;
/** Most connections at once (each holds a host fd), as in Firecracker. */
const MAX_CONNECTIONS = 1023;
/** Most control packets waiting for receive buffers; past it, fc-run stops reading the guest's TX queue. */
const MAX_CONTROL = 256;
const FIRST_LOCAL_PORT = 1 << 30;

/** What fc-run watches fds with; the VMM thread's EventLoop in production. */
export interface Poller {
  add(fd: number, handler: (events: number) => void, events?: number): void;
  modify(fd: number, events: number): void;
  remove(fd: number): void;
}

interface Packet {
  srcPort: number;
  dstPort: number;
  op: number;
  flags?: number;
  fwdCnt?: number;
  payload?: Buffer;
}

interface Connection {
  hostPort: number;
  guestPort: number;
  fd: number;
  established: boolean;
  /** Host-initiated: waiting for the guest's RESPONSE before telling the host "OK". */
  awaitingResponse: boolean;
  peerBufAlloc: number;
  peerFwdCnt: number;
  /** Bytes sent to the guest. */
  rxCnt: number;
  /** Guest bytes written to the host socket. */
  fwdCnt: number;
  /** Bytes at the head of pendingOut that are fc-run's own (the "OK <port>" line), not the guest's stream: fwd_cnt leaves them out. */
  ownBytes: number;
  fwdCntAnnounced: number;
  /** A CREDIT_UPDATE is already queued for this connection. */
  creditUpdateQueued: boolean;
  /** Host bytes read before the connection was established (sent right after "CONNECT P\n"). */
  early: Buffer;
  /** Guest bytes the host socket has not taken yet. */
  pendingOut: Buffer[];
  watching: number;
  /** The host sent end of stream: nothing more to read from it. */
  hostDone: boolean;
  /** The guest will send nothing more (SHUTDOWN with SEND); the host gets end of stream once pendingOut is written. */
  guestDone: boolean;
  hostWriteShut: boolean;
  /** The guest will take nothing more (SHUTDOWN with RCV). */
  guestNoRecv: boolean;
  /** Both sides finished: once pendingOut is written, reset and forget the connection. */
  closing: boolean;
  /**
   * The host socket hung up with bytes still unread (the guest had no credit or buffers): it is
   * out of the epoll set (a hang-up is reported whatever the interest) and read from flushRx.
   */
  hungUp: boolean;
}

/** virtio-vsock SHUTDOWN flags. */
const SHUTDOWN_RCV = 1;
const SHUTDOWN_SEND = 2;

export interface VsockCounters {
  connectionsOpened: number;
  connectionsRefused: number;
  resets: number;
  txPackets: number;
  rxPackets: number;
  txBytes: number;
  rxBytes: number;
  invalidPackets: number;
}

/**
 * The vsock device as a snapshot keeps it. Connections are not in it: their host sockets belong
 * to the saving process. A restore starts with none and, when the guest's driver is active, sends
 * it VIRTIO_VSOCK_EVENT_TRANSPORT_RESET so it resets its sockets (as Firecracker does).
 */
export interface VsockState {
  /** The CID the guest was given (the restore may give another: the driver reads it again on the reset event). */
  guestCid: number;
  /** The next host-side port for a host-initiated connection. */
  nextLocalPort: number;
}

export interface VsockOptions {
  guestCid: number;
  udsPath: string;
  poller: Poller;
  onMalformed?: () => void;
}

/**
 * virtio-vsock with Firecracker's hybrid host side: the host reaches guest port P by connecting
 * to `uds_path` and sending "CONNECT P\n" (answered "OK <host port>\n"); the guest reaches host
 * port P through a Unix socket someone listens on at `<uds_path>_P`. Stream data is flow
 * controlled by credit in both directions: fc-run sends the guest no more than it has room for,
 * and advertises only what it has forwarded to the host socket.
 */
export class VsockDevice implements VirtioBackend {
  readonly deviceId = VIRTIO_ID_VSOCK;
  readonly queueCount = 3;
  readonly features = 0n;
  readonly counters: VsockCounters = { connectionsOpened: 0, connectionsRefused: 0, resets: 0, txPackets: 0, rxPackets: 0, txBytes: 0, rxBytes: 0, invalidPackets: 0 };
  private readonly configSpace = Buffer.alloc(8);
  private queues: VirtQueue[] | undefined;
  private io: DeviceIo | undefined;
  private readonly listener: number;
  private readonly connections = new Map<string, Connection>();
  /** Host sockets that have not sent their CONNECT line yet. */
  private readonly handshakes = new Map<number, string>();
  private readonly control: Packet[] = [];
  private nextLocalPort = FIRST_LOCAL_PORT;
  /** The guest has no receive buffers: sockets are not read until it adds some (no busy loop). */
  private rxStarved = false;
  private readonly scratch = Buffer.alloc(MAX_PAYLOAD);
  /** A transport reset event waits for an event buffer from the driver. */
  private resetToSend = false;
  /**
   * A transport reset event was delivered and the driver has not answered it yet (its answer is
   * an event buffer added after it handled the event; the driver's available index at the
   * delivery is kept to tell). Until then, and while the event waits to be sent, nothing goes to
   * the guest: a connection offered before the driver reset its sockets would be reset with them.
   */
  private resetUnacked: { availIndex: number } | undefined;

  /** Nothing goes to the guest while a transport reset is due or unanswered. */
  private get holdingRx(): boolean {
    return this.resetToSend || this.resetUnacked !== undefined;
  }

  constructor(
    private readonly mem: GuestMemory,
    private readonly opts: VsockOptions,
  ) {
    this.configSpace.writeBigUInt64LE(BigInt(opts.guestCid));
    // A stale socket from an earlier run is replaced; another VM's live socket, or a file that is
    // not a socket, is never touched.
    claimSocketPath(opts.udsPath, 'vsock uds_path');
    this.listener = listenUnix(opts.udsPath);
    opts.poller.add(this.listener, () => this.safely(() => this.accept()));
  }

  config(): Uint8Array {
    return this.configSpace;
  }

  activate(queues: VirtQueue[], io: DeviceIo): void {
    this.queues = queues;
    this.io = io;
    // Host connections that arrived before the guest's driver was ready ask again now.
    this.control.length = 0;
    for (const c of this.connections.values()) if (c.awaitingResponse) this.queueControl(c, VSOCK_OP.REQUEST);
    this.flushRx();
  }

  /**
   * The guest's driver reset the device: its connections are gone. Host connections still
   * waiting for the guest to answer stay, and are offered again when the driver is back.
   */
  reset(): void {
    for (const c of [...this.connections.values()]) if (!c.awaitingResponse) this.drop(c);
    this.control.length = 0;
    this.rxStarved = false;
    this.resetToSend = false;
    this.resetUnacked = undefined;
    this.queues = undefined;
    this.io = undefined;
  }

  saveState(): VsockState {
    return { guestCid: this.opts.guestCid, nextLocalPort: this.nextLocalPort };
  }

  /**
   * After the transport's restore: every connection is dropped (their host sockets were the
   * saving process's), and when the driver is active a transport reset event is due, sent by
   * restored() once the VM runs again.
   */
  restoreState(state: unknown, where: string): void {
    const s = record(state, where, ['guestCid', 'nextLocalPort']);
    int(s.guestCid, `${where}.guestCid`, 3, U32_MAX);
    const nextLocalPort = int(s.nextLocalPort, `${where}.nextLocalPort`, FIRST_LOCAL_PORT, 0xfffffffe);
    for (const c of [...this.connections.values()]) this.drop(c);
    for (const fd of [...this.handshakes.keys()]) this.closeHandshake(fd);
    this.control.length = 0;
    this.nextLocalPort = nextLocalPort;
    this.resetUnacked = undefined;
    this.resetToSend = this.queues !== undefined;
  }

  /** The VM runs again after a restore: the transport reset event goes out. */
  restored(): void {
    this.sendResetEvent();
  }

  /** Delivers a pending transport reset event, if the driver has an event buffer for it. */
  private sendResetEvent(): void {
    const evq = this.queues?.[EVENT];
    if (!evq || !this.resetToSend) return;
    let used = false;
    for (let chain = evq.pop(); chain; chain = evq.pop()) {
      used = true;
      const room = chain.error ? 0 : chain.segments.reduce((n, s) => n + (s.writable ? s.len : 0), 0);
      if (room < EVENT_BYTES) {
        this.invalid();
        evq.push(chain.head, 0);
        continue;
      }
      const event = Buffer.alloc(EVENT_BYTES);
      event.writeUInt32LE(VIRTIO_VSOCK_EVENT_TRANSPORT_RESET);
      evq.push(chain.head, scatter(this.mem, chain.segments, event));
      this.resetToSend = false;
      this.resetUnacked = { availIndex: evq.availIndex() };
      break;
    }
    // Either way the driver's next event buffer must be noticed: it is the answer, or the place for the event.
    evq.armNotification();
    if (used) this.io?.usedBuffers([evq]);
  }

  /** The driver added event buffers: room for a waiting event, or its answer to the one delivered. */
  private eventQueueNotified(): void {
    if (this.resetToSend) return this.sendResetEvent();
    const evq = this.queues![EVENT];
    if (!this.resetUnacked || evq.availIndex() === this.resetUnacked.availIndex) return;
    this.resetUnacked = undefined;
    // What waited for the answer (replies, connections offered meanwhile) goes now.
    this.flushRx();
    if (this.control.length < MAX_CONTROL) this.processTx();
  }

  notify(index: number): void {
    if (!this.queues) return;
    if (index === EVENT) return this.eventQueueNotified();
    if (index === TX) this.processTx();
    else if (index === RX) {
      this.rxStarved = false;
      this.flushRx();
      // TX may have stopped because control packets backed up; they moved, so go on.
      if (this.control.length < MAX_CONTROL) this.processTx();
    }
  }

  /** Socket events run outside the transport's guard: a broken ring found there fails the device. */
  private safely(work: () => void): void {
    try {
      work();
    } catch (err) {
      this.io?.fail((err as Error).message);
    }
  }

  private key(hostPort: number, guestPort: number): string {
    return `${hostPort}:${guestPort}`;
  }

  // ---- host side

  private accept(): void {
    for (let fd = acceptUnix(this.listener); fd >= 0; fd = acceptUnix(this.listener)) {
      if (this.connections.size + this.handshakes.size >= MAX_CONNECTIONS) {
        closeFd(fd);
        continue;
      }
      this.handshakes.set(fd, '');
      this.opts.poller.add(fd, () => this.safely(() => this.readConnectLine(fd)));
    }
  }

  private readConnectLine(fd: number): void {
    const n = readSome(fd, this.scratch, CONNECT_LINE_MAX);
    if (n === -1) return;
    const line = (this.handshakes.get(fd) ?? '') + (n > 0 ? this.scratch.toString('latin1', 0, n) : '');
    const end = line.indexOf('\n');
    if (n <= 0 || (end < 0 && line.length >= CONNECT_LINE_MAX)) return this.closeHandshake(fd);
    if (end < 0) {
      this.handshakes.set(fd, line);
      return;
    }
    const m = /^CONNECT (\d{1,10})$/.exec(line.slice(0, end).trim());
    const port = m ? Number(m[1]) : NaN;
    if (!m || port > 0xffffffff) return this.closeHandshake(fd);
    this.handshakes.delete(fd);
    this.opts.poller.remove(fd);
    const hostPort = this.allocatePort(port);
    const c = this.open(hostPort, port, fd, false);
    c.awaitingResponse = true;
    c.early = Buffer.from(line.slice(end + 1), 'latin1');
    this.queueControl(c, VSOCK_OP.REQUEST);
    this.flushRx();
  }

  private closeHandshake(fd: number): void {
    this.handshakes.delete(fd);
    this.opts.poller.remove(fd);
    closeFd(fd);
  }

  private allocatePort(guestPort: number): number {
    for (;;) {
      const p = this.nextLocalPort;
      this.nextLocalPort = this.nextLocalPort >= 0xfffffffe ? FIRST_LOCAL_PORT : this.nextLocalPort + 1;
      if (!this.connections.has(this.key(p, guestPort))) return p;
    }
  }

  private open(hostPort: number, guestPort: number, fd: number, established: boolean): Connection {
    const c: Connection = { hostPort, guestPort, fd, established, awaitingResponse: false, peerBufAlloc: 0, peerFwdCnt: 0, rxCnt: 0, fwdCnt: 0, ownBytes: 0, fwdCntAnnounced: 0, creditUpdateQueued: false, early: Buffer.alloc(0), pendingOut: [], watching: 0, hostDone: false, guestDone: false, hostWriteShut: false, guestNoRecv: false, closing: false, hungUp: false };
    this.connections.set(this.key(hostPort, guestPort), c);
    this.opts.poller.add(fd, (ev) => this.safely(() => this.onSocket(c, ev)), 0);
    this.counters.connectionsOpened++;
    return c;
  }

  private live(c: Connection): boolean {
    return this.connections.get(this.key(c.hostPort, c.guestPort)) === c;
  }

  private watch(c: Connection): void {
    if (!this.live(c) || c.hungUp) return;
    const reading = c.established && !c.hostDone && !c.guestNoRecv && !this.rxStarved && !this.holdingRx && this.credit(c) > 0;
    const want = (reading ? EPOLLIN : 0) | (c.pendingOut.length > 0 ? EPOLLOUT : 0);
    if (want !== c.watching) {
      c.watching = want;
      this.opts.poller.modify(c.fd, want);
    }
  }

  /** Bytes the guest can still take. A guest claiming to have forwarded more than it was sent gets no extra room. */
  private credit(c: Connection): number {
    const inFlight = (c.rxCnt - c.peerFwdCnt) | 0;
    return c.peerBufAlloc - Math.max(0, inFlight);
  }

  private drop(c: Connection): void {
    if (!this.connections.delete(this.key(c.hostPort, c.guestPort))) return;
    if (!c.hungUp) this.opts.poller.remove(c.fd);
    closeFd(c.fd);
  }

  private resetConnection(c: Connection): void {
    this.counters.resets++;
    this.queueControl(c, VSOCK_OP.RST);
    this.drop(c);
  }

  /** Both sides are done: what the guest sent still goes to the host, then the guest gets RST. */
  private finish(c: Connection): void {
    c.closing = true;
    this.flushOut(c);
  }

  private onSocket(c: Connection, events: number): void {
    if (events & EPOLLERR) this.resetConnection(c);
    if (this.live(c) && events & EPOLLOUT) this.flushOut(c);
    if (this.live(c) && events & (EPOLLIN | EPOLLHUP)) this.readHost(c);
    // A hang-up is reported whatever the interest: if the rest cannot be read now (no credit or no
    // receive buffers), take the socket out of the epoll set and read the rest from flushRx, as
    // credit and buffers come back, rather than spin on it or lose it.
    if (this.live(c) && events & EPOLLHUP && c.watching !== EPOLLIN) {
      this.opts.poller.remove(c.fd);
      c.hungUp = true;
    }
    this.flushRx();
  }

  /** Moves host bytes to the guest while it has credit and receive buffers. */
  private readHost(c: Connection): void {
    const rx = this.queues?.[RX];
    if (!rx || !this.live(c) || this.holdingRx) return;
    while (this.credit(c) > 0 && !c.hostDone && !c.guestNoRecv) {
      // Control packets go first, and without receive buffers nothing can move: stop watching the
      // socket for input (a level-triggered fd would spin) until flushRx re-arms it.
      const chain = this.control.length > 0 ? undefined : rx.pop();
      if (!chain) {
        if (this.control.length === 0) this.rxStarved = true; // re-armed by the guest's next RX notify
        c.watching = -1;
        if (!c.hungUp) this.opts.poller.modify(c.fd, c.pendingOut.length > 0 ? EPOLLOUT : 0);
        return;
      }
      const room = chain.error ? 0 : chain.segments.reduce((n, s) => n + (s.writable ? s.len : 0), 0) - HDR;
      if (room <= 0) {
        this.invalid();
        rx.push(chain.head, 0);
        continue;
      }
      const max = Math.min(room, this.credit(c), MAX_PAYLOAD);
      let n: number;
      if (c.early.length > 0) {
        // Bytes that came with the CONNECT line go first.
        n = Math.min(max, c.early.length);
        c.early.copy(this.scratch, 0, 0, n);
        c.early = c.early.subarray(n);
      } else {
        n = readSome(c.fd, this.scratch, max);
      }
      if (n === -1) {
        rx.unpop();
        break;
      }
      if (n === 0 && c.hungUp) {
        // Everything the host sent before hanging up is delivered; it takes nothing more either.
        rx.unpop();
        this.queueControl(c, c.guestDone ? VSOCK_OP.RST : VSOCK_OP.SHUTDOWN, c.guestDone ? 0 : 3);
        this.drop(c);
        return;
      }
      if (n === 0) {
        // End of stream: the host sends nothing more, but may still read what the guest sends.
        rx.unpop();
        c.hostDone = true;
        this.queueControl(c, VSOCK_OP.SHUTDOWN, SHUTDOWN_SEND);
        if (c.guestDone) this.finish(c);
        else this.watch(c);
        return;
      }
      if (n < 0) {
        rx.unpop();
        this.queueControl(c, VSOCK_OP.RST);
        this.drop(c);
        return;
      }
      rx.push(chain.head, scatter(this.mem, chain.segments, this.encode(c, { srcPort: c.hostPort, dstPort: c.guestPort, op: VSOCK_OP.RW, payload: this.scratch.subarray(0, n) })));
      c.rxCnt = (c.rxCnt + n) >>> 0;
      this.counters.rxPackets++;
      this.counters.rxBytes += n;
      this.io?.usedBuffers([rx]);
    }
    this.watch(c);
  }

  private flushOut(c: Connection): void {
    while (c.pendingOut.length > 0) {
      const head = c.pendingOut[0];
      const n = writeSome(c.fd, head);
      if (n < 0) return this.resetConnection(c);
      if (n === 0) break;
      // fwd_cnt counts the guest's bytes only: a guest (Linux) that is told more than it sent
      // computes negative credit and never sends again.
      const own = Math.min(n, c.ownBytes);
      c.ownBytes -= own;
      c.fwdCnt = (c.fwdCnt + n - own) >>> 0;
      if (n < head.length) c.pendingOut[0] = head.subarray(n);
      else c.pendingOut.shift();
    }
    if (c.pendingOut.length === 0) {
      if (c.closing) {
        this.queueControl(c, VSOCK_OP.RST);
        return this.drop(c);
      }
      if (c.guestDone && !c.hostWriteShut) {
        c.hostWriteShut = true;
        shutdownWrite(c.fd);
      }
    }
    // Tell the guest about freed space before it runs out (once; the update carries the latest count).
    if (!c.creditUpdateQueued && ((c.fwdCnt - c.fwdCntAnnounced) >>> 0) >= BUF_ALLOC / 4) {
      c.creditUpdateQueued = true;
      this.queueControl(c, VSOCK_OP.CREDIT_UPDATE);
    }
    this.watch(c);
  }

  // ---- guest side

  private queueControl(c: Connection | { hostPort: number; guestPort: number }, op: number, flags = 0): void {
    this.control.push({ srcPort: c.hostPort, dstPort: c.guestPort, op, flags, fwdCnt: 'fwdCnt' in c ? c.fwdCnt : 0 });
  }

  private encode(c: Connection | undefined, p: Packet): Buffer {
    const len = p.payload?.length ?? 0;
    const b = Buffer.alloc(HDR + len);
    b.writeBigUInt64LE(BigInt(HOST_CID), 0);
    b.writeBigUInt64LE(BigInt(this.opts.guestCid), 8);
    b.writeUInt32LE(p.srcPort, 16);
    b.writeUInt32LE(p.dstPort, 20);
    b.writeUInt32LE(len, 24);
    b.writeUInt16LE(TYPE_STREAM, 28);
    b.writeUInt16LE(p.op, 30);
    b.writeUInt32LE(p.flags ?? 0, 32);
    b.writeUInt32LE(BUF_ALLOC, 36);
    const fwd = c ? c.fwdCnt : (p.fwdCnt ?? 0);
    b.writeUInt32LE(fwd, 40);
    if (c) {
      c.fwdCntAnnounced = fwd;
      if (p.op === VSOCK_OP.CREDIT_UPDATE) c.creditUpdateQueued = false;
    }
    if (p.payload) p.payload.copy(b, HDR);
    return b;
  }

  /**
   * Delivers queued control packets, then moves bytes that came with CONNECT lines and lets
   * connections with data read again. Moving those bytes can end a connection (a SHUTDOWN to
   * deliver), so it goes round until nothing is left or the guest's receive buffers run out; each
   * round either empties an early buffer or stops, so it ends.
   */
  private flushRx(): void {
    const rx = this.queues?.[RX];
    if (!rx || this.holdingRx) return;
    for (;;) {
      let used = false;
      while (this.control.length > 0) {
        const chain = rx.pop();
        if (!chain) {
          this.rxStarved = true;
          break;
        }
        const room = chain.error ? 0 : chain.segments.reduce((n, s) => n + (s.writable ? s.len : 0), 0);
        if (room < HDR) {
          this.invalid();
          rx.push(chain.head, 0);
          used = true;
          continue;
        }
        const p = this.control.shift()!;
        const c = this.connections.get(this.key(p.srcPort, p.dstPort));
        rx.push(chain.head, scatter(this.mem, chain.segments, this.encode(c, p)));
        this.counters.rxPackets++;
        used = true;
      }
      if (used) this.io?.usedBuffers([rx]);
      if (this.control.length > 0) return;
      // Bytes that came with the CONNECT line are not in the socket any more, and a hung-up socket
      // is out of the epoll set: epoll would never report either, so they are read here, as
      // receive buffers and credit allow.
      const pumped = [...this.connections.values()].filter((c) => c.established && (c.early.length > 0 || c.hungUp));
      for (const c of this.connections.values()) if (c.established && c.early.length === 0) this.watch(c);
      if (pumped.length === 0) return;
      const state = () => pumped.map((c) => (this.live(c) ? `${c.early.length}:${c.rxCnt}` : '-')).join(',');
      const before = state();
      for (const c of pumped) this.readHost(c);
      if (state() === before && this.control.length === 0) return; // no buffers or credit: the guest's next RX notify or credit update resumes
    }
  }

  private invalid(): void {
    this.counters.invalidPackets++;
    this.opts.onMalformed?.();
  }

  private processTx(): void {
    const tx = this.queues![TX];
    try {
      // Backpressure: while replies wait for receive buffers, leave further requests in the queue.
      for (let chain = this.control.length < MAX_CONTROL ? tx.pop() : undefined; chain; chain = this.control.length < MAX_CONTROL ? tx.pop() : undefined) {
        const bytes = chain.error ? Buffer.alloc(0) : gather(this.mem, chain.segments, HDR + MAX_PAYLOAD);
        tx.push(chain.head, 0);
        if (bytes.length < HDR) {
          this.invalid();
          continue;
        }
        this.handlePacket(Buffer.from(bytes));
      }
    } catch (err) {
      this.io!.fail((err as Error).message);
      return;
    }
    this.io!.usedBuffers([tx]);
    this.flushRx();
  }

  private handlePacket(b: Buffer): void {
    const srcCid = Number(b.readBigUInt64LE(0));
    const dstCid = Number(b.readBigUInt64LE(8));
    const guestPort = b.readUInt32LE(16);
    const hostPort = b.readUInt32LE(20);
    const len = b.readUInt32LE(24);
    const type = b.readUInt16LE(28);
    const op = b.readUInt16LE(30);
    if (len > b.length - HDR || srcCid !== this.opts.guestCid || type !== TYPE_STREAM) return this.invalid();
    this.counters.txPackets++;
    const peer = { hostPort, guestPort };
    if (dstCid !== HOST_CID) {
      if (op !== VSOCK_OP.RST) this.queueControl(peer, VSOCK_OP.RST);
      return;
    }
    const c = this.connections.get(this.key(hostPort, guestPort));
    if (c) {
      c.peerBufAlloc = b.readUInt32LE(36);
      c.peerFwdCnt = b.readUInt32LE(40);
    }
    switch (op) {
      case VSOCK_OP.REQUEST: {
        if (c) return this.resetConnection(c);
        if (this.connections.size + this.handshakes.size >= MAX_CONNECTIONS) {
          this.counters.connectionsRefused++;
          return this.queueControl(peer, VSOCK_OP.RST);
        }
        const fd = connectUnix(`${this.opts.udsPath}_${hostPort}`);
        if (fd < 0) {
          this.counters.connectionsRefused++;
          return this.queueControl(peer, VSOCK_OP.RST);
        }
        const n = this.open(hostPort, guestPort, fd, true);
        n.peerBufAlloc = b.readUInt32LE(36);
        n.peerFwdCnt = b.readUInt32LE(40);
        this.queueControl(n, VSOCK_OP.RESPONSE);
        return;
      }
      case VSOCK_OP.RESPONSE:
        if (!c || !c.awaitingResponse) return this.queueControl(peer, VSOCK_OP.RST);
        c.awaitingResponse = false;
        c.established = true;
        const ok = Buffer.from(`OK ${c.hostPort}\n`);
        c.ownBytes += ok.length;
        c.pendingOut.push(ok);
        this.flushOut(c); // may reset the connection (the host went away)
        if (this.live(c) && c.early.length > 0) this.readHost(c);
        return;
      case VSOCK_OP.RW: {
        if (!c || !c.established) return this.queueControl(peer, VSOCK_OP.RST);
        if (c.guestDone) {
          // Data after the guest said it sends nothing more: a broken peer.
          this.invalid();
          return this.resetConnection(c);
        }
        if (len === 0) return;
        const queued = c.pendingOut.reduce((n, x) => n + x.length, 0);
        if (queued + len > BUF_ALLOC) {
          // More than the credit fc-run gave: the guest ignored flow control.
          this.invalid();
          return this.resetConnection(c);
        }
        const data = Buffer.from(b.subarray(HDR, HDR + len));
        this.counters.txBytes += len;
        c.pendingOut.push(data);
        this.flushOut(c);
        return;
      }
      case VSOCK_OP.CREDIT_REQUEST:
        if (c && !c.creditUpdateQueued) {
          c.creditUpdateQueued = true;
          this.queueControl(c, VSOCK_OP.CREDIT_UPDATE);
        }
        return;
      case VSOCK_OP.CREDIT_UPDATE:
        if (c?.hungUp) this.readHost(c);
        else if (c) this.watch(c);
        return;
      case VSOCK_OP.SHUTDOWN: {
        if (!c) return;
        const flags = b.readUInt32LE(32);
        if (flags & SHUTDOWN_RCV) c.guestNoRecv = true;
        if (flags & SHUTDOWN_SEND) c.guestDone = true;
        // Closed both ways (the guest's close(), or each side's half): deliver what is left, then RST.
        if ((c.guestDone && c.guestNoRecv) || (c.guestDone && c.hostDone)) return this.finish(c);
        this.flushOut(c); // passes the end of stream on once the pending bytes are written
        return;
      }
      case VSOCK_OP.RST:
        if (c) this.drop(c);
        return;
      default:
        this.invalid();
        if (c) this.resetConnection(c);
    }
  }
}
