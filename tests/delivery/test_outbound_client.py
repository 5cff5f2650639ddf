"""The SMTP client against a scripted peer over real sockets: replies, per-recipient results, misbehaviour."""

from __future__ import annotations

import asyncio

import pytest

from mailcore.delivery.client import OutboundClient, OutboundMessage
from mailcore.delivery.mx import MailHost
from mailcore.wire.transparency import dot_stuff
from tests.conftest import free_port, self_signed_cert
from tests.factories import start_listener
from tests.smtppeer import ScriptedPeer

BODY = b"From: alice@a.test\r\nTo: bob@b.test\r\nSubject: hi\r\n\r\nHello\r\n.leading dot\r\n"


@pytest.fixture
def start_peer():
    peers = []

    def start(**script) -> tuple[ScriptedPeer, int]:
        port = free_port()
        peer = ScriptedPeer(**script).start("127.0.0.1", port)
        peers.append(peer)
        return peer, port

    yield start
    for peer in peers:
        peer.stop()


def deliver(port, messages, hosts=None, timeout=2.0):
    client = OutboundClient("mx.a.test", port, connect_timeout=1.0, timeout=timeout)
    hosts = hosts or [MailHost("mx.b.test", 10, ["127.0.0.1"])]
    return asyncio.run(client.deliver(hosts, messages))


def message(*rcpts, content=BODY, mail_from="alice@a.test"):
    return OutboundMessage("Q1", mail_from, list(rcpts or ["bob@b.test"]), content)


def test_delivers_with_pipelining_and_dot_stuffing(start_peer):
    peer, port = start_peer()
    [result] = deliver(port, [message()])["Q1"]
    assert result.delivered and result.reply == "250 2.0.0 queued" and result.remote_host == "mx.b.test[127.0.0.1]"
    assert peer.transactions == [("alice@a.test", ["bob@b.test"], BODY)]
    assert peer.commands[:3] == ["EHLO mx.a.test", f"MAIL FROM:<alice@a.test> SIZE={len(BODY)}", "RCPT TO:<bob@b.test>"]


def test_each_recipient_gets_its_own_result_on_one_connection(start_peer):
    peer, port = start_peer(rcpt_replies={"gone@b.test": "550 5.1.1 no such user", "full@b.test": "452 4.2.2 mailbox full"})
    other = OutboundMessage("Q2", "carol@a.test", ["dave@b.test"], BODY)
    results = deliver(port, [message("bob@b.test", "gone@b.test", "full@b.test"), other])
    bob, gone, full = results["Q1"]
    assert bob.delivered
    assert gone.permanent and gone.status == "5.1.1" and "550 5.1.1 no such user" in gone.reply
    assert full.temporary and full.status == "4.2.2"
    assert results["Q2"][0].delivered
    assert peer.connections == 1 and len(peer.transactions) == 2


def test_temporary_then_final_reply(start_peer):
    peer, port = start_peer(final_replies=["451 4.3.0 try again later", "250 2.0.0 ok"])
    [first] = deliver(port, [message()])["Q1"]
    assert first.temporary and first.reply.startswith("451 4.3.0")
    [second] = deliver(port, [message()])["Q1"]
    assert second.delivered


def test_permanent_mail_from_refusal_fails_every_recipient(start_peer):
    _, port = start_peer(mail_replies=["553 5.7.1 sender rejected"])
    results = deliver(port, [message("x@b.test", "y@b.test")])["Q1"]
    assert all(r.permanent and r.status == "5.7.1" for r in results)


def test_helo_fallback(start_peer):
    peer, port = start_peer(ehlo_reply="500 5.5.1 what is EHLO")
    [result] = deliver(port, [message()])["Q1"]
    assert result.delivered
    assert "HELO mx.a.test" in peer.commands
    assert any(c == "MAIL FROM:<alice@a.test>" for c in peer.commands)  # no SIZE= without ESMTP


def test_size_is_checked_before_sending(start_peer):
    peer, port = start_peer(extensions=["SIZE 100"])
    [result] = deliver(port, [message(content=BODY + b"x" * 200 + b"\r\n")])["Q1"]
    assert result.permanent and result.status == "5.3.4"
    assert not any(c.startswith("MAIL") for c in peer.commands)


def test_smtputf8_needed_but_not_offered_is_permanent(start_peer):
    peer, port = start_peer()
    [result] = deliver(port, [message("jörg@b.test")])["Q1"]
    assert result.permanent and "SMTPUTF8" in result.reply
    assert not any(c.startswith("MAIL") for c in peer.commands)


def test_smtputf8_and_8bitmime_when_offered(start_peer):
    peer, port = start_peer(extensions=["8BITMIME", "SMTPUTF8"])
    content = "Subject: grüße\r\n\r\nüber\r\n".encode()
    [result] = deliver(port, [message("jörg@b.test", content=content)])["Q1"]
    assert result.delivered
    assert "MAIL FROM:<alice@a.test> BODY=8BITMIME SMTPUTF8" in peer.commands


@pytest.mark.parametrize("stage,expect", [("greeting", "garbage"), ("mail", "timeout"), ("data-body", "closed")])
def test_misbehaving_peer_is_a_deferral_with_the_reason(start_peer, stage, expect):
    how = {"garbage": "garbage", "timeout": "stall", "closed": "close"}[expect]
    _, port = start_peer(misbehave={stage: how})
    [result] = deliver(port, [message()], timeout=0.5)["Q1"]
    assert result.temporary
    assert expect in result.reply


def test_refused_connection_tries_the_next_host(start_peer):
    peer, port = start_peer()
    hosts = [MailHost("dead.b.test", 10, ["127.0.0.9"]), MailHost("mx.b.test", 20, ["127.0.0.1"])]
    [result] = deliver(port, [message()], hosts=hosts)["Q1"]
    assert result.delivered and result.remote_host == "mx.b.test[127.0.0.1]"


def test_refused_everywhere_is_temporary():
    [result] = deliver(free_port(), [message()])["Q1"]
    assert result.temporary and "connection" in result.reply


def test_greeting_554_moves_on_to_the_next_host(start_peer):
    _, bad = start_peer(greeting="554 5.3.2 no service")
    [result] = deliver(bad, [message()])["Q1"]
    assert result.temporary and "554" in result.reply


def test_dot_stuffing():
    assert dot_stuff(b"a\r\n.b\r\n..c\n") == b"a\r\n..b\r\n...c\r\n.\r\n"
    assert dot_stuff(b"no final newline") == b"no final newline\r\n.\r\n"


@pytest.mark.django_db(transaction=True)
def test_opportunistic_starttls_against_the_real_mx(server_factory, tmp_path, b_test):
    """STARTTLS when offered (RFC 3207), EHLO again, then the message; B's trace says ESMTPS."""

    from mailcore.models import Delivery
    from mailcore.store import message_store

    cert, key = self_signed_cert(tmp_path, "mx.b.test")
    port = start_listener(server_factory, "runsmtp", MAIL_TLS_CERT=str(cert), MAIL_TLS_KEY=str(key)).port
    [result] = deliver(port, [message("bob@b.test")], timeout=10)["Q1"]
    assert result.delivered, result.reply
    [delivery] = Delivery.objects.filter(mailbox__address="bob@b.test").select_related("message")
    stored = message_store().read(delivery.message.body_ref)
    assert b"with ESMTPS" in stored and stored.endswith(BODY)
