"""Runs a command on a fresh pseudo-terminal, types KEYS once PROMPT appears, prints what the
terminal shows as it shows it and exits with the command's status. Usage: pty-drive.py PROMPT KEYS CMD...
KEYS accepts Python escapes (\\r, \\x01). PTY_DEADLINE (seconds, default 90) bounds the run."""
import os, pty, select, sys, time

prompt, keys, cmd = sys.argv[1].encode(), sys.argv[2].encode().decode('unicode_escape').encode('latin1'), sys.argv[3:]
pid, fd = pty.fork()
if pid == 0:
    os.execvp(cmd[0], cmd)
out, sent, deadline = b'', False, time.time() + float(os.environ.get('PTY_DEADLINE', '90'))
while time.time() < deadline:
    ready, _, _ = select.select([fd], [], [], 0.1)
    if ready:
        try:
            data = os.read(fd, 4096)
        except OSError:
            break
        if not data:
            break
        out += data
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    if not sent and prompt in out:
        os.write(fd, keys)
        sent = True
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
