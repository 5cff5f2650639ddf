"""`make run` = `manage.py runmail`: everything starts, says where it listens, and stops on Ctrl-C."""

from __future__ import annotations

import signal
import urllib.request

from tests.conftest import free_port, wait_for_port


def test_runmail_starts_everything_and_stops_on_ctrl_c(server_factory, tmp_path):
    # As on a fresh clone: runmail gets a database of its own, which it migrates itself, rather than
    # the test database that other tests' processes have used.
    ports = {name: free_port() for name in ("smtp", "submission", "pop3", "web")}
    server = server_factory(
        "runmail",
        DATABASE_URL=f"sqlite:///{tmp_path / 'fresh.sqlite3'}",
        MAIL_SMTP_BIND=f"127.0.0.1:{ports['smtp']}",
        MAIL_SUBMISSION_BIND=f"127.0.0.1:{ports['submission']}",
        MAIL_POP3_BIND=f"127.0.0.1:{ports['pop3']}",
        MAIL_WEB_BIND=f"127.0.0.1:{ports['web']}",
    )
    wait_for_port("127.0.0.1", ports["web"], server.proc)
    with urllib.request.urlopen(f"http://127.0.0.1:{ports['web']}/admin/login/", timeout=10) as response:
        assert response.status == 200
    output = server.wait_for_output("web UI listening on", seconds=20)
    assert f"runmail: web UI listening on http://127.0.0.1:{ports['web']}/admin/" in output
    assert "first run: created the web UI administrator 'admin' with password" in output
    assert server.stop(signal.SIGINT, timeout=40) == 0
    output = server.output()
    assert "runmail: stopped" in output
    assert "Traceback" not in output
