"""Where to pull a sender domain's bodies from: its origin MX hosts, in preference order (spec §5.2).

The routing is the outbound delivery's own (`mailcore.delivery.mx`): the same MX order, implicit
MX, null MX, and private-address guard (spec §6, "Reaching inside networks").
"""

from __future__ import annotations

from dataclasses import dataclass

from mailcore.delivery.mx import MXResolver, RoutingError


@dataclass(frozen=True)
class OriginHost:
    """One address of one origin MX of the sender domain."""

    name: str
    address: str

    def __str__(self) -> str:
        return f"{self.name} [{self.address}]"


class OriginLookupError(Exception):
    """The origin hosts could not be found; `permanent` says whether retrying can help."""

    def __init__(self, reason: str, *, permanent: bool):
        super().__init__(reason)
        self.permanent = permanent


async def origin_hosts(domain: str, resolver=None) -> list[OriginHost]:
    """Every address of every origin MX, best MX first.

    No MX record: the domain itself (implicit MX). A null MX (RFC 7505), a domain that does not
    exist, or hosts with only non-public addresses (guard on) are permanent; DNS trouble is temporary.
    """
    try:
        hosts = await (resolver or MXResolver()).hosts(domain)
    except RoutingError as exc:
        raise OriginLookupError(f"origin lookup: {exc.reason}", permanent=exc.permanent) from None
    return [OriginHost(host.name, address) for host in hosts for address in host.addresses]
