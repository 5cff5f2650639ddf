"""Login limits that hold under parallel attempts: a failure is counted before the password is checked.

Each test sends 30 wrong logins at once from one address to a real server process whose limit is
5, and counts the runs of its password hasher (tests/counting_hasher.py): at most 5, where a check
of the count followed by a check of the password ran all 30.
"""

from __future__ import annotations

import base64
import smtplib
import threading
import time
from pathlib import Path

import pytest

from mailcore.models import FailureCount
from tests.conftest import wait_until
from tests.factories import ADDRESS, PASSWORD, make_mailbox, start_listener
from tests.pop3_support import RawPop3
from tests.web_client import WebClient, start_web

ATTEMPTS = 30
LIMIT = 5


def limited_env(log: Path) -> dict[str, str]:
    return {
        "DJANGO_SETTINGS_MODULE": "tests.hasher_settings",
        "MAIL_TEST_HASHER_LOG": str(log),
        "MAIL_AUTH_MAX_FAILURES": str(LIMIT),
        "MAIL_AUTH_FAILURE_DELAY": "0.1",
        # Verified credentials are not what is counted here.
        "MAIL_AUTH_CACHE_TTL": "0",
        # All 30 connections at once from one address.
        "MAIL_POP3_MAX_CONNECTIONS_PER_CLIENT": "100",
        "MAIL_SMTP_MAX_CONNECTIONS_PER_CLIENT": "100",
    }


def hasher_runs(log: Path) -> int:
    return log.read_text().count("hash\n") if log.exists() else 0


def at_once(attempt, count: int = ATTEMPTS) -> list:
    """Run `attempt(i)` in `count` threads released together; their results in order."""
    results: list = [None] * count
    barrier = threading.Barrier(count)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = attempt(i)
        except Exception as exc:  # an attempt's error is its result
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


@pytest.mark.django_db(transaction=True)
def test_parallel_wrong_auth_on_submission_checks_at_most_the_limit(server_factory, tmp_path):
    make_mailbox()
    log = tmp_path / "hasher.log"
    port = start_listener(server_factory, "runsubmission", **limited_env(log)).port

    def attempt(i: int):
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as smtp:
            smtp.ehlo("client.a.test")
            token = base64.b64encode(f"\0{ADDRESS}\0wrong{i}".encode()).decode()
            return smtp.docmd("AUTH", f"PLAIN {token}")

    results = at_once(attempt)
    codes = sorted(r[0] for r in results if isinstance(r, tuple))
    assert 1 <= hasher_runs(log) <= LIMIT, codes
    # A failure that reaches the limit is answered 421 and closes, as is every attempt after it.
    assert codes.count(421) + codes.count(535) == ATTEMPTS, results
    assert codes.count(535) < LIMIT
    # The address is locked out: even the right password is not checked.
    runs = hasher_runs(log)
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo("client.a.test")
        token = base64.b64encode(f"\0{ADDRESS}\0{PASSWORD}".encode()).decode()
        assert smtp.docmd("AUTH", f"PLAIN {token}")[0] == 421
    assert hasher_runs(log) == runs


@pytest.mark.django_db(transaction=True)
def test_right_password_gives_its_reservation_back(server_factory, tmp_path):
    """Successful logins are not failures: many of them in a row never lock the address out."""
    make_mailbox()
    log = tmp_path / "hasher.log"
    port = start_listener(server_factory, "runsubmission", **limited_env(log)).port
    for _ in range(LIMIT + 2):
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
            smtp.ehlo("client.a.test")
            assert smtp.login(ADDRESS, PASSWORD)[0] == 235
    assert hasher_runs(log) == LIMIT + 2


@pytest.mark.django_db(transaction=True)
def test_parallel_wrong_pop3_logins_check_at_most_the_limit(server_factory, tmp_path):
    make_mailbox()
    log = tmp_path / "hasher.log"
    port = start_listener(server_factory, "runpop3", **limited_env(log)).port

    def attempt(i: int) -> bytes:
        raw = RawPop3(port, timeout=60)
        try:
            raw.cmd(f"USER {ADDRESS}")
            return raw.cmd(f"PASS wrong{i}")
        finally:
            raw.close()

    results = at_once(attempt)
    assert 1 <= hasher_runs(log) <= LIMIT, results
    failed = [r for r in results if r == b"-ERR [AUTH] invalid user name or password"]
    blocked = [r for r in results if r == b"-ERR [AUTH] too many failed logins from your address; try again later"]
    assert 1 <= len(failed) <= LIMIT and len(failed) + len(blocked) == ATTEMPTS, results


@pytest.mark.django_db(transaction=True)
def test_parallel_wrong_web_sign_ins_check_at_most_the_limit(server_factory, tmp_path):
    make_mailbox()
    log = tmp_path / "hasher.log"
    base = start_web(server_factory, **limited_env(log))
    results = at_once(lambda i: WebClient(base).sign_in(ADDRESS, f"wrong{i}"))
    assert 1 <= hasher_runs(log) <= LIMIT, results
    wrong = [r for r in results if isinstance(r, str) and "Wrong address or password." in r]
    locked = [r for r in results if isinstance(r, str) and "Too many failed sign-ins from your address." in r]
    # A failure that reaches the limit says so too: with all five checked at once, each may.
    assert len(wrong) < LIMIT and len(wrong) + len(locked) == ATTEMPTS, results
    runs = hasher_runs(log)
    assert "Too many failed sign-ins" in WebClient(base).sign_in(ADDRESS, PASSWORD)
    assert hasher_runs(log) == runs


@pytest.mark.django_db(transaction=True)
def test_a_failed_web_sign_in_holds_no_thread_for_the_delay(server_factory):
    """With one request thread and a 5 s failure delay, a page asked for meanwhile is served at once:
    the web sign-in does not sleep in the thread (the mail ports wait on their event loops)."""
    make_mailbox()
    port = start_listener(server_factory, "runweb", "--threads", "1", MAIL_AUTH_FAILURE_DELAY="5").port
    base = f"http://127.0.0.1:{port}"
    client = WebClient(base)
    client.get("/mailbox/login/")
    outcome = {}

    def wrong() -> None:
        started = time.monotonic()
        outcome["page"] = client.post_form("/mailbox/login/", {"address": ADDRESS, "password": "wrong"})
        outcome["took"] = time.monotonic() - started

    guesser = threading.Thread(target=wrong)
    guesser.start()
    assert wait_until(FailureCount.objects.filter(count__gt=0).exists)  # the wrong password is being handled
    started = time.monotonic()
    assert "Sign in to your mailbox" in WebClient(base).get("/mailbox/login/")
    waited = time.monotonic() - started
    guesser.join(60)
    assert "Wrong address or password." in outcome["page"]
    assert outcome["took"] < 5 and waited < 5, (outcome["took"], waited)
