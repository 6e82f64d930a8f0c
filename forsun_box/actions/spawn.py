"""Starting commands off the event loop: ``posix_spawn`` on a thread of its own.

A spawn holds its caller until the new process has called ``exec`` (glibc spawns
with ``CLONE_VFORK``): a millisecond or more, longer the more descriptors the
service has open (the child copies the table and closes them at ``exec``).
``os.posix_spawn`` keeps the interpreter lock for all that time, so a burst of
commands spawned from the loop would stop the loop and every other thread. Here
libc's ``posix_spawn`` is called through ctypes, which lets go of the lock, from
one spawning thread: the loop only queues the command and later learns the pid
and the read ends of the two output pipes. Where libc's functions cannot be
found the spawn falls back to ``os.posix_spawn`` on the same thread.

The command line and environment are turned into C arrays once, ahead of the
instant (:class:`CommandLine`).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import queue
import threading
from collections.abc import Callable

logger = logging.getLogger("forsun_box.actions")

#: glibc's and musl's value of POSIX_SPAWN_SETSID (the child starts its own session)
_POSIX_SPAWN_SETSID = 0x80
#: bytes reserved for the opaque posix_spawn_file_actions_t / posix_spawnattr_t
_OPAQUE_BYTES = 512

Spawned = Callable[[int, int, int, BaseException | None], None]


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
            "posix_spawnattr_destroy",
        ):
            getattr(libc, name)
    except (OSError, AttributeError):
        return None
    return libc


_libc = _load_libc()


def _c_strings(items: list[bytes]) -> ctypes.Array[ctypes.c_char_p]:
    array = (ctypes.c_char_p * (len(items) + 1))()
    for i, item in enumerate(items):
        array[i] = item
    array[len(items)] = None
    return array


class CommandLine:
    """``path``, ``argv`` and ``env``, as Python and as the C arrays libc takes."""

    __slots__ = ("argv", "c_argv", "c_env", "c_path", "env", "path")

    def __init__(self, path: str, argv: list[str], env: dict[str, str]) -> None:
        self.path = path
        self.argv = argv
        self.env = env
        self.c_path = os.fsencode(path)
        self.c_argv = _c_strings([os.fsencode(a) for a in argv])
        self.c_env = _c_strings([os.fsencode(k) + b"=" + os.fsencode(v) for k, v in env.items()])


def spawn_now(command: CommandLine) -> tuple[int, int, int]:
    """Spawn ``command`` (own session, stdin /dev/null, stdout and stderr to two new
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
            setsid=True,
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
        libc.posix_spawnattr_setflags(attr, ctypes.c_short(_POSIX_SPAWN_SETSID))
        # (ctypes releases the interpreter lock for the call)
        err = libc.posix_spawn(
            ctypes.byref(pid), command.c_path, actions, attr, command.c_argv, command.c_env
        )
    finally:
        libc.posix_spawn_file_actions_destroy(actions)
        libc.posix_spawnattr_destroy(attr)
    if err:
        raise OSError(err, os.strerror(err))
    return pid.value


class Spawner:
    """One spawning thread per event loop; see the module docstring."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._queue: queue.SimpleQueue[tuple[CommandLine, Spawned] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="forsun-box-spawn", daemon=True)
        self._thread.start()

    def submit(self, command: CommandLine, spawned: Spawned) -> None:
        """Spawn ``command`` soon; ``spawned(pid, out_fd, err_fd, error)`` is then called
        on the loop (``error`` set and the rest -1 when it could not be spawned)."""
        self._queue.put((command, spawned))

    def close(self) -> None:
        self._queue.put(None)

    def _run(self) -> None:
        call = self.loop.call_soon_threadsafe
        while True:
            item = self._queue.get()
            if item is None:
                return
            command, spawned = item
            try:
                pid, out_fd, err_fd = spawn_now(command)
            except OSError as e:
                result: tuple[int, int, int, BaseException | None] = (-1, -1, -1, e)
            else:
                result = (pid, out_fd, err_fd, None)
            try:
                call(spawned, *result)
            except RuntimeError:  # the loop is closed: nobody will watch this command
                if result[3] is None:
                    os.close(result[1])
                    os.close(result[2])
                return


_spawners: dict[asyncio.AbstractEventLoop, Spawner] = {}


def spawner() -> Spawner:
    """The running loop's spawner (started on first use)."""
    loop = asyncio.get_running_loop()
    found = _spawners.get(loop)
    if found is None:
        for old in [other for other in _spawners if other.is_closed()]:
            _spawners.pop(old).close()
        found = _spawners[loop] = Spawner(loop)
    return found


def close_spawner() -> None:
    """Stop the running loop's spawning thread (if any)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    found = _spawners.pop(loop, None)
    if found is not None:
        found.close()
