import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { VirtioMmio } from '../../../src/devices/virtio/mmio';
import { VSOCK_OP, VsockDevice } from '../../../src/devices/virtio/vsock';
import { VIRTQ_DESC_F_WRITE } from '../../../src/devices/virtio/queue';
import { EventLoop } from '../../../src/vmm/event-loop';
import { TestDriver } from '../../helpers/virtio-driver';
import { GUEST_CID, vsockPacket as packet } from '../../helpers/vsock-packet';


/**
 * A host that hangs up while the guest is out of credit or buffers: everything it sent before still
 * reaches the guest (regression test: it used to be cut off with a SHUTDOWN).
 */
let dir: string;
beforeEach(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fc-run-vsock-hup-'))));
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

async function scenario(hostEnds: (s: net.Socket, data: Buffer) => void, guestHalfCloses: boolean) {
  const mem = TestDriver.memory();
  const loop = new EventLoop();
  const udsPath = path.join(dir, 'v.sock');
  const vsock = new VsockDevice(mem, { guestCid: GUEST_CID, udsPath, poller: loop });
  const dev = new VirtioMmio(mem, vsock, () => undefined);
  const failures: string[] = [];
  dev.onFailure = (w: string) => failures.push(w);
  const drv = new TestDriver(mem, dev);
  drv.init();
  const rx = Array.from({ length: 8 }, (_, i) => {
    const addr = drv.buffer(4096);
    drv.writeDesc(drv.desc(0), i, addr, 4096, VIRTQ_DESC_F_WRITE, 0);
    drv.publish(0, i);
    return addr;
  });
  const RESPONSE = Buffer.alloc(100 * 1024, 'x');
  const server = net.createServer({ allowHalfOpen: true }, (sock) => {
    if (guestHalfCloses) sock.on('end', () => hostEnds(sock, RESPONSE));
    else sock.once('data', () => hostEnds(sock, RESPONSE));
    sock.resume();
  });
  await new Promise<void>((r) => server.listen(`${udsPath}_6000`, r));
  const send = (b: Buffer) => drv.submit(1, [{ addr: drv.buffer(b.length, b), len: b.length }], 0);
  let got = 0;
  const seen: string[] = [];
  send(packet({ op: VSOCK_OP.REQUEST, src: 1234, dst: 6000 }));
  send(packet({ op: VSOCK_OP.RW, src: 1234, dst: 6000, payload: 'GET /big' }));
  if (guestHalfCloses) send(packet({ op: VSOCK_OP.SHUTDOWN, src: 1234, dst: 6000, flags: 2 }));
  const until = Date.now() + 4000;
  while (Date.now() < until && !seen.some((s) => s === 'RST' || s === 'SHUT3')) {
    loop.runOnce(10);
    let consumed = false;
    for (const [head, len] of drv.used(0)) {
      const p = Buffer.alloc(len);
      mem.read(rx[head], p);
      const op = p.readUInt16LE(30);
      if (op === VSOCK_OP.RW) {
        got += p.readUInt32LE(24);
        consumed = true;
      } else seen.push(`${['?', 'REQ', 'RESP', 'RST', 'SHUT', 'RW', 'CU', 'CR'][op]}${op === VSOCK_OP.SHUTDOWN ? p.readUInt32LE(32) : ''}`);
      drv.publish(0, head);
    }
    // A well-behaved guest: the application reads what arrived, and the driver tells the device (credit update).
    if (consumed) send(packet({ op: VSOCK_OP.CREDIT_UPDATE, src: 1234, dst: 6000, fwdCnt: got }));
    await new Promise((r) => setTimeout(r, 5));
  }
  server.close();
  mem.release();
  return { got, seen, failures, total: RESPONSE.length };
}

test('host writes 100 KiB then closes its socket: all of it should reach the guest', async () => {
  const r = await scenario((s, d) => s.end(d, () => s.destroy()), false);
  expect(r.got).toBe(r.total);
  expect(r.seen).toEqual(['RESP', 'SHUT3']);
  expect(r.failures).toEqual([]);
});

test('guest half-closes, host answers 100 KiB then ends: all of it should reach the guest', async () => {
  const r = await scenario((s, d) => s.end(d), true);
  expect(r.got).toBe(r.total);
  expect(r.seen).toEqual(['RESP', 'RST']);
  expect(r.failures).toEqual([]);
});
