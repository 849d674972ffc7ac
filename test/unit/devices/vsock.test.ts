import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { GuestMemory } from '../../../src/kvm/memory';
import { VirtioMmio } from '../../../src/devices/virtio/mmio';
import { Poller, VSOCK_OP, VsockDevice } from '../../../src/devices/virtio/vsock';
import { VIRTQ_DESC_F_WRITE } from '../../../src/devices/virtio/queue';
import { TestDriver } from '../../helpers/virtio-driver';
import { GUEST_CID, vsockPacket as packet } from '../../helpers/vsock-packet';

/** A poller that only records: the tests drive the device through its queues. */
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

let dir: string;
let mem: GuestMemory;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fc-run-vsock-'));
  mem = TestDriver.memory();
});
/** Sockets and servers a test opened: closed even when the test fails, so jest can exit. */
const afterCleanup: (() => void)[] = [];

/**
 * Waits until `cond` holds: what a socket in this process receives arrives through Node's own
 * loop, after an unknown delay on a loaded machine; the limit is for a bug, not a guess at speed.
 */
async function eventually(cond: () => boolean, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond() && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
}
afterEach(() => {
  for (const f of afterCleanup.splice(0)) f();
});
afterAll(() => {
  mem.release();
  fs.rmSync(dir, { recursive: true, force: true });
});

function rig() {
  const poller = new RecordingPoller();
  const vsock = new VsockDevice(mem, { guestCid: GUEST_CID, udsPath: path.join(dir, `v${Math.random().toString(36).slice(2)}.sock`), poller });
  const dev = new VirtioMmio(mem, vsock, () => undefined);
  const drv = new TestDriver(mem, dev);
  drv.init();
  // Four receive buffers for packets fc-run sends the guest.
  const rx = [0, 1, 2, 3].map((i) => {
    const addr = drv.buffer(256);
    drv.writeDesc(drv.desc(0), i, addr, 256, VIRTQ_DESC_F_WRITE, 0);
    drv.publish(0, i);
    return addr;
  });
  return { vsock, drv, rx, poller };
}


function send(drv: TestDriver, bytes: Buffer): void {
  drv.submit(1, [{ addr: drv.buffer(bytes.length, bytes), len: bytes.length }], 0);
}

/** Ops of the packets fc-run delivered to the guest so far. */
function received(drv: TestDriver, rx: number[]): number[] {
  return drv.used(0).map(([head]) => {
    const h = Buffer.alloc(44);
    mem.read(rx[head], h);
    return h.readUInt16LE(30);
  });
}

describe('vsock: malformed and unexpected packets', () => {
  test('a packet shorter than its header is counted and ignored', () => {
    const { vsock, drv, rx } = rig();
    send(drv, Buffer.alloc(20));
    expect(vsock.counters.invalidPackets).toBe(1);
    expect(received(drv, rx)).toEqual([]);
  });

  test('a length beyond the buffer, a wrong source CID or a non-stream type is refused', () => {
    const { vsock, drv } = rig();
    send(drv, packet({ op: VSOCK_OP.RW, len: 5000 }));
    send(drv, packet({ op: VSOCK_OP.REQUEST, srcCid: 99 }));
    send(drv, packet({ op: VSOCK_OP.REQUEST, type: 2 }));
    expect(vsock.counters.invalidPackets).toBe(3);
    expect(vsock.counters.connectionsOpened).toBe(0);
  });

  test('data for a connection that does not exist is answered with a reset', () => {
    const { drv, rx } = rig();
    send(drv, packet({ op: VSOCK_OP.RW, payload: Buffer.from('hello') }));
    expect(received(drv, rx)).toEqual([VSOCK_OP.RST]);
  });

  test('a connection to a host port nobody listens on is reset and counted', () => {
    const { vsock, drv, rx } = rig();
    send(drv, packet({ op: VSOCK_OP.REQUEST, dst: 4242 }));
    expect(received(drv, rx)).toEqual([VSOCK_OP.RST]);
    expect(vsock.counters.connectionsRefused).toBe(1);
  });

  test('a packet for another CID is reset; an unknown op is counted', () => {
    const { vsock, drv, rx } = rig();
    send(drv, packet({ op: VSOCK_OP.REQUEST, dstCid: 12 }));
    send(drv, packet({ op: 99 }));
    expect(received(drv, rx)).toEqual([VSOCK_OP.RST]);
    expect(vsock.counters.invalidPackets).toBe(1);
  });

  test('a guest that sends past its credit to a host that does not read is reset; memory stays bounded', async () => {
    const { vsock, drv, rx } = rig();
    const net = await import('node:net');
    const sockPath = (vsock as unknown as { opts: { udsPath: string } }).opts.udsPath;
    const server = net.createServer((s) => s.pause()); // accepts, never reads
    afterCleanup.push(() => server.close());
    await new Promise<void>((r) => server.listen(`${sockPath}_2000`, r));
    send(drv, packet({ op: VSOCK_OP.REQUEST }));
    expect(received(drv, rx)).toEqual([VSOCK_OP.RESPONSE]);
    for (let i = 0; i < 40 && vsock.counters.resets === 0; i++) send(drv, packet({ op: VSOCK_OP.RW, payload: Buffer.alloc(16 * 1024, 1) }));
    expect(vsock.counters.resets).toBe(1);
    expect(vsock.counters.invalidPackets).toBe(1);
    expect(vsock.counters.txBytes).toBeLessThan(2 * 1024 * 1024);
  });

  test('the guest reaching a listening host port gets RESPONSE, and its data arrives', async () => {
    const { vsock, drv, rx, poller } = rig();
    const net = await import('node:net');
    const sockPath = (vsock as unknown as { opts: { udsPath: string } }).opts.udsPath;
    let got = '';
    const server = net.createServer((s) => s.on('data', (d) => (got += d)));
    afterCleanup.push(() => server.close());
    await new Promise<void>((r) => server.listen(`${sockPath}_2000`, r));
    send(drv, packet({ op: VSOCK_OP.REQUEST }));
    expect(received(drv, rx)).toEqual([VSOCK_OP.RESPONSE]);
    send(drv, packet({ op: VSOCK_OP.RW, payload: Buffer.from('from the guest') }));
    await eventually(() => got.length >= 'from the guest'.length);
    expect(got).toBe('from the guest');
    expect(vsock.counters.txBytes).toBe(14);
    // A reset from the guest closes the host socket and forgets the connection.
    const watched = poller.fds.size;
    send(drv, packet({ op: VSOCK_OP.RST }));
    expect(poller.fds.size).toBe(watched - 1);
  });

  test('bytes sent with the CONNECT line reach the guest even when its RESPONSE met queued control packets', async () => {
    const { vsock, drv, rx, poller } = rig();
    const net = await import('node:net');
    const sockPath = (vsock as unknown as { opts: { udsPath: string } }).opts.udsPath;
    const host = net.connect(sockPath);
    let hostGot = '';
    host.on('data', (d) => (hostGot += d));
    await new Promise<void>((r) => host.once('connect', () => r()));
    afterCleanup.push(() => host.destroy());
    // Handed to the kernel when the callback runs: then the device's reads will find it.
    await new Promise<void>((r) => host.write('CONNECT 5000\nping', () => r()));
    poller.pumpInput(); // accepts
    poller.pumpInput(); // reads the CONNECT line (and "ping")
    expect(received(drv, rx)).toEqual([VSOCK_OP.REQUEST]);
    const hdr = Buffer.alloc(44);
    mem.read(rx[0], hdr);
    const hostPort = hdr.readUInt32LE(16);
    // Three refused connections use up the remaining receive buffers; a fourth reset waits in the
    // control queue when the guest's RESPONSE arrives.
    for (const port of [1, 2, 3, 4]) send(drv, packet({ op: VSOCK_OP.REQUEST, src: 100 + port, dst: 9000 + port }));
    expect(received(drv, rx)).toEqual([VSOCK_OP.RST, VSOCK_OP.RST, VSOCK_OP.RST]);
    send(drv, packet({ op: VSOCK_OP.RESPONSE, src: 5000, dst: hostPort }));
    // The guest gives its buffers back: the pending reset goes out, then the early bytes.
    for (const i of [0, 1, 2, 3]) drv.publish(0, i);
    drv.set(0x50, 0);
    const got = drv.used(0).map(([head, len]) => {
      const b = Buffer.alloc(len);
      mem.read(rx[head], b);
      return b.readUInt16LE(30) === VSOCK_OP.RW ? b.toString('latin1', 44) : b.readUInt16LE(30);
    });
    expect(got).toEqual([VSOCK_OP.RST, 'ping']);
    await eventually(() => hostGot.includes('\n'));
    expect(hostGot).toBe(`OK ${hostPort}\n`);
    // fwd_cnt counts what the guest sent and the host took: none yet. The "OK" line is fc-run's
    // own; counting it made a Linux guest compute negative credit and never send (its echo hung).
    const fwdCnts = drv.used(0).map(([head]) => {
      const b = Buffer.alloc(44);
      mem.read(rx[head], b);
      return b.readUInt32LE(40);
    });
    expect(fwdCnts.every((f) => f === 0)).toBe(true);
    // Then the guest's 5 bytes reach the host: the next packet counts exactly those.
    send(drv, packet({ op: VSOCK_OP.RW, src: 5000, dst: hostPort, payload: Buffer.from('hello') }));
    await eventually(() => hostGot.endsWith('hello'));
    expect(hostGot).toBe(`OK ${hostPort}\nhello`);
    drv.publish(0, 0); // a receive buffer for the answer
    drv.set(0x50, 0);
    send(drv, packet({ op: VSOCK_OP.CREDIT_REQUEST, src: 5000, dst: hostPort }));
    const answers = drv.used(0).map(([head]) => {
      const h = Buffer.alloc(44);
      mem.read(rx[head], h);
      return [h.readUInt16LE(30), h.readUInt32LE(40)];
    });
    expect(answers).toEqual([[VSOCK_OP.CREDIT_UPDATE, 5]]);
  });
});
