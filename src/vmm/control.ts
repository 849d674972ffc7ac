import { signalEventfd } from './event-loop';

/**
 * Requests from the main thread (the API) to the VMM thread, which spends its life in epoll_wait
 * and so cannot take worker messages: the request goes into shared memory and an eventfd in the
 * VMM thread's epoll set wakes it; the reply comes back in the same memory, awaited with
 * Atomics.waitAsync. One request at a time.
 */

const HEADER = 16; // [0] state, [1] length, [2] sequence number of the request, [3] of the reply
const IDLE = 0;
const REQUEST = 1;
const REPLY = 2;
/** The VMM thread claimed the request: it will be carried out, and cannot be withdrawn. */
const TAKEN = 3;

export interface ControlChannel {
  buffer: SharedArrayBuffer;
  fd: number;
}

export function createControlChannel(bytes: number, fd: number): ControlChannel {
  return { buffer: new SharedArrayBuffer(HEADER + bytes), fd };
}

export type ControlReply = { ok: true; value?: unknown } | { ok: false; status: number; message: string };

type WaitAsync = (a: Int32Array, i: number, v: number, t: number) => { async: boolean; value: Promise<string> | string };
const waitAsync = (Atomics as unknown as { waitAsync: WaitAsync }).waitAsync;

/**
 * The main thread's side. A request the VMM thread has not claimed when the wait times out is
 * withdrawn (it will not happen: 503 "not carried out"); one it claimed runs to its end, and the
 * next request waits for that (its reply is dropped), so a reply always belongs to its request.
 */
export class ControlClient {
  private readonly state: Int32Array;
  private readonly data: Uint8Array;
  private queue: Promise<unknown> = Promise.resolve();
  private seq = 0;

  constructor(private readonly channel: ControlChannel) {
    this.state = new Int32Array(channel.buffer, 0, 4);
    this.data = new Uint8Array(channel.buffer, HEADER);
  }

  /** Sends a request; resolves with the VMM thread's reply (or a 503 when it does not answer). */
  request(body: unknown, timeoutMs = 5000): Promise<ControlReply> {
    const next = this.queue.then(() => this.send(body, timeoutMs));
    this.queue = next.catch(() => undefined);
    return next;
  }

  /** Waits while the state is one of `busy`; the state at the end. */
  private async waitWhile(busy: number[], timeoutMs: number): Promise<number> {
    const until = Date.now() + timeoutMs;
    for (let st = Atomics.load(this.state, 0); busy.includes(st); st = Atomics.load(this.state, 0)) {
      const left = until - Date.now();
      if (left <= 0) return st;
      const w = waitAsync(this.state, 0, st, left);
      if (w.async) await w.value;
    }
    return Atomics.load(this.state, 0);
  }

  private async send(body: unknown, timeoutMs: number): Promise<ControlReply> {
    // A request claimed earlier and still running (it timed out): wait for it, drop its reply.
    if ((await this.waitWhile([TAKEN], timeoutMs)) === TAKEN) return { ok: false, status: 503, message: 'an earlier request is still running in the VMM thread; nothing was done' };
    Atomics.store(this.state, 0, IDLE);
    const bytes = Buffer.from(JSON.stringify(body));
    if (bytes.length > this.data.length) return { ok: false, status: 400, message: `the request is larger than ${this.data.length} bytes` };
    const seq = (this.seq = (this.seq + 1) | 0);
    this.data.set(bytes);
    Atomics.store(this.state, 1, bytes.length);
    Atomics.store(this.state, 2, seq);
    Atomics.store(this.state, 0, REQUEST);
    signalEventfd(this.channel.fd);
    const st = await this.waitWhile([REQUEST, TAKEN], timeoutMs);
    if (st === REQUEST && Atomics.compareExchange(this.state, 0, REQUEST, IDLE) === REQUEST) {
      return { ok: false, status: 503, message: 'the VMM thread did not take the request; nothing was done' };
    }
    if (Atomics.load(this.state, 0) !== REPLY) {
      return { ok: false, status: 503, message: 'the VMM thread is still carrying out the request; its outcome is not known yet' };
    }
    if (Atomics.load(this.state, 3) !== seq) return { ok: false, status: 500, message: 'a reply to another request' };
    const length = Atomics.load(this.state, 1);
    const reply = JSON.parse(Buffer.from(this.data.subarray(0, length)).toString()) as ControlReply;
    Atomics.store(this.state, 0, IDLE);
    return reply;
  }
}

/** The VMM thread's side: called when the channel's eventfd is readable. */
export function serveControl(channel: ControlChannel, handle: (request: unknown) => ControlReply): void {
  const state = new Int32Array(channel.buffer, 0, 4);
  const data = new Uint8Array(channel.buffer, HEADER);
  // Claim the request; one withdrawn by the client (or already served) is left alone.
  if (Atomics.compareExchange(state, 0, REQUEST, TAKEN) !== REQUEST) return;
  const seq = Atomics.load(state, 2);
  let bytes: Buffer;
  try {
    const length = Atomics.load(state, 1);
    const reply = handle(JSON.parse(Buffer.from(data.subarray(0, length)).toString()));
    bytes = Buffer.from(JSON.stringify(reply));
  } catch (err) {
    bytes = Buffer.from(JSON.stringify({ ok: false, status: 500, message: String((err as Error)?.message ?? err) }));
  }
  if (bytes.length > data.length) bytes = Buffer.from(JSON.stringify({ ok: false, status: 500, message: 'the reply does not fit the control channel' }));
  data.set(bytes);
  Atomics.store(state, 1, bytes.length);
  Atomics.store(state, 3, seq);
  Atomics.store(state, 0, REPLY);
  Atomics.notify(state, 0);
}
