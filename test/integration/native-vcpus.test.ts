import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Workspace } from '../helpers/specs';
import { tinyGuestElf } from '../helpers/images';

/**
 * Native vCPU threads (FC_RUN_VCPU_THREADS=native: a pthread per vCPU runs KVM_RUN, the main
 * thread handles every vCPU's exits). The probe suite (every vCPU count up to 32, both boot protocols)
 * and the pause/resume/SIGQUIT suite run again in this mode, plus what only this mode has: the
 * threads are named as Firecracker names its own.
 */
process.env.FC_RUN_VCPU_THREADS = 'native';

const ROOT = path.resolve(__dirname, '..', '..');
const BIN = path.join(ROOT, 'bin', 'fc-run');
const hasKvm = fs.existsSync('/dev/kvm');
const describeKvm = hasKvm ? describe : describe.skip;
if (!hasKvm) console.warn('SKIPPED: native vCPU thread tests need /dev/kvm');

describe('with native vCPU threads', () => {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  require('./probe.test');
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  require('./pause.test');
});

// mov dx, 0x3f8; mov al, 'x'; 1: out dx, al; jmp 1b
const CHATTY = [0x66, 0xba, 0xf8, 0x03, 0xb0, 0x78, 0xee, 0xeb, 0xfd];

describeKvm('native vCPU threads of a running VM', () => {
  let ws: Workspace;
  beforeAll(() => (ws = new Workspace()));
  afterAll(() => ws?.remove());

  test('one thread per vCPU, named "fc_vcpu N" as Firecracker names its own; SIGTERM ends the VM with exit 0', async () => {
    // `cpus`: the CPUs fc-run may run on (taskset -c), which decide the vCPU threads' nice value.
    const threadsOf = async (vcpus: number, mode: string, cpus?: string) => {
      const spec = ws.write(`chatty-${vcpus}-${mode}.json`, {
        'boot-source': { kernel_image_path: ws.write('chatty.elf', tinyGuestElf(CHATTY)) },
        'machine-config': { vcpu_count: vcpus, mem_size_mib: 16 },
      });
      const out = path.join(ws.dir, `serial-${vcpus}-${mode}.out`);
      const argv = [process.execPath, BIN, spec, '--serial-out', out];
      // taskset sets the affinity and execs fc-run in the same process.
      const [file, ...args] = cpus === undefined ? argv : ['taskset', '-c', cpus, ...argv];
      const child = spawn(file, args, { env: { ...process.env, FC_RUN_VCPU_THREADS: mode } });
      const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
      try {
        const end = Date.now() + 60_000;
        while (!(fs.existsSync(out) && fs.statSync(out).size > 0)) {
          if (Date.now() > end) throw new Error('no serial output');
          await new Promise((r) => setTimeout(r, 50));
        }
        const dir = `/proc/${child.pid}/task`;
        // "name nice" per thread (the nice value is field 19 of stat, the 17th after the name).
        const names = fs.readdirSync(dir).map((t) => {
          const stat = fs.readFileSync(`${dir}/${t}/stat`, 'utf8');
          return `${fs.readFileSync(`${dir}/${t}/comm`, 'utf8').trim()} ${stat.slice(stat.lastIndexOf(')') + 2).split(' ')[16]}`;
        });
        child.kill('SIGTERM');
        expect(await exited).toBe(0);
        return names;
      } finally {
        child.kill('SIGKILL');
      }
    };
    // With more vCPUs than the CPUs fc-run may run on, native threads run at nice 10 (below the
    // main thread, which handles their exits).
    const native = await threadsOf(4, 'native', '0');
    expect(native.filter((n) => n.startsWith('fc_vcpu')).sort()).toEqual(['fc_vcpu 0 10', 'fc_vcpu 1 10', 'fc_vcpu 2 10', 'fc_vcpu 3 10']);
    // With a worker per vCPU no thread has that name, and every thread of Node's runs at nice 0.
    const workers = await threadsOf(4, 'worker');
    expect(workers.filter((n) => n.startsWith('fc_vcpu'))).toEqual([]);
    expect(workers.filter((n) => n.startsWith('node ') && !n.endsWith(' 0'))).toEqual([]);
    // Mixed (the default for more than one vCPU, also when the variable is empty): vCPU 0 on a
    // worker, the others native, and vCPU 0's worker at the native threads' nice value: the vCPUs
    // share a busy host evenly.
    const mixed = await threadsOf(4, '', '0');
    expect(mixed.filter((n) => n.startsWith('fc_vcpu')).sort()).toEqual(['fc_vcpu 1 10', 'fc_vcpu 2 10', 'fc_vcpu 3 10']);
    expect(mixed.filter((n) => n.startsWith('node ') && n.endsWith(' 10'))).toHaveLength(1);
    expect(mixed.filter((n) => n.startsWith('fc_loop_watch'))).toEqual([]);
    // Main: vCPU 0 on the main thread (nice 0: it also handles the others' exits), watched by
    // fc_loop_watch; the others native. No worker: one thread fewer than mixed.
    const main = await threadsOf(4, 'main', '0');
    expect(main.filter((n) => n.startsWith('fc_vcpu')).sort()).toEqual(['fc_vcpu 1 10', 'fc_vcpu 2 10', 'fc_vcpu 3 10']);
    expect(main.filter((n) => n.startsWith('fc_loop_watch'))).toEqual(['fc_loop_watch 0']);
    expect(main.filter((n) => n.startsWith('node ') && !n.endsWith(' 0'))).toEqual([]);
    expect(main.filter((n) => n.startsWith('node ')).length).toBe(mixed.filter((n) => n.startsWith('node ')).length - 1);
    // No more vCPUs than CPUs: every vCPU at nice 0, as fair to the host's other processes as
    // any thread (at nice 10 a busy host starved a 2-vCPU Linux boot).
    const fits = await threadsOf(2, '', '0,1');
    expect(fits.filter((n) => n.startsWith('fc_vcpu'))).toEqual(['fc_vcpu 1 0']);
    expect(fits.filter((n) => !n.endsWith(' 0'))).toEqual([]);
    // One vCPU, unset: main mode, so no vCPU thread of any kind but the watcher; with a worker per
    // vCPU, one more Node thread and no watcher.
    const one = await threadsOf(1, '');
    const oneWorker = await threadsOf(1, 'worker');
    expect(one.filter((n) => n.startsWith('fc_'))).toEqual(['fc_loop_watch 0']);
    expect(oneWorker.filter((n) => n.startsWith('fc_'))).toEqual([]);
    expect(one.filter((n) => n.startsWith('node ')).length).toBe(oneWorker.filter((n) => n.startsWith('node ')).length - 1);
  }, 240_000);
});
