"""HTTP requests as libcurl (pycurl) takes them: what goes in, what comes out, and the
options set on an easy handle.

libcurl does the HTTP work in C (connection reuse, parsing, TLS, redirects, digest auth,
decompression). The firing process (:mod:`forsun_box.firing.worker`) drives the transfers;
the service builds the :class:`Request` and reads the :class:`Response` or
:class:`CurlError` (a transfer that got no HTTP answer: refused, time-out, TLS...).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pycurl

#: bytes of an answer's body kept (the rest is read and dropped): enough for an error message
BODY_KEEP = 200
#: redirects followed, as the previous client did
MAX_REDIRECTS = 5
#: idle easy handles kept for reuse, at most
MAX_FREE_HANDLES = 64
#: easy handles set up ahead for requests not sent yet, at most (~5 KB each); a request
#: prepared beyond this is set up when it is sent
MAX_PREPARED_HANDLES = 10_000
#: methods that carry a body by nature; curl sends them as a POST-style upload
_POST = "POST"
_HEAD = "HEAD"
_GET = "GET"

_AUTH = {"basic": pycurl.HTTPAUTH_BASIC, "digest": pycurl.HTTPAUTH_DIGEST}
_HTTP_PROTOCOLS = pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS


class CurlError(Exception):
    """A transfer ended without an HTTP answer; ``str()`` is libcurl's message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(slots=True)
class Request:
    """One HTTP request. ``headers`` are ``(name, value)`` pairs sent as given."""

    url: str
    method: str = _GET
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | None = None
    user_agent: str = ""
    #: ``(username, password, mode)`` with mode ``basic`` or ``digest``
    auth: tuple[str, str, str] | None = None
    connect_timeout: float = 5.0
    request_timeout: float = 120.0
    #: the ``HTTPHEADER`` lines, when built ahead (:func:`header_lines`)
    lines: list[bytes] | None = None


@dataclass(slots=True)
class Response:
    """The final answer (after redirects): status code and the body's first bytes."""

    code: int
    body: bytes


def header_lines(request: Request) -> list[bytes]:
    """The ``HTTPHEADER`` lines of ``request``.

    An empty value is written ``Name;``: libcurl reads ``Name:`` as "remove this header".
    A body is sent without a Content-Type unless the caller gave one or the method is POST
    (libcurl's form type there, as before).
    """
    lines = [
        (f"{name}: {value}" if value else f"{name};").encode() for name, value in request.headers
    ]
    if request.body is not None:
        lower = {name.lower() for name, _ in request.headers}
        if request.method != _POST and "content-type" not in lower:
            lines.append(b"Content-Type:")
        if "expect" not in lower:
            lines.append(b"Expect:")  # no 100-continue round trip for large bodies
    return lines


def setup_handle(curl: pycurl.Curl, request: Request) -> None:
    """Set every option of ``request`` on a reset handle."""
    setopt = curl.setopt
    # bytes: libcurl takes UTF-8 where pycurl would refuse a non-ASCII str
    setopt(pycurl.URL, request.url.encode())
    setopt(pycurl.NOSIGNAL, 1)
    setopt(pycurl.PROTOCOLS, _HTTP_PROTOCOLS)
    setopt(pycurl.REDIR_PROTOCOLS, _HTTP_PROTOCOLS)
    setopt(pycurl.FOLLOWLOCATION, 1)
    setopt(pycurl.MAXREDIRS, MAX_REDIRECTS)
    setopt(pycurl.CONNECTTIMEOUT_MS, max(1, int(request.connect_timeout * 1000)))
    setopt(pycurl.TIMEOUT_MS, max(1, int(request.request_timeout * 1000)))
    setopt(pycurl.ACCEPT_ENCODING, "gzip,deflate")
    if request.user_agent:
        setopt(pycurl.USERAGENT, request.user_agent.encode())
    lines = request.lines
    setopt(pycurl.HTTPHEADER, header_lines(request) if lines is None else lines)
    method, body = request.method, request.body
    if method == _HEAD:
        setopt(pycurl.NOBODY, 1)
    elif body is not None:
        setopt(pycurl.POSTFIELDSIZE, len(body))
        setopt(pycurl.COPYPOSTFIELDS, body)
        if method != _POST:
            setopt(pycurl.CUSTOMREQUEST, method)
    elif method != _GET:
        setopt(pycurl.CUSTOMREQUEST, method)
    if request.auth is not None:
        username, password, mode = request.auth
        setopt(pycurl.HTTPAUTH, _AUTH[mode])
        setopt(pycurl.USERNAME, username.encode())
        setopt(pycurl.PASSWORD, password.encode())


#: a request as it travels to the firing process: url, method, header lines, body, user
#: agent, auth, connect and request time-outs (seconds)
Wire = tuple[str, str, list[bytes], bytes | None, str, tuple[str, str, str] | None, float, float]


def to_wire(request: Request) -> Wire:
    """``request`` as the firing process takes it (its header lines built if not yet)."""
    lines = request.lines if request.lines is not None else header_lines(request)
    return (
        request.url,
        request.method,
        lines,
        request.body,
        request.user_agent,
        request.auth,
        request.connect_timeout,
        request.request_timeout,
    )


def from_wire(wire: Wire) -> Request:
    """The :class:`Request` that :func:`to_wire` sent."""
    url, method, lines, body, user_agent, auth, connect_timeout, request_timeout = wire
    return Request(url, method, [], body, user_agent, auth, connect_timeout, request_timeout, lines)
