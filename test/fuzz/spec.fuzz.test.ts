import * as path from 'node:path';
import { loadSpecText } from '../../src/config/validate';
import { SpecInvalidError } from '../../src/config/issues';
import { FcRunError } from '../../src/errors';
import { planSpec } from '../../src/boot';
import type { BootPlan } from '../../src/boot';
import type { ResolvedSpec } from '../../src/config/resolved';
import { MAX_TAP_NAME_BYTES, MAX_UDS_PATH_BYTES, MAX_MEM_SIZE_MIB } from '../../src/config/rules';
import { Workspace } from '../helpers/specs';
import { fuzzCases, fuzzSeed, Rng } from './rng';

/**
 * Mutated specs through the loader and the planner. Each case must end in a clean refusal (a
 * typed error with a code and located issues) or a plan; any other exception is a bug. And an
 * accepted spec must obey every rule the README states: a mutation that breaks one must never
 * plan ("no wrong accept").
 */

const CASES = fuzzCases(1500);
const SEED = fuzzSeed(0x5eed5bec);
/** Far above what a case costs; a case that takes this long is a hang. */
const CASE_BUDGET_MS = 2000;

let ws: Workspace;
beforeAll(() => {
  ws = new Workspace();
});
afterAll(() => ws.remove());

function baseSpecs(): Record<string, unknown>[] {
  const limiter = { bandwidth: { size: 1048576, one_time_burst: 2097152, refill_time: 100 }, ops: { size: 100, refill_time: 1000 } };
  return [
    { 'boot-source': { kernel_image_path: 'vmlinux', boot_args: 'console=ttyS0 reboot=k panic=1' } },
    {
      'boot-source': { kernel_image_path: 'vmlinux', initrd_path: 'initrd.img', boot_args: 'console=ttyS0' },
      'machine-config': { vcpu_count: 2, mem_size_mib: 256, smt: false },
      drives: [
        { drive_id: 'rootfs', path_on_host: 'rootfs.ext4', is_root_device: true, is_read_only: false, rate_limiter: limiter },
        { drive_id: 'data', path_on_host: 'data.ext4', is_root_device: false, is_read_only: true, cache_type: 'Writeback' },
      ],
      'network-interfaces': [
        { iface_id: 'eth0', host_dev_name: 'tap0', guest_mac: '06:00:ac:10:00:02', rx_rate_limiter: limiter },
        { iface_id: 'eth1', host_dev_name: 'tap1' },
      ],
      vsock: { guest_cid: 3, uds_path: 'v.sock' },
      'mmds-config': { version: 'V2', network_interfaces: ['eth0'] },
      mmds: { latest: { 'meta-data': { id: 'i-1', list: [1, 2.5, null] } } },
      entropy: { rate_limiter: limiter },
      logger: { log_path: 'vm.log', level: 'Debug' },
      metrics: { metrics_path: 'vm.metrics' },
      'cpu-config': { cpuid_modifiers: [{ leaf: '0x1', subleaf: '0x0', flags: 0, modifiers: [{ register: 'ecx', bitmap: '0bxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx0' }] }], msr_modifiers: [{ addr: '0x10a', bitmap: '0b0' }] },
    },
  ];
}

const WEIRD_STRINGS = ['', 'a\u0000b', 'tap\u0000x', '\n', 'x'.repeat(200), '../../etc/passwd', '/dev/zero', 'vm.log', 'rootfs.ext4', 'vmlinux', 'é', '0x10a', '0b1x', 'V3', 'None', 'T2', 'C3', 'V1N1', 'a b', 'a/b', 'a:b'];
const WEIRD_NUMBERS = [0, -1, 1, 2, 3, 31, 32, 33, 64, 127, 128, 4096, 2 ** 31, 2 ** 32, 2 ** 53 - 1, MAX_MEM_SIZE_MIB, MAX_MEM_SIZE_MIB + 1];
const KEYS = ['__proto__', 'constructor', 'prototype', 'toString', 'vcpu_count', 'drives', 'machine_config', 'hasOwnProperty', 'x'];

function randomValue(rng: Rng, depth = 0): unknown {
  switch (rng.int(depth > 2 ? 4 : 7)) {
    case 0:
      return rng.pick(WEIRD_STRINGS);
    case 1:
      return rng.pick(WEIRD_NUMBERS);
    case 2:
      return rng.bool();
    case 3:
      return null;
    case 4:
      return Array.from({ length: rng.int(3) }, () => randomValue(rng, depth + 1));
    case 5: {
      const o: Record<string, unknown> = {};
      for (let i = rng.int(3); i > 0; i--) Object.defineProperty(o, rng.pick(KEYS), { value: randomValue(rng, depth + 1), enumerable: true, writable: true, configurable: true });
      return o;
    }
    default:
      return rng.int(100);
  }
}

/** Every (container, key) in a value, to pick a place to mutate. */
function places(v: unknown, out: { parent: Record<string, unknown> | unknown[]; key: string | number }[] = []) {
  if (Array.isArray(v)) v.forEach((item, i) => (out.push({ parent: v, key: i }), places(item, out)));
  else if (v && typeof v === 'object') for (const [k, item] of Object.entries(v)) (out.push({ parent: v as Record<string, unknown>, key: k }), places(item, out));
  return out;
}

function mutateValue(rng: Rng, spec: Record<string, unknown>): void {
  for (let n = 1 + rng.int(3); n > 0; n--) {
    const all = places(spec);
    if (all.length === 0) return;
    const { parent, key } = rng.pick(all);
    const op = rng.int(6);
    const target = parent as Record<string | number, unknown>;
    const current = target[key];
    if (typeof current === 'string' && rng.bool(0.4)) {
      // Small damage to a real value: a control character somewhere in it.
      const at = rng.int(current.length + 1);
      target[key] = current.slice(0, at) + String.fromCharCode(rng.pick([0, 1, 9, 10, 13, 27, 127])) + current.slice(at);
    } else if (typeof current === 'number' && rng.bool(0.4)) {
      target[key] = rng.pick([current + 1, current - 1, current * 2, 0, -current, current * 1024]);
    } else if (op === 0) {
      if (Array.isArray(parent)) parent.splice(key as number, 1);
      else delete target[key];
    } else if (op === 1 && Array.isArray(parent)) {
      parent.push(JSON.parse(JSON.stringify(parent[key as number] ?? null)));
    } else if (op === 2 && !Array.isArray(parent)) {
      Object.defineProperty(parent, rng.pick(KEYS), { value: randomValue(rng), enumerable: true, writable: true, configurable: true });
    } else {
      target[key] = randomValue(rng);
    }
  }
}

/** Text-level damage: what a bad editor, a truncated copy or a hand-written number does. */
function mutateText(rng: Rng, text: string): string {
  switch (rng.int(6)) {
    case 0:
      return text.slice(0, rng.int(text.length));
    case 1: {
      const i = rng.int(text.length);
      return text.slice(0, i) + String.fromCharCode(rng.int(128)) + text.slice(i);
    }
    case 2:
      // A whole number in another notation: 2 -> 2.0, 2e0, 0.2e1.
      return text.replace(/(:\s*)(\d+)(?=[,\s}])/, (_m, pre: string, d: string) => `${pre}${rng.pick([`${d}.0`, `${d}e0`, `${Number(d) / 10}e1`, '1e300', '1e21'])}`);
    case 3:
      // A duplicate key.
      return text.replace(/\{\s*"([^"]+)":/, (m, k: string) => `${m} 1, "${k}":`);
    case 4:
      return '['.repeat(200 + rng.int(5000)) + text;
    default:
      return text.replace(/"([a-z_]+)":/, (_m, k: string) => `"${k}\\u0000":`);
  }
}

// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f]/;

/** The rules README states, checked on what was accepted. Returns the first one broken. */
function brokenRule(spec: ResolvedSpec, plan: BootPlan): string | undefined {
  const m = spec.machine;
  if (!(Number.isInteger(m.vcpu_count) && m.vcpu_count >= 1 && m.vcpu_count <= 32)) return `vcpu_count ${m.vcpu_count}`;
  if (!(Number.isInteger(m.mem_size_mib) && m.mem_size_mib >= 1 && m.mem_size_mib <= MAX_MEM_SIZE_MIB)) return `mem_size_mib ${m.mem_size_mib}`;
  if (m.smt && m.vcpu_count > 1 && m.vcpu_count % 2 === 1) return 'smt with odd vCPUs';
  const unique = (xs: (string | undefined)[]) => new Set(xs.filter((x) => x !== undefined)).size === xs.filter((x) => x !== undefined).length;
  if (!unique(spec.drives.map((d) => d.drive_id))) return 'duplicate drive_id';
  if (spec.drives.filter((d) => d.is_root_device).length > 1) return 'two root drives';
  const nets = spec.networkInterfaces;
  if (!unique(nets.map((n) => n.iface_id)) || !unique(nets.map((n) => n.host_dev_name)) || !unique(nets.map((n) => n.guest_mac))) return 'duplicate interface';
  for (const n of nets) {
    if (Buffer.byteLength(n.host_dev_name) > MAX_TAP_NAME_BYTES || /[/:\s]/.test(n.host_dev_name) || n.host_dev_name === '') return `TAP name ${JSON.stringify(n.host_dev_name)}`;
  }
  for (const id of spec.mmdsConfig?.network_interfaces ?? []) if (!nets.some((n) => n.iface_id === id)) return `MMDS interface ${id}`;
  if (spec.vsock && (spec.vsock.guest_cid < 3 || Buffer.byteLength(spec.vsock.uds_path) > MAX_UDS_PATH_BYTES)) return 'vsock';
  const limiters = [...spec.drives.map((d) => d.rate_limiter), ...nets.flatMap((n) => [n.rx_rate_limiter, n.tx_rate_limiter]), spec.entropy?.rate_limiter];
  for (const rl of limiters) for (const b of [rl?.bandwidth, rl?.ops]) if (b && !(b.size > 0 && b.refill_time > 0)) return 'empty bucket';
  // Strings reach C strings, file names and the kernel command line: no control characters.
  const stack: unknown[] = [{ ...spec.raw, mmds: undefined }];
  while (stack.length > 0) {
    const v = stack.pop();
    if (typeof v === 'string' && CONTROL.test(v)) return `control character in ${JSON.stringify(v)}`;
    if (v && typeof v === 'object') for (const [k, item] of Object.entries(v)) (CONTROL.test(k) ? stack.push(k) : undefined, stack.push(item));
  }
  if (plan.devices.length > 19) return 'too many devices';
  if (Buffer.byteLength(plan.cmdline) + 1 > plan.boot.cmdline.size) return 'command line too long';
  if (plan.cmdline.includes('\u0000')) return 'NUL in the command line';
  // Outputs never name an input.
  const inputs = new Set([plan.kernel.path, plan.initrd?.path, ...plan.devices.map((d) => (d.kind === 'block' ? d.path : undefined))].filter(Boolean));
  for (const out of [plan.logger?.path, plan.metrics?.path, spec.vsock?.uds_path]) if (out && inputs.has(out)) return `output ${out} is an input`;
  const outs = [plan.logger?.path, plan.metrics?.path, spec.vsock?.uds_path].filter(Boolean);
  if (new Set(outs).size !== outs.length) return 'two outputs share a file';
  // Prototype keys must not have changed anything: the resolved spec has none of them.
  if (Object.getPrototypeOf(spec.raw) !== Object.prototype) return 'the spec object has another prototype';
  return undefined;
}

test(`${CASES} mutated specs: refused cleanly or planned within the README's rules (seed ${SEED})`, () => {
  const rng = new Rng(SEED);
  const bases = baseSpecs();
  const outcomes = { planned: 0, refused: 0 };
  const file = path.join(ws.dir, 'fuzz.json');
  for (let i = 0; i < CASES; i++) {
    const spec = JSON.parse(JSON.stringify(rng.pick(bases))) as Record<string, unknown>;
    if (rng.bool(0.8)) mutateValue(rng, spec);
    let text = JSON.stringify(spec, null, rng.bool() ? 2 : 0);
    if (rng.bool(0.3)) text = mutateText(rng, text);
    const started = Date.now();
    let result: string;
    try {
      const loaded = loadSpecText(file, text, { skipFiles: rng.bool(0.2) });
      const planned = planSpec(loaded);
      const broken = brokenRule(loaded.spec, planned.plan);
      if (broken) throw new Error(`case ${i}: accepted a spec that breaks a rule (${broken}):\n${text.slice(0, 2000)}`);
      outcomes.planned++;
      result = 'planned';
    } catch (err) {
      if (err instanceof SpecInvalidError) {
        expect(err.issues.some((x) => x.severity === 'error')).toBe(true);
        for (const x of err.issues) {
          expect(typeof x.code).toBe('string');
          expect(x.line === undefined || x.line >= 1).toBe(true);
        }
      } else if (!(err instanceof FcRunError)) {
        throw new Error(`case ${i}: ${(err as Error).stack}\n--- spec ---\n${text.slice(0, 2000)}`);
      }
      outcomes.refused++;
      result = 'refused';
    }
    const took = Date.now() - started;
    if (took > CASE_BUDGET_MS) throw new Error(`case ${i} (${result}) took ${took} ms:\n${text.slice(0, 500)}`);
  }
  // The mix must exercise both sides, or the fuzzer tests nothing.
  expect(outcomes.planned).toBeGreaterThan(CASES / 20);
  expect(outcomes.refused).toBeGreaterThan(CASES / 20);
});
