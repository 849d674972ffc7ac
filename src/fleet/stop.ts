import * as http from 'node:http';
import { isSameProcess } from './proc';

/** Asks the guest to shut down as a keyboard would: PUT /actions SendCtrlAltDel on the VM's API. */
export function sendCtrlAltDel(sock: string, timeoutMs = 2000): Promise<boolean> {
  return new Promise((resolve) => {
    const body = JSON.stringify({ action_type: 'SendCtrlAltDel' });
    const req = http.request(
      { socketPath: sock, method: 'PUT', path: '/actions', headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) }, timeout: timeoutMs },
      (res) => {
        res.resume();
        res.on('end', () => resolve((res.statusCode ?? 500) < 300));
      },
    );
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(false));
    req.end(body);
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Waits up to `ms` for the process to be gone; true when it is. */
export async function waitGone(pid: number, pidStart: string, ms: number, stepMs = 50): Promise<boolean> {
  const until = Date.now() + ms;
  for (;;) {
    if (!isSameProcess(pid, pidStart)) return true;
    if (Date.now() >= until) return false;
    await sleep(Math.min(stepMs, Math.max(1, until - Date.now())));
  }
}

export type StopOutcome = 'ctrl-alt-del' | 'SIGTERM' | 'SIGKILL' | 'gone';

/**
 * Stops one VM's fc-run: Ctrl-Alt-Del through its API, then SIGTERM once `graceMs` has passed,
 * then SIGKILL after as long again. The pid is only signalled while its start time still matches,
 * so a pid reused by another process is never hit.
 */
export async function stopVmProcess(pid: number, pidStart: string, sock: string, graceMs: number): Promise<StopOutcome> {
  if (!isSameProcess(pid, pidStart)) return 'gone';
  const asked = await sendCtrlAltDel(sock);
  if (await waitGone(pid, pidStart, graceMs)) return asked ? 'ctrl-alt-del' : 'gone';
  for (const sig of ['SIGTERM', 'SIGKILL'] as const) {
    try {
      if (isSameProcess(pid, pidStart)) process.kill(pid, sig);
    } catch {
      return sig;
    }
    if (await waitGone(pid, pidStart, sig === 'SIGTERM' ? graceMs : 5000)) return sig;
  }
  return 'SIGKILL';
}
