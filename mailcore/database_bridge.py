"""The one bridge from an event loop to blocking work on the database: `DatabaseBridge`.

Django's ORM blocks, and refuses to run in a thread whose event loop is running. The listeners
(SMTP, submission, POP3) and the outbound side of reverse delivery (SOURCE, the pull sweep) each
hand such work to a `DatabaseBridge`, which guarantees, for every call:

- it runs in another thread than the event loop's (`run`), so that the loop serves other
  sessions meanwhile; only `run_here`, for a caller that has nothing else to do, runs it on the
  loop's own thread, which it blocks;
- it is a unit of work: before and after it, this thread's database connections that a failure
  left unusable are closed (a transaction an exception left open, an error after which the
  server no longer answers), so the next call connects again instead of failing too; a healthy
  connection is kept for the thread's next call rather than made again for every call;
- a connection inside an atomic block is never touched: that transaction is the caller's (a
  test's, or a command's that runs the event loop with async_to_sync);
- what the call returns or raises comes back unchanged (the caller decides what a database
  error means to its client);
- context variables are not carried into the thread: no caller needs them, and copying them
  cost as much as the trip itself.

Which threads run the calls is the caller's choice (see `DatabaseBridge.__init__`). Nothing of
mailcore is imported here: every layer above may use it.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.db import connections

T = TypeVar("T")


def drop_unusable_connections() -> None:
    """Close this thread's database connections that a failure left unusable.

    Unlike Django's `close_old_connections`, a healthy connection is kept whatever its age:
    a worker thread holds its own for the life of the process, instead of connecting again
    for every unit of work. A connection inside an atomic block is left alone (the caller's).
    """
    for conn in connections.all(initialized_only=True):
        if conn.connection is None or conn.in_atomic_block:
            continue
        if conn.get_autocommit() != conn.settings_dict["AUTOCOMMIT"]:
            conn.close()  # a transaction left open by an exception
        elif conn.errors_occurred:
            if conn.is_usable():
                conn.errors_occurred = False
            else:
                conn.close()


def _unit_of_work(fn: Callable[..., T], args: tuple, kwargs: dict) -> T:
    drop_unusable_connections()
    try:
        return fn(*args, **kwargs)
    finally:
        drop_unusable_connections()


class DatabaseBridge:
    """Blocking calls (the ORM, and the store's reads and writes around it) off an event loop."""

    def __init__(self, executor: Executor | None = None, *, callers_thread: bool = False):
        """`executor`: the worker threads that run the calls, each with its own connection;
        None: the event loop's default pool.

        `callers_thread`: the calls run one at a time in asgiref's thread-sensitive thread (no
        executor then): the thread of the synchronous code that runs this event loop with
        `async_to_sync`, with its connection and its transaction, or else one thread that the
        process shares for such calls.
        """
        if callers_thread and executor is not None:
            raise ValueError("callers_thread runs the calls in asgiref's thread, not in an executor")
        self.executor = executor
        self.callers_thread = callers_thread

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Awaitable[T]:
        """Await `fn(*args, **kwargs)`, run as a unit of work in another thread."""
        unit = functools.partial(_unit_of_work, fn, args, kwargs)
        if self.callers_thread:
            return sync_to_async(unit, thread_sensitive=True)()
        # A plain future from run_in_executor, not a coroutine around it: nothing is added to
        # the trip on the listeners' busiest path.
        return asyncio.get_running_loop().run_in_executor(self.executor, unit)

    def wrap(self, fn: Callable[..., T]) -> Callable[..., Awaitable[T]]:
        """`fn` as an awaitable function that runs through `run`."""
        return functools.partial(self.run, fn)

    @staticmethod
    def run_here(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`run`, in the event loop's own thread, which it blocks until `fn` returns.

        Only for a caller whose loop has nothing else to do meanwhile (the MX's lone message of
        a lone session): a worker thread woken for each call sleeps between calls and wakes up
        slow. Django refuses the ORM in a thread whose event loop runs (async_unsafe), rightly
        in general: the running loop is hidden from it for the length of the call.
        """
        loop = asyncio.get_running_loop()
        asyncio.events._set_running_loop(None)
        try:
            return _unit_of_work(fn, args, kwargs)
        finally:
            asyncio.events._set_running_loop(loop)
