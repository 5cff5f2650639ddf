"""A scripted SMTP server for tests: answers as told (451 before 250, garbage, stalls, drops mid-DATA).

    peer = ScriptedPeer(final_replies=["451 4.3.0 try later", "250 2.0.0 ok"]).start("127.0.0.4", port)
    ...
    peer.transactions   # [(mail_from, [rcpts], body bytes)] of every completed DATA
    peer.stop()

It runs its own event loop in a thread, so a test can use it next to real server processes.
Each reply list is consumed one per use and its last entry repeats.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Self


class ThreadedPeer:
    """Serves `_session` (an asyncio stream handler) from its own event loop in a daemon thread.

    The one runner of the scripted SMTP peers (ScriptedPeer, tests.source_peer.SourcePeer).
    """

    _loop: asyncio.AbstractEventLoop | None = None
    _server: asyncio.base_events.Server | None = None
    _thread: threading.Thread | None = None

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    def start(self, host: str, port: int) -> Self:
        ready = threading.Event()
        errors: list[BaseException] = []

        def run():
            self._loop = asyncio.new_event_loop()
            try:
                self._server = self._loop.run_until_complete(asyncio.start_server(self._session, host, port))
            except OSError as exc:
                errors.append(exc)
                self._loop.close()
                ready.set()
                return
            ready.set()
            try:
                self._loop.run_forever()
            finally:
                self._loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(5)
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        if self._loop is None or self._loop.is_closed():
            return

        async def shutdown():
            self._server.close()
            for task in [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]:
                task.cancel()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@dataclass
class ScriptedPeer(ThreadedPeer):
    hostname: str = "peer.test"
    greeting: str = "220 {host} ESMTP scripted"
    extensions: list[str] = field(default_factory=lambda: ["PIPELINING", "8BITMIME", "SIZE 10000000"])
    ehlo_reply: str | None = None  # e.g. "502 5.5.1 no EHLO here" to force HELO
    mail_replies: list[str] = field(default_factory=lambda: ["250 2.1.0 ok"])
    rcpt_replies: dict[str, str] = field(default_factory=dict)  # recipient -> reply; others 250
    data_replies: list[str] = field(default_factory=lambda: ["354 go ahead"])
    final_replies: list[str] = field(default_factory=lambda: ["250 2.0.0 queued"])
    # Misbehaviour, by stage: "greeting", "ehlo", "mail", "data-body": "garbage" | "stall" | "close"
    misbehave: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        self.transactions: list[tuple[str, list[str], bytes]] = []
        self.commands: list[str] = []
        self.connections = 0
        self._counters: dict[str, int] = {}

    def _next(self, name: str, replies: list[str]) -> str:
        n = self._counters.get(name, 0)
        self._counters[name] = n + 1
        return replies[min(n, len(replies) - 1)]

    async def _misbehave(self, stage: str, writer) -> bool:
        how = self.misbehave.get(stage)
        if how == "garbage":
            writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(3600)  # not a wait: a peer that says nothing more, for the client's timeout
        elif how == "stall":
            await asyncio.sleep(3600)  # not a wait: a peer that says nothing, for the client's timeout
        elif how == "close":
            writer.close()
            return True
        return False

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1

        async def say(line: str) -> None:
            writer.write(line.encode() + b"\r\n")
            await writer.drain()

        try:
            if await self._misbehave("greeting", writer):
                return
            await say(self.greeting.format(host=self.hostname))
            mail_from, rcpts = None, []
            while True:
                raw = await reader.readline()
                if not raw:
                    return
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                self.commands.append(line)
                verb = line.split(" ", 1)[0].upper()
                if verb == "EHLO":
                    if await self._misbehave("ehlo", writer):
                        return
                    if self.ehlo_reply:
                        await say(self.ehlo_reply)
                        continue
                    lines = [self.hostname, *self.extensions]
                    for i, text in enumerate(lines):
                        await say(f"250{'-' if i < len(lines) - 1 else ' '}{text}")
                elif verb == "HELO":
                    await say(f"250 {self.hostname}")
                elif verb == "MAIL":
                    if await self._misbehave("mail", writer):
                        return
                    reply = self._next("mail", self.mail_replies)
                    if reply.startswith("250"):
                        mail_from = line.split(":", 1)[1].split(">")[0].lstrip(" <")
                        rcpts = []
                    await say(reply)
                elif verb == "RCPT":
                    rcpt = line.split(":", 1)[1].split(">")[0].lstrip(" <")
                    reply = self.rcpt_replies.get(rcpt, "250 2.1.5 ok")
                    if reply.startswith("250"):
                        rcpts.append(rcpt)
                    await say(reply)
                elif verb == "DATA":
                    reply = self._next("data", self.data_replies)
                    await say(reply)
                    if not reply.startswith("354"):
                        continue
                    body = []
                    while True:
                        raw = await reader.readline()
                        if not raw:
                            return
                        if self.misbehave.get("data-body") and len(body) == 1:
                            if await self._misbehave("data-body", writer):
                                return
                        if raw == b".\r\n":
                            break
                        body.append(raw[1:] if raw.startswith(b".") else raw)
                    final = self._next("final", self.final_replies)
                    if final.startswith("250"):
                        self.transactions.append((mail_from, rcpts, b"".join(body)))
                    await say(final)
                    mail_from, rcpts = None, []
                elif verb == "RSET":
                    mail_from, rcpts = None, []
                    await say("250 2.0.0 ok")
                elif verb == "NOOP":
                    await say("250 2.0.0 ok")
                elif verb == "QUIT":
                    await say("221 2.0.0 bye")
                    writer.close()
                    return
                else:
                    await say("502 5.5.2 command not recognized")
        except (ConnectionError, asyncio.CancelledError):
            writer.close()
