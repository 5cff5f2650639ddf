"""Two listener nodes of one domain against one, on one PostgreSQL, one Redis and one S3 bucket (docs/scaling.md).

    make bench BENCH_ARGS="--only nodes"     # a section of the runner (bench/run.py)
    .venv/bin/python bench/two_nodes.py [--rounds 3] [--messages 600] [--sessions 8] [--size 10240]

Both nodes (runsmtp and qcluster each, one SMTP process per node so that a node is a core's
worth of listener) share a fresh PostgreSQL database at 127.0.0.1:5432 (trust auth), a
redis-server started for the run on a free port, and a bucket of moto's S3 server on loopback.
Each round sends MESSAGES messages of SIZE octets with smtp-source over SESSIONS sessions to
node 1 alone, then the same split between node 1 and node 2 at once, and takes the ratio of the
two rates within the round: on one machine the point is that nothing serialises across nodes
(the database, the broker, the bucket), not a doubling. Every message must be accepted with 250
and found in the mailbox. Prints median [min-max] and writes var/bench/two_nodes.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import clients, project  # noqa: E402
from bench.project import DOMAIN, SMTP_USER, Process  # noqa: E402
from tests.s3_server import start_s3_endpoint  # noqa: E402
from tests.sockets import free_port, wait_for_port  # noqa: E402

NODES = ["127.0.0.2", "127.0.0.12"]
RECIPIENT = f"{SMTP_USER}@{DOMAIN}"


def start_redis(workdir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--logfile", str(workdir / "redis.log")],
    )
    wait_for_port("127.0.0.1", port, proc=proc, timeout=20)
    return proc, f"redis://127.0.0.1:{port}/0"


def send(targets: list[tuple[str, int]], messages: int, sessions: int, size: int) -> clients.Throughput:
    """smtp-source against every target at once, messages and sessions split evenly; the rate of all."""
    results: list[clients.Throughput | BaseException] = []

    def one(host: str, port: int) -> None:
        try:
            results.append(clients.smtp_source(
                host, port, sessions=max(1, sessions // len(targets)), messages=messages // len(targets), size=size,
                sender="sender@example.test", recipient=RECIPIENT,
            ))
        except BaseException as exc:  # noqa: BLE001  (reported below, from the main thread)
            results.append(exc)

    started = time.perf_counter()
    threads = [threading.Thread(target=one, args=target) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    for result in results:
        if isinstance(result, BaseException):
            raise result
    count = sum(result.count for result in results)
    return clients.Throughput(count, elapsed, count * size)


class Cluster:
    """Two nodes of one domain on a fresh PostgreSQL database, a private redis-server and a moto S3 bucket."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.processes: list[Process] = []
        self.redis, redis_url = start_redis(workdir)
        self.s3 = start_s3_endpoint(workdir / "moto.log")
        self.database = project.PostgresCopy(workdir, "nodes", redis_url)
        self.port = free_port(NODES[0])

    def start(self) -> None:
        env = self.database.create()
        env.update(self.s3.env(self.s3.new_bucket(), timeout=10, attempts=3), MAIL_AUTH_CHECKS="0", MAIL_SMTP_PROCESSES="1")
        for number, address in enumerate(NODES, start=1):
            node_env = {**env, "MAIL_HOSTNAME": f"mx{number}.{DOMAIN}", "MAIL_DATA_DIR": str(self.workdir / f"node{number}")}
            self.processes.append(
                Process.manage(["runsmtp", "--bind", f"{address}:{self.port}"], node_env, self.workdir / f"runsmtp{number}.log")
            )
            self.processes.append(Process.manage(["qcluster"], node_env, self.workdir / f"qcluster{number}.log"))
        for address, process in zip(NODES, self.processes[::2], strict=True):
            wait_for_port(address, self.port, proc=process.proc, timeout=60)

    def stop(self) -> None:
        for process in self.processes:
            process.stop()
        self.database.drop()
        self.s3.stop()
        self.redis.terminate()
        self.redis.wait()


def measure(rounds: int, messages: int, sessions: int, size: int, workdir: Path, log=print) -> dict[str, list[float]]:
    """Per round: the rate of node 1 alone, then of both nodes at once, and their ratio.

    Raises when a message that got its 250 is not in the mailbox.
    """
    cluster = Cluster(workdir)
    try:
        cluster.start()
        port = cluster.port
        measured: dict[str, list[float]] = {"one": [], "two": [], "ratio": [], "load": []}
        warm_up = max(sessions, messages // 10)
        send([(NODES[0], port)], warm_up, sessions, size)
        expected = warm_up
        for round_number in range(1, rounds + 1):
            one = send([(NODES[0], port)], messages, sessions, size)
            two = send([(address, port) for address in NODES], messages, sessions, size)
            expected += one.count + two.count
            measured["one"].append(one.rate)
            measured["two"].append(two.rate)
            measured["ratio"].append(two.rate / one.rate)
            measured["load"].append(os.getloadavg()[0])
            log(f"two nodes, round {round_number} of {rounds}: one node {one.rate:.0f} msg/s, "
                f"two nodes {two.rate:.0f} msg/s, ratio {measured['ratio'][-1]:.2f}")
        stored = cluster.database.count_inbox(RECIPIENT)
        if stored != expected:
            raise RuntimeError(f"{expected} messages were accepted but {stored} are in the mailbox")
        return measured
    finally:
        cluster.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", type=int, default=600)
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--size", type=int, default=10 * 1024)
    args = parser.parse_args()
    measured = measure(args.rounds, args.messages, args.sessions, args.size, Path(tempfile.mkdtemp(prefix="bench-two-nodes-")))

    def summary(values: list[float], unit: str) -> str:
        return f"{statistics.median(values):.2f}{unit} [{min(values):.2f}-{max(values):.2f}]"

    print(f"\n{args.messages} messages of {args.size} octets over {args.sessions} sessions, {args.rounds} rounds:")
    print(f"  one node:   {summary(measured['one'], ' msg/s')}")
    print(f"  two nodes:  {summary(measured['two'], ' msg/s')}")
    print(f"  two / one:  {summary(measured['ratio'], 'x')} (same-round ratios)")
    out = project.ROOT / "var" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "two_nodes.json").write_text(json.dumps({"args": vars(args), **measured}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
