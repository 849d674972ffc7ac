import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { GuestMemory } from '../../../src/kvm/memory';
import { INT_CONFIG, INT_VRING, MMIO, MmioTransportState, STATUS, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VirtioMmio } from '../../../src/devices/virtio/mmio';
import { BLK, BLK_S, BlockDevice } from '../../../src/devices/virtio/block';
import { EntropyDevice } from '../../../src/devices/virtio/rng';
import { VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '../../../src/devices/virtio/queue';
import { Throttle } from '../../../src/limits/throttle';
import { Clock, TokenBucket } from '../../../src/limits/token-bucket';
import { MmdsService } from '../../../src/devices/mmds/service';
import { Serial8250 } from '../../../src/devices/legacy/serial';
import { I8042 } from '../../../src/devices/legacy/i8042';
import { planRestore } from '../../../src/vmm/devices-state';
import { drainEventfd, EventLoop, signalEventfd } from '../../../src/vmm/event-loop';
import { EFD_CLOEXEC, EFD_NONBLOCK, sys } from '../../../src/kvm/libc';
import { FcRunError } from '../../../src/errors';
import { MEM_SIZE, TestDriver } from '../../helpers/virtio-driver';

/**
 * Device state saved and restored as a snapshot does it: a device driven to an active state with
 * traffic, its state saved (and passed through JSON, as the snapshot file carries it), a NEW device
 * built on the same guest memory and given that state, and the guest's driver carrying on with it.
 * Then hostile states: every malformed field refused with a 'snapshot-invalid' error naming it.
 */

let dir: string;
let mem: GuestMemory;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fc-run-snapshot-'));
  mem = TestDriver.memory();
});
afterAll(() => {
  mem.release();
  fs.rmSync(dir, { recursive: true, force: true });
});

/** What a snapshot file does to the state: JSON out and back. */
function throughJson<T>(v: T): T {
  return JSON.parse(JSON.stringify(v)) as T;
}

/** Runs `fn` and returns the FcRunError it threw (fails the test if it threw nothing or something else). */
function refusal(fn: () => void): FcRunError {
  try {
    fn();
  } catch (err) {
    if (err instanceof FcRunError) return err;
    throw new Error(`expected a FcRunError, got ${(err as Error).stack}`);
  }
  throw new Error('expected the restore to be refused, and it was not');
}

const DISK_BYTES = 64 * 1024;

function disk(name: string): string {
  const file = path.join(dir, name);
  const content = Buffer.alloc(DISK_BYTES);
  for (let s = 0; s < DISK_BYTES / 512; s++) content.writeUInt32LE(s, s * 512); // sector number at each sector start
  fs.writeFileSync(file, content);
  return file;
}

function blockDevice(file: string, opts: { readOnly?: boolean; throttle?: Throttle } = {}) {
  let irqs = 0;
  const holder: { dev?: VirtioMmio } = {};
  const backend = new BlockDevice(mem, { id: 'rootfs', path: file, readOnly: opts.readOnly ?? false, cacheType: 'Unsafe', onMalformed: () => holder.dev?.countMalformedChain(), throttle: opts.throttle });
  const dev = new VirtioMmio(mem, backend, () => irqs++, new Int32Array(new SharedArrayBuffer(4)));
  holder.dev = dev;
  return { backend, dev, irqs: () => irqs };
}

/** Lays out a block request's chain at descriptor 0; returns the buffers and the status byte's address. */
function blockChain(drv: TestDriver, type: number, sector: number, data?: { len: number; write?: boolean; content?: Uint8Array }) {
  const hdr = Buffer.alloc(16);
  hdr.writeUInt32LE(type, 0);
  hdr.writeBigUInt64LE(BigInt(sector), 8);
  const bufs: { addr: number; len: number; write?: boolean }[] = [{ addr: drv.buffer(16, hdr), len: 16 }];
  if (data) bufs.push({ addr: drv.buffer(data.len, data.content), len: data.len, write: data.write });
  const status = drv.buffer(1);
  mem.write(status, Uint8Array.of(0xee));
  bufs.push({ addr: status, len: 1, write: true });
  return { bufs, status };
}

function byte(addr: number): number {
  const b = Buffer.alloc(1);
  mem.read(addr, b);
  return b[0];
}

/** Submits a request and notifies; returns its status byte, what the device put on the used ring, and the data buffer. */
function blockRequest(drv: TestDriver, type: number, sector: number, data?: { len: number; write?: boolean; content?: Uint8Array }) {
  const { bufs, status } = blockChain(drv, type, sector, data);
  drv.submit(0, bufs);
  return { status: byte(status), used: drv.used(0), data: bufs[1] };
}

function usedIdx(drv: TestDriver, q: number): number {
  const b = Buffer.alloc(2);
  mem.read(drv.usedRing(q) + 2, b);
  return b.readUInt16LE();
}

/** The driver's used_event (VIRTIO_F_EVENT_IDX): "interrupt me once the used index passes this". */
function setUsedEvent(drv: TestDriver, q: number, value: number): void {
  const b = Buffer.alloc(2);
  b.writeUInt16LE(value);
  mem.write(drv.availRing(q) + 4 + 2 * drv.queueSize, b);
}

describe('virtio-blk and the virtio-mmio transport across a snapshot', () => {
  test('a restored drive goes on where the saved one stopped: the request queued before the snapshot, then new ones, on the disk copy it was given', () => {
    const original = disk('original.img');
    const a = blockDevice(original);
    const drv = new TestDriver(mem, a.dev);
    expect(drv.init(VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX) & STATUS.DRIVER_OK).toBe(STATUS.DRIVER_OK);
    const written = blockRequest(drv, BLK.OUT, 3, { len: 512, content: Buffer.alloc(512, 0xab) });
    expect(written.status).toBe(BLK_S.OK);
    const read = blockRequest(drv, BLK.IN, 3, { len: 512, write: true });
    expect(read.status).toBe(BLK_S.OK);
    expect(usedIdx(drv, 0)).toBe(2);
    // The guest queues a request and the snapshot is taken before the device saw it (its
    // notification lost with the old process); it asks for an interrupt once it is used.
    const queued = blockChain(drv, BLK.IN, 5, { len: 512, write: true });
    queued.bufs.forEach((b, i) => drv.writeDesc(drv.desc(0), i, b.addr, b.len, (b.write ? VIRTQ_DESC_F_WRITE : 0) | (i < queued.bufs.length - 1 ? VIRTQ_DESC_F_NEXT : 0), i + 1));
    drv.publish(0, 0);
    setUsedEvent(drv, 0, 2);

    const saved = throughJson({ transport: a.dev.saveState(), device: a.backend.saveState() });
    expect(saved.transport.queues[0].positions).toEqual({ nextAvail: 2, nextUsed: 2, signalledUsed: 2 });
    expect(saved.transport.status).toBe(STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK | STATUS.DRIVER_OK);
    expect(saved.device).toEqual({ capacityBytes: DISK_BYTES, readOnly: false, rateLimiter: null });
    // Nothing names the disk file: the restore is told which file to use.
    expect(JSON.stringify(saved)).not.toContain('original.img');

    // A clone: its own copy of the disk.
    const copy = path.join(dir, 'copy.img');
    fs.copyFileSync(original, copy);
    const b = blockDevice(copy);
    b.dev.restoreState(saved.transport, 'transport');
    b.backend.restoreState(saved.device, 'device');
    expect(b.dev.isActive).toBe(true);
    expect(usedIdx(drv, 0)).toBe(2); // restoring serves nothing
    b.dev.wakeAfterRestore();
    const drv2 = drv.withDevice(b.dev);
    expect(drv2.used(0)).toEqual([[0, 513]]);
    expect(byte(queued.status)).toBe(BLK_S.OK);
    const sector5 = Buffer.alloc(4);
    mem.read(queued.bufs[1].addr, sector5);
    expect(sector5.readUInt32LE()).toBe(5);
    expect(b.irqs()).toBe(1); // used_event 2 passed: the driver's interrupt request carried over
    expect(b.dev.read(MMIO.INTERRUPT_STATUS, 4) & INT_VRING).toBe(INT_VRING);

    // New requests: the used index goes on from 3, the data is the copy's (with the write made
    // before the snapshot), and writes land in the copy only.
    const again = blockRequest(drv2, BLK.IN, 3, { len: 512, write: true });
    expect(again.status).toBe(BLK_S.OK);
    expect(again.used).toEqual([[0, 513]]);
    expect(usedIdx(drv, 0)).toBe(4);
    const d = Buffer.alloc(512);
    mem.read(again.data.addr, d);
    expect(d.equals(Buffer.alloc(512, 0xab))).toBe(true);
    expect(blockRequest(drv2, BLK.OUT, 7, { len: 512, content: Buffer.alloc(512, 0xcd) }).status).toBe(BLK_S.OK);
    expect(fs.readFileSync(copy).subarray(7 * 512, 8 * 512).equals(Buffer.alloc(512, 0xcd))).toBe(true);
    expect(fs.readFileSync(original).readUInt32LE(7 * 512)).toBe(7);
    a.backend.close();
    b.backend.close();
  });

  test('a driver half-way through its initialization finishes it on the restored device', () => {
    const a = blockDevice(disk('half.img'));
    const set = (dev: VirtioMmio, off: number, v: number) => dev.write(off, 4, v);
    set(a.dev, MMIO.STATUS, STATUS.ACKNOWLEDGE | STATUS.DRIVER);
    set(a.dev, MMIO.DRIVER_FEATURES_SEL, 1);
    set(a.dev, MMIO.DRIVER_FEATURES, Number(VIRTIO_F_VERSION_1 >> 32n));
    set(a.dev, MMIO.STATUS, STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK);
    const drv = new TestDriver(mem, a.dev);
    set(a.dev, MMIO.QUEUE_SEL, 0);
    set(a.dev, MMIO.QUEUE_NUM, 16);
    set(a.dev, MMIO.QUEUE_DESC_LOW, drv.desc(0));
    set(a.dev, MMIO.QUEUE_DRIVER_LOW, drv.availRing(0));
    set(a.dev, MMIO.QUEUE_DEVICE_LOW, drv.usedRing(0));
    set(a.dev, MMIO.QUEUE_READY, 1);
    const saved = throughJson(a.dev.saveState());
    expect(saved.queues[0]).toEqual({ size: 16, ready: true, desc: String(drv.desc(0)), driver: String(drv.availRing(0)), device: String(drv.usedRing(0)), positions: null });

    const b = blockDevice(disk('half-copy.img'));
    b.dev.restoreState(saved, 'transport');
    b.backend.restoreState(a.backend.saveState(), 'device');
    expect(b.dev.isActive).toBe(false);
    expect(b.dev.read(MMIO.QUEUE_READY, 4)).toBe(1);
    b.dev.wakeAfterRestore(); // an inactive device has nothing to wake
    set(b.dev, MMIO.STATUS, STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK | STATUS.DRIVER_OK);
    expect(b.dev.isActive).toBe(true);
    const drv2 = new TestDriver(mem, b.dev);
    // The driver never used its queue: it starts from 0 (withDevice would carry its counters).
    (drv2 as unknown as { avail: number[]; lastUsed: number[] }).avail = [0];
    (drv2 as unknown as { avail: number[]; lastUsed: number[] }).lastUsed = [0];
    mem.fill(drv.availRing(0), 0x1000);
    mem.fill(drv.usedRing(0), 0x1000);
    expect(blockRequest(drv2, BLK.IN, 1, { len: 512, write: true }).status).toBe(BLK_S.OK);
    a.backend.close();
    b.backend.close();
  });

  test('a device the driver broke stays broken (NEEDS_RESET, config interrupt pending) until the driver resets it', () => {
    const a = blockDevice(disk('broken.img'));
    const drv = new TestDriver(mem, a.dev);
    expect(drv.init(VIRTIO_F_VERSION_1, { queueSize: 12 }) & STATUS.NEEDS_RESET).toBe(STATUS.NEEDS_RESET);
    const saved = throughJson(a.dev.saveState());
    expect(saved.queues[0].positions).toBeNull();
    const b = blockDevice(disk('broken-copy.img'));
    b.dev.restoreState(saved, 'transport');
    expect(b.dev.isActive).toBe(false);
    expect(b.dev.read(MMIO.STATUS, 4) & STATUS.NEEDS_RESET).toBe(STATUS.NEEDS_RESET);
    expect(b.dev.read(MMIO.INTERRUPT_STATUS, 4)).toBe(INT_CONFIG);
    const drv2 = new TestDriver(mem, b.dev);
    mem.fill(drv.availRing(0), 0x1000);
    mem.fill(drv.usedRing(0), 0x1000);
    expect(drv2.init() & STATUS.DRIVER_OK).toBe(STATUS.DRIVER_OK);
    expect(blockRequest(drv2, BLK.IN, 1, { len: 512, write: true }).status).toBe(BLK_S.OK);
    a.backend.close();
    b.backend.close();
  });

  test('a restore that does not fit the drive is refused: another disk size, another read-only flag', () => {
    const a = blockDevice(disk('fit.img'));
    const saved = throughJson(a.backend.saveState());
    const small = path.join(dir, 'small.img');
    fs.writeFileSync(small, Buffer.alloc(DISK_BYTES / 2));
    const b = blockDevice(small);
    const e = refusal(() => b.backend.restoreState(saved, 'devices[0] (block "rootfs").device'));
    expect(e.code).toBe('snapshot-mismatch');
    expect(e.exitCode).toBe(2);
    expect(e.message).toContain(`devices[0] (block "rootfs").device.capacityBytes: the guest saw a disk of ${DISK_BYTES} bytes; ${small} has ${DISK_BYTES / 2}`);
    const ro = blockDevice(disk('ro.img'), { readOnly: true });
    expect(refusal(() => ro.backend.restoreState(saved, 'device')).message).toMatch(/readOnly: the guest saw a writable disk; this drive is read-only/);
    expect(refusal(() => a.backend.restoreState({ ...saved, rateLimiter: { bandwidth: null, ops: null } }, 'device')).message).toMatch(/device\.rateLimiter: the device was built without a rate limiter/);
    expect(refusal(() => a.backend.restoreState({ ...saved, capacityBytes: '65536' }, 'device')).code).toBe('snapshot-invalid');
    for (const d of [a, b, ro]) d.backend.close();
  });
});

/** A valid saved transport of an active block device with EVENT_IDX, for the hostile variants. */
function activeTransportState(): { state: MmioTransportState; drv: TestDriver } {
  const a = blockDevice(disk(`hostile-${Math.random().toString(36).slice(2)}.img`));
  const drv = new TestDriver(mem, a.dev);
  drv.init(VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX);
  blockRequest(drv, BLK.IN, 1, { len: 512, write: true });
  const state = throughJson(a.dev.saveState());
  a.backend.close();
  return { state, drv };
}

describe('hostile transport state is refused, naming the field, and leaves the device as it was', () => {
  let good: MmioTransportState;
  beforeAll(() => {
    good = activeTransportState().state;
  });
  type T = Record<string, unknown> & { queues: Record<string, unknown>[] };
  const cases: [string, (t: T) => unknown, RegExp][] = [
    ['not an object', () => null, /at transport: expected an object, got null/],
    ['an array', () => [], /at transport: expected an object, got an array/],
    ['an unknown field', (t) => ({ ...t, extra: 1 }), /at transport: unknown field "extra"/],
    ['a missing field', (t) => { delete t.queueSel; return t; }, /at transport: missing field "queueSel"/],
    ['another device type', (t) => ({ ...t, deviceId: 4 }), /transport\.deviceId: the saved device is virtio device type 4, this one is type 2/],
    ['status bits no virtio status has', (t) => ({ ...t, status: 0x1f }), /transport\.status: 0x1f has bits no virtio status has/],
    ['a negative status', (t) => ({ ...t, status: -1 }), /transport\.status: expected an integer from 0 to 255, got number -1/],
    ['DRIVER_OK without FEATURES_OK', (t) => ({ ...t, status: STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.DRIVER_OK }), /transport\.status: DRIVER_OK without FEATURES_OK/],
    ['features as a number', (t) => ({ ...t, driverFeatures: 5 }), /transport\.driverFeatures: expected an integer as decimal text, got number 5/],
    ['features as a megabyte of digits', (t) => ({ ...t, driverFeatures: '9'.repeat(1 << 20) }), /transport\.driverFeatures: expected an integer as decimal text, got a string of 1048576 characters/],
    ['features beyond 64 bits', (t) => ({ ...t, driverFeatures: String(1n << 64n) }), /transport\.driverFeatures: 18446744073709551616 is outside 0\.\.18446744073709551615/],
    ['features the device never offered', (t) => ({ ...t, driverFeatures: String(VIRTIO_F_VERSION_1 | (1n << 40n)) }), /driverFeatures: the driver accepted features 0x10000000000 this device does not offer/],
    ['FEATURES_OK without VERSION_1', (t) => ({ ...t, driverFeatures: '0' }), /driverFeatures: FEATURES_OK without VIRTIO_F_VERSION_1/],
    ['a fractional config generation', (t) => ({ ...t, configGeneration: 1.5 }), /transport\.configGeneration: expected an integer/],
    ['an interrupt status bit that does not exist', (t) => ({ ...t, interruptStatus: 4 }), /transport\.interruptStatus: expected an integer from 0 to 3, got number 4/],
    ['no queues', (t) => ({ ...t, queues: [] }), /transport\.queues: expected 1 queues, got 0/],
    ['too many queues', (t) => ({ ...t, queues: [t.queues[0], t.queues[0]] }), /transport\.queues: expected at most 1 elements, got 2/],
    ['a queue size that is not a power of two', (t) => { t.queues[0].size = 12; return t; }, /transport\.queues\[0\]: queue size 12 is not a power of two up to 256/],
    ['a queue larger than offered', (t) => { t.queues[0].size = 512; return t; }, /transport\.queues\[0\]: queue size 512 is not a power of two up to 256/],
    ['ready as text', (t) => { t.queues[0].ready = 'yes'; return t; }, /transport\.queues\[0\]\.ready: expected true or false, got "yes"/],
    ['an active device with a queue not ready', (t) => { t.queues[0].ready = false; return t; }, /transport\.queues\[0\]\.ready: the device is active but this queue is not ready/],
    ['a descriptor table outside guest RAM', (t) => { t.queues[0].desc = String(MEM_SIZE); return t; }, /transport\.queues\[0\]: descriptor table \[0x400000, \+256\) is outside guest RAM/],
    ['a used ring far beyond any RAM', (t) => { t.queues[0].device = String(1n << 60n); return t; }, /transport\.queues\[0\]\.device: 0x1000000000000000 is beyond any guest RAM/],
    ['a misaligned descriptor table', (t) => { t.queues[0].desc = String(0x10008); return t; }, /transport\.queues\[0\]: queue areas are misaligned/],
    ['an address as a number', (t) => { t.queues[0].driver = 0x11000; return t; }, /transport\.queues\[0\]\.driver: expected an integer as decimal text/],
    ['an active device without its place in a queue', (t) => { t.queues[0].positions = null; return t; }, /transport\.queues\[0\]\.positions: the device is active but its place in this queue is missing/],
    ['an inactive device with a place in a queue', (t) => ({ ...t, status: (t.status as number) | STATUS.NEEDS_RESET }), /transport\.queues\[0\]\.positions: the device is not active/],
    ['a ring index beyond 16 bits', (t) => { t.queues[0].positions = { nextAvail: 65536, nextUsed: 1, signalledUsed: 1 }; return t; }, /transport\.queues\[0\]\.positions\.nextAvail: expected an integer from 0 to 65535, got number 65536/],
    ['an unknown field in a queue\'s positions', (t) => { t.queues[0].positions = { nextAvail: 1, nextUsed: 1, signalledUsed: 1, lastKick: 3 }; return t; }, /transport\.queues\[0\]\.positions: unknown field "lastKick"/],
  ];
  test.each(cases)('%s', (_name, mutate, message) => {
    const bad = mutate(throughJson(good) as unknown as T);
    const fresh = blockDevice(disk(`victim-${Math.random().toString(36).slice(2)}.img`));
    const e = refusal(() => fresh.dev.restoreState(bad, 'transport'));
    expect(e.code).toBe('snapshot-invalid');
    expect(e.exitCode).toBe(2);
    expect(e.message).toMatch(message);
    expect(e.message).toMatch(/^the snapshot's device state is invalid at transport/);
    // Nothing was half applied: the device is as built.
    expect(fresh.dev.read(MMIO.STATUS, 4)).toBe(0);
    expect(fresh.dev.isActive).toBe(false);
    fresh.backend.close();
  });

  test('a broken ring the restore cannot see (an available index far ahead) fails the device on wake, not fc-run', () => {
    const { state, drv } = activeTransportState();
    const b = blockDevice(disk('far-ahead.img'));
    b.dev.restoreState(state, 'transport');
    const idx = Buffer.alloc(2);
    idx.writeUInt16LE(1 + 1000); // 1000 more chains than the queue holds
    mem.write(drv.availRing(0) + 2, idx);
    b.dev.wakeAfterRestore();
    expect(b.dev.isActive).toBe(false);
    expect(b.dev.read(MMIO.STATUS, 4) & STATUS.NEEDS_RESET).toBe(STATUS.NEEDS_RESET);
    expect(b.dev.lastFailure).toMatch(/available index moved by 1000/);
    b.backend.close();
  });
});

/** A clock the test moves (nanoseconds). */
function fakeClock(startNs: bigint): { clock: Clock; advanceMs(ms: number): void } {
  let now = startNs;
  return { clock: () => now, advanceMs: (ms) => (now += BigInt(ms) * 1_000_000n) };
}

describe('token buckets and throttles across a snapshot', () => {
  test('tokens, burst, debt and the time since the last refill carry over to a process whose clock has another origin', () => {
    const before = fakeClock(5_000_000_000n);
    const bucket = new TokenBucket({ size: 1000, one_time_burst: 300, refill_time: 1000 }, before.clock);
    expect(bucket.canTake(1100n)).toBe(true);
    bucket.take(1100n); // 300 from the burst, 800 from the budget
    before.advanceMs(250); // 250 tokens earned, not yet counted
    const saved = throughJson(bucket.saveState());
    expect(saved).toEqual({ size: 1000, one_time_burst: 300, refill_time: 1000, budget: '200', burstLeft: '0', carry: '0', sinceRefillNs: '250000000' });

    const after = fakeClock(123n); // the restoring process's monotonic clock starts elsewhere
    const restored = TokenBucket.fromState(saved, 'bucket', after.clock);
    expect(restored.available()).toBe(450n); // 200 + 250 earned before the save
    after.advanceMs(100);
    expect(restored.available()).toBe(550n);
    expect(restored.waitFor(1000n)).toBe(450_000_000n);
  });

  test('an entropy device\'s limiter: tokens left carry over (the saved limits win over the new device\'s), and a wait in progress is re-armed in the new process', () => {
    const arms: number[][] = [[], []];
    const t0 = fakeClock(0n);
    const throttleA = new Throttle({ bandwidth: { size: 100, refill_time: 1000 } }, { arm: (ms) => arms[0].push(ms) }, t0.clock);
    const a = new EntropyDevice(mem, undefined, throttleA);
    const devA = new VirtioMmio(mem, a, () => undefined);
    const drv = new TestDriver(mem, devA);
    drv.init();
    const ask = (d: TestDriver, len: number) => d.submit(0, [{ addr: d.buffer(len), len, write: true }]);
    ask(drv, 60);
    expect(drv.used(0)).toEqual([[0, 60]]);
    ask(drv, 50); // 40 left: waits
    expect(drv.used(0)).toEqual([]);
    expect(arms[0]).toEqual([100]); // 10 more tokens at 0.1 per ms
    t0.advanceMs(30); // 3 tokens earned before the snapshot
    const saved = throughJson({ transport: devA.saveState(), device: a.saveState() });
    expect(saved.device.rateLimiter?.bandwidth).toMatchObject({ size: 100, budget: '40', sinceRefillNs: '30000000' });

    // The new device was built with other limits; the snapshot's win.
    const t1 = fakeClock(9_000_000_000_000n);
    const throttleB = new Throttle({ bandwidth: { size: 100000, refill_time: 1 } }, { arm: (ms) => arms[1].push(ms) }, t1.clock);
    const b = new EntropyDevice(mem, undefined, throttleB);
    const devB = new VirtioMmio(mem, b, () => undefined);
    devB.restoreState(saved.transport, 'transport');
    b.restoreState(saved.device, 'device');
    devB.wakeAfterRestore(); // the waiting request asks the restored bucket: 43 tokens, 7 short
    const drv2 = drv.withDevice(devB);
    expect(drv2.used(0)).toEqual([]);
    expect(arms[1]).toEqual([70]);
    t1.advanceMs(70);
    b.resume(); // the new process's timer fired
    expect(drv2.used(0)).toEqual([[0, 50]]);
    expect(throttleB.saveState().bandwidth).toMatchObject({ size: 100, budget: '0' });
  });

  test('a device saved without a limiter restores into one built with a limiter as unlimited', () => {
    const a = new EntropyDevice(mem);
    const throttle = new Throttle({ ops: { size: 1, refill_time: 1_000_000 } }, { arm: () => undefined });
    const b = new EntropyDevice(mem, undefined, throttle);
    b.restoreState(throughJson(a.saveState()), 'device');
    expect(throttle.limiter.unlimited).toBe(true);
    expect(refusal(() => a.restoreState({ rateLimiter: { bandwidth: null, ops: null } }, 'device')).message).toMatch(/device\.rateLimiter: the device was built without a rate limiter/);
  });

  const bucket = { size: 1000, one_time_burst: 300, refill_time: 1000, budget: '200', burstLeft: '10', carry: '5', sinceRefillNs: '250' };
  const hostile: [string, Record<string, unknown>, RegExp][] = [
    ['an empty bucket', { ...bucket, size: 0 }, /bucket\.size: expected an integer from 1 to/],
    ['a negative refill time', { ...bucket, refill_time: -5 }, /bucket\.refill_time: expected an integer from 1 to/],
    ['more tokens than the bucket holds', { ...bucket, budget: '1001' }, /bucket\.budget: 1001 is outside -9007199254740992\.\.1000/],
    ['an unbounded debt', { ...bucket, budget: '-99999999999999999999' }, /bucket\.budget: -99999999999999999999 is outside/],
    ['a budget in exponent form', { ...bucket, budget: '1e3' }, /bucket\.budget: expected an integer as decimal text, got "1e3"/],
    ['more burst left than configured', { ...bucket, burstLeft: '301' }, /bucket\.burstLeft: 301 is outside 0\.\.300/],
    ['a carry of a whole token or more', { ...bucket, carry: String(1000n * 1_000_000n) }, /bucket\.carry: must be below refill_time in nanoseconds \(1000000000\)/],
    ['a last refill in the future', { ...bucket, sinceRefillNs: '-1' }, /bucket\.sinceRefillNs: -1 is outside 0\.\./],
    ['an absolute clock reading instead of a duration', { ...bucket, sinceRefillNs: undefined, lastRefillNs: '12345' }, /bucket: unknown field "lastRefillNs"/],
  ];
  test.each(hostile)('refused: %s', (_name, state, message) => {
    const e = refusal(() => TokenBucket.fromState(JSON.parse(JSON.stringify(state)), 'bucket'));
    expect(e.code).toBe('snapshot-invalid');
    expect(e.message).toMatch(message);
  });

  test('a throttle refuses a malformed limiter without changing its buckets', () => {
    const throttle = new Throttle({ ops: { size: 5, refill_time: 100 } }, { arm: () => undefined });
    expect(refusal(() => throttle.restoreState({ bandwidth: null, ops: { ...bucket, size: 'big' } }, 'rl')).message).toMatch(/rl\.ops\.size: expected an integer/);
    expect(refusal(() => throttle.restoreState({ bandwidth: null }, 'rl')).message).toMatch(/rl: missing field "ops"/);
    expect(throttle.saveState().ops).toMatchObject({ size: 5 });
  });
});

describe('the metadata service across a snapshot', () => {
  const req = (method: string, p: string, headers: Record<string, string> = {}) => ({ method, path: p, headers: new Map(Object.entries(headers)) });

  test('contents and settings carry over; session tokens do not (the guest asks for a new one)', () => {
    const a = new MmdsService({ version: 'V2', imdsCompat: false });
    a.setData({ latest: { 'meta-data': { 'instance-id': 'i-1' } } });
    const token = a.handle(req('PUT', '/latest/api/token', { 'x-metadata-token-ttl-seconds': '600' })).body;
    expect(a.handle(req('GET', '/latest/meta-data/instance-id', { 'x-metadata-token': token })).body).toBe('i-1');
    const saved = throughJson(a.saveState());
    expect(saved).toEqual({ version: 'V2', imdsCompat: false, data: { latest: { 'meta-data': { 'instance-id': 'i-1' } } } });
    expect(JSON.stringify(saved)).not.toContain(token);

    const b = new MmdsService({ version: 'V1', imdsCompat: true });
    b.restoreState(saved, 'mmds', 1024);
    expect(b.handle(req('GET', '/latest/meta-data/instance-id')).status).toBe(401); // V2 now
    expect(b.handle(req('GET', '/latest/meta-data/instance-id', { 'x-metadata-token': token })).status).toBe(401);
    const fresh = b.handle(req('PUT', '/latest/api/token', { 'x-metadata-token-ttl-seconds': '600' })).body;
    const r = b.handle(req('GET', '/latest/meta-data', { 'x-metadata-token': fresh, accept: 'application/json' }));
    expect(JSON.parse(r.body)).toEqual({ 'instance-id': 'i-1' }); // imdsCompat false again: JSON served
  });

  let deep: unknown = 'x';
  for (let i = 0; i < 200; i++) deep = { d: deep };
  const hostile: [string, unknown, RegExp][] = [
    ['contents that are an array', { version: 'V1', imdsCompat: false, data: [1] }, /mmds\.data: the MMDS contents must be a JSON object/],
    ['contents nested 200 levels', { version: 'V1', imdsCompat: false, data: deep }, /mmds\.data: the MMDS contents nest deeper than 128 levels/],
    ['contents over the size limit', { version: 'V1', imdsCompat: false, data: { big: 'x'.repeat(2000) } }, /mmds\.data: the MMDS contents are \d+ bytes; the limit is 1024/],
    ['a version that does not exist', { version: 'V3', imdsCompat: false, data: {} }, /mmds\.version: expected one of "V1", "V2", got "V3"/],
    ['saved tokens', { version: 'V2', imdsCompat: false, data: {}, tokens: ['t'] }, /mmds: unknown field "tokens"/],
  ];
  test.each(hostile)('refused: %s', (_name, state, message) => {
    const s = new MmdsService({ version: 'V1', imdsCompat: false });
    s.setData({ kept: true });
    const e = refusal(() => s.restoreState(state, 'mmds', 1024));
    expect(e.code).toBe('snapshot-invalid');
    expect(e.message).toMatch(message);
    expect(s.getData()).toEqual({ kept: true });
  });
});

describe('serial and i8042 state (shared memory) across a snapshot', () => {
  const THR = 0, IER = 1, LCR = 3, MCR = 4, LSR = 5, SCR = 7;

  test('the UART\'s registers and the bytes waiting in its FIFO carry over, wherever the FIFO had wrapped', () => {
    const sabA = Serial8250.createState();
    const a = new Serial8250(sabA, { out: (b) => b.length, interrupt: () => undefined });
    a.write(LCR, 0x80);
    a.write(THR, 3); // divisor latch low
    a.write(LCR, 0x03);
    a.write(IER, 0x01);
    a.write(SCR, 0x5a);
    a.write(MCR, 0x0b);
    // Move the FIFO's indices near its end, then leave bytes that wrap around it.
    a.enqueue(Buffer.alloc(1000, 1));
    for (let i = 0; i < 1000; i++) a.read(THR);
    a.enqueue(Buffer.from('wrapped around'));
    const saved = throughJson(Serial8250.saveState(sabA));
    expect(saved).toMatchObject({ ier: 1, lcr: 3, mcr: 0x0b, scr: 0x5a, dll: 3, rx: [...Buffer.from('wrapped around')] });

    const sabB = Serial8250.createState();
    Serial8250.restoreState(sabB, saved, 'serial');
    let irqs = 0;
    const b = new Serial8250(sabB, { out: (b) => b.length, interrupt: () => irqs++ });
    expect(b.read(LSR) & 1).toBe(1);
    expect(b.read(SCR)).toBe(0x5a);
    const got: number[] = [];
    while (b.read(LSR) & 1) got.push(b.read(THR));
    expect(Buffer.from(got).toString()).toBe('wrapped around');
    b.enqueue(Buffer.from('!'));
    expect(irqs).toBeGreaterThan(0); // RDA enabled: carried over
  });

  const serial = { ier: 1, lcr: 3, mcr: 8, scr: 0, dll: 12, dlh: 0, fcr: 0, threPending: false, rx: [65] };
  const serialHostile: [string, Record<string, unknown>, RegExp][] = [
    ['a full FIFO and one more', { ...serial, rx: Array(1024).fill(0) }, /serial\.rx: expected at most 1023 elements, got 1024/],
    ['a FIFO byte that is no byte', { ...serial, rx: [65, 256] }, /serial\.rx\[1\]: expected an integer from 0 to 255/],
    ['IER bits that do not exist', { ...serial, ier: 0x10 }, /serial\.ier: expected an integer from 0 to 15/],
    ['saved FIFO indices', { ...serial, rxHead: 5000 }, /serial: unknown field "rxHead"/],
    ['THRE pending as a number', { ...serial, threPending: 1 }, /serial\.threPending: expected true or false/],
  ];
  test.each(serialHostile)('UART refused: %s', (_name, state, message) => {
    const sab = Serial8250.createState();
    const before = Buffer.from(sab.slice(0));
    const e = refusal(() => Serial8250.restoreState(sab, state, 'serial'));
    expect(e.code).toBe('snapshot-invalid');
    expect(e.message).toMatch(message);
    expect(Buffer.from(sab.slice(0)).equals(before)).toBe(true);
  });

  test('the i8042\'s control byte, a command waiting for its data byte, and its output bytes carry over', () => {
    const sabA = I8042.createState();
    const a = new I8042(sabA, { reset: () => undefined, interrupt: () => undefined });
    a.write(4, 0xaa); // self test: 0x55 waits for the guest
    a.write(4, 0x60); // write control byte: waits for its data byte
    const saved = throughJson(I8042.saveState(sabA));
    expect(saved).toMatchObject({ pendingCommand: 0x60, out: [0x55] });
    const sabB = I8042.createState();
    I8042.restoreState(sabB, saved, 'i8042');
    const b = new I8042(sabB, { reset: () => undefined, interrupt: () => undefined });
    expect(b.read(4) & 1).toBe(1);
    expect(b.read(0)).toBe(0x55);
    b.write(0, 0x47); // the data byte of the saved WRITE_CTR
    b.write(4, 0x20);
    expect(b.read(0)).toBe(0x47);
    for (const [state, message] of [
      [{ ...saved, out: Array(16).fill(0) }, /i8042\.out: expected at most 15 elements/],
      [{ ...saved, pendingCommand: 0xfe }, /i8042\.pendingCommand: 0xfe is no command that waits for a data byte/],
      [{ ...saved, control: 300 }, /i8042\.control: expected an integer from 0 to 255/],
    ] as const) {
      const e = refusal(() => I8042.restoreState(I8042.createState(), state, 'i8042'));
      expect(e.code).toBe('snapshot-invalid');
      expect(e.message).toMatch(message);
    }
  });
});

describe('matching a saved device set with the devices being restored', () => {
  const setups = [
    { index: 0, id: 'rootfs', kind: 'block' as const },
    { index: 1, id: 'eth0', kind: 'net' as const },
  ];
  const entry = (index: number, id: string, kind: string) => ({ index, id, kind, transport: {}, device: {} });
  const good = { format: 1, devices: [entry(0, 'rootfs', 'block'), entry(1, 'eth0', 'net')], mmds: null };

  test('the same devices match, each with where it is for messages', () => {
    const plan = planRestore(good, setups);
    expect([...plan.devices.keys()]).toEqual([0, 1]);
    expect(plan.devices.get(1)!.where).toBe('devices[1] (net "eth0")');
  });

  const cases: [string, unknown, string, RegExp][] = [
    ['another format', { ...good, format: 2 }, 'snapshot-invalid', /at format: expected 1, got 2/],
    ['a device twice', { ...good, devices: [entry(0, 'rootfs', 'block'), entry(0, 'rootfs', 'block')] }, 'snapshot-invalid', /devices\[1\]\.index: device index 0 appears twice/],
    ['a device this VM lacks', { ...good, devices: [...good.devices, entry(2, 'vsock', 'vsock')] }, 'snapshot-mismatch', /devices\[2\] \(vsock "vsock"\): this VM has no virtio device 2/],
    ['another device at an index', { ...good, devices: [entry(0, 'data', 'block'), entry(1, 'eth0', 'net')] }, 'snapshot-mismatch', /virtio device 0 of this VM is block "rootfs"/],
    ['a device left out', { ...good, devices: [entry(0, 'rootfs', 'block')] }, 'snapshot-mismatch', /at devices: the snapshot has no state for net "eth0"/],
    ['a kind that does not exist', { ...good, devices: [entry(0, 'rootfs', 'pmem')] }, 'snapshot-invalid', /devices\[0\]\.kind: expected one of "block", "net", "vsock", "entropy", got "pmem"/],
    ['an index out of range', { ...good, devices: [entry(-1, 'rootfs', 'block')] }, 'snapshot-invalid', /devices\[0\]\.index: expected an integer from 0 to 255/],
    ['no MMDS field', { format: 1, devices: good.devices }, 'snapshot-invalid', /at the top level: missing field "mmds"/],
  ];
  test.each(cases)('refused: %s', (_name, state, code, message) => {
    const e = refusal(() => planRestore(JSON.parse(JSON.stringify(state)), setups));
    expect(e.code).toBe(code);
    expect(e.exitCode).toBe(2);
    expect(e.message).toMatch(message);
  });
});

describe('the VMM thread\'s event loop, paused', () => {
  const eventfd = () => sys.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);

  test('serves only the fds marked always; what the others have waits, and fds added or changed meanwhile join on resume', () => {
    const loop = new EventLoop();
    const [device, service, late] = [eventfd(), eventfd(), eventfd()];
    const seen: string[] = [];
    loop.add(device, () => (drainEventfd(device), seen.push('device')));
    loop.add(service, () => (drainEventfd(service), seen.push('service')), undefined, true);
    loop.pause();
    signalEventfd(device);
    signalEventfd(service);
    loop.add(late, () => (drainEventfd(late), seen.push('late')));
    signalEventfd(late);
    loop.runOnce(0);
    loop.runOnce(0);
    expect(seen).toEqual(['service']);
    loop.resume();
    loop.runOnce(0);
    expect(seen.sort()).toEqual(['device', 'late', 'service']);
    // A pause requested by a handler holds back the rest of its batch: whatever order epoll
    // reports the three in, no device handler runs after the pause.
    seen.length = 0;
    const pauser = eventfd();
    loop.add(pauser, () => (drainEventfd(pauser), loop.pause(), seen.push('pauser')), undefined, true);
    signalEventfd(pauser);
    signalEventfd(device);
    signalEventfd(late);
    loop.runOnce(0);
    loop.runOnce(0);
    expect(seen).toContain('pauser');
    expect(seen.slice(seen.indexOf('pauser') + 1)).toEqual([]);
    loop.resume();
    loop.runOnce(0);
    expect(seen.filter((x) => x !== 'pauser').sort()).toEqual(['device', 'late']);
    for (const fd of [device, service, late, pauser]) sys.close(fd);
  });
});
