"""The spam step of `inbound.receive`: score with spamd, decide per recipient, record it in headers and rows.

Knows no database: the recipients' thresholds come from the caller (services.spam.recipient_thresholds)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from django.conf import settings

from mailcore.addresses import AddressError, normalize_address
from mailcore.envelope import Envelope, Transport, Verification
from mailcore.models import SpamStatus
from mailcore.rejections import PolicyRejection
from mailcore.spam.policy import SpamAction, Thresholds, decide
from mailcore.spam.spamd import SpamdClient, SpamdError, SpamdTimeout

log = logging.getLogger("mailcore.spam")

# Mail of our own authenticated users and the bounces we generate is not scored: it is ours.
UNCHECKED_TRANSPORTS = (Transport.SUBMISSION, Transport.LOCAL)


class SpamRejection(PolicyRejection):
    """Every recipient's domain refuses this message as spam.

    The SMTP layer answers `550 5.7.1` (RFC 3463 §3.8: delivery not authorized, message refused)
    with `text`; a GET pull marks its announcement failed with it and sends no bounce.
    """

    code = 550
    status = "5.7.1"

    def __init__(self, score: float, rules: tuple[str, ...]):
        self.score = score
        self.rules = rules
        self.text = f"Message refused as spam (score {score:.1f})"
        super().__init__(self.text)

    @property
    def reply(self) -> str:
        return f"{self.code} {self.status} {self.text}"


@dataclass
class SpamVerdict:
    """What the spam check found, and what it means for each recipient."""

    status: str  # a SpamStatus
    score: float | None = None
    rules: tuple[str, ...] = ()
    actions: dict[str, SpamAction] = field(default_factory=dict)  # by recipient address
    required: float | None = None  # the strictest threshold among the recipients
    note: str = ""  # why unscored or skipped
    announce: bool = True  # False: no X-Spam headers (the check is off or does not apply)

    def quarantines(self, address: str) -> bool:
        return self.actions.get(normalized(address), SpamAction.DELIVER) != SpamAction.DELIVER

    @property
    def is_spam(self) -> bool:
        return any(action != SpamAction.DELIVER for action in self.actions.values())

    def headers(self) -> bytes:
        """X-Spam-Status (SpamAssassin's own layout) and X-Spam-Score, to go with the trace headers."""
        if not self.announce:
            return b""
        if self.status == SpamStatus.SCORED:
            tests = ",".join(self.rules) or "none"
            status = f"{'Yes' if self.is_spam else 'No'}, score={self.score:.1f} required={self.required:.1f} tests={tests}"
            lines = [f"X-Spam-Status: {fold(status)}", f"X-Spam-Score: {self.score:.1f}"]
        elif self.status == SpamStatus.UNSCORED:
            lines = [f"X-Spam-Status: Unscored, {self.note}"]
        else:
            lines = [f"X-Spam-Status: Skipped, {self.note}"]
        return ("\r\n".join(lines) + "\r\n").encode("ascii", "replace")

    def auth_result(self) -> str:
        """The spam part of our Authentication-Results (RFC 8601 §2.2 resinfo), or "" when not announced."""
        if not self.announce:
            return ""
        if self.status == SpamStatus.SCORED:
            return f"x-spam={'fail' if self.is_spam else 'pass'} (score={self.score:.1f})"
        if self.status == SpamStatus.UNSCORED:
            return f"x-spam=temperror ({self.note})"
        return f"x-spam=none ({self.note})"

    def message_fields(self) -> dict:
        return {"spam_status": self.status, "spam_score": self.score, "spam_rules": list(self.rules)}


def fold(value: str, width: int = 76) -> str:
    """Fold a header value at commas and spaces (RFC 5322 §2.2.3), so long rule lists stay readable."""
    lines, line = [], ""
    for token in _fold_tokens(value):
        if line and len(line) + len(token) > width:
            lines.append(line)
            line = token.lstrip(" ")
        else:
            line += token
    lines.append(line)
    return "\r\n\t".join(lines)


def _fold_tokens(value: str):
    token = ""
    for char in value:
        if char == " " and token:
            yield token
            token = ""
        token += char
        if char == ",":
            yield token
            token = ""
    if token:
        yield token


def configured_client() -> SpamdClient | None:
    """The spamd of MAIL_SPAMD, or None when the spam check is off."""
    if not settings.MAIL_SPAMD:
        return None
    host, port = settings.MAIL_SPAMD
    return SpamdClient(host, port, settings.MAIL_SPAMD_TIMEOUT)


def normalized(address: str) -> str:
    """`address` as the verdict's actions are keyed: normalized, or as it is when it is no address."""
    try:
        return normalize_address(address)
    except AddressError:
        return address


def skipped(envelope: Envelope, size: int, queue_id: str = "") -> SpamVerdict | None:
    """The verdict of a message that is not scored (the check off, our own mail, too large), or
    None when it is: known from its size alone, so a large message is never read for nothing."""
    if configured_client() is None:
        return SpamVerdict(SpamStatus.SKIPPED, note="spam check off", announce=False)
    if envelope.transport in UNCHECKED_TRANSPORTS:
        return SpamVerdict(SpamStatus.SKIPPED, note=f"{envelope.transport} mail is not checked", announce=False)
    if size > settings.MAIL_SPAMD_MAX_SIZE:
        # Like spamc's own size limit: scoring a huge message costs more than it tells.
        log.info("%s spam check skipped: %d octets, limit %d", queue_id, size, settings.MAIL_SPAMD_MAX_SIZE)
        return SpamVerdict(SpamStatus.SKIPPED, note=f"larger than {settings.MAIL_SPAMD_MAX_SIZE} octets")
    return None


def check(envelope: Envelope, content: bytes, thresholds: dict[str, Thresholds], queue_id: str = "") -> SpamVerdict:
    """Score `content` and decide for each local recipient; raises SpamRejection when all refuse it.

    `thresholds`: each recipient's, by normalized address (services.spam.recipient_thresholds).

    Runs before the body is stored, so that a refusal is still a 550 to DATA. spamd down, slow
    or confused never loses mail: the message is accepted as unscored, and the log says why.
    Returns within MAIL_SPAMD_TIMEOUT seconds, so a caller that holds a transaction (a row lock,
    SQLite's write lock) should call it first and hand the verdict to `inbound.receive(..., spam=verdict)`.
    """
    not_scored = skipped(envelope, len(content), queue_id)
    if not_scored is not None:
        return not_scored
    client = configured_client()
    assert client is not None  # `skipped` says so when there is none
    started = time.monotonic()
    try:
        report = client.symbols(content)
    except SpamdError as exc:
        log.warning("%s spam check failed, accepted unscored: %s", queue_id, exc)
        note = "spamd timed out" if isinstance(exc, SpamdTimeout) else "spamd unavailable"
        return SpamVerdict(SpamStatus.UNSCORED, note=note)
    verified = envelope.verification == Verification.VERIFIED
    actions = {rcpt: decide(report.score, t.treats_as_verified(envelope.verification), t) for rcpt, t in thresholds.items()}
    verdict = SpamVerdict(
        SpamStatus.SCORED,
        score=report.score,
        rules=report.rules,
        actions=actions,
        required=min(
            (t.quarantine_at(t.treats_as_verified(envelope.verification)) for t in thresholds.values()),
            default=Thresholds().quarantine_at(verified),
        ),
    )
    log.info(
        "%s spam score=%.1f %s rules=%s: %s (%.0f ms)",
        queue_id,
        report.score,
        "verified" if verified else "unverified",
        ",".join(report.rules) or "-",
        " ".join(f"{rcpt}={action}" for rcpt, action in actions.items()),
        (time.monotonic() - started) * 1000,
    )
    if actions and all(action == SpamAction.REJECT for action in actions.values()):
        raise SpamRejection(report.score, report.rules)
    # One reply to DATA speaks for all recipients (RFC 5321 §4.1.1.4): when some domains would
    # refuse and others accept, the 250 is given, so the refusing ones hold it in quarantine
    # rather than drop mail that was acknowledged.
    for rcpt, action in actions.items():
        if action == SpamAction.REJECT:
            actions[rcpt] = SpamAction.QUARANTINE
    return verdict
