"""Transparency (RFC 5321 §4.5.2, RFC 1939 §3): a message as the lines of SMTP DATA, a GET
reply or a POP3 multi-line response, which share one form: CRLF line ends, a leading dot
doubled, a line of one dot at the end."""

from __future__ import annotations

CRLF = b"\r\n"
TERMINATOR = b".\r\n"


class BodyEncoder:
    """Turns a stored body, fed chunk by chunk, into its lines on the wire.

    Every line end becomes CRLF (a bare LF is sent as CRLF, RFC 1939 §11); a line that begins
    with "." gets one more when `stuff` is set (RFC 5321 §4.5.2, RFC 1939 §3); a last line
    without its line end gets one, so that the terminator stands on a line of its own. With
    `body_lines` set it sends what POP3's TOP asks for (RFC 1939 §7): the headers, the blank
    line that ends them, then at most that many lines of the body. Memory holds one chunk,
    never the body.
    """

    def __init__(self, *, stuff: bool = True, body_lines: int | None = None):
        self.stuff = stuff
        self.body_lines = body_lines
        self.in_body = False
        self.line_empty = True  # nothing of the current line sent yet
        self.held_cr = False  # a chunk ended in CR: it is a line end only if LF follows
        self.done = False  # TOP sent all it was asked for

    def feed(self, chunk: bytes) -> bytes:
        if self.body_lines is None:
            return self._feed_whole(chunk)
        return self._feed_lines(chunk)

    def _feed_whole(self, chunk: bytes) -> bytes:
        """RETR's encoding of a chunk with bytes methods on the whole chunk, never line by line.

        Gives exactly what `_feed_lines` gives (the tests compare them on random bodies): a CR
        at the end of a chunk is held until the next one says whether it starts a CRLF.
        """
        if self.held_cr:
            chunk = b"\r" + chunk
            self.held_cr = False
        if chunk.endswith(b"\r"):
            chunk = chunk[:-1]
            self.held_cr = True
        if not chunk:
            return b""
        if chunk.count(b"\n") != chunk.count(b"\r\n"):
            # A bare LF (RFC 1939 §11: sent as CRLF); a CR stays as it is unless LF follows it.
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if self.stuff:
            # RFC 1939 §3: one more "." on every line that begins with one. The pattern ends in
            # "." and starts with CR, so matches never overlap and one replace finds them all.
            chunk = chunk.replace(b"\r\n.", b"\r\n..")
            if self.line_empty and chunk.startswith(b"."):
                chunk = b"." + chunk
        self.line_empty = chunk.endswith(b"\r\n")
        return chunk

    def _feed_lines(self, chunk: bytes) -> bytes:
        out: list[bytes] = []
        pieces = chunk.split(b"\n")
        last = len(pieces) - 1
        for i, piece in enumerate(pieces):
            if self.done:
                break
            ends_line = i < last
            if self.held_cr and (piece or ends_line):
                self.held_cr = False
                if ends_line and not piece:
                    piece = b"\r"  # the CR of a CRLF split across chunks: dropped below
                else:
                    self._text(b"\r", out)  # a bare CR inside a line is sent as it is
            if ends_line:
                self._text(piece[:-1] if piece.endswith(b"\r") else piece, out)
                self._end_line(out)
            elif piece.endswith(b"\r"):
                self._text(piece[:-1], out)
                self.held_cr = True
            else:
                self._text(piece, out)
        return b"".join(out)

    def finish(self) -> bytes:
        """What is left to send after the last chunk: a held CR, and the last line's end."""
        out: list[bytes] = []
        if self.held_cr and not self.done:
            self._text(b"\r", out)
        self.held_cr = False
        if not self.line_empty and not self.done:
            self._end_line(out)
        return b"".join(out)

    def _text(self, text: bytes, out: list[bytes]) -> None:
        if not text or self.done:
            return
        if self.stuff and self.line_empty and text.startswith(b"."):
            out.append(b".")
        out.append(text)
        self.line_empty = False

    def _end_line(self, out: list[bytes]) -> None:
        out.append(CRLF)
        blank = self.line_empty
        self.line_empty = True
        if self.body_lines is None:
            return
        if self.in_body:
            self.body_lines -= 1
        elif blank:
            self.in_body = True  # RFC 5322 §2.1: the first empty line ends the header section
        if self.in_body and self.body_lines <= 0:
            self.done = True


def dot_stuff(body: bytes) -> bytes:
    """The whole wire form of a body, terminator included (small bodies and tests)."""
    encoder = BodyEncoder()
    return encoder.feed(body) + encoder.finish() + TERMINATOR
