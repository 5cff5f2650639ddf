"""Real POP3 clients against runpop3: curl (pop3://) and fetchmail download and delete mail."""

from __future__ import annotations

import os
import subprocess

import pytest

from mailcore.models import Delivery, DeliveryState
from mailcore.store import message_store
from tests.conftest import require_program
from tests.factories import ADDRESS, PASSWORD, deliver
from tests.pop3_support import start_pop3

pytestmark = pytest.mark.django_db(transaction=True)


def curl(port: int, path: str = "", *args: str, password: str = PASSWORD) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "20", f"pop3://127.0.0.1:{port}/{path}", "-u", f"{ADDRESS}:{password}", *args],
        capture_output=True,
        timeout=30,
    )


def test_curl_lists_retrieves_and_deletes(alice, server_factory):
    require_program("curl")
    first = deliver(b"Subject: one\r\n\r\n.dot first\r\nbody one\r\n")
    second = deliver(b"Subject: two\r\n\r\nbody two\r\n")
    port = start_pop3(server_factory)
    bodies = [message_store().read(d.message.body_ref) for d in (first, second)]

    listing = curl(port)
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout == f"1 {len(bodies[0])}\r\n2 {len(bodies[1])}\r\n".encode()

    retrieved = curl(port, "1")
    assert retrieved.returncode == 0 and retrieved.stdout == bodies[0]  # curl undoes the byte-stuffing

    uidl = curl(port, "", "-X", "UIDL")
    assert uidl.stdout == f"1 {first.uid}\r\n2 {second.uid}\r\n".encode()
    top = curl(port, "", "-X", "TOP 2 0")
    assert top.stdout == bodies[1].split(b"\r\n\r\n")[0] + b"\r\n\r\n"

    deleted = curl(port, "1", "-X", "DELE", "-I")
    assert deleted.returncode == 0, deleted.stderr
    assert Delivery.objects.get(pk=first.pk).state == DeliveryState.DELETED
    assert curl(port).stdout == f"1 {len(bodies[1])}\r\n".encode()


def test_curl_wrong_password_exits_67(alice, server_factory):
    require_program("curl")
    port = start_pop3(server_factory)
    result = curl(port, password="wrong")
    assert result.returncode == 67  # CURLE_LOGIN_DENIED


def test_fetchmail_downloads_several_messages_and_deletes_them(alice, server_factory, tmp_path):
    require_program("fetchmail")
    contents = [b"Subject: fetch %d\r\n\r\n.line with a dot\r\nmessage %d\r\n" % (i, i) for i in range(4)]
    refs = [deliver(c).message.body_ref for c in contents]
    port = start_pop3(server_factory)
    out = tmp_path / "delivered"
    out.mkdir()
    rc = tmp_path / "fetchmailrc"
    rc.write_text(
        "set no syslog\n"
        f"poll 127.0.0.1 with proto POP3 service {port} uidl\n"
        f'  user "{ADDRESS}" there with password "{PASSWORD}" is "{os.environ.get("USER", "root")}" here\n'
        "  options fetchall nokeep sslproto ''\n"
        f'  mda "cat > {out}/msg.$$"\n'
    )
    rc.chmod(0o600)
    result = subprocess.run(
        ["fetchmail", "-f", str(rc), "-v", "--nodetach"],
        env={**os.environ, "FETCHMAILHOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    downloaded = sorted(p.read_bytes() for p in out.iterdir())
    assert len(downloaded) == 4
    for i, content in enumerate(contents):
        # fetchmail adds its own Received header; the rest is our message, lines with dots intact.
        assert sum(1 for d in downloaded if d.endswith(content.split(b"\r\n\r\n")[1].replace(b"\r\n", b"\n"))) == 1, i
    assert set(Delivery.objects.values_list("state", flat=True)) == {DeliveryState.DELETED}
    assert not any(message_store().exists(ref) for ref in refs)
