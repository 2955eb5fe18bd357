"""Where a webhook may connect: the SSRF guard, and a resolver that only hands out checked
addresses.

Input: the host of a webhook's URL (from the configuration, trusted to be the administrator's,
but its DNS answers are not: they may point anywhere, and change between two look-ups) and the
webhook's `allow_private`. Output: the addresses the POST may connect to, or `Refused` with the
reason. The host is resolved once per attempt, every address it resolves to is checked, and the
connection is made only to those (`PinnedResolver` answers aiohttp's look-up with them, so no
second DNS query can swap in another address between the check and the connect).

Refused unless `allow_private = true`: loopback, private (RFC 1918, unique-local), link-local,
multicast, reserved, unspecified and every other address that is not globally reachable
(shared address space, documentation, benchmarking ...), for IPv4 and IPv6 alike; an IPv6
address that carries an IPv4 one (IPv4-mapped, 6to4, NAT64 64:ff9b::/96) is judged by the IPv4
address inside it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from dataclasses import dataclass

from aiohttp.abc import AbstractResolver, ResolveResult

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
NAT64 = ipaddress.ip_network("64:ff9b::/96")


class Refused(Exception):
    """The webhook's host may not be connected to (the reason is one line)."""


class Unresolved(Exception):
    """The host's name could not be resolved now (worth a retry)."""


def _inner(ip: IPAddress) -> IPAddress | None:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, NAT64), else None."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.sixtofour is not None:
            return ip.sixtofour
        if ip in NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def why_not_public(ip: IPAddress) -> str | None:
    """Why `ip` is not a public address a webhook may reach (None: it is). An IPv6 address
    carrying an IPv4 one is judged by that IPv4 address."""
    judged = _inner(ip) or ip
    for test, name in ((judged.is_unspecified, "an unspecified"),
                       (judged.is_loopback, "a loopback"),
                       (judged.is_link_local, "a link-local"),
                       (judged.is_multicast, "a multicast"),
                       (judged.is_private, "a private"),
                       (judged.is_reserved, "a reserved"),
                       (not judged.is_global, "not a globally reachable")):
        if test:
            return f"{ip} is {name} address"
    return None


@dataclass(frozen=True)
class Checked:
    """A host and the addresses a POST to it may use, in the order to try them."""

    host: str
    addresses: tuple[tuple[int, str], ...]  # (family, address)


async def check_host(host: str, port: int, allow_private: bool) -> Checked:
    """Resolve `host` (an IP literal is used as it is) and check every address. Refused when
    any of them is not public (unless `allow_private`): a name that answers with one public
    and one private address is refused whole, as the connection could go to either."""
    literal = host.strip("[]")
    ips: list[IPAddress] = []
    with contextlib.suppress(ValueError):
        ips = [ipaddress.ip_address(literal)]
    if not ips:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(literal, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise Unresolved(f"cannot resolve {host}: {exc}") from None
        ips = list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0])
                                 for info in infos))
        if not ips:
            raise Unresolved(f"cannot resolve {host}: no address")
    if not allow_private:
        for ip in ips:
            why = why_not_public(ip)
            if why is not None:
                raise Refused(f"refused {host}: {why} (set allow_private = true for this"
                              " webhook to allow it)")
    return Checked(literal, tuple(
        (socket.AF_INET6 if ip.version == 6 else socket.AF_INET, str(ip)) for ip in ips))


class PinnedResolver(AbstractResolver):
    """aiohttp's resolver for one connection: the checked addresses of the checked host, and
    nothing for any other name."""

    def __init__(self, checked: Checked) -> None:
        self.checked = checked

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        if host.strip("[]").lower() != self.checked.host.lower():
            raise OSError(f"{host} was not checked by the webhook guard")
        return [ResolveResult(hostname=host, host=address, port=port, family=fam, proto=0,
                              flags=socket.AI_NUMERICHOST)
                for fam, address in self.checked.addresses]

    async def close(self) -> None:
        return None
