import type * as Crypto from 'node:crypto';
import * as fs from 'node:fs';
import { findDeepNesting, MAX_JSON_DEPTH } from '../config/json-depth';
import { EXIT_INVALID_SPEC, FcRunError } from '../errors';
import { describeValue } from '../state-check';
import { CPUID_MAX_ENTRIES, IRQCHIP_IDS, MP_STATE_MAX, MSRS_MAX, STATE_SIZES, VCPU_FIXED_PARTS, VcpuState, VmState, XSAVE_MAX, XSAVE_MIN } from '../kvm/state-abi';

/** node:crypto's createHash, loaded on first use: a launch without snapshots does not load node:crypto (~2 ms, ~1.5 MiB). */
function createHash(algorithm: string): Crypto.Hash {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return (require('node:crypto') as typeof Crypto).createHash(algorithm);
}

/**
 * The VM state file of a snapshot (PUT /snapshot/create's snapshot_path; guest memory is the other
 * file). Layout, all integers little-endian:
 *
 *   0   8  magic "FCRUNSNP"
 *   8   4  format version (SNAPSHOT_FORMAT)
 *   12  4  reserved, 0
 *   16  8  body length N
 *   24  N  body: UTF-8 JSON { header, vcpus, vm, devices, legacy }; KVM structures as base64
 *   24+N 32 SHA-256 of everything before it
 *
 * The checksum catches damage; it proves nothing about who wrote the file. So the reader checks
 * everything it hands out: the envelope here (sizes, types, every KVM structure's exact length),
 * the plan in boot/snapshot-plan.ts, device state in the devices themselves. Anything wrong is a
 * SnapshotFileError (exit 2), never a crash.
 */
export const SNAPSHOT_MAGIC = 'FCRUNSNP';
export const SNAPSHOT_FORMAT = 1;
const PREFIX = 24;
const DIGEST = 32;
/** A state file is a few hundred KiB at most (32 vCPUs); the reader refuses more than this. */
export const MAX_SNAPSHOT_BYTES = 64 * 1024 * 1024;
/** Body nesting allowed: the MMDS contents (MAX_JSON_DEPTH) sit four levels down. */
const MAX_BODY_DEPTH = MAX_JSON_DEPTH + 4;

export class SnapshotFileError extends FcRunError {
  constructor(source: string, what: string) {
    super('snapshot-invalid', `${source}: ${what}`, EXIT_INVALID_SPEC);
  }
}

export interface VmSnapshotHeader {
  /** The fc-run that wrote it. */
  fcRunVersion: string;
  planHash: string;
  /** ISO 8601 */
  createdAt: string;
  /** A Diff's memory file holds only the pages changed since the snapshot before it (merge it onto that one's). */
  snapshotType: 'Full' | 'Diff';
  vcpuCount: number;
  memory: { regions: { start: number; size: number }[] };
  /** The template's name, or "none" / "custom". */
  cpuTemplate: string;
  devices: { kind: string; id: string }[];
  /** The boot plan the VM ran (checked by boot/snapshot-plan.ts before restore uses it). */
  plan: unknown;
}

export interface VmSnapshot {
  header: VmSnapshotHeader;
  vcpus: VcpuState[];
  vm: VmState;
  /** The virtio devices' state (checked by the devices: vmm/devices-state.ts). */
  devices: unknown;
  /** Serial and i8042 register state (checked by those devices). */
  legacy: { serial: unknown; i8042: unknown };
}

const b64 = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('base64');

/** The whole state file for `s`. */
export function encodeSnapshotFile(s: VmSnapshot): Buffer {
  const body = Buffer.from(
    JSON.stringify({
      header: s.header,
      vcpus: s.vcpus.map((v) => ({
        regs: b64(v.regs),
        sregs: b64(v.sregs),
        xsave: b64(v.xsave),
        xcrs: b64(v.xcrs),
        debugregs: b64(v.debugregs),
        lapic: b64(v.lapic),
        vcpuEvents: b64(v.vcpuEvents),
        msrs: b64(v.msrs),
        cpuid: b64(v.cpuid),
        mpState: v.mpState,
        tscKhz: v.tscKhz,
      })),
      vm: { irqchips: s.vm.irqchips.map(b64), pit2: b64(s.vm.pit2), clock: b64(s.vm.clock) },
      devices: s.devices,
      legacy: s.legacy,
    }),
    'utf8',
  );
  const prefix = Buffer.alloc(PREFIX);
  prefix.write(SNAPSHOT_MAGIC, 0, 'latin1');
  prefix.writeUInt32LE(SNAPSHOT_FORMAT, 8);
  prefix.writeBigUInt64LE(BigInt(body.length), 16);
  const digest = createHash('sha256').update(prefix).update(body).digest();
  return Buffer.concat([prefix, body, digest]);
}

type Fail = (where: string, what: string) => never;


function reader(fail: Fail) {
  const obj = (v: unknown, where: string, keys: readonly string[]): Record<string, unknown> => {
    if (v === null || typeof v !== 'object' || Array.isArray(v)) return fail(where, `must be an object, not ${describeValue(v)}`);
    const o = v as Record<string, unknown>;
    for (const k of Object.keys(o)) if (!keys.includes(k)) fail(where, `has an unknown field ${JSON.stringify(k.slice(0, 64))}`);
    for (const k of keys) if (!Object.prototype.hasOwnProperty.call(o, k)) fail(where, `lacks the field ${JSON.stringify(k)}`);
    return o;
  };
  const int = (v: unknown, where: string, min: number, max: number): number =>
    Number.isSafeInteger(v) && (v as number) >= min && (v as number) <= max ? (v as number) : fail(where, `must be an integer from ${min} to ${max}, not ${describeValue(v)}`);
  const str = (v: unknown, where: string, max: number, pattern?: RegExp): string =>
    typeof v === 'string' && v.length <= max && (!pattern || pattern.test(v)) ? v : fail(where, `must be a string of at most ${max} characters${pattern ? ` matching ${pattern}` : ''}, not ${describeValue(v)}`);
  const list = (v: unknown, where: string, min: number, max: number): unknown[] =>
    Array.isArray(v) && v.length >= min && v.length <= max ? v : fail(where, `must be a list of ${min} to ${max} entries, not ${Array.isArray(v) ? `${v.length} entries` : describeValue(v)}`);
  /** Base64 bytes whose decoded length is `exact`, or a multiple of `unit` within [min, max]. */
  const bytes = (v: unknown, where: string, rule: { exact: number } | { unit: number; min: number; max: number }): Uint8Array => {
    const maxLen = 'exact' in rule ? rule.exact : rule.max;
    if (typeof v !== 'string' || v.length > Math.ceil(maxLen / 3) * 4 || v.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(v)) {
      return fail(where, `must be base64 of at most ${maxLen} bytes, not ${describeValue(v)}`);
    }
    const buf = Buffer.from(v, 'base64');
    const ok = 'exact' in rule ? buf.length === rule.exact : buf.length % rule.unit === 0 && buf.length >= rule.min && buf.length <= rule.max;
    if (!ok) fail(where, 'exact' in rule ? `must be ${rule.exact} bytes, not ${buf.length}` : `must be a multiple of ${rule.unit} bytes from ${rule.min} to ${rule.max}, not ${buf.length}`);
    return new Uint8Array(buf.buffer, buf.byteOffset, buf.length);
  };
  return { obj, int, str, list, bytes };
}

/**
 * Reads a state file: envelope, checksum, and every part's shape. The plan and the device state
 * come back unchecked in their details (their owners check them).
 */
export function decodeSnapshotFile(buf: Uint8Array, source: string): VmSnapshot {
  const fail: Fail = (where, what) => {
    throw new SnapshotFileError(source, where ? `${where} ${what}` : what);
  };
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  if (b.length < PREFIX + DIGEST) fail('', `is ${b.length} bytes, too short for a snapshot (an fc-run snapshot starts with "${SNAPSHOT_MAGIC}")`);
  if (b.length > MAX_SNAPSHOT_BYTES) fail('', `is ${b.length} bytes, more than any VM state file (${MAX_SNAPSHOT_BYTES}): is it the memory file?`);
  if (b.toString('latin1', 0, 8) !== SNAPSHOT_MAGIC) fail('', `is not an fc-run snapshot (it does not start with "${SNAPSHOT_MAGIC}"): give the snapshot_path file, not the memory file${b.toString('latin1', 0, 4) === '\x7fELF' ? ' (this is an ELF file)' : ''}`);
  const format = b.readUInt32LE(8);
  if (format !== SNAPSHOT_FORMAT) fail('', `is snapshot format ${format}; this fc-run reads format ${SNAPSHOT_FORMAT} (restore it with the fc-run that wrote it)`);
  if (b.readUInt32LE(12) !== 0) fail('', 'has reserved header bits set: damaged, or from a newer fc-run');
  const bodyLen = b.readBigUInt64LE(16);
  if (bodyLen !== BigInt(b.length - PREFIX - DIGEST)) fail('', `says its body is ${bodyLen} bytes but the file holds ${b.length - PREFIX - DIGEST}: the file is truncated or has bytes appended`);
  const end = b.length - DIGEST;
  const digest = createHash('sha256').update(b.subarray(0, end)).digest();
  if (!digest.equals(b.subarray(end))) fail('', 'fails its checksum: the file is damaged');
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(b.subarray(PREFIX, end));
  } catch {
    return fail('the body', 'is not UTF-8');
  }
  const deep = findDeepNesting(text, MAX_BODY_DEPTH);
  if (deep) fail('the body', `nests deeper than ${MAX_BODY_DEPTH} levels (at byte ${deep.offset})`);
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    return fail('the body', `is not JSON: ${(err as Error).message.slice(0, 200)}`);
  }
  const r = reader(fail);
  const top = r.obj(raw, 'the body', ['header', 'vcpus', 'vm', 'devices', 'legacy']);

  const h = r.obj(top.header, 'header', ['fcRunVersion', 'planHash', 'createdAt', 'snapshotType', 'vcpuCount', 'memory', 'cpuTemplate', 'devices', 'plan']);
  const fcRunVersion = r.str(h.fcRunVersion, 'header.fcRunVersion', 64, /^[0-9A-Za-z.+-]+$/);
  const planHash = r.str(h.planHash, 'header.planHash', 128, /^[0-9a-z:]*$/);
  const createdAt = r.str(h.createdAt, 'header.createdAt', 40, /^\d{4}-\d\d-\d\dT[0-9:.]+Z$/);
  if (Number.isNaN(Date.parse(createdAt))) fail('header.createdAt', `is not a valid time: ${describeValue(createdAt)}`);
  if (h.snapshotType !== 'Full' && h.snapshotType !== 'Diff') fail('header.snapshotType', `must be "Full" or "Diff", not ${describeValue(h.snapshotType)}`);
  const vcpuCount = r.int(h.vcpuCount, 'header.vcpuCount', 1, 32);
  const mem = r.obj(h.memory, 'header.memory', ['regions']);
  const regions = r.list(mem.regions, 'header.memory.regions', 1, 8).map((x, i) => {
    const reg = r.obj(x, `header.memory.regions[${i}]`, ['start', 'size']);
    return { start: r.int(reg.start, `header.memory.regions[${i}].start`, 0, 2 ** 52), size: r.int(reg.size, `header.memory.regions[${i}].size`, 4096, 2 ** 50) };
  });
  const cpuTemplate = r.str(h.cpuTemplate, 'header.cpuTemplate', 64, /^[A-Za-z0-9_-]+$/);
  const devList = r.list(h.devices, 'header.devices', 0, 64).map((x, i) => {
    const d = r.obj(x, `header.devices[${i}]`, ['kind', 'id']);
    return { kind: r.str(d.kind, `header.devices[${i}].kind`, 16, /^[a-z]+$/), id: r.str(d.id, `header.devices[${i}].id`, 256, /^[A-Za-z0-9_-]+$/) };
  });
  const header: VmSnapshotHeader = { fcRunVersion, planHash, createdAt, snapshotType: h.snapshotType, vcpuCount, memory: { regions }, cpuTemplate, devices: devList, plan: h.plan };

  const vcpus = r.list(top.vcpus, 'vcpus', vcpuCount, vcpuCount).map((x, i): VcpuState => {
    const at = `vcpus[${i}]`;
    const v = r.obj(x, at, [...Object.keys(VCPU_FIXED_PARTS), 'xsave', 'msrs', 'cpuid', 'mpState', 'tscKhz']);
    const fixed = Object.fromEntries(Object.entries(VCPU_FIXED_PARTS).map(([k, size]) => [k, r.bytes(v[k], `${at}.${k}`, { exact: size })])) as Record<keyof typeof VCPU_FIXED_PARTS, Uint8Array>;
    return {
      ...fixed,
      xsave: r.bytes(v.xsave, `${at}.xsave`, { unit: 64, min: XSAVE_MIN, max: XSAVE_MAX }),
      msrs: r.bytes(v.msrs, `${at}.msrs`, { unit: STATE_SIZES.msrEntry, min: 0, max: MSRS_MAX * STATE_SIZES.msrEntry }),
      cpuid: r.bytes(v.cpuid, `${at}.cpuid`, { unit: STATE_SIZES.cpuidEntry, min: STATE_SIZES.cpuidEntry, max: CPUID_MAX_ENTRIES * STATE_SIZES.cpuidEntry }),
      mpState: r.int(v.mpState, `${at}.mpState`, 0, MP_STATE_MAX),
      tscKhz: r.int(v.tscKhz, `${at}.tscKhz`, 0, 100_000_000),
    };
  });

  const vmRaw = r.obj(top.vm, 'vm', ['irqchips', 'pit2', 'clock']);
  const irqchips = r.list(vmRaw.irqchips, 'vm.irqchips', IRQCHIP_IDS.length, IRQCHIP_IDS.length).map((x, i) => {
    const chip = r.bytes(x, `vm.irqchips[${i}]`, { exact: STATE_SIZES.irqchip });
    const id = Buffer.from(chip.buffer, chip.byteOffset, 4).readUInt32LE(0);
    if (id !== IRQCHIP_IDS[i]) fail(`vm.irqchips[${i}]`, `is the state of chip ${id}, expected chip ${IRQCHIP_IDS[i]}`);
    return chip;
  });
  const vm: VmState = { irqchips, pit2: r.bytes(vmRaw.pit2, 'vm.pit2', { exact: STATE_SIZES.pit2 }), clock: r.bytes(vmRaw.clock, 'vm.clock', { exact: STATE_SIZES.clock }) };
  const legacy = r.obj(top.legacy, 'legacy', ['serial', 'i8042']);
  return { header, vcpus, vm, devices: top.devices, legacy: { serial: legacy.serial, i8042: legacy.i8042 } };
}

/** The format version as Firecracker's --snapshot-version prints its own: "v1.0.0". */
export function snapshotVersionText(format = SNAPSHOT_FORMAT): string {
  return `v${format}.0.0`;
}

/** What a snapshot holds, as data (`--describe-snapshot --json`). */
export function snapshotSummary(s: VmSnapshot): Record<string, unknown> {
  return {
    format: SNAPSHOT_FORMAT,
    fc_run_version: s.header.fcRunVersion,
    created_at: s.header.createdAt,
    snapshot_type: s.header.snapshotType,
    plan_hash: s.header.planHash,
    vcpu_count: s.header.vcpuCount,
    mem_size_mib: s.header.memory.regions.reduce((n, r) => n + r.size, 0) / (1024 * 1024),
    cpu_template: s.header.cpuTemplate,
    devices: s.header.devices,
  };
}

/** What a snapshot holds, for people (`--describe-snapshot`). */
export function describeSnapshot(s: VmSnapshot): string {
  const sum = snapshotSummary(s);
  const lines = [
    `fc-run snapshot, format ${SNAPSHOT_FORMAT}, written by fc-run ${s.header.fcRunVersion} at ${s.header.createdAt}`,
    `type:         ${s.header.snapshotType}`,
    `plan:         ${s.header.planHash}`,
    `vCPUs:        ${s.header.vcpuCount}`,
    `memory:       ${sum.mem_size_mib} MiB in ${s.header.memory.regions.length} region(s)`,
    `CPU template: ${s.header.cpuTemplate}`,
    `devices:      ${s.header.devices.length === 0 ? 'none' : s.header.devices.map((d) => `${d.kind} ${d.id}`).join(', ')}`,
  ];
  return lines.join('\n') + '\n';
}

/** Reads and checks a state file from disk (its size first: it is read whole; a FIFO or device is refused, not waited on). */
export function readSnapshotFile(file: string): VmSnapshot {
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK | fs.constants.O_NOCTTY);
  } catch (err) {
    throw new SnapshotFileError(file, `cannot be opened: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) throw new SnapshotFileError(file, 'is not a regular file');
    if (st.size > MAX_SNAPSHOT_BYTES) throw new SnapshotFileError(file, `is ${st.size} bytes, more than any VM state file (${MAX_SNAPSHOT_BYTES}): is it the memory file?`);
    const buf = Buffer.alloc(st.size);
    let done = 0;
    while (done < buf.length) {
      const n = fs.readSync(fd, buf, done, buf.length - done, done);
      if (n === 0) break;
      done += n;
    }
    return decodeSnapshotFile(buf.subarray(0, done), file);
  } catch (err) {
    if (err instanceof FcRunError) throw err;
    throw new SnapshotFileError(file, `cannot be read: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  } finally {
    fs.closeSync(fd);
  }
}
