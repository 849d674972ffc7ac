import * as fs from 'node:fs';
import { FcRunError } from '../errors';
import { PACKAGE_VERSION } from '../package-root';
import type { Vm } from '../kvm/kvm';
import type { GuestMemory } from '../kvm/memory';
import { saveVmState } from '../kvm/snapshot-state';
import type { VcpuState } from '../kvm/state-abi';
import type { MicroVm } from './microvm';
import { VcpuRequest } from './shared';
import { encodeSnapshotFile } from './snapshot-file';
import { DirtyMethod, DirtyPages } from './dirty-pages';
import { DEVICES_STATE_FORMAT } from './devices-state';
import { commitPair, MemoryFileReport, PreparedFile, prepareFile, writeAll, writeMemoryFile } from './snapshot-memory';
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
  /** Files a snapshot may not be written over (the VM's drives, this process's own output files). */
  protectedPaths: { path: string; what: string }[];
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
    const taken = s.protectedPaths.find((p) => p.path === target || sameFile(p.path, target));
    if (taken) throw new FcRunError('snapshot-path', `${target} is ${taken.what}: a snapshot must not be written over it`);
  }
  const vcpus = (await s.micro.requestFromVcpus(VcpuRequest.SAVE_STATE)) as VcpuState[];
  const vm = saveVmState(s.vm);
  const devices = s.vmmThread ? await s.vmmThread.saveDevices() : { format: DEVICES_STATE_FORMAT, devices: [], mmds: null };
  const legacy = s.micro.saveLegacyState();
  const bytes = encodeSnapshotFile({
    header: {
      fcRunVersion: PACKAGE_VERSION,
      planHash: s.planHash,
      createdAt: new Date().toISOString(),
      snapshotType: req.type,
      vcpuCount: s.plan.vcpus.count,
      memory: { regions: s.plan.memory.regions },
      cpuTemplate: s.plan.cpuTemplate.kind === 'static' && s.plan.cpuTemplate.name ? s.plan.cpuTemplate.name : s.plan.cpuTemplate.kind,
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
  // Both files are written beside their targets first and renamed into place only when both are
  // complete: a failure leaves the old pair as it was.
  const memTmp = prepareFile(req.memFilePath, 'memory file');
  let stateTmp: PreparedFile | undefined;
  let memory: MemoryFileReport;
  try {
    stateTmp = prepareFile(req.snapshotPath, 'snapshot file');
    memory = writeMemoryFile(s.mem, memTmp, { only: changed?.pages });
    writeAll(stateTmp, bytes);
    commitPair(memTmp, stateTmp);
  } finally {
    memTmp.abort();
    stateTmp?.abort();
  }
  s.dirty?.snapshotWritten(s.mem, changed);
  return {
    snapshotPath: req.snapshotPath,
    stateBytes: bytes.length,
    memory,
    ms: Number(process.hrtime.bigint() - t0) / 1e6,
    ...(changed ? { diff: { pages: changed.count, method: changed.method } } : {}),
  };
}
