"""manage.py runmail: every listener, the web UI and the django-q2 cluster in one process tree."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.management import call_command, get_commands
from django.core.management.base import BaseCommand

from mailcore.services import accounts

# (command, what it is); a listener whose command does not exist yet is skipped with a log line.
CHILDREN = [
    ("runsmtp", "inbound SMTP (MX)"),
    ("runsubmission", "submission"),
    ("runpop3", "POP3"),
    ("qcluster", "django-q2 cluster"),
]

STOP_GRACE_SECONDS = 30


class Command(BaseCommand):
    help = "Start the inbound SMTP, submission and POP3 listeners, the web UI and the django-q2 cluster."

    def handle(self, *args, **options):
        call_command("migrate", interactive=False, verbosity=0)
        self._first_run_login()
        children: list[tuple[str, subprocess.Popen]] = []
        available = get_commands()
        manage = [sys.executable, str(settings.BASE_DIR / "manage.py")]
        for name, role in CHILDREN:
            if name not in available:
                self.stdout.write(f"runmail: {role} not started: `{name}` is not built yet")
                continue
            children.append((name, self._spawn([*manage, name])))
        host, port = settings.MAIL_WEB_BIND[0]
        web_address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        # waitress with whitenoise (runweb), not runserver: fit for production, static files included.
        children.append(("web", self._spawn([*manage, "runweb"])))
        self.stdout.write(f"runmail: web UI listening on http://{web_address}/admin/")
        self.stdout.flush()

        stopping = False

        def stop(signum, frame):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        try:
            while not stopping:
                for name, child in children:
                    if child.poll() is not None:
                        self.stderr.write(f"runmail: {name} exited with status {child.returncode}; stopping")
                        stopping = True
                time.sleep(0.2)
        finally:
            self._stop(children)

    @staticmethod
    def _spawn(args: list[str]) -> subprocess.Popen:
        # Each child gets its own session, so a terminal's Ctrl-C reaches only runmail, which then
        # stops the children one by one (signalling qcluster's whole process group can hang it).
        return subprocess.Popen(args, start_new_session=True)

    def _stop(self, children) -> None:
        self.stdout.write("runmail: stopping")
        for _name, child in children:
            if child.poll() is None:
                # SIGTERM to each child's own process only: signalling qcluster's whole group can hang it.
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for name, child in children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.stderr.write(f"runmail: {name} did not stop in time; killing it")
                child.kill()
                child.wait()
        self.stdout.write("runmail: stopped")

    def _first_run_login(self) -> None:
        password = accounts.first_administrator()
        if password is None:
            return
        self.stdout.write(
            "runmail: first run: created the web UI administrator 'admin' with password "
            f"{password} (shown once; change it with `manage.py changepassword admin`)"
        )
