import { ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import * as path from 'node:path';

const LISTENER = path.join(__dirname, 'notify-listener.py');

/** A real datagram socket bound by python3, as systemd binds its own; resolves once it is bound. */
export class Listener {
  readonly lines: string[] = [];
  private readonly proc: ChildProcessWithoutNullStreams;
  private waiters: (() => void)[] = [];
  readonly ready: Promise<void>;

  constructor(address: string, count: number) {
    this.proc = spawn('python3', [LISTENER, address, String(count)]);
    let buf = '';
    let bound: () => void;
    this.ready = new Promise((r) => (bound = r));
    this.proc.stdout.on('data', (d: Buffer) => {
      buf += d.toString('utf8');
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (line === 'listening') bound();
        else this.lines.push(JSON.parse(line) as string);
        this.waiters.splice(0).forEach((w) => w());
      }
    });
  }

  async received(n: number): Promise<string[]> {
    while (this.lines.length < n) await new Promise<void>((r) => this.waiters.push(r));
    return this.lines.slice(0, n);
  }

  stop(): void {
    this.proc.kill();
  }
}

