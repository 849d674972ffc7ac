/** @type {import('jest').Config} */
module.exports = {
  testEnvironment: 'node',
  roots: ['<rootDir>/test'],
  testMatch: ['**/*.test.ts'],
  transform: { '^.+\\.ts$': ['ts-jest', { tsconfig: 'tsconfig.json' }] },
  testTimeout: 30000,
  // A seccomp kill of any fc-run a test starts fails the test (test/helpers/seccomp-guard.ts).
  setupFilesAfterEnv: ['<rootDir>/test/helpers/seccomp-guard.ts'],
  // Tests close what they open (afterEach hooks); this is the safety net: a socket left open by a
  // failing test must give a red run, not a run that waits until CI's time limit.
  forceExit: true,
};
