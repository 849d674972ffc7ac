import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DENIED_SYSCALLS, installThreadFilter } from '../../src/kvm/seccomp';
import {
  compileSeccompilerJson,
  MAX_FILTER_FILE_CHARS,
  SeccompFilterError,
  THREAD_CATEGORIES,
} from '../../src/kvm/seccompiler';
import { X86_64_SYSCALLS } from '../../src/kvm/syscall-table';
import { checkProgram, decode, runBpf, type SeccompData } from '../helpers/bpf-interpreter';

// eslint-disable-next-line @typescript-eslint/no-require-imports
const generator = require('../../scripts/gen-syscall-table.js') as {
  parseUnistd(text: string): [string, number][];
  NEWER: [string, number][];
  DEFAULT_HEADER: string;
};

const RET = {
  allow: 0x7fff0000,
  killProcess: 0x80000000,
  killThread: 0,
  trap: 0x00030000,
  log: 0x7ffc0000,
  errno: (n: number) => (0x00050000 | n) >>> 0,
  trace: (n: number) => (0x7ff00000 | n) >>> 0,
};
const NR = (name: string) => X86_64_SYSCALLS.get(name)!;
const U64_MAX = 0xffffffffffffffffn;

/** JSON text; bigint values are written as exact integers. */
function json(value: unknown): string {
  return JSON.stringify(value, (_, v) => (typeof v === 'bigint' ? `#big:${v}` : v)).replace(/"#big:(\d+)"/g, '$1');
}
/** A file with the same filter in all three categories. */
const fileOf = (filter: unknown) => json({ vmm: filter, api: filter, vcpu: filter });
const compile = (filter: unknown) => compileSeccompilerJson(fileOf(filter), 'test.json').get('vmm')!;
const compileError = (text: string) => {
  try {
    compileSeccompilerJson(text, 'test.json');
  } catch (e) {
    expect(e).toBeInstanceOf(SeccompFilterError);
    return (e as Error).message;
  }
  throw new Error('compiled');
};

describe('x86_64 system call table', () => {
  test('well-known numbers, and the numbers of the existing deny list', () => {
    expect([NR('read'), NR('ioctl'), NR('clone'), NR('seccomp'), NR('clone3'), NR('mseal')]).toEqual([0, 16, 56, 317, 435, 462]);
    for (const [name, nr] of Object.entries(DENIED_SYSCALLS)) expect([name, X86_64_SYSCALLS.get(name)]).toEqual([name, nr]);
    expect(new Set(X86_64_SYSCALLS.values()).size).toBe(X86_64_SYSCALLS.size);
  });

  const header = fs.existsSync(generator.DEFAULT_HEADER) ? fs.readFileSync(generator.DEFAULT_HEADER, 'utf8') : undefined;
  (header ? test : test.skip)(`matches ${generator.DEFAULT_HEADER}, plus only the newer calls the generator lists`, () => {
    const fromHeader = generator.parseUnistd(header!);
    expect(fromHeader.length).toBeGreaterThan(350);
    for (const [name, nr] of fromHeader) expect([name, X86_64_SYSCALLS.get(name)]).toEqual([name, nr]);
    const extra = [...X86_64_SYSCALLS].filter(([name]) => !fromHeader.some(([n]) => n === name));
    for (const entry of extra) expect(generator.NEWER).toContainEqual(entry);
  });
});

describe('compiled programs, run in a BPF interpreter', () => {
  const allowList = {
    default_action: { errno: 1 },
    filter_action: 'allow',
    filter: [
      { syscall: 'read' },
      { syscall: 'ioctl', args: [{ index: 1, type: 'dword', op: 'eq', val: 0xae80, comment: 'KVM_RUN' }] },
      { syscall: 'ioctl', args: [{ index: 1, type: 'dword', op: 'eq', val: 0x5401 }] },
      { syscall: 'mmap', args: [{ index: 3, type: 'dword', op: { masked_eq: 4 }, val: 0 }] },
    ],
  };
  const p = compile(allowList);

  test('the kernel would accept it; listed calls pass, others get the default action', () => {
    checkProgram(p);
    expect(runBpf(p, { nr: NR('read') })).toBe(RET.allow);
    expect(runBpf(p, { nr: NR('write') })).toBe(RET.errno(1));
    expect(runBpf(p, { nr: NR('ioctl'), args: [3n, 0xae80n] })).toBe(RET.allow);
    expect(runBpf(p, { nr: NR('ioctl'), args: [3n, 0x5401n] })).toBe(RET.allow);
    expect(runBpf(p, { nr: NR('ioctl'), args: [3n, 0xae81n] })).toBe(RET.errno(1));
    // dword: only the low 32 bits count (musl leaves garbage in the high half of ioctl's request).
    expect(runBpf(p, { nr: NR('ioctl'), args: [3n, 0xffffffff0000ae80n] })).toBe(RET.allow);
    expect(runBpf(p, { nr: NR('mmap'), args: [0n, 4096n, 3n, 0x22n] })).toBe(RET.allow);
    expect(runBpf(p, { nr: NR('mmap'), args: [0n, 4096n, 3n, 0x26n] })).toBe(RET.errno(1));
  });

  test('another architecture and x32 calls kill the process', () => {
    expect(runBpf(p, { nr: NR('read'), arch: 0x40000003 })).toBe(RET.killProcess);
    for (const nr of [0x40000000, 0x40000000 + NR('read'), 0x7fffffff, -1]) expect(runBpf(p, { nr })).toBe(RET.killProcess);
  });

  test('every action is encoded as the kernel expects', () => {
    const actions: [unknown, number][] = [
      ['allow', RET.allow],
      ['kill_process', RET.killProcess],
      ['kill_thread', RET.killThread],
      ['trap', RET.trap],
      ['log', RET.log],
      [{ errno: 38 }, RET.errno(38)],
      [{ errno: 65535 }, RET.errno(65535)],
      [{ trace: 7 }, RET.trace(7)],
    ];
    for (const [action, ret] of actions) {
      const other = ret === RET.allow ? 'trap' : 'allow';
      const q = compile({ default_action: other, filter_action: action, filter: [{ syscall: 'getpid' }] });
      expect([action, runBpf(q, { nr: NR('getpid') })]).toEqual([action, ret]);
      const d = compile({ default_action: action, filter_action: other, filter: [{ syscall: 'getpid' }] });
      expect([action, runBpf(d, { nr: NR('getppid') })]).toEqual([action, ret]);
    }
  });

  test('a filter without rules gives the default action to every call', () => {
    const q = compile({ default_action: 'allow', filter_action: 'trap', filter: [] });
    checkProgram(q);
    expect(runBpf(q, { nr: NR('execve') })).toBe(RET.allow);
    expect(runBpf(q, { nr: 5, arch: 0x40000003 })).toBe(RET.killProcess);
  });

  test('qword comparisons above 2^32, at their boundaries', () => {
    const v = 0x100000005n;
    const cases: [string, bigint[], bigint[]][] = [
      // op, args that match, args that do not
      ['eq', [v], [5n, v + 1n, v - 1n, 0x200000005n]],
      ['ne', [5n, v + 1n, 0x200000005n, U64_MAX], [v]],
      ['ge', [v, v + 1n, 0x200000000n, U64_MAX], [v - 1n, 0x100000000n, 5n, 0xffffffffn]],
      ['gt', [v + 1n, 0x200000000n, U64_MAX], [v, v - 1n, 0xffffffffn]],
      ['lt', [v - 1n, 0x100000000n, 0xffffffffn, 0n, 0x100000004n], [v, v + 1n, 0x200000000n, 0x200000004n]],
      ['le', [v, v - 1n, 0n, 0xffffffffn], [v + 1n, 0x200000000n, U64_MAX]],
    ];
    for (const [op, yes, no] of cases) {
      const q = compile({ default_action: 'allow', filter_action: { errno: 1 }, filter: [{ syscall: 'getpid', args: [{ index: 2, type: 'qword', op, val: v }] }] });
      for (const a of yes) expect([op, a, runBpf(q, { nr: NR('getpid'), args: [0n, 0n, a] })]).toEqual([op, a, RET.errno(1)]);
      for (const a of no) expect([op, a, runBpf(q, { nr: NR('getpid'), args: [0n, 0n, a] })]).toEqual([op, a, RET.allow]);
    }
    const max = compile({ default_action: 'allow', filter_action: 'trap', filter: [{ syscall: 'getpid', args: [{ index: 5, type: 'qword', op: 'eq', val: U64_MAX }] }] });
    expect(runBpf(max, { nr: NR('getpid'), args: [0n, 0n, 0n, 0n, 0n, U64_MAX] })).toBe(RET.trap);
    expect(runBpf(max, { nr: NR('getpid'), args: [0n, 0n, 0n, 0n, 0n, U64_MAX - 1n] })).toBe(RET.allow);
  });

  test('random filters agree with the format\'s meaning on random calls', () => {
    let seed = 12345;
    const rand = () => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed / 2 ** 31;
    };
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)];
    const word = () => BigInt(pick([0, 1, 2, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff, Math.floor(rand() * 2 ** 32)]));
    const ops = ['eq', 'ne', 'lt', 'le', 'gt', 'ge', 'masked_eq'] as const;
    type Cond = { index: number; type: 'dword' | 'qword'; op: (typeof ops)[number]; mask: bigint; val: bigint };
    const holds = (c: Cond, arg: bigint) => {
      const x = c.type === 'dword' ? arg & 0xffffffffn : arg;
      return { eq: x === c.val, ne: x !== c.val, lt: x < c.val, le: x <= c.val, gt: x > c.val, ge: x >= c.val, masked_eq: (x & c.mask) === (c.val & c.mask) }[c.op];
    };
    const names = ['read', 'write', 'ioctl', 'mmap', 'futex', 'openat'];
    for (let round = 0; round < 300; round++) {
      // One round in ten is long enough to need far jumps.
      const rules = Array.from({ length: round % 10 === 9 ? 150 + Math.floor(rand() * 100) : 1 + Math.floor(rand() * 8) }, () => ({
        syscall: pick(names),
        args: Array.from({ length: Math.floor(rand() * 4) }, (): Cond => {
          const type = pick(['dword', 'qword'] as const);
          const val = type === 'dword' ? word() : (word() << 32n) | word();
          const mask = type === 'dword' ? word() : (word() << 32n) | word();
          return { index: Math.floor(rand() * 6), type, op: pick(ops), mask, val };
        }),
      }));
      const filter = {
        default_action: { errno: 13 },
        filter_action: 'allow',
        filter: rules.map((r) => ({ syscall: r.syscall, args: r.args.map((c) => ({ index: c.index, type: c.type, op: c.op === 'masked_eq' ? { masked_eq: c.mask } : c.op, val: c.val })) })),
      };
      const q = compile(filter);
      checkProgram(q);
      for (let call = 0; call < 60; call++) {
        const syscall = pick([...names, 'close']);
        // Arguments near the values compared with, so that every branch is taken.
        const near = rules.flatMap((r) => r.args.map((c) => c.val));
        const args = Array.from({ length: 6 }, () => {
          const base = near.length > 0 && rand() < 0.8 ? pick(near) : (word() << 32n) | word();
          return BigInt.asUintN(64, base + BigInt(pick([-1, 0, 0, 1])) + (rand() < 0.2 ? word() << 32n : 0n));
        });
        const mine = rules.filter((r) => r.syscall === syscall);
        const expected = mine.length > 0 && mine.some((r) => r.args.every((c) => holds(c, args[c.index]))) ? RET.allow : RET.errno(13);
        const got = runBpf(q, { nr: NR(syscall), args });
        if (got !== expected) throw new Error(`round ${round}: ${syscall}(${args.join(', ')}) gave ${got.toString(16)} under ${json(filter)}`);
      }
    }
  });

  test('long programs: far jumps go through stand-ins (BPF_JA, or a copy of the return), and every rule stays reachable', () => {
    const { filter, probe } = bigFilter();
    const q = compile(filter);
    checkProgram(q);
    const code = decode(q);
    expect(code.length).toBeGreaterThan(2000);
    expect(code.filter((i) => i.code === 0x05).length).toBeGreaterThan(0);
    expect(code.filter((i) => i.code === 0x06).length).toBeGreaterThan(3);
    for (const [args, denied] of probe) {
      expect([args, runBpf(q, { nr: NR('getpid'), args: args.map(BigInt) })]).toEqual([args, denied ? RET.errno(1) : RET.allow]);
    }
    for (const name of filter.filter.map((r) => r.syscall).filter((n) => n !== 'getpid')) {
      const data: SeccompData = { nr: NR(name), args: [0n, 0n, 0n, 0n, 0n, 0xdeadbeefdeadbeefn] };
      expect([name, runBpf(q, data)]).toEqual([name, RET.errno(1)]);
      expect([name, runBpf(q, { ...data, args: [] })]).toEqual([name, RET.allow]);
    }
  });

  test('jumps of 250 to 260 instructions, around the 8-bit limit, land where they should', () => {
    // getpid's n rules (2 instructions each) lie between its dispatch and the next call's.
    for (let n = 120; n <= 135; n++) {
      const rules = Array.from({ length: n }, (_, i) => ({ syscall: 'getpid', args: [{ index: 0, type: 'dword', op: 'eq', val: i }] }));
      const q = compile({ default_action: 'allow', filter_action: 'trap', filter: [{ syscall: 'read', args: [{ index: 1, type: 'dword', op: 'eq', val: 7 }] }, ...rules, { syscall: 'getppid' }] });
      checkProgram(q);
      for (let i = 0; i < n; i++) expect([n, i, runBpf(q, { nr: NR('getpid'), args: [BigInt(i)] })]).toEqual([n, i, RET.trap]);
      expect(runBpf(q, { nr: NR('getpid'), args: [BigInt(n)] })).toBe(RET.allow);
      expect(runBpf(q, { nr: NR('getppid') })).toBe(RET.trap);
      expect(runBpf(q, { nr: NR('read'), args: [0n, 7n] })).toBe(RET.trap);
      expect(runBpf(q, { nr: NR('read'), args: [0n, 8n] })).toBe(RET.allow);
      expect(runBpf(q, { nr: NR('write') })).toBe(RET.allow);
    }
  });

  test('a filter that compiles past 4096 instructions is refused, naming the category and the size', () => {
    const rules = Array.from({ length: 1100 }, (_, i) => ({ syscall: 'getpid', args: [{ index: 0, type: 'qword', op: 'eq', val: i }] }));
    const small = { default_action: 'allow', filter_action: 'trap', filter: [] };
    const text = json({ vmm: small, api: { ...small, filter: rules }, vcpu: small });
    expect(compileError(text)).toMatch(/^seccomp filter test\.json: api: the filter compiles to \d{4} BPF instructions; the kernel takes at most 4096/);
  });
});

/**
 * A filter long enough that the dispatch on call numbers and the rule chains need far jumps:
 * 150 calls with a never-true condition, then getpid with 300 rules, then 150 more calls.
 * Denies (errno 1) getpid(1000 + i, i) for i < 300; allows everything else.
 */
function bigFilter() {
  const never = { index: 5, type: 'qword', op: 'eq', val: 0xdeadbeefdeadbeefn };
  const others = [...X86_64_SYSCALLS.keys()].filter((n) => n !== 'getpid').slice(0, 300);
  const getpid = Array.from({ length: 300 }, (_, i) => ({
    syscall: 'getpid',
    args: [
      { index: 0, type: 'qword', op: 'eq', val: 1000 + i },
      { index: 1, type: 'dword', op: 'eq', val: i },
    ],
  }));
  const filter = {
    default_action: 'allow',
    filter_action: { errno: 1 },
    filter: [...others.slice(0, 150).map((syscall) => ({ syscall, args: [never] })), ...getpid, ...others.slice(150).map((syscall) => ({ syscall, args: [never] }))],
  };
  const probe: [string[], boolean][] = [
    [['1000', '0'], true],
    [['1299', '299'], true],
    [['1150', '150'], true],
    [['1150', '151'], false],
    [['1300', '300'], false],
    [[String(2n ** 32n + 1000n), '0'], false],
    [['999', '0'], false],
  ];
  return { filter, probe };
}

describe('validation: a clear error naming the place, never a crash', () => {
  const ok = { default_action: 'trap', filter_action: 'allow', filter: [{ syscall: 'read' }] };
  const withRule = (rule: unknown) => fileOf({ ...ok, filter: [{ syscall: 'read' }, rule] });
  const withCondition = (cond: unknown) => withRule({ syscall: 'ioctl', args: [{ index: 1, type: 'dword', op: 'eq', val: 1 }, cond] });
  const cond = { index: 0, type: 'dword', op: 'eq', val: 1 };
  const cases: [string, string, RegExp][] = [
    ['not JSON', '{"vmm": ', /^seccomp filter test\.json: not valid JSON: /],
    ['trailing comma', '{"vmm": {},}', /not valid JSON/],
    ['top level not an object', '[]', /top level \(line 1\): must be an object, not an array/],
    ['unknown category', json({ vmm: ok, api: ok, vcpu: ok, vmn: ok }), /unknown thread category "vmn" \(the categories are vmm, api, vcpu\)/],
    ['missing category', json({ vmm: ok, api: ok }), /no filter for the thread category "vcpu"/],
    ['filter not an object', json({ vmm: ok, api: ok, vcpu: 'allow' }), /vcpu \(line 1\): must be an object, not the string "allow"/],
    ['unknown key', fileOf({ ...ok, filter_actions: 'allow' }), /vmm \(line 1\): unknown key "filter_actions" \(did you mean "filter_action"\?\)/],
    ['missing key', fileOf({ default_action: 'trap', filter: [] }), /vmm \(line 1\): missing "filter_action"/],
    ['kill', fileOf({ ...ok, default_action: 'kill' }), /vmm\.default_action \(line 1\): "kill" is not a seccompiler action: write "kill_process" .* or "kill_thread"/],
    ['misspelt action', fileOf({ ...ok, default_action: 'alow' }), /unknown action "alow" \(did you mean "allow"\?\)/],
    ['errno without a number', fileOf({ ...ok, default_action: 'errno' }), /"errno" takes a number: \{"errno": N\}/],
    ['errno too big', fileOf({ ...ok, default_action: { errno: 65536 } }), /vmm\.default_action\.errno \(line 1\): must be an integer from 0 to 65535, not 65536/],
    ['errno negative', fileOf({ ...ok, default_action: { errno: -1 } }), /must be an integer from 0 to 65535, not -1/],
    ['errno a string', fileOf({ ...ok, default_action: { errno: '1' } }), /must be an integer from 0 to 65535, not the string "1"/],
    ['action object with two keys', fileOf({ ...ok, default_action: { errno: 1, trace: 1 } }), /vmm\.default_action \(line 1\): must be one of allow, /],
    ['same action twice', fileOf({ ...ok, default_action: 'allow' }), /filter_action is the same as default_action/],
    ['filter not an array', fileOf({ ...ok, filter: {} }), /vmm\.filter \(line 1\): must be an array, not an object/],
    ['unknown syscall', withRule({ syscall: 'opne' }), /vmm\.filter\[1\]\.syscall \(line 1\): "opne" is not an x86_64 system call \(did you mean "open"\?\)/],
    ['prototype name as syscall', withRule({ syscall: '__proto__' }), /"__proto__" is not an x86_64 system call/],
    ['32-bit only syscall', withRule({ syscall: '_llseek' }), /"_llseek" is not an x86_64 system call/],
    ['syscall not a string', withRule({ syscall: 2 }), /vmm\.filter\[1\]\.syscall \(line 1\): must be a string, not the number 2/],
    ['args not an array', withRule({ syscall: 'read', args: {} }), /vmm\.filter\[1\]\.args \(line 1\): must be an array/],
    ['comment not a string', withRule({ syscall: 'read', comment: 1 }), /vmm\.filter\[1\]\.comment \(line 1\): must be a string/],
    ['index out of range', withCondition({ ...cond, index: 6 }), /vmm\.filter\[1\]\.args\[1\]\.index \(line 1\): must be an integer from 0 to 5, not 6/],
    ['index fractional', withCondition({ ...cond, index: 1.5 }), /args\[1\]\.index .*not 1\.5/],
    ['index in exponent form', withCondition({ ...cond, index: 'EXP' }).replace('"EXP"', '1e0'), /args\[1\]\.index .*not 1e0/],
    ['type', withCondition({ ...cond, type: 'word' }), /args\[1\]\.type \(line 1\): must be "dword" \(4 bytes\) or "qword" \(8 bytes\), not "word"/],
    ['op', withCondition({ ...cond, op: 'eqq' }), /args\[1\]\.op \(line 1\): must be one of "eq", .* not "eqq" \(did you mean "eq"\?\)/],
    ['op object', withCondition({ ...cond, op: { masked: 1 } }), /args\[1\]\.op .*or \{"masked_eq": MASK\}, not an object/],
    ['mask not a number', withCondition({ ...cond, op: { masked_eq: 'x' } }), /args\[1\]\.op\.masked_eq .*not the string "x"/],
    ['dword val too big', withCondition({ ...cond, val: 2 ** 32 }), /args\[1\]\.val \(line 1\): 4294967296 does not fit in a dword \(32 bits\): use "type": "qword"/],
    ['dword mask too big', withCondition({ ...cond, op: { masked_eq: 2 ** 32 }, val: 0 }), /args\[1\]\.op\.masked_eq .*does not fit in a dword/],
    ['qword val too big', withCondition({ ...cond, type: 'qword', val: 2n ** 64n }), /args\[1\]\.val .*must be an integer from 0 to 18446744073709551615, not 18446744073709551616/],
    ['val negative', withCondition({ ...cond, val: -1 }), /args\[1\]\.val .*not -1/],
    ['missing val', withCondition({ index: 0, type: 'dword', op: 'eq' }), /args\[1\] \(line 1\): missing "val"/],
    ['unknown condition key', withCondition({ ...cond, value: 1 }), /args\[1\] \(line 1\): unknown key "value"/],
  ];
  test.each(cases)('%s', (_, text, message) => expect(compileError(text)).toMatch(message));

  test('errors name the line', () => {
    const text = JSON.stringify({ vmm: ok, api: ok, vcpu: { ...ok, filter: [{ syscall: 'read' }, { syscall: 'nope' }] } }, null, 2);
    const line = text.split('\n').findIndex((l) => l.includes('"nope"')) + 1;
    expect(compileError(text)).toContain(`vcpu.filter[1].syscall (line ${line}):`);
  });

  test('huge input is refused before it is read: file size, rule and condition counts, nesting', () => {
    expect(compileError(' '.repeat(MAX_FILTER_FILE_CHARS + 1))).toMatch(/larger than 1048576 characters/);
    const manyRules = fileOf({ ...ok, filter: Array.from({ length: 4097 }, () => ({ syscall: 'read' })) });
    expect(compileError(manyRules)).toMatch(/vmm\.filter \(line 1\): has 4097 entries; at most 4096/);
    expect(compileError(withRule({ syscall: 'read', args: Array.from({ length: 33 }, () => cond) }))).toMatch(/args \(line 1\): has 33 entries; at most 32/);
    const deep = `{"vmm": ${'['.repeat(100000)}${']'.repeat(100000)}}`;
    expect(compileError(deep)).toMatch(/nested 100001 levels deep/);
    expect(compileError('')).toMatch(/not valid JSON/);
  });

  test('accepted: comments, "args": null, repeated keys (the last counts), a u64 maximum, exact big values', () => {
    const text = `{"vmm": {"default_action": "allow", "default_action": "trap", "filter_action": "allow", "comment": "x",
      "filter": [{"syscall": "read", "args": null},
                 {"syscall": "getpid", "args": [{"index": 0, "type": "qword", "op": "eq", "val": 18446744073709551615, "comment": "max"},
                                                {"index": 1, "type": "qword", "op": "eq", "val": 9007199254740993}]}]},
      "api": {"default_action": "allow", "filter_action": "trap", "filter": []},
      "vcpu": {"default_action": "allow", "filter_action": "trap", "filter": []}}`;
    const q = compileSeccompilerJson(text, 'test.json').get('vmm')!;
    expect(runBpf(q, { nr: NR('read'), args: [1n] })).toBe(RET.allow);
    expect(runBpf(q, { nr: NR('getpid'), args: [U64_MAX, 9007199254740993n] })).toBe(RET.allow);
    // 2^53 + 1 read as a JS number would be 2^53: the exact value is compared.
    expect(runBpf(q, { nr: NR('getpid'), args: [U64_MAX, 9007199254740992n] })).toBe(RET.trap);
    expect(runBpf(q, { nr: NR('write') })).toBe(RET.trap);
  });

  test('missing categories, when allowed, have no program', () => {
    const m = compileSeccompilerJson(json({ vcpu: ok }), 'test.json', { allowMissingCategories: true });
    expect([...m.keys()]).toEqual(['vcpu']);
    expect([...compileSeccompilerJson(fileOf(ok), 'x').keys()]).toEqual([...THREAD_CATEGORIES]);
  });
});

/** Firecracker's own filter files, when FIRECRACKER_SECCOMP_JSON names them (path:path...). */
describe('Firecracker filter files', () => {
  const files = (process.env.FIRECRACKER_SECCOMP_JSON ?? '').split(':').filter(Boolean);
  (files.length > 0 ? test : test.skip)('compile, within the kernel\'s limits', () => {
    for (const f of files) {
      const programs = compileSeccompilerJson(fs.readFileSync(f, 'utf8'), path.basename(f));
      for (const [category, program] of programs) {
        checkProgram(program);
        console.log(`${path.basename(f)} ${category}: ${program.length / 8} instructions`);
      }
    }
  });
});

describe('compiled filters installed in a real process (one thread)', () => {
  const child = path.join(__dirname, '..', 'helpers', 'seccompiler-child.js');
  let dir: string;
  beforeEach(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fc-run-seccompiler-'))));
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));
  const run = (program: Buffer, probes: unknown[]) =>
    spawnSync(process.execPath, [child, program.toString('hex'), JSON.stringify(probes)], { encoding: 'utf8', timeout: 30_000 });
  const results = (r: ReturnType<typeof run>) => {
    expect(r.stderr).toBe('');
    expect([r.status, r.signal]).toEqual([0, null]);
    return JSON.parse(r.stdout) as string[];
  };
  test('installThreadFilter refuses what is not a program, before any system call', () => {
    for (const bytes of [0, 12, 4097 * 8]) expect(() => installThreadFilter(Buffer.alloc(bytes))).toThrow(/a BPF program is 1 to 4096 instructions of 8 bytes/);
  });
  const getpid = (...args: (bigint | number)[]) => ({ call: [String(NR('getpid')), ...[0, 1, 2].map((i) => String(args[i] ?? 0))] });

  test('an allow list: what matches runs, the rest fails with the default errno (EPERM)', () => {
    const cond = (index: number, type: string, op: unknown, val: bigint | number) => ({ index, type, op, val: BigInt(val) });
    const rules = [
      [cond(0, 'qword', 'eq', 0x100000005n)],
      [cond(0, 'dword', 'eq', 1), cond(1, 'qword', 'ge', 2n ** 32n), cond(2, 'qword', 'lt', 2n ** 33n)],
      [cond(0, 'dword', 'eq', 2), cond(1, 'dword', { masked_eq: 0xf0 }, 0x30)],
      [cond(0, 'dword', 'eq', 3), cond(1, 'qword', { masked_eq: 0xff00000000000000n }, 0x1200000000000000n)],
      [cond(0, 'dword', 'eq', 4), cond(1, 'dword', 'le', 10), cond(2, 'dword', 'gt', 0xfffffffe)],
      [cond(0, 'dword', 'eq', 6), cond(1, 'qword', 'ne', U64_MAX)],
    ];
    // What Node's main thread needs between the filter and the test's exit_group.
    const runtime = ['write', 'exit_group', 'futex', 'mmap', 'munmap', 'mprotect', 'madvise', 'brk', 'rt_sigprocmask'];
    const program = compile({
      default_action: { errno: 1 },
      filter_action: 'allow',
      filter: [...runtime.map((syscall) => ({ syscall })), ...rules.map((args) => ({ syscall: 'getpid', args }))],
    });
    const probes: [ReturnType<typeof getpid>, string][] = [
      [getpid(0x100000005n), 'ok'],
      [getpid(5), 'EPERM'], // same low half, other high half
      [getpid(0x200000005n), 'EPERM'],
      [getpid(1, 2n ** 32n, 0), 'ok'], // ge at the boundary
      [getpid(1, 2n ** 32n - 1n, 0), 'EPERM'],
      [getpid(1, 2n ** 32n, 2n ** 33n - 1n), 'ok'], // lt at the boundary
      [getpid(1, 2n ** 32n, 2n ** 33n), 'EPERM'],
      [getpid(2, 0x35), 'ok'], // masked_eq, dword
      [getpid(2, 0x45), 'EPERM'],
      [getpid(2, 0xffffffff00000035n), 'ok'], // a dword's high half does not count
      [getpid(3, 0x12ffffffffffffffn), 'ok'], // masked_eq, qword
      [getpid(3, 0x13ffffffffffffffn), 'EPERM'],
      [getpid(4, 10, 0xffffffff), 'ok'], // le, gt at the boundaries
      [getpid(4, 11, 0xffffffff), 'EPERM'],
      [getpid(4, 10, 0xfffffffe), 'EPERM'],
      [getpid(6, 0xffffffff), 'ok'],
      [getpid(6, U64_MAX), 'EPERM'],
      [{ call: [String(NR('getuid')), '0', '0', '0'] }, 'EPERM'], // not listed
    ];
    expect(results(run(program, probes.map(([p]) => p)))).toEqual(probes.map(([, want]) => want));
  });

  test('filter_action errno on fs calls: the filtered thread gets EPERM, the thread pool does not, a worker started after does', () => {
    const program = compile({ default_action: 'allow', filter_action: { errno: 1 }, filter: [{ syscall: 'mkdir' }, { syscall: 'mkdirat' }] });
    const probes = [{ mkdir: path.join(dir, 'main') }, { asyncMkdir: path.join(dir, 'pool') }, { workerMkdir: path.join(dir, 'worker') }];
    expect(results(run(program, probes))).toEqual(['EPERM', 'ok', 'EPERM']);
    expect(fs.readdirSync(dir)).toEqual(['pool']);
  });

  test.each([
    ['kill_process', 'kill_process'],
    ['trap', 'trap'],
  ])('%s ends the process with SIGSYS', (_, action) => {
    const program = compile({ default_action: 'allow', filter_action: action, filter: [{ syscall: 'getpid', args: [{ index: 0, type: 'qword', op: 'eq', val: 2n ** 40n }] }] });
    const r = run(program, [getpid(1), getpid(2n ** 40n)]);
    expect([r.signal, r.stdout]).toEqual(['SIGSYS', '']);
    const spared = run(program, [getpid(1), getpid(2n ** 40n + 1n)]);
    expect(results(spared)).toEqual(['ok', 'ok']);
  });

  test('trace without a tracer fails the call with ENOSYS; log lets it run', () => {
    const filter = (action: unknown) => compile({ default_action: 'allow', filter_action: action, filter: [{ syscall: 'getpid' }] });
    expect(results(run(filter({ trace: 3 }), [getpid(), { call: [String(NR('getppid')), '0', '0', '0'] }]))).toEqual(['ENOSYS', 'ok']);
    expect(results(run(filter('log'), [getpid()]))).toEqual(['ok']);
  });

  test('a long program with far jumps is accepted by the kernel and means what the interpreter says', () => {
    const { filter, probe } = bigFilter();
    const program = compile(filter);
    expect(program.length / 8).toBeGreaterThan(1500);
    expect(results(run(program, probe.map(([args]) => getpid(...args.map(BigInt)))))).toEqual(probe.map(([, denied]) => (denied ? 'EPERM' : 'ok')));
  });
});
