"""The DATA form in both directions, without a socket: end detection, unstuffing, limits, dot-stuffing."""

from __future__ import annotations

import random

import pytest

from mailcore.store.spool import SpoolFile
from mailcore.wire import replies
from mailcore.wire.data import MAX_LINE_OCTETS, PART_SIZE, DataReceiver, has_long_line
from mailcore.wire.replies import Reply
from mailcore.wire.transparency import BodyEncoder, dot_stuff


def receive(wire: bytes, chunk: int, max_size: int = 10_000) -> DataReceiver:
    receiver = DataReceiver(max_size)
    for i in range(0, len(wire), chunk):
        if receiver.feed(wire[i:i + chunk]):
            break
    return receiver


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7, 64, 100_000])
def test_end_of_data_found_across_any_chunking(chunk):
    wire = b"Subject: x\r\n\r\n..dot\r\n.\r\nQUIT\r\n"
    receiver = receive(wire, chunk)
    assert receiver.done
    assert receiver.outcome().content == b"Subject: x\r\n\r\n.dot\r\n"
    # What came after the final dot is left for the command loop (pipelining).
    assert b"QUIT\r\n".startswith(receiver.leftover)


def test_empty_message_and_leading_dot_on_the_first_line():
    assert receive(b".\r\n", 1).outcome().content == b""
    assert receive(b"..x\r\n.\r\n", 2).outcome().content == b".x\r\n"


def test_size_limit_stops_buffering_and_gives_up_on_an_endless_body():
    receiver = DataReceiver(max_size=100)
    for _ in range(10):
        receiver.feed(b"x" * 98 + b"\r\n")
    assert receiver.too_big and receiver.held() <= 4
    receiver.feed(b".\r\n")
    assert receiver.done and receiver.outcome().problem == replies.DATA_TOO_BIG
    endless = DataReceiver(max_size=100, abandon_after=1000)
    for _ in range(20):
        endless.feed(b"y" * 98 + b"\r\n")
    assert endless.abandoned


@pytest.mark.parametrize(
    "body, problem",
    [
        (b"a\nb\r\n", replies.DATA_BARE_LF),
        (b"a\rb\r\n", replies.DATA_BARE_LF),
        (b"a\x00b\r\n", replies.DATA_NUL),
        (b"y" * 999 + b"\r\n", replies.DATA_LINE_TOO_LONG),
        (b"y" * 998 + b"\r\n", None),
        (b"." + b"y" * 998 + b"\r\n", None),  # a stuffed dot does not count (RFC 5321 §4.5.3.1.6)
    ],
)
def test_content_checks(body, problem: Reply | None):
    assert receive(body + b".\r\n", 4096).outcome().problem == problem


def test_dot_stuffing_round_trip_across_chunks():
    content = b".start\r\nmid\r\n.\r\n..x\r\nbare\nlf\r\nlast"
    for size in (1, 2, 3, 7, 1000):
        encoder = BodyEncoder()
        wire = b"".join(encoder.feed(content[i:i + size]) for i in range(0, len(content), size)) + encoder.finish() + b".\r\n"
        assert wire == b"..start\r\nmid\r\n..\r\n...x\r\nbare\r\nlf\r\nlast\r\n.\r\n", size
        assert receive(wire, size).outcome().content == content.replace(b"bare\n", b"bare\r\n") + b"\r\n"


def test_dot_stuff_of_a_body_ending_in_crlf_adds_only_the_dot():
    assert dot_stuff(b"a\r\n") == b"a\r\n.\r\n"
    assert dot_stuff(b"") == b".\r\n"


def test_a_large_message_in_large_chunks_is_received_whole():
    # Throughput is measured by `make bench`, not here; this checks that a 12 MB body with
    # dot-stuffed lines, split across chunk boundaries, comes out exactly.
    line = b"x" * 76 + b"\r\n"
    original = b"Subject: large\r\n\r\n" + (line * 999 + b".starts with a dot\r\n") * 160
    wire = original.replace(b"\r\n.", b"\r\n..") + b".\r\n"
    receiver = receive(wire, 256 * 1024 + 3, max_size=len(wire))
    content = receiver.outcome().content
    # Past a megabyte: its first part in memory, the rest in a spool file, which the store copies.
    head, spooled = content
    assert isinstance(spooled, SpoolFile) and len(head) >= PART_SIZE
    assert head + spooled.read() == original
    spooled.close()


@pytest.mark.parametrize("line", [b"x\r\n", b"..\r\n", b"y" * 998 + b"\r\n"])
def test_what_is_held_is_the_message_once_whatever_its_lines(line):
    # Short lines cost nothing per line beyond their octets: one chunk's split at a time.
    # Past PART_SIZE nothing more is held in memory: the rest goes to the spool as it comes.
    receiver = DataReceiver(max_size=30_000_000)
    chunk = b"Subject: x\r\n\r\n" + line * (256 * 1024 // len(line))
    unstuffed = len(line) - line.startswith(b".")
    for _ in range(40):
        receiver.feed(chunk)
        chunk = line * (256 * 1024 // len(line))
        assert receiver.held() <= min(receiver.received, PART_SIZE + len(chunk)) + len(line) + 2
    assert receiver.spooled() >= receiver.received // len(line) * unstuffed - PART_SIZE - len(chunk)
    assert receiver.feed(b".\r\n")
    outcome = receiver.outcome()
    head, spooled = outcome.content
    lines = 40 * (256 * 1024 // len(line))
    assert outcome.problem is None and head + spooled.read() == b"Subject: x\r\n\r\n" + line[len(line) - unstuffed:] * lines
    spooled.close()


def test_a_header_block_past_the_first_part_is_refused_and_its_spool_closed():
    receiver = DataReceiver(max_size=10_000_000)
    for _ in range(20):
        receiver.feed((b"X-Filler: " + b"y" * 88 + b"\r\n") * 1000)
    receiver.feed(b"\r\nbody\r\n.\r\n")
    assert receiver.done and receiver.outcome().problem == replies.HEADER_TOO_BIG
    assert receiver.spooled() == 0 and receiver.held() == 0


def test_a_refused_or_too_large_message_closes_its_spool():
    lines = (b"z" * 198 + b"\r\n") * 1000
    for tail, problem in ((b"bare\nlf\r\n", replies.DATA_BARE_LF), (lines * 3, replies.DATA_TOO_BIG)):
        receiver = DataReceiver(max_size=2_000_000)
        receiver.feed(b"Subject: x\r\n\r\n")
        for _ in range(8):
            receiver.feed(lines)
        spool = receiver._spool
        assert spool is not None and len(spool) > 0
        receiver.feed(tail + b".\r\n")
        assert receiver.outcome().problem == problem and spool.closed


def reference_outcome(wire: bytes) -> tuple[bytes | None, bytes]:
    """What DATA must make of `wire` (RFC 5321 §4.5.2), written the plain way: (content or None
    when the data is refused or has no end, what follows the end)."""
    data = b"\r\n" + wire
    end = data.find(b"\r\n.\r\n")
    if end < 0:
        return None, b""
    raw, after = data[2:end + 2], data[end + 5:]
    lines = raw.split(b"\r\n")
    if b"\x00" in raw or any(b"\r" in line or b"\n" in line for line in lines):
        return None, after
    if any(len(line) - line.startswith(b".") > 998 for line in lines):
        return None, after
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines), after


def test_end_and_unstuffing_agree_with_the_plain_reading_for_any_input_and_chunking():
    # The end of data is searched for by candidates (lines that start with a dot) and the
    # unstuffing depends on having seen one: random wires of the octets that matter, cut at
    # random places, must come out as the plain reading says.
    rng = random.Random(8)
    pieces = [b"a", b"b", b".", b"..", b"\r\n", b"\r", b"\n", b".\r\n", b"\r\n.", b"\r\n.\r\n", b"\x00", b"x" * 500]
    for _ in range(3000):
        wire = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
        receiver = DataReceiver(max_size=100_000)
        at = 0
        while at < len(wire) and not receiver.done:
            step = rng.randint(1, 12)
            receiver.feed(wire[at:at + step])
            at += step
        content, after = reference_outcome(wire)
        if not receiver.done:
            assert content is None and b"\r\n.\r\n" not in b"\r\n" + wire, wire
            continue
        assert (receiver.leftover + wire[at:]) == after, wire
        outcome = receiver.outcome().content
        assert (outcome if outcome is None or isinstance(outcome, bytes) else b"".join(outcome)) == content, wire


def test_line_length_check_agrees_with_counting_each_line():
    # The check looks at one LF per block of 500 octets, never at each line: random bodies of
    # lines around the limit (with and without a stuffing dot), compared with a line-by-line count.
    rng = random.Random(1000)
    for _ in range(400):
        lines = []
        for _ in range(rng.randint(1, 12)):
            length = rng.choice([0, 1, 2, 499, 500, 501, 997, 998, 999, 1000, 1500, 2500, rng.randint(0, 1200)])
            lines.append(rng.choice([b"", b"."]) + b"x" * length)
        raw = b"".join(line + b"\r\n" for line in lines)
        plain = any(len(line) - line.startswith(b".") > MAX_LINE_OCTETS for line in lines)
        assert has_long_line(raw) == plain, [len(line) for line in lines]
