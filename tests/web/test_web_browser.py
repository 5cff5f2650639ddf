"""A real browser (Debian's Chromium driven by Playwright) releases a quarantined message; POP3 then serves it."""

from __future__ import annotations

import poplib

import pytest
from django.contrib.auth.models import User
from django.test import Client

from mailcore.models import Delivery, DeliveryState
from tests import web_data as w
from tests.conftest import require_program
from tests.factories import start_listener

# Flags that keep Chromium quiet and offline in a container: no sandbox (root), no GPU, no
# update checks or sync that would try the network.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 15_000


def launch_chromium(playwright):
    return playwright.chromium.launch(executable_path=require_program("chromium"), args=CHROMIUM_ARGS)


def pop3_subjects(port: int, address: str, password: str) -> list[str]:
    client = poplib.POP3("127.0.0.1", port, timeout=10)
    try:
        client.user(address)
        client.pass_(password)
        count, _size = client.stat()
        subjects = []
        for number in range(1, count + 1):
            _resp, lines, _octets = client.retr(number)
            subjects += [line.decode()[len("Subject: "):] for line in lines if line.startswith(b"Subject: ")]
        return subjects
    finally:
        client.quit()


@pytest.mark.django_db(transaction=True)
def test_admin_releases_a_quarantined_message_in_a_browser_and_pop3_serves_it(server_factory):
    from playwright.sync_api import expect, sync_playwright

    w.make_accounts()
    User.objects.create_superuser("admin", "admin@example.test", w.PASSWORD)
    held = w.unverified("alice@a.test", "Quarterly invoice", html="<p>Please <b>pay</b></p><script>alert(1)</script>",
                        attachment=b"%PDF-1.4 " * 50)
    w.unverified("bob@a.test", "Someone else's mail")
    web_port = start_listener(server_factory, "runweb").port
    pop3_port = start_listener(server_factory, "runpop3", MAIL_AUTH_FAILURE_DELAY="0.3").port
    base = f"http://127.0.0.1:{web_port}"

    # Held mail is not in the maildrop.
    assert pop3_subjects(pop3_port, "alice@a.test", w.PASSWORD) == []

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(f"{base}/admin/")
            page.fill("#id_username", "admin")
            page.fill("#id_password", w.PASSWORD)
            page.click("input[type=submit]")
            page.wait_for_url(f"{base}/admin/")
            expect(page.locator('[data-count="held"]')).to_have_text("2")
            expect(page.locator("svg.mail-chart rect.bar-unverified").first).to_be_visible()

            page.click("text=held in quarantine")
            row = page.locator("#result_list tbody tr", has_text="Quarterly invoice")
            expect(row).to_contain_text("news@forger.example")
            # The message view first: the sanitized HTML part renders inside its sandboxed frame.
            row.locator("a", has_text="Quarterly invoice").click()
            expect(page.locator("h1")).to_have_text("Quarterly invoice")
            expect(page.frame_locator("iframe.mail-html").locator("b")).to_have_text("pay")
            expect(page.locator("tr.mail-attachment")).to_contain_text("figures.pdf")
            page.go_back()

            row = page.locator("#result_list tbody tr", has_text="Quarterly invoice")
            row.locator("button.mail-release").click()
            expect(page.locator("ul.messagelist")).to_contain_text("Released message")
            expect(page.locator("#result_list")).not_to_contain_text("Quarterly invoice")
            expect(page.locator("#result_list")).to_contain_text("Someone else's mail")
        finally:
            browser.close()

    # (The ORM is used only outside the Playwright block: its sync API runs an event loop, in
    # which Django refuses synchronous queries.)
    assert Delivery.objects.get(message=held).state == DeliveryState.INBOX
    # The released message is now in alice's maildrop, exactly once.
    assert pop3_subjects(pop3_port, "alice@a.test", w.PASSWORD) == ["Quarterly invoice"]
    assert Delivery.objects.get(message__subject="Someone else's mail").state == DeliveryState.QUARANTINED

    # And its trace tells the whole story, the POP3 retrieval included.
    client = Client()
    client.force_login(User.objects.get(username="admin"))
    timeline = client.get(f"/admin/mailcore/message/{held.pk}/trace/").content.decode()
    for event in ("quarantined for alice@a.test", "released to the inbox of alice@a.test", "retrieved by POP3 from alice@a.test"):
        assert event in timeline, event


@pytest.mark.django_db(transaction=True)
def test_mailbox_owner_releases_in_a_browser(server_factory):
    from playwright.sync_api import expect, sync_playwright

    w.make_accounts()
    held = w.unverified("alice@a.test", "Held for alice")
    w.unverified("bob@a.test", "Held for bob")
    web_port = start_listener(server_factory, "runweb").port
    base = f"http://127.0.0.1:{web_port}"
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(f"{base}/mailbox/")
            page.fill("#id_address", "alice@a.test")
            page.fill("#id_password", w.PASSWORD)
            page.click("button[type=submit]")
            expect(page.locator("table.mailbox-held")).to_contain_text("Held for alice")
            expect(page.locator("body")).not_to_contain_text("Held for bob")
            page.locator("table.mailbox-held tr", has_text="Held for alice").locator("button.mail-release").click()
            expect(page.locator("ul.messagelist")).to_contain_text("Released to your inbox.")
            expect(page.locator("table.mailbox-recent")).to_contain_text("Held for alice")
        finally:
            browser.close()
    assert Delivery.objects.get(message=held).state == DeliveryState.INBOX
