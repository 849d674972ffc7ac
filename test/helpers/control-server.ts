// A worker standing in for the VMM thread: serves the control channel it is given, slowly when
// the request asks it to (`{ "sleepMs": n }`), echoing each request back.
import { workerData } from 'node:worker_threads';
import { serveControl } from '../../src/vmm/control';

const { channel } = workerData as { channel: { buffer: SharedArrayBuffer; fd: number } };
const state = new Int32Array(channel.buffer, 0, 4);
const pause = new Int32Array(new SharedArrayBuffer(4));
for (;;) {
  Atomics.wait(state, 0, 0, 50); // woken by a request (or every 50 ms)
  serveControl(channel, (req) => {
    const r = req as { sleepMs?: number; stop?: boolean };
    if (r.sleepMs) Atomics.wait(pause, 0, 0, r.sleepMs);
    if (r.stop) process.exit(0);
    return { ok: true, value: req };
  });
}
