"""Reads a stored message for display: its headers, text part, HTML part and attachments with sizes."""

from __future__ import annotations

from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

from mailcore.models import Message
from mailcore.store import message_store

# Shown inline up to this many characters; the raw download always has everything.
MAX_TEXT_CHARS = 200_000


@dataclass
class Attachment:
    filename: str
    content_type: str
    size: int


@dataclass
class MessageParts:
    headers: list[tuple[str, str]] = field(default_factory=list)
    text: str | None = None
    html: str | None = None
    attachments: list[Attachment] = field(default_factory=list)
    truncated: bool = False
    problems: list[str] = field(default_factory=list)


def read_raw(message: Message) -> bytes:
    return message_store().read(message.body_ref)


def parse(raw: bytes) -> MessageParts:
    """Split a message into what the message view shows; a malformed part becomes a problem line, never an error."""
    parts = MessageParts()
    msg = BytesParser(policy=policy.default).parsebytes(raw)
    for name, raw_value in msg.raw_items():
        parts.headers.append((name, _header_text(name, raw_value)))
    for part in msg.walk():
        if part.defects:
            # RFC 2046 violations (a missing boundary, bad base64): shown so the reader knows why a part looks odd.
            names = ", ".join(sorted({type(d).__name__ for d in part.defects}))
            parts.problems.append(f"{part.get_content_type()} part is malformed ({names})")
        if part.is_multipart():
            continue
        disposition = part.get_content_disposition()
        content_type = part.get_content_type()
        filename = part.get_filename()
        if disposition != "attachment" and not filename and content_type in ("text/plain", "text/html"):
            text = _text_of(part, parts)
            if content_type == "text/plain" and parts.text is None:
                parts.text = text
            elif content_type == "text/html" and parts.html is None:
                parts.html = text
            else:
                parts.attachments.append(Attachment("(more text)", content_type, len(part.get_payload(decode=True) or b"")))
            continue
        payload = part.get_payload(decode=True) or b""
        parts.attachments.append(Attachment(filename or "(no name)", content_type, len(payload)))
    for attr in ("text", "html"):
        value = getattr(parts, attr)
        if value is not None and len(value) > MAX_TEXT_CHARS:
            setattr(parts, attr, value[:MAX_TEXT_CHARS])
            parts.truncated = True
    return parts


def _header_text(name: str, raw_value: str) -> str:
    # Unfold (RFC 5322 §2.2.3) and decode encoded words (RFC 2047) for reading; the raw download keeps the original.
    unfolded = raw_value.replace("\r\n", "").replace("\n", "")
    try:
        return str(policy.default.header_factory(name, unfolded))
    except (ValueError, IndexError, TypeError, LookupError):
        # The email package's header parsers have raised these on malformed input: show it as it came.
        return unfolded


def _text_of(part: EmailMessage, parts: MessageParts) -> str:
    try:
        return part.get_content()
    except (LookupError, UnicodeError, ValueError, AssertionError) as exc:
        # An unknown charset or a broken transfer encoding: show the bytes decoded leniently.
        parts.problems.append(f"{part.get_content_type()} part: {exc}; shown with replacement characters")
        return (part.get_payload(decode=True) or b"").decode("utf-8", "replace")


def authentication_results(parts: MessageParts) -> list[str]:
    return [value for name, value in parts.headers if name.lower() == "authentication-results"]
