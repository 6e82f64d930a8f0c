"""Log handlers for the service; only the command line calls :func:`setup_logging`.

Library code just logs to its named logger (``forsun_box.<subsystem>``);
here one handler is put on the root logger so the service's records,
tornado's and those of extensions (which, written for forsun, often log
through the root logger) end in the same place, with the same format.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import sys

from forsun_box.config import DEFAULT_LOG_FORMAT, Config
from forsun_box.errors import StartupError

_MARK = "_forsun_box_handler"


def _make_handler(config: Config) -> logging.Handler:
    if not config.log_file:
        return logging.StreamHandler(sys.stderr)
    path = config.log_file
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        rotation = config.log_rotation
        if rotation is None:
            # reopens the file when an outside tool (logrotate) moved it away
            return logging.handlers.WatchedFileHandler(path, encoding="utf-8")
        if rotation[0] == "time":
            return logging.handlers.TimedRotatingFileHandler(
                path, when=str(rotation[1]), backupCount=config.log_backup_count, encoding="utf-8"
            )
        return logging.handlers.RotatingFileHandler(
            path, maxBytes=int(rotation[1]), backupCount=config.log_backup_count, encoding="utf-8"
        )
    except OSError as exc:
        raise StartupError(f"cannot open log file {path}: {exc}") from None


_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/@:\s]*):[^/@\s]*@")
# A plan's ``key`` is a name, not a secret: only a key with a prefix (``api_key``,
# ``access_key``) is masked.
_SECRET_QUERY = re.compile(
    r"(?P<name>[?&;](?:[^=&\s]*(?:pass|pwd|secret|token|auth|sig)[^=&\s]*|[^=&\s]+key[^=&\s]*)=)"
    r"[^&\s#]*?(?=$|[&\s#]|:\s)",
    re.IGNORECASE,
)
MASK = "••••••"


def mask_secrets(text: str) -> str:
    """``text`` with URL passwords and secret-looking query values replaced by :data:`MASK`.

    ``http://u:pw@h/x?token=abc&n=1`` → ``http://u:••••••@h/x?token=••••••&n=1``.
    """
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    return _SECRET_QUERY.sub(lambda m: f"{m['name']}{MASK}", text)


class MaskSecrets(logging.Filter):
    """Masks URL passwords and secret-looking query values in every line logged.

    Action failures quote their target URL, which may carry credentials.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_secrets(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def setup_logging(config: Config) -> logging.Handler:
    """Send all logging to ``config.log_file`` (or stderr) with its level, format and rotation.

    Replaces a handler installed by an earlier call, so calling it again
    (e.g. after a reload) does not duplicate lines. Returns the handler.
    Raises :class:`StartupError` when the log file can't be opened.
    """
    handler = _make_handler(config)
    handler.setFormatter(logging.Formatter(config.log_format or DEFAULT_LOG_FORMAT))
    handler.addFilter(MaskSecrets())
    setattr(handler, _MARK, True)
    level = logging.getLevelName(config.log_level)

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    # DEBUG is meant for the service and tornado; other libraries' debug chatter
    # (a client library logging every statement or request) stays out unless they
    # are set up otherwise
    root.setLevel(max(level, logging.INFO))
    for name in ("forsun_box", "tornado"):
        logging.getLogger(name).setLevel(level)
    logging.captureWarnings(True)
    return handler
