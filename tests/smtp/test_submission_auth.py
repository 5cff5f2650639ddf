"""The submission listener over real sockets: AUTH PLAIN/LOGIN, its refusals, sender ownership, hand-over."""

from __future__ import annotations

import base64
import email
import smtplib
import socket
import ssl
import time

import pytest

from mailcore.models import Delivery, QueueItem, QueueState
from mailcore.services import accounts
from mailcore.store import message_store
from tests.conftest import free_port, self_signed_cert
from tests.dkim_support import unsigned
from tests.factories import start_listener

pytestmark = pytest.mark.django_db(transaction=True)

PLAIN_MESSAGE = b"From: alice@a.test\r\nTo: carol@a.test\r\nSubject: hello\r\n\r\nHi there\r\n"


@pytest.fixture
def accounts_a():
    accounts.add_domain("a.test")
    accounts.add_mailbox("alice@a.test", "alice-pw")
    accounts.add_mailbox("carol@a.test", "carol-pw")
    accounts.add_alias("sales@a.test", "alice@a.test")


@pytest.fixture
def submission(server_factory, accounts_a):
    """Start runsubmission on loopback; returns a function that starts one with extra settings."""

    def start(**env):
        env.setdefault("MAIL_AUTH_FAILURE_DELAY", "0.3")
        return start_listener(server_factory, "runsubmission", MAIL_HOSTNAME="mx.a.test", **env).port

    return start


class Raw:
    """A raw SMTP client: send a line, read one reply as bytes."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file = self.sock.makefile("rb")
        self.greeting = self.reply()

    def reply(self) -> bytes:
        lines = []
        while True:
            line = self.file.readline()
            lines.append(line)
            if not line or line[3:4] != b"-":
                return b"".join(lines)

    def cmd(self, line: str) -> bytes:
        self.sock.sendall(line.encode() + b"\r\n")
        return self.reply()

    def close(self):
        self.sock.close()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def stored(address):
    return [message_store().read(d.message.body_ref) for d in Delivery.objects.filter(mailbox__address=address).select_related("message")]


def test_plain_login_and_send_local_and_remote(submission):
    port = submission()
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("client.a.test")
        assert "PLAIN" in client.esmtp_features["auth"] and "LOGIN" in client.esmtp_features["auth"]
        client.login("alice@a.test", "alice-pw")
        refused = client.sendmail("alice@a.test", ["carol@a.test", "bob@b.test"], PLAIN_MESSAGE)
        assert refused == {}
    [body] = stored("carol@a.test")
    msg = email.message_from_bytes(body)
    assert msg["Message-ID"].endswith("@mx.a.test>") and msg["Date"]  # added, RFC 6409 §8
    assert "with ESMTPA" in msg["Received"] and "x-source=pass" in msg["Authentication-Results"]
    [item] = QueueItem.objects.all()
    assert (item.recipient, item.state, item.message.mail_from) == ("bob@b.test", QueueState.QUEUED, "alice@a.test")
    queued = message_store().read(item.message.body_ref)
    assert unsigned(queued).startswith(b"Received: from client.a.test") and email.message_from_bytes(queued)["Message-ID"]


def test_auth_login_mechanism_and_alias_as_sender(submission):
    port = submission()
    raw = Raw(port)
    raw.cmd("EHLO client.a.test")
    assert raw.cmd("AUTH LOGIN") == b"334 VXNlcm5hbWU6\r\n"
    assert raw.cmd(b64("alice@a.test")) == b"334 UGFzc3dvcmQ6\r\n"
    assert raw.cmd(b64("alice-pw")).startswith(b"235 2.7.0")
    assert raw.cmd("MAIL FROM:<sales@a.test>").startswith(b"250 2.1.0")
    assert raw.cmd("RCPT TO:<carol@a.test>").startswith(b"250 2.1.5")
    assert raw.cmd("DATA").startswith(b"354")
    assert raw.cmd("Subject: via alias\r\n\r\nbody\r\n.").startswith(b"250 2.0.0")
    raw.close()
    assert len(stored("carol@a.test")) == 1


def test_unauthenticated_mail_gets_530(submission):
    raw = Raw(submission())
    raw.cmd("EHLO client.a.test")
    assert raw.cmd("MAIL FROM:<alice@a.test>") == b"530 5.7.0 Authentication required\r\n"
    assert raw.cmd("RCPT TO:<bob@b.test>").startswith(b"530 5.7.0")
    raw.close()


def test_forged_sender_gets_553(submission):
    raw = Raw(submission())
    raw.cmd("EHLO client.a.test")
    assert raw.cmd("AUTH PLAIN " + b64("\0alice@a.test\0alice-pw")).startswith(b"235")
    assert raw.cmd("MAIL FROM:<carol@a.test>").startswith(b"553 5.7.1")
    assert raw.cmd("MAIL FROM:<ceo@bank.test>").startswith(b"553 5.7.1")
    assert raw.cmd("MAIL FROM:<>").startswith(b"553 5.7.1")
    assert raw.cmd("MAIL FROM:<ALICE@A.TEST>").startswith(b"250")
    raw.close()


def test_unknown_local_recipient_is_refused_at_rcpt(submission):
    raw = Raw(submission())
    raw.cmd("EHLO client.a.test")
    raw.cmd("AUTH PLAIN " + b64("\0alice@a.test\0alice-pw"))
    raw.cmd("MAIL FROM:<alice@a.test>")
    assert raw.cmd("RCPT TO:<nobody@a.test>").startswith(b"550 5.1.1")
    assert raw.cmd("RCPT TO:<anyone@anywhere.test>").startswith(b"250 2.1.5")
    raw.close()


def test_wrong_password_535_after_a_delay_then_a_limit(submission):
    port = submission(MAIL_AUTH_MAX_FAILURES="3", MAIL_AUTH_FAILURE_DELAY="0.3")
    raw = Raw(port)
    raw.cmd("EHLO client.a.test")
    started = time.monotonic()
    assert raw.cmd("AUTH PLAIN " + b64("\0alice@a.test\0wrong")) == b"535 5.7.8 Authentication credentials invalid\r\n"
    assert time.monotonic() - started >= 0.3
    assert raw.cmd("AUTH PLAIN " + b64("\0nobody@a.test\0x")).startswith(b"535 5.7.8")
    # The third failure reaches the limit: 421 and the connection closes.
    assert raw.cmd("AUTH PLAIN " + b64("\0alice@a.test\0again")).startswith(b"421 4.7.0")
    assert raw.file.readline() == b""
    raw.close()
    # A new connection from the same address is refused before the password is even checked.
    raw = Raw(port)
    raw.cmd("EHLO client.a.test")
    assert raw.cmd("AUTH PLAIN " + b64("\0alice@a.test\0alice-pw")).startswith(b"421 4.7.0")
    raw.close()


def test_auth_syntax_errors(submission):
    raw = Raw(submission())
    assert raw.cmd("AUTH PLAIN " + b64("\0a\0b")).startswith(b"503 5.5.1")  # before EHLO
    raw.cmd("EHLO client.a.test")
    assert raw.cmd("AUTH CRAM-MD5").startswith(b"504 5.5.4")
    assert raw.cmd("AUTH PLAIN !!!notbase64").startswith(b"501 5.5.2")
    assert raw.cmd("AUTH PLAIN") == b"334 \r\n"
    assert raw.cmd("*").startswith(b"501 5.0.0")
    raw.close()


def test_auth_before_tls_off_loopback_gets_538(submission):
    # "never" treats this loopback client as any other client without TLS.
    raw = Raw(submission(MAIL_SUBMISSION_PLAINTEXT_AUTH="never"))
    ehlo = raw.cmd("EHLO client.a.test")
    assert b"AUTH" not in ehlo
    assert raw.cmd("AUTH PLAIN " + b64("\0alice@a.test\0alice-pw")) == (
        b"538 5.7.11 Encryption required for requested authentication mechanism\r\n"
    )
    raw.close()


def test_auth_after_starttls_and_on_implicit_tls(server_factory, accounts_a, tmp_path):
    cert, key = self_signed_cert(tmp_path, "mx.a.test")
    port, tls_port = free_port(), free_port()
    server_factory(
        "runsubmission", "--bind", f"127.0.0.1:{port}", "--tls-bind", f"127.0.0.1:{tls_port}", wait=("127.0.0.1", port),
        MAIL_HOSTNAME="mx.a.test", MAIL_SUBMISSION_PLAINTEXT_AUTH="never", MAIL_TLS_CERT=str(cert), MAIL_TLS_KEY=str(key),
    )
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("client.a.test")
        assert "auth" not in client.esmtp_features
        client.starttls(context=context)
        client.ehlo("client.a.test")
        client.login("alice@a.test", "alice-pw")
        client.sendmail("alice@a.test", ["carol@a.test"], PLAIN_MESSAGE)
    # The port-465 role: TLS from the first byte (RFC 8314 §3.3), AUTH offered, no STARTTLS.
    with smtplib.SMTP_SSL("127.0.0.1", tls_port, timeout=10, context=context) as client:
        client.ehlo("client.a.test")
        assert "starttls" not in client.esmtp_features
        client.login("alice@a.test", "alice-pw")
        client.sendmail("alice@a.test", ["carol@a.test"], PLAIN_MESSAGE)
    bodies = stored("carol@a.test")
    assert len(bodies) == 2
    assert all("with ESMTPSA" in email.message_from_bytes(body)["Received"] for body in bodies)
