/**
 * How the main thread asks the VMM thread to pause, save and resume its devices. The VMM thread
 * spends its life in epoll_wait and cannot take worker messages, so the request is a word in
 * shared memory and an eventfd in its epoll set wakes it; the answer (with the saved state) comes
 * back as a worker message, which has no size limit. The control channel (control.ts) is not used:
 * its reply must fit a fixed buffer sized for MMDS contents, and its requests may be withdrawn on
 * a timeout, while a pause must either happen or fail visibly. One request at a time: the main
 * thread waits for each answer before it writes the next request.
 */
export interface SnapshotChannel {
  /** Int32 [0]: the request (SNAPSHOT_OP), [1]: its sequence number, echoed in the answer. */
  command: SharedArrayBuffer;
  /** An eventfd in the VMM thread's epoll set, served while paused too. */
  fd: number;
}

export const SNAPSHOT_OP = { PAUSE: 1, SAVE: 2, RESUME: 3 } as const;

export function createSnapshotChannel(fd: number): SnapshotChannel {
  return { command: new SharedArrayBuffer(8), fd };
}
