"""The quarantine's people-facing parts in the web UI: the owner's sender lists and sender buttons,
the administrator's sender lists and audit log, and the audit entries every action leaves."""

from __future__ import annotations

import pytest
from django.test import Client

from mailcore.models import AuditEntry, Delivery, DeliveryState, Domain, Message, SenderRule
from mailcore.services import senders
from tests import web_data as w

pytestmark = pytest.mark.django_db


@pytest.fixture
def world():
    w.make_accounts()
    users = w.make_users()
    return {
        "users": users,
        "alice_held": w.unverified("alice@a.test", "Alice held").deliveries.get(),
        "alice_held2": w.unverified("alice@a.test", "Alice second", sender="promo@shop.example").deliveries.get(),
        "bob_held": w.unverified("bob@a.test", "Bob held").deliveries.get(),
    }


def owner(address="alice@a.test") -> Client:
    client = Client(REMOTE_ADDR="198.51.100.7")
    assert client.post("/mailbox/login/", {"address": address, "password": w.PASSWORD}).status_code == 302
    return client


def admin_client(world) -> Client:
    client = Client(REMOTE_ADDR="198.51.100.9")
    client.force_login(world["users"]["superuser"])
    return client


def test_owner_sender_lists_page(world):
    client = owner()
    page = client.get("/mailbox/senders/").content.decode()
    assert "Your lists are empty." in page
    assert client.post("/mailbox/senders/", {"action": "allow", "pattern": "Friend@Example.org"}).status_code == 302
    assert client.post("/mailbox/senders/", {"action": "block", "pattern": "203.0.113.0/24"}).status_code == 302
    bad = client.post("/mailbox/senders/", {"action": "block", "pattern": "not a pattern"})
    assert bad.status_code == 400 and "bad pattern" in bad.content.decode()
    rules = {(r.action, r.pattern, r.scope, r.mailbox.address) for r in SenderRule.objects.all()}
    assert rules == {("allow", "friend@example.org", "mailbox", "alice@a.test"), ("block", "203.0.113.0/24", "mailbox", "alice@a.test")}
    page = client.get("/mailbox/senders/").content.decode()
    assert "friend@example.org" in page and "203.0.113.0/24" in page
    # Bob sees none of it, and cannot remove alice's entries (their ids look like ids that do not exist).
    bob = owner("bob@a.test")
    assert "friend@example.org" not in bob.get("/mailbox/senders/").content.decode()
    rule = SenderRule.objects.get(pattern="friend@example.org")
    assert bob.post(f"/mailbox/senders/{rule.pk}/remove/").status_code == 404
    assert client.post(f"/mailbox/senders/{rule.pk}/remove/").status_code == 302
    assert not SenderRule.objects.filter(pk=rule.pk).exists()
    actions = list(AuditEntry.objects.order_by("id").values_list("actor_kind", "actor", "client_address", "action"))
    assert actions == [
        ("owner", "alice@a.test", "198.51.100.7", "sender-allow"),
        ("owner", "alice@a.test", "198.51.100.7", "sender-block"),
        ("owner", "alice@a.test", "198.51.100.7", "sender-remove"),
    ]


def test_owner_allows_and_blocks_from_the_quarantine(world):
    client = owner()
    home = client.get("/mailbox/").content.decode()
    assert "Always allow sender" in home and "Block sender" in home and "Delete as spam" in home
    assert "Always allow this sender" in client.get(f"/mailbox/message/{world['alice_held'].pk}/").content.decode()
    client.post(f"/mailbox/message/{world['alice_held'].pk}/sender/allow/")
    client.post(f"/mailbox/message/{world['alice_held2'].pk}/sender/block/")
    assert Delivery.objects.get(pk=world["alice_held"].pk).state == DeliveryState.INBOX
    assert Delivery.objects.get(pk=world["alice_held2"].pk).state == DeliveryState.DELETED
    assert set(SenderRule.objects.values_list("action", "pattern", "scope")) == {
        ("allow", "news@forger.example", "mailbox"), ("block", "promo@shop.example", "mailbox"),
    }
    assert senders.rules_for("alice@a.test").decide("promo@shop.example", "") == senders.BLOCK
    assert senders.rules_for("bob@a.test").decide("promo@shop.example", "") is None
    # Another mailbox's message: 404, nothing added.
    assert client.post(f"/mailbox/message/{world['bob_held'].pk}/sender/allow/").status_code == 404
    assert client.post(f"/mailbox/message/{world['alice_held'].pk}/sender/purge/").status_code == 404
    assert SenderRule.objects.count() == 2
    assert client.get(f"/mailbox/message/{world['alice_held'].pk}/sender/allow/").status_code == 405


def test_owner_delete_as_spam_is_audited(world):
    client = owner("bob@a.test")
    client.post(f"/mailbox/delete/{world['bob_held'].pk}/", {"spam": "1"})
    entry = AuditEntry.objects.get()
    assert (entry.action, entry.actor, entry.mailbox) == ("delete-spam", "bob@a.test", "bob@a.test")


def test_admin_sender_lists_and_audit_log(world):
    client = admin_client(world)
    a = Domain.objects.get(name="a.test")
    response = client.post("/admin/mailcore/senderrule/add/", {"action": "block", "pattern": "@Spam.example", "scope": "global"})
    assert response.status_code == 302, response.content.decode()[:2000]
    entry = {"action": "allow", "pattern": "192.0.2.66", "scope": "domain", "domain": a.pk}
    response = client.post("/admin/mailcore/senderrule/add/", entry)
    assert response.status_code == 302
    page = client.post("/admin/mailcore/senderrule/add/", {"action": "allow", "pattern": "x", "scope": "domain"}).content.decode()
    assert "bad pattern" in page and "Choose the domain" in page
    assert set(SenderRule.objects.values_list("action", "pattern", "scope")) == {
        ("block", "@spam.example", "global"), ("allow", "192.0.2.66", "domain"),
    }
    # From the quarantine list: block bob's sender for a.test (and delete the message).
    response = client.post("/admin/mailcore/delivery/", {"action": "block_senders_for_domain", "_selected_action": [world["bob_held"].pk]})
    assert response.status_code == 302
    assert SenderRule.objects.filter(action="block", pattern="news@forger.example", scope="domain", domain=a).exists()
    assert Delivery.objects.get(pk=world["bob_held"].pk).state == DeliveryState.DELETED
    # A policy change and a password change by the administrator.
    client.post(f"/admin/mailcore/mailbox/{world['alice_held'].mailbox_id}/password/",
                {"password1": "a new and long secret", "password2": "a new and long secret"})
    client.post("/admin/mailcore/domain/", {
        "form-TOTAL_FORMS": "2", "form-INITIAL_FORMS": "2", "form-MIN_NUM_FORMS": "0", "form-MAX_NUM_FORMS": "1000",
        "form-0-id": a.pk, "form-0-unverified_policy": "reject", "form-0-active": "on",
        "form-1-id": Domain.objects.get(name="b.test").pk, "form-1-unverified_policy": "accept", "form-1-active": "on",
        "_save": "Save",
    })
    listing = client.get("/admin/mailcore/auditentry/").content.decode()
    for text in ("sender-block", "@spam.example for all domains", "password", "policy", "unverified mail: quarantine -&gt; reject"):
        assert text in listing, text
    filtered = client.get("/admin/mailcore/auditentry/?action__exact=password").content.decode()
    assert "mailbox alice@a.test" in filtered and "@spam.example" not in filtered
    assert AuditEntry.objects.filter(actor_kind="admin", actor="root", client_address="198.51.100.9").count() == 6
    # Read-only: no add, no change, no delete.
    entry = AuditEntry.objects.first()
    assert client.get("/admin/mailcore/auditentry/add/").status_code == 403
    assert client.post(f"/admin/mailcore/auditentry/{entry.pk}/delete/").status_code == 403


def test_audit_entries_outlive_the_message(world):
    client = owner()
    client.post(f"/mailbox/delete/{world['alice_held'].pk}/")
    message = world["alice_held"].message
    Delivery.objects.filter(message=message).delete()
    Message.objects.filter(pk=message.pk).delete()
    entry = AuditEntry.objects.get(action="delete")
    assert message.queue_id in entry.target and "Alice held" in entry.target


def test_admin_quarantine_rows_allow_or_block_the_sender_for_the_domain(world):
    client = admin_client(world)
    listing = client.get("/admin/mailcore/delivery/?state=quarantined").content.decode()
    assert "Allow sender for a.test" in listing and "Block sender for a.test" in listing
    d = world["alice_held2"]
    response = client.post(f"/admin/mailcore/delivery/{d.pk}/sender/allow/", follow=True)
    assert f"Allowed promo@shop.example for a.test. Message {d.pk} released." in response.content.decode()
    assert SenderRule.objects.filter(action="allow", pattern="promo@shop.example", scope="domain", domain__name="a.test").exists()
    assert Delivery.objects.get(pk=d.pk).state == DeliveryState.INBOX
    assert client.post(f"/admin/mailcore/delivery/{d.pk}/sender/purge/").status_code == 404
    assert client.get(f"/admin/mailcore/delivery/{d.pk}/sender/block/").status_code == 405
    viewer = Client()
    viewer.force_login(world["users"]["viewer"])
    assert viewer.post(f"/admin/mailcore/delivery/{world['bob_held'].pk}/sender/block/").status_code == 403
    assert SenderRule.objects.count() == 1
