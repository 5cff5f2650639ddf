"""What the tests make, one way each: mailboxes, messages delivered and read back, a server listening on a free port.

The fixtures here (`alice`, `b_test`, `mx`) are every test's: tests/conftest.py imports them.
The two-server and two-node set-ups are tests/instances.py and tests/cluster.py.
"""

from __future__ import annotations

import email
import io
from unittest import mock

import pytest
from django.core.management import call_command

from mailcore.models import Delivery, Mailbox
from mailcore.services import accounts, inbound
from mailcore.store import message_store
from tests.sockets import free_port

# The mailbox most tests log in to and read.
ADDRESS = "alice@a.test"
PASSWORD = "correct horse battery"


def make_mailbox(address: str = ADDRESS, password: str = PASSWORD) -> Mailbox:
    """A mailbox, and its domain if it is not there yet."""
    domain = address.rpartition("@")[2]
    if not accounts.list_domains().filter(name=domain).exists():
        accounts.add_domain(domain)
    return accounts.add_mailbox(address, password)


def deliver(content: bytes, address: str = ADDRESS) -> Delivery:
    """`content` received from bob@b.test for `address`, as the MX would store it."""
    receipt = inbound.receive(inbound.Envelope(mail_from="bob@b.test", rcpt_tos=[address]), content)
    return Delivery.objects.get(message=receipt.message, mailbox__address=address)


def stored(row) -> bytes:
    """The body of a message (or of a delivery's or an inbound receipt's message) as the store holds it."""
    return message_store().read(getattr(row, "message", row).body_ref)


def call_manage(*args: str, stdin: str = "") -> str:
    """Run a management command in this process, on the test's database, with `stdin` as its standard input: what it printed."""
    out = io.StringIO()
    with mock.patch("sys.stdin", io.StringIO(stdin)):
        call_command(*args, stdout=out)
    return out.getvalue()


def alice_writes(subject: str, to: str = "Bob <bob@b.test>", sender: str = "Alice <alice@a.test>") -> bytes:
    """A message as alice@a.test's mail program submits it, its Message-ID made of `subject`: lines
    that start with a dot (stuffed on the wire, unstuffed on arrival) and a signature in the body."""
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: Thu, 26 Nov 2026 19:00:00 +0000\r\n"
        f"Message-ID: <{subject.replace(' ', '-')}@a.test>\r\n\r\n"
        "Hello,\r\n.a line that starts with a dot\r\n..and one with two\r\n\r\n-- \r\nAlice\r\n"
    ).encode()


def parse_report(raw: bytes):
    """(report, per-message fields, per-recipient fields, returned headers part) of a delivery status
    notification; fails unless it is an RFC 3464 report."""
    report = email.message_from_bytes(raw)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    _, status, headers = report.get_payload()
    assert status.get_content_type() == "message/delivery-status"
    per_message, *per_recipient = status.get_payload()
    return report, per_message, per_recipient, headers


def start_listener(server_factory, command: str, *args: str, **env: str):
    """The ServerProcess of `manage.py COMMAND --bind 127.0.0.1:<a free port> ARGS` from
    `server_factory`, once it accepts; the port is its `port`."""
    port = free_port()
    server = server_factory(command, "--bind", f"127.0.0.1:{port}", *args, wait=("127.0.0.1", port), **env)
    server.port = port
    return server


class Clock:
    """A clock that stands still until the test moves it (`clock.now += seconds`), for code that takes a `clock`."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def alice() -> Mailbox:
    """The domain a.test with the mailbox alice@a.test (password PASSWORD)."""
    return make_mailbox()


@pytest.fixture
def b_test() -> Mailbox:
    """The local domain b.test with the mailbox bob@b.test, which most MX tests send to."""
    return make_mailbox("bob@b.test", "pw")


@pytest.fixture
def mx(server_factory):
    """Start a real `manage.py runsmtp` on a free port; keyword arguments become its environment."""

    def start(**env: str):
        return start_listener(server_factory, "runsmtp", **env)

    return start
