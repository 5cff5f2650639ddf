"""The sending role of reverse delivery (reverse-delivery.md §3): announce a message with SOURCE instead of DATA."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from django.db import DatabaseError

from mailcore.database_bridge import DatabaseBridge
from mailcore.delivery.client import Connection, OutboundClient, OutboundMessage, Reply, Session, SMTPFailure
from mailcore.reverse_delivery.ids import offers_source
from mailcore.services import reverse_delivery

log = logging.getLogger("mailcore.delivery")

# Spec §3 rule 4: a receiver that lists SOURCE but answers it with one of these does not know it
# after all; DATA may follow in the same transaction.
NOT_IMPLEMENTED = (500, 502)

# (message id, reverse-path, recipients, destination host, size) -> a fresh id, or None: use DATA.
Recorder = Callable[[int, str, list[str], str, int], Awaitable[str | None]]
Withdrawer = Callable[[str], Awaitable[None]]


class SourcingClient(OutboundClient):
    """The outbound client that hands a message over with `SOURCE <id>` where the peer lists SOURCE.

    Its one difference from `OutboundClient` is `transfer`: the envelope is recorded under a fresh
    id (committed, with the body already durable) before SOURCE goes out, so the receiver's GET
    can never ask for something we do not have yet.
    """

    def __init__(self, *args, record: Recorder | None = None, withdraw: Withdrawer | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        # The one boundary from this event loop into the services (ORM calls block): one call
        # at a time, in the thread asgiref keeps for such calls.
        services = DatabaseBridge(callers_thread=True)
        self.record = record or services.wrap(reverse_delivery.record_sourced)
        self.withdraw = withdraw or services.wrap(reverse_delivery.withdraw_sourced)

    async def _withdraw(self, source_id: str) -> None:
        try:
            await self.withdraw(source_id)
        except DatabaseError as exc:
            # The id stays servable until its retention ends; the queue still retries the recipients.
            log.warning("SOURCE %s could not be withdrawn: %s", source_id, exc)

    def may_source(self, session: Session, message: OutboundMessage) -> bool:
        # Spec §3: only to a peer that listed SOURCE 2 after EHLO, and never for a null reverse-path
        # (a bounce has no domain for the receiver to call back).
        # Spec §2: a peer that lists SOURCE without version 2 gets DATA.
        return (
            session.esmtp
            and offers_source(session.extensions.get("SOURCE"))
            and bool(message.mail_from)
            and message.message_id is not None
            and message.may_source
        )

    async def transfer(self, conn: Connection, session: Session, message: OutboundMessage, accepted: list[str]) -> tuple[Reply, str]:
        if not self.may_source(session, message):
            return await super().transfer(conn, session, message, accepted)
        try:
            source_id = await self.record(message.message_id, message.mail_from, list(accepted), session.host.name, len(message.content))
        except DatabaseError as exc:
            # Our fault, so temporary: without the record there is nothing a GET could be served.
            raise SMTPFailure(f"local error: cannot record the sourced message: {exc}") from None
        if source_id is None:
            # The stored body is not the octets DATA would send (or is gone): GET could not serve
            # them exactly (spec §3 rule 1), so this message goes by DATA.
            log.warning("%s: stored body differs from the outbound copy; sending by DATA", message.queue_id)
            return await super().transfer(conn, session, message, accepted)
        try:
            reply = await conn.command(f"SOURCE {source_id}")
        except SMTPFailure:
            # We cannot know whether the receiver recorded it. Withdrawn, a late GET gets 550 and
            # the receiver delivers nothing, so the queue's retry is the only copy that lands.
            await self._withdraw(source_id)
            raise
        if reply.code == 250:
            log.info("%s: SOURCE %s to %s: %s", message.queue_id, source_id, session.remote_host, reply)
            return reply, "sourced"
        await self._withdraw(source_id)
        if reply.code in NOT_IMPLEMENTED:
            # It does not know SOURCE after all: the next messages on this connection go by DATA
            # straight away (and an aiosmtpd peer closes after a few unknown verbs).
            session.extensions.pop("SOURCE", None)
            log.info(
                "%s: %s answered SOURCE with %s; sending by DATA in the same transaction", message.queue_id, session.remote_host, reply
            )
            return await self.send_data(conn, message), "sent"
        if reply.code < 400:
            raise SMTPFailure(f"protocol error: SOURCE answered {reply}")
        # 4xx defers and 5xx bounces these recipients, as DATA's reply would. After any reply to
        # SOURCE the transaction is over (spec §3); RSET costs one line and also puts a peer that
        # thinks otherwise in the initial state (RFC 5321 §4.1.1.5) for the next message.
        await self._reset(conn)
        return reply, "sent"
