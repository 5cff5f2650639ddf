"""Message bodies in an S3-compatible store (moto's server mode): stored, streamed, collected, and a 451 when it hangs."""

from __future__ import annotations

import poplib
import smtplib
import time

import pytest

from mailcore.models import Message
from mailcore.services.bodies import collect_orphans
from mailcore.store import message_store
from mailcore.store.s3 import ObjectBody
from tests.factories import ADDRESS, PASSWORD, make_mailbox, start_listener
from tests.pop3_support import start_pop3

pytest_plugins = ["tests.s3_server"]


@pytest.fixture
def bucket_store(settings, s3_endpoint):
    """This test process's `mailbodies` storage on a fresh bucket: (endpoint, bucket)."""
    bucket = s3_endpoint.new_bucket()
    settings.STORAGES = {**settings.STORAGES, "mailbodies": s3_endpoint.storage_options(bucket)}
    return s3_endpoint, bucket


def message(subject: str, size: int = 0) -> bytes:
    # Lines of 77 octets, the first starting with a dot: RETR stuffs it and poplib unstuffs it.
    lines = [b".dot first\r\n"] + [b"%075d\r\n" % i for i in range(size // 77)]
    return b"From: bob@b.test\r\nTo: alice@a.test\r\nSubject: " + subject.encode() + b"\r\n\r\n" + b"".join(lines)


@pytest.mark.django_db
def test_each_body_is_an_object_of_its_own_and_read_back_as_a_stream(bucket_store, settings):
    endpoint, bucket = bucket_store
    settings.MAIL_STORE_SEGMENT_MAX = 1 << 20  # segments need local files: ignored on a bucket
    store = message_store()
    small = [b"Received: from x\r\n", b"Subject: one\r\n\r\nbody\r\n"]
    large = b"Subject: two\r\n\r\n" + b"y" * (3 << 20)
    stored = store.put_many([small, large])
    assert endpoint.keys(bucket) == sorted(body.ref for body in stored)
    assert endpoint.get(bucket, stored[0].ref) == b"".join(small)
    assert stored[1].size == len(large)
    with store.open(stored[1].ref) as f:
        assert isinstance(f, ObjectBody)  # the GET's response body, not a downloaded copy
        assert f.read(65536) == large[:65536]
        assert b"".join(f.chunks(1 << 20)) == large[65536:]
    store.delete(stored[0].ref)
    assert not store.exists(stored[0].ref)
    with pytest.raises(FileNotFoundError):
        store.read(stored[0].ref)


@pytest.mark.django_db
def test_garbage_collection_on_a_bucket_removes_old_orphans_only(bucket_store):
    endpoint, bucket = bucket_store
    store = message_store()
    orphan = store.put(b"Subject: orphan\r\n\r\nits row never committed\r\n")
    kept = store.put(b"Subject: kept\r\n\r\nin a mailbox\r\n")
    Message.objects.create(body_ref=kept.ref, size=kept.size, sha256=kept.sha256, transport="data", verification="unverified")
    endpoint.client().put_object(Bucket=bucket, Key="other/readme.txt", Body=b"not ours")

    assert collect_orphans(grace=3600).removed == []  # all younger than the grace period
    result = collect_orphans(grace=-60)  # every object counts as old
    assert result.orphans == [orphan.ref]
    assert endpoint.keys(bucket) == sorted([kept.ref, "other/readme.txt"])


@pytest.mark.django_db(transaction=True)
def test_message_stored_on_s3_read_back_over_pop3_byte_identical(bucket_store, server_factory):
    endpoint, bucket = bucket_store
    make_mailbox()
    env = endpoint.env(bucket)
    smtp_port = start_listener(server_factory, "runsmtp", "--processes", "1", **env).port
    pop3_port = start_pop3(server_factory, **env)
    small, large = message("small"), message("large", 600 * 1024)  # past RETR's one-read size
    with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as smtp:
        for content in (small, large):
            smtp.sendmail("bob@b.test", [ADDRESS], content)

    refs = [ref for (ref,) in Message.objects.order_by("id").values_list("body_ref")]
    assert endpoint.keys(bucket) == sorted(refs)
    pop = poplib.POP3("127.0.0.1", pop3_port, timeout=30)
    try:
        pop.user(ADDRESS)
        pop.pass_(PASSWORD)
        for number, (ref, sent) in enumerate(zip(refs, (small, large), strict=True), start=1):
            stored = endpoint.get(bucket, ref)
            assert stored.endswith(sent)  # our trace headers, then the message as sent
            _status, lines, octets = pop.retr(number)
            assert b"\r\n".join(lines) + b"\r\n" == stored
            assert octets >= len(stored)
    finally:
        pop.quit()


@pytest.mark.django_db(transaction=True)
def test_a_hung_store_gets_451_and_keeps_nothing_then_mail_is_accepted(settings, own_s3_endpoint, server_factory):
    endpoint = own_s3_endpoint
    bucket = endpoint.new_bucket()
    settings.STORAGES = {**settings.STORAGES, "mailbodies": endpoint.storage_options(bucket)}
    make_mailbox()
    smtp_port = start_listener(server_factory, "runsmtp", "--processes", "1", **endpoint.env(bucket, timeout=1.0, attempts=1)).port
    endpoint.pause()
    try:
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=60) as smtp:
            started = time.monotonic()
            with pytest.raises(smtplib.SMTPDataError) as refused:
                smtp.sendmail("bob@b.test", [ADDRESS], message("while the store hangs"))
            waited = time.monotonic() - started
    finally:
        endpoint.resume()
    assert refused.value.smtp_code == 451 and refused.value.smtp_error.startswith(b"4.3.0")
    assert waited < 15  # bounded by MAIL_S3_TIMEOUT, not by the sender's patience
    assert not Message.objects.exists()
    # A PUT that the store took in before it hung may land once it resumes: an orphan that no row
    # names, which the garbage collector removes.
    collect_orphans(grace=-60)
    assert endpoint.keys(bucket) == []

    with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as smtp:
        smtp.sendmail("bob@b.test", [ADDRESS], message("once it is back"))
    [ref] = Message.objects.values_list("body_ref", flat=True)
    assert endpoint.keys(bucket) == [ref]
    assert b"once it is back" in message_store().read(ref)
