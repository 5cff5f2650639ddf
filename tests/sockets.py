"""Loopback helpers shared by the tests and the benchmarks: a free port, waiting for a listener or a condition."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import time

# A port the kernel hands out (bind to port 0) is free only until the caller closes its socket; a
# server process started afterwards binds it seconds later, and a test in another xdist worker may
# have been handed the same number meanwhile (one test's MX once answered on another's submission
# port). So each worker hands out ports from a block of its own, below the kernel's ephemeral range
# (32768 on Linux), where neither the kernel nor another worker picks them.
PORT_BLOCK_START = 10000
PORT_BLOCK_SIZE = 1500
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
_BLOCKS = (32768 - PORT_BLOCK_START) // PORT_BLOCK_SIZE
_BLOCK = int(_WORKER[2:]) % _BLOCKS if _WORKER.startswith("gw") and _WORKER[2:].isdigit() else 0
_next_ports = itertools.cycle(
    range(PORT_BLOCK_START + _BLOCK * PORT_BLOCK_SIZE, PORT_BLOCK_START + (_BLOCK + 1) * PORT_BLOCK_SIZE)
)


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1", *more_hosts: str) -> int:
    """A TCP port of this worker's block that is free on `host` and on each of `more_hosts`."""
    for _ in range(PORT_BLOCK_SIZE):
        port = next(_next_ports)
        if all(_bindable(h, port) for h in (host, *more_hosts)):
            return port
    raise RuntimeError(f"no free port left in this worker's block on {', '.join((host, *more_hosts))}")


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
