"""Release teaches the filter: with a real `spamd --allow-tell`, releasing spam-held mail reports ham and
"delete as spam" reports spam (spamd's TELL), checked in spamd's Bayes store; without it, learning is off."""

from __future__ import annotations

from email.utils import formatdate

import pytest

from mailcore.models import AuditEntry, Delivery, DeliveryState
from tests.conftest import child_env, manage, require_program
from tests.smtp_wire import RawSMTP
from tests.spamd_server import GTUBE, Spamd

pytestmark = pytest.mark.django_db(transaction=True)


def spam(n: int) -> bytes:
    return (
        "From: Bob <bob@remote.test>\r\nTo: alice@a.test\r\n"
        f"Subject: Cheap watches number {n}\r\nDate: {formatdate(usegmt=True)}\r\nMessage-ID: <gtube-{n}@remote.test>\r\n\r\n"
        f"Buy cheap watches now, offer {n}, limited time.\r\n{GTUBE}\r\n"
    ).encode()


@pytest.fixture(scope="module")
def learning_spamd():
    require_program("spamd")
    require_program("sa-learn")
    server = Spamd(allow_tell=True).start()
    yield server
    server.stop()


def send_spam(port: int, n: int) -> Delivery:
    with RawSMTP(port) as c:
        c.greet()
        assert c.cmd("MAIL FROM:<bob@remote.test>").startswith(b"250 ")
        assert c.cmd("RCPT TO:<alice@a.test>").startswith(b"250 ")
        assert c.cmd("DATA").startswith(b"354")
        c.send(spam(n) + b".\r\n")
        assert c.last().startswith(b"250 ")
    delivery = Delivery.objects.get(message__subject=f"Cheap watches number {n}")
    assert (delivery.state, delivery.reason) == (DeliveryState.QUARANTINED, "spam")
    return delivery


def test_release_reports_ham_and_delete_as_spam_reports_spam(mx, alice, learning_spamd, mail_store):
    address = f"{learning_spamd.host}:{learning_spamd.port}"
    server = mx(MAIL_SPAMD=address)
    env = child_env(mail_store, MAIL_SPAMD=address)
    before = learning_spamd.learned()

    held = send_spam(server.port, 1)
    result = manage("quarantine", "release", str(held.pk), env=env)
    assert result.returncode == 0, result.stderr
    assert "reported to spamd as ham (learned)" in result.stderr
    assert learning_spamd.learned() == {"nspam": before["nspam"], "nham": before["nham"] + 1}
    assert Delivery.objects.get(pk=held.pk).state == DeliveryState.INBOX

    held = send_spam(server.port, 2)
    result = manage("quarantine", "delete", str(held.pk), "--spam", env=env)
    assert result.returncode == 0 and "as spam" in result.stdout, result.stderr
    assert learning_spamd.learned() == {"nspam": before["nspam"] + 1, "nham": before["nham"] + 1}
    # A plain delete says nothing to spamd.
    held = send_spam(server.port, 3)
    assert manage("quarantine", "delete", str(held.pk), env=env).returncode == 0
    assert learning_spamd.learned() == {"nspam": before["nspam"] + 1, "nham": before["nham"] + 1}
    assert list(AuditEntry.objects.order_by("id").values_list("action", "actor_kind")) == [
        ("release", "cli"), ("delete-spam", "cli"), ("delete", "cli"),
    ]


def test_without_allow_tell_release_works_and_the_log_says_learning_is_off(mx, alice, mail_store, spamd):
    # The session's spamd, started without --allow-tell.
    address = f"{spamd.host}:{spamd.port}"
    server = mx(MAIL_SPAMD=address)
    held = send_spam(server.port, 4)
    result = manage("quarantine", "release", str(held.pk), env=child_env(mail_store, MAIL_SPAMD=address))
    assert result.returncode == 0 and f"released {held.pk} to alice@a.test" in result.stdout
    assert "learning is off (spamd runs without --allow-tell" in result.stderr
    assert Delivery.objects.get(pk=held.pk).state == DeliveryState.INBOX
