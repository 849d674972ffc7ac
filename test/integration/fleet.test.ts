import { ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Workspace } from '../helpers/specs';
import { tinyGuestElf } from '../helpers/images';

/**
 * fc-run up with real VMs: the probe guest with probe.wait=1 stays up (halted) until Ctrl-Alt-Del.
 * These tests skip only where /dev/kvm is absent; the supervisor's logic is covered without KVM in
 * test/unit/fleet.test.ts.
 */
const ROOT = path.resolve(__dirname, '..', '..');
const BIN = path.join(ROOT, 'bin', 'fc-run');
const PROBE = path.join(ROOT, 'guest', 'probe', 'build', 'probe.elf');
const hasKvm = fs.existsSync('/dev/kvm');
const describeKvm = hasKvm ? describe : describe.skip;
if (!hasKvm) console.warn('SKIPPED: fleet integration tests need /dev/kvm, which this host does not have');

interface Row {
  id: string;
  pid: number | null;
  state: string;
}

let ws: Workspace;
let specs: string;
let runDir: string;
const ups: ChildProcess[] = [];

function writeSpec(name: string, memMib = 32) {
  const file = path.join(specs, name);
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(
    file,
    JSON.stringify({
      'boot-source': { kernel_image_path: PROBE, boot_args: 'console=ttyS0 reboot=k panic=1 probe.wait=1' },
      'machine-config': { vcpu_count: 1, mem_size_mib: memMib },
      'fc-run': { stop_grace_ms: 20000 },
    }),
  );
}

function up(dir: string, extra: string[] = []): { proc: ChildProcess; events: Record<string, unknown>[] } {
  const events: Record<string, unknown>[] = [];
  const proc = spawn(process.execPath, [BIN, 'up', dir, '--run-dir', runDir, '--check-interval', '1000', '--json', ...extra], { stdio: ['ignore', 'pipe', 'inherit'] });
  let buf = '';
  proc.stdout!.on('data', (d) => {
    buf += d;
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      events.push(JSON.parse(buf.slice(0, nl)));
      buf = buf.slice(nl + 1);
    }
  });
  ups.push(proc);
  return { proc, events };
}

function ps(): Row[] {
  const r = spawnSync(process.execPath, [BIN, 'ps', '--run-dir', runDir, '--json'], { encoding: 'utf8' });
  return JSON.parse(r.stdout).vms;
}

async function waitFor<T>(what: string, probe: () => T | undefined | false, ms = 300_000): Promise<T> {
  const until = Date.now() + ms;
  for (;;) {
    const v = probe();
    if (v) return v;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

const waiting = (id: string) => {
  try {
    return fs.readFileSync(path.join(runDir, `${id}.serial.log`), 'utf8').includes('# probe waiting');
  } catch {
    return false;
  }
};

const ids = Array.from({ length: 10 }, (_, i) => `vm${i}`);

describeKvm('fc-run up with probe guests (KVM)', () => {
  beforeAll(() => {
    if (!fs.existsSync(PROBE)) throw new Error(`${PROBE} is missing: run \`npm run build:probe\``);
    ws = new Workspace();
    specs = path.join(ws.dir, 'specs');
    runDir = path.join(ws.dir, 'run');
    fs.mkdirSync(specs);
  });
  afterAll(() => {
    for (const p of ups) p.kill('SIGKILL');
    for (const r of fs.existsSync(runDir) ? ps() : []) if (r.pid) process.kill(r.pid, 'SIGKILL');
    ws.remove();
  });

  let first: Map<string, number>;
  let sup: ReturnType<typeof up>;

  test('a directory of 10 specs converges: 10 VMs running, each guest up', async () => {
    for (const id of ids) writeSpec(`${id}.json`);
    sup = up(specs);
    const rows = await waitFor('10 running guests', () => {
      const r = ps();
      return r.length === 10 && r.every((v) => v.state === 'running' && waiting(v.id)) && r;
    });
    first = new Map(rows.map((r) => [r.id, r.pid!]));
  }, 600_000);

  test('editing one spec restarts exactly that VM', async () => {
    writeSpec('vm3.json', 48);
    const rows = await waitFor('vm3 restarted', () => {
      const r = ps();
      const vm3 = r.find((v) => v.id === 'vm3');
      return vm3?.state === 'running' && vm3.pid !== first.get('vm3') && r;
    });
    for (const r of rows) if (r.id !== 'vm3') expect(r.pid).toBe(first.get(r.id));
    first.set('vm3', rows.find((r) => r.id === 'vm3')!.pid!);
  }, 600_000);

  test('deleting a spec stops its VM (Ctrl-Alt-Del reaches the probe)', async () => {
    fs.rmSync(path.join(specs, 'vm9.json'));
    // The supervisor may see the process end (and forget the VM) before its stop sequence reports how.
    const stopped = await waitFor('vm9 stopped', () => sup.events.find((e) => e.event === 'stopped' && e.id === 'vm9'));
    await waitFor('vm9 gone', () => !ps().some((v) => v.id === 'vm9'));
    expect(stopped.how).toBe('ctrl-alt-del');
    expect(ps().map((r) => r.pid)).toEqual(ids.slice(0, 9).map((id) => first.get(id)));
  }, 600_000);

  test('after SIGKILL of fc-run up, a new one adopts every running VM without restarting it', async () => {
    sup.proc.kill('SIGKILL');
    await new Promise((r) => sup.proc.once('exit', r));
    sup = up(specs);
    await waitFor('9 adopted', () => sup.events.filter((e) => e.event === 'adopted').length === 9);
    await new Promise((r) => setTimeout(r, 3000));
    expect(sup.events.filter((e) => e.event === 'started')).toEqual([]);
    expect(ps().map((r) => r.pid)).toEqual(ids.slice(0, 9).map((id) => first.get(id)));
  }, 600_000);

  test('a git work tree: a commit pulled by --git-pull-interval converges', async () => {
    sup.proc.kill('SIGTERM');
    await new Promise((r) => sup.proc.once('exit', r));
    // A fresh run directory: the plan (and its hash) names the spec file, so the clone's VMs are new ones.
    for (const r of ps()) if (r.pid) process.kill(r.pid, 'SIGKILL');
    runDir = path.join(ws.dir, 'run-git');
    const origin = path.join(ws.dir, 'origin');
    const clone = path.join(ws.dir, 'clone');
    const git = (cwd: string, ...args: string[]) => execFileSync('git', ['-c', 'user.name=t', '-c', 'user.email=t@t', ...args], { cwd, stdio: 'pipe' });
    fs.mkdirSync(origin);
    git(origin, 'init', '-q', '-b', 'main');
    const saved = specs;
    specs = origin;
    for (const id of ids.slice(0, 9)) writeSpec(`${id}.json`);
    git(origin, 'add', '-A');
    git(origin, 'commit', '-q', '-m', 'nine');
    git(ws.dir, 'clone', '-q', origin, clone);
    specs = saved;
    sup = up(clone, ['--git-pull-interval', '1000']);
    await waitFor('9 running from the clone', () => ps().filter((v) => v.state === 'running' && waiting(v.id)).length === 9);
    specs = origin;
    writeSpec('vm10.json');
    specs = saved;
    git(origin, 'add', '-A');
    git(origin, 'commit', '-q', '-m', 'ten');
    await waitFor('vm10 running', () => ps().some((v) => v.id === 'vm10' && v.state === 'running') && waiting('vm10'));
    expect(ps()).toHaveLength(10);
  }, 600_000);

  test('a crashing guest is restarted with a doubling backoff; an invalid spec is skipped while the others run', async () => {
    if (sup && sup.proc.exitCode === null) {
      sup.proc.kill('SIGTERM');
      await new Promise((r) => sup.proc.once('exit', r));
    }
    if (fs.existsSync(runDir)) for (const r of ps()) if (r.pid) process.kill(r.pid, 'SIGKILL');
    runDir = path.join(ws.dir, 'run-crash');
    specs = path.join(ws.dir, 'crash-specs');
    fs.mkdirSync(specs);
    writeSpec('steady.json');
    // ud2 with no IDT: a triple fault, so fc-run exits 1 each time the guest starts.
    fs.writeFileSync(path.join(ws.dir, 'ud2.elf'), tinyGuestElf([0x0f, 0x0b]));
    fs.writeFileSync(
      path.join(specs, 'crash.json'),
      JSON.stringify({
        'boot-source': { kernel_image_path: path.join(ws.dir, 'ud2.elf') },
        'machine-config': { vcpu_count: 1, mem_size_mib: 16 },
        'fc-run': { restart: 'on-failure', restart_delay_ms: 300, restart_delay_max_ms: 1200 },
      }),
    );
    fs.writeFileSync(path.join(specs, 'bad.json'), JSON.stringify({ 'boot-source': { kernel_image_path: PROBE }, 'machine-config': { vcpu_count: 64, mem_size_mib: 32 } }));
    sup = up(specs);
    await waitFor('steady running', () => ps().some((v) => v.id === 'steady' && v.state === 'running') && waiting('steady'));
    const exits = await waitFor('four crashes', () => {
      const e = sup.events.filter((x) => x.event === 'exited' && x.id === 'crash');
      return e.length >= 4 && e;
    });
    expect(exits.every((e) => e.code === 1)).toBe(true);
    // The waits before each restart: 300 ms, doubling, capped at 1200 ms.
    expect(exits.slice(0, 4).map((e) => e.next_start_ms as number).map((ms) => Math.round(ms / 100) * 100)).toEqual([300, 600, 1200, 1200]);
    expect(sup.events.some((e) => e.event === 'skipped' && /bad/.test(String(e.message)))).toBe(true);
    expect(ps().some((v) => v.id === 'bad')).toBe(false);
    expect(ps().find((v) => v.id === 'steady')!.state).toBe('running');
  }, 600_000);
});
