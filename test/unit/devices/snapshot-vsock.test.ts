import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { GuestMemory } from '../../../src/kvm/memory';
import { MMIO, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VirtioMmio } from '../../../src/devices/virtio/mmio';
import { Poller, VIRTIO_VSOCK_EVENT_TRANSPORT_RESET, VSOCK_OP, VsockDevice } from '../../../src/devices/virtio/vsock';
import { VIRTQ_DESC_F_WRITE } from '../../../src/devices/virtio/queue';
import { FcRunError } from '../../../src/errors';
import { TestDriver } from '../../helpers/virtio-driver';
import { GUEST_CID, vsockPacket as packet } from '../../helpers/vsock-packet';

/**
 * vsock across a snapshot: connections do not survive (their host sockets were the saving
 * process's), so the restored device starts with none and, when the guest's driver is active,
 * sends VIRTIO_VSOCK_EVENT_TRANSPORT_RESET on the event queue once the VM runs again. Until the
 * driver answers (an event buffer added after it reset its sockets) nothing goes to the guest.
 */

class RecordingPoller implements Poller {
  readonly fds = new Map<number, number>();
  private readonly handlers = new Map<number, (e: number) => void>();
  add(fd: number, h: (e: number) => void, events = 1): void {
    this.fds.set(fd, events);
    this.handlers.set(fd, h);
  }
  /** Calls the handler of every fd watched for input, as an epoll loop would when data is there. */
  pumpInput(): void {
    for (const [fd, events] of [...this.fds]) if (events & 1) this.handlers.get(fd)?.(1);
  }
  modify(fd: number, events: number): void {
    this.fds.set(fd, events);
  }
  remove(fd: number): void {
    this.fds.delete(fd);
  }
}

const RX = 0;
const TX = 1;
const EVENT = 2;

let dir: string;
let mem: GuestMemory;
const cleanup: (() => void)[] = [];
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fc-run-vsock-snap-'));
  mem = TestDriver.memory();
});
afterEach(() => {
  for (const f of cleanup.splice(0)) f();
});
afterAll(() => {
  mem.release();
  fs.rmSync(dir, { recursive: true, force: true });
});

async function eventually(cond: () => boolean, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond() && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
}

function device(name: string) {
  const poller = new RecordingPoller();
  const udsPath = path.join(dir, name);
  let irqs = 0;
  const vsock = new VsockDevice(mem, { guestCid: GUEST_CID, udsPath, poller });
  const dev = new VirtioMmio(mem, vsock, () => irqs++);
  return { vsock, dev, poller, udsPath, irqs: () => irqs };
}

/** A fresh ring area (other tests' leftovers zeroed) and a driver that set up the device, as Linux's does. */
function initialized(dev: VirtioMmio, eventBuffers: number) {
  mem.fill(0x10000, 0x3000 * 3);
  const drv = new TestDriver(mem, dev);
  drv.init(VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX);
  const rx = [0, 1, 2, 3].map((i) => {
    const addr = drv.buffer(256);
    drv.writeDesc(drv.desc(RX), i, addr, 256, VIRTQ_DESC_F_WRITE, 0);
    drv.publish(RX, i);
    return addr;
  });
  const events = Array.from({ length: eventBuffers }, (_, i) => {
    const addr = drv.buffer(4);
    drv.writeDesc(drv.desc(EVENT), i, addr, 4, VIRTQ_DESC_F_WRITE, 0);
    drv.publish(EVENT, i);
    return addr;
  });
  return { drv, rx, events };
}

function send(drv: TestDriver, bytes: Buffer): void {
  drv.submit(TX, [{ addr: drv.buffer(bytes.length, bytes), len: bytes.length }], 0);
}

/** Ops of the packets delivered to the guest since the last look. */
function received(drv: TestDriver, rx: number[]): number[] {
  return drv.used(RX).map(([head]) => {
    const h = Buffer.alloc(44);
    mem.read(rx[head], h);
    return h.readUInt16LE(30);
  });
}

function u16(addr: number): number {
  const b = Buffer.alloc(2);
  mem.read(addr, b);
  return b.readUInt16LE();
}

function u32(addr: number): number {
  const b = Buffer.alloc(4);
  mem.read(addr, b);
  return b.readUInt32LE();
}

function through<T>(v: T): T {
  return JSON.parse(JSON.stringify(v)) as T;
}

/** A host client that connects to a device's socket and asks for a guest port. */
async function hostConnect(udsPath: string, port: number): Promise<net.Socket> {
  const host = net.connect(udsPath);
  cleanup.push(() => host.destroy());
  await new Promise<void>((r) => host.once('connect', () => r()));
  await new Promise<void>((r) => host.write(`CONNECT ${port}\n`, () => r()));
  return host;
}

test('the restored device drops the connections, sends the transport reset event on wake, and holds everything back until the driver answers it', async () => {
  const a = device('a.sock');
  const { drv, rx, events } = initialized(a.dev, 2);
  // A connection from the guest to a host service, with traffic.
  let got = '';
  const server = net.createServer((s) => s.on('data', (d) => (got += d)));
  cleanup.push(() => server.close());
  await new Promise<void>((r) => server.listen(`${a.udsPath}_2000`, r));
  send(drv, packet({ op: VSOCK_OP.REQUEST }));
  expect(received(drv, rx)).toEqual([VSOCK_OP.RESPONSE]);
  send(drv, packet({ op: VSOCK_OP.RW, payload: 'before the snapshot' }));
  await eventually(() => got.length >= 19);
  expect(got).toBe('before the snapshot');

  const saved = through({ transport: a.dev.saveState(), device: a.vsock.saveState() });
  expect(saved.device).toEqual({ guestCid: GUEST_CID, nextLocalPort: 1 << 30 });
  expect(JSON.stringify(saved)).not.toContain('a.sock'); // the socket path is the restore's to choose

  // Restored in "another process", with another socket path.
  const b = device('b.sock');
  b.dev.restoreState(saved.transport, 'transport');
  b.vsock.restoreState(saved.device, 'device');
  expect(b.dev.isActive).toBe(true);
  const drv2 = drv.withDevice(b.dev);
  expect(drv2.used(EVENT)).toEqual([]); // nothing before the VM runs again
  expect(b.irqs()).toBe(0);
  b.dev.wakeAfterRestore();
  expect(drv2.used(EVENT)).toEqual([[0, 4]]);
  expect(u32(events[0])).toBe(VIRTIO_VSOCK_EVENT_TRANSPORT_RESET);
  expect(b.irqs()).toBe(1);
  // With EVENT_IDX the driver notifies only past avail_event: it is moved up to the driver's
  // index, so the driver's next event buffer (its answer) is noticed.
  expect(u16(drv.usedRing(EVENT) + 4 + 8 * drv.queueSize)).toBe(2);

  // Before the answer: the guest, not yet through its reset, sends on the old connection (it gets
  // a reset, held back), and a host client asks for a guest port (its request is held back too).
  send(drv2, packet({ op: VSOCK_OP.RW, payload: 'after' }));
  const host = await hostConnect(b.udsPath, 5000);
  b.poller.pumpInput(); // accepts
  b.poller.pumpInput(); // reads the CONNECT line
  expect(received(drv2, rx)).toEqual([]);
  drv2.set(MMIO.QUEUE_NOTIFY, EVENT); // a notification without a new event buffer is no answer
  expect(received(drv2, rx)).toEqual([]);
  expect(got).toBe('before the snapshot'); // the old connection's host side never hears from the new device

  // The driver answers: it gives the event buffer back.
  drv2.publish(EVENT, 0);
  drv2.set(MMIO.QUEUE_NOTIFY, EVENT);
  expect(received(drv2, rx)).toEqual([VSOCK_OP.RST, VSOCK_OP.REQUEST]);
  // The new connection works: the guest accepts, the host is told.
  const hdr = Buffer.alloc(44);
  mem.read(rx[2], hdr);
  const hostPort = hdr.readUInt32LE(16);
  expect(hostPort).toBe(1 << 30);
  let hostGot = '';
  host.on('data', (d) => (hostGot += d));
  send(drv2, packet({ op: VSOCK_OP.RESPONSE, src: 5000, dst: hostPort }));
  await eventually(() => hostGot.includes('\n'));
  expect(hostGot).toBe(`OK ${hostPort}\n`);
});

test('with no event buffer at the restore, the event goes out when the driver adds one, and nothing goes to the guest before', async () => {
  const a = device('c.sock');
  const { drv, rx, events } = initialized(a.dev, 0);
  const saved = through({ transport: a.dev.saveState(), device: a.vsock.saveState() });
  const b = device('d.sock');
  b.dev.restoreState(saved.transport, 'transport');
  b.vsock.restoreState(saved.device, 'device');
  b.dev.wakeAfterRestore();
  const drv2 = drv.withDevice(b.dev);
  expect(drv2.used(EVENT)).toEqual([]);
  expect(events).toEqual([]);
  await hostConnect(b.udsPath, 6000);
  b.poller.pumpInput();
  b.poller.pumpInput();
  expect(received(drv2, rx)).toEqual([]); // held: the reset is still to come

  const evbuf = drv2.buffer(4);
  mem.write(evbuf, Buffer.from([0xff, 0xff, 0xff, 0xff]));
  drv2.writeDesc(drv2.desc(EVENT), 0, evbuf, 4, VIRTQ_DESC_F_WRITE, 0);
  drv2.publish(EVENT, 0);
  drv2.set(MMIO.QUEUE_NOTIFY, EVENT);
  expect(drv2.used(EVENT)).toEqual([[0, 4]]);
  expect(u32(evbuf)).toBe(VIRTIO_VSOCK_EVENT_TRANSPORT_RESET);
  expect(received(drv2, rx)).toEqual([]); // delivered, not answered yet
  drv2.publish(EVENT, 0);
  drv2.set(MMIO.QUEUE_NOTIFY, EVENT);
  expect(received(drv2, rx)).toEqual([VSOCK_OP.REQUEST]);
});

test('a device whose driver was not active gets no event: the driver finds a fresh device when it comes', async () => {
  const a = device('e.sock');
  const saved = through({ transport: a.dev.saveState(), device: a.vsock.saveState() });
  const b = device('f.sock');
  b.dev.restoreState(saved.transport, 'transport');
  b.vsock.restoreState(saved.device, 'device');
  b.dev.wakeAfterRestore();
  expect(b.dev.isActive).toBe(false);
  const { drv, rx } = initialized(b.dev, 2);
  expect(drv.used(EVENT)).toEqual([]);
  const server = net.createServer(() => undefined);
  cleanup.push(() => server.close());
  await new Promise<void>((r) => server.listen(`${b.udsPath}_2000`, r));
  send(drv, packet({ op: VSOCK_OP.REQUEST }));
  expect(received(drv, rx)).toEqual([VSOCK_OP.RESPONSE]);
});

test.each([
  ['a reserved CID', { guestCid: 2, nextLocalPort: 1 << 30 }, /device\.guestCid: expected an integer from 3 to 4294967295, got number 2/],
  ['a host port below the local range', { guestCid: 3, nextLocalPort: 5 }, /device\.nextLocalPort: expected an integer from 1073741824 to 4294967294/],
  ['saved connections', { guestCid: 3, nextLocalPort: 1 << 30, connections: [{ fd: 7 }] }, /device: unknown field "connections"/],
])('refused: %s', (_name, state, message) => {
  const d = device(`h${Math.random().toString(36).slice(2)}.sock`);
  let err: unknown;
  try {
    d.vsock.restoreState(state, 'device');
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(FcRunError);
  expect((err as FcRunError).code).toBe('snapshot-invalid');
  expect((err as FcRunError).message).toMatch(message);
});
