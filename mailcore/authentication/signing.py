"""DKIM signatures (RFC 6376, RFC 8463) and ARC seals (RFC 8617) on mail that leaves us.

dkimpy makes both. Signing is a pure function of the message and the keys: the caller decides
which domain's keys apply (the From: domain, when it is ours).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import dkim as dkimpy

from mailcore.authentication.keys import RSA, signature_algorithm

log = logging.getLogger("mailcore.authentication")

# RFC 6376 §5.4.1's recommended fields, From first; From, Subject, Date, To and Cc are listed a
# second time (oversigned, §8.15) so that none can be added after signing without breaking it.
SIGNED_HEADERS = [
    b"from", b"reply-to", b"subject", b"date", b"to", b"cc", b"message-id", b"in-reply-to", b"references",
    b"mime-version", b"content-type", b"content-transfer-encoding", b"content-disposition", b"list-id",
    b"list-unsubscribe", b"list-unsubscribe-post",
    b"from", b"subject", b"date", b"to", b"cc",
]


@dataclass(frozen=True)
class SigningKey:
    selector: str
    algorithm: str  # rsa or ed25519
    private: str


def dkim_signatures(message: bytes, domain: str, keys: list[SigningKey]) -> bytes:
    """The DKIM-Signature fields (CRLF-terminated) to put on top of `message`, one per key."""
    fields = []
    for key in keys:
        private = key.private.encode("ascii")
        fields.append(
            dkimpy.sign(
                message,
                key.selector.encode("ascii"),
                domain.encode("ascii"),
                private,
                canonicalize=(b"relaxed", b"relaxed"),
                signature_algorithm=signature_algorithm(key.algorithm),
                include_headers=SIGNED_HEADERS,
            )
        )
    # RSA first, as receivers that know only RSA read the topmost signature first.
    return b"".join(fields)


def arc_seal(message: bytes, domain: str, key: SigningKey, authserv_id: str) -> bytes:
    """The next ARC set (ARC-Seal, ARC-Message-Signature, ARC-Authentication-Results) for `message`.

    `authserv_id` names our Authentication-Results field already on the message: its `arc=`
    result becomes the seal's cv= (RFC 8617 §5.1.1). Empty when dkimpy finds no such field.
    """
    if key.algorithm != RSA:  # RFC 8617 §3.5: ARC signs with rsa-sha256
        raise ValueError("ARC seals need an RSA key")
    headers = [h for h in SIGNED_HEADERS if h not in (b"from",)] + [b"from"]
    lines = dkimpy.arc_sign(
        message,
        key.selector.encode("ascii"),
        domain.encode("ascii"),
        key.private.encode("ascii"),
        authserv_id.encode("ascii"),
        include_headers=list(dict.fromkeys(headers)),
    )
    return b"".join(lines)
