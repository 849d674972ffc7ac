import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { openSerialOutput, writeSerialOutput } from '../../src/vmm/serial-output';
import { sys, F_GETFL, O_NONBLOCK } from '../../src/kvm/libc';
import { Workspace } from '../helpers/specs';

/** Where guest serial output goes (--serial-out): never a blocking write, never a blocking open. */
let ws: Workspace;
beforeAll(() => (ws = new Workspace()));
afterAll(() => ws.remove());

describe('openSerialOutput', () => {
  test('"none" discards; a missing file is created and appended to, non-blocking', () => {
    expect(openSerialOutput('none')).toEqual({ fd: -1, owned: false });
    const file = path.join(ws.dir, 'console.log');
    fs.writeFileSync(file, 'before\n');
    const out = openSerialOutput(file);
    expect(out.owned).toBe(true);
    expect(sys.fcntl(out.fd, F_GETFL, 0) & O_NONBLOCK).toBe(O_NONBLOCK);
    expect(writeSerialOutput(out.fd, Buffer.from('after\n'))).toBe(6);
    fs.closeSync(out.fd);
    expect(fs.readFileSync(file, 'utf8')).toBe('before\nafter\n');
  });

  test('a named pipe nobody reads opens at once; once full, writes take nothing (0) instead of blocking', () => {
    const fifo = path.join(ws.dir, 'console.fifo');
    expect(spawnSync('mkfifo', [fifo]).status).toBe(0);
    const out = openSerialOutput(fifo);
    let total = 0;
    for (let n; (n = writeSerialOutput(out.fd, Buffer.alloc(65536, 0x61))) > 0; ) total += n;
    expect(total).toBeGreaterThan(0);
    expect(writeSerialOutput(out.fd, Buffer.from('x'))).toBe(0);
    fs.closeSync(out.fd);
  });

  test('a directory, a missing parent or a socket is refused with a clear error', () => {
    expect(() => openSerialOutput(ws.dir)).toThrow(/cannot open --serial-out .*: EISDIR/);
    expect(() => openSerialOutput(path.join(ws.dir, 'no', 'such'))).toThrow(/cannot open --serial-out .*: ENOENT/);
    // A listening Unix socket that is not fc-run's stdout or stderr.
    const sock = path.join(ws.dir, 'listening.sock');
    const listener = spawnSync('python3', ['-c', `import socket; s = socket.socket(socket.AF_UNIX); s.bind(${JSON.stringify(sock)})`]);
    expect(listener.status).toBe(0);
    expect(() => openSerialOutput(sock)).toThrow(/cannot open --serial-out .*: a socket \(fc-run writes to a regular file/);
  });

  test('an fd that is gone reads as -1 (drop), not as an exception', () => {
    expect(writeSerialOutput(987654, Buffer.from('x'))).toBe(-1);
  });

  test('stdout as a pipe: written through a non-blocking file description of fc-run\'s own, the one it was given left blocking; as a socket: made non-blocking', () => {
    // A child whose stdout is a pipe: it opens its serial output and reports both descriptions' flags.
    const code = `
      const ts = require('typescript');
      require.extensions['.ts'] = (m, f) => m._compile(ts.transpileModule(require('fs').readFileSync(f, 'utf8'), { fileName: f, compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022 } }).outputText, f);
      const { openSerialOutput } = require(${JSON.stringify(path.resolve(__dirname, '../../src/vmm/serial-output'))});
      const { sys, F_GETFL, O_NONBLOCK } = require(${JSON.stringify(path.resolve(__dirname, '../../src/kvm/libc'))});
      const out = openSerialOutput(undefined);
      const named = ['/dev/stdout', '/proc/self/fd/2'].map((f) => { try { return openSerialOutput(f); } catch (e) { return e.message; } });
      process.stderr.write(JSON.stringify({ fd: out.fd, own: (sys.fcntl(out.fd, F_GETFL, 0) & O_NONBLOCK) !== 0, stdout: (sys.fcntl(1, F_GETFL, 0) & O_NONBLOCK) !== 0, named }));
    `;
    const cwd = path.resolve(__dirname, '../..');
    // Through a shell pipeline: a real pipe (Node's own stdio pipes are socket pairs).
    const piped = spawnSync('sh', ['-c', `"${process.execPath}" -e "$CODE" | cat`], { cwd, env: { ...process.env, CODE: code }, encoding: 'utf8' });
    expect(piped.status).toBe(0);
    const seen = JSON.parse(piped.stderr);
    expect(seen.fd).not.toBe(1);
    expect(seen.own).toBe(true);
    expect(seen.stdout).toBe(false);
    // Named by path, a pipe is opened again (fc-run's own description, closed at exit).
    expect(seen.named[0].owned).toBe(true);
    // A socket (as Node's child stdio, or journald's stream) cannot be opened again: it is made non-blocking itself.
    const socket = spawnSync(process.execPath, ['-e', code], { cwd, stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8' });
    expect(socket.status).toBe(0);
    // Named by path (/dev/stdout, /proc/self/fd/2), a socket stdout or stderr is written through
    // that fd, which stays open: no path can open a socket.
    expect(JSON.parse(socket.stderr)).toEqual({ fd: 1, own: true, stdout: true, named: [{ fd: 1, owned: false }, { fd: 2, owned: false }] });
  });
});
