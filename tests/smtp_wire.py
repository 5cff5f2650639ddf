"""Test helpers for the SMTP listener: a raw-socket client that reads replies as bytes."""

from __future__ import annotations

import smtplib
import socket
import threading
from collections.abc import Callable

from tests.sockets import wait_until


class RawSMTP:
    """A client that sends exactly the bytes it is given and reads whole replies."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0, source: str | None = None):
        # `source`: the client's own address (any 127.0.0.0/8 address works on loopback), to be another client.
        self.sock = socket.create_connection((host, port), timeout=timeout, source_address=(source, 0) if source else None)
        self.file = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> list[bytes]:
        """The lines of one reply, without their CRLF; [] when the server closed."""
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                return lines
            lines.append(line.rstrip(b"\r\n"))
            if line[3:4] != b"-":
                return lines

    def last(self) -> bytes:
        lines = self.reply()
        return lines[-1] if lines else b""

    def cmd(self, line: bytes | str) -> bytes:
        if isinstance(line, str):
            line = line.encode()
        self.send(line + b"\r\n")
        return self.last()

    def greet(self, ehlo: str = "client.test") -> list[bytes]:
        assert self.last().startswith(b"220 ")
        self.send(f"EHLO {ehlo}\r\n".encode())
        return self.reply()

    def closed(self) -> bool:
        """True once the server has closed the connection."""
        try:
            return self.file.readline() == b""
        except (ConnectionResetError, TimeoutError):
            return True

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def __enter__(self) -> RawSMTP:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def starts(reply: bytes, constant) -> bool:
    """Whether a reply line carries the code and enhanced status code of a replies constant."""
    return reply.startswith(constant.prefix.encode() + b" ")


def admitted(port: int, seconds: float = 10.0) -> RawSMTP:
    """A session that got its 220. The fixture's probe, or a session just closed, may still be
    counted against a cap for a moment on a loaded machine (the server has yet to see the close): retry."""
    refused: list[bytes] = []

    def session() -> RawSMTP | None:
        candidate = RawSMTP(port)
        greeting = candidate.last()
        if greeting.startswith(b"220 "):
            return candidate
        candidate.close()
        refused.append(greeting)
        return None

    found = wait_until(session, seconds, interval=0.1)
    assert found, refused[-1:]
    return found


def send_from_many_clients(port: int, clients: int, each: int, content: Callable[[str], bytes], timeout: float = 60) -> list[BaseException]:
    """`clients` smtplib clients at once, each sending `each` messages from alice@remote.test to
    bob@b.test, `content(tag)` with tag c<client>m<message>; what any of them raised."""
    errors: list[BaseException] = []

    def client(n: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=timeout) as c:
                for i in range(each):
                    c.sendmail("alice@remote.test", ["bob@b.test"], content(f"c{n}m{i}"))
        except BaseException as exc:  # reported by the caller, with the count
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors
