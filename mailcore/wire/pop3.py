"""How a stored body goes on the POP3 wire: CRLF line ends, byte-stuffing, TOP's line count, streamed."""

from __future__ import annotations

from collections.abc import Iterable

from mailcore.wire.transparency import CRLF, TERMINATOR, BodyEncoder


def encode_stored(body: bytes, size: int) -> bytes:
    """RETR's text of a whole stored body whose size as sent (LIST's count) is `size`.

    Encoding only lengthens a body (a CR for each bare LF, a line end for an unterminated last
    line), so a body as long as its size as sent is already in wire form: it needs only the
    byte-stuffing, one replace over the body. Any other body goes through the encoder.
    """
    if len(body) != size:
        return encode(body)
    body = body.replace(b"\r\n.", b"\r\n..")  # RFC 1939 §3; matches never overlap
    return b"." + body if body.startswith(b".") else body


def retr_reply(body: bytes, size: int) -> bytes:
    """RETR's whole reply for a stored body of `size` octets as sent: status line, text, terminator."""
    return b"".join((b"+OK %d octets" % size, CRLF, encode_stored(body, size), TERMINATOR))


def wire_size(chunks: Iterable[bytes]) -> int:
    """The exact octet count LIST, STAT and RETR announce: as sent, without byte-stuffing (RFC 1939 §11)."""
    encoder = BodyEncoder(stuff=False)
    size = sum(len(encoder.feed(chunk)) for chunk in chunks)
    return size + len(encoder.finish())


def encode(body: bytes, *, stuff: bool = True, body_lines: int | None = None) -> bytes:
    """The whole encoding of a body in one call (tests and small bodies)."""
    encoder = BodyEncoder(stuff=stuff, body_lines=body_lines)
    return encoder.feed(body) + encoder.finish()
