"""A scripted origin MX for pull tests: speaks just enough SMTP to answer GETs as a test tells it to."""

from __future__ import annotations

import asyncio
import threading


def stuffed(content: bytes) -> bytes:
    """A message in DATA form (RFC 5321 §4.5.2): dot-stuffed, ended by a line holding only '.'."""
    lines = content.split(b"\r\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines) + b".\r\n"


def body_reply(
    source_id: str, content: bytes, mail_from: str | None = "alice@a.test", rcpt_tos: tuple[str, ...] = ("bob@b.test",)
) -> bytes:
    """A version 2 answer to GET (spec §4): the status line, FROM and TO lines, the message.

    `mail_from=None` leaves the envelope out, as a version 1 origin does.
    """
    lines = [f"2.0.0 {source_id} message follows"]
    if mail_from is not None:
        lines += [f"FROM <{mail_from}>", *(f"TO <{r}>" for r in rcpt_tos)]
    head = "".join(f"250{'-' if i < len(lines) - 1 else ' '}{line}\r\n" for i, line in enumerate(lines))
    return head.encode() + stuffed(content)


class ScriptedOrigin:
    """An asyncio server in its own thread. `answers[id]` are the bytes sent for `GET id` (default
    550); an id in `hang_after` keeps the connection open, silent, after its answer."""

    def __init__(self, answers: dict[str, bytes] | None = None, keywords=("PIPELINING", "SOURCE 2"), host="127.0.0.1",
                 name="mx.origin.test", hang_after=(), pipelined: int = 0, tls=None, answer_delay: float = 0.0):
        self.answers = answers or {}
        self.keywords = list(keywords)
        self.host = host
        self.name = name
        self.hang_after = set(hang_after)
        self.pipelined = pipelined  # GETs to see on the wire behind the first before answering it
        self.tls = tls  # an ssl.SSLContext: offer STARTTLS (RFC 3207)
        self.commands_under_tls: list[str] = []
        self.connections = 0
        self.answer_delay = answer_delay
        self.active = 0
        self.max_active = 0  # the most connections open at once
        self.buffered_before_first_answer = b""
        self.commands: list[str] = []
        self.closed_by_client = threading.Event()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server = None

    def start(self) -> ScriptedOrigin:
        if self._server is None:
            self._server = self._loop.run_until_complete(asyncio.start_server(self._session, self.host, 0))
            self.port = self._server.sockets[0].getsockname()[1]
            self._thread.start()
        return self

    def __enter__(self) -> ScriptedOrigin:
        return self.start()

    def __exit__(self, *exc) -> None:
        async def close():
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    @staticmethod
    async def _pipelined_gets(reader: asyncio.StreamReader, count: int, seconds: float = 5.0) -> bytes:
        """What is on the wire, unread, once `count` more GETs are there (or `seconds` have passed,
        or the client has closed): woken by each arrival, not polled."""

        async def arrived() -> None:
            while reader._buffer.count(b"GET ") < count and not reader.at_eof() and not reader._eof:
                await reader._wait_for_data("pipelined GETs")

        try:
            await asyncio.wait_for(arrived(), seconds)
        except TimeoutError:
            pass
        return bytes(reader._buffer)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            writer.write(f"220 {self.name} ESMTP\r\n".encode())
            secure = False
            while True:
                line = await reader.readline()
                if not line:
                    self.closed_by_client.set()
                    return
                command = line.decode().rstrip("\r\n")
                self.commands.append(command)
                if secure:
                    self.commands_under_tls.append(command)
                verb, _, arg = command.partition(" ")
                verb = verb.upper()
                if verb == "EHLO":
                    lines = [self.name, *self.keywords, *(["STARTTLS"] if self.tls and not secure else [])]
                    writer.write("".join(f"250{'-' if i < len(lines) - 1 else ' '}{text}\r\n" for i, text in enumerate(lines)).encode())
                elif verb == "GET":
                    await asyncio.sleep(self.answer_delay)  # not a wait: a slow origin, as a test asks
                    if self.pipelined:
                        # What the client sent beyond this GET before seeing any answer (RFC 2920).
                        self.buffered_before_first_answer = await self._pipelined_gets(reader, self.pipelined)
                        self.pipelined = 0
                    writer.write(self.answers.get(arg, f"550 5.1.0 {arg} unknown\r\n".encode()))
                    if arg in self.hang_after:
                        await writer.drain()
                        await reader.read()  # silent until the client gives up
                        self.closed_by_client.set()
                        return
                elif verb == "STARTTLS" and self.tls and not secure:
                    writer.write(b"220 2.0.0 Ready to start TLS\r\n")
                    await writer.drain()
                    await writer.start_tls(self.tls)
                    secure = True
                    continue
                elif verb == "QUIT":
                    writer.write(b"221 2.0.0 Bye\r\n")
                    await writer.drain()
                    return
                else:
                    writer.write(b"502 5.5.1 not here\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            self.closed_by_client.set()
        finally:
            self.active -= 1
            writer.close()
