"""Strict-mode GET (reverse-delivery.md §6) over real sockets: only an MX (or A) of a recipient domain gets the body."""

from __future__ import annotations

import pytest

from mailcore.models import SourcedMessage
from mailcore.wire import replies
from tests.dnsserver import TestDNSServer
from tests.reverse_delivery.test_smtp_reverse import ID, read_data_form, sourced
from tests.smtp_wire import RawSMTP, starts

pytestmark = pytest.mark.django_db(transaction=True)

BODY = b"Subject: strict\r\n\r\nfor carol only\r\n"
# The sourced message is for carol@c.test (test_smtp_reverse.sourced): c.test's MX is
# 127.0.0.1; 127.0.0.2, another loopback address, is a client that serves no recipient domain.
RECORDS = {
    "c.test": {"MX": [(10, "mx.c.test")]},
    "mx.c.test": {"A": ["127.0.0.1"]},
    "d.test": {"A": ["127.0.0.3"]},  # no MX: the domain's own address is its mail host (RFC 5321 §5.1)
}


@pytest.fixture
def dns():
    with TestDNSServer(RECORDS) as server:
        yield server


@pytest.fixture
def strict_mx(mx, dns):
    return mx(MAIL_SOURCE_STRICT="1", MAIL_DNS_SERVERS=dns.address, MAIL_DNS_TIMEOUT="2")


def get_reply(c: RawSMTP, line: str) -> list[bytes]:
    c.send(line.encode() + b"\r\n")
    return c.reply()


def test_the_recipient_domains_mx_gets_the_body(strict_mx):
    sourced(BODY)
    with RawSMTP(strict_mx.port) as c:
        c.greet("mx.c.test")
        assert get_reply(c, f"GET {ID}")[0] == f"250-2.0.0 {ID} message follows".encode()
        assert read_data_form(c) == BODY
        assert starts(c.cmd("NOOP"), replies.OK)
    row = SourcedMessage.objects.get()
    assert (row.fetch_count, row.first_fetch_address) == (1, "127.0.0.1")


def test_a_client_serving_no_recipient_domain_gets_554(strict_mx):
    sourced(BODY)
    with RawSMTP(strict_mx.port, source="127.0.0.2") as c:
        c.greet("mx.c.test")  # what a client says of itself counts for nothing: its address does
        assert c.cmd(f"GET {ID}") == f"554 5.7.1 {ID} is not for this client".encode()
        assert starts(c.cmd("NOOP"), replies.OK)  # a refusal, not the end of the session
    assert SourcedMessage.objects.get().fetch_count == 0  # a refused GET is no fetch


def test_a_domain_without_mx_is_served_by_its_address(strict_mx):
    SourcedMessage.objects.filter(pk=sourced(BODY).pk).update(rcpt_tos=["dave@d.test"])
    with RawSMTP(strict_mx.port, source="127.0.0.2") as c:
        c.greet("mx.d.test")
        assert starts(c.cmd(f"GET {ID}"), replies.GET_REFUSED)
    with RawSMTP(strict_mx.port, source="127.0.0.3") as c:
        c.greet("mx.d.test")
        assert get_reply(c, f"GET {ID}")[0] == f"250-2.0.0 {ID} message follows".encode()
        assert read_data_form(c) == BODY
    assert SourcedMessage.objects.get().last_fetch_address == "127.0.0.3"


def test_one_recipient_domain_served_is_enough(strict_mx):
    SourcedMessage.objects.filter(pk=sourced(BODY).pk).update(rcpt_tos=["dave@d.test", "carol@c.test"])
    with RawSMTP(strict_mx.port) as c:
        c.greet("mx.c.test")
        assert get_reply(c, f"GET {ID}")[0] == f"250-2.0.0 {ID} message follows".encode()
        assert read_data_form(c) == BODY


def test_unknown_id_is_550_before_any_strict_check(strict_mx):
    """An unknown id says nothing about who may fetch it: 550, as without strict mode."""
    with RawSMTP(strict_mx.port, source="127.0.0.2") as c:
        c.greet("mx.c.test")
        assert c.cmd(f"GET {ID}") == f"550 5.1.0 {ID} unknown".encode()
