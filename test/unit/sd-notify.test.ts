import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { notifyMessage, notifySocketAddress, NotifySocketError, SdNotifier } from '../../src/kvm/sd-notify';
import { serviceNotify } from '../../src/cli/service-notify';
import type { Io } from '../../src/cli/io';
import { Listener } from '../helpers/notify-listener';

let dir: string;
beforeAll(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fc-run-notify-'))));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

describe('NOTIFY_SOCKET addresses', () => {
  test('an abstract address has a leading NUL and a length that counts exactly the name', () => {
    const { addr, len } = notifySocketAddress('@fc/notify');
    expect(len).toBe(2 + 1 + 'fc/notify'.length);
    expect(addr.readUInt16LE(0)).toBe(1);
    expect(addr[2]).toBe(0);
    expect(addr.subarray(3, len).toString()).toBe('fc/notify');
  });

  test('a path address ends with a NUL', () => {
    const { addr, len } = notifySocketAddress('/run/systemd/notify');
    expect(addr.subarray(2, len).toString()).toBe('/run/systemd/notify\0');
  });

  test('relative paths, vsock addresses, empty and overlong values are refused', () => {
    expect(() => notifySocketAddress('notify')).toThrow(NotifySocketError);
    expect(() => notifySocketAddress('vsock:2:1234')).toThrow(/path .* or an abstract address/);
    expect(() => notifySocketAddress('')).toThrow(/empty/);
    expect(() => notifySocketAddress(`/${'x'.repeat(107)}`)).toThrow(/at most 107/);
    expect(() => notifySocketAddress(`@${'x'.repeat(107)}`)).not.toThrow();
  });

  test('messages are KEY=VALUE lines, and a newline in a value cannot start a new key', () => {
    expect(notifyMessage({ READY: 1, STATUS: 'a\nMAINPID=1' }).toString()).toBe('READY=1\nSTATUS=a MAINPID=1\n');
  });
});

describe('sd_notify to a real datagram socket', () => {
  test.each([
    ['path', () => path.join(dir, `notify-${process.pid}.sock`)],
    ['abstract', () => `@fc-run-test-${process.pid}-${Date.now()}`],
  ])('READY=1 and STOPPING=1 arrive at a %s address', async (_kind, address) => {
    const addr = address();
    const listener = new Listener(addr, 2);
    try {
      await listener.ready;
      const env: NodeJS.ProcessEnv = { NOTIFY_SOCKET: addr };
      const n = SdNotifier.fromEnv(env)!;
      // Children of fc-run must not notify in its place.
      expect(env.NOTIFY_SOCKET).toBeUndefined();
      n.send({ READY: 1, MAINPID: process.pid, STATUS: 'running: 2 vCPU(s)' });
      n.send({ STOPPING: 1 });
      n.close();
      expect(await listener.received(2)).toEqual([`READY=1\nMAINPID=${process.pid}\nSTATUS=running: 2 vCPU(s)\n`, 'STOPPING=1\n']);
    } finally {
      listener.stop();
    }
  });

  test('without NOTIFY_SOCKET there is no notifier', () => {
    expect(SdNotifier.fromEnv({})).toBeUndefined();
  });

  test('a notification nobody receives fails with the errno, and run only reports it', () => {
    const gone = path.join(dir, `nobody-${process.pid}.sock`);
    const n = SdNotifier.fromEnv({ NOTIFY_SOCKET: gone })!;
    expect(() => n.send({ READY: 1 })).toThrow(/sendto\(NOTIFY_SOCKET=.*\) failed: ENOENT/);
    n.close();

    const err: string[] = [];
    const warned: string[] = [];
    const stream = { write: (s: string) => (err.push(s), true), isTTY: false } as unknown as NodeJS.WriteStream;
    const io: Io = { out: stream, err: stream };
    const notify = serviceNotify(io, { jsonLines: true, strict: false }, (m) => warned.push(m), { NOTIFY_SOCKET: gone });
    expect(() => notify.ready('running')).not.toThrow();
    notify.close();
    expect(warned).toEqual([expect.stringMatching(/could not notify the service manager: sendto.*ENOENT/)]);
    expect(JSON.parse(err.join('').trim())).toMatchObject({ type: 'status', event: 'notify-failed' });
  });

  test('serviceNotify sends READY=1 with MAINPID and a status to a real socket', async () => {
    const addr = `@fc-run-test-svc-${process.pid}`;
    const listener = new Listener(addr, 2);
    try {
      await listener.ready;
      const io = { out: process.stdout, err: process.stderr };
      const notify = serviceNotify(io, { jsonLines: false, strict: false }, () => undefined, { NOTIFY_SOCKET: addr });
      notify.ready('running: 1 vCPU(s), 64 MiB');
      notify.stopping('stopped: the guest powered off');
      notify.close();
      const [ready, stopping] = await listener.received(2);
      expect(ready.split('\n')).toEqual(['READY=1', `MAINPID=${process.pid}`, 'STATUS=running: 1 vCPU(s), 64 MiB', '']);
      expect(stopping).toBe('STOPPING=1\nSTATUS=stopped: the guest powered off\n');
    } finally {
      listener.stop();
    }
  });
});
