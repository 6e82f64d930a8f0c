"""``forsun-box serve`` / ``forsund``: configure, log, detach if asked, run the service."""

from __future__ import annotations

import logging
import os
import sys

from forsun_box.config import describe_environment, load_config
from forsun_box.errors import StartupError

log = logging.getLogger("forsun_box.cli")


def _fail(message: str) -> int:
    print(f"forsun-box: {message}", file=sys.stderr)
    return 1


def serve_main(argv: list[str], prog: str = "forsun-box serve") -> int:
    """Run the server with the serve flags ``argv``; returns the exit status.

    A :class:`StartupError` (bad setting, unusable log file, port taken...)
    is one line on stderr and status 1, never a traceback. ``--help`` prints
    the help generated from the settings table and returns 0.
    """
    try:
        config = load_config(argv, prog=prog)
    except StartupError as exc:
        return _fail(str(exc))
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0

    from forsun_box.logs import setup_logging

    try:
        setup_logging(config)
    except StartupError as exc:
        return _fail(str(exc))
    from_env = describe_environment(os.environ)
    if from_env:
        log.info("%s", from_env)
    readiness = None
    try:
        if config.demon:
            from forsun_box.daemon import daemonize

            readiness = daemonize(config.pid_path, config.log_file)
        from forsun_box import app  # late: the wiring pulls in every subsystem

        return app.run(config, on_ready=readiness.ready if readiness else None)
    except StartupError as exc:
        # said once: in the log file (if any) and to whoever started the service
        # (logging to stderr it would be said twice)
        if config.log_file:
            log.error("cannot start: %s", exc)
        if readiness is not None:  # the starting process prints it and exits 1
            readiness.failed(str(exc))
            return 1
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130
