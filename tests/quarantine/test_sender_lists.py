"""Sender allow and block lists: patterns, scopes and precedence (operations.md `sender`), over real SMTP."""

from __future__ import annotations

import pytest

from mailcore.models import AuditEntry, Delivery, DeliveryState, Message, Verification
from mailcore.services import accounts, senders
from mailcore.services.inbound import Envelope, SenderBlocked, receive
from tests.conftest import child_env, manage
from tests.smtp_wire import RawSMTP

pytestmark = pytest.mark.django_db(transaction=True)


def mail(sender: str = "news@spam.test", to: str = "alice@a.test", header_from: str | None = None, subject: str = "Hi") -> bytes:
    return (
        f"From: <{header_from or sender}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
        "Date: Thu, 03 Dec 2026 10:00:00 +0000\r\nMessage-ID: <x@spam.test>\r\n\r\nHello.\r\n"
    ).encode()


@pytest.fixture
def world():
    accounts.add_domain("a.test", "quarantine")
    accounts.add_domain("b.test", "reject")
    for address in ("alice@a.test", "bob@a.test", "carol@b.test"):
        accounts.add_mailbox(address, "pw")


def held_state(to: str) -> tuple[str, str]:
    d = Delivery.objects.filter(mailbox__address=to).order_by("-id").first()
    return (d.state, d.reason) if d else ("none", "")


def deliver(to: str, sender: str = "news@spam.test", header_from: str | None = None, client: str = "192.0.2.66", **kw):
    envelope = Envelope(mail_from=sender, rcpt_tos=[to], client_address=client, **kw)
    return receive(envelope, mail(sender, to, header_from))


# --- patterns and precedence (operations.md) ------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "normal"),
    [
        ("User@Example.ORG", "user@example.org"),
        ("@Example.org", "@example.org"),
        ("192.0.2.7", "192.0.2.7"),
        ("192.0.2.7/24", "192.0.2.0/24"),
        ("2001:DB8::/32", "2001:db8::/32"),
    ],
)
def test_patterns_are_normalized(given, normal):
    assert senders.normalize_pattern(given) == normal


@pytest.mark.parametrize("bad", ["", "example.org", "@", "@bad..domain", "300.1.1.1", "a@"])
def test_bad_patterns_are_refused(bad):
    with pytest.raises(senders.SenderListError):
        senders.normalize_pattern(bad)


def test_domain_pattern_covers_subdomains_only(world):
    senders.set_entry("block", "@example.org")
    rules = senders.rules_for("alice@a.test")
    assert rules.decide("x@example.org", "") == senders.BLOCK
    assert rules.decide("x@mail.example.org", "") == senders.BLOCK
    assert rules.decide("x@notexample.org", "") is None
    assert rules.decide("x@example.org.evil.test", "") is None


def test_network_patterns_match_the_client(world):
    senders.set_entry("block", "192.0.2.0/24")
    senders.set_entry("allow", "2001:db8::/32")
    rules = senders.rules_for("alice@a.test")
    assert rules.decide("", "192.0.2.200") == senders.BLOCK
    assert rules.decide("", "192.0.3.1") is None
    assert rules.decide("x@y.test", "2001:db8::7") == senders.ALLOW


def test_narrower_scope_wins_and_block_wins_at_one_scope(world):
    senders.set_entry("block", "@spam.test")  # global
    senders.set_entry("allow", "news@spam.test", senders.scope_for("a.test"))
    senders.set_entry("block", "news@spam.test", senders.scope_for("bob@a.test"))
    senders.set_entry("allow", "@spam.test", senders.scope_for("alice@a.test"))
    # alice: her own allow (mailbox) beats the domain's allow and the global block.
    assert senders.rules_for("alice@a.test").decide("news@spam.test", "") == senders.ALLOW
    # bob: his own block beats the domain's allow.
    assert senders.rules_for("bob@a.test").decide("news@spam.test", "") == senders.BLOCK
    # carol (b.test): only the global block.
    assert senders.rules_for("carol@b.test").decide("news@spam.test", "") == senders.BLOCK
    # Same scope, both match (a domain's allow for the address, its block for the whole domain): block.
    senders.set_entry("block", "@spam.test", senders.scope_for("a.test"))
    senders.remove_entry("@spam.test", senders.scope_for("alice@a.test"))
    assert senders.rules_for("alice@a.test").decide("news@spam.test", "") == senders.BLOCK
    # A network allow and an address block at one scope: block.
    senders.set_entry("allow", "192.0.2.0/24", senders.scope_for("alice@a.test"))
    senders.set_entry("block", "news@spam.test", senders.scope_for("alice@a.test"))
    assert senders.rules_for("alice@a.test").decide("news@spam.test", "192.0.2.1") == senders.BLOCK


def test_allow_replaces_block_at_the_same_scope(world):
    senders.set_entry("block", "x@spam.test")
    senders.set_entry("allow", "x@spam.test")
    assert [(r.action, r.pattern) for r in senders.entries()] == [("allow", "x@spam.test")]


# --- what the lists do to mail -------------------------------------------------------------------


def test_allow_delivers_unverified_mail_to_the_inbox_but_never_failed_mail(world):
    assert held_state("alice@a.test") == ("none", "")
    deliver("alice@a.test")
    assert held_state("alice@a.test") == (DeliveryState.QUARANTINED, "unverified")
    senders.set_entry("allow", "news@spam.test", senders.scope_for("alice@a.test"))
    deliver("alice@a.test")
    assert held_state("alice@a.test") == (DeliveryState.INBOX, "")
    deliver("alice@a.test", verification=Verification.FAILED)
    assert held_state("alice@a.test") == (DeliveryState.QUARANTINED, "unverified")
    # bob's mailbox is not covered by alice's entry.
    deliver("bob@a.test")
    assert held_state("bob@a.test") == (DeliveryState.QUARANTINED, "unverified")


def test_a_blocked_from_header_refuses_the_message_or_holds_it_for_the_blocking_recipient(world):
    senders.set_entry("block", "@evil.test", senders.scope_for("alice@a.test"))
    with pytest.raises(SenderBlocked):
        deliver("alice@a.test", sender="bounce@list.test", header_from="ceo@evil.test")
    assert not Message.objects.exists()
    envelope = Envelope(mail_from="bounce@list.test", rcpt_tos=["alice@a.test", "carol@b.test"], client_address="192.0.2.1")
    senders.set_entry("allow", "bounce@list.test", senders.scope_for("carol@b.test"))
    receipt = receive(envelope, mail("bounce@list.test", "alice@a.test", "ceo@evil.test"))
    assert held_state("alice@a.test") == (DeliveryState.QUARANTINED, "blocked sender")
    assert held_state("carol@b.test") == (DeliveryState.INBOX, "")
    assert receipt.delivered == ["carol@b.test"]


# --- over SMTP -------------------------------------------------------------------------------------


def send(server, sender, rcpts, content=None, source=None):
    with RawSMTP(server.port, source=source) as c:
        c.greet()
        assert c.cmd(f"MAIL FROM:<{sender}>").startswith(b"250 ")
        replies = [c.cmd(f"RCPT TO:<{r}>") for r in rcpts]
        data = None
        if any(r.startswith(b"250 ") for r in replies):
            data = c.cmd("DATA")
            if data.startswith(b"354"):
                c.send((content or mail(sender, rcpts[0])) + b".\r\n")
                data = c.last()
        c.cmd("QUIT")
    return replies, data


def test_block_over_smtp_at_rcpt_for_sender_and_client_at_data_for_the_header(world, mx):
    server = mx(MAIL_SMTP_RECIPIENT_CACHE="0")
    senders.set_entry("block", "@spam.test", senders.scope_for("alice@a.test"))
    replies, data = send(server, "news@spam.test", ["alice@a.test", "bob@a.test"])
    assert replies[0] == b"550 5.7.1 Sender blocked by the recipient's sender list"
    assert replies[1].startswith(b"250 ") and data.startswith(b"250 ")
    assert held_state("bob@a.test")[0] == DeliveryState.QUARANTINED and held_state("alice@a.test") == ("none", "")

    senders.set_entry("block", "127.0.0.5", senders.scope_for("a.test"))
    replies, _ = send(server, "friend@ok.test", ["bob@a.test"], source="127.0.0.5")
    assert replies == [b"550 5.7.1 Sender blocked by the recipient's sender list"]
    replies, _ = send(server, "friend@ok.test", ["bob@a.test"], source="127.0.0.6")
    assert replies[0].startswith(b"250 ")

    # The From header is read only with the message: refused at DATA, nothing stored.
    count = Message.objects.count()
    replies, data = send(server, "list@ok.test", ["alice@a.test"], mail("list@ok.test", "alice@a.test", "boss@spam.test"))
    assert replies[0].startswith(b"250 ") and data == b"550 5.7.1 Sender blocked by the recipient's sender list"
    assert Message.objects.count() == count


def test_allow_over_smtp_lifts_quarantine_and_reject_policies(world, mx):
    server = mx(MAIL_SMTP_RECIPIENT_CACHE="0")
    replies, _ = send(server, "friend@ok.test", ["carol@b.test"])
    assert replies[0].startswith(b"250 ")  # b.test rejects unverified mail at DATA
    replies, data = send(server, "friend@ok.test", ["carol@b.test"])
    assert data.startswith(b"550 5.7.1 b.test accepts only verified mail")
    senders.set_entry("allow", "friend@ok.test", senders.scope_for("carol@b.test"))
    replies, data = send(server, "friend@ok.test", ["carol@b.test"])
    assert data.startswith(b"250 ")
    assert held_state("carol@b.test") == (DeliveryState.INBOX, "")
    senders.set_entry("allow", "@ok.test", senders.scope_for("a.test"))
    replies, data = send(server, "friend@ok.test", ["alice@a.test"])
    assert data.startswith(b"250 ") and held_state("alice@a.test") == (DeliveryState.INBOX, "")


# --- the command line --------------------------------------------------------------------------------


def test_sender_command(world, mail_store):
    env = child_env(mail_store)
    assert manage("sender", "block", "@Spam.test", env=env).stdout.strip() == "block @spam.test for all domains"
    assert manage("sender", "allow", "192.0.2.0/24", "--for", "a.test", env=env).returncode == 0
    assert manage("sender", "allow", "x@spam.test", "--for", "alice@a.test", env=env).returncode == 0
    listed = manage("sender", "list", env=env).stdout.splitlines()
    assert sorted(listed) == sorted([
        "block\t@spam.test\tall domains", "allow\t192.0.2.0/24\ta.test", "allow\tx@spam.test\talice@a.test",
    ])
    assert manage("sender", "list", "--for", "a.test", env=env).stdout.splitlines() == ["allow\t192.0.2.0/24\ta.test"]
    for args in (("block", "not a pattern"), ("allow", "@x.test", "--for", "nowhere.test"),
                 ("allow", "@x.test", "--for", "nobody@a.test"), ("remove", "@never.test")):
        result = manage("sender", *args, env=env)
        assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert manage("sender", "remove", "@spam.test", env=env).returncode == 0
    assert not senders.entries(senders.GLOBAL).exists()
    actions = list(AuditEntry.objects.order_by("id").values_list("actor_kind", "action", "target"))
    assert actions[0] == ("cli", "sender-block", "@spam.test for all domains")
    assert actions[-1] == ("cli", "sender-remove", "@spam.test for all domains")


def test_an_owners_list_is_capped_and_mapped_ipv4_clients_match(world, monkeypatch):
    monkeypatch.setattr(senders, "MAX_MAILBOX_ENTRIES", 2)
    alice = senders.scope_for("alice@a.test")
    senders.set_entry("block", "192.0.2.0/24", alice)
    senders.set_entry("block", "@x.test", alice)
    with pytest.raises(senders.SenderListError, match="has 2 entries already"):
        senders.set_entry("block", "@y.test", alice)
    senders.set_entry("block", "@y.test", senders.scope_for("a.test"))  # the domain's list is the administrator's
    assert senders.rules_for("alice@a.test").decide("", "::ffff:192.0.2.9") == senders.BLOCK
    assert senders.rules_for("alice@a.test").decide("", "not an address") is None
