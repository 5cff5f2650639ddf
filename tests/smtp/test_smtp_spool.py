"""Large messages are spooled as they arrive: memory that does not grow with the message, the stored
body byte for byte what was sent (by DATA and by GET), and no spool left after an abort."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from mailcore.models import Announcement, AnnouncementState, Message
from mailcore.services import accounts
from mailcore.store import message_store
from mailcore.wire import replies
from mailcore.wire.data import DataReceiver
from mailcore.workers.pull_sweep import run_sweep
from tests.dnsserver import TestDNSServer
from tests.origin_peer import ScriptedOrigin, body_reply
from tests.smtp_wire import RawSMTP, starts
from tests.sockets import peak_rss_kb, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

MB = 1024 * 1024


def message_of_short_lines(subject: bytes, size: int) -> bytes:
    """A message of 2-octet lines (the shape that costs most per octet), with a dot line now and then."""
    block = b"xy\r\n" * 255 + b".dot\r\n"
    return b"Subject: " + subject + b"\r\n\r\n" + block * (size // len(block))


def wire_of(content: bytes) -> bytes:
    """`content` in DATA form: dots stuffed, the final dot (RFC 5321 §4.5.2)."""
    return content.replace(b"\r\n.", b"\r\n..") + b".\r\n"


def spools_open(pid: int, store_root: Path) -> list[str]:
    """The spool files that process `pid` has open: unnamed files in the store's directory."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if target.startswith(str(store_root)) and target.endswith("(deleted)"):
            found.append(target)
    return found


def stored_original(message: Message, content_start: bytes) -> tuple[str, str]:
    """(sha256 of the stored body, sha256 of what follows our trace headers in it), read in chunks."""
    whole, original = hashlib.sha256(), hashlib.sha256()
    found = False
    for chunk in message_store().iter_chunks(message.body_ref, 1024 * 1024):
        whole.update(chunk)
        if not found:
            at = chunk.find(content_start)
            assert at > 0, "the message does not follow our headers in the first chunk"
            found, chunk = True, chunk[at:]
        original.update(chunk)
    return whole.hexdigest(), original.hexdigest()


def send_data(port: int, content: bytes) -> bytes:
    with RawSMTP(port, timeout=120) as c:
        c.greet()
        c.send(b"MAIL FROM:<alice@remote.test>\r\nRCPT TO:<bob@b.test>\r\nDATA\r\n")
        assert [c.last()[:3] for _ in range(3)] == [b"250", b"250", b"354"]
        c.send(wire_of(content))
        return c.last()


def test_memory_does_not_grow_with_the_message_and_the_body_is_stored_exactly(mx, b_test, mail_store):
    server = mx(MAIL_SMTP_PROCESSES="1", MAIL_MAX_MESSAGE_SIZE=str(80 * MB))
    pid = server.proc.pid
    assert starts(send_data(server.port, b"Subject: warm\r\n\r\nhi\r\n"), replies.QUEUED)
    before = peak_rss_kb(pid)
    grown = {}
    for size in (20, 60):
        content = message_of_short_lines(f"big {size}".encode(), size * MB)
        assert starts(send_data(server.port, content), replies.QUEUED)
        grown[size] = (peak_rss_kb(pid) - before) / 1024
        [message] = Message.objects.filter(subject=f"big {size}")
        whole, original = stored_original(message, b"Subject: big")
        # The stored body is our headers, then the message exactly as sent (dots unstuffed).
        assert original == hashlib.sha256(content).hexdigest()
        assert whole == message.sha256 and len(content) < message.size < len(content) + 4096
        del content
    # Held in memory, a 60 MB message would have cost 40 MB more than a 20 MB one.
    assert grown[20] < 16, f"runsmtp grew by {grown[20]:.0f} MB for a 20 MB message"
    assert grown[60] - grown[20] < 8, f"a 60 MB message cost {grown[60]:.0f} MB, a 20 MB one {grown[20]:.0f} MB"
    assert wait_until(lambda: spools_open(pid, mail_store) == []), spools_open(pid, mail_store)


def test_no_spool_is_left_after_rset_a_dropped_connection_a_refusal_or_552(mx, b_test, mail_store):
    server = mx(MAIL_SMTP_PROCESSES="1", MAIL_MAX_MESSAGE_SIZE=str(4 * MB))
    pid = server.proc.pid
    spooling = message_of_short_lines(b"spooled", 2 * MB)  # past the first part kept in memory

    def start_message(c: RawSMTP) -> None:
        c.greet()
        c.send(b"MAIL FROM:<alice@remote.test>\r\nRCPT TO:<bob@b.test>\r\nDATA\r\n")
        assert [c.last()[:3] for _ in range(3)] == [b"250", b"250", b"354"]
        c.send(spooling.replace(b"\r\n.", b"\r\n.."))
        # The test can fail: the spool is there while the message arrives.
        assert wait_until(lambda: len(spools_open(pid, mail_store)) == 1), "no spool while receiving"

    with RawSMTP(server.port, timeout=60) as c:  # the connection drops in the middle of DATA
        start_message(c)
    assert wait_until(lambda: spools_open(pid, mail_store) == []), "spool kept after a dropped connection"

    with RawSMTP(server.port, timeout=60) as c:  # past MAIL_MAX_MESSAGE_SIZE: 552 after the dot
        start_message(c)
        c.send(b"xy\r\n" * (3 * MB // 4))
        assert wait_until(lambda: spools_open(pid, mail_store) == []), "spool kept past the size limit"
        assert starts(c.cmd(b"."), replies.DATA_TOO_BIG)

    with RawSMTP(server.port, timeout=60) as c:  # a bare LF: refused (554), nothing kept
        start_message(c)
        assert starts(c.cmd(b"bare\nlf\r\n."), replies.DATA_BARE_LF)
        assert spools_open(pid, mail_store) == []

    with RawSMTP(server.port, timeout=60) as c:  # accepted, then RSET
        start_message(c)
        assert starts(c.cmd(b"."), replies.QUEUED)
        assert starts(c.cmd("RSET"), replies.OK)
        assert wait_until(lambda: spools_open(pid, mail_store) == []), "spool kept after the message was stored"
    [message] = Message.objects.filter(subject="spooled")
    assert stored_original(message, b"Subject: spooled")[1] == hashlib.sha256(spooling).hexdigest()
    assert not [name for _root, _dirs, files in os.walk(mail_store) for name in files if name.startswith(".tmp-")]


ID = "5" * 32


@pytest.fixture
def dns():
    with TestDNSServer({"a.test": {"MX": [(10, "mx.a.test")]}, "mx.a.test": {"A": ["127.0.0.1"]}}) as server:
        yield server


def test_a_large_pulled_body_is_stored_exactly_and_its_spool_closed(settings, dns, mail_store):
    settings.MAIL_HOSTNAME = "mx.b.test"
    settings.MAIL_DNS_SERVERS = [(dns.host, dns.port)]
    settings.MAIL_ALLOW_PRIVATE_DESTINATIONS = True
    settings.MAIL_CALLBACK_TIMEOUT = 30.0
    accounts.add_domain("b.test")
    accounts.add_mailbox("bob@b.test", "bob-password-1")
    content = b"From: Alice <alice@a.test>\r\n" + message_of_short_lines(b"pulled", 6 * MB)
    Announcement.objects.create(
        source_id=ID, mail_from="alice@a.test", sender_domain="a.test", rcpt_tos=["bob@b.test"],
        client_address="192.0.2.7", helo_name="mx.a.test",
    )
    origin = ScriptedOrigin({ID: body_reply(ID, content)}, name="mx.a.test").start()
    settings.MAIL_REMOTE_SMTP_PORT = origin.port
    with origin:
        run_sweep()
    announcement = Announcement.objects.get(source_id=ID)
    assert announcement.state == AnnouncementState.VERIFIED, announcement.last_error
    whole, original = stored_original(announcement.message, b"From: Alice")
    assert original == hashlib.sha256(content).hexdigest() and whole == announcement.message.sha256
    assert spools_open(os.getpid(), mail_store) == []


def spooled(content: bytes) -> list:
    """`content` as the DATA reader hands a large message on: [first part, SpoolFile]."""
    receiver = DataReceiver(max_size=len(content) * 2)
    wire = wire_of(content)
    for at in range(0, len(wire), 300_000):
        receiver.feed(wire[at:at + 300_000])
    outcome = receiver.outcome()
    assert outcome.problem is None and isinstance(outcome.content, list), outcome
    return outcome.content


@pytest.mark.parametrize("segment_max", [0, 8 * MB])
def test_the_store_copies_a_spool_into_a_file_or_a_segment(mail_store, settings, segment_max):
    from mailcore.store.spool import release

    settings.MAIL_STORE_SEGMENT_MAX = segment_max
    content = message_of_short_lines(b"stored", 3 * MB)
    parts = spooled(content)
    try:
        bodies = message_store().put_many([(b"X-Ours: 1\r\n", *parts), b"Subject: small\r\n\r\nhi\r\n"])
    finally:
        release(parts)
    assert message_store().read(bodies[0].ref) == b"X-Ours: 1\r\n" + content
    assert bodies[0].sha256 == hashlib.sha256(b"X-Ours: 1\r\n" + content).hexdigest()
    assert bodies[0].ref.startswith("seg:") == bool(segment_max)
    assert message_store().read(bodies[1].ref) == b"Subject: small\r\n\r\nhi\r\n"


def test_a_storage_without_local_paths_gets_the_spool_a_chunk_at_a_time(mail_store):
    from django.core.files.base import ContentFile
    from django.core.files.storage import InMemoryStorage

    from mailcore.store.bodies import MessageStore
    from mailcore.store.spool import release

    class ReadingStorage(InMemoryStorage):
        """Reads what it saves with read(size), as an upload in parts does; records the sizes."""

        reads: list[int] = []

        def _save(self, name, content):
            data = b""
            while chunk := content.read(256 * 1024):
                self.reads.append(len(chunk))
                data += chunk
            return super()._save(name, ContentFile(data))

    content = message_of_short_lines(b"uploaded", 3 * MB)
    parts = spooled(content)
    class StoreWithoutPaths(MessageStore):
        def local_root(self):
            return None  # as for S3: no segments, the spool uploaded from where it is

    store = StoreWithoutPaths(ReadingStorage(), segment_max=8 * MB)
    try:
        [body] = store.put_many([(b"X-Ours: 1\r\n", *parts)])
    finally:
        release(parts)
    assert store.read(body.ref) == b"X-Ours: 1\r\n" + content
    assert max(ReadingStorage.reads) <= 256 * 1024 and len(ReadingStorage.reads) > 10


def test_a_spooled_message_is_authenticated_within_the_budget_and_passed_on_past_it(settings):
    from mailcore.authentication.signing import dkim_signatures
    from mailcore.services import inbound
    from mailcore.store.spool import release
    from tests.authentication.test_authentication import MESSAGE, RSA_KEY, published

    records = {"a.test": {"TXT": ["v=spf1 ip4:192.0.2.0/24 -all"]}, "_dmarc.a.test": {"TXT": ["v=DMARC1; p=reject"]}}
    with TestDNSServer(records) as dns_server:
        host, port = dns_server.address.split(":")
        settings.MAIL_AUTH_CHECKS, settings.MAIL_DNS_SERVERS = True, [(host, int(port))]
        key = published(dns_server, "a.test", "rsa1", RSA_KEY)
        envelope = inbound.Envelope("alice@a.test", ["bob@b.test"], client_address="192.0.2.7", helo_name="mx.a.test")
        outcomes = {}
        for name, lines in (("long lines", (b"x" * 900 + b"\r\n") * 3000), ("short lines", b"xy\r\n" * 700_000)):
            message = MESSAGE + lines
            parts = spooled(dkim_signatures(message, "a.test", [key]) + message)
            try:
                outcomes[name] = inbound.authenticate(envelope, parts).authentication
            finally:
                release(parts)
        # 2.7 MB of long lines: read whole and verified. 2.8 MB of 2-octet lines: 64 octets a
        # line for dkimpy's list of lines is past the budget: passed on unchecked, not failed.
        assert [d.result for d in outcomes["long lines"].dkim] == ["pass"]
        assert outcomes["short lines"] is None
        unsigned = spooled(MESSAGE + b"xy\r\n" * 700_000)
        try:
            auth = inbound.authenticate(envelope, unsigned).authentication
        finally:
            release(unsigned)
        # Without a signature the checks read the header block alone: SPF and DMARC still run.
        assert auth is not None and auth.spf.result == "pass" and auth.dkim == [] and auth.dmarc.result == "pass"
