"""The ``forsun-box`` program: ``serve`` runs the server, other commands go to the client.

The same entry point serves the ``forsund`` and ``forsun`` names (console
scripts, or the one frozen executable copied or linked under those names).
The client lives in :mod:`forsun_box.cli.client` (``main(argv) -> int``);
while that module is absent, client commands are reported as unknown.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable

from forsun_box import __version__
from forsun_box.cli.serve import serve_main

USAGE = """\
usage: forsun-box [--version] [-h] COMMAND [ARGS...]

commands:
  serve [FLAGS]     run the timer service (forsun-box serve --help lists the flags)
  help [COMMAND]    show this help, or a command's
{client}
Invoked as "forsund" it is "forsun-box serve"; invoked as "forsun" it is the client.
"""
_CLIENT_LINE = (
    "  anything else     a client command (set, get, rm, ls, time, current, info, ...),\n"
    "                    see: forsun-box help client\n"
)


def _client() -> Callable[[list[str]], int] | None:
    """The client's ``main`` if :mod:`forsun_box.cli.client` exists."""
    if importlib.util.find_spec("forsun_box.cli.client") is None:
        return None
    module = importlib.import_module("forsun_box.cli.client")
    entry: Callable[[list[str]], int] = module.main
    return entry


def _usage() -> str:
    return USAGE.format(client=_CLIENT_LINE if _client() else "")


def _program_name(argv0: str) -> str:
    name = os.path.basename(argv0).lower()
    return name[:-4] if name.endswith(".exe") else name


def _help(args: list[str]) -> int:
    if not args:
        print(_usage(), end="")
        return 0
    if args[0] == "serve":
        return serve_main(["--help"])
    client = _client()
    if client is None:
        print(f"forsun-box: unknown command {args[0]!r}", file=sys.stderr)
        return 2
    return client(["help", *args[1:]] if args[0] == "client" else ["help", *args])


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Entry point of ``forsun-box``; ``argv`` excludes the program name.

    ``prog`` (default: the basename of ``sys.argv[0]``) selects the
    personality: ``forsund`` runs the server, ``forsun`` the client.
    Returns the exit status: 0 ok, 1 failure, 2 usage error.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    name = _program_name(sys.argv[0] if prog is None else prog)
    if name == "forsund":
        return serve_main(args, prog="forsund")
    if name == "forsun":
        client = _client()
        if client is None:
            print("forsun-box: the client is not available in this build", file=sys.stderr)
            return 2
        return client(args)

    if not args:
        print(_usage(), end="", file=sys.stderr)
        return 2
    command, rest = args[0], args[1:]
    if command == "serve":
        return serve_main(rest)
    if command in ("--version", "-V"):
        print(f"forsun-box {__version__}")
        return 0
    if command in ("help", "-h", "--help"):
        return _help(rest)
    client = _client()
    if client is None:
        print(f"forsun-box: unknown command {command!r} (try: forsun-box help)", file=sys.stderr)
        return 2
    return client(args)


def forsund(argv: list[str] | None = None) -> int:
    """Entry point of ``forsund``: the same as ``forsun-box serve``."""
    return serve_main(sys.argv[1:] if argv is None else list(argv), prog="forsund")
