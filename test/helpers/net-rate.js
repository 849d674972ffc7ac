// Run inside a network namespace that has the TAP device named in argv[2] (with an address): moves
// frames through a rate-limited virtio-net device (real epoll loop, real timerfd) and prints JSON
// facts about what went through and when. Direction argv[6]: "tx" (default) sends frames from the
// guest side; "rx" has the host kernel send UDP datagrams out of the TAP (to a static neighbour)
// for the guest to receive.
//
// What it reports is what the limiter guarantees, whatever the machine's load: at every moment t
// (from the bucket's creation) the bytes through are at most size + rate * t. Each sample is taken
// after the frames it counts went through, so a late sample only loosens the bound it checks.
// In rx, only the test's own datagrams (marked with this process's id) count as received; any
// other frame the guest got is reported as foreign.
'use strict';
const path = require('node:path');
const root = path.resolve(__dirname, '..', '..');
const { GuestMemory } = require(path.join(root, 'dist', 'kvm', 'memory'));
const { VirtioMmio, MMIO, STATUS, VIRTIO_F_VERSION_1 } = require(path.join(root, 'dist', 'devices', 'virtio', 'mmio'));
const { NetDevice } = require(path.join(root, 'dist', 'devices', 'virtio', 'net'));
const { openTap, VNET_HDR_BYTES } = require(path.join(root, 'dist', 'kvm', 'tap'));
const { TimerFd } = require(path.join(root, 'dist', 'kvm', 'timerfd'));
const { Throttle } = require(path.join(root, 'dist', 'limits', 'throttle'));
const { EventLoop } = require(path.join(root, 'dist', 'vmm', 'event-loop'));

const [tapName, sizeArg, refillArg, framesArg, directionArg] = process.argv.slice(2);
const direction = directionArg ?? 'tx';
const bucket = { size: Number(sizeArg), refill_time: Number(refillArg) };
const FRAME = 1000;
const frames = Number(framesArg);
/** A run that has not finished by then reports what it has instead of hanging. */
const DEADLINE_NS = 45_000_000_000n;
const mem = GuestMemory.allocate([{ start: 0, size: 16 << 20 }]);
const loop = new EventLoop();
const timer = new TimerFd();
// Taken before the bucket exists: the bound measured from here is looser than from its creation.
const tCreated = process.hrtime.bigint();
const throttle = new Throttle({ bandwidth: bucket }, timer);
const tapFd = openTap(tapName);
let watching = false;
const net = new NetDevice(mem, {
  id: 'eth0',
  tapFd,
  [direction === 'rx' ? 'rxThrottle' : 'txThrottle']: throttle,
  watchTap: (on) => {
    if (direction !== 'rx' || on === watching) return;
    watching = on;
    if (on) loop.add(tapFd, () => net.onTapReadable());
    else loop.remove(tapFd);
  },
});
const dev = new VirtioMmio(mem, net, () => undefined);
const w = (off, v) => dev.write(off, 4, v);
w(MMIO.STATUS, 3);
w(MMIO.DRIVER_FEATURES_SEL, 1);
w(MMIO.DRIVER_FEATURES, Number(VIRTIO_F_VERSION_1 >> 32n));
w(MMIO.STATUS, 3 | STATUS.FEATURES_OK);
const base = 0x10000;
for (let q = 0; q < 2; q++) {
  w(MMIO.QUEUE_SEL, q);
  w(MMIO.QUEUE_NUM, 256);
  w(MMIO.QUEUE_DESC_LOW, base + q * 0x10000);
  w(MMIO.QUEUE_DRIVER_LOW, base + q * 0x10000 + 0x1000);
  w(MMIO.QUEUE_DEVICE_LOW, base + q * 0x10000 + 0x2000);
  w(MMIO.QUEUE_READY, 1);
}
const bufferAddr = (q, i) => 0x100000 + q * 0x200000 + i * 2048;

/** Puts `count` buffers of `len` bytes on queue `q` (device-writable for rx), optionally filled. */
function post(q, count, len, writable, fill) {
  const ring = base + q * 0x10000;
  const d = Buffer.alloc(16);
  for (let i = 0; i < count; i++) {
    const addr = bufferAddr(q, i);
    if (fill) mem.write(addr, fill);
    d.writeBigUInt64LE(BigInt(addr), 0);
    d.writeUInt32LE(len, 8);
    d.writeUInt16LE(writable ? 2 : 0, 12);
    mem.write(ring + 16 * i, d);
    const slot = Buffer.alloc(2);
    slot.writeUInt16LE(i);
    mem.write(ring + 0x1000 + 4 + 2 * i, slot);
  }
  const idx = Buffer.alloc(2);
  idx.writeUInt16LE(count);
  mem.write(ring + 0x1000 + 2, idx);
}
const used = (q) => Buffer.from(mem.view(base + q * 0x10000 + 0x2000 + 2, 2)).readUInt16LE(0);
/** The used-ring element `n` of queue `q`: the descriptor id and the length written. */
function usedElem(q, n) {
  const e = Buffer.from(mem.view(base + q * 0x10000 + 0x2000 + 4 + 8 * (n % 256), 8));
  return { id: e.readUInt32LE(0), len: e.readUInt32LE(4) };
}

/** The largest byte count the bucket may have let through by now (exact integer arithmetic). */
function bound(now) {
  const elapsed = now - tCreated;
  return BigInt(bucket.size) + (BigInt(bucket.size) * elapsed) / (BigInt(bucket.refill_time) * 1_000_000n);
}
let samples = 0;
/** Largest (bytes through - bound) seen; above 0 means the limiter let too much through. */
let worstExcess = -Infinity;
function sample(bytesThrough) {
  const excess = Number(BigInt(bytesThrough) - bound(process.hrtime.bigint()));
  samples++;
  if (excess > worstExcess) worstExcess = excess;
}

let t0;
let immediate;
let own = 0;
let ownBytes = 0;
let foreign = 0;
let timedOut = false;
const marker = Buffer.from(`fc-run net-rate ${process.pid} `);
if (direction === 'rx') {
  w(MMIO.STATUS, 3 | STATUS.FEATURES_OK | STATUS.DRIVER_OK);
  post(0, 256, 2048, true);
  w(MMIO.QUEUE_NOTIFY, 0);
  // The host kernel sends to a neighbour on the TAP's subnet: each datagram leaves through the
  // TAP as one 1000-byte Ethernet frame (14 + 20 + 8 + 958).
  const dgram = require('node:dgram');
  const sock = dgram.createSocket('udp4');
  const payload = Buffer.alloc(FRAME - 42, 0x5a);
  marker.copy(payload);
  const target = process.env.NET_RATE_TARGET ?? '10.200.0.9';
  let sent = 0;
  let seen = 0;
  /** Whether a frame the guest received is one of this run's datagrams. */
  const isOwn = (frame) =>
    frame.length === FRAME && frame.readUInt16BE(12) === 0x0800 && frame[23] === 17 && frame.readUInt16BE(36) === 9 && frame.subarray(42, 42 + marker.length).equals(marker);
  const classify = () => {
    for (const end = used(0); seen !== end; seen = (seen + 1) & 0xffff) {
      const { id, len } = usedElem(0, seen);
      const frame = Buffer.from(mem.view(bufferAddr(0, id) + VNET_HDR_BYTES, Math.max(0, len - VNET_HDR_BYTES)));
      if (isOwn(frame)) {
        own++;
        ownBytes += frame.length;
      } else foreign++;
    }
  };
  t0 = process.hrtime.bigint();
  const sendNext = () => {
    if (sent < frames) sock.send(payload, 9, target, () => (++sent, sendNext()));
  };
  sendNext();
  // Delivery to the guest happens in the device's loop; the sends run on Node's own loop, so
  // alternate: a short epoll wait, then let Node run its callbacks.
  const step = () => {
    loop.runOnce(5);
    sample(net.counters.rxBytes);
    classify();
    timedOut = process.hrtime.bigint() - t0 > DEADLINE_NS;
    if (own >= frames || timedOut) {
      sock.close();
      report();
    } else setImmediate(step);
  };
  immediate = Math.floor(bucket.size / FRAME);
  loop.add(timer.fd, () => {
    timer.acknowledge();
    net.resume('rx');
  });
  setImmediate(step);
} else {
  const frame = Buffer.alloc(VNET_HDR_BYTES + FRAME);
  frame.fill(0xff, VNET_HDR_BYTES, VNET_HDR_BYTES + 6);
  frame.writeUInt16BE(0x88b5, VNET_HDR_BYTES + 12);
  marker.copy(frame, VNET_HDR_BYTES + 14);
  w(MMIO.STATUS, 3 | STATUS.FEATURES_OK | STATUS.DRIVER_OK);
  t0 = process.hrtime.bigint();
  post(1, frames, frame.length, false, frame);
  w(MMIO.QUEUE_NOTIFY, 1);
  sample(net.counters.txBytes);
  immediate = used(1);
  loop.add(timer.fd, () => {
    timer.acknowledge();
    net.resume('tx');
    sample(net.counters.txBytes);
  });
  while (used(1) < frames && !(timedOut = process.hrtime.bigint() - t0 > DEADLINE_NS)) loop.runOnce(1000);
  own = net.counters.txFrames;
  ownBytes = net.counters.txBytes;
  report();
}

function report() {
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const configured = bucket.size / (bucket.refill_time / 1000);
  // What an ideal machine needs: everything beyond the full bucket at the configured rate.
  const idealSeconds = Math.max(0, frames * FRAME - bucket.size) / configured;
  const c = net.counters;
  console.log(
    JSON.stringify({
      configured,
      seconds,
      idealSeconds,
      immediate,
      own,
      ownBytes,
      foreign,
      samples,
      worstExcess,
      timedOut,
      dropped: c.txDropped + c.rxDropped,
      throttled: throttle.limiter.counters.throttled,
    }),
  );
}
