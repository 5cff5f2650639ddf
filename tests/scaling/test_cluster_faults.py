"""The two-node cluster under faults: a node killed under load, Redis restarted, the S3 store hung.

These run after test_cluster.py on the same cluster (one xdist group); each puts back what
it broke, the node-kill test last.
"""

from __future__ import annotations

import re
import signal
import smtplib
import threading
from collections import Counter
from email.utils import make_msgid

import pytest

from tests.sockets import wait_until

pytest_plugins = ["tests.s3_server", "tests.cluster"]
pytestmark = pytest.mark.xdist_group("cluster")


# Plain DATA mail comes from a domain of its own: b.test delivers to a.test by SOURCE in these
# tests, after which its DATA mail is a downgrade (reverse-delivery.md §5.8) and held.
DATA_SENDER = "someone@c.test"


def message(subject: str, sender: str = DATA_SENDER, to: str = "alice@a.test") -> bytes:
    return f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: {make_msgid()}\r\n\r\n{subject}\r\n".encode()


def subjects(cluster, address: str) -> Counter:
    bodies = cluster.node1.messages(address)  # every body read back from the bucket
    return Counter(re.search(rb"^Subject: (.*)$", body, re.M).group(1).decode().strip() for body in bodies)


def submit(node, sender: str, recipient: str, subject: str) -> None:
    node.submit(sender, [recipient], message(subject, sender, recipient))


def test_hung_store_gets_451_and_everything_is_delivered_once_it_is_back(cluster):
    cluster.s3.pause()
    try:
        for node in cluster.nodes:
            with smtplib.SMTP(node.address, cluster.smtp_port, timeout=60) as client:
                with pytest.raises(smtplib.SMTPDataError) as refused:
                    client.sendmail(DATA_SENDER, ["frank@a.test"], message(f"while hung, to {node.name}", to="frank@a.test"))
                assert refused.value.smtp_code == 451 and refused.value.smtp_error.startswith(b"4.3.0")
    finally:
        cluster.s3.resume()
    assert subjects(cluster, "frank@a.test") == Counter()  # never a 250 without a body, nor a row without one
    # The sender tries again later, as an MTA does after a 451: now accepted, and delivered once.
    for node in cluster.nodes:
        with smtplib.SMTP(node.address, cluster.smtp_port, timeout=30) as client:
            client.sendmail(DATA_SENDER, ["frank@a.test"], message(f"while hung, to {node.name}", to="frank@a.test"))
    assert subjects(cluster, "frank@a.test") == Counter({"while hung, to node1": 1, "while hung, to node2": 1})


def test_redis_restarted_mid_run_tasks_resume(cluster):
    before = {f"before {i}" for i in range(3)}
    for i, subject in enumerate(sorted(before)):
        submit(cluster.nodes[i % 2], "alice@a.test", "bob@b.test", subject)
    cluster.redis.stop()
    try:
        # With the broker down a message is still accepted (its queue item is in the database);
        # the queue's sweep sends it once the broker is back.
        submit(cluster.node1, "alice@a.test", "bob@b.test", "during")
    finally:
        cluster.redis.start()
    after = {f"after {i}" for i in range(3)}
    for i, subject in enumerate(sorted(after)):
        submit(cluster.nodes[i % 2], "alice@a.test", "bob@b.test", subject)
    expected = before | after | {"during"}
    wait_until(lambda: expected <= set(_b_subjects(cluster)), 150)
    found = _b_subjects(cluster)
    assert {subject: found[subject] for subject in expected} == dict.fromkeys(expected, 1), f"{found}\n{cluster.node1.logs()}"


def _b_subjects(cluster) -> Counter:
    return Counter(re.search(rb"^Subject: (.*)$", body, re.M).group(1).decode().strip() for body in cluster.b.messages("bob@b.test"))


class Sender(threading.Thread):
    """An MTA for a.test's two MX hosts: each message to the first that answers, the next MX when
    one cannot be reached. A message whose DATA got no reply is not sent again (it may have been
    stored: RFC 5321 §4.1.1.4 leaves that to the sender's duplicate handling), only noted."""

    def __init__(self, name: str, hosts: list[tuple[str, int]], stop: threading.Event):
        super().__init__(name=name, daemon=True)
        self.hosts, self.stop = hosts, stop
        self.acked: list[str] = []
        self.unknown: list[str] = []
        self.refused: list[str] = []

    def run(self) -> None:
        number = 0
        while not self.stop.is_set():
            subject = f"{self.name} {number}"
            number += 1
            self.send(subject, number)

    def send(self, subject: str, number: int) -> None:
        hosts = self.hosts[number % 2 :] + self.hosts[: number % 2]  # alternate the first MX
        for host, port in hosts:
            try:
                client = smtplib.SMTP(host, port, timeout=20)
            except OSError:
                continue  # that MX is down: the next one
            try:
                client.ehlo()
                client.mail(DATA_SENDER)
                client.rcpt("grace@a.test")
                code, _ = client.data(message(subject, to="grace@a.test"))
            except smtplib.SMTPDataError:
                self.refused.append(subject)
                return
            except (OSError, smtplib.SMTPException):
                self.unknown.append(subject)
                return
            finally:
                try:
                    client.close()
                except OSError:
                    pass
            (self.acked if code == 250 else self.refused).append(subject)
            return
        self.refused.append(subject)


def test_node_killed_under_load_every_acknowledged_message_delivered_once(cluster):
    hosts = [(node.address, cluster.smtp_port) for node in cluster.nodes]
    stop = threading.Event()
    senders = [Sender(f"load{i}", hosts, stop) for i in range(4)]
    for sender in senders:
        sender.start()
    victim = cluster.node1.process("runsmtp")
    try:
        assert wait_until(lambda: sum(len(s.acked) for s in senders) >= 20, 30)
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(timeout=10)
        acked_at_kill = sum(len(s.acked) for s in senders)
        assert wait_until(lambda: sum(len(s.acked) for s in senders) >= acked_at_kill + 20, 30)
    finally:
        stop.set()
        for sender in senders:
            sender.join(timeout=30)
    acked = [subject for s in senders for subject in s.acked]
    unknown = [subject for s in senders for subject in s.unknown]
    delivered = subjects(cluster, "grace@a.test")
    assert all(delivered[subject] == 1 for subject in acked), [s for s in acked if delivered[s] != 1]
    assert all(delivered[subject] <= 1 for subject in unknown)
    assert set(delivered) <= set(acked) | set(unknown)  # nothing delivered that was refused
    assert "Traceback" not in cluster.node2.log_of("runsmtp")

    # Node 1 comes back on the same address and takes mail again.
    victim.start(wait=(cluster.node1.address, cluster.smtp_port))
    with smtplib.SMTP(cluster.node1.address, cluster.smtp_port, timeout=30) as client:
        client.sendmail(DATA_SENDER, ["grace@a.test"], message("after the restart", to="grace@a.test"))
    assert subjects(cluster, "grace@a.test")["after the restart"] == 1
