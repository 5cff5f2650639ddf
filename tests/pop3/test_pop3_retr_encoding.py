"""RETR's whole-chunk encoding gives the same bytes as the line-by-line one, whatever the body and chunking."""

from __future__ import annotations

import random

import pytest

from mailcore.wire.pop3 import encode, encode_stored, wire_size
from mailcore.wire.transparency import BodyEncoder


def line_by_line(body: bytes, size: int, *, stuff: bool = True) -> bytes:
    """The reference: the per-line encoder that TOP uses, with no line limit."""
    encoder = BodyEncoder(stuff=stuff)
    pieces = [encoder._feed_lines(body[i : i + size]) for i in range(0, len(body), size)]  # noqa: SLF001
    return b"".join(pieces) + encoder.finish()


def whole_chunks(body: bytes, size: int, *, stuff: bool = True) -> bytes:
    encoder = BodyEncoder(stuff=stuff)
    return b"".join(encoder.feed(body[i : i + size]) for i in range(0, len(body), size)) + encoder.finish()


@pytest.mark.parametrize("seed", range(40))
def test_random_bodies_and_chunkings_match_the_line_by_line_encoding(seed):
    rng = random.Random(seed)
    # Few symbols, so that dots at line starts, bare CR, bare LF and CRLF split across chunks are common.
    body = bytes(rng.choice(b"..\r\n\r\nab") for _ in range(rng.randrange(0, 300)))
    for size in (1, 2, 3, 5, 7, 64, 1000):
        for stuff in (True, False):
            assert whole_chunks(body, size, stuff=stuff) == line_by_line(body, size, stuff=stuff)
    assert wire_size([body]) == len(line_by_line(body, 7, stuff=False))
    assert encode_stored(body, wire_size([body])) == line_by_line(body, 5)


def test_crlf_bodies_are_stuffed_and_terminated():
    assert encode(b".a\r\n.\r\nb\r\n..\r\n") == b"..a\r\n..\r\nb\r\n...\r\n"
    assert encode(b"x\r\n.") == b"x\r\n..\r\n"
    assert whole_chunks(b"x\r\n.y\r\n", 2) == b"x\r\n..y\r\n"
    assert whole_chunks(b"x\r\r\n\n.", 3) == b"x\r\r\n\r\n..\r\n"


def test_a_body_already_in_wire_form_is_only_stuffed():
    body = b".a\r\nb\r\n.\r\n"
    assert encode_stored(body, len(body)) == b"..a\r\nb\r\n..\r\n" == encode(body)
    assert encode_stored(b"x\r\n", 3) == b"x\r\n" and encode_stored(b"", 0) == b""
    for lengthened in (b"a\nb\r\n", b"a\r\nno end", b"a\r"):
        assert encode_stored(lengthened, wire_size([lengthened])) == encode(lengthened)
