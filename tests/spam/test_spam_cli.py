"""manage.py spam: showing and setting per-domain thresholds, and scoring a message with a real spamd."""

from __future__ import annotations

import pytest
from django.core.management.base import CommandError

from mailcore.models import Domain
from mailcore.services import accounts
from tests.conftest import child_env, manage
from tests.factories import call_manage
from tests.spamd_server import GTUBE

pytestmark = pytest.mark.django_db


def test_new_domains_have_the_default_thresholds_and_set_changes_them():
    accounts.add_domain("a.test")
    accounts.add_domain("b.test")
    assert call_manage("spam", "thresholds").splitlines() == [
        "a.test\tverified=8\tunverified=3\treject=off",
        "b.test\tverified=8\tunverified=3\treject=off",
    ]
    assert call_manage("spam", "set", "a.test", "--verified", "12.5", "--reject", "20").strip() == (
        "a.test\tverified=12.5\tunverified=3\treject=20"
    )
    call_manage("spam", "set", "a.test", "--unverified", "2")  # leaves the others alone
    domain = Domain.objects.get(name="a.test")
    assert (domain.spam_threshold_verified, domain.spam_threshold_unverified, domain.spam_reject_score) == (12.5, 2.0, 20.0)
    call_manage("spam", "set", "a.test", "--reject", "off")
    assert call_manage("spam", "thresholds", "a.test").strip() == "a.test\tverified=12.5\tunverified=2\treject=off"


@pytest.mark.parametrize(
    "args, error",
    [
        (("spam", "set", "missing.test", "--verified", "5"), "unknown domain missing.test"),
        (("spam", "set", "a.test", "--verified", "nan"), "must be a finite number"),
        (("spam", "thresholds", "missing.test"), "unknown domain missing.test"),
    ],
)
def test_errors_are_one_line(args, error):
    accounts.add_domain("a.test")
    with pytest.raises(CommandError, match=error):
        call_manage(*args)


def test_check_scores_a_message_with_spamd(mail_store, spamd):
    message = f"Subject: test\n\n{GTUBE}\n"
    result = manage("spam", "check", stdin=message, env=child_env(mail_store, MAIL_SPAMD=f"{spamd.host}:{spamd.port}"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("score=100") and "GTUBE" in result.stdout


def test_check_without_spamd_fails_with_one_line(mail_store):
    off = manage("spam", "check", stdin="Subject: x\n\nhi\n", env=child_env(mail_store, MAIL_SPAMD=""))
    assert off.returncode == 1 and "the spam check is off" in off.stderr and "Traceback" not in off.stderr
