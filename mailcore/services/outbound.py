"""Submitting mail and notifications, and the queue runner's side: claiming due items, recording attempts, deferring and bouncing."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.utils import format_datetime, make_msgid

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from mailcore.addresses import AddressError, domain_of, normalize_address
from mailcore.delivery import dsn
from mailcore.envelope import Envelope, message_row
from mailcore.headers import received_header, sole_recipient, summary_headers
from mailcore.models import ACTIVE_STATES, PENDING_STATES, Alias, Message, QueueItem, QueueState, Transport, Verification
from mailcore.models.message import new_queue_id
from mailcore.rejections import MailLoop, PolicyRejection, QuotaExceeded
from mailcore.services import accounts, dkim_keys, inbound
from mailcore.services.queueing import enqueue
from mailcore.store import message_store

log = logging.getLogger("mailcore.outbound")

CLAIM_BATCH = 100


class SubmissionError(Exception):
    """A submitted message that cannot be taken; `reply` is the SMTP reply, `message` one line."""

    def __init__(self, message: str, reply: str = "550 5.1.1 Recipient address rejected"):
        super().__init__(message)
        self.reply = reply


# --- submitting mail -------------------------------------------------------------------------


_HEADER_NAME = re.compile(rb"^([!-9;-~]+):", re.M)


def normalize_line_endings(content: bytes) -> bytes:
    """CRLF everywhere (RFC 5322 §2.1): sendmail's standard input usually has bare LF."""
    return re.sub(rb"\r?\n", b"\r\n", content)


def add_missing_headers(content: bytes, sender: str, *, add_from: bool = False) -> bytes:
    """Add Date and Message-ID (RFC 5322 §3.6) and, for sendmail, From, when the message lacks them."""
    content = normalize_line_endings(content)
    end = content.find(b"\r\n\r\n")
    head = content if end < 0 else content[: end + 2]
    if end < 0 and not _HEADER_NAME.match(content):
        head = b""  # no header section at all: everything is body
    present = {m.group(1).lower() for m in _HEADER_NAME.finditer(head)}
    added = []
    if add_from and b"from" not in present and sender:
        added.append(f"From: <{sender}>")
    if b"date" not in present:
        added.append(f"Date: {format_datetime(timezone.now())}")
    if b"message-id" not in present:
        added.append(f"Message-ID: {make_msgid(domain=settings.MAIL_HOSTNAME)}")
    if end < 0 and not head:
        content = b"\r\n" + content
    if not added:
        return content
    return ("\r\n".join(added) + "\r\n").encode("ascii") + content


# A Bcc or Resent-Bcc field (RFC 5322 §3.6.3, §3.6.6) with its folded continuation lines.
_BCC_FIELD = re.compile(rb"^(?:Resent-)?Bcc[ \t]*:[^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*", re.IGNORECASE | re.MULTILINE)


def strip_bcc(content: bytes) -> bytes:
    """The message without its Bcc fields; the body (after the first empty line) is left alone."""
    end = content.find(b"\r\n\r\n")
    split = end + 2 if end >= 0 else len(content)
    head, body = content[:split], content[split:]
    if b"bcc" not in head.lower():
        return content
    if head.endswith(b"\r\n"):
        return _BCC_FIELD.sub(b"", head) + body
    # A message that is all header, its last field without a line end.
    return _BCC_FIELD.sub(b"", head + b"\r\n").removesuffix(b"\r\n")


@dataclass
class Submission:
    """The envelope of a message that a local user (or the operator) hands to us."""

    mail_from: str
    rcpt_tos: list[str]
    client_address: str = ""
    helo_name: str = ""
    tls: bool = False
    tls_cipher: str = ""
    transport: str = Transport.SUBMISSION
    protocol: str = "ESMTPSA"  # RFC 3848: authenticated, "ESMTPA" without TLS
    authenticated_as: str = ""

    def envelope(self, rcpt_tos: list[str]) -> Envelope:
        """The envelope of the message for `rcpt_tos`: verified by construction, it never left this server."""
        return Envelope(
            mail_from=self.mail_from,
            rcpt_tos=rcpt_tos,
            client_address=self.client_address,
            helo_name=self.helo_name,
            tls=self.tls,
            tls_cipher=self.tls_cipher,
            transport=self.transport,
            protocol=self.protocol,
            verification=Verification.VERIFIED,
            auth_result="pass",
            auth_comment=f"submitted by {self.authenticated_as}" if self.authenticated_as else "local submission",
            reject_policy_applies=False,
        )


@dataclass
class SubmissionReceipt:
    queue_id: str = ""
    delivered: list[str] = field(default_factory=list)
    queued: list[str] = field(default_factory=list)


def check_submission_recipient(address: str) -> str:
    """The normalised recipient, or SubmissionError: any remote address goes, a local one must exist."""
    try:
        address = normalize_address(address)
    except AddressError:
        raise SubmissionError(f"malformed address {address!r}", "501 5.1.3 Bad recipient address syntax") from None
    r = accounts.route(address)
    if r.local_domain and not r.exists:
        raise SubmissionError(f"unknown local recipient {address}", "550 5.1.1 No such mailbox here")
    return address


def may_send_as(user: str, sender: str) -> bool:
    """Whether the mailbox `user` may use `sender` as reverse-path: itself, or an alias that points at it.

    A catch-all does not count: owning `@domain` mail does not make every address of it yours.
    """
    if not sender:
        return False  # a null reverse-path is for notifications, which users do not send
    try:
        user, sender = normalize_address(user), normalize_address(sender)
    except AddressError:
        return False
    return sender == user or Alias.objects.filter(source=sender, target=user).exists()


def submit(submission: Submission, content: bytes) -> SubmissionReceipt:
    """Deliver local recipients at once and queue remote ones; returns after the commit.

    Local mail is verified by construction: it never left this server. `Bcc:` fields are
    removed first (RFC 5322 §3.6.3): no recipient, local or remote, sees who was blind-copied.
    """
    content = strip_bcc(content)
    local, remote = [], []
    for rcpt in submission.rcpt_tos:
        rcpt = check_submission_recipient(rcpt)
        (local if accounts.is_local_domain(domain_of(rcpt)) else remote).append(rcpt)
    receipt = SubmissionReceipt()
    with transaction.atomic():
        if local:
            try:
                local_receipt = inbound.receive(submission.envelope(local), content)
            except QuotaExceeded:
                raise SubmissionError(
                    "the message exceeds the recipients' mailbox quota", "552 5.2.2 Message exceeds the recipient's mailbox quota"
                ) from None
            except MailLoop as exc:
                raise SubmissionError(f"mail loop: {exc}", f"554 5.4.6 Mail loop detected: {exc}") from None
            receipt.queue_id = local_receipt.queue_id
            receipt.delivered = local_receipt.delivered + local_receipt.quarantined
            receipt.queued.extend(local_receipt.forwarded)
        if remote:
            message = _store_for_queue(submission, content)
            enqueue(message, remote)
            receipt.queue_id = receipt.queue_id or message.queue_id
            receipt.queued.extend(remote)
    log.info(
        "%s submitted by <%s>: %d local, %d queued", receipt.queue_id, submission.mail_from, len(receipt.delivered), len(receipt.queued)
    )
    return receipt


def _store_for_queue(submission: Submission, content: bytes) -> Message:
    """One durable copy for the queue, with our Received header (RFC 5321 §4.4) on top."""
    queue_id = new_queue_id()
    envelope = submission.envelope(submission.rcpt_tos)
    content = f"Received: {received_header(envelope, queue_id, sole_recipient(envelope))}\r\n".encode() + content
    content = dkim_keys.sign(content)  # RFC 6376: for our own From: domains
    body = message_store().put(content)
    subject, header_from = summary_headers(content)
    try:
        return Message.objects.create(**message_row(envelope, body, queue_id, subject=subject, header_from=header_from))
    except BaseException:
        message_store().delete(body.ref)
        raise


def notify(recipient: str, content: bytes, *, about: str) -> None:
    """Send a notification (a bounce or delay warning) from the null reverse-path.

    RFC 5321 §4.5.5: a notification has an empty reverse-path, so it never causes another one.
    To a local mailbox it is delivered at once; elsewhere it is queued like any other mail.
    """
    try:
        recipient = normalize_address(recipient)
    except AddressError:
        log.warning("notification about %s not sent: malformed recipient %r", about, recipient)
        return
    if accounts.is_local_domain(domain_of(recipient)):
        envelope = Envelope(
            mail_from="",
            rcpt_tos=[recipient],
            helo_name=settings.MAIL_HOSTNAME,
            client_address="127.0.0.1",
            transport=Transport.LOCAL,
            protocol="local",
            verification=Verification.VERIFIED,
            auth_result="pass",
            auth_comment="generated here",
            reject_policy_applies=False,
        )
        try:
            inbound.receive(envelope, content)
        except PolicyRejection:
            log.warning("notification about %s to %s dropped: no such local recipient", about, recipient)
        return
    message = _store_for_queue(
        Submission(mail_from="", rcpt_tos=[recipient], helo_name=settings.MAIL_HOSTNAME, transport=Transport.LOCAL, protocol="local"),
        content,
    )
    enqueue(message, [recipient])


# --- the queue runner's side: claim, record ---------------------------------------------------


def may_source(message: Message) -> bool:
    """Whether we may vouch for `message` by SOURCE (reverse-delivery.md §6, Forwarding).

    Sourcing says "this came from my domain". A forwarded copy whose From: is in one of our
    domains came from outside unless a local user submitted it with AUTH: it goes by DATA, and
    the next server sees it as unverified rather than as ours.
    """
    if message.forwarded_from_id is None or message.transport == Transport.SUBMISSION:
        return True
    return not (message.header_from and accounts.is_local_domain(domain_of(message.header_from)))


def due_items(now: datetime | None = None):
    now = now or timezone.now()
    return QueueItem.objects.filter(state__in=PENDING_STATES, next_attempt_at__lte=now).filter(
        Q(claimed_until__isnull=True) | Q(claimed_until__lt=now)
    )


def due_domains(now: datetime | None = None) -> list[str]:
    return sorted(set(due_items(now).values_list("domain", flat=True)))


def claim_due(domain: str, limit: int = CLAIM_BATCH, now: datetime | None = None) -> list[QueueItem]:
    """Take up to `limit` due items of `domain` for this worker; no two workers get the same item.

    On PostgreSQL the candidate rows are locked with SELECT ... FOR UPDATE SKIP LOCKED, so a second
    worker passes them by instead of waiting. On every database each row is then claimed with a
    conditional UPDATE that only succeeds while the row is still unclaimed, which is what makes it
    exclusive on SQLite (one writer at a time). The claim is a lease: `claimed_until` lapses if the
    worker dies, and the item becomes due again.
    """
    now = now or timezone.now()
    lease = now + timedelta(seconds=settings.MAIL_QUEUE_LEASE)
    claimed = []
    with transaction.atomic():
        candidates = due_items(now).filter(domain=domain).order_by("next_attempt_at", "id")
        if connection.features.has_select_for_update_skip_locked:
            candidates = candidates.select_for_update(skip_locked=True)
        for pk in list(candidates.values_list("pk", flat=True)[:limit]):
            taken = due_items(now).filter(pk=pk).update(claimed_until=lease, updated_at=now)
            if taken:
                claimed.append(pk)
    items = list(QueueItem.objects.filter(pk__in=claimed).select_related("message").order_by("message_id", "id"))
    return items


def retry_delay(attempts: int) -> timedelta:
    """The wait after the `attempts`-th failed try: the configured steps, the last one repeating."""
    delays = settings.MAIL_QUEUE_RETRY_DELAYS or [3600]
    return timedelta(seconds=delays[min(attempts, len(delays)) - 1])


@dataclass
class Outcome:
    """What one recipient's attempt came to, as the runner reports it."""

    recipient: str
    reply: str
    status: str
    delivered: bool = False
    permanent: bool = False
    how: str = QueueState.SENT
    remote_host: str = ""


@dataclass
class RunCounts:
    sent: int = 0
    deferred: int = 0
    bounced: int = 0
    lost_claims: int = 0

    def add(self, other: RunCounts) -> None:
        self.sent += other.sent
        self.deferred += other.deferred
        self.bounced += other.bounced
        self.lost_claims += other.lost_claims


def record_attempt(items: list[QueueItem], outcomes: dict[int, Outcome], now: datetime | None = None) -> RunCounts:
    """Record each claimed item's outcome; defer, give up and bounce, or warn as the rules say.

    One transaction per message, so that its bounce is committed with the rows it reports on.
    An item whose claim lapsed and was taken by another worker is left alone.
    """
    now = now or timezone.now()
    counts = RunCounts()
    by_message: dict[int, list[QueueItem]] = {}
    for item in items:
        by_message.setdefault(item.message_id, []).append(item)
    for group in by_message.values():
        with transaction.atomic():
            failed: list[dsn.RecipientStatus] = []
            delayed: list[dsn.RecipientStatus] = []
            for item in group:
                outcome = outcomes[item.pk]
                update = {
                    "attempts": item.attempts + 1,
                    "last_reply": outcome.reply[:2000],
                    "remote_host": outcome.remote_host[:255],
                    "claimed_until": None,
                    "updated_at": now,
                }
                expires = item.created_at + timedelta(seconds=settings.MAIL_QUEUE_LIFETIME)
                status = outcome.status
                if outcome.delivered:
                    update["state"] = outcome.how
                elif outcome.permanent or now >= expires:
                    update["state"] = QueueState.BOUNCED
                    if not outcome.permanent:
                        # RFC 3463 X.4.7: delivery time expired; the last temporary reply says why.
                        status = "4.4.7"
                        update["last_reply"] = f"gave up after {settings.MAIL_QUEUE_LIFETIME} s in the queue: {outcome.reply}"[:2000]
                else:
                    update["state"] = QueueState.DEFERRED
                    update["next_attempt_at"] = min(now + retry_delay(item.attempts + 1), expires)
                    warn_after = settings.MAIL_QUEUE_DELAY_WARNING
                    if warn_after and not item.delay_warned and now - item.created_at >= timedelta(seconds=warn_after):
                        update["delay_warned"] = True
                        delayed.append(
                            dsn.RecipientStatus(item.recipient, status, outcome.reply, outcome.remote_host, now, expires)
                        )
                if not QueueItem.objects.filter(pk=item.pk, claimed_until=item.claimed_until).update(**update):
                    log.warning("%s to %s: claim lost to another worker; result not recorded", item.message.queue_id, item.recipient)
                    counts.lost_claims += 1
                    if delayed and delayed[-1].recipient == item.recipient:
                        delayed.pop()
                    continue
                if update["state"] == QueueState.BOUNCED:
                    counts.bounced += 1
                    failed.append(dsn.RecipientStatus(item.recipient, status, update["last_reply"], outcome.remote_host, now))
                elif update["state"] == QueueState.DEFERRED:
                    counts.deferred += 1
                else:
                    counts.sent += 1
                log.info(
                    "%s to <%s>: %s after %d attempts: %s",
                    item.message.queue_id, item.recipient, update["state"], update["attempts"], outcome.reply,
                )
            message = group[0].message
            if failed:
                _report(dsn.FAILED, message, failed)
            if delayed:
                _report(dsn.DELAYED, message, delayed)
    return counts


def _report(kind: str, message: Message, recipients: list[dsn.RecipientStatus]) -> None:
    """Send the sender a DSN about `recipients`, unless the reverse-path is null (RFC 5321 §6.1)."""
    if not message.mail_from:
        log.info("%s: no %s notice for a message with a null reverse-path", message.queue_id, kind)
        return
    try:
        original = message_store().read(message.body_ref)
    except OSError:
        original = f"Message-ID: <unavailable-{message.queue_id}@{settings.MAIL_HOSTNAME}>\r\n".encode()
    report = dsn.build_report(
        kind,
        sender=message.mail_from,
        queue_id=message.queue_id,
        arrival=message.received_at,
        recipients=recipients,
        original=original,
    )
    notify(message.mail_from, report, about=f"{message.queue_id} ({kind})")


# --- operator views and actions ---------------------------------------------------------------


def listing(include_finished: bool = False):
    """The queue as `mailq` shows it: oldest first."""
    items = QueueItem.objects.select_related("message").order_by("created_at", "id")
    if not include_finished:
        items = items.filter(state__in=ACTIVE_STATES)
    return items


def make_deferred_due(now: datetime | None = None) -> list[str]:
    """Every deferred item becomes due now (`flushq`); returns the domains concerned."""
    now = now or timezone.now()
    deferred = QueueItem.objects.filter(state__in=PENDING_STATES, next_attempt_at__gt=now)
    domains = sorted(set(deferred.values_list("domain", flat=True)))
    deferred.update(next_attempt_at=now, updated_at=now)
    return domains
