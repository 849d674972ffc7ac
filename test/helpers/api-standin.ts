import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { EFD_CLOEXEC, EFD_NONBLOCK, sys } from '../../src/kvm/libc';
import { ControlClient, createControlChannel } from '../../src/vmm/control';
import { ApiContext, ApiLimits, ApiServer, startApi } from '../../src/api/server';
import type { VmMonitor } from '../../src/monitor/vm-monitor';

/**
 * The real API server in this process, in front of a worker thread that stands in for the VMM
 * thread (test/helpers/api-vmm-standin.ts): everything from the socket to the control handler is
 * fc-run's own code; only KVM and the devices are missing. Drives "limited" and "free" and
 * interface "eth0" exist, as in test/integration/api.test.ts.
 */
export interface StandIn {
  ctx: ApiContext;
  ctrlAltDel: number;
  warnings: string[];
  close(): Promise<void>;
}

export async function startStandIn(sock: string, opts: { mmds?: unknown; mmdsSizeLimit?: number; limits?: Partial<ApiLimits>; control?: ControlClient['request'] } = {}): Promise<StandIn> {
  const sizeLimit = opts.mmdsSizeLimit ?? 1000;
  const channel = createControlChannel(sizeLimit + 64 * 1024, sys.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK) as number);
  const worker = new Worker(path.join(__dirname, 'ts-worker.js'), { workerData: { script: path.join(__dirname, 'api-vmm-standin.ts'), channel, mmds: opts.mmds ?? {}, sizeLimit } });
  const client = new ControlClient(channel);
  const control = opts.control ? ({ request: opts.control } as unknown as ControlClient) : client;
  const warnings: string[] = [];
  const standIn: StandIn = {
    ctrlAltDel: 0,
    warnings,
    ctx: {
      id: 'vm-standin',
      version: 'test',
      maxBody: sizeLimit + 4096,
      monitor: { log: { warn: (_o: string, m: string) => warnings.push(m), info: () => undefined }, flush: () => true, countApiRequest: () => undefined } as unknown as VmMonitor,
      vm: {
        sendCtrlAltDel: () => void standIn.ctrlAltDel++,
        control,
        paused: false,
        pause: async () => void ((standIn.ctx.vm as { paused: boolean }).paused = true),
        resume: async () => void ((standIn.ctx.vm as { paused: boolean }).paused = false),
        dumpRegisters: async () => ['rip=0x0'],
      } as ApiContext['vm'],
    },
    close: async () => {
      server.close();
      await worker.terminate();
      sys.close(channel.fd);
    },
  };
  // The worker loads (and transpiles) its modules first: wait for it, so requests take their own time.
  const ready = await client.request({ op: 'mmds-get' }, 60_000);
  if (!ready.ok) throw new Error(`the stand-in VMM thread did not answer: ${ready.message}`);
  const server: ApiServer = await startApi(sock, standIn.ctx, opts.limits);
  return standIn;
}
