import type { VmState } from './rundir';
import { FleetSettings, wantsRestart } from './settings';

/** What the directory asks for, one entry per id. */
export type Desired =
  | { kind: 'valid'; id: string; spec: string; planHash: string; vcpus: number; memMib: number; settings: FleetSettings }
  | { kind: 'invalid'; id: string; spec: string; problem: string };

/** A VM the supervisor knows about: its remembered state plus how it came to stop, if it did. */
export interface Known extends VmState {
  /** Set while or after the supervisor (or `fc-run stop`) stopped it: no restart policy applies. */
  stoppedBy?: 'supervisor' | 'user';
}

export type Action =
  | { kind: 'start'; id: string; why: 'new' | 'changed' | 'restart' | 'replaced' }
  | { kind: 'stop'; id: string; why: 'changed' | 'removed' }
  | { kind: 'forget'; id: string }
  | { kind: 'skip'; id: string; spec: string; problem: string; running: boolean };

/**
 * Decides what to do so the host matches the directory. Pure: the supervisor runs the actions.
 * The rules, per id:
 * - a valid spec without a VM is started; a running VM whose plan hash changed is stopped and
 *   then started with the new spec; a VM whose spec is gone is stopped, then forgotten;
 * - an invalid spec never stops anything: it is skipped (and reported) until it is fixed;
 * - a VM that exited by itself is started again when its restart policy says so and its backoff
 *   has passed; one that `fc-run stop` stopped stays down until its spec changes (`holds`).
 */
export function reconcile(desired: ReadonlyMap<string, Desired>, known: ReadonlyMap<string, Known>, holds: ReadonlyMap<string, string>, now: number): Action[] {
  const actions: Action[] = [];
  const ids = [...new Set([...desired.keys(), ...known.keys()])].sort();
  for (const id of ids) {
    const want = desired.get(id);
    const vm = known.get(id);
    const live = vm !== undefined && (vm.state === 'running' || vm.state === 'starting');
    if (want?.kind === 'invalid') {
      actions.push({ kind: 'skip', id, spec: want.spec, problem: want.problem, running: live || vm?.state === 'stopping' });
      continue;
    }
    if (!want) {
      if (!vm) continue;
      if (live) actions.push({ kind: 'stop', id, why: 'removed' });
      else if (vm.state !== 'stopping') actions.push({ kind: 'forget', id });
      continue;
    }
    const held = holds.get(id) === want.planHash;
    if (!vm) {
      if (!held) actions.push({ kind: 'start', id, why: 'new' });
      continue;
    }
    if (vm.state === 'stopping') continue;
    const changed = vm.planHash !== want.planHash;
    if (live) {
      if (changed) actions.push({ kind: 'stop', id, why: 'changed' });
      continue;
    }
    // Exited, waiting for its backoff, or held.
    if (changed) {
      if (!held) actions.push({ kind: 'start', id, why: 'changed' });
      continue;
    }
    if (held || vm.stoppedBy === 'user') continue;
    if (vm.stoppedBy === 'supervisor') {
      actions.push({ kind: 'start', id, why: 'replaced' });
      continue;
    }
    if (!wantsRestart(want.settings.restart, vm.lastExit?.code)) continue;
    if (vm.nextStartAt === undefined || now >= vm.nextStartAt) actions.push({ kind: 'start', id, why: 'restart' });
  }
  return actions;
}
