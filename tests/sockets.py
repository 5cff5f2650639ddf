"""Loopback helpers shared by the tests and the benchmarks: a free port, waiting for a listener or a condition."""

from __future__ import annotations

import socket
import subprocess
import time


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# A Django process starts in seconds, but on a loaded machine (CI beside other jobs) it has taken
# over 30: a process that fails exits, and `proc` reports that at once, so the wait may be long.
START_TIMEOUT = 120.0


def accepts(host: str, port: int) -> bool:
    """Whether something accepts a connection on host:port now."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until(condition, seconds: float = 10.0, interval: float = 0.05):
    """The first true value of `condition()` within `seconds` (polled every `interval`), else that last
    false value. The one way the tests wait for something; to show that something does NOT happen
    within a window, `assert not wait_until(happened, window)`."""
    deadline = time.monotonic() + seconds
    while not (value := condition()) and time.monotonic() < deadline:
        time.sleep(interval)
    return value


def wait_for_port(host: str, port: int, proc: subprocess.Popen | None = None, timeout: float = START_TIMEOUT) -> None:
    """Return once something accepts on host:port; fail early if `proc` exits first."""

    def listening() -> bool:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {host}:{port}")
        return accepts(host, port)

    if not wait_until(listening, timeout):
        raise TimeoutError(f"nothing listens on {host}:{port}")


def peak_rss_kb(pid: int) -> int:
    """The peak resident set size of process `pid` (VmHWM), in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")
