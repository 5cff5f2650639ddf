"""SASL PLAIN (RFC 4616), the message that SMTP AUTH and POP3 AUTH both receive."""

from __future__ import annotations

from typing import NamedTuple


class PlainMessage(NamedTuple):
    authzid: str
    authcid: str
    password: str

    def acts_for_another(self) -> bool:
        """Whether it asks to act as another identity (RFC 4616 §2): we authorise no one to do
        that. Mailbox addresses are compared as the mailbox lookup does, without regard to case."""
        return bool(self.authzid) and self.authzid.casefold() != self.authcid.casefold()


def parse_plain(message: bytes) -> PlainMessage | None:
    """`[authzid] NUL authcid NUL passwd` in UTF-8 (RFC 4616 §2), or None when it is not that."""
    parts = message.split(b"\x00")
    if len(parts) != 3 or not parts[1]:
        return None
    try:
        return PlainMessage(*(part.decode("utf-8") for part in parts))
    except UnicodeDecodeError:
        return None
