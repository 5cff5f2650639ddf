"""A scripted peer that lists SOURCE 2: a receiver that answers SOURCE as told, and an origin that serves any GET.

    peer = SourcePeer(source_replies=["451 4.3.0 later", "250 2.6.0 {id} accepted for retrieval"]).start(host, port)
    peer.announced     # [(mail_from, [rcpts], id, reply)] of every SOURCE
    peer.transactions  # [(mail_from, [rcpts], body)] of every DATA
    peer.serves[id] = tests.origin_peer.body_reply(id, b"...", ...)   # the bytes GET id answers (else 550)
    peer.gets          # the ids asked for, in order
    peer.stop()

It never GETs: a test that wants a fetch makes it itself. Reply lists are consumed one per use,
the last entry repeating. After any reply to SOURCE the transaction is over (spec §3). As the
attacker of a test, it records the ids that a real server sources to it and serves whatever
body the test tells it to.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from tests.smtppeer import ThreadedPeer


@dataclass
class SourcePeer(ThreadedPeer):
    hostname: str = "mx.c.test"
    extensions: list[str] = field(default_factory=lambda: ["PIPELINING", "SIZE 10000000", "SOURCE 2"])
    source_replies: list[str] = field(default_factory=lambda: ["250 2.6.0 {id} accepted for retrieval"])

    def __post_init__(self):
        self.serves: dict[str, bytes] = {}
        self.gets: list[str] = []
        self.announced: list[tuple[str, list[str], str, str]] = []
        self.transactions: list[tuple[str, list[str], bytes]] = []
        self.commands: list[str] = []
        self._used = 0

    def _source_reply(self) -> str:
        reply = self.source_replies[min(self._used, len(self.source_replies) - 1)]
        self._used += 1
        return reply

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def say(line: str) -> None:
            writer.write(line.encode() + b"\r\n")
            await writer.drain()

        try:
            await say(f"220 {self.hostname} ESMTP scripted SOURCE receiver")
            mail_from, rcpts = None, []
            while raw := await reader.readline():
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                self.commands.append(line)
                verb, _, arg = line.partition(" ")
                verb = verb.upper()
                if verb == "EHLO":
                    lines = [self.hostname, *self.extensions]
                    for i, text in enumerate(lines):
                        await say(f"250{'-' if i < len(lines) - 1 else ' '}{text}")
                elif verb == "MAIL":
                    mail_from, rcpts = line.split(":", 1)[1].split(">")[0].lstrip(" <"), []
                    await say("250 2.1.0 ok")
                elif verb == "RCPT":
                    rcpts.append(line.split(":", 1)[1].split(">")[0].lstrip(" <"))
                    await say("250 2.1.5 ok")
                elif verb == "SOURCE":
                    reply = self._source_reply().format(id=arg)
                    self.announced.append((mail_from, list(rcpts), arg, reply))
                    mail_from, rcpts = None, []
                    await say(reply)
                elif verb == "DATA":
                    await say("354 go ahead")
                    body = []
                    while (raw := await reader.readline()) and raw != b".\r\n":
                        body.append(raw[1:] if raw.startswith(b".") else raw)
                    self.transactions.append((mail_from, rcpts, b"".join(body)))
                    mail_from, rcpts = None, []
                    await say("250 2.0.0 queued")
                elif verb == "GET":
                    self.gets.append(arg)
                    writer.write(self.serves.get(arg, f"550 5.1.0 {arg} unknown\r\n".encode()))
                    await writer.drain()
                elif verb in ("RSET", "NOOP"):
                    if verb == "RSET":
                        mail_from, rcpts = None, []
                    await say("250 2.0.0 ok")
                elif verb == "QUIT":
                    await say("221 2.0.0 bye")
                    break
                else:
                    await say("502 5.5.2 command not recognized")
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
