"""The cost of pulling one large body by GET (reverse-delivery.md §6, "Bounded pulls").

`make bench` (section `pull`) serves the same 25 MB of octets in two shapes, lines of 2 octets
(CRLF alone) and lines of 1,000 (998 and CRLF), from a scripted origin in the bench's own
process, and pulls each in a child process of its own that runs the project's GET client
(`mailcore.reverse_delivery.pull.pull_from_host`, which reads with the DATA reader and checks).
The child reports its CPU time and the growth of its peak resident memory over its state before
the pull; the ratio short/long is taken within one round.

    python bench/pull_body.py PORT ID   (the child; prints one JSON line)
"""

from __future__ import annotations

import asyncio
import json
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIZE = 25 * 1024 * 1024
SOURCE_ID = "b" * 32
SHAPES = {"2-octet lines": 2, "1000-octet lines": 1000}


def body_of(line_octets: int, size: int = SIZE) -> bytes:
    line = b"x" * (line_octets - 2) + b"\r\n"
    head = b"From: alice@a.test\r\nSubject: big\r\n\r\n"
    return head + line * ((size - len(head)) // len(line))


def get_reply(content: bytes) -> bytes:
    """The origin's whole answer to GET: the 250 with the envelope, the message dot-stuffed, the dot."""
    stuffed = content.replace(b"\r\n.", b"\r\n..")
    return (
        f"250-2.0.0 {SOURCE_ID} message follows\r\n250-FROM <alice@a.test>\r\n250 TO <bob@b.test>\r\n".encode()
        + stuffed
        + b".\r\n"
    )


class Origin:
    """Answers EHLO with SOURCE 2 and every GET with `answer`, from an event loop in a thread."""

    def __init__(self, answer: bytes):
        self.answer = answer
        self.loop = asyncio.new_event_loop()
        self.port = 0

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 mx.a.test ESMTP\r\n")
        while line := await reader.readline():
            verb = line.split(b" ", 1)[0].strip().upper()
            if verb == b"EHLO":
                writer.write(b"250-mx.a.test\r\n250-PIPELINING\r\n250 SOURCE 2\r\n")
            elif verb == b"GET":
                writer.write(self.answer)
            elif verb == b"QUIT":
                writer.write(b"221 2.0.0 Bye\r\n")
                await writer.drain()
                break
            await writer.drain()
        writer.close()

    def __enter__(self) -> Origin:
        server = self.loop.run_until_complete(asyncio.start_server(self.session, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


def pull_in_child(port: int) -> dict:
    """Run the child: one GET of the body, measured from inside."""
    result = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), str(port), SOURCE_ID],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )
    if result.returncode:
        raise RuntimeError(f"pull child failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def bench_pull(rounds: int, log, results) -> None:
    answers = {name: get_reply(body_of(octets)) for name, octets in SHAPES.items()}
    for round_no in range(rounds):
        log(f"pull of a 25 MB body, round {round_no + 1} of {rounds}")
        measured = {}
        for name, answer in answers.items():
            with Origin(answer) as origin:
                measured[name] = pull_in_child(origin.port)
            results.add("pull", f"25 MB, {name}: CPU", "s", measured[name]["cpu"])
            results.add("pull", f"25 MB, {name}: peak memory growth", "MiB", measured[name]["rss_growth_kib"] / 1024)
        short, long = measured["2-octet lines"], measured["1000-octet lines"]
        results.ratio("pull", "25 MB, 2-octet lines: CPU", "1000-octet lines", short["cpu"], long["cpu"])
        results.ratio(
            "pull", "25 MB, 2-octet lines: peak memory growth", "1000-octet lines", short["rss_growth_kib"], long["rss_growth_kib"]
        )
    results.note("pull", "25 MB, 2-octet lines: CPU", "target: within 1.5x of long lines")
    results.note("pull", "25 MB, 2-octet lines: peak memory growth", "target: under 16 MiB")


def _peak_rss_kib() -> int:
    """This process's peak resident set (VmHWM); ru_maxrss would carry the parent's across exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _child(port: int, source_id: str) -> None:
    sys.path.insert(0, str(ROOT))
    from mailcore.reverse_delivery.origins import OriginHost
    from mailcore.reverse_delivery.pull import pull_from_host

    got: list = []

    async def on_pulled(pulled) -> None:
        got.append(pulled)

    async def pull() -> None:
        await pull_from_host(
            OriginHost("mx.a.test", "127.0.0.1"), [source_id], on_pulled,
            port=port, helo_name="mx.b.test", timeout=60.0, max_size=SIZE + 1024 * 1024,
        )

    asyncio.run(asyncio.sleep(0))  # the event loop's own allocations are not the pull's
    before, peak_before = resource.getrusage(resource.RUSAGE_SELF), _peak_rss_kib()
    started = time.perf_counter()
    asyncio.run(pull())
    after, peak_after = resource.getrusage(resource.RUSAGE_SELF), _peak_rss_kib()
    [pulled] = got
    if pulled.body is None:
        raise SystemExit(f"no body: {pulled.refusal}")
    print(json.dumps({
        "cpu": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        "wall": time.perf_counter() - started,
        "rss_growth_kib": peak_after - peak_before,
        "octets": len(pulled.body),
    }))


if __name__ == "__main__":
    _child(int(sys.argv[1]), sys.argv[2])
