"""Which webhook URLs may be called: public addresses only, https in production.

Checked when an endpoint is registered and again before every send, on the addresses
the name resolves to then; the sender connects to the address it checked, so a name
that resolves to a public address at registration and to 127.0.0.1 later (DNS
rebinding) is refused at send time.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

#: Longest URL accepted.
MAX_URL = 2000


class UnsafeUrl(ValueError):
    """The URL is malformed, not https where https is required, or not a public address."""


def check_syntax(url: str, *, require_https: bool) -> tuple[str, str, int]:
    """(scheme, host, port) of a well-formed http(s) URL without credentials."""
    if len(url) > MAX_URL:
        raise UnsafeUrl(f"url is longer than {MAX_URL} characters")
    parts = urlsplit(url)
    allowed = ("https",) if require_https else ("http", "https")
    if parts.scheme not in allowed:
        raise UnsafeUrl(f"url must use {' or '.join(allowed)}")
    if not parts.hostname:
        raise UnsafeUrl("url has no host")
    if parts.username or parts.password:
        raise UnsafeUrl("url must not carry credentials")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise UnsafeUrl("url has an invalid port") from None
    return parts.scheme, parts.hostname, port


def is_public(address: str) -> bool:
    """Whether an IP address is globally routable (no loopback, private, link-local...)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def public_addresses(host: str, port: int, infos: list[tuple[str, int]] | None = None
                     ) -> list[str]:
    """The addresses host resolves to, all public; UnsafeUrl if any is not, or none exists.

    infos: resolved (address, family) pairs, when the caller resolved them itself.
    """
    if infos is None:
        infos = resolve(host, port)
    addresses = [a for a, _ in infos]
    if not addresses:
        raise UnsafeUrl(f"{host} does not resolve")
    private = [a for a in addresses if not is_public(a)]
    if private:
        raise UnsafeUrl(f"{host} resolves to a non-public address ({private[0]}); "
                        "set BABELQ_WEBHOOK_ALLOW_PRIVATE=true to allow it in development")
    return addresses


def resolve(host: str, port: int) -> list[tuple[str, int]]:
    """(address, family) of every address of host, without duplicates."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeUrl(f"{host} does not resolve: {exc}") from None
    return list(dict.fromkeys((str(info[4][0]), int(info[0])) for info in found))


def check_url(url: str, *, require_https: bool, allow_private: bool) -> None:
    """Refuse a URL to register: bad form, http in production, or a non-public address."""
    _, host, port = check_syntax(url, require_https=require_https)
    if not allow_private:
        public_addresses(host, port)
