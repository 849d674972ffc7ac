// Run inside a network namespace that has the TAP device named in argv[2]: sends frames through a
// tx-rate-limited virtio-net device (real epoll loop, real timerfd) and prints the achieved rate.
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

const [tapName, sizeArg, refillArg, framesArg] = process.argv.slice(2);
const bucket = { size: Number(sizeArg), refill_time: Number(refillArg) };
const FRAME = 1000;
const frames = Number(framesArg);
const mem = GuestMemory.allocate([{ start: 0, size: 16 << 20 }]);
const loop = new EventLoop();
const timer = new TimerFd();
const throttle = new Throttle({ bandwidth: bucket }, timer);
const net = new NetDevice(mem, { id: 'eth0', tapFd: openTap(tapName), txThrottle: throttle, watchTap: () => undefined });
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
w(MMIO.STATUS, 3 | STATUS.FEATURES_OK | STATUS.DRIVER_OK);
const tx = base + 0x10000;
const frame = Buffer.alloc(12 + FRAME);
frame.fill(0xff, 12, 18);
frame.writeUInt16BE(0x88b5, 24);
const d = Buffer.alloc(16);
for (let i = 0; i < frames; i++) {
  mem.write(0x100000 + i * 2048, frame);
  d.writeBigUInt64LE(BigInt(0x100000 + i * 2048), 0);
  d.writeUInt32LE(frame.length, 8);
  d.writeUInt16LE(0, 12);
  mem.write(tx + 16 * i, d);
  const slot = Buffer.alloc(2);
  slot.writeUInt16LE(i);
  mem.write(tx + 0x1000 + 4 + 2 * i, slot);
}
const idx = Buffer.alloc(2);
idx.writeUInt16LE(frames);
const used = () => Buffer.from(mem.view(tx + 0x2000 + 2, 2)).readUInt16LE(0);
const t0 = process.hrtime.bigint();
mem.write(tx + 0x1000 + 2, idx);
w(MMIO.QUEUE_NOTIFY, 1);
const immediate = used();
loop.add(timer.fd, () => {
  timer.acknowledge();
  net.resume('tx');
  if (used() >= frames) loop.stop();
});
if (immediate < frames) loop.run();
const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
const configured = bucket.size / (bucket.refill_time / 1000);
const achieved = ((frames - immediate) * FRAME) / seconds;
console.log(JSON.stringify({ configured, achieved, immediate, sent: net.counters.txFrames, dropped: net.counters.txDropped, throttled: throttle.limiter.counters.throttled }));
