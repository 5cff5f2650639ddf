"""Reverse delivery end to end, all over real sockets: a.test (127.0.0.2) and b.test (127.0.0.3), each a whole server.

alice@a.test submits with smtplib to A's submission port; A announces with SOURCE, B pulls with
GET and delivers; bob reads with poplib from B's runpop3. A plain aiosmtpd server plays a peer
that knows nothing of SOURCE; `MAIL_USE_SOURCE=0` makes A a plain DATA sender.
"""

from __future__ import annotations

import email
import math
import poplib
import statistics
from datetime import datetime

import pytest
from aiosmtpd.controller import Controller

from tests.dkim_support import unsigned
from tests.factories import alice_writes
from tests.instances import assert_pulled_by_b

pytest_plugins = ["tests.instances"]
pytestmark = pytest.mark.django_db(transaction=True)

def stored(instance, subject: str, transport: str) -> bytes:
    [(ref,)] = instance.query(
        "SELECT body_ref FROM mailcore_message WHERE subject = %s AND transport = %s", (subject, transport)
    )
    return instance.body(ref)


def pop3_messages(host: str, port: int, user: str, password: str) -> list[bytes]:
    client = poplib.POP3(host, port, timeout=10)
    try:
        client.user(user)
        client.pass_(password)
        count, _ = client.stat()
        # poplib removes the byte-stuffing (RFC 1939 §3) and the line ends.
        return [b"\r\n".join(client.retr(n)[1]) + b"\r\n" for n in range(1, count + 1)]
    finally:
        client.quit()


class Collector:
    """An aiosmtpd handler that keeps what DATA brought."""

    def __init__(self):
        self.envelopes = []

    async def handle_DATA(self, server, session, envelope):
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 2.0.0 Message accepted"


def plain_peer(pair) -> tuple[Controller, Collector]:
    """c.test's MX: stock aiosmtpd, which lists no SOURCE."""
    pair.route_to_peer("c.test")
    collector = Collector()
    controller = Controller(collector, hostname=pair.peer_address, port=pair.smtp_port, server_hostname="mx.c.test")
    controller.start()
    return controller, collector


def announcement_of(b, subject: str) -> dict:
    keys = ("source_id", "state", "mail_from", "origin_host", "last_error")
    rows = b.query(
        "SELECT n.source_id, n.state, n.mail_from, n.origin_host, n.last_error FROM mailcore_announcement n"
        " JOIN mailcore_message m ON m.id = n.message_id WHERE m.subject = %s",
        (subject,),
    )
    return dict(zip(keys, rows[0], strict=True)) if rows else {}


def queue_state(instance, recipient: str, subject: str) -> tuple[str, str]:
    [(state, last_reply)] = instance.query(
        "SELECT q.state, q.last_reply FROM mailcore_queueitem q JOIN mailcore_message m ON m.id = q.message_id"
        " WHERE q.recipient = %s AND m.subject = %s",
        (recipient, subject),
    )
    return state, last_reply


def test_alice_to_bob_by_source_pulled_and_read_by_pop3_and_a_plain_peer_gets_data(start_instances):
    pair = start_instances()
    a, b = pair
    b.start_process("runpop3")  # with B's own environment (database, store), stopped with B
    controller, collector = plain_peer(pair)
    try:
        # One submission, two destinations: b.test lists SOURCE, c.test (stock aiosmtpd) does not.
        a.submit("alice@a.test", ["bob@b.test", "dave@c.test"], alice_writes("hello"))
        [copy] = b.wait_for_messages("bob@b.test")
        a.wait_for_queue(lambda rows: {r["state"] for r in rows} == {"sourced", "sent"})
    finally:
        controller.stop()
    assert queue_state(a, "bob@b.test", "hello")[0] == "sourced"
    assert queue_state(a, "dave@c.test", "hello")[0] == "sent"

    # What A sends is its stored copy: its own Received, then the submission byte for byte.
    sent_by_a = stored(a, "hello", "submission")
    assert unsigned(sent_by_a).startswith(b"Received: from laptop.a.test") and sent_by_a.endswith(alice_writes("hello"))
    # The plain peer got exactly those octets by DATA: it noticed nothing.
    [(mail_from, rcpts, content)] = collector.envelopes
    assert (mail_from, rcpts, content) == ("alice@a.test", ["dave@c.test"], sent_by_a)

    # Bob's POP3 copy: B's trace headers, then what A would have sent, byte for byte.
    [by_pop3] = pop3_messages(b.address, b.pop3_port, "bob@b.test", "bob-password")
    assert by_pop3 == copy
    assert_pulled_by_b(by_pop3, sent_by_a)
    found = announcement_of(b, "hello")
    assert (found["state"], found["origin_host"]) == ("verified", "mx.a.test [127.0.0.2]")

    # A recorded the fetch of the id it announced (and only to B).
    [(source_id, fetches, first_address, destination)] = a.query(
        "SELECT source_id, fetch_count, first_fetch_address, destination_host FROM mailcore_sourcedmessage"
    )
    assert source_id == found["source_id"] and fetches == 1 and first_address.startswith("127.")
    assert destination == "mx.b.test"

    # A body From: of another domain, sourced by a.test: pulled, but delivered as unverified.
    a.submit("alice@a.test", ["bob@b.test"], alice_writes("bank", sender="Bank <security@bank.test>"))
    _, bank = b.wait_for_messages("bob@b.test", 2)
    assert b"x-source=neutral smtp.mailfrom=alice@a.test (header.from not aligned)" in bank
    assert bank.endswith(alice_writes("bank", sender="Bank <security@bank.test>"))
    assert announcement_of(b, "bank")["state"] == "unverified"


def test_data_mail_is_unverified_under_each_policy_of_b(start_instances):
    # MAIL_USE_SOURCE=0: A is a plain SMTP sender, everything goes by DATA. The policy changes
    # between messages faster than B's recipient cache lets a change take effect (README,
    # MAIL_SMTP_RECIPIENT_CACHE), so the cache is off here.
    pair = start_instances(env={"MAIL_USE_SOURCE": "0", "MAIL_SMTP_RECIPIENT_CACHE": "0"})
    a, b = pair

    a.submit("alice@a.test", ["bob@b.test"], alice_writes("accepted"))
    [accepted] = b.wait_for_messages("bob@b.test")
    assert b"Authentication-Results: mx.b.test; x-source=none smtp.mailfrom=alice@a.test;\r\n\tspf=" in accepted
    a.wait_for_queue(lambda rows: [r["state"] for r in rows] == ["sent"])

    assert b.manage("domain", "set", "b.test", "--unverified", "quarantine").returncode == 0
    a.submit("alice@a.test", ["bob@b.test"], alice_writes("quarantined"))
    [held] = b.wait_for_messages("bob@b.test", state="quarantined")
    assert b"Subject: quarantined" in held and b"x-source=none" in held
    assert len(b.messages("bob@b.test")) == 1  # not in the inbox
    a.wait_for_queue(lambda rows: [r["state"] for r in rows] == ["sent", "sent"])

    assert b.manage("domain", "set", "b.test", "--unverified", "reject").returncode == 0
    a.submit("alice@a.test", ["bob@b.test"], alice_writes("rejected"))
    rows = a.wait_for_queue(lambda rows: len(rows) == 3 and rows[2]["state"] == "bounced")
    assert rows[2]["last_reply"].startswith("550 5.7.1 b.test accepts only verified mail"), rows[2]
    [bounce] = a.wait_for_messages("alice@a.test")
    report = email.message_from_bytes(bounce)
    assert report.get_content_type() == "multipart/report"
    assert b"Status: 5.7.1" in bounce and b"Message-ID: <rejected@a.test>" in bounce
    # Nothing was announced anywhere; no id was ever sourced.
    assert b.query("SELECT count(*) FROM mailcore_announcement") == [(0,)]
    assert a.query("SELECT count(*) FROM mailcore_sourcedmessage") == [(0,)]


def test_alias_to_a_remote_address_is_re_sourced_under_bs_own_domain(start_instances):
    pair = start_instances()
    a, b = pair
    assert b.manage("alias", "add", "fwd@b.test", "alice@a.test").returncode == 0
    a.submit("alice@a.test", ["fwd@b.test"], alice_writes("forwarded"))
    # A -> B by SOURCE; B forwards its copy back to a.test by SOURCE; A pulls it from b.test's MX.
    [back] = a.wait_for_messages("alice@a.test")

    rows = b.wait_for_queue(lambda rows: rows and rows[0]["state"] == "sourced")
    assert (rows[0]["recipient"], rows[0]["mail_from"]) == ("alice@a.test", "postmaster@b.test")
    [(b_id, b_from, b_destination, b_fetches)] = b.query(
        "SELECT source_id, mail_from, destination_host, fetch_count FROM mailcore_sourcedmessage"
    )
    assert (b_from, b_destination, b_fetches) == ("postmaster@b.test", "mx.a.test", 1)
    [(a_state, a_from, a_origin)] = a.query(
        "SELECT state, mail_from, origin_host FROM mailcore_announcement WHERE source_id = %s", (b_id,)
    )
    # Pulled from b.test's own MX: the reverse-path's domain answered for it. The visible From:
    # is alice@a.test, not aligned with b.test, so spec §5.4 makes it unverified (like SPF and DMARC).
    assert (a_from, a_origin) == ("postmaster@b.test", "mx.b.test [127.0.0.3]")
    assert a_state == "unverified"

    # What B sourced is its stored copy without the Return-Path of its own final delivery, under
    # the Delivered-To of the alias (the next hop's loop check).
    [(ref,)] = b.query("SELECT m.body_ref FROM mailcore_sourcedmessage s JOIN mailcore_message m ON m.id = s.message_id")
    forwarded_by_b = b.body(ref)
    assert not forwarded_by_b.startswith(b"Return-Path") and b"Return-Path" not in forwarded_by_b
    assert unsigned(forwarded_by_b).startswith(
        b"Delivered-To: fwd@b.test\r\nAuthentication-Results: mx.b.test; x-source=pass smtp.mailfrom=alice@a.test"
    )
    assert forwarded_by_b.endswith(alice_writes("forwarded"))
    # Alice's copy: A's trace on top of exactly what B sourced; one Return-Path, the rewritten one.
    assert back.endswith(forwarded_by_b)
    assert back.startswith(b"Return-Path: <postmaster@b.test>\r\n") and back.count(b"Return-Path:") == 1
    assert b"x-source=neutral smtp.mailfrom=postmaster@b.test (header.from not aligned)" in back


def _timestamp(value) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def test_time_from_source_250_to_bobs_mailbox(start_instances, record_property):
    """Full path latency, one message at a time: B's announcement (committed just before its 250) to the delivery row."""
    a, b = start_instances()
    count = 30
    for n in range(count):
        a.submit("alice@a.test", ["bob@b.test"], alice_writes(f"latency-{n}"))
        b.wait_for_messages("bob@b.test", n + 1)
    rows = b.query(
        "SELECT n.received_at, d.delivered_at FROM mailcore_announcement n"
        " JOIN mailcore_delivery d ON d.message_id = n.message_id ORDER BY n.id"
    )
    timings = sorted((_timestamp(done) - _timestamp(announced)).total_seconds() for announced, done in rows)
    assert len(timings) == count
    median = statistics.median(timings)
    p99 = timings[min(count - 1, math.ceil(0.99 * count) - 1)]  # nearest rank: the slowest of 30
    broker = "redis" if "REDIS_URL" in b.env else "orm"
    record_property(f"source_to_mailbox_median_s_{broker}", round(median, 3))
    record_property(f"source_to_mailbox_p99_s_{broker}", round(p99, 3))
    assert median < 5  # a kicked pull, not the sweep
