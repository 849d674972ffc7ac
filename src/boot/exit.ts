/**
 * Ends the process with `code`, once no thread fc-run started is still loading (see
 * vmm/threads.ts). A module of its own so that bin/fc-run's way out does not load the planner.
 */
export function exitProcess(code: number): void {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  (require('../vmm/threads') as typeof import('../vmm/threads')).exitProcess(code);
}
