// Run inside a network namespace that has the TAP device named in argv[2] (with an address): moves
// frames through a rate-limited virtio-net device (real epoll loop, real timerfd) and prints the
// achieved rate. Direction argv[6]: "tx" (default) sends frames from the guest side; "rx" has the
// host kernel send UDP datagrams out of the TAP (to a static neighbour) for the guest to receive.
'use strict';
const path = require('node:path');
const root = path.resolve(__dirname, '..', '..');
const { GuestMemory } = require(path.join(root, 'dist', 'kvm', 'memory'));
const { VirtioMmio, MMIO, STATUS, VIRTIO_F_VERSION_1 } = require(path.join(root, 'dist', 'devices', 'virtio', 'mmio'));
const { NetDevice } = require(path.join(root, 'dist', 'devices', 'virtio', 'net'));
const { openTap } = require(path.join(root, 'dist', 'kvm', 'tap'));
const { TimerFd } = require(path.join(root, 'dist', 'kvm', 'timerfd'));
const { Throttle } = require(path.join(root, 'dist', 'limits', 'throttle'));
const { EventLoop } = require(path.join(root, 'dist', 'vmm', 'event-loop'));

const [tapName, sizeArg, refillArg, framesArg, directionArg] = process.argv.slice(2);
const direction = directionArg ?? 'tx';
const bucket = { size: Number(sizeArg), refill_time: Number(refillArg) };
const FRAME = 1000;
const frames = Number(framesArg);
const mem = GuestMemory.allocate([{ start: 0, size: 16 << 20 }]);
const loop = new EventLoop();
const timer = new TimerFd();
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

/** Puts `count` buffers of `len` bytes on queue `q` (device-writable for rx), optionally filled. */
function post(q, count, len, writable, fill) {
  const ring = base + q * 0x10000;
  const d = Buffer.alloc(16);
  for (let i = 0; i < count; i++) {
    const addr = 0x100000 + q * 0x200000 + i * 2048;
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

let t0;
let immediate;
if (direction === 'rx') {
  w(MMIO.STATUS, 3 | STATUS.FEATURES_OK | STATUS.DRIVER_OK);
  post(0, 256, 2048, true);
  w(MMIO.QUEUE_NOTIFY, 0);
  // The host kernel sends to a neighbour on the TAP's subnet: each datagram leaves through the
  // TAP as one 1000-byte Ethernet frame (14 + 20 + 8 + 958).
  const dgram = require('node:dgram');
  const sock = dgram.createSocket('udp4');
  const payload = Buffer.alloc(FRAME - 42, 0x5a);
  const target = process.env.NET_RATE_TARGET ?? '10.200.0.9';
  let sent = 0;
  t0 = process.hrtime.bigint();
  const sendNext = () => {
    if (sent < frames) sock.send(payload, 9, target, () => (++sent, sendNext()));
  };
  sendNext();
  // Delivery to the guest happens in the device's loop; the sends run on Node's own loop, so
  // alternate: a short epoll wait, then let Node run its callbacks.
  const step = () => {
    loop.runOnce(5);
    if (used(0) >= frames) {
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
  const frame = Buffer.alloc(12 + FRAME);
  frame.fill(0xff, 12, 18);
  frame.writeUInt16BE(0x88b5, 24);
  w(MMIO.STATUS, 3 | STATUS.FEATURES_OK | STATUS.DRIVER_OK);
  t0 = process.hrtime.bigint();
  post(1, frames, frame.length, false, frame);
  w(MMIO.QUEUE_NOTIFY, 1);
  immediate = used(1);
  loop.add(timer.fd, () => {
    timer.acknowledge();
    net.resume('tx');
    if (used(1) >= frames) loop.stop();
  });
  if (immediate < frames) loop.run();
  report();
}

function report() {
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const configured = bucket.size / (bucket.refill_time / 1000);
  const achieved = ((frames - immediate) * FRAME) / seconds;
  const c = net.counters;
  console.log(JSON.stringify({ configured, achieved, immediate, sent: c.txFrames, received: c.rxFrames, rxBytes: c.rxBytes, dropped: c.txDropped + c.rxDropped, throttled: throttle.limiter.counters.throttled }));
}
