"""What the tests make, one way each: mailboxes, messages delivered and read back, a listener.

The fixtures here (`alice`, `b_test`, `mx`) are every test's: tests/conftest.py imports them.
The two-server and two-node set-ups are tests/instances.py and tests/cluster.py.
"""

from __future__ import annotations

import email

import pytest

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


def stored(delivery: Delivery) -> bytes:
    """The body of a delivery as the store holds it."""
    return message_store().read(delivery.message.body_ref)


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
        port = free_port()
        server = server_factory("runsmtp", "--bind", f"127.0.0.1:{port}", wait=("127.0.0.1", port), **env)
        server.port = port
        return server

    return start
