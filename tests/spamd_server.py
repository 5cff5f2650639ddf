"""A real SpamAssassin spamd for the tests: `spamd --local` on a free loopback port, no network rules."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from tests.conftest import end_process, free_port, require_program
from tests.sockets import wait_until

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


class Spamd:
    """One spamd child process; SpamAssassin loads its rules for a few seconds before it answers."""

    def __init__(self, allow_tell: bool = False) -> None:
        self.allow_tell = allow_tell  # --allow-tell: spamd learns from TELL requests
        self.program = require_program("spamd")
        # A directory of our own, not pytest's 0700 tmp: spamd drops to `nobody`, which must reach its home.
        self.dir = Path(tempfile.mkdtemp(prefix="spamd-"))
        self.dir.chmod(0o755)
        self.home = self.dir / "home"
        self.home.mkdir(mode=0o777)
        self.home.chmod(0o777)
        self.pid_file = self.dir / "spamd.pid"
        self.bayes_dir = self.home / ".spamassassin"
        self.log_path = self.dir / "spamd.log"
        self.host = "127.0.0.1"
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def start(self, timeout: float = 60.0) -> Spamd:
        args = [
            self.program,
            "--local",  # no DNS blocklists, no network tests: the same score offline and online
            "--nouser-config",
            f"--listen={self.host}:{self.port}",
            f"--allowed-ips={self.host}",
            f"--pidfile={self.pid_file}",
            f"--helper-home-dir={self.home}",
            "--max-children=2",
            "--min-children=1",
            "--syslog=stderr",
        ]
        if self.allow_tell:
            # The Bayes store in our directory: spamd's user (nobody) has no home of its own to keep it in.
            self.bayes_dir.mkdir(mode=0o777, exist_ok=True)
            self.bayes_dir.chmod(0o777)
            args += ["--allow-tell", f"--cf=bayes_path {self.bayes_dir / 'bayes'}", "--cf=bayes_file_mode 0777"]
        if os.geteuid() == 0:
            args.append("--username=nobody")  # spamd refuses to keep running as root
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, cwd=self.dir)

        def answering() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"spamd exited with {self.proc.returncode}:\n{self.output()}")
            return self.ping()

        if wait_until(answering, timeout, interval=0.1):
            return self
        self.stop()
        raise TimeoutError(f"spamd did not answer PING within {timeout} s:\n{self.output()}")

    def ping(self) -> bool:
        """spamd's own liveness check (SPAMC/1.5 PING), so that startup is not seen as a bad request."""
        try:
            with socket.create_connection(self.address, timeout=1) as sock:
                sock.sendall(b"PING SPAMC/1.5\r\n\r\n")
                return b"PONG" in sock.recv(100)
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            end_process(self.proc)  # the parent stops its children on SIGTERM
        if hasattr(self, "log"):
            self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def learned(self) -> dict[str, int]:
        """The Bayes store's counts of learned messages, as `sa-learn --dump magic` reads them: {"nspam": n, "nham": n}."""
        result = subprocess.run(
            [require_program("sa-learn"), "--dump", "magic", f"--dbpath={self.bayes_dir}"],
            capture_output=True, text=True, timeout=60,
        )
        counts = {"nspam": 0, "nham": 0}
        for line in result.stdout.splitlines():
            parts = line.split()
            if len(parts) >= 4 and parts[-1] in counts:
                counts[parts[-1]] = int(parts[2])
        return counts

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
