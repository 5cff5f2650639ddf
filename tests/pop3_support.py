"""What the POP3 tests share: a runpop3 process, a raw POP3 socket, a TLS certificate (mailboxes and mail: tests/factories.py)."""

from __future__ import annotations

import socket

from tests.conftest import free_port, self_signed_cert  # noqa: F401  (re-exported)
from tests.factories import ADDRESS, PASSWORD, start_listener

# Short enough for a fast suite, long enough to be measured.
FAST_ENV = {"MAIL_AUTH_FAILURE_DELAY": "0.3", "MAIL_POP3_SHUTDOWN_GRACE": "3"}


def start_pop3_process(server_factory, *extra_args: str, **env: str):
    """(port, ServerProcess) of a runpop3 on a free loopback port."""
    server = start_listener(server_factory, "runpop3", *extra_args, **{**FAST_ENV, **env})
    return server.port, server


def start_pop3(server_factory, *extra_args: str, **env: str) -> int:
    return start_pop3_process(server_factory, *extra_args, **env)[0]


class RawPop3:
    """A POP3 client that sends and reads exact bytes, for the cases real clients never produce."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buffer = b""
        self.greeting = self.line()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(f"connection closed; unread: {self.buffer!r}")
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def cmd(self, text: str | bytes) -> bytes:
        self.send((text.encode() if isinstance(text, str) else text) + b"\r\n")
        return self.line()

    def multiline(self) -> bytes:
        """The raw bytes of a multi-line response after its status line, terminator excluded."""
        while True:
            if self.buffer.startswith(b".\r\n"):
                body, self.buffer = b"", self.buffer[3:]
                return body
            end = self.buffer.find(b"\r\n.\r\n")
            if end >= 0:
                body, self.buffer = self.buffer[: end + 2], self.buffer[end + 5 :]
                return body
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("connection closed inside a multi-line response")
            self.buffer += data

    def login(self, address: str = ADDRESS, password: str = PASSWORD) -> bytes:
        assert self.cmd(f"USER {address}").startswith(b"+OK")
        return self.cmd(f"PASS {password}")

    def closed(self, timeout: float = 5.0) -> bool:
        """True once the server closed the connection (reads nothing more)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
                self.buffer += data
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()

