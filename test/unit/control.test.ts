import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { EFD_CLOEXEC, EFD_NONBLOCK, sys } from '../../src/kvm/libc';
import { ControlClient, createControlChannel } from '../../src/vmm/control';

/** The API-to-VMM-thread channel against a real second thread that serves it. */
describe('control channel', () => {
  let worker: Worker;
  let client: ControlClient;
  beforeAll(() => {
    const channel = createControlChannel(4096, sys.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    client = new ControlClient(channel);
    worker = new Worker(path.join(__dirname, '..', 'helpers', 'ts-worker.js'), { workerData: { script: path.join(__dirname, '..', 'helpers', 'control-server.ts'), channel } });
  });
  afterAll(() => worker.terminate());

  test('a request gets its own reply', async () => {
    expect(await client.request({ n: 1 })).toEqual({ ok: true, value: { n: 1 } });
    expect(await client.request({ n: 2 })).toEqual({ ok: true, value: { n: 2 } });
  });

  test('a request still running when its wait ends is reported as such; the next one waits for it and gets its own reply', async () => {
    const slow = await client.request({ sleepMs: 300, n: 'slow' }, 100);
    expect(slow).toMatchObject({ ok: false, status: 503 });
    expect((slow as { message: string }).message).toMatch(/still carrying out the request/);
    expect(await client.request({ n: 'next' }, 2000)).toEqual({ ok: true, value: { n: 'next' } });
  });

  test('concurrent requests are answered one by one, each with its own reply', async () => {
    const replies = await Promise.all([1, 2, 3, 4, 5].map((n) => client.request({ n })));
    expect(replies).toEqual([1, 2, 3, 4, 5].map((n) => ({ ok: true, value: { n } })));
  });

  test('a request the other side never takes is withdrawn: it is not carried out later', async () => {
    await client.request({ stop: true }, 200).catch(() => undefined); // the server thread exits
    const r = await client.request({ n: 'lost' }, 100);
    expect(r).toMatchObject({ ok: false, status: 503 });
    expect((r as { message: string }).message).toMatch(/nothing was done/);
  });
});
