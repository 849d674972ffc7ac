import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { HotExits, nativeVcpuLibraryBuilt } from '../../src/kvm/vcpu-threads';
import { errno, sys } from '../../src/kvm/libc';
import { Serial8250, SERIAL_REG, SERIAL_RX_CAPACITY, SERIAL_STATE_BYTES, SERIAL_TX_CAPACITY } from '../../src/devices/legacy/serial';

// The serial console's hot exits handled in C (native/vcpu-threads.c, fcv_fast_exit) against the
// JavaScript model of the UART (src/devices/legacy/serial.ts) they stand in for: on random device
// states and random port I/O exits, an exit the C code handles must leave what the model would
// leave (registers, the bytes still to send, the byte read, the output, the counters, no interrupt
// and no backlog), and an exit it does not handle must be left exactly as it was, for JavaScript.
// No KVM: the "kvm_run page" is a buffer laid out as KVM lays it out.

const COM1 = 0x3f8;
const RUN_SIZE = 3 * 4096;
const PIO_DATA = 4096; // KVM puts port I/O data in the mapping's second page
const SLOTS = { ioIn: 1, ioOut: 2, txBytes: 3 };
const TX_OFFSET = 16 * 4 + SERIAL_RX_CAPACITY;

/** A deterministic generator: the same cases at every run. */
function random(seed: number): (n: number) => number {
  let x = seed;
  return (n) => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) % n;
  };
}

/** What the model's state says that a guest could ever observe (the ring's positions are the model's own). */
function observable(state: SharedArrayBuffer): Record<string, unknown> {
  const w = new Int32Array(state, 0, 16);
  const tx = new Uint8Array(state, TX_OFFSET, SERIAL_TX_CAPACITY);
  const head = w[SERIAL_REG.TX_HEAD];
  const tail = w[SERIAL_REG.TX_TAIL];
  const pending = Buffer.concat(head <= tail ? [tx.subarray(head, tail)] : [tx.subarray(head), tx.subarray(0, tail)]).toString('hex');
  const { TX_HEAD, TX_TAIL, ...others } = SERIAL_REG;
  void TX_HEAD;
  void TX_TAIL;
  return { ...Object.fromEntries(Object.entries(others).map(([k, i]) => [k, w[i]])), rx: Serial8250.saveState(state).rx, pending };
}

function randomState(r: (n: number) => number): SharedArrayBuffer {
  const state = Serial8250.createState();
  const w = new Int32Array(state, 0, 16);
  w[SERIAL_REG.IER] = r(3) === 0 ? r(16) : r(2); // mostly off (a console polling), sometimes THRE
  w[SERIAL_REG.LCR] = r(5) === 0 ? 0x83 : 0x03; // the divisor latch now and then
  w[SERIAL_REG.MCR] = r(5) === 0 ? 0x18 : 0x08; // loopback now and then
  w[SERIAL_REG.THRE_PENDING] = r(2);
  w[SERIAL_REG.SCR] = r(256);
  const rxHead = r(SERIAL_RX_CAPACITY);
  w[SERIAL_REG.RX_HEAD] = rxHead;
  w[SERIAL_REG.RX_TAIL] = r(2) === 0 ? rxHead : (rxHead + 1 + r(20)) % SERIAL_RX_CAPACITY;
  new Uint8Array(state, 16 * 4, SERIAL_RX_CAPACITY).forEach((_, i, a) => (a[i] = r(256)));
  // The transmit buffer: mostly empty; else a few bytes, or nearly full (no room for a FIFO's worth).
  const txHead = r(SERIAL_TX_CAPACITY);
  const kind = r(6);
  const waiting = kind < 4 ? 0 : kind === 4 ? 1 + r(30) : SERIAL_TX_CAPACITY - 1 - r(20);
  w[SERIAL_REG.TX_HEAD] = txHead;
  w[SERIAL_REG.TX_TAIL] = (txHead + waiting) % SERIAL_TX_CAPACITY;
  const tx = new Uint8Array(state, TX_OFFSET, SERIAL_TX_CAPACITY);
  for (let i = 0; i < waiting; i++) tx[(txHead + i) % SERIAL_TX_CAPACITY] = r(256);
  w[SERIAL_REG.TX_WAIT] = r(8) === 0 ? 1 : 0;
  w[SERIAL_REG.DRAINING] = r(8) === 0 ? 1 : 0; // another thread writing the output
  return state;
}

/** A port I/O exit in a fresh kvm_run page: mostly the console's two, now and then anything. */
function randomExit(r: (n: number) => number): Buffer {
  const page = Buffer.alloc(RUN_SIZE);
  const hot = r(4) !== 0;
  const out = hot ? r(2) : r(2);
  const port = hot ? COM1 + (out ? 0 : 5) : r(4) === 0 ? 0x80 : COM1 + r(8);
  const size = hot || r(2) === 0 ? 1 : [2, 4][r(2)];
  const count = hot || r(2) === 0 ? 1 : 2;
  page.writeUInt32LE(r(10) === 0 ? 6 /* MMIO */ : 2 /* IO */, 8);
  page.writeUInt8(out, 32);
  page.writeUInt8(size, 33);
  page.writeUInt16LE(port, 34);
  page.writeUInt32LE(count, 36);
  page.writeBigUInt64LE(BigInt(r(20) === 0 ? RUN_SIZE : PIO_DATA), 40);
  page.fill(r(256), PIO_DATA, PIO_DATA + 8);
  return page;
}

const copy = (sab: SharedArrayBuffer): SharedArrayBuffer => {
  const c = new SharedArrayBuffer(sab.byteLength);
  new Uint8Array(c).set(new Uint8Array(sab));
  return c;
};

const describeNative = nativeVcpuLibraryBuilt() ? describe : describe.skip;

describeNative('hot exits handled in C (fcv_fast_exit)', () => {
  let dir: string;
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fc-run-hot-exits-'));
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('give what the JavaScript UART gives, or leave the exit untouched for it, on 3000 random states and exits', () => {
    const r = random(0x5eed1);
    const outFile = path.join(dir, 'out');
    let handled = 0;
    let declined = 0;
    const kinds = new Set<string>();
    for (let n = 0; n < 3000; n++) {
      const state = randomState(r);
      const page = randomExit(r);
      const discard = r(3) === 0;
      fs.writeFileSync(outFile, '');
      const outFd = discard ? -1 : fs.openSync(outFile, 'a');
      const counts = new Float64Array(new SharedArrayBuffer(8 * 8));
      const before = { state: copy(state), page: Buffer.from(page) };
      const hot = HotExits.create({ runPageAddress: Number(sys.addressOf(page) as bigint), runSize: RUN_SIZE, serialWords: new Int32Array(state, 0, 16), com1: COM1, outFd, counts, slots: SLOTS })!;
      let took: boolean;
      try {
        took = hot.handle();
      } finally {
        hot.free();
        if (outFd >= 0) fs.closeSync(outFd);
      }
      const written = [...fs.readFileSync(outFile)];
      const out = page.readUInt8(32);
      const port = page.readUInt16LE(34);
      if (!took) {
        declined++;
        // Nothing done: JavaScript handles the exit as if C had never looked at it.
        expect(Buffer.from(state).equals(Buffer.from(before.state))).toBe(true);
        expect(page.equals(before.page)).toBe(true);
        expect([...counts]).toEqual(new Array(8).fill(0));
        expect(written).toEqual([]);
        continue;
      }
      handled++;
      kinds.add(`${out ? 'out' : 'in'} ${port - COM1}`);
      // The model on the state as it was, as src/vmm/vcpu-exits.ts drives it for this exit.
      const model = before.state;
      const sent: number[] = [];
      const events: string[] = [];
      const modelCounts = new Float64Array(8);
      const uart = new Serial8250(model, {
        out: (b) => {
          if (!discard) sent.push(...b);
          modelCounts[SLOTS.txBytes] += b.length;
          return b.length;
        },
        lost: () => events.push('lost'),
        backlog: () => events.push('backlog'),
        interrupt: () => events.push('interrupt'),
        received: () => events.push('received'),
      });
      if (out) {
        modelCounts[SLOTS.ioOut]++;
        uart.write(port - COM1, before.page[PIO_DATA]);
      } else {
        modelCounts[SLOTS.ioIn]++;
        const v = uart.read(port - COM1);
        expect(page[PIO_DATA]).toBe(v);
      }
      expect(events).toEqual([]);
      expect(observable(state)).toEqual(observable(model));
      expect([...counts]).toEqual([...modelCounts]);
      expect(written).toEqual(sent);
    }
    // Both outcomes, and both hot exits, were seen many times.
    expect(handled).toBeGreaterThan(500);
    expect(declined).toBeGreaterThan(500);
    expect([...kinds].sort()).toEqual(['in 5', 'out 0']);
  });

  it('leave a transmit write the output does not take now (a full pipe) to JavaScript, untouched', () => {
    const fds = new Int32Array(2);
    if (sys.pipe2(fds, 0o4000 /* O_NONBLOCK */) !== 0) throw new Error(`pipe2: errno ${errno()}`);
    try {
      const chunk = Buffer.alloc(65536, 0x2e);
      while (true) {
        try {
          if (fs.writeSync(fds[1], chunk) <= 0) break;
        } catch {
          break; // EAGAIN: full
        }
      }
      const state = Serial8250.createState();
      const page = Buffer.alloc(RUN_SIZE);
      page.writeUInt32LE(2, 8);
      page.writeUInt8(1, 32);
      page.writeUInt8(1, 33);
      page.writeUInt16LE(COM1, 34);
      page.writeUInt32LE(1, 36);
      page.writeBigUInt64LE(BigInt(PIO_DATA), 40);
      page[PIO_DATA] = 0x41;
      const before = copy(state);
      const counts = new Float64Array(new SharedArrayBuffer(64));
      const hot = HotExits.create({ runPageAddress: Number(sys.addressOf(page) as bigint), runSize: RUN_SIZE, serialWords: new Int32Array(state, 0, 16), com1: COM1, outFd: fds[1], counts, slots: SLOTS })!;
      expect(hot.handle()).toBe(false);
      hot.free();
      expect(Buffer.from(state).equals(Buffer.from(before))).toBe(true);
      expect([...counts]).toEqual(new Array(8).fill(0));
      // The line status read still answers at once: the transmit buffer has room.
      page.writeUInt8(0, 32);
      page.writeUInt16LE(COM1 + 5, 34);
      const hot2 = HotExits.create({ runPageAddress: Number(sys.addressOf(page) as bigint), runSize: RUN_SIZE, serialWords: new Int32Array(state, 0, 16), com1: COM1, outFd: fds[1], counts, slots: SLOTS })!;
      expect(hot2.handle()).toBe(true);
      hot2.free();
      expect(page[PIO_DATA]).toBe(0x60);
      expect(counts[SLOTS.ioIn]).toBe(1);
    } finally {
      fs.closeSync(fds[0]);
      fs.closeSync(fds[1]);
    }
  });

  it('refuse counter slots outside the metrics values', () => {
    const page = Buffer.alloc(RUN_SIZE);
    const counts = new Float64Array(new SharedArrayBuffer(32));
    expect(() =>
      HotExits.create({ runPageAddress: Number(sys.addressOf(page) as bigint), runSize: RUN_SIZE, serialWords: new Int32Array(new SharedArrayBuffer(SERIAL_STATE_BYTES), 0, 16), com1: COM1, outFd: -1, counts, slots: { ioIn: 1, ioOut: 2, txBytes: 4 } }),
    ).toThrow(/slot 4/);
  });
});
