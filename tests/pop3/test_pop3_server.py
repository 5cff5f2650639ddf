"""runpop3 over real sockets: RFC 1939 sessions with poplib, and every bad input with raw bytes."""

from __future__ import annotations

import base64
import poplib
import socket
import struct
import threading
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from mailcore.models import Delivery, DeliveryState, MailboxLock, Message
from mailcore.pop3 import protocol as replies
from mailcore.store import message_store
from mailcore.wire.pop3 import encode
from tests.factories import ADDRESS, PASSWORD, deliver, make_mailbox, stored
from tests.pop3_support import RawPop3, start_pop3, start_pop3_process

pytestmark = pytest.mark.django_db(transaction=True)

DOTTED = (
    b"From: Bob <bob@b.test>\r\nTo: alice@a.test\r\nSubject: dots\r\n\r\n"
    b".starts with a dot\r\n..two dots\r\n.\r\nmiddle\r\n. space\r\nlast line\r\n"
)


def test_retr_returns_the_stored_message_byte_for_byte_with_dot_lines(alice, server_factory):
    first = deliver(DOTTED)
    second = deliver(b"Subject: two\r\n\r\nhello\r\n")
    port = start_pop3(server_factory)

    pop = poplib.POP3("127.0.0.1", port, timeout=10)
    pop.user(ADDRESS)
    assert pop.pass_(PASSWORD).startswith(b"+OK alice@a.test has 2 messages")
    sizes = [len(stored(first)), len(stored(second))]
    assert pop.stat() == (2, sum(sizes))
    assert pop.list()[1] == [f"1 {sizes[0]}".encode(), f"2 {sizes[1]}".encode()]
    assert pop.uidl()[1] == [f"1 {first.uid}".encode(), f"2 {second.uid}".encode()]
    status, lines, octets = pop.retr(1)
    assert status == f"+OK {sizes[0]} octets".encode()
    assert b"\r\n".join(lines) + b"\r\n" == stored(first)
    assert octets == sizes[0]  # RFC 1939 §11: the announced count is what the client ends up with
    pop.quit()

    # On the wire, each line beginning with "." carries one more (RFC 1939 §3).
    raw = RawPop3(port)
    raw.login()
    assert raw.cmd("RETR 1") == f"+OK {sizes[0]} octets".encode()
    wire = raw.multiline()
    assert b"\r\n...two dots\r\n..\r\nmiddle\r\n.. space\r\n" in wire
    assert b"\r\n..starts with a dot\r\n" in wire
    assert wire == encode(stored(first))
    assert raw.cmd("QUIT").startswith(b"+OK")


def test_bare_lf_bodies_are_sent_with_crlf_and_counted_as_sent(alice, server_factory):
    deliver(b"Subject: lf\n\nline one\n.dot\nno end")
    port = start_pop3(server_factory)
    raw = RawPop3(port)
    raw.login()
    size = int(raw.cmd("LIST 1").split()[2])
    status = raw.cmd("RETR 1")
    wire = raw.multiline()
    assert b"\n" not in wire.replace(b"\r\n", b"")
    assert wire.endswith(b"..dot\r\nno end\r\n")
    unstuffed = wire.replace(b"\r\n..", b"\r\n.")
    assert status == f"+OK {size} octets".encode() and len(unstuffed) == size
    raw.cmd("QUIT")


def test_top_sends_headers_blank_line_and_exactly_n_body_lines(alice, server_factory):
    deliver(b"Subject: top\r\n\r\nline 1\r\n.line 2\r\nline 3\r\n")
    port = start_pop3(server_factory)
    raw = RawPop3(port)
    raw.login()
    assert raw.cmd("TOP 1 0") == b"+OK top of message follows"
    head = raw.multiline()
    assert head.endswith(b"Subject: top\r\n\r\n")
    assert raw.cmd("TOP 1 2") == b"+OK top of message follows"
    assert raw.multiline() == head + b"line 1\r\n..line 2\r\n"
    # fetchmail asks for TOP n 99999999 instead of RETR: the whole message, nothing more.
    assert raw.cmd("TOP 1 99999999").startswith(b"+OK")
    assert raw.multiline() == head + b"line 1\r\n..line 2\r\nline 3\r\n"
    raw.cmd("QUIT")


def test_dele_takes_effect_on_quit_in_one_go_and_releases_the_body(alice, server_factory):
    deliveries = [deliver(b"Subject: %d\r\n\r\nbody\r\n" % i) for i in range(3)]
    refs = [d.message.body_ref for d in deliveries]
    port = start_pop3(server_factory)
    pop = poplib.POP3("127.0.0.1", port, timeout=10)
    pop.user(ADDRESS)
    pop.pass_(PASSWORD)
    assert pop.dele(1) == b"+OK message 1 deleted"
    assert pop.dele(3) == b"+OK message 3 deleted"
    assert pop.stat()[0] == 1
    assert [line.split()[0] for line in pop.list()[1]] == [b"2"]  # numbers stay fixed in the session
    # Nothing changes before QUIT (RFC 1939 §6).
    assert Delivery.objects.filter(state=DeliveryState.INBOX).count() == 3
    assert pop.quit() == b"+OK mx.test.example signing off (2 messages deleted)"
    states = {d.pk: d.state for d in Delivery.objects.all()}
    assert states == {deliveries[0].pk: "deleted", deliveries[1].pk: "inbox", deliveries[2].pk: "deleted"}
    store = message_store()
    assert [store.exists(ref) for ref in refs] == [False, True, False]
    assert Delivery.objects.get(pk=deliveries[1].pk).retrieved_at is None


def test_rset_unmarks_and_a_dropped_connection_deletes_nothing(alice, server_factory):
    deliver(b"Subject: 1\r\n\r\nx\r\n")
    deliver(b"Subject: 2\r\n\r\ny\r\n")
    port = start_pop3(server_factory)
    raw = RawPop3(port)
    raw.login()
    raw.cmd("DELE 1")
    assert raw.cmd("RSET").startswith(b"+OK maildrop has 2 messages")
    assert raw.cmd("DELE 2") == b"+OK message 2 deleted"
    raw.close()  # no QUIT: no UPDATE state
    raw = RawPop3(port)
    assert raw.login().startswith(b"+OK alice@a.test has 2 messages")  # the lock was released too
    raw.cmd("QUIT")
    assert Delivery.objects.filter(state=DeliveryState.INBOX).count() == 2


def test_message_shared_with_another_mailbox_keeps_its_body(server_factory):
    make_mailbox()
    make_mailbox("carol@a.test", PASSWORD)
    from mailcore.services import inbound

    receipt = inbound.receive(inbound.Envelope("bob@b.test", [ADDRESS, "carol@a.test"]), b"Subject: both\r\n\r\nx\r\n")
    port = start_pop3(server_factory)
    raw = RawPop3(port)
    raw.login()
    raw.cmd("DELE 1")
    raw.cmd("QUIT")
    assert message_store().exists(receipt.message.body_ref)
    raw = RawPop3(port)
    raw.login("carol@a.test")
    raw.cmd("DELE 1")
    raw.cmd("QUIT")
    assert not message_store().exists(receipt.message.body_ref)
    assert Message.objects.get(pk=receipt.message.pk).body_ref == ""


def test_uids_are_stable_across_sessions_and_never_reused(alice, server_factory):
    for i in range(3):
        deliver(b"Subject: %d\r\n\r\nx\r\n" % i)
    port = start_pop3(server_factory)

    def uidl() -> list[str]:
        pop = poplib.POP3("127.0.0.1", port, timeout=10)
        pop.user(ADDRESS)
        pop.pass_(PASSWORD)
        uids = [line.split()[1].decode() for line in pop.uidl()[1]]
        pop.quit()
        return uids

    first = uidl()
    assert uidl() == first and len(set(first)) == 3
    assert all(0 < len(u) <= 70 and all(0x21 <= ord(c) <= 0x7E for c in u) for u in first)  # RFC 1939 §7
    pop = poplib.POP3("127.0.0.1", port, timeout=10)
    pop.user(ADDRESS)
    pop.pass_(PASSWORD)
    assert pop.uidl(2) == f"+OK 2 {first[1]}".encode()
    pop.dele(2)
    pop.quit()
    new = deliver(b"Subject: new\r\n\r\nx\r\n")
    after = uidl()
    assert after[:2] == [first[0], first[2]]
    assert after[2] == new.uid and new.uid not in first
    # The deleted delivery keeps its UID, so nothing can ever get it again (Delivery.uid is unique).
    assert Delivery.objects.filter(uid=first[1], state=DeliveryState.DELETED).exists()


def test_quarantined_mail_is_invisible(alice, server_factory):
    visible = deliver(b"Subject: ok\r\n\r\nx\r\n")
    held = deliver(b"Subject: held\r\n\r\nx\r\n")
    Delivery.objects.filter(pk=held.pk).update(state=DeliveryState.QUARANTINED)
    port = start_pop3(server_factory)
    raw = RawPop3(port)
    assert raw.login().startswith(b"+OK alice@a.test has 1 messages")
    assert raw.cmd("UIDL") == b"+OK unique-id listing follows"
    assert raw.multiline() == f"1 {visible.uid}\r\n".encode()
    assert raw.cmd("RETR 2") == replies.NO_SUCH_MESSAGE.encode()
    raw.cmd("QUIT")


def test_capa_in_each_state(alice, server_factory):
    port = start_pop3(server_factory)
    raw = RawPop3(port)
    assert raw.cmd("CAPA") == b"+OK capability list follows"
    caps = raw.multiline().decode().split("\r\n")[:-1]
    assert caps == ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "USER", "SASL PLAIN",
                    "IMPLEMENTATION mailcore"]
    raw.login()
    raw.cmd("CAPA")
    assert raw.multiline().decode().split("\r\n")[:-1] == [
        "TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "IMPLEMENTATION mailcore"]
    raw.cmd("QUIT")


def test_pipelined_commands_are_answered_in_order(alice, server_factory):
    deliver(b"Subject: p\r\n\r\nx\r\n")
    port = start_pop3(server_factory)
    raw = RawPop3(port)
    raw.send(f"USER {ADDRESS}\r\nPASS {PASSWORD}\r\nSTAT\r\nNOOP\r\nDELE 1\r\nQUIT\r\n".encode())
    answers = [raw.line() for _ in range(6)]
    assert [a.split()[0] for a in answers] == [b"+OK"] * 6
    assert raw.closed()
    assert Delivery.objects.get().state == DeliveryState.DELETED


# --- bad input, one test each, over a raw socket ------------------------------------------------


@pytest.fixture
def session(alice, server_factory):
    """A logged-in raw session on a maildrop of two messages."""
    deliver(b"Subject: 1\r\n\r\nx\r\n")
    deliver(b"Subject: 2\r\n\r\ny\r\n")
    port = start_pop3(server_factory)
    raw = RawPop3(port)
    assert raw.login().startswith(b"+OK")
    yield raw
    raw.close()


def test_commands_sent_before_the_client_shuts_down_its_side_are_all_answered(alice, server_factory):
    deliver(b"Subject: 1\r\n\r\nx\r\n")
    raw = RawPop3(start_pop3(server_factory))
    raw.send(f"USER {ADDRESS}\r\nPASS {PASSWORD}\r\nSTAT\r\nDELE 1\r\nQUIT\r\n".encode())
    raw.sock.shutdown(socket.SHUT_WR)  # as `printf ... | nc -N` does
    replies = [raw.line() for _ in range(5)]
    assert [reply.split()[0] for reply in replies] == [b"+OK"] * 5, replies
    assert replies[2].startswith(b"+OK 1 ") and b"(1 messages deleted)" in replies[4]
    assert raw.closed()
    assert Delivery.objects.get().state == DeliveryState.DELETED


def test_unknown_command(alice, server_factory):
    raw = RawPop3(start_pop3(server_factory))
    assert raw.cmd("HELO there") == b"-ERR unknown command"
    assert raw.cmd("APOP alice@a.test 0123456789abcdef") == b"-ERR unknown command"  # not offered: see README
    assert raw.cmd("") == b"-ERR unknown command"
    assert raw.cmd("CAPA").startswith(b"+OK")  # the session goes on


def test_commands_in_the_wrong_state(alice, server_factory):
    raw = RawPop3(start_pop3(server_factory, MAIL_POP3_MAX_BAD_COMMANDS="20"))
    for command in ("STAT", "LIST", "RETR 1", "DELE 1", "TOP 1 0", "UIDL", "RSET", "NOOP"):
        assert raw.cmd(command) == b"-ERR command not valid in this state", command
    assert raw.cmd(f"PASS {PASSWORD}") == b"-ERR give USER first"
    raw.login()
    for command in (f"USER {ADDRESS}", f"PASS {PASSWORD}", "AUTH PLAIN", "STLS"):
        assert raw.cmd(command) == b"-ERR command not valid in this state", command
    assert raw.cmd("STAT").startswith(b"+OK 0 0")


def test_retr_zero_too_high_and_not_a_number(session):
    assert session.cmd("RETR 0") == b"-ERR no such message"
    assert session.cmd("RETR 999") == b"-ERR no such message"
    assert session.cmd("RETR abc") == b"-ERR invalid message number"
    assert session.cmd("RETR -1") == b"-ERR invalid message number"
    assert session.cmd("RETR") == b"-ERR invalid message number"
    assert session.cmd("RETR 1 2") == b"-ERR invalid message number"
    assert session.cmd("LIST 3") == b"-ERR no such message"
    assert session.cmd("RETR 2").startswith(b"+OK")
    assert session.multiline().endswith(b"\r\n\r\ny\r\n")


def test_a_deleted_message_and_dele_twice(session):
    assert session.cmd("DELE 1") == b"+OK message 1 deleted"
    assert session.cmd("DELE 1") == b"-ERR message 1 already deleted"
    assert session.cmd("RETR 1") == b"-ERR message 1 already deleted"
    assert session.cmd("TOP 1 0") == b"-ERR message 1 already deleted"
    assert session.cmd("LIST 1") == b"-ERR message 1 already deleted"
    assert session.cmd("UIDL 1") == b"-ERR message 1 already deleted"
    assert session.cmd("STAT").startswith(b"+OK 1 ")


def test_top_with_a_negative_or_missing_count(session):
    assert session.cmd("TOP 1 -1") == b"-ERR line count must be a non-negative number"
    assert session.cmd("TOP 1 x") == b"-ERR line count must be a non-negative number"
    assert session.cmd("TOP 1") == b"-ERR syntax error in arguments"
    assert session.cmd("TOP 1 0").startswith(b"+OK")


def test_an_overlong_line_is_refused_and_the_session_goes_on(session):
    assert session.cmd(b"NOOP " + b"x" * 300) == b"-ERR line too long"
    assert session.cmd(b"X" * 100_000) == b"-ERR line too long"  # far past the read buffer
    assert session.cmd("NOOP") == b"+OK"


def test_too_many_bad_commands_close_the_connection(alice, server_factory):
    raw = RawPop3(start_pop3(server_factory, MAIL_POP3_MAX_BAD_COMMANDS="3"))
    assert raw.cmd("BOGUS") == b"-ERR unknown command"
    assert raw.cmd("STAT") == b"-ERR command not valid in this state"
    assert raw.cmd("BOGUS") == b"-ERR too many bad commands; closing"
    assert raw.closed()


def test_login_while_another_session_holds_the_lock(session, server_factory):
    # A second process sharing the database: the lock lives there, not in a process.
    other_port = start_pop3(server_factory)
    other = RawPop3(other_port)
    assert other.login() == b"-ERR [IN-USE] maildrop is locked by another session"
    assert session.cmd("QUIT").startswith(b"+OK")
    assert session.closed()
    assert other.login().startswith(b"+OK alice@a.test has 2 messages")
    other.cmd("QUIT")


def test_a_login_waits_a_moment_for_a_lock_being_released(alice, server_factory):
    # The last session of a client that reconnects at once may release its lock a moment after
    # the new login arrives (the close is seen later, or by another process): no IN-USE for that.
    from mailcore.models import Mailbox

    port = start_pop3(server_factory)
    first = RawPop3(port)
    first.login()  # the credentials are now cached: the next login is quicker than the release below
    first.cmd("QUIT")
    MailboxLock.objects.create(
        mailbox=Mailbox.objects.get(address=ADDRESS), holder="ending:1:x", expires_at=timezone.now() + timedelta(seconds=300)
    )
    raw = RawPop3(port)
    release = threading.Timer(0.3, lambda: MailboxLock.objects.filter(holder="ending:1:x").delete())
    release.start()
    try:
        assert raw.login().startswith(b"+OK alice@a.test has")
    finally:
        release.join()


def test_an_expired_lock_of_a_crashed_session_lapses(alice, server_factory):
    from mailcore.models import Mailbox

    MailboxLock.objects.create(
        mailbox=Mailbox.objects.get(address=ADDRESS), holder="crashed:1:x", expires_at=timezone.now() - timedelta(seconds=1)
    )
    raw = RawPop3(start_pop3(server_factory))
    assert raw.login().startswith(b"+OK")
    assert MailboxLock.objects.get().holder != "crashed:1:x"
    raw.cmd("QUIT")
    assert not MailboxLock.objects.exists()


def test_garbage_after_quit_is_ignored(session):
    session.cmd("DELE 2")
    session.send(b"QUIT\r\nGARBAGE \x00\xff after quit\r\nRETR 1\r\n")
    assert session.line() == b"+OK mx.test.example signing off (1 messages deleted)"
    assert session.closed()
    assert session.buffer == b""
    assert Delivery.objects.filter(state=DeliveryState.INBOX).count() == 1


def test_quit_with_arguments_is_a_syntax_error(session):
    assert session.cmd("QUIT now") == b"-ERR syntax error in arguments"
    assert session.cmd("QUIT").startswith(b"+OK")


def test_a_client_that_vanishes_mid_retr(alice, server_factory):
    big = b"Subject: big\r\n\r\n" + b"0123456789abcdefghijklmnopqrstuvwxyz\r\n" * 300_000  # about 11 MB
    deliver(big)
    port, server = start_pop3_process(server_factory)
    raw = RawPop3(port)
    raw.login()
    raw.cmd("DELE 1")
    raw.send(b"RSET\r\nDELE 1\r\nRETR 1\r\n")
    raw.sock.recv(4096)
    # An abortive close (RST): the server is mid-write when the connection dies.
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.close()
    server.wait_for_output("pop3 session", 2)  # the readiness probe's session and this one have ended
    again = RawPop3(port)  # the listener lives, the lock is released, nothing was deleted
    assert again.login().startswith(b"+OK alice@a.test has 1 messages")
    again.cmd("QUIT")
    assert Delivery.objects.get().state == DeliveryState.INBOX


def test_a_client_that_pipelines_without_reading_then_vanishes(alice, server_factory):
    deliver(b"Subject: 1\r\n\r\n" + b"0123456789abcdefghijklmnopqrstuvwxyz\r\n" * 3000)  # about 110 KB
    port, server = start_pop3_process(server_factory)
    raw = RawPop3(port)
    raw.login()
    # Replies answered from memory pile up until the server stops writing (and reading) for this client.
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.send(b"RETR 1\r\n" * 3000)
    time.sleep(0.5)  # not a wait: the client reads nothing for a while, which is what is tested
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.close()
    server.wait_for_output("pop3 session", 2)  # the readiness probe's session and this one have ended
    again = RawPop3(port)  # the session ended at once: its lock is released, not held until the idle timer
    assert again.login().startswith(b"+OK alice@a.test has 1 messages")
    again.cmd("QUIT")


def test_idle_session_is_closed_without_update(alice, server_factory):
    deliver(b"Subject: 1\r\n\r\nx\r\n")
    raw = RawPop3(start_pop3(server_factory, MAIL_POP3_IDLE_TIMEOUT="1"))
    raw.login()
    raw.cmd("DELE 1")
    started = time.monotonic()
    assert raw.closed(timeout=10)
    assert 0.8 < time.monotonic() - started < 5
    assert raw.buffer == b""  # RFC 1939 §3: no response when the autologout timer fires
    assert Delivery.objects.get().state == DeliveryState.INBOX
    assert not MailboxLock.objects.exists()


# --- authentication -------------------------------------------------------------------------------


def test_wrong_password_gets_auth_code_after_a_delay(alice, server_factory):
    raw = RawPop3(start_pop3(server_factory, MAIL_AUTH_FAILURE_DELAY="0.5"))
    raw.cmd(f"USER {ADDRESS}")
    started = time.monotonic()
    assert raw.cmd("PASS wrong") == b"-ERR [AUTH] invalid user name or password"
    assert time.monotonic() - started >= 0.5
    assert raw.cmd("USER nobody@a.test") == b"+OK send PASS"  # no hint which mailboxes exist
    assert raw.cmd("PASS wrong") == b"-ERR [AUTH] invalid user name or password"
    assert raw.login().startswith(b"+OK alice@a.test has 0 messages")


def test_password_with_spaces_and_case_insensitive_commands(alice, server_factory):
    raw = RawPop3(start_pop3(server_factory))
    assert raw.cmd(f"user {ADDRESS}").startswith(b"+OK")
    assert raw.cmd(f"pass {PASSWORD}").startswith(b"+OK")  # PASSWORD holds spaces (RFC 1939 §7)
    assert raw.cmd("quit").startswith(b"+OK")


def test_failures_per_client_address_are_limited(alice, server_factory):
    port = start_pop3(server_factory, MAIL_AUTH_MAX_FAILURES="3", MAIL_AUTH_FAILURE_DELAY="0.1")
    raw = RawPop3(port)
    raw.cmd(f"USER {ADDRESS}")
    assert raw.cmd("PASS bad1").startswith(b"-ERR [AUTH]")
    raw.cmd(f"USER {ADDRESS}")
    assert raw.cmd("PASS bad2").startswith(b"-ERR [AUTH]")
    raw.close()
    raw = RawPop3(port)  # the count is per client address, not per connection
    raw.cmd(f"USER {ADDRESS}")
    assert raw.cmd("PASS bad3") == b"-ERR [AUTH] invalid user name or password"
    assert raw.closed()
    raw = RawPop3(port)
    assert raw.login() == b"-ERR [AUTH] too many failed logins from your address; try again later"
    assert raw.closed()


def test_auth_plain_initial_response_and_continuation(alice, server_factory):
    port = start_pop3(server_factory)
    token = base64.b64encode(f"\0{ADDRESS}\0{PASSWORD}".encode()).decode()
    raw = RawPop3(port)
    assert raw.cmd("AUTH") == b"+OK SASL mechanisms follow"
    assert raw.multiline() == b"PLAIN\r\n"
    assert raw.cmd(f"AUTH PLAIN {token}").startswith(b"+OK alice@a.test has 0 messages")
    raw.cmd("QUIT")

    raw = RawPop3(port)
    assert raw.cmd("AUTH PLAIN") == b"+ "
    assert raw.cmd(token).startswith(b"+OK")
    raw.cmd("QUIT")

    # poplib's own RFC 5034 client.
    pop = poplib.POP3("127.0.0.1", port, timeout=10)
    assert pop._shortcmd(f"AUTH PLAIN {token}").startswith(b"+OK")
    pop.quit()


def test_auth_plain_bad_input(alice, server_factory):
    raw = RawPop3(start_pop3(server_factory, MAIL_AUTH_FAILURE_DELAY="0.1"))
    assert raw.cmd("AUTH PLAIN") == b"+ "
    assert raw.cmd("*") == b"-ERR authentication cancelled"
    assert raw.cmd("AUTH PLAIN not*base64") == b"-ERR invalid base64 in authentication response"
    assert raw.cmd("AUTH CRAM-MD5") == b"-ERR unknown authentication mechanism"
    other = base64.b64encode(f"bob@a.test\0{ADDRESS}\0{PASSWORD}".encode()).decode()
    assert raw.cmd(f"AUTH PLAIN {other}") == b"-ERR [AUTH] invalid user name or password"
    assert raw.cmd("AUTH PLAIN =") == b"-ERR [AUTH] invalid user name or password"
    wrong = base64.b64encode(f"\0{ADDRESS}\0nope".encode()).decode()
    assert raw.cmd(f"AUTH PLAIN {wrong}") == b"-ERR [AUTH] invalid user name or password"


def test_no_password_in_the_log_and_one_line_per_session(alice, server_factory):
    deliver(b"Subject: 1\r\n\r\nx\r\n")
    port, server = start_pop3_process(server_factory)
    raw = RawPop3(port)
    raw.cmd(f"USER {ADDRESS}")
    raw.cmd("PASS not-the-password")
    raw.login()
    raw.cmd("RETR 1")
    raw.multiline()
    raw.cmd("DELE 1")
    raw.cmd("QUIT")
    raw.closed()
    raw = RawPop3(port)
    token = base64.b64encode(f"\0{ADDRESS}\0{PASSWORD}".encode()).decode()
    raw.cmd(f"AUTH PLAIN {token}")
    raw.cmd("QUIT")
    raw.closed()
    log = server.wait_for_output(f"user={ADDRESS}", 2)
    assert PASSWORD not in log and "not-the-password" not in log and token not in log
    assert f"POP3 listening on 127.0.0.1:{port}" in log
    # (the readiness probe of server_factory made one more session, without a user)
    sessions = [line for line in log.splitlines() if "pop3 session" in line and "user=-" not in line]
    assert len(sessions) == 2
    assert f"user={ADDRESS} tls=no retrieved=1 deleted=1 end=quit" in sessions[0]
