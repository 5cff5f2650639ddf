"""The benchmark's baseline: a bare aiosmtpd server that accepts every message and stores nothing.

Run as `python bench/bare_smtp.py HOST PORT`; stops on SIGTERM. What it costs is the floor
that aiosmtpd's own protocol code sets for any server built on it.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from aiosmtpd.smtp import SMTP


class DiscardHandler:
    async def handle_DATA(self, server, session, envelope) -> str:
        return "250 2.0.0 OK, discarded"


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    handler = DiscardHandler()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="bare.bench.test", decode_data=False), host, port, backlog=1024
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"bare aiosmtpd listening on {host}:{port}", flush=True)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], int(sys.argv[2])))
