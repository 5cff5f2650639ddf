"""Routing: MX by preference, implicit MX, null MX, NXDOMAIN and the private-address guard, over real DNS."""

from __future__ import annotations

import asyncio
import random

import pytest

from mailcore.delivery.mx import MXResolver, RoutingError, is_public_address, make_resolver, order_by_preference
from tests.dnsserver import TestDNSServer

RECORDS = {
    "multi.test": {"MX": [(20, "backup.multi.test"), (10, "mx1.multi.test"), (10, "mx2.multi.test")]},
    "mx1.multi.test": {"A": ["192.0.2.1"]},
    "mx2.multi.test": {"A": ["192.0.2.2"]},
    "backup.multi.test": {"A": ["198.51.100.7"], "AAAA": ["2001:db8::7"]},
    "nomx.test": {"A": ["203.0.113.5"]},
    "null.test": {"MX": [(0, ".")]},
    "inside.test": {"MX": [(10, "mx.inside.test")]},
    "mx.inside.test": {"A": ["10.1.2.3", "127.0.0.5"]},
    "bare.test": {"TXT": []},
    "public.test": {"MX": [(10, "mx.public.test")]},
    "mx.public.test": {"A": ["8.8.4.4"]},
}


@pytest.fixture
def dns_server():
    with TestDNSServer(RECORDS) as server:
        yield server


def hosts(dns_server, domain, allow_private=True):
    resolver = make_resolver([(dns_server.host, dns_server.port)], timeout=3)
    return asyncio.run(MXResolver(resolver, allow_private=allow_private).hosts(domain))


def test_mx_hosts_come_by_preference_with_their_addresses(dns_server, settings):
    found = hosts(dns_server, "multi.test")
    assert [h.preference for h in found] == [10, 10, 20]
    assert {h.name for h in found[:2]} == {"mx1.multi.test", "mx2.multi.test"}
    assert found[2].name == "backup.multi.test"
    assert found[2].addresses == ["2001:db8::7", "198.51.100.7"]


def test_equal_preferences_are_shuffled():
    records = [(10, "a"), (10, "b"), (10, "c"), (5, "first")]
    orders = {tuple(n for _, n in order_by_preference(list(records), random.Random(seed))) for seed in range(30)}
    assert all(order[0] == "first" for order in orders)
    assert len(orders) > 1


def test_no_mx_falls_back_to_the_domain_address(dns_server):
    [host] = hosts(dns_server, "nomx.test")
    assert host.implicit and host.addresses == ["203.0.113.5"]


def test_null_mx_is_permanent(dns_server):
    with pytest.raises(RoutingError) as err:
        hosts(dns_server, "null.test")
    assert err.value.permanent and "null MX" in err.value.reason


def test_nxdomain_is_permanent(dns_server):
    with pytest.raises(RoutingError) as err:
        hosts(dns_server, "nowhere.test")
    assert err.value.permanent and "does not exist" in err.value.reason


def test_domain_without_mx_or_address_is_permanent(dns_server):
    with pytest.raises(RoutingError) as err:
        hosts(dns_server, "bare.test")
    assert err.value.permanent


def test_private_destinations_are_refused_unless_allowed(dns_server):
    with pytest.raises(RoutingError) as err:
        hosts(dns_server, "inside.test", allow_private=False)
    assert err.value.permanent and "private" in err.value.reason
    assert hosts(dns_server, "inside.test", allow_private=True)[0].addresses == ["10.1.2.3", "127.0.0.5"]
    assert hosts(dns_server, "public.test", allow_private=False)[0].addresses == ["8.8.4.4"]


def test_unreachable_dns_is_temporary(settings):
    from tests.conftest import free_port

    resolver = make_resolver([("127.0.0.1", free_port())], timeout=0.5)
    with pytest.raises(RoutingError) as err:
        asyncio.run(MXResolver(resolver, allow_private=True).hosts("a.test"))
    assert not err.value.permanent


def test_settings_name_the_resolvers(dns_server, settings):
    settings.MAIL_DNS_SERVERS = [(dns_server.host, dns_server.port)]
    settings.MAIL_ALLOW_PRIVATE_DESTINATIONS = False
    resolver = MXResolver()
    with pytest.raises(RoutingError):
        asyncio.run(resolver.hosts("inside.test"))
    assert asyncio.run(resolver.hosts("public.test"))[0].name == "mx.public.test"


@pytest.mark.parametrize(
    "address,public",
    [("127.0.0.2", False), ("10.0.0.1", False), ("192.168.1.1", False), ("169.254.1.1", False),
     ("100.64.0.1", False), ("0.0.0.0", False), ("240.0.0.1", False), ("::1", False), ("fe80::1", False),
     ("fc00::1", False), ("::ffff:127.0.0.1", False), ("8.8.8.8", True), ("2a00:1450::1", True)],
)
def test_public_address_guard(address, public):
    assert is_public_address(address) is public
