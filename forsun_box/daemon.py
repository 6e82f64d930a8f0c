"""Classic Unix daemonization for ``serve --demon``.

The foreground default suits service managers and containers; ``--demon``
is kept for forsun's users who start the server from a shell.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
from types import FrameType

from forsun_box.errors import StartupError

#: the report pipe's descriptor, for the frozen executable's re-started daemon
_DAEMON_FD_ENV = "FORSUN_BOX_DAEMON_FD"


def _running_pid(pid_file: str) -> int | None:
    """The pid recorded in ``pid_file`` if that process still exists."""
    pid = _read_pid(pid_file)
    if pid is None or pid <= 0 or pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid  # alive, owned by someone else
    return pid


def _write_pid_file(pid_file: str, pid: int) -> None:
    tmp = f"{pid_file}.{pid}.tmp"
    with open(tmp, "w", encoding="ascii") as fh:
        fh.write(f"{pid}\n")
    os.replace(tmp, pid_file)  # readers never see a half-written file


def _remove_pid_file(pid_file: str, pid: int) -> None:
    # only our own: a later instance may have taken the file over
    if os.getpid() == pid and _read_pid(pid_file) == pid:
        with contextlib.suppress(OSError):
            os.unlink(pid_file)


def _read_pid(pid_file: str) -> int | None:
    try:
        with open(pid_file, encoding="ascii") as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return None


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # SystemExit unwinds normally, so atexit removes the pid file; the service
    # may install its own graceful handler over this one
    raise SystemExit(128 + signum)


_READY = b"ok"


class Readiness:
    """The daemon's word to the process that started it, said once.

    :meth:`ready` once the service answers on its ports (the starter then
    exits 0), :meth:`failed` with the reason when start-up failed (the starter
    prints it and exits 1). A daemon that dies before either leaves the
    starter with an end of file: it exits 1 saying so.
    """

    def __init__(self, fd: int, pid_file: str = "", pid: int = 0) -> None:
        self._fd: int | None = fd
        self._pid_file = pid_file
        self._pid = pid

    def ready(self) -> None:
        self._say(_READY)

    def failed(self, reason: str) -> None:
        # gone before the starter hears of the failure: whoever runs next finds no
        # stale pid file (at exit would be after the starter returned)
        if self._pid_file:
            _remove_pid_file(self._pid_file, self._pid)
        self._say(reason.replace("\n", " ").encode(errors="replace") or b"start-up failed")

    def _say(self, message: bytes) -> None:
        if self._fd is None:
            return
        # one write of a short line: the starter reads up to its newline, so
        # processes forked meanwhile (the create worker) that hold a copy of
        # the pipe don't keep it waiting for an end of file
        try:
            os.write(self._fd, message + b"\n")
            os.close(self._fd)
        except OSError:
            pass  # the starter was killed: nobody is waiting
        self._fd = None


def daemonize(pid_file: str, log_file: str = "") -> Readiness:
    """Detach into the background; returns only in the daemon process.

    Double fork with ``setsid`` in between (the daemon is no session leader,
    so it can never regain a terminal), ``chdir("/")``, umask 022, stdin and
    stdout to ``/dev/null``. stderr goes to ``log_file`` when one is given
    (so a crash's traceback lands in the log), else to ``/dev/null``. The
    daemon's pid is written to ``pid_file`` and the file removed when it
    exits (normally or on SIGTERM). The calling process waits until the
    daemon reports through the returned :class:`Readiness`, then exits with
    status 0 (ready) or 1 (failed, with the reason on stderr).

    Raises :class:`StartupError` (before forking) if another live process
    holds ``pid_file`` or its directory can't be created.
    """
    if not hasattr(os, "fork"):
        raise StartupError("--demon is not supported on this platform")
    pid_file = os.path.abspath(os.path.expanduser(pid_file))
    log_file = os.path.abspath(os.path.expanduser(log_file)) if log_file else ""
    other = _running_pid(pid_file)
    if other is not None:
        raise StartupError(f"already running as pid {other} (pid file {pid_file})")
    try:
        os.makedirs(os.path.dirname(pid_file), exist_ok=True)
    except OSError as exc:
        raise StartupError(f"cannot create the pid file's directory: {exc}") from None

    sys.stdout.flush()
    sys.stderr.flush()
    inherited = os.environ.pop(_DAEMON_FD_ENV, "")
    if inherited:  # the frozen executable's re-started daemon: already detached
        return _become_daemon(pid_file, log_file, int(inherited))
    read_end, write_end = os.pipe()
    if getattr(sys, "frozen", False):
        _respawn_frozen(read_end, write_end, log_file)
    first = os.fork()
    if first > 0:
        os.close(write_end)
        report = _read_report(read_end)
        os.waitpid(first, 0)
        _report_and_exit(report, log_file)

    os.close(read_end)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    return _become_daemon(pid_file, log_file, write_end)


def _report_and_exit(report: bytes, log_file: str) -> None:
    """The starting process: exit 0 once the daemon said ready, else 1 with its reason."""
    if report == _READY:
        os._exit(0)
    reason = report.decode(errors="replace")
    if not reason:
        where = f" (see {log_file})" if log_file else ""
        reason = f"the daemon exited during start-up{where}"
    sys.stderr.write(f"forsun-box: {reason}\n")
    sys.stderr.flush()
    os._exit(1)


def _respawn_frozen(read_end: int, write_end: int, log_file: str) -> None:
    """Start the daemon as a new run of the frozen executable; never returns.

    The one-file executable runs Python in a child of its bootloader, which
    deletes the unpacked files when that child exits: a forked daemon would
    outlive them. So the daemon is the same executable started again (same
    name and arguments, its own unpacked copy), in a new session; it learns
    the report pipe from the environment.
    """
    import subprocess

    env = dict(os.environ, PYINSTALLER_RESET_ENVIRONMENT="1")
    env[_DAEMON_FD_ENV] = str(write_end)
    with open(os.devnull, "rb+") as null:
        child = subprocess.Popen(
            [sys.argv[0], *sys.argv[1:]],
            executable=sys.executable,
            env=env,
            stdin=null,
            stdout=null,
            stderr=null,
            pass_fds=(write_end,),
            start_new_session=True,
        )
    os.close(write_end)
    report = _read_report(read_end)
    if report != _READY:
        child.wait()
    _report_and_exit(report, log_file)


def _become_daemon(pid_file: str, log_file: str, write_end: int) -> Readiness:
    """In the detached process: directory, umask, stdio, pid file."""
    try:
        os.chdir("/")
        os.umask(0o022)
        _redirect_stdio(log_file)
        pid = os.getpid()
        _write_pid_file(pid_file, pid)
    except OSError as exc:
        Readiness(write_end).failed(f"cannot start the daemon: {exc}")
        os._exit(1)
    atexit.register(_remove_pid_file, pid_file, pid)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    return Readiness(write_end, pid_file, pid)


def _read_report(fd: int) -> bytes:
    """The daemon's one line (without its newline), or what came before an end of file."""
    data = b""
    while b"\n" not in data:
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    os.close(fd)
    return data.partition(b"\n")[0]


def _redirect_stdio(log_file: str) -> None:
    null = os.open(os.devnull, os.O_RDWR)
    err = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if log_file else null
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.dup2(err, 2)
    for fd in {null, err}:
        if fd > 2:
            os.close(fd)
