"""The administrator's console on the Django admin: dashboard, quarantine, message view, trace, queue, accounts."""

from __future__ import annotations

import re

import pytest
from django.test import Client

from mailcore.models import Alias, Delivery, DeliveryState, Domain, Mailbox, Message, QueueItem, QueueState
from mailcore.store import message_store
from tests import web_data as w

pytestmark = pytest.mark.django_db

HTML = (
    '<p onclick="steal()">Dear customer, <b>verify</b> your account</p><script>alert(1)</script>'
    '<img src="http://tracker.example/pixel.gif"><form action="http://phish.example/"><input name="pw"></form>'
    '<a href="javascript:alert(2)">here</a> <a href="https://bank.example/">bank</a>'
)


@pytest.fixture
def world():
    w.make_accounts()
    users = w.make_users()
    held = w.unverified("alice@a.test", "Your invoice", html=HTML, attachment=b"%PDF-1.4 " * 100)
    inbox = w.verified("alice@a.test", "Lunch on Friday")
    accepted = w.unverified("carol@b.test", "Newsletter")
    forged = w.forged()
    pending = w.pending()
    deferred = w.queued(inbox)
    return dict(users=users, held=held, inbox=inbox, accepted=accepted, forged=forged, pending=pending, deferred=deferred,
                held_delivery=held.deliveries.get())


def as_user(world, name: str) -> Client:
    client = Client()
    client.force_login(world["users"][name])
    return client


def counts(html: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r'data-count="([\w-]+)">(\d+)<', html)}


# --- dashboard -------------------------------------------------------------------------------


def test_dashboard_counts_and_chart(world):
    page = as_user(world, "superuser").get("/admin/").content.decode()
    got = counts(page)
    for window in (1, 2):  # 24 hours, 7 days
        assert got[f"verified-{window}"] == 1
        assert got[f"unverified-{window}"] == 2
        assert got[f"quarantined-{window}"] == 1
        assert got[f"failed-{window}"] == 1
    assert got["held"] == 1
    assert got["pending"] == 1
    assert (got["queued"], got["deferred"], got["queue-held"], got["bounced"]) == (0, 1, 0, 0)
    # The chart is inline SVG drawn on the server: one bar segment per state present this hour.
    assert '<svg xmlns="http://www.w3.org/2000/svg" class="mail-chart"' in page
    assert 'class="bar-verified"' in page and 'class="bar-unverified"' in page and 'class="bar-failed"' in page
    assert "<script src=\"http" not in page and "cdn" not in page.lower()


def test_dashboard_counts_only_the_window():
    from datetime import timedelta

    from django.utils import timezone

    from mailcore.models import Message
    from mailcore.web import dashboard

    w.make_accounts()
    old = w.verified("alice@a.test", "old news")
    Message.objects.filter(pk=old.pk).update(received_at=timezone.now() - timedelta(days=3))
    day, week = dashboard.window_counts()
    assert (day.verified, week.verified) == (0, 1)
    hours = dashboard.hourly()
    assert len(hours) == 24 and sum(c["verified"] for _, c in hours) == 0


# --- permissions of every console view and action -------------------------------------------------


def admin_urls(world) -> list[tuple[str, str, str]]:
    """(method, url, kind): kind 'view' needs a view permission, 'act' a change/delete permission."""
    held, d = world["held"], world["held_delivery"]
    item = world["deferred"]
    mailbox = Mailbox.objects.get(address="alice@a.test")
    return [
        ("get", "/admin/mailcore/delivery/", "view"),
        ("get", f"/admin/mailcore/message/{held.pk}/change/", "view"),
        ("get", f"/admin/mailcore/message/{held.pk}/raw/", "view"),
        ("get", f"/admin/mailcore/message/{held.pk}/html/", "view"),
        ("get", f"/admin/mailcore/message/{held.pk}/trace/", "view"),
        ("get", "/admin/mailcore/announcement/", "view"),
        ("get", "/admin/mailcore/queueitem/", "view"),
        ("get", "/admin/mailcore/domain/", "view"),
        ("get", "/admin/mailcore/mailbox/", "view"),
        ("get", "/admin/mailcore/alias/", "view"),
        ("get", f"/admin/mailcore/mailbox/{mailbox.pk}/password/", "act"),
        ("post", f"/admin/mailcore/delivery/{d.pk}/release/", "act"),
        ("post", f"/admin/mailcore/delivery/{d.pk}/delete/", "act"),
        ("post", f"/admin/mailcore/queueitem/{item.pk}/retry/", "act"),
        ("post", f"/admin/mailcore/queueitem/{item.pk}/hold/", "act"),
        ("post", f"/admin/mailcore/queueitem/{item.pk}/delete/", "act"),
    ]


def test_anonymous_and_mailbox_owners_are_sent_to_the_admin_login(world):
    owner = Client()
    assert owner.post("/mailbox/login/", {"address": "alice@a.test", "password": w.PASSWORD}).status_code == 302
    for client in (Client(), owner):
        assert client.get("/admin/").status_code == 302
        for method, url, _kind in admin_urls(world):
            response = getattr(client, method)(url)
            assert response.status_code == 302, url
            assert response["Location"].startswith("/admin/login/"), url
    assert Delivery.objects.get(pk=world["held_delivery"].pk).state == DeliveryState.QUARANTINED
    assert QueueItem.objects.get(pk=world["deferred"].pk).state == QueueState.DEFERRED


def test_staff_without_permissions_is_refused_everything(world):
    client = as_user(world, "staff")
    assert client.get("/admin/").status_code == 200  # the index, with no models listed
    for method, url, _kind in admin_urls(world):
        assert getattr(client, method)(url).status_code == 403, url
    assert Delivery.objects.get(pk=world["held_delivery"].pk).state == DeliveryState.QUARANTINED
    assert QueueItem.objects.filter(pk=world["deferred"].pk, state=QueueState.DEFERRED).exists()


def test_view_only_staff_sees_but_cannot_act(world):
    client = as_user(world, "viewer")
    for method, url, kind in admin_urls(world):
        status = getattr(client, method)(url).status_code
        assert status == (200 if kind == "view" else 403), url
    assert Delivery.objects.get(pk=world["held_delivery"].pk).state == DeliveryState.QUARANTINED
    # No release buttons for someone who cannot release.
    page = client.get(f"/admin/mailcore/message/{world['held'].pk}/change/").content.decode()
    assert "mail-release" not in page


def test_superuser_reaches_every_view(world):
    client = as_user(world, "superuser")
    for _method, url, kind in admin_urls(world):
        if kind == "view":
            assert client.get(url).status_code == 200, url
    for url in ("/admin/auth/user/", "/admin/mailcore/mailbox/add/", "/admin/mailcore/domain/add/", "/admin/mailcore/alias/add/",
                "/admin/mailcore/sourcedmessage/"):
        assert client.get(url).status_code == 200, url


def test_unknown_ids_are_404(world):
    client = as_user(world, "superuser")
    for method, url in [("get", "/admin/mailcore/message/999999/change/"), ("get", "/admin/mailcore/message/999999/raw/"),
                        ("get", "/admin/mailcore/message/999999/html/"), ("get", "/admin/mailcore/message/999999/trace/"),
                        ("post", "/admin/mailcore/delivery/999999/release/"), ("post", "/admin/mailcore/delivery/999999/delete/"),
                        ("post", "/admin/mailcore/queueitem/999999/retry/"),
                        ("post", f"/admin/mailcore/queueitem/{world['deferred'].pk}/boom/")]:
        assert getattr(client, method)(url).status_code == 404, url


def test_actions_refuse_get_and_need_csrf(world):
    client = Client(enforce_csrf_checks=True)
    client.force_login(world["users"]["superuser"])
    for method, url, _kind in admin_urls(world):
        if method == "post":
            assert client.get(url).status_code == 405, url
            assert client.post(url).status_code == 403, url  # no CSRF token
    assert Delivery.objects.get(pk=world["held_delivery"].pk).state == DeliveryState.QUARANTINED
    assert QueueItem.objects.get(pk=world["deferred"].pk).state == QueueState.DEFERRED


# --- the quarantine --------------------------------------------------------------------------


def test_quarantine_list_shows_what_an_administrator_needs(world):
    page = as_user(world, "superuser").get("/admin/mailcore/delivery/").content.decode()
    assert "<title>Quarantine" in page
    for text in ("&lt;news@forger.example&gt;", "news@forger.example", "alice@a.test", "Your invoice", "192.0.2.66", "unverified",
                 "Your invoice"):
        assert text in page, text
    assert "Lunch on Friday" not in page and "Newsletter" not in page  # inbox mail is not in the quarantine
    assert f'formaction="/admin/mailcore/delivery/{world["held_delivery"].pk}/release/"' in page


def test_quarantine_filters_and_search(world):
    client = as_user(world, "superuser")
    bob = w.unverified("bob@a.test", "Cheap watches", sender="spam@junk.example")
    a_test = Domain.objects.get(name="a.test")
    bob_box = Mailbox.objects.get(address="bob@a.test")

    def listed(query: str) -> set[str]:
        page = client.get(f"/admin/mailcore/delivery/?{query}").content.decode()
        return {s for s in ("Your invoice", "Cheap watches", "Lunch on Friday", "Newsletter") if s in page}

    assert listed("") == {"Your invoice", "Cheap watches"}
    assert listed(f"mailbox__domain__id__exact={a_test.pk}") == {"Your invoice", "Cheap watches"}
    assert listed(f"mailbox__id__exact={bob_box.pk}") == {"Cheap watches"}
    assert listed("reason=unverified") == {"Your invoice", "Cheap watches"}
    assert listed("q=junk.example") == {"Cheap watches"}
    today = bob.received_at
    assert listed(f"delivered_at__year={today.year}&delivered_at__month={today.month}&delivered_at__day={today.day}") == {
        "Your invoice", "Cheap watches"}
    assert listed("delivered_at__year=2001") == set()
    assert listed("state=inbox") == {"Lunch on Friday", "Newsletter"}
    assert listed("state=all") == {"Your invoice", "Cheap watches", "Lunch on Friday", "Newsletter"}


def test_release_reaches_the_inbox_once_and_a_second_release_is_harmless(world):
    client = as_user(world, "superuser")
    d = world["held_delivery"]
    response = client.post(f"/admin/mailcore/delivery/{d.pk}/release/", {"next": "/admin/mailcore/delivery/?state=quarantined"})
    assert response.status_code == 302 and response["Location"] == "/admin/mailcore/delivery/?state=quarantined"
    d.refresh_from_db()
    assert d.state == DeliveryState.INBOX
    changed_at = d.changed_at
    again = client.post(f"/admin/mailcore/delivery/{d.pk}/release/", follow=True)
    assert again.status_code == 200
    assert "no longer held: nothing to release" in again.content.decode()
    d.refresh_from_db()
    assert (d.state, d.changed_at) == (DeliveryState.INBOX, changed_at)
    assert Delivery.objects.filter(message=world["held"]).count() == 1
    # Delete after release does nothing either: the message stays in the inbox.
    client.post(f"/admin/mailcore/delivery/{d.pk}/delete/")
    assert Delivery.objects.get(pk=d.pk).state == DeliveryState.INBOX


def test_next_may_not_point_elsewhere(world):
    response = as_user(world, "superuser").post(
        f"/admin/mailcore/delivery/{world['held_delivery'].pk}/release/", {"next": "https://evil.example/"})
    assert response["Location"] == "/admin/mailcore/delivery/"


def test_single_delete(world):
    d = world["held_delivery"]
    as_user(world, "superuser").post(f"/admin/mailcore/delivery/{d.pk}/delete/")
    assert Delivery.objects.get(pk=d.pk).state == DeliveryState.DELETED


def test_bulk_release_and_delete(world):
    client = as_user(world, "superuser")
    second = w.unverified("bob@a.test", "Second").deliveries.get()
    third = w.unverified("bob@a.test", "Third").deliveries.get()
    inbox = world["inbox"].deliveries.get()
    response = client.post("/admin/mailcore/delivery/?state=all", {
        "action": "release_selected", "_selected_action": [world["held_delivery"].pk, second.pk, inbox.pk], "index": 0,
    }, follow=True)
    page = response.content.decode()
    assert "Released 2 message(s)." in page and "1 selected message(s) were not held" in page
    assert set(Delivery.objects.filter(pk__in=[world["held_delivery"].pk, second.pk]).values_list("state", flat=True)) == {"inbox"}
    client.post("/admin/mailcore/delivery/", {"action": "delete_selected_held", "_selected_action": [third.pk], "index": 0})
    assert Delivery.objects.get(pk=third.pk).state == DeliveryState.DELETED
    # Django's own "delete selected" (which would remove rows) is not offered.
    assert "delete_selected\"" not in client.get("/admin/mailcore/delivery/").content.decode()


# --- the message view ----------------------------------------------------------------------


def test_message_view_shows_envelope_headers_trail_text_and_attachments(world):
    held = world["held"]
    page = as_user(world, "superuser").get(f"/admin/mailcore/message/{held.pk}/change/").content.decode()
    assert held.queue_id in page
    assert "&lt;news@forger.example&gt;" in page and "mail.forger.example [192.0.2.66]" in page
    assert "SMTP DATA" in page and "x-source=none" in page
    assert "Message-ID" in page and "Return-Path" in page and "Received" in page  # every header
    assert "the quarterly figures are attached." in page
    assert "figures.pdf" in page and "application/pdf" in page and "900 octets" in page
    assert f'src="/admin/mailcore/message/{held.pk}/html/"' in page
    assert 'sandbox="allow-popups allow-popups-to-escape-sandbox"' in page
    # The HTML itself is never put into the console page.
    assert "steal()" not in page and "tracker.example" not in page


def test_verified_message_shows_the_pull(world):
    page = as_user(world, "superuser").get(f"/admin/mailcore/message/{world['inbox'].pk}/change/").content.decode()
    assert "SOURCE / GET" in page and "mx.origin.test" in page and "x-source=pass" in page


def test_html_part_is_sanitized_and_locked_down(world):
    response = as_user(world, "superuser").get(f"/admin/mailcore/message/{world['held'].pk}/html/")
    body = response.content.decode()
    assert "<b>verify</b>" in body and 'href="https://bank.example/"' in body
    for bad in ("<script", "alert(", "onclick", "<img", "tracker.example", "<form", "<input", "javascript:"):
        assert bad not in body, bad
    csp = response["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "sandbox" in csp and "form-action 'none'" in csp and "script-src" not in csp
    assert response["X-Frame-Options"] == "SAMEORIGIN"


def test_html_as_text(world):
    page = as_user(world, "superuser").get(f"/admin/mailcore/message/{world['held'].pk}/change/?html=text").content.decode()
    assert "Dear customer, verify your account" in page and "<iframe" not in page


def test_raw_download_is_the_stored_octets(world):
    held = world["held"]
    response = as_user(world, "superuser").get(f"/admin/mailcore/message/{held.pk}/raw/")
    assert response["Content-Type"] == "message/rfc822"
    assert response["Content-Disposition"] == f'attachment; filename="{held.queue_id}.eml"'
    assert response.content == message_store().read(held.body_ref)


def test_trace_shows_the_timeline(world):
    client = as_user(world, "superuser")
    d = world["held_delivery"]
    client.post(f"/admin/mailcore/delivery/{d.pk}/release/")
    Delivery.objects.filter(pk=d.pk).update(retrieved_at=d.changed_at)
    page = client.get(f"/admin/mailcore/message/{world['held'].pk}/trace/").content.decode()
    for text in ("received by SMTP DATA from mail.forger.example [192.0.2.66]", "verification: unverified",
                 "quarantined for alice@a.test", "released to the inbox of alice@a.test", "retrieved by POP3 from alice@a.test"):
        assert text in page, text
    page = client.get(f"/admin/mailcore/message/{world['inbox'].pk}/trace/").content.decode()
    for text in ("announced by mx.origin.test [192.0.2.10]", "GET from mx.origin.test: verified after 1 attempt(s)",
                 "delivered to the inbox of alice@a.test", "deferred for dave@remote.example via mx.remote.example after 3 attempt(s)",
                 "451 4.7.1 greylisted"):
        assert text in page, text


# --- announcements ---------------------------------------------------------------------------


def test_announcements_forgery_log_filters(world):
    client = as_user(world, "superuser")
    page = client.get("/admin/mailcore/announcement/?state__exact=failed").content.decode()
    assert "ceo@bank.example" in page and "203.0.113.9" in page and "550 5.1.0 unknown id" in page
    assert "info@slow.example" not in page
    page = client.get("/admin/mailcore/announcement/?sender_domain=slow.example").content.decode()
    assert "info@slow.example" in page and "ceo@bank.example" not in page
    assert client.get("/admin/mailcore/announcement/add/").status_code == 403


# --- the outbound queue ----------------------------------------------------------------------


def test_queue_retry_hold_delete(world):
    client = as_user(world, "superuser")
    item = world["deferred"]
    page = client.get("/admin/mailcore/queueitem/").content.decode()
    assert "dave@remote.example" in page and "451 4.7.1 greylisted" in page and f"/admin/mailcore/queueitem/{item.pk}/retry/" in page
    client.post(f"/admin/mailcore/queueitem/{item.pk}/hold/")
    item.refresh_from_db()
    assert item.state == QueueState.HELD
    client.post(f"/admin/mailcore/queueitem/{item.pk}/retry/")
    item.refresh_from_db()
    assert item.state == QueueState.QUEUED and item.next_attempt_at <= item.updated_at
    client.post("/admin/mailcore/queueitem/", {"action": "hold_selected", "_selected_action": [item.pk], "index": 0})
    assert QueueItem.objects.get(pk=item.pk).state == QueueState.HELD
    client.post(f"/admin/mailcore/queueitem/{item.pk}/delete/")
    assert not QueueItem.objects.filter(pk=item.pk).exists()


def test_queue_actions_leave_finished_items_alone(world):
    client = as_user(world, "superuser")
    sent = w.queued(world["inbox"], "erin@remote.example", state=QueueState.SENT)
    for action in ("retry", "hold", "delete"):
        response = client.post(f"/admin/mailcore/queueitem/{sent.pk}/{action}/", follow=True)
        assert "is no longer waiting" in response.content.decode()
    assert QueueItem.objects.get(pk=sent.pk).state == QueueState.SENT


# --- domains, mailboxes, aliases -----------------------------------------------------------------


def test_domain_forms(world):
    client = as_user(world, "superuser")
    response = client.post("/admin/mailcore/domain/add/", {"name": "not a domain", "unverified_policy": "accept", "active": "on"})
    assert "invalid domain name" in response.content.decode()
    response = client.post("/admin/mailcore/domain/add/", {"name": "A.TEST", "unverified_policy": "accept", "active": "on"})
    assert "Domain with this Name already exists." in response.content.decode()
    client.post("/admin/mailcore/domain/add/", {"name": "New.Example", "unverified_policy": "reject", "active": "on"})
    assert Domain.objects.get(name="new.example").unverified_policy == "reject"


def test_domain_policy_is_editable_inline(world):
    client = as_user(world, "superuser")
    b = Domain.objects.get(name="b.test")
    page = client.get("/admin/mailcore/domain/").content.decode()
    assert 'name="form-0-unverified_policy"' in page
    domains = list(Domain.objects.order_by("name"))
    data = {"form-TOTAL_FORMS": len(domains), "form-INITIAL_FORMS": len(domains), "form-MIN_NUM_FORMS": 0,
            "form-MAX_NUM_FORMS": 1000, "_save": "Save"}
    for i, d in enumerate(domains):
        data.update({f"form-{i}-id": d.pk, f"form-{i}-unverified_policy": "reject" if d == b else d.unverified_policy,
                     f"form-{i}-active": "on"})
    assert client.post("/admin/mailcore/domain/", data).status_code == 302
    assert Domain.objects.get(pk=b.pk).unverified_policy == "reject"


def test_mailbox_creation_form(world, settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]
    client = as_user(world, "superuser")

    def add(address, p1, p2=None):
        return client.post("/admin/mailcore/mailbox/add/", {"address": address, "password1": p1, "password2": p2 or p1, "active": "on"})

    assert "This password is too common." in add("dan@a.test", "password").content.decode()
    assert "This password is too short." in add("dan@a.test", "x7").content.decode()
    assert "too similar" in add("dan@a.test", "dan@a.test1").content.decode()
    assert "The two passwords differ." in add("dan@a.test", w.PASSWORD, "other " + w.PASSWORD).content.decode()
    assert "invalid mail address" in add("not an address", w.PASSWORD).content.decode()
    assert "is not a local domain" in add("dan@elsewhere.example", w.PASSWORD).content.decode()
    assert "already exists" in add("Alice@A.test", w.PASSWORD).content.decode()
    assert not Mailbox.objects.filter(address="dan@a.test").exists()
    assert add("Dan@A.test", w.PASSWORD).status_code == 302
    dan = Mailbox.objects.get(address="dan@a.test")
    assert dan.password != w.PASSWORD and dan.password.startswith("pbkdf2_") and dan.check_password(w.PASSWORD)


def test_mailbox_password_form(world):
    client = as_user(world, "superuser")
    alice = Mailbox.objects.get(address="alice@a.test")
    url = f"/admin/mailcore/mailbox/{alice.pk}/password/"
    assert f'href="{url}"' in client.get(f"/admin/mailcore/mailbox/{alice.pk}/change/").content.decode()
    page = client.post(url, {"password1": "12345678", "password2": "12345678"}).content.decode()
    assert "This password is entirely numeric." in page
    alice.refresh_from_db()
    assert alice.check_password(w.PASSWORD)
    assert client.post(url, {"password1": "a new and long secret", "password2": "a new and long secret"}).status_code == 302
    alice.refresh_from_db()
    assert alice.check_password("a new and long secret") and not alice.check_password(w.PASSWORD)
    assert alice.password not in client.get(f"/admin/mailcore/mailbox/{alice.pk}/change/").content.decode()  # never shown


def test_alias_forms(world):
    client = as_user(world, "superuser")

    def add(source, target):
        return client.post("/admin/mailcore/alias/add/", {"source": source, "target": target})

    assert "invalid mail address" in add("post master@a.test", "alice@a.test").content.decode()
    assert "is not a local domain" in add("x@elsewhere.example", "alice@a.test").content.decode()
    assert "cannot point at itself" in add("alice@a.test", "Alice@a.test").content.decode()
    assert add("Postmaster@A.test", "alice@a.test").status_code == 302
    assert "already exists" in add("postmaster@a.test", "alice@a.test").content.decode()
    assert add("@b.test", "carol@b.test").status_code == 302
    assert set(Alias.objects.values_list("source", "target")) == {("postmaster@a.test", "alice@a.test"), ("@b.test", "carol@b.test")}


def test_spam_score_and_rules_in_the_quarantine_and_the_message_view(world):
    held = world["held_delivery"]
    Message.objects.filter(pk=held.message_id).update(
        spam_status="scored", spam_score=7.5, spam_rules=["GTUBE", "RCVD_ILLEGAL_IP"]
    )
    Delivery.objects.filter(pk=held.pk).update(reason="spam")
    client = as_user(world, "superuser")
    listing = client.get("/admin/mailcore/delivery/?reason=spam").content.decode()
    assert "7.5 (GTUBE, RCVD_ILLEGAL_IP)" in listing
    page = client.get(f"/admin/mailcore/message/{held.message_id}/change/").content.decode()
    assert "score 7.5; rules GTUBE, RCVD_ILLEGAL_IP" in page


def test_sender_domains_delivering_by_source_are_listed_and_forgotten(world):
    from mailcore.models import SourcePin
    from mailcore.services import pins

    pins.remember("a.test")
    pins.remember("c.test")
    page = as_user(world, "viewer").get("/admin/mailcore/sourcepin/")
    assert page.status_code == 200 and "a.test" in page.content.decode()
    assert 'href="/admin/mailcore/sourcepin/">Domains by SOURCE</a>' in page.content.decode()  # in the console's bar
    assert "forget_selected" not in page.content.decode()  # seeing is not forgetting
    admin_client = as_user(world, "superuser")
    page = admin_client.get("/admin/mailcore/sourcepin/")
    assert "forget_selected" in page.content.decode() and "c.test" in page.content.decode()
    pin = SourcePin.objects.get(domain="a.test")
    done = admin_client.post("/admin/mailcore/sourcepin/", {"action": "forget_selected", "_selected_action": [pin.pk]})
    assert done.status_code == 302
    assert list(SourcePin.objects.values_list("domain", flat=True)) == ["c.test"]
    assert not pins.is_pinned("a.test") and pins.is_pinned("c.test")
