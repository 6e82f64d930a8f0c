"""Starting a command: libc's ``posix_spawn``, its own process group, output to two pipes.

A spawn holds its caller until the new process has called ``exec`` (glibc spawns
with ``CLONE_VFORK``): a millisecond or more, longer the more descriptors the
caller has open (the child copies the table and closes them at ``exec``). The
firing process (:mod:`forsun_box.firing.worker`), which holds few descriptors,
spawns; libc's function is called through ctypes, and where it cannot be found
``os.posix_spawn`` does the same. The command line and environment are turned
into C arrays once, ahead of the instant (:class:`CommandLine`).

A command gets a process group of its own (a time limit kills the whole group) but
stays in the service's session: the scheduler shares the cores between sessions
(autogroups), so a burst of commands each in a session of its own would leave the
service, and everything else on the machine, a sliver of them. Signals the service
ignores (SIGPIPE, SIGXFSZ, the firing process's SIGINT and SIGHUP) are back to their
defaults in the command.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal

#: glibc's and musl's POSIX_SPAWN_SETPGROUP and POSIX_SPAWN_SETSIGDEF
_POSIX_SPAWN_SETPGROUP = 0x02
_POSIX_SPAWN_SETSIGDEF = 0x04
#: bytes reserved for the opaque posix_spawn_file_actions_t / posix_spawnattr_t / sigset_t
_OPAQUE_BYTES = 512
#: signals a command starts with at their default disposition
DEFAULT_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGHUP)


def _load_libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        for name in (
            "posix_spawn",
            "posix_spawn_file_actions_init",
            "posix_spawn_file_actions_addopen",
            "posix_spawn_file_actions_adddup2",
            "posix_spawn_file_actions_destroy",
            "posix_spawnattr_init",
            "posix_spawnattr_setflags",
            "posix_spawnattr_setpgroup",
            "posix_spawnattr_setsigdefault",
            "posix_spawnattr_destroy",
            "sigemptyset",
            "sigaddset",
        ):
            getattr(libc, name)
    except (OSError, AttributeError):
        return None
    return libc


_libc = _load_libc()


def _default_signals() -> ctypes.Array[ctypes.c_char] | None:
    if _libc is None:
        return None
    sigset = ctypes.create_string_buffer(_OPAQUE_BYTES)
    _libc.sigemptyset(sigset)
    for sig in DEFAULT_SIGNALS:
        _libc.sigaddset(sigset, int(sig))
    return sigset


_sigdefault = _default_signals()


def _c_strings(items: list[bytes]) -> ctypes.Array[ctypes.c_char_p]:
    return (ctypes.c_char_p * (len(items) + 1))(*items)  # (the last stays NULL)


def _entry(name: str, value: str) -> bytes:
    return os.fsencode(name) + b"=" + os.fsencode(value)


class Environment:
    """The variables every command starts with, each encoded once as ``NAME=value``: a
    command's own few go on top (:meth:`CommandLine.__init__`)."""

    __slots__ = ("encoded", "variables")

    def __init__(self, variables: dict[str, str]) -> None:
        self.variables = variables
        self.encoded = {name: _entry(name, value) for name, value in variables.items()}

    def entries(self, extra: dict[str, str]) -> list[bytes]:
        """The ``NAME=value`` entries of these variables with ``extra`` on top."""
        merged = dict(self.encoded)
        merged.update((k, _entry(k, v)) for k, v in extra.items())
        return list(merged.values())


class CommandLine:
    """``path``, ``argv`` and an environment (``base`` with ``extra`` on top), as Python
    and as the C arrays libc takes."""

    __slots__ = ("argv", "base", "c_argv", "c_env", "c_path", "extra", "path")

    def __init__(
        self, path: str, argv: list[str], base: Environment, extra: dict[str, str] | None = None
    ) -> None:
        self.path = path
        self.argv = argv
        self.base = base
        self.extra = extra or {}
        self.c_path = os.fsencode(path)
        self.c_argv = _c_strings([os.fsencode(a) for a in argv])
        self.c_env = _c_strings(base.entries(self.extra))

    @property
    def env(self) -> dict[str, str]:
        """The whole environment, as a dict."""
        return {**self.base.variables, **self.extra}


def spawn_now(command: CommandLine) -> tuple[int, int, int]:
    """Spawn ``command`` (own process group, stdin /dev/null, stdout and stderr to two new
    pipes); returns (pid, stdout read end, stderr read end). Raises OSError."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        pid = _spawn(command, out_w, err_w)
    except BaseException:
        os.close(out_r)
        os.close(err_r)
        raise
    finally:
        os.close(out_w)
        os.close(err_w)
    return pid, out_r, err_r


def _spawn(command: CommandLine, out_w: int, err_w: int) -> int:
    libc = _libc
    if libc is None:
        return os.posix_spawn(
            command.path,
            command.argv,
            command.env,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, out_w, 1),
                (os.POSIX_SPAWN_DUP2, err_w, 2),
            ],
            setpgroup=0,
            setsigdef=DEFAULT_SIGNALS,
        )
    actions = ctypes.create_string_buffer(_OPAQUE_BYTES)
    attr = ctypes.create_string_buffer(_OPAQUE_BYTES)
    pid = ctypes.c_int(0)
    libc.posix_spawn_file_actions_init(actions)
    libc.posix_spawnattr_init(attr)
    try:
        libc.posix_spawn_file_actions_addopen(actions, 0, b"/dev/null", os.O_RDONLY, 0)
        libc.posix_spawn_file_actions_adddup2(actions, out_w, 1)
        libc.posix_spawn_file_actions_adddup2(actions, err_w, 2)
        libc.posix_spawnattr_setflags(
            attr, ctypes.c_short(_POSIX_SPAWN_SETPGROUP | _POSIX_SPAWN_SETSIGDEF)
        )
        libc.posix_spawnattr_setpgroup(attr, 0)
        libc.posix_spawnattr_setsigdefault(attr, _sigdefault)
        err = libc.posix_spawn(
            ctypes.byref(pid), command.c_path, actions, attr, command.c_argv, command.c_env
        )
    finally:
        libc.posix_spawn_file_actions_destroy(actions)
        libc.posix_spawnattr_destroy(attr)
    if err:
        raise OSError(err, os.strerror(err))
    return pid.value
