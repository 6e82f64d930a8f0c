"""Who may talk to the service: bind check, API token, Thrift peer allowlist, connection caps.

forsun's own clients (HTTP v1 and Thrift) send no credentials, so the rules
are built to keep them working on loopback while closing the service to the
network unless it is configured for it:

- start-up refuses a non-loopback HTTP or Thrift bind without ``api_token``
  unless ``allow_insecure_bind`` is set (:func:`check_bind`);
- with ``api_token`` set, HTTP v1 requires it (``X-Api-Token`` or
  ``Authorization: Bearer``) from non-loopback peers (``v1_token_required =
  remote``, the default) or from every peer (``always``), and v2 from every
  peer: both ask :func:`authorized`, the one token check of every HTTP API
  (the console logs in with it or ``console_password``, see
  :mod:`forsun_box.api.console`);
- the Thrift protocol has no place for a token: its port admits loopback
  peers plus the networks of ``thrift_allow`` (:class:`PeerFilter`);
- ``max_http_connections`` / ``max_thrift_connections`` cap open connections;
  one over the cap is closed at once.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable, Mapping

from forsun_box.config import Config
from forsun_box.errors import StartupError

# v1 answer to a request without the token it needs (HTTP 401); forsun has no such code
UNAUTHORIZED = 1010
#: the message of that answer, on v1 and v2 alike
UNAUTHORIZED_MESSAGE = "a valid API token is required"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is this machine only."""
    host = host.strip().strip("[]")
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


def parse_networks(items: Iterable[str]) -> tuple[Network, ...]:
    """``10.0.0.0/8``, ``192.168.1.7`` or ``::1`` entries; raises ValueError on a bad one."""
    nets = []
    for item in items:
        item = item.strip()
        if item:
            nets.append(ipaddress.ip_network(item, strict=False))
    return tuple(nets)


def check_networks(items: Iterable[str]) -> None:
    """Settings check of ``thrift_allow``."""
    parse_networks(items)


def check_bind(config: Config) -> None:
    """Refuse a non-loopback bind without ``api_token`` unless ``allow_insecure_bind``."""
    if config.api_token or config.allow_insecure_bind:
        return
    exposed = []
    if not is_loopback(config.bind_address):
        exposed.append(f"Thrift {config.bind_address}:{config.port}")
    if config.http_enabled and not is_loopback(config.http_host):
        exposed.append(f"HTTP {config.http_bind}")
    if exposed:
        raise StartupError(
            f"refusing to listen on {' and '.join(exposed)} beyond this machine without "
            "api_token; set api_token (and thrift_allow for Thrift clients), or "
            "allow_insecure_bind = true to accept the risk"
        )


class PeerFilter:
    """Loopback peers plus the allowed networks."""

    def __init__(self, allow: Iterable[str] = ()) -> None:
        self.networks = parse_networks(allow)

    def admits(self, host: str) -> bool:
        if is_loopback(host):
            return True
        try:
            addr = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.networks)


def token_given(headers: Mapping[str, str]) -> str:
    """The token of a request: ``Authorization: Bearer T`` or ``X-Api-Token: T``."""
    auth = headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        return auth[7:].strip()
    return headers.get("X-Api-Token", "")


def token_ok(given: str, token: str) -> bool:
    """Constant-time comparison of a given token with the configured one."""
    return hmac.compare_digest(given.encode(), token.encode())


def authorized(
    remote_ip: str, headers: Mapping[str, str], api_token: str, scope: str = "always"
) -> bool:
    """Whether a request from ``remote_ip`` with ``headers`` may be served.

    No ``api_token`` configured: every request. Otherwise the request must
    carry it (:func:`token_given`), except from a loopback peer when
    ``scope`` is ``remote`` (v1's default: forsun's own clients send no token).
    """
    if not api_token:
        return True
    if scope != "always" and is_loopback(remote_ip):
        return True
    return token_ok(token_given(headers), api_token)
