import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { GuestMemory } from '../../../src/kvm/memory';
import { INT_CONFIG, INT_VRING, MMIO, STATUS, VIRTIO_F_VERSION_1, VIRTIO_MMIO_MAGIC, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VirtioMmio } from '../../../src/devices/virtio/mmio';
import { BLK, BLK_S, BlockDevice, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO } from '../../../src/devices/virtio/block';
import { EntropyDevice } from '../../../src/devices/virtio/rng';
import { VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '../../../src/devices/virtio/queue';
import { TestDriver } from '../../helpers/virtio-driver';

let dir: string;
let mem: GuestMemory;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fc-run-virtio-'));
  mem = TestDriver.memory();
});
afterAll(() => {
  mem.release();
  fs.rmSync(dir, { recursive: true, force: true });
});

const DISK_BYTES = 64 * 1024;

function disk(name: string, fill = 0): string {
  const file = path.join(dir, name);
  const content = Buffer.alloc(DISK_BYTES, fill);
  for (let s = 0; s < DISK_BYTES / 512; s++) content.writeUInt32LE(s, s * 512); // sector number at each sector start
  fs.writeFileSync(file, content);
  return file;
}

function blockRig(opts: { readOnly?: boolean; cacheType?: 'Unsafe' | 'Writeback'; file?: string } = {}) {
  const file = opts.file ?? disk(`disk-${Math.random().toString(36).slice(2)}.img`);
  let irqs = 0;
  const holder: { dev?: VirtioMmio } = {};
  const backend = new BlockDevice(mem, { id: 'rootfs-1', path: file, readOnly: opts.readOnly ?? false, cacheType: opts.cacheType ?? 'Unsafe', onMalformed: () => holder.dev?.countMalformedChain() });
  const dev = new VirtioMmio(mem, backend, () => irqs++);
  holder.dev = dev;
  const drv = new TestDriver(mem, dev);
  return { file, backend, dev, drv, irqs: () => irqs };
}

/** Sends one block request; returns [status byte, used length, data buffer address]. */
function request(drv: TestDriver, type: number, sector: number, data: { len: number; write?: boolean; content?: Uint8Array }[], opts: { indirect?: boolean } = {}) {
  const hdr = Buffer.alloc(16);
  hdr.writeUInt32LE(type, 0);
  hdr.writeBigUInt64LE(BigInt(sector), 8);
  const bufs = [{ addr: drv.buffer(16, hdr), len: 16 }];
  for (const d of data) bufs.push({ addr: drv.buffer(d.len, d.content), len: d.len, write: d.write } as never);
  const status = drv.buffer(1);
  drv.mem.write(status, Uint8Array.of(0xee));
  bufs.push({ addr: status, len: 1, write: true } as never);
  drv.submit(0, bufs, 0, opts);
  const used = drv.used(0);
  const st = Buffer.alloc(1);
  drv.mem.read(status, st);
  return { status: st[0], used, bufs };
}

describe('virtio-mmio transport', () => {
  test('identifies itself as a version 2 device with the backend\'s id', () => {
    const { drv } = blockRig();
    expect(drv.reg(MMIO.MAGIC)).toBe(VIRTIO_MMIO_MAGIC);
    expect(drv.reg(MMIO.VERSION)).toBe(2);
    expect(drv.reg(MMIO.DEVICE_ID)).toBe(2);
    expect(drv.reg(MMIO.QUEUE_NUM_MAX)).toBe(256);
  });

  test('offers VERSION_1, indirect descriptors and event index, plus device features', () => {
    const { drv } = blockRig({ readOnly: true });
    drv.set(MMIO.DEVICE_FEATURES_SEL, 0);
    const lo = BigInt(drv.reg(MMIO.DEVICE_FEATURES));
    drv.set(MMIO.DEVICE_FEATURES_SEL, 1);
    const hi = BigInt(drv.reg(MMIO.DEVICE_FEATURES));
    const features = (hi << 32n) | lo;
    for (const f of [VIRTIO_F_VERSION_1, VIRTIO_RING_F_INDIRECT_DESC, VIRTIO_RING_F_EVENT_IDX, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO]) expect(features & f).toBe(f);
  });

  test('FEATURES_OK is refused without VERSION_1 (legacy drivers) or with features it never offered', () => {
    const { drv } = blockRig();
    expect(drv.init(0n) & STATUS.FEATURES_OK).toBe(0);
    expect(drv.init(VIRTIO_F_VERSION_1 | (1n << 40n)) & STATUS.FEATURES_OK).toBe(0);
    expect(drv.init(VIRTIO_F_VERSION_1) & STATUS.DRIVER_OK).toBe(STATUS.DRIVER_OK);
  });

  test('capacity in 512-byte sectors in config space, readable in pieces', () => {
    const { dev } = blockRig();
    expect(dev.read(MMIO.CONFIG, 4)).toBe(DISK_BYTES / 512);
    expect(dev.read(MMIO.CONFIG + 4, 4)).toBe(0);
    expect(dev.read(MMIO.CONFIG, 1)).toBe((DISK_BYTES / 512) & 0xff);
    expect(dev.read(MMIO.CONFIG + 8, 4)).toBe(0); // past the config space: counted, harmless
    expect(dev.counters.invalidRegisterAccesses).toBe(1);
  });

  test('status bits can only be added in order; writing 0 resets everything', () => {
    const { drv, dev } = blockRig();
    drv.init();
    drv.set(MMIO.STATUS, STATUS.ACKNOWLEDGE); // removing bits: refused
    expect(drv.reg(MMIO.STATUS) & STATUS.DRIVER_OK).toBe(STATUS.DRIVER_OK);
    drv.set(MMIO.STATUS, 0);
    expect(drv.reg(MMIO.STATUS)).toBe(0);
    expect(dev.isActive).toBe(false);
    drv.set(MMIO.QUEUE_SEL, 0);
    expect(drv.reg(MMIO.QUEUE_READY)).toBe(0);
  });

  test('DRIVER_OK without FEATURES_OK is refused', () => {
    const { drv, dev } = blockRig();
    drv.set(MMIO.STATUS, STATUS.ACKNOWLEDGE | STATUS.DRIVER);
    drv.set(MMIO.STATUS, STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.DRIVER_OK);
    expect(dev.isActive).toBe(false);
  });

  test('a queue size that is not a power of two makes activation fail with NEEDS_RESET', () => {
    const { drv, dev, irqs } = blockRig();
    const status = drv.init(VIRTIO_F_VERSION_1, { queueSize: 12 });
    expect(dev.isActive).toBe(false);
    expect(status & STATUS.NEEDS_RESET).toBe(STATUS.NEEDS_RESET);
    expect(drv.reg(MMIO.INTERRUPT_STATUS) & INT_CONFIG).toBe(INT_CONFIG);
    expect(irqs()).toBe(1);
  });

  test('a notify before the device is ready is ignored and counted', () => {
    const { drv, dev } = blockRig();
    drv.set(MMIO.QUEUE_NOTIFY, 0);
    drv.set(MMIO.QUEUE_NOTIFY, 7);
    expect(dev.counters.invalidRegisterAccesses).toBe(2);
  });

  test('interrupt status is set with each completion and cleared by ACK', () => {
    const { drv, irqs } = blockRig();
    drv.init();
    request(drv, BLK.GET_ID, 0, [{ len: 20, write: true }]);
    expect(irqs()).toBe(1);
    expect(drv.reg(MMIO.INTERRUPT_STATUS)).toBe(INT_VRING);
    drv.set(MMIO.INTERRUPT_ACK, INT_VRING);
    expect(drv.reg(MMIO.INTERRUPT_STATUS)).toBe(0);
  });
});

describe('virtio-blk', () => {
  test('write then read back; the file holds the bytes', () => {
    const { drv, file, backend } = blockRig();
    drv.init();
    const payload = Buffer.alloc(1024, 0xab);
    const w = request(drv, BLK.OUT, 4, [{ len: 1024, content: payload }]);
    expect(w.status).toBe(BLK_S.OK);
    expect(w.used).toEqual([[0, 1]]);
    expect(fs.readFileSync(file).subarray(4 * 512, 4 * 512 + 1024).equals(payload)).toBe(true);
    const r = request(drv, BLK.IN, 4, [{ len: 512, write: true }, { len: 512, write: true }]);
    expect(r.status).toBe(BLK_S.OK);
    expect(r.used).toEqual([[0, 1025]]);
    const back = Buffer.alloc(512);
    drv.mem.read(r.bufs[2].addr, back);
    expect(back.equals(payload.subarray(0, 512))).toBe(true);
    expect(backend.counters).toMatchObject({ reads: 1, writes: 1, readBytes: 1024, writeBytes: 1024, errors: 0 });
  });

  test('reads come from the right sector', () => {
    const { drv } = blockRig();
    drv.init();
    const r = request(drv, BLK.IN, 9, [{ len: 512, write: true }]);
    const back = Buffer.alloc(4);
    drv.mem.read(r.bufs[1].addr, back);
    expect(back.readUInt32LE(0)).toBe(9);
  });

  test('indirect descriptors carry a request just as well', () => {
    const { drv } = blockRig();
    drv.init(VIRTIO_F_VERSION_1 | VIRTIO_RING_F_INDIRECT_DESC);
    const r = request(drv, BLK.IN, 3, [{ len: 512, write: true }], { indirect: true });
    expect(r.status).toBe(BLK_S.OK);
    const back = Buffer.alloc(4);
    drv.mem.read(r.bufs[1].addr, back);
    expect(back.readUInt32LE(0)).toBe(3);
  });

  test('GET_ID returns the drive id', () => {
    const { drv } = blockRig();
    drv.init();
    const r = request(drv, BLK.GET_ID, 0, [{ len: 20, write: true }]);
    const id = Buffer.alloc(20);
    drv.mem.read(r.bufs[1].addr, id);
    expect(id.toString().replace(/\0+$/, '')).toBe('rootfs-1');
  });

  test('a read-only drive refuses writes with an I/O error and the file is untouched', () => {
    const file = disk('ro.img');
    const before = fs.readFileSync(file);
    const { drv, backend } = blockRig({ readOnly: true, file });
    drv.init();
    const w = request(drv, BLK.OUT, 0, [{ len: 512, content: Buffer.alloc(512, 0xff) }]);
    expect(w.status).toBe(BLK_S.IOERR);
    expect(fs.readFileSync(file).equals(before)).toBe(true);
    expect(backend.counters.errors).toBe(1);
  });

  test('flush: Writeback syncs, Unsafe acknowledges; both OK', () => {
    for (const cacheType of ['Writeback', 'Unsafe'] as const) {
      const { drv, backend } = blockRig({ cacheType });
      drv.init();
      const f = request(drv, BLK.FLUSH, 0, []);
      expect(f.status).toBe(BLK_S.OK);
      expect(backend.counters.flushes).toBe(1);
    }
  });

  test('a request past the end of the disk is an I/O error', () => {
    const { drv } = blockRig();
    drv.init();
    expect(request(drv, BLK.IN, DISK_BYTES / 512, [{ len: 512, write: true }]).status).toBe(BLK_S.IOERR);
    expect(request(drv, BLK.IN, 2 ** 60, [{ len: 512, write: true }]).status).toBe(BLK_S.IOERR);
  });

  test('a file that shrinks at run time gives I/O errors, not a crash', () => {
    const { drv, file } = blockRig();
    drv.init();
    fs.truncateSync(file, 1024);
    expect(request(drv, BLK.IN, 100, [{ len: 512, write: true }]).status).toBe(BLK_S.IOERR);
    expect(request(drv, BLK.IN, 0, [{ len: 512, write: true }]).status).toBe(BLK_S.OK);
  });

  test('an unknown request type is UNSUPP', () => {
    const { drv } = blockRig();
    drv.init();
    expect(request(drv, 99, 0, [{ len: 16, write: true }]).status).toBe(BLK_S.UNSUPP);
  });
});

describe('hostile descriptor chains', () => {
  function raw(setup: (drv: TestDriver) => void) {
    const rig = blockRig();
    rig.drv.init();
    setup(rig.drv);
    rig.drv.set(MMIO.QUEUE_NOTIFY, 0);
    return rig;
  }

  test('a chain that loops is returned unused and counted; the device keeps working', () => {
    const { drv, dev } = raw((d) => {
      d.writeDesc(d.desc(0), 0, d.buffer(16), 16, VIRTQ_DESC_F_NEXT, 1);
      d.writeDesc(d.desc(0), 1, d.buffer(16), 16, VIRTQ_DESC_F_NEXT, 0);
      d.publish(0, 0);
    });
    expect(drv.used(0)).toEqual([[0, 0]]);
    expect(dev.counters.malformedChains).toBe(1);
    expect(request(drv, BLK.GET_ID, 0, [{ len: 20, write: true }]).status).toBe(BLK_S.OK);
  });

  test('buffers outside guest memory are refused, never touched', () => {
    const { drv, dev } = raw((d) => {
      const hdr = Buffer.alloc(16);
      hdr.writeUInt32LE(BLK.IN, 0);
      d.writeDesc(d.desc(0), 0, d.buffer(16, hdr), 16, VIRTQ_DESC_F_NEXT, 1);
      d.writeDesc(d.desc(0), 1, 2 ** 40, 512, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 2);
      d.writeDesc(d.desc(0), 2, d.buffer(1), 1, VIRTQ_DESC_F_WRITE, 0);
      d.publish(0, 0);
    });
    expect(drv.used(0)).toEqual([[0, 0]]);
    expect(dev.counters.malformedChains).toBe(1);
  });

  test('a buffer that runs off the end of RAM is refused', () => {
    const { drv } = raw((d) => {
      d.writeDesc(d.desc(0), 0, (4 << 20) - 8, 16, 0, 0);
      d.publish(0, 0);
    });
    expect(drv.used(0)).toEqual([[0, 0]]);
  });

  test('zero-length buffers and a missing status byte are invalid requests', () => {
    const { drv, backend } = raw((d) => {
      d.writeDesc(d.desc(0), 0, d.buffer(16), 0, VIRTQ_DESC_F_NEXT, 1);
      d.writeDesc(d.desc(0), 1, d.buffer(1), 0, VIRTQ_DESC_F_WRITE, 0);
      d.publish(0, 0);
    });
    expect(drv.used(0)).toEqual([[0, 0]]);
    expect(backend.counters.invalidRequests).toBe(1);
  });

  test('a descriptor index beyond the table is refused', () => {
    const { drv } = raw((d) => {
      d.writeDesc(d.desc(0), 0, d.buffer(16), 16, VIRTQ_DESC_F_NEXT, 500);
      d.publish(0, 0);
    });
    expect(drv.used(0)).toEqual([[0, 0]]);
  });

  test('an available index far ahead of the queue breaks the device (NEEDS_RESET), not fc-run', () => {
    const { drv, dev } = raw((d) => {
      const idx = Buffer.alloc(2);
      idx.writeUInt16LE(1000);
      d.mem.write(d.availRing(0) + 2, idx);
    });
    expect(dev.isActive).toBe(false);
    expect(drv.reg(MMIO.STATUS) & STATUS.NEEDS_RESET).toBe(STATUS.NEEDS_RESET);
    // A reset brings it back.
    expect(drv.init() & STATUS.DRIVER_OK).toBe(STATUS.DRIVER_OK);
    expect(request(drv, BLK.GET_ID, 0, [{ len: 20, write: true }]).status).toBe(BLK_S.OK);
  });

  test('an indirect table longer than a queue is refused at once (no walk over millions of entries)', () => {
    const { drv, dev } = raw((d) => {
      d.writeDesc(d.desc(0), 0, 0x100000, 16 * 4096, 4 /* INDIRECT */, 0);
      d.publish(0, 0);
    });
    expect(drv.used(0)).toEqual([[0, 0]]);
    expect(dev.counters.malformedChains).toBe(1);
  });

  test('a failed device quiesces its back end until the driver resets it', () => {
    const { drv, dev, backend } = blockRig();
    drv.init();
    const reset = jest.spyOn(backend, 'reset');
    const idx = Buffer.alloc(2);
    idx.writeUInt16LE(1000);
    drv.mem.write(drv.availRing(0) + 2, idx);
    drv.set(MMIO.QUEUE_NOTIFY, 0);
    expect(dev.isActive).toBe(false);
    expect(reset).toHaveBeenCalled();
  });

  test('queue rings outside guest RAM make activation fail', () => {
    const { drv, dev } = blockRig();
    drv.set(MMIO.STATUS, STATUS.ACKNOWLEDGE | STATUS.DRIVER);
    drv.set(MMIO.DRIVER_FEATURES_SEL, 1);
    drv.set(MMIO.DRIVER_FEATURES, 1);
    drv.set(MMIO.STATUS, STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK);
    drv.set(MMIO.QUEUE_SEL, 0);
    drv.set(MMIO.QUEUE_NUM, 16);
    drv.set(MMIO.QUEUE_DESC_LOW, 0);
    drv.set(MMIO.QUEUE_DESC_HIGH, 0x10);
    drv.set(MMIO.QUEUE_READY, 1);
    drv.set(MMIO.STATUS, STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK | STATUS.DRIVER_OK);
    expect(dev.isActive).toBe(false);
    expect(dev.lastFailure).toMatch(/outside guest RAM/);
  });
});

describe('event index', () => {
  test('with VIRTIO_RING_F_EVENT_IDX the device interrupts only when used_event is crossed', () => {
    const { drv, irqs } = blockRig();
    drv.init(VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX);
    const setUsedEvent = (v: number) => {
      const b = Buffer.alloc(2);
      b.writeUInt16LE(v);
      drv.mem.write(drv.availRing(0) + 4 + 2 * drv.queueSize, b);
    };
    setUsedEvent(5); // interrupt me after the 6th completion
    for (let i = 0; i < 5; i++) request(drv, BLK.GET_ID, 0, [{ len: 20, write: true }]);
    expect(irqs()).toBe(0);
    request(drv, BLK.GET_ID, 0, [{ len: 20, write: true }]);
    expect(irqs()).toBe(1);
    // The device publishes avail_event so the driver can skip notifications.
    const ev = Buffer.alloc(2);
    drv.mem.read(drv.usedRing(0) + 4 + 8 * drv.queueSize, ev);
    expect(ev.readUInt16LE()).toBe(6);
  });
});

describe('virtio-rng', () => {
  test('fills the offered buffers with random bytes', () => {
    let irqs = 0;
    const rng = new EntropyDevice(mem);
    const dev = new VirtioMmio(mem, rng, () => irqs++);
    const drv = new TestDriver(mem, dev);
    expect(drv.reg(MMIO.DEVICE_ID)).toBe(4);
    drv.init();
    const a = drv.buffer(64);
    const b = drv.buffer(64);
    drv.submit(0, [{ addr: a, len: 64, write: true }, { addr: b, len: 64, write: true }]);
    expect(drv.used(0)).toEqual([[0, 128]]);
    const bytes = Buffer.alloc(128);
    drv.mem.read(a, bytes.subarray(0, 64));
    drv.mem.read(b, bytes.subarray(64));
    expect(new Set(bytes).size).toBeGreaterThan(50);
    expect(irqs).toBe(1);
    expect(rng.counters).toMatchObject({ requests: 1, bytes: 128 });
  });
});
