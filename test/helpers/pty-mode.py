"""Runs a command on a fresh pseudo-terminal (its stdin, stdout and stderr) until it ends, or
SIGTERM after PTY_DEADLINE seconds (default 30); prints what the terminal showed, then one line
"tty: <exit status> canonical|raw echo|noecho": the terminal's mode once the command is gone.
Usage: pty-mode.py CMD..."""
import os, pty, select, sys, termios, time

m, s = pty.openpty()
name = os.ttyname(s)
pid = os.fork()
if pid == 0:
    os.setsid()
    os.close(m)
    fd = os.open(name, os.O_RDWR)
    for i in (0, 1, 2):
        os.dup2(fd, i)
    os.execvp(sys.argv[1], sys.argv[1:])
out, deadline, status = b'', time.time() + float(os.environ.get('PTY_DEADLINE', '30')), None
while status is None:
    if select.select([m], [], [], 0.1)[0]:
        try:
            out += os.read(m, 4096)
        except OSError:
            pass
    done, st = os.waitpid(pid, os.WNOHANG)
    if done:
        status = os.waitstatus_to_exitcode(st)
    elif time.time() > deadline:
        os.kill(pid, 15)
lflag = termios.tcgetattr(s)[3]
sys.stdout.write(out.decode('utf8', 'replace'))
print(f"\ntty: {status} {'canonical' if lflag & termios.ICANON else 'raw'} {'echo' if lflag & termios.ECHO else 'noecho'}")
