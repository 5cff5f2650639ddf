"""The sending role of reverse delivery on a real instance (a.test on 127.0.0.2) against scripted receivers.

alice@a.test submits over A's submission port; c.test's MX is a scripted peer on 127.0.0.4 that
lists SOURCE and answers it as the test says (tests/source_peer.py), or that does not know it
(tests/smtppeer.py answers 502). Retention expiry runs A's own task.
"""

from __future__ import annotations

import email
import re
import socket

import pytest

from tests.dkim_support import unsigned
from tests.factories import alice_writes
from tests.smtppeer import ScriptedPeer
from tests.sockets import wait_until
from tests.source_peer import SourcePeer

pytest_plugins = ["tests.instances"]
pytestmark = pytest.mark.django_db(transaction=True)

SOURCE_COMMAND = re.compile(r"SOURCE ([0-9a-f]{32})\Z")


def message(subject: str) -> bytes:
    return alice_writes(subject, to="Dave <dave@c.test>")


def submit(a, content: bytes, rcpt: str = "dave@c.test") -> None:
    a.submit("alice@a.test", [rcpt], content)


def sourced_rows(a) -> list[dict]:
    keys = ("source_id", "mail_from", "rcpt_tos", "destination_host", "fetch_count", "expired", "body_ref", "message_id")
    rows = a.query(
        "SELECT s.source_id, s.mail_from, s.rcpt_tos, s.destination_host, s.fetch_count, s.expired, m.body_ref, m.id"
        " FROM mailcore_sourcedmessage s JOIN mailcore_message m ON m.id = s.message_id ORDER BY s.id"
    )
    return [dict(zip(keys, r, strict=True)) for r in rows]


def stored_body(a, subject: str) -> bytes:
    [(ref,)] = a.query("SELECT body_ref FROM mailcore_message WHERE subject = %s AND transport = 'submission'", (subject,))
    return a.body(ref)


def get(a, source_id: str) -> tuple[bytes, bytes]:
    """A raw GET to A's MX, as a receiver would pull: (the reply's lines, un-stuffed body)."""
    with socket.create_connection((a.address, a.smtp_port), timeout=10) as sock:
        f = sock.makefile("rb")
        assert f.readline().startswith(b"220")
        sock.sendall(b"EHLO mx.c.test\r\n")
        while not f.readline().startswith(b"250 "):
            pass
        sock.sendall(f"GET {source_id}\r\n".encode())
        reply = line = f.readline()
        while line[3:4] == b"-":  # the envelope lines of a 250 (spec §4)
            line = f.readline()
            reply += line
        body = []
        if reply.startswith(b"250"):
            while (line := f.readline()) != b".\r\n":
                assert line, "connection closed before the final dot"
                body.append(line[1:] if line.startswith(b".") else line)
        sock.sendall(b"QUIT\r\n")
        return reply, b"".join(body)


def test_sourced_with_a_fresh_id_recorded_before_source_and_get_serves_what_data_would(start_instances):
    pair = start_instances(env={"MAIL_QUEUE_RETRY_DELAYS": "1"})
    a = pair.a
    # 451 first: a temporary refusal defers, and the retry announces again under a NEW id.
    with pair.peer_for("c.test", SourcePeer(source_replies=["451 4.3.0 try again later", "250 2.6.0 {id} accepted for retrieval"])) as peer:
        submit(a, message("sourced"))
        rows = a.wait_for_queue(lambda rows: rows and rows[0]["state"] == "sourced", timeout=30)
    assert rows[0]["attempts"] == 2 and rows[0]["last_reply"].startswith("250 2.6.0 ")
    # No DATA ever went out; two SOURCE transactions, two different ids.
    assert not peer.transactions and not any(c == "DATA" for c in peer.commands)
    (_, _, first_id, first_reply), (mail_from, rcpts, second_id, _) = peer.announced
    assert first_reply.startswith("451") and first_id != second_id
    assert (mail_from, rcpts) == ("alice@a.test", ["dave@c.test"])
    assert all(SOURCE_COMMAND.match(c) for c in peer.commands if c.startswith("SOURCE"))
    # Each id names one envelope; the refused one is withdrawn, the accepted one is served.
    withdrawn, accepted = sourced_rows(a)
    assert (withdrawn["source_id"], withdrawn["expired"]) == (first_id, 1)
    assert (accepted["source_id"], accepted["expired"], accepted["destination_host"]) == (second_id, 0, "mx.c.test")
    assert accepted["mail_from"] == "alice@a.test" and "dave@c.test" in accepted["rcpt_tos"]
    # GET serves exactly the octets DATA would have sent: A's trace header, then the submission.
    reply, body = get(a, second_id)
    # The status line, then exactly the envelope of that one SOURCE transaction (spec §4).
    assert reply == f"250-2.0.0 {second_id} message follows\r\n250-FROM <alice@a.test>\r\n250 TO <dave@c.test>\r\n".encode()
    assert body == stored_body(a, "sourced")
    assert unsigned(body).startswith(b"Received: from laptop.a.test") and body.endswith(message("sourced"))
    assert b"Return-Path" not in body
    # The withdrawn id is unknown to GET.
    assert get(a, first_id)[0] == f"550 5.1.0 {first_id} unknown\r\n".encode()
    [(fetches, first_address)] = a.query(
        "SELECT fetch_count, first_fetch_address FROM mailcore_sourcedmessage WHERE source_id = %s", (second_id,)
    )
    assert fetches == 1 and first_address == "127.0.0.1"


def test_receiver_answering_source_with_502_gets_data_in_the_same_transaction(start_instances):
    pair = start_instances()
    a = pair.a
    # Lists SOURCE, then does not know it (the scripted peer answers unknown verbs with 502).
    with pair.peer_for("c.test", ScriptedPeer(hostname="mx.c.test", extensions=["PIPELINING", "SIZE 10000000", "SOURCE 2"])) as peer:
        submit(a, message("fallback"))
        rows = a.wait_for_queue(lambda rows: rows and rows[0]["state"] not in ("queued",), timeout=20)
    assert rows[0]["state"] == "sent" and rows[0]["attempts"] == 1, rows
    # MAIL, RCPT, SOURCE (502), then DATA without a new MAIL: the same transaction (spec §3 rule 4).
    verbs = [c.split(" ", 1)[0].upper() for c in peer.commands if not c.upper().startswith(("EHLO", "QUIT"))]
    assert verbs == ["MAIL", "RCPT", "SOURCE", "DATA"], peer.commands
    [(mail_from, rcpts, body)] = peer.transactions
    assert (mail_from, rcpts) == ("alice@a.test", ["dave@c.test"])
    assert body == stored_body(a, "fallback")
    [row] = sourced_rows(a)
    assert row["expired"] == 1  # withdrawn: nobody may GET what went by DATA


def test_source_refused_with_550_bounces_to_alice(start_instances):
    pair = start_instances()
    a = pair.a
    with pair.peer_for("c.test", SourcePeer(source_replies=["550 5.7.1 no such user here"])):
        submit(a, message("refused"))
        rows = a.wait_for_queue(lambda rows: rows and rows[0]["state"] == "bounced", timeout=20)
    assert rows[0]["last_reply"] == "550 5.7.1 no such user here"
    [bounce] = [m for m in a.wait_for_messages("alice@a.test") if b"multipart/report" in m]
    assert b"Status: 5.7.1" in bounce and b"no such user here" in bounce


def test_retention_expiry_notifies_alice_of_unfetched_messages_only_and_releases_bodies(start_instances):
    pair = start_instances(env={"MAIL_SOURCE_RETENTION": "3"})
    a = pair.a
    with pair.peer_for("c.test", SourcePeer()):
        submit(a, message("never-fetched"))
        submit(a, message("fetched"))
        a.wait_for_queue(lambda rows: len(rows) == 2 and all(r["state"] == "sourced" for r in rows), timeout=20)
    unfetched, fetched = sourced_rows(a)
    assert get(a, fetched["source_id"])[0].startswith(b"250-2.0.0 ")

    def expire() -> bool:
        """Run the expiry task now (the sweep's schedule is minutes); whether both have expired."""
        result = a.manage("shell", "-c", "from mailcore import tasks; print(tasks.expire_sourced())")
        assert result.returncode == 0, result.stderr
        return all(r["expired"] for r in sourced_rows(a))

    wait_until(expire, 15, interval=0.3)  # the retention of 3 s runs out meanwhile
    unfetched, fetched = sourced_rows(a)
    assert unfetched["expired"] == fetched["expired"] == 1
    # Both bodies are released: nothing (no queue item, no live sourced id) needs them.
    assert unfetched["body_ref"] == "" and fetched["body_ref"] == ""
    assert get(a, unfetched["source_id"])[0].startswith(b"550 5.1.0 ")
    # Exactly one notice, to the local sender, about the unfetched one.
    a.wait_for_messages("alice@a.test")
    assert not wait_until(lambda: len(a.messages("alice@a.test")) > 1, 0.3)
    notices = a.messages("alice@a.test")
    assert len(notices) == 1, notices
    report = email.message_from_bytes(notices[0])
    assert report.get_content_type() == "multipart/report" and report["To"] == "<alice@a.test>"
    text = notices[0].decode()
    assert "Final-Recipient: rfc822; dave@c.test" in text and "Status: 4.4.7" in text
    assert "mx.c.test accepted the message for retrieval" in text and "never collected it" in text
    assert "Message-ID: <never-fetched@a.test>" in text and "<fetched@a.test>" not in text
    # The expiry task's schedule exists once, by name.
    assert a.query("SELECT count(*) FROM django_q_schedule WHERE name = %s", ("mailcore sourced message expiry",)) == [(1,)]
