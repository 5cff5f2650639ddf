"""The outside programs the tests drive, and the processes they start: what needs no Django, so
that the benchmark (bench/) can use it too without configuring settings."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS_FILE = ROOT / "tests" / "programs.txt"
# Debian puts daemons such as spamd in /usr/sbin, which a user's PATH may not hold.
PROGRAM_PATH = os.pathsep.join([os.environ.get("PATH", os.defpath), "/usr/sbin", "/sbin"])
MISSING_PROGRAM = re.compile(r"is not installed \(apt-get install (\S+)\)")


def program_packages() -> dict[str, str]:
    """tests/programs.txt: each outside program the tests drive, and the Debian package that has it."""
    lines = PROGRAMS_FILE.read_text().splitlines()
    return dict(line.split() for line in lines if line.strip() and not line.startswith("#"))


def unavailable(reason: str, under_ci: str = "") -> None:
    """Skip a test whose outside part cannot be had here, naming why; under CI, where everything
    must be installed and run, fail it instead (with `under_ci` saying what CI should have done)."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} ({under_ci or 'under CI every test must run'})")
    pytest.skip(reason)


def require_program(program: str) -> str:
    """The path of `program`; skipped where it is not installed, but failed under CI, where
    tests/install-programs.sh has installed every package of tests/programs.txt."""
    package = program_packages()[program]
    path = shutil.which(program, path=PROGRAM_PATH)
    if path is None:
        unavailable(f"{program} is not installed (apt-get install {package})", f"tests/install-programs.sh must install {package}")
    return path


def end_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
    """Stop a child process with `sig` (unless it has exited), killing it if it hangs; its exit status."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()
