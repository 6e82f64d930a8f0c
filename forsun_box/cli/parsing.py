"""The ``forsun`` client's command line: its options, its commands' words, its errors.

Pure text handling, no connection: :mod:`forsun_box.cli.client` runs what is
parsed here.
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable
from datetime import datetime

from forsun_box import errors
from forsun_box.api.formats import crontab
from forsun_box.cli import views

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 6458

COMMAND_NAMES = frozenset(
    {
        "help",
        "exit",
        "quit",
        "version",
        "ls",
        "current",
        "time",
        "get",
        "rm",
        "set",
        "info",
        "pause",
        "resume",
        "fire",
        "runs",
        "preview",
        "cron",
        "at",
    }
)

# what failed, for the error line forsun's client prints for it
PLAN_ERROR = "plan"  # the server answered ForsunPlanError
UNKNOWN_COMMAND = "unknown"
COMMAND_ERROR = "cmd"  # a malformed command, or the server failed otherwise
CONNECT_ERROR = "connect"


class CommandError(Exception):
    """A command can't run: ``message`` is one line; ``kind`` and ``code`` say how to show it."""

    def __init__(self, message: str, kind: str = COMMAND_ERROR, code: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.code = code

    def line(self, view: str) -> str:
        """The error line of the given view (forsun's text by default)."""
        if view == views.JSON:
            return views.to_json({"errcode": self.code or errors.UNKNOWN, "errmsg": self.message})
        if view == views.LONG:
            if self.kind == UNKNOWN_COMMAND:
                return f"forsun: unknown command {self.message!r} (try: help)"
            prefix = f"error {self.code}: " if self.code else ""
            return f"forsun: {prefix}{self.message}"
        if self.kind == PLAN_ERROR:
            return f"cmd ForsunPlanError:  {self.code} {self.message}"
        if self.kind == UNKNOWN_COMMAND:
            return f"Unknown cmd  {self.message}"
        if self.kind == CONNECT_ERROR:
            return f"connect forsun server fail:  {self.message}"
        return f"cmd error:  {self.message}"


class Exit(Exception):
    """The ``exit`` command."""


def report(error: CommandError, view: str) -> None:
    """Print ``error``'s line where its view puts it (stderr for --long, else stdout)."""
    out = sys.stderr if view == views.LONG else sys.stdout
    print(error.line(view), file=out, flush=True)


# ---------------------------------------------------------------- parsing


def split_commands(text: str) -> list[str]:
    """Split on top-level ``;`` (quotes protect it).

    A piece whose first word is not a command name belongs to the previous
    command, so an unquoted ``set ... http url=x;method=post`` survives.
    """
    pieces = crontab.split_top_level(text, escapes=True)
    commands: list[str] = []
    for piece in pieces:
        if not piece.strip():
            continue
        word = piece.split(None, 1)[0].lower()
        if commands and word not in COMMAND_NAMES:
            commands[-1] += ";" + piece
        else:
            commands.append(piece)
    return [c.strip() for c in commands if c.strip()]


def parse_time(words: list[str], now: Callable[[], float] = time.time) -> int:
    """``time``'s argument: nothing (now), unix seconds, or local ``YYYY-mm-dd HH:MM:SS``."""
    text = " ".join(words).strip()
    if not text:
        return int(now())
    if text.lstrip("-").isdigit():
        return int(text)
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"):
        try:
            return int(datetime.strptime(text, fmt).timestamp())
        except ValueError:
            continue
    raise CommandError(f'time: expected a timestamp or "YYYY-mm-dd HH:MM:SS", got {text!r}')


def parse_instant(text: str) -> int:
    """``at``'s instant: unix milliseconds, or local ``YYYY-mm-dd HH:MM:SS[.mmm]``."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    for fmt in ("%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M"):
        try:
            moment = datetime.strptime(text, fmt)
        except ValueError:
            continue
        try:
            return int(moment.timestamp()) * 1000 + moment.microsecond // 1000
        except (OverflowError, OSError, ValueError):
            break
    raise CommandError(
        f'at: expected "YYYY-mm-dd HH:MM:SS[.mmm]" or unix milliseconds, got {text!r}'
    )


def count_args(name: str, args: list[str], default: int, top: int) -> tuple[str, int]:
    """``KEY [N]`` arguments: the key and N (``default`` when absent; 1..top)."""
    if not 1 <= len(args) <= 2:
        raise CommandError(f"usage: {name} KEY [N]")
    if len(args) == 1:
        return args[0], default
    if not args[1].isdigit() or not 1 <= int(args[1]) <= top:
        raise CommandError(f"{name}: N must be a number from 1 to {top}, got {args[1]!r}")
    return args[0], int(args[1])


# ---------------------------------------------------------------- options


class Options:
    """The client's command line: where to connect, what to run, how to print."""

    def __init__(self) -> None:
        self.host = DEFAULT_HOST
        self.port = DEFAULT_PORT
        self.commands: str | None = None
        self.help = False
        self.view = views.FORSUN


def parse_options(argv: list[str]) -> Options:
    """forsun's options (``--host``, ``--port``, ``--exe``) and forsun-box's view flags."""
    opts = Options()
    exe = None
    words: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("-") or arg in ("-", ";"):
            words = argv[i:]
            break
        if arg in ("-h", "--help"):
            opts.help = True
            return opts
        name, eq, value = arg.partition("=")
        if name == "--version":
            words = ["version"]
            break
        if name in ("--long", "--json"):
            if eq:
                raise CommandError(f"option {name} takes no value")
            opts.view = views.LONG if name == "--long" else views.JSON
            i += 1
            continue
        if name not in ("--host", "--port", "--exe"):
            raise CommandError(f"unknown option {name} (try: forsun --help)")
        if not eq:
            i += 1
            if i >= len(argv):
                raise CommandError(f"option {name} needs a value")
            value = argv[i]
        if name == "--host":
            opts.host = value
        elif name == "--port":
            if not value.isdigit() or not 0 < int(value) < 65536:
                raise CommandError(f"invalid port {value!r}")
            opts.port = int(value)
        else:
            exe = value
        i += 1
    if words:
        # One word is a command line as forsun takes it; several are the
        # words of one command line, already split by the caller's shell.
        text = (
            words[0]
            if len(words) == 1
            else " ".join(w if w == ";" else shlex.quote(w) for w in words)
        )
        exe = text if exe is None else f"{exe};{text}"
    opts.commands = exe
    return opts


def parse_argv(argv: list[str]) -> tuple[str, int, str | None, bool]:
    """``(host, port, commands or None, help)`` from forsun's options."""
    opts = parse_options(argv)
    return opts.host, opts.port, opts.commands, opts.help
