import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { detectHost } from '../../guest/linux/host';
import { Workspace } from '../helpers/specs';

/**
 * The probe's ring-3 mode (probe.ring3=1), which guest/linux/host.js uses to choose the Linux
 * guest's profile: the probe drops to ring 3 and makes a system call. Whichever kind of KVM this
 * is, the call must reach the kernel's entry point (LSTAR) and the probe must give exactly one
 * verdict and reset the VM, through either boot protocol, the same verdict each time.
 */
const ROOT = path.resolve(__dirname, '..', '..');
const BIN = path.join(ROOT, 'bin', 'fc-run');
const PROBES = {
  pvh: path.join(ROOT, 'guest', 'probe', 'build', 'probe.elf'),
  linux64: path.join(ROOT, 'guest', 'probe', 'build', 'probe-linux64.elf'),
};
const hasKvm = fs.existsSync('/dev/kvm');
const describeKvm = hasKvm ? describe : describe.skip;
if (!hasKvm) console.warn('SKIPPED: the ring-3 probe needs /dev/kvm, which this host does not have');

let ws: Workspace;
beforeAll(() => {
  ws = new Workspace();
});
afterAll(() => ws.remove());

describeKvm('the probe tells the two kinds of KVM apart by a system call from ring 3', () => {
  const verdicts: string[] = [];
  test.each(Object.entries(PROBES))('%s entry: SYSCALL from ring 3 reaches LSTAR, one verdict, reset', (name, probe) => {
    const spec = ws.write(`ring3-${name}.json`, {
      'boot-source': { kernel_image_path: probe, boot_args: 'console=ttyS0 reboot=k panic=1 probe.ring3=1' },
      'machine-config': { vcpu_count: 1, mem_size_mib: 64 },
    });
    const r = spawnSync(process.execPath, [BIN, spec], { encoding: 'utf8', env: { ...process.env, NO_COLOR: '1' }, timeout: 120_000 });
    const out = r.stdout.replace(/\r/g, '');
    expect(out).toContain('# ring3-syscall: entering ring 3');
    const entered = out.match(/^# ring3-syscall: SYSCALL from ring 3 entered LSTAR with cs=(0x[0-9a-f]+) \((ring 0|still ring 3)\)$/m);
    if (!entered) throw new Error(`the system call never reached LSTAR:\n${out}\n${r.stderr}`);
    // The kernel's code selector is 0x08 in the probe's GDT: only then is it ring 0.
    expect(entered[2] === 'ring 0').toBe(entered[1] === '0x8');
    const lines = out.split('\n').filter((l) => /^(not )?ok - ring3-syscall/.test(l));
    expect(lines).toHaveLength(1);
    expect(lines[0].startsWith('ok - ')).toBe(entered[2] === 'ring 0');
    verdicts.push(lines[0]);
    expect(r.stderr).toMatch(/the guest reset the machine/);
    expect(r.status).toBe(0);
  });

  test('guest/linux/host.js reads the same verdict', () => {
    delete process.env.FC_RUN_GUEST_PROFILE; // the override would not look
    expect(new Set(verdicts).size).toBe(1);
    const host = detectHost();
    expect(host.kind).toBe(verdicts[0].startsWith('ok - ') ? 'hardware' : 'emulating');
    console.log(`this host: ${host.kind} KVM (${host.why})`);
  });
});
