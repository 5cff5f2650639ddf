"""The envelope that a GET reply carries (reverse-delivery.md §4), and its comparison with the announced one (§5.4)."""

from __future__ import annotations

from dataclasses import dataclass

_FROM = "FROM <"
_TO = "TO <"


@dataclass(frozen=True)
class GetEnvelope:
    """The reverse-path and the recipients that the origin recorded for one id."""

    mail_from: str
    rcpt_tos: tuple[str, ...]


def envelope_lines(mail_from: str, rcpt_tos: list[str]) -> list[str]:
    """The lines after the status line of a 250 to GET: FROM, then one TO per recipient (spec §4)."""
    return [f"FROM <{mail_from}>", *(f"TO <{rcpt}>" for rcpt in rcpt_tos)]


def parse_envelope_lines(lines: list[str]) -> GetEnvelope | None:
    """The envelope of a 250 to GET (its lines after the status line); None when absent or malformed.

    Exactly one FROM line, first, then TO lines (spec §4). A version 1 origin sends none.
    """
    if not lines or not (lines[0].startswith(_FROM) and lines[0].endswith(">")):
        return None
    rcpt_tos = []
    for line in lines[1:]:
        if not (line.startswith(_TO) and line.endswith(">")):
            return None
        rcpt_tos.append(line[len(_TO):-1])
    return GetEnvelope(lines[0][len(_FROM):-1], tuple(rcpt_tos))


def same_address(a: str, b: str) -> bool:
    """The local part compared exactly, the domain case-insensitively (RFC 5321 §2.4, spec §5.4)."""
    local_a, at_a, domain_a = a.rpartition("@")
    local_b, at_b, domain_b = b.rpartition("@")
    return at_a == at_b and local_a == local_b and domain_a.lower() == domain_b.lower()


def envelope_mismatch(mail_from: str, rcpt_tos: list[str], pulled: GetEnvelope | None) -> str | None:
    """Why the announced envelope is not the one the origin recorded for the id; None when it is.

    Spec §5.4: the reverse-path must be the FROM line's, and every recipient announced to us
    must be among the TO lines. Otherwise the id was replayed (or the origin is version 1).
    """
    if pulled is None:
        return "envelope mismatch: the origin's 250 to GET carried no envelope"
    if not same_address(mail_from, pulled.mail_from):
        return f"envelope mismatch: announced from <{mail_from}>, the origin recorded <{pulled.mail_from}>"
    missing = [r for r in rcpt_tos if not any(same_address(r, t) for t in pulled.rcpt_tos)]
    if missing:
        recorded = ", ".join(f"<{t}>" for t in pulled.rcpt_tos) or "none"
        return (
            f"envelope mismatch: announced to {', '.join(f'<{r}>' for r in missing)},"
            f" the origin recorded {recorded} (from <{pulled.mail_from}>)"
        )
    return None
