"""A real browser (Chromium through Playwright) on the digest link page and the owner's sender lists."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from mailcore.models import AuditEntry, Delivery, DeliveryState, SenderRule
from mailcore.quarantine import links
from mailcore.services import senders
from tests import web_data as w
from tests.conftest import free_port
from tests.web.test_web_browser import TIMEOUT_MS, launch_chromium


def state_of(delivery_id: int) -> str:
    """A row read outside Playwright's event loop, which Django's ORM refuses to run in."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: Delivery.objects.get(pk=delivery_id).state).result()


@pytest.mark.django_db(transaction=True)
def test_digest_link_page_and_self_service_sender_lists_in_a_browser(server_factory, settings):
    from playwright.sync_api import expect, sync_playwright

    w.make_accounts()
    held = w.unverified("alice@a.test", "Invoice 2026-11").deliveries.get()
    promo = w.unverified("alice@a.test", "Big sale", sender="promo@shop.example").deliveries.get()
    web_port = free_port()
    base = f"http://127.0.0.1:{web_port}"
    settings.MAIL_WEB_URL = base
    server_factory("runweb", "--bind", f"127.0.0.1:{web_port}", wait=("127.0.0.1", web_port))
    release_url, tampered_url = links.url(held, "release"), links.url(promo, "delete")[:-4] + "xxxx/"

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page()
            page.set_default_timeout(TIMEOUT_MS)

            # The digest's release link: a page with the summary and a button; nothing happens until it is pressed.
            page.goto(release_url)
            expect(page.locator("h1")).to_have_text("Release this message")
            expect(page.locator("table.mail-summary")).to_contain_text("Invoice 2026-11")
            expect(page.locator("table.mail-summary")).to_contain_text("Its sender could not be verified")
            assert state_of(held.pk) == DeliveryState.QUARANTINED
            page.click("button.mail-link-confirm")
            expect(page.locator(".mail-link-done")).to_have_text("Released to your inbox.")
            assert state_of(held.pk) == DeliveryState.INBOX
            page.reload()  # the browser's "resend the form?" is a second POST: harmless
            expect(page.locator(".mail-link-done")).to_contain_text("no longer held")

            # A tampered link: a 4xx page that says so, with no button.
            response = page.goto(tampered_url)
            assert response.status == 400
            expect(page.locator(".mail-link-error")).to_have_text("This link is not valid.")
            expect(page.locator("button.mail-link-confirm")).to_have_count(0)

            # Anything more needs the self-service sign-in.
            page.click("text=sign in")
            page.fill("input[name=address]", "alice@a.test")
            page.fill("input[name=password]", w.PASSWORD)
            page.click("button[type=submit], input[type=submit]")
            page.wait_for_url(f"{base}/mailbox/")
            row = page.locator("tr", has_text="Big sale")
            row.locator("button.mail-block-sender").click()
            expect(page.locator("ul.messagelist")).to_contain_text("Mail from promo@shop.example is now refused.")
            expect(page.locator("table.mailbox-held")).to_have_count(0)

            page.click("a.mail-senders-link")
            expect(page.locator("table.mailbox-senders")).to_contain_text("promo@shop.example")
            page.fill("input[name=pattern]", "@partner.example")
            page.click("button.mail-sender-allow")
            expect(page.locator("ul.messagelist")).to_contain_text("Allowed: @partner.example.")
            page.fill("input[name=pattern]", "no pattern here")
            page.click("button.mail-sender-block")
            expect(page.locator(".mail-sender-error")).to_contain_text("bad pattern")
            page.locator("tr[data-pattern='promo@shop.example'] button.mail-sender-remove").click()
            expect(page.locator("table.mailbox-senders")).not_to_contain_text("promo@shop.example")
        finally:
            browser.close()

    assert set(SenderRule.objects.values_list("action", "pattern", "scope")) == {("allow", "@partner.example", "mailbox")}
    assert senders.rules_for("alice@a.test").decide("x@mail.partner.example", "") == senders.ALLOW
    kinds = list(AuditEntry.objects.order_by("id").values_list("action", "actor_kind"))
    assert kinds == [("release", "link"), ("sender-block", "owner"), ("delete", "owner"), ("sender-allow", "owner"),
                     ("sender-remove", "owner")]
