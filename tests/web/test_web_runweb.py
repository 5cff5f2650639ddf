"""`manage.py runweb`: the web UI on waitress with static files from whitenoise, no separate web server."""

from __future__ import annotations

import signal
import urllib.error
import urllib.request

import pytest

from tests.factories import start_listener


@pytest.mark.django_db(transaction=True)
def test_runweb_serves_pages_and_static_files_and_stops(server_factory):
    server = start_listener(server_factory, "runweb")
    port = server.port
    base = f"http://127.0.0.1:{port}"
    with urllib.request.urlopen(f"{base}/admin/login/", timeout=10) as response:
        assert response.status == 200 and b"csrfmiddlewaretoken" in response.read()
    for path, content_type in [("/static/mailcore/mail.css", "text/css"), ("/static/admin/css/base.css", "text/css")]:
        with urllib.request.urlopen(base + path, timeout=10) as response:
            assert response.status == 200 and response.headers["Content-Type"].startswith(content_type)
            assert "max-age=3600" in response.headers["Cache-Control"]
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{base}/static/mailcore/nothing-here.css", timeout=10)
    assert missing.value.code == 404
    with urllib.request.urlopen(f"{base}/mailbox/login/", timeout=10) as response:
        assert b"Sign in to your mailbox" in response.read()
    assert server.stop(signal.SIGTERM) == 0
    output = server.output()
    assert f"runweb: web UI listening on http://127.0.0.1:{port}/admin/" in output
    assert "runweb: stopped" in output and "Traceback" not in output
