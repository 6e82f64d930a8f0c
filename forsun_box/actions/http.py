"""The ``http`` action: send one HTTP request.

Params (forsun's): ``url`` (required), ``method`` (get/post/put/delete/head,
default get), ``body``, any ``header_NAME`` (sent as header ``NAME``),
``auth_username`` / ``auth_password`` / ``auth_mode`` (basic or digest),
``user_agent``, ``connect_timeout`` and ``request_timeout`` (seconds;
defaults from the settings). Every request carries ``X-FORSUN-TIMESTAMP``,
the firing's unix time in seconds, and ``X-Forsun-Firing-Id``, the firing's
idempotency key (the key percent-encoded where it holds anything but
printable ASCII).

A 2xx answer is success, a 5xx answer asks for a retry
(:class:`~forsun_box.errors.RetryLater`), anything else (other codes,
connection errors, time-outs) is a failure, retried by the retry policy.

Requests go out from the firing process (:mod:`forsun_box.firing`), shared by every
firing: at most ``http_max_clients`` requests run at once and libcurl keeps at most
that many connections, alive and reused. libcurl does the HTTP work in C (keep-alive,
TLS, redirects, digest auth). A firing prepared ahead (:meth:`HttpAction.prepare`) has
its params checked and its request built and set up in the firing process before the
instant; at the instant it is only started there.
"""

from __future__ import annotations

import functools
import logging
from urllib.parse import quote

from forsun_box.actions.base import Action, ActionFailed, Done
from forsun_box.actions.pools import seconds_param
from forsun_box.errors import RetryLater
from forsun_box.firing.client import Armable, FiringProcess, close_shared, shared
from forsun_box.firing.curl import CurlError, Request, Response, header_lines

logger = logging.getLogger("forsun_box.actions")

METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS"})
_BODY_REQUIRED = frozenset({"POST", "PUT", "PATCH"})
_ERROR_BODY_BYTES = 200
#: characters a header name or value must not hold (they would end or split the header)
_HEADER_BREAKS = ("\r", "\n", "\0")


def _check_header(name: str, value: str) -> None:
    if not name or ":" in name or any(c in name or c in value for c in _HEADER_BREAKS):
        raise ActionFailed(f"invalid header param: header_{name}")


@functools.lru_cache(maxsize=512)
def header_name(name: str) -> str:
    """``x-custom`` -> ``X-Custom``: the spelling the previous client put on the wire."""
    return "-".join(word.capitalize() for word in name.split("-"))


def header_value(text: str) -> str:
    """``text`` as it may stand in a header: printable ASCII kept, the rest percent-encoded."""
    if text.isascii() and text.isprintable():
        return text
    return quote(text, safe="".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%"))


def outcome(request: Request, response: Response) -> Exception | None:
    """What an answer means for the firing: None for a 2xx, else the error to report."""
    code = response.code
    if 200 <= code < 300:
        return None
    detail = f"{request.method} {request.url}: HTTP {code}"
    snippet = response.body[:_ERROR_BODY_BYTES].decode("utf-8", "replace").strip()
    if snippet:
        detail += f": {snippet}"
    if 500 <= code < 600:
        return RetryLater(detail)
    return ActionFailed(detail)


def _transport_error(request: Request, error: CurlError) -> ActionFailed:
    # "HTTP 599" as before: forsun's users know connection errors by that code
    return ActionFailed(f"{request.method} {request.url}: HTTP 599: {error}")


class PreparedRequest(Armable):
    """An http firing built ahead and set up in the firing process: at the instant it is
    only started there."""

    __slots__ = ("request",)
    #: the firing process bounds how many run at once
    bounded = True

    def __init__(self, request: Request, client: FiringProcess) -> None:
        self.request = request
        self.client = client
        self.id: int | None = client.prepare(request)
        self.went_out: tuple[int, int] | None = None

    def start(self, done: Done) -> None:
        request = self.request
        client, id_ = self.client, self.id
        self.id = None

        def finished(response: Response | None, error: CurlError | None) -> None:
            if error is not None:
                done(_transport_error(request, error))
            else:
                assert response is not None
                done(outcome(request, response))

        if not client.usable(id_):  # (a new process since: the preparation went with it)
            client, id_ = shared(Action.settings), None
        try:
            client.submit(request, finished, id_, self._went_out)
        except CurlError as e:
            raise _transport_error(request, e) from None

    def discard(self) -> None:
        id_, self.id = self.id, None
        if id_ is not None:
            self.client.unprepare(id_)


class HttpAction(Action):
    """Sends the request described by the params; see the module docstring."""

    def build_request(self) -> Request:
        """The request the params describe. Raises :class:`ActionFailed` on bad params."""
        params = self.params
        settings = self.settings
        url = params.get("url", "").strip()
        if not url:
            raise ActionFailed("missing param url")
        if not url.lower().startswith(("http://", "https://")):
            raise ActionFailed(f"unsupported url: {url!r}")
        if any(c in url for c in _HEADER_BREAKS) or " " in url:
            raise ActionFailed(f"unsupported url: {url!r}")
        method = (params.get("method") or "get").strip().upper()
        if method not in METHODS:
            raise ActionFailed(f"unsupported method: {method.lower()}")
        body: str | None = params.get("body")
        if body is None and method in _BODY_REQUIRED:
            body = ""  # an empty body, sent with Content-Length: 0

        headers: list[tuple[str, str]] = []
        for name, value in params.items():
            if name.startswith("header_") and len(name) > len("header_"):
                header = name[len("header_") :]
                _check_header(header, value)
                headers.append((header_name(header), value))
        headers.append(("X-Forsun-Timestamp", str(self.ts)))
        headers.append(("X-Forsun-Firing-Id", header_value(self.firing_id)))

        auth = None
        auth_username = params.get("auth_username") or None
        if auth_username is not None:
            auth_mode = (params.get("auth_mode") or "basic").strip().lower()
            if auth_mode not in ("basic", "digest"):
                raise ActionFailed(f"unsupported auth_mode: {auth_mode}")
            auth = (auth_username, params.get("auth_password") or "", auth_mode)

        return Request(
            url,
            method=method,
            headers=headers,
            body=body.encode() if body is not None else None,
            # a header_User-Agent param wins over this (libcurl sends the explicit header)
            user_agent=params.get("user_agent") or settings.http_user_agent,
            auth=auth,
            connect_timeout=seconds_param(params, "connect_timeout", settings.http_connect_timeout),
            request_timeout=seconds_param(params, "request_timeout", settings.http_request_timeout),
        )

    async def execute(self, *args: object, **kwargs: object) -> None:
        request = self.build_request()
        client = shared(self.settings)
        try:
            response = await client.fetch(request)
        except CurlError as e:  # refused, time-outs, TLS, too many redirects...
            raise _transport_error(request, e) from None
        error = outcome(request, response)
        if error is not None:
            raise error

    def prepare(self) -> PreparedRequest:
        request = self.build_request()
        request.lines = header_lines(request)
        return PreparedRequest(request, shared(self.settings))

    @classmethod
    async def close_shared(cls) -> None:
        close_shared()
