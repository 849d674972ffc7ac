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
 * thread. What is checked is what the limiter guarantees on any machine, however loaded: at every
 * moment t after the bucket was made, what went through is at most size + one_time_burst +
 * rate * t (sampled each time requests complete, after they did, so a late sample only loosens
 * the bound), and the run makes progress (a generous limit, which a limiter that stalls or waits
 * far too long still fails).
 */
const IO = 64 * 1024;

type Config = ConstructorParameters<typeof Throttle>[0];

/** Tokens the bucket may have handed out by `elapsedNs` after it was made (exact, as the bucket counts). */
function allowance(b: NonNullable<Config['bandwidth']>, elapsedNs: bigint): bigint {
  return BigInt(b.size) + BigInt(b.one_time_burst ?? 0) + (BigInt(b.size) * elapsedNs) / (BigInt(b.refill_time) * 1_000_000n);
}

function run(config: Config, requests: number) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fc-run-rl-'));
  const file = path.join(dir, 'disk.img');
  fs.writeFileSync(file, Buffer.alloc(requests * IO));
  const mem = TestDriver.memory();
  const loop = new EventLoop();
  const timer = new TimerFd();
  const holder: { blk?: BlockDevice; drv?: TestDriver } = {};
  let done = 0;
  let samples = 0;
  /** Largest (requests or bytes through - allowance) seen: above 0, the limiter let too much through. */
  let worstExcess = -Infinity;
  const sample = () => {
    const elapsed = process.hrtime.bigint() - t0;
    samples++;
    if (config.bandwidth) worstExcess = Math.max(worstExcess, Number(BigInt(done * IO) - allowance(config.bandwidth, elapsed)));
    if (config.ops) worstExcess = Math.max(worstExcess, Number(BigInt(done) - allowance(config.ops, elapsed)));
  };
  loop.add(timer.fd, () => {
    timer.acknowledge();
    holder.blk!.resume();
    done += holder.drv!.used(0).length;
    sample();
    if (done >= requests) loop.stop();
  });
  // The bucket's clock starts after this: bounds measured from here are looser than from its
  // creation, never tighter.
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
  sample();
  const immediate = done;
  // A stalled limiter ends the run (and fails below) rather than hanging the test.
  const deadline = t0 + 60_000_000_000n;
  while (done < requests && process.hrtime.bigint() < deadline) loop.runOnce(1000);
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  mem.release();
  blk.close();
  fs.rmSync(dir, { recursive: true, force: true });
  return { seconds, immediate, done, samples, worstExcess, throttled: throttle.limiter.counters.throttled };
}

test('bandwidth: a limited drive never goes above size + rate x time, and keeps going', () => {
  // 256 KiB per 100 ms = 2.5 MiB/s; the first 256 KiB (4 requests) go at once: the bucket starts full.
  const requests = 40;
  const r = run({ bandwidth: { size: 256 * 1024, refill_time: 100 } }, requests);
  const ideal = ((requests - 4) * IO) / ((256 * 1024) / 0.1);
  console.log(`block bandwidth limit: ${requests} requests in ${r.seconds.toFixed(3)} s (ideal ${ideal.toFixed(3)} s), smallest margin below the bound ${-r.worstExcess} bytes over ${r.samples} samples`);
  expect(r.done).toBe(requests);
  expect(r.immediate).toBeGreaterThanOrEqual(4);
  expect(r.worstExcess).toBeLessThanOrEqual(0);
  expect(r.seconds).toBeLessThan(ideal * 4 + 3);
});

test('ops: requests follow the ops bucket and its one-time burst, never above size + burst + rate x time', () => {
  // 10 requests per 100 ms = 100 requests/s, with a one-time burst of 5 extra: 15 go at once.
  const requests = 60;
  const r = run({ ops: { size: 10, one_time_burst: 5, refill_time: 100 } }, requests);
  const ideal = (requests - 15) / 100;
  console.log(`block ops limit: ${requests} requests in ${r.seconds.toFixed(3)} s (ideal ${ideal.toFixed(3)} s), smallest margin below the bound ${-r.worstExcess} requests over ${r.samples} samples`);
  expect(r.done).toBe(requests);
  expect(r.immediate).toBeGreaterThanOrEqual(15);
  expect(r.worstExcess).toBeLessThanOrEqual(0);
  expect(r.seconds).toBeLessThan(ideal * 4 + 3);
});
