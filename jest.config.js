/** @type {import('jest').Config} */
module.exports = {
  testEnvironment: 'node',
  roots: ['<rootDir>/test'],
  testMatch: ['**/*.test.ts'],
  transform: { '^.+\\.ts$': ['ts-jest', { tsconfig: 'tsconfig.json' }] },
  testTimeout: 30000,
  // Tests close what they open (afterEach hooks); this is the safety net: a socket left open by a
  // failing test must give a red run, not a run that waits until CI's time limit.
  forceExit: true,
};
