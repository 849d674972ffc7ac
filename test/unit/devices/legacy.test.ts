import { Serial8250, SERIAL_TX_CAPACITY, SERIAL_TX_FIFO } from '../../../src/devices/legacy/serial';
import { I8042 } from '../../../src/devices/legacy/i8042';

const THR = 0, IER = 1, IIR = 2, LCR = 3, MCR = 4, LSR = 5, MSR = 6, SCR = 7;

function uart() {
  const out: number[] = [];
  let irqs = 0;
  const dev = new Serial8250(Serial8250.createState(), { out: (b) => (out.push(...b), b.length), interrupt: () => irqs++ });
  return { dev, out, irqs: () => irqs };
}

describe('8250 UART', () => {
  test('transmitted bytes reach the sink; with an output that takes them, the transmitter reads empty', () => {
    const { dev, out } = uart();
    for (const c of Buffer.from('hi\n')) dev.write(THR, c);
    expect(Buffer.from(out).toString()).toBe('hi\n');
    expect(dev.read(LSR) & 0x60).toBe(0x60);
  });

  test('enabling the THRE interrupt raises it at once; reading IIR acknowledges it', () => {
    const { dev, irqs } = uart();
    expect(dev.read(IIR) & 0x0f).toBe(0x01); // nothing pending
    dev.write(IER, 0x02);
    expect(irqs()).toBe(1);
    expect(dev.read(IIR) & 0x0f).toBe(0x02);
    expect(dev.read(IIR) & 0x0f).toBe(0x01);
    dev.write(THR, 0x41);
    expect(irqs()).toBe(2);
  });

  test('received bytes: data ready, RDA interrupt, read in order, FIFO bounded', () => {
    const { dev, irqs } = uart();
    dev.write(IER, 0x01);
    expect(dev.enqueue(Buffer.from('ab'))).toBe(2);
    expect(irqs()).toBe(1);
    expect(dev.read(LSR) & 1).toBe(1);
    expect(dev.read(IIR) & 0x0f).toBe(0x04);
    expect(dev.read(THR)).toBe(0x61);
    expect(dev.read(THR)).toBe(0x62);
    expect(dev.read(LSR) & 1).toBe(0);
    expect(dev.read(THR)).toBe(0); // empty FIFO reads 0, never throws
    const big = Buffer.alloc(5000, 0x7a);
    const taken = dev.enqueue(big);
    expect(taken).toBeLessThan(5000);
    expect(dev.rxSpace()).toBe(0);
  });

  test('each received byte the guest takes is reported once (uart.read_count); empty reads and the divisor latch are not', () => {
    let taken = 0;
    const dev = new Serial8250(Serial8250.createState(), { out: (b) => b.length, interrupt: () => undefined, received: () => taken++ });
    dev.enqueue(Buffer.from('xyz'));
    dev.read(LSR);
    expect(taken).toBe(0);
    dev.read(THR);
    dev.read(THR);
    expect(taken).toBe(2);
    dev.write(LCR, 0x80); // DLAB: offset 0 is the divisor latch
    dev.read(THR);
    expect(taken).toBe(2);
    dev.write(LCR, 0x03);
    dev.read(THR);
    dev.read(THR); // empty
    expect(taken).toBe(3);
  });

  test('divisor latch, scratch register and loopback as the Linux driver probes them', () => {
    const { dev, out } = uart();
    dev.write(LCR, 0x80);
    dev.write(THR, 0x01);
    dev.write(IER, 0x00);
    expect([dev.read(THR), dev.read(IER)]).toEqual([0x01, 0x00]);
    dev.write(LCR, 0x03);
    dev.write(SCR, 0x5a);
    expect(dev.read(SCR)).toBe(0x5a);
    dev.write(MCR, 0x10 | 0x0a); // loopback, RTS, OUT2
    expect(dev.read(MSR) & 0xf0).toBe(0x90); // CTS, DCD
    dev.write(THR, 0x33);
    expect(out).toEqual([]); // looped back, not transmitted
    expect(dev.read(THR)).toBe(0x33);
  });

  describe('an output that does not take the bytes at once', () => {
    /** A UART whose output takes `room()` bytes per write (0: full for now, -1: gone). */
    function held(room: () => number) {
      const out: number[] = [];
      const lost: number[] = [];
      let irqs = 0;
      let backlogs = 0;
      const dev = new Serial8250(Serial8250.createState(), {
        out: (b) => {
          const r = room();
          if (r < 0) return -1;
          const n = Math.min(r, b.length);
          out.push(...b.subarray(0, n));
          return n;
        },
        lost: (n) => lost.push(n),
        backlog: () => backlogs++,
        interrupt: () => irqs++,
      });
      return { dev, out, lost, irqs: () => irqs, backlogs: () => backlogs };
    }

    test('bytes wait in order and are written by flush; each write that leaves bytes waiting says so', () => {
      let room = 0;
      const u = held(() => room);
      for (const c of Buffer.from('abc')) u.dev.write(THR, c);
      expect(u.out).toEqual([]);
      expect(u.backlogs()).toBe(3);
      expect(u.dev.read(LSR) & 0x60).toBe(0x60); // room for a FIFO's worth: THRE and TEMT
      room = 2;
      expect(u.dev.flush()).toBe(1);
      room = 100;
      u.dev.write(THR, 0x64); // 'd' goes after what waited, never before it
      expect(Buffer.from(u.out).toString()).toBe('abcd');
      expect(u.dev.flush()).toBe(0);
      expect(u.backlogs()).toBe(3);
      expect(u.lost).toEqual([]);
    });

    test('with less than a FIFO\'s worth of room the transmitter reads busy and holds back its empty interrupt until flush frees half; bytes beyond the buffer are dropped and counted', () => {
      let room = 0;
      const u = held(() => room);
      u.dev.write(IER, 0x02);
      expect(u.dev.read(IIR) & 0x0f).toBe(0x02);
      const cap = SERIAL_TX_CAPACITY - 1;
      // Up to a FIFO's worth of room left: THRE still shown.
      for (let i = 0; i < cap - SERIAL_TX_FIFO; i++) u.dev.write(THR, i & 0xff);
      expect(u.dev.read(LSR) & 0x60).toBe(0x60);
      u.dev.write(THR, (cap - SERIAL_TX_FIFO) & 0xff);
      expect(u.dev.read(LSR) & 0x60).toBe(0); // a driver that writes a FIFO's worth per THRE would overflow
      expect(u.dev.read(IIR) & 0x0f).toBe(0x01); // no THRE interrupt pending while busy
      // A driver that writes its FIFO's worth anyway still fits...
      for (let i = cap - SERIAL_TX_FIFO + 1; i < cap; i++) u.dev.write(THR, i & 0xff);
      expect(u.lost).toEqual([]);
      const irqsWhenFull = u.irqs();
      // ...but not beyond the buffer.
      u.dev.write(THR, 0xee);
      u.dev.write(THR, 0xef);
      expect(u.lost).toEqual([1, 1]);
      room = 1000; // not enough to free half: still no interrupt
      u.dev.flush();
      expect(u.irqs()).toBe(irqsWhenFull);
      room = SERIAL_TX_CAPACITY;
      expect(u.dev.flush()).toBe(0);
      expect(u.irqs()).toBe(irqsWhenFull + 1);
      expect(u.dev.read(IIR) & 0x0f).toBe(0x02);
      expect(u.out.length).toBe(cap);
      expect(u.out.slice(0, 4)).toEqual([0, 1, 2, 3]);
      expect(u.out[cap - 1]).toBe((cap - 1) & 0xff);
    });

    test('a guest polling a busy transmitter gets room as soon as the output takes bytes (a console waits 10 ms per character at most)', () => {
      let room = 0;
      const u = held(() => room);
      for (let i = 0; i < SERIAL_TX_CAPACITY - 1; i++) u.dev.write(THR, 0x61);
      expect(u.dev.read(LSR) & 0x20).toBe(0);
      room = 4096; // the reader took some: the next poll writes and sees room
      expect(u.dev.read(LSR) & 0x20).toBe(0x20);
    });

    test('enabling the empty interrupt while busy raises it only once flush makes room', () => {
      let room = 0;
      const u = held(() => room);
      for (let i = 0; i < SERIAL_TX_CAPACITY - 1; i++) u.dev.write(THR, 0x61);
      const before = u.irqs();
      u.dev.write(IER, 0x02);
      expect(u.irqs()).toBe(before);
      room = SERIAL_TX_CAPACITY;
      u.dev.flush();
      expect(u.irqs()).toBe(before + 1);
      expect(u.dev.read(IIR) & 0x0f).toBe(0x02);
    });

    test('an output that is gone drops what waits and what comes, counted; the guest runs on', () => {
      let room = 0;
      const u = held(() => room);
      for (const c of Buffer.from('hello')) u.dev.write(THR, c);
      room = -1;
      expect(u.dev.flush()).toBe(0);
      u.dev.write(THR, 0x21);
      expect(u.lost.reduce((a, b) => a + b, 0)).toBe(6);
      expect(u.dev.read(LSR) & 0x60).toBe(0x60);
    });

    test('discardOutput drops what waits and says how much; a snapshot restore starts with nothing waiting', () => {
      const u = held(() => 0);
      for (const c of Buffer.from('xyz')) u.dev.write(THR, c);
      expect(u.dev.discardOutput()).toBe(3);
      expect(u.dev.flush()).toBe(0);
      // Restored over a device with output waiting: what waited was the first VM's, not this one's.
      const state = Serial8250.createState();
      const a = new Serial8250(state, { out: () => 0, interrupt: () => undefined });
      a.write(IER, 0x02);
      for (const c of Buffer.from('xyz')) a.write(THR, c);
      expect(a.flush()).toBe(3);
      a.read(IIR); // the guest took the THRE interrupt; the snapshot saves none pending
      Serial8250.restoreState(state, Serial8250.saveState(state), 'serial');
      let irqs = 0;
      const b = new Serial8250(state, { out: () => 0, interrupt: () => irqs++ });
      expect(b.flush()).toBe(0);
      // ...and a guest that was waiting for the empty interrupt gets it once the VM runs again.
      b.raiseTransmitterInterrupt();
      expect(irqs).toBe(1);
      expect(b.read(IIR) & 0x0f).toBe(0x02);
      expect(b.read(LSR) & 0x60).toBe(0x60);
    });
  });

  test('state is shared: two device objects over one state see the same registers', () => {
    const state = Serial8250.createState();
    const a = new Serial8250(state, { out: (b) => b.length, interrupt: () => undefined });
    const b = new Serial8250(state, { out: (b) => b.length, interrupt: () => undefined });
    a.write(SCR, 0x42);
    expect(b.read(SCR)).toBe(0x42);
  });
});

function kbd() {
  let resets = 0;
  let irqs = 0;
  const dev = new I8042(I8042.createState(), { reset: () => resets++, interrupt: () => irqs++ });
  return { dev, resets: () => resets, irqs: () => irqs };
}

describe('i8042', () => {
  test('command 0xFE resets the machine', () => {
    const { dev, resets } = kbd();
    dev.write(4, 0xfe);
    expect(resets()).toBe(1);
  });

  test('clearing the reset line through the output port resets too', () => {
    const { dev, resets } = kbd();
    dev.write(4, 0xd1);
    dev.write(0, 0xfe);
    expect(resets()).toBe(1);
  });

  test('self test and control byte answer like a real controller', () => {
    const { dev } = kbd();
    dev.write(4, 0xaa);
    expect(dev.read(4) & 1).toBe(1);
    expect(dev.read(0)).toBe(0x55);
    expect(dev.read(4) & 1).toBe(0);
    dev.write(4, 0x60);
    dev.write(0, 0x45);
    dev.write(4, 0x20);
    expect(dev.read(0)).toBe(0x45);
  });

  test('keyboard commands are acknowledged; Ctrl-Alt-Del queues scancodes and interrupts', () => {
    const { dev, irqs } = kbd();
    dev.write(0, 0xff);
    expect([dev.read(0), dev.read(0)]).toEqual([0xfa, 0xaa]);
    const before = irqs();
    dev.sendCtrlAltDel();
    expect(irqs()).toBeGreaterThan(before);
    // The controller translates at reset (control byte bit 6), as Linux keeps it: set-1 codes.
    // Each byte read with more waiting raises the interrupt again (one byte per interrupt).
    const queued = irqs();
    expect([dev.read(0), dev.read(0), dev.read(0), dev.read(0)]).toEqual([0x1d, 0x38, 0xe0, 0x53]);
    expect(irqs() - queued).toBe(3);
    // Translation off (i8042.direct): the keyboard's own set-2 codes.
    dev.write(4, 0x60);
    dev.write(0, 0x01);
    dev.sendCtrlAltDel();
    expect([dev.read(0), dev.read(0), dev.read(0), dev.read(0)]).toEqual([0x14, 0x11, 0xe0, 0x71]);
  });

  test('unknown commands and empty reads are harmless', () => {
    const { dev, resets } = kbd();
    dev.write(4, 0x12);
    expect(dev.read(0)).toBe(0);
    expect(resets()).toBe(0);
  });
});
