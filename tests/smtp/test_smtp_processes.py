"""`runsmtp --processes N`: several processes on one socket, caps shared, supervised."""

from __future__ import annotations

import os
import re
import signal
import smtplib
import socket

import pytest

from mailcore.models import Delivery
from mailcore.smtp.listener import SharedCounts, Spillover
from mailcore.wire import replies
from tests.smtp_wire import RawSMTP, admitted, starts
from tests.sockets import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def send(port: int, tag: str) -> None:
    """One message on a new connection, once one is admitted (see `admitted`: a session just
    closed may still be counted against the client's cap for a moment)."""
    with admitted(port) as session:
        session.cmd("EHLO client.test")
        for command in ("MAIL FROM:<alice@remote.test>", "RCPT TO:<bob@b.test>", "DATA"):
            assert session.cmd(command)[:1] in (b"2", b"3"), command
        assert session.cmd(f"Subject: {tag}\r\n\r\n{tag}\r\n.").startswith(b"250 "), tag


def test_four_processes_share_the_work_and_the_caps(mx, b_test):
    server = mx(MAIL_SMTP_PROCESSES="4", MAIL_SMTP_MAX_CONNECTIONS_PER_CLIENT="3")
    assert wait_until(lambda: len(children(server.proc.pid)) == 4)
    assert server.output().count("listening on 127.0.0.1:") == 1  # said once, by the supervisor
    for n in range(20):
        send(server.port, f"m{n}")
    assert Delivery.objects.filter(mailbox__address="bob@b.test").count() == 20

    # The per-client cap holds for the processes together: whichever process accepts the 4th
    # connection refuses it, though each process holds at most a few of the first three.
    held = [admitted(server.port) for _ in range(3)]
    for _ in range(4):  # any process may take it: try several times
        with RawSMTP(server.port) as extra:
            assert starts(extra.last(), replies.TOO_MANY_CONNECTIONS_FROM_CLIENT)
            assert extra.closed()
    held.pop().close()
    admitted(server.port).close()
    for session in held:
        session.close()


def test_a_process_that_dies_is_started_again_and_its_connections_forgotten(mx, b_test):
    server = mx(MAIL_SMTP_PROCESSES="2", MAIL_SMTP_MAX_CONNECTIONS_PER_CLIENT="4")
    assert wait_until(lambda: len(children(server.proc.pid)) == 2)
    held = [admitted(server.port) for _ in range(4)]
    first = children(server.proc.pid)
    for pid in first:
        os.kill(pid, signal.SIGKILL)  # the sessions held die with them, counts and all
    assert wait_until(lambda: len(children(server.proc.pid)) == 2 and not set(children(server.proc.pid)) & set(first))
    for session in held:
        session.close()
    # Had the dead processes' counts stayed, this client would be at its cap of 4.
    sessions = [admitted(server.port) for _ in range(4)]
    for session in sessions:
        session.close()
    send(server.port, "after restart")
    assert Delivery.objects.filter(mailbox__address="bob@b.test").count() == 1
    assert "starting it again" in server.output()


def test_killing_the_supervisor_takes_the_processes_with_it(mx, b_test):
    server = mx(MAIL_SMTP_PROCESSES="2")
    assert wait_until(lambda: len(children(server.proc.pid)) == 2)
    pids = children(server.proc.pid)
    server.proc.kill()  # SIGKILL: no chance to pass anything on
    server.proc.wait()
    assert wait_until(lambda: not any(os.path.exists(f"/proc/{pid}") and _alive(pid) for pid in pids))
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def catches_sigterm(pid: int) -> bool:
    """Whether process `pid` has a handler of its own for SIGTERM (its SigCgt mask in /proc)."""
    with open(f"/proc/{pid}/status") as f:
        caught = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    return bool(caught & 1 << (signal.SIGTERM - 1))


def test_sigterm_stops_every_process_gracefully(mx, b_test):
    server = mx(MAIL_SMTP_PROCESSES="3")
    assert wait_until(lambda: len(children(server.proc.pid)) == 3)
    pids = children(server.proc.pid)
    # Each has started its event loop, and with it its own SIGTERM handler.
    assert wait_until(lambda: all(catches_sigterm(pid) for pid in pids))
    assert server.stop(signal.SIGTERM) == 0
    assert not any(_alive(pid) for pid in pids)
    assert server.output().count("inbound SMTP (MX) stopped") == 3
    assert "Traceback" not in server.output()


def test_shared_counts_in_one_process():
    counts = SharedCounts(processes=2)
    assert counts.admit("192.0.2.1", max_total=3, max_per_client=2) is None
    assert counts.admit("192.0.2.1", max_total=3, max_per_client=2) is None
    assert counts.admit("192.0.2.1", max_total=3, max_per_client=2) == "client"
    counts.process = 1
    assert counts.admit("192.0.2.2", max_total=3, max_per_client=2) is None
    assert counts.admit("192.0.2.3", max_total=3, max_per_client=2) == "total"
    counts.clear(0)  # process 0 died: its two connections are gone
    assert counts.total() == 1
    assert counts.admit("192.0.2.1", max_total=3, max_per_client=2) is None


def test_unknown_get_ids_are_counted_across_processes(mx):
    server = mx(MAIL_SMTP_PROCESSES="4", MAIL_GET_MAX_UNKNOWN_PER_MINUTE="10")
    assert wait_until(lambda: len(children(server.proc.pid)) == 4)

    def get(source_id: str) -> RawSMTP:
        session = admitted(server.port)
        session.send(b"EHLO guesser.test\r\n")
        session.reply()
        session.send(f"GET {source_id}\r\n".encode())
        return session

    for n in range(10):  # one connection each: the kernel spreads them over the processes
        with get(f"{n:032d}") as session:
            assert starts(session.last(), replies.GET_UNKNOWN)
    for n in range(4):  # whichever process takes the next connection knows the count
        with get(f"{100 + n:032d}") as session:
            assert starts(session.last(), replies.GET_TOO_MANY_UNKNOWN)
            assert session.closed()


def process_ids(server) -> dict[int, int]:
    """The listener processes' pids by index, from their "process N started (pid P)" lines."""
    return {int(m.group(1)): int(m.group(2)) for m in re.finditer(r"process (\d+) started \(pid (\d+)\)", server.output())}


def listening_descriptors(server, index: int) -> int:
    """How many descriptors process `index` holds on the listening socket (in /proc/net/tcp, state 0A)."""
    with open("/proc/net/tcp") as f:
        inodes = {
            fields[9]
            for fields in (line.split() for line in f.readlines()[1:])
            if int(fields[1].split(":")[1], 16) == server.port and fields[3] == "0A"
        }
    pid = process_ids(server)[index]
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}") in {f"socket:[{inode}]" for inode in inodes}
        except FileNotFoundError:
            continue
    return count


def serving_process(server, client: socket.socket) -> int:
    """The index of the process holding the server's end of `client`'s connection, found in
    /proc: the socket's inode by its two ports in /proc/net/tcp, then the process with an open
    file descriptor on it; the indexes from the processes' "process N started (pid P)" lines."""
    client_port = client.getsockname()[1]
    inode = None
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) == server.port and int(fields[2].split(":")[1], 16) == client_port:
                inode = fields[9]
    assert inode is not None
    indexes = {pid: index for index, pid in process_ids(server).items()}
    for pid in children(server.proc.pid):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return indexes[pid]
            except FileNotFoundError:
                continue
    raise AssertionError(f"no process holds the connection from port {client_port}")


def test_a_light_load_stays_in_process_0_and_a_heavy_one_spills_over(mx, b_test):
    server = mx(
        MAIL_SMTP_PROCESSES="2", MAIL_SMTP_MAX_CONNECTIONS_PER_CLIENT="100", MAIL_SMTP_MAX_CONNECTIONS="100"
    )
    assert wait_until(lambda: server.output().count(" started (pid ") == 2)
    # Both event loops run (each has its SIGTERM handler): process 1 stood in until process 0
    # served, and stops accepting (one descriptor on the listening socket: no server of its own).
    assert wait_until(
        lambda: all(catches_sigterm(pid) for pid in process_ids(server).values()) and listening_descriptors(server, 1) == 1
    )
    # One client, one connection after another: all in process 0 (with both accepting, the
    # kernel would hand about half of them to process 1).
    served = []
    for n in range(20):
        with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
            served.append(serving_process(server, client.sock))
            client.sendmail("alice@remote.test", ["bob@b.test"], f"Subject: s{n}\r\n\r\ns{n}\r\n")
    assert served == [0] * 20
    assert Delivery.objects.filter(mailbox__address="bob@b.test").count() == 20

    # Many sessions open at once: process 1 accepts too. Which process wins each accept is the
    # kernel's race: an idle process 0 may win them all, so what is checked is that process 1
    # has its own server on the listening socket (a duplicate of it: two descriptors, not one).
    assert listening_descriptors(server, 1) == 1
    held = [admitted(server.port) for _ in range(40)]
    served = [serving_process(server, session.sock) for session in held]
    assert served[:4] == [0] * 4  # below the threshold, process 1 was not accepting
    assert wait_until(lambda: listening_descriptors(server, 1) == 2)
    for session in held:
        session.close()

    # And once they have gone, process 1 stops accepting again.
    assert wait_until(lambda: listening_descriptors(server, 1) == 1)
    served = []
    for _ in range(10):
        with admitted(server.port) as session:
            served.append(serving_process(server, session.sock))
    assert served == [0] * 10


def test_spillover_starts_at_its_threshold_and_stops_after_lingering_below():
    counts = SharedCounts(processes=3)
    for process in range(3):
        counts.process = process
        counts.set_serving()
    second = Spillover(counts, 2, threshold=4, linger=0.5)  # starts at 8 sessions, stops below 6
    counts.process = 0
    for n in range(7):
        counts.admit(f"192.0.2.{n}", max_total=100, max_per_client=10)
    assert not second.accept(False, now=0.0)
    counts.admit("192.0.2.7", max_total=100, max_per_client=10)
    assert second.accept(False, now=0.0)
    for n in range(2):
        counts.release(f"192.0.2.{n}")
    assert second.accept(True, now=1.0)  # 6: still on
    counts.release("192.0.2.2")
    assert second.accept(True, now=2.0)  # 5: below, lingering
    assert second.accept(True, now=2.4)
    assert not second.accept(True, now=2.6)
    counts.clear(1)  # process 1 died: process 2 stands in for it, whatever the load
    assert second.accept(False, now=3.0)
