"""The queue: claiming without double delivery, deferral with growing delays, bounces as RFC 3464 DSNs."""

from __future__ import annotations

import email
import threading
from datetime import timedelta

import pytest
from django.db import close_old_connections
from django.utils import timezone

from mailcore import tasks
from mailcore.headers import strip_return_path
from mailcore.models import Delivery, QueueItem, QueueState
from mailcore.services import accounts, outbound
from mailcore.store import message_store
from mailcore.workers.outbound_queue import DomainRun
from tests.conftest import free_port
from tests.dkim_support import unsigned
from tests.dnsserver import TestDNSServer
from tests.factories import parse_report
from tests.smtppeer import ScriptedPeer

CONTENT = b"From: alice@a.test\r\nTo: bob@remote.test\r\nSubject: queued\r\nMessage-ID: <q1@a.test>\r\n\r\nbody\r\n"


@pytest.fixture
def remote(settings):
    """remote.test's MX is a scripted peer on 127.0.0.1; gone.test does not exist."""
    port = free_port()
    peer = ScriptedPeer(hostname="mx.remote.test")
    with TestDNSServer({"remote.test": {"MX": [(10, "mx.remote.test")]}, "mx.remote.test": {"A": ["127.0.0.1"]}}) as dns:
        settings.MAIL_DNS_SERVERS = [(dns.host, dns.port)]
        settings.MAIL_DNS_TIMEOUT = 2.0
        settings.MAIL_REMOTE_SMTP_PORT = port
        settings.MAIL_ALLOW_PRIVATE_DESTINATIONS = True
        settings.MAIL_SMTP_CLIENT_TIMEOUT = 2.0
        settings.MAIL_HOSTNAME = "mx.a.test"
        peer.start("127.0.0.1", port)
        yield peer
        peer.stop()


def submit(*rcpts, sender="alice@a.test", content=CONTENT):
    return outbound.submit(outbound.Submission(mail_from=sender, rcpt_tos=list(rcpts), authenticated_as=sender), content)


def inbox(address):
    return [message_store().read(d.message.body_ref) for d in Delivery.objects.filter(mailbox__address=address).select_related("message")]


def run(domain):
    return DomainRun(domain).run()


@pytest.mark.django_db
def test_submission_queues_remote_and_delivers_local(alice, remote):
    accounts.add_mailbox("carol@a.test", "pw")
    receipt = submit("bob@remote.test", "carol@a.test")
    assert receipt.delivered == ["carol@a.test"] and receipt.queued == ["bob@remote.test"]
    [item] = QueueItem.objects.all()
    assert item.state == QueueState.QUEUED and item.domain == "remote.test"
    counts = run("remote.test")
    assert counts.sent == 1
    item.refresh_from_db()
    assert item.state == QueueState.SENT and item.last_reply == "250 2.0.0 queued" and item.claimed_until is None
    [(mail_from, rcpts, body)] = remote.transactions
    assert (mail_from, rcpts) == ("alice@a.test", ["bob@remote.test"])
    assert unsigned(body).startswith(b"Received: from ") and body.endswith(CONTENT)
    assert b"by mx.a.test with ESMTPSA" in body
    assert inbox("carol@a.test")[0].endswith(CONTENT)


@pytest.mark.django_db
def test_unknown_local_recipient_is_refused(alice):
    with pytest.raises(outbound.SubmissionError) as err:
        submit("nobody@a.test")
    assert err.value.reply.startswith("550 5.1.1")


@pytest.mark.django_db
def test_temporary_failure_defers_with_growing_delays_then_delivers(alice, remote, settings):
    settings.MAIL_QUEUE_RETRY_DELAYS = [60, 300, 900]
    remote.final_replies = ["451 4.3.0 greylisted", "421 4.4.2 busy", "250 2.0.0 finally"]
    submit("bob@remote.test")
    item = QueueItem.objects.get()
    started = timezone.now()
    assert run("remote.test").deferred == 1
    item.refresh_from_db()
    assert item.state == QueueState.DEFERRED and item.attempts == 1 and item.last_reply == "451 4.3.0 greylisted"
    assert timedelta(seconds=55) < item.next_attempt_at - started < timedelta(seconds=65)
    assert run("remote.test").sent == 0  # not due yet: nothing claimed
    QueueItem.objects.update(next_attempt_at=timezone.now())
    run("remote.test")
    item.refresh_from_db()
    assert item.attempts == 2 and item.last_reply.startswith("421")
    assert timedelta(seconds=295) < item.next_attempt_at - started < timedelta(seconds=310)
    assert outbound.make_deferred_due() == ["remote.test"]
    assert run("remote.test").sent == 1
    item.refresh_from_db()
    assert item.state == QueueState.SENT and item.attempts == 3


@pytest.mark.django_db
def test_permanent_failure_bounces_at_once_with_a_dsn(alice, remote):
    remote.rcpt_replies = {"gone@remote.test": "550 5.1.1 <gone@remote.test>: no such user"}
    submit("gone@remote.test", "bob@remote.test")
    assert run("remote.test").bounced == 1
    states = dict(QueueItem.objects.values_list("recipient", "state"))
    assert states == {"gone@remote.test": QueueState.BOUNCED, "bob@remote.test": QueueState.SENT}
    [raw] = inbox("alice@a.test")
    report, per_message, [rcpt], headers = parse_report(raw)
    assert report["To"] == "<alice@a.test>" and report["Auto-Submitted"] == "auto-replied"
    assert per_message["Reporting-MTA"] == "dns; mx.a.test"
    assert rcpt["Final-Recipient"] == "rfc822; gone@remote.test"
    assert rcpt["Action"] == "failed" and rcpt["Status"] == "5.1.1"
    assert rcpt["Remote-MTA"] == "dns; mx.remote.test"
    assert "550 5.1.1" in rcpt["Diagnostic-Code"]
    assert headers.get_content_type() == "text/rfc822-headers"
    assert b"Message-ID: <q1@a.test>" in headers.get_payload(decode=True)
    # The bounce itself has a null reverse-path.
    assert raw.startswith(b"Return-Path: <>")


@pytest.mark.django_db
def test_unresolvable_domain_bounces(alice, remote):
    submit("someone@gone.test")
    assert run("gone.test").bounced == 1
    [raw] = inbox("alice@a.test")
    _, _, [rcpt], _ = parse_report(raw)
    assert rcpt["Status"] == "5.1.2" and "does not exist" in rcpt["Diagnostic-Code"]


@pytest.mark.django_db
def test_no_bounce_for_a_null_reverse_path(alice, remote):
    remote.rcpt_replies = {"gone@remote.test": "550 5.1.1 no such user"}
    submit("gone@remote.test", sender="")
    assert run("remote.test").bounced == 1
    assert inbox("alice@a.test") == []
    assert QueueItem.objects.count() == 1  # no notice was queued either


@pytest.mark.django_db
def test_queue_lifetime_ends_in_a_bounce_and_delay_warning_comes_first(alice, remote, settings):
    settings.MAIL_QUEUE_DELAY_WARNING = 3600
    remote.final_replies = ["451 4.3.0 not now"]
    submit("bob@remote.test")
    QueueItem.objects.update(created_at=timezone.now() - timedelta(hours=2))
    run("remote.test")
    [warning] = inbox("alice@a.test")
    _, _, [rcpt], _ = parse_report(warning)
    assert rcpt["Action"] == "delayed" and rcpt["Status"] == "4.3.0" and rcpt["Will-Retry-Until"]
    QueueItem.objects.update(created_at=timezone.now() - timedelta(days=6), next_attempt_at=timezone.now())
    assert run("remote.test").bounced == 1
    assert len(inbox("alice@a.test")) == 2  # the warning is sent once; then the bounce
    bounce = [m for m in inbox("alice@a.test") if m is not warning][-1]
    _, _, [rcpt], _ = parse_report(bounce)
    assert rcpt["Action"] == "failed" and rcpt["Status"] == "4.4.7" and "451 4.3.0 not now" in rcpt["Diagnostic-Code"]


@pytest.mark.django_db
def test_remote_bounce_is_queued_with_a_null_reverse_path(db, remote):
    accounts.add_domain("a.test")
    message = outbound._store_for_queue(outbound.Submission(mail_from="someone@elsewhere.test", rcpt_tos=["x@remote.test"]), CONTENT)
    outbound.enqueue(message, ["x@remote.test"])
    remote.rcpt_replies = {"x@remote.test": "550 5.1.1 no"}
    run("remote.test")
    notice = QueueItem.objects.get(recipient="someone@elsewhere.test")
    assert notice.message.mail_from == "" and notice.state == QueueState.QUEUED


@pytest.mark.django_db(transaction=True)
def test_two_workers_never_claim_the_same_item(alice):
    for n in range(30):
        submit(f"r{n}@remote.test")
    claimed: list[list[int]] = []
    barrier = threading.Barrier(4)

    def worker():
        barrier.wait()
        try:
            mine = []
            while batch := outbound.claim_due("remote.test", limit=3):
                mine.extend(i.pk for i in batch)
            claimed.append(mine)
        finally:
            close_old_connections()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    everything = [pk for mine in claimed for pk in mine]
    assert len(everything) == 30 and len(set(everything)) == 30
    # A lapsed claim becomes due again; the first worker's late result is then ignored.
    item = QueueItem.objects.first()
    stale = item.claimed_until
    QueueItem.objects.filter(pk=item.pk).update(claimed_until=timezone.now() - timedelta(seconds=1))
    [retaken] = [i for i in outbound.claim_due("remote.test") if i.pk == item.pk]
    item.claimed_until = stale
    counts = outbound.record_attempt([item], {item.pk: outbound.Outcome(item.recipient, "250 ok", "2.0.0", delivered=True)})
    assert counts.lost_claims == 1
    assert QueueItem.objects.get(pk=item.pk).claimed_until == retaken.claimed_until


@pytest.mark.django_db
def test_sweep_schedule_is_registered_once_and_enqueues_due_domains(alice, settings):
    from django_q.models import OrmQ, Schedule

    # `migrate` registered it already (post_migrate); registering again changes nothing.
    assert Schedule.objects.filter(name=tasks.QUEUE_SWEEP_SCHEDULE).count() == 1
    tasks.register_schedules()
    tasks.register_schedules()
    [sweep] = Schedule.objects.filter(name=tasks.QUEUE_SWEEP_SCHEDULE)
    assert sweep.func == "mailcore.tasks.deliver_due" and sweep.schedule_type == Schedule.MINUTES
    submit("bob@remote.test", "x@other.test")
    before = OrmQ.objects.count()
    assert tasks.deliver_due() == ["other.test", "remote.test"]
    if not settings.Q_CLUSTER.get("redis"):
        assert OrmQ.objects.count() == before + 2


def test_strip_return_path():
    assert strip_return_path(b"Return-Path: <a@b>\r\nReturn-Path:\r\n <c@d>\r\nSubject: x\r\n\r\n") == b"Subject: x\r\n\r\n"


def test_missing_headers_are_added(settings):
    settings.MAIL_HOSTNAME = "mx.a.test"
    out = outbound.add_missing_headers(b"Subject: x\n\nbody\n", "alice@a.test", add_from=True)
    msg = email.message_from_bytes(out)
    assert msg["From"] == "<alice@a.test>" and msg["Date"] and msg["Message-ID"].endswith("@mx.a.test>")
    assert out.endswith(b"Subject: x\r\n\r\nbody\r\n")
    kept = b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <x@y>\r\n\r\nb\r\n"
    assert outbound.add_missing_headers(kept, "a@b") == kept


@pytest.mark.django_db
@pytest.mark.parametrize(
    "stage,how,reason", [("greeting", "garbage", "garbage"), ("mail", "stall", "timeout"), ("data-body", "close", "closed")]
)
def test_a_misbehaving_server_is_a_deferral_with_the_reason(alice, remote, settings, stage, how, reason):
    settings.MAIL_SMTP_CLIENT_TIMEOUT = 0.5
    remote.misbehave = {stage: how}
    submit("bob@remote.test")
    assert run("remote.test").deferred == 1
    item = QueueItem.objects.get()
    assert item.state == QueueState.DEFERRED and reason in item.last_reply and "mx.remote.test[127.0.0.1]" in item.last_reply


@pytest.mark.django_db
def test_sendmail_refuses_bad_input_with_one_line(alice, monkeypatch):
    import io
    import sys

    from django.core.management import CommandError, call_command

    def sendmail(*args, stdin=b"Subject: x\n\nbody\n"):
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        out = io.StringIO()
        call_command("sendmail", *args, stdout=out)
        return out.getvalue()

    with pytest.raises(CommandError, match="unknown local recipient nobody@a.test"):
        sendmail("-f", "alice@a.test", "nobody@a.test")
    with pytest.raises(CommandError, match="malformed address"):
        sendmail("-f", "alice@a.test", "not an address")
    with pytest.raises(CommandError, match="bad sender"):
        sendmail("-f", "alice@", "bob@remote.test")
    with pytest.raises(CommandError, match="no message"):
        sendmail("-f", "alice@a.test", "bob@remote.test", stdin=b"")
    assert "queued for bob@remote.test" in sendmail("-f", "alice@a.test", "bob@remote.test")
    out = io.StringIO()
    call_command("mailq", stdout=out)
    [line] = out.getvalue().splitlines()
    assert "\tqueued\t0\t" in line and line.endswith("<alice@a.test>\tbob@remote.test\t-")
