import { MmdsService } from '../../src/devices/mmds/service';
import { MMDS_INBOX_MAX, MMDS_MAC, MMDS_OUTBOX_HIGH, MmdsNetworkStack } from '../../src/devices/mmds/stack';
import { MMIO, STATUS, VirtioMmio } from '../../src/devices/virtio/mmio';
import { NetDevice } from '../../src/devices/virtio/net';
import { VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '../../src/devices/virtio/queue';
import { TestDriver } from '../helpers/virtio-driver';
import { fuzzCases, fuzzSeed, Rng } from './rng';
import { arpFrame, F, fixChecksums, GUEST_IP, ip, MMDS_IP, Seg, sum16, tcpFrame } from '../helpers/guest-frames';

/**
 * Hostile Ethernet frames against the MMDS network stack, alone and behind virtio-net: random
 * bytes; valid ARP, IPv4, TCP and HTTP frames mutated (bad lengths, checksums, fragments, huge or
 * broken options, truncated headers); SYN floods; random TCP state transitions from many peers;
 * garbage HTTP; and for the device, hostile descriptor chains and receive buffers of every size.
 *
 * After every step: nothing threw, every frame the stack sends is well-formed, nothing addressed
 * to the MMDS leaked to the TAP, and what the stack holds (connections, queued frames, request
 * and response bytes) is within its fixed bounds. After each case: a well-behaved guest still
 * gets ARP, a token and the right metadata. Each case is bounded in work (a drain that never
 * settles fails) and, generously, in time.
 *
 * The TAP itself is replaced by an in-memory one: what is fuzzed is the device and the stack, not
 * the host kernel.
 */

const mockTap = { inbound: [] as Buffer[], written: [] as Buffer[], refuse: false };
jest.mock('../../src/kvm/tap', () => ({
  ...jest.requireActual('../../src/kvm/tap'),
  setTapOffload: () => undefined,
  tapRead: (_fd: number, buf: Buffer) => {
    const f = mockTap.inbound.shift();
    if (!f) return 0;
    return f.copy(buf, 0, 0, Math.min(f.length, buf.length));
  },
  tapWrite: (_fd: number, frame: Uint8Array) => {
    if (mockTap.refuse) return false;
    mockTap.written.push(Buffer.from(frame));
    return true;
  },
}));

const SEED = fuzzSeed(0x6d6d6473);
const STACK_CASES = fuzzCases(400);
const DEVICE_CASES = Math.max(1, Math.floor(STACK_CASES / 4));
/** Generous: a case takes milliseconds; only runaway work (a loop, quadratic growth) gets near. */
const CASE_TIME_LIMIT_MS = 5_000;
/** Frames one drain may yield before the stack is taken to be looping. */
const DRAIN_LIMIT = 20_000;

const VNET_HDR = 12;
const DATA = { latest: { 'meta-data': { 'ami-id': 'ami-12345678', 'instance-id': 'i-0abc', tags: { env: 'fuzz' }, list: [1, 2, 3] } } };
/** The largest response the stack can make from DATA, with room to spare. */
const MAX_RESPONSE = 4096;

// ---- HTTP a guest could send ----

const PATHS = ['/latest/api/token', '/latest/api/token', '/latest/api/token/', '/', '/latest', '/latest/', '/latest/meta-data/', '/latest/meta-data/ami-id', '/latest/meta-data/tags/env', '/latest/meta-data/list', '/nope', '/latest/meta-data/%ZZ', '/latest/%2e%2e/', '/latest/meta-data/ami-id?x=1', '/__proto__/constructor', '//', '/latest/meta-data/tags/'];

function httpRequest(rng: Rng, token?: string): string {
  const method = rng.pick(['GET', 'GET', 'GET', 'PUT', 'PUT', 'POST', 'DELETE', 'get', 'HEAD', 'PATCH', 'GET ']);
  const path = rng.bool(0.05) ? '/' + 'a'.repeat(rng.int(6000)) : rng.pick(PATHS);
  const version = rng.pick(['HTTP/1.1', 'HTTP/1.1', 'HTTP/1.0', 'HTTP/2.0', 'HTTP/1.1x', '']);
  const headers: string[] = [];
  if (rng.bool(0.5)) headers.push(`X-metadata-token-ttl-seconds: ${rng.pick(['21600', '1', '0', '21601', '-5', 'abc', '9999999', ''])}`);
  if (token !== undefined && rng.bool(0.7)) headers.push(`X-metadata-token: ${rng.bool(0.8) ? token : 'forged'}`);
  if (rng.bool(0.3)) headers.push(`Accept: ${rng.pick(['application/json', 'text/plain', '*/*'])}`);
  if (rng.bool(0.1)) headers.push(`Connection: ${rng.pick(['close', 'keep-alive', 'Close', 'x, close'])}`);
  if (rng.bool(0.05)) headers.push(`Content-Length: ${rng.pick(['0', '5', '-1', '00', 'x'])}`);
  if (rng.bool(0.03)) headers.push('Transfer-Encoding: chunked');
  if (rng.bool(0.03)) headers.push('X-Forwarded-For: 1.2.3.4');
  if (rng.bool(0.05)) headers.push('no colon here');
  if (rng.bool(0.03)) headers.push(`X-Big: ${'b'.repeat(rng.int(8000))}`);
  const line = rng.bool(0.05) ? rng.bytes(rng.int(40)).toString('latin1') : `${method} ${path} ${version}`;
  return [line, ...headers].join('\r\n') + '\r\n\r\n';
}

function httpGarbage(rng: Rng): Buffer {
  switch (rng.int(5)) {
    case 0:
      return rng.bytes(1 + rng.int(3000));
    case 1:
      return Buffer.from('\r\n\r\n'.repeat(1 + rng.int(10)));
    case 2:
      return Buffer.from('GET / HTTP/1.1\r\n' + 'X: y\r\n'.repeat(rng.int(2000))); // never ends
    case 3:
      return Buffer.from(httpRequest(rng).repeat(1 + rng.int(20))); // pipelined
    default:
      return Buffer.from(httpRequest(rng, 'tok'));
  }
}

// ---- mutations ----

function mutate(rng: Rng, frame: Buffer): Buffer {
  let f = Buffer.from(frame);
  const rounds = 1 + rng.int(3);
  for (let r = 0; r < rounds; r++) {
    const ipOk = f.length >= 34;
    const ihl = ipOk ? (f[14] & 15) * 4 : 20;
    const t = 14 + ihl;
    switch (rng.int(14)) {
      case 0: // flip bytes anywhere
        for (let i = 0, n = 1 + rng.int(4); i < n && f.length > 0; i++) f[rng.int(f.length)] ^= 1 + rng.int(255);
        break;
      case 1: // truncated
        f = f.subarray(0, rng.int(f.length + 1));
        break;
      case 2: // trailing bytes (padding, or garbage)
        f = Buffer.concat([f, rng.bool() ? Buffer.alloc(rng.int(64)) : rng.bytes(rng.int(200))]);
        break;
      case 3: // IPv4 version / header length
        if (ipOk) f[14] = rng.bool() ? (f[14] & 0xf0) | rng.int(16) : (rng.int(16) << 4) | (f[14] & 15);
        break;
      case 4: // total length
        if (ipOk) f.writeUInt16BE(rng.pick([0, 1, 19, 20, 39, 40, f.length - 14, f.length - 13, f.length - 15, 0xffff, rng.int(0x10000)]) & 0xffff, 16);
        break;
      case 5: // fragments: more-fragments, an offset, or both
        if (ipOk) f.writeUInt16BE(rng.pick([0x2000, 0x0001, 0x2000 | rng.int(0x2000), 0x4000, 0x8000, rng.int(0x10000)]), 20);
        break;
      case 6: // another protocol
        if (ipOk) f[23] = rng.pick([1, 17, 41, 255, 0]);
        break;
      case 7: // TCP data offset
        if (f.length > t + 12) f[t + 12] = (rng.int(16) << 4) | (f[t + 12] & 15);
        break;
      case 8: // TCP flags, all combinations
        if (f.length > t + 13) f[t + 13] = rng.int(256);
        break;
      case 9: // TCP window / urgent pointer
        if (f.length > t + 19) f.writeUInt16BE(rng.pick([0, 1, 0xffff, rng.int(0x10000)]), t + rng.pick([14, 18]));
        break;
      case 10: // sequence / acknowledgment numbers
        if (f.length > t + 11) f.writeUInt32BE(rng.pick([0, 0xffffffff, 0x7fffffff, 0x80000000, rng.int(2 ** 32)]) >>> 0, t + rng.pick([4, 8]));
        break;
      case 11: // ports
        if (f.length > t + 3) f.writeUInt16BE(rng.pick([0, 80, 8080, 0xffff, rng.int(0x10000)]), t + rng.pick([0, 2]));
        break;
      case 12: // source MAC / IP: broadcast, zero, ours
        if (ipOk) {
          if (rng.bool()) f.fill(rng.pick([0, 0xff]), 6, 12);
          else f.writeUInt32BE(rng.pick([0, 0xffffffff, MMDS_IP, 0x7f000001]) >>> 0, 26);
        }
        break;
      default: // another ethertype
        if (f.length >= 14) f.writeUInt16BE(rng.pick([0x86dd, 0x8100, 0x0806, 0x0800, 0x88cc, rng.int(0x10000)]), 12);
    }
  }
  // Mostly with the checksums made right again, so the damage reaches the layers past them.
  if (rng.bool(0.7)) fixChecksums(f);
  return f;
}

/** TCP options: valid MSS, odd MSS values, NOPs, a full 40 bytes of anything, broken lengths. */
function tcpOptions(rng: Rng): Buffer {
  switch (rng.int(6)) {
    case 0:
      return Buffer.alloc(0);
    case 1: {
      const b = Buffer.from([2, 4, 0, 0]);
      b.writeUInt16BE(rng.pick([0, 1, 63, 64, 536, 1460, 1461, 9000, 0xffff]), 2);
      return b;
    }
    case 2:
      return Buffer.from([1, 1, 1, 1, 2, 4, 0x05, 0xb4]);
    case 3: // kind with length 0 or 1, or running past the end
      return Buffer.from([rng.pick([2, 3, 8, 30]), rng.pick([0, 1, 40, 255]), 0, 0]);
    case 4: // the largest header: 40 bytes of options
      return rng.bytes(40);
    default:
      return rng.bytes(4 * rng.int(11));
  }
}

// ---- checks on what the stack sends ----

function checkOutput(f: Buffer, where: string): void {
  const fail = (why: string) => {
    throw new Error(`${where}: the stack sent a malformed frame (${why}): ${f.toString('hex').slice(0, 200)}`);
  };
  if (f.length < 14) fail('shorter than Ethernet');
  if (!f.subarray(6, 12).equals(MMDS_MAC)) fail('source MAC is not the MMDS MAC');
  const type = f.readUInt16BE(12);
  if (type === 0x0806) {
    if (f.length !== 42 || f.readUInt16BE(20) !== 2 || !f.subarray(22, 28).equals(MMDS_MAC) || f.readUInt32BE(28) !== MMDS_IP) fail('bad ARP reply');
    return;
  }
  if (type !== 0x0800) fail(`ethertype ${type.toString(16)}`);
  if (f[14] !== 0x45) fail('IPv4 version/IHL');
  const total = f.readUInt16BE(16);
  if (14 + total !== f.length) fail('IPv4 total length does not match the frame');
  if (sum16(f, 14, 34) !== 0xffff) fail('IPv4 checksum');
  if (f.readUInt32BE(26) !== MMDS_IP) fail('source IP');
  if (f[23] !== 6) fail('not TCP');
  const tcpLen = total - 20;
  const off = (f[34 + 12] >> 4) * 4;
  if (off < 20 || off > tcpLen) fail('TCP data offset');
  const dst = f.readUInt32BE(30);
  const pseudo = (MMDS_IP >>> 16) + (MMDS_IP & 0xffff) + (dst >>> 16) + (dst & 0xffff) + 6 + tcpLen;
  if (sum16(f, 34, 34 + tcpLen, pseudo) !== 0xffff) fail('TCP checksum');
  if (tcpLen - off > 1460) fail(`payload ${tcpLen - off} bytes, above the largest MSS`);
  if (f.length > 1514 + 4) fail('larger than an Ethernet frame');
}

interface Limits {
  maxConnections: number;
  maxPending: number;
}

function checkBounds(stack: MmdsNetworkStack, limits: Limits, where: string): void {
  const fp = stack.footprint();
  const fail = (why: string) => {
    throw new Error(`${where}: ${why}: ${JSON.stringify(fp)}`);
  };
  if (fp.connections > limits.maxConnections) fail(`more than ${limits.maxConnections} connections`);
  if (fp.pendingFrames > limits.maxPending) fail(`more than ${limits.maxPending} queued frames`);
  if (fp.inboxBytes > fp.connections * MMDS_INBOX_MAX) fail('request bytes beyond the per-connection limit');
  if (fp.largestOutbox > MMDS_OUTBOX_HIGH + MAX_RESPONSE) fail('a response backlog beyond its limit');
}

/** Every frame the stack has now; each is checked; hasOutput() must agree with nextFrame(). */
function drain(stack: MmdsNetworkStack, where: string, max = DRAIN_LIMIT): Buffer[] {
  const out: Buffer[] = [];
  for (;;) {
    const said = stack.hasOutput();
    const f = stack.nextFrame();
    if (said !== (f !== undefined)) throw new Error(`${where}: hasOutput() said ${said} but nextFrame() gave ${f ? 'a frame' : 'nothing'}`);
    if (!f) return out;
    checkOutput(f, where);
    out.push(f);
    if (out.length > max) throw new Error(`${where}: the stack keeps sending frames (more than ${max})`);
  }
}

// ---- a well-behaved guest, over any transport ----

interface Transport {
  send(frame: Buffer): void;
  receive(): Buffer[];
}

class GoodGuest {
  private seq = 77_000;
  private ack = 0;
  private data = Buffer.alloc(0);
  readonly mac = Buffer.from([6, 0, 0, 0, 0, 0x99]);
  readonly src = ip('10.0.0.99');

  constructor(
    private readonly t: Transport,
    private readonly port: number,
  ) {}

  private segment(flags: number, payload?: Buffer): void {
    this.t.send(tcpFrame({ mac: this.mac, src: this.src, srcPort: this.port, seq: this.seq, ack: this.ack, flags, window: 65535, payload, options: flags & F.SYN ? Buffer.from([2, 4, 0x05, 0xb4]) : undefined }));
    this.seq = (this.seq + (payload?.length ?? 0) + (flags & (F.SYN | F.FIN) ? 1 : 0)) >>> 0;
  }

  /** Frames for this guest's connection, in-order data taken and acknowledged. */
  private pump(): { flags: number; seq: number }[] {
    const mine: { flags: number; seq: number }[] = [];
    for (let round = 0; round < 500; round++) {
      let ackDue = false;
      const frames = this.t.receive();
      for (const f of frames) {
        if (f.readUInt16BE(12) !== 0x0800 || f.readUInt32BE(30) !== this.src || f.readUInt16BE(36) !== this.port) continue;
        const off = (f[46] >> 4) * 4;
        const seq = f.readUInt32BE(38);
        const flags = f[47];
        const payload = f.subarray(34 + off);
        mine.push({ flags, seq });
        if (payload.length > 0 || flags & F.FIN) ackDue = true;
        if (flags & F.SYN) this.ack = (seq + 1) >>> 0;
        else if (seq === this.ack && (payload.length > 0 || flags & F.FIN)) {
          this.data = Buffer.concat([this.data, payload]);
          this.ack = (this.ack + payload.length + (flags & F.FIN ? 1 : 0)) >>> 0;
        }
      }
      if (frames.length === 0) return mine;
      if (ackDue) this.segment(F.ACK);
    }
    throw new Error('the conversation with a well-behaved guest never settles');
  }

  arp(): Buffer | undefined {
    this.t.send(arpFrame(1, this.mac, this.src, MMDS_IP));
    return this.t.receive().find((f) => f.readUInt16BE(12) === 0x0806 && f.readUInt32BE(38) === this.src);
  }

  connect(): boolean {
    this.segment(F.SYN);
    const synAck = this.pump().some((s) => (s.flags & (F.SYN | F.ACK)) === (F.SYN | F.ACK));
    this.segment(F.ACK);
    return synAck;
  }

  http(request: string): { status: number; body: string } {
    this.data = Buffer.alloc(0);
    this.segment(F.ACK | F.PSH, Buffer.from(request));
    this.pump();
    const text = this.data.toString('latin1');
    const end = text.indexOf('\r\n\r\n');
    const length = Number(/content-length: (\d+)/i.exec(text.slice(0, end))?.[1]);
    return { status: end < 0 ? 0 : Number(text.split(' ')[1]), body: text.slice(end + 4, end + 4 + length) };
  }
}

/** A well-behaved guest still gets ARP, a token and the right values, whatever came before. */
function expectStillServes(t: Transport, version: 'V1' | 'V2', imdsCompat: boolean, port: number, where: string): void {
  const g = new GoodGuest(t, port);
  const fail = (why: string) => {
    throw new Error(`${where}: a valid guest is no longer served: ${why}`);
  };
  if (!g.arp()) fail('no ARP reply');
  if (!g.connect()) fail('no SYN-ACK');
  const tok = g.http('PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n');
  if (tok.status !== 200 || !/^[A-Za-z0-9_-]{20,}$/.test(tok.body)) fail(`token: ${JSON.stringify(tok)}`);
  const json = g.http(`GET /latest/meta-data/ami-id HTTP/1.1\r\nX-metadata-token: ${tok.body}\r\nAccept: application/json\r\n\r\n`);
  const expected = imdsCompat ? 'ami-12345678' : '"ami-12345678"';
  if (json.status !== 200 || json.body !== expected) fail(`GET with a token: ${JSON.stringify(json)}`);
  const none = g.http('GET /latest/meta-data/instance-id HTTP/1.1\r\n\r\n');
  if (version === 'V2' ? none.status !== 401 : none.status !== 200 || none.body !== 'i-0abc') fail(`GET without a token: ${JSON.stringify(none)}`);
}

// ---- hostile peers ----

/** A peer that mostly follows TCP and sometimes does anything at all. */
class Peer {
  seq: number;
  ack = 0;
  window: number;
  token = 'tok';
  readonly mac: Buffer;

  constructor(
    private readonly rng: Rng,
    readonly src: number,
    readonly port: number,
  ) {
    this.seq = rng.int(2 ** 32);
    this.window = rng.pick([0, 1, 100, 536, 1460, 8192, 65535, 65535, 65535]);
    this.mac = Buffer.from([6, 0, 0, 0, rng.int(256), rng.int(256)]);
  }

  frame(flags: number, payload?: Buffer, extra: Partial<Seg> = {}): Buffer {
    const f = tcpFrame({ mac: this.mac, src: this.src, srcPort: this.port, seq: this.seq, ack: this.ack, flags, window: this.window, payload, ...extra });
    if (extra.seq === undefined) this.seq = (this.seq + (payload?.length ?? 0) + (flags & (F.SYN | F.FIN) ? 1 : 0)) >>> 0;
    return f;
  }

  /** Learns from the stack's frames to it: its sequence numbers and any token it was given. */
  observe(frames: Buffer[]): void {
    for (const f of frames) {
      if (f.length < 54 || f.readUInt16BE(12) !== 0x0800 || f.readUInt32BE(30) !== this.src || f.readUInt16BE(36) !== this.port) continue;
      const seq = f.readUInt32BE(38);
      const flags = f[47];
      const payload = f.subarray(34 + (f[46] >> 4) * 4);
      if (flags & F.SYN) this.ack = (seq + 1) >>> 0;
      else if (seq === this.ack) this.ack = (this.ack + payload.length + (flags & F.FIN ? 1 : 0)) >>> 0;
      const m = /\r\n\r\n([A-Za-z0-9_-]{40,})$/.exec(payload.toString('latin1'));
      if (m) this.token = m[1];
    }
  }

  /** One step: a TCP move chosen at random, legal or not. */
  step(): Buffer[] {
    const r = this.rng;
    switch (r.int(16)) {
      case 0:
        return [this.frame(F.SYN, undefined, { options: tcpOptions(r) })];
      case 1:
        return [this.frame(F.ACK)];
      case 2:
      case 3: {
        // A request, whole or cut at a random point across segments; half of them valid ones.
        const valid = r.bool()
          ? r.bool()
            ? 'PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n'
            : `GET ${r.pick(PATHS)} HTTP/1.1\r\nX-metadata-token: ${this.token}\r\n${r.bool() ? 'Accept: application/json\r\n' : ''}\r\n`
          : undefined;
        const req = Buffer.from(valid ?? httpRequest(r, this.token));
        const cut = r.int(req.length + 1);
        return [this.frame(F.ACK | F.PSH, req.subarray(0, cut)), this.frame(F.ACK | F.PSH, req.subarray(cut))];
      }
      case 4:
        return [this.frame(F.ACK | F.PSH, httpGarbage(r).subarray(0, 1460 * (1 + r.int(40))))];
      case 5:
        return [this.frame(F.FIN | F.ACK)];
      case 6: // a reset at the right place, or anywhere
        return [this.frame(F.RST | (r.bool() ? F.ACK : 0), undefined, r.bool() ? {} : { seq: r.int(2 ** 32) })];
      case 7: // three duplicate ACKs
        return [this.frame(F.ACK), this.frame(F.ACK), this.frame(F.ACK)];
      case 8: // acknowledges what was never sent, or long ago
        return [this.frame(F.ACK, undefined, { ack: (this.ack + r.pick([1, 1000, 2 ** 31, -1, -70000])) >>> 0 })];
      case 9: // out of order, overlapping, or a retransmission
        return [this.frame(F.ACK | F.PSH, Buffer.from(httpRequest(r, this.token)), { seq: (this.seq + r.pick([-5, -1, 1, 7, 4000, 2 ** 31])) >>> 0 })];
      case 10: // the window opens, closes, or probes
        this.window = r.pick([0, 1, 65535, r.int(65536)]);
        return [this.frame(F.ACK, r.bool(0.3) ? Buffer.from('G') : undefined)];
      case 11: // a SYN in the middle of a connection, or SYN with data, or SYN+FIN
        return [this.frame(r.pick([F.SYN | F.ACK, F.SYN | F.FIN, F.SYN]), r.bool() ? Buffer.from('GET / HTTP/1.1\r\n\r\n') : undefined)];
      case 12: // any flags at all
        return [this.frame(r.int(256), r.bool() ? r.bytes(r.int(100)) : undefined)];
      case 13: // pipelined requests beyond the response backlog
        return [this.frame(F.ACK | F.PSH, Buffer.from(`GET /latest/meta-data/ HTTP/1.1\r\nX-metadata-token: ${this.token}\r\n\r\n`.repeat(1 + r.int(60))))];
      case 14: // IP options, or a request to another port
        return [this.frame(F.ACK, Buffer.from('x'), r.bool() ? { ipOptions: r.bytes(4 * (1 + r.int(10))) } : { dstPort: r.int(65536) })];
      default:
        return [mutate(r, this.frame(F.ACK | F.PSH, Buffer.from(httpRequest(r, this.token))))];
    }
  }
}

/** A frame with no structure: random bytes, some dressed up as IPv4 or ARP to the MMDS. */
function randomFrame(rng: Rng): Buffer {
  const f = rng.bytes(rng.int(rng.bool(0.1) ? 9000 : 200));
  if (f.length >= 34 && rng.bool(0.6)) {
    f.writeUInt16BE(0x0800, 12);
    f.writeUInt32BE(MMDS_IP, 30);
  } else if (f.length >= 42 && rng.bool(0.5)) {
    f.writeUInt16BE(0x0806, 12);
    f.writeUInt32BE(MMDS_IP, 38);
  }
  if (rng.bool(0.5)) fixChecksums(f);
  return f;
}

/** A hostile frame of any kind, from the pool of peers. */
function hostileFrames(rng: Rng, peers: Peer[]): Buffer[] {
  // Mostly the peers' moves: floods and noise between them, not instead of them.
  switch (rng.int(16)) {
    case 0:
      return [randomFrame(rng)];
    case 1: // ARP: requests, replies, for us or not, mutated
      return [mutate(rng, arpFrame(rng.pick([1, 2, 3, 0]), Buffer.from([6, 0, 0, 0, 0, rng.int(256)]), rng.int(2 ** 32), rng.bool(0.8) ? MMDS_IP : rng.int(2 ** 32)))];
    case 2: {
      // SYN flood: many ports, many sources
      const n = 1 + rng.int(60);
      return Array.from({ length: n }, () => tcpFrame({ src: rng.bool() ? GUEST_IP : rng.int(2 ** 32), srcPort: rng.int(65536), seq: rng.int(2 ** 32), flags: F.SYN, options: tcpOptions(rng) }));
    }
    case 3:
      return [mutate(rng, tcpFrame({ srcPort: rng.int(65536), seq: rng.int(2 ** 32), ack: rng.int(2 ** 32), flags: rng.int(64), options: tcpOptions(rng), payload: httpGarbage(rng).subarray(0, 1460) }))];
    default:
      return rng.pick(peers).step();
  }
}

// ---- the stack alone ----

/** What the cases reached, summed (printed, so a run shows it got past the parsers). */
const reached: Record<string, number> = {};
function tally(stack: MmdsNetworkStack, service: MmdsService): void {
  for (const [k, v] of Object.entries({ ...stack.counters, ...service.counters })) reached[k] = (reached[k] ?? 0) + v;
}

function stackCase(n: number, rng: Rng): void {
  const where = `seed ${SEED} stack case ${n}`;
  let now = 1_000_000 + rng.int(1e9);
  const clock = () => now;
  const version = rng.pick(['V1', 'V2'] as const);
  const imdsCompat = rng.bool(0.3);
  const service = new MmdsService({ version, imdsCompat, clock, maxTokens: rng.pick([undefined, 1, 4]) });
  service.setData(DATA);
  const limits: Limits = { maxConnections: rng.pick([1, 2, 5, 30]), maxPending: rng.pick([1, 3, 100]) };
  const stack = new MmdsNetworkStack({ ipv4: '169.254.169.254', service, clock, maxConnections: limits.maxConnections, maxPendingFrames: limits.maxPending });
  const peers = Array.from({ length: 1 + rng.int(6) }, () => new Peer(rng, rng.bool(0.8) ? GUEST_IP : rng.int(2 ** 32), rng.bool(0.2) ? rng.int(65536) : 40000 + rng.int(1000)));
  /** A proper handshake, so that what follows reaches the established state and HTTP. */
  const handshake = (p: Peer, at: string) => {
    stack.handleFrame(p.frame(F.SYN, undefined, { options: tcpOptions(rng) }));
    const out = drain(stack, at);
    for (const q of peers) q.observe(out);
    stack.handleFrame(p.frame(F.ACK));
  };
  for (const p of peers) if (rng.bool(0.8)) handshake(p, `${where} handshake`);
  const steps = 10 + rng.int(60);
  for (let s = 0; s < steps; s++) {
    const at = `${where} step ${s}`;
    if (rng.bool(0.1)) handshake(rng.pick(peers), at);
    for (const f of hostileFrames(rng, peers)) stack.handleFrame(f, rng.bool(0.1));
    checkBounds(stack, limits, at);
    if (rng.bool(0.1)) now += rng.pick([1, 1000, 60_000, 21_600_000]);
    // The guest does not always take what is offered: queues must stay bounded meanwhile.
    if (rng.bool(0.6)) {
      const out = drain(stack, at);
      for (const p of peers) p.observe(out);
    }
    checkBounds(stack, limits, at);
  }
  drain(stack, `${where} end`);
  const direct: Transport = { send: (f) => void stack.handleFrame(f), receive: () => drain(stack, `${where} final`) };
  expectStillServes(direct, version, imdsCompat, 61_000 + (n % 1000), where);
  checkBounds(stack, limits, `${where} final`);
  tally(stack, service);
}

// ---- the stack behind virtio-net ----

/**
 * The guest side of a virtio-net device: its own queues, some of them hostile. Descriptors come in
 * chain slots of 4 (slot k: descriptors 4k..4k+3), each with its own buffer area, so a buffer the
 * device still holds is never reused.
 */
class NetRig {
  readonly mem = TestDriver.memory();
  readonly stack: MmdsNetworkStack;
  readonly service: MmdsService;
  readonly net: NetDevice;
  readonly dev: VirtioMmio;
  readonly drv: TestDriver;
  readonly limits: Limits = { maxConnections: 4, maxPending: 20 };
  /** Receive chains posted and not yet used: head -> segment lengths. */
  readonly rxPosted = new Map<number, number[]>();
  private txNext = 0;
  private static readonly SLOTS = 16;
  private static readonly RX_AREA = 0x200000; // 16 slots x 4 segments x 4 KiB
  private static readonly TX_AREA = 0x280000; // 16 slots x 64 KiB
  failures: string[] = [];
  hostileQueues = false;

  constructor(
    readonly version: 'V1' | 'V2',
    readonly imdsCompat: boolean,
  ) {
    this.service = new MmdsService({ version, imdsCompat });
    this.service.setData(DATA);
    this.stack = new MmdsNetworkStack({ ipv4: '169.254.169.254', service: this.service, maxConnections: this.limits.maxConnections, maxPendingFrames: this.limits.maxPending });
    this.net = new NetDevice(this.mem, { id: 'eth0', tapFd: -1, watchTap: () => undefined, local: this.stack, mac: Buffer.from([6, 0, 0, 0, 0, 2]) });
    this.dev = new VirtioMmio(this.mem, this.net, () => undefined);
    this.dev.onFailure = (reason) => this.failures.push(reason);
    this.drv = new TestDriver(this.mem, this.dev, 4 * NetRig.SLOTS);
    this.start();
  }

  start(): void {
    // Fresh rings, as a driver allocates them: a used index left from before the reset would
    // otherwise be read as new entries.
    for (let q = 0; q < 2; q++) this.mem.fill(this.drv.desc(q), 0x3000);
    if ((this.drv.init() & STATUS.DRIVER_OK) === 0) throw new Error('virtio-net did not start');
    this.rxPosted.clear();
    this.txNext = 0;
  }

  get broken(): boolean {
    return (this.drv.reg(MMIO.STATUS) & STATUS.NEEDS_RESET) !== 0;
  }

  /** Posts a receive buffer of `room` bytes split over up to 4 descriptors (when a slot is free). */
  postRx(room: number, segments = 1): void {
    let slot = 0;
    while (slot < NetRig.SLOTS && this.rxPosted.has(4 * slot)) slot++;
    if (slot === NetRig.SLOTS) return;
    const n = Math.max(1, Math.min(segments, 4));
    const per = Math.min(0x1000, Math.ceil(room / n));
    const lens = Array.from({ length: n }, (_, i) => Math.max(0, Math.min(per, room - per * i)));
    const head = 4 * slot;
    lens.forEach((len, i) => this.drv.writeDesc(this.drv.desc(0), head + i, NetRig.RX_AREA + (head + i) * 0x1000, len, VIRTQ_DESC_F_WRITE | (i < n - 1 ? VIRTQ_DESC_F_NEXT : 0), head + i + 1));
    this.rxPosted.set(head, lens);
    this.drv.publish(0, head);
    this.dev.write(MMIO.QUEUE_NOTIFY, 4, 0);
  }

  /** Sends a frame (after a virtio-net header with `flags`) split over up to 4 descriptors. */
  sendTx(frame: Buffer, flags = 0, pieces = 1): void {
    const hdr = Buffer.alloc(VNET_HDR);
    hdr[0] = flags;
    const all = Buffer.concat([hdr, frame]).subarray(0, 0x10000);
    const n = Math.max(1, Math.min(pieces, 4));
    const slot = this.txNext;
    this.txNext = (this.txNext + 1) % NetRig.SLOTS;
    const head = 4 * slot;
    const area = NetRig.TX_AREA + slot * 0x10000;
    this.mem.write(area, all);
    const per = Math.ceil(all.length / n);
    for (let i = 0; i < n; i++) {
      const len = Math.max(0, Math.min(per, all.length - per * i));
      this.drv.writeDesc(this.drv.desc(1), head + i, area + per * i, len, i < n - 1 ? VIRTQ_DESC_F_NEXT : 0, head + i + 1);
    }
    this.drv.publish(1, head);
    this.dev.write(MMIO.QUEUE_NOTIFY, 4, 1);
    this.drv.used(1);
  }

  /** A chain the spec forbids or that points nowhere: the device may fail, never the VMM. */
  hostileTx(rng: Rng): void {
    this.hostileQueues = true;
    const head = 4 * rng.int(NetRig.SLOTS);
    const kind = rng.int(5);
    const addr = kind === 0 ? 0xfffff000 + rng.int(0x1000) : NetRig.TX_AREA;
    const len = kind === 1 ? 0xffffffff : kind === 2 ? 0 : 64 + rng.int(200);
    const flags = kind === 3 ? VIRTQ_DESC_F_WRITE : kind === 4 ? VIRTQ_DESC_F_NEXT : 0;
    this.drv.writeDesc(this.drv.desc(1), head, addr, len, flags, head); // kind 4: a chain that loops
    this.drv.publish(1, head);
    this.dev.write(MMIO.QUEUE_NOTIFY, 4, 1);
    this.drv.used(1);
  }

  /** Frames the guest received since last asked; checks each fits the buffer it was put in. */
  takeRx(where: string): Buffer[] {
    const out: Buffer[] = [];
    for (const [head, len] of this.drv.used(0)) {
      const lens = this.rxPosted.get(head);
      if (lens === undefined) throw new Error(`${where}: the device used receive buffer ${head}, which was not posted`);
      this.rxPosted.delete(head);
      const room = lens.reduce((a, b) => a + b, 0);
      if (len > room) throw new Error(`${where}: ${len} bytes written into a ${room}-byte receive buffer`);
      if (len === 0) continue;
      if (len < VNET_HDR) throw new Error(`${where}: a received frame shorter than the virtio-net header`);
      const data = Buffer.alloc(len);
      for (let i = 0, at = 0; at < len; i++) {
        const n = Math.min(lens[i], len - at);
        this.mem.read(NetRig.RX_AREA + (head + i) * 0x1000, data.subarray(at, at + n));
        at += n;
      }
      out.push(data.subarray(VNET_HDR));
    }
    return out;
  }

  close(): void {
    this.mem.release();
  }
}

function deviceCase(n: number, rng: Rng): void {
  const where = `seed ${SEED} device case ${n}`;
  const version = rng.pick(['V1', 'V2'] as const);
  const imdsCompat = rng.bool(0.3);
  const rig = new NetRig(version, imdsCompat);
  mockTap.inbound.length = 0;
  mockTap.written.length = 0;
  mockTap.refuse = false;
  try {
    const peers = Array.from({ length: 1 + rng.int(4) }, () => new Peer(rng, GUEST_IP, 40000 + rng.int(1000)));
    const steps = 10 + rng.int(40);
    for (let s = 0; s < steps; s++) {
      const at = `${where} step ${s}`;
      switch (rng.int(8)) {
        case 0: // receive buffers of any size: empty, tiny, exactly a header, split, large
          for (let i = 0, k = 1 + rng.int(6); i < k; i++) rig.postRx(rng.pick([0, 1, 11, 12, 13, 54, 60, 1526, 2048, 1 + rng.int(4096)]), 1 + rng.int(3));
          break;
        case 1: // frames from the host, for the guest
          for (let i = 0, k = 1 + rng.int(4); i < k; i++) mockTap.inbound.push(Buffer.concat([Buffer.alloc(VNET_HDR), randomFrame(rng)]));
          rig.dev.guarded(() => rig.net.onTapReadable());
          break;
        case 2:
          if (rng.bool(0.3)) rig.hostileTx(rng);
          else mockTap.refuse = rng.bool(0.3);
          break;
        default:
          for (const f of hostileFrames(rng, peers)) rig.sendTx(f, rng.bool(0.2) ? 1 : 0, 1 + rng.int(4));
      }
      for (const f of mockTap.written) {
        // What is addressed to the MMDS never leaves through the TAP, whatever its shape.
        const frame = f.subarray(VNET_HDR);
        if (f.length > 65562) throw new Error(`${at}: a ${f.length}-byte frame written to the TAP`);
        const toMmds = frame.length >= 34 && frame.readUInt16BE(12) === 0x0800 && frame.readUInt32BE(30) === MMDS_IP;
        const arpForMmds = frame.length >= 42 && frame.readUInt16BE(12) === 0x0806 && frame.readUInt32BE(38) === MMDS_IP;
        if (toMmds || arpForMmds) throw new Error(`${at}: a frame for the MMDS reached the TAP: ${frame.toString('hex').slice(0, 120)}`);
      }
      mockTap.written.length = 0;
      for (const f of rig.takeRx(at)) {
        // From the stack (checked) or one of the host's frames (anything at all).
        if (f.length < 12 || !f.subarray(6, 12).equals(MMDS_MAC)) continue;
        checkOutput(f, at);
        for (const p of peers) p.observe([f]);
      }
      checkBounds(rig.stack, rig.limits, at);
      if (rig.broken) {
        reached.deviceFailures = (reached.deviceFailures ?? 0) + 1;
        if (!rig.hostileQueues) throw new Error(`${at}: virtio-net failed on well-formed queues: ${rig.failures.join('; ')}`);
        rig.start(); // the guest resets the device, as a driver would
        rig.hostileQueues = false;
      }
    }
    // A guest that behaves: fresh queues, big buffers, the same stack.
    rig.start();
    mockTap.refuse = false;
    mockTap.inbound.length = 0;
    const transport: Transport = {
      send: (f) => rig.sendTx(f),
      receive: () => {
        const out: Buffer[] = [];
        for (let round = 0; round < 1000; round++) {
          while (rig.rxPosted.size < 16) rig.postRx(2048);
          const got = rig.takeRx(`${where} final`);
          if (got.length === 0) break;
          out.push(...got.filter((f) => f.subarray(6, 12).equals(MMDS_MAC)));
          rig.dev.write(MMIO.QUEUE_NOTIFY, 4, 0);
        }
        return out;
      },
    };
    transport.receive(); // what the stack had queued for the hostile peers
    expectStillServes(transport, version, imdsCompat, 62_000 + (n % 1000), where);
    if (rig.broken) throw new Error(`${where}: virtio-net failed serving a valid guest: ${rig.failures.join('; ')}`);
    tally(rig.stack, rig.service);
    for (const [k, v] of Object.entries(rig.net.counters)) reached[`net.${k}`] = (reached[`net.${k}`] ?? 0) + v;
  } finally {
    rig.close();
  }
}

function runCases(count: number, seedOffset: number, body: (n: number, rng: Rng) => void): { cases: number; slowestMs: number } {
  const rng = new Rng(SEED + seedOffset);
  let slowestMs = 0;
  for (let n = 0; n < count; n++) {
    const t0 = process.hrtime.bigint();
    body(n, rng);
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    slowestMs = Math.max(slowestMs, ms);
    if (ms > CASE_TIME_LIMIT_MS) throw new Error(`case ${n} took ${ms.toFixed(0)} ms (limit ${CASE_TIME_LIMIT_MS}): runaway work`);
  }
  return { cases: count, slowestMs };
}

describe('fuzz: hostile frames against the MMDS network stack', () => {
  test(`${STACK_CASES} cases (seed ${SEED}): never throws, stays bounded, still serves a valid guest`, () => {
    const before = process.memoryUsage().heapUsed;
    const r = runCases(STACK_CASES, 0, stackCase);
    console.log(`mmds stack fuzz: ${r.cases} cases, slowest ${r.slowestMs.toFixed(1)} ms, heap ${((process.memoryUsage().heapUsed - before) / 2 ** 20).toFixed(1)} MiB more`);
  }, 600_000);

  test(`${DEVICE_CASES} cases (seed ${SEED}) through virtio-net: hostile queues and frames, nothing for the MMDS leaks to the TAP`, () => {
    const r = runCases(DEVICE_CASES, 1, deviceCase);
    console.log(`virtio-net + mmds fuzz: ${r.cases} cases, slowest ${r.slowestMs.toFixed(1)} ms; reached over both: ${JSON.stringify(reached)}`);
  }, 600_000);
});
