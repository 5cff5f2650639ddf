"""Reverse delivery version 2 under attack, over real sockets: two instances and a scripted attacker.

a.test (127.0.0.2) and b.test (127.0.0.3) are whole servers (tests/instances.py); evil.test's MX
is a scripted peer on 127.0.0.4 (tests/source_peer.py) that lists SOURCE 2, records the ids that
a real server sources to it, and serves any body the test tells it to. The attacker's commands
come from 127.0.0.4 too.
"""

from __future__ import annotations

import smtplib

import pytest

from tests.factories import alice_writes
from tests.origin_peer import body_reply
from tests.smtp_wire import RawSMTP
from tests.sockets import wait_until
from tests.source_peer import SourcePeer

pytest_plugins = ["tests.instances"]
pytestmark = pytest.mark.django_db(transaction=True)



def message(subject: str) -> bytes:
    return alice_writes(subject, to="Mallory <mallory@evil.test>")


def attacker(pair) -> SourcePeer:
    """evil.test's MX, played by the scripted peer."""
    pair.route_to_peer("evil.test")
    return SourcePeer(hostname="mx.evil.test").start(pair.peer_address, pair.smtp_port)


def announce(c: RawSMTP, mail_from: str, rcpt: str, source_id: str) -> bytes:
    assert c.cmd(f"MAIL FROM:<{mail_from}>").startswith(b"250 ")
    assert c.cmd(f"RCPT TO:<{rcpt}>").startswith(b"250 ")
    return c.cmd(f"SOURCE {source_id}")


def raw_get(instance, source_id: str) -> list[bytes]:
    """The reply lines of a GET to an instance's MX (the body after them is not read)."""
    with RawSMTP(instance.smtp_port, host=instance.address) as c:
        c.greet("mx.b.test")
        c.send(f"GET {source_id}\r\n".encode())
        return c.reply()


def announcements(b) -> dict[str, tuple[str, str, str]]:
    rows = b.query("SELECT source_id, state, mail_from, last_error FROM mailcore_announcement")
    return {source_id: (state, mail_from, error) for source_id, state, mail_from, error in rows}


def settled(b, count: int):
    def check():
        found = announcements(b)
        return found if len(found) == count and all(s != "pending" for s, _f, _e in found.values()) else None

    found = wait_until(check, 20)
    assert found, f"not {count} settled announcements: {announcements(b)}\n{b.logs()}"
    return found


def test_replayed_ids_and_bodies_that_data_refuses_fail_and_reach_no_mailbox(start_instances):
    pair = start_instances()
    a, b = pair
    peer = attacker(pair)
    try:
        # Alice writes to Mallory twice; A sources both to Mallory's MX, which keeps the ids.
        a.submit("alice@a.test", ["mallory@evil.test"], message("first"))
        a.submit("alice@a.test", ["mallory@evil.test"], message("second"))
        assert wait_until(lambda: len(peer.announced) == 2, 20), f"SOURCE commands at evil.test: {peer.announced}"
        [(_, _, first, _), (_, _, second, _)] = peer.announced

        # The GET reply carries exactly the envelope A recorded for the id, and nothing else.
        assert raw_get(a, first) == [
            f"250-2.0.0 {first} message follows".encode(),
            b"250-FROM <alice@a.test>",
            b"250 TO <mallory@evil.test>",
        ]

        bad_bodies = {
            "0" * 32: b"From: m@evil.test\r\nSubject: bare LF\r\n\r\nsmuggled\n.\nline\r\n",
            "1" * 32: b"From: m@evil.test\r\nSubject: bare CR\r\n\r\nsmuggled\r.\rline\r\n",
            "2" * 32: b"From: m@evil.test\r\nSubject: NUL\r\n\r\nnul \x00 here\r\n",
        }
        for source_id, body in bad_bodies.items():
            peer.serves[source_id] = body_reply(source_id, body, "m@evil.test", ("bob@b.test",))

        with RawSMTP(b.smtp_port, host=b.address, source=pair.peer_address) as c:
            c.greet("mx.evil.test")
            # Replays of real ids to Bob: with Alice's reverse-path, and with another one of a.test.
            assert announce(c, "alice@a.test", "bob@b.test", first) == f"250 2.6.0 {first} accepted for retrieval".encode()
            assert announce(c, "carol@a.test", "bob@b.test", second).startswith(b"250 2.6.0 ")
            # The same id once more: refused, nothing recorded (spec §3).
            assert announce(c, "alice@a.test", "bob@b.test", first) == f"554 5.7.1 {first} already announced".encode()
            for source_id in bad_bodies:
                assert announce(c, "m@evil.test", "bob@b.test", source_id).startswith(b"250 2.6.0 ")

        found = settled(b, 5)
        state, _, reason = found[first]
        assert state == "failed" and reason.startswith(
            "envelope mismatch: announced to <bob@b.test>, the origin recorded <mallory@evil.test>"
        ), reason
        state, _, reason = found[second]
        assert state == "failed" and reason.startswith(
            "envelope mismatch: announced from <carol@a.test>, the origin recorded <alice@a.test>"
        ), reason
        for source_id in bad_bodies:
            state, _, reason = found[source_id]
            assert state == "failed" and "body refused as DATA would refuse it: 554 5.6.0" in reason, reason
        assert "bare LF" in found["0" * 32][2] and "bare LF or CR" in found["1" * 32][2] and "NUL" in found["2" * 32][2]
        assert peer.gets == list(bad_bodies)  # each asked once, on B's pull from evil.test's MX
        # Nothing reached Bob, in the inbox or held.
        assert b.messages("bob@b.test") == [] and b.messages("bob@b.test", state="quarantined") == []
        assert b.query("SELECT count(*) FROM mailcore_message") == [(0,)]
        # `callbacks` shows the reason (the forgery log).
        listing = b.manage("callbacks", "--state", "failed").stdout
        assert f"{first}\tfailed" in listing and "reason=envelope mismatch" in listing
    finally:
        peer.stop()


def send_by_data(instance, mail_from: str, rcpt: str, subject: str, source: str) -> tuple[int, bytes]:
    """Plain DATA to an instance's MX from `source`: (code, text) of the final reply."""
    content = message(subject).replace(b"mallory@evil.test", rcpt.encode())
    with smtplib.SMTP(instance.address, instance.smtp_port, timeout=10, source_address=(source, 0)) as client:
        client.ehlo("forger.test")
        client.mail(mail_from)
        code, text = client.rcpt(rcpt)
        assert code == 250, text
        return client.data(content)


def held_reasons(instance, address: str) -> list[str]:
    rows = instance.query(
        "SELECT d.reason FROM mailcore_delivery d JOIN mailcore_mailbox b ON b.id = d.mailbox_id"
        " WHERE b.address = %s AND d.state = 'quarantined' ORDER BY d.id",
        (address,),
    )
    return [reason for (reason,) in rows]


def test_data_claiming_a_domain_that_delivers_by_source_is_a_downgrade(start_instances):
    # No recipient cache on B: its policy changes between messages.
    pair = start_instances(env={"MAIL_SMTP_RECIPIENT_CACHE": "0"})
    a, b = pair
    forger = pair.peer_address
    assert b.manage("callbacks", "pins").stdout == ""

    # Before a.test was ever verified, its DATA mail is plain unverified.
    assert send_by_data(b, "alice@a.test", "bob@b.test", "before", forger)[0] == 250
    [before] = b.wait_for_messages("bob@b.test")
    assert b"x-source=none smtp.mailfrom=alice@a.test;" in before

    # A genuine message by SOURCE: B verifies it and remembers a.test.
    a.submit("alice@a.test", ["bob@b.test"], message("genuine").replace(b"mallory@evil.test", b"bob@b.test"))
    b.wait_for_messages("bob@b.test", 2)
    pins = b.manage("callbacks", "pins").stdout
    assert pins.startswith("a.test\tlast verified ") and "\t1 verified\t" in pins, pins

    # Now the same DATA from a forger: quarantined (policy accept), x-source=fail, reason "downgrade".
    assert send_by_data(b, "alice@a.test", "bob@b.test", "downgraded", forger)[0] == 250
    [held] = b.wait_for_messages("bob@b.test", state="quarantined")
    assert (
        b"Authentication-Results: mx.b.test; x-source=fail smtp.mailfrom=alice@a.test"
        b" (a.test delivers by SOURCE: plain DATA from it is a likely forgery);" in held
    )
    # One of B's own domains by DATA from outside: the same (spec §6, "Own domains from outside").
    assert send_by_data(b, "bob@b.test", "bob@b.test", "own domain", forger)[0] == 250
    _, own = b.wait_for_messages("bob@b.test", 2, state="quarantined")
    assert b"x-source=fail smtp.mailfrom=bob@b.test (b.test is a domain of this server" in own
    assert held_reasons(b, "bob@b.test") == ["downgrade", "downgrade"]
    assert len(b.messages("bob@b.test")) == 2  # the inbox got neither
    listing = b.manage("quarantine", "list").stdout
    assert "downgrade" in listing, listing

    # Under `reject`: refused.
    assert b.manage("domain", "set", "b.test", "--unverified", "reject").returncode == 0
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send_by_data(b, "alice@a.test", "bob@b.test", "refused", forger)
    assert refused.value.smtp_code == 550 and refused.value.smtp_error.startswith(b"5.7.1 ")

    # Forgotten, a.test's DATA mail is plain unverified again.
    assert b.manage("domain", "set", "b.test", "--unverified", "accept").returncode == 0
    forgot = b.manage("callbacks", "forget", "a.test")
    assert forgot.returncode == 0 and forgot.stdout.startswith("forgot a.test"), forgot.stderr
    assert b.manage("callbacks", "pins").stdout == ""
    again = b.manage("callbacks", "forget", "a.test")
    assert again.returncode == 1 and "not remembered" in again.stderr
    assert send_by_data(b, "alice@a.test", "bob@b.test", "after forget", forger)[0] == 250
    *_, after = b.wait_for_messages("bob@b.test", 3)
    assert b"Subject: after forget" in after and b"x-source=none smtp.mailfrom=alice@a.test;" in after


def test_alias_forwards_held_mail_only_on_release_and_a_forged_own_from_goes_on_by_data(start_instances):
    pair = start_instances(env={"MAIL_SMTP_RECIPIENT_CACHE": "0"})
    a, b = pair
    assert b.manage("domain", "set", "b.test", "--unverified", "quarantine").returncode == 0
    assert b.manage("alias", "add", "team@b.test", "bob@b.test", "alice@a.test").returncode == 0

    # A forger's DATA to the alias, with a From: in b.test, the forwarder's own domain.
    forged = b"From: Bob <bob@b.test>\r\nTo: team@b.test\r\nSubject: forged\r\n\r\nPay the invoice.\r\n"
    with smtplib.SMTP(b.address, b.smtp_port, timeout=10, source_address=(pair.peer_address, 0)) as client:
        client.ehlo("forger.test")
        assert client.sendmail("x@elsewhere.test", ["team@b.test"], forged) == {}
    [held] = b.wait_for_messages("bob@b.test", state="quarantined")
    # Held for Bob, and the copy for the remote target waits with it: nothing leaves B.
    [row] = b.wait_for_queue(lambda rows: len(rows) == 1)
    assert (row["recipient"], row["state"], row["mail_from"]) == ("alice@a.test", "held", "postmaster@b.test")
    assert not wait_until(lambda: a.messages("alice@a.test") or b.queue()[0]["state"] != "held", 3)
    assert a.query("SELECT count(*) FROM mailcore_message") == [(0,)]

    # Released by the administrator: forwarded now, by DATA (B cannot vouch for a From: of its
    # own domain that came from outside), so A sees it as unverified, not as verified mail of b.test.
    [(delivery_id,)] = b.query("SELECT id FROM mailcore_delivery WHERE state = 'quarantined'")
    released = b.manage("quarantine", "release", str(delivery_id))
    assert released.returncode == 0, released.stderr
    [arrived] = a.wait_for_messages("alice@a.test")
    assert arrived.endswith(forged)
    assert b"Authentication-Results: mx.a.test; x-source=none smtp.mailfrom=postmaster@b.test;" in arrived
    rows = b.wait_for_queue(lambda rows: rows[0]["state"] != "held" and rows[0]["state"] != "queued")
    assert rows[0]["state"] == "sent", rows
    assert a.query("SELECT count(*) FROM mailcore_announcement") == [(0,)]
    assert b.query("SELECT count(*) FROM mailcore_sourcedmessage") == [(0,)]

    # Deleted instead of released: the held copy for the remote target is dropped, never sent.
    with smtplib.SMTP(b.address, b.smtp_port, timeout=10, source_address=(pair.peer_address, 0)) as client:
        client.ehlo("forger.test")
        client.sendmail("x@elsewhere.test", ["team@b.test"], forged.replace(b"Subject: forged", b"Subject: deleted"))
    b.wait_for_messages("bob@b.test", state="quarantined")
    b.wait_for_queue(lambda rows: len(rows) == 2 and rows[1]["state"] == "held")
    [(second_id,)] = b.query("SELECT id FROM mailcore_delivery WHERE state = 'quarantined'")
    assert b.manage("quarantine", "delete", str(second_id)).returncode == 0
    assert len(b.queue()) == 1
    assert len(a.messages("alice@a.test")) == 1


def test_fifty_bogus_announcements_do_not_delay_a_genuine_one(start_instances):
    pair = start_instances()
    a, b = pair
    to_bob = message("genuine").replace(b"mallory@evil.test", b"bob@b.test")
    # A first genuine message gives A's address a good record at B for a.test.
    a.submit("alice@a.test", ["bob@b.test"], to_bob.replace(b"genuine", b"earlier"))
    b.wait_for_messages("bob@b.test")

    # A forger announces 50 ids in a.test's name from one address: more than A's unknown-id
    # limit (10 a minute), enough for A to answer B's GETs with 421 if B asked for them all.
    with RawSMTP(b.smtp_port, host=b.address, source=pair.peer_address) as c:
        c.greet("mx.evil.test")
        for n in range(50):
            assert announce(c, "alice@a.test", "bob@b.test", f"{n:032d}").startswith(b"250 2.6.0 ")
    # The genuine announcement that arrives next is verified on its first pull.
    a.submit("alice@a.test", ["bob@b.test"], to_bob)
    b.wait_for_messages("bob@b.test", 2)
    [(state, attempts)] = b.query(
        "SELECT n.state, n.attempts FROM mailcore_announcement n JOIN mailcore_message m ON m.id = n.message_id"
        " WHERE m.subject = 'genuine'"
    )
    assert (state, attempts) == ("verified", 1)
    bogus = b.query("SELECT state, attempts, last_error FROM mailcore_announcement WHERE client_address = %s", (pair.peer_address,))
    # B asked A for at most its pace of the forger's ids this minute; the rest wait their turn.
    asked = [row for row in bogus if row[0] == "failed"]
    assert 1 <= len(asked) <= 5 and all(r[2].startswith("mx.a.test [127.0.0.2] answered GET with 550") for r in asked), asked
    waiting = [row for row in bogus if row[0] == "pending"]
    assert len(waiting) == 50 - len(asked) and all(r[1] == 0 and r[2].startswith("waiting its turn") for r in waiting)
    assert "too many unknown GET ids" not in a.logs()  # A never had to refuse B
