#!/usr/bin/env node
// Device-side I/O cost: requests pushed through fc-run's virtqueue and device model (a test
// driver writes the descriptors into real guest memory, as a guest would) against the raw
// syscalls on the same host object, in the same run.
//   block: 64 KiB reads and writes through virtio-blk vs pread/pwrite on the same file
//   net:   60-byte frames through virtio-net TX into a TAP vs write() on the same TAP (root)
// Usage: node bench/virtio-io.js [seconds-per-case=2]
'use strict';
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { execFileSync, spawnSync } = require('node:child_process');

const root = path.resolve(__dirname, '..');
const seconds = Number(process.argv[2] ?? 2);
const { GuestMemory } = require(path.join(root, 'dist', 'kvm', 'memory'));
const { VirtioMmio, MMIO, STATUS, VIRTIO_F_VERSION_1 } = require(path.join(root, 'dist', 'devices', 'virtio', 'mmio'));
const { BlockDevice, BLK } = require(path.join(root, 'dist', 'devices', 'virtio', 'block'));
const { NetDevice } = require(path.join(root, 'dist', 'devices', 'virtio', 'net'));
const tap = require(path.join(root, 'dist', 'kvm', 'tap'));

const QSIZE = 256;
/** A driver that keeps one queue full: descriptors at 0x10000, rings after, buffers from 1 MiB. */
function driver(mem, dev, queues) {
  const w = (off, v) => dev.write(off, 4, v);
  w(MMIO.STATUS, 0);
  w(MMIO.STATUS, 3);
  w(MMIO.DRIVER_FEATURES_SEL, 1);
  w(MMIO.DRIVER_FEATURES, Number(VIRTIO_F_VERSION_1 >> 32n));
  w(MMIO.STATUS, 3 | STATUS.FEATURES_OK);
  const q = [];
  for (let i = 0; i < queues; i++) {
    const desc = 0x10000 + i * 0x10000;
    w(MMIO.QUEUE_SEL, i);
    w(MMIO.QUEUE_NUM, QSIZE);
    w(MMIO.QUEUE_DESC_LOW, desc);
    w(MMIO.QUEUE_DRIVER_LOW, desc + 0x1000);
    w(MMIO.QUEUE_DEVICE_LOW, desc + 0x2000);
    w(MMIO.QUEUE_READY, 1);
    q.push({ desc, avail: desc + 0x1000, used: desc + 0x2000, idx: 0 });
  }
  w(MMIO.STATUS, 3 | STATUS.FEATURES_OK | STATUS.DRIVER_OK);
  const d = Buffer.alloc(16);
  return {
    desc(qi, i, addr, len, flags, next) {
      d.writeBigUInt64LE(BigInt(addr), 0);
      d.writeUInt32LE(len, 8);
      d.writeUInt16LE(flags, 12);
      d.writeUInt16LE(next, 14);
      mem.write(q[qi].desc + 16 * i, d);
    },
    /** Publishes `count` chains whose heads are 0, stride, 2*stride... and notifies. */
    publish(qi, heads) {
      const s = Buffer.alloc(2);
      for (const h of heads) {
        s.writeUInt16LE(h);
        mem.write(q[qi].avail + 4 + 2 * (q[qi].idx % QSIZE), s);
        q[qi].idx = (q[qi].idx + 1) & 0xffff;
      }
      s.writeUInt16LE(q[qi].idx);
      mem.write(q[qi].avail + 2, s);
      dev.write(MMIO.QUEUE_NOTIFY, 4, qi);
    },
  };
}

function timeIt(fn) {
  const until = process.hrtime.bigint() + BigInt(seconds * 1e9);
  let ops = 0;
  const t0 = process.hrtime.bigint();
  while (process.hrtime.bigint() < until) ops += fn();
  return ops / (Number(process.hrtime.bigint() - t0) / 1e9);
}

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fc-run-io-'));
const mem = GuestMemory.allocate([{ start: 0, size: 64 << 20 }]);
const lines = [];

// ---- block
const DISK = 256 << 20;
const file = path.join(dir, 'disk.img');
fs.writeFileSync(file, Buffer.alloc(0));
fs.truncateSync(file, DISK);
execFileSync('dd', ['if=/dev/urandom', `of=${file}`, 'bs=1M', `count=${DISK >> 20}`, 'conv=notrunc', 'status=none']);
const IO = 64 * 1024;
const BATCH = 64; // requests in flight per notify (3 descriptors each)
for (const dir_ of ['read', 'write']) {
  const blk = new BlockDevice(mem, { id: 'bench', path: file, readOnly: false, cacheType: 'Unsafe' });
  const dev = new VirtioMmio(mem, blk, () => undefined);
  const drv = driver(mem, dev, 1);
  const hdrs = 0x200000;
  const data = 0x400000;
  const status = 0x300000;
  for (let r = 0; r < BATCH; r++) {
    drv.desc(0, 3 * r, hdrs + 16 * r, 16, 1, 3 * r + 1);
    drv.desc(0, 3 * r + 1, data + IO * r, IO, dir_ === 'read' ? 1 | 2 : 1, 3 * r + 2);
    drv.desc(0, 3 * r + 2, status + r, 1, 2, 0);
  }
  let sector = 0;
  const hdr = Buffer.alloc(16);
  const viaQueue = timeIt(() => {
    for (let r = 0; r < BATCH; r++) {
      hdr.writeUInt32LE(dir_ === 'read' ? BLK.IN : BLK.OUT, 0);
      hdr.writeBigUInt64LE(BigInt(sector), 8);
      mem.write(hdrs + 16 * r, hdr);
      sector = (sector + IO / 512) % (DISK / 512);
    }
    drv.publish(0, Array.from({ length: BATCH }, (_, r) => 3 * r));
    return BATCH * IO;
  });
  const fd = fs.openSync(file, 'r+');
  const buf = Buffer.alloc(IO);
  let pos = 0;
  const raw = timeIt(() => {
    for (let r = 0; r < BATCH; r++) {
      if (dir_ === 'read') fs.readSync(fd, buf, 0, IO, pos);
      else fs.writeSync(fd, buf, 0, IO, pos);
      pos = (pos + IO) % DISK;
    }
    return BATCH * IO;
  });
  fs.closeSync(fd);
  blk.close();
  lines.push(`  block ${dir_.padEnd(5)} 64 KiB  virtio-blk ${(viaQueue / 2 ** 20).toFixed(0).padStart(6)} MiB/s   raw ${dir_ === 'read' ? 'pread ' : 'pwrite'} ${(raw / 2 ** 20).toFixed(0).padStart(6)} MiB/s   ratio ${(viaQueue / raw).toFixed(2)}`);
}

// ---- net (needs root for a TAP in a private network namespace)
if (process.getuid && process.getuid() === 0 && !process.env.FC_RUN_BENCH_IN_NETNS) {
  const ns = `fcrun-bench-${process.pid}`;
  try {
    execFileSync('ip', ['netns', 'add', ns]);
    execFileSync('ip', ['netns', 'exec', ns, 'ip', 'tuntap', 'add', 'dev', 'fcbench0', 'mode', 'tap']);
    execFileSync('ip', ['netns', 'exec', ns, 'ip', 'link', 'set', 'fcbench0', 'up']);
    const r = spawnSync('ip', ['netns', 'exec', ns, process.execPath, __filename, String(seconds), 'net'], { encoding: 'utf8', env: { ...process.env, FC_RUN_BENCH_IN_NETNS: '1' } });
    lines.push(r.stdout.trimEnd() || `  net: failed: ${r.stderr.trim()}`);
  } finally {
    spawnSync('ip', ['netns', 'del', ns]);
  }
} else if (process.env.FC_RUN_BENCH_IN_NETNS) {
  const fdNet = tap.openTap('fcbench0');
  const net = new NetDevice(mem, { id: 'bench', tapFd: fdNet, watchTap: () => undefined });
  const dev = new VirtioMmio(mem, net, () => undefined);
  const drv = driver(mem, dev, 2);
  const FRAME = 12 + 60;
  const frames = 0x800000;
  const frame = Buffer.alloc(FRAME);
  frame.fill(0xff, 12, 18); // broadcast
  frame.writeUInt16BE(0x88b5, 24); // local experimental EtherType
  const N = 128;
  for (let i = 0; i < N; i++) {
    mem.write(frames + 128 * i, frame);
    drv.desc(1, i, frames + 128 * i, FRAME, 0, 0);
  }
  const viaQueue = timeIt(() => {
    drv.publish(1, Array.from({ length: N }, (_, i) => i));
    return N;
  });
  const raw = timeIt(() => {
    for (let i = 0; i < N; i++) tap.tapWrite(fdNet, frame);
    return N;
  });
  const drops = net.counters.txDropped;
  console.log(`  net tx   60 B    virtio-net ${(viaQueue / 1000).toFixed(0).padStart(6)} kframes/s  raw TAP write ${(raw / 1000).toFixed(0).padStart(5)} kframes/s   ratio ${(viaQueue / raw).toFixed(2)}   (dropped by the TAP: ${drops})`);
  process.exit(0);
}

if (!process.env.FC_RUN_BENCH_IN_NETNS) {
  console.log(`Device-side I/O through fc-run's virtqueues vs the raw syscall, same host object, same run (${seconds} s per case)`);
  for (const l of lines) console.log(l);
}
mem.release();
fs.rmSync(dir, { recursive: true, force: true });
