"""The ``shell`` action: run a command line through the system shell.

Params (forsun's): ``cmd`` the command line (required), ``cwd`` its
working directory (default: the ``shell_cwd`` setting, else the service's
own), ``env`` extra environment variables written ``a=1;b=c``. The command
also sees ``FORSUN_TIMESTAMP``, the firing's unix time in seconds.

The command runs in its own process group so that a time limit kills
everything it started. Only the last few KiB of its output are kept, for
the error text of a failed run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal

from forsun_box.actions.base import Action, ActionFailed

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
    """Reads a stream to its end, keeping only its last ``limit`` bytes."""

    def __init__(self, limit: int = OUTPUT_TAIL_BYTES) -> None:
        self.limit = limit
        self.data = bytearray()
        self.truncated = False

    async def drain(self, stream: asyncio.StreamReader | None) -> None:
        if stream is None:
            return
        while True:
            chunk = await stream.read(65536)
            if not chunk:
                return
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


class ShellAction(Action):
    """Runs ``params["cmd"]`` with ``/bin/sh``; a non-zero exit status is a failure."""

    async def execute(self, *args: object, **kwargs: object) -> None:
        settings = self.settings
        cmd = self.params.get("cmd", "")
        if not cmd.strip():
            raise ActionFailed("missing param cmd")
        check_allowed(cmd, settings.shell_enabled, settings.shell_allow)
        cwd = self.params.get("cwd") or settings.shell_cwd or None
        if cwd is not None and not os.path.isdir(cwd):
            raise ActionFailed(f"cwd is not a directory: {cwd}")
        env = dict(os.environ)
        env.update(parse_env(self.params.get("env", "")))
        env["FORSUN_TIMESTAMP"] = str(self.ts)

        proc = await asyncio.create_subprocess_shell(
            cmd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=cwd,
            env=env,
            start_new_session=True,  # its own process group, killed as a whole
        )
        out, err = _Tail(), _Tail()
        readers = asyncio.gather(out.drain(proc.stdout), err.drain(proc.stderr))
        timeout = settings.shell_timeout_s if settings.shell_timeout_s > 0 else None
        try:
            code = await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            await self._stop(proc)
            readers.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await readers
            raise ActionFailed(
                f"timed out after {settings.shell_timeout_s:g} s, process group killed"
                + _tail_suffix(err, out)
            ) from None
        except asyncio.CancelledError:
            await self._stop(proc)
            readers.cancel()
            raise
        try:
            await asyncio.wait_for(asyncio.shield(readers), _PIPE_GRACE_S)
        except TimeoutError:
            readers.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await readers
        if code != 0:
            raise ActionFailed(f"exit status {code}" + _tail_suffix(err, out))
        logger.debug("shell %s: %r ok", self.plan.key, cmd)

    @staticmethod
    async def _stop(proc: asyncio.subprocess.Process) -> None:
        """Terminate the command's process group, then kill it if it lingers."""
        _kill_group(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), _KILL_GRACE_S)
        except TimeoutError:
            pass
        # Children may outlive the shell; the group is killed either way.
        _kill_group(proc.pid, signal.SIGKILL)
        if proc.returncode is None:
            await proc.wait()


def _tail_suffix(err: _Tail, out: _Tail) -> str:
    text = err.text() or out.text()
    return f": {text}" if text else ""
