"""The POP3 body encoding alone: CRLF, byte-stuffing, TOP's line count, chunk boundaries anywhere."""

from __future__ import annotations

import pytest

from mailcore.wire.pop3 import encode, wire_size
from mailcore.wire.transparency import BodyEncoder

BODY = b"A: 1\r\nB: 2\n\r\n.line\r\nx\rz\n..\r\n.\r\nlast"


def chunked(body: bytes, size: int, **options) -> bytes:
    encoder = BodyEncoder(**options)
    return b"".join(encoder.feed(body[i : i + size]) for i in range(0, len(body), size)) + encoder.finish()


def test_crlf_and_byte_stuffing():
    assert encode(BODY) == b"A: 1\r\nB: 2\r\n\r\n..line\r\nx\rz\r\n...\r\n..\r\nlast\r\n"


def test_size_counts_crlf_but_not_the_stuffing():
    # RFC 1939 §11: stuffed dots "need not (and must not) be counted".
    assert wire_size([BODY]) == len(encode(BODY, stuff=False)) == len(encode(BODY)) - 3


@pytest.mark.parametrize("size", range(1, 12))
def test_any_chunking_gives_the_same_bytes(size):
    assert chunked(BODY, size) == encode(BODY)
    for lines in (0, 1, 3, 99):
        assert chunked(BODY, size, body_lines=lines) == encode(BODY, body_lines=lines)
    assert wire_size(BODY[i : i + size] for i in range(0, len(BODY), size)) == wire_size([BODY])


def test_crlf_split_across_chunks_is_one_line_end():
    encoder = BodyEncoder()
    assert encoder.feed(b"a\r") + encoder.feed(b"\nb\r") + encoder.feed(b"") + encoder.feed(b"c") + encoder.finish() == (
        b"a\r\nb\rc\r\n"
    )


@pytest.mark.parametrize(
    "lines, expected",
    [
        (0, b"A: 1\r\nB: 2\r\n\r\n"),
        (1, b"A: 1\r\nB: 2\r\n\r\n..line\r\n"),
        (2, b"A: 1\r\nB: 2\r\n\r\n..line\r\nx\rz\r\n"),
        (99999999, b"A: 1\r\nB: 2\r\n\r\n..line\r\nx\rz\r\n...\r\n..\r\nlast\r\n"),
    ],
)
def test_top_line_counts(lines, expected):
    assert encode(BODY, body_lines=lines) == expected


def test_a_message_without_a_body_or_a_blank_line():
    assert encode(b"Subject: only headers\r\n", body_lines=0) == b"Subject: only headers\r\n"
    assert encode(b"") == b""
    assert wire_size([b"no line end"]) == len(b"no line end\r\n")
