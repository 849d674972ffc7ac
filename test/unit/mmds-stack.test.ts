import { MmdsService } from '../../src/devices/mmds/service';
import { MMDS_MAC, MmdsNetworkStack } from '../../src/devices/mmds/stack';
import { arpFrame, F, GUEST_IP, GUEST_MAC, ip, MMDS_IP, Seg, sum16, tcpFrame } from '../helpers/guest-frames';

/**
 * The MMDS network stack spoken to with raw Ethernet frames built here, as a guest's kernel
 * would send them: ARP, a TCP handshake, HTTP requests, and every kind of broken input.
 */

const arpRequest = (target: number) => arpFrame(1, GUEST_MAC, GUEST_IP, target);

interface Reply {
  dstMac: Buffer;
  srcPort: number;
  dstPort: number;
  seq: number;
  ack: number;
  flags: number;
  window: number;
  mss?: number;
  payload: Buffer;
}

/** Parses a frame from the stack, checking its IPv4 and TCP checksums. */
function parseReply(f: Buffer): Reply {
  expect(f.readUInt16BE(12)).toBe(0x0800);
  expect(f.subarray(6, 12)).toEqual(MMDS_MAC);
  expect(sum16(f, 14, 34)).toBe(0xffff);
  const total = f.readUInt16BE(16);
  expect(f.length).toBe(14 + total);
  expect(f.readUInt32BE(26)).toBe(MMDS_IP);
  const t = 34;
  const tcpLen = total - 20;
  const dst = f.readUInt32BE(30);
  const pseudo = (MMDS_IP >>> 16) + (MMDS_IP & 0xffff) + (dst >>> 16) + (dst & 0xffff) + 6 + tcpLen;
  expect(sum16(f, t, t + tcpLen, pseudo)).toBe(0xffff);
  const off = (f[t + 12] >> 4) * 4;
  const r: Reply = { dstMac: f.subarray(0, 6), srcPort: f.readUInt16BE(t), dstPort: f.readUInt16BE(t + 2), seq: f.readUInt32BE(t + 4), ack: f.readUInt32BE(t + 8), flags: f[t + 13], window: f.readUInt16BE(t + 14), payload: Buffer.from(f.subarray(t + off, 14 + total)) };
  if (off > 20 && f[t + 20] === 2) r.mss = f.readUInt16BE(t + 22);
  return r;
}

function drain(stack: MmdsNetworkStack): Buffer[] {
  const out: Buffer[] = [];
  for (let f = stack.nextFrame(); f; f = stack.nextFrame()) out.push(f);
  return out;
}

/** A guest's TCP client, simplified: in-order, with a configurable receive window. */
class Client {
  seq = 1000;
  ack = 0;
  received = Buffer.alloc(0);
  finReceived = false;
  constructor(
    readonly stack: MmdsNetworkStack,
    readonly port = 40000,
    public window = 65535,
  ) {}

  send(flags: number, payload?: Buffer, extra: Partial<Seg> = {}): boolean {
    const took = this.stack.handleFrame(tcpFrame({ srcPort: this.port, seq: this.seq, ack: this.ack, flags, window: this.window, payload, ...extra }));
    this.seq = (this.seq + (payload?.length ?? 0) + (flags & (F.SYN | F.FIN) ? 1 : 0)) >>> 0;
    return took;
  }

  connect(): Reply {
    this.send(F.SYN, undefined, { options: Buffer.from([2, 4, 0x05, 0xb4]) });
    const [synAck] = drain(this.stack).map(parseReply);
    expect(synAck.flags).toBe(F.SYN | F.ACK);
    expect(synAck.ack).toBe(1001);
    this.ack = (synAck.seq + 1) >>> 0;
    this.send(F.ACK);
    expect(drain(this.stack)).toEqual([]); // nothing to say until a request arrives
    return synAck;
  }

  /** Takes every frame the stack has, acknowledging in-order data like a guest does. */
  pump(): Reply[] {
    const replies: Reply[] = [];
    for (let round = 0; ; round++) {
      const frames = drain(this.stack).map(parseReply);
      if (frames.length === 0) break;
      // A conversation that does not settle is a bug (e.g. ACKs answering ACKs).
      if (round >= 200) throw new Error('the stack keeps sending frames');
      let ackDue = false;
      for (const r of frames) {
        replies.push(r);
        if (r.payload.length > 0 || r.flags & F.FIN) ackDue = true; // TCP acknowledges data, not ACKs
        if (r.seq === this.ack && (r.payload.length > 0 || r.flags & F.FIN)) {
          this.received = Buffer.concat([this.received, r.payload]);
          this.ack = (this.ack + r.payload.length + (r.flags & F.FIN ? 1 : 0)) >>> 0;
          if (r.flags & F.FIN) this.finReceived = true;
        }
      }
      if (!ackDue) break;
      this.send(F.ACK);
    }
    return replies;
  }

  /** Sends a request and returns the response's status, headers and body. */
  http(request: string): { status: number; headers: string; body: string } {
    this.received = Buffer.alloc(0);
    this.send(F.ACK | F.PSH, Buffer.from(request));
    this.pump();
    return parseHttp(this.received.toString('latin1'));
  }
}

function parseHttp(text: string): { status: number; headers: string; body: string } {
  const end = text.indexOf('\r\n\r\n');
  expect(end).toBeGreaterThan(0);
  const head = text.slice(0, end);
  const length = Number(/content-length: (\d+)/i.exec(head)?.[1]);
  const body = text.slice(end + 4);
  expect(Buffer.byteLength(body, 'latin1')).toBe(length);
  return { status: Number(head.split(' ')[1]), headers: head, body };
}

const DATA = { latest: { 'meta-data': { 'ami-id': 'ami-12345678', 'instance-id': 'i-0abc', network: { mac: '06:00:00:00:00:02' } } } };

function rig(opts: { version?: 'V1' | 'V2'; clock?: () => number; maxConnections?: number; data?: unknown } = {}) {
  const service = new MmdsService({ version: opts.version ?? 'V2', imdsCompat: false, clock: opts.clock });
  service.setData(opts.data ?? DATA);
  const stack = new MmdsNetworkStack({ ipv4: '169.254.169.254', service, clock: opts.clock, maxConnections: opts.maxConnections });
  return { service, stack };
}

describe('MMDS network stack: addressing', () => {
  test('answers ARP for its address with its MAC, and lets other ARP pass', () => {
    const { stack } = rig();
    expect(stack.handleFrame(arpRequest(ip('10.0.0.1')))).toBe(false);
    expect(stack.nextFrame()).toBeUndefined();
    expect(stack.handleFrame(arpRequest(MMDS_IP))).toBe(true);
    const [r] = drain(stack);
    expect(stack.counters).toMatchObject({ framesOut: 1, bytesOut: r.length });
    expect(r.subarray(0, 6)).toEqual(GUEST_MAC);
    expect(r.readUInt16BE(12)).toBe(0x0806);
    expect(r.readUInt16BE(20)).toBe(2); // reply
    expect(r.subarray(22, 28)).toEqual(MMDS_MAC);
    expect(r.readUInt32BE(28)).toBe(MMDS_IP);
    expect(r.subarray(32, 38)).toEqual(GUEST_MAC);
    expect(r.readUInt32BE(38)).toBe(GUEST_IP);
  });

  test('takes every IPv4 frame to its address (and only those); non-TCP is counted and dropped', () => {
    const { stack } = rig();
    expect(stack.handleFrame(tcpFrame({ srcPort: 1, seq: 0, flags: F.SYN, dst: ip('10.0.0.1') }))).toBe(false);
    expect(stack.handleFrame(tcpFrame({ srcPort: 1, seq: 0, flags: F.SYN, protocol: 17 }))).toBe(true);
    expect(stack.counters.unsupported).toBe(1);
    expect(stack.nextFrame()).toBeUndefined();
    // A frame too short for Ethernet, or not IPv4/ARP, is not the stack's.
    expect(stack.handleFrame(Buffer.alloc(10))).toBe(false);
    const ipv6 = Buffer.alloc(60);
    ipv6.writeUInt16BE(0x86dd, 12);
    expect(stack.handleFrame(ipv6)).toBe(false);
  });

  test('a SYN to another port, and a segment for no connection, are answered with a reset', () => {
    const { stack } = rig();
    stack.handleFrame(tcpFrame({ srcPort: 5555, dstPort: 8080, seq: 77, flags: F.SYN }));
    const [rst] = drain(stack).map(parseReply);
    expect(rst.flags).toBe(F.RST | F.ACK);
    expect(rst.ack).toBe(78);
    expect(rst.srcPort).toBe(8080);
    stack.handleFrame(tcpFrame({ srcPort: 5556, seq: 5, ack: 123456, flags: F.ACK, payload: Buffer.from('GET / HTTP/1.1\r\n\r\n') }));
    const [rst2] = drain(stack).map(parseReply);
    expect(rst2.flags).toBe(F.RST);
    expect(rst2.seq).toBe(123456);
    // A reset is never answered.
    stack.handleFrame(tcpFrame({ srcPort: 5557, seq: 5, flags: F.RST }));
    expect(stack.nextFrame()).toBeUndefined();
    expect(stack.counters.resetsSent).toBe(2);
  });
});

describe('MMDS network stack: HTTP over TCP', () => {
  test('V2: a token from PUT, then GETs on the same connection; without a token, 401', () => {
    const { stack, service } = rig();
    const c = new Client(stack);
    const synAck = c.connect();
    expect(synAck.mss).toBe(1460);
    expect(synAck.dstMac).toEqual(GUEST_MAC);
    const token = c.http('PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n');
    expect(token.status).toBe(200);
    expect(token.body).toMatch(/^[A-Za-z0-9_-]{20,}$/);
    const json = c.http(`GET /latest/meta-data/ami-id HTTP/1.1\r\nAccept: application/json\r\nX-metadata-token: ${token.body}\r\n\r\n`);
    expect(json.status).toBe(200);
    expect(json.body).toBe('"ami-12345678"');
    const text = c.http(`GET /latest/meta-data/ HTTP/1.1\r\nX-aws-ec2-metadata-token: ${token.body}\r\n\r\n`);
    expect(text.body).toBe('ami-id\ninstance-id\nnetwork/');
    expect(c.http('GET /latest/meta-data/ami-id HTTP/1.1\r\n\r\n').status).toBe(401);
    expect(c.http('GET /latest/meta-data/ami-id HTTP/1.1\r\nX-metadata-token: forged\r\n\r\n').status).toBe(401);
    expect(c.http(`GET /nothing/here HTTP/1.1\r\nX-metadata-token: ${token.body}\r\n\r\n`).status).toBe(404);
    expect(c.http(`DELETE /latest HTTP/1.1\r\nX-metadata-token: ${token.body}\r\n\r\n`).status).toBe(405);
    expect(service.counters).toMatchObject({ requests: 7, tokensIssued: 1, noToken: 1, invalidToken: 1, notFound: 1 });
  });

  test('the guest closes: the stack answers, sends its FIN, and forgets the connection', () => {
    const { stack } = rig({ version: 'V1' });
    const c = new Client(stack);
    c.connect();
    c.send(F.ACK | F.PSH | F.FIN, Buffer.from('GET /latest/meta-data/instance-id HTTP/1.1\r\n\r\n'));
    c.pump();
    expect(parseHttp(c.received.toString()).body).toBe('i-0abc');
    expect(c.finReceived).toBe(true);
    expect(stack.connectionCount).toBe(0);
  });

  test('"Connection: close" closes after the response; later bytes are not answered', () => {
    const { stack } = rig({ version: 'V1' });
    const c = new Client(stack);
    c.connect();
    const r = c.http('GET /latest/meta-data/ami-id HTTP/1.1\r\nConnection: close\r\n\r\nGET /latest HTTP/1.1\r\n\r\n');
    expect(r.body).toBe('ami-12345678');
    expect(r.headers).toMatch(/Connection: close/);
    expect(c.finReceived).toBe(true);
    c.send(F.ACK | F.FIN);
    c.pump();
    expect(stack.connectionCount).toBe(0);
  });

  test('pipelined requests in one segment get their responses in order', () => {
    const { stack } = rig({ version: 'V1' });
    const c = new Client(stack);
    c.connect();
    c.send(F.ACK | F.PSH, Buffer.from('GET /latest/meta-data/ami-id HTTP/1.1\r\n\r\nGET /latest/meta-data/instance-id HTTP/1.1\r\n\r\n'));
    c.pump();
    const text = c.received.toString();
    expect(text.indexOf('ami-12345678')).toBeGreaterThan(0);
    expect(text.indexOf('i-0abc')).toBeGreaterThan(text.indexOf('ami-12345678'));
  });

  test('a response larger than the MSS and the guest window arrives whole, never beyond the window', () => {
    const big = 'x'.repeat(40_000);
    const { stack } = rig({ version: 'V1', data: { big } });
    const c = new Client(stack, 40001, 3000);
    c.send(F.SYN, undefined, { options: Buffer.from([2, 4, 0x02, 0x00]) }); // MSS 512
    const [synAck] = drain(stack).map(parseReply);
    c.ack = (synAck.seq + 1) >>> 0;
    c.send(F.ACK);
    c.send(F.ACK | F.PSH, Buffer.from('GET /big HTTP/1.1\r\n\r\n'));
    let maxInFlight = 0;
    for (let round = 0; round < 1000; round++) {
      const frames = drain(stack).map(parseReply);
      if (frames.length === 0) break;
      let inFlight = 0;
      for (const r of frames) {
        expect(r.payload.length).toBeLessThanOrEqual(512);
        inFlight += r.payload.length;
        if (r.seq === c.ack) {
          c.received = Buffer.concat([c.received, r.payload]);
          c.ack = (c.ack + r.payload.length) >>> 0;
        }
      }
      maxInFlight = Math.max(maxInFlight, inFlight);
      c.send(F.ACK);
    }
    expect(maxInFlight).toBeLessThanOrEqual(3000);
    expect(parseHttp(c.received.toString()).body).toBe(big);
  });

  test('a request fed one byte per segment is answered once complete', () => {
    const { stack } = rig({ version: 'V1' });
    const c = new Client(stack);
    c.connect();
    for (const ch of 'GET /latest/meta-data/ami-id HTTP/1.1\r\n\r\n') {
      c.send(F.ACK, Buffer.from(ch));
      c.pump();
    }
    expect(parseHttp(c.received.toString()).body).toBe('ami-12345678');
  });
});

describe('MMDS network stack: a guest sending garbage', () => {
  test('out-of-order data is dropped and the guest told what is expected; a retransmission is not duplicated', () => {
    const { stack } = rig({ version: 'V1' });
    const c = new Client(stack);
    c.connect();
    const req = Buffer.from('GET /latest/meta-data/ami-id HTTP/1.1\r\n\r\n');
    // The second half first: out of order.
    stack.handleFrame(tcpFrame({ srcPort: c.port, seq: c.seq + 10, ack: c.ack, flags: F.ACK, payload: req.subarray(10) }));
    const [dup] = drain(stack).map(parseReply);
    expect(dup.ack).toBe(c.seq);
    expect(stack.counters.outOfOrder).toBe(1);
    // The first half, then the whole request again (overlapping): answered exactly once.
    stack.handleFrame(tcpFrame({ srcPort: c.port, seq: c.seq, ack: c.ack, flags: F.ACK, payload: req.subarray(0, 10) }));
    stack.handleFrame(tcpFrame({ srcPort: c.port, seq: c.seq, ack: c.ack, flags: F.ACK, payload: req }));
    c.seq += req.length;
    c.pump();
    const text = c.received.toString();
    expect(text.match(/HTTP\/1\.1 200/g)).toHaveLength(1);
    expect(parseHttp(text).body).toBe('ami-12345678');
  });

  test('three duplicate ACKs make the stack send unacknowledged bytes again', () => {
    const { stack } = rig({ version: 'V1' });
    const c = new Client(stack);
    c.connect();
    c.send(F.ACK | F.PSH, Buffer.from('GET /latest/meta-data/ami-id HTTP/1.1\r\n\r\n'));
    const [lost] = drain(stack).map(parseReply); // the guest "loses" this segment
    expect(lost.payload.length).toBeGreaterThan(0);
    for (let i = 0; i < 3; i++) c.send(F.ACK);
    const again = drain(stack).map(parseReply);
    expect(again[0].seq).toBe(lost.seq);
    expect(again[0].payload).toEqual(lost.payload);
  });

  test('bad checksums and lengths that do not add up are dropped and counted, never answered', () => {
    const { stack } = rig();
    const good = tcpFrame({ srcPort: 40000, seq: 1, flags: F.SYN });
    const badIp = Buffer.from(good);
    badIp[22] ^= 1; // TTL changed, header checksum now wrong
    const badTcp = Buffer.from(good);
    badTcp[34 + 4] ^= 1;
    const longer = Buffer.from(good);
    longer.writeUInt16BE(1500, 16);
    longer.writeUInt16BE(0, 24);
    longer.writeUInt16BE(~sum16(longer, 14, 34) & 0xffff, 24);
    const fragment = Buffer.from(good);
    fragment.writeUInt16BE(0x2000, 20); // more fragments
    fragment.writeUInt16BE(0, 24);
    fragment.writeUInt16BE(~sum16(fragment, 14, 34) & 0xffff, 24);
    for (const f of [badIp, badTcp, longer, fragment]) expect(stack.handleFrame(f)).toBe(true);
    expect(stack.counters.badFrames).toBe(4);
    expect(stack.nextFrame()).toBeUndefined();
    // With checksum offload the guest leaves the TCP checksum partial: that is accepted.
    expect(stack.handleFrame(badTcp, true)).toBe(true);
    expect(parseReply(stack.nextFrame()!).flags).toBe(F.SYN | F.ACK);
  });

  test('every truncation of a valid frame is handled without an exception', () => {
    const { stack } = rig();
    const frames = [arpRequest(MMDS_IP), tcpFrame({ srcPort: 40000, seq: 1, flags: F.SYN, options: Buffer.from([2, 4, 5, 0xb4]) }), tcpFrame({ srcPort: 40000, seq: 2, ack: 5, flags: F.ACK | F.PSH, payload: Buffer.from('GET / HTTP/1.1\r\n\r\n') })];
    for (const f of frames) for (let n = 0; n <= f.length; n++) expect(() => stack.handleFrame(Buffer.from(f.subarray(0, n)))).not.toThrow();
    expect(() => drain(stack)).not.toThrow();
  });

  test('random mutations of valid frames never throw, and state stays bounded', () => {
    const { stack } = rig({ maxConnections: 8 });
    let seed = 12345;
    const rnd = (n: number) => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    const base = [arpRequest(MMDS_IP), tcpFrame({ srcPort: 40000, seq: 1, flags: F.SYN, options: Buffer.from([2, 4, 5, 0xb4, 1, 3, 3, 7]) }), tcpFrame({ srcPort: 40000, seq: 2, ack: 5, flags: F.ACK, payload: Buffer.from('PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 5\r\n\r\n') })];
    for (let i = 0; i < 20_000; i++) {
      const f = Buffer.from(base[rnd(base.length)]);
      for (let k = rnd(4); k >= 0; k--) f[14 + rnd(f.length - 14)] = rnd(256);
      // Keep the IPv4 header checksum right half of the time, so mutations reach TCP.
      if (rnd(2) && f.readUInt16BE(12) === 0x0800) {
        f.writeUInt16BE(0, 24);
        f.writeUInt16BE(~sum16(f, 14, 34) & 0xffff, 24);
      }
      expect(() => stack.handleFrame(f, rnd(2) === 0)).not.toThrow();
      if (rnd(3) === 0) expect(() => stack.nextFrame()).not.toThrow();
      expect(stack.connectionCount).toBeLessThanOrEqual(8);
    }
    expect(drain(stack).length).toBeLessThanOrEqual(100 + 8 * 200);
  });

  test('a SYN flood never holds more than the connection limit: the least recently active is reset', () => {
    let now = 0;
    const { stack } = rig({ clock: () => now, maxConnections: 30 });
    for (let port = 1; port <= 1000; port++) {
      now++;
      stack.handleFrame(tcpFrame({ srcPort: port, seq: port * 1000, flags: F.SYN }));
      drain(stack);
    }
    expect(stack.connectionCount).toBe(30);
    expect(stack.counters.connectionsEvicted).toBe(970);
  });

  test('a request that never ends: 413 after 4 KiB of head, then the connection closes', () => {
    const { stack } = rig({ version: 'V1' });
    const c = new Client(stack);
    c.connect();
    for (let i = 0; i < 6; i++) {
      c.send(F.ACK, Buffer.from('X-Long: ' + 'a'.repeat(990) + '\r\n'));
      c.pump();
    }
    const r = parseHttp(c.received.toString());
    expect(r.status).toBe(413);
    expect(c.finReceived).toBe(true);
  });

  test('garbage instead of HTTP gets 400 and a close', () => {
    const { stack, service } = rig({ version: 'V1' });
    const c = new Client(stack);
    c.connect();
    const r = c.http('\x00\x01\x02 not http\r\n\r\n');
    expect(r.status).toBe(400);
    expect(c.finReceived).toBe(true);
    expect(service.counters.badRequests).toBe(1);
  });

  test('a token expires', () => {
    let now = 1_000_000;
    const { stack } = rig({ clock: () => now });
    const c = new Client(stack);
    c.connect();
    const token = c.http('PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 1\r\n\r\n').body;
    expect(c.http(`GET /latest/meta-data/ami-id HTTP/1.1\r\nX-metadata-token: ${token}\r\n\r\n`).status).toBe(200);
    now += 1001;
    expect(c.http(`GET /latest/meta-data/ami-id HTTP/1.1\r\nX-metadata-token: ${token}\r\n\r\n`).status).toBe(401);
  });

  test('pipelined requests whose responses pass the backlog limit are all answered, and the window reopens', () => {
    const { stack } = rig({ version: 'V1', data: { big: 'y'.repeat(20_000) } });
    const c = new Client(stack);
    c.connect();
    const req = 'GET /big HTTP/1.1\r\n\r\n';
    c.send(F.ACK | F.PSH, Buffer.from(req.repeat(8)));
    const replies = c.pump();
    expect(c.received.toString().match(/HTTP\/1\.1 200/g)).toHaveLength(8);
    // Once the backlog drained, the guest heard that the window is open again.
    expect(replies[replies.length - 1].window).toBeGreaterThanOrEqual(8192 - 64);
    expect(stack.hasOutput()).toBe(false);
  });

  test('window updates are not duplicate ACKs; an ACK of bytes sent before a rewind is taken', () => {
    const { stack } = rig({ version: 'V1', data: { big: 'z'.repeat(6000) } });
    const c = new Client(stack, 40002, 1460);
    c.connect();
    c.send(F.ACK | F.PSH, Buffer.from('GET /big HTTP/1.1\r\n\r\n'));
    const first = drain(stack).map(parseReply);
    expect(first).toHaveLength(1); // one segment fits the 1460-byte window
    // Three pure ACKs that only change the window: no retransmission, new data instead.
    for (const w of [2000, 3000, 4000]) c.send(F.ACK, undefined, { window: w });
    const next = drain(stack).map(parseReply);
    expect(next.every((r) => r.seq !== first[0].seq)).toBe(true);
    // Three real duplicates make the stack rewind; an ACK of everything sent is still accepted.
    for (let i = 0; i < 3; i++) c.send(F.ACK, undefined, { window: 4000 });
    const again = drain(stack).map(parseReply);
    expect(again[0].seq).toBe(first[0].seq);
    const all = [...first, ...next];
    const end = all.reduce((m, r) => Math.max(m, r.seq + r.payload.length), 0);
    c.send(F.ACK | F.PSH, Buffer.from('GET /big HTTP/1.1\r\n\r\n'), { ack: end, window: 65535 });
    const after = drain(stack).map(parseReply);
    expect(after.length).toBeGreaterThan(0);
    expect(after[0].ack).toBe(c.seq); // the request that came with it was taken
  });

  test('a wrong ACK during the handshake gets a reset and breaks nothing; a zero-length probe gets an ACK', () => {
    const { stack } = rig({ version: 'V1' });
    stack.handleFrame(tcpFrame({ srcPort: 40003, seq: 1000, flags: F.SYN }));
    const [synAck] = drain(stack).map(parseReply);
    for (let i = 0; i < 3; i++) stack.handleFrame(tcpFrame({ srcPort: 40003, seq: 1001, ack: synAck.seq, flags: F.ACK }));
    const resets = drain(stack).map(parseReply);
    expect(resets.every((r) => r.flags === F.RST && r.seq === synAck.seq)).toBe(true);
    expect(stack.hasOutput()).toBe(false);
    stack.handleFrame(tcpFrame({ srcPort: 40003, seq: 1001, ack: synAck.seq + 1, flags: F.ACK | F.PSH, payload: Buffer.from('GET /latest/meta-data/ami-id HTTP/1.1\r\n\r\n') }));
    const [answer] = drain(stack).map(parseReply);
    expect(answer.payload.toString()).toMatch(/ami-12345678$/);
    // A window probe (one byte behind what we expect, no data) is answered with an ACK.
    stack.handleFrame(tcpFrame({ srcPort: 40003, seq: answer.ack - 1, ack: answer.seq + answer.payload.length, flags: F.ACK }));
    const [probeAck] = drain(stack).map(parseReply);
    expect(probeAck.flags).toBe(F.ACK);
    expect(probeAck.ack).toBe(answer.ack);
  });
});
