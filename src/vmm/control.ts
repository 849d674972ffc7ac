import { signalEventfd } from './event-loop';

/**
 * Requests from the main thread (the API) to the VMM thread, which spends its life in epoll_wait
 * and so cannot take worker messages: the request goes into shared memory and an eventfd in the
 * VMM thread's epoll set wakes it; the reply comes back in the same memory, awaited with
 * Atomics.waitAsync. One request at a time.
 */

const HEADER = 8; // [0] state, [1] length
const IDLE = 0;
const REQUEST = 1;
const REPLY = 2;

export interface ControlChannel {
  buffer: SharedArrayBuffer;
  fd: number;
}

export function createControlChannel(bytes: number, fd: number): ControlChannel {
  return { buffer: new SharedArrayBuffer(HEADER + bytes), fd };
}

export type ControlReply = { ok: true; value?: unknown } | { ok: false; status: number; message: string };

/** The main thread's side. */
export class ControlClient {
  private readonly state: Int32Array;
  private readonly data: Uint8Array;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(private readonly channel: ControlChannel) {
    this.state = new Int32Array(channel.buffer, 0, 2);
    this.data = new Uint8Array(channel.buffer, HEADER);
  }

  /** Sends a request; resolves with the VMM thread's reply (or a timeout error). */
  request(body: unknown, timeoutMs = 5000): Promise<ControlReply> {
    const next = this.queue.then(() => this.send(body, timeoutMs));
    this.queue = next.catch(() => undefined);
    return next;
  }

  private async send(body: unknown, timeoutMs: number): Promise<ControlReply> {
    const bytes = Buffer.from(JSON.stringify(body));
    if (bytes.length > this.data.length) return { ok: false, status: 400, message: `the request is larger than ${this.data.length} bytes` };
    this.data.set(bytes);
    Atomics.store(this.state, 1, bytes.length);
    Atomics.store(this.state, 0, REQUEST);
    signalEventfd(this.channel.fd);
    const waited = (Atomics as unknown as { waitAsync(a: Int32Array, i: number, v: number, t: number): { async: boolean; value: Promise<string> | string } }).waitAsync(this.state, 0, REQUEST, timeoutMs);
    const outcome = waited.async ? await waited.value : waited.value;
    if (outcome === 'timed-out' && Atomics.load(this.state, 0) !== REPLY) {
      return { ok: false, status: 503, message: 'the VMM thread did not answer' };
    }
    const length = Atomics.load(this.state, 1);
    const reply = JSON.parse(Buffer.from(this.data.subarray(0, length)).toString()) as ControlReply;
    Atomics.store(this.state, 0, IDLE);
    return reply;
  }
}

/** The VMM thread's side: called when the channel's eventfd is readable. */
export function serveControl(channel: ControlChannel, handle: (request: unknown) => ControlReply): void {
  const state = new Int32Array(channel.buffer, 0, 2);
  const data = new Uint8Array(channel.buffer, HEADER);
  if (Atomics.load(state, 0) !== REQUEST) return;
  let reply: ControlReply;
  try {
    const length = Atomics.load(state, 1);
    reply = handle(JSON.parse(Buffer.from(data.subarray(0, length)).toString()));
  } catch (err) {
    reply = { ok: false, status: 500, message: (err as Error).message };
  }
  let bytes = Buffer.from(JSON.stringify(reply));
  if (bytes.length > data.length) bytes = Buffer.from(JSON.stringify({ ok: false, status: 500, message: 'the reply does not fit the control channel' }));
  data.set(bytes);
  Atomics.store(state, 1, bytes.length);
  Atomics.store(state, 0, REPLY);
  Atomics.notify(state, 0);
}
