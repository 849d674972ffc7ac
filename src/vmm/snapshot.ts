import * as fs from 'node:fs';
import { FcRunError } from '../errors';
import { PACKAGE_VERSION } from '../package-root';
import type { Vm } from '../kvm/kvm';
import type { GuestMemory } from '../kvm/memory';
import { saveVmState } from '../kvm/snapshot-state';
import type { VcpuState } from '../kvm/state-abi';
import type { MicroVm } from './microvm';
import { VcpuRequest } from './shared';
import { writeVmSnapshot } from './snapshot-file';
import { digestMemory, DirtyMethod, DirtyPages } from './dirty-pages';
import { MemoryFileReport, writeFileAtomically, writeMemoryFile } from './snapshot-memory';
import type { VmmThread } from './vmm-thread';

/** PUT /snapshot/create, in fc-run's terms. */
export interface SnapshotRequest {
  snapshotPath: string;
  memFilePath: string;
  type: 'Full' | 'Diff';
}

export interface SnapshotReport {
  snapshotPath: string;
  stateBytes: number;
  memory: MemoryFileReport;
  ms: number;
  /** A Diff: how many pages it holds and how they were found. */
  diff?: { pages: number; method: DirtyMethod };
}

/** The plan as a snapshot records it: the parts restore needs to check, and the whole plan. */
export interface SnapshotPlan {
  vcpus: { count: number };
  memory: { regions: { start: number; size: number }[] };
  cpuTemplate: { kind: string; name?: string };
  devices: { kind: string; id: string }[];
}

export interface SnapshotSubject {
  micro: MicroVm;
  vm: Vm;
  mem: GuestMemory;
  vmmThread?: VmmThread;
  plan: SnapshotPlan;
  planHash: string;
  /** Files the VM writes to (its drives): a snapshot may not be written over them. */
  drivePaths: string[];
  /** With `track_dirty_pages`: what changed since the last snapshot (Diff snapshots need it). */
  dirty?: DirtyPages;
}

function sameFile(a: string, b: string): boolean {
  try {
    const x = fs.statSync(a);
    const y = fs.statSync(b);
    return x.dev === y.dev && x.ino === y.ino;
  } catch {
    return false;
  }
}

/**
 * Writes a snapshot of a paused VM: every vCPU's state (each vCPU thread reads its own), the VM's
 * interrupt controllers, PIT and clock, every device's state, and guest memory (sparse). Both
 * files are written beside their targets and renamed into place, so a failure leaves the old
 * files as they were.
 */
export async function createSnapshot(s: SnapshotSubject, req: SnapshotRequest): Promise<SnapshotReport> {
  const t0 = process.hrtime.bigint();
  if (!s.micro.isPaused) throw new FcRunError('vm-not-paused', 'the microVM must be paused before a snapshot is taken: PATCH /vm {"state": "Paused"} first');
  if (req.type === 'Diff' && !s.dirty) throw new FcRunError('snapshot-diff', 'a Diff snapshot needs "track_dirty_pages": true in the spec\'s machine-config (fc-run then remembers what each snapshot held); take a Full snapshot');
  if (req.snapshotPath === req.memFilePath || sameFile(req.snapshotPath, req.memFilePath)) throw new FcRunError('snapshot-path', 'snapshot_path and mem_file_path must be two different files');
  for (const target of [req.snapshotPath, req.memFilePath]) {
    const drive = s.drivePaths.find((d) => sameFile(d, target));
    if (drive) throw new FcRunError('snapshot-path', `${target} is the VM's drive ${drive}: a snapshot must not be written over a disk`);
  }
  const vcpus = (await s.micro.requestFromVcpus(VcpuRequest.SAVE_STATE)) as VcpuState[];
  const vm = saveVmState(s.vm);
  const devices = s.vmmThread ? await s.vmmThread.saveDevices() : {};
  const legacy = s.micro.saveLegacyState();
  const bytes = writeVmSnapshot({
    header: {
      fcRunVersion: PACKAGE_VERSION,
      planHash: s.planHash,
      createdAt: new Date().toISOString(),
      snapshotType: req.type,
      vcpuCount: s.plan.vcpus.count,
      memory: { regions: s.plan.memory.regions },
      cpuTemplate: s.plan.cpuTemplate.name ?? s.plan.cpuTemplate.kind,
      devices: s.plan.devices.map((d) => ({ kind: d.kind, id: d.id })),
      plan: s.plan,
    },
    vcpus,
    vm,
    devices,
    legacy,
  });
  // A Diff holds the pages that changed since the last snapshot; with tracking, every snapshot
  // becomes the baseline for the next once both files are written.
  const changed = req.type === 'Diff' ? s.dirty!.changed(s.mem) : undefined;
  const memory = writeMemoryFile(s.mem, req.memFilePath, { only: changed?.pages });
  writeFileAtomically(req.snapshotPath, 'snapshot file', (fd) => {
    let done = 0;
    while (done < bytes.length) done += fs.writeSync(fd, bytes, done, bytes.length - done);
  });
  if (s.dirty) s.dirty.snapshotWritten(changed?.digests ?? digestMemory(s.mem));
  return {
    snapshotPath: req.snapshotPath,
    stateBytes: bytes.length,
    memory,
    ms: Number(process.hrtime.bigint() - t0) / 1e6,
    ...(changed ? { diff: { pages: changed.count, method: changed.method } } : {}),
  };
}
