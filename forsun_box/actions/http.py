"""The ``http`` action: send one HTTP request.

Params (forsun's): ``url`` (required), ``method`` (get/post/put/delete/head,
default get), ``body``, any ``header_NAME`` (sent as header ``NAME``),
``auth_username`` / ``auth_password`` / ``auth_mode`` (basic or digest),
``user_agent``, ``connect_timeout`` and ``request_timeout`` (seconds;
defaults from the settings). Every request carries ``X-FORSUN-TIMESTAMP``,
the firing's unix time in seconds.

A 2xx answer is success, a 5xx answer asks for a retry
(:class:`~forsun_box.errors.RetryLater`), anything else (other codes,
connection errors, time-outs) is a failure, retried by the retry policy.

One client per event loop is shared by every firing, so the number of
simultaneous connections is bounded by ``http_max_clients``. The curl
client is used when pycurl is installed (it also speaks digest auth),
tornado's pure-Python client otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import weakref

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.simple_httpclient import SimpleAsyncHTTPClient

from forsun_box.actions.base import Action, ActionFailed
from forsun_box.actions.pools import seconds_param
from forsun_box.errors import RetryLater

logger = logging.getLogger("forsun_box.actions")

METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS"})
_BODY_REQUIRED = frozenset({"POST", "PUT", "PATCH"})
_ERROR_BODY_BYTES = 200


def _pick_client_class() -> tuple[type[AsyncHTTPClient], bool]:
    """The curl client when pycurl is installed (it also speaks digest auth)."""
    try:
        import pycurl  # noqa: F401
        from tornado.curl_httpclient import CurlAsyncHTTPClient
    except ImportError:
        return SimpleAsyncHTTPClient, False
    return CurlAsyncHTTPClient, True  # pragma: no cover - depends on the environment


_CLIENT_CLASS, HAS_CURL = _pick_client_class()

# loop -> (max_clients, client); weak so a finished loop's entry goes away
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[int, AsyncHTTPClient]] = (
    weakref.WeakKeyDictionary()
)


def shared_client(max_clients: int) -> AsyncHTTPClient:
    """The running loop's shared client, (re)built when ``max_clients`` changed."""
    loop = asyncio.get_running_loop()
    entry = _clients.get(loop)
    if entry is not None and entry[0] == max_clients:
        return entry[1]
    if entry is not None:
        entry[1].close()
    # force_instance: tornado's implicit per-loop singleton would ignore our
    # max_clients once anything else on the loop had created one.
    client = _CLIENT_CLASS(force_instance=True, max_clients=max_clients)
    _clients[loop] = (max_clients, client)
    return client


def close_clients() -> None:
    """Close the running loop's shared client (if any)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    entry = _clients.pop(loop, None)
    if entry is not None:
        entry[1].close()


class HttpAction(Action):
    """Sends the request described by the params; see the module docstring."""

    def build_request(self) -> HTTPRequest:
        """The request the params describe. Raises :class:`ActionFailed` on bad params."""
        params = self.params
        settings = self.settings
        url = params.get("url", "").strip()
        if not url:
            raise ActionFailed("missing param url")
        if not url.lower().startswith(("http://", "https://")):
            raise ActionFailed(f"unsupported url: {url!r}")
        method = (params.get("method") or "get").strip().upper()
        if method not in METHODS:
            raise ActionFailed(f"unsupported method: {method.lower()}")
        body: str | None = params.get("body")
        if body is None and method in _BODY_REQUIRED:
            body = ""  # tornado insists on a body for these methods
        # A body on GET/DELETE/HEAD is unusual but forsun users send it.
        nonstandard = body is not None and method not in _BODY_REQUIRED

        headers: dict[str, str] = {}
        for name, value in params.items():
            if name.startswith("header_") and len(name) > len("header_"):
                headers[name[len("header_") :]] = value
        headers["X-FORSUN-TIMESTAMP"] = str(self.ts)

        auth_username = params.get("auth_username") or None
        auth_password = params.get("auth_password")
        auth_mode = None
        if auth_username is not None:
            auth_mode = (params.get("auth_mode") or "basic").strip().lower()
            if auth_mode not in ("basic", "digest"):
                raise ActionFailed(f"unsupported auth_mode: {auth_mode}")
            if auth_mode == "digest" and not HAS_CURL:
                raise ActionFailed("auth_mode digest needs pycurl, which is not installed")
            auth_password = auth_password or ""

        return HTTPRequest(
            url,
            method=method,
            headers=headers,
            body=body,
            auth_username=auth_username,
            auth_password=auth_password,
            auth_mode=auth_mode,
            user_agent=params.get("user_agent") or settings.http_user_agent,
            connect_timeout=seconds_param(params, "connect_timeout", settings.http_connect_timeout),
            request_timeout=seconds_param(params, "request_timeout", settings.http_request_timeout),
            allow_nonstandard_methods=nonstandard,
        )

    async def execute(self, *args: object, **kwargs: object) -> None:
        request = self.build_request()
        client = shared_client(self.settings.http_max_clients)
        try:
            response = await client.fetch(request, raise_error=False)
        except HTTPClientError as e:  # time-outs (599) and the like
            raise ActionFailed(f"{request.method} {request.url}: {e}") from None
        except (OSError, ValueError) as e:
            raise ActionFailed(f"{request.method} {request.url}: {e!r}") from None
        code = response.code
        if 200 <= code < 300:
            return
        detail = f"{request.method} {request.url}: HTTP {code}"
        snippet = (response.body or b"")[:_ERROR_BODY_BYTES].decode("utf-8", "replace").strip()
        if snippet:
            detail += f": {snippet}"
        if 500 <= code < 600:
            raise RetryLater(detail)
        raise ActionFailed(detail)

    @classmethod
    async def close_shared(cls) -> None:
        close_clients()
