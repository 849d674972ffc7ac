import type * as Crypto from 'node:crypto';
import * as fs from 'node:fs';
import type { Vm } from '../kvm/kvm';
import { GuestMemory, PAGE_SIZE } from '../kvm/memory';

/**
 * Which guest pages changed since the last snapshot, for Diff snapshots (`track_dirty_pages`).
 *
 * Two ways, chosen at launch:
 * - KVM's dirty log, when it passes a self-test on this host (src/kvm/dirty-log.ts): the pages
 *   the guest wrote, joined with the pages the VMM may have written (every buffer a device may
 *   write and the used rings, recorded by the virtqueues: GuestMemory.markDirty), which the log
 *   cannot see. Nothing is read or hashed.
 * - Otherwise comparison: each page is remembered by a 128-bit digest (SHA-256, truncated) taken
 *   when a snapshot is written, and a Diff holds the pages whose digest differs. Exact whoever
 *   wrote the page; costs 16 bytes per 4 KiB page (8 MiB for 2 GiB) and a pass over guest memory
 *   at each snapshot.
 * Before any snapshot (and without a memory file it was restored from) the baseline is zeroed
 * memory: the first Diff holds every page that holds data, either way.
 */
const DIGEST = 16;
let zeroDigest: Buffer | undefined;
/** The digest of a zeroed page, computed on first use (loading this module does not load node:crypto). */
function zeroPageDigest(): Buffer {
  return (zeroDigest ??= digestPage(new Uint8Array(PAGE_SIZE)));
}

export type DirtyMethod =
  | 'no earlier snapshot: every page that holds data'
  | 'compared with the last snapshot'
  | 'compared with the restored memory file'
  | "KVM's dirty log and the VMM's own writes";

/** KVM's dirty log, on for these slots (one per memory region, in order), or why it is not used. */
export type DirtyLogChoice = { vm: Vm; slots: { slot: number; size: number }[] } | { problem: string };

export interface ChangedPages {
  /** One byte per page per region, 1 = changed. */
  pages: Uint8Array[];
  count: number;
  method: DirtyMethod;
  /** Digests of memory now, to become the baseline once the snapshot is written (comparison only). */
  digests?: Buffer[];
}

let hash: typeof Crypto.hash | undefined;
function digestPage(bytes: Uint8Array): Buffer {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  hash ??= (require('node:crypto') as typeof Crypto).hash;
  return hash('sha256', bytes, 'buffer').subarray(0, DIGEST);
}

/** Digests of every page of guest memory (a page that holds no data gets the zero page's). */
export function digestMemory(mem: GuestMemory): Buffer[] {
  return mem.describe().map((r, index) => {
    const pages = r.size / PAGE_SIZE;
    const populated = mem.populatedPages(index);
    const out = Buffer.alloc(pages * DIGEST);
    for (let p = 0; p < pages; p++) {
      const d = populated[p] ? digestPage(mem.regionBytes(index, p * PAGE_SIZE, PAGE_SIZE)) : zeroPageDigest();
      d.copy(out, p * DIGEST);
    }
    return out;
  });
}

export class DirtyPages {
  private digests: Buffer[] | undefined;
  /** Whether there is a snapshot or restored memory file to compare with (the log then applies). */
  private baselined: boolean;

  /**
   * `restoredFrom`: an open memory file the VM was restored from (its pages are the baseline until
   * the first snapshot; the tracker closes it then). Without it, the baseline is zeroed memory.
   */
  constructor(
    private restoredFrom?: number,
    private readonly log?: { vm: Vm; slots: { slot: number; size: number }[] },
  ) {
    this.baselined = restoredFrom !== undefined;
    if (log && restoredFrom !== undefined) this.closeRestored(); // the log starts at the restore
  }

  private closeRestored(): void {
    if (this.restoredFrom === undefined) return;
    fs.closeSync(this.restoredFrom);
    this.restoredFrom = undefined;
  }

  /**
   * Pages written since the last snapshot that was written, by the guest (KVM's log) or the VMM.
   * Reading KVM's log clears it, so what is read is kept here until a snapshot holding it is
   * written: a snapshot that fails loses nothing for the next one.
   */
  private pending: Uint8Array[] | undefined;

  private drainLog(mem: GuestMemory): Uint8Array[] {
    const log = this.log!;
    const pending = (this.pending ??= log.slots.map((s) => new Uint8Array(Math.ceil(s.size / PAGE_SIZE))));
    log.slots.forEach((s, i) => {
      const guest = log.vm.dirtyLog(s.slot, s.size);
      const vmm = mem.takeDirty(i);
      const into = pending[i];
      for (let p = 0; p < into.length; p++) into[p] |= guest[p] | vmm[p];
    });
    return pending.map((bits) => bits.slice());
  }

  /** The baseline's digests, computed when first needed. */
  private baseline(mem: GuestMemory): Buffer[] {
    if (this.digests) return this.digests;
    const regions = mem.describe();
    if (this.restoredFrom === undefined) return regions.map((r) => Buffer.concat(Array.from({ length: r.size / PAGE_SIZE }, zeroPageDigest)));
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

  /** What the digests are compared with. */
  private get method(): DirtyMethod {
    if (this.digests) return 'compared with the last snapshot';
    return this.restoredFrom === undefined ? 'no earlier snapshot: every page that holds data' : 'compared with the restored memory file';
  }

  /** The pages that differ from the baseline. */
  changed(mem: GuestMemory): ChangedPages {
    if (this.log && this.baselined) {
      const pages = this.drainLog(mem);
      const count = pages.reduce((n, bits) => n + bits.reduce((m, b) => m + b, 0), 0);
      return { pages, count, method: "KVM's dirty log and the VMM's own writes" };
    }
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

  /**
   * A snapshot of memory as it is now was written (the VM still paused): it is the new baseline.
   * `changed` is what the snapshot's changed() said, if it was a Diff.
   */
  snapshotWritten(mem: GuestMemory, changed?: ChangedPages): void {
    this.baselined = true;
    this.closeRestored();
    if (this.log) {
      // Everything written up to now is in this snapshot: start again from nothing.
      this.drainLog(mem);
      this.pending = undefined;
      return;
    }
    this.digests = changed?.digests ?? digestMemory(mem);
  }
}
