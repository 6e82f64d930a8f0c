"""The ``shell`` action: run a command line through the system shell.

Params (forsun's): ``cmd`` the command line (required), ``cwd`` its
working directory (default: the ``shell_cwd`` setting, else the service's
own), ``env`` extra environment variables written ``a=1;b=c``. The command
also sees ``FORSUN_TIMESTAMP``, the firing's unix time in seconds, and
``FORSUN_FIRING_ID``, the firing's idempotency key.

The command runs in its own process group so that a time limit kills
everything it started. Only the last few KiB of its output are kept, for
the error text of a failed run.

Commands are spawned by the firing process (:mod:`forsun_box.firing`): with
``posix_spawn``, from a process with few descriptors open and nothing else to
do, so that a spawn costs what it costs a bare program, and watched there (its
two output pipes and its exit). Everything but
the spawn -- the checks, the command line, the environment, as C arrays -- is
done ahead by :meth:`ShellAction.prepare`. A working directory is entered by
the shell itself (``cd`` before the command): ``posix_spawn`` here has no chdir.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex

from forsun_box.actions.base import Action, ActionFailed, Done
from forsun_box.firing import wire
from forsun_box.firing.client import Armable, FiringProcess, close_shared, shared
from forsun_box.firing.worker import SHELL

logger = logging.getLogger("forsun_box.actions")

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


class PreparedCommand(Armable):
    """A command line and environment built ahead and set up in the firing process: at
    the instant it is only spawned there."""

    __slots__ = ("argv", "env", "started", "timeout_s")
    #: the firing process bounds how many run at once
    bounded = True

    def __init__(
        self, argv: list[str], env: dict[str, str], timeout_s: float, client: FiringProcess
    ) -> None:
        self.argv = argv
        self.env = env
        self.timeout_s = timeout_s
        self.client = client
        self.id: int | None = client.prepare_command(argv, env, timeout_s)
        self.started: int | None = None
        self.went_out: tuple[int, int] | None = None

    def start(self, done: Done) -> None:
        client, id_ = self.client, self.id
        self.id = None
        if id_ is None or not client.usable(id_):  # (started before, or a new process since)
            client = self.client = shared(Action.settings)
            id_ = client.prepare_command(self.argv, self.env, self.timeout_s)
        timeout_s = self.timeout_s

        def exited(status: int, output: str, state: int) -> None:
            suffix = f": {output}" if output else ""
            if state == wire.NOT_STARTED:
                done(ActionFailed(output))
            elif state == wire.LOST:
                done(ActionFailed(f"{output}; the command's end is unknown"))
            elif state == wire.TIMED_OUT:
                done(ActionFailed(f"timed out after {timeout_s:g} s, process group killed{suffix}"))
            elif status:
                done(ActionFailed(f"exit status {status}{suffix}"))
            else:
                done(None)

        try:
            client.start_command(id_, exited, self._went_out)
        except OSError as e:
            raise ActionFailed(f"cannot start {SHELL}: {e}") from None
        self.started = id_

    def cancel(self) -> None:
        """Kill the command's process group (SIGTERM, SIGKILL two seconds later)."""
        if self.started is not None:
            self.client.cancel(self.started)

    def discard(self) -> None:
        id_, self.id = self.id, None
        if id_ is not None:
            self.client.drop(id_)


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
        env = parse_env(self.params.get("env", ""))  # on top of the service's environment
        env["FORSUN_TIMESTAMP"] = str(self.ts)
        env["FORSUN_FIRING_ID"] = self.firing_id
        return PreparedCommand(
            [SHELL, "-c", script], env, settings.shell_timeout_s, shared(settings)
        )

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
        close_shared()
