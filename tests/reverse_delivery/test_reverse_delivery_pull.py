"""End to end, two instances (a.test on 127.0.0.2, b.test on 127.0.0.3): B pulls announced bodies from A.

The sending side's SOURCE is played by a raw SMTP client; the body is put on A as its outbound
client would have sourced it (a stored Message and a SourcedMessage row), through A's own code.
"""

from __future__ import annotations

import json
import secrets
import smtplib
import statistics
import time

import pytest

from tests.conftest import wait_until
from tests.factories import alice_writes
from tests.instances import assert_pulled_by_b

pytest_plugins = ["tests.instances"]
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def instances(start_instances):
    """The two instances with what reverse delivery needs: the MX listener and the django-q2 cluster."""
    return start_instances(commands=("runsmtp", "qcluster"))


ORIGINAL = alice_writes("pulled back")

SOURCE_ON_A = """
import json, sys
from datetime import timedelta
from django.conf import settings
from django.utils import timezone
from mailcore.models import Message, SourcedMessage
from mailcore.store import message_store
from mailcore.reverse_delivery.ids import new_source_id
items = json.loads(sys.stdin.read())
ids = []
for item in items:
    content = item["content"].encode("latin-1")
    body = message_store().put(content)
    message = Message.objects.create(body_ref=body.ref, size=body.size, sha256=body.sha256,
        mail_from=item["mail_from"], rcpt_tos=item["rcpt_tos"], transport="submission", verification="verified")
    sourced = SourcedMessage.objects.create(source_id=new_source_id(), message=message, mail_from=item["mail_from"],
        rcpt_tos=item["rcpt_tos"], destination_host="mx.b.test",
        expires_at=timezone.now() + timedelta(seconds=settings.MAIL_SOURCE_RETENTION))
    ids.append(sourced.source_id)
print(json.dumps(ids))
"""


def source_on_a(a, content: bytes, count: int = 1, mail_from: str = "alice@a.test") -> list[str]:
    """Store `content` on A as a sourced message (what A's outbound client does before SOURCE)."""
    items = [{"content": content.decode("latin-1"), "mail_from": mail_from, "rcpt_tos": ["bob@b.test"]}] * count
    result = a.manage("shell", "-c", SOURCE_ON_A, stdin=json.dumps(items))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def announce_to_b(b, source_id: str, mail_from: str = "alice@a.test", helo: str = "mx.a.test") -> tuple[int, bytes]:
    """A raw SMTP client playing the sender: EHLO, MAIL, RCPT, SOURCE, QUIT."""
    with smtplib.SMTP(b.address, b.smtp_port, local_hostname=helo, timeout=10) as client:
        client.ehlo(helo)
        assert client.has_extn("source")
        assert client.mail(mail_from)[0] == 250
        assert client.rcpt("bob@b.test")[0] == 250
        return client.docmd("SOURCE", source_id)


def announcement(b, source_id: str) -> dict:
    rows = b.query(
        "SELECT state, last_error, origin_host, client_address, helo_name, mail_from, attempts"
        " FROM mailcore_announcement WHERE source_id = %s",
        (source_id,),
    )
    keys = ("state", "last_error", "origin_host", "client_address", "helo_name", "mail_from", "attempts")
    return dict(zip(keys, rows[0], strict=True)) if rows else {}


def wait_for_state(b, source_id: str, states=("verified", "unverified", "failed"), timeout: float = 20.0) -> dict:
    found = wait_until(lambda: (row := announcement(b, source_id)).get("state") in states and row, timeout, interval=0.02)
    assert found, f"announcement {source_id} on B: {announcement(b, source_id)}\n{b.logs()}"
    return found


def test_forged_announcement_fails_with_its_reason_and_bob_gets_nothing(instances):
    a, b = instances
    made_up = secrets.token_hex(16)
    code, text = announce_to_b(b, made_up, helo="forger.example")
    assert (code, text) == (250, f"2.6.0 {made_up} accepted for retrieval".encode())
    found = wait_for_state(b, made_up)
    assert found["state"] == "failed"
    assert f"mx.a.test [127.0.0.2] answered GET with 550 5.1.0 {made_up} unknown" in found["last_error"]
    # The forgery log: claimed sender, client address, EHLO name, reason.
    assert (found["mail_from"], found["helo_name"]) == ("alice@a.test", "forger.example")
    assert found["client_address"].startswith("127.")
    listing = b.manage("callbacks", "--state", "failed")
    assert listing.returncode == 0 and made_up in listing.stdout and "reason=mx.a.test" in listing.stdout
    assert not wait_until(lambda: b.messages("bob@b.test"), 0.3)


def test_sourced_message_is_pulled_from_a_and_delivered_verified(instances):
    a, b = instances
    [source_id] = source_on_a(a, ORIGINAL)
    code, _ = announce_to_b(b, source_id)
    assert code == 250
    [copy] = b.wait_for_messages("bob@b.test")
    found = announcement(b, source_id)
    assert found["state"] == "verified" and found["origin_host"] == "mx.a.test [127.0.0.2]"
    # Bob's copy: B's trace headers, then the original byte for byte.
    assert_pulled_by_b(copy, ORIGINAL)
    # A recorded the fetch.
    [(fetches, first_at, first_address)] = a.query(
        "SELECT fetch_count, first_fetch_at, first_fetch_address FROM mailcore_sourcedmessage WHERE source_id = %s",
        (source_id,),
    )
    assert fetches == 1 and first_at and first_address.startswith("127.")


def test_from_naming_another_domain_is_delivered_unverified(instances):
    a, b = instances
    [source_id] = source_on_a(a, ORIGINAL.replace(b"From: Alice <alice@a.test>", b"From: Bank <security@bank.test>"))
    assert announce_to_b(b, source_id)[0] == 250
    [copy] = b.wait_for_messages("bob@b.test")
    assert b"x-source=neutral smtp.mailfrom=alice@a.test (header.from not aligned)" in copy
    found = announcement(b, source_id)
    assert found["state"] == "unverified" and "bank.test" in found["last_error"]


DELIVERED = (
    "SELECT 1 FROM mailcore_delivery d JOIN mailcore_announcement n ON n.message_id = d.message_id WHERE n.source_id = %s"
)


def test_median_time_from_source_250_to_delivery(instances, record_property):
    """Loopback latency of the kicked pull: SOURCE's 250 to the Delivery row committed on B."""
    a, b = instances
    ids = source_on_a(a, ORIGINAL, count=20)
    timings = []
    for source_id in ids:
        assert announce_to_b(b, source_id)[0] == 250
        acknowledged = time.monotonic()
        delivered = wait_until(lambda source_id=source_id: b.query(DELIVERED, (source_id,)), 20, interval=0.005)
        assert delivered, b.logs()
        timings.append(time.monotonic() - acknowledged)
    median = statistics.median(timings)
    record_property("source_to_delivery_median_s", round(median, 3))
    assert len(b.messages("bob@b.test")) == 20
    # Loopback with the task kicked on commit: well under the sweep's minute.
    assert median < 5
