import { describeInternalError } from '../../src/vmm/registers';

/** A kvm_run exit union as KVM fills it for KVM_EXIT_INTERNAL_ERROR. */
function exitArea(fill: (v: DataView) => void): DataView {
  const v = new DataView(new ArrayBuffer(256));
  fill(v);
  return v;
}

describe('KVM internal errors', () => {
  test('an emulation failure shows the instruction bytes KVM could not emulate, and the data words', () => {
    const v = exitArea((d) => {
      d.setUint32(0, 1, true); // KVM_INTERNAL_ERROR_EMULATION
      d.setUint32(4, 3, true); // ndata: flags + 16 bytes of instruction
      d.setBigUint64(8, 1n, true); // KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES
      d.setUint8(16, 3); // insn_size
      [0x0f, 0xc7, 0x0e].forEach((b, i) => d.setUint8(17 + i, b)); // cmpxchg16b (%rsi)
    });
    const text = describeInternalError(v, 0);
    expect(text).toMatch(/^KVM internal error: emulation failure \(1\); instruction bytes: 0f c7 0e; data: 0x1 /);
  });

  test('without the instruction-bytes flag, or for other suberrors, only the suberror and data words', () => {
    const noFlag = exitArea((d) => {
      d.setUint32(0, 1, true);
      d.setUint32(4, 0, true);
    });
    expect(describeInternalError(noFlag, 0)).toBe('KVM internal error: emulation failure (1)');
    const other = exitArea((d) => {
      d.setUint32(0, 3, true);
      d.setUint32(4, 2, true);
      d.setBigUint64(8, 0x80000b0en, true);
      d.setBigUint64(16, 0x31n, true);
    });
    expect(describeInternalError(other, 0)).toBe('KVM internal error: delivery event failed (3); data: 0x80000b0e 0x31');
  });

  test('a data count beyond the 16 words the structure holds is capped, not read past', () => {
    const v = exitArea((d) => {
      d.setUint32(0, 99, true);
      d.setUint32(4, 0xffffffff, true);
    });
    expect(describeInternalError(v, 0).match(/0x0/g)).toHaveLength(16);
  });
});
