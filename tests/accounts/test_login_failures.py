"""Failed logins are counted in the database: every POP3 and submission process sees one count per address."""

from __future__ import annotations

import base64

import pytest

from mailcore.services.login_failures import LoginFailures
from tests.factories import ADDRESS, PASSWORD, Clock, make_mailbox, start_listener
from tests.pop3_support import RawPop3, start_pop3
from tests.smtp_wire import RawSMTP

AUTH_BLOCKED = b"-ERR [AUTH] too many failed logins from your address; try again later"


@pytest.mark.django_db
def test_limit_reached_within_the_window_and_forgotten_after_two():
    clock = Clock(1000.0 * 60 + 30)  # halfway through a bucket
    failures = LoginFailures(limit=3, window=60, clock=clock)
    assert not failures.blocked("192.0.2.1")
    assert failures.record("192.0.2.1") == 1
    assert failures.record("192.0.2.1") == 2
    clock.now += 59  # the next bucket: the earlier failures still count
    assert failures.record("192.0.2.1") == 3
    assert failures.blocked("192.0.2.1")
    assert not failures.blocked("192.0.2.2")  # per address
    assert not failures.blocked("2001:db8::1 with spaces and a very long string" * 10)  # any text is a safe key
    clock.now += 61  # the first two are two buckets back: forgotten; the third still counts
    assert failures.count("192.0.2.1") == 1
    assert not failures.blocked("192.0.2.1")
    clock.now += 120
    assert failures.count("192.0.2.1") == 0


@pytest.mark.django_db
def test_two_counters_share_the_count_through_the_database():
    """What two processes do: separate objects, one table."""
    first, second = LoginFailures(limit=2, window=900), LoginFailures(limit=2, window=900)
    first.record("198.51.100.7")
    assert not second.blocked("198.51.100.7")
    second.record("198.51.100.7")
    assert first.blocked("198.51.100.7")


@pytest.mark.django_db
def test_reservations_stop_at_the_limit_and_a_release_gives_one_back():
    failures = LoginFailures(limit=2, window=900)
    first, second = failures.reserve("192.0.2.9"), failures.reserve("192.0.2.9")
    assert first and second
    assert failures.reserve("192.0.2.9") is None  # a refused reservation counts nothing
    assert failures.count("192.0.2.9") == 2
    failures.release(first)  # that attempt had the right password
    assert failures.count("192.0.2.9") == 1
    assert failures.reserve("192.0.2.9") is not None


@pytest.mark.django_db(transaction=True)
def test_failures_on_one_pop3_process_lock_out_the_other_and_submission(server_factory):
    make_mailbox()
    limits = {"MAIL_AUTH_MAX_FAILURES": "3", "MAIL_AUTH_FAILURE_DELAY": "0.1"}
    first, second = start_pop3(server_factory, **limits), start_pop3(server_factory, **limits)
    smtp_port = start_listener(server_factory, "runsubmission", MAIL_HOSTNAME="mx.a.test", **limits).port
    raw = RawPop3(first)
    for attempt in ("bad1", "bad2"):
        raw.cmd(f"USER {ADDRESS}")
        assert raw.cmd(f"PASS {attempt}") == b"-ERR [AUTH] invalid user name or password"
    raw.close()
    # The third failure is made on the other process, which sees the first two.
    raw = RawPop3(second)
    raw.cmd(f"USER {ADDRESS}")
    assert raw.cmd("PASS bad3") == b"-ERR [AUTH] invalid user name or password"
    assert raw.closed()
    # Now neither process checks even the right password from this address.
    for port in (first, second):
        raw = RawPop3(port)
        raw.cmd(f"USER {ADDRESS}")
        assert raw.cmd(f"PASS {PASSWORD}") == AUTH_BLOCKED
        assert raw.closed()
    # Nor does submission: the same passwords, the same count.
    smtp = RawSMTP(smtp_port)
    smtp.greet("client.a.test")
    token = base64.b64encode(f"\0{ADDRESS}\0{PASSWORD}".encode()).decode()
    assert smtp.cmd(f"AUTH PLAIN {token}") == b"421 4.7.0 Too many failed authentications from your address, try again later"
    assert smtp.file.readline() == b""
    smtp.close()
