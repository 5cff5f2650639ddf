"""Header fields that the server itself adds to or removes from a message in transit."""

from __future__ import annotations


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
