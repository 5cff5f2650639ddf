"""Quarantine retention: held mail older than MAIL_QUARANTINE_RETENTION_DAYS is deleted by a schedule."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from django_q.models import Schedule

from mailcore import tasks
from mailcore.models import AuditEntry, Delivery, DeliveryState
from mailcore.services.accounts import add_domain, add_mailbox
from mailcore.services.inbound import Envelope, receive
from mailcore.services.quarantine import expire_held

pytestmark = pytest.mark.django_db


def held(subject: str, age_days: float) -> Delivery:
    content = f"From: <x@forger.test>\r\nTo: <alice@a.test>\r\nSubject: {subject}\r\n\r\nhi\r\n".encode()
    message = receive(Envelope(mail_from="x@forger.test", rcpt_tos=["alice@a.test"], client_address="192.0.2.1"), content).message
    delivery = message.deliveries.get()
    Delivery.objects.filter(pk=delivery.pk).update(delivered_at=timezone.now() - timedelta(days=age_days))
    return delivery


def test_held_mail_past_the_retention_is_deleted_and_logged(settings):
    add_domain("a.test", "quarantine")
    add_mailbox("alice@a.test", "pw")
    old, young = held("Old one", 31), held("Young one", 29)
    released = held("Old released", 40)
    Delivery.objects.filter(pk=released.pk).update(state=DeliveryState.INBOX)
    assert expire_held() == 1
    assert Delivery.objects.get(pk=old.pk).state == DeliveryState.DELETED
    assert Delivery.objects.get(pk=young.pk).state == DeliveryState.QUARANTINED
    assert Delivery.objects.get(pk=released.pk).state == DeliveryState.INBOX  # only held mail expires
    entry = AuditEntry.objects.get()
    assert (entry.action, entry.actor_kind, entry.mailbox) == ("expire", "system", "alice@a.test") and "Old one" in entry.target
    settings.MAIL_QUARANTINE_RETENTION_DAYS = 7
    assert expire_held() == 1 and Delivery.objects.get(pk=young.pk).state == DeliveryState.DELETED


def test_the_digest_and_retention_schedules_are_registered():
    tasks.register_schedules()
    tasks.register_schedules()  # idempotent (update_or_create)
    digest = Schedule.objects.get(name=tasks.DIGEST_SCHEDULE)
    retention = Schedule.objects.get(name=tasks.RETENTION_SCHEDULE)
    assert (digest.func, digest.schedule_type, digest.repeats) == ("mailcore.tasks.send_digests", Schedule.MINUTES, -1)
    assert (retention.func, retention.minutes) == ("mailcore.tasks.expire_quarantine", 60)
    assert 1 <= digest.minutes <= 15
