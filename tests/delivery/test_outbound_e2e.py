"""Outbound mail end to end: two real servers (a.test on 127.0.0.2, b.test on 127.0.0.3), a test DNS server,
and a scripted third peer, with real clients (smtplib, curl, the sendmail command)."""

from __future__ import annotations

import email
import smtplib
import subprocess

from tests.factories import parse_report
from tests.smtppeer import ScriptedPeer

pytest_plugins = ["tests.instances"]

MESSAGE = "From: Alice <alice@a.test>\r\nTo: Bob <bob@b.test>\r\nSubject: {subject}\r\n\r\nHello Bob.\r\n"


def subjects(raws: list[bytes]) -> set[str]:
    return {email.message_from_bytes(raw)["Subject"] for raw in raws}


def test_submission_sendmail_and_curl_reach_the_other_server(instances, tmp_path):
    a, b = instances
    # 1. smtplib: login and send on A's submission port.
    with smtplib.SMTP(a.address, a.submission_port, timeout=10) as client:
        client.ehlo("laptop.a.test")
        client.login("alice@a.test", "alice-password")
        client.sendmail("alice@a.test", ["bob@b.test"], MESSAGE.format(subject="by smtplib"))
    # 2. the sendmail command on A.
    result = a.manage("sendmail", "-f", "alice@a.test", "bob@b.test", stdin="Subject: by sendmail\n\nHello Bob.\n")
    assert result.returncode == 0, result.stderr
    assert "queued for bob@b.test" in result.stdout
    # 3. curl smtp:// with --user.
    message_file = tmp_path / "curl.eml"
    message_file.write_bytes(MESSAGE.format(subject="by curl").encode())
    curl = subprocess.run(
        ["curl", "-sS", f"smtp://{a.address}:{a.submission_port}/laptop.a.test", "--user", "alice@a.test:alice-password",
         "--mail-from", "alice@a.test", "--mail-rcpt", "bob@b.test", "--upload-file", str(message_file)],
        capture_output=True, text=True, timeout=30,
    )
    assert curl.returncode == 0, curl.stderr

    received = b.wait_for_messages("bob@b.test", 3)
    assert subjects(received) == {"by smtplib", "by sendmail", "by curl"}
    for raw in received:
        msg = email.message_from_bytes(raw)
        # B's trace on top, A's submission trace under it; Message-ID and Date added at A.
        assert msg["Message-ID"] and msg["Date"]
        assert any("by mx.a.test" in r for r in msg.get_all("Received"))
        assert any("by mx.b.test" in r for r in msg.get_all("Received"))
    sendmail_copy = next(r for r in received if b"by sendmail" in r)
    assert email.message_from_bytes(sendmail_copy)["From"] == "<alice@a.test>"  # sendmail adds a missing From
    rows = a.wait_for_queue(lambda rows: len(rows) == 3 and all(r["state"] != "queued" for r in rows))
    assert {r["state"] for r in rows} <= {"sent", "sourced"}


def test_deferral_is_retried_and_mailq_flushq_show_and_send_it(start_instances):
    # c.test's MX is a scripted peer that answers 451 to the first message and 250 afterwards.
    pair = start_instances(env={"MAIL_QUEUE_RETRY_DELAYS": "3600"})
    a = pair.a
    peer = ScriptedPeer(hostname="mx.c.test", final_replies=["451 4.7.1 greylisted, come back later", "250 2.0.0 accepted"])
    with pair.peer_for("c.test", peer):
        result = a.manage("sendmail", "-f", "alice@a.test", "dave@c.test", stdin="Subject: greylist me\n\nbody\n")
        assert result.returncode == 0, result.stderr
        rows = a.wait_for_queue(lambda rows: rows and rows[0]["state"] == "deferred")
        assert rows[0]["last_reply"] == "451 4.7.1 greylisted, come back later" and rows[0]["attempts"] == 1

        mailq = a.manage("mailq")
        [line] = mailq.stdout.splitlines()
        assert "\tdeferred\t1\t" in line and "<alice@a.test>\tdave@c.test\t451 4.7.1 greylisted" in line

        flush = a.manage("flushq")
        assert flush.returncode == 0, flush.stderr
        assert "c.test: 1 sent, 0 deferred, 0 bounced" in flush.stdout
        assert a.manage("mailq").stdout.strip() == "Mail queue is empty"
        [(mail_from, rcpts, body)] = peer.transactions
        assert (mail_from, rcpts) == ("alice@a.test", ["dave@c.test"]) and b"Subject: greylist me" in body


def test_permanent_failure_and_unresolvable_domain_bounce_to_the_sender(instances):
    a, b = instances
    with smtplib.SMTP(a.address, a.submission_port, timeout=10) as client:
        client.login("alice@a.test", "alice-password")
        client.sendmail("alice@a.test", ["nobody@b.test"], MESSAGE.format(subject="to nobody"))
        client.sendmail("alice@a.test", ["someone@nowhere.test"], MESSAGE.format(subject="to nowhere"))
    bounces = a.wait_for_messages("alice@a.test", 2)
    by_recipient = {}
    for raw in bounces:
        assert raw.startswith(b"Return-Path: <>")
        _, _, [recipient], headers = parse_report(raw)
        by_recipient[recipient["Final-Recipient"]] = (recipient, str(headers.get_payload()))
    nobody, nobody_headers = by_recipient["rfc822; nobody@b.test"]
    assert nobody["Action"] == "failed" and nobody["Status"] == "5.1.1"
    assert nobody["Remote-MTA"] == "dns; mx.b.test" and "550 5.1.1" in nobody["Diagnostic-Code"]
    assert "Subject: to nobody" in nobody_headers
    nowhere, _ = by_recipient["rfc822; someone@nowhere.test"]
    assert nowhere["Action"] == "failed" and nowhere["Status"] == "5.1.2"
    assert "nowhere.test does not exist" in nowhere["Diagnostic-Code"]
    assert {r["state"] for r in a.queue()} == {"bounced"}
    assert b.messages("bob@b.test") == []
