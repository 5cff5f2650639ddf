"""RETR's read-ahead over real sockets: bodies read several at a time are still sent byte for byte, in any order."""

from __future__ import annotations

import os

import pytest

from mailcore.models import Delivery
from mailcore.pop3 import protocol as replies
from mailcore.pop3.maildrop import WHOLE_READ
from mailcore.pop3.wire import encode
from mailcore.services import maildrop
from mailcore.store import message_store
from tests.pop3_support import RawPop3, deliver, make_mailbox, start_pop3

pytestmark = pytest.mark.django_db(transaction=True)


def body(i: int) -> bytes:
    text = f"Subject: message {i}\r\n\r\n.dot line {i}\r\n" + f"line {i}\r\n" * (i * 37)
    if i % 3 == 0:
        text = text.replace("\r\n", "\n")  # stored with bare LF: sent as CRLF (RFC 1939 §11)
    return text.encode()


def stored(delivery: Delivery) -> bytes:
    return message_store().read(delivery.message.body_ref)


def retr(raw: RawPop3, n: int) -> tuple[bytes, bytes]:
    status = raw.cmd(f"RETR {n}")
    return status, raw.multiline() if status.startswith(b"+OK") else b""


def test_in_order_out_of_order_deleted_large_and_unreadable_bodies(server_factory):
    make_mailbox()
    # Message 7 is too large to hold: it is streamed between bodies that were read ahead.
    large = b"Subject: large\r\n\r\n" + b".x" * (WHOLE_READ // 2 + 10) + b"\r\n"
    deliveries = [deliver(large if i == 7 else body(i)) for i in range(1, 22)]
    expected = {n: encode(stored(d)) for n, d in enumerate(deliveries, 1)}
    maildrop.listing(deliveries[0].mailbox_id)  # sizes counted and kept while every body is there
    # Message 12's body vanished from the store: reading it ahead must not spoil its neighbours.
    os.unlink(message_store().storage.path(deliveries[11].message.body_ref))
    port = start_pop3(server_factory)

    raw = RawPop3(port)
    assert raw.login().startswith(b"+OK")
    assert raw.cmd("DELE 5").startswith(b"+OK")
    for n in range(1, 22):
        status, wire = retr(raw, n)
        if n == 5:
            assert status == replies.ALREADY_DELETED.format(n=5).encode()
        elif n == 12:
            assert status == replies.TEMPORARY.encode()
        else:
            assert status == f"+OK {int(raw.cmd(f'LIST {n}').split()[2])} octets".encode()
            assert wire == expected[n], n
    for n in (3, 1, 20, 19, 4, 6, 21, 2):  # backwards and jumping: each read alone, still right
        status, wire = retr(raw, n)
        assert wire == expected[n], n
    assert raw.cmd("RSET").startswith(b"+OK")
    status, wire = retr(raw, 5)  # undeleted: it was never read ahead while deleted
    assert wire == expected[5]
    assert raw.cmd("TOP 13 1") == b"+OK top of message follows"
    assert raw.multiline() == encode(stored(deliveries[12]), body_lines=1)
    assert raw.cmd("QUIT").startswith(b"+OK")
