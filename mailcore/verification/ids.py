"""Reverse-delivery message ids (reverse-delivery.md §3): their syntax, and fresh ones for SOURCE."""

from __future__ import annotations

import secrets
import string

ID_LENGTH = 32
_ID_CHARACTERS = frozenset(string.ascii_letters + string.digits)


def is_valid_id(text: str) -> bool:
    """True for exactly 32 ASCII letters and digits (`id = 32( ALPHA / DIGIT )`); case matters."""
    return len(text) == ID_LENGTH and all(c in _ID_CHARACTERS for c in text)


def new_source_id() -> str:
    """A fresh id: 32 lowercase hex digits from 16 bytes of a CSPRNG (spec §3 rule 2: 128 bits)."""
    return secrets.token_hex(ID_LENGTH // 2)
