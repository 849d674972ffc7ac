// A worker standing in for the VMM thread behind the API: the real control handler with a real
// MMDS store and real throttles (their timers are plain setTimeout-free stubs: nothing waits on
// them here), serving the control channel it is given. Lets the API be driven without /dev/kvm.
import { workerData } from 'node:worker_threads';
import { serveControl } from '../../src/vmm/control';
import { controlHandler, LimiterName } from '../../src/vmm/control-handler';
import { MmdsService } from '../../src/devices/mmds/service';
import { Throttle } from '../../src/limits/throttle';

const { channel, mmds, sizeLimit } = workerData as { channel: { buffer: SharedArrayBuffer; fd: number }; mmds: unknown; sizeLimit: number };
const timer = { arm: () => undefined };
const limit = { ops: { size: 10, refill_time: 1000 } };
const limiters = new Map<string, Partial<Record<LimiterName, Throttle>>>([
  ['drive:limited', { rate_limiter: new Throttle(limit, timer) }],
  ['drive:free', { rate_limiter: undefined }],
  ['iface:eth0', { tx_rate_limiter: new Throttle(limit, timer), rx_rate_limiter: undefined }],
]);
const service = new MmdsService({ version: 'V2', imdsCompat: false });
service.setData(mmds);
const handle = controlHandler({ mmds: { service, sizeLimit }, limiters, log: { info: () => undefined } });
const state = new Int32Array(channel.buffer, 0, 4);
for (;;) {
  Atomics.wait(state, 0, 0, 20); // woken by a request (or every 20 ms)
  serveControl(channel, handle);
}
