"""Two nodes of a.test on one PostgreSQL, one Redis and one S3 bucket: whatever one node did, the other serves."""

from __future__ import annotations

import poplib
import re
import smtplib
import socket
from email.utils import make_msgid

import pytest

from tests.sockets import wait_until

pytest_plugins = ["tests.s3_server", "tests.cluster"]
# One cluster for this module and test_cluster_faults.py, in one worker (tests/cluster.py).
pytestmark = pytest.mark.xdist_group("cluster")


def message(subject: str, sender: str = "bob@b.test", to: str = "alice@a.test") -> bytes:
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: {make_msgid(domain=sender.partition('@')[2])}\r\n\r\n"
        f".a line with a dot\r\n{subject}\r\n"
    ).encode()


class POP3From(poplib.POP3):
    """poplib from a source address of our choosing: each test is a client of its own to the failure counts."""

    def __init__(self, host: str, port: int, source: str = "127.0.0.1", timeout: float = 20):
        self.source = source
        super().__init__(host, port, timeout=timeout)

    def _create_socket(self, timeout):
        return socket.create_connection((self.host, self.port), timeout, source_address=(self.source, 0))


def pop3_login(node, address: str, source: str = "127.0.0.1") -> POP3From:
    pop = POP3From(node.address, node.pop3_port, source)
    pop.user(address)
    pop.pass_(address.partition("@")[0] + "-password")
    return pop


def subjects(bodies: list[bytes]) -> list[str]:
    return sorted(re.search(rb"^Subject: (.*)$", body, re.M).group(1).decode().strip() for body in bodies)


def test_message_accepted_by_node1_is_read_over_pop3_from_node2(cluster):
    # From a domain of its own: b.test's DATA mail is held once b.test delivered by SOURCE (§5.8).
    sent = message("accepted by node 1", sender="someone@c.test", to="carol@a.test")
    with smtplib.SMTP(cluster.node1.address, cluster.smtp_port, timeout=30) as client:
        client.sendmail("someone@c.test", ["carol@a.test"], sent)
    [stored] = cluster.node1.wait_for_messages("carol@a.test")
    assert stored.endswith(sent)

    pop = pop3_login(cluster.node2, "carol@a.test")
    try:
        _status, lines, _octets = pop.retr(1)
        assert b"\r\n".join(lines) + b"\r\n" == stored
    finally:
        pop.quit()


def test_pop3_session_on_node1_makes_node2_answer_in_use(cluster):
    first = pop3_login(cluster.node1, "dave@a.test")
    try:
        with pytest.raises(poplib.error_proto) as refused:
            pop3_login(cluster.node2, "dave@a.test")
        assert refused.value.args[0].startswith(b"-ERR [IN-USE]")
    finally:
        first.quit()
    pop3_login(cluster.node2, "dave@a.test").quit()  # the lock went with the session


def test_login_failures_are_counted_across_nodes(cluster):
    source = "127.0.0.5"
    for node in (cluster.node1, cluster.node2) * 3:
        with pytest.raises(poplib.error_proto) as wrong:
            pop = POP3From(node.address, node.pop3_port, source)
            pop.user("erin@a.test")
            pop.pass_("not the password")
        if wrong.value.args[0].startswith(b"-ERR [AUTH] too many"):
            break
    # Five failures in all, spread over both nodes, block the address on either.
    for node in cluster.nodes:
        pop = POP3From(node.address, node.pop3_port, source)
        pop.user("erin@a.test")
        with pytest.raises(poplib.error_proto) as blocked:
            pop.pass_("erin-password")
        assert blocked.value.args[0].startswith(b"-ERR [AUTH] too many failed logins")
    pop3_login(cluster.node2, "erin@a.test").quit()  # another client address is not blocked


def test_message_sourced_by_node1_is_fetched_by_b_with_get_from_node2(cluster):
    before = cluster.node2.log_of("runsmtp").count("GET ")
    sent = message("sourced by node 1", sender="alice@a.test", to="bob@b.test")
    cluster.node1.submit("alice@a.test", ["bob@b.test"], sent)
    [delivered] = cluster.b.wait_for_messages("bob@b.test", timeout=60)
    assert b"sourced by node 1" in delivered
    [(verification,)] = cluster.b.query(
        "SELECT m.verification FROM mailcore_message m JOIN mailcore_delivery d ON d.message_id = m.id"
        " JOIN mailcore_mailbox b ON b.id = d.mailbox_id WHERE b.address = %s", ("bob@b.test",)
    )
    assert verification == "verified"
    # b asked a.test's preferred MX, node 2, for the body that node 1's submission stored.
    assert cluster.node2.log_of("runsmtp").count("GET ") == before + 1
    assert "GET " not in cluster.node1.log_of("runsmtp")


def test_queue_items_and_announcements_are_worked_by_both_qclusters_never_twice(cluster):
    outbound, inbound = 10, 10
    for i in range(outbound):
        node = cluster.nodes[i % 2]
        node.submit("alice@a.test", ["bob@b.test"], message(f"out {i}", sender="alice@a.test", to="bob@b.test"))
    for i in range(inbound):
        cluster.b.submit("bob@b.test", ["alice@a.test"], message(f"in {i}", to="alice@a.test"))

    out_subjects = sorted(f"out {i}" for i in range(outbound))
    b_subjects = lambda: [s for s in subjects(cluster.b.messages("bob@b.test")) if s.startswith("out ")]  # noqa: E731
    a_subjects = lambda: subjects(cluster.node1.messages("alice@a.test"))  # noqa: E731
    assert wait_until(lambda: len(b_subjects()) >= outbound, 90), f"{b_subjects()}\n{cluster.b.logs()}"
    assert wait_until(lambda: len(a_subjects()) >= inbound, 90), f"{a_subjects()}\n{cluster.node1.logs()}"
    got_out, got_in = b_subjects(), a_subjects()
    assert got_out == out_subjects  # each once: none lost, none twice
    assert got_in == sorted(f"in {i}" for i in range(inbound))
    # Delivered by SOURCE, and settled once b.test pulled it.
    assert cluster.node1.query("SELECT DISTINCT state FROM mailcore_queueitem") == [("sourced",)]
    assert cluster.node1.query("SELECT DISTINCT state FROM mailcore_announcement") == [("verified",)]

    # Both qclusters took part: one shared queue on Redis, claims in the shared database.
    sourced = [node.log_of("qcluster").count(": SOURCE ") for node in cluster.nodes]
    pulled = [len(re.findall(r"announcement \S+ from <[^>]*> verified: pulled", node.log_of("qcluster"))) for node in cluster.nodes]
    assert sum(sourced) >= outbound and sum(pulled) == inbound, (sourced, pulled)
    assert all(s + p > 0 for s, p in zip(sourced, pulled, strict=True)), (sourced, pulled)
