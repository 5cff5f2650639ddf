"""Quarantine digests with signed one-click links, against running servers: runsmtp, runpop3, runweb.

A held message produces a digest read over POP3; its links open a page (GET changes nothing), the
POST acts once, a second POST is harmless, and forged or expired tokens get a 4xx page.
"""

from __future__ import annotations

import email
import email.policy
import poplib
import re
import urllib.error
import urllib.request
from datetime import timedelta

import pytest
from django.utils import timezone

from mailcore.models import AuditEntry, Delivery, DeliveryState, SenderRule
from mailcore.quarantine import digest, links
from mailcore.services import accounts
from tests.conftest import child_env, free_port, manage
from tests.pop3_support import start_pop3
from tests.smtp_wire import RawSMTP

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "alice-password-1"


def message(subject: str, sender: str = "news@forger.test") -> bytes:
    return (
        f"From: News <{sender}>\r\nTo: alice@a.test\r\nSubject: {subject}\r\n"
        f"Date: Thu, 03 Dec 2026 10:00:00 +0000\r\nMessage-ID: <{abs(hash(subject))}@forger.test>\r\n\r\nHello alice.\r\n"
    ).encode()


class Servers:
    def __init__(self, smtp_port, pop3_port, web_port, env):
        self.smtp_port, self.pop3_port, self.web, self.env = smtp_port, pop3_port, f"http://127.0.0.1:{web_port}", env

    def send(self, subject: str, sender: str = "news@forger.test") -> None:
        with RawSMTP(self.smtp_port) as c:
            c.greet()
            assert c.cmd(f"MAIL FROM:<{sender}>").startswith(b"250 ")
            assert c.cmd("RCPT TO:<alice@a.test>").startswith(b"250 ")
            assert c.cmd("DATA").startswith(b"354")
            c.send(message(subject, sender) + b".\r\n")
            assert c.last().startswith(b"250 ")

    def pop3_subjects(self) -> list[str]:
        client = poplib.POP3("127.0.0.1", self.pop3_port, timeout=10)
        try:
            client.user("alice@a.test")
            client.pass_(PASSWORD)
            subjects = []
            for number in range(1, len(client.list()[1]) + 1):
                raw = b"\r\n".join(client.retr(number)[1])
                subjects.append(str(email.message_from_bytes(raw, policy=email.policy.default)["Subject"]))
            return subjects
        finally:
            client.quit()

    def pop3_digest(self):
        client = poplib.POP3("127.0.0.1", self.pop3_port, timeout=10)
        try:
            client.user("alice@a.test")
            client.pass_(PASSWORD)
            for number in range(len(client.list()[1]), 0, -1):
                parsed = email.message_from_bytes(b"\r\n".join(client.retr(number)[1]), policy=email.policy.default)
                if str(parsed["Subject"]).startswith("Quarantine:"):
                    return parsed
        finally:
            client.quit()
        raise AssertionError("no digest in the mailbox")


def http(url: str, method: str = "GET") -> tuple[int, str]:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def servers(mx, server_factory, mail_store, settings):
    accounts.add_domain("a.test", "quarantine")
    accounts.add_mailbox("alice@a.test", PASSWORD)
    web_port = free_port()
    env = {"MAIL_WEB_URL": f"http://127.0.0.1:{web_port}", "MAIL_SMTP_RECIPIENT_CACHE": "0"}
    settings.MAIL_WEB_URL = env["MAIL_WEB_URL"]  # for links made in this process
    smtp = mx(**env)
    pop3_port = start_pop3(server_factory)
    server_factory("runweb", "--bind", f"127.0.0.1:{web_port}", wait=("127.0.0.1", web_port), **env)
    return Servers(smtp.port, pop3_port, web_port, child_env(mail_store, **env))


def held(subject: str) -> Delivery:
    return Delivery.objects.select_related("message").get(message__subject=subject)


def test_digest_over_pop3_and_its_release_link(servers):
    servers.send("Quarterly figures")
    assert held("Quarterly figures").state == DeliveryState.QUARANTINED
    assert servers.pop3_subjects() == []  # held mail is not in the maildrop

    printed = manage("quarantine", "digest", env=servers.env).stdout  # printing sends nothing
    assert printed.startswith("==> alice@a.test\n") and "Subject: Quarterly figures" in printed
    result = manage("quarantine", "digest", "--send", env=servers.env)
    assert result.stdout.strip() == "digest sent to alice@a.test", result.stderr
    # Nothing newly held since: no second digest, on demand or by the schedule.
    assert manage("quarantine", "digest", "--send", env=servers.env).stdout == ""

    parsed = servers.pop3_digest()
    assert parsed["Auto-Submitted"] == "auto-generated"
    text = parsed.get_body(("plain",)).get_content()
    html = parsed.get_body(("html",)).get_content()
    assert "from news@forger.test" in text and "Subject: Quarterly figures" in text
    assert "Held because its sender could not be verified, and your domain holds unverified mail." in text
    goes = (held("Quarterly figures").delivered_at + timedelta(days=30)).strftime("%Y-%m-%d")
    assert f"Deleted on {goes}." in text and "Quarterly figures" in html and "Always allow sender" in html
    release = re.search(r"Release: (\S+)", text)[1]
    assert release.startswith(servers.web + "/quarantine/release/") and release in html

    # A GET (a mail scanner, a preview) shows the page and changes nothing.
    for _ in range(2):
        status, page = http(release)
        assert status == 200 and "Quarterly figures" in page and "Release to my inbox" in page
        assert held("Quarterly figures").state == DeliveryState.QUARANTINED
    assert "Quarterly figures" not in servers.pop3_subjects()

    status, page = http(release, "POST")
    assert status == 200 and "Released to your inbox." in page
    subjects = servers.pop3_subjects()
    assert subjects.count("Quarterly figures") == 1

    status, page = http(release, "POST")
    assert status == 200 and "no longer held: nothing was changed" in page
    assert servers.pop3_subjects().count("Quarterly figures") == 1

    entry = AuditEntry.objects.get(action="release")
    assert entry.actor_kind == "link" and entry.actor.startswith("digest link ") and entry.client_address == "127.0.0.1"
    assert entry.mailbox == "alice@a.test" and "Quarterly figures" in entry.target


def test_forged_expired_and_misused_tokens_get_4xx_and_change_nothing(servers):
    servers.send("Held one")
    d = held("Held one")
    good = links.token(d, "release")
    forged = good[:-3] + ("aaa" if not good.endswith("aaa") else "bbb")
    delete_token = links.token(d, "delete")
    cases = [
        (f"/quarantine/release/{forged}/", 400),
        (f"/quarantine/release/{delete_token}/", 400),  # a delete link's token is no release link
        ("/quarantine/release/not-a-token/", 400),
    ]
    # The same delivery, held longer than the retention: its links have expired.
    Delivery.objects.filter(pk=d.pk).update(delivered_at=timezone.now() - timedelta(days=31))
    d.refresh_from_db()
    cases.append((f"/quarantine/release/{links.token(d, 'release')}/", 410))
    for path, code in cases:
        for method in ("GET", "POST"):
            status, page = http(servers.web + path, method)
            assert status == code, (path, method, page[:300])
            assert "This link does not work" in page
    assert Delivery.objects.get(pk=d.pk).state == DeliveryState.QUARANTINED
    assert not AuditEntry.objects.exists()


def test_always_allow_link_adds_the_entry_and_the_next_message_goes_to_the_inbox(servers):
    servers.send("First from news")
    [line] = digest.build(accounts.get_mailbox("alice@a.test")).lines
    status, page = http(line.allow_url)
    assert status == 200 and "news@forger.test" in page and not SenderRule.objects.exists()
    status, page = http(line.allow_url, "POST")
    assert status == 200 and "Mail from news@forger.test now goes to your inbox." in page
    rule = SenderRule.objects.get()
    assert (rule.action, rule.pattern, rule.scope, rule.mailbox.address) == ("allow", "news@forger.test", "mailbox", "alice@a.test")
    assert held("First from news").state == DeliveryState.INBOX
    servers.send("Second from news")
    assert held("Second from news").state == DeliveryState.INBOX
    assert "Second from news" in servers.pop3_subjects()
    servers.send("From someone else", sender="other@forger.test")
    assert held("From someone else").state == DeliveryState.QUARANTINED
    assert set(AuditEntry.objects.values_list("action", "actor_kind")) == {("sender-allow", "link"), ("release", "link")}


def test_delete_link_and_the_digest_interval(servers, settings):
    servers.send("To delete")
    mailbox = accounts.get_mailbox("alice@a.test")
    assert digest.send_due(interval=3600) == ["alice@a.test"]
    servers.send("Held later")
    assert digest.send_due(interval=3600) == []  # one digest an interval at most
    assert digest.send_due(interval=0) == []  # 0: digests off
    assert digest.send_due(interval=0, force=True) == ["alice@a.test"]
    lines = {line.delivery.message.subject: line for line in digest.build(mailbox, since_id=0).lines}
    status, _ = http(lines["To delete"].delete_url, "POST")
    assert status == 200 and held("To delete").state == DeliveryState.DELETED
    assert AuditEntry.objects.filter(action="delete", actor_kind="link").count() == 1
