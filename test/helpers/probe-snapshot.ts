import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';

/**
 * The probe guest's snapshot mode (guest/probe/probe.c, probe.snapshot=1), for tests that pause,
 * snapshot and restore a VM: the command line that turns it on, a spec around it, the host side of
 * its vsock echo, Ctrl-Alt-Del through the API socket, and its output read back.
 *
 * What the guest does: after its usual checks it writes a memory pattern, a block sector and notes
 * kvm-clock, prints SNAPSHOT_READY and halts until a keyboard byte (Ctrl-Alt-Del) arrives; then it
 * checks all of it (`ok - snapshot-…` lines, see expectedSnapshotChecks), prints
 * `# probe restored: N failed` and resets the machine (fc-run exits 0), or with more rounds prepares
 * and waits again.
 */
const ROOT = path.resolve(__dirname, '..', '..');
export const FC_RUN_BIN = path.join(ROOT, 'bin', 'fc-run');
/** The probe with the PVH note, and without it (entered through the Linux 64-bit boot protocol). */
export const PROBE = path.join(ROOT, 'guest', 'probe', 'build', 'probe.elf');
export const PROBE_LINUX64 = path.join(ROOT, 'guest', 'probe', 'build', 'probe-linux64.elf');

/** The line the guest prints when it is ready to be snapshotted (and waits, halted). */
export const SNAPSHOT_READY = '# probe snapshot-ready';

export interface SnapshotProbeOptions {
  /** probe.snapshot_sector=: the sector written before the wait (default: the drive's last). The
   *  check after the wait writes the one below it (above it for sector 0). */
  sector?: number;
  /** probe.snapshot_vsock_port=: after the wait, connect to host CID 2 on this port (the host
   *  listens on `<uds_path>_<port>`, see startEchoListener) and expect one line echoed. */
  vsockPort?: number;
  /** probe.snapshot_rounds=: prepare/wait/check this many times, then reset (default 1). */
  rounds?: number;
  /** probe.snapshot_loop=1: prepare/wait/check until the VM is stopped (never resets). */
  loop?: boolean;
  /** probe.snapshot_mib=: size of the memory pattern in MiB (default 4, at most 512). */
  mib?: number;
  /** probe.ip= / probe.peer=: with a NIC, the guest ARPs the peer before and after the wait. */
  ip?: string;
  peer?: string;
  /** Let the usual boot-time vsock check make its two connections (it then needs a host listening
   *  on `<uds_path>_6000` and connecting to guest port 5000, as test/integration/vsock.test.ts
   *  does). Default: off (probe.vsock=init: the device is only brought up). */
  bootVsockExchange?: boolean;
  /** More words for the command line. */
  extra?: string[];
}

/** The kernel command line for the probe in snapshot mode. */
export function snapshotBootArgs(o: SnapshotProbeOptions = {}): string {
  const words = ['console=ttyS0', 'reboot=k', 'panic=1', 'probe.snapshot=1'];
  if (o.sector !== undefined) words.push(`probe.snapshot_sector=${o.sector}`);
  if (o.vsockPort !== undefined) words.push(`probe.snapshot_vsock_port=${o.vsockPort}`);
  if (o.rounds !== undefined) words.push(`probe.snapshot_rounds=${o.rounds}`);
  if (o.loop) words.push('probe.snapshot_loop=1');
  if (o.mib !== undefined) words.push(`probe.snapshot_mib=${o.mib}`);
  if (o.ip) words.push(`probe.ip=${o.ip}`);
  if (o.peer) words.push(`probe.peer=${o.peer}`);
  if (!o.bootVsockExchange) words.push('probe.vsock=init');
  return [...words, ...(o.extra ?? [])].join(' ');
}

export interface SnapshotVmOptions extends SnapshotProbeOptions {
  kernel?: string;
  vcpus?: number;
  memMib?: number;
  /** A writable virtio-blk drive backed by this file. */
  disk?: string;
  entropy?: boolean;
  vsock?: { cid: number; uds: string };
  /** Network interfaces, as the spec takes them. */
  networkInterfaces?: object[];
  /** machine-config.track_dirty_pages (Diff snapshots). */
  trackDirtyPages?: boolean;
}

/** A spec (as an object: write it with Workspace.write) that boots the probe in snapshot mode. */
export function snapshotProbeSpec(o: SnapshotVmOptions = {}): Record<string, unknown> {
  return {
    'boot-source': { kernel_image_path: o.kernel ?? PROBE, boot_args: snapshotBootArgs(o) },
    'machine-config': { vcpu_count: o.vcpus ?? 1, mem_size_mib: o.memMib ?? 64, ...(o.trackDirtyPages ? { track_dirty_pages: true } : {}) },
    ...(o.disk ? { drives: [{ drive_id: 'snapdisk', path_on_host: o.disk, is_root_device: false, is_read_only: false }] } : {}),
    ...(o.entropy ? { entropy: {} } : {}),
    ...(o.vsock ? { vsock: { guest_cid: o.vsock.cid, uds_path: o.vsock.uds } } : {}),
    ...(o.networkInterfaces ? { 'network-interfaces': o.networkInterfaces } : {}),
  };
}

/**
 * The names of the `ok - …` lines one round prints after the wait, in order, for a VM with these
 * devices (kvm-clock is always there on KVM). A read-only drive gets no block checks.
 */
export function expectedSnapshotChecks(d: { blk?: boolean; rng?: boolean; vsockConnect?: boolean; netArp?: boolean }): string[] {
  return [
    'snapshot-memory',
    'snapshot-counter',
    'snapshot-kvm-clock',
    ...(d.blk ? ['snapshot-blk-persisted', 'snapshot-blk-write'] : []),
    ...(d.rng ? ['snapshot-rng'] : []),
    ...(d.vsockConnect ? ['snapshot-vsock-connect', 'snapshot-vsock-echo'] : []),
    ...(d.netArp ? ['snapshot-net-arp'] : []),
  ];
}

/** The `ok - …` lines of the preparation before each wait. */
export function expectedPrepareChecks(d: { blk?: boolean }): string[] {
  return ['snapshot-prepare-memory', ...(d.blk ? ['snapshot-prepare-blk'] : [])];
}

export interface SnapshotRound {
  /** `ok - NAME` / `not ok - NAME: detail` lines of this round before and after the wait. */
  prepareOk: string[];
  ok: string[];
  notOk: string[];
  /** `# key: value` facts of this round (before and after the wait). */
  facts: Record<string, string[]>;
  /** `# snapshot-vsock-reset seen|none`: whether a TRANSPORT_RESET event arrived. */
  vsockReset?: 'seen' | 'none';
  /** N of `# probe restored: N failed` (failures since boot), once the round's checks finished. */
  restoredFailed?: number;
}

export interface SnapshotOutput {
  /** Everything before the first SNAPSHOT_READY: the probe's usual checks. */
  bootOk: string[];
  bootNotOk: string[];
  /** How many SNAPSHOT_READY lines appeared. */
  ready: number;
  /** One entry per round (a round starts at its `# snapshot-round:` line). */
  rounds: SnapshotRound[];
  /** Every `not ok` line anywhere. */
  notOk: string[];
}

/**
 * Reads the probe's serial output (\r removed or not). Works on the output of a VM that was
 * restored from a snapshot too: that starts after the wait, with the round's checks.
 */
export function parseSnapshotOutput(text: string): SnapshotOutput {
  const out: SnapshotOutput = { bootOk: [], bootNotOk: [], ready: 0, rounds: [], notOk: [] };
  let round: SnapshotRound | undefined;
  let waited = false; // past this round's wait
  const newRound = (afterWait: boolean): SnapshotRound => {
    round = { prepareOk: [], ok: [], notOk: [], facts: {} };
    out.rounds.push(round);
    waited = afterWait;
    return round;
  };
  // Output that starts after the wait (a restored VM's) has no round line: its round starts there.
  const current = (): SnapshotRound => round ?? newRound(true);
  for (const raw of text.replace(/\r/g, '').split('\n')) {
    const line = raw.trimEnd();
    let m: RegExpExecArray | null;
    if ((m = /^# snapshot-round: (\d+)$/.exec(line))) {
      newRound(false).facts['snapshot-round'] = [m[1]];
    } else if (line === '# probe: ctrl-alt-del' && round) {
      waited = true;
    } else if (line === SNAPSHOT_READY) {
      out.ready++;
      current();
      waited = true;
    } else if ((m = /^(not )?ok - ([^:\s]+)/.exec(line))) {
      const snapshotCheck = m[2].startsWith('snapshot-');
      if (m[1]) out.notOk.push(line);
      if (!round && !snapshotCheck) (m[1] ? out.bootNotOk : out.bootOk).push(m[1] ? line : m[2]);
      else if (m[1]) current().notOk.push(line);
      else {
        const r = current(); // may start a round after the wait: read `waited` after it
        (waited ? r.ok : r.prepareOk).push(m[2]);
      }
    } else if ((m = /^# snapshot-vsock-reset (seen|none)$/.exec(line))) {
      current().vsockReset = m[1] as 'seen' | 'none';
    } else if ((m = /^# probe restored: (\d+) failed$/.exec(line))) {
      current().restoredFailed = Number(m[1]);
    } else if ((m = /^# (snapshot-[a-z0-9-]+): (.*)$/.exec(line))) {
      (current().facts[m[1]] ??= []).push(m[2]);
    }
  }
  return out;
}

/** The first 28 bytes of a sector of a drive file: the probe tags what it writes there. */
export function sectorTag(file: string, sector: number): string {
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.alloc(28);
    fs.readSync(fd, buf, 0, 28, sector * 512);
    return buf.toString('latin1');
  } finally {
    fs.closeSync(fd);
  }
}
/** What the probe writes before the wait, and after it. */
export const SECTOR_TAG_BEFORE = 'fc-run probe snapshot sector';
export const SECTOR_TAG_AFTER = 'fc-run probe restored sector';

export interface EchoListener {
  /** Everything each connection sent, one string per connection. */
  readonly received: string[];
  close(): Promise<void>;
}

/**
 * The host end of the guest's vsock connections to port `port`: listens on `<uds>_<port>` (where
 * fc-run connects when the guest connects to host port `port`) and echoes what arrives.
 */
export async function startEchoListener(uds: string, port: number): Promise<EchoListener> {
  const received: string[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    sockets.add(s);
    const i = received.push('') - 1;
    s.on('data', (d) => {
      received[i] += d.toString('latin1');
      s.write(d);
    });
    s.on('error', () => undefined);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(`${uds}_${port}`, resolve);
  });
  return {
    received,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

/** One request to the API socket; resolves with the status code and body text. */
export function apiCall(sock: string, method: string, url: string, body?: unknown): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : JSON.stringify(body);
    const req = http.request(
      { socketPath: sock, method, path: url, headers: data ? { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(data) } : {} },
      (res) => {
        let text = '';
        res.on('data', (d) => (text += d));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }));
      },
    );
    req.on('error', reject);
    req.end(data);
  });
}

/** Presses Ctrl-Alt-Del on the guest's keyboard (PUT /actions SendCtrlAltDel); the status code. */
export async function sendCtrlAltDel(apiSock: string): Promise<number> {
  return (await apiCall(apiSock, 'PUT', '/actions', { action_type: 'SendCtrlAltDel' })).status;
}

export interface FcRunProcess {
  child: ChildProcess;
  /** Serial output so far, \r removed. */
  output(): string;
  stderr(): string;
  exited: Promise<number | null>;
  /** Resolves when `count` SNAPSHOT_READY lines have appeared; rejects (with the output) on exit or timeout. */
  waitForReady(count?: number, timeoutMs?: number): Promise<void>;
  /** Resolves when the output matches; rejects (with the output) on exit or timeout. */
  waitForOutput(pattern: RegExp, timeoutMs?: number): Promise<void>;
}

/** Starts `fc-run ARGS` (a spec and options such as --api-sock) with its output collected. */
export function startFcRun(args: string[], opts: { prefix?: string[] } = {}): FcRunProcess {
  const argv = [...(opts.prefix ?? []), process.execPath, FC_RUN_BIN, ...args];
  const child = spawn(argv[0], argv.slice(1), { env: { ...process.env, NO_COLOR: '1' } });
  let out = '';
  let err = '';
  let code: number | null | undefined;
  child.stdout!.on('data', (d) => (out += d.toString('latin1')));
  child.stderr!.on('data', (d) => (err += d.toString()));
  const exited = new Promise<number | null>((resolve) =>
    child.on('exit', (c) => {
      code = c;
      resolve(c);
    }),
  );
  const output = () => out.replace(/\r/g, '');
  const waitForOutput = async (pattern: RegExp, timeoutMs = 180_000) => {
    const until = Date.now() + timeoutMs;
    while (!pattern.test(output())) {
      if (code !== undefined) throw new Error(`fc-run exited (${code}) before its output matched ${pattern}\nstderr:\n${err}\nserial:\n${output()}`);
      if (Date.now() > until) throw new Error(`timed out waiting for ${pattern}\nstderr:\n${err}\nserial:\n${output()}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  const waitForReady = (count = 1, timeoutMs?: number) =>
    waitForOutput(new RegExp(`(^|\\n)${SNAPSHOT_READY}\\n([\\s\\S]*\\n${SNAPSHOT_READY}\\n){${count - 1}}`), timeoutMs);
  return { child, output, stderr: () => err, exited, waitForReady, waitForOutput };
}

/** Waits until the API socket answers (GET /). */
export async function waitForApi(sock: string, timeoutMs = 60_000, opts: { started?: boolean } = {}): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    if (fs.existsSync(sock)) {
      const r = await apiCall(sock, 'GET', '/').catch(() => undefined);
      // With `started`, until the VM is set up (restored or booted): its state is no longer "Not started".
      if (r?.status === 200 && (!opts.started || (JSON.parse(r.body) as { state: string }).state !== 'Not started')) return;
    }
    if (Date.now() > until) throw new Error(`the API socket ${sock} did not answer within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
