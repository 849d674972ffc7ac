/**
 * A classic-BPF interpreter for seccomp programs (the instructions fc-run's compilers emit), and
 * the kernel's static checks on a program (bpf_check_classic: every jump lands inside the
 * program, the last instruction returns, loads read whole words of struct seccomp_data).
 */
export interface SeccompData {
  nr: number;
  arch?: number;
  args?: bigint[];
}

const AUDIT_ARCH_X86_64 = 0xc000003e;

function seccompData(d: SeccompData): Buffer {
  const mem = Buffer.alloc(64);
  mem.writeInt32LE(d.nr | 0, 0);
  mem.writeUInt32LE(d.arch ?? AUDIT_ARCH_X86_64, 4);
  (d.args ?? []).forEach((a, i) => mem.writeBigUInt64LE(BigInt.asUintN(64, a), 16 + i * 8));
  return mem;
}

interface Insn {
  code: number;
  jt: number;
  jf: number;
  k: number;
}

export function decode(program: Buffer): Insn[] {
  const out: Insn[] = [];
  for (let i = 0; i < program.length; i += 8) {
    out.push({ code: program.readUInt16LE(i), jt: program[i + 2], jf: program[i + 3], k: program.readUInt32LE(i + 4) });
  }
  return out;
}

/** Returns the SECCOMP_RET_* value (unsigned) the program gives for this call. */
export function runBpf(program: Buffer, data: SeccompData): number {
  const mem = seccompData(data);
  const code = decode(program);
  let a = 0;
  for (let pc = 0; pc < code.length; pc++) {
    const { code: op, jt, jf, k } = code[pc];
    switch (op) {
      case 0x20: // ld w abs
        a = mem.readUInt32LE(k);
        break;
      case 0x54: // and k
        a = (a & k) >>> 0;
        break;
      case 0x05: // ja
        pc += k;
        break;
      case 0x15:
        pc += a === k ? jt : jf;
        break;
      case 0x25:
        pc += a > k ? jt : jf;
        break;
      case 0x35:
        pc += a >= k ? jt : jf;
        break;
      case 0x45:
        pc += (a & k) !== 0 ? jt : jf;
        break;
      case 0x06:
        return k >>> 0;
      case 0x16:
        return a >>> 0;
      default:
        throw new Error(`unexpected BPF code 0x${op.toString(16)} at ${pc}`);
    }
  }
  throw new Error('ran off the end of the program');
}

/** The kernel's checks; throws on the first problem. */
export function checkProgram(program: Buffer): void {
  const code = decode(program);
  if (code.length === 0 || code.length > 4096) throw new Error(`length ${code.length}`);
  code.forEach(({ code: op, jt, jf, k }, pc) => {
    const left = code.length - pc - 1;
    if (op === 0x05 && k >= left) throw new Error(`ja out of the program at ${pc}`);
    if ([0x15, 0x25, 0x35, 0x45].includes(op) && (jt >= left || jf >= left)) throw new Error(`jump out of the program at ${pc}`);
    if (op === 0x20 && (k % 4 !== 0 || k >= 64)) throw new Error(`load at ${k}`);
  });
  if (![0x06, 0x16].includes(code[code.length - 1].code)) throw new Error('the last instruction does not return');
}
