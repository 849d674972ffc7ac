/**
 * 8250/16550A UART (COM1), as Linux's 8250 driver and early console use it: transmit, receive
 * through a small FIFO, the interrupt identification logic, divisor latch, scratch register and
 * loopback mode (the driver's autoconfig tests it).
 *
 * The register state lives in a SharedArrayBuffer so every vCPU thread can run the device on its
 * own exits and the VMM thread can feed received bytes, without a cross-thread round trip. A tiny
 * spinlock serializes register updates (critical sections are a few instructions long).
 */

import { spinLock, spinUnlock } from './spinlock';
import { bool, bytes, int, record } from '../../state-check';

/**
 * The words of the shared state. native/vcpu-threads.c (fcv_fast_exit, the serial console's hot
 * exits handled in C) reads and writes the same words under the same lock: keep the two in step
 * (test/unit/hot-exits.test.ts compares them on random states).
 */
export const SERIAL_REG = { IER: 0, LCR: 1, MCR: 2, SCR: 3, DLL: 4, DLH: 5, FCR: 6, THRE_PENDING: 7, RX_HEAD: 8, RX_TAIL: 9, LOCK: 10, TX_HEAD: 11, TX_TAIL: 12, TX_WAIT: 13, DRAINING: 14 } as const;
const REG = SERIAL_REG;
const WORDS = 16;
export const SERIAL_RX_CAPACITY = 1024;
/**
 * Transmitted bytes go through a buffer of this size on their way to the output, which takes them
 * as it can (a pipe whose reader is slow takes them later, see {@link Serial8250.flush}). While it
 * has no room for a FIFO's worth ({@link SERIAL_TX_FIFO}) the transmitter reads as busy (LSR THRE
 * and TEMT clear) and its empty interrupt waits, as a UART whose line is held back: a guest that
 * honours it waits, and what a guest sends regardless is dropped once the buffer is full, and
 * counted.
 */
export const SERIAL_TX_CAPACITY = 64 * 1024;
/**
 * The 16550A's transmit FIFO: Linux's 8250 driver writes up to this many bytes for each time it
 * sees THRE (tty writes, and the console's FIFO path), so THRE is shown only with that much room.
 */
export const SERIAL_TX_FIFO = 16;
export const SERIAL_STATE_BYTES = WORDS * 4 + SERIAL_RX_CAPACITY + SERIAL_TX_CAPACITY;

const IER_RDA = 0x01; // received data available interrupt
const IER_THRE = 0x02; // transmitter holding register empty interrupt
const IIR_NONE = 0x01;
const IIR_THRE = 0x02;
const IIR_RDA = 0x04;
const IIR_FIFO = 0xc0;
const LCR_DLAB = 0x80;
const LSR_DR = 0x01;
const LSR_THRE = 0x20;
const LSR_TEMT = 0x40;
const MCR_LOOP = 0x10;
const MSR_DEFAULT = 0xb0; // DCD, DSR, CTS
const FCR_ENABLE = 0x01;
const FCR_CLEAR_RX = 0x02;

/**
 * The UART as a snapshot keeps it: its registers and the bytes waiting in the receive FIFO, in
 * order. The FIFO's head and tail indices are not saved: a restore lays the bytes out from 0, so
 * a file cannot point them outside the FIFO.
 */
export interface SerialState {
  ier: number;
  lcr: number;
  mcr: number;
  scr: number;
  dll: number;
  dlh: number;
  fcr: number;
  /** A THR-empty interrupt is pending (reading IIR clears it). */
  threPending: boolean;
  rx: number[];
}

export interface SerialSinks {
  /**
   * Bytes the guest transmits, written without blocking: returns how many the output took (the
   * rest are kept and offered again), or -1 if it never will (they are dropped and counted).
   * One thread at a time writes, in the order the bytes were sent; not with the device's lock held.
   */
  out(bytes: Uint8Array): number;
  /** Transmitted bytes dropped: the output is gone, or the guest wrote while the transmitter was full. */
  lost?(count: number): void;
  /**
   * Bytes are waiting for the output (it was empty): someone must call {@link Serial8250.flush}
   * until it returns 0.
   */
  backlog?(): void;
  /** Raise COM1's interrupt (edge). */
  interrupt(): void;
  /** The guest took a received byte from the FIFO (counted as Firecracker's `uart.read_count`). */
  received?(): void;
}

export class Serial8250 {
  private readonly w: Int32Array;
  private readonly rx: Uint8Array;
  private readonly tx: Uint8Array;

  /** `state` comes from Serial8250.createState(), shared by every thread that runs the device. */
  constructor(
    state: SharedArrayBuffer,
    private readonly sinks: SerialSinks,
  ) {
    this.w = new Int32Array(state, 0, WORDS);
    this.rx = new Uint8Array(state, WORDS * 4, SERIAL_RX_CAPACITY);
    this.tx = new Uint8Array(state, WORDS * 4 + SERIAL_RX_CAPACITY, SERIAL_TX_CAPACITY);
  }

  static createState(): SharedArrayBuffer {
    const sab = new SharedArrayBuffer(SERIAL_STATE_BYTES);
    const w = new Int32Array(sab, 0, WORDS);
    w[REG.DLL] = 12; // 9600 baud, as firmware would leave it
    w[REG.LCR] = 0x03; // 8N1
    w[REG.MCR] = 0x08; // OUT2
    return sab;
  }

  /** Reads the state from the shared memory of a device (call while no vCPU runs). */
  static saveState(state: SharedArrayBuffer): SerialState {
    const w = new Int32Array(state, 0, WORDS);
    const rx = new Uint8Array(state, WORDS * 4, SERIAL_RX_CAPACITY);
    spinLock(w, REG.LOCK);
    try {
      const bytes: number[] = [];
      for (let i = w[REG.RX_HEAD]; i !== w[REG.RX_TAIL]; i = (i + 1) % SERIAL_RX_CAPACITY) bytes.push(rx[i]);
      return { ier: w[REG.IER], lcr: w[REG.LCR], mcr: w[REG.MCR], scr: w[REG.SCR], dll: w[REG.DLL], dlh: w[REG.DLH], fcr: w[REG.FCR], threPending: w[REG.THRE_PENDING] !== 0, rx: bytes };
    } finally {
      spinUnlock(w, REG.LOCK);
    }
  }

  /**
   * Writes saved state into a device's shared memory (before any vCPU runs), every field checked
   * first: registers are bytes (IER four bits, MCR five, as writes leave them), the FIFO holds at
   * most its capacity less one.
   */
  static restoreState(state: SharedArrayBuffer, saved: unknown, where: string): void {
    const s = record(saved, where, ['ier', 'lcr', 'mcr', 'scr', 'dll', 'dlh', 'fcr', 'threPending', 'rx']);
    const reg = (k: string, max = 0xff) => int(s[k], `${where}.${k}`, 0, max);
    const values = { ier: reg('ier', 0x0f), lcr: reg('lcr'), mcr: reg('mcr', 0x1f), scr: reg('scr'), dll: reg('dll'), dlh: reg('dlh'), fcr: reg('fcr') };
    const threPending = bool(s.threPending, `${where}.threPending`);
    const fifo = bytes(s.rx, `${where}.rx`, SERIAL_RX_CAPACITY - 1);
    const w = new Int32Array(state, 0, WORDS);
    const rx = new Uint8Array(state, WORDS * 4, SERIAL_RX_CAPACITY);
    spinLock(w, REG.LOCK);
    try {
      w[REG.IER] = values.ier;
      w[REG.LCR] = values.lcr;
      w[REG.MCR] = values.mcr;
      w[REG.SCR] = values.scr;
      w[REG.DLL] = values.dll;
      w[REG.DLH] = values.dlh;
      w[REG.FCR] = values.fcr;
      w[REG.THRE_PENDING] = threPending ? 1 : 0;
      rx.fill(0);
      rx.set(fifo, 0);
      w[REG.RX_HEAD] = 0;
      w[REG.RX_TAIL] = fifo.length;
      // Output not yet written when the snapshot was taken was the first VM's, not this one's.
      w[REG.TX_HEAD] = 0;
      w[REG.TX_TAIL] = 0;
      w[REG.TX_WAIT] = 0;
    } finally {
      spinUnlock(w, REG.LOCK);
    }
  }

  private lock(): void {
    spinLock(this.w, REG.LOCK);
  }

  private unlock(): void {
    spinUnlock(this.w, REG.LOCK);
  }

  private rxCount(): number {
    return (this.w[REG.RX_TAIL] - this.w[REG.RX_HEAD] + SERIAL_RX_CAPACITY) % SERIAL_RX_CAPACITY;
  }

  /** Bytes waiting for the output (the ring holds at most its capacity less one). */
  private txCount(): number {
    return (this.w[REG.TX_TAIL] - this.w[REG.TX_HEAD] + SERIAL_TX_CAPACITY) % SERIAL_TX_CAPACITY;
  }

  /** Room for a FIFO's worth of bytes: what THRE (and TEMT) say. */
  private txRoom(): boolean {
    return SERIAL_TX_CAPACITY - 1 - this.txCount() >= SERIAL_TX_FIFO;
  }

  /** Queues one transmitted byte (lock held); false if the buffer is full (the byte is dropped). */
  private pushTx(byte: number): boolean {
    if (this.txCount() >= SERIAL_TX_CAPACITY - 1) return false;
    this.tx[this.w[REG.TX_TAIL]] = byte;
    this.w[REG.TX_TAIL] = (this.w[REG.TX_TAIL] + 1) % SERIAL_TX_CAPACITY;
    return true;
  }

  /**
   * Writes what waits to the output, oldest first, until it is all written or the output takes
   * no more; returns how many bytes still wait, or -1 if another thread is writing them now (it
   * carries on with what comes meanwhile). The writes are made outside the device's lock: a slow
   * output holds up this thread only, never a vCPU touching the other registers. Once half the
   * buffer is free again, a guest that waited on the empty interrupt gets it.
   */
  flush(): number {
    const w = this.w;
    for (;;) {
      if (Atomics.compareExchange(w, REG.DRAINING, 0, 1) !== 0) return -1;
      let stuck = false;
      let gone = 0;
      for (;;) {
        this.lock();
        const head = w[REG.TX_HEAD];
        const tail = w[REG.TX_TAIL];
        this.unlock();
        if (head === tail) break;
        // Bytes from head on are this thread's to write: others only add at the tail, which
        // never reaches the head (the ring keeps one slot free).
        const end = head < tail ? tail : SERIAL_TX_CAPACITY;
        const n = this.sinks.out(this.tx.subarray(head, end));
        this.lock();
        // Unless the bytes were dropped meanwhile (discardOutput, a restore).
        if (w[REG.TX_HEAD] === head) {
          if (n < 0) {
            gone = this.txCount();
            w[REG.TX_HEAD] = w[REG.TX_TAIL];
          } else {
            w[REG.TX_HEAD] = (head + n) % SERIAL_TX_CAPACITY;
          }
        }
        this.unlock();
        if (n < 0) break;
        if (n < end - head) {
          stuck = true;
          break;
        }
      }
      if (gone > 0) this.sinks.lost?.(gone);
      let irq = false;
      this.lock();
      if (w[REG.TX_WAIT] && this.txCount() <= SERIAL_TX_CAPACITY / 2) {
        w[REG.TX_WAIT] = 0;
        w[REG.THRE_PENDING] = 1;
        irq = (w[REG.IER] & IER_THRE) !== 0;
      }
      this.unlock();
      Atomics.store(w, REG.DRAINING, 0);
      if (irq) this.sinks.interrupt();
      this.lock();
      const left = this.txCount();
      this.unlock();
      // Stuck: the output takes no more for now. Else bytes queued while this thread was writing
      // (another thread could not write them): look again.
      if (stuck || left === 0) return left;
    }
  }

  /** Drops what waits for the output (it takes none: fc-run is ending); returns how many bytes. */
  discardOutput(): number {
    this.lock();
    try {
      const n = this.txCount();
      this.w[REG.TX_HEAD] = this.w[REG.TX_TAIL];
      return n;
    } finally {
      this.unlock();
    }
  }

  /**
   * A restored VM starts with an empty transmitter: a guest that enabled its empty interrupt gets
   * it once more (it may have been waiting for it when the snapshot was taken). Call once the
   * interrupt controllers are restored.
   */
  raiseTransmitterInterrupt(): void {
    let irq = false;
    this.lock();
    if (this.w[REG.IER] & IER_THRE && this.txRoom()) {
      this.w[REG.THRE_PENDING] = 1;
      irq = true;
    }
    this.unlock();
    if (irq) this.sinks.interrupt();
  }

  private pushRx(byte: number): boolean {
    if (this.rxCount() >= SERIAL_RX_CAPACITY - 1) return false;
    this.rx[this.w[REG.RX_TAIL]] = byte;
    this.w[REG.RX_TAIL] = (this.w[REG.RX_TAIL] + 1) % SERIAL_RX_CAPACITY;
    return true;
  }

  /** Queues bytes for the guest to read; returns how many fit (the rest are the caller's to retry). */
  enqueue(bytes: Uint8Array): number {
    let n = 0;
    this.lock();
    try {
      while (n < bytes.length && this.pushRx(bytes[n])) n++;
    } finally {
      this.unlock();
    }
    if (n > 0 && this.w[REG.IER] & IER_RDA) this.sinks.interrupt();
    return n;
  }

  /** Room left in the receive FIFO. */
  rxSpace(): number {
    return SERIAL_RX_CAPACITY - 1 - this.rxCount();
  }

  read(offset: number): number {
    // A guest polling a busy transmitter: offer the output what waits (it may have room by now).
    if (offset === 5 && !this.txRoom() && (this.w[REG.LCR] & LCR_DLAB) === 0 && this.flush() !== 0) this.sinks.backlog?.();
    let irq = false;
    this.lock();
    try {
      const dlab = (this.w[REG.LCR] & LCR_DLAB) !== 0;
      switch (offset) {
        case 0: {
          if (dlab) return this.w[REG.DLL];
          if (this.rxCount() === 0) return 0;
          const b = this.rx[this.w[REG.RX_HEAD]];
          this.w[REG.RX_HEAD] = (this.w[REG.RX_HEAD] + 1) % SERIAL_RX_CAPACITY;
          irq = this.rxCount() > 0 && (this.w[REG.IER] & IER_RDA) !== 0;
          this.sinks.received?.();
          return b;
        }
        case 1:
          return dlab ? this.w[REG.DLH] : this.w[REG.IER];
        case 2: {
          const fifo = this.w[REG.FCR] & FCR_ENABLE ? IIR_FIFO : 0;
          if (this.w[REG.IER] & IER_RDA && this.rxCount() > 0) return IIR_RDA | fifo;
          if (this.w[REG.IER] & IER_THRE && this.w[REG.THRE_PENDING]) {
            this.w[REG.THRE_PENDING] = 0; // reading IIR acknowledges THRE
            return IIR_THRE | fifo;
          }
          return IIR_NONE | fifo;
        }
        case 3:
          return this.w[REG.LCR];
        case 4:
          return this.w[REG.MCR];
        case 5:
          // TEMT with THRE: nothing is ever half sent, and a console waiting for both would
          // otherwise wait for the whole buffer to drain.
          return (this.txRoom() ? LSR_THRE | LSR_TEMT : 0) | (this.rxCount() > 0 ? LSR_DR : 0);
        case 6: {
          const mcr = this.w[REG.MCR];
          if (!(mcr & MCR_LOOP)) return MSR_DEFAULT;
          // Loopback: DTR→DSR, RTS→CTS, OUT1→RI, OUT2→DCD.
          return ((mcr & 0x01) << 5) | ((mcr & 0x02) << 3) | ((mcr & 0x04) << 4) | ((mcr & 0x08) << 4);
        }
        case 7:
          return this.w[REG.SCR];
        default:
          return 0xff;
      }
    } finally {
      this.unlock();
      if (irq) this.sinks.interrupt();
    }
  }

  write(offset: number, value: number): void {
    let irq = false;
    let sent = false;
    let dropped = false;
    this.lock();
    try {
      const dlab = (this.w[REG.LCR] & LCR_DLAB) !== 0;
      switch (offset) {
        case 0:
          if (dlab) {
            this.w[REG.DLL] = value;
            break;
          }
          if (this.w[REG.MCR] & MCR_LOOP) {
            this.pushRx(value);
            irq = (this.w[REG.IER] & IER_RDA) !== 0;
          } else {
            dropped = !this.pushTx(value);
            sent = true;
          }
          if (!this.txRoom()) {
            // No room for another FIFO's worth: the empty interrupt comes when flush makes some.
            this.w[REG.TX_WAIT] = 1;
            this.w[REG.THRE_PENDING] = 0;
            break;
          }
          this.w[REG.THRE_PENDING] = 1;
          irq ||= (this.w[REG.IER] & IER_THRE) !== 0;
          break;
        case 1:
          if (dlab) {
            this.w[REG.DLH] = value;
            break;
          }
          {
            const before = this.w[REG.IER];
            this.w[REG.IER] = value & 0x0f;
            // Enabling THRE while the transmitter has room raises the interrupt at once (else
            // flush raises it once there is room).
            if (!(before & IER_THRE) && value & IER_THRE) {
              if (this.txRoom()) {
                this.w[REG.THRE_PENDING] = 1;
                irq = true;
              } else this.w[REG.TX_WAIT] = 1;
            }
            if (!(before & IER_RDA) && value & IER_RDA && this.rxCount() > 0) irq = true;
          }
          break;
        case 2:
          this.w[REG.FCR] = value;
          if (value & FCR_CLEAR_RX) this.w[REG.RX_HEAD] = this.w[REG.RX_TAIL];
          break;
        case 3:
          this.w[REG.LCR] = value;
          break;
        case 4:
          this.w[REG.MCR] = value & 0x1f;
          break;
        case 7:
          this.w[REG.SCR] = value;
          break;
        default:
          break; // LSR and MSR are read-only
      }
    } finally {
      this.unlock();
    }
    if (dropped) this.sinks.lost?.(1);
    if (irq) this.sinks.interrupt();
    // Written at once if the output takes it; what it does not take (or what another thread is
    // writing) waits for the main thread to see to it.
    if (sent && this.flush() !== 0) this.sinks.backlog?.();
  }
}
