"""Reverse-delivery message ids (reverse-delivery.md §3): their syntax, and fresh ones for SOURCE."""

from __future__ import annotations

import secrets
import string

ID_LENGTH = 32
# Spec §2: the EHLO keyword is `SOURCE` with the version as its parameter.
SOURCE_VERSION = "2"
EHLO_KEYWORD = f"SOURCE {SOURCE_VERSION}"
_ID_CHARACTERS = frozenset(string.ascii_letters + string.digits)


def is_valid_id(text: str) -> bool:
    """True for exactly 32 ASCII letters and digits (`id = 32( ALPHA / DIGIT )`); case matters."""
    return len(text) == ID_LENGTH and all(c in _ID_CHARACTERS for c in text)


def new_source_id() -> str:
    """A fresh id: 32 lowercase hex digits from 16 bytes of a CSPRNG (spec §3 rule 2: 128 bits)."""
    return secrets.token_hex(ID_LENGTH // 2)


def offers_source(params: str | None) -> bool:
    """Whether an EHLO reply's SOURCE parameters (None: no SOURCE line) promise this version.

    Spec §2: SOURCE without a version, or with another one, counts as no SOURCE at all: a
    version 1 peer neither sends nor checks the envelope of a GET, so it gets plain DATA.
    """
    return params is not None and params.split() == [SOURCE_VERSION]
