"""The private-network guard: every connection a download makes is checked, redirects included.

The guard resolves the host itself, checks each address, and connects to the checked address,
so a name that re-resolves between check and connect (DNS rebinding) cannot slip through.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import urllib.request
from dataclasses import dataclass, field

from mmcurate.clients import deadline

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Ranges `allow_private_networks: true` opens: private, loopback, shared (CGNAT), unique-local.
_PRIVATE_KINDS = ("is_private", "is_loopback")
_SHARED = ipaddress.ip_network("100.64.0.0/10")


class PrivateAddressError(OSError):
    """A download target resolved to an address the policy refuses."""


@dataclass(frozen=True)
class NetworkPolicy:
    """Which addresses downloads may connect to."""

    allow_private_networks: bool = False
    allow_networks: tuple[IPNetwork, ...] = field(default_factory=tuple)
    # (host, port) -> (host, port) connected to instead, as curl's --connect-to; the guard checks
    # the address connected to, so a mapping never opens a refused network
    connect_to: tuple[tuple[tuple[str, int], tuple[str, int]], ...] = field(default_factory=tuple)

    @classmethod
    def from_config(cls, allow_private_networks: bool, allow_networks: list[str],
                    connect_to: list[str] = ()) -> NetworkPolicy:
        """Build the policy from `download.allow_private_networks`, `allow_networks` and `connect_to`."""
        from mmcurate.schemas.locations import parse_connect_to

        nets = tuple(ipaddress.ip_network(c, strict=False) for c in allow_networks)
        pairs = tuple(((h, p), (to_h, to_p)) for h, p, to_h, to_p in map(parse_connect_to, connect_to))
        return cls(allow_private_networks, nets, pairs)

    def target(self, host: str, port: int) -> tuple[str, int]:
        """Where a connection to `host`:`port` goes (`connect_to` applied)."""
        return dict(self.connect_to).get((host.lower(), port), (host, port))

    def refusal(self, ip: IPAddress) -> str | None:
        """Why `ip` is refused, or None when it may be connected to."""
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip in net for net in self.allow_networks if net.version == ip.version):
            return None
        if ip.is_global and not ip.is_multicast:
            return None
        if ip.is_unspecified:
            return f"{ip} is the unspecified address"
        if ip.is_multicast:
            return f"{ip} is a multicast address"
        if ip.is_link_local:
            # link-local holds cloud metadata services (169.254.169.254): only allow_networks opens it
            return f"{ip} is link-local (cloud metadata lives here)"
        private = ip in _SHARED or any(getattr(ip, kind) for kind in _PRIVATE_KINDS)
        if private and self.allow_private_networks:
            return None
        kind = "loopback" if ip.is_loopback else "private" if private else "reserved"
        return f"{ip} is a {kind} address"


def guarded_connection(
    host: str, port: int, timeout: float | None, policy: NetworkPolicy, source_address=None
) -> socket.socket:
    """Resolve `host` (after `connect_to`), refuse disallowed addresses, and connect to the first allowed one."""
    name = host
    host, port = policy.target(host, port)
    if host != name:
        name = f"{name} (connect_to {host})"
    infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    refused: list[str] = []
    last_error: OSError | None = None
    for family, socktype, proto, _, sockaddr in infos:
        ip = ipaddress.ip_address(sockaddr[0].split("%", 1)[0])
        reason = policy.refusal(ip)
        if reason is not None:
            refused.append(reason)
            continue
        sock = socket.socket(family, socktype, proto)
        deadline.track(sock)
        try:
            if timeout is not None:
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            return sock
        except OSError as err:
            sock.close()
            last_error = err
    if last_error is not None:
        raise last_error
    raise PrivateAddressError(f"refused {name}: " + "; ".join(dict.fromkeys(refused)))


class _GuardedHTTPConnection(http.client.HTTPConnection):
    policy: NetworkPolicy

    def connect(self) -> None:
        self.sock = guarded_connection(self.host, self.port, self.timeout, self.policy, self.source_address)


class _GuardedHTTPSConnection(http.client.HTTPSConnection):
    policy: NetworkPolicy

    def connect(self) -> None:
        sock = guarded_connection(self.host, self.port, self.timeout, self.policy, self.source_address)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host, do_handshake_on_connect=False)
        deadline.track(self.sock)  # the TLS socket, before its handshake: a trickled handshake is cut too
        self.sock.do_handshake()


def guarded_opener(policy: NetworkPolicy) -> urllib.request.OpenerDirector:
    """A urllib opener whose every connection, redirects included, goes through the guard.

    Proxies from the environment are not used: through a proxy the guard could not see the target.
    """

    class HTTPConn(_GuardedHTTPConnection):
        pass

    class HTTPSConn(_GuardedHTTPSConnection):
        pass

    HTTPConn.policy = policy
    HTTPSConn.policy = policy

    class HTTPHandler(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(HTTPConn, req)

    class HTTPSHandler(urllib.request.HTTPSHandler):
        def https_open(self, req):
            return self.do_open(HTTPSConn, req, context=self._context)

    # Built by hand rather than with build_opener: its FTP, file and data handlers would let a
    # redirect reach targets the guard never sees. Unknown schemes fail with "unknown url type".
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.UnknownHandler(),
        HTTPHandler(),
        HTTPSHandler(),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPRedirectHandler(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener
