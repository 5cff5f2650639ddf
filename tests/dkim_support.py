"""What tests of other features need to know about our DKIM signatures and ARC seals."""

from __future__ import annotations

import re

# A header field (with its folded lines) that our signing puts on top of outgoing mail.
_SIGNING_FIELD = re.compile(
    rb"(?:DKIM-Signature|ARC-Seal|ARC-Message-Signature|ARC-Authentication-Results):[^\r\n]*\r\n(?:[\t ][^\r\n]*\r\n)*"
)


def unsigned(body: bytes) -> bytes:
    """`body` without the DKIM-Signature and ARC fields at its top (what was signed, as it was before)."""
    while m := _SIGNING_FIELD.match(body):
        body = body[m.end():]
    return body
