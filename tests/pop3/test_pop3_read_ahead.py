"""RETR's read-ahead: bodies read from the page cache or several at a time by workers, sent byte for byte in any order."""

from __future__ import annotations

import asyncio
import os

import pytest

from mailcore.models import Message
from mailcore.pop3 import protocol as replies
from mailcore.pop3.maildrop import READ_AHEAD_COUNT, WHOLE_READ, ReadAhead, ServiceMaildrop
from mailcore.services import maildrop
from mailcore.store import message_store
from mailcore.wire.pop3 import encode
from tests.factories import deliver, make_mailbox, stored
from tests.pop3_support import RawPop3, start_pop3

pytestmark = pytest.mark.django_db(transaction=True)


def body(i: int) -> bytes:
    text = f"Subject: message {i}\r\n\r\n.dot line {i}\r\n" + f"line {i}\r\n" * (i * 37)
    if i % 3 == 0:
        text = text.replace("\r\n", "\n")  # stored with bare LF: sent as CRLF (RFC 1939 §11)
    return text.encode()


def retr(raw: RawPop3, n: int) -> tuple[bytes, bytes]:
    status = raw.cmd(f"RETR {n}")
    return status, raw.multiline() if status.startswith(b"+OK") else b""


@pytest.mark.parametrize("segment_max", [0, 1048576], ids=["bodies-in-files", "bodies-in-segments"])
def test_in_order_out_of_order_deleted_large_and_unreadable_bodies(server_factory, settings, segment_max):
    settings.MAIL_STORE_SEGMENT_MAX = segment_max
    make_mailbox()
    # Message 7 is too large to hold: it is streamed between bodies that were read ahead.
    large = b"Subject: large\r\n\r\n" + b".x" * (WHOLE_READ // 2 + 10) + b"\r\n"
    deliveries = [deliver(large if i == 7 else body(i)) for i in range(1, 22)]
    expected = {n: encode(stored(d)) for n, d in enumerate(deliveries, 1)}
    maildrop.listing(deliveries[0].mailbox_id)  # sizes counted and kept while every body is there
    # Message 12's body vanished from the store: reading it ahead must not spoil its neighbours.
    lost = deliveries[11].message
    if lost.body_ref.startswith("seg:"):  # its segment is shorter than its ref says (truncated)
        name, offset, length = lost.body_ref.rsplit(":", 2)
        Message.objects.filter(pk=lost.pk).update(body_ref=f"{name}:{int(offset) + 10**9}:{length}")
    else:
        os.unlink(message_store().storage.path(lost.body_ref))
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


# --- where a RETR's body is read: the page cache on the loop, or worker threads in batches --------


class CountingMaildrop:
    """A Maildrop's RETR side that counts trips to workers; `cached` says whether the page cache has bodies."""

    def __init__(self, cached: bool):
        self.cached = cached
        self.trips: list[list[int]] = []

    def cached_reply(self, entry):
        return b"cached %d" % entry.delivery_id if self.cached else None

    async def replies(self, entries, asked=True):
        self.trips.append([entry.delivery_id for entry in entries])
        return [b"read %d" % entry.delivery_id for entry in entries]


def listing(count: int, size: int = 10_240) -> list[maildrop.MaildropEntry]:
    return [maildrop.MaildropEntry(n, n, f"uid{n}", size, f"ref{n}") for n in range(1, count + 1)]


async def retrieve_in_order(read_ahead: ReadAhead, entries, skip=frozenset(), start: int = 1) -> list[bytes]:
    sent = []
    for n in range(start, len(entries) + 1):
        if n in skip:
            continue
        reply = read_ahead.ready(entries, n, set(skip))
        if reply is None:
            reply = await read_ahead.take(entries, n, set(skip))
        sent.append(reply)
        await asyncio.sleep(0)  # not a wait: the loop turns between commands, as a session's does
    return sent


def test_a_warm_page_cache_costs_no_trip_to_a_worker():
    drop = CountingMaildrop(cached=True)
    sent = asyncio.run(retrieve_in_order(ReadAhead(drop), listing(200)))
    assert sent == [b"cached %d" % n for n in range(1, 201)]
    assert drop.trips == []


def test_a_cold_cache_is_read_ahead_in_growing_batches_in_order():
    drop = CountingMaildrop(cached=False)
    sent = asyncio.run(retrieve_in_order(ReadAhead(drop), listing(300), skip={50, 51}))
    assert sent == [b"read %d" % n for n in range(1, 301) if n not in (50, 51)]
    assert [n for trip in drop.trips for n in trip] == [n for n in range(1, 301) if n not in (50, 51)]
    sizes = [len(trip) for trip in drop.trips]
    assert sizes[:4] == [1, 2, 4, 8] and max(sizes) <= READ_AHEAD_COUNT
    assert len(drop.trips) < 40  # about 12 bodies of 10 KB a trip once the window is open


def test_a_cold_body_then_a_warm_cache_stops_reading_ahead():
    drop = CountingMaildrop(cached=False)
    read_ahead = ReadAhead(drop)
    entries = listing(100)

    async def scenario():
        first = await read_ahead.take(entries, 1, set())
        drop.cached = True
        return [first] + await retrieve_in_order(read_ahead, entries, start=2)

    sent = asyncio.run(scenario())
    assert len(sent) == 100 and sent[0] == b"read 1"
    assert len(drop.trips) <= 2  # what was held is sent, then the cache serves the rest
    assert sent[-1] == b"cached 100"


def test_the_page_cache_and_the_worker_give_the_same_reply(settings):
    settings.MAIL_STORE_SEGMENT_MAX = 0  # each body in a file of its own (segments: tests/store/test_store_segments.py)
    make_mailbox()
    # With dot lines or bare LF (encoded, then joined), and in wire form without a line to stuff
    # (read in place into the reply), and a body that starts with a dot.
    plain = [b"Subject: plain\r\n\r\nno dots here\r\n", b".starts with a dot\r\n", b"no line end"]
    deliveries = [deliver(content) for content in [body(i) for i in range(1, 8)] + plain]
    entries = maildrop.listing(deliveries[0].mailbox_id)
    service = ServiceMaildrop(lock_ttl=60, failures=None)
    from_workers = asyncio.run(service.replies(entries))
    for entry, reply in zip(entries, from_workers, strict=True):
        assert service.cached_reply(entry) == reply
        assert reply == b"+OK %d octets\r\n" % entry.size + encode(message_store().read(entry.body_ref)) + b".\r\n"


def test_a_body_is_read_from_its_file_and_never_waits_for_the_disk_on_the_loop(monkeypatch, settings):
    settings.MAIL_STORE_SEGMENT_MAX = 0
    make_mailbox()
    delivery = deliver(body(3))  # bare LF: stored shorter than sent, so the end of the file is checked
    entry = maildrop.listing(delivery.mailbox_id)[0]
    buffer = bytearray(entry.size + 1)
    for wait in (False, True):
        length = maildrop.body_into(entry.body_ref, memoryview(buffer), wait=wait)
        assert buffer[:length] == stored(delivery) and length < entry.size
        assert maildrop.body_into(entry.body_ref, memoryview(buffer)[: length - 1], wait=wait) is None  # too long

    def not_cached(fd, buffers, offset, flags):
        assert flags & os.RWF_NOWAIT
        raise BlockingIOError(11, "would block")

    monkeypatch.setattr(maildrop.os, "preadv", not_cached)
    assert maildrop.body_into(entry.body_ref, memoryview(buffer), wait=False) is None
    monkeypatch.undo()
    os.unlink(message_store().storage.path(entry.body_ref))
    assert maildrop.body_into(entry.body_ref, memoryview(buffer), wait=False) is None  # the worker reports it
    with pytest.raises(FileNotFoundError):
        maildrop.body_into(entry.body_ref, memoryview(buffer), wait=True)
