import { SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO, SECCOMP_RET_LOG, SECCOMP_RET_TRAP } from './seccomp-actions';
import { compileFilter, type Condition, type Rule } from './seccompiler';
import { X86_64_SYSCALLS } from './syscall-table';
import { ALLOWED_CALLS, ALLOWED_IOCTLS, ERRNO_CALLS, SECCOMP_LISTS_NODE_MAJORS, type ArgTest, type ThreadCategory, type Where } from './seccomp-lists';

/**
 * The built-in allow-lists (src/kvm/seccomp-lists.ts) compiled to BPF with the seccompiler
 * (src/kvm/seccompiler.ts): what a --seccomp-filter file would compile to, plus errno answers.
 */
export interface BuiltinFilters {
  /** Every thread: the union of the thread lists and what Node's helper threads need. */
  process: Buffer;
  api: Buffer;
  vmm: Buffer;
  vcpu: Buffer;
}

type Scope = ThreadCategory | 'process';

function applies(where: Where, scope: Scope): boolean {
  if (scope === 'process' || where === 'all') return true;
  if (where === 'helpers') return false;
  return where.includes(scope);
}

function nrOf(call: string): number {
  const nr = X86_64_SYSCALLS.get(call);
  if (nr === undefined) throw new Error(`seccomp lists: no x86_64 system call "${call}"`);
  return nr;
}

function conditionOf(t: ArgTest, pid: number): Condition {
  const val = BigInt(t.val === 'pid' ? pid : t.val);
  return t.mask === undefined
    ? { index: t.index, type: t.qword ? 'qword' : 'dword', op: 'eq', mask: 0xffffffffn, val }
    : { index: t.index, type: t.qword ? 'qword' : 'dword', op: 'masked_eq', mask: BigInt(t.mask), val };
}

/** The rules of one scope, in the seccompiler's form (what a --seccomp-filter file compiles to). */
export function allowListRules(scope: Scope, pid: number): Rule[] {
  const rules: Rule[] = [];
  const seen = new Set<string>();
  for (const c of ALLOWED_CALLS) {
    if (!applies(c.where, scope)) continue;
    const nr = nrOf(c.call);
    if (c.call === 'ioctl') {
      const requests = [...new Set(ALLOWED_IOCTLS.filter((i) => applies(i.where, scope)).map((i) => i.request))];
      for (const request of requests) rules.push({ syscall: 'ioctl', nr, args: [{ index: 1, type: 'dword', op: 'eq', mask: 0xffffffffn, val: BigInt(request) }] });
      continue;
    }
    const alternatives = c.args ?? [[]];
    for (const alt of alternatives) {
      const key = `${c.call}:${JSON.stringify(alt)}`;
      if (seen.has(key)) continue;
      seen.add(key);
      rules.push({ syscall: c.call, nr, args: alt.map((t) => conditionOf(t, pid)) });
    }
  }
  // The process-wide filter answers only what every thread gets: a call some threads may make
  // (openat on the main thread) must pass it.
  for (const c of ERRNO_CALLS) {
    if (scope === 'process' ? c.where === 'all' : applies(c.where, scope)) rules.push({ syscall: c.call, nr: nrOf(c.call), args: [], action: (SECCOMP_RET_ERRNO | c.errno) >>> 0 });
  }
  return rules;
}

/** The calls one scope allows, by name (for the README's counts and the tests). */
export function allowListNames(scope: Scope): string[] {
  return [...new Set(ALLOWED_CALLS.filter((c) => applies(c.where, scope)).map((c) => c.call))].sort();
}

/**
 * The built-in allow-lists compiled to BPF for process `pid` (tgkill may only signal its own
 * threads). `defaultAction`: what an unlisted call gets — SECCOMP_RET_TRAP normally, SECCOMP_RET_LOG
 * in the trial mode (FC_RUN_SECCOMP_LOG=1), SECCOMP_RET_KILL_PROCESS without the SIGSYS handler.
 */
export function builtinFilters(pid: number, defaultAction: number = SECCOMP_RET_TRAP, usePrecompiled = true): BuiltinFilters {
  const ready = usePrecompiled ? precompiled()?.[defaultAction >>> 0] : undefined;
  if (ready) {
    const patched = (scope: Scope) => patchPid(Buffer.from(ready[scope].bpf, 'base64'), ready[scope].pidAt, pid);
    return { process: patched('process'), api: patched('api'), vmm: patched('vmm'), vcpu: patched('vcpu') };
  }
  const compile = (scope: Scope) => compileFilter({ defaultAction: defaultAction >>> 0, filterAction: SECCOMP_RET_ALLOW, rules: allowListRules(scope, pid) });
  return { process: compile('process'), api: compile('api'), vmm: compile('vmm'), vcpu: compile('vcpu') };
}

/** One filter as scripts/gen-seccomp.js stores it: the BPF, and which instructions hold the process id. */
interface PrecompiledFilter {
  bpf: string;
  pidAt: number[];
}
type Precompiled = Record<number, Record<Scope, PrecompiledFilter>>;

/**
 * The filters `npm run build` compiled (scripts/gen-seccomp.js), by default action; the bundler
 * inlines them. Absent when the sources run under ts-jest: the filters are then compiled here.
 */
function precompiled(): Precompiled | undefined {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    return require('./seccomp-builtin.generated.js') as Precompiled;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'MODULE_NOT_FOUND' && String((err as Error).message).includes('seccomp-builtin.generated')) return undefined;
    throw err;
  }
}

/** `bpf` with `pid` as the constant of the instructions at `pidAt` (struct sock_filter: 8 bytes, k at 4). */
export function patchPid(bpf: Buffer, pidAt: readonly number[], pid: number): Buffer {
  for (const i of pidAt) bpf.writeUInt32LE(pid >>> 0, i * 8 + 4);
  return bpf;
}

/** Whether the built-in lists were made (traced and tested) for this Node's major version. */
export function listsFitThisNode(version = process.versions.node): boolean {
  return SECCOMP_LISTS_NODE_MAJORS.includes(Number(version.split('.')[0]));
}

export { SECCOMP_RET_TRAP, SECCOMP_RET_LOG };
