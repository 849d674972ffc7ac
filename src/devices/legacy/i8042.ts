/**
 * i8042 keyboard controller, reduced to what a microVM needs: the guest resets the machine with
 * command 0xFE (Linux's reboot=k), and the host can send Ctrl-Alt-Del. Enough of the controller
 * protocol (control byte, self tests, keyboard ACKs) answers Linux's probe. State is shared across
 * vCPU threads like the UART's.
 */

export const I8042_DATA_OFFSET = 0; // port 0x60
export const I8042_COMMAND_OFFSET = 4; // port 0x64

import { spinLock, spinUnlock } from './spinlock';
import { bytes, int, record, snapshotInvalid } from '../../state-check';

const W = { CONTROL: 0, STATUS: 1, PENDING_CMD: 2, OUT_HEAD: 3, OUT_TAIL: 4, LOCK: 5 } as const;
const WORDS = 8;
const OUT_CAPACITY = 16;
export const I8042_STATE_BYTES = WORDS * 4 + OUT_CAPACITY;

const SB_OUT_FULL = 0x01;
const SB_SYSTEM = 0x04;
const SB_COMMAND = 0x08;
const SB_KBD_ENABLED = 0x10;
const CB_KBD_INT = 0x01;
const CB_TRANSLATE = 0x40;

const CMD = {
  READ_CTR: 0x20,
  WRITE_CTR: 0x60,
  DISABLE_AUX: 0xa7,
  ENABLE_AUX: 0xa8,
  TEST_AUX: 0xa9,
  SELF_TEST: 0xaa,
  TEST_KBD: 0xab,
  DISABLE_KBD: 0xad,
  ENABLE_KBD: 0xae,
  READ_OUTP: 0xd0,
  WRITE_OUTP: 0xd1,
  WRITE_AUX: 0xd4,
  RESET_CPU: 0xfe,
} as const;

/** Set-2 make codes for Ctrl, Alt, Delete (Delete is an extended key): what the keyboard sends. */
const CTRL_ALT_DEL = [0x14, 0x11, 0xe0, 0x71];
/**
 * The same keys as the guest reads them when the control byte asks the controller to translate
 * (bit 6, set at reset and kept by Linux: "AT Translated Set 2 keyboard"): set-1 make codes. Linux's
 * atkbd then reads set-1 codes, and untranslated set-2 bytes would be other keys (0x14 is T).
 */
const CTRL_ALT_DEL_TRANSLATED = [0x1d, 0x38, 0xe0, 0x53];

/**
 * The controller as a snapshot keeps it: control byte, status byte, the command waiting for its
 * data byte (0: none), and the bytes waiting for the guest, in order (indices are not saved: a
 * restore lays the bytes out from 0).
 */
export interface I8042State {
  control: number;
  status: number;
  pendingCommand: number;
  out: number[];
}

/** Commands that wait for a data byte (the only values PENDING_CMD takes besides 0). */
const DATA_COMMANDS = [0, CMD.WRITE_CTR, CMD.WRITE_OUTP, CMD.WRITE_AUX];

export interface I8042Sinks {
  /** The guest asked the controller to pulse the CPU reset line. */
  reset(): void;
  /** Raise IRQ 1. */
  interrupt(): void;
}

export class I8042 {
  private readonly w: Int32Array;
  private readonly out: Uint8Array;

  constructor(
    state: SharedArrayBuffer,
    private readonly sinks: I8042Sinks,
  ) {
    this.w = new Int32Array(state, 0, WORDS);
    this.out = new Uint8Array(state, WORDS * 4, OUT_CAPACITY);
  }

  static createState(): SharedArrayBuffer {
    const sab = new SharedArrayBuffer(I8042_STATE_BYTES);
    const w = new Int32Array(sab, 0, WORDS);
    w[W.CONTROL] = CB_KBD_INT | CB_TRANSLATE;
    w[W.STATUS] = SB_SYSTEM | SB_KBD_ENABLED;
    return sab;
  }

  /** Reads the state from the shared memory of a controller (call while no vCPU runs). */
  static saveState(state: SharedArrayBuffer): I8042State {
    const w = new Int32Array(state, 0, WORDS);
    const out = new Uint8Array(state, WORDS * 4, OUT_CAPACITY);
    spinLock(w, W.LOCK);
    try {
      const bytes: number[] = [];
      for (let i = w[W.OUT_HEAD]; i !== w[W.OUT_TAIL]; i = (i + 1) % OUT_CAPACITY) bytes.push(out[i]);
      return { control: w[W.CONTROL], status: w[W.STATUS], pendingCommand: w[W.PENDING_CMD], out: bytes };
    } finally {
      spinUnlock(w, W.LOCK);
    }
  }

  /** Writes saved state into a controller's shared memory (before any vCPU runs), every field checked first. */
  static restoreState(state: SharedArrayBuffer, saved: unknown, where: string): void {
    const s = record(saved, where, ['control', 'status', 'pendingCommand', 'out']);
    const control = int(s.control, `${where}.control`, 0, 0xff);
    const status = int(s.status, `${where}.status`, 0, 0xff);
    const pendingCommand = int(s.pendingCommand, `${where}.pendingCommand`, 0, 0xff);
    if (!(DATA_COMMANDS as number[]).includes(pendingCommand)) throw snapshotInvalid(`${where}.pendingCommand`, `0x${pendingCommand.toString(16)} is no command that waits for a data byte (0 for none, 0x60, 0xd1, 0xd4)`);
    const bytesOut = bytes(s.out, `${where}.out`, OUT_CAPACITY - 1);
    const w = new Int32Array(state, 0, WORDS);
    const out = new Uint8Array(state, WORDS * 4, OUT_CAPACITY);
    spinLock(w, W.LOCK);
    try {
      w[W.CONTROL] = control;
      // OUT_FULL follows the bytes waiting, whatever the file says.
      w[W.STATUS] = bytesOut.length > 0 ? status | SB_OUT_FULL : status & ~SB_OUT_FULL;
      w[W.PENDING_CMD] = pendingCommand;
      out.fill(0);
      out.set(bytesOut, 0);
      w[W.OUT_HEAD] = 0;
      w[W.OUT_TAIL] = bytesOut.length;
    } finally {
      spinUnlock(w, W.LOCK);
    }
  }

  private withLock<T>(fn: () => T): T {
    spinLock(this.w, W.LOCK);
    try {
      return fn();
    } finally {
      spinUnlock(this.w, W.LOCK);
    }
  }

  private count(): number {
    return (this.w[W.OUT_TAIL] - this.w[W.OUT_HEAD] + OUT_CAPACITY) % OUT_CAPACITY;
  }

  /** Queues a byte for the guest; true when the keyboard interrupt should fire. */
  private push(byte: number): boolean {
    if (this.count() >= OUT_CAPACITY - 1) return false;
    this.out[this.w[W.OUT_TAIL]] = byte;
    this.w[W.OUT_TAIL] = (this.w[W.OUT_TAIL] + 1) % OUT_CAPACITY;
    this.w[W.STATUS] |= SB_OUT_FULL;
    return (this.w[W.CONTROL] & CB_KBD_INT) !== 0;
  }

  read(offset: number): number {
    let again = false;
    const value = this.withLock(() => {
      if (offset === I8042_COMMAND_OFFSET) return this.w[W.STATUS];
      if (offset !== I8042_DATA_OFFSET || this.count() === 0) return 0;
      const b = this.out[this.w[W.OUT_HEAD]];
      this.w[W.OUT_HEAD] = (this.w[W.OUT_HEAD] + 1) % OUT_CAPACITY;
      if (this.count() === 0) this.w[W.STATUS] &= ~SB_OUT_FULL;
      // The next byte is in the output buffer now: like the real controller, raise the keyboard
      // interrupt for it (Linux's handler reads one byte per interrupt).
      else again = (this.w[W.CONTROL] & CB_KBD_INT) !== 0;
      return b;
    });
    if (again) this.sinks.interrupt();
    return value;
  }

  write(offset: number, value: number): void {
    let reset = false;
    const irq = this.withLock(() => {
      if (offset === I8042_COMMAND_OFFSET) {
        this.w[W.STATUS] |= SB_COMMAND;
        switch (value) {
          case CMD.READ_CTR:
            return this.push(this.w[W.CONTROL]);
          case CMD.WRITE_CTR:
          case CMD.WRITE_OUTP:
          case CMD.WRITE_AUX:
            this.w[W.PENDING_CMD] = value;
            return false;
          case CMD.SELF_TEST:
            return this.push(0x55);
          case CMD.TEST_KBD:
          case CMD.TEST_AUX:
            return this.push(0x00);
          case CMD.READ_OUTP:
            return this.push(0x01);
          case CMD.DISABLE_KBD:
            this.w[W.STATUS] &= ~SB_KBD_ENABLED;
            return false;
          case CMD.ENABLE_KBD:
            this.w[W.STATUS] |= SB_KBD_ENABLED;
            return false;
          case CMD.RESET_CPU:
            reset = true;
            return false;
          default:
            return false; // aux enable/disable and other commands need no answer
        }
      }
      if (offset !== I8042_DATA_OFFSET) return false;
      this.w[W.STATUS] &= ~SB_COMMAND;
      const pending = this.w[W.PENDING_CMD];
      this.w[W.PENDING_CMD] = 0;
      switch (pending) {
        case CMD.WRITE_CTR:
          this.w[W.CONTROL] = value;
          return false;
        case CMD.WRITE_OUTP:
          // Bit 0 of the output port is the CPU reset line (active low).
          if (!(value & 1)) reset = true;
          return false;
        case CMD.WRITE_AUX:
          return false; // no mouse: i8042.noaux is on Firecracker's command line
        default:
          // A keyboard command: acknowledge it (and pass the self test of 0xFF, reset).
          {
            const ack = this.push(0xfa);
            const passed = value === 0xff ? this.push(0xaa) : false;
            return ack || passed;
          }
      }
    });
    if (irq) this.sinks.interrupt();
    if (reset) this.sinks.reset();
  }

  /** Presses Ctrl-Alt-Del on the guest's keyboard. */
  sendCtrlAltDel(): void {
    const irq = this.withLock(() => {
      const keys = this.w[W.CONTROL] & CB_TRANSLATE ? CTRL_ALT_DEL_TRANSLATED : CTRL_ALT_DEL;
      return keys.map((b) => this.push(b)).some(Boolean);
    });
    if (irq) this.sinks.interrupt();
  }
}
