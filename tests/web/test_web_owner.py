"""Self-service for mailbox owners: their own quarantine and mail, and nothing of any other mailbox."""

from __future__ import annotations

import time

import pytest
from django.test import Client

from mailcore.models import Delivery, DeliveryState
from mailcore.services import accounts
from mailcore.services.login_failures import LoginFailures
from tests import web_data as w

pytestmark = pytest.mark.django_db


@pytest.fixture
def world():
    w.make_accounts()
    users = w.make_users()
    alice_held = w.unverified("alice@a.test", "Alice held", html="<p>hi alice</p>").deliveries.get()
    alice_inbox = w.verified("alice@a.test", "Alice verified").deliveries.get()
    bob_held = w.unverified("bob@a.test", "Bob held", html="<p>hi bob</p>").deliveries.get()
    bob_inbox = w.verified("bob@a.test", "Bob verified").deliveries.get()
    return dict(users=users, alice_held=alice_held, alice_inbox=alice_inbox, bob_held=bob_held, bob_inbox=bob_inbox)


def signed_in(address: str = "alice@a.test", password: str = w.PASSWORD) -> Client:
    client = Client()
    response = client.post("/mailbox/login/", {"address": address, "password": password})
    assert response.status_code == 302 and response["Location"] == "/mailbox/", response.content[:500]
    return client


def owner_urls(delivery_id: int) -> list[tuple[str, str]]:
    return [
        ("get", f"/mailbox/message/{delivery_id}/"),
        ("get", f"/mailbox/message/{delivery_id}/raw/"),
        ("get", f"/mailbox/message/{delivery_id}/html/"),
        ("post", f"/mailbox/release/{delivery_id}/"),
        ("post", f"/mailbox/delete/{delivery_id}/"),
    ]


def test_login_with_the_mailbox_address_and_password(world):
    client = Client()
    page = client.post("/mailbox/login/", {"address": "alice@a.test", "password": "wrong"}).content.decode()
    assert "Wrong address or password." in page
    page = client.post("/mailbox/login/", {"address": "nobody@a.test", "password": w.PASSWORD}).content.decode()
    assert "Wrong address or password." in page
    # Django users are not mailbox owners, and the mailbox login is not an admin login.
    page = client.post("/mailbox/login/", {"address": "root", "password": w.PASSWORD}).content.decode()
    assert "Wrong address or password." in page
    client = signed_in("Alice@A.TEST")
    home = client.get("/mailbox/").content.decode()
    assert "alice@a.test" in home


def test_home_shows_only_the_owners_mail(world):
    home = signed_in().get("/mailbox/").content.decode()
    assert "Alice held" in home and "Alice verified" in home
    assert "Bob held" not in home and "Bob verified" not in home


def test_anonymous_and_staff_are_sent_to_the_mailbox_login(world):
    staff = Client()
    staff.force_login(world["users"]["superuser"])
    for client in (Client(), staff):
        for method, url in [("get", "/mailbox/"), *owner_urls(world["alice_held"].pk), ("post", "/mailbox/bulk/")]:
            response = getattr(client, method)(url)
            assert response.status_code == 302 and response["Location"].startswith("/mailbox/login/"), url
    assert Delivery.objects.get(pk=world["alice_held"].pk).state == DeliveryState.QUARANTINED


def test_another_mailboxs_ids_are_404_for_every_view_and_action(world):
    client = signed_in()
    for other in (world["bob_held"], world["bob_inbox"]):
        for method, url in owner_urls(other.pk):
            assert getattr(client, method)(url).status_code == 404, url
    for method, url in owner_urls(999999):
        assert getattr(client, method)(url).status_code == 404, url
    response = client.post("/mailbox/bulk/", {"action": "release", "ids": [world["bob_held"].pk]}, follow=True)
    assert "1 message(s) were not held here" in response.content.decode()
    response = client.post("/mailbox/bulk/", {"action": "delete", "ids": [world["bob_held"].pk, "not-a-number"]}, follow=True)
    assert Delivery.objects.get(pk=world["bob_held"].pk).state == DeliveryState.QUARANTINED
    assert Delivery.objects.get(pk=world["bob_inbox"].pk).state == DeliveryState.INBOX


def test_owner_views_their_own_message(world):
    client = signed_in()
    d = world["alice_held"]
    page = client.get(f"/mailbox/message/{d.pk}/").content.decode()
    assert "Alice held" in page and "the quarterly figures are attached." in page
    assert f'src="/mailbox/message/{d.pk}/html/"' in page and "mail-release" in page
    frame = client.get(f"/mailbox/message/{d.pk}/html/")
    assert "<p>hi alice</p>" in frame.content.decode() and "default-src 'none'" in frame["Content-Security-Policy"]
    raw = client.get(f"/mailbox/message/{d.pk}/raw/")
    assert raw["Content-Type"] == "message/rfc822" and b"Subject: Alice held" in raw.content


def test_owner_release_once_and_again_harmlessly(world):
    client = signed_in()
    d = world["alice_held"]
    client.post(f"/mailbox/release/{d.pk}/")
    assert Delivery.objects.get(pk=d.pk).state == DeliveryState.INBOX
    again = client.post(f"/mailbox/release/{d.pk}/", follow=True).content.decode()
    assert "no longer held" in again
    assert Delivery.objects.get(pk=d.pk).state == DeliveryState.INBOX
    # Once released it is in the recent mail, not in the quarantine.
    assert "Nothing is held." in client.get("/mailbox/").content.decode()


def test_owner_delete_and_bulk(world):
    client = signed_in("bob@a.test")
    extra = w.unverified("bob@a.test", "Bob second").deliveries.get()
    client.post(f"/mailbox/delete/{world['bob_held'].pk}/")
    assert Delivery.objects.get(pk=world["bob_held"].pk).state == DeliveryState.DELETED
    # A deleted delivery is gone for its owner too.
    assert client.get(f"/mailbox/message/{world['bob_held'].pk}/").status_code == 404
    response = client.post("/mailbox/bulk/", {"action": "release", "ids": [extra.pk]}, follow=True)
    assert "Released 1 message(s)." in response.content.decode()
    assert Delivery.objects.get(pk=extra.pk).state == DeliveryState.INBOX
    assert client.post("/mailbox/bulk/", {"action": "purge", "ids": [extra.pk]}).status_code == 404


def test_owner_actions_need_post_and_csrf(world):
    client = signed_in()
    client.handler.enforce_csrf_checks = True  # signed in; from now on every POST needs the token
    d = world["alice_held"]
    for url in (f"/mailbox/release/{d.pk}/", f"/mailbox/delete/{d.pk}/", "/mailbox/bulk/", "/mailbox/logout/"):
        assert client.get(url).status_code == 405, url
        assert client.post(url, {"action": "release", "ids": [d.pk]}).status_code == 403, url
    assert Delivery.objects.get(pk=d.pk).state == DeliveryState.QUARANTINED
    assert Client(enforce_csrf_checks=True).post("/mailbox/login/", {"address": "alice@a.test", "password": w.PASSWORD}).status_code == 403


def test_password_change_and_disabling_end_the_session(world):
    client = signed_in()
    assert client.get("/mailbox/").status_code == 200
    accounts.set_password("alice@a.test", "another long passphrase")
    assert client.get("/mailbox/").status_code == 302
    client = signed_in(password="another long passphrase")
    mailbox = accounts.get_mailbox("alice@a.test")
    mailbox.active = False
    mailbox.save()
    assert client.get("/mailbox/").status_code == 302


def test_logout(world):
    client = signed_in()
    assert client.post("/mailbox/logout/")["Location"] == "/mailbox/login/"
    assert client.get("/mailbox/").status_code == 302


def test_login_next_stays_inside_the_self_service(world):
    d = world["alice_held"]
    client = Client()
    login = client.get(f"/mailbox/message/{d.pk}/")
    assert login["Location"] == f"/mailbox/login/?next=/mailbox/message/{d.pk}/"
    response = client.post("/mailbox/login/", {"address": "alice@a.test", "password": w.PASSWORD, "next": f"/mailbox/message/{d.pk}/"})
    assert response["Location"] == f"/mailbox/message/{d.pk}/"
    response = Client().post("/mailbox/login/", {"address": "alice@a.test", "password": w.PASSWORD, "next": "https://evil.example/"})
    assert response["Location"] == "/mailbox/"


LOCKED_OUT = "Too many failed sign-ins from your address. Try again later."


def failed_sign_in(client: Client, address: str = "alice@a.test", password: str = "wrong") -> str:
    response = client.post("/mailbox/login/", {"address": address, "password": password})
    assert response.status_code == 200
    return response.content.decode()


def test_failed_sign_ins_are_locked_out_without_holding_a_thread(world, settings):
    settings.MAIL_AUTH_MAX_FAILURES = 3
    settings.MAIL_AUTH_FAILURE_DELAY = 5.0  # far above a request's time even on a loaded machine
    client = Client(REMOTE_ADDR="192.0.2.10")
    started = time.monotonic()
    assert "Wrong address or password." in failed_sign_in(client)
    # No sleep in the request's thread: the count reserved before the check is the brake.
    assert time.monotonic() - started < 5.0
    assert "Wrong address or password." in failed_sign_in(client, "nobody@a.test")
    # The third failure reaches the limit: the form says so instead of "wrong password".
    page = failed_sign_in(client)
    assert LOCKED_OUT in page and "Wrong address or password." not in page
    # Locked out: even the right password is refused, at once, and no session is made.
    started = time.monotonic()
    page = failed_sign_in(client, password=w.PASSWORD)
    assert LOCKED_OUT in page
    assert time.monotonic() - started < 5.0
    assert client.get("/mailbox/").status_code == 302
    # The count is per client address: another address signs in.
    response = Client(REMOTE_ADDR="192.0.2.11").post("/mailbox/login/", {"address": "alice@a.test", "password": w.PASSWORD})
    assert response.status_code == 302 and response["Location"] == "/mailbox/"


def test_mail_port_failures_count_against_the_web_sign_in(world, settings):
    """One count for every login: failures on POP3 or submission (the database) lock the web form too."""
    settings.MAIL_AUTH_MAX_FAILURES = 2
    failures = LoginFailures(settings.MAIL_AUTH_MAX_FAILURES, settings.MAIL_AUTH_FAILURE_WINDOW)
    failures.record("192.0.2.20")
    failures.record("192.0.2.20")
    assert LOCKED_OUT in failed_sign_in(Client(REMOTE_ADDR="192.0.2.20"), password=w.PASSWORD)


def test_a_successful_sign_in_does_not_add_to_the_count(world, settings):
    settings.MAIL_AUTH_MAX_FAILURES = 2
    client = Client(REMOTE_ADDR="192.0.2.30")
    assert "Wrong address or password." in failed_sign_in(client)
    for _ in range(3):
        signed = Client(REMOTE_ADDR="192.0.2.30")
        assert signed.post("/mailbox/login/", {"address": "alice@a.test", "password": w.PASSWORD}).status_code == 302
