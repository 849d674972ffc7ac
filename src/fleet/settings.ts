import type { FcRunSection } from '../config/vm-spec.generated';

export type RestartPolicy = 'never' | 'on-failure' | 'always';

/** The spec's "fc-run" section with its defaults filled in (the schema declares the same ones). */
export interface FleetSettings {
  restart: RestartPolicy;
  restartDelayMs: number;
  restartDelayMaxMs: number;
  stopGraceMs: number;
  serialLogMaxBytes: number;
}

export const DEFAULT_SETTINGS: FleetSettings = {
  restart: 'on-failure',
  restartDelayMs: 1000,
  restartDelayMaxMs: 60000,
  stopGraceMs: 10000,
  serialLogMaxBytes: 1024 * 1024,
};

export function fleetSettings(section: FcRunSection | undefined): FleetSettings {
  const s = section ?? {};
  return {
    restart: s.restart ?? DEFAULT_SETTINGS.restart,
    restartDelayMs: s.restart_delay_ms ?? DEFAULT_SETTINGS.restartDelayMs,
    restartDelayMaxMs: s.restart_delay_max_ms ?? DEFAULT_SETTINGS.restartDelayMaxMs,
    stopGraceMs: s.stop_grace_ms ?? DEFAULT_SETTINGS.stopGraceMs,
    serialLogMaxBytes: s.serial_log_max_bytes ?? DEFAULT_SETTINGS.serialLogMaxBytes,
  };
}

/**
 * A run at least this long counts as healthy and resets the backoff: the cap, but never less than
 * 10 s, so a VM that fails slowly on a busy host is not mistaken for a healthy one.
 */
export function healthyRunMs(s: Pick<FleetSettings, 'restartDelayMaxMs'>): number {
  return Math.max(s.restartDelayMaxMs, 10_000);
}

/** The wait before the n-th restart in a row (n >= 1): the base, doubling, capped. */
export function restartDelay(n: number, s: Pick<FleetSettings, 'restartDelayMs' | 'restartDelayMaxMs'>): number {
  if (n <= 1) return Math.min(s.restartDelayMs, s.restartDelayMaxMs);
  // 2^(n-1) overflows nothing below the cap: stop doubling once the cap is reached.
  let d = s.restartDelayMs;
  for (let i = 1; i < n && d < s.restartDelayMaxMs; i++) d *= 2;
  return Math.min(d, s.restartDelayMaxMs);
}

/** Whether the policy wants a VM that exited with `code` (undefined: killed, no status) started again. */
export function wantsRestart(policy: RestartPolicy, code: number | null | undefined): boolean {
  if (policy === 'always') return true;
  if (policy === 'never') return false;
  return code !== 0;
}
