import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

/**
 * Every test runs under fc-run's seccomp allow-lists; this guard makes a seccomp kill of any
 * fc-run a test starts fail that test loudly, whatever the test itself checks. fc-run's SIGSYS
 * handler (native/sigsys.c) appends its line ("fc-run: killed by SIGSYS (seccomp): syscall N
 * (name) ...") to FC_RUN_SECCOMP_REPORT's file, which is set here, one per jest worker; after each
 * test, and after each file, a line there is a failure. A test that wants a kill starts its fc-run
 * with FC_RUN_SECCOMP_REPORT set to '' (or a file of its own).
 */
const report = path.join(os.tmpdir(), `fc-run-seccomp-report-${process.pid}`);
process.env.FC_RUN_SECCOMP_REPORT = report;

function check(when: string): void {
  let text = '';
  try {
    text = fs.readFileSync(report, 'utf8');
  } catch {
    return;
  }
  if (text === '') return;
  fs.writeFileSync(report, '');
  throw new Error(`an fc-run started ${when} was killed by its seccomp filter:\n${text}`);
}

afterEach(() => check('by this test'));
afterAll(() => check('by this file (beforeAll/afterAll or a test)'));
