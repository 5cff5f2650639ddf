"""Spam checks end to end, two instances: GTUBE pulled from a verified sender is delivered, by DATA held, over a reject score refused."""

from __future__ import annotations

import smtplib

import pytest

from tests.reverse_delivery.test_reverse_delivery_pull import announce_to_b, source_on_a, wait_for_state
from tests.spamd_server import GTUBE

pytest_plugins = ["tests.instances"]
pytestmark = pytest.mark.django_db(transaction=True)

GTUBE_FROM_ALICE = (
    "From: Alice <alice@a.test>\r\n"
    "To: Bob <bob@b.test>\r\n"
    "Subject: Test spam mail (GTUBE)\r\n"
    "\r\n"
    f"This is the GTUBE, the generic test for unsolicited bulk email:\r\n\r\n{GTUBE}\r\n"
).encode()


def test_gtube_pulled_from_a_verified_sender_is_delivered_and_by_data_is_quarantined(start_instances, spamd):
    a, b = start_instances(env={"MAIL_SPAMD": f"{spamd.host}:{spamd.port}"})
    # GTUBE scores about 1000: under the lenient threshold, over the strict one.
    result = b.manage("spam", "set", "b.test", "--verified", "1500", "--unverified", "3")
    assert result.returncode == 0, result.stderr

    # Verified: A holds the body as sourced, announces it to B with SOURCE, B pulls it with GET.
    [source_id] = source_on_a(a, GTUBE_FROM_ALICE)
    assert announce_to_b(b, source_id)[0] == 250
    assert wait_for_state(b, source_id)["state"] == "verified"
    [delivered] = b.wait_for_messages("bob@b.test", 1)
    head = delivered.split(b"\r\n\r\n", 1)[0]
    assert b"x-source=pass" in head and b"x-spam=pass (score=" in head
    assert b"\r\nX-Spam-Status: No, score=" in head and b"required=1500.0" in head

    # Unverified: the same text by plain DATA to B's MX, from a domain never verified (a.test's
    # own DATA mail is now a downgrade, held as such whatever its score).
    with smtplib.SMTP(b.address, b.smtp_port, timeout=10) as client:
        assert client.sendmail("carol@c.test", ["bob@b.test"], GTUBE_FROM_ALICE) == {}
    [held] = b.wait_for_messages("bob@b.test", 1, state="quarantined")
    assert b"\r\nX-Spam-Status: Yes, score=" in held and b"required=3.0" in held
    rows = b.query(
        "SELECT d.reason, m.spam_status, m.verification FROM mailcore_delivery d"
        " JOIN mailcore_message m ON m.id = d.message_id ORDER BY d.id"
    )
    assert [(r[0], r[1], r[2]) for r in rows] == [("", "scored", "verified"), ("spam", "scored", "unverified")]

    # Above a reject score, a pulled body is refused: the announcement fails with the reason,
    # nothing is delivered and no bounce goes anywhere (spec §6, no backscatter).
    result = b.manage("spam", "set", "b.test", "--verified", "8", "--reject", "500")
    assert result.returncode == 0, result.stderr
    [refused_id] = source_on_a(a, GTUBE_FROM_ALICE)
    assert announce_to_b(b, refused_id)[0] == 250
    found = wait_for_state(b, refused_id)
    assert found["state"] == "failed" and "Message refused as spam (score " in found["last_error"]
    assert len(b.query("SELECT id FROM mailcore_message")) == 2
