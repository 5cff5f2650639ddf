"""runpop3's STLS and implicit TLS, the plaintext policy, connection caps, graceful stop, flat memory."""

from __future__ import annotations

import poplib
import signal
import socket
import ssl
import time

import pytest

from mailcore.models import Delivery, DeliveryState
from tests.conftest import free_port, wait_for_port
from tests.factories import ADDRESS, PASSWORD, deliver
from tests.pop3_support import RawPop3, self_signed_cert, start_pop3_process
from tests.sockets import accepts, peak_rss_kb, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def tls_files(tmp_path):
    cert, key = self_signed_cert(tmp_path)
    return {"MAIL_TLS_CERT": str(cert), "MAIL_TLS_KEY": str(key)}


def client_context(tls_files) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=tls_files["MAIL_TLS_CERT"])
    context.check_hostname = False
    return context


def test_stls_then_login_and_plaintext_refused_before_tls(alice, server_factory, tls_files):
    deliver(b"Subject: tls\r\n\r\nsecret mail\r\n")
    port, _ = start_pop3_process(server_factory, MAIL_POP3_PLAINTEXT="never", **tls_files)
    raw = RawPop3(port)
    raw.cmd("CAPA")
    assert raw.multiline().decode().split("\r\n")[:-1] == [
        "TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "STLS", "IMPLEMENTATION mailcore"]
    refused = b"-ERR [AUTH] plaintext authentication is not allowed without TLS: use STLS first"
    assert raw.cmd(f"USER {ADDRESS}") == refused
    assert raw.cmd("AUTH PLAIN AGFsaWNlQGEudGVzdABjb3JyZWN0") == refused
    raw.close()

    pop = poplib.POP3("127.0.0.1", port, timeout=10)
    assert "STLS" in pop.capa()
    assert pop.stls(client_context(tls_files)).startswith(b"+OK")
    caps = pop.capa()
    assert "USER" in caps and caps["SASL"] == ["PLAIN"] and "STLS" not in caps
    pop.user(ADDRESS)
    assert pop.pass_(PASSWORD).startswith(b"+OK alice@a.test has 1 messages")
    assert pop.retr(1)[1][-1] == b"secret mail"
    pop.quit()


def test_stls_discards_commands_pipelined_in_plaintext(alice, server_factory, tls_files):
    port, _ = start_pop3_process(server_factory, **tls_files)
    raw = RawPop3(port)
    raw.send(b"STLS\r\nNOOP\r\n")  # the NOOP must not be read as if it had come through TLS
    assert raw.line() == b"+OK begin TLS negotiation"
    assert raw.buffer == b""
    tls = client_context(tls_files).wrap_socket(raw.sock, server_hostname="localhost")
    tls.sendall(b"CAPA\r\n")
    reply = tls.recv(4096)
    assert reply.startswith(b"+OK capability list follows"), reply
    tls.sendall(b"STLS\r\n")
    data = reply
    while b"-ERR" not in data:
        data += tls.recv(4096)
    assert b"-ERR TLS is already active" in data
    tls.close()


def test_implicit_tls_listener(alice, server_factory, tls_files):
    deliver(b"Subject: 995\r\n\r\nx\r\n")
    tls_port = free_port()
    port, server = start_pop3_process(server_factory, "--tls-bind", f"127.0.0.1:{tls_port}", **tls_files)
    wait_for_port("127.0.0.1", tls_port)
    pop = poplib.POP3_SSL("127.0.0.1", tls_port, context=client_context(tls_files), timeout=10)
    assert pop.getwelcome() == b"+OK mx.test.example POP3 server ready"
    assert "STLS" not in pop.capa()
    pop.user(ADDRESS)
    pop.pass_(PASSWORD)
    assert pop.stat()[0] == 1
    pop.quit()
    log = server.wait_for_output("tls=yes", 1)
    assert f"POP3 listening on 127.0.0.1:{port}, STLS offered" in log
    assert f"POP3 with implicit TLS listening on 127.0.0.1:{tls_port}" in log
    assert "tls=yes retrieved=0 deleted=0 end=quit" in log


def test_tls_bind_without_a_certificate_is_refused(server_factory, tmp_path):
    from tests.conftest import manage

    result = manage("runpop3", "--bind", f"127.0.0.1:{free_port()}", "--tls-bind", f"127.0.0.1:{free_port()}")
    assert result.returncode != 0
    assert "--tls-bind needs MAIL_TLS_CERT and MAIL_TLS_KEY" in result.stderr


def test_stls_without_a_certificate(alice, server_factory):
    port, _ = start_pop3_process(server_factory)
    raw = RawPop3(port)
    assert raw.cmd("STLS") == b"-ERR STLS is not available"


def test_several_binds_each_logged(server_factory):
    ports = [free_port(), free_port()]
    _, server = start_pop3_process(server_factory, "--bind", f"127.0.0.1:{ports[0]}", "--bind", f"127.0.0.1:{ports[1]}")
    for port in ports:
        wait_for_port("127.0.0.1", port)
        assert RawPop3(port).greeting.startswith(b"+OK")
    log = server.output()
    for port in ports:
        assert f"POP3 listening on 127.0.0.1:{port}" in log


def test_connection_caps(alice, server_factory):
    port, server = start_pop3_process(server_factory, MAIL_POP3_MAX_CONNECTIONS_PER_CLIENT="2")
    server.wait_for_output("pop3 session", 1)  # the readiness probe's connection is over
    first, second = RawPop3(port), RawPop3(port)
    third = socket.create_connection(("127.0.0.1", port), timeout=5)
    assert third.recv(4096) == b"-ERR [SYS/TEMP] too many connections; try again later\r\n"
    assert third.recv(4096) == b""
    first.cmd("QUIT")
    assert first.closed()
    server.wait_for_output("pop3 session", 2)
    assert RawPop3(port).greeting.startswith(b"+OK")
    second.close()


def deleting_session(server_factory, grace: str):
    """A runpop3 that gives sessions `grace` seconds to end once stopped, and a session of alice's
    that has marked her one message deleted: (the port, the server, the session)."""
    deliver(b"Subject: 1\r\n\r\nx\r\n")
    port, server = start_pop3_process(server_factory, MAIL_POP3_SHUTDOWN_GRACE=grace)
    raw = RawPop3(port)
    raw.login()
    assert raw.cmd("DELE 1").startswith(b"+OK")
    return port, server, raw


def test_sigterm_lets_a_session_finish_then_stops(alice, server_factory):
    port, server, raw = deleting_session(server_factory, "5")
    server.proc.send_signal(signal.SIGTERM)
    assert wait_until(lambda: not accepts("127.0.0.1", port), 5), "still accepting after SIGTERM"
    assert raw.cmd("QUIT") == b"+OK mx.test.example signing off (1 messages deleted)"
    assert server.proc.wait(timeout=10) == 0
    assert Delivery.objects.get().state == DeliveryState.DELETED
    assert "pop3: stopped" in server.output()


def test_sigterm_closes_an_idle_session_after_the_grace_period_without_update(alice, server_factory):
    _, server, raw = deleting_session(server_factory, "1")
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert raw.closed(timeout=10)
    assert server.proc.wait(timeout=10) == 0
    assert time.monotonic() - started < 5
    assert Delivery.objects.get().state == DeliveryState.INBOX


def test_retr_of_a_large_message_streams_in_constant_memory(alice, server_factory):
    line = b"x" * 998 + b"\r\n"
    deliver(b"Subject: big\r\n\r\n" + line * 40_000)  # 40 MB
    port, server = start_pop3_process(server_factory)
    raw = RawPop3(port)
    raw.login()
    raw.cmd("LIST")  # the first listing reads the body once to count it
    raw.multiline()
    before = peak_rss_kb(server.proc.pid)
    assert raw.cmd("RETR 1").startswith(b"+OK")
    received = 0
    raw.sock.settimeout(20)
    tail = b""
    while not tail.endswith(b"\r\n.\r\n"):
        data = raw.sock.recv(1 << 20)
        assert data
        received += len(data)
        tail = (tail + data)[-5:]
    assert received > 39_000_000
    grown_mb = (peak_rss_kb(server.proc.pid) - before) / 1024
    assert grown_mb < 10, f"the server's peak memory grew by {grown_mb:.1f} MB for a 40 MB message"
    raw.cmd("QUIT")


def test_database_down_is_a_temporary_error_not_a_failed_login(server_factory, tmp_path):
    # A database file in a directory that does not exist: every query fails, as when the DB is down.
    port, server = start_pop3_process(server_factory, DATABASE_URL=f"sqlite:///{tmp_path}/missing/db.sqlite3")
    raw = RawPop3(port)
    raw.cmd(f"USER {ADDRESS}")
    assert raw.cmd(f"PASS {PASSWORD}") == b"-ERR [SYS/TEMP] temporary server error; try again later"
    assert raw.cmd("CAPA").startswith(b"+OK")  # the session and the listener live on
    raw.multiline()
    assert raw.cmd("QUIT").startswith(b"+OK")
    assert "Traceback" in server.output() and PASSWORD not in server.output()
