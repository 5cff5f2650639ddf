"""Header fields that the server itself adds to, reads from or removes from a message in transit.

Our trace headers (Return-Path, Authentication-Results, Received: RFC 5321 §4.4, RFC 8601), the
Subject and From that listings show, and the fields that would pass for our own verdicts.
"""

from __future__ import annotations

import re
from datetime import datetime
from email.parser import BytesHeaderParser
from email.utils import format_datetime, parseaddr
from typing import TYPE_CHECKING

from django.conf import settings
from django.utils import timezone

from mailcore.store import spool

if TYPE_CHECKING:
    from mailcore.envelope import Envelope


# --- our trace headers -------------------------------------------------------------------------


def authentication_results(envelope: Envelope) -> str:
    """The value of our Authentication-Results header (RFC 8601), method x-source."""
    value = f"{settings.MAIL_HOSTNAME}; x-source={envelope.auth_result}"
    if envelope.mail_from:
        value += f" smtp.mailfrom={envelope.mail_from}"
    if envelope.auth_comment:
        value += f" ({envelope.auth_comment})"
    if envelope.authentication is not None:
        for resinfo in envelope.authentication.resinfo():
            value += f";\r\n\t{resinfo}"
    if envelope.spam_result:
        value += f"; {envelope.spam_result}"
    return value


def received_header(envelope: Envelope, queue_id: str, recipient: str | None) -> str:
    """RFC 5321 §4.4 trace header; `for` names the recipient only when there is exactly one."""
    client = envelope.client_name or envelope.client_address or "localhost"
    line = f"from {envelope.helo_name or 'unknown'} ({client} [{envelope.client_address or '127.0.0.1'}])"
    line += f"\r\n\tby {settings.MAIL_HOSTNAME} with {envelope.protocol} id {queue_id}"
    if envelope.tls_cipher:
        line += f"\r\n\t(using {envelope.tls_cipher})"
    if recipient:
        line += f"\r\n\tfor <{recipient}>"
    line += f";\r\n\t{_received_date()}"
    return line


# The date of our Received headers (RFC 5322 §3.3, whole seconds), made once a second rather
# than once a message: format_datetime is the costly part of the header.
_RECEIVED_DATE: tuple[datetime | None, str] = (None, "")


def _received_date() -> str:
    global _RECEIVED_DATE
    second = timezone.now().replace(microsecond=0)
    made = _RECEIVED_DATE
    if made[0] != second:
        made = _RECEIVED_DATE = (second, format_datetime(second))
    return made[1]


def sole_recipient(envelope: Envelope) -> str | None:
    """The recipient that our Received header names: the only one, or none."""
    return envelope.rcpt_tos[0] if len(envelope.rcpt_tos) == 1 else None


def trace_headers(envelope: Envelope, queue_id: str, received: str | None = None) -> bytes:
    """Our Return-Path, Authentication-Results and Received; `received`, when given, is that
    header's value made before (the copy scored by spamd and the copy stored then agree)."""
    if received is None:
        received = received_header(envelope, queue_id, sole_recipient(envelope))
    headers = [
        f"Return-Path: <{envelope.mail_from}>",
        f"Authentication-Results: {authentication_results(envelope)}",
        f"Received: {received}",
    ]
    return ("\r\n".join(headers) + "\r\n").encode("utf-8")


def strip_return_path(content: bytes) -> bytes:
    """RFC 5321 §4.4: a message on its way out carries no Return-Path; the final MTA adds one."""
    while content[:12].lower() == b"return-path:":
        end = content.find(b"\r\n")
        # A folded Return-Path continues on lines that start with white space.
        while end >= 0 and content[end + 2 : end + 3] in (b" ", b"\t"):
            end = content.find(b"\r\n", end + 2)
        if end < 0:
            return content
        content = content[end + 2 :]
    return content


# --- Subject and From, for listings -------------------------------------------------------------

# A header block of plain fields only: every line `name:value` (RFC 5322 §2.2) or a continuation,
# CRLF line ends, no "From " envelope line. email.parser reads such a block the same way as a scan
# does, at a fraction of the cost; anything else still goes to the parser.
_PLAIN_HEADER_BLOCK = re.compile(rb"[\x21-\x39\x3b-\x7e]+:[^\r\n]*(?:\r\n(?:[\x21-\x39\x3b-\x7e]+:|[\t ])[^\r\n]*)*")
_SUMMARY_FIELD = re.compile(rb"^(subject|from):([^\r\n]*(?:\r\n[\t ][^\r\n]*)*)", re.IGNORECASE | re.MULTILINE)
# A From of the usual shape, `Name <local@domain>`, `<local@domain>` or `local@domain`, of
# plain atoms (RFC 5322 §3.2.3), trailing blanks allowed: parseaddr finds exactly that address
# (tests/smtp/test_inbound_rows.py compares the two), at a fraction of its cost.
# Any other From (quoted names, comments, folding, several addresses) still goes to parseaddr.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_PLAIN_ADDRESS = rf"{_ATEXT}+(?:\.{_ATEXT}+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
_PLAIN_FROM = re.compile(rf"(?:(?:{_ATEXT}+(?:[ \t]+{_ATEXT}+)*[ \t]*)?<(?P<routed>{_PLAIN_ADDRESS})>|(?P<bare>{_PLAIN_ADDRESS}))[ \t]*")


def summary_headers(content: bytes) -> tuple[str, str]:
    """(Subject, From address) of a message, for listings; never fails."""
    try:
        end = content.find(b"\r\n\r\n", 0, 65536 + 4)
        head = content[: end if end >= 0 else 65536]
        if head.isascii() and _PLAIN_HEADER_BLOCK.fullmatch(head):
            fields: dict[bytes, str] = {}
            for match in _SUMMARY_FIELD.finditer(head):
                # The first of each, unfolded as compat32 does: leading blanks of the value dropped.
                fields.setdefault(match[1].lower(), match[2].decode("ascii").lstrip(" \t"))
            subject, header_from = fields.get(b"subject", ""), fields.get(b"from", "")
        else:
            parsed = BytesHeaderParser().parsebytes(head)
            subject, header_from = str(parsed.get("Subject", "")), str(parsed.get("From", ""))
        return subject[:255], from_address(header_from)[:320]
    except Exception:  # a header we cannot parse must not stop delivery
        return "", ""


def from_address(header_from: str) -> str:
    """The address of a From header's value, as email.utils.parseaddr finds it."""
    plain = _PLAIN_FROM.fullmatch(header_from)
    if plain is not None:
        return plain["routed"] or plain["bare"]
    return parseaddr(header_from)[1]


# --- fields that would pass for our own verdicts -------------------------------------------------

# A header field (with its continuation lines) that claims a verdict of ours: X-Spam-*, and an
# Authentication-Results whose authserv-id (RFC 8601 §2.2) is the name we write ours under.
_CLAIMED_VERDICT = re.compile(
    rb"^(?:x-spam-[^:\r\n]*|authentication-results)[ \t]*:[^\r\n]*(?:\r\n[ \t][^\r\n]*)*\r\n", re.IGNORECASE | re.MULTILINE
)
_AUTHSERV_ID = re.compile(rb":\s*(?:\([^)]*\)\s*)*([^\s;(]+)")


def first_part(content: bytes | list) -> bytes:
    """The part of a message that holds its whole header block: all of it when it is one bytes object."""
    return content if isinstance(content, bytes) else content[0]


def without_forged_verdicts(content: bytes | list) -> bytes | list:
    """`without_forged_headers` of a message that may be in parts: the header block is in the first.

    A spooled message's first part holds its header block whole (wire.data, HEADER_TOO_BIG).
    """
    if isinstance(content, bytes):
        return without_forged_headers(content)
    if b"\r\n\r\n" not in content[0] and not spool.is_spooled(content):
        content = [b"".join(content)]  # a header block longer than a part: rare, and searched whole
    return [without_forged_headers(content[0]), *content[1:]]


def without_forged_headers(content: bytes) -> bytes:
    """`content` without the header fields that would pass for our own verdicts.

    RFC 8601 §5: an Authentication-Results field that carries our authserv-id and came from
    outside must be removed before ours is added, or a reader cannot tell it from ours; the same
    holds for the X-Spam-* fields that our spam check writes. Only the header block is searched.
    """
    end = content.find(b"\r\n\r\n")
    head_end = end + 2 if end >= 0 else len(content)
    head = content[:head_end]
    if b"-spam-" not in head.lower() and b"authentication-results" not in head.lower():
        return content
    ours = settings.MAIL_HOSTNAME.lower().encode("utf-8", "replace")

    def keep_or_drop(field: re.Match) -> bytes:
        text = field.group(0)
        if text[:7].lower() == b"x-spam-":
            return b""
        authserv = _AUTHSERV_ID.search(text)
        return b"" if authserv is None or authserv.group(1).lower() == ours else text

    # Header fields start at the beginning of the message or after a CRLF: prefixed with one,
    # so that the first field is found by the same pattern.
    cleaned = _CLAIMED_VERDICT.sub(keep_or_drop, b"\r\n" + head)[2:]
    return cleaned + content[head_end:]
