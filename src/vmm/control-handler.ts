import { mergePatch, MmdsService } from '../devices/mmds/service';
import { MAX_JSON_DEPTH, valueDepthExceeds } from '../config/json-depth';
import type { Throttle } from '../limits/throttle';
import type { BucketConfig } from '../limits/token-bucket';
import type { ControlReply } from './control';

/**
 * What the API asks of the VMM thread (MMDS contents, rate limiters), apart from the thread
 * itself so that it can be driven without a VM. The API checks requests first; this side checks
 * again what it relies on, since anything that throws here becomes a 500.
 */
export type LimiterName = 'rate_limiter' | 'rx_rate_limiter' | 'tx_rate_limiter';

export interface ControlTargets {
  mmds?: { service: MmdsService; sizeLimit: number };
  /** By "drive:<id>", "iface:<id>" and "entropy". */
  limiters: Map<string, Partial<Record<LimiterName, Throttle>>>;
  log: { info(origin: string, message: string): void };
}

type BucketChange = BucketConfig | null;

export function controlHandler(t: ControlTargets): (req: unknown) => ControlReply {
  return (req) => {
    if (req === null || typeof req !== 'object') return { ok: false, status: 400, message: 'malformed control request' };
    const r = req as { op?: unknown; data?: unknown; kind?: unknown; id?: unknown; limiters?: unknown };
    if (r.op === 'mmds-get' || r.op === 'mmds-put' || r.op === 'mmds-patch') {
      if (!t.mmds) return { ok: false, status: 400, message: 'MMDS is not configured: add "mmds-config" to the spec' };
      const { service, sizeLimit } = t.mmds;
      if (r.op === 'mmds-get') return { ok: true, value: service.getData() };
      // Every walker of the contents (merge patch, the renderer, JSON) recurses: depth stays bounded.
      if (valueDepthExceeds(r.data)) return { ok: false, status: 400, message: `the MMDS contents may nest at most ${MAX_JSON_DEPTH} levels` };
      const next = r.op === 'mmds-put' ? r.data : mergePatch(service.getData(), r.data);
      if (next === null || typeof next !== 'object' || Array.isArray(next)) return { ok: false, status: 400, message: 'the MMDS contents must be a JSON object' };
      const size = Buffer.byteLength(JSON.stringify(next));
      if (size > sizeLimit) return { ok: false, status: 413, message: `the MMDS contents would be ${size} bytes; the limit is ${sizeLimit}` };
      service.setData(next);
      t.log.info('devices/mmds', `MMDS contents replaced through the API (${size} bytes)`);
      return { ok: true };
    }
    if (r.op === 'limiters') {
      if ((r.kind !== 'drive' && r.kind !== 'iface' && r.kind !== 'entropy') || (r.kind !== 'entropy' && typeof r.id !== 'string')) return { ok: false, status: 400, message: 'malformed rate limiter request' };
      const changes = (r.limiters ?? {}) as Record<string, { bandwidth?: BucketChange; ops?: BucketChange }>;
      const key = r.kind === 'entropy' ? 'entropy' : `${r.kind}:${r.id}`;
      const found = t.limiters.get(key);
      const what = r.kind === 'drive' ? 'drive' : r.kind === 'iface' ? 'network interface' : 'entropy device';
      if (!found) return { ok: false, status: 400, message: `no ${what}${typeof r.id === 'string' ? ` ${JSON.stringify(r.id)}` : ''}` };
      // Check every change first, so a request applies whole or not at all.
      for (const which of Object.keys(changes)) {
        if (!Object.prototype.hasOwnProperty.call(found, which) || !found[which as LimiterName]) return { ok: false, status: 400, message: `${key} has no ${which} configured at start; fc-run can change a rate limiter, not add one` };
      }
      for (const [which, change] of Object.entries(changes)) found[which as LimiterName]!.patch(change);
      t.log.info('devices', `rate limiters of ${key} updated through the API`);
      return { ok: true };
    }
    return { ok: false, status: 400, message: `unknown control request ${JSON.stringify(r.op)}` };
  };
}
