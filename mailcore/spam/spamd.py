"""A small synchronous spamd client (SpamAssassin's SPAMC/1.5 protocol) that never waits past a deadline.

Our own rather than `aiospamc`: `inbound.receive` is synchronous (the listeners reach it through
one boundary into worker threads), so an asyncio client would need an event loop of its own inside
that worker thread; the one request we need (SYMBOLS) is a few lines of socket code, and a plain
socket lets a single deadline cover connect, send and receive, with no new dependency.
"""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass

PROTOCOL = "SPAMC/1.5"
# A SYMBOLS reply is a few headers and a comma-separated rule list; anything far larger is not spamd.
MAX_REPLY = 1024 * 1024

_STATUS_LINE = re.compile(r"^SPAMD/(\d+\.\d+) +(\d+) +(.*)$")
# "Spam: True ; 1000.0 / 5.0" (spamd's `Spam` header: verdict, score, its own required score).
_RULE_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")
_SPAM_HEADER = re.compile(r"^\s*(true|false|yes|no)\s*;\s*(-?\d+(?:\.\d+)?)\s*/\s*(-?\d+(?:\.\d+)?)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class SpamdReport:
    """What spamd said about one message."""

    score: float
    required: float  # spamd's own required_score: informative only, the domain thresholds decide
    rules: tuple[str, ...]


class SpamdError(Exception):
    """spamd could not score the message: refused, unreachable, or a reply we do not understand."""


class SpamdTimeout(SpamdError):
    """spamd did not answer within the deadline."""


def symbols_request(message: bytes, user: str | None = None) -> bytes:
    """A SYMBOLS request: score the message, answer with the names of the rules that hit."""
    lines = [f"SYMBOLS {PROTOCOL}", f"Content-length: {len(message)}"]
    if user:
        lines.append(f"User: {user}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + message


def parse_symbols_reply(reply: bytes) -> SpamdReport:
    """Parse spamd's answer to SYMBOLS; raises SpamdError for anything but a complete EX_OK reply."""
    head, sep, body = reply.partition(b"\r\n\r\n")
    if not sep:
        # spamd ends the headers with an empty line even when the rule list is empty.
        head, body = reply.rstrip(b"\r\n"), b""
        if not head.count(b"\r\n"):
            raise SpamdError(f"incomplete reply from spamd: {reply[:80]!r}")
    lines = head.decode("ascii", "replace").split("\r\n")
    status = _STATUS_LINE.match(lines[0])
    if not status:
        raise SpamdError(f"not a spamd reply: {lines[0][:80]!r}")
    code, text = int(status.group(2)), status.group(3).strip()
    if code != 0:  # sysexits.h codes: EX_PROTOCOL, EX_TEMPFAIL, ...
        raise SpamdError(f"spamd answered {code} {text}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    spam = _SPAM_HEADER.match(headers.get("spam", ""))
    if not spam:
        raise SpamdError(f"spamd reply without a Spam header: {head[:120]!r}")
    length = headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) != len(body)):
        raise SpamdError(f"truncated spamd reply: {len(body)} of {length} octets")
    # Rule names go into a header we write: keep only what a rule name can be, never a line break.
    rules = tuple(r for r in (r.strip() for r in body.decode("ascii", "replace").split(",")) if _RULE_NAME.match(r))
    return SpamdReport(score=float(spam.group(2)), required=float(spam.group(3)), rules=rules)


class TellRefused(SpamdError):
    """spamd does not learn: it runs without --allow-tell (or refuses this request)."""


def tell_request(message: bytes, message_class: str) -> bytes:
    """A TELL request (SpamAssassin's spamd/PROTOCOL): learn `message` as "spam" or "ham" into the Bayes store."""
    lines = [f"TELL {PROTOCOL}", f"Message-class: {message_class}", "Set: local", f"Content-length: {len(message)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + message


def parse_tell_reply(reply: bytes) -> bool:
    """True when spamd learned the message, False when it knew it already; TellRefused or SpamdError otherwise."""
    lines = reply.decode("ascii", "replace").split("\r\n")
    status = _STATUS_LINE.match(lines[0])
    if not status:
        raise SpamdError(f"not a spamd reply: {lines[0][:80]!r}")
    code, text = int(status.group(2)), status.group(3).strip()
    if code == 69:  # EX_UNAVAILABLE: "TELL commands are not enabled, set the --allow-tell switch."
        raise TellRefused(text)
    if code != 0:
        raise SpamdError(f"spamd answered {code} {text}")
    return any(line.lower().startswith("didset:") for line in lines[1:])


class SpamdClient:
    """Asks one spamd for scores; every call finishes within `timeout` seconds, answer or not."""

    def __init__(self, host: str, port: int, timeout: float):
        self.host = host
        self.port = port
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"SpamdClient({self.host}:{self.port}, timeout={self.timeout:g})"

    def symbols(self, message: bytes) -> SpamdReport:
        """Score `message`; raises SpamdTimeout or SpamdError when spamd cannot give a score in time."""
        return parse_symbols_reply(self._exchange(symbols_request(message)))

    def tell(self, message: bytes, message_class: str) -> bool:
        """Teach spamd's Bayes filter that `message` is "spam" or "ham" (needs `spamd --allow-tell`)."""
        return parse_tell_reply(self._exchange(tell_request(message, message_class)))

    def _exchange(self, request: bytes) -> bytes:
        """Send one request and read the whole reply, all within the timeout."""
        deadline = time.monotonic() + self.timeout

        def remaining() -> float:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SpamdTimeout(f"spamd at {self.host}:{self.port} gave no answer within {self.timeout:g} s")
            return left

        try:
            with socket.create_connection((self.host, self.port), timeout=remaining()) as sock:
                # Since Python 3.5 the timeout bounds the whole sendall, not each chunk.
                sock.settimeout(remaining())
                sock.sendall(request)
                # spamd reads exactly Content-length octets; the half-close tells it nothing more follows.
                sock.shutdown(socket.SHUT_WR)
                received = bytearray()
                while True:
                    sock.settimeout(remaining())
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    received += chunk
                    if len(received) > MAX_REPLY:
                        raise SpamdError(f"spamd reply larger than {MAX_REPLY} octets")
        except TimeoutError:  # socket.timeout is TimeoutError since Python 3.10
            raise SpamdTimeout(f"spamd at {self.host}:{self.port} gave no answer within {self.timeout:g} s") from None
        except OSError as exc:
            raise SpamdError(f"cannot talk to spamd at {self.host}:{self.port}: {exc.strerror or exc}") from None
        return bytes(received)
