import { hash } from 'node:crypto';
import * as fs from 'node:fs';
import { GuestMemory, PAGE_SIZE } from '../kvm/memory';

/**
 * Which guest pages changed since the last snapshot, for Diff snapshots (`track_dirty_pages`).
 *
 * fc-run finds them by comparison, not with KVM's dirty log: the log only sees writes the guest
 * makes through KVM, not the VMM's own writes into guest memory (virtio buffers, block reads), and
 * it has been seen to come back empty on an instruction-emulating KVM that reports the capability.
 * A comparison is exact whoever wrote the page. Each page is remembered by a 128-bit digest
 * (SHA-256, truncated) taken when a snapshot is written; a Diff holds the pages whose digest
 * differs. The digests cost 16 bytes per 4 KiB page (8 MiB for 2 GiB) and a pass over guest memory
 * at each snapshot; a VM without `track_dirty_pages` pays nothing.
 */
const DIGEST = 16;
const ZERO_DIGEST = hash('sha256', Buffer.alloc(PAGE_SIZE), 'buffer').subarray(0, DIGEST);

export type DirtyMethod = 'no earlier snapshot: every page that holds data' | 'compared with the last snapshot' | 'compared with the restored memory file';

export interface ChangedPages {
  /** One byte per page per region, 1 = changed. */
  pages: Uint8Array[];
  count: number;
  method: DirtyMethod;
  /** Digests of memory now, to become the baseline once the snapshot is written. */
  digests: Buffer[];
}

function digestPage(bytes: Uint8Array): Buffer {
  return hash('sha256', bytes, 'buffer').subarray(0, DIGEST);
}

/** Digests of every page of guest memory (a page that holds no data gets the zero page's). */
export function digestMemory(mem: GuestMemory): Buffer[] {
  return mem.describe().map((r, index) => {
    const pages = r.size / PAGE_SIZE;
    const populated = mem.populatedPages(index);
    const out = Buffer.alloc(pages * DIGEST);
    for (let p = 0; p < pages; p++) {
      const d = populated[p] ? digestPage(mem.regionBytes(index, p * PAGE_SIZE, PAGE_SIZE)) : ZERO_DIGEST;
      d.copy(out, p * DIGEST);
    }
    return out;
  });
}

export class DirtyPages {
  private digests: Buffer[] | undefined;
  private method: DirtyMethod;

  /**
   * `restoredFrom`: an open memory file the VM was restored from (its pages are the baseline until
   * the first snapshot; the tracker closes it then). Without it, the baseline is memory at start.
   */
  constructor(private restoredFrom?: number) {
    this.method = restoredFrom === undefined ? 'no earlier snapshot: every page that holds data' : 'compared with the restored memory file';
  }

  /** The baseline's digests, computed when first needed. */
  private baseline(mem: GuestMemory): Buffer[] {
    if (this.digests) return this.digests;
    const regions = mem.describe();
    if (this.restoredFrom === undefined) return regions.map((r) => Buffer.concat(Array.from({ length: r.size / PAGE_SIZE }, () => ZERO_DIGEST)));
    const fd = this.restoredFrom;
    const buf = Buffer.alloc(1 << 20);
    let fileOffset = 0;
    return regions.map((r) => {
      const out = Buffer.alloc((r.size / PAGE_SIZE) * DIGEST);
      for (let off = 0; off < r.size; off += buf.length) {
        const len = Math.min(buf.length, r.size - off);
        let got = 0;
        while (got < len) {
          const n = fs.readSync(fd, buf, got, len - got, fileOffset + off + got);
          if (n === 0) break;
          got += n;
        }
        buf.fill(0, got, len);
        for (let p = 0; p < len; p += PAGE_SIZE) digestPage(buf.subarray(p, p + PAGE_SIZE)).copy(out, ((off + p) / PAGE_SIZE) * DIGEST);
      }
      fileOffset += r.size;
      return out;
    });
  }

  /** The pages that differ from the baseline. */
  changed(mem: GuestMemory): ChangedPages {
    const base = this.baseline(mem);
    const now = digestMemory(mem);
    let count = 0;
    const pages = now.map((d, i) => {
      const n = d.length / DIGEST;
      const bits = new Uint8Array(n);
      for (let p = 0; p < n; p++) {
        if (d.compare(base[i], p * DIGEST, (p + 1) * DIGEST, p * DIGEST, (p + 1) * DIGEST) !== 0) {
          bits[p] = 1;
          count++;
        }
      }
      return bits;
    });
    return { pages, count, method: this.method, digests: now };
  }

  /** A snapshot holding memory as `digests` describe it was written: it is the new baseline. */
  snapshotWritten(digests: Buffer[]): void {
    this.digests = digests;
    this.method = 'compared with the last snapshot';
    if (this.restoredFrom !== undefined) {
      fs.closeSync(this.restoredFrom);
      this.restoredFrom = undefined;
    }
  }
}
