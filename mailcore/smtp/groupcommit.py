"""Group commit for the MX: messages of many sessions stored, fsynced and committed as one batch.

A session that has read a message hands it to `GroupCommit.deliver` and waits. A committer takes
every message waiting at that moment (up to `max_batch`) to a worker thread, which stores all
bodies in one round of fsyncs (`inbound.stage_many`), then records all rows in one transaction
(`inbound.commit_staged`); each session then gets its own outcome and only then answers 250.
Nothing waits for a batch to fill: while one batch is being made durable the next one gathers,
so one lone session pays for one message and fifty concurrent sessions share the cost of each
fsync and commit.

One committer (MAIL_SMTP_COMMITTERS) is the default: its batch goes to the worker thread in one
trip, and the messages that arrive meanwhile make the next batch, larger than if a second
committer had taken them. Each batch has a fixed cost (thread hops, a transaction, two fsyncs)
that more committers pay more often; more of them pay off only where fsync is slow enough that
the disk, not this cost, bounds a batch's turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from mailcore.services import inbound

if TYPE_CHECKING:
    from mailcore.spam.check import SpamVerdict

log = logging.getLogger("mailcore.smtp")

# The content of a large message is its first part and its spool (wire.data.DataReceiver): the
# batch copies the spool into the store, and the session closes it once `deliver` has returned.
Item = tuple[inbound.Envelope, "bytes | list", "SpamVerdict | None", asyncio.Future]


class WriterTurn:
    """SQLite's one writer, taken in turn by the batches of every listener process.

    Within a process the batches wait on an asyncio.Lock; across the processes of
    `runsmtp --processes N` they wait on flock(2) of a file beside the database, in the worker
    thread, around the transaction. Either wakes the next waiter as soon as the turn is released,
    where SQLite's own busy handler sleeps 1, 2, 5, 10... ms between tries: with two processes
    contending inside SQLite, 50 sessions of 1 KB went from 390 to 310 messages/s.
    """

    def __init__(self, lock_path: str):
        self.in_process = asyncio.Lock()
        self.lock_path = lock_path
        self._fd: int | None = None

    def holding(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """`fn`, run while holding the cross-process turn (call it in a worker thread)."""

        def run(*args, **kwargs):
            if self._fd is None:
                self._fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                return fn(*args, **kwargs)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

        return run


class GroupCommit:
    """The batches of one listener process. `call` is the handler's one boundary into worker threads."""

    def __init__(
        self,
        call: Callable[..., Awaitable[Any]],
        call_here: Callable[..., Any] | None = None,
        max_batch: int = 64,
        committers: int = 1,
        lookup_seconds: float = 0.0,
        writer_lock_path: str | None = None,
    ):
        self.call = call
        self.call_here = call_here
        # SQLite has one writer: batches take turns (WriterTurn), where the next is woken at once,
        # rather than in SQLite's busy handler, which sleeps for milliseconds between tries.
        # Their bodies are still stored in parallel, while another batch commits.
        self.writer_turn = WriterTurn(writer_lock_path) if writer_lock_path else None
        # Routes and policies shared by the batches of the last `lookup_seconds` (the RCPT
        # cache's lifetime): a mailbox's messages then cost no routing queries.
        self.lookup_seconds = lookup_seconds
        self._lookups: tuple[float, inbound.Lookups] | None = None
        self.max_batch = max(1, max_batch)
        self.committers = max(1, committers)
        self.waiting: list[Item] = []
        self.in_flight = 0
        self._tasks: set[asyncio.Task] = set()  # the loop keeps only weak references to tasks
        self.batches = 0
        self.messages = 0

    async def deliver(
        self, envelope: inbound.Envelope, content: bytes | list, spam: SpamVerdict | None = None, alone: bool = False
    ) -> inbound.Receipt:
        """Returns once this message is durable and committed; raises what `inbound.receive` would.

        `alone`: the sender's session is the only one of the listener. With no batch in flight
        either, the message is then stored on the event loop's own thread (`call_here`): there
        is nothing for the loop to do meanwhile, and a worker thread woken for each message ran
        the same work at half speed (see `call_here`).
        """
        if alone and not self.in_flight and not self.waiting and self.call_here is not None:
            started = asyncio.get_running_loop().time()
            [outcome] = self.call_here(self._receive_alone, [(envelope, content, spam)], self.lookups())
            self.batches += 1
            self.messages += 1
            log.debug("group commit: a lone message durable in %.1f ms, on the event loop's thread", self._since(started))
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((envelope, content, spam, future))
        if self.in_flight < self.committers:
            self.in_flight += 1
            task = asyncio.get_running_loop().create_task(self._commit_while_waiting())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await asyncio.shield(future)

    async def _commit_while_waiting(self) -> None:
        try:
            while self.waiting:
                batch, self.waiting = self.waiting[: self.max_batch], self.waiting[self.max_batch:]
                await self._commit(batch)
        finally:
            self.in_flight -= 1

    async def _commit(self, batch: list[Item]) -> None:
        items = [(envelope, content, spam) for envelope, content, spam, _future in batch]
        started = asyncio.get_running_loop().time()
        lookups = self.lookups()
        try:
            if self.in_flight == 1:
                # No other batch in flight to overlap with: one trip to a worker thread instead
                # of two (a lone session's latency is what its throughput is).
                async with self._writer():
                    outcomes = await self.call(self._receive_alone, items, lookups)
            else:
                staged = await self.call(inbound.stage_many, items, lookups)
                async with self._writer():
                    outcomes = await self.call(self._turn(inbound.commit_staged), staged, lookups)
        except Exception as exc:
            # The whole batch failed. One message may have failed it: each is tried again alone,
            # so that it fails its own session only, not the others' (a database that is down
            # fails them all again, each with its own 4xx).
            if len(batch) == 1:
                outcomes = [exc]
            else:
                log.warning("group commit: a batch of %d failed (%r); storing its messages one by one", len(batch), exc)
                outcomes = [await self._alone(item, lookups) for item in items]
        except BaseException as exc:
            self._settle(batch, [exc] * len(batch))
            raise
        self.batches += 1
        self.messages += len(batch)
        log.debug("group commit: %d message(s) durable in %.1f ms, in worker threads", len(batch), self._since(started))
        self._settle(batch, outcomes)

    async def _alone(self, item: tuple, lookups: inbound.Lookups | None) -> inbound.Receipt | BaseException:
        """One message of a failed batch, stored by itself: its receipt, or what failed it."""
        try:
            async with self._writer():
                [outcome] = await self.call(self._receive_alone, [item], lookups)
        except Exception as exc:
            return exc
        return outcome

    @staticmethod
    def _since(started: float) -> float:
        return (asyncio.get_running_loop().time() - started) * 1000

    def _receive_alone(self, items: list, lookups: inbound.Lookups | None) -> list:
        """`inbound.receive_many` for a batch with no other in flight, the writer's turn held for the commit only.

        It runs in a worker thread, or on the event loop's own thread for a lone session
        (`deliver`, `call_here`).

        The other listener processes commit while this batch's bodies are fsynced: holding the
        turn through the fsyncs too made their sessions wait for ours (runsmtp --processes).
        The bodies are synced in this thread, before the rows are written (`sync_here`): with
        nothing to overlap, that spares the trip to the sync thread and back (inbound.stage_many).
        """
        lookups = lookups or inbound.Lookups()
        staged = inbound.stage_many(items, lookups, sync_here=True)
        return self._turn(inbound.commit_staged)(staged, lookups)

    def _writer(self) -> contextlib.AbstractAsyncContextManager:
        return self.writer_turn.in_process if self.writer_turn is not None else contextlib.nullcontext()

    def _turn(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        return self.writer_turn.holding(fn) if self.writer_turn is not None else fn

    def lookups(self) -> inbound.Lookups | None:
        if self.lookup_seconds <= 0:
            return None
        now = asyncio.get_running_loop().time()
        if self._lookups is None or self._lookups[0] <= now:
            self._lookups = (now + self.lookup_seconds, inbound.Lookups())
        return self._lookups[1]

    @staticmethod
    def _settle(batch: list[Item], outcomes: list) -> None:
        for (_envelope, _content, _spam, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
