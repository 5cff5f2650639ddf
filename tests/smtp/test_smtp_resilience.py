"""The MX under stress: SIGKILL mid-stream, 50 concurrent clients, SIGTERM, connection caps, timeouts, TLS."""

from __future__ import annotations

import hashlib
import os
import signal
import smtplib
import ssl
import threading
import time

import pytest

from mailcore.models import Message
from mailcore.store import message_store
from mailcore.wire import replies
from tests.conftest import self_signed_cert, wait_for_port
from tests.smtp_wire import RawSMTP, admitted, send_from_many_clients, starts
from tests.sockets import accepts, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def message(tag: str) -> bytes:
    return f"From: alice@remote.test\r\nMessage-ID: <{tag}@remote.test>\r\nSubject: {tag}\r\n\r\n".encode() + b"line\r\n" * 200


def test_sigkill_mid_stream_loses_nothing_acknowledged(mx, b_test, mail_store):
    server = mx()
    acknowledged: list[str] = []
    stop = threading.Event()

    def client(n: int) -> None:
        i = 0
        while not stop.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", server.port, timeout=5) as c:
                    while not stop.is_set():
                        tag = f"c{n}m{i}"
                        i += 1
                        c.sendmail("alice@remote.test", ["bob@b.test"], message(tag))
                        acknowledged.append(tag)
            except (OSError, smtplib.SMTPException):
                time.sleep(0.01)  # not a wait: a client's pause before it connects again

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    assert wait_until(lambda: len(acknowledged) > 10, 60)  # mid-stream: every client keeps sending
    server.proc.kill()  # SIGKILL: no chance to clean up
    server.proc.wait()
    stop.set()
    for t in threads:
        t.join()
    assert len(acknowledged) > 10

    restarted = mx()
    subjects = list(Message.objects.values_list("subject", flat=True))
    for tag in acknowledged:
        assert subjects.count(tag) == 1, tag
    for row in Message.objects.all():
        body = message_store().read(row.body_ref)
        assert hashlib.sha256(body).hexdigest() == row.sha256 and len(body) == row.size
    leftovers = [f for _r, _d, fs in os.walk(mail_store) for f in fs if f.startswith(".tmp-")]
    assert leftovers == []
    with smtplib.SMTP("127.0.0.1", restarted.port) as c:
        c.sendmail("alice@remote.test", ["bob@b.test"], message("after-restart"))


def test_fifty_clients_twenty_messages_each(mx, b_test):
    server = mx(MAIL_SMTP_MAX_CONNECTIONS_PER_CLIENT="100")
    assert send_from_many_clients(server.port, 50, 20, message) == []
    assert Message.objects.count() == 1000
    assert len(set(Message.objects.values_list("subject", flat=True))) == 1000


def test_sigterm_lets_a_transaction_finish_and_closes_idle_sessions(mx, b_test):
    server = mx(MAIL_SMTP_SHUTDOWN_GRACE="10")
    busy, idle = RawSMTP(server.port), RawSMTP(server.port)
    busy.greet()
    idle.greet()
    assert starts(busy.cmd("MAIL FROM:<alice@remote.test>"), replies.SENDER_OK)
    assert starts(busy.cmd("RCPT TO:<bob@b.test>"), replies.RECIPIENT_OK)
    server.proc.send_signal(signal.SIGTERM)
    assert starts(idle.last(), replies.SHUTTING_DOWN)
    assert idle.closed()
    assert wait_until(lambda: not accepts("127.0.0.1", server.port), 5), "still accepting after SIGTERM"
    assert busy.cmd("DATA").startswith(b"354")
    assert starts(busy.cmd(b"Subject: in flight\r\n\r\nhi\r\n."), replies.QUEUED)
    assert starts(busy.last(), replies.SHUTTING_DOWN)
    assert server.proc.wait(timeout=10) == 0
    assert Message.objects.get().subject == "in flight"
    assert "stopped" in server.output()


def test_sigterm_grace_period_ends_stalled_sessions(mx, b_test):
    server = mx(MAIL_SMTP_SHUTDOWN_GRACE="0.5")
    with RawSMTP(server.port) as stalled:
        stalled.greet()
        assert starts(stalled.cmd("MAIL FROM:<alice@remote.test>"), replies.SENDER_OK)
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 5
        assert stalled.closed()
    assert Message.objects.count() == 0


def test_connection_caps(mx, b_test):
    server = mx(MAIL_SMTP_MAX_CONNECTIONS_PER_CLIENT="2")
    # `admitted` retries while the fixture's own probe, or a session just closed, is still counted.
    first, second = admitted(server.port), admitted(server.port)
    with RawSMTP(server.port) as third:
        assert starts(third.last(), replies.TOO_MANY_CONNECTIONS_FROM_CLIENT)
        assert third.closed()
    first.close()
    admitted(server.port).close()  # the closed session's place is free again
    second.close()

    total = mx(MAIL_SMTP_MAX_CONNECTIONS="1")
    with admitted(total.port) as one:
        one.send(b"EHLO client.test\r\n")
        assert one.reply()[-1].startswith(b"250 ")
        with RawSMTP(total.port) as two:
            assert starts(two.last(), replies.TOO_MANY_CONNECTIONS)


def test_command_and_data_timeouts(mx, b_test):
    server = mx(MAIL_SMTP_COMMAND_TIMEOUT="0.5", MAIL_SMTP_DATA_TIMEOUT="0.5")
    with RawSMTP(server.port) as c:
        c.greet()
        assert starts(c.last(), replies.TIMEOUT)
        assert c.closed()
    with RawSMTP(server.port) as c:
        c.greet()
        assert starts(c.cmd("MAIL FROM:<alice@remote.test>"), replies.SENDER_OK)
        assert starts(c.cmd("RCPT TO:<bob@b.test>"), replies.RECIPIENT_OK)
        assert c.cmd("DATA").startswith(b"354")
        c.send(b"Subject: slow\r\n\r\nhalf")
        assert starts(c.last(), replies.TIMEOUT)
        assert c.closed()
    assert Message.objects.count() == 0


@pytest.fixture
def certificate(tmp_path):
    cert, key = self_signed_cert(tmp_path, "mx.test.example")
    return str(cert), str(key)


def test_starttls(mx, b_test, certificate):
    cert, key = certificate
    server = mx(MAIL_TLS_CERT=cert, MAIL_TLS_KEY=key)
    context = ssl.create_default_context(cafile=cert)
    context.check_hostname = False
    with smtplib.SMTP("127.0.0.1", server.port) as c:
        assert "starttls" in c.ehlo()[1].decode().lower()
        assert c.starttls(context=context)[0] == 220
        code, ehlo = c.ehlo()
        assert "STARTTLS" not in ehlo.decode()
        c.sendmail("alice@remote.test", ["bob@b.test"], message("secret"))
    body = message_store().read(Message.objects.get().body_ref)
    assert b"with ESMTPS id" in body and b"(using TLSv1.3 with cipher" in body
    assert Message.objects.get().tls
    wait_for_port("127.0.0.1", server.port)


def test_commands_pipelined_after_starttls_are_discarded(mx, b_test, certificate):
    # RFC 3207 §4 and CVE-2011-0411: a command injected in plaintext behind STARTTLS must not be
    # answered inside the TLS session as if the client had sent it there.
    cert, key = certificate
    server = mx(MAIL_TLS_CERT=cert, MAIL_TLS_KEY=key)
    context = ssl.create_default_context(cafile=cert)
    context.check_hostname = False
    with RawSMTP(server.port) as c:
        c.greet()
        c.send(b"STARTTLS\r\nHELP\r\n")
        assert starts(c.last(), replies.READY_FOR_TLS)
        tls = context.wrap_socket(c.sock, server_hostname="mx.test")
        tls.sendall(b"NOOP\r\n")
        first = tls.recv(4096)
        assert first.startswith(b"250 2.0.0"), first  # NOOP's, not HELP's 214
        tls.close()


def test_a_client_that_pipelines_without_reading_gets_every_reply(mx, b_test):
    # More than the transport's write buffer of replies and more than the session holds of
    # input: the listener stops reading while the client does not read, and resumes when it does.
    server = mx()
    count = 60_000
    with RawSMTP(server.port) as c:
        c.greet()
        sender = threading.Thread(target=c.send, args=(b"NOOP\r\n" * count,))
        sender.start()
        time.sleep(1)  # not a wait: the client reads nothing for a while, which is what is tested
        replies_read = sum(1 for _ in range(count) if starts(c.last(), replies.OK))
        sender.join()
        assert replies_read == count
        assert starts(c.cmd("MAIL FROM:<alice@remote.test>"), replies.SENDER_OK)
