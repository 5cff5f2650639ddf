"""The DNS cache: answers reused within their TTL and asked again after it, negative answers per
RFC 2308 with our cap, a message's independent lookups sent at once, and the checks that run
from the cache alone, on the listener's own thread.

The test DNS server counts the questions it receives: a cached answer is one it never sees.
"""

from __future__ import annotations

import smtplib
import time

import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.rrset
import pytest

from mailcore import dnscache
from mailcore.authentication import checks, keys, spf
from mailcore.authentication.resolver import NotCached, TXTResolver
from mailcore.authentication.signing import SigningKey, dkim_signatures
from mailcore.models import Message
from mailcore.services import inbound
from tests.dnsserver import TestDNSServer
from tests.sockets import wait_until

RECORDS = {
    "c.test": {"TXT": ["v=spf1 ip4:127.0.0.0/8 -all"]},
    "_dmarc.c.test": {"TXT": ["v=DMARC1; p=none"]},
}

MESSAGE = b"From: <carol@c.test>\r\nTo: <bob@b.test>\r\nSubject: %d\r\nMessage-ID: <%d@c.test>\r\n\r\nHello.\r\n"


def servers(server: TestDNSServer) -> list[tuple[str, int]]:
    return [(server.host, server.port)]


def first_change(ask, before, seconds: float = 30) -> tuple[object, float]:
    """Ask every 0.1 s until the answer is no longer `before`: (the new answer, when it came)."""
    changed = wait_until(lambda: (answer := ask()) != before and [answer], seconds, interval=0.1)
    assert changed, f"still {before!r}"
    return changed[0], time.monotonic()


def test_an_answer_is_reused_within_its_ttl_and_asked_again_after_it(settings):
    settings.MAIL_DNS_CACHE_SIZE = 100
    with TestDNSServer(RECORDS, ttl=2) as server:
        first = time.monotonic()
        assert TXTResolver(servers(server)).txt("c.test") == [b"v=spf1 ip4:127.0.0.0/8 -all"]
        assert TXTResolver(servers(server)).txt("c.test") == [b"v=spf1 ip4:127.0.0.0/8 -all"]
        assert server.queries[("c.test", "TXT")] == 1
        # Another type, or the same name from other servers, is another question.
        assert TXTResolver(servers(server)).query("c.test", "MX") == []
        assert server.queries[("c.test", "MX")] == 1
        # A changed record is seen once the TTL of the old one has passed, not before.
        server.records["c.test"] = {"TXT": ["v=spf1 -all"]}
        answer, seen = first_change(lambda: TXTResolver(servers(server)).txt("c.test"), [b"v=spf1 ip4:127.0.0.0/8 -all"])
        assert answer == [b"v=spf1 -all"] and seen - first >= 2
        assert server.queries[("c.test", "TXT")] == 2
        # Checking what is published (the domain page) always asks.
        assert TXTResolver(servers(server), cached=False).txt("c.test") == [b"v=spf1 -all"]
        assert server.queries[("c.test", "TXT")] == 3


def test_negative_answers_are_kept_for_the_soa_ttl_and_at_most_the_cap(settings):
    settings.MAIL_DNS_CACHE_SIZE = 100
    settings.MAIL_DNS_CACHE_NEGATIVE_TTL = 1
    with TestDNSServer(RECORDS, ttl=3600) as server:
        first = time.monotonic()
        for _ in range(3):
            assert TXTResolver(servers(server)).txt("_dmarc.nowhere.test") == []  # NXDOMAIN
            assert TXTResolver(servers(server)).query("c.test", "A") == []  # NODATA
        assert server.queries[("_dmarc.nowhere.test", "TXT")] == 1
        assert server.queries[("c.test", "A")] == 1
        # The SOA says an hour; our cap says a second: a record published meanwhile counts soon.
        server.records["_dmarc.nowhere.test"] = {"TXT": ["v=DMARC1; p=reject"]}
        answer, seen = first_change(lambda: TXTResolver(servers(server)).txt("_dmarc.nowhere.test"), [], seconds=10)
        assert answer == [b"v=DMARC1; p=reject"] and seen - first >= 1
        assert server.queries[("_dmarc.nowhere.test", "TXT")] == 2


def answer(ttl: int | None) -> dns.resolver.Answer:
    """dnspython's Answer for TXT of nowhere.test: a record with `ttl`, or NXDOMAIN without an SOA (None)."""
    qname = dns.name.from_text("nowhere.test")
    response = dns.message.make_response(dns.message.make_query(qname, "TXT"))
    if ttl is None:
        response.set_rcode(dns.rcode.NXDOMAIN)
        return dns.resolver.Answer(qname, dns.rdatatype.ANY, dns.rdataclass.IN, response)
    rrset = response.find_rrset(response.answer, qname, dns.rdataclass.IN, dns.rdatatype.TXT, create=True)
    rrset.add(dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, '"v=spf1 -all"'), ttl)
    return dns.resolver.Answer(qname, dns.rdatatype.TXT, dns.rdataclass.IN, response)


def test_ttl_zero_and_negative_answers_without_soa_are_not_kept():
    cache = dnscache.CappedCache(10, negative_ttl=300)
    key = (dns.name.from_text("nowhere.test"), dns.rdatatype.TXT, dns.rdataclass.IN)
    nxdomain_key = (key[0], dns.rdatatype.ANY, dns.rdataclass.IN)
    # NXDOMAIN without an SOA: RFC 2308 §5 says not to cache it (dnspython alone keeps it 300 s).
    cache.put(nxdomain_key, answer(None))
    assert cache.get(nxdomain_key) is None
    # A TTL of 0 is for the transaction in progress only (RFC 1035 §3.2.1).
    cache.put(key, answer(0))
    assert cache.get(key) is None
    # A TTL of a minute is kept a minute; one of months is cut to a day.
    cache.put(key, answer(60))
    assert 55 < cache.get(key).expiration - time.time() <= 60
    cache.put(key, answer(10**7))
    assert dnscache.MAX_TTL - 5 < cache.get(key).expiration - time.time() <= dnscache.MAX_TTL


def test_spf_dkim_keys_and_dmarc_record_are_asked_at_once(settings):
    settings.MAIL_DNS_CACHE_SIZE = 100
    rsa, ed = keys.generate(keys.RSA), keys.generate(keys.ED25519)
    records = {**RECORDS, "r1._domainkey.c.test": {"TXT": [keys.key_record(keys.RSA, rsa.public)]},
               "e1._domainkey.c.test": {"TXT": [keys.key_record(keys.ED25519, ed.public)]}}
    content = MESSAGE % (0, 0)
    signed = dkim_signatures(content, "c.test", [SigningKey("r1", keys.RSA, rsa.private), SigningKey("e1", keys.ED25519, ed.private)])
    with TestDNSServer(records, ttl=60) as server:
        # Each answer takes a second: asked one after the other, the server would never hold
        # two questions at once.
        server.delay.update({name: 1.0 for name in records})
        auth = checks.check(TXTResolver(servers(server), budget=10), signed + content, "127.0.0.1", "carol@c.test", "[127.0.0.1]")
        assert (auth.spf.result, [s.result for s in auth.dkim], auth.dmarc.result) == ("pass", ["pass", "pass"], "pass")
        assert server.most_at_once >= 4, server.queries
        # The same message again: every answer is cached, nothing is asked.
        asked = sum(server.queries.values())
        checks.check(TXTResolver(servers(server), budget=10), signed + content, "127.0.0.1", "carol@c.test", "[127.0.0.1]")
        assert sum(server.queries.values()) == asked


def test_dns_cache_off(settings):
    settings.MAIL_DNS_CACHE_SIZE = 0
    with TestDNSServer(RECORDS, ttl=60) as server:
        for _ in range(2):
            TXTResolver(servers(server)).txt("c.test")
        assert server.queries[("c.test", "TXT")] == 2


@pytest.mark.django_db(transaction=True)
def test_the_mx_asks_for_a_senders_records_once_per_ttl(mx, b_test):
    """runsmtp with the checks on: messages from one sender within the TTL cost one lookup of each record.

    One SMTP process: the cache is each process's, and a second one (which takes the first
    connections while the first is still starting) would ask for the records once more.
    """
    with TestDNSServer(RECORDS, ttl=6) as server:
        smtpd = mx(MAIL_AUTH_CHECKS="1", MAIL_DNS_SERVERS=server.address, MAIL_SMTP_PROCESSES="1")

        def send(n: int) -> None:
            with smtplib.SMTP("127.0.0.1", smtpd.port, timeout=30) as client:
                client.ehlo("client.c.test")
                assert client.sendmail("carol@c.test", ["bob@b.test"], MESSAGE % (n, n)) == {}

        first = time.monotonic()
        for n in range(3):
            send(n)
        assert server.queries[("c.test", "TXT")] == 1, server.queries
        assert server.queries[("_dmarc.c.test", "TXT")] == 1, server.queries
        # A message every 0.2 s until both records have been asked for again: not before their
        # TTL has passed, and soon after.
        sent = 3
        while server.queries[("c.test", "TXT")] < 2 or server.queries[("_dmarc.c.test", "TXT")] < 2:
            assert time.monotonic() < first + 30, server.queries
            time.sleep(0.2)  # not a wait: the pace of the messages, each a test of the cache
            send(sent)
            sent += 1
        assert time.monotonic() - first >= 6
        assert server.queries[("_dmarc.c.test", "TXT")] == 2
    # Every message was checked: SPF passed for each (the cached answer is the right one).
    assert [m.auth_methods["spf"]["result"] for m in Message.objects.order_by("id")] == ["pass"] * sent


def test_a_cache_only_resolver_answers_from_the_cache_and_never_asks(settings):
    settings.MAIL_DNS_CACHE_SIZE = 100
    with TestDNSServer(RECORDS, ttl=60) as server:
        cold = TXTResolver(servers(server), cache_only=True)
        with pytest.raises(NotCached):
            cold.txt("c.test")
        assert cold.missed and sum(server.queries.values()) == 0
        TXTResolver(servers(server)).txt("c.test")
        TXTResolver(servers(server)).txt("nothing.c.test")  # NXDOMAIN, kept for the SOA's TTL
        asked = sum(server.queries.values())
        warm = TXTResolver(servers(server), cache_only=True)
        assert warm.txt("c.test") == [b"v=spf1 ip4:127.0.0.0/8 -all"]
        assert warm.txt("nothing.c.test") == []
        assert warm.query("nothing.c.test", "MX") == []  # the name does not exist: no type has an answer
        assert not warm.missed and sum(server.queries.values()) == asked


def test_sender_checks_from_the_cache_give_what_the_full_checks_give(settings):
    """SPF and the reverse-path domain's DMARC record made from the cache at RCPT, the rest with
    the message: the same results as every check made at once with the message."""
    settings.MAIL_DNS_CACHE_SIZE = 100
    rsa = keys.generate(keys.RSA)
    records = {**RECORDS, "d.test": {"TXT": ["v=spf1 -all"]}, "_dmarc.d.test": {"TXT": ["v=DMARC1; p=reject"]},
               "r1._domainkey.c.test": {"TXT": [keys.key_record(keys.RSA, rsa.public)]}}
    plain = MESSAGE % (0, 0)
    other_author = plain.replace(b"From: <carol@c.test>", b"From: <dave@d.test>")
    signed = dkim_signatures(plain, "c.test", [SigningKey("r1", keys.RSA, rsa.private)]) + plain
    identity = ("127.0.0.1", "carol@c.test", "client.c.test")
    with TestDNSServer(records, ttl=60) as server:
        resolver = TXTResolver(servers(server), cache_only=True)
        with pytest.raises(NotCached):
            checks.check_sender(resolver, *identity)
        sender = checks.check_sender(TXTResolver(servers(server)), *identity)
        assert checks.check_sender(TXTResolver(servers(server), cache_only=True), *identity) == sender
        assert (sender.spf.result, sender.dmarc_domain, sender.dmarc_record.policy) == ("pass", "c.test", "none")
        # Only a message with nothing left to look up or verify is finished without a thread.
        assert checks.check_at_once(plain, sender) == checks.check(TXTResolver(servers(server)), plain, *identity)
        assert checks.check_at_once(other_author, sender) is None
        assert checks.check_at_once(signed, sender) is None
        # A header block too large to parse on a listener's event loop goes to a worker thread.
        padded = plain.replace(b"Subject:", b"X-Padding: " + b"x" * 70 + (b"\r\n " + b"x" * 70) * 500 + b"\r\nSubject:")
        assert checks.check_at_once(padded, sender) is None
        assert checks.check(TXTResolver(servers(server)), padded, *identity).dmarc.result == "pass"
        for content in (plain, other_author, signed):
            split = checks.check(TXTResolver(servers(server)), content, *identity, sender=sender)
            whole = checks.check(TXTResolver(servers(server)), content, *identity)
            assert split == whole
        assert whole.dmarc.result == "pass" and [d.result for d in whole.dkim] == ["pass"]
        fails = checks.check(TXTResolver(servers(server)), other_author, *identity, sender=sender)
        assert (fails.dmarc.result, fails.dmarc.policy) == ("fail", "reject")


def test_a_miss_that_pyspf_swallows_is_still_a_miss(settings):
    """pyspf ignores a failed lookup of an exp= explanation: the SPF result would lack it, so
    the checks from the cache count it as not cached and the full checks are made instead."""
    settings.MAIL_DNS_CACHE_SIZE = 100
    records = {"e.test": {"TXT": ["v=spf1 ip4:192.0.2.0/24 -all exp=why.e.test"]}, "why.e.test": {"TXT": ["not you"]}}
    with TestDNSServer(records, ttl=60) as server:
        TXTResolver(servers(server)).txt("e.test")  # the record cached, its explanation not
        with pytest.raises(NotCached):
            checks.check_sender(TXTResolver(servers(server), cache_only=True), "127.0.0.1", "x@e.test", "h")
        full = checks.check_sender(TXTResolver(servers(server)), "127.0.0.1", "x@e.test", "h")
        assert checks.check_sender(TXTResolver(servers(server), cache_only=True), "127.0.0.1", "x@e.test", "h") == full
        assert full.spf.result == "fail"


@pytest.mark.django_db(transaction=True)
def test_a_slow_client_does_not_spend_the_messages_dns_budget(mx, b_test):
    """The envelope's checks start at RCPT; a client that takes longer than the whole DNS budget
    to send its message still has the message's own lookups (the DKIM key) made in time."""
    rsa = keys.generate(keys.RSA)
    records = {**RECORDS, "r1._domainkey.c.test": {"TXT": [keys.key_record(keys.RSA, rsa.public)]}}
    content = MESSAGE % (1, 1)
    signed = dkim_signatures(content, "c.test", [SigningKey("r1", keys.RSA, rsa.private)]) + content
    with TestDNSServer(records, ttl=60) as server:
        smtpd = mx(MAIL_AUTH_CHECKS="1", MAIL_DNS_SERVERS=server.address, MAIL_AUTH_DNS_TIMEOUT="1")
        with smtplib.SMTP("127.0.0.1", smtpd.port, timeout=30) as client:
            client.ehlo("client.c.test")
            client.mail("carol@c.test")
            assert client.rcpt("bob@b.test")[0] == 250
            # Not a wait: the slow client is the subject, a pause longer than the budget.
            time.sleep(1.5)
            code, reply = client.data(signed)
            assert code == 250, reply
    stored = Message.objects.get()
    assert stored.auth_methods["spf"]["result"] == "pass"
    assert [d["result"] for d in stored.auth_methods["dkim"]] == ["pass"], stored.auth_methods
    assert stored.auth_methods["dmarc"]["result"] == "pass"
    assert stored.verification == "authenticated"


def test_authenticated_at_once_only_with_the_checks_on_and_the_message_in_memory(settings):
    with TestDNSServer(RECORDS, ttl=60) as server:
        settings.MAIL_DNS_SERVERS = servers(server)
        settings.MAIL_DNS_CACHE_SIZE = 100
        settings.MAIL_AUTH_CHECKS = True
        envelope = inbound.Envelope(mail_from="carol@c.test", rcpt_tos=["bob@b.test"], client_address="127.0.0.1",
                                    helo_name="client.c.test")
        sender = inbound.check_sender("127.0.0.1", "carol@c.test", "client.c.test")
        assert inbound.check_sender("127.0.0.1", "carol@c.test", "client.c.test", at_once=True) == sender
        checked = inbound.authenticate_at_once(envelope, MESSAGE % (0, 0), sender)
        assert checked == inbound.authenticate(envelope, MESSAGE % (0, 0))
        assert checked.verification == "authenticated"
        assert inbound.authenticate_at_once(envelope, MESSAGE % (0, 0), None) is None
        settings.MAIL_AUTH_CHECKS = False
        assert inbound.check_sender("127.0.0.1", "carol@c.test", "client.c.test") is None
        assert inbound.authenticate_at_once(envelope, MESSAGE % (0, 0), sender) is None


def test_an_spf_result_is_reused_only_while_its_answers_are_cached(settings):
    """The same client, reverse-path and HELO give the same result as long as the answers it was
    computed from are cached; another client is evaluated on its own; a changed record counts
    once its cached answer has expired, as it would without the reuse."""
    settings.MAIL_DNS_CACHE_SIZE = 100
    with TestDNSServer({"c.test": {"TXT": ["v=spf1 ip4:127.0.0.0/8 -all"]}}, ttl=2) as server:
        def check(client: str = "127.0.0.1") -> str:
            return spf.check_host(TXTResolver(servers(server)), client, "carol@c.test", "client.c.test").result

        assert check() == "pass"
        assert check("192.0.2.9") == "fail"  # not the other client's result
        server.records["c.test"] = {"TXT": ["v=spf1 -all"]}
        changed = time.monotonic()
        assert check() == "pass"  # the cached answer says so still
        result, when = first_change(check, "pass", seconds=20)
        assert result == "fail" and when - changed >= 0.5
        # A dropped DNS cache drops what was computed from it.
        server.records["c.test"] = {"TXT": ["v=spf1 ip4:127.0.0.0/8 -all"]}
        dnscache.forget_all()
        assert check() == "pass"
