"""The authentication package on its own: SPF, DKIM, DMARC and ARC against the test DNS server.

Every lookup goes over UDP to tests/dnsserver.py; messages are signed with keys made here and
published there, so each result comes from the real code path of a receiver.
"""

from __future__ import annotations

import time

import pytest

from mailcore.authentication import arc, checks, dkim, dmarc, keys, spf
from mailcore.authentication.resolver import TXTResolver
from mailcore.authentication.results import Authentication, verdict
from mailcore.authentication.signing import SigningKey, arc_seal, dkim_signatures
from mailcore.services import inbound
from mailcore.wire.data import PART_SIZE
from tests.dnsserver import TestDNSServer

MESSAGE = (
    b"From: Alice <alice@a.test>\r\nTo: bob@b.test\r\nSubject: hello\r\n"
    b"Date: Thu, 03 Dec 2026 10:00:00 +0000\r\nMessage-ID: <1@a.test>\r\n\r\nHello Bob.\r\n"
)

RSA_KEY = keys.generate(keys.RSA)
ED_KEY = keys.generate(keys.ED25519)


def published(dns: TestDNSServer, domain: str, selector: str, pair: keys.KeyPair) -> SigningKey:
    dns.records[f"{selector}._domainkey.{domain}"] = {"TXT": [keys.key_record(pair.algorithm, pair.public)]}
    return SigningKey(selector, pair.algorithm, pair.private)


@pytest.fixture
def dns():
    with TestDNSServer(
        {
            "a.test": {"TXT": ["v=spf1 ip4:192.0.2.0/24 -all"], "MX": [(10, "mx.a.test")]},
            "mx.a.test": {"A": ["192.0.2.1"]},
            "_dmarc.a.test": {"TXT": ["v=DMARC1; p=reject; rua=mailto:dmarc@a.test"]},
            "soft.test": {"TXT": ["v=spf1 mx ~all"], "MX": [(10, "mx.a.test")]},
        },
        ttl=0,  # records change between lookups: nothing cached
    ) as server:
        yield server


def resolver(dns: TestDNSServer, budget: float = 3.0) -> TXTResolver:
    host, port = dns.address.split(":")
    return TXTResolver([(host, int(port))], budget=budget)


def test_spf_pass_fail_softfail_none(dns):
    r = resolver(dns)
    assert spf.check_host(r, "192.0.2.7", "alice@a.test", "mx.a.test").result == "pass"
    outside = spf.check_host(r, "198.51.100.9", "alice@a.test", "mx.a.test")
    assert (outside.result, outside.domain, outside.identity) == ("fail", "a.test", "mailfrom")
    # The mx mechanism resolves the MX and its address through the same server.
    assert spf.check_host(r, "192.0.2.1", "x@soft.test", "h").result == "pass"
    assert spf.check_host(r, "192.0.2.2", "x@soft.test", "h").result == "softfail"
    assert spf.check_host(r, "192.0.2.2", "x@nowhere.test", "h").result == "none"
    # A null reverse-path: the HELO identity (RFC 7208 §2.4).
    helo = spf.check_host(r, "192.0.2.7", "", "a.test")
    assert (helo.result, helo.identity) == ("pass", "helo")


def test_dkim_rsa_and_ed25519_pass_and_altered_body_fails(dns):
    r = resolver(dns)
    signing = [published(dns, "a.test", "rsa1", RSA_KEY), published(dns, "a.test", "ed1", ED_KEY)]
    signed = dkim_signatures(MESSAGE, "a.test", signing) + MESSAGE
    results = dkim.verify(r, signed)
    assert [(x.result, x.domain, x.selector, x.algorithm) for x in results] == [
        ("pass", "a.test", "rsa1", "rsa-sha256"),
        ("pass", "a.test", "ed1", "ed25519-sha256"),
    ]
    altered = signed.replace(b"Hello Bob.", b"Hello Bob!")
    failed = dkim.verify(r, altered)
    assert [x.result for x in failed] == ["fail", "fail"]
    assert "body hash" in failed[0].reason
    # A signature whose key is not published: permerror, not fail (RFC 8601 §2.7.1).
    del dns.records["rsa1._domainkey.a.test"]
    assert dkim.verify(resolver(dns), signed)[0].result == "permerror"


def test_dmarc_alignment_and_policy(dns):
    r = resolver(dns)
    key = published(dns, "a.test", "rsa1", RSA_KEY)
    signed = dkim_signatures(MESSAGE, "a.test", [key]) + MESSAGE
    sigs = dkim.verify(r, signed)
    passing_spf = spf.check_host(r, "192.0.2.7", "bounce@mail.a.test", "h")
    # DKIM aligned: pass whatever SPF says.
    assert dmarc.evaluate(r, "a.test", None, sigs).result == "pass"
    # A subdomain's record is looked up at the organizational domain (RFC 7489 §6.6.3).
    sub = dmarc.evaluate(r, "news.a.test", None, sigs)
    assert (sub.result, sub.policy) == ("pass", "reject")
    # Neither aligned: fail under p=reject.
    failing_spf = spf.check_host(r, "198.51.100.9", "alice@a.test", "h")
    failed = dmarc.evaluate(r, "a.test", failing_spf, [])
    assert (failed.result, failed.disposition) == ("fail", "reject")
    # Strict SPF alignment refuses a subdomain that relaxed alignment takes.
    dns.records["a.test"]["TXT"] = ["v=spf1 ip4:192.0.2.0/24 -all"]
    dns.records["mail.a.test"] = {"TXT": ["v=spf1 ip4:192.0.2.0/24 -all"]}
    passing_spf = spf.check_host(resolver(dns), "192.0.2.7", "bounce@mail.a.test", "h")
    assert passing_spf.result == "pass"
    assert dmarc.evaluate(resolver(dns), "a.test", passing_spf, []).result == "pass"
    dns.records["_dmarc.a.test"]["TXT"] = ["v=DMARC1; p=quarantine; aspf=s"]
    strict = dmarc.evaluate(resolver(dns), "a.test", passing_spf, [])
    assert (strict.result, strict.disposition) == ("fail", "quarantine")
    assert dmarc.evaluate(resolver(dns), "b.test", passing_spf, []).result == "none"


def test_dmarc_pct_applies_the_policy_to_that_share_of_failures(dns):
    """RFC 7489 §6.6.4: p= for pct percent of failing messages, the next weaker policy for the rest."""
    failing_spf = spf.check_host(resolver(dns), "198.51.100.9", "alice@a.test", "h")

    def dispositions(record: str, draws: list[float]) -> list[str]:
        dns.records["_dmarc.a.test"] = {"TXT": [record]}
        return [dmarc.evaluate(resolver(dns), "a.test", failing_spf, [], sample=lambda d=d: d).disposition for d in draws]

    assert dispositions("v=DMARC1; p=reject; pct=30", [0.0, 0.29, 0.3, 0.99]) == ["reject", "reject", "quarantine", "quarantine"]
    assert dispositions("v=DMARC1; p=quarantine; pct=30", [0.29, 0.3]) == ["quarantine", "none"]
    assert dispositions("v=DMARC1; p=reject; pct=0", [0.0]) == ["quarantine"]
    assert dispositions("v=DMARC1; p=reject", [0.999]) == ["reject"]  # pct defaults to 100
    dns.records["_dmarc.a.test"] = {"TXT": ["v=DMARC1; p=reject; pct=30"]}
    left_out = dmarc.evaluate(resolver(dns), "a.test", failing_spf, [], sample=lambda: 0.5)
    assert (left_out.result, left_out.policy, left_out.sampled_out) == ("fail", "reject", True)
    assert "dmarc=fail header.from=a.test (p=REJECT dis=QUARANTINE)" in Authentication(dmarc=left_out).resinfo()
    assert verdict("unverified", Authentication(dmarc=left_out)) == "unverified"  # quarantined, not refused
    # With the default random draw, about pct percent of 400 failures get the policy.
    dns.records["_dmarc.a.test"] = {"TXT": ["v=DMARC1; p=reject; pct=25"]}
    record = dmarc.find_record(resolver(dns), "a.test")
    rejected = sum(dmarc.applies(record) for _ in range(400))
    assert 50 < rejected < 150, rejected


def test_organizational_domain_uses_the_public_suffix_list():
    assert dmarc.organizational_domain("mail.example.co.uk") == "example.co.uk"
    assert dmarc.organizational_domain("a.b.example.com") == "example.com"
    assert dmarc.aligned("mail.example.co.uk", "example.co.uk", strict=False)
    assert not dmarc.aligned("one.co.uk", "two.co.uk", strict=False)
    assert not dmarc.aligned("mail.example.com", "example.com", strict=True)


def test_silent_dns_gives_temperror_within_the_budget(dns):
    dns.silent.update({"a.test", "rsa1._domainkey.a.test", "_dmarc.a.test"})
    signed = dkim_signatures(MESSAGE, "a.test", [published(dns, "a.test", "rsa1", RSA_KEY)]) + MESSAGE
    started = time.monotonic()
    auth = checks.check(resolver(dns, budget=1.0), signed, "192.0.2.7", "alice@a.test", "mx.a.test")
    assert time.monotonic() - started < 3.0
    assert auth.spf.result == "temperror"
    assert [s.result for s in auth.dkim] == ["temperror"]
    assert auth.dmarc.result == "temperror"
    assert verdict("unverified", auth) == "unverified"  # no disposition from a record we could not read


def test_arc_seal_verifies_and_breaks_when_altered(dns):
    key = published(dns, "fwd.test", "arc1", RSA_KEY)
    received = b"Authentication-Results: mx.fwd.test; spf=pass smtp.mailfrom=alice@a.test; arc=none\r\n" + MESSAGE
    sealed = arc_seal(received, "fwd.test", key, "mx.fwd.test") + received
    assert sealed.startswith(b"ARC-Seal: i=1;")
    result = arc.verify(resolver(dns), sealed)
    assert (result.result, result.instances, result.sealer) == ("pass", 1, "fwd.test")
    assert arc.verify(resolver(dns), sealed.replace(b"Hello Bob.", b"Hello, Bob.")).result == "fail"
    assert arc.verify(resolver(dns), MESSAGE).result == "none"


def test_authentication_results_and_verdicts(dns):
    r = resolver(dns)
    signed = dkim_signatures(MESSAGE, "a.test", [published(dns, "a.test", "rsa1", RSA_KEY)]) + MESSAGE
    auth = checks.check(r, signed, "192.0.2.7", "alice@a.test", "mx.a.test")
    line = "; ".join(auth.resinfo())
    assert line.startswith("spf=pass smtp.mailfrom=alice@a.test")
    assert "; spf=none smtp.helo=mx.a.test" in line  # the HELO identity too, on its own
    assert "dkim=pass header.d=a.test header.s=rsa1 header.a=rsa-sha256 header.b=" in line
    assert "dmarc=pass header.from=a.test (p=REJECT dis=NONE)" in line
    assert "arc=none" in line
    assert verdict("unverified", auth) == "authenticated"
    assert verdict("verified", auth) == "verified"
    forged = checks.check(r, MESSAGE, "198.51.100.9", "alice@a.test", "evil.test")
    assert forged.dmarc_disposition == "reject"
    assert verdict("unverified", forged) == "failed"
    assert verdict("unverified", Authentication()) == "unverified"


def test_from_domain_needs_exactly_one_address():
    assert checks.from_domain(MESSAGE) == "a.test"
    assert checks.from_domain(b"From: a@x.test, b@y.test\r\n\r\nbody") == ""
    assert checks.from_domain(b"From: a@x.test\r\nFrom: b@y.test\r\n\r\nbody") == ""
    assert checks.from_domain(b"Subject: none\r\n\r\nbody") == ""


def test_zone_txt_splits_long_values():
    value = keys.key_record("rsa", RSA_KEY.public)
    text = keys.zone_txt(value)
    pieces = text.split('" "')
    assert len(pieces) >= 2 and all(len(p.strip('"')) <= 255 for p in pieces)
    assert "".join(p.strip('"') for p in pieces) == value


def test_hostile_messages_cost_little_and_never_raise(dns):
    """Many signatures, garbage tags, a broken ARC set: bounded work, results, no exception."""
    r = resolver(dns)
    key = published(dns, "a.test", "rsa1", RSA_KEY)
    one = dkim_signatures(MESSAGE, "a.test", [key])
    garbage = b"DKIM-Signature: v=1; a=rsa-sha256; d=; s=; b=!!!; bh=???\r\n"
    arc_junk = b"ARC-Seal: i=1; a=rsa-sha256; cv=none; d=x.test; s=s; b=AAAA\r\nARC-Seal: i=zz\r\n"
    hostile = one * 20 + garbage * 20 + arc_junk + MESSAGE
    started = time.monotonic()
    auth = checks.check(r, hostile, "192.0.2.7", "alice@a.test", "mx.a.test")
    assert time.monotonic() - started < 5
    assert len(auth.dkim) == dkim.MAX_SIGNATURES and all(s.result == "pass" for s in auth.dkim)
    assert auth.arc.result == "fail"
    assert auth.dmarc.result == "pass"
    # No header section at all, and an empty message.
    assert checks.check(r, b"just a body\r\n", "192.0.2.7", "", "helo.test").dmarc.result == "none"
    assert checks.check(r, b"", "192.0.2.7", "", "").spf.result == "none"


def test_a_message_received_in_parts_is_checked_whole(dns, settings):
    # DATA hands a message over 1 MiB on in parts (wire.data.PART_SIZE): the checks read it whole.
    host, port = dns.address.split(":")
    settings.MAIL_AUTH_CHECKS, settings.MAIL_DNS_SERVERS = True, [(host, int(port))]
    message = MESSAGE + (b"x" * 900 + b"\r\n") * (2 * PART_SIZE // 902)
    signed = dkim_signatures(message, "a.test", [published(dns, "a.test", "rsa1", RSA_KEY)]) + message
    parts = [signed[i : i + PART_SIZE] for i in range(0, len(signed), PART_SIZE)]
    envelope = inbound.Envelope("alice@a.test", ["bob@b.test"], client_address="192.0.2.7", helo_name="mx.a.test")
    auth = inbound.authenticate(envelope, parts).authentication
    assert auth is not None and [d.result for d in auth.dkim] == ["pass"] and auth.spf.result == "pass"
