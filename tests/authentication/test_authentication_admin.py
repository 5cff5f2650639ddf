"""Email authentication in the operator's tools: domain dns / dkim, the per-domain policy, the web UI and dashboard."""

from __future__ import annotations

import io
import re

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from mailcore.authentication import keys
from mailcore.authentication.arc import ARCResult
from mailcore.authentication.dkim import DKIMResult
from mailcore.authentication.dmarc import DMARCResult
from mailcore.authentication.results import Authentication
from mailcore.authentication.spf import SPFResult
from mailcore.models import DeliveryState, DKIMKey, Domain, Verification
from mailcore.services import dkim_keys
from mailcore.services.inbound import Envelope, receive
from tests import web_data as w
from tests.dnsserver import TestDNSServer

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def passing(domain: str = "origin.test") -> Authentication:
    return Authentication(
        spf=SPFResult("pass", "mailfrom", domain, sender=f"news@{domain}"),
        dkim=[DKIMResult("pass", domain, "s1", "rsa-sha256", "abcdefgh")],
        dmarc=DMARCResult("pass", domain, "reject"),
        arc=ARCResult("none"),
    )


def failing(domain: str = "bank.example", policy: str = "quarantine") -> Authentication:
    return Authentication(
        spf=SPFResult("fail", "mailfrom", domain, sender=f"ceo@{domain}"),
        dkim=[],
        dmarc=DMARCResult("fail", domain, policy),
        arc=ARCResult("none"),
    )


def arrive(to: str, subject: str, auth: Authentication, verification: str) -> object:
    sender = f"news@{auth.dmarc.header_from}"
    envelope = Envelope(mail_from=sender, rcpt_tos=[to], client_address="192.0.2.66", helo_name="mail.example",
                        authentication=auth, verification=verification)
    return receive(envelope, w.content(subject, sender, to))


def test_domain_add_makes_keys_and_domain_dns_prints_zone_lines(settings):
    settings.MAIL_HOSTNAME = "mx.a.test"
    run("domain", "add", "a.test")
    lines = run("domain", "dns", "a.test").splitlines()
    assert lines[0] == "a.test. 3600 IN MX 10 mx.a.test."
    assert lines[1] == 'a.test. 3600 IN TXT "v=spf1 mx -all"'
    rsa, ed = [k for k in DKIMKey.objects.order_by("id")]
    assert (rsa.algorithm, ed.algorithm) == ("rsa", "ed25519")
    rsa_line = f"{rsa.selector}._domainkey.a.test. 3600 IN TXT "
    [published] = [line for line in lines if line.startswith(rsa_line)]
    strings = re.findall(r'"([^"]*)"', published[len(rsa_line):])
    assert len(strings) >= 2 and all(len(s) <= 255 for s in strings)  # 2048-bit key: over 255 octets
    assert "".join(strings) == f"v=DKIM1; k=rsa; p={rsa.public_key}"
    assert f'{ed.selector}._domainkey.a.test. 3600 IN TXT "v=DKIM1; k=ed25519; p={ed.public_key}"' in lines
    assert lines[-1] == '_dmarc.a.test. 3600 IN TXT "v=DMARC1; p=quarantine; adkim=r; aspf=r; rua=mailto:postmaster@a.test"'
    # The private key is a real 2048-bit RSA key.
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    assert load_pem_private_key(rsa.private_key.encode(), None).key_size == 2048
    with pytest.raises(CommandError, match="no such domain|does not exist|unknown"):
        run("domain", "dns", "nowhere.test")


def test_dkim_rotate_keeps_the_old_key_published_until_withdrawn():
    run("domain", "add", "a.test")
    old = {k.selector for k in DKIMKey.objects.all()}
    # Same-day rotation: the new selectors get a suffix.
    out = run("domain", "dkim", "rotate", "a.test")
    assert "signing with" in out and "retired" in out
    keys_now = {k.selector: k.state for k in DKIMKey.objects.all()}
    assert {s for s, st in keys_now.items() if st == "retired"} == old
    new = {s for s, st in keys_now.items() if st == "active"}
    assert len(new) == 2 and not new & old
    dns = run("domain", "dns", "a.test")
    assert all(f"{s}._domainkey.a.test." in dns for s in old | new)
    signing = dkim_keys.signing_keys("a.test")
    assert {k.selector for k in signing} == new and signing[0].algorithm == keys.RSA
    retired = sorted(old)[0]
    with pytest.raises(CommandError, match="active key"):
        run("domain", "dkim", "withdraw", "a.test", sorted(new)[0])
    run("domain", "dkim", "withdraw", "a.test", retired)
    assert f"{retired}._domainkey" not in run("domain", "dns", "a.test")
    listed = run("domain", "dkim", "list", "a.test")
    assert listed.count("active") == 2 and listed.count("retired") == 1


def test_authenticated_policy_per_domain_from_the_cli():
    w.make_accounts()  # a.test quarantines unverified mail
    # Default: authenticated mail is treated as verified, so a.test delivers it.
    first = arrive("alice@a.test", "dmarc passed", passing(), Verification.AUTHENTICATED)
    assert first.delivered == ["alice@a.test"] and first.message.verification == "authenticated"
    assert first.message.auth_methods["dmarc"] == {"result": "pass", "from": "origin.test", "policy": "reject"}
    run("domain", "set", "a.test", "--authenticated", "unverified")
    assert Domain.objects.get(name="a.test").authenticated_policy == "unverified"
    second = arrive("alice@a.test", "dmarc passed again", passing(), Verification.AUTHENTICATED)
    assert second.quarantined == ["alice@a.test"]
    with pytest.raises(CommandError):
        run("domain", "set", "a.test", "--authenticated", "maybe")
    # p=quarantine failures are held even where unverified mail is accepted.
    held = arrive("carol@b.test", "dmarc failed", failing(), Verification.UNVERIFIED)
    assert held.quarantined == ["carol@b.test"]
    assert held.message.deliveries.get().reason == "DMARC policy quarantine"


def test_web_ui_shows_results_and_counts_the_classes(settings):
    w.make_accounts()
    users = w.make_users()
    authenticated = arrive("carol@b.test", "dmarc passed", passing(), Verification.AUTHENTICATED).message
    held = arrive("carol@b.test", "dmarc failed", failing(), Verification.UNVERIFIED).message
    client = Client()
    client.force_login(users["superuser"])
    page = client.get(f"/admin/mailcore/message/{authenticated.pk}/change/").content.decode()
    assert 'data-auth="dkim">dkim=pass<' in page and 'data-auth="dmarc">dmarc=pass<' in page
    assert "dkim=pass header.d=origin.test header.s=s1" in page  # our Authentication-Results
    quarantine = client.get("/admin/mailcore/delivery/?state=quarantined").content.decode()
    assert "dmarc failed" in quarantine and "spf=fail dkim=none dmarc=fail arc=none" in quarantine
    assert "DMARC policy quarantine" in quarantine
    dashboard = client.get("/admin/").content.decode()
    got = {k: int(v) for k, v in re.findall(r'data-count="([\w-]+)">(\d+)<', dashboard)}
    assert got["authenticated-1"] == 1 and got["unverified-1"] == 1
    assert 'class="bar-authenticated"' in dashboard
    assert held.deliveries.get().state == DeliveryState.QUARANTINED


def test_domain_page_checks_each_record_against_live_dns(settings):
    settings.MAIL_HOSTNAME = "mx.a.test"
    w.make_accounts()
    users = w.make_users()
    records = dict(line.split(" 3600 IN ", 1) for line in dkim_keys.zone_lines("a.test") if " TXT " in line)
    rsa = next(name for name, value in records.items() if "k=rsa" in value)
    rsa_value = "".join(re.findall(r'"([^"]*)"', records[rsa]))
    with TestDNSServer({
        "a.test": {"MX": [(10, "mx.a.test")], "TXT": ["v=spf1 a -all"]},
        rsa.rstrip(".").lower(): {"TXT": [rsa_value]},
    }) as dns:
        host, port = dns.address.split(":")
        settings.MAIL_DNS_SERVERS = [(host, int(port))]
        client = Client()
        client.force_login(users["superuser"])
        domain = Domain.objects.get(name="a.test")
        page = client.get(f"/admin/mailcore/domain/{domain.pk}/change/").content.decode()
    rows = dict(re.findall(r'<tr data-record="(\w+ [^"]+)">.*?mail-dns-(\w+)"', page, re.S))
    assert rows["MX a.test."] == "published"
    assert rows[f"TXT {rsa}"] == "published"
    assert rows["TXT a.test."] == "different" and "v=spf1 a -all" in page
    assert rows["TXT _dmarc.a.test."] == "missing"
    ed = next(name for name, value in records.items() if "k=ed25519" in value)
    assert rows[f"TXT {ed}"] == "missing"
