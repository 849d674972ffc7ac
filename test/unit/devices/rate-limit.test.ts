import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { BlockDevice, BLK } from '../../../src/devices/virtio/block';
import { MMIO, VirtioMmio } from '../../../src/devices/virtio/mmio';
import { VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '../../../src/devices/virtio/queue';
import { TimerFd } from '../../../src/kvm/timerfd';
import { Throttle } from '../../../src/limits/throttle';
import { EventLoop } from '../../../src/vmm/event-loop';
import { TestDriver } from '../../helpers/virtio-driver';

/**
 * A rate-limited virtio-blk device served by the real epoll loop and a timerfd, as in the VMM
 * thread: the achieved rate is measured against the configured one.
 */
const IO = 64 * 1024;

function run(config: ConstructorParameters<typeof Throttle>[0], requests: number) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fc-run-rl-'));
  const file = path.join(dir, 'disk.img');
  fs.writeFileSync(file, Buffer.alloc(requests * IO));
  const mem = TestDriver.memory();
  const loop = new EventLoop();
  const timer = new TimerFd();
  const holder: { blk?: BlockDevice; drv?: TestDriver } = {};
  let done = 0;
  loop.add(timer.fd, () => {
    timer.acknowledge();
    holder.blk!.resume();
    done += holder.drv!.used(0).length;
    if (done >= requests) loop.stop();
  });
  // The bucket's clock starts here: rates are measured from this moment, so tokens earned while
  // the test lays out descriptors count, as they should.
  const t0 = process.hrtime.bigint();
  const throttle = new Throttle(config, timer);
  const blk = new BlockDevice(mem, { id: 'rl', path: file, readOnly: true, cacheType: 'Unsafe', throttle });
  holder.blk = blk;
  const dev = new VirtioMmio(mem, blk, () => undefined);
  const drv = new TestDriver(mem, dev, 256);
  holder.drv = drv;
  drv.init();
  const data = 0x200000;
  for (let r = 0; r < requests; r++) {
    const hdr = Buffer.alloc(16);
    hdr.writeUInt32LE(BLK.IN, 0);
    hdr.writeBigUInt64LE(BigInt((r * IO) / 512), 8);
    drv.writeDesc(drv.desc(0), 3 * r, drv.buffer(16, hdr), 16, VIRTQ_DESC_F_NEXT, 3 * r + 1);
    drv.writeDesc(drv.desc(0), 3 * r + 1, data, IO, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 3 * r + 2);
    drv.writeDesc(drv.desc(0), 3 * r + 2, drv.buffer(1), 1, VIRTQ_DESC_F_WRITE, 0);
  }
  // Publish everything at once (the device starts serving at the notify), then let the loop run
  // until every request completed.
  for (let r = 0; r < requests; r++) drv.publish(0, 3 * r);
  drv.set(MMIO.QUEUE_NOTIFY, 0);
  done += drv.used(0).length;
  const immediate = done;
  if (done < requests) loop.run();
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  mem.release();
  blk.close();
  fs.rmSync(dir, { recursive: true, force: true });
  return { seconds, immediate, throttled: throttle.limiter.counters.throttled };
}

test('bandwidth: the rate achieved through a limited drive is the configured one (±5 %)', () => {
  // 256 KiB per 100 ms = 2.5 MiB/s; the first 256 KiB go at once (the bucket starts full).
  const requests = 40;
  const { seconds, immediate, throttled } = run({ bandwidth: { size: 256 * 1024, refill_time: 100 } }, requests);
  const configured = (256 * 1024) / 0.1;
  const initial = 4; // the full bucket: 256 KiB
  const achieved = ((requests - initial) * IO) / seconds;
  console.log(`block bandwidth limit: configured ${(configured / 2 ** 20).toFixed(3)} MiB/s, achieved ${(achieved / 2 ** 20).toFixed(3)} MiB/s (${((achieved / configured - 1) * 100).toFixed(1)} %)`);
  expect(immediate).toBeGreaterThanOrEqual(initial);
  expect(throttled).toBeGreaterThan(0);
  expect(achieved / configured).toBeGreaterThan(0.95);
  expect(achieved / configured).toBeLessThan(1.05);
});

test('ops: requests per second follow the ops bucket (±5 %)', () => {
  // 10 requests per 100 ms = 100 requests/s, with a one-time burst of 5 extra.
  const requests = 60;
  const { seconds, immediate } = run({ ops: { size: 10, one_time_burst: 5, refill_time: 100 } }, requests);
  const initial = 15; // the full bucket plus the one-time burst
  const achieved = (requests - initial) / seconds;
  console.log(`block ops limit: configured 100 req/s, achieved ${achieved.toFixed(1)} req/s`);
  expect(immediate).toBeGreaterThanOrEqual(initial);
  expect(achieved / 100).toBeGreaterThan(0.95);
  expect(achieved / 100).toBeLessThan(1.05);
});
