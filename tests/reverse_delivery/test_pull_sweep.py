"""The pull side's sweep (spec §5): DNS, the guard, claims, outcomes and delivery, against scripted origins."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone
from django_q.models import Schedule

from mailcore import tasks
from mailcore.models import Announcement, AnnouncementState, Delivery, Message, UnverifiedPolicy
from mailcore.services import accounts, pulls
from mailcore.store import message_store
from mailcore.workers.pull_sweep import run_sweep
from tests.dnsserver import TestDNSServer
from tests.origin_peer import ScriptedOrigin, body_reply

pytestmark = pytest.mark.django_db

ID1, ID2, ID3 = "1" * 32, "2" * 32, "3" * 32
ALIGNED = b"From: Alice <alice@a.test>\r\nTo: bob@b.test\r\nSubject: pulled\r\n\r\nHello Bob.\r\n.dot line\r\n"


@pytest.fixture(scope="module")
def dns():
    with TestDNSServer(
        {
            "a.test": {"MX": [(10, "mx.a.test")]},
            "mx.a.test": {"A": ["127.0.0.1"]},
            "c.test": {"MX": [(10, "mx.a.test")]},
            "nullmx.test": {"MX": [(0, ".")]},
            "noorigin.test": {"MX": [(10, "mx.noorigin.test")]},
            "mx.noorigin.test": {"A": ["127.0.0.1"]},
        }
    ) as server:
        yield server


@pytest.fixture
def receiver(settings, dns):
    """We are mx.b.test: bob@b.test exists, DNS is the test server, callbacks may reach loopback."""
    settings.MAIL_HOSTNAME = "mx.b.test"
    settings.MAIL_DNS_SERVERS = [(dns.host, dns.port)]
    settings.MAIL_DNS_TIMEOUT = 2.0
    settings.MAIL_ALLOW_PRIVATE_DESTINATIONS = True
    settings.MAIL_CALLBACK_TIMEOUT = 1.0
    settings.MAIL_CALLBACK_INTERVAL = 30
    settings.MAIL_CALLBACK_MAX_AGE = 3600
    accounts.add_domain("b.test")
    accounts.add_mailbox("bob@b.test", "bob-password-1")
    return settings


def announce(source_id: str, mail_from: str = "alice@a.test", rcpt_tos=("bob@b.test",), **extra) -> Announcement:
    return Announcement.objects.create(
        source_id=source_id,
        mail_from=mail_from,
        sender_domain=mail_from.rpartition("@")[2],
        rcpt_tos=list(rcpt_tos),
        client_address="192.0.2.7",
        helo_name="mx.a.test",
        **extra,
    )


def origin_for(receiver, answers, **kwargs) -> ScriptedOrigin:
    origin = ScriptedOrigin(answers, name="mx.a.test", **kwargs).start()
    receiver.MAIL_REMOTE_SMTP_PORT = origin.port
    return origin


def bobs_copies() -> list[bytes]:
    return [message_store().read(d.message.body_ref) for d in Delivery.objects.filter(mailbox__address="bob@b.test")]


def test_pulled_body_is_delivered_verified_to_the_recipients_recorded_at_source(receiver):
    announce(ID1, rcpt_tos=["bob@b.test"])
    # The body names another recipient: never delivered to (spec §5.4).
    accounts.add_mailbox("carol@b.test", "carol-password-1")
    origin = origin_for(receiver, {ID1: body_reply(ID1, ALIGNED.replace(b"To: bob@b.test", b"To: carol@b.test"))})
    with origin:
        report = run_sweep()
    a = Announcement.objects.get(source_id=ID1)
    assert a.state == AnnouncementState.VERIFIED and a.attempts == 1
    assert a.origin_host == "mx.a.test [127.0.0.1]" and a.completed_at and a.message
    [copy] = bobs_copies()
    head, _, original = copy.partition(b"Received: ")
    assert original.split(b"\r\n\r\n", 1)[1] != b""
    # Bob's copy is our trace headers, then the original bytes exactly.
    assert copy.endswith(ALIGNED.replace(b"To: bob@b.test", b"To: carol@b.test"))
    assert (
        b"Authentication-Results: mx.b.test; x-source=pass smtp.mailfrom=alice@a.test (retrieved from mx.a.test [127.0.0.1])"
        in copy
    )
    assert b"by mx.b.test with ESMTP" in copy
    assert not Delivery.objects.filter(mailbox__address="carol@b.test").exists()
    assert a.message.transport == "source" and a.message.verification == "verified"
    assert [o.state for o in report.outcomes] == ["verified"] and len(report.connections) == 1


def test_from_of_another_domain_is_delivered_unverified(receiver):
    announce(ID1)
    with origin_for(receiver, {ID1: body_reply(ID1, ALIGNED.replace(b"alice@a.test", b"ceo@bank.test"))}):
        run_sweep()
    a = Announcement.objects.get(source_id=ID1)
    assert a.state == AnnouncementState.UNVERIFIED
    assert "bank.test" in a.last_error
    [copy] = bobs_copies()
    assert b"x-source=neutral smtp.mailfrom=alice@a.test (header.from not aligned)" in copy
    assert a.message.verification == "unverified"


def test_subdomain_from_is_aligned(receiver):
    announce(ID1)
    with origin_for(receiver, {ID1: body_reply(ID1, ALIGNED.replace(b"alice@a.test", b"alice@news.a.test"))}):
        run_sweep()
    assert Announcement.objects.get(source_id=ID1).state == AnnouncementState.VERIFIED


def test_unaligned_body_follows_the_reject_policy_silently(receiver):
    accounts.set_domain("b.test", unverified_policy=UnverifiedPolicy.REJECT)
    announce(ID1)
    with origin_for(receiver, {ID1: body_reply(ID1, ALIGNED.replace(b"alice@a.test", b"ceo@bank.test"))}):
        run_sweep()
    a = Announcement.objects.get(source_id=ID1)
    assert a.state == AnnouncementState.UNVERIFIED and "no recipient accepts it" in a.last_error
    assert bobs_copies() == [] and Message.objects.count() == 0


def test_550_is_a_recorded_forgery_attempt_and_nothing_is_delivered(receiver):
    announce(ID1)
    with origin_for(receiver, {}):
        run_sweep()
    a = Announcement.objects.get(source_id=ID1)
    assert a.state == AnnouncementState.FAILED
    assert f"answered GET with 550 5.1.0 {ID1} unknown" in a.last_error
    assert (a.mail_from, a.client_address, a.helo_name) == ("alice@a.test", "192.0.2.7", "mx.a.test")
    assert bobs_copies() == [] and Message.objects.count() == 0


def test_451_retries_with_growing_delays_then_fails_at_max_age(receiver):
    a = announce(ID1)
    with origin_for(receiver, {ID1: b"451 4.3.0 busy\r\n"}):
        started = timezone.now()
        run_sweep()
        a.refresh_from_db()
        assert a.state == AnnouncementState.PENDING and a.attempts == 1 and "451 4.3.0 busy" in a.last_error
        assert timedelta(seconds=29) < a.next_attempt_at - started < timedelta(seconds=32)
        # Not due yet: a sweep now leaves it alone.
        assert run_sweep().outcomes == []
        Announcement.objects.filter(pk=a.pk).update(next_attempt_at=timezone.now())
        started = timezone.now()
        run_sweep()
        a.refresh_from_db()
        assert a.attempts == 2 and timedelta(seconds=59) < a.next_attempt_at - started < timedelta(seconds=62)
        # Past MAIL_CALLBACK_MAX_AGE: failed, with the last error kept.
        Announcement.objects.filter(pk=a.pk).update(
            received_at=timezone.now() - timedelta(hours=2), next_attempt_at=timezone.now()
        )
        report = run_sweep()
    a.refresh_from_db()
    assert report.expired == 1 and a.state == AnnouncementState.FAILED
    assert "still pending after 3600 s" in a.last_error and "451" in a.last_error


def test_one_connection_for_all_ids_of_a_domain(receiver):
    for source_id in (ID1, ID2, ID3):
        announce(source_id)
    answers = {i: body_reply(i, ALIGNED + i.encode() + b"\r\n") for i in (ID1, ID2, ID3)}
    with origin_for(receiver, answers) as origin:
        report = run_sweep()
    assert origin.connections == 1
    assert sorted(c for c in origin.commands if c.startswith("GET")) == [f"GET {i}" for i in (ID1, ID2, ID3)]
    assert report.tally() == {"verified": 3}
    assert len(bobs_copies()) == 3


@pytest.mark.parametrize("limit", [1, 2])
def test_per_host_concurrency_limit_across_sender_domains(receiver, limit):
    # a.test and c.test share one origin host: at most `limit` connections to it at once.
    receiver.MAIL_CALLBACK_HOST_CONCURRENCY = limit
    announce(ID1)
    announce(ID2, mail_from="carol@c.test")
    answers = {ID1: body_reply(ID1, ALIGNED), ID2: body_reply(ID2, ALIGNED.replace(b"alice@a.test", b"carol@c.test"), "carol@c.test")}
    with origin_for(receiver, answers, answer_delay=0.3) as origin:
        report = run_sweep()
    assert report.tally() == {"verified": 2}
    assert origin.connections == 2 and origin.max_active == limit


def test_origin_without_source_is_temporary(receiver):
    announce(ID1)
    with origin_for(receiver, {ID1: body_reply(ID1, ALIGNED)}, keywords=("PIPELINING",)):
        run_sweep()
    a = Announcement.objects.get(source_id=ID1)
    assert a.state == AnnouncementState.PENDING and "does not list SOURCE" in a.last_error


def test_hanging_origin_is_temporary_and_loses_nothing(receiver):
    announce(ID1)
    partial = f"250 2.0.0 {ID1} message follows\r\n".encode() + b"From: alice@a.test\r\n\r\nhalf\r\n"
    with origin_for(receiver, {ID1: partial}, hang_after=[ID1]):
        run_sweep()
    a = Announcement.objects.get(source_id=ID1)
    assert a.state == AnnouncementState.PENDING and "timed out" in a.last_error
    assert bobs_copies() == []


def test_oversize_body_fails_the_announcement(receiver):
    receiver.MAIL_MAX_MESSAGE_SIZE = 10_000
    announce(ID1)
    with origin_for(receiver, {ID1: body_reply(ID1, ALIGNED + b"y" * 900 + b"\r\n" * 1 + (b"z" * 900 + b"\r\n") * 20)}):
        run_sweep()
    a = Announcement.objects.get(source_id=ID1)
    assert a.state == AnnouncementState.FAILED and "size limit of 10000" in a.last_error
    assert bobs_copies() == []


@pytest.mark.parametrize(
    "domain, reason",
    [
        ("nullmx.test", "null MX"),
        ("nowhere.test", "does not exist"),
    ],
)
def test_sender_domain_that_cannot_send_fails(receiver, domain, reason):
    announce(ID1, mail_from=f"x@{domain}")
    report = run_sweep()
    a = Announcement.objects.get(source_id=ID1)
    assert a.state == AnnouncementState.FAILED and reason in a.last_error
    assert report.connections == []


def test_private_address_guard_gives_a_forger_nothing(receiver):
    receiver.MAIL_ALLOW_PRIVATE_DESTINATIONS = False
    announce(ID1, mail_from="x@noorigin.test")
    with origin_for(receiver, {}) as origin:
        run_sweep()
    assert origin.connections == 0
    a = Announcement.objects.get(source_id=ID1)
    assert a.state == AnnouncementState.FAILED and "loopback, private or reserved" in a.last_error


def test_two_workers_never_hold_the_same_announcement(receiver):
    announce(ID1)
    announce(ID2)
    first = pulls.claim_due("a.test")
    second = pulls.claim_due("a.test")
    assert sorted(c.source_id for c in first) == [ID1, ID2] and second == []
    # A claim that another worker took over (lease lapsed) cannot record anything.
    Announcement.objects.filter(source_id=ID1).update(next_attempt_at=timezone.now())
    [taken_over] = pulls.claim_due("a.test")
    stale = next(c for c in first if c.source_id == ID1)
    assert pulls.record_failed(stale, "late").state == "lost"
    assert pulls.record_failed(taken_over, "550").state == AnnouncementState.FAILED


def test_callbacks_command_lists_and_runs(receiver, capsys):
    announce(ID1)
    announce(ID2)
    with origin_for(receiver, {ID1: body_reply(ID1, ALIGNED)}):
        call_command("callbacks", "--run")
    out = capsys.readouterr().out
    assert "connected a.test -> mx.a.test [127.0.0.1]" in out
    assert f"{ID1}\tverified\tqueue-id=" in out and f"{ID2}\tfailed\t" in out
    assert "sweep: 1 failed, 1 verified; 1 connection(s); 0 expired" in out
    call_command("callbacks")
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "pending: 0  verified: 1  unverified: 0  failed: 1"
    assert f"{ID2}\tfailed" in out and "reason=mx.a.test [127.0.0.1] answered GET with 550" in out
    call_command("callbacks", "--state", "failed")
    assert ID1 not in capsys.readouterr().out


def test_sweep_schedule_is_registered_once_by_name(receiver):
    tasks.register_schedules()
    tasks.register_schedules()
    [schedule] = Schedule.objects.filter(name=tasks.PULL_SWEEP_SCHEDULE)
    assert schedule.func == "mailcore.tasks.sweep" and schedule.minutes == 1 and schedule.repeats == -1
