"""Takes the web UI screenshots in docs/ (dashboard, quarantine, message view) from realistic data in a throwaway database.

Run: .venv/bin/python docs/screenshots.py   (needs Debian's chromium; uses nothing of var/)
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
WORK = Path(tempfile.mkdtemp(prefix="mail-screenshots-"))
os.environ.update(
    DJANGO_SETTINGS_MODULE="mailsite.settings",
    DATABASE_URL=f"sqlite:///{WORK}/db.sqlite3",
    MAIL_DATA_DIR=str(WORK / "mail"),
    MAIL_HOSTNAME="mx.a.test",
    DJANGO_SECRET_KEY="screenshots-only",
)

import django  # noqa: E402

django.setup()

from django.contrib.auth.models import User  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.utils import timezone  # noqa: E402

from mailcore.models import Announcement, Delivery, Message, QueueState  # noqa: E402
from tests import web_data as w  # noqa: E402
from tests.conftest import free_port, wait_for_port  # noqa: E402

SENDERS_VERIFIED = ["carol@partner.example", "billing@supplier.example", "team@project.example", "dave@university.example"]
SENDERS_UNVERIFIED = ["offers@deals.example", "noreply@parcel-notice.example", "security@bank-alerts.example"]
SUBJECTS = ["Minutes of Tuesday's meeting", "Invoice 2026-1142", "Re: release plan", "Your parcel is waiting",
            "Account notice: action required", "Weekly report", "Lunch on Friday?", "Limited offer, today only"]
NEWSLETTER_HTML = """<h2>Your parcel could not be delivered</h2><p>Dear customer,</p>
<p>we tried to deliver your parcel <b>#DE-4471-22</b> today. Please <a href="https://parcel-notice.example/track">confirm your
address</a> within 48 hours.</p><img src="https://tracker.parcel-notice.example/open.gif"><script>document.location='https://x'</script>
<form action="https://parcel-notice.example/pay"><input name="card"></form><table><tr><td>Fee</td><td>1.99 EUR</td></tr></table>"""


def spread(message: Message, hours_ago: float) -> None:
    at = timezone.now() - timedelta(hours=hours_ago)
    Message.objects.filter(pk=message.pk).update(received_at=at)
    Delivery.objects.filter(message=message).update(delivered_at=at)


def fill() -> Message:
    call_command("migrate", verbosity=0)
    w.make_accounts()
    User.objects.create_superuser("admin", "admin@a.test", w.PASSWORD)
    rng = random.Random(7)
    for _ in range(70):
        hours = rng.uniform(0, 23.9)
        if rng.random() < 0.62:
            m = w.verified(rng.choice(["alice@a.test", "bob@a.test", "carol@b.test"]), rng.choice(SUBJECTS),
                           sender=rng.choice(SENDERS_VERIFIED))
        else:
            m = w.unverified(rng.choice(["alice@a.test", "bob@a.test", "carol@b.test"]), rng.choice(SUBJECTS),
                             sender=rng.choice(SENDERS_UNVERIFIED))
        spread(m, hours)
    for i in range(9):
        a = w.forged(claimed=rng.choice(["ceo@bank.example", "it@a.test", "payroll@bigcorp.example"]),
                     client=f"203.0.113.{rng.randint(2, 250)}")
        Announcement.objects.filter(pk=a.pk).update(received_at=timezone.now() - timedelta(hours=rng.uniform(0, 23)),
                                                    source_id=f"{i:x}" * 32)
    w.pending()
    some = Message.objects.filter(verification="verified").first()
    w.queued(some, "erin@remote.example")
    w.queued(some, "frank@slow.example", state=QueueState.QUEUED)
    featured = w.unverified("alice@a.test", "Your parcel is waiting", sender="noreply@parcel-notice.example",
                            html=NEWSLETTER_HTML, attachment=b"%PDF-1.4 " * 2000,
                            text="Dear customer,\n\nwe tried to deliver your parcel #DE-4471-22 today.\n")
    spread(featured, 0.2)
    return featured


def main() -> None:
    from playwright.sync_api import sync_playwright

    featured = fill()
    port = free_port()
    server = subprocess.Popen([sys.executable, str(ROOT / "manage.py"), "runweb", "--bind", f"127.0.0.1:{port}"], cwd=ROOT)
    try:
        wait_for_port("127.0.0.1", port, server)
        base = f"http://127.0.0.1:{port}"
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"])
            page = browser.new_page(viewport={"width": 1600, "height": 1000}, color_scheme="light")
            page.goto(f"{base}/admin/login/?next=/admin/")
            page.fill("#id_username", "admin")
            page.fill("#id_password", w.PASSWORD)
            page.click("input[type=submit]")
            page.wait_for_url(f"{base}/admin/")
            page.screenshot(path=str(ROOT / "docs" / "dashboard.png"), full_page=False)
            page.goto(f"{base}/admin/mailcore/delivery/?state=quarantined")
            page.screenshot(path=str(ROOT / "docs" / "quarantine.png"), full_page=False)
            page.goto(f"{base}/admin/mailcore/message/{featured.pk}/change/")
            page.frame_locator("iframe.mail-html").locator("h2").wait_for()  # the sandboxed frame loads after the page
            # A tall viewport rather than full_page: Chromium's full-page capture leaves the
            # sandboxed (out-of-process) frame blank.
            page.set_viewport_size({"width": 1600, "height": page.evaluate("document.documentElement.scrollHeight")})
            page.frame_locator("iframe.mail-html").locator("h2").wait_for()
            page.screenshot(path=str(ROOT / "docs" / "message.png"))
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=20)
    print("wrote docs/dashboard.png, docs/quarantine.png, docs/message.png")


if __name__ == "__main__":
    main()
