import { SdNotifier } from '../kvm/sd-notify';
import { Io, reportStatus, Reporting } from './io';

/** What `run` tells a service manager (systemd Type=notify); each call is a no-op without one. */
export interface ServiceNotify {
  ready(status: string): void;
  stopping(status: string): void;
  close(): void;
}

/**
 * A notifier for $NOTIFY_SOCKET. A notification that cannot be sent is reported (stderr and the
 * log) and otherwise ignored: the VM never fails because its supervisor could not be told.
 */
export function serviceNotify(io: Io, rep: Reporting, warn: (message: string) => void = () => undefined, env: NodeJS.ProcessEnv = process.env): ServiceNotify {
  let notifier: SdNotifier | undefined;
  const failed = (err: unknown) => {
    const message = `could not notify the service manager: ${(err as Error).message}`;
    warn(message);
    reportStatus(io, rep, 'notify-failed', message);
  };
  try {
    notifier = SdNotifier.fromEnv(env);
  } catch (err) {
    failed(err);
  }
  const send = (fields: Record<string, string | number>) => {
    if (!notifier) return;
    try {
      notifier.send(fields);
    } catch (err) {
      failed(err);
    }
  };
  return {
    ready: (status) => send({ READY: 1, MAINPID: process.pid, STATUS: status }),
    stopping: (status) => send({ STOPPING: 1, STATUS: status }),
    close: () => notifier?.close(),
  };
}
