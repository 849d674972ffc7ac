import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ChildProcess, spawn } from 'node:child_process';
import { VirtioMmio } from '../../../src/devices/virtio/mmio';
import { VSOCK_OP, VsockDevice } from '../../../src/devices/virtio/vsock';
import { VIRTQ_DESC_F_WRITE } from '../../../src/devices/virtio/queue';
import { EventLoop } from '../../../src/vmm/event-loop';
import { TestDriver } from '../../helpers/virtio-driver';
import { GUEST_CID, vsockPacket as packet } from '../../helpers/vsock-packet';

/**
 * vsock host connections that misbehave around the handshake, with the real epoll loop and real
 * Unix sockets (python3 clients, for shutdown(SHUT_RD)). Regression tests for two review findings.
 */

let dir: string;
const kids: ChildProcess[] = [];
beforeEach(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fc-run-vsock-host-'))));
afterEach(() => {
  for (const k of kids.splice(0)) k.kill();
  fs.rmSync(dir, { recursive: true, force: true });
});

function rig(buffers: number) {
  const mem = TestDriver.memory();
  const loop = new EventLoop();
  const udsPath = path.join(dir, 'v.sock');
  const vsock = new VsockDevice(mem, { guestCid: GUEST_CID, udsPath, poller: loop });
  const failures: string[] = [];
  const dev = new VirtioMmio(mem, vsock, () => undefined);
  dev.onFailure = (why: string) => failures.push(why);
  const drv = new TestDriver(mem, dev);
  drv.init();
  const rx = Array.from({ length: buffers }, (_, i) => {
    const addr = drv.buffer(256);
    drv.writeDesc(drv.desc(0), i, addr, 256, VIRTQ_DESC_F_WRITE, 0);
    drv.publish(0, i);
    return addr;
  });
  return { mem, loop, udsPath, vsock, dev, drv, rx, failures };
}

/**
 * Starts a python3 client (killed after the test). Python can take seconds to start on a loaded
 * machine: the waits below are limits for a bug, left as soon as the client shows up.
 */
const CLIENT_WAIT_MS = 30_000;

function client(script: string): void {
  kids.push(spawn('python3', ['-c', script]));
}

// The client stops reading before it sends CONNECT, so the OK line always finds it closed (however
// the client is scheduled).
test('a host client that stops reading before its OK line: the connection is reset, the device lives on', async () => {
  const { mem, loop, udsPath, vsock, drv, rx, failures } = rig(4);
  client(`import socket,time\ns=socket.socket(socket.AF_UNIX)\ns.connect(${JSON.stringify(udsPath)})\ns.shutdown(socket.SHUT_RD)\ns.sendall(b"CONNECT 5000\\nping")\ntime.sleep(60)`);
  const until = Date.now() + CLIENT_WAIT_MS;
  let used: [number, number][] = [];
  while (used.length === 0 && Date.now() < until) {
    loop.runOnce(50);
    used = drv.used(0);
  }
  expect(used.length).toBe(1);
  const hdr = Buffer.alloc(44);
  mem.read(rx[used[0][0]], hdr);
  expect(hdr.readUInt16LE(30)).toBe(VSOCK_OP.REQUEST);
  const b = packet({ op: VSOCK_OP.RESPONSE, src: 5000, dst: hdr.readUInt32LE(16) });
  drv.submit(1, [{ addr: drv.buffer(b.length, b), len: b.length }], 0);
  expect(failures).toEqual([]);
  expect(vsock.counters.resets).toBe(1);
  mem.release();
}, 2 * CLIENT_WAIT_MS);

test('three host clients that send data with CONNECT and half-close: the data and the end of each reach the guest', async () => {
  const { mem, loop, udsPath, vsock, drv, rx, failures } = rig(14);
  ['A', 'B', 'C'].forEach((name, i) =>
    client(`import socket,time\ns=socket.socket(socket.AF_UNIX)\ns.connect(${JSON.stringify(udsPath)})\ns.sendall(b"CONNECT ${5000 + i}\\nping${name}")\ns.shutdown(socket.SHUT_WR)\ntime.sleep(60)`),
  );
  const ports: Record<number, number> = {};
  const log: string[] = [];
  const collect = () => {
    for (const [head, len] of drv.used(0)) {
      const p = Buffer.alloc(len);
      mem.read(rx[head], p);
      const op = p.readUInt16LE(30);
      if (op === VSOCK_OP.REQUEST) ports[p.readUInt32LE(20)] = p.readUInt32LE(16);
      log.push(`${['?', 'REQ', 'RESP', 'RST', 'SHUT', 'RW', 'CU', 'CR'][op]}:${p.readUInt32LE(20)}${op === VSOCK_OP.RW ? '=' + p.toString('latin1', 44) : ''}`);
    }
  };
  const until = Date.now() + CLIENT_WAIT_MS;
  while (Object.keys(ports).length < 3 && Date.now() < until) {
    loop.runOnce(50);
    collect();
  }
  expect(Object.keys(ports).sort()).toEqual(['5000', '5001', '5002']);
  // One TX batch: a REQUEST to a port nobody listens on (its RST is queued first), then the three RESPONSEs.
  const batch = [packet({ op: VSOCK_OP.REQUEST, src: 1, dst: 4242 }), ...[5000, 5001, 5002].map((p) => packet({ op: VSOCK_OP.RESPONSE, src: p, dst: ports[p] }))];
  batch.forEach((b, i) => {
    drv.writeDesc(drv.desc(1), i, drv.buffer(b.length, b), b.length, 0, 0);
    drv.publish(1, i);
  });
  drv.set(0x50, 1);
  collect();
  const ended = () => [5000, 5001, 5002].every((port) => log.includes(`SHUT:${port}`));
  const settle = Date.now() + CLIENT_WAIT_MS;
  while (!ended() && Date.now() < settle) {
    loop.runOnce(20);
    collect();
  }
  for (const [port, name] of [[5000, 'A'], [5001, 'B'], [5002, 'C']] as const) {
    expect(log).toContain(`RW:${port}=ping${name}`);
    expect(log.indexOf(`SHUT:${port}`)).toBeGreaterThan(log.indexOf(`RW:${port}=ping${name}`));
  }
  expect((vsock as unknown as { control: unknown[] }).control.length).toBe(0);
  expect(failures).toEqual([]);
  mem.release();
}, 3 * CLIENT_WAIT_MS);

describe('half-close', () => {
  /** Runs the loop until `done()` or a deadline, collecting what the guest receives. */
  let lastRequestPort = -1;
  async function pumpUntil(r: ReturnType<typeof rig>, seen: string[], done: () => boolean, ms = 20_000): Promise<void> {
    const until = Date.now() + ms;
    while (!done() && Date.now() < until) {
      r.loop.runOnce(10);
      for (const [head, len] of r.drv.used(0)) {
        const p = Buffer.alloc(len);
        r.mem.read(r.rx[head % r.rx.length], p);
        const op = p.readUInt16LE(30);
        if (op === VSOCK_OP.REQUEST) lastRequestPort = p.readUInt32LE(16);
        seen.push(`${['?', 'REQ', 'RESP', 'RST', 'SHUT', 'RW', 'CU', 'CR'][op]}${op === VSOCK_OP.SHUTDOWN ? p.readUInt32LE(32) : ''}${op === VSOCK_OP.RW ? '=' + p.toString('latin1', 44) : ''}`);
        r.drv.publish(0, head); // give the buffer back
      }
      await new Promise((resolve) => setImmediate(resolve));
    }
  }
  const send = (r: ReturnType<typeof rig>, b: Buffer) => r.drv.submit(1, [{ addr: r.drv.buffer(b.length, b), len: b.length }], 0);

  test('the guest stops sending: the host reads end of stream, and its reply still reaches the guest', async () => {
    const r = rig(8);
    const net = await import('node:net');
    let hostGot = '';
    let hostSawEnd = false;
    const server = net.createServer({ allowHalfOpen: true }, (sock) => {
      sock.on('data', (d) => (hostGot += d));
      sock.on('end', () => {
        hostSawEnd = true;
        sock.end('reply'); // answer, then end our side too
      });
    });
    await new Promise<void>((resolve) => server.listen(`${r.udsPath}_6000`, resolve));
    try {
      const seen: string[] = [];
      send(r, packet({ op: VSOCK_OP.REQUEST, src: 1234, dst: 6000 }));
      send(r, packet({ op: VSOCK_OP.RW, src: 1234, dst: 6000, payload: 'hello' }));
      send(r, packet({ op: VSOCK_OP.SHUTDOWN, src: 1234, dst: 6000, flags: 2 }));
      await pumpUntil(r, seen, () => seen.includes('RST'));
      expect(hostGot).toBe('hello');
      expect(hostSawEnd).toBe(true);
      expect(seen).toEqual(['RESP', 'RW=reply', 'SHUT2', 'RST']);
      expect(r.failures).toEqual([]);
    } finally {
      server.close();
      r.mem.release();
    }
  });

  test('the host stops sending: the guest is told (SHUTDOWN SEND) and can still send; its close ends the connection', async () => {
    const r = rig(8);
    const net = await import('node:net');
    const host = net.connect({ path: r.udsPath, allowHalfOpen: true });
    let hostGot = '';
    let hostSawEnd = false;
    host.on('data', (d) => (hostGot += d));
    host.on('end', () => (hostSawEnd = true));
    try {
      host.write('CONNECT 5000\n');
      const seen: string[] = [];
      await pumpUntil(r, seen, () => seen.includes('REQ'));
      const hostPort = lastRequestPort;
      send(r, packet({ op: VSOCK_OP.RESPONSE, src: 5000, dst: hostPort }));
      await pumpUntil(r, seen, () => hostGot.startsWith('OK'));
      host.end('bye'); // data, then end of stream
      await pumpUntil(r, seen, () => seen.includes('SHUT2'));
      expect(seen).toEqual(['REQ', 'RW=bye', 'SHUT2']);
      send(r, packet({ op: VSOCK_OP.RW, src: 5000, dst: hostPort, payload: 'late words' }));
      await pumpUntil(r, seen, () => hostGot.endsWith('late words'));
      expect(hostGot).toBe(`OK ${hostPort}\nlate words`);
      send(r, packet({ op: VSOCK_OP.SHUTDOWN, src: 5000, dst: hostPort, flags: 3 }));
      await pumpUntil(r, seen, () => seen.includes('RST') && hostSawEnd);
      expect(seen[seen.length - 1]).toBe('RST');
      expect(hostSawEnd).toBe(true);
      expect(r.failures).toEqual([]);
    } finally {
      host.destroy();
      r.mem.release();
    }
  });
});
