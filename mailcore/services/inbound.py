"""The transactions of receiving a message for local recipients: policy, one durable body, its rows.

`receive` is the one path into mailboxes, whether the body came by DATA, was pulled by GET,
was submitted by a local user or is a bounce we generate.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field, replace

from django.conf import settings
from django.db import DatabaseError, transaction
from django.utils import timezone

from mailcore.addresses import AddressError, domain_of, normalize_domain
from mailcore.authentication import checks, results
from mailcore.authentication.checks import SenderChecks
from mailcore.authentication.dkim import has_field
from mailcore.authentication.resolver import NotCached, TXTResolver
from mailcore.envelope import Envelope, message_row
from mailcore.headers import (
    authentication_results,
    first_part,
    received_header,
    sole_recipient,
    summary_headers,
    trace_headers,
    without_forged_verdicts,
)
from mailcore.models import AuthenticatedPolicy, Delivery, DeliveryState, Domain, Message, Transport, UnverifiedPolicy, Verification
from mailcore.models.message import new_queue_id
from mailcore.models.rows import insert_rows, inserted_instance
from mailcore.rejections import DMARCRejection, MailLoop, PolicyRejection, QuotaExceeded, SenderBlocked
from mailcore.services import accounts, pins, queueing, quota, senders
from mailcore.services.spam import recipient_thresholds
from mailcore.spam import check as spam_check
from mailcore.spam.check import SpamVerdict
from mailcore.store import StoredBody, message_store, spool
from mailcore.store.bodies import PendingBodies

log = logging.getLogger("mailcore.inbound")


@dataclass
class Receipt:
    queue_id: str
    delivered: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    forwarded: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    message_id: int | None = None
    # The Message row's values as inserted: the instance is built only for a caller that asks
    # (the SMTP listener needs only the queue id, and a model instance costs as much as its INSERT).
    _row: dict | None = field(default=None, repr=False, compare=False)
    _message: Message | None = field(default=None, repr=False, compare=False)

    @property
    def accepted(self) -> bool:
        return bool(self.delivered or self.quarantined or self.forwarded)

    @property
    def message(self) -> Message | None:
        if self._message is None and self._row is not None:
            self._message = inserted_instance(Message, self.message_id, self._row)
        return self._message


def check_sender(client_address: str, mail_from: str, helo: str, at_once: bool = False) -> SenderChecks | None:
    """The checks that the envelope alone decides (SPF, the reverse-path domain's DMARC record),
    for `authenticate(..., sender=...)`; None when the checks are off.

    Blocking (DNS): a worker thread. `at_once`: from the DNS cache alone, never blocking (an
    event loop may call it), and None when an answer is not cached.
    """
    if not settings.MAIL_AUTH_CHECKS:
        return None
    try:
        return checks.check_sender(TXTResolver(cache_only=at_once), client_address, mail_from, helo)
    except NotCached:
        return None
    except Exception:  # a library's bug on hostile input: authenticate checks it all again
        log.exception("sender checks failed for <%s>", mail_from)
        return None


def authenticate_at_once(envelope: Envelope, content: bytes | list, sender: SenderChecks | None) -> Envelope | None:
    """`authenticate` made here, quickly enough for an event loop: the message in memory and
    nothing left to look up or verify after `sender`; None when it must be made in a worker thread."""
    if not settings.MAIL_AUTH_CHECKS or sender is None or spool.is_spooled(content):
        return None
    try:
        auth = checks.check_at_once(spool.joined(content), sender)
    except Exception:  # a library's bug on hostile input must not cost the message
        log.exception("authentication checks failed for a message from <%s>", envelope.mail_from)
        return envelope
    if auth is None:
        return None
    return replace(envelope, authentication=auth, verification=results.verdict(envelope.verification, auth))


def authenticate(envelope: Envelope, content: bytes | list, sender: SenderChecks | None = None) -> Envelope:
    """SPF, DKIM, DMARC and ARC for a message that came from elsewhere, and its verdict class.

    Blocking (DNS within MAIL_AUTH_DNS_TIMEOUT in all): call it from a worker thread, unless
    `authenticate_at_once` made it already. `sender`: `check_sender`'s
    results for this envelope. A resolver that fails or times out gives temperror results and
    the message goes on as unverified. A spooled message too costly to read whole is not
    checked at all (`_authenticated_copy`).
    """
    if not settings.MAIL_AUTH_CHECKS:
        return envelope
    try:
        checked = _authenticated_copy(content)
        if checked is None:
            size = spool.size_of(content)
            log.info("authentication checks skipped for a message from <%s>: %d octets, too large", envelope.mail_from, size)
            return envelope
        # The message's lookups get a time budget of their own: the envelope's were made while
        # the client sent it, however long that took.
        auth = checks.check(TXTResolver(), checked, envelope.client_address, envelope.mail_from, envelope.helo_name, sender)
    except Exception:  # a library's bug on hostile input must not cost the message
        log.exception("authentication checks failed for a message from <%s>", envelope.mail_from)
        return envelope
    return replace(envelope, authentication=auth, verification=results.verdict(envelope.verification, auth))


# What dkimpy may cost to read one spooled message whole: it splits the message into a bytes
# object per line (about 64 octets each with the list's slot) besides copies of its octets.
# Within this, a message of usual lines (base64's 78 octets) is checked up to about 16 MB; one
# of very short lines is not: its cost would grow with its line count, not its size.
WHOLE_MESSAGE_BUDGET = 32 * 1024 * 1024
LINE_COST = 64


def _authenticated_copy(content: bytes | list) -> bytes | None:
    """The octets that the authentication checks read: the message, or None to skip them.

    In memory, the message itself. Spooled, only its first part when that carries no
    DKIM-Signature or ARC-Seal field (without them the checks read the header block alone,
    which the first part holds whole); else the message read whole if it is within
    WHOLE_MESSAGE_BUDGET, and None past it: like rspamd's and spamc's size limits, a message too
    large to read is passed on unchecked (so unverified), never failed.
    """
    if not spool.is_spooled(content):
        return spool.joined(content)
    head = content[0]
    if not has_field(head, b"dkim-signature:") and not has_field(head, b"arc-seal:"):
        return head
    lines = sum(chunk.count(b"\n") for chunk in spool.octets(content))
    if spool.size_of(content) + LINE_COST * lines > WHOLE_MESSAGE_BUDGET:
        return None
    return spool.joined(content)


def rejects_unverified(address: str) -> bool:
    """True when the local domain of `address` takes only verified mail."""
    return Domain.objects.filter(name=domain_of(address), unverified_policy=UnverifiedPolicy.REJECT).exists()


@dataclass(frozen=True)
class RecipientCheck:
    """What RCPT TO needs to know about one envelope recipient."""

    valid: bool  # a well-formed address
    local_domain: bool
    exists: bool  # a mailbox or an alias (catch-all included) takes it
    policy: str  # the recipient domain's policy for unverified mail
    full: bool = False  # every mailbox it reaches is at its quota, and it reaches nothing else
    has_quota: bool = False  # a mailbox it reaches has a quota: its fullness changes with each message
    senders: senders.Rules = senders.NO_RULES  # the sender list entries that concern this recipient


def check_recipient(address: str) -> RecipientCheck:
    """Whether we receive mail for `address`, and its domain's unverified-mail policy."""
    try:
        r = accounts.route(address)
    except AddressError:
        # A local part that none of our mailboxes can have (UTF-8, quoted) at a valid domain is
        # an unknown user there, not a syntax error.
        try:
            local = accounts.is_local_domain(normalize_domain(address.rpartition("@")[2]))
        except AddressError:
            return RecipientCheck(valid=False, local_domain=False, exists=False, policy=UnverifiedPolicy.ACCEPT)
        return RecipientCheck(valid=True, local_domain=local, exists=False, policy=UnverifiedPolicy.ACCEPT)
    if not r.local_domain:
        return RecipientCheck(valid=True, local_domain=False, exists=False, policy=UnverifiedPolicy.ACCEPT)
    rules = senders.rules_for(r.address) if r.exists else senders.NO_RULES
    full = bool(r.mailboxes) and not r.remote and all(m.is_full() for m in r.mailboxes)
    has_quota = any(m.has_quota for m in r.mailboxes)
    return RecipientCheck(
        valid=True, local_domain=True, exists=r.exists, policy=_policy_for(r.address), senders=rules, full=full, has_quota=has_quota
    )


def receive(envelope: Envelope, content: bytes | list, spam: SpamVerdict | None = None) -> Receipt:
    """Store `content` once and deliver it to the local recipients of `envelope`.

    `content` may be a large message's first part and spool (wire.data.DataReceiver); the
    caller closes the spool once this has returned.

    Unverified mail follows each recipient domain's policy: accept, quarantine, or reject. Raises
    PolicyRejection when every recipient rejects it, so that DATA can answer 550 before anything
    is stored. Returns only after the body is durable and the rows are committed.

    `spam`: a verdict from `spam_verdict` made beforehand, by a caller that holds a
    transaction and must not wait for spamd inside it; otherwise the check is made here.
    """
    lookups = Lookups()
    prepared = _prepare(envelope, content, spam, lookups)
    [body] = message_store().put_many([prepared.chunks])
    try:
        with transaction.atomic():
            return _record(prepared, body, lookups)
    except BaseException:
        message_store().delete(body.ref)
        raise


def spam_verdict(envelope: Envelope, content: bytes | list) -> SpamVerdict:
    """The spam check alone, ahead of `receive(..., spam=...)`, scored as `receive` would score it.

    Raises SpamRejection (a PolicyRejection) when every recipient's domain refuses the message.
    """
    recipients = spam_recipients(envelope, content)
    queue_id = new_queue_id()
    return spam_scored(envelope, trace_headers(envelope, queue_id), content, recipients, queue_id)


def spam_scored(envelope: Envelope, headers: bytes, content: bytes | list, recipients: list[str], queue_id: str) -> SpamVerdict:
    """spamd's verdict on `headers` (ours) and the message, as it would be stored.

    A spooled message is read whole only when the check will score it: one past
    MAIL_SPAMD_MAX_SIZE (or with the check off) is decided by its size alone.
    """
    skipped = spam_check.skipped(envelope, len(headers) + spool.size_of(content), queue_id)
    if skipped is not None:
        return skipped
    return spam_check.check(envelope, headers + spool.joined(content), recipient_thresholds(recipients), queue_id)


def spam_recipients(envelope: Envelope, content: bytes | list) -> list[str]:
    """The recipients whose spam thresholds apply: not those whose domain refuses the message
    anyway, nor those whose sender list allows or blocks its sender. Raises SenderBlocked when
    every recipient blocks it: there is nothing to score it for."""
    lookups = Lookups()
    listed = _sender_lists(envelope, summary_headers(first_part(content))[1], lookups)
    if listed and all(decision == senders.BLOCK for decision in listed.values()):
        raise SenderBlocked(", ".join(listed))
    return [
        r
        for r in envelope.rcpt_tos
        if listed.get(r) is None
        and not (envelope.reject_policy_applies and _unverified_for(envelope, r, lookups) and rejects_unverified(r))
    ]


def receive_many(
    items: list[tuple[Envelope, bytes | list, SpamVerdict | None]], lookups: Lookups | None = None
) -> list[Receipt | Exception]:
    """`receive` for several messages at once (group commit): one round of fsyncs, one transaction.

    Returns, in order, each message's Receipt or the exception that `receive` would have raised
    for it (PolicyRejection, a database or store error). Returns only after every body whose
    Receipt it returns is durable and its rows are committed: the SMTP listener acknowledges a
    whole batch of sessions with that. A message that the shared transaction cannot take does
    not fail the others: they are then committed one by one.
    """
    lookups = lookups or Lookups()
    return commit_staged(stage_many(items, lookups), lookups)


@dataclass
class StagedBatch:
    """The first half of `receive_many`: bodies stored (or being made durable), rows not yet written."""

    outcomes: list[Receipt | Exception | None]  # None: staged, waiting for its rows
    staged: list[tuple[int, _Prepared, StoredBody]]
    bodies: PendingBodies | None = None  # durable once its wait() returns; None only with nothing staged


def stage_many(
    items: list[tuple[Envelope, bytes | list, SpamVerdict | None]], lookups: Lookups | None = None, sync_here: bool = False
) -> StagedBatch:
    """Route, score and store a batch's bodies in one round of fsyncs; no rows are written.

    The bodies' sync may still be running when this returns (`MessageStore.begin_put_many`):
    `commit_staged` writes the rows meanwhile and commits them only once it is over. A listener
    may also stage the next batch while the previous one commits: the file system's work and
    the database's then overlap.

    `sync_here`: the bodies are durable before this returns, written and synced in this thread:
    for a batch with nothing to overlap with (GroupCommit's lone batch), the trip to the sync
    thread and back costs more than the overlap gains.
    """
    lookups = lookups or Lookups()
    outcomes: list[Receipt | Exception | None] = [None] * len(items)
    prepared: list[tuple[int, _Prepared]] = []
    for index, (envelope, content, spam) in enumerate(items):
        try:
            prepared.append((index, _prepare(envelope, content, spam, lookups)))
        except PolicyRejection as exc:
            outcomes[index] = exc
        except DatabaseError:
            raise  # the database, not this message: the whole batch is temporary
        except Exception as exc:
            # This message alone cannot be stored (a value that does not encode, say): it fails,
            # and the batch's other messages, other sessions' mail, go on.
            log.exception("message %d of a batch cannot be prepared", index)
            outcomes[index] = exc
    if not prepared:
        return StagedBatch(outcomes, [])
    try:
        pending = message_store().begin_put_many([p.chunks for _i, p in prepared], sync_here)
    except OSError as exc:
        for index, _p in prepared:
            outcomes[index] = exc
        return StagedBatch(outcomes, [])
    staged = [(index, p, body) for (index, p), body in zip(prepared, pending.bodies, strict=True)]
    return StagedBatch(outcomes, staged, pending)


def commit_staged(batch: StagedBatch, lookups: Lookups | None = None) -> list[Receipt | Exception]:
    """The second half of `receive_many`: all rows of a staged batch in one transaction.

    A body whose rows are not committed is deleted again, whatever the reason.
    """
    lookups = lookups or Lookups()
    outcomes = list(batch.outcomes)
    if not batch.staged:
        return outcomes
    durable = batch.bodies.wait
    try:
        with transaction.atomic():
            if any(route.remote for _i, p, _body in batch.staged for route in p.routes):
                durable()  # forwarding reads the body back (queueing.forward): it must be written
            receipts = _record_many([(p, body) for _i, p, body in batch.staged], lookups)
            # The rows were written while the bodies were synced; they commit only after.
            durable()
    except OSError as exc:  # the bodies did not reach the disk (or a forward's copy): nothing committed
        message_store().discard(batch.bodies)
        receipts = [exc] * len(batch.staged)
    except DatabaseError:
        log.warning("a batch of %d messages failed to commit together; committing them one by one", len(batch.staged))
        try:
            durable()
        except OSError as exc:
            message_store().discard(batch.bodies)
            return [outcome if outcome is not None else exc for outcome in outcomes]
        receipts = []
        for _i, p, body in batch.staged:
            try:
                with transaction.atomic():
                    receipts.append(_record(p, body, lookups))
            except Exception as exc:
                message_store().delete(body.ref)
                receipts.append(exc)
    except BaseException:
        message_store().discard(batch.bodies)
        raise
    for (index, _p, _body), receipt in zip(batch.staged, receipts, strict=True):
        outcomes[index] = receipt
    return outcomes


class Lookups:
    """Routes and domain policies, each looked up once while this object lives.

    `receive_many` makes one per batch unless given one: a listener may keep one for a second or
    two, so that a stream of messages to the same mailboxes costs no routing queries at all.
    """

    def __init__(self) -> None:
        self._routes: dict[str, accounts.Route | AddressError] = {}
        self._rejects: dict[str, bool] = {}
        self._policies: dict[str, str] = {}
        self._downgrades: dict[str, str | None] = {}
        self._senders: dict[str, senders.Rules] = {}
        self._authenticated: dict[str, str] = {}

    def route(self, address: str) -> accounts.Route:
        if address not in self._routes:
            try:
                self._routes[address] = accounts.route(address)
            except AddressError as exc:
                self._routes[address] = exc
        found = self._routes[address]
        if isinstance(found, AddressError):
            raise found
        return found

    def rejects_unverified(self, address: str) -> bool:
        if address not in self._rejects:
            self._rejects[address] = rejects_unverified(address)
        return self._rejects[address]

    def policy(self, address: str) -> str:
        if address not in self._policies:
            self._policies[address] = _policy_for(address)
        return self._policies[address]

    def downgrade(self, mail_from: str) -> str | None:
        """Why DATA mail from `mail_from` is a downgrade (reverse-delivery.md §5.8, §6); None if it is not."""
        domain = domain_of(mail_from) if mail_from else ""
        if domain not in self._downgrades:
            self._downgrades[domain] = pins.downgrade_reason(
                mail_from, pinned=pins.is_pinned(domain), local=bool(domain) and accounts.is_local_domain(domain)
            )
        return self._downgrades[domain]

    def authenticated_policy(self, address: str) -> str:
        if address not in self._authenticated:
            self._authenticated[address] = _authenticated_policy_for(address)
        return self._authenticated[address]

    def senders(self, address: str) -> senders.Rules:
        if address not in self._senders:
            self._senders[address] = senders.rules_for(address)
        return self._senders[address]


def _unverified_for(envelope: Envelope, address: str, lookups: Lookups) -> bool:
    """Whether the unverified-mail policy applies to this message for this recipient.

    Authenticated mail (DMARC pass) counts as verified unless the recipient's domain says otherwise.
    """
    if envelope.verification == Verification.VERIFIED:
        return False
    if envelope.verification == Verification.AUTHENTICATED:
        return lookups.authenticated_policy(address) == AuthenticatedPolicy.UNVERIFIED
    return True


def _sender_lists(envelope: Envelope, header_from: str, lookups: Lookups) -> dict[str, str | None]:
    """The sender lists' word for each envelope recipient (as given): ALLOW, BLOCK or None.

    Mail that failed verification is never allowed through (operations.md): it gets no ALLOW.
    """
    if not senders.applies_to(envelope):
        return {}
    listed: dict[str, str | None] = {}
    for rcpt in envelope.rcpt_tos:
        decision = lookups.senders(rcpt).decide(envelope.mail_from, envelope.client_address, header_from)
        if decision == senders.ALLOW and envelope.verification == Verification.FAILED:
            decision = None
        listed[rcpt] = decision
    return listed


@dataclass
class _Prepared:
    """A message ready to be stored: its routes, spam verdict, our headers and the content as received."""

    envelope: Envelope
    queue_id: str
    routes: list[accounts.Route]
    rejected: list[str]
    spam: SpamVerdict
    headers: bytes  # trace and spam headers, prepended when stored
    content: bytes | list  # a large message: its first part, then its spool (wire.data.DataReceiver)
    subject: str
    header_from: str
    allowed: frozenset[str] = frozenset()  # recipients (normalized) whose sender list allows this sender
    blocked: frozenset[str] = frozenset()  # recipients whose sender list blocks it: held, since others take it

    @property
    def chunks(self) -> tuple:
        """The body to store, in pieces that the store writes without joining them."""
        if isinstance(self.content, bytes):
            return self.headers, self.content
        return self.headers, *self.content


def spool_directory() -> str | None:
    """Where the DATA and GET readers spool a large message (store.spool)."""
    return message_store().spool_directory()


def _prepare(envelope: Envelope, content: bytes | list, spam: SpamVerdict | None, lookups: Lookups) -> _Prepared:
    queue_id = new_queue_id()
    # RFC 7489 §6.6.4: the From domain's owner asks that mail failing DMARC be refused. A message
    # that reverse delivery verified (aligned) proved its domain in a stronger way: it stays.
    auth = envelope.authentication
    if auth is not None and auth.dmarc_disposition == "reject" and envelope.verification != Verification.VERIFIED:
        raise DMARCRejection(auth.dmarc.header_from)
    content = without_forged_verdicts(content)
    if envelope.transport == Transport.DATA and envelope.verification == Verification.UNVERIFIED:
        downgrade = lookups.downgrade(envelope.mail_from)
        if downgrade is not None:
            # Spec §5.8: not merely unverified but failed; never delivered to an inbox (`_deliveries`).
            envelope = replace(envelope, verification=Verification.FAILED, auth_result="fail", auth_comment=downgrade)
    # Our own headers name neither Subject nor From, so the message's header block alone says
    # what the stored one would, without a copy of the whole message to parse.
    head = first_part(content)  # holds the whole header block
    subject, header_from = summary_headers(head)
    listed = _sender_lists(envelope, header_from, lookups)
    routes = []
    rejected: list[str] = []
    allowed: set[str] = set()
    blocked: set[str] = set()
    for rcpt in envelope.rcpt_tos:
        try:
            r = lookups.route(rcpt)
        except AddressError:
            rejected.append(rcpt)
            continue
        decision = listed.get(rcpt)
        if decision == senders.ALLOW:
            allowed.add(r.address)  # whatever its domain's policy for unverified mail
        elif envelope.reject_policy_applies and _unverified_for(envelope, rcpt, lookups) and lookups.rejects_unverified(rcpt):
            rejected.append(rcpt)
            continue
        elif decision == senders.BLOCK:
            blocked.add(r.address)
        routes.append(r)
    if not routes:
        raise PolicyRejection(", ".join(rejected))
    if len(blocked) == len(routes):
        raise SenderBlocked(", ".join(blocked))
    _refuse_loops(head, routes)

    # spamd's verdict before anything is stored, so that a refusal is still a 550 to DATA;
    # raises SpamRejection (a PolicyRejection) when every recipient's domain refuses it.
    received = received_header(envelope, queue_id, sole_recipient(envelope))
    if spam is None:
        recipients = [r.address for r in routes if r.address not in allowed]
        # The headers scored with it are made only with a spamd to score them.
        scored_headers = trace_headers(envelope, queue_id, received) if settings.MAIL_SPAMD else b""
        spam = spam_scored(envelope, scored_headers, content, recipients, queue_id)
    spam_result = spam.auth_result()
    if spam_result != envelope.spam_result:  # no copy of the envelope when the check adds nothing (it is off)
        envelope = replace(envelope, spam_result=spam_result)
    headers = trace_headers(envelope, queue_id, received) + spam.headers()
    _refuse_over_quota(routes, len(headers) + spool.size_of(content))
    return _Prepared(
        envelope, queue_id, routes, rejected, spam, headers, content, subject, header_from, frozenset(allowed), frozenset(blocked)
    )


_RECEIVED = re.compile(rb"^Received[ \t]*:", re.IGNORECASE | re.MULTILINE)
_DELIVERED_TO = re.compile(rb"^Delivered-To[ \t]*:[ \t]*<?([^<>\r\n]*?)>?[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)


def _refuse_loops(head_part: bytes, routes: list[accounts.Route]) -> None:
    """MailLoop when the message went round: RFC 5321 §6.3 suggests counting Received headers
    (more than MAIL_MAX_RECEIVED_HEADERS), and our own Delivered-To for a recipient says that we
    handed it on for that very address before (Postfix's local(8) check)."""
    end = head_part.find(b"\r\n\r\n")
    head = head_part if end < 0 else head_part[: end + 2]
    received = len(_RECEIVED.findall(head))
    if received > settings.MAIL_MAX_RECEIVED_HEADERS:
        raise MailLoop(f"{received} Received headers")
    delivered_to = {m.decode("utf-8", "replace").strip().lower() for m in _DELIVERED_TO.findall(head)}
    for r in routes:
        if r.address in delivered_to:
            raise MailLoop(f"already delivered to {r.address}")


def _refuse_over_quota(routes: list[accounts.Route], size: int) -> None:
    """QuotaExceeded when the message would take every mailbox it reaches over its quota.

    Read now, not from the routes (a listener reuses those for a second or two). A message that
    another recipient takes too is delivered to all of them, a full mailbox going over its quota
    by that one message (as Dovecot's quota grace) rather than silently losing it after the 250;
    RCPT then refuses the next one (452 4.2.2).
    """
    if any(r.remote for r in routes) or not any(m.has_quota for r in routes for m in r.mailboxes):
        return
    mailbox_ids = {m.pk for r in routes for m in r.mailboxes}
    if mailbox_ids and quota.over_quota(mailbox_ids, size) == mailbox_ids:
        raise QuotaExceeded(", ".join(r.address for r in routes))


def _record(prepared: _Prepared, body: StoredBody, lookups: Lookups) -> Receipt:
    """The rows of one stored message: the Message, a Delivery per mailbox, forwards. In a transaction."""
    return _record_many([(prepared, body)], lookups)[0]


def _record_many(batch: list[tuple[_Prepared, StoredBody]], lookups: Lookups) -> list[Receipt]:
    """The rows of a batch of stored messages: all Message rows in one INSERT, all Delivery rows in another."""
    now = timezone.now()  # received_at and delivered_at of the whole batch
    messages = [
        message_row(
            prepared.envelope,
            body,
            prepared.queue_id,
            subject=prepared.subject,
            header_from=prepared.header_from,
            auth_results=authentication_results(prepared.envelope),
            auth_methods=prepared.envelope.authentication.methods() if prepared.envelope.authentication is not None else None,
            spam_fields=prepared.spam.message_fields(),
        )
        for prepared, body in batch
    ]
    message_ids = insert_rows(Message, messages, key="queue_id", now=now)
    routed = [_deliveries(prepared, lookups) for prepared, _body in batch]
    insert_rows(
        Delivery,
        [
            {"message_id": message_id, "mailbox_id": mailbox_id, "state": state, "reason": reason}
            for message_id, (_receipt, deliveries, _remote, _held) in zip(message_ids, routed, strict=True)
            for mailbox_id, state, reason in deliveries
        ],
        now=now,
    )
    quota.charge(
        (mailbox_id, body.size)
        for (_prepared, body), (_receipt, deliveries, _remote, _held) in zip(batch, routed, strict=True)
        for mailbox_id, _state, _reason in deliveries
    )
    receipts = []
    for message_id, row, (receipt, _mailboxes, remote, held) in zip(message_ids, messages, routed, strict=True):
        receipt.message_id, receipt._row = message_id, row
        receipts.append(_forward(receipt, remote, held))
    return receipts


def _deliveries(
    prepared: _Prepared, lookups: Lookups
) -> tuple[Receipt, list[tuple[int, str, str]], list[tuple[str, str]], list[tuple[str, str]]]:
    """(receipt so far, (mailbox id, state, reason) of each Delivery row, (alias, remote target) of
    each forward, and of each forward held with the message) of one message."""
    envelope, spam = prepared.envelope, prepared.spam
    # RFC 7489 §6.6.4: the From domain's owner asks that mail failing DMARC be held.
    dmarc_quarantine = (
        envelope.authentication is not None
        and envelope.authentication.dmarc_disposition == "quarantine"
        and envelope.verification != Verification.VERIFIED
    )
    receipt = Receipt(queue_id=prepared.queue_id, rejected=list(prepared.rejected))
    deliveries: list[tuple[int, str, str]] = []
    seen: set[int] = set()
    remote: list[tuple[str, str]] = []
    held: list[tuple[str, str]] = []
    for r in prepared.routes:
        policy = lookups.policy(r.address)
        quarantine = policy == UnverifiedPolicy.QUARANTINE and _unverified_for(envelope, r.address, lookups)
        reason = "unverified" if quarantine else ""
        # "spam" says more than "unverified". A verdict without actions (the check off,
        # unscored) quarantines no one: spare normalizing the address for it.
        if spam.actions and spam.quarantines(r.address):
            quarantine, reason = True, "spam"
        # An allow entry lifts the unverified policy and the spam threshold (never a failed
        # verification); a block entry for some recipients holds what the others accept: the
        # one reply to DATA has acknowledged it (RFC 5321 §4.1.1.4).
        if r.address in prepared.allowed and reason in ("unverified", "spam"):
            quarantine, reason = False, ""
        if dmarc_quarantine:  # the From domain's owner asks for it; an allow entry does not lift it
            quarantine, reason = True, "DMARC policy quarantine"
        if r.address in prepared.blocked:
            quarantine, reason = True, "blocked sender"
        if envelope.verification == Verification.FAILED and envelope.auth_result == "fail":
            quarantine, reason = True, "downgrade"  # spec §5.8 (`_prepare`): held whatever the policy and the score
        for mailbox in r.mailboxes:
            if mailbox.pk in seen:
                continue
            seen.add(mailbox.pk)
            deliveries.append((mailbox.pk, DeliveryState.QUARANTINED if quarantine else DeliveryState.INBOX, reason))
            (receipt.quarantined if quarantine else receipt.delivered).append(mailbox.address)
        # Reverse delivery §6, Forwarding: a remote target gets what is accepted for delivery;
        # what is held for it waits with the message (sent on release, never if deleted).
        forwarded = {target for _alias, target in remote + held}
        (held if quarantine else remote).extend((r.address, t) for t in r.remote if t not in forwarded)
    return receipt, deliveries, remote, held


def _forward(receipt: Receipt, remote: list[tuple[str, str]], held: list[tuple[str, str]]) -> Receipt:
    """One forwarded copy per alias, each with its Delivered-To (the loop check of the next hop);
    the copies for held targets wait, held, with the message."""
    if remote or held:
        for targets_of, is_held in ((remote, False), (held, True)):
            for alias in dict.fromkeys(alias for alias, _target in targets_of):
                targets = [target for a, target in targets_of if a == alias]
                queueing.forward(receipt.message, targets, delivered_to=alias, held=is_held)
                (receipt.quarantined if is_held else receipt.forwarded).extend(targets)
    return receipt


def _authenticated_policy_for(address: str) -> str:
    domain = Domain.objects.filter(name=domain_of(address)).values_list("authenticated_policy", flat=True).first()
    return domain or AuthenticatedPolicy.VERIFIED


def _policy_for(address: str) -> str:
    domain = Domain.objects.filter(name=domain_of(address)).values_list("unverified_policy", flat=True).first()
    return domain or UnverifiedPolicy.ACCEPT
