import { parseTree, type Node } from 'jsonc-parser';
import { EXIT_INVALID_SPEC, FcRunError } from '../errors';
import { X86_64_SYSCALLS } from './syscall-table';
import {
  SECCOMP_RET_ALLOW,
  SECCOMP_RET_ERRNO,
  SECCOMP_RET_KILL_PROCESS,
  SECCOMP_RET_KILL_THREAD,
  SECCOMP_RET_LOG,
  SECCOMP_RET_TRACE,
  SECCOMP_RET_TRAP,
} from './seccomp-actions';

/**
 * A compiler for seccomp filters written in the JSON form of Firecracker's seccompiler, x86_64
 * only: one classic-BPF program per thread category, ready for seccomp(SECCOMP_SET_MODE_FILTER)
 * (see installThreadFilter in ./seccomp). Pure computation: no system call is made here.
 *
 * The format, as Firecracker's seccompiler reads it:
 *
 *   { "vmm": FILTER, "api": FILTER, "vcpu": FILTER }
 *   FILTER    = { "default_action": ACTION, "filter_action": ACTION, "filter": [RULE, ...] }
 *   ACTION    = "allow" | "kill_process" | "kill_thread" | "log" | "trap" | {"errno": N} | {"trace": N}
 *   RULE      = { "syscall": NAME, "args": [CONDITION, ...], "comment": TEXT }   (args optional)
 *   CONDITION = { "index": 0..5, "type": "dword" | "qword",
 *                 "op": "eq" | "ne" | "lt" | "le" | "gt" | "ge" | {"masked_eq": MASK},
 *                 "val": N, "comment": TEXT }
 *
 * A call whose name has a rule that matches gets filter_action; any other call gets
 * default_action. The rules of one call are alternatives (any one may match); the conditions of a
 * rule must all hold. Comparisons are unsigned. Decisions where the format leaves room, and how
 * they compare with Firecracker (whose seccompiler hands the rules to libseccomp):
 *
 * - "qword" compares all 64 bits of the argument. "dword" compares its low 32 bits only, for
 *   every operator: what the documentation means by a 4-byte argument, and what the kernel itself
 *   reads of an int argument. (Firecracker does this for "eq"; for the other operators libseccomp
 *   compares 64 bits, which differs only when the high half of a dword argument is not zero.)
 * - A dword condition whose val, or mask, does not fit in 32 bits is refused. (Firecracker's
 *   libseccomp silently compares a dword "eq" with the value's low 32 bits.)
 * - masked_eq holds when (argument & mask) == (val & mask): bits of val outside the mask do not
 *   count, as with libseccomp.
 * - As with libseccomp, filter_action may not equal default_action when there are rules.
 * - There is no plain "kill": Firecracker spells it "kill_process" or "kill_thread".
 * - A call of another architecture, or an x32 call (number with bit 30 set), kills the process.
 * - All three categories are required, as Firecracker requires them, unless the caller allows
 *   missing ones: then the map has no program for them (no filter for those threads).
 * - Keys other than the above are refused ("comment" is also allowed on a filter); keys repeated
 *   in one object: the last one counts, as in JSON.parse.
 */

export const THREAD_CATEGORIES = ['vmm', 'api', 'vcpu'] as const;
export type ThreadCategory = (typeof THREAD_CATEGORIES)[number];

/** The kernel's limit on one filter's length (BPF_MAXINSNS). */
export const MAX_PROGRAM_INSTRUCTIONS = 4096;
/** Input caps: Firecracker's own file is ~50 KB with ~80 rules in its largest category. */
export const MAX_FILTER_FILE_CHARS = 1 << 20;
export const MAX_RULES_PER_CATEGORY = 4096;
export const MAX_CONDITIONS_PER_RULE = 32;

export class SeccompFilterError extends FcRunError {
  constructor(message: string) {
    super('seccomp-filter', message, EXIT_INVALID_SPEC);
  }
}

export type Operator = 'eq' | 'ne' | 'lt' | 'le' | 'gt' | 'ge' | 'masked_eq';

export interface Condition {
  index: number;
  type: 'dword' | 'qword';
  op: Operator;
  /** For masked_eq: the argument is ANDed with this before comparing. */
  mask: bigint;
  val: bigint;
}

export interface Rule {
  syscall: string;
  nr: number;
  /** All must hold; none: the rule matches every call of `syscall`. */
  args: Condition[];
  /** What a match returns instead of the filter's filterAction (fc-run's built-in lists only: ENOSYS for clone3). */
  action?: number;
}

export interface SeccompilerFilter {
  /** SECCOMP_RET_* values. */
  defaultAction: number;
  filterAction: number;
  rules: Rule[];
}

export interface CompileOptions {
  /** Accept a file without some thread categories (default: refuse, as Firecracker does). */
  allowMissingCategories?: boolean;
}

export { SECCOMP_RET_KILL_PROCESS };

const PLAIN_ACTIONS: Record<string, number> = {
  allow: SECCOMP_RET_ALLOW,
  kill_process: SECCOMP_RET_KILL_PROCESS,
  kill_thread: SECCOMP_RET_KILL_THREAD,
  log: SECCOMP_RET_LOG,
  trap: SECCOMP_RET_TRAP,
};
const VALUE_ACTIONS: Record<string, number> = { errno: SECCOMP_RET_ERRNO, trace: SECCOMP_RET_TRACE };
const OPERATORS = ['eq', 'ne', 'lt', 'le', 'gt', 'ge'];

/** Parses and compiles a seccompiler JSON text: one BPF program (struct sock_filter[]) per category. */
export function compileSeccompilerJson(text: string, fileName: string, options: CompileOptions = {}): Map<ThreadCategory, Buffer> {
  const filters = parseSeccompilerJson(text, fileName, options);
  const out = new Map<ThreadCategory, Buffer>();
  for (const [category, filter] of filters) {
    const program = compileFilter(filter);
    const count = program.length / 8;
    if (count > MAX_PROGRAM_INSTRUCTIONS) {
      throw new SeccompFilterError(
        `seccomp filter ${fileName}: ${category}: the filter compiles to ${count} BPF instructions; the kernel takes at most ${MAX_PROGRAM_INSTRUCTIONS} (use fewer rules or conditions)`,
      );
    }
    out.set(category, program);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Reading the JSON

/** Reads the file with jsonc-parser's tree, for the exact text of numbers (u64 > 2^53) and offsets. */
export function parseSeccompilerJson(text: string, fileName: string, options: CompileOptions = {}): Map<ThreadCategory, SeccompilerFilter> {
  const where = `seccomp filter ${fileName}`;
  if (text.length > MAX_FILTER_FILE_CHARS) throw new SeccompFilterError(`${where}: the file is larger than ${MAX_FILTER_FILE_CHARS} characters`);
  try {
    // Strict JSON first (jsonc-parser is lenient); V8's parser does not recurse, so depth is safe.
    JSON.parse(text);
  } catch (e) {
    throw new SeccompFilterError(`${where}: not valid JSON: ${(e as Error).message}`);
  }
  // jsonc-parser's tree is built recursively: bound the depth before building it. The format
  // nests 7 levels deep (file, filter, rules, rule, args, condition, op).
  const depth = maxDepth(text);
  if (depth > 16) throw new SeccompFilterError(`${where}: nested ${depth} levels deep (the seccompiler format needs 7)`);
  const root = parseTree(text, [], { disallowComments: true, allowTrailingComma: false });
  if (root === undefined) throw new SeccompFilterError(`${where}: empty file`);
  const r = new Reader(text, where);

  const categories = r.object(root, '', (key) =>
    (THREAD_CATEGORIES as readonly string[]).includes(key)
      ? undefined
      : `unknown thread category "${key}" (the categories are ${THREAD_CATEGORIES.join(', ')})`,
  );
  const out = new Map<ThreadCategory, SeccompilerFilter>();
  for (const category of THREAD_CATEGORIES) {
    const node = categories.get(category);
    if (node === undefined) {
      if (options.allowMissingCategories) continue;
      throw new SeccompFilterError(`${where}: no filter for the thread category "${category}" (a file must have all of ${THREAD_CATEGORIES.join(', ')})`);
    }
    out.set(category, r.filter(node, category));
  }
  return out;
}

/** Deepest nesting of arrays and objects, counted without recursion (strings skipped). */
function maxDepth(text: string): number {
  let depth = 0;
  let max = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22 /* " */) {
      for (i++; i < text.length && text.charCodeAt(i) !== 0x22; i++) if (text.charCodeAt(i) === 0x5c /* \ */) i++;
    } else if (c === 0x5b || c === 0x7b) max = Math.max(max, ++depth);
    else if (c === 0x5d || c === 0x7d) depth--;
  }
  return max;
}

class Reader {
  constructor(
    private readonly text: string,
    private readonly where: string,
  ) {}

  fail(path: string, node: Node | undefined, message: string): never {
    const line = node === undefined ? '' : ` (line ${lineOf(this.text, node.offset)})`;
    throw new SeccompFilterError(`${this.where}: ${path || 'top level'}${line}: ${message}`);
  }

  /** An object's members (the last of repeated keys wins); `unknownKey` names what is wrong with a key. */
  object(node: Node, path: string, unknownKey: (key: string) => string | undefined): Map<string, Node> {
    if (node.type !== 'object') this.fail(path, node, `must be an object, not ${describe(node)}`);
    const members = new Map<string, Node>();
    for (const property of node.children ?? []) {
      const [key, value] = property.children ?? [];
      const name = String(key?.value);
      const problem = unknownKey(name);
      if (problem !== undefined) this.fail(path, property, problem);
      if (value !== undefined) members.set(name, value);
    }
    return members;
  }

  /** An object with exactly these keys (`optional` ones may be missing). */
  record(node: Node, path: string, required: string[], optional: string[]): Map<string, Node> {
    const known = [...required, ...optional];
    const members = this.object(node, path, (key) =>
      known.includes(key) ? undefined : `unknown key "${key}"${didYouMean(key, known)} (expected ${known.join(', ')})`,
    );
    for (const key of required) if (!members.has(key)) this.fail(path, node, `missing "${key}"`);
    return members;
  }

  array(node: Node, path: string, max: number): Node[] {
    if (node.type !== 'array') this.fail(path, node, `must be an array, not ${describe(node)}`);
    const items = node.children ?? [];
    if (items.length > max) this.fail(path, node, `has ${items.length} entries; at most ${max} are accepted`);
    return items;
  }

  string(node: Node, path: string): string {
    if (node.type !== 'string') this.fail(path, node, `must be a string, not ${describe(node)}`);
    return node.value as string;
  }

  /** A non-negative integer up to `max`, exactly (JSON numbers above 2^53 lose digits in JS). */
  integer(node: Node, path: string, max: bigint): bigint {
    const raw = this.text.slice(node.offset, node.offset + node.length);
    if (node.type !== 'number' || !/^(0|[1-9][0-9]*)$/.test(raw) || BigInt(raw) > max) {
      this.fail(path, node, `must be an integer from 0 to ${max}, not ${node.type === 'number' ? raw : describe(node)}`);
    }
    return BigInt(raw);
  }

  /** A u64; for a dword, one that fits in 32 bits. */
  sized(type: 'dword' | 'qword', node: Node, path: string): bigint {
    const v = this.integer(node, path, 0xffffffffffffffffn);
    if (type === 'dword' && v > 0xffffffffn) this.fail(path, node, `${v} does not fit in a dword (32 bits): use "type": "qword" to compare all 64 bits`);
    return v;
  }

  filter(node: Node, path: string): SeccompilerFilter {
    const m = this.record(node, path, ['default_action', 'filter_action', 'filter'], ['comment']);
    if (m.has('comment')) this.string(m.get('comment')!, `${path}.comment`);
    const defaultAction = this.action(m.get('default_action')!, `${path}.default_action`);
    const filterAction = this.action(m.get('filter_action')!, `${path}.filter_action`);
    const rules = this.array(m.get('filter')!, `${path}.filter`, MAX_RULES_PER_CATEGORY).map((n, i) => this.rule(n, `${path}.filter[${i}]`));
    if (rules.length > 0 && defaultAction === filterAction) {
      this.fail(path, node, 'filter_action is the same as default_action, so the rules would change nothing (Firecracker\'s seccompiler refuses this too)');
    }
    return { defaultAction, filterAction, rules };
  }

  action(node: Node, path: string): number {
    const all = [...Object.keys(PLAIN_ACTIONS), ...Object.keys(VALUE_ACTIONS).map((k) => `{"${k}": N}`)].join(', ');
    if (node.type === 'string') {
      const name = node.value as string;
      if (Object.hasOwn(PLAIN_ACTIONS, name)) return PLAIN_ACTIONS[name];
      if (name === 'kill') this.fail(path, node, '"kill" is not a seccompiler action: write "kill_process" (ends the process) or "kill_thread" (ends the calling thread)');
      if (Object.hasOwn(VALUE_ACTIONS, name)) this.fail(path, node, `"${name}" takes a number: {"${name}": N}`);
      this.fail(path, node, `unknown action "${name}"${didYouMean(name, Object.keys(PLAIN_ACTIONS))} (the actions are ${all})`);
    }
    if (node.type === 'object' && node.children?.length === 1) {
      const [key, value] = node.children[0].children ?? [];
      const name = String(key?.value);
      if (Object.hasOwn(VALUE_ACTIONS, name) && value !== undefined) {
        return (VALUE_ACTIONS[name] | Number(this.integer(value, `${path}.${name}`, 0xffffn))) >>> 0;
      }
    }
    this.fail(path, node, `must be one of ${all}`);
  }

  rule(node: Node, path: string): Rule {
    const m = this.record(node, path, ['syscall'], ['args', 'comment']);
    if (m.has('comment')) this.string(m.get('comment')!, `${path}.comment`);
    const syscall = this.string(m.get('syscall')!, `${path}.syscall`);
    const nr = X86_64_SYSCALLS.get(syscall);
    if (nr === undefined) {
      this.fail(`${path}.syscall`, m.get('syscall'), `"${syscall}" is not an x86_64 system call${didYouMean(syscall, [...X86_64_SYSCALLS.keys()])}`);
    }
    const argsNode = m.get('args');
    const args =
      argsNode === undefined || argsNode.type === 'null'
        ? []
        : this.array(argsNode, `${path}.args`, MAX_CONDITIONS_PER_RULE).map((n, i) => this.condition(n, `${path}.args[${i}]`));
    return { syscall, nr, args };
  }

  condition(node: Node, path: string): Condition {
    const m = this.record(node, path, ['index', 'type', 'op', 'val'], ['comment']);
    if (m.has('comment')) this.string(m.get('comment')!, `${path}.comment`);
    const index = Number(this.integer(m.get('index')!, `${path}.index`, 5n));
    const typeNode = m.get('type')!;
    const type = this.string(typeNode, `${path}.type`);
    if (type !== 'dword' && type !== 'qword') this.fail(`${path}.type`, typeNode, `must be "dword" (4 bytes) or "qword" (8 bytes), not "${type}"`);
    const opNode = m.get('op')!;
    let op: Operator;
    let mask = type === 'dword' ? 0xffffffffn : 0xffffffffffffffffn; // used by masked_eq only
    if (opNode.type === 'string' && OPERATORS.includes(opNode.value as string)) {
      op = opNode.value as Operator;
    } else if (opNode.type === 'object' && opNode.children?.length === 1 && opNode.children[0].children?.[0]?.value === 'masked_eq') {
      op = 'masked_eq';
      const maskNode = opNode.children[0].children[1];
      if (maskNode === undefined) this.fail(`${path}.op`, opNode, 'masked_eq needs a mask');
      mask = this.sized(type, maskNode, `${path}.op.masked_eq`);
    } else {
      const name = opNode.type === 'string' ? `"${opNode.value as string}"` : describe(opNode);
      const hint = opNode.type === 'string' ? didYouMean(opNode.value as string, [...OPERATORS, 'masked_eq']) : '';
      this.fail(`${path}.op`, opNode, `must be one of ${OPERATORS.map((o) => `"${o}"`).join(', ')} or {"masked_eq": MASK}, not ${name}${hint}`);
    }
    const val = this.sized(type, m.get('val')!, `${path}.val`);
    return { index, type, op, mask, val };
  }
}

function lineOf(text: string, offset: number): number {
  let line = 1;
  for (let i = text.indexOf('\n'); i !== -1 && i < offset; i = text.indexOf('\n', i + 1)) line++;
  return line;
}

function describe(node: Node): string {
  if (node.type === 'string') return `the string ${JSON.stringify(node.value).slice(0, 40)}`;
  if (node.type === 'number') return `the number ${String(node.value)}`;
  if (node.type === 'boolean' || node.type === 'null') return String(node.value);
  return `an ${node.type}`;
}

/** ` (did you mean "x"?)` for the nearest candidate within a few typos, or nothing. */
function didYouMean(word: string, candidates: string[]): string {
  if (word.length > 64) return '';
  let best: string | undefined;
  let bestDistance = Math.max(1, Math.floor(word.length / 3)) + 1;
  for (const c of candidates) {
    const d = editDistance(word, c);
    if (d < bestDistance) [best, bestDistance] = [c, d];
  }
  return best === undefined ? '' : ` (did you mean "${best}"?)`;
}

/** Edits between two words: insertions, deletions, substitutions and swaps of neighbours. */
function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[a.length][b.length];
}

// ---------------------------------------------------------------------------------------------
// Generating BPF

const BPF_LD_W_ABS = 0x20; // A = 32-bit word of seccomp_data at offset k
const BPF_ALU_AND_K = 0x54; // A &= k
const BPF_JA = 0x05; // jump forward k instructions (32-bit offset)
const BPF_JEQ_K = 0x15; // jump jt if A == k, else jf (8-bit offsets)
const BPF_JGT_K = 0x25; // A > k, unsigned
const BPF_JGE_K = 0x35; // A >= k, unsigned
const BPF_RET_K = 0x06;

const AUDIT_ARCH_X86_64 = 0xc000003e;
const X32_SYSCALL_BIT = 0x40000000;
/** Offsets in struct seccomp_data: nr, arch, then args[6] as u64, little-endian (low half first). */
const OFFSET_NR = 0;
const OFFSET_ARCH = 4;
const OFFSET_ARGS = 16;

/** An instruction, named by its distance from the end of the program (1 = the last one). */
type Label = number;

/**
 * Builds a program from its end to its start, so that every jump's target is already placed and
 * its distance known. Conditional jumps have 8-bit offsets (at most 255 instructions ahead); a
 * farther target is reached through a stand-in placed right after the conditional jump (see
 * near). Only forward jumps exist in classic BPF, which building backwards fits exactly.
 */
class BackwardAssembler {
  private readonly reversed: [code: number, jt: number, jf: number, k: number][] = [];
  /** Far target → its nearest stand-in so far. */
  private readonly standIns = new Map<Label, Label>();

  /** The instruction placed last, i.e. the first one of the program so far. */
  get start(): Label {
    return this.reversed.length;
  }

  /** Offset of a jump, placed next, to `to`: the number of instructions between them. */
  private distance(to: Label): number {
    return this.reversed.length - to;
  }

  private put(code: number, jt: number, jf: number, k: number): Label {
    this.reversed.push([code, jt, jf, k >>> 0]);
    return this.reversed.length;
  }

  ret(action: number): Label {
    return this.put(BPF_RET_K, 0, 0, action);
  }

  load(offset: number): Label {
    return this.put(BPF_LD_W_ABS, 0, 0, offset);
  }

  and(mask: number): Label {
    return this.put(BPF_ALU_AND_K, 0, 0, mask);
  }

  /**
   * `to`, or an instruction within `max` that does the same: a copy of it if it returns, else a
   * BPF_JA to it (32-bit offset). Placed just after a conditional jump, a stand-in is reached
   * only by jumps, never by falling through; later (earlier in the program) far jumps to the same
   * target reuse it while it is near enough, so a far target costs one instruction per 255.
   */
  private near(to: Label, max: number): Label {
    if (this.distance(to) <= max) return to;
    const standIn = this.standIns.get(to);
    if (standIn !== undefined && this.distance(standIn) <= max) return standIn;
    const [code, , , k] = this.reversed[to - 1];
    const label = code === BPF_RET_K ? this.ret(k) : this.put(BPF_JA, 0, 0, this.distance(to));
    this.standIns.set(to, label);
    return label;
  }

  /** A conditional jump to `ifTrue` or `ifFalse`, through stand-ins when either is far. */
  jump(code: number, k: number, ifTrue: Label, ifFalse: Label): Label {
    if (this.distance(ifTrue) > 255 || this.distance(ifFalse) > 255) {
      // Program order will be: J, [stand-in for ifTrue], [stand-in for ifFalse]. At 255 the false
      // target gets one too, as placing a stand-in for ifTrue would push it to 256.
      ifFalse = this.near(ifFalse, 254);
      ifTrue = this.near(ifTrue, 255);
    }
    return this.put(code, this.distance(ifTrue), this.distance(ifFalse), k);
  }

  /** struct sock_filter[]: u16 code, u8 jt, u8 jf, u32 k, little-endian. */
  toBuffer(): Buffer {
    const out = Buffer.alloc(this.reversed.length * 8);
    [...this.reversed].reverse().forEach(([code, jt, jf, k], i) => {
      out.writeUInt16LE(code, i * 8);
      out.writeUInt8(jt, i * 8 + 2);
      out.writeUInt8(jf, i * 8 + 3);
      out.writeUInt32LE(k, i * 8 + 4);
    });
    return out;
  }
}

/**
 * The program:
 *   arch != x86_64 → kill process;  nr >= 0x40000000 (x32) → kill process
 *   nr == A → A's rules;  nr == B → B's rules;  ...  → default_action
 * where a call's rules are tried in file order: a condition that fails goes on to the next rule
 * (after the last: default_action); a rule whose conditions all hold returns filter_action.
 */
export function compileFilter(filter: SeccompilerFilter): Buffer {
  const a = new BackwardAssembler();
  const onMatch = a.ret(filter.filterAction);
  const onDefault = a.ret(filter.defaultAction);
  const badArch = a.ret(SECCOMP_RET_KILL_PROCESS);

  const actions = new Map<number, Label>();
  const matchOf = (rule: Rule) => {
    if (rule.action === undefined || rule.action === filter.filterAction) return onMatch;
    let l = actions.get(rule.action);
    if (!l) actions.set(rule.action, (l = a.ret(rule.action)));
    return l;
  };
  for (const rule of filter.rules) matchOf(rule);
  const bySyscall = new Map<number, { args: Condition[]; match: Label }[]>();
  for (const rule of filter.rules) bySyscall.set(rule.nr, [...(bySyscall.get(rule.nr) ?? []), { args: rule.args, match: matchOf(rule) }]);

  let next = onDefault; // where a call not in the list goes
  for (const [nr, rules] of [...bySyscall].reverse()) {
    // A rule without conditions matches every call: the ones after it need no code.
    const firstPlain = rules.findIndex((r) => r.args.length === 0);
    const body = firstPlain === 0 ? rules[0].match : ruleChain(a, firstPlain < 0 ? rules : rules.slice(0, firstPlain + 1), onDefault);
    next = a.jump(BPF_JEQ_K, nr, body, next);
  }
  a.jump(BPF_JGE_K, X32_SYSCALL_BIT, badArch, next);
  const loadNr = a.load(OFFSET_NR);
  a.jump(BPF_JEQ_K, AUDIT_ARCH_X86_64, loadNr, badArch);
  a.load(OFFSET_ARCH);
  return a.toBuffer();
}

function ruleChain(a: BackwardAssembler, rules: { args: Condition[]; match: Label }[], onDefault: Label): Label {
  let next = onDefault; // where the rule being built goes when it does not match
  for (const { args: conditions, match } of [...rules].reverse()) {
    let start = match;
    for (const c of [...conditions].reverse()) start = condition(a, c, start, next);
    next = start;
  }
  return next;
}

/**
 * One condition, going to `pass` or `fail`; returns its first instruction. The accumulator holds
 * 32 bits, so a qword is compared as two words: the high halves decide unless they are equal, in
 * which case the low halves do. ne, lt and le are eq, ge and gt with pass and fail swapped.
 */
function condition(a: BackwardAssembler, c: Condition, pass: Label, fail: Label): Label {
  const low = OFFSET_ARGS + 8 * c.index;
  const high = low + 4;
  const [mh, ml] = split(c.mask);
  const [vh, vl] = split(c.op === 'masked_eq' ? c.val & c.mask : c.val);
  const negated = c.op === 'ne' || c.op === 'lt' || c.op === 'le';
  const [t, f] = negated ? [fail, pass] : [pass, fail];
  const test = c.op === 'ge' || c.op === 'lt' ? BPF_JGE_K : c.op === 'gt' || c.op === 'le' ? BPF_JGT_K : BPF_JEQ_K;

  // The low half: (A & mask) == val, or A == val, A >= val, A > val.
  a.jump(test, vl, t, f);
  if (c.op === 'masked_eq' && ml !== 0xffffffff) a.and(ml);
  const lowStart = a.load(low);
  if (c.type === 'dword') return lowStart;

  if (c.op === 'masked_eq') {
    if (mh === 0) return lowStart; // (high & 0) == (val & 0): always true
    a.jump(BPF_JEQ_K, vh, lowStart, f);
    if (mh !== 0xffffffff) a.and(mh);
  } else if (test === BPF_JEQ_K) {
    a.jump(BPF_JEQ_K, vh, lowStart, f);
  } else {
    // high > vh decides for; high < vh against; equal: the low halves decide.
    const equalHigh = a.jump(BPF_JEQ_K, vh, lowStart, f);
    a.jump(BPF_JGT_K, vh, t, equalHigh);
  }
  return a.load(high);
}

function split(v: bigint): [high: number, low: number] {
  return [Number(v >> 32n), Number(v & 0xffffffffn)];
}
