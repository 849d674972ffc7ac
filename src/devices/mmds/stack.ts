import { randomBytes } from 'node:crypto';
import { HttpResponse, MmdsService, parseRequest, serializeResponse } from './service';

/**
 * The network stack that carries MMDS requests: just enough Ethernet, ARP, IPv4 and TCP for a
 * guest to reach an HTTP server at one address on one interface, inside fc-run.
 *
 * Frames the guest sends to the MMDS address are handed to `handleFrame` instead of the TAP
 * device; replies are pulled with `nextFrame` when the guest has a receive buffer for them, so
 * the stack never queues more than it decided to send. Every field a guest controls is checked,
 * and memory is bounded whatever it sends: at most `maxConnections` connections (the least
 * recently active one is reset to admit a new one), a request buffer per connection, a response
 * backlog per connection, and a bounded queue of ARP replies and resets.
 *
 * What it is not: a general TCP. It is a passive server on port 80 that accepts in-order data
 * only (a segment beyond the next expected byte is dropped and the guest told where it stands, so
 * it retransmits), sends within the guest's advertised window, and has no retransmission timer:
 * its segments go straight into the guest's receive buffers, where they are not lost; a guest
 * that reports a gap with three duplicate ACKs gets the unacknowledged bytes again.
 */

export const MMDS_MAC = Buffer.from([0x06, 0x01, 0x23, 0x45, 0x67, 0x01]);
export const MMDS_TCP_PORT = 80;

const ETH_HDR = 14;
const ETHERTYPE_IPV4 = 0x0800;
const ETHERTYPE_ARP = 0x0806;
const IP_HDR = 20;
const PROTO_TCP = 6;
const TCP_HDR = 20;
const F = { FIN: 0x01, SYN: 0x02, RST: 0x04, PSH: 0x08, ACK: 0x10 } as const;
/** Request bytes held per connection: also the receive window fc-run advertises. */
export const MMDS_INBOX_MAX = 8192;
/** Responses waiting to be sent per connection before further requests wait in the inbox. */
export const MMDS_OUTBOX_HIGH = 64 * 1024;
const INBOX_MAX = MMDS_INBOX_MAX;
const OUTBOX_HIGH = MMDS_OUTBOX_HIGH;
const DEFAULT_MSS = 536; // RFC 9293's default when the guest sends no MSS option
const MAX_MSS = 1460;

export interface MmdsStackOptions {
  /** The MMDS IPv4 address, e.g. 169.254.169.254. */
  ipv4: string;
  service: MmdsService;
  mac?: Buffer;
  maxConnections?: number;
  maxPendingFrames?: number;
  clock?: () => number;
}

export interface MmdsStackCounters {
  /** Frames addressed to the MMDS (taken from the guest's traffic, never sent to the TAP). */
  framesIn: number;
  framesOut: number;
  /** Bytes of the frames sent to the guest. */
  bytesOut: number;
  arpReplies: number;
  /** Truncated frames, bad checksums, fragments, options or lengths that do not add up. */
  badFrames: number;
  /** IPv4 to the MMDS address that is not TCP. */
  unsupported: number;
  outOfOrder: number;
  connectionsOpened: number;
  connectionsEvicted: number;
  resetsSent: number;
  /** Replies dropped because the guest did not take frames (the pending queue was full). */
  repliesDropped: number;
}

export interface MmdsStackFootprint {
  connections: number;
  /** ARP replies and resets waiting for the guest. */
  pendingFrames: number;
  /** Request bytes held, over all connections (at most INBOX_MAX each). */
  inboxBytes: number;
  /** Response bytes not yet acknowledged, over all connections. */
  outboxBytes: number;
  largestOutbox: number;
}

interface Conn {
  key: string;
  guestMac: Buffer;
  guestIp: number;
  guestPort: number;
  /** Our initial sequence number; the SYN occupies it. */
  iss: number;
  /** Oldest unacknowledged sequence number and next one to send. */
  sndUna: number;
  sndNxt: number;
  /** Highest sequence number sent so far (sndNxt moves back below it to send again). */
  sndMax: number;
  rcvNxt: number;
  established: boolean;
  peerWindow: number;
  mss: number;
  inbox: Buffer;
  /** Response bytes from sndUna on (after the SYN is acknowledged). */
  outbox: Buffer;
  synAckDue: boolean;
  ackDue: boolean;
  /** Send a FIN once the outbox is sent (the guest finished, or asked for Connection: close). */
  closeAfterSend: boolean;
  finSent: boolean;
  /** Sequence number of our FIN once sent, and whether the guest acknowledged it. */
  finSeq: number | undefined;
  finAcked: boolean;
  peerFin: boolean;
  /** The guest sent something that cannot be answered: further input is ignored. */
  broken: boolean;
  dupAcks: number;
  /** The receive window last told to the guest. */
  windowAdvertised: number;
  lastActive: number;
}

function parseIpv4(text: string): number {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(text);
  if (!m || m.slice(1).some((p) => Number(p) > 255)) throw new Error(`not an IPv4 address: ${text}`);
  return m.slice(1).reduce((n, p) => n * 256 + Number(p), 0);
}

/** One's-complement sum of 16-bit words (not yet folded or inverted). */
function sum16(b: Buffer, start: number, end: number, initial = 0): number {
  let s = initial;
  let i = start;
  for (; i + 1 < end; i += 2) s += b.readUInt16BE(i);
  if (i < end) s += b[i] << 8;
  return s;
}

function fold(s: number): number {
  while (s > 0xffff) s = (s & 0xffff) + Math.floor(s / 0x10000);
  return s;
}

/** The TCP checksum's pseudo-header sum. */
function pseudoSum(src: number, dst: number, tcpLen: number): number {
  return (src >>> 16) + (src & 0xffff) + (dst >>> 16) + (dst & 0xffff) + PROTO_TCP + tcpLen;
}

/** a - b in sequence space, as a signed 32-bit number. */
function seqDiff(a: number, b: number): number {
  return (a - b) | 0;
}

const u32 = (n: number) => n >>> 0;

export class MmdsNetworkStack {
  readonly counters: MmdsStackCounters = { framesIn: 0, framesOut: 0, bytesOut: 0, arpReplies: 0, badFrames: 0, unsupported: 0, outOfOrder: 0, connectionsOpened: 0, connectionsEvicted: 0, resetsSent: 0, repliesDropped: 0 };
  private readonly ip: number;
  private readonly mac: Buffer;
  private readonly maxConnections: number;
  private readonly maxPending: number;
  private readonly clock: () => number;
  private readonly conns = new Map<string, Conn>();
  /** ARP replies and resets, built when decided; bounded. */
  private readonly pending: Buffer[] = [];
  private ipId = 0;
  /** Where the round-robin over connections starts next. */
  private turn = 0;

  constructor(private readonly opts: MmdsStackOptions) {
    this.ip = parseIpv4(opts.ipv4);
    this.mac = opts.mac ?? MMDS_MAC;
    this.maxConnections = opts.maxConnections ?? 30;
    this.maxPending = opts.maxPendingFrames ?? 100;
    this.clock = opts.clock ?? Date.now;
  }

  get connectionCount(): number {
    return this.conns.size;
  }

  /** What the guest's traffic holds in memory here: every part of it has a fixed bound. */
  footprint(): MmdsStackFootprint {
    let inboxBytes = 0;
    let outboxBytes = 0;
    let largestOutbox = 0;
    for (const c of this.conns.values()) {
      inboxBytes += c.inbox.length;
      outboxBytes += c.outbox.length;
      largestOutbox = Math.max(largestOutbox, c.outbox.length);
    }
    return { connections: this.conns.size, pendingFrames: this.pending.length, inboxBytes, outboxBytes, largestOutbox };
  }

  /** Whether a frame is waiting for the guest. */
  hasOutput(): boolean {
    if (this.pending.length > 0) return true;
    for (const c of this.conns.values()) if (this.wantsToSend(c)) return true;
    return false;
  }

  /**
   * A frame the guest sent (Ethernet, without the virtio-net header). Returns true when it was
   * for the MMDS, which then owns it: such frames never reach the TAP, valid or not.
   * `checksumPartial`: the guest asked for TCP checksum offload, so the TCP checksum field only
   * holds the pseudo-header sum.
   */
  handleFrame(frame: Buffer, checksumPartial = false): boolean {
    if (frame.length < ETH_HDR) return false;
    const type = frame.readUInt16BE(12);
    if (type === ETHERTYPE_ARP) {
      // An ARP packet is ours when it asks for the MMDS address.
      if (frame.length < ETH_HDR + 28 || frame.readUInt32BE(ETH_HDR + 24) !== this.ip) return false;
      this.counters.framesIn++;
      this.onArp(frame);
      return true;
    }
    if (type !== ETHERTYPE_IPV4 || frame.length < ETH_HDR + IP_HDR || frame.readUInt32BE(ETH_HDR + 16) !== this.ip) return false;
    this.counters.framesIn++;
    this.onIpv4(frame, checksumPartial);
    return true;
  }

  private onArp(f: Buffer): void {
    const a = ETH_HDR;
    // Ethernet/IPv4 request: htype 1, ptype 0x0800, hlen 6, plen 4, oper 1.
    if (f.readUInt16BE(a) !== 1 || f.readUInt16BE(a + 2) !== ETHERTYPE_IPV4 || f[a + 4] !== 6 || f[a + 5] !== 4 || f.readUInt16BE(a + 6) !== 1) {
      this.counters.badFrames++;
      return;
    }
    const senderMac = f.subarray(a + 8, a + 14);
    const senderIp = f.readUInt32BE(a + 14);
    const r = Buffer.alloc(ETH_HDR + 28);
    senderMac.copy(r, 0);
    this.mac.copy(r, 6);
    r.writeUInt16BE(ETHERTYPE_ARP, 12);
    r.writeUInt16BE(1, a);
    r.writeUInt16BE(ETHERTYPE_IPV4, a + 2);
    r[a + 4] = 6;
    r[a + 5] = 4;
    r.writeUInt16BE(2, a + 6);
    this.mac.copy(r, a + 8);
    r.writeUInt32BE(this.ip, a + 14);
    senderMac.copy(r, a + 18);
    r.writeUInt32BE(senderIp, a + 24);
    if (this.queue(r)) this.counters.arpReplies++;
  }

  private queue(frame: Buffer): boolean {
    if (this.pending.length >= this.maxPending) {
      this.counters.repliesDropped++;
      return false;
    }
    this.pending.push(frame);
    return true;
  }

  private onIpv4(f: Buffer, checksumPartial: boolean): void {
    const ip = ETH_HDR;
    const ihl = (f[ip] & 0x0f) * 4;
    const total = f.readUInt16BE(ip + 2);
    const fragment = f.readUInt16BE(ip + 6) & 0x3fff; // MF flag or an offset
    if (f[ip] >> 4 !== 4 || ihl < IP_HDR || total < ihl || ip + total > f.length || fold(sum16(f, ip, ip + ihl)) !== 0xffff || fragment !== 0) {
      this.counters.badFrames++;
      return;
    }
    if (f[ip + 9] !== PROTO_TCP) {
      this.counters.unsupported++;
      return;
    }
    const t = ip + ihl;
    const tcpLen = total - ihl;
    const dataOff = tcpLen >= TCP_HDR ? (f[t + 12] >> 4) * 4 : 0;
    const src = f.readUInt32BE(ip + 12);
    if (dataOff < TCP_HDR || dataOff > tcpLen || (!checksumPartial && fold(sum16(f, t, t + tcpLen, pseudoSum(src, this.ip, tcpLen))) !== 0xffff)) {
      this.counters.badFrames++;
      return;
    }
    this.onTcp({
      mac: Buffer.from(f.subarray(6, 12)),
      src,
      srcPort: f.readUInt16BE(t),
      dstPort: f.readUInt16BE(t + 2),
      seq: f.readUInt32BE(t + 4),
      ack: f.readUInt32BE(t + 8),
      flags: f[t + 13],
      window: f.readUInt16BE(t + 14),
      options: f.subarray(t + TCP_HDR, t + dataOff),
      payload: f.subarray(t + dataOff, t + tcpLen),
    });
  }

  private onTcp(s: Segment): void {
    const key = `${s.src}:${s.srcPort}`;
    const c = s.dstPort === MMDS_TCP_PORT ? this.conns.get(key) : undefined;
    if (s.flags & F.RST) {
      // Accept a reset that lands in the window we expect (RFC 5961's exact-match is stricter
      // than needed here: a guest can only reset its own connections).
      if (c && seqDiff(s.seq, c.rcvNxt) >= 0 && seqDiff(s.seq, c.rcvNxt) <= INBOX_MAX) this.conns.delete(key);
      return;
    }
    if (!c) {
      if (s.dstPort === MMDS_TCP_PORT && s.flags & F.SYN && !(s.flags & F.ACK)) this.accept(key, s);
      else this.reset(s);
      return;
    }
    c.lastActive = this.clock();
    c.guestMac = s.mac;
    if (s.flags & F.SYN) {
      // A retransmitted SYN gets the SYN-ACK again; any other SYN ends the connection.
      if (!c.established && !(s.flags & F.ACK) && u32(s.seq + 1) === c.rcvNxt) c.synAckDue = true;
      else this.abort(c);
      return;
    }
    if (!(s.flags & F.ACK)) return; // every segment after the SYN carries an ACK
    if (!this.onAck(c, s)) return;
    this.onData(c, s);
    // Acknowledged responses make room for the requests still waiting.
    this.serve(c);
    // Both sides closed and everything acknowledged; a FIN still to acknowledge is sent first.
    if (c.finAcked && c.peerFin && !c.ackDue) this.conns.delete(key);
  }

  /** Processes the acknowledgment; false when the segment is to be ignored. */
  private onAck(c: Conn, s: Segment): boolean {
    if (!c.established) {
      // The handshake's ACK must acknowledge the SYN exactly; anything else is answered with a
      // reset (RFC 9293, SYN-RECEIVED) and changes nothing.
      if (s.ack !== u32(c.iss + 1)) {
        this.reset(s);
        return false;
      }
      c.established = true;
      c.sndUna = s.ack;
      if (seqDiff(c.sndNxt, c.sndUna) < 0) c.sndNxt = c.sndUna;
      c.peerWindow = s.window;
      return true;
    }
    if (seqDiff(s.ack, c.sndMax) > 0) {
      // It acknowledges bytes never sent: tell the guest where we are, ignore the rest.
      c.ackDue = true;
      return false;
    }
    const advance = seqDiff(s.ack, c.sndUna);
    if (advance > 0) {
      let bytes = advance;
      if (c.finSeq !== undefined && !c.finAcked && seqDiff(s.ack, c.finSeq) > 0) {
        c.finAcked = true;
        bytes--;
      }
      c.outbox = c.outbox.subarray(Math.min(bytes, c.outbox.length));
      c.sndUna = s.ack;
      // After a rewind, what the guest acknowledges need not be sent again.
      if (seqDiff(c.sndNxt, c.sndUna) < 0) c.sndNxt = c.sndUna;
      c.dupAcks = 0;
    } else if (advance === 0 && s.payload.length === 0 && !(s.flags & F.FIN) && s.window === c.peerWindow && c.sndMax !== c.sndUna) {
      // Three duplicate ACKs (same ack, same window, nothing else): the guest missed something;
      // send again from what it has.
      if (++c.dupAcks >= 3) {
        c.dupAcks = 0;
        c.sndNxt = c.sndUna;
        if (!c.finAcked) c.finSent = false;
      }
    }
    if (advance >= 0) c.peerWindow = s.window;
    return true;
  }

  private onData(c: Conn, s: Segment): void {
    const fin = (s.flags & F.FIN) !== 0;
    if (s.payload.length === 0 && !fin) {
      // A segment that is not where we expect (a window probe, say) is answered with an ACK.
      if (s.seq !== c.rcvNxt) c.ackDue = true;
      return;
    }
    c.ackDue = true;
    const offset = seqDiff(c.rcvNxt, s.seq); // bytes of this segment already received
    if (offset < 0) {
      this.counters.outOfOrder++;
      return;
    }
    if (c.peerFin) return; // a retransmitted FIN or data after it
    const fresh = offset < s.payload.length ? s.payload.subarray(offset) : Buffer.alloc(0);
    const room = c.broken ? fresh.length : INBOX_MAX - c.inbox.length;
    const taken = fresh.subarray(0, Math.max(0, room));
    if (!c.broken && taken.length > 0) c.inbox = Buffer.concat([c.inbox, taken]);
    c.rcvNxt = u32(c.rcvNxt + taken.length);
    if (fin && taken.length === fresh.length && offset <= s.payload.length) {
      c.rcvNxt = u32(c.rcvNxt + 1);
      c.peerFin = true;
    }
  }

  /** Answers the complete requests in the inbox while the response backlog allows. */
  private serve(c: Conn): void {
    while (!c.broken && c.outbox.length < OUTBOX_HIGH && c.inbox.length > 0) {
      const r = parseRequest(c.inbox);
      if (r.kind === 'incomplete') break;
      if (r.kind === 'error') {
        this.respond(c, { status: r.status, headers: { 'Content-Type': 'text/plain', Connection: 'close' }, body: r.status === 413 ? 'request too large' : 'malformed request' });
        this.opts.service.counters.requests++;
        this.opts.service.counters.badRequests++;
        c.broken = true;
        c.inbox = Buffer.alloc(0);
        c.closeAfterSend = true;
        break;
      }
      c.inbox = c.inbox.subarray(r.consumed);
      const close = /(^|,)\s*close\s*($|,)/i.test(r.request.headers.get('connection') ?? '');
      const response = this.opts.service.handle(r.request);
      if (close) response.headers = { ...response.headers, Connection: 'close' };
      this.respond(c, response);
      if (close) {
        c.closeAfterSend = true;
        c.broken = true; // nothing after a "Connection: close" request is answered
        c.inbox = Buffer.alloc(0);
      }
    }
    // The guest finished sending: an unfinished request can never complete.
    if (c.peerFin && (c.inbox.length === 0 || parseRequest(c.inbox).kind === 'incomplete')) c.closeAfterSend = true;
    // A window that reopened by a segment's worth is announced (the guest may be waiting on it).
    if (c.established && this.window(c) - c.windowAdvertised >= Math.min(c.mss, INBOX_MAX / 2)) c.ackDue = true;
  }

  private respond(c: Conn, r: HttpResponse): void {
    c.outbox = Buffer.concat([c.outbox, serializeResponse(r)]);
  }

  private accept(key: string, s: Segment): void {
    if (this.conns.size >= this.maxConnections) {
      let oldest: Conn | undefined;
      for (const c of this.conns.values()) if (!oldest || c.lastActive < oldest.lastActive) oldest = c;
      this.abort(oldest!);
      this.counters.connectionsEvicted++;
    }
    let mss = DEFAULT_MSS;
    for (let i = 0; i < s.options.length; ) {
      const kind = s.options[i];
      if (kind === 0) break;
      if (kind === 1) {
        i++;
        continue;
      }
      const len = s.options[i + 1];
      if (len === undefined || len < 2 || i + len > s.options.length) break;
      if (kind === 2 && len === 4) mss = s.options.readUInt16BE(i + 2);
      i += len;
    }
    const iss = randomBytes(4).readUInt32BE(0);
    this.conns.set(key, {
      key,
      guestMac: s.mac,
      guestIp: s.src,
      guestPort: s.srcPort,
      iss,
      sndUna: iss,
      sndNxt: u32(iss + 1),
      sndMax: u32(iss + 1),
      rcvNxt: u32(s.seq + 1),
      established: false,
      peerWindow: s.window,
      mss: Math.max(64, Math.min(mss, MAX_MSS)),
      inbox: Buffer.alloc(0),
      outbox: Buffer.alloc(0),
      synAckDue: true,
      ackDue: false,
      closeAfterSend: false,
      finSent: false,
      finSeq: undefined,
      finAcked: false,
      peerFin: false,
      broken: false,
      dupAcks: 0,
      windowAdvertised: INBOX_MAX,
      lastActive: this.clock(),
    });
    this.counters.connectionsOpened++;
  }

  /** Ends a connection with a reset. */
  private abort(c: Conn): void {
    this.conns.delete(c.key);
    if (this.queue(this.segment(c.guestMac, c.guestIp, c.guestPort, c.sndNxt, c.rcvNxt, F.RST | F.ACK, 0))) this.counters.resetsSent++;
  }

  /** Answers a segment that belongs to no connection (RFC 9293's reset generation). */
  private reset(s: Segment): void {
    const len = s.payload.length + (s.flags & F.SYN ? 1 : 0) + (s.flags & F.FIN ? 1 : 0);
    const frame = s.flags & F.ACK ? this.segment(s.mac, s.src, s.srcPort, s.ack, 0, F.RST, 0, undefined, s.dstPort) : this.segment(s.mac, s.src, s.srcPort, 0, u32(s.seq + len), F.RST | F.ACK, 0, undefined, s.dstPort);
    if (this.queue(frame)) this.counters.resetsSent++;
  }

  /** Whether frameFor would produce a frame (kept in step with it). */
  private wantsToSend(c: Conn): boolean {
    if (c.synAckDue) return true;
    if (!c.established) return false;
    if (c.ackDue) return true;
    const sent = seqDiff(c.sndNxt, c.sndUna);
    const unsent = c.outbox.length - sent;
    return (unsent > 0 && c.peerWindow - sent > 0) || (unsent === 0 && c.closeAfterSend && !c.finSent);
  }

  /** The next frame for the guest, or undefined. */
  nextFrame(): Buffer | undefined {
    const queued = this.pending.shift();
    if (queued) return this.sent(queued);
    const all = [...this.conns.values()];
    for (let i = 0; i < all.length; i++) {
      const c = all[(this.turn + i) % all.length];
      const f = this.frameFor(c);
      if (f) {
        this.turn = (this.turn + i + 1) % Math.max(1, all.length);
        return this.sent(f);
      }
    }
    return undefined;
  }

  private sent(f: Buffer): Buffer {
    this.counters.framesOut++;
    this.counters.bytesOut += f.length;
    return f;
  }

  private frameFor(c: Conn): Buffer | undefined {
    if (c.synAckDue) {
      c.synAckDue = false;
      const mss = Buffer.from([2, 4, MAX_MSS >> 8, MAX_MSS & 0xff]);
      return this.send(c, c.iss, F.SYN | F.ACK, mss);
    }
    if (!c.established) return undefined;
    const sent = seqDiff(c.sndNxt, c.sndUna);
    const unsent = c.outbox.length - sent;
    const room = c.peerWindow - sent;
    if (unsent > 0 && room > 0) {
      const n = Math.min(unsent, room, c.mss);
      const f = this.send(c, c.sndNxt, F.ACK | (n === unsent ? F.PSH : 0), undefined, c.outbox.subarray(sent, sent + n));
      this.advance(c, n);
      return f;
    }
    if (unsent === 0 && c.closeAfterSend && !c.finSent) {
      c.finSent = true;
      c.finSeq = c.sndNxt;
      const f = this.send(c, c.sndNxt, F.FIN | F.ACK);
      this.advance(c, 1);
      return f;
    }
    if (c.ackDue) {
      const f = this.send(c, c.sndNxt, F.ACK);
      if (c.finAcked && c.peerFin) this.conns.delete(c.key);
      return f;
    }
    return undefined;
  }

  private advance(c: Conn, n: number): void {
    c.sndNxt = u32(c.sndNxt + n);
    if (seqDiff(c.sndNxt, c.sndMax) > 0) c.sndMax = c.sndNxt;
  }

  /** A segment of connection `c`; every one acknowledges what was received and gives the window. */
  private send(c: Conn, seq: number, flags: number, options?: Buffer, payload?: Buffer): Buffer {
    c.ackDue = false;
    c.windowAdvertised = this.window(c);
    return this.segment(c.guestMac, c.guestIp, c.guestPort, seq, c.rcvNxt, flags, c.windowAdvertised, options, MMDS_TCP_PORT, payload);
  }

  private window(c: Conn): number {
    return c.broken ? 0 : INBOX_MAX - c.inbox.length;
  }

  private segment(mac: Buffer, dstIp: number, dstPort: number, seq: number, ack: number, flags: number, window: number, options?: Buffer, srcPort = MMDS_TCP_PORT, payload?: Buffer): Buffer {
    const optLen = options?.length ?? 0;
    const dataLen = payload?.length ?? 0;
    const tcpLen = TCP_HDR + optLen + dataLen;
    const f = Buffer.alloc(ETH_HDR + IP_HDR + tcpLen);
    mac.copy(f, 0);
    this.mac.copy(f, 6);
    f.writeUInt16BE(ETHERTYPE_IPV4, 12);
    const ip = ETH_HDR;
    f[ip] = 0x45;
    f.writeUInt16BE(IP_HDR + tcpLen, ip + 2);
    f.writeUInt16BE((this.ipId = (this.ipId + 1) & 0xffff), ip + 4);
    f.writeUInt16BE(0x4000, ip + 6); // don't fragment
    f[ip + 8] = 64;
    f[ip + 9] = PROTO_TCP;
    f.writeUInt32BE(this.ip, ip + 12);
    f.writeUInt32BE(dstIp, ip + 16);
    f.writeUInt16BE(~fold(sum16(f, ip, ip + IP_HDR)) & 0xffff, ip + 10);
    const t = ip + IP_HDR;
    f.writeUInt16BE(srcPort, t);
    f.writeUInt16BE(dstPort, t + 2);
    f.writeUInt32BE(u32(seq), t + 4);
    f.writeUInt32BE(u32(ack), t + 8);
    f[t + 12] = ((TCP_HDR + optLen) / 4) << 4;
    f[t + 13] = flags;
    f.writeUInt16BE(Math.max(0, Math.min(window, 0xffff)), t + 14);
    options?.copy(f, t + TCP_HDR);
    payload?.copy(f, t + TCP_HDR + optLen);
    f.writeUInt16BE(~fold(sum16(f, t, t + tcpLen, pseudoSum(this.ip, dstIp, tcpLen))) & 0xffff, t + 16);
    return f;
  }
}

interface Segment {
  mac: Buffer;
  src: number;
  srcPort: number;
  dstPort: number;
  seq: number;
  ack: number;
  flags: number;
  window: number;
  options: Buffer;
  payload: Buffer;
}
