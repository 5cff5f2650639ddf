"""Email authentication in the operator's tools: domain dns / dkim, the per-domain policy, the web UI and dashboard."""

from __future__ import annotations

import re

import pytest
from django.core.management import CommandError
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
from tests.factories import call_manage

pytestmark = pytest.mark.django_db


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
    call_manage("domain", "add", "a.test")
    lines = call_manage("domain", "dns", "a.test").splitlines()
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
        call_manage("domain", "dns", "nowhere.test")


def test_dkim_rotate_keeps_the_old_key_published_until_withdrawn():
    call_manage("domain", "add", "a.test")
    old = {k.selector for k in DKIMKey.objects.all()}
    # Same-day rotation: the new selectors get a suffix.
    out = call_manage("domain", "dkim", "rotate", "a.test")
    assert "signing with" in out and "retired" in out
    keys_now = {k.selector: k.state for k in DKIMKey.objects.all()}
    assert {s for s, st in keys_now.items() if st == "retired"} == old
    new = {s for s, st in keys_now.items() if st == "active"}
    assert len(new) == 2 and not new & old
    dns = call_manage("domain", "dns", "a.test")
    assert all(f"{s}._domainkey.a.test." in dns for s in old | new)
    signing = dkim_keys.signing_keys("a.test")
    assert {k.selector for k in signing} == new and signing[0].algorithm == keys.RSA
    retired = sorted(old)[0]
    with pytest.raises(CommandError, match="active key"):
        call_manage("domain", "dkim", "withdraw", "a.test", sorted(new)[0])
    call_manage("domain", "dkim", "withdraw", "a.test", retired)
    assert f"{retired}._domainkey" not in call_manage("domain", "dns", "a.test")
    listed = call_manage("domain", "dkim", "list", "a.test")
    assert listed.count("active") == 2 and listed.count("retired") == 1


def test_authenticated_policy_per_domain_from_the_cli():
    w.make_accounts()  # a.test quarantines unverified mail
    # Default: authenticated mail is treated as verified, so a.test delivers it.
    first = arrive("alice@a.test", "dmarc passed", passing(), Verification.AUTHENTICATED)
    assert first.delivered == ["alice@a.test"] and first.message.verification == "authenticated"
    assert first.message.auth_methods["dmarc"] == {"result": "pass", "from": "origin.test", "policy": "reject", "disposition": "none"}
    call_manage("domain", "set", "a.test", "--authenticated", "unverified")
    assert Domain.objects.get(name="a.test").authenticated_policy == "unverified"
    second = arrive("alice@a.test", "dmarc passed again", passing(), Verification.AUTHENTICATED)
    assert second.quarantined == ["alice@a.test"]
    with pytest.raises(CommandError):
        call_manage("domain", "set", "a.test", "--authenticated", "maybe")
    # p=quarantine failures are held even where unverified mail is accepted.
    held = arrive("carol@b.test", "dmarc failed", failing(), Verification.UNVERIFIED)
    assert held.quarantined == ["carol@b.test"]
    assert held.message.deliveries.get().reason == "DMARC policy quarantine"


def test_authenticated_policy_is_editable_in_the_web_ui():
    w.make_accounts()
    client = Client()
    client.force_login(w.make_users()["superuser"])
    domain = Domain.objects.get(name="a.test")
    url = f"/admin/mailcore/domain/{domain.pk}/change/"
    form = {"unverified_policy": "quarantine", "active": "on", "_save": "Save"}
    page = client.get(url).content.decode()
    assert 'name="authenticated_policy"' in page and "as unverified: the unverified policy and spam threshold" in page
    assert client.post(url, {**form, "authenticated_policy": "unverified"}).status_code == 302
    assert Domain.objects.get(name="a.test").authenticated_policy == "unverified"
    refused = client.post(url, {**form, "authenticated_policy": "maybe"})
    assert refused.status_code == 200 and "Select a valid choice" in refused.content.decode()
    assert Domain.objects.get(name="a.test").authenticated_policy == "unverified"


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
    # The CLI's quarantine list: the verdict and each method's result, before the subject.
    [line] = call_manage("quarantine", "list").splitlines()
    assert line.endswith("\tDMARC policy quarantine\tunverified\tspf=fail dkim=none dmarc=fail arc=none\tdmarc failed"), line
    # The mailbox owner's quarantine list and message view.
    owner = Client()
    assert owner.post("/mailbox/login/", {"address": "carol@b.test", "password": w.PASSWORD}).status_code == 302
    home = owner.get("/mailbox/").content.decode()
    held_row = home[home.index(f'data-delivery="{held.deliveries.get().pk}"'):]
    held_row = held_row[: held_row.index("</tr>")]
    assert 'mail-unverified">unverified<' in held_row
    assert 'data-auth="spf">spf=fail<' in held_row and 'data-auth="dmarc">dmarc=fail<' in held_row
    view = owner.get(f"/mailbox/message/{held.deliveries.get().pk}/").content.decode()
    assert 'data-auth="dmarc">dmarc=fail<' in view and "dmarc=fail header.from=bank.example" in view


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
        # Published a moment later: the next look asks DNS afresh, not the cache of the last one.
        dmarc_value = "".join(re.findall(r'"([^"]*)"', records["_dmarc.a.test."]))
        dns.records["_dmarc.a.test"] = {"TXT": [dmarc_value]}
        again = client.get(f"/admin/mailcore/domain/{domain.pk}/change/").content.decode()
        assert re.search(r'<tr data-record="TXT _dmarc.a.test.">.*?mail-dns-published"', again, re.S)
    rows = dict(re.findall(r'<tr data-record="(\w+ [^"]+)">.*?mail-dns-(\w+)"', page, re.S))
    assert rows["MX a.test."] == "published"
    assert rows[f"TXT {rsa}"] == "published"
    assert rows["TXT a.test."] == "different" and "v=spf1 a -all" in page
    assert rows["TXT _dmarc.a.test."] == "missing"
    ed = next(name for name, value in records.items() if "k=ed25519" in value)
    assert rows[f"TXT {ed}"] == "missing"
