"""Segment files (MAIL_STORE_SEGMENT_MAX): many bodies per file, durable per batch, freed per body, collected per file."""

from __future__ import annotations

import os
import poplib
import smtplib
import threading
import time

import pytest

from mailcore.models import Message
from mailcore.services.accounts import add_domain, add_mailbox
from mailcore.services.bodies import collect_orphans
from mailcore.store import message_store, segments
from tests.pop3_support import start_pop3
from tests.sockets import wait_until
from tests.store_support import files_under

GRACE = 3600


def message(size: int, tag: str = "sized") -> bytes:
    head = f"From: a@remote.test\r\nTo: bob@b.test\r\nSubject: {tag}\r\n\r\n".encode()
    line = b"x" * 76 + b"\r\n"
    return head + line * max(0, (size - len(head)) // len(line))


def read_segment(mail_store, ref: str) -> bytes:
    name, _offset, _length = segments.parse(ref)
    return (mail_store / name).read_bytes()


@pytest.mark.django_db
def test_a_batch_goes_to_one_segment_in_order_and_a_large_body_to_a_file_of_its_own(mail_store, settings):
    settings.MAIL_STORE_SEGMENT_MAX = 4096
    bodies = [message(1000, "one"), [b"Received: x\r\n", message(2000, "two")], message(9000, "large"), message(10, "three")]
    stored = message_store().put_many(bodies)
    refs = [s.ref for s in stored]
    assert [r.startswith("seg:") for r in refs] == [True, True, False, True]
    assert len({segments.parse(r)[0] for r in refs if r.startswith("seg:")}) == 1  # one file, one fdatasync
    assert message_store().read(refs[1]) == b"Received: x\r\n" + message(2000, "two")
    assert [message_store().read(r) for r in (refs[0], refs[2], refs[3])] == [bodies[0], bodies[2], bodies[3]]
    assert [s.size for s in stored] == [len(bodies[0]), 13 + len(bodies[1][1]), len(bodies[2]), len(bodies[3])]
    # The segment is exactly the small bodies, back to back: nothing else is in it.
    assert read_segment(mail_store, refs[0]) == bodies[0] + b"".join(bodies[1]) + bodies[3]
    with message_store().open(refs[3]) as f:  # a reader stops at the body's end
        assert f.read() == bodies[3] and f.read() == b""


@pytest.mark.django_db
def test_zero_keeps_every_body_in_a_file_of_its_own(mail_store, settings):
    settings.MAIL_STORE_SEGMENT_MAX = 0
    stored = message_store().put_many([message(100), message(200)])
    assert not any(s.ref.startswith("seg:") for s in stored)
    assert len(files_under(mail_store)) == 2


@pytest.mark.django_db
def test_a_deleted_body_is_freed_and_its_neighbours_are_untouched(mail_store):
    bodies = [message(20000, str(i)) for i in range(3)]
    refs = [s.ref for s in message_store().put_many(bodies)]
    message_store().delete(refs[1])
    assert [message_store().exists(r) for r in refs] == [True, False, True]
    assert [message_store().read(refs[0]), message_store().read(refs[2])] == [bodies[0], bodies[2]]
    assert read_segment(mail_store, refs[1]).count(b"Subject: 1") == 0  # its octets are gone
    name, _offset, _length = segments.parse(refs[1])
    # The whole 4 KiB blocks inside it were deallocated (a hole), not merely zeroed.
    assert os.stat(mail_store / name).st_blocks * 512 <= sum(len(b) for b in bodies) - 3 * 4096


@pytest.mark.django_db
def test_concurrent_batches_of_one_process_never_overlap(mail_store):
    results: list[list[str]] = []

    def batch(i: int) -> None:
        results.append([s.ref for s in message_store().put_many([message(700 + j, f"{i}-{j}") for j in range(20)])])

    threads = [threading.Thread(target=batch, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spans = sorted((segments.parse(r)[0], segments.parse(r)[1], segments.parse(r)[2]) for refs in results for r in refs)
    for (name_a, start_a, length_a), (name_b, start_b, _length_b) in zip(spans, spans[1:], strict=False):
        assert name_a != name_b or start_a + length_a <= start_b
    for refs in results:
        for r in refs:
            assert message_store().read(r).startswith(b"From: a@remote.test")
    assert len({r for refs in results for r in refs}) == 160


@pytest.mark.django_db
def test_storegc_removes_a_segment_once_no_message_refers_to_it(mail_store):
    kept = message_store().put_many([message(100, "kept")])[0]
    Message.objects.create(body_ref=kept.ref, size=kept.size, sha256=kept.sha256, transport="data", verification="unverified")
    segments_in_use = {segments.parse(kept.ref)[0]}
    # A segment of another process whose messages were all deleted (their refs cleared).
    other = segments.SegmentWriter(str(mail_store))
    [orphan_ref], durable = other.begin_append([[message(100, "orphan")]])
    durable.result()
    orphan = segments.parse(orphan_ref)[0]
    assert orphan not in segments_in_use
    assert collect_orphans(grace=GRACE).orphans == []  # fresh: still being appended to, maybe
    past = time.time() - 2 * GRACE
    for name in (orphan, *segments_in_use):
        os.utime(mail_store / name, (past, past))
    assert collect_orphans(grace=GRACE, dry_run=True).orphans == [orphan]
    assert collect_orphans(grace=GRACE).orphans == [orphan]
    assert not (mail_store / orphan).exists()
    assert message_store().read(kept.ref) == message(100, "kept")


@pytest.mark.django_db(transaction=True)
def test_smtp_to_pop3_through_a_segment_and_dele_frees_the_body(mx, server_factory):
    add_domain("b.test")
    add_mailbox("bob@b.test", "pw-bob-1")
    server = mx()
    sent = [message(3000, "first"), message(100_000, "second")]
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        for content in sent:
            assert client.sendmail("a@remote.test", ["bob@b.test"], content) == {}
    refs = list(Message.objects.order_by("id").values_list("body_ref", flat=True))
    assert all(r.startswith("seg:") for r in refs)
    assert not [f for f in files_under(message_store().local_root()) if f.endswith(".eml")]
    client = poplib.POP3("127.0.0.1", start_pop3(server_factory))
    client.user("bob@b.test")
    client.pass_("pw-bob-1")
    for n, content in enumerate(sent, 1):
        _resp, lines, _octets = client.retr(n)
        assert b"\r\n".join(lines).endswith(content.rstrip(b"\r\n"))
    client.dele(1)
    client.quit()
    assert not message_store().exists(refs[0]) and message_store().exists(refs[1])
    assert Message.objects.order_by("id").first().body_ref == ""


@pytest.mark.django_db(transaction=True)
def test_rows_written_while_the_bodies_sync_commit_only_after_the_sync(mail_store, monkeypatch, b_test):
    from mailcore.services import inbound

    syncing, release = threading.Event(), threading.Event()
    real_write = segments.SegmentWriter._write

    def slow_write(self, segment, chunks, start):
        syncing.set()
        release.wait(10)  # the disk is slow to sync
        real_write(self, segment, chunks, start)

    monkeypatch.setattr(segments.SegmentWriter, "_write", slow_write)
    envelope = inbound.Envelope(mail_from="a@remote.test", rcpt_tos=["bob@b.test"])
    outcome: list = []
    receiving = threading.Thread(target=lambda: outcome.extend(inbound.receive_many([(envelope, message(500), None)])))
    receiving.start()
    assert syncing.wait(10)
    # The rows are written in the moment the sync takes, and must not be visible before it ends.
    assert not wait_until(Message.objects.exists, 0.3)
    release.set()
    receiving.join(10)
    assert isinstance(outcome[0], inbound.Receipt)
    [stored] = Message.objects.all()
    assert message_store().read(stored.body_ref).endswith(message(500))


@pytest.fixture
def to_bob_with_failing_sync(mail_store, monkeypatch, b_test):
    """An envelope to a local mailbox, with every segment's fdatasync failing (EIO) until monkeypatch.undo()."""
    from mailcore.services import inbound


    def failing_fdatasync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(segments.os, "fdatasync", failing_fdatasync)
    return inbound.Envelope(mail_from="a@remote.test", rcpt_tos=["bob@b.test"])


@pytest.mark.django_db(transaction=True)
def test_a_failed_sync_commits_no_row_and_frees_the_space(to_bob_with_failing_sync, monkeypatch):
    from mailcore.services import inbound

    envelope = to_bob_with_failing_sync
    [outcome] = inbound.receive_many([(envelope, message(500), None)])
    assert isinstance(outcome, OSError)
    assert not Message.objects.exists()
    monkeypatch.undo()
    # The segment that failed is never written to again.
    after = message_store().put_many([message(100, "after")])[0]
    assert message_store().read(after.ref) == message(100, "after")


@pytest.mark.django_db(transaction=True)
def test_a_lone_batch_is_synced_in_its_own_thread_before_its_rows(mail_store, monkeypatch, b_test):
    from mailcore.services import inbound

    synced_in: list[threading.Thread] = []
    real_fdatasync = segments.os.fdatasync

    def fdatasync(fd):
        synced_in.append(threading.current_thread())
        real_fdatasync(fd)

    monkeypatch.setattr(segments.os, "fdatasync", fdatasync)
    envelope = inbound.Envelope(mail_from="a@remote.test", rcpt_tos=["bob@b.test"])
    staged = inbound.stage_many([(envelope, message(500), None)], sync_here=True)
    assert synced_in == [threading.current_thread()] and not Message.objects.exists()
    assert read_segment(mail_store, staged.staged[0][2].ref).endswith(message(500))
    [receipt] = inbound.commit_staged(staged)
    assert isinstance(receipt, inbound.Receipt) and synced_in == [threading.current_thread()]
    assert message_store().read(Message.objects.get().body_ref).endswith(message(500))


@pytest.mark.django_db(transaction=True)
def test_a_lone_batch_whose_sync_fails_commits_no_row(to_bob_with_failing_sync, monkeypatch):
    from mailcore.services import inbound

    envelope = to_bob_with_failing_sync
    staged = inbound.stage_many([(envelope, message(500), None)], sync_here=True)
    [outcome] = inbound.commit_staged(staged)
    assert isinstance(outcome, OSError) and not Message.objects.exists()
    assert not message_store().exists(staged.staged[0][2].ref)
    monkeypatch.undo()
    after = message_store().put_many([message(100, "after")])[0]
    assert segments.parse(after.ref)[0] != segments.parse(staged.staged[0][2].ref)[0]  # that segment is retired
    assert message_store().read(after.ref) == message(100, "after")
