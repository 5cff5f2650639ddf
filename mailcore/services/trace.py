"""A message's timeline, built from the rows that exist: received, checks, announcement, pull, deliveries, queue, POP3."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from mailcore.models import PENDING_STATES, Announcement, Delivery, DeliveryState, Message, QueueItem, QueueState, SourcedMessage


@dataclass(frozen=True)
class TraceEvent:
    at: datetime
    stage: str  # received, check, announcement, pull, delivery, quarantine, queue, source, pop3
    summary: str
    detail: str = ""
    ok: bool | None = None  # True: a success, False: a failure, None: neither


def trace(message: Message) -> list[TraceEvent]:
    """Every event we have a record of for `message`, oldest first.

    Only what the rows hold is shown: a queue item keeps its latest attempt and reply, not each
    one, so the timeline says "attempt N" with the last remote reply.
    """
    events: list[TraceEvent] = []
    for announcement in Announcement.objects.filter(message=message):
        events.extend(_announcement_events(announcement))
    how = {"data": "by SMTP DATA", "source": "by SOURCE, body pulled with GET", "submission": "by authenticated submission",
           "local": "locally (sendmail or a bounce)"}.get(message.transport, message.transport)
    client = f"{message.helo_name or 'unknown'} [{message.client_address}]" if message.client_address else "local"
    events.append(TraceEvent(
        message.received_at, "received", f"received {how} from {client}",
        f"MAIL FROM:<{message.mail_from}> RCPT TO: {', '.join(message.rcpt_tos)}; {message.size} octets"
        + ("; TLS" if message.tls else ""),
    ))
    if message.auth_results:
        events.append(TraceEvent(
            message.received_at, "check", f"verification: {message.verification}",
            f"Authentication-Results: {message.auth_results}", ok=_verification_ok(message.verification),
        ))
    for delivery in Delivery.objects.filter(message=message).select_related("mailbox"):
        events.extend(_delivery_events(delivery))
    for item in QueueItem.objects.filter(message=message):
        events.extend(_queue_events(item))
    for sourced in SourcedMessage.objects.filter(message=message):
        events.extend(_sourced_events(sourced))
    # Stable sort: events of the same instant keep the order in which they happen (received, then checks).
    events.sort(key=lambda e: e.at)
    return events


def _verification_ok(verification: str) -> bool | None:
    return {"verified": True, "failed": False}.get(verification)


def _announcement_events(a: Announcement) -> list[TraceEvent]:
    events = [TraceEvent(
        a.received_at, "announcement", f"SOURCE {a.source_id} announced by {a.helo_name} [{a.client_address}]",
        f"MAIL FROM:<{a.mail_from}> RCPT TO: {', '.join(a.rcpt_tos)}",
    )]
    if a.completed_at:
        ok = a.state == "verified"
        origin = f" from {a.origin_host}" if a.origin_host else ""
        events.append(TraceEvent(
            a.completed_at, "pull", f"GET{origin}: {a.get_state_display()} after {a.attempts} attempt(s)",
            a.last_error, ok=ok,
        ))
    elif a.attempts:
        events.append(TraceEvent(
            a.next_attempt_at, "pull", f"GET pending: {a.attempts} attempt(s), next at {a.next_attempt_at:%Y-%m-%d %H:%M:%S}",
            a.last_error,
        ))
    return events


def _delivery_events(d: Delivery) -> list[TraceEvent]:
    if d.state == DeliveryState.QUARANTINED or d.reason:
        first = TraceEvent(d.delivered_at, "quarantine", f"quarantined for {d.mailbox.address}", f"reason: {d.reason}", ok=None)
    else:
        first = TraceEvent(d.delivered_at, "delivery", f"delivered to the inbox of {d.mailbox.address}", ok=True)
    events = [first]
    if d.reason and d.state == DeliveryState.INBOX:
        events.append(TraceEvent(d.changed_at, "quarantine", f"released to the inbox of {d.mailbox.address}", ok=True))
    elif d.state == DeliveryState.DELETED:
        events.append(TraceEvent(d.changed_at, "delivery", f"deleted from {d.mailbox.address}", ok=None))
    if d.retrieved_at:
        events.append(TraceEvent(d.retrieved_at, "pop3", f"retrieved by POP3 from {d.mailbox.address}", ok=True))
    return events


def _queue_events(item: QueueItem) -> list[TraceEvent]:
    events = [TraceEvent(item.created_at, "queue", f"queued for {item.recipient}")]
    if item.attempts or item.state not in (QueueState.QUEUED,):
        where = f" via {item.remote_host}" if item.remote_host else ""
        summary = f"{item.get_state_display()} for {item.recipient}{where} after {item.attempts} attempt(s)"
        if item.state in PENDING_STATES:
            summary += f"; next try {item.next_attempt_at:%Y-%m-%d %H:%M:%S}"
        ok = {QueueState.SENT: True, QueueState.SOURCED: True, QueueState.BOUNCED: False}.get(item.state)
        events.append(TraceEvent(item.updated_at, "queue", summary, item.last_reply, ok=ok))
    return events


def _sourced_events(s: SourcedMessage) -> list[TraceEvent]:
    events = [TraceEvent(s.created_at, "source", f"announced with SOURCE {s.source_id} to {s.destination_host}",
                         f"RCPT TO: {', '.join(s.rcpt_tos)}; kept until {s.expires_at:%Y-%m-%d %H:%M:%S}")]
    if s.first_fetch_at:
        events.append(TraceEvent(s.first_fetch_at, "source", f"fetched with GET by [{s.first_fetch_address}]", ok=True))
    if s.last_fetch_at and s.fetch_count > 1:
        events.append(TraceEvent(s.last_fetch_at, "source",
                                 f"fetched again by [{s.last_fetch_address}] ({s.fetch_count} fetches in all)", ok=True))
    if s.expired:
        events.append(TraceEvent(s.expires_at, "source", "retention ended; the sourced copy was released",
                                 ok=None if s.first_fetch_at else False))
    return events
