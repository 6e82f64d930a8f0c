"""The ``shell`` action: run a command line through the system shell.

Params (forsun's): ``cmd`` the command line (required), ``cwd`` its
working directory (default: the ``shell_cwd`` setting, else the service's
own), ``env`` extra environment variables written ``a=1;b=c``. The command
also sees ``FORSUN_TIMESTAMP``, the firing's unix time in seconds, and
``FORSUN_FIRING_ID``, the firing's idempotency key.

The command runs in its own process group so that a time limit kills
everything it started. Only the last few KiB of its output are kept, for
the error text of a failed run.

A command is started with ``posix_spawn`` (no copy of the service's memory
is made; every descriptor the service opens is close-on-exec) on a spawning
thread (:mod:`forsun_box.actions.spawn`), and watched from the event loop:
its two output pipes and a pidfd that becomes readable when it exits, with no
thread or task per command. Everything but the spawn
-- the checks, the command line, the environment -- is built ahead by
:meth:`ShellAction.prepare`. A working directory is entered by the shell
itself (``cd`` before the command): ``posix_spawn`` here has no chdir.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal

from forsun_box.actions.base import Action, ActionFailed, Done
from forsun_box.actions.spawn import CommandLine, close_spawner, spawner

logger = logging.getLogger("forsun_box.actions")

#: bytes of stdout / stderr kept for the error text
OUTPUT_TAIL_BYTES = 4096
#: how long output pipes may stay open after the shell exits (a detached
#: background child can hold them forever)
_PIPE_GRACE_S = 1.0
#: how long a process group gets between SIGTERM and SIGKILL
_KILL_GRACE_S = 2.0

# With an allowlist, a command line must be one simple command: these would
# let an allowed first word chain or embed any other program.
_FORBIDDEN_WITH_ALLOWLIST = (";", "&", "|", "`", "$(", "\n", "\r", "<(", ">(")


def parse_env(text: str) -> dict[str, str]:
    """forsun's ``env`` param: ``a=1;b=c`` -> ``{"a": "1", "b": "c"}``; empty parts skipped."""
    env: dict[str, str] = {}
    for part in text.split(";"):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or not name:
            continue
        env[name] = value
    return env


def check_allowed(cmd: str, enabled: bool, allow: tuple[str, ...]) -> None:
    """Raise :class:`ActionFailed` unless ``cmd`` may run under these settings."""
    if not enabled:
        raise ActionFailed("the shell action is disabled")
    if not allow:
        return
    for bad in _FORBIDDEN_WITH_ALLOWLIST:
        if bad in cmd:
            raise ActionFailed(
                f"command refused: {bad!r} is not allowed when a shell allowlist is set"
            )
    try:
        words = shlex.split(cmd)
    except ValueError:
        words = cmd.split()
    first = words[0] if words else ""
    if first not in allow:
        raise ActionFailed(f"command refused: {first!r} is not in the shell allowlist")


class _Tail:
    """The last ``limit`` bytes of a stream."""

    __slots__ = ("data", "limit", "truncated")

    def __init__(self, limit: int = OUTPUT_TAIL_BYTES) -> None:
        self.limit = limit
        self.data = bytearray()
        self.truncated = False

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > self.limit:
            del self.data[: len(self.data) - self.limit]
            self.truncated = True

    def text(self) -> str:
        s = self.data.decode("utf-8", "replace").strip()
        return ("..." + s) if self.truncated and s else s


def _kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


SHELL = "/bin/sh"
#: how often a command's exit is looked for where there is no pidfd, seconds
_POLL_S = 0.005


class PreparedCommand:
    """A command line and environment built ahead: at the instant it is only spawned
    (on the spawning thread, :mod:`forsun_box.actions.spawn`)."""

    __slots__ = ("cancelled", "child", "command", "timeout_s")

    def __init__(self, argv: list[str], env: dict[str, str], timeout_s: float) -> None:
        self.command = CommandLine(SHELL, argv, env)
        self.timeout_s = timeout_s
        self.child: _Child | None = None
        self.cancelled = False

    def start(self, done: Done) -> None:
        loop = asyncio.get_running_loop()

        def spawned(pid: int, out_fd: int, err_fd: int, error: BaseException | None) -> None:
            if error is not None:
                done(ActionFailed(f"cannot start {SHELL}: {error}"))
                return
            self.child = _Child(loop, pid, out_fd, err_fd, done, self.timeout_s)
            if self.cancelled:
                self.child.kill(signal.SIGKILL)

        spawner().submit(self.command, spawned)

    def cancel(self) -> None:
        """Kill the command's process group (now, or as soon as it is spawned)."""
        self.cancelled = True
        if self.child is not None:
            self.child.kill(signal.SIGTERM)
            asyncio.get_running_loop().call_later(_KILL_GRACE_S, self.child.kill, signal.SIGKILL)

    def discard(self) -> None:
        """Nothing is held before the instant."""


class _Child:
    """One running command, watched from the loop until it exited and its pipes closed."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        pid: int,
        out_fd: int,
        err_fd: int,
        done: Done,
        timeout_s: float,
    ) -> None:
        self.loop = loop
        self.pid = pid
        self.done: Done | None = done
        self.code: int | None = None
        self.timeout_s = timeout_s
        self.timed_out = False
        self.out = _Tail()
        self.err = _Tail()
        self.out_fd = out_fd
        self.open_fds: set[int] = {out_fd, err_fd}
        self.timers: list[asyncio.TimerHandle] = []
        for fd in (out_fd, err_fd):
            os.set_blocking(fd, False)
            loop.add_reader(fd, self._read, fd)
        self.pidfd = -1
        try:
            self.pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            self._poll_exit()  # no pidfd here: look every few milliseconds
        else:
            loop.add_reader(self.pidfd, self._exited)
        if timeout_s > 0:
            self.timers.append(loop.call_later(timeout_s, self._time_out))

    def _read(self, fd: int) -> None:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if chunk:
            (self.out if fd == self.out_fd else self.err).add(chunk)
            return
        self._close_fd(fd)
        if self.code is not None and not self.open_fds:
            self._finish()

    def _close_fd(self, fd: int) -> None:
        if fd in self.open_fds:
            self.open_fds.discard(fd)
            self.loop.remove_reader(fd)
            os.close(fd)

    def _poll_exit(self) -> None:
        if self._reap():
            self._after_exit()
        else:
            self.timers.append(self.loop.call_later(_POLL_S, self._poll_exit))

    def _exited(self) -> None:
        if not self._reap():
            return
        self.loop.remove_reader(self.pidfd)
        os.close(self.pidfd)
        self.pidfd = -1
        self._after_exit()

    def _reap(self) -> bool:
        """Collect the exit status if the command ended."""
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:  # collected by someone else: its status is lost
            self.code = 255
            return True
        if pid == 0:
            return False
        self.code = os.waitstatus_to_exitcode(status)
        return True

    def _after_exit(self) -> None:
        if not self.open_fds:
            self._finish()
        else:
            # a detached background child may hold the pipes open forever
            self.timers.append(self.loop.call_later(_PIPE_GRACE_S, self._finish))

    def _time_out(self) -> None:
        self.timed_out = True
        self.kill(signal.SIGTERM)
        self.timers.append(self.loop.call_later(_KILL_GRACE_S, self.kill, signal.SIGKILL))

    def kill(self, sig: int) -> None:
        """Signal the command's process group (children may outlive the shell)."""
        _kill_group(self.pid, sig)

    def _finish(self) -> None:
        done, self.done = self.done, None
        if done is None or self.code is None:
            return
        for timer in self.timers:
            timer.cancel()
        for fd in list(self.open_fds):
            self._close_fd(fd)
        if self.timed_out:
            _kill_group(self.pid, signal.SIGKILL)
            done(
                ActionFailed(
                    f"timed out after {self.timeout_s:g} s, process group killed" + self._suffix()
                )
            )
        elif self.code:
            done(ActionFailed(f"exit status {self.code}" + self._suffix()))
        else:
            done(None)

    def _suffix(self) -> str:
        text = self.err.text() or self.out.text()
        return f": {text}" if text else ""


class ShellAction(Action):
    """Runs ``params["cmd"]`` with ``/bin/sh``; a non-zero exit status is a failure."""

    def prepare(self) -> PreparedCommand:
        settings = self.settings
        cmd = self.params.get("cmd", "")
        if not cmd.strip():
            raise ActionFailed("missing param cmd")
        check_allowed(cmd, settings.shell_enabled, settings.shell_allow)
        cwd = self.params.get("cwd") or settings.shell_cwd or None
        script = cmd
        if cwd is not None:
            if not os.path.isdir(cwd):
                raise ActionFailed(f"cwd is not a directory: {cwd}")
            script = f"cd -- {shlex.quote(cwd)} || exit 127\n{cmd}"
        env = dict(os.environ)
        env.update(parse_env(self.params.get("env", "")))
        env["FORSUN_TIMESTAMP"] = str(self.ts)
        env["FORSUN_FIRING_ID"] = self.firing_id
        return PreparedCommand([SHELL, "-c", script], env, settings.shell_timeout_s)

    async def execute(self, *args: object, **kwargs: object) -> None:
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[BaseException | None] = loop.create_future()

        def done(error: BaseException | None) -> None:
            if not ended.done():
                ended.set_result(error)

        ready = self.prepare()
        ready.start(done)
        try:
            error = await ended
        except asyncio.CancelledError:
            ready.cancel()
            raise
        if error is not None:
            raise error
        logger.debug("shell %s: %r ok", self.plan.key, self.params.get("cmd", ""))

    @classmethod
    async def close_shared(cls) -> None:
        close_spawner()
